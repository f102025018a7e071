"""ForgetFilter (Zhao et al., ICML 2024, Algorithm 1): learn the noisy set, forget during a short safety finetuning,
filter what was forgotten most, and retrain the aligned model on what is kept.

    python ff.py --run runs/toxicity --phi 0.1 --phi-nll 0.5   # what run.sh does, after data.py
    python ff.py --noisy mine.jsonl --safe safe.jsonl --run runs/mine --no-control --no-retrain   # your own data
    python ff.py --model HuggingFaceTB/SmolLM2-360M-Instruct --lora   # any causal LM (hub id or local path)

Reads <run>/noisy.jsonl and safety.jsonl (from data.py), or --noisy / --safe: JSON Lines with prompt and target,
optional id, label (unsafe | safe | task) and format. Writes into <run>:
    forgetting.jsonl   one row per noisy example: generations, ROUGE-1 and NLL at M1 and after t safety steps,
                       both forgetting scores, the control's scores, and whether each filter flagged it
    filtered.jsonl     D_kept: the noisy lines that were not flagged, byte for byte and in input order; one
                       filtered_<signal>.jsonl per signal, filtered.jsonl is the first (the paper's ROUGE)
    filter.json        thresholds, how many each filter flagged, timings, memory, loss curves (with labels,
                       `python eval.py --run <run> --filter-only` adds the filter's precision, recall, AUROC, AP)
    forgetting_hist.png  the forgetting per kind (all lines together without labels) at the filter's t, the
                       threshold, the control beside it, and (with labels) both signals' precision-recall curves
    ckpt/              m1 (+Downstream), m2 (+SafetyFT), ff_rouge and ff_nll (ForgetFilter) for eval.py
    stages/            one JSON per finished stage with the configuration that produced it: run the same command
                       again after a crash and finished stages are skipped; change an option and the stages that
                       depend on it are redone.

paper -> code (main() below, top to bottom):
    M0 = the aligned model            -> load_m0(cfg)              D_noisy -> noisy, D_safe -> safety
    M1 = finetune(M0, D_noisy)        -> train(M0, noisy)          s0 = s(M1, x): ROUGE-1 of greedy(M1) -> score()
    M2 = finetune(M1, D_safe), t steps -> train(M1, safety)        s1 = s(M2, x) after each t
    forgetting(x) = s0 - s1           -> forgetting_rows()         flag x iff forgetting > phi -> flag()
    M_ff = finetune(M0, D_kept)       -> train(M0, kept)
This project adds the control (the same safety finetuning applied to M0, to tell forgetting from a domain shift)
and a second signal (the target NLL's increase), each marked where it runs.
"""
import collections
import dataclasses
import math
import os
import random
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn as nn
from tqdm import tqdm

from common import (DEVICES, UserError, check_writable, clean_leftovers, digest, main_guard, opt, parse_config,
                    peak_memory_gib, release_memory, stage, write_json, write_jsonl, write_text)
from data import TEMPLATES, load_examples, render
from metrics import control_values, flag, otsu_threshold, rouge1, signal_values, split_diagnostic
from plots import run_figure
from model import (EMBEDDED, PRECISIONS, add_lora, base_dtype, check_lengths, collate, encode, generate, hardware,
                   length_grouped_batches, load_model, load_tokenizer, model_config, precision_name, save_checkpoint,
                   score_dtype, setup, setup_device, target_ids, token_budget_split, tokenizer_bytes, weight_bytes,
                   weights_in)

FUSED = os.environ.get("FF_FUSED", "1") == "1"  # fused AdamW (one kernel for all parameters); FF_FUSED=0 to compare


@dataclass
class Config:
    run: str = opt("runs/toxicity", "run folder: where this script writes; it reads noisy.jsonl and safety.jsonl "
                                    "there (data.py's output) unless --noisy / --safe name other files")
    noisy: str = opt("", "your noisy set D_noisy: JSON Lines with prompt and target, optional id and label "
                         "(unsafe | safe | task, for the filter metrics only)")
    safe: str = opt("", "your safe set D_safe for the safety finetuning, in the same format")
    format: str = opt("qa", "prompt template for lines without a format field: qa, text, bbq, or raw (as is)",
                      choices=tuple(TEMPLATES))
    model: str = opt(EMBEDDED, f"M0: '{EMBEDDED}' (embedded, offline), a hub id, or a local checkpoint folder")
    lora: bool = opt(False, "train LoRA adapters (r, alpha, dropout below; q_proj and v_proj, or GPT-2's c_attn) "
                            "instead of all weights")
    lora_r: int = opt(8, "LoRA rank (paper: 8)", lo=1)
    lora_alpha: int = opt(16, "LoRA alpha (paper: 16)", gt=0)
    lora_dropout: float = opt(0.05, "LoRA dropout (paper: 0.05)", lo=0, lt=1)
    lr: float = opt(1e-4, "peak learning rate, linear decay to 0, no warmup (paper: 2e-4 with LoRA)", gt=0)
    epochs: int = opt(5, "epochs over D_noisy for M1 and over D_kept for FF", lo=1)
    batch_size: int = opt(8, "examples per optimizer step", lo=1)
    micro_tokens: int = opt(256, "padded tokens per forward pass at most: each optimizer batch runs in as few passes "
                                 "as fit (toxicity batches of 8: 1-2 passes; BBQ: 2-4); bounds the activation memory "
                                 "(512: up to 25 %% faster on 2 CPU cores for up to 0.5 GiB more)", lo=1)
    grad_clip: float = opt(1.0, "clip the gradient norm to this (0 = off)", lo=0)
    max_len: int = opt(256, "truncate training sequences to this many tokens", lo=2)
    safety_steps: list = opt([10, 25, 50], "t: score the noisy set after each of these safety-finetuning steps", lo=1)
    safety_lr: float = opt(5e-5, "learning rate of the safety finetuning (linear decay over max(t) steps)", gt=0)
    filter_t: int = opt(0, "t whose forgetting drives the filter (0 = the last of --safety-steps)", lo=0)
    signals: list = opt(["auto"], "forgetting signals (rouge, nll, rank: the mean of both signals' ranks), each "
                                  "driving its own filter and FF model (ckpt/ff_<signal>); the first gives "
                                  "filtered.jsonl and the headline FF. auto: rouge, nll (the paper's first) on "
                                  "data.py's run folders; rank, nll on your own --noisy file (rank with Otsu's "
                                  "threshold won the held-out study: RESULTS.md, Which forgetting signal)",
                        choices=("auto", "rouge", "nll", "rank"))
    phi: str = opt("auto", "flag an example iff its ROUGE-1 forgetting > phi; auto = Otsu's split of the scores "
                           "(no labels needed; run.sh passes the fixed 0.1)")
    phi_nll: str = opt("auto", "flag an example iff its NLL forgetting (nats/token) > phi_nll; auto as above "
                               "(run.sh passes 0.5)")
    phi_rank: str = opt("auto", "flag an example iff its rank forgetting (0..1) > phi_rank; auto as above")
    control: bool = opt(True, "also safety-finetune M0 itself and score it at the filter's t, to tell forgetting "
                              "from a plain domain shift")
    retrain: bool = opt(True, "train FF = M0 + D_kept per signal and the compared conditions (--no-retrain: stop "
                              "once the filtered sets exist)")
    baselines: list = opt(["replay", "random", "oracle"], "compared conditions, trained from M0 like FF ('none' = "
                          "skip): replay (D_noisy with safe examples mixed in), random (D_noisy minus as many random "
                          "examples as FF drops: the floor), oracle (minus exactly the unsafe ones: the ceiling; "
                          "labelled data only)", choices=("replay", "random", "oracle", "none"))
    gen_batch_size: int = opt(32, "prompts per greedy-generation batch", lo=1)
    max_new_tokens_text: int = opt(32, "generation cap for the text (toxicity) format", lo=1)
    max_new_tokens_qa: int = opt(48, "generation cap for the QA format", lo=1)
    seed: int = opt(0, "seed of initialisation order, batch order and LoRA init", lo=0)
    device: str = opt("auto", "auto, cpu or cuda", choices=DEVICES)
    precision: str = opt("auto", "precision of training and scoring: auto (bf16 autocast on CUDA, fp16 + GradScaler "
                                 "where bf16 is missing; on CPU model.CPU_AUTO where the cores run it natively, else "
                                 "fp32), fp32, bf16 or fp16 (autocast on CPU too, emulated where not native)",
                         choices=PRECISIONS)


def check_config(cfg):
    """What the options' declared ranges (parse_config) cannot say: --signals auto, each signal once, --filter-t
    among the t, and phi a number or auto."""
    if cfg.signals == ["auto"]:  # own data: the held-out study's choice first (experiments/signals.py)
        cfg.signals = ["rank", "nll"] if cfg.noisy else ["rouge", "nll"]
    if "auto" in cfg.signals or len(set(cfg.signals)) != len(cfg.signals):
        raise UserError(f"--signals {' '.join(cfg.signals)}: choose rouge and/or nll, each once (or auto alone)")
    if cfg.filter_t and cfg.filter_t not in cfg.safety_steps:
        raise UserError(f"--filter-t {cfg.filter_t}: must be one of --safety-steps {cfg.safety_steps}")
    parse_phi(cfg.phi, "--phi"), parse_phi(cfg.phi_nll, "--phi-nll"), parse_phi(cfg.phi_rank, "--phi-rank")


# ---------------------------------------------------------------------------------------------------------------
# The training loop: AdamW, linear schedule without warmup, gradient accumulation, clipping, mixed precision.

def get_lr(step, total_steps, lr):
    return lr * max(0.0, 1.0 - step / total_steps)


def train(model, tok, examples, cfg, lr, steps=None, epochs=None, on_step=None, desc="train", until=None):
    """Finetune `model` on `examples` for `steps` optimizer steps (or `epochs` passes). Calls on_step(step) after
    each step, which is how the safety finetuning scores the noisy set at t = 10, 25, 50. until: stop after that
    many steps of the same schedule (the weights a longer run has at step `until`; the ablations use it). Returns
    the loss log."""
    device = next(model.parameters()).device.type
    _, amp, autocast, _ = setup_device(device, cfg.precision)
    # fp16 overflows where bf16 does not: scale the loss up, and skip a step whose gradients came out inf or nan
    # (the scaler then halves its scale). bf16 and fp32 need no scaler.
    scaler = torch.amp.GradScaler(device, enabled=amp == torch.float16)
    skipped = 0
    seqs = [encode(tok, ex, cfg.max_len)[0] for ex in examples]
    rng = random.Random(cfg.seed)
    lengths = [len(s) for s in seqs]
    steps_per_epoch = math.ceil(len(seqs) / cfg.batch_size)
    total = steps if steps is not None else epochs * steps_per_epoch

    def batches():  # endless, epoch after epoch
        while True:
            yield from length_grouped_batches(lengths, cfg.batch_size, rng)

    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.0, fused=FUSED)
    order, log, model_was_training = batches(), [], model.training
    model.train()
    t0, tokens, scoring_s = time.time(), 0, 0.0
    bar = tqdm(range(min(total, until or total)), desc=desc, unit="step")
    for step in bar:
        for g in opt.param_groups:
            g["lr"] = get_lr(step, total, lr)
        batch = next(order)
        n_pred = sum(lengths[i] - 1 for i in batch)  # predicted tokens in the whole optimizer batch
        lossf = 0.0
        for part in token_budget_split(batch, lengths, cfg.micro_tokens):
            ids, mask, labels = collate([seqs[i] for i in part], tok.pad_token_id, device)
            with autocast:
                logits = model(input_ids=ids, attention_mask=mask).logits
            # next-token loss summed over the pass, divided by the batch's token count: the mean over every
            # predicted token of the optimizer batch, however many passes it took (shift the labels, not the
            # logits, so the big logits tensor is not copied)
            target = torch.cat([labels[:, 1:], labels.new_full((len(part), 1), -100)], dim=1)
            loss = nn.functional.cross_entropy(logits.float().view(-1, logits.size(-1)), target.view(-1),
                                               ignore_index=-100, reduction="sum") / n_pred
            del logits  # the loss keeps what backward needs; this frees the logits (passes x vocabulary) early
            scaler.scale(loss).backward()
            lossf += loss.item()
            tokens += int(mask.sum())
        scaler.unscale_(opt)
        if cfg.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip)
        scale = scaler.get_scale() if scaler.is_enabled() else None
        scaler.step(opt)
        scaler.update()
        skipped += scaler.is_enabled() and scaler.get_scale() < scale  # the scale drops only after a skipped step
        opt.zero_grad(set_to_none=True)
        log.append(dict(step=step + 1, loss=round(lossf, 4), lr=get_lr(step, total, lr)))
        if step == 0:  # the first step pays the warm-up (allocator, kernels, compilation): timed apart
            warmup = dict(s=round(time.time() - t0, 2), tokens=tokens)
        bar.set_postfix(loss=f"{lossf:.3f}", tok_s=f"{tokens / (time.time() - t0 - scoring_s):.0f}")
        if on_step is not None:
            t_cb = time.time()
            on_step(step + 1)
            scoring_s += time.time() - t_cb  # the scores at t: timed apart, so that tokens / train_s is training
    model.train(model_was_training)
    del opt  # AdamW's two moments, twice the model's size: give them back before whatever comes next
    release_memory()
    return dict(steps=len(log), tokens=tokens, wall_s=round(time.time() - t0, 1),
                train_s=round(time.time() - t0 - scoring_s, 1), warmup=warmup if log else None, loss=log) | (
        dict(skipped_steps=skipped) if scaler.is_enabled() else {})


# ---------------------------------------------------------------------------------------------------------------
# The score s(M, x): ROUGE-1 of the first line of M's greedy continuation against the target (the paper's), and the
# target's NLL (this project's second signal), read off the same forward passes.




def caps_for(examples, cfg):
    return [cfg.max_new_tokens_text if ex["format"] == "text" else cfg.max_new_tokens_qa for ex in examples]


def score(model, tok, examples, cfg, desc):
    """s(M, x) for every example: greedy generation, its ROUGE-1 against the target, and the target NLL."""
    was = model.training
    model.eval()
    dtype = score_dtype(next(model.parameters()).device.type, cfg.lora, cfg.precision)
    with weights_in(model, dtype):  # bf16 runs score in bf16 too; the fp32 master weights are put back after
        gens, nll = generate(model, tok, [render(ex) for ex in examples], caps_for(examples, cfg), cfg.gen_batch_size,
                             targets=[target_ids(tok, ex, cfg.max_len) for ex in examples], desc=desc)
    model.train(was)
    release_memory()
    return {ex["id"]: dict(gen=g, rouge=round(rouge1(ex["target"], g), 4), nll=round(n, 4))
            for ex, g, n in zip(examples, gens, nll)}


# ---------------------------------------------------------------------------------------------------------------
# Forgetting and the filter.

def forgetting_rows(noisy, s_m0, s_m1, s_t, s_ctrl, ts, ranked=False):
    """One row per noisy example. forget_rouge[t] = ROUGE(M1) - ROUGE(M2 after t steps) (the paper's score);
    forget_nll[t] = NLL(M2 after t) - NLL(M1) (loss-based, higher = more forgotten). The control replaces M1
    by M0 (which never saw D_noisy): what it 'forgets' is a plain domain shift, not forgetting. Steps t are keys
    as strings ("10"), as in the stage files and the rows."""
    rows = []
    for ex in noisy:
        i = ex["id"]
        row = {k: ex.get(k) for k in ("id", "source", "kind", "prompt", "target")}
        row["m0"], row["m1"] = s_m0[i], s_m1[i]
        row["safety"] = {t: s_t[t][i] for t in ts}
        row["forget_rouge"] = {t: round(s_m1[i]["rouge"] - s_t[t][i]["rouge"], 4) for t in ts}
        row["forget_nll"] = {t: round(s_t[t][i]["nll"] - s_m1[i]["nll"], 4) for t in ts}
        if s_ctrl:  # this project's control, at the t it was scored at (the filter's)
            row["control"] = {t: c[i] for t, c in s_ctrl.items()}
            row["control_forget_rouge"] = {t: round(s_m0[i]["rouge"] - c[i]["rouge"], 4) for t, c in s_ctrl.items()}
            row["control_forget_nll"] = {t: round(c[i]["nll"] - s_m0[i]["nll"], 4) for t, c in s_ctrl.items()}
        rows.append(row)
    if ranked:  # forget_rank[t]: the mean of the example's ROUGE and NLL forgetting ranks in this run (0..1)
        for t in ts:
            for row, v in zip(rows, signal_values(rows, "rank", t)):
                row.setdefault("forget_rank", {})[t] = round(v, 4)
    return rows


def parse_phi(value, flag):
    if value == "auto":
        return None
    try:
        phi = float(value)
    except ValueError:
        raise UserError(f"{flag} {value!r}: not a number; give a threshold such as 0.1, or auto") from None
    if not math.isfinite(phi):
        raise UserError(f"{flag} {value!r}: must be a finite number, or auto")
    return phi


def resolve_thresholds(cfg, rows, filter_t):
    """phi per signal: the fixed value given, or Otsu's split of this run's forgetting scores ('auto', no labels)."""
    out = {}
    for sig, value, flag_name in (("rouge", cfg.phi, "--phi"), ("nll", cfg.phi_nll, "--phi-nll"),
                                  ("rank", cfg.phi_rank, "--phi-rank")):
        if f"forget_{sig}" not in rows[0]:
            continue
        phi = parse_phi(value, flag_name)
        out[sig] = round(otsu_threshold([r[f"forget_{sig}"][str(filter_t)] for r in rows]), 4) if phi is None else phi
    return out


def flag_rows(rows, phis, signals, filter_t):
    """row["flagged"][signal] = the filter's verdict at t = filter_t, for each signal that drives a filter."""
    for r in rows:
        r["flagged"] = {sig: flag(r[f"forget_{sig}"][str(filter_t)], phis[sig]) for sig in signals}
    return rows


# ---------------------------------------------------------------------------------------------------------------
# Plumbing for main(): inputs and every check before any work, the models, what each stage depends on, outputs.

def prepare(cfg):
    """Check the options and both input files, the run folder and the prompt lengths, before any work starts."""
    check_config(cfg)
    run = Path(cfg.run)
    noisy_path, safe_path = cfg.noisy or run / "noisy.jsonl", cfg.safe or run / "safety.jsonl"
    noisy, noisy_lines, noisy_at = load_examples(noisy_path, cfg.format)
    safety, _, safety_at = load_examples(safe_path, cfg.format)
    check_writable(run)
    tok = load_tokenizer(cfg.model)
    check_lengths(tok, noisy_path, noisy, noisy_at, cfg.max_len)
    check_lengths(tok, safe_path, safety, safety_at, cfg.max_len)
    clean_leftovers(run)
    check_disk(cfg, run, tok, labelled=noisy[0].get("kind") is not None)
    device, _, _, note = setup(cfg.device, cfg.precision)
    labelled = noisy[0].get("kind") is not None
    print(f"device {device}, {note} | {len(noisy)} noisy, {len(safety)} safety examples | model {cfg.model}"
          f"{' + LoRA' if cfg.lora else ''} | t = {sorted(set(cfg.safety_steps))}, filter at t = "
          f"{cfg.filter_t or max(cfg.safety_steps)}: rouge > {cfg.phi}, nll > {cfg.phi_nll}"
          + ("" if labelled else " | no labels: no filter metrics"))
    return run, noisy, noisy_lines, safety, device


def check_disk(cfg, run, tok, labelled):
    """Before the first stage: the bytes the checkpoints this run still has to write will take (a LoRA checkpoint is
    its adapter, a full one every weight in fp32, each with the tokenizer), against the free space of its disk."""
    names = ["m1", "m2"] + ([f"ff_{sig}" for sig in cfg.signals] + [b for b in cfg.baselines if b != "none" and (
        b != "oracle" or labelled)] if cfg.retrain else [])
    todo = [n for n in names if not (run / "ckpt" / n).is_dir()]
    config = model_config(cfg.model)
    if config is None or not todo:
        return
    each = weight_bytes(config, cfg.lora_r if cfg.lora else 0) + tokenizer_bytes(tok)
    need, free = len(todo) * each, shutil.disk_usage(run if run.exists() else run.parent).free
    print(f"disk: {len(todo)} checkpoints of {each / 2**20:.1f} MiB to write ({need / 2**30:.2f} GiB); "
          f"{free / 2**30:.1f} GiB free")
    if need * 1.1 + 2**28 > free:  # 10 % and 256 MiB of room for the rows, the stages and a temporary copy
        raise UserError(f"{run}: this run writes about {need / 2**30:.1f} GiB of checkpoints and its disk has "
                        f"{free / 2**30:.1f} GiB free; free some space, or pass --run on a larger disk"
                        + ("" if cfg.lora else " (or --lora: a LoRA checkpoint is its adapter, megabytes)"))


def load_m0(cfg, device, path=None):
    """M0 (or the checkpoint at `path`), with fresh LoRA adapters under --lora, seeded so that the control, M1, M2 and
    every FF start from the same adapter initialisation."""
    release_memory()  # the previous model is gone: return its memory before loading the next
    torch.manual_seed(cfg.seed)
    model, tok = load_model(str(path or cfg.model), device, base_dtype(device, cfg.lora, cfg.precision))
    return (add_lora(model, cfg) if cfg.lora else model), tok


def scores_at(store, model, tok, examples, cfg, label, at):
    """An on_step callback for train(): store[str(t)] = score(...) right after optimizer step t, for t in `at`."""
    return lambda step: step in at and store.__setitem__(str(step), score(model, tok, examples, cfg,
                                                                         f"{label} t={step}"))


def stage_keys(cfg, device, noisy, safety, ts, filter_t):
    """What each stage depends on: change any of it and that stage (and every stage after it) is redone."""
    train_fields = ("model", "lora", "lora_r", "lora_alpha", "lora_dropout", "batch_size", "micro_tokens",
                    "grad_clip", "max_len", "max_new_tokens_text", "max_new_tokens_qa", "seed")
    base = dict({f: getattr(cfg, f) for f in train_fields}, device=device, noisy=digest(noisy))
    precision = precision_name(device, cfg.precision)  # auto resolved: the dtype the stage actually ran in
    if precision != "fp32":  # fp32 is not keyed, so that runs made before the option existed still resume
        base["precision"] = precision
    safety_key = dict(safety=digest(safety), safety_lr=cfg.safety_lr, ts=ts)
    m1 = dict(base, lr=cfg.lr, epochs=cfg.epochs)
    return dict(control=dict(base, **safety_key, control=cfg.control, filter_t=filter_t), m1=m1,
                m2=dict(m1, **safety_key))


def write_filtered(run, noisy, noisy_lines, kept, signals):
    """filtered_<signal>.jsonl per signal and filtered.jsonl (the first signal's): the kept lines exactly as read."""
    for sig, idx in kept.items():
        counts = ", ".join(f"{k} {n}" for k, n in sorted(collections.Counter(
            noisy[i].get("kind") for i in set(range(len(noisy))) - set(idx)).items()) if k)
        print(f"{sig} filter flagged {len(noisy) - len(idx)} of {len(noisy)}" + (f" ({counts})" if counts else ""))
        write_text(run / f"filtered_{sig}.jsonl", "".join(noisy_lines[i] for i in idx))
    write_text(run / "filtered.jsonl", "".join(noisy_lines[i] for i in kept[signals[0]]))


def diagnose(rows, phis, signals, filter_t):
    """Per filter, without labels: how many lines it flags and whether the split looks real (metrics.split_diagnostic:
    two modes or one, and how many lines forget more than the control's 99th percentile)."""
    t = str(filter_t)
    return {sig: split_diagnostic([r[f"forget_{sig}"][t] for r in rows], phis[sig],
                                  control_values(rows, sig, t) if t in rows[0].get("control", {}) else None)
            for sig in signals}


def write_filter_json(run, cfg, device, stages, logs, phis, kept, n, filter_t, params, diagnostics):
    """filter.json: what eval.py and the report read about this run besides the rows."""
    timings = {k: v["wall_s"] for k, v in stages.items()}  # as first computed, also when this run skipped them
    write_json(run / "filter.json", dict(
        config=dataclasses.asdict(cfg), device=device, precision=setup_device(device, cfg.precision)[3],
        resolved_precision=precision_name(device, cfg.precision), hardware=hardware(),
        torch=torch.__version__, timings_s=timings, peak_memory_gib=peak_memory_gib(),
        memory_gib={k: v.get("peak_memory_gib") for k, v in stages.items()},
        params=params, thresholds=phis, n_kept={sig: len(k) for sig, k in kept.items()},
        n_flagged={sig: n - len(k) for sig, k in kept.items()}, n=n, filter_t=filter_t, ff_signals=cfg.signals,
        diagnostic=diagnostics,
        finetuned=[name for name in logs if name not in ("m1", "m2")],
        train={name: {k: v for k, v in log.items() if k != "loss"} | dict(final_loss=log["loss"][-1]["loss"])
               for name, log in logs.items()},
        loss_curves={name: log["loss"] for name, log in logs.items()}))
    print(f"wrote {run}/forgetting.jsonl, filtered*.jsonl, filter.json, ckpt/ | {timings}")


STAGE_TITLES = {f"ff_{sig}": f"FF ({sig}): M0 + D_kept" for sig in ("rouge", "nll", "rank")} | {
                "replay": "Replay: M0 + D_noisy + safe", "random": "Random filter: M0 + D_noisy minus random",
                "oracle": "Oracle filter: M0 + D_noisy minus unsafe"}


def finetune_sets(cfg, run, noisy, safety, kept, ts):
    """Every training set that starts again from M0: FF's D_kept per signal (Algorithm 1's last line), then the
    compared conditions (RESULTS.md, The paper: Compared conditions), each written to <run>/train_<name>.jsonl:
      replay  D_noisy + k examples of D_safe, k = max(t) * batch_size / epochs: over its epochs the model sees as many
              safe examples as the safety finetuning does (the paper does not give its ratio)
      random  D_noisy minus as many examples as the first signal's filter flagged, drawn uniformly (seeded): the floor
      oracle  D_noisy minus exactly the examples labelled unsafe: the ceiling (labelled data only)"""
    out = {f"ff_{sig}": [noisy[i] for i in idx] for sig, idx in kept.items()}
    if "replay" in cfg.baselines:  # each condition draws from its own seeded generator: none depends on the others
        k = min(len(safety), math.ceil(max(ts) * cfg.batch_size / cfg.epochs))
        out["replay"] = noisy + random.Random(cfg.seed).sample(safety, k)
    if "random" in cfg.baselines:
        drop = set(random.Random(cfg.seed + 1).sample(range(len(noisy)), len(noisy) - len(kept[cfg.signals[0]])))
        out["random"] = [ex for i, ex in enumerate(noisy) if i not in drop]
    if "oracle" in cfg.baselines and noisy[0].get("kind") is None:
        print("oracle filter: skipped, the examples carry no labels")
    elif "oracle" in cfg.baselines:
        out["oracle"] = [ex for ex in noisy if ex["kind"] != "unsafe"]
    for name, examples in out.items():
        if not examples:
            raise UserError(f"{STAGE_TITLES[name]}: nothing is left to train on; raise the filter's phi")
        if not name.startswith("ff_"):
            write_jsonl(run / f"train_{name}.jsonl", examples)
    return {name: (STAGE_TITLES[name], examples) for name, examples in out.items()}


# ---------------------------------------------------------------------------------------------------------------
# ---- FORGETFILTER: Algorithm 1, top to bottom. The part worth hacking. Each stage is resumable (common.stage). ----

def main():
    cfg = parse_config(Config, __doc__)
    run, noisy, noisy_lines, safety, device = prepare(cfg)
    ts, filter_t = sorted(set(cfg.safety_steps)), cfg.filter_t or max(cfg.safety_steps)
    keys = stage_keys(cfg, device, noisy, safety, ts, filter_t)
    m0 = lambda path=None: load_m0(cfg, device, path)  # noqa: E731

    # 0. s(M0, x); this project's control: the same safety finetuning applied to M0, which never saw D_noisy, scored
    #    at the filter's t (each further t costs a scoring pass): what it "forgets" is a plain domain shift.
    def control():
        model, tok = m0()
        s_m0, s_ctrl = score(model, tok, noisy, cfg, "score M0"), {}
        params = sum(p.numel() for n, p in model.named_parameters() if "lora_" not in n)  # M0's size (size study)
        if cfg.control:
            train(model, tok, safety, cfg, cfg.safety_lr, steps=ts[-1], desc="control: M0 + D_safe",
                  on_step=scores_at(s_ctrl, model, tok, noisy, cfg, "control", [filter_t]))
        return dict(s_m0=s_m0, s_ctrl=s_ctrl, params=params)
    ctrl = stage(run, "control", "M0 scores and control", keys["control"], control)

    # 1. M1 = finetune(M0, D_noisy); s0 = s(M1, x) for every x in D_noisy
    def learn():
        model, tok = m0()
        log = train(model, tok, noisy, cfg, cfg.lr, epochs=cfg.epochs, desc="M1 <- M0 + D_noisy")
        save_checkpoint(model, tok, run / "ckpt/m1", base=cfg.model)
        del model
        model, tok = m0(run / "ckpt/m1")  # s0 on exactly the weights M2 starts from (LoRA: merged, base dtype)
        return dict(s_m1=score(model, tok, noisy, cfg, "score M1"), log=log)
    m1 = stage(run, "m1", "M1: learn D_noisy", keys["m1"], learn, needs=["ckpt/m1"])

    # 2. M2 = finetune(M1, D_safe) for t steps; s1 = s(M2, x) after each t. M2 at the last t is +SafetyFT.
    def forget():
        model, tok = m0(run / "ckpt/m1")
        s_t = {}
        log = train(model, tok, safety, cfg, cfg.safety_lr, steps=ts[-1], desc="M2 <- M1 + D_safe",
                    on_step=scores_at(s_t, model, tok, noisy, cfg, "M2", ts))
        save_checkpoint(model, tok, run / "ckpt/m2", base=run / "ckpt/m1")
        return dict(s_t=s_t, log=log)
    m2 = stage(run, "m2", "M2: safety finetuning", keys["m2"], forget, needs=["ckpt/m2"])

    # 3. forgetting = s0 - s1; flag x iff forgetting > phi; D_kept = the rest. One filter per signal (the paper's
    #    ROUGE, and this project's NLL).
    rows = forgetting_rows(noisy, ctrl["s_m0"], m1["s_m1"], m2["s_t"], ctrl["s_ctrl"], [str(t) for t in ts],
                           ranked="rank" in cfg.signals)
    phis = resolve_thresholds(cfg, rows, filter_t)
    flag_rows(rows, phis, cfg.signals, filter_t)
    write_jsonl(run / "forgetting.jsonl", rows)
    kept = {sig: [i for i, r in enumerate(rows) if not r["flagged"][sig]] for sig in cfg.signals}
    write_filtered(run, noisy, noisy_lines, kept, cfg.signals)

    # 4. M_ff = finetune(M0, D_kept): restart from the aligned model, no safety finetuning afterwards. The compared
    #    conditions (Replay, the random and the oracle filter) train from M0 the same way.
    finetuned = {}
    for name, (title, examples) in finetune_sets(cfg, run, noisy, safety, kept, ts).items() if cfg.retrain else []:
        def finetune(name=name, title=title, examples=examples):
            model, tok = m0()
            log = train(model, tok, examples, cfg, cfg.lr, epochs=cfg.epochs, desc=title.replace(":", " <-"))
            save_checkpoint(model, tok, run / f"ckpt/{name}", base=cfg.model)
            return dict(log=log, n=len(examples))
        finetuned[name] = stage(run, name, title, dict(keys["m2"], examples=digest([ex["id"] for ex in examples])),
                                finetune, needs=[f"ckpt/{name}"])

    stages = {"M0 scores and control": ctrl, "M1: learn D_noisy": m1, "M2: safety finetuning": m2} | {
        STAGE_TITLES[name]: v for name, v in finetuned.items()}
    logs = dict(m1=m1["log"], m2=m2["log"]) | {name: v["log"] for name, v in finetuned.items()}
    diagnostics = diagnose(rows, phis, cfg.signals, filter_t)
    write_filter_json(run, cfg, device, stages, logs, phis, kept, len(noisy), filter_t, ctrl.get("params"), diagnostics)
    for sig, d in diagnostics.items():  # in plain words: can the user trust this split?
        print(f"filter {sig} > {phis[sig]:g}: {d['verdict']}")
    print(f"wrote {run_figure(run)}")  # the forgetting histogram per kind, the threshold, the control beside it


if __name__ == "__main__":
    main_guard(main)
