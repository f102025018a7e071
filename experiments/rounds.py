"""Interleaved rounds (the paper's Fig 5): does safety finetuning erase unsafe behaviour, or does it come back with
the next noisy finetuning? Two pipelines from M0, round after round, each round on a fresh noisy draw:

  sequential  round k: finetune on noisy draw k, evaluate; a short safety finetuning (t = max --safety-steps), evaluate
  FF          round k: ForgetFilter on noisy draw k (M1 = the current model + draw k, M2 = M1 + D_safe, forgetting,
              the filter), then finetune the current model on what is kept, evaluate; no safety finetuning. One FF
              pipeline per --signals: FF (the first, the paper's ROUGE) and FF-nll, as ff.py names them

    python experiments/rounds.py --concept toxicity --rounds 2 --phi 0.1 --phi-nll 0.5   # what `bash run.sh rounds` does

The draws come from one build of data.py at N = rounds * n, dealt kind by kind into the rounds: disjoint from each
other, from D_safe and from the evaluation sets (checked). Every ff.py option applies (model, LoRA, learning rates,
epochs, t, seed). Writes into --run: round<k>_noisy.jsonl, safety.jsonl, eval_*.jsonl, ckpt/<step>/, eval/<step>.jsonl,
rounds.json and rounds.png; copies rounds.json, rounds.png and the per-item rows to results/<name>/. Each step is a
resumable stage (<run>/stages/).
"""
import random
import sys
import time
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the tool (common, data, ff, ...) is one level up
import ff
import data
from common import UserError, digest, git_commit, main_guard, opt, parse_config, stage, write_json, write_jsonl
from eval import evaluate, load_scorer
from figures import rounds_figure
from model import save_checkpoint, setup
from metrics import metric
from report import fmt

POINT_METRICS = ("toxicity", "s_amb", "compliance", "squad_f1")  # of metrics.METRIC: what each point of Fig 5 holds


@dataclass
class Config(ff.Config):
    run: str = opt("runs/rounds/toxicity", "run folder of the experiment")
    concept: str = opt("toxicity", "unsafe concept of every round's noisy draw: toxicity, bias, harmfulness, mixed")
    rounds: int = opt(2, "rounds of (noisy finetuning, safety finetuning); the paper shows 3")
    n: int = opt(160, "size of each round's noisy draw (before rounding, as data.py --n)")
    r: float = opt(0.5, "unsafe fraction of every draw")
    n_safety: int = opt(200, "size of D_safe, the same in every round")
    n_eval: int = opt(100, "items per evaluation set")
    source: str = opt("offline", "training data: offline (data/) or hub (the paper's, through datasets), as data.py")
    hub_files: str = opt("", "with --source hub: local copies of the hub's rows, as data.py --hub-files")
    max_new_tokens: int = opt(32, "generation cap of the evaluation")
    scorer: str = opt("auto", "toxicity scorer, as eval.py --scorer")
    name: str = opt("", "results folder under --results (default: rounds/<concept>)")
    results: str = opt("results", "where results/<name>/ goes ('' = only the run folder)")


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


def check(cfg):
    ff.check_config(cfg)
    if cfg.concept not in data.BUILDERS:
        raise UserError(f"--concept {cfg.concept!r}: choose one of {', '.join(data.BUILDERS)}")
    if cfg.rounds < 1:
        raise UserError(f"--rounds {cfg.rounds}: run at least one round")
    if cfg.source not in ("offline", "hub"):
        raise UserError(f"--source {cfg.source!r}: choose offline (the files in data/) or hub (downloads)")


def main():
    cfg = parse_config(Config, __doc__)
    check(cfg)
    run = Path(cfg.run)
    t0 = time.time()
    draws, sets = round_data(cfg)
    for k, d in enumerate(draws, 1):
        write_jsonl(run / f"round{k}_noisy.jsonl", d)
    write_jsonl(run / "safety.jsonl", sets["safety"])
    evals = {k.removeprefix("eval_"): v for k, v in sets.items() if k.startswith("eval_")}
    for name, items in evals.items():
        write_jsonl(run / f"eval_{name}.jsonl", items)
    device, _, _, note = setup(cfg.device, cfg.precision)
    print(f"device {device}, {note} | {cfg.rounds} rounds of {len(draws[0])} noisy examples, {len(sets['safety'])} "
          f"safety | {cfg.concept} | model {cfg.model}")
    ts, safety = sorted(set(cfg.safety_steps)), sets["safety"]
    filter_t = cfg.filter_t or ts[-1]
    scorer_name, scorer = load_scorer(cfg.scorer) if "toxicity" in evals else (None, None)
    train_fields = ("model", "lora", "lora_r", "lora_alpha", "lora_dropout", "batch_size", "micro_tokens",
                    "grad_clip", "max_len", "seed", "lr", "epochs", "safety_lr", "precision")
    base_key = dict({f: getattr(cfg, f) for f in train_fields}, device=device)

    def finetune(name, parent, examples, safety_steps=None):
        """ckpt/<name> = the checkpoint `parent` (None: M0) finetuned on `examples` (epochs, or the safety schedule).
        Returns the stage key, which names everything the checkpoint depends on."""
        key = dict(base_key, parent=parent, examples=digest([ex["id"] for ex in examples]), steps=safety_steps)

        def compute():
            model, tok = ff.load_m0(cfg, device, parent and run / "ckpt" / parent["name"])
            if safety_steps:
                log = ff.train(model, tok, examples, cfg, cfg.safety_lr, steps=safety_steps, desc=f"{name} <- D_safe")
            else:
                log = ff.train(model, tok, examples, cfg, cfg.lr, epochs=cfg.epochs, desc=f"{name} <- noisy")
            save_checkpoint(model, tok, run / "ckpt" / name)
            return dict(log=log, n=len(examples))
        stage(run, name, name, key, compute, needs=[f"ckpt/{name}"])
        return dict(name=name, key=digest(key))

    def forget(name, m1, noisy, sig):
        """The filter on one draw: s0 = s(M1, x), M2 = M1 + D_safe for max t steps scored at each t, forgetting, the
        flags at the run's thresholds; returns the kept examples and the rows."""
        def compute():
            model, tok = ff.load_m0(cfg, device, run / "ckpt" / m1["name"])
            s_m1, s_t = ff.score(model, tok, noisy, cfg, f"{name}: score M1"), {}
            ff.train(model, tok, safety, cfg, cfg.safety_lr, steps=ts[-1], desc=f"{name}: M2 <- M1 + D_safe",
                     on_step=ff.scores_at(s_t, model, tok, noisy, cfg, f"{name}: M2", ts))
            return dict(s_m1=s_m1, s_t=s_t)
        key = dict(base_key, m1=m1, noisy=digest(noisy), safety=digest([ex["id"] for ex in safety]), ts=ts,
                   caps=[cfg.max_new_tokens_text, cfg.max_new_tokens_qa], gen_batch_size=cfg.gen_batch_size)
        v = stage(run, name, name, key, compute)
        rows = ff.forgetting_rows(noisy, {ex["id"]: None for ex in noisy}, v["s_m1"], v["s_t"], {},
                                  [str(t) for t in ts])
        phis = ff.resolve_thresholds(cfg, rows, filter_t)
        ff.flag_rows(rows, phis, [sig], filter_t)
        return [ex for ex, r in zip(noisy, rows) if not r["flagged"][sig]], rows, phis

    points, eval_rows = [], []

    def measure(step, pipeline, x, ckpt, **extra):
        """Evaluate one model (a resumable stage) and record its point of the figure."""
        def compute():
            model, tok = ff.load_m0(cfg, device, ckpt and run / "ckpt" / ckpt["name"])
            metrics, rows = evaluate(model, tok, evals, scorer, cfg, step)  # cfg.max_new_tokens, gen_batch_size
            return dict(metrics=metrics, rows=rows)
        key = dict(model=cfg.model if ckpt is None else ckpt["key"], sets=digest(evals), scorer=scorer_name,
                   max_new_tokens=cfg.max_new_tokens, device=device)
        v = stage(run, f"eval_{step.replace(' ', '_')}", f"evaluate {step}", key, compute)
        points.append(dict(step=step, pipeline=pipeline, x=x, **{m: metric(v["metrics"], m) for m in POINT_METRICS
                                                                 if _has(v["metrics"], m)}, **extra))
        eval_rows.extend(dict(step=step, **r) for r in v["rows"])

    measure("M0", "start", 0, None)
    prev = None
    for k, noisy in enumerate(draws, 1):  # sequential safety finetuning
        noisy_ckpt = finetune(f"seq_r{k}_noisy", prev, noisy)
        measure(f"seq r{k} noisy", "sequential", 2 * k - 1, noisy_ckpt, n_train=len(noisy))
        prev = finetune(f"seq_r{k}_safety", noisy_ckpt, safety, safety_steps=ts[-1])
        measure(f"seq r{k} safety", "sequential", 2 * k, prev, n_train=len(safety))
    filters = []
    for i, sig in enumerate(cfg.signals):  # FF: filter each draw, finetune on what is kept; one pipeline per signal
        label, prefix, prev = ("FF", "ff", None) if i == 0 else (f"FF-{sig}", f"ff_{sig}", None)
        for k, noisy in enumerate(draws, 1):
            # round 1's M1 (M0 + draw 1) is the sequential pipeline's first model, and its scores are the same for
            # every signal: both stages are found done
            m1 = finetune("seq_r1_noisy", None, noisy) if k == 1 else finetune(f"{prefix}_r{k}_m1", prev, noisy)
            kept, rows, phis = forget("ff_r1_forget" if k == 1 else f"{prefix}_r{k}_forget", m1, noisy, sig)
            flagged_unsafe = sum(r["flagged"][sig] and r["kind"] == "unsafe" for r in rows)
            filters.append(dict(pipeline=label.lower(), signal=sig, round=k, threshold=phis[sig], n=len(noisy),
                                kept=len(kept), flagged=len(noisy) - len(kept), flagged_unsafe=flagged_unsafe,
                                unsafe=sum(r["kind"] == "unsafe" for r in rows)))
            prev = finetune(f"{prefix}_r{k}", prev, kept)
            measure(f"{label} r{k}", label.lower(), 2 * k - 1, prev, n_train=len(kept))

    out = dict(concept=cfg.concept, model=cfg.model, seed=cfg.seed, source=cfg.source, rounds=cfg.rounds, n=len(draws[0]),
               signals=cfg.signals, t=ts[-1], filter_t=filter_t, scorer=scorer_name, commit=git_commit(),
               wall_s=round(time.time() - t0, 1), points=points, filters=filters)
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


def _has(metrics, name):
    try:
        metric(metrics, name)
        return True
    except KeyError:
        return False


if __name__ == "__main__":
    main_guard(main)
