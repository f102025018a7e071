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
from common import UserError, main_guard, opt, parse_config, preset, update_block, write_json, write_text
from data import BUILDERS, Config as DataConfig, render
from model import EMBEDDED, encode, load_tokenizer, prompt_ids

GPU = dict(name="H100 80 GB SXM", bf16_tflop_s=989.0, hbm_tb_s=3.35, memory_gib=80)  # NVIDIA's data sheet
MODELS = {  # from each model's config.json: parameters, layers, hidden size, KV width (kv heads x head dim), vocab
    "SmolLM2-1.7B-Instruct": dict(params=1.71e9, layers=24, hidden=2048, kv=2048, vocab=49152),
    "Qwen2.5-7B-Instruct": dict(params=7.62e9, layers=28, hidden=3584, kv=512, vocab=152064),
}
SETTINGS = ("toxicity", "bias", "harmfulness", "mixed")
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
    results: str = opt("results", "where cost.json and cost.md go")
    doc: str = opt("PERFORMANCE.md", "document whose cost table is regenerated ('' = leave it alone)")


def setting_tokens(concept, tok, cfg):
    """Measured: the mean tokens of a training sequence, a scoring prompt and an evaluation prompt of one setting at
    the GPU preset's sizes, and its sizes."""
    n, n_safety, n_eval = (int(preset("data", f"--{k}")) for k in ("n", "n-safety", "n-eval"))
    try:
        sets = BUILDERS[concept](DataConfig(concept=concept, n=n, n_safety=n_safety, n_eval=n_eval))
    except UserError:  # harmfulness offline: 520 AdvBench goals, 200 HarmBench prompts; lengths from a smaller build
        sets = BUILDERS[concept](DataConfig(concept=concept, n=300, n_safety=200, n_eval=200))
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


def render_table(c):
    lines = [f"Projected for `bash run.sh` (the four settings) on one {c['gpu']['name']} ({c['gpu']['bf16_tflop_s']:g} "
             f"TFLOP/s bf16, {c['gpu']['hbm_tb_s']:g} TB/s), LoRA, the GPU preset's sizes; training and prefill at "
             f"{100 * c['assume']['mfu']:.0f} % of peak (FLOP count), decoding at {100 * c['assume']['bw_eff']:.0f} % "
             "of bandwidth to the full cap (bandwidth bound); token counts measured on the preset's data. "
             "A projection, no GPU measurement:", "",
             "| model | training (min) | scoring (min) | evaluation (min) | total (min) | decode steps | peak memory "
             "training / generation (GiB) | basis |", "|---|---|---|---|---|---|---|---|"]
    for name, r in c["models"].items():
        tr = sum(v for k, v in r["stages_s"].items() if k not in ("scoring", "evaluation")) / 60
        lines.append(f"| {name} | {tr:.1f} | {r['stages_s']['scoring'] / 60:.1f} | "
                     f"{r['stages_s']['evaluation'] / 60:.1f} | {r['total_s'] / 60:.1f} | {r['decode_steps']:,} | "
                     f"{r['memory_gib']['training']:.0f} / {r['memory_gib']['generation']:.0f} | FLOP count + "
                     "bandwidth bound |")
    lines += ["", "Each decode step also pays the decode loop's fixed overhead (kernel launches, Python): at an overhead "
                  "of d ms per step add decode steps x d / 60000 minutes; `bash run.sh smoke` measures it."]
    return "\n".join(lines) + "\n"


def main():
    cfg = parse_config(Config, __doc__)
    tok = load_tokenizer(EMBEDDED)
    tokens = {c: setting_tokens(c, tok, cfg) for c in SETTINGS}
    out = dict(gpu=GPU, assume=dict(mfu=cfg.mfu, bw_eff=cfg.bw_eff), tokens=tokens, models={})
    for name, m in MODELS.items():
        per = {c: project(m, t, cfg)[0] for c, t in tokens.items()}
        steps = round(sum(project(m, t, cfg)[1] for t in tokens.values()))
        stages = {k: sum(p[k] for p in per.values()) for k in next(iter(per.values()))}
        mem = {k: max(memory_gib(m, t, cfg)[k] for t in tokens.values()) for k in ("weights", "training", "generation")}
        out["models"][name] = dict(m, stages_s={k: round(v, 1) for k, v in stages.items()},
                                   total_s=round(sum(stages.values()), 1), decode_steps=steps, memory_gib={k: round(v, 1) for k, v in
                                                                                       mem.items()})
    write_json(Path(cfg.results) / "cost.json", out)
    table = render_table(out)
    write_text(Path(cfg.results) / "cost.md", table)
    if cfg.doc:
        update_block(cfg.doc, table, "cost")
    print(table)


if __name__ == "__main__":
    main_guard(main)
