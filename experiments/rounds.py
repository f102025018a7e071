"""Interleaved rounds (the paper's Fig 5): does safety finetuning erase unsafe behaviour, or does it come back with
the next noisy finetuning? Two pipelines from M0, round after round, each round on a fresh noisy draw:

  sequential  round k: finetune on noisy draw k, evaluate; a short safety finetuning (t = max --safety-steps), evaluate
  FF          round k: ForgetFilter on noisy draw k (M1 = the current model + draw k, M2 = M1 + D_safe, forgetting,
              the filter), then finetune the current model on what is kept, evaluate; no safety finetuning. One FF
              pipeline per --signals: FF (the first, the paper's ROUGE) and FF-nll, as ff.py names them

    python experiments/rounds.py --concept toxicity --rounds 2 --phi 0.1 --phi-nll 0.5   # what `bash run.sh rounds` does

The draws come from one build of data.py at N = rounds * n, dealt kind by kind into the rounds: disjoint from each
other, from D_safe and from the evaluation sets (checked). ff.py's training and filter options apply (model, LoRA, lr,
epochs, t, phi, seed). Writes into --run: round<k>_noisy.jsonl, safety.jsonl, eval_*.jsonl, ckpt/<step>/, eval/<step>.jsonl,
rounds.json and rounds.png; copies rounds.json, rounds.png and the per-item rows to results/<name>/. Each step is a
resumable stage (<run>/stages/).
"""
import dataclasses
import random
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the tool (common, data, ff, ...) is one level up
import ff
import data
from common import UserError, digest, git_commit, main_guard, opt, parse_config, stage, write_json, write_jsonl
from eval import SCORERS, evaluate, load_scorer
from figures import rounds_figure
from model import check_lengths, load_tokenizer, precision_name, save_checkpoint, score_dtype, setup, weights_in
from metrics import metric
from report import fmt

POINT_METRICS = ("toxicity", "s_amb", "compliance", "squad_f1")  # of metrics.METRIC: what each point of Fig 5 holds
# ff.py's options that shape a round's training and filter (the model, LoRA, learning rates, t, phi, seed, ...); the
# ones about its own inputs and outputs (--run, --noisy, --safe, --format, --control, --retrain, --baselines) are not
FF_OPTIONS = [f for f in dataclasses.fields(ff.Config)
              if f.name not in ("run", "noisy", "safe", "format", "control", "retrain", "baselines")]
TRAIN_FIELDS = ("model", "lora", "lora_r", "lora_alpha", "lora_dropout", "batch_size", "micro_tokens", "grad_clip",
                "max_len", "seed", "lr", "epochs", "safety_lr")  # what a checkpoint depends on, with the precision


@dataclass
class RoundsOptions:
    run: str = opt("runs/rounds/toxicity", "run folder of the experiment")
    concept: str = opt("toxicity", "unsafe concept of every round's noisy draw: toxicity, bias, harmfulness, mixed",
                       choices=("toxicity", "bias", "harmfulness", "mixed"))
    rounds: int = opt(2, "rounds of (noisy finetuning, safety finetuning); the paper shows 3", lo=1)
    n: int = opt(160, "size of each round's noisy draw (before rounding, as data.py --n)", lo=1)
    r: float = opt(0.5, "unsafe fraction of every draw", gt=0, lt=1)
    n_safety: int = opt(200, "size of D_safe, the same in every round", lo=1)
    n_eval: int = opt(100, "items per evaluation set", lo=1)
    source: str = opt("offline", "training data: offline (data/) or hub (the paper's, through datasets), as data.py",
                      choices=("offline", "hub"))
    hub_files: str = opt("", "with --source hub: local copies of the hub's rows, as data.py --hub-files")
    max_new_tokens: int = opt(32, "generation cap of the evaluation", lo=1)
    scorer: str = opt("auto", "toxicity scorer, as eval.py --scorer", choices=SCORERS)
    name: str = opt("", "results folder under --results (default: rounds/<concept>)")
    results: str = opt("results", "where results/<name>/ goes ('' = only the run folder)")


# This script's options, then ff.py's training and filter options with their help.
Config = dataclasses.make_dataclass("Config", [(f.name, f.type, dataclasses.field(
    default=f.default, default_factory=f.default_factory, metadata=f.metadata)) for f in FF_OPTIONS],
    bases=(RoundsOptions,))


def check(cfg):
    """The options, checked as ff.py checks its own; returns the ff.Config that ff's functions read."""
    if cfg.concept not in data.BUILDERS:
        raise UserError(f"--concept {cfg.concept!r}: choose one of {', '.join(data.BUILDERS)}")
    if cfg.rounds < 1:
        raise UserError(f"--rounds {cfg.rounds}: run at least one round")
    if cfg.source not in ("offline", "hub"):
        raise UserError(f"--source {cfg.source!r}: choose offline (the files in data/) or hub (downloads)")
    fcfg = ff.Config(run=cfg.run, **{f.name: getattr(cfg, f.name) for f in FF_OPTIONS})
    ff.check_config(fcfg)  # resolves --signals auto to rouge, nll (the paper's first)
    return fcfg


def round_data(cfg):
    """One build of data.py at N = rounds * n, its noisy set dealt into `rounds` draws with the same mix of kinds."""
    dcfg = data.Config(concept=cfg.concept, n=cfg.rounds * cfg.n, r=cfg.r, n_safety=cfg.n_safety, n_eval=cfg.n_eval,
                       seed=cfg.seed, source=cfg.source, hub_files=cfg.hub_files)
    sets = data.BUILDERS[cfg.concept](dcfg)
    data.check_disjoint(sets)
    draws = [[] for _ in range(cfg.rounds)]
    for kind in data.KINDS:
        of_kind = [ex for ex in sets["noisy"] if ex["kind"] == kind]
        per = len(of_kind) // cfg.rounds
        for k in range(cfg.rounds):
            draws[k] += of_kind[k * per:(k + 1) * per]
    rng = random.Random(cfg.seed)
    for d in draws:
        rng.shuffle(d)
    return draws, sets


# ---------------------------------------------------------------------------------------------------------------
# The three kinds of step, each a resumable stage of <run>/stages/ keyed on everything its output depends on.

def finetune(fcfg, run, device, name, parent, examples, safety_steps=None):
    """ckpt/<name> = the checkpoint `parent` (None: M0) finetuned on `examples` (epochs, or the safety schedule).
    Returns the checkpoint's reference: its name and the digest of what produced it."""
    key = dict({f: getattr(fcfg, f) for f in TRAIN_FIELDS}, precision=precision_name(device, fcfg.precision),
               device=device, parent=parent,
               examples=digest([ex["id"] for ex in examples]), steps=safety_steps)

    def compute():
        model, tok = ff.load_m0(fcfg, device, parent and run / "ckpt" / parent["name"])
        if safety_steps:
            log = ff.train(model, tok, examples, fcfg, fcfg.safety_lr, steps=safety_steps, desc=f"{name} <- D_safe")
        else:
            log = ff.train(model, tok, examples, fcfg, fcfg.lr, epochs=fcfg.epochs, desc=f"{name} <- noisy")
        save_checkpoint(model, tok, run / "ckpt" / name, base=run / "ckpt" / parent["name"] if parent else fcfg.model)
        return dict(log=log, n=len(examples))
    stage(run, name, name, key, compute, needs=[f"ckpt/{name}"])
    return dict(name=name, key=digest(key))


def forget(fcfg, run, device, name, m1, noisy, safety, sig):
    """The filter on one draw: s(M1, x), M2 = M1 + D_safe for max t steps scored at each t, forgetting, and the flags
    of signal `sig` at the run's threshold. Returns the kept examples and the filter's record."""
    ts = sorted(set(fcfg.safety_steps))
    filter_t = fcfg.filter_t or ts[-1]

    def compute():
        model, tok = ff.load_m0(fcfg, device, run / "ckpt" / m1["name"])
        s_m1, s_t = ff.score(model, tok, noisy, fcfg, f"{name}: score M1"), {}
        ff.train(model, tok, safety, fcfg, fcfg.safety_lr, steps=ts[-1], desc=f"{name}: M2 <- M1 + D_safe",
                 on_step=ff.scores_at(s_t, model, tok, noisy, fcfg, f"{name}: M2", ts))
        return dict(s_m1=s_m1, s_t=s_t)
    key = dict({f: getattr(fcfg, f) for f in TRAIN_FIELDS}, precision=precision_name(device, fcfg.precision),
               device=device, m1=m1, noisy=digest(noisy),
               safety=digest([ex["id"] for ex in safety]), ts=ts,
               caps=[fcfg.max_new_tokens_text, fcfg.max_new_tokens_qa], gen_batch_size=fcfg.gen_batch_size)
    v = stage(run, name, name, key, compute)
    rows = ff.forgetting_rows(noisy, {ex["id"]: None for ex in noisy}, v["s_m1"], v["s_t"], {}, [str(t) for t in ts],
                              ranked=sig == "rank")
    phis = ff.resolve_thresholds(fcfg, rows, filter_t)
    ff.flag_rows(rows, phis, [sig], filter_t)
    kept = [ex for ex, r in zip(noisy, rows) if not r["flagged"][sig]]
    return kept, dict(threshold=phis[sig], n=len(noisy), kept=len(kept), flagged=len(noisy) - len(kept),
                      flagged_unsafe=sum(r["flagged"][sig] and r["kind"] == "unsafe" for r in rows),
                      unsafe=sum(r["kind"] == "unsafe" for r in rows))


def measure(cfg, fcfg, run, device, evals, scorer, ckpt, point):
    """Evaluate one model (M0 when ckpt is None) on the evaluation sets. Returns `point` (step, pipeline, x, ...) with
    the metrics of the figure added, and the per-item rows."""
    scorer_name, scorer_fn = scorer
    step = point["step"]

    def compute():
        model, tok = ff.load_m0(fcfg, device, ckpt and run / "ckpt" / ckpt["name"])
        with weights_in(model, dtype):  # at the precision of the run's scores, as eval.py
            metrics, rows = evaluate(model, tok, evals, scorer_fn, cfg, step)  # cfg.max_new_tokens, gen_batch_size
        return dict(metrics=metrics, rows=rows)
    dtype = score_dtype(device, fcfg.lora, fcfg.precision)
    key = dict(model=cfg.model if ckpt is None else ckpt["key"], sets=digest(evals), scorer=scorer_name,
               max_new_tokens=cfg.max_new_tokens, device=device) | (
        {} if dtype == torch.float32 else dict(dtype=str(dtype).removeprefix("torch.")))  # fp32: not keyed
    v = stage(run, f"eval_{step.replace(' ', '_')}", f"evaluate {step}", key, compute)
    metrics = {m: metric(v["metrics"], m) for m in POINT_METRICS if _has(v["metrics"], m)}
    extra = {k: x for k, x in point.items() if k not in ("step", "pipeline", "x")}  # n_train, after the metrics
    return (dict(step=step, pipeline=point["pipeline"], x=point["x"], **metrics, **extra),
            [dict(step=step, **r) for r in v["rows"]])


def _has(metrics, name):
    try:
        metric(metrics, name)
        return True
    except KeyError:
        return False


def main():
    cfg = parse_config(Config, __doc__)
    fcfg = check(cfg)
    run, t0 = Path(cfg.run), time.time()

    # 1. The data: `rounds` disjoint noisy draws, one D_safe, the evaluation sets
    draws, sets = round_data(cfg)
    safety = sets["safety"]
    evals = {k.removeprefix("eval_"): v for k, v in sets.items() if k.startswith("eval_")}
    for k, d in enumerate(draws, 1):
        write_jsonl(run / f"round{k}_noisy.jsonl", d)
    write_jsonl(run / "safety.jsonl", safety)
    for name, items in evals.items():
        write_jsonl(run / f"eval_{name}.jsonl", items)
    tok = load_tokenizer(cfg.model)  # every prompt must leave a target token inside --max-len, as ff.py checks
    for path, examples in [(run / f"round{k}_noisy.jsonl", d) for k, d in enumerate(draws, 1)] + [
            (run / "safety.jsonl", safety)]:
        check_lengths(tok, path, examples, range(1, len(examples) + 1), fcfg.max_len)
    device, _, _, note = setup(cfg.device, cfg.precision)
    t = max(fcfg.safety_steps)
    print(f"device {device}, {note} | {cfg.rounds} rounds of {len(draws[0])} noisy examples, {len(safety)} "
          f"safety | {cfg.concept} | model {cfg.model}")
    scorer = load_scorer(cfg.scorer, device) if "toxicity" in evals else (None, None)
    evaluated = []  # (point of the figure, per-item rows), model by model

    # 2. M0, where both pipelines start
    evaluated.append(measure(cfg, fcfg, run, device, evals, scorer, None, dict(step="M0", pipeline="start", x=0)))

    # 3. Sequential: round k = finetune on draw k, evaluate; safety-finetune for t steps, evaluate
    prev = None
    for k, noisy in enumerate(draws, 1):
        noisy_ckpt = finetune(fcfg, run, device, f"seq_r{k}_noisy", prev, noisy)
        evaluated.append(measure(cfg, fcfg, run, device, evals, scorer, noisy_ckpt, dict(
            step=f"seq r{k} noisy", pipeline="sequential", x=2 * k - 1, n_train=len(noisy))))
        prev = finetune(fcfg, run, device, f"seq_r{k}_safety", noisy_ckpt, safety, safety_steps=t)
        evaluated.append(measure(cfg, fcfg, run, device, evals, scorer, prev, dict(
            step=f"seq r{k} safety", pipeline="sequential", x=2 * k, n_train=len(safety))))

    # 4. FF, one pipeline per signal: round k = ForgetFilter on draw k from the current model, finetune on the kept
    filters = []
    for i, sig in enumerate(fcfg.signals):
        label, prefix, prev = ("FF", "ff", None) if i == 0 else (f"FF-{sig}", f"ff_{sig}", None)
        for k, noisy in enumerate(draws, 1):
            # round 1's M1 (M0 + draw 1) is the sequential pipeline's first model, and its forgetting is the same for
            # every signal: both stages are found done
            m1 = (finetune(fcfg, run, device, "seq_r1_noisy", None, noisy) if k == 1 else
                  finetune(fcfg, run, device, f"{prefix}_r{k}_m1", prev, noisy))
            kept, filt = forget(fcfg, run, device, "ff_r1_forget" if k == 1 else f"{prefix}_r{k}_forget", m1, noisy,
                                safety, sig)
            filters.append(dict(pipeline=label.lower(), signal=sig, round=k, **filt))
            prev = finetune(fcfg, run, device, f"{prefix}_r{k}", prev, kept)
            evaluated.append(measure(cfg, fcfg, run, device, evals, scorer, prev, dict(
                step=f"{label} r{k}", pipeline=label.lower(), x=2 * k - 1, n_train=len(kept))))

    # 5. rounds.json and its figure, in the run folder and under results/
    points, eval_rows = [p for p, _ in evaluated], [r for _, rows in evaluated for r in rows]
    out = dict(concept=cfg.concept, model=cfg.model, seed=cfg.seed, source=cfg.source, rounds=cfg.rounds,
               n=len(draws[0]), signals=fcfg.signals, t=t, filter_t=fcfg.filter_t or t, scorer=scorer[0],
               commit=git_commit(), wall_s=round(time.time() - t0, 1), points=points, filters=filters)
    write_json(run / "rounds.json", out)
    rounds_figure(out, run / "rounds.png")
    if cfg.results:
        res = Path(cfg.results) / (cfg.name or f"rounds/{cfg.concept}")
        write_json(res / "rounds.json", out)
        write_jsonl(res / "rounds_rows.jsonl", eval_rows)
        rounds_figure(out, res / "rounds.png")
    for p in points:
        print(f"{p['step']:16s} " + " ".join(f"{m} {fmt(p[m])}" for m in POINT_METRICS if m in p))
    print(f"wrote {run}/rounds.json, rounds.png" + (f" and {res}/" if cfg.results else ""))


if __name__ == "__main__":
    main_guard(main)
