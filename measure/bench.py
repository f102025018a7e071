"""How fast is each part, measured in one run on one model: scoring, training, and the reference run's stages.

    python measure/bench.py                   # embedded SmolLM2-135M-Instruct on CPU (or CUDA when present), 10-13 min on CPU
    python measure/bench.py --official-n 2    # fewer examples for the slow official-style loop

Prints a table and writes results/bench.json, results/bench.md and PERFORMANCE.md's benchmark table (between its markers):
  * scoring: ff.score's batched, early-stopped greedy generation over the whole noisy set, against the official
    code's loop (one example at a time, `generate` with max_new_tokens=500 and no line stop, first line kept) run
    on --official-n examples and scaled to the set; both as examples/s. A second check gives both loops the same
    token cap and compares every example's ROUGE-1.
  * training: tokens/s of full finetuning and of LoRA, and utilisation = achieved FLOP/s / the matmul peak measured
    here (FLOPs per token: 6 N full, 4 N LoRA (no weight gradients), plus attention 12 * layers * d * seq).
  * levers: training tokens/s and peak memory at --micro-tokens 256 (the default) / 512 / 1024 on short toxicity
    rows and on BBQ rows (2-2.5x longer; mean tokens in the table), with torch.compile, and with glibc's allocator
    defaults (not tune_allocator), each in a fresh process so that its peak memory is its own.
  * stages: wall time and peak memory of each stage of the committed reference runs (results/<setting>/summary.json).
"""
import dataclasses
import multiprocessing
import random
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the tool (common, data, ff, ...) is one level up
import ff
from common import (DEVICES, main_guard, opt, parse_config, peak_memory_gib, read_json, release_memory, tune_allocator,
                    update_block, write_json, write_text)
from data import BUILDERS, Config as DataConfig, build_toxicity, render
from model import (EMBEDDED, add_lora, encode, generate, hardware, length_grouped_batches, load_model, prompt_ids,
                   setup, token_budget_split)


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


def matmul_peak(device, dtype):
    """The best FLOP/s of a square matmul over a few sizes: the machine's practical peak for this dtype."""
    best = 0.0
    for n in ((1024, 2048, 3072) if device == "cpu" else (4096, 8192)):
        a, b = torch.randn(n, n, device=device, dtype=dtype), torch.randn(n, n, device=device, dtype=dtype)
        a @ b  # warm-up
        reps = 3 if device == "cpu" else 20
        sync(device)
        t0 = time.perf_counter()
        for _ in range(reps):
            a @ b
        sync(device)
        best = max(best, 2 * n ** 3 * reps / (time.perf_counter() - t0))
    return best


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


def bench_training(cfg, fcfg, noisy, device, peak):
    out = {}
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    for mode in ("full", "lora"):
        model, tok = load_model(cfg.model, device, dtype if mode == "lora" else torch.float32)
        if mode == "lora":
            model = add_lora(model, fcfg)
        ff.train(model, tok, noisy, fcfg, 1e-5, steps=1, desc=f"{mode}: warm-up")
        sync(device)
        log = ff.train(model, tok, noisy, fcfg, 1e-5, steps=cfg.train_steps, desc=f"{mode}: measured")
        sync(device)
        seq = log["tokens"] / (cfg.train_steps * fcfg.batch_size)
        tok_s = log["tokens"] / log["wall_s"]
        flops = tok_s * train_flops_per_token(model, mode == "lora", seq)
        out[mode] = dict(tokens_s=round(tok_s, 1), tflop_s=round(flops / 1e12, 4),
                         utilisation=round(100 * flops / peak, 1), mean_seq=round(seq, 1))
        if mode == "full" and device == "cpu":
            out["breakdown"] = training_breakdown(model, tok, noisy, fcfg, peak)
        del model
        release_memory()
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


# (rows, --micro-tokens, torch.compile, common.tune_allocator)
LEVERS = [("toxicity", 256, False, True), ("toxicity", 512, False, True), ("toxicity", 1024, False, True),
          ("toxicity", 256, True, True), ("toxicity", 256, False, False),
          ("bias", 256, False, True), ("bias", 512, False, True), ("bias", 1024, False, True)]


def lever_child(setting, micro_tokens, compiled, tuned, steps, model_name, device, queue):
    """One lever, in a fresh (spawned) process: load, warm up one step (where torch.compile compiles), measure."""
    if tuned:
        tune_allocator()
    noisy = BUILDERS[setting](DataConfig(concept=setting, n=160 if setting == "toxicity" else 96))["noisy"]
    fcfg = ff.Config(model=model_name, device=device, micro_tokens=micro_tokens)
    model, tok = load_model(model_name, device)
    if compiled:
        model.forward = torch.compile(model.forward, dynamic=True)
    t0 = time.time()
    ff.train(model, tok, noisy, fcfg, 1e-5, steps=1, desc=f"{setting} {micro_tokens}: warm-up")
    warm = time.time() - t0
    log = ff.train(model, tok, noisy, fcfg, 1e-5, steps=steps, desc=f"{setting} {micro_tokens}: measured")
    queue.put(dict(setting=setting, micro_tokens=micro_tokens, compiled=compiled, allocator_tuned=tuned,
                   warmup_s=round(warm, 1),
                   tokens_s=round(log["tokens"] / log["wall_s"], 1),
                   mean_seq=round(log["tokens"] / (steps * fcfg.batch_size), 1), peak_memory_gib=peak_memory_gib()))


def bench_levers(cfg, device):
    ctx, out = multiprocessing.get_context("spawn"), []
    for lever in LEVERS:
        queue = ctx.Queue()
        p = ctx.Process(target=lever_child, args=(*lever, cfg.train_steps, cfg.model, device, queue))
        p.start()
        out.append(queue.get())
        p.join()
        print(f"lever: {out[-1]}")
    return out


def stage_table(results):
    rows = {}
    for p in sorted(Path(results).glob("*/summary.json")):
        s = read_json(p)
        rows[p.parent.name] = dict(stages_s=dict(s["wall_s"]["ff"], data=s["wall_s"]["data"], eval=s["wall_s"]["eval"]),
                                   total_min=round(s["wall_s"]["total"] / 60, 1), peak_memory_gib=s["peak_memory_gib"],
                                   memory_gib=dict(s.get("memory_gib", {}).get("ff", {}),
                                                   eval=s.get("memory_gib", {}).get("eval")),
                                   hardware=s["hardware"])
    return rows


def render_table(b):
    s, t = b["scoring"], b["training"]
    lines = [f"Benchmark: model `{b['model']}`, {b['hardware']}, torch {b['torch']}, {b['dtype']}; matmul peak "
             f"{b['matmul_peak_tflop_s']:.3f} TFLOP/s measured in the same run; wall time {b['wall_s'] / 60:.1f} min. "
             "Reproduce: `.venv/bin/python measure/bench.py`.", "",
             "| what | ours | official-style | ratio |", "|---|---|---|---|",
             f"| scoring {s['n']} noisy examples (examples/s) | {s['ours_examples_s']} | {s['official_examples_s']} "
             f"(scaled from {s['official_n_measured']}) | {s['speedup']}x |",
             f"| same per-example ROUGE-1 at the same cap | {s['same_rouge']} | | |", "",
             "| training | tokens/s | TFLOP/s | utilisation of matmul peak |", "|---|---|---|---|"]
    lines += [f"| {m} | {v['tokens_s']} | {v['tflop_s']} | {v['utilisation']} % |" for m, v in t.items()
              if m in ("full", "lora")]
    if "breakdown" in t:
        d = t["breakdown"]
        lines += ["", f"Where full finetuning's time goes (torch.profiler over {d['profiled_steps']} steps): matmuls "
                  f"{d['matmul_time_share']} % of it, running at {d['matmul_utilisation']} % of the peak; AdamW "
                  f"{d['adamw_time_share']} %; everything else (norms, activations, attention, the loss, gradient "
                  f"sums) {d['other_time_share']} %. Padding is {d['padding_share']} % of the tokens the forward "
                  "passes compute."]
    if b.get("levers"):
        lines += ["", "Training levers (full finetuning, batch 8, each in a fresh process):", "",
                  "| rows | mean tokens | --micro-tokens | torch.compile | allocator | tokens/s | peak memory (GiB) "
                  "| warm-up step (s) |",
                  "|---|---|---|---|---|---|---|---|"]
        lines += [f"| {v['setting']} | {v['mean_seq']} | {v['micro_tokens']} | {'yes' if v['compiled'] else 'no'} | "
                  f"{'tuned' if v['allocator_tuned'] else 'glibc defaults'} | "
                  f"{v['tokens_s']} | {v['peak_memory_gib']} | {v['warmup_s']} |" for v in b["levers"]]
    if b["stages"]:
        names = list(dict.fromkeys(k for v in b["stages"].values() for k in v["stages_s"]))
        lines += ["", "Reference runs (`bash run.sh`), wall time per stage in seconds:", "",
                  "| setting | " + " | ".join(names) + " | total (min) | peak memory (GiB) |",
                  "|---" * (len(names) + 3) + "|"]
        for k, v in b["stages"].items():
            lines.append(f"| {k} | " + " | ".join(f"{v['stages_s'][n]:.0f}" if n in v["stages_s"] else ""
                                                for n in names) + f" | {v['total_min']} | {v['peak_memory_gib']} |")
        lines.append("| all settings | " + " | " * len(names)
                     + f"{sum(v['total_min'] for v in b['stages'].values()):.1f} | |")
        if all(v.get("memory_gib", {}).get("eval") for v in b["stages"].values()):
            lines += ["", "Peak resident memory of the process by the end of each stage (GiB; eval.py is a process "
                          "of its own):", "", "| setting | " + " | ".join(n for n in names if n != "data") + " |",
                      "|---" * len(names) + "|"]
            lines += [f"| {k} | " + " | ".join(f"{v['memory_gib'].get(n) or ''}" for n in names if n != "data")
                      + " |" for k, v in b["stages"].items()]
    return "\n".join(lines) + "\n"


def main():
    cfg = parse_config(Config, __doc__)
    t_all = time.time()
    device, _, _, _ = setup(cfg.device)  # with the allocator tuning, as ff.py and eval.py
    fcfg = ff.Config(model=cfg.model, device=device)
    noisy = build_toxicity(DataConfig())["noisy"]  # the default run's noisy set
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    peak = matmul_peak(device, dtype)
    print(f"matmul peak {peak / 1e12:.3f} TFLOP/s ({dtype})")
    model, tok = load_model(cfg.model, device)
    scoring = bench_scoring(model, tok, noisy, cfg, fcfg, device)
    print(f"scoring: {scoring}")
    del model
    release_memory()
    training = bench_training(cfg, fcfg, noisy, device, peak)
    print(f"training: {training}")
    levers = bench_levers(cfg, device) if cfg.levers else []
    b = dict(model=cfg.model, hardware=hardware(), torch=torch.__version__, dtype=str(dtype),
             matmul_peak_tflop_s=round(peak / 1e12, 4), scoring=scoring, training=training, levers=levers,
             stages=stage_table(cfg.results), config=dataclasses.asdict(cfg), wall_s=round(time.time() - t_all, 1))
    write_json(Path(cfg.results) / "bench.json", b)
    table = render_table(b)
    write_text(Path(cfg.results) / "bench.md", table)
    if cfg.doc:
        update_block(cfg.doc, table, "bench")
    print(table)


if __name__ == "__main__":
    main_guard(main)
