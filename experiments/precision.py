"""Does the CPU precision change the results? One setting run twice at one seed, in fp32 and in bf16, compared cell
by cell against the spread between seeds of the fp32 reference runs, from committed outputs only.

    python experiments/precision.py     # results/precision/toxicity-fp32 vs toxicity-bf16 (one machine, `bash run.sh
                                        # precision`): results/precision/compare.{json,md} and RESULTS.md's block
    python experiments/precision.py --a results/toxicity --b results/precision/toxicity-fp32 \
        --out results/precision/processor --block precision_processor   # fp32 on two processors

What it compares (the rule, DEVIATIONS.md "The CPU precision", written before the bf16 run was read):
  * the filter: AUROC, AP and F1 at the fixed phi for both signals, how many it flags, and the F1 of Otsu's threshold;
  * every Table 2 cell of the setting;
  * every verdict the tables give for this setting (Table 2's row claims, results 2 and 5 of the paper's claims),
    each run taken alone (one seed: items-only intervals) so that both runs are judged alike.
A cell's effect is |b - a| at the same seed; its seed spread is the largest difference between two of the --seeds
runs (fp32 reference runs of three seeds). The precision is harmless when no verdict changes and every effect is
within the spread.
"""
import sys
import tempfile
from dataclasses import dataclass
from itertools import combinations
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the tool (common, metrics, ...) is one level up
import tables
from common import UserError, main_guard, opt, parse_config, run_on, update_block, write_json, write_text
from metrics import flag
from report import fmt


@dataclass
class Config:
    concept: str = opt("toxicity", "the setting compared", choices=tables.CONCEPTS)
    a: str = opt("results/precision/toxicity-fp32", "the reference run (fp32)")
    b: str = opt("results/precision/toxicity-bf16", "the same setting and seed in the other precision")
    seeds: str = opt("results/toxicity,results/seeds/toxicity-s1,results/seeds/toxicity-s2",
                     "comma-separated runs of one precision and processor at different seeds: the seed spread")
    out: str = opt("results/precision/compare", "path stem of the outputs: <out>.json and <out>.md")
    doc: str = opt("RESULTS.md", "document whose block --block is regenerated ('' = none)")
    block: str = opt("precision", "name of the document's block (results:<block>:begin ... end)")
    reps: int = opt(1000, "bootstrap resamples per verdict's interval", lo=1)


ROOT = Path(__file__).resolve().parents[1]


def shown(d):
    """A run's folder as the outputs name it: relative to the repository when inside it."""
    d = Path(d).resolve()
    return str(d.relative_to(ROOT)) if d.is_relative_to(ROOT) else str(d)


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
    s = runs[0]["summary"]
    precision, cpu = run_on(s)
    return runs[0] | dict(name=shown(d), precision=precision, label=f"{precision}, {cpu}")


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
        out[f"filter {sig}: flagged at phi"] = sum(flag(x[f"forget_{sig}"][t], s["threshold"])
                                                    for x in run["forgetting"])
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
    """Rows: cell, a, b, |effect|, seed spread (largest pairwise difference of the reference seeds), within."""
    rows = []
    for k, va in a.items():
        if va is None and b.get(k) is None and all(s.get(k) is None for s in seeds):
            continue  # a cell no run has (SC is not evaluated on SQuAD)
        vb, vs = b.get(k), [s.get(k) for s in seeds]
        vs = [v for v in vs if v is not None]
        eff = abs(vb - va) if None not in (va, vb) else None
        spread = max((abs(x - y) for x, y in combinations(vs, 2)), default=None)
        rows.append(dict(cell=k, a=va, b=vb, effect=eff, spread=spread, seed_values=vs,
                         within=None if eff is None or spread is None else eff <= spread + 1e-12))
    return rows


def render(cfg, a, b, seeds, rows, va, vb):
    changed = [k for k in va if va[k] != vb.get(k)]
    n_in = sum(r["within"] is True for r in rows)
    n_cmp = sum(r["within"] is not None for r in rows)

    def run_line(r):
        s = r["summary"]
        return (f"`{r['name']}` ({r['precision']}, commit {s['commit']}, {s['hardware']}, "
                f"{s['wall_s'].get('end_to_end', s['wall_s']['total']) / 60:.1f} min end to end)")
    lines = [f"Setting {cfg.concept}, seed {a['seed']}: {run_line(a)} against {run_line(b)}; seed spread from "
             + ", ".join(f"`{s['name']}` (seed {s['seed']}, {s['label']})" for s in seeds)
             + ". Rule: DEVIATIONS.md, The CPU precision.", "",
             f"**{n_in} of {n_cmp} cells** move by no more than the largest difference between two seeds; "
             f"**{len(changed)} of {len(va)} verdicts** change"
             + (": " + "; ".join(f"{k}: {va[k]} -> {vb.get(k)}" for k in changed) if changed else "") + ".", "",
             f"| cell | {a['label']} | {b['label']} | effect | seed spread | within? |", "|---|---|---|---|---|---|"]
    lines += [f"| {r['cell']} | {fmt(r['a'])} | {fmt(r['b'])} | {fmt(r['effect'])} | {fmt(r['spread'])} | "
              f"{'—' if r['within'] is None else 'yes' if r['within'] else '**no**'} |" for r in rows]
    lines += ["", f"| verdict (each run alone, items-only interval) | {a['label']} | {b['label']} |",
              "|---|---|---|"]
    lines += [f"| {k} | {v} | {vb.get(k)}{' **(changed)**' if k in changed else ''} |" for k, v in va.items()]
    return "\n".join(lines) + "\n"


def main():
    cfg = parse_config(Config, __doc__)
    a, b = load_one(cfg.concept, cfg.a), load_one(cfg.concept, cfg.b)
    seeds = [load_one(cfg.concept, d) for d in cfg.seeds.split(",") if d]
    if a["seed"] != b["seed"]:
        raise UserError(f"--a is seed {a['seed']} and --b seed {b['seed']}: compare the same seed")
    if a["label"] == b["label"]:
        raise UserError(f"--a and --b both ran in {a['label']}: nothing to compare (pass runs that differ in "
                        "precision or processor)")
    (ca, va), (cb, vb) = cells(cfg.concept, a, cfg.reps), cells(cfg.concept, b, cfg.reps)
    if len(seeds) < 2 or len({s["seed"] for s in seeds}) < len(seeds):
        raise UserError(f"--seeds {cfg.seeds}: name at least two runs of different seeds")
    rows = compare(ca, cb, [cells(cfg.concept, s, cfg.reps)[0] for s in seeds])
    text = render(cfg, a, b, seeds, rows, va, vb)
    out = Path(cfg.out)
    write_json(out.with_suffix(".json"), dict(a=a["name"], a_label=a["label"], b=b["name"], b_label=b["label"],
                                              seeds=[s["name"] for s in seeds], cells=rows,
                                              verdicts={k: dict(a=v, b=vb.get(k)) for k, v in va.items()}))
    write_text(out.with_suffix(".md"), text)
    if cfg.doc:
        update_block(cfg.doc, text, cfg.block)
    print(text)


if __name__ == "__main__":
    main_guard(main)
