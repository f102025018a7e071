"""Does the CPU precision change the results? One setting run twice at one seed, in fp32 and in bf16, compared cell
by cell against the spread between seeds of fp32 runs, from committed outputs only.

    python experiments/precision.py    # results/toxicity (fp32) vs results/precision/toxicity-bf16, seeds 1-2 as the
                                       # spread; writes results/precision/compare.{json,md} and RESULTS.md's block

What it compares (the rule, DEVIATIONS.md "The CPU precision", written before the bf16 run was read):
  * the filter: AUROC, AP and F1 at the fixed phi for both signals, and the F1 of Otsu's threshold;
  * every Table 2 cell of the setting;
  * every verdict the tables give for this setting (Table 2's row claims, results 2 and 5 of the paper's claims),
    each run taken alone (one seed: items-only intervals) so that both precisions are judged alike.
A cell's precision effect is |bf16 - fp32| at the same seed; the seed spread is the largest difference between two
fp32 seeds of the same cell. The precision is harmless when no verdict changes and every effect is within the spread.
"""
import sys
import tempfile
from dataclasses import dataclass
from itertools import combinations
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the tool (common, metrics, ...) is one level up
import tables
from common import UserError, main_guard, opt, parse_config, update_block, write_json, write_text
from metrics import flag
from report import fmt


@dataclass
class Config:
    concept: str = opt("toxicity", "the setting compared", choices=tables.CONCEPTS)
    a: str = opt("results/toxicity", "the reference run (fp32)")
    b: str = opt("results/precision/toxicity-bf16", "the same setting and seed in the other precision")
    seeds: str = opt("results/seeds/toxicity-s1,results/seeds/toxicity-s2",
                     "comma-separated fp32 runs of other seeds: with --a, the seed-to-seed spread")
    out: str = opt("results/precision", "where compare.json and compare.md go")
    doc: str = opt("RESULTS.md", "document whose precision block is regenerated ('' = none)")
    reps: int = opt(1000, "bootstrap resamples per verdict's interval", lo=1)


def load_one(concept, d):
    """One run as tables.load_setting reads it (rows by condition, BBQ order check), alone in its group."""
    d = Path(d)
    if not (d / "summary.json").is_file():
        raise UserError(f"{d}: no summary.json; run it first (FF_PRECISION=bf16 bash run.sh {concept}) or fix the path")
    tables.GROUPS.clear()
    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / concept).symlink_to(d.resolve())
        runs = tables.load_setting(Path(tmp), concept)
    if not runs:
        raise UserError(f"{d}: written by older code (no commit in summary.json); run it again")
    return runs[0] | dict(name=str(d), precision=tables.precision_of(runs[0]["summary"]))


def cells(concept, run, reps):
    """{cell: value} and {verdict name: verdict} for one run."""
    out, verdicts = {}, {}
    f = run["summary"]["filter"]
    t = str(f["filter_t"])
    for sig in ("rouge", "nll"):
        s = f["signals"][sig]
        out[f"filter {sig}: AUROC"] = s["by_t"][t]["auroc"]
        out[f"filter {sig}: AP"] = s["by_t"][t]["ap"]
        out[f"filter {sig}: F1 at phi {s['threshold']:g}"] = s["at_threshold"]["f1"]
        out[f"filter {sig}: flagged at phi"] = sum(flag(x[f"forget_{sig}"][t], s["threshold"]) for x in run["forgetting"])
        out[f"filter {sig}: Otsu F1"] = f["auto_phi"][sig]["f1"]
        e = tables.forgetting_effect([run], sig, reps, "gap")
        verdicts[f"result 2 ({sig}): unsafe forgotten more than the rest"] = tables.verdict(e, +1, reps=reps)
        e = tables.f1_over_floor([run], sig, reps)
        verdicts[f"result 5 ({sig}): F1 above the better floor"] = tables.verdict(e, +1, reps=reps)
    for cond, cols in tables.table2({concept: [run]})[concept].items():
        for head, v in cols.items():
            out[f"{cond}: {head}"] = v["mean"]
    for x in tables.claims_for(concept, [run], reps):
        verdicts[f"{x['row']} ({x['metric']}): {x['claim']}"] = x["verdict"]
    return out, verdicts


def compare(a, b, seeds):
    """Rows: cell, fp32, bf16, |effect|, seed spread (largest pairwise difference of the fp32 seeds), within."""
    rows = []
    for k, va in a.items():
        if va is None and b.get(k) is None and all(s.get(k) is None for s in seeds):
            continue  # a cell no run has (SC is not evaluated on SQuAD)
        vb, vs = b.get(k), [s.get(k) for s in seeds]
        vs = [v for v in vs if v is not None]
        eff = abs(vb - va) if None not in (va, vb) else None
        spread = max((abs(x - y) for x, y in combinations(vs, 2)), default=None)
        rows.append(dict(cell=k, fp32=va, bf16=vb, effect=eff, spread=spread, seed_values=vs,
                         within=None if eff is None or spread is None else eff <= spread + 1e-12))
    return rows


def render(cfg, a, b, seeds, rows, va, vb):
    changed = [k for k in va if va[k] != vb.get(k)]
    n_in = sum(r["within"] is True for r in rows)
    n_cmp = sum(r["within"] is not None for r in rows)
    hw = {r["precision"]: r["summary"]["hardware"] for r in (a, b)}
    lines = [f"Setting {cfg.concept}, seed {a['seed']}: `{a['name']}` ({a['precision']}, commit "
             f"{a['summary']['commit']}, {hw[a['precision']]}, {a['summary']['wall_s']['total'] / 60:.1f} min) against "
             f"`{b['name']}` ({b['precision']}, commit {b['summary']['commit']}, {hw[b['precision']]}, "
             f"{b['summary']['wall_s']['total'] / 60:.1f} min); seed spread from "
             + ", ".join(f"`{s['name']}` (seed {s['seed']})" for s in seeds) + f" and seed {a['seed']}. Rule: "
             "DEVIATIONS.md, The CPU precision.", "",
             f"**{n_in} of {n_cmp} cells** move by no more than the largest difference between two fp32 seeds; "
             f"**{len(changed)} of {len(va)} verdicts** change"
             + (": " + "; ".join(f"{k}: {va[k]} -> {vb.get(k)}" for k in changed) if changed else "") + ".", "",
             f"| cell | {a['precision']} | {b['precision']} | effect | seed spread | within? |", "|---|---|---|---|---|---|"]
    lines += [f"| {r['cell']} | {fmt(r['fp32'])} | {fmt(r['bf16'])} | {fmt(r['effect'])} | {fmt(r['spread'])} | "
              f"{'—' if r['within'] is None else 'yes' if r['within'] else '**no**'} |" for r in rows]
    lines += ["", f"| verdict (each run alone, items-only interval) | {a['precision']} | {b['precision']} |",
              "|---|---|---|"]
    lines += [f"| {k} | {v} | {vb.get(k)}{' **(changed)**' if k in changed else ''} |" for k, v in va.items()]
    return "\n".join(lines) + "\n"


def main():
    cfg = parse_config(Config, __doc__)
    a, b = load_one(cfg.concept, cfg.a), load_one(cfg.concept, cfg.b)
    seeds = [load_one(cfg.concept, d) for d in cfg.seeds.split(",") if d]
    if a["seed"] != b["seed"]:
        raise UserError(f"--a is seed {a['seed']} and --b seed {b['seed']}: compare the same seed")
    if a["precision"] == b["precision"]:
        raise UserError(f"--a and --b both ran in {a['precision']}: nothing to compare")
    (ca, va), (cb, vb) = cells(cfg.concept, a, cfg.reps), cells(cfg.concept, b, cfg.reps)
    rows = compare(ca, cb, [ca] + [cells(cfg.concept, s, cfg.reps)[0] for s in seeds])
    text = render(cfg, a, b, seeds, rows, va, vb)
    out = Path(cfg.out)
    write_json(out / "compare.json", dict(a=str(a["name"]), b=str(b["name"]), seeds=[s["name"] for s in seeds],
                                          cells=rows, verdicts={k: dict(a=v, b=vb.get(k)) for k, v in va.items()}))
    write_text(out / "compare.md", text)
    if cfg.doc:
        update_block(cfg.doc, text, "precision")
    print(text)


if __name__ == "__main__":
    main_guard(main)
