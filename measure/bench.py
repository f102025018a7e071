"""How fast is each part, measured in one run on one model: scoring, training, and the reference run's stages.

    python measure/bench.py                   # embedded SmolLM2-135M-Instruct on CPU (or CUDA when present), ~15 min on CPU
    python measure/bench.py --official-n 2    # fewer examples for the slow official-style loop

Prints a table and writes results/bench.json, results/bench.md and PERFORMANCE.md's benchmark table (between its markers):
  * scoring: ff.score's batched, early-stopped greedy generation over the whole noisy set, against the official
    code's loop (one example at a time, `generate` with max_new_tokens=500 and no line stop, first line kept) run
    on --official-n examples and scaled to the set; both as examples/s. A second check gives both loops the same
    token cap and compares every example's ROUGE-1.
  * precisions: the matmul peak of every precision the device runs natively (fp32; bf16 where the CPU has
    AVX512-BF16 or AMX, or on CUDA; fp16 where native), and the same matmul at the embedded model's MLP shape.
  * training: tokens/s of full finetuning and of LoRA in each native precision, and utilisation = achieved FLOP/s /
    the best native matmul peak measured here, and against the precision's own peak (FLOPs per token: 6 N full,
    4 N LoRA (no weight gradients), plus attention 12 * layers * d * seq); scoring (ff.score) in each precision,
    with how many examples keep fp32's ROUGE-1.
  * levers: training tokens/s and peak memory at --micro-tokens 256 (the default) / 512 / 1024 on short toxicity
    rows and on BBQ rows (2-2.5x longer; mean tokens in the table), with torch.compile, and with glibc's allocator
    defaults (not tune_allocator), each in a fresh process so that its peak memory is its own.
  * stages: wall time and peak memory of each stage of the committed reference runs (results/<setting>/summary.json).
"""
import dataclasses
import multiprocessing
import os
import random
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the tool (common, data, ff, ...) is one level up
import ff
from common import (DEVICES, main_guard, opt, parse_config, peak_memory_gib, read_json, release_memory, run_on,
                    tune_allocator, update_block, write_json, write_text)
from data import BUILDERS, Config as DataConfig, build_toxicity, render
from model import (AMP, EMBEDDED, add_lora, base_dtype, encode, generate, hardware, length_grouped_batches, load_model,
                   native_cpu_precisions, precision_name, prompt_ids, score_dtype, setup, token_budget_split,
                   weights_in)


@dataclass
class Config:
    model: str = opt(EMBEDDED, "model to measure (as ff.py --model)")
    official_n: int = opt(4, "examples for the official-style loop (500 new tokens each, one at a time)", lo=1)
    equal_n: int = opt(32, "examples for the same-cap ROUGE-1 check of both loops", lo=1)
    train_steps: int = opt(6, "measured optimizer steps per training mode (after one warm-up step)", lo=1)
    levers: bool = opt(True, "also measure --micro-tokens, torch.compile and the allocator (about 10 min on CPU)")
    results: str = opt("results", "where bench.json goes")
    doc: str = opt("PERFORMANCE.md", "document whose benchmark table is regenerated ('' = leave it alone)")
    device: str = opt("auto", "auto, cpu or cuda", choices=DEVICES)


def native_precisions(device):
    """The precisions whose matmuls this device runs natively: on CPU as model.native_cpu_precisions detects them."""
    if device == "cpu":
        return native_cpu_precisions()
    return ["fp32"] + (["bf16"] if torch.cuda.is_bf16_supported(including_emulation=False) else []) + ["fp16"]


def matmul_flops(device, dtype, m, k, n, reps):
    a, b = torch.randn(m, k, device=device, dtype=dtype), torch.randn(k, n, device=device, dtype=dtype)
    a @ b  # warm-up
    sync(device)
    t0 = time.perf_counter()
    for _ in range(reps):
        a @ b
    sync(device)
    return 2 * m * k * n * reps / (time.perf_counter() - t0)


def matmul_peak(device, dtype):
    """The best FLOP/s of a square matmul over a few sizes: the machine's practical peak for this dtype."""
    return max(matmul_flops(device, dtype, n, n, n, 3 if device == "cpu" else 20)
               for n in ((1024, 2048, 3072) if device == "cpu" else (4096, 8192)))


def bench_precisions(device):
    """Per native precision: the square-matmul peak and a matmul of the MLP's shape at 4096 tokens (576 x 1536 in
    SmolLM2-135M), whose rate is what a training step's largest matmuls can reach."""
    out = {}
    for p in native_precisions(device):
        dtype = AMP[p] or torch.float32
        out[p] = dict(peak_tflop_s=round(matmul_peak(device, dtype) / 1e12, 4),
                      mlp_tflop_s=round(matmul_flops(device, dtype, 4096, 576, 1536, 10) / 1e12, 4))
        print(f"matmul {p}: {out[p]}")
    return out


def sync(device):
    if device == "cuda":
        torch.cuda.synchronize()


def official_loop(model, tok, examples, max_new_tokens):
    """The official code's scoring: one prompt at a time, HF generate, greedy, then keep the first line."""
    out = []
    for ex in examples:
        ids = torch.tensor([prompt_ids(tok, render(ex))], device=model.device)
        gen = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=max_new_tokens,
                             do_sample=False, pad_token_id=tok.pad_token_id)
        out.append(tok.decode(gen[0, ids.shape[1]:], skip_special_tokens=True))
    return out


def bench_scoring(model, tok, noisy, cfg, fcfg, device):
    model.eval()
    sync(device)
    t0 = time.perf_counter()
    ff.score(model, tok, noisy, fcfg, desc="ours: ff.score over the noisy set")
    sync(device)
    ours_s = time.perf_counter() - t0
    sub = noisy[:cfg.official_n]
    with weights_in(model, score_dtype(device, False, fcfg.precision)):  # both loops in the precision ff.score runs
        t0 = time.perf_counter()
        official_loop(model, tok, sub, 500)
        sync(device)
        official_s = (time.perf_counter() - t0) / len(sub) * len(noisy)
        # Same cap for both: every example's ROUGE-1 must agree.
        eq = noisy[:cfg.equal_n]
        caps = ff.caps_for(eq, fcfg)
        ours = generate(model, tok, [render(x) for x in eq], caps, fcfg.gen_batch_size)
        theirs = [official_loop(model, tok, [x], c)[0] for x, c in zip(eq, caps)]
    same = sum(ff.rouge1(x["target"], a) == ff.rouge1(x["target"], b) for x, a, b in zip(eq, ours, theirs))
    return dict(n=len(noisy), ours_s=round(ours_s, 1), ours_examples_s=round(len(noisy) / ours_s, 2),
                official_n_measured=len(sub), official_s_scaled=round(official_s, 1),
                official_examples_s=round(len(noisy) / official_s, 3), speedup=round(official_s / ours_s, 1),
                same_rouge=f"{same} / {len(eq)}", note="ours includes the target-NLL pass; the official loop's time "
                f"is measured on {len(sub)} examples and scaled to {len(noisy)}")


def train_flops_per_token(model, lora, seq):
    c = model.config
    n = sum(p.numel() for n_, p in model.named_parameters() if "lora_" not in n_)
    return (4 if lora else 6) * n + 12 * c.num_hidden_layers * c.hidden_size * seq


def bench_training(cfg, fcfg, noisy, device, precision, peaks, profiled):
    """Full finetuning and LoRA in `precision` (the weights as ff.py loads them: fp32 masters, a LoRA base in the
    autocast dtype); utilisation against the best native peak and against this precision's own."""
    out, best = {}, max(v["peak_tflop_s"] for v in peaks.values()) * 1e12
    fcfg = dataclasses.replace(fcfg, precision=precision)
    for mode in ("full", "lora"):
        model, tok = load_model(cfg.model, device, base_dtype(device, mode == "lora", precision))
        if mode == "lora":
            model = add_lora(model, fcfg)
        ff.train(model, tok, noisy, fcfg, 1e-5, steps=1, desc=f"{precision} {mode}: warm-up")
        sync(device)
        log = ff.train(model, tok, noisy, fcfg, 1e-5, steps=cfg.train_steps, desc=f"{precision} {mode}: measured")
        sync(device)
        seq = log["tokens"] / (cfg.train_steps * fcfg.batch_size)
        tok_s = log["tokens"] / log["wall_s"]
        flops = tok_s * train_flops_per_token(model, mode == "lora", seq)
        out[mode] = dict(tokens_s=round(tok_s, 1), tflop_s=round(flops / 1e12, 4),
                         utilisation=round(100 * flops / best, 1),
                         utilisation_own=round(100 * flops / (peaks[precision]["peak_tflop_s"] * 1e12), 1),
                         mean_seq=round(seq, 1), last_loss=log["loss"][-1]["loss"])
        if mode == "full" and device == "cpu" and profiled:
            out["breakdown"] = training_breakdown(model, tok, noisy, fcfg, best)
        del model
        release_memory()
    return out


def bench_scoring_precisions(model, tok, noisy, fcfg, device, precisions):
    """ff.score over the noisy set in each precision (a bf16 run scores in bf16), and how many examples get the
    same ROUGE-1 as fp32 and NLL within 0.05 nats/token of it."""
    out, ref = {}, None
    for p in precisions:
        sync(device)
        t0 = time.perf_counter()
        s = ff.score(model, tok, noisy, dataclasses.replace(fcfg, precision=p), desc=f"ff.score in {p}")
        sync(device)
        wall = time.perf_counter() - t0
        ref = ref or s
        out[p] = dict(examples_s=round(len(noisy) / wall, 2), wall_s=round(wall, 1),
                      same_rouge_as_fp32=f"{sum(s[i]['rouge'] == ref[i]['rouge'] for i in s)} / {len(s)}",
                      nll_within_005=f"{sum(abs(s[i]['nll'] - ref[i]['nll']) <= 0.05 for i in s)} / {len(s)}")
        print(f"scoring {p}: {out[p]}")
    return out


def training_breakdown(model, tok, noisy, fcfg, peak, steps=2):
    """Where full finetuning's time goes on CPU: torch.profiler over `steps` steps gives the share of the time in
    matmuls and their own FLOP/s against the peak, and AdamW's share; padding is the share of the tokens a forward
    pass computes that are padding, over one epoch of the batches train() forms."""
    from torch.profiler import ProfilerActivity, profile
    with profile(activities=[ProfilerActivity.CPU], with_flops=True) as prof:
        ff.train(model, tok, noisy, fcfg, 1e-5, steps=steps, desc="full: profiled")
    ops = prof.key_averages()
    total = sum(e.self_cpu_time_total for e in ops)
    mm = [e for e in ops if e.key in ("aten::mm", "aten::addmm", "aten::bmm")]
    mm_us = sum(e.self_cpu_time_total for e in mm)
    adam_us = sum(e.self_cpu_time_total for e in ops if "adam" in e.key.lower())
    lengths = [len(encode(tok, ex, fcfg.max_len)[0]) for ex in noisy]
    passes = [p for b in length_grouped_batches(lengths, fcfg.batch_size, random.Random(fcfg.seed))
              for p in token_budget_split(b, lengths, fcfg.micro_tokens)]
    padded = sum(len(p) * max(lengths[i] for i in p) for p in passes)
    return dict(matmul_time_share=round(100 * mm_us / total, 1),
                matmul_utilisation=round(100 * sum(e.flops for e in mm) / (mm_us / 1e6) / peak, 1),
                adamw_time_share=round(100 * adam_us / total, 1), other_time_share=round(100 * (total - mm_us - adam_us)
                                                                                         / total, 1),
                padding_share=round(100 * (1 - sum(lengths) / padded), 1), profiled_steps=steps)


# (rows, --micro-tokens, torch.compile, common.tune_allocator, precision, environment, sparse embedding gradient); the
# bf16 rows only where bf16 is native. oneDNN keeps a compiled kernel per matmul shape (up to 1024): with the sequence
# lengths of a run that cache is what grows a bf16 process's memory, so one row caps it. The tied embedding's
# gradient is dense (a zeroed vocabulary x d matrix per pass, then added to the output layer's): the last row makes
# the lookup's part sparse (nn.Embedding(sparse=True)), which the output layer's dense gradient then absorbs.
CACHE = "ONEDNN_PRIMITIVE_CACHE_CAPACITY"
LEVERS = [("toxicity", 256, False, True, "auto", {}, False), ("toxicity", 512, False, True, "auto", {}, False),
          ("toxicity", 1024, False, True, "auto", {}, False), ("toxicity", 256, True, True, "auto", {}, False),
          ("toxicity", 256, False, False, "auto", {}, False),
          ("bias", 256, False, True, "auto", {}, False), ("bias", 512, False, True, "auto", {}, False),
          ("bias", 1024, False, True, "auto", {}, False),
          ("toxicity", 256, False, True, "bf16", {}, False),
          ("toxicity", 256, False, True, "bf16", {CACHE: "8"}, False),
          ("toxicity", 256, False, True, "auto", {}, True)]


def lever_child(setting, micro_tokens, compiled, tuned, precision, env, sparse, steps, model_name, device, queue):
    """One lever, in a fresh (spawned) process: load, warm up one step (where torch.compile compiles), measure."""
    if tuned:
        tune_allocator()
    noisy = BUILDERS[setting](DataConfig(concept=setting, n=160 if setting == "toxicity" else 96))["noisy"]
    fcfg = ff.Config(model=model_name, device=device, micro_tokens=micro_tokens, precision=precision)
    model, tok = load_model(model_name, device)
    model.get_input_embeddings().sparse = sparse
    if compiled:
        model.forward = torch.compile(model.forward, dynamic=True)
    t0 = time.time()
    ff.train(model, tok, noisy, fcfg, 1e-5, steps=1, desc=f"{setting} {micro_tokens}: warm-up")
    warm = time.time() - t0
    log = ff.train(model, tok, noisy, fcfg, 1e-5, steps=steps, desc=f"{setting} {micro_tokens}: measured")
    queue.put(dict(setting=setting, micro_tokens=micro_tokens, compiled=compiled, allocator_tuned=tuned,
                   precision=precision_name(device, precision), env=env, sparse_embedding_grad=sparse,
                   warmup_s=round(warm, 1), last_loss=log["loss"][-1]["loss"],
                   tokens_s=round(log["tokens"] / log["wall_s"], 1),
                   mean_seq=round(log["tokens"] / (steps * fcfg.batch_size), 1), peak_memory_gib=peak_memory_gib()))


def bench_levers(cfg, device, precisions):
    ctx, out = multiprocessing.get_context("spawn"), []
    for *lever, precision, env, sparse in LEVERS:
        if precision != "auto" and (precision not in precisions or precision == precision_name(device)):
            continue  # not native here, or the same as the auto rows
        queue = ctx.Queue()
        saved = {k: os.environ.get(k) for k in env}
        os.environ.update(env)  # the child starts with it, before its torch loads oneDNN
        p = ctx.Process(target=lever_child, args=(*lever, precision, env, sparse, cfg.train_steps, cfg.model, device,
                                                  queue))
        p.start()
        for k, v in saved.items():
            os.environ.pop(k) if v is None else os.environ.__setitem__(k, v)
        out.append(queue.get())
        p.join()
        print(f"lever: {out[-1]}")
    return out


def stage_table(results):
    """The four settings' reference runs, then the same settings run at another precision (results/precision/)."""
    rows = {}
    for p in sorted(Path(results).glob("*/summary.json")) + sorted(Path(results).glob("precision/*/summary.json")):
        s = read_json(p)
        if "wall_s" not in s:  # report.py's index of the runs beside it, not a run
            continue
        rows[p.parent.name] = dict(stages_s=dict(s["wall_s"]["ff"], data=s["wall_s"]["data"], eval=s["wall_s"]["eval"]),
                                   total_min=round(s["wall_s"]["total"] / 60, 1), peak_memory_gib=s["peak_memory_gib"],
                                   memory_gib=dict(s.get("memory_gib", {}).get("ff", {}),
                                                   eval=s.get("memory_gib", {}).get("eval")),
                                   hardware=s["hardware"], on=", ".join(run_on(s)),
                                   reference=p.parent.parent == Path(results))
    return rows





def render_table(b):
    s, t, pr = b["scoring"], b["training"], b["precisions"]
    best = b["best_precision"]
    lines = [f"Benchmark: model `{b['model']}`, {b['hardware']}, torch {b['torch']}; native precisions "
             f"{', '.join(pr)} (ff.py's auto runs {b['default_precision']} here); wall time {b['wall_s'] / 60:.1f} "
             "min. Reproduce: `.venv/bin/python measure/bench.py`.", "",
             f"| what ({b['default_precision']}) | ours | official-style | ratio |", "|---|---|---|---|",
             f"| scoring {s['n']} noisy examples (examples/s) | {s['ours_examples_s']} | {s['official_examples_s']} "
             f"(scaled from {s['official_n_measured']}) | {s['speedup']}x |",
             f"| same per-example ROUGE-1 at the same cap | {s['same_rouge']} | | |", "",
             f"Each native precision side by side (utilisation: achieved FLOP/s over the best native matmul peak, "
             f"{best}'s {pr[best]['peak_tflop_s']:.3f} TFLOP/s, and over the precision's own peak):", "",
             "| precision | matmul peak (TFLOP/s) | MLP-shape matmul (TFLOP/s) | full: tokens/s | full: of best peak "
             f"| full: of own peak | full: loss after {b['config']['train_steps'] + 1} steps | LoRA: tokens/s "
             "| LoRA: of best peak | scoring (examples/s) | same ROUGE-1 as fp32 | NLL within 0.05 of fp32 |",
             "|---" * 12 + "|"]
    for p, v in pr.items():
        f, lo, sc = t[p]["full"], t[p]["lora"], b["scoring_by_precision"][p]
        lines.append(f"| {p} | {v['peak_tflop_s']:.3f} | {v['mlp_tflop_s']:.3f} | {f['tokens_s']} | "
                     f"{f['utilisation']} % | {f['utilisation_own']} % | {f['last_loss']} | {lo['tokens_s']} | "
                     f"{lo['utilisation']} % | {sc['examples_s']} | {sc['same_rouge_as_fp32']} | "
                     f"{sc['nll_within_005']} |")
    d = t[best].get("breakdown")
    if d:
        lines += ["", f"Where full finetuning's time goes in {best} (torch.profiler over {d['profiled_steps']} steps): "
                  f"matmuls {d['matmul_time_share']} % of it, running at {d['matmul_utilisation']} % of the {best} "
                  f"peak; AdamW {d['adamw_time_share']} %; everything else (norms, activations, attention, the loss, "
                  f"gradient sums) {d['other_time_share']} %. Padding is {d['padding_share']} % of the tokens the "
                  "forward passes compute."]
    if b.get("levers"):
        lines += ["", f"Training levers (full finetuning, batch 8, {b['config']['train_steps']} steps after a warm-up, "
                      "each in a fresh process):", "",
                  "| rows | mean tokens | --micro-tokens | torch.compile | allocator | precision | embedding gradient "
                  "| tokens/s | peak memory (GiB) | warm-up step (s) | loss after the steps |",
                  "|---|---|---|---|---|---|---|---|---|---|---|"]
        lines += [f"| {v['setting']} | {v['mean_seq']} | {v['micro_tokens']} | {'yes' if v['compiled'] else 'no'} | "
                  f"{'tuned' if v['allocator_tuned'] else 'glibc defaults'} | {v.get('precision', 'fp32')}"
                  + "".join(f", {k}={x}" for k, x in v.get("env", {}).items())
                  + f" | {'sparse' if v.get('sparse_embedding_grad') else 'dense'} | {v['tokens_s']} | "
                  f"{v['peak_memory_gib']} | {v['warmup_s']} | {v.get('last_loss', '')} |" for v in b["levers"]]
    if b["stages"]:
        names = list(dict.fromkeys(k for v in b["stages"].values() for k in v["stages_s"]))
        lines += ["", "Reference runs (`bash run.sh`; results/precision/: one setting again at another precision or "
                      "processor), wall time per stage in seconds:", "",
                  "| setting | run on | " + " | ".join(names) + " | total (min) | peak memory (GiB) |",
                  "|---" * (len(names) + 4) + "|"]
        for k, v in b["stages"].items():
            lines.append(f"| {k} | {v.get('on', '')} | " + " | ".join(
                f"{v['stages_s'][n]:.0f}" if n in v["stages_s"] else "" for n in names)
                + f" | {v['total_min']} | {v['peak_memory_gib']} |")
        lines.append("| the four settings | | " + " | " * len(names)
                     + f"{sum(v['total_min'] for v in b['stages'].values() if v.get('reference', True)):.1f} | |")
        if all(v.get("memory_gib", {}).get("eval") for v in b["stages"].values()):
            lines += ["", "Peak resident memory of the process by the end of each stage (GiB; eval.py is a process "
                          "of its own):", "", "| setting | run on | " + " | ".join(n for n in names if n != "data")
                      + " |", "|---" * (len(names) + 1) + "|"]
            lines += [f"| {k} | {v.get('on', '')} | " + " | ".join(f"{v['memory_gib'].get(n) or ''}" for n in names
                                                               if n != "data")
                      + " |" for k, v in b["stages"].items()]
    return "\n".join(lines) + "\n"


def main():
    cfg = parse_config(Config, __doc__)
    t_all = time.time()
    device, _, _, _ = setup(cfg.device)  # with the allocator tuning, as ff.py and eval.py
    fcfg = ff.Config(model=cfg.model, device=device)
    noisy = build_toxicity(DataConfig())["noisy"]  # the default run's noisy set
    precisions = bench_precisions(device)
    default = precision_name(device)  # what ff.py's auto runs in here: the official-style comparison and the levers
    best = max(precisions, key=lambda p: precisions[p]["peak_tflop_s"])
    model, tok = load_model(cfg.model, device)
    scoring = bench_scoring(model, tok, noisy, cfg, fcfg, device)
    print(f"scoring: {scoring}")
    scoring_by = bench_scoring_precisions(model, tok, noisy, fcfg, device, list(precisions))
    del model
    release_memory()
    training = {}
    for p in precisions:  # the profile at the best native precision: where the time goes at the machine's peak
        training[p] = bench_training(cfg, fcfg, noisy, device, p, precisions, profiled=p == best)
        print(f"training {p}: {training[p]}")
    levers = bench_levers(cfg, device, precisions) if cfg.levers else []
    b = dict(model=cfg.model, hardware=hardware(), torch=torch.__version__, default_precision=default,
             best_precision=best, precisions=precisions, scoring=scoring, scoring_by_precision=scoring_by,
             training=training, levers=levers, stages=stage_table(cfg.results), config=dataclasses.asdict(cfg),
             wall_s=round(time.time() - t_all, 1))
    write_json(Path(cfg.results) / "bench.json", b)
    table = render_table(b)
    write_text(Path(cfg.results) / "bench.md", table)
    if cfg.doc:
        update_block(cfg.doc, table, "bench")
    print(table)


if __name__ == "__main__":
    main_guard(main)
