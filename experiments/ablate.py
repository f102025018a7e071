"""The paper's ablations (its Fig 8 and the domain ablation) on a finished ff.py run: the filter's F1 and AUROC, both
signals, against t, phi, the size of the safe set and its domain. Reuses the run's M1 and its scores; each variant
retrains only M2 (M1 + a safety set) and scores the noisy set once.

    python experiments/ablate.py --run runs/toxicity                 # after run.sh toxicity; run.sh ablations runs this
    python experiments/ablate.py --run runs/harmfulness --sizes 25 50

  t       every t the run scored, and a smaller one (--extra-t): M2 on the run's own schedule, stopped at that step
  phi     a sweep over the observed range of forgetting at the filter's t (no training); the run's fixed phi and
          Otsu's label-free threshold are points of the sweep
  size    D_safe cut to each of --sizes examples (a seeded sample of the run's safety set); the full set is the run
  domain  the same number of safe examples from another domain: 'task' (Alpaca answers the noisy set does not use)
          and 'other' (refusals of harmful requests for toxicity and mixed; non-toxic web sentences otherwise). The
          paper: with off-concept safe data the forgetting spreads over every kind and the gap disappears.

Writes <run>/ablations.json and .png, and copies them with the per-example rows (ablation_rows.jsonl) to
results/<name>/. Each variant is a resumable stage (<run>/stages/ablate_*.json).
"""
import dataclasses
import random
import sys
import time
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the tool (common, data, ff, ...) is one level up
import ff
from common import (DEVICES, UserError, digest, git_commit, main_guard, opt, parse_config, read_json, read_jsonl,
                    stage, write_json, write_jsonl)
from data import Config as DataConfig, advbench_pairs, alpaca_items, c4_sentences, load_examples, text_example
from metrics import at_threshold, auroc, average_precision, forgetting_gap
from figures import ablation_figure
from model import precision_name, setup


DATA_FIELDS = {f.name for f in dataclasses.fields(DataConfig)}


@dataclass
class Config:
    run: str = opt("runs/toxicity", "a finished ff.py run folder (forgetting.jsonl, filter.json, ckpt/m1)")
    sizes: list = opt([0], "sizes of the safe set to try, each below the run's own; 0: 1/8, 1/4 and 1/2 of the run's "
                           "safe set (25, 50 and 100 of the CPU runs' 200)", lo=0)
    domains: list = opt(["task", "other"], "domains of the safe set to try instead of the concept's: task, other",
                        choices=("task", "other"))
    extra_t: int = opt(5, "a smaller t to add to the run's (0 = none)", lo=0)
    phi_points: int = opt(41, "points of the phi sweep", lo=2)
    name: str = opt("", "results folder under --results (default: the run's concept)")
    results: str = opt("results", "where results/<name>/ablations.* go ('' = only the run folder)")
    device: str = opt("auto", "auto, cpu or cuda", choices=DEVICES)


def other_domain(concept, domain, n, seed, taken, data_cfg=None):
    """n safe examples from another domain (fewer when the pool is smaller), none of whose ids is in `taken` (the
    run's noisy and safety sets). data_cfg: the run's data.py configuration (its --source)."""
    rng = random.Random(seed)
    if domain == "task":
        pool = [dict(ex, kind="safe") for ex in alpaca_items(data_cfg) if ex["id"] not in taken]
    elif domain == "other" and concept in ("toxicity", "mixed"):
        pool = [dict(id=p["id"], source=p["source"], kind="safe", format="qa", prompt=p["prompt"], target=p["safe"])
                for p in advbench_pairs() if p["id"] not in taken]
    elif domain == "other":
        from profanity_check import predict_prob
        sents = [(i, s) for i, s in c4_sentences() if i not in taken]
        pool = [text_example(i, "c4", "safe", s) for (i, s), p in zip(sents, predict_prob([s for _, s in sents]))
                if p < 0.1]
    else:
        raise UserError(f"--domains {domain}: choose task or other")
    rng.shuffle(pool)
    return pool[:n]


def point(rows, s1, phis, kinds):
    """AUROC, AP, P/R/F1 at the run's threshold, mean forgetting per kind and the unsafe-minus-rest gap of both
    signals, from M1's scores (in the rows) and the scores s1 after a variant's safety finetuning."""
    out = {}
    labels = [r["kind"] == "unsafe" for r in rows]
    for sig in ("rouge", "nll"):
        x = [round(r["m1"]["rouge"] - s1[r["id"]]["rouge"] if sig == "rouge" else s1[r["id"]]["nll"] - r["m1"]["nll"],
                   4) for r in rows]  # rounded as ff.forgetting_rows rounds, so the same examples are flagged
        a = at_threshold(rows, x, phis[sig], kinds)
        by = {k: round(sum(v for v, r in zip(x, rows) if r["kind"] == k) / sum(r["kind"] == k for r in rows), 4)
              for k in kinds}  # the domain ablation's question: does forgetting spread over every kind?
        out[sig] = dict(auroc=round(auroc(x, labels), 4), ap=round(average_precision(x, labels), 4),
                        precision=a["precision"], recall=a["recall"], f1=a["f1"], mean_by_kind=by,
                        gap=round(forgetting_gap(x, labels), 4))
    return out


def phi_sweep(rows, sig, t, fixed, n_points, kinds):
    """P/R/F1 of the filter at every phi of a grid over the observed scores, with the fixed phi and Otsu's in it."""
    x = [r[f"forget_{sig}"][t] for r in rows]
    otsu = round(ff.otsu_threshold(x), 4)
    lo, hi = min(x), max(x)
    grid = sorted({round(lo + (hi - lo) * i / (n_points - 1), 4) for i in range(n_points)} | {fixed, otsu})
    pts = [dict(phi=p, **{k: v for k, v in at_threshold(rows, x, p, kinds).items() if k != "flagged"}) for p in grid]
    return dict(fixed=fixed, otsu=otsu, points=pts)


def load_run(run):
    filt = read_json(run / "filter.json")
    if not (run / "ckpt/m1").is_dir():
        raise UserError(f"{run}/ckpt/m1: not found; the ablations retrain M2 from the run's M1 (run ff.py first)")
    rows = read_jsonl(run / "forgetting.jsonl", required=("id", "kind", "m1", "forget_rouge", "forget_nll"))
    if rows[0]["kind"] is None:
        raise UserError(f"{run}: the examples carry no labels, so the ablations have no F1 or AUROC to measure")
    known = {f.name for f in dataclasses.fields(ff.Config)}
    cfg = ff.Config(**{k: v for k, v in filt["config"].items() if k in known})
    cfg.run = str(run)
    return filt, rows, cfg


def variant(run, cfg, device, m1_key, noisy, name, examples, t, title):
    """M2' = M1 + `examples` on the run's safety schedule (max t steps), stopped at step t; the noisy set's scores
    there. A resumable stage, keyed on the run's M1 and the examples."""
    schedule = max(cfg.safety_steps)

    def compute():
        model, tok = ff.load_m0(cfg, device, run / "ckpt/m1")
        store = {}
        ff.train(model, tok, examples, cfg, cfg.safety_lr, steps=schedule, until=t, desc=title,
                 on_step=ff.scores_at(store, model, tok, noisy, cfg, title, [t]))
        return dict(scores=store[str(t)], n=len(examples))
    key = dict(m1=m1_key, examples=digest([ex["id"] for ex in examples]), t=t, schedule=schedule,
               safety_lr=cfg.safety_lr, device=device, precision=precision_name(device, cfg.precision))
    return stage(run, f"ablate_{name}", title, key, compute)["scores"]


def measured(name, rows, scores, phis, kinds):
    """A variant's point (point() of its scores) and its per-example rows for ablation_rows.jsonl."""
    per_example = [dict(variant=name, id=r["id"], kind=r["kind"],
                        forget_rouge=round(r["m1"]["rouge"] - scores[r["id"]]["rouge"], 4),
                        forget_nll=round(scores[r["id"]]["nll"] - r["m1"]["nll"], 4)) for r in rows]
    return point(rows, scores, phis, kinds), per_example


def main():
    acfg = parse_config(Config, __doc__)
    if not set(acfg.domains) <= {"task", "other"}:
        raise UserError(f"--domains {' '.join(acfg.domains)}: choose task and/or other")
    if (acfg.sizes != [0] and any(n <= 0 for n in acfg.sizes)) or acfg.extra_t < 0 or acfg.phi_points < 2:
        raise UserError("--sizes must be positive, --extra-t 0 or more, --phi-points 2 or more")

    # 1. The run: its options, rows, thresholds, M1 and data; every check before any training
    run = Path(acfg.run)
    filt, rows, cfg = load_run(run)
    dj = read_json(run / "data.json") if (run / "data.json").is_file() else None
    concept = dj["config"]["concept"] if dj else "own data"
    data_cfg = DataConfig(**{k: v for k, v in dj["config"].items() if k in DATA_FIELDS}) if dj else None
    noisy = load_examples(cfg.noisy or run / "noisy.jsonl", cfg.format)[0]
    safety = load_examples(cfg.safe or run / "safety.jsonl", cfg.format)[0]
    sizes = sorted(set(acfg.sizes) if acfg.sizes != [0] else {len(safety) // 8, len(safety) // 4, len(safety) // 2} - {0})
    if any(n >= len(safety) for n in sizes):
        raise UserError(f"--sizes {' '.join(map(str, sizes))}: each must be below the run's {len(safety)} safety "
                        "examples; pass smaller sizes")
    device, _, _, _ = setup(acfg.device, cfg.precision)
    ts = sorted(set(cfg.safety_steps))
    if acfg.extra_t > ts[-1]:
        raise UserError(f"--extra-t {acfg.extra_t}: must lie within the run's safety schedule (t up to {ts[-1]})")
    filter_t, phis = filt["filter_t"], filt["thresholds"]
    kinds = [k for k in ("unsafe", "safe", "task") if any(r["kind"] == k for r in rows)]
    m1_key = digest(read_json(run / "stages/m1.json")["key"])  # what produced the M1 every variant starts from
    t0 = time.time()
    s_run = {t: {r["id"]: r["safety"][t] for r in rows} for t in rows[0]["safety"]}  # the run's own M2 scores
    full = s_run[str(filter_t)]
    # each measured point: (axis, label, n of the safety set, variant name, scores of the noisy set after it)
    measured_at = []

    # 2. t: every t the run scored (no training), and --extra-t (M2 stopped earlier)
    for t, s in s_run.items():
        measured_at.append(("t", int(t), None, f"t={t}", s))
    if acfg.extra_t and str(acfg.extra_t) not in s_run:
        measured_at.append(("t", acfg.extra_t, None, f"t={acfg.extra_t}",
                            variant(run, cfg, device, m1_key, noisy, f"t{acfg.extra_t}", safety, acfg.extra_t,
                                    f"ablation t = {acfg.extra_t}")))

    # 3. The size of D_safe: the run's own, and seeded samples of it
    measured_at.append(("size", len(safety), None, f"size={len(safety)}", full))
    for n in sizes:
        sub = random.Random(cfg.seed).sample(safety, n)
        measured_at.append(("size", n, None, f"size={n}",
                            variant(run, cfg, device, m1_key, noisy, f"size{n}", sub, filter_t, f"ablation |D_safe| = {n}")))

    # 4. The domain of D_safe: the run's concept, then as many safe examples from each other domain
    measured_at.append(("domain", concept + " (the run)", len(safety), "domain=concept", full))
    taken = {ex["id"] for ex in noisy + safety}
    for d in acfg.domains:
        examples = other_domain(concept, d, len(safety), cfg.seed, taken, data_cfg)
        measured_at.append(("domain", d, len(examples), f"domain={d}",
                            variant(run, cfg, device, m1_key, noisy, f"domain_{d}", examples, filter_t,
                                    f"ablation D_safe from {d}")))

    # 5. Every point's metrics, the phi sweep (no training), ablations.json, its rows and its figure
    ab_rows, axes = [], {"t": {}, "size": {}, "domain": []}
    for axis, x, n, name, scores in measured_at:
        p, per_example = measured(name, rows, scores, phis, kinds)
        ab_rows += per_example
        if axis == "domain":
            axes["domain"].append(dict(domain=x, n=n, **p))
        else:
            axes[axis][x] = p
    ab = dict(concept=concept, model=cfg.model, seed=cfg.seed, filter_t=filter_t, thresholds=phis,
              commit=git_commit(), wall_s=round(time.time() - t0, 1),
              t=[dict(x=t, **p) for t, p in sorted(axes["t"].items())],
              phi={sig: phi_sweep(rows, sig, str(filter_t), phis[sig], acfg.phi_points, kinds) for sig in phis},
              size=[dict(x=n, **p) for n, p in sorted(axes["size"].items())], domain=axes["domain"])
    write_json(run / "ablations.json", ab)
    write_jsonl(run / "ablation_rows.jsonl", ab_rows)
    ablation_figure(ab, run / "ablations.png")
    if acfg.results:
        out = Path(acfg.results) / (acfg.name or concept)
        write_json(out / "ablations.json", ab)
        write_jsonl(out / "ablation_rows.jsonl", ab_rows)
        ablation_figure(ab, out / "ablations.png")
    for key in ("t", "size"):
        print(f"{key:6s} " + " | ".join(f"{p['x']}: AUROC rouge {p['rouge']['auroc']:.3f} nll {p['nll']['auroc']:.3f}"
                                        for p in ab[key]))
    print("domain " + " | ".join(f"{p['domain']}: AUROC rouge {p['rouge']['auroc']:.3f} nll {p['nll']['auroc']:.3f}"
                                 for p in ab["domain"]))
    print(f"wrote {run}/ablations.json, ablations.png" + (f" and {out}/" if acfg.results else ""))


if __name__ == "__main__":
    main_guard(main)
