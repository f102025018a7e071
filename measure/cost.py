"""What `bash run.sh` (the four settings) would cost on one 80 GB GPU, projected stage by stage for the 1.7B preset
and a 7B preset (Qwen2.5-7B-Instruct with the paper's LoRA). No GPU measurement exists yet (`bash run.sh smoke` is
the one to make), so every figure is a projection, marked by what it rests on:

  measured   token counts: the GPU preset's data (N 1000, D_safe 500, 300 evaluation items) built by data.py and
             tokenised with SmolLM2's tokenizer (the 7B row reuses them: Qwen's tokenizer differs by a few %)
  FLOPs      training 6 P per token (full) or 4 P (LoRA: no weight gradients), prefill 2 P per token, at an assumed
             utilisation (--mfu) of the GPU's bf16 dense peak
  bandwidth  greedy decoding: each step reads the weights and the KV cache once; steps at --bw-eff of HBM bandwidth;
             every generation runs to its cap (an upper bound: scoring stops at the first line, most stop early)

    python measure/cost.py    # results/cost.{json,md} and PERFORMANCE.md's cost table

The real run adds the per-step overhead of a Python decode loop (kernel launches: tens of ms per step on small
batches), which the smoke check measures; read these rows as the floor that overhead adds to.
"""
import math
import sys
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the tool (common, data, ff, ...) is one level up
from common import main_guard, opt, parse_config, preset, update_block, write_json, write_text
from data import BUILDERS, Config as DataConfig, render
from model import EMBEDDED, encode, load_tokenizer, prompt_ids

GPU = dict(name="H100 80 GB SXM", bf16_tflop_s=989.0, hbm_tb_s=3.35, memory_gib=80)  # NVIDIA's data sheet
MODELS = {  # from each model's config.json: parameters, layers, hidden size, KV width (kv heads x head dim), vocab
    "SmolLM2-1.7B-Instruct": dict(params=1.71e9, layers=24, hidden=2048, kv=2048, vocab=49152),
    "Qwen2.5-7B-Instruct": dict(params=7.62e9, layers=28, hidden=3584, kv=512, vocab=152064),
}
# Disk: what the hub's weight files take in its cache (parameters x bytes per stored parameter: SmolLM2 and Qwen2.5
# ship bf16, GPT-2 fp32), the tokenizer files each checkpoint copies (SmolLM2's measured here on the embedded one,
# Qwen2.5's from the hub's file listing: tokenizer.json 7.0 MB, vocab.json 2.8 MB, merges.txt 1.7 MB) and what
# `paper`'s size study downloads besides (run.sh SIZE_MODELS).
HUB_BYTES = {"SmolLM2-1.7B-Instruct": 2 * 1.71e9, "Qwen2.5-7B-Instruct": 2 * 7.62e9}
QWEN_TOKENIZER = 11.5e6
SIZE_DOWNLOADS = 2 * (0.135e9 + 0.362e9) + 4 * (0.355e9 + 0.774e9 + 1.558e9)  # SmolLM2 135M/360M bf16, GPT-2 fp32
DETOXIFY = 0.418e9  # Detoxify 'original' (toxic_original-c1212f89.ckpt), the GPU preset's scorer
SETTINGS = ("toxicity", "bias", "harmfulness", "mixed")
LOADS = 9  # ff.py: M0 (scores, control), M1 (train; reload to score), M2, FF x 2, Replay, random, oracle
HUB_BYTES_PER_PARAM = 2  # the preset's base is bf16 on disk and in memory (a frozen LoRA base)
PILE_DOCS = 200000  # data.py --pile-docs: the most a toxicity build streams (--source hub)
CONDITIONS = 10  # M0, +Downstream, +SafetyFT, Replay, FF, FF-nll, Random, Oracle, SC, FF+SC (SC rows: cue sets only)


@dataclass
class Config:
    mfu: float = opt(0.4, "assumed share of the bf16 peak that training and prefill reach", gt=0, hi=1)
    bw_eff: float = opt(0.6, "assumed share of HBM bandwidth that a decode step reaches", gt=0, hi=1)
    epochs: int = opt(int(preset("ff", "--epochs")), "the GPU preset's epochs (common.GPU_PRESET)", lo=1)
    batch: int = opt(int(preset("ff", "--batch-size")), "the GPU preset's batch size", lo=1)
    safety_steps: int = opt(50, "max t", lo=1)
    gen_batch: int = opt(int(preset("ff", "--gen-batch-size")), "the GPU preset's generation batch", lo=1)
    cap_text: int = opt(int(preset("ff", "--max-new-tokens-text")), "generation cap, text format (the GPU preset's)", lo=1)
    cap_qa: int = opt(int(preset("ff", "--max-new-tokens-qa")), "generation cap, QA and BBQ formats (the GPU preset's)", lo=1)
    cap_eval: int = opt(int(preset("eval", "--max-new-tokens")), "evaluation generation cap (the GPU preset's)", lo=1)
    micro_tokens: int = opt(int(preset("ff", "--micro-tokens")), "padded tokens per forward pass (the GPU preset's)", lo=1)
    load_gb_s: float = opt(2.0, "assumed read rate of a model load from local disk (GB/s, an NVMe SSD)", gt=0)
    net_mb_s: float = opt(50.0, "assumed download rate from the hub (MB/s): the base model once, the Pile streamed "
                                "per toxicity build", gt=0)
    pile_doc_kb: float = opt(5.0, "assumed mean size of a streamed Pile document (kB, with its per-sentence scores)",
                             gt=0)
    results: str = opt("results", "where cost.json and cost.md go")
    doc: str = opt("PERFORMANCE.md", "document whose cost table is regenerated ('' = leave it alone)")


def setting_tokens(concept, tok, cfg):
    """Measured: the mean tokens of a training sequence, a scoring prompt and an evaluation prompt of one setting at
    the GPU preset's sizes, and its sizes."""
    n, n_safety, n_eval = (int(preset("data", f"--{k}")) for k in ("n", "n-safety", "n-eval"))
    # offline, data.py caps what its files cannot supply (harmfulness: 520 AdvBench goals): the lengths are the same
    sets = BUILDERS[concept](DataConfig(concept=concept, n=n, n_safety=n_safety, n_eval=n_eval))
    mean = lambda xs: sum(xs) / len(xs)  # noqa: E731
    noisy = sets["noisy"]
    asked = {k: 3 if k == "eval_bbq" else 1 for k in sets if k.startswith("eval_")}  # BBQ: its 3 option orders
    evals = [x for k in asked for x in sets[k] * asked[k]]
    per_set = 200 if concept == "harmfulness" else n_eval  # run.sh's n_eval per set (HarmBench: 200 prompts)
    return dict(  # the preset's sizes: int(N r) + 3 int(N (1 - r) / 3) noisy examples (998 of N 1000)
        n=int(n * 0.5) + 3 * int(n * 0.5 / 3), n_safety=n_safety, n_eval=per_set * sum(asked.values()),
        n_eval_cue=per_set * sum(asked.get(k, 0) for k in ("eval_toxicity", "eval_bbq")),
        train=mean([len(encode(tok, ex, 256)[0]) for ex in noisy]),
        safety=mean([len(encode(tok, ex, 256)[0]) for ex in sets["safety"]]),
        prompt=mean([len(prompt_ids(tok, render(ex))) for ex in noisy]),
        cap=mean([cfg.cap_text if ex["format"] == "text" else cfg.cap_qa for ex in noisy]),
        eval_prompt=mean([len(prompt_ids(tok, render(x))) for x in evals]))


def decode_s(m, cfg, prompts, prompt_len, cap):
    """Bandwidth floor of greedy decoding `prompts` prompts to `cap` tokens in batches of gen_batch: per step, the
    bf16 weights and the batch's KV cache (grown to prompt + cap / 2 on average) are read once."""
    steps = math.ceil(prompts / cfg.gen_batch) * cap
    kv = cfg.gen_batch * (prompt_len + cap / 2) * m["layers"] * 2 * m["kv"] * 2  # K and V, bf16
    return steps * (2 * m["params"] + kv) / (GPU["hbm_tb_s"] * 1e12 * cfg.bw_eff)


def project(m, t, cfg):
    """Seconds per stage of one setting (and the FLOPs behind each)."""
    peak = GPU["bf16_tflop_s"] * 1e12 * cfg.mfu
    lora = 4 * m["params"]  # the preset trains LoRA adapters: forward 2 P + activation gradients 2 P per token
    kept = t["n"] / 2  # FF, the random and the oracle filter keep about the half that is not unsafe
    replay = t["n"] + math.ceil(cfg.safety_steps * cfg.batch / cfg.epochs)
    train_tokens = dict(
        control=cfg.safety_steps * cfg.batch * t["safety"], m1=cfg.epochs * t["n"] * t["train"],
        m2=cfg.safety_steps * cfg.batch * t["safety"],
        ff_and_baselines=cfg.epochs * (4 * kept + replay) * t["train"])  # FF x 2 signals, random, oracle, replay
    passes = 6  # scoring of D_noisy: M0, the control at its t, M1, M2 at t = 10, 25, 50
    score_prefill = passes * t["n"] * (t["prompt"] + t["train"])  # generation prefill + the NLL pass
    eval_prompts = CONDITIONS * t["n_eval"] - 2 * (t["n_eval"] - t["n_eval_cue"])  # SC rows skip SQuAD etc.
    stages = {k: v * lora / peak for k, v in train_tokens.items()}
    stages["scoring"] = score_prefill * 2 * m["params"] / peak + passes * decode_s(m, cfg, t["n"], t["prompt"], t["cap"])
    stages["evaluation"] = eval_prompts * t["eval_prompt"] * 2 * m["params"] / peak + decode_s(
        m, cfg, eval_prompts, t["eval_prompt"], cfg.cap_eval)
    steps = passes * math.ceil(t["n"] / cfg.gen_batch) * t["cap"] + math.ceil(eval_prompts / cfg.gen_batch) * cfg.cap_eval
    # loads: the base read from disk for M0's scores, M1 (train, then again to score), M2, the five trainings from M0
    # and every evaluated condition; each LoRA load also merges (B A, a few FLOPs per adapter weight: negligible) and
    # each save writes megabytes (the adapter)
    stages["loads"] = (LOADS + CONDITIONS) * HUB_BYTES_PER_PARAM * m["params"] / (cfg.load_gb_s * 1e9)
    return stages, steps


def memory_gib(m, t, cfg):
    """Peak GPU memory: bf16 base weights, the activations of one training pass of micro_tokens (about 34 hidden
    bytes per token and layer in bf16 without recomputation, Korthikanti et al. 2022), its fp32 logits, and the KV
    cache of one generation batch."""
    weights = 2 * m["params"]
    acts = 34 * m["hidden"] * m["layers"] * cfg.micro_tokens
    logits = 2 * 4 * cfg.micro_tokens * m["vocab"]  # fp32 logits and their gradient
    kv = cfg.gen_batch * (t["prompt"] + t["cap"]) * m["layers"] * 2 * m["kv"] * 2
    return dict(weights=weights / 2**30, training=(weights + acts + logits) / 2**30, generation=(weights + kv) / 2**30)


def adapter_checks(tmp):
    """Measured: tiny models of both presets' shapes (Llama-like with tied embeddings and full attention; Qwen2-like
    with grouped KV heads, untied embeddings and q/v biases) with LoRA adapters, saved by model.save_checkpoint;
    the adapter file's bytes against weight_bytes(), which the projection applies to the real configurations."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM
    import ff  # the paper's LoRA (r 8, alpha 16, dropout 0.05), as ff.py trains it
    from model import add_lora, checkpoint_bytes, save_checkpoint, weight_bytes
    tok = load_tokenizer(EMBEDDED)
    shapes = {"llama (1.7B's shape)": (LlamaForCausalLM, LlamaConfig(
                  vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                  num_attention_heads=4, num_key_value_heads=4, tie_word_embeddings=True)),
              "qwen2 (7B's shape)": (Qwen2ForCausalLM, Qwen2Config(
                  vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                  num_attention_heads=4, num_key_value_heads=1, tie_word_embeddings=False))}
    out = {}
    for name, (cls, config) in shapes.items():
        torch.manual_seed(0)
        base = cls(config)
        base.save_pretrained(tmp / name)
        tok.save_pretrained(tmp / name)
        save_checkpoint(add_lora(base, ff.Config(lora=True)), tok, tmp / (name + " lora"), base=tmp / name)
        adapter = (tmp / (name + " lora") / "adapter_model.safetensors").stat().st_size
        out[name] = dict(adapter_bytes=adapter, formula_bytes=weight_bytes(config, 8),
                         checkpoint_bytes=checkpoint_bytes(tmp / (name + " lora")))
    return out


def disk(name, m, tok_bytes, rows_bytes):
    """Bytes on disk for `bash run.sh` (four settings: 7 adapter checkpoints each: M1, M2, FF twice, Replay, the
    random and the oracle filter) and for `paper` (adds 2 seeds of 4 settings, 6 ratio runs and the size study's 6
    filter-only runs with 2 checkpoints each, 2 x 3 interleaved rounds of about 18 checkpoints each concept), with
    the hub's base model, Detoxify and the rows."""
    from transformers import LlamaConfig, Qwen2Config
    from model import weight_bytes
    heads = m["hidden"] // 64 if name.startswith("SmolLM2") else 28  # head_dim 64 (SmolLM2), 128 (Qwen2.5)
    config = (LlamaConfig if name.startswith("SmolLM2") else Qwen2Config)(
        vocab_size=m["vocab"], hidden_size=m["hidden"], num_hidden_layers=m["layers"], num_attention_heads=heads,
        num_key_value_heads=m["kv"] // (m["hidden"] // heads), intermediate_size=4 * m["hidden"])
    ckpt = weight_bytes(config, 8) + (tok_bytes if name.startswith("SmolLM2") else QWEN_TOKENIZER)
    fixed = HUB_BYTES[name] + DETOXIFY
    run_sh = fixed + 4 * (7 * ckpt + rows_bytes)
    paper = run_sh + 8 * (7 * ckpt + rows_bytes) + 12 * (2 * ckpt + rows_bytes) + 2 * 18 * ckpt + SIZE_DOWNLOADS
    return dict(checkpoint_bytes=ckpt, run_sh_gib=round(run_sh / 2**30, 1), paper_gib=round(paper / 2**30, 1))


def render_table(c):
    a = c["assume"]
    lines = [f"Projected for `bash run.sh` (the four settings) on one {c['gpu']['name']} ({c['gpu']['bf16_tflop_s']:g} "
             f"TFLOP/s bf16, {c['gpu']['hbm_tb_s']:g} TB/s), LoRA, the GPU preset's sizes; training and prefill at "
             f"{100 * a['mfu']:.0f} % of the data sheet's peak (FLOP count), decoding at {100 * a['bw_eff']:.0f} % "
             f"of bandwidth to the full cap (bandwidth bound); model loads at {a['load_gb_s']:g} GB/s from disk, the "
             f"hub at {a['net_mb_s']:g} MB/s (the base once, the Pile streamed for toxicity); token counts measured "
             "on the preset's data. "
             "A projection, no GPU measurement:", "",
             "| model | training (min) | scoring (min) | evaluation (min) | loads (min) | hub (min) | total (min) | "
             "decode steps | peak memory training / generation (GiB) | disk, run.sh / paper (GiB) | basis |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for name, r in c["models"].items():
        st = r["stages_s"]
        tr = sum(v for k, v in st.items() if k not in ("scoring", "evaluation", "loads", "hub")) / 60
        lines.append(f"| {name} | {tr:.1f} | {st['scoring'] / 60:.1f} | {st['evaluation'] / 60:.1f} | "
                     f"{st['loads'] / 60:.1f} | {st['hub'] / 60:.1f} | {r['total_s'] / 60:.1f} | {r['decode_steps']:,} | "
                     f"{r['memory_gib']['training']:.0f} / {r['memory_gib']['generation']:.0f} | "
                     f"{r['disk']['run_sh_gib']:.1f} / {r['disk']['paper_gib']:.1f} | FLOP count + bandwidth bound |")
    lines += ["", "Each decode step also pays the decode loop's fixed overhead (kernel launches, Python): at an overhead "
                  "of d ms per step add decode steps x d / 60000 minutes; `bash run.sh smoke` measures it.", "",
              "Disk: the hub's base model and Detoxify, each LoRA checkpoint as its adapter and tokenizer (" + ", ".join(
                  f"{n}: adapter {a['adapter_bytes']:,} bytes saved, {a['formula_bytes']:,} by the formula"
                  for n, a in c["adapter_checks"].items()) + ", measured on tiny models of both shapes), the rows "
              "scaled from the committed CPU runs; `paper` adds the seeds, ratios, rounds and the size study's "
              "downloads."]
    return "\n".join(lines) + "\n"


def main():
    cfg = parse_config(Config, __doc__)
    tok = load_tokenizer(EMBEDDED)
    tokens = {c: setting_tokens(c, tok, cfg) for c in SETTINGS}
    import tempfile
    from model import tokenizer_bytes
    with tempfile.TemporaryDirectory() as d:
        checks = adapter_checks(Path(d))
    # rows: the committed CPU runs' per-example and evaluation rows, scaled by the preset's N and evaluation sizes
    # (x3 and x2: the stage files and eval/ hold copies of them)
    res, scale_n, scale_eval = Path(cfg.results), int(preset("data", "--n")) / 160, int(preset("data", "--n-eval")) / 100
    rows = max((3 * (res / c / "forgetting.jsonl").stat().st_size * scale_n + 2 * (res / c / "eval_rows.jsonl").stat()
                .st_size * scale_eval for c in SETTINGS if (res / c / "eval_rows.jsonl").is_file()), default=0)
    out = dict(gpu=GPU, assume=dict(mfu=cfg.mfu, bw_eff=cfg.bw_eff, load_gb_s=cfg.load_gb_s, net_mb_s=cfg.net_mb_s,
                                   pile_doc_kb=cfg.pile_doc_kb), tokens=tokens, adapter_checks=checks,
               rows_bytes_per_setting=round(rows), models={})
    for name, m in MODELS.items():
        per = {c: project(m, t, cfg)[0] for c, t in tokens.items()}
        # the hub: the base model downloaded once; the Pile streamed once per toxicity build (at most --pile-docs)
        per["toxicity"]["hub"] = (HUB_BYTES[name] + PILE_DOCS * cfg.pile_doc_kb * 1e3) / (cfg.net_mb_s * 1e6)
        for c in SETTINGS[1:]:
            per[c]["hub"] = 0.0
        steps = round(sum(project(m, t, cfg)[1] for t in tokens.values()))
        stages = {k: sum(p[k] for p in per.values()) for k in next(iter(per.values()))}
        mem = {k: max(memory_gib(m, t, cfg)[k] for t in tokens.values()) for k in ("weights", "training", "generation")}
        out["models"][name] = dict(m, stages_s={k: round(v, 1) for k, v in stages.items()},
                                   total_s=round(sum(stages.values()), 1), decode_steps=steps,
                                   memory_gib={k: round(v, 1) for k, v in mem.items()},
                                   disk=disk(name, m, tokenizer_bytes(tok), rows))
    write_json(Path(cfg.results) / "cost.json", out)
    table = render_table(out)
    write_text(Path(cfg.results) / "cost.md", table)
    if cfg.doc:
        update_block(cfg.doc, table, "cost")
    print(table)


if __name__ == "__main__":
    main_guard(main)
