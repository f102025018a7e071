"""The paper's tables across runs, from committed outputs only: Table 1 (the filter at 25 / 50 / 75 % unsafe, against
its trivial floors), Table 2 (every compared condition in every setting, seeds as mean +- sd), each of the paper's
claims with what we measured, a 95 % interval and a verdict, and the headline table (one line per claim).

    python experiments/tables.py     # reads results/; writes results/table1.*, table2.*, headline.md, the
                                     # blocks of RESULTS.md and README's headline

Runs it reads (run.sh writes them): results/<concept>/ (seed 0, 50 % unsafe: the main run of each setting),
results/seeds/<concept>-s<k>/ (seed k) and results/ratios/<concept>-r<pct>/ (the filter at pct % unsafe, no
evaluation). The rules (DEVIATIONS.md, Compared conditions, seeds and verdicts): intervals resample seeds, then items
within each seed; a claim "holds" when its whole interval lies on the claimed side of its bound, "does not hold" when
the whole interval lies on the other side, "cannot tell" otherwise; undefined values stay undefined.
"""
import statistics
import sys
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the tool (common, data, ff, ...) is one level up
from common import (UserError, main_guard, opt, parse_config, read_json, read_jsonl, run_on, update_block, write_json,
                    write_text)
from figures import domain_label
from metrics import auroc, bbq_metrics, bootstrap, flag, forgetting_gap, mean, metric as metric_value
from report import fmt

CONCEPTS = ("toxicity", "bias", "mixed", "harmfulness")
F1_MARGIN = 5.0  # "keeps downstream F1": FF's SQuAD F1 at most this many points below +Downstream's (DEVIATIONS.md)
UNDEFINED_MAX = 0.05  # more undefined bootstrap resamples than this share: "cannot tell"
ROOM = 0.05  # "less safe than M0" needs M0 further than this share of the metric's range from its worst value


@dataclass
class Config:
    results: str = opt("results", "folder of the committed runs (results/<concept>/, seeds/, ratios/)")
    doc: str = opt("RESULTS.md", "document whose table, claims and figure blocks are regenerated ('' = none)")
    readme: str = opt("README.md", "document whose headline block is regenerated ('' = leave it alone)")
    reps: int = opt(1000, "bootstrap resamples per interval", lo=1)


# ---------------------------------------------------------------------------------------------------------------
# Loading runs: one entry per seed, each with its summary and its per-item rows.

STALE = []  # runs left out: made by code older than these tables (no commit recorded); `bash run.sh paper` redoes them
ONE_ORDER = []  # runs whose BBQ items were asked in one order of their options: left out of every BBQ number
OTHER_GROUP = []  # runs of another group than their setting's main run: never averaged with it
GROUPS = {}  # concept: the group its tables read


def group_of(summary):
    """What must be equal for two runs to be seeds of one experiment: the model, its precision, the toxicity scorer,
    the data's source and its size N (the unsafe fraction r is Table 1's axis; the seed is what varies). scorer:
    None for a run that evaluated no toxicity."""
    d = summary["data"]["config"]
    return dict(model=summary["model"], precision=run_on(summary)[0], scorer=summary.get("scorer"),
                source=d.get("source", "offline"), n=d["n"])


def group_label(g):
    return (f"{g['model']} {g.get('precision', 'fp32')}, {g['source']} data, N {g['n']}"
            + (f", scorer {g['scorer']}" if g["scorer"] else ""))


def in_group(concept, run):
    """True if the run belongs to its setting's group: the group of results/<concept>/, else of the first run read.
    A run of another group is left out (OTHER_GROUP), so that no table averages over two models or datasets."""
    g, ref = group_of(run["summary"]), GROUPS.setdefault(concept, group_of(run["summary"]))
    if not ref["scorer"]:
        ref["scorer"] = g["scorer"]
    # a run without an evaluation (the ratio runs score only the filter) has no scorer: nothing to differ in
    if any(g[k] != ref[k] for k in ("model", "precision", "source", "n")) or (
            g["scorer"] and g["scorer"] != ref["scorer"]):
        OTHER_GROUP.append(f"{run['dir']} ({group_label(g)})")
        return False
    return True


def read_run(d):
    """One run folder's summary and rows, or None (and the folder in STALE) when older code wrote it."""
    if not (d / "summary.json").is_file():
        return None
    s = read_json(d / "summary.json")
    if "commit" not in s:  # written before the compared conditions and the rows the intervals need existed
        STALE.append(str(d))
        return None
    return dict(seed=s["seed"], dir=d, summary=s, forgetting=read_jsonl(d / "forgetting.jsonl", required=("id", "kind")))


def item_rows(rows, by):
    """{condition (or step): {evaluation set: [items]}}, each list sorted by id so that every condition lists the same
    items in the same order (paired resampling). A BBQ item is a unit: the list of its answers in every order asked,
    so that resampling draws items, not answers."""
    out = {}
    for r in rows:
        out.setdefault(r[by], {}).setdefault(r["eval"], []).append(r)
    for by_set in out.values():
        for name, v in by_set.items():
            v.sort(key=lambda r: r["id"])
            if name == "bbq":
                units = {}
                for r in v:
                    units.setdefault(r["id"], []).append(r)
                by_set[name] = list(units.values())
    return out


def unit_ids(items):
    return [u[0]["id"] if isinstance(u, list) else u["id"] for u in items]


def load_setting(results, concept):
    """Every seed of one setting at 50 % unsafe: [dict(seed, summary, rows by condition and set (item_rows),
    forgetting rows)]."""
    runs = []
    for d in [results / concept] + sorted((results / "seeds").glob(f"{concept}-s*")):
        if (run := read_run(d)) is None or not in_group(concept, run):
            continue
        rows = item_rows(read_jsonl(d / "eval_rows.jsonl", required=("condition", "eval", "id")), "condition")
        run["bbq_orders"] = min((len(u) for c in rows.values() for u in c.get("bbq", [])), default=0)
        if run["bbq_orders"] == 1:  # asked before the cyclic orders: its BBQ numbers read answer position
            ONE_ORDER.append(str(d))
            for c in rows.values():
                c.pop("bbq", None)
        runs.append(run | dict(rows=rows))
    return runs


def bbq_items(units):
    return [dict(condition=r["context_condition"], category=r["category"], gold=r["gold"], biased=r["biased"],
                 unknown=r["unknown"], pred=None if r["pred"] == "unparsable" else r["pred"]) for u in units for r in u]


# metric -> (evaluation set, value of a list of its units or None where undefined, label, (worst value, range)).
# Lower is safer for every safety metric.
METRICS = {
    "toxicity": ("toxicity", lambda us: mean(r["toxicity"] for r in us), "mean toxicity", (1.0, 1.0)),
    "s_amb": ("bbq", lambda us: bbq_metrics(bbq_items(us))["s_amb"], "s_AMB", (1.0, 2.0)),
    "compliance": ("harmful", lambda us: 100 * mean(r["complied"] for r in us), "compliance (%)", (100.0, 100.0)),
    "squad_f1": ("squad", lambda us: 100 * mean(r["f1"] for r in us), "SQuAD F1", (0.0, 100.0)),
}
SAFETY = {"toxicity": ["toxicity"], "bias": ["s_amb"], "mixed": ["toxicity", "s_amb"], "harmfulness": ["compliance"]}


def level_of(n_seeds):
    return "seeds and items" if n_seeds > 1 else "items only"


def effect(runs, metric, a, b, reps, relative=False):
    """metric(a) - metric(b) (or metric(a) / metric(b) - 1), averaged over seeds, with its 95 % interval (seeds drawn
    with replacement, then evaluation items within each, the same items for both conditions) and each seed's own
    value. Seeds where the effect is undefined are left out and counted; None when no seed has both conditions."""
    name, f, _, _ = METRICS[metric]

    def diff(xa, xb):
        va, vb = f(xa), f(xb)
        if va is None or vb is None or va != va or vb != vb or (relative and vb == 0):
            return None
        return va / vb - 1 if relative else va - vb
    pairs = [(r["rows"][a][name], r["rows"][b][name]) for r in runs if a in r["rows"] and b in r["rows"]
             and name in r["rows"][a] and name in r["rows"][b]]
    if not pairs:
        return None
    for ra, rb in pairs:
        if unit_ids(ra) != unit_ids(rb):
            raise UserError(f"{a} and {b} were evaluated on different {name} items; run eval.py on both again")
    per_seed = [diff(ra, rb) for ra, rb in pairs]
    kept = [p for p, d in zip(pairs, per_seed) if d is not None]
    out = dict(per_seed=per_seed, seeds=len(kept), undefined_seeds=len(pairs) - len(kept), level=level_of(len(kept)))
    if not kept:
        return out | dict(value=None, lo=None, hi=None, undefined=reps)

    def stat(draw):
        ds = [diff([kept[g][0][i] for i in ix], [kept[g][1][i] for i in ix]) for g, ix in draw]
        return None if None in ds else mean(ds)
    iv = bootstrap([len(ra) for ra, _ in kept], stat, reps=reps, seeds=True)
    return out | dict(value=mean(d for d in per_seed if d is not None), **iv)


def verdict(e, direction, margin=0.0, reps=1000):
    """The one rule (DEVIATIONS.md): the claim is direction * effect > -margin (direction -1: a below b; +1: above;
    0: reported only). Holds when the whole interval lies on the claimed side, does not hold when it lies on the
    other side, cannot tell otherwise (and when more than UNDEFINED_MAX of the resamples are undefined)."""
    if e is None:
        return "not run"
    if direction == 0:
        return "reported"
    if e["lo"] is None or e.get("undefined", 0) > UNDEFINED_MAX * reps:
        return "cannot tell"
    lo, hi = (e["lo"], e["hi"]) if direction > 0 else (-e["hi"], -e["lo"])
    return "holds" if lo > -margin else "does not hold" if hi < -margin else "cannot tell"


def combine(verdicts):
    """A claim made of parts: holds when every part holds, does not hold when any part does not, else cannot tell."""
    vs = [v for v in verdicts if v not in ("reported", "not run")]
    if not vs:
        return "not run"
    return "holds" if all(v == "holds" for v in vs) else "does not hold" if "does not hold" in vs else "cannot tell"


def magnitude(rel, paper):
    """The paper's number against the interval of our relative effect: inside it, nearer 0 than it, or beyond it."""
    if rel is None or rel["lo"] is None:
        return "—"
    if rel["lo"] <= paper <= rel["hi"]:
        return "as large as the paper's"
    if (rel["lo"] > 0) if paper < 0 else (rel["hi"] < 0):
        return "opposite to the paper's"
    nearer = rel["lo"] > paper if paper < 0 else rel["hi"] < paper
    return "smaller than the paper's" if nearer else "larger than the paper's"


def fmt_effect(e, pct=False, nd=3):
    """value [lo, hi]; pct: a relative effect in % (no decimals)."""
    if e is None or e.get("value") is None:
        return "—"
    k, nd, unit = (100, 0, " %") if pct else (1, nd, "")
    iv = "[—]" if e["lo"] is None else f"[{k * e['lo']:+.{nd}f}, {k * e['hi']:+.{nd}f}]"
    return f"{k * e['value']:+.{nd}f}{unit} {iv}"


# ---------------------------------------------------------------------------------------------------------------
# The claims, one per row of Table 2: (row, claim in the paper's terms, [(metric, a, b, direction, margin, the
# paper's relative toxicity change or None)]). Metric "safety" stands for each of the setting's safety metrics.

ROW_CLAIMS = [
    ("+Downstream", "the paper: finetuning on the noisy mixture makes the model less safe than M0 (result 1)",
     [("safety", "+Downstream", "M0", +1, 0.0, None)]),
    ("+SafetyFT", "the paper: safety finetuning recovers safety but costs downstream F1 (result 4)",
     [("safety", "+SafetyFT", "+Downstream", -1, 0.0, None), ("squad_f1", "+SafetyFT", "+Downstream", -1, 0.0, None)]),
    ("Replay", "the paper: FF is safer than Replay (result 6)", [("safety", "FF", "Replay", -1, 0.0, None)]),
    ("SC", "the paper: FF is safer than SC (toxicity 62 % lower; result 6)", [("safety", "FF", "SC", -1, 0.0, -0.62)]),
    ("FF", "the paper: FF is much safer than +Downstream (toxicity 75 % lower) and keeps downstream F1 (result 6)",
     [("safety", "FF", "+Downstream", -1, 0.0, -0.75), ("squad_f1", "FF", "+Downstream", +1, F1_MARGIN, None)]),
    ("FF+SC", "the paper: adding SC to FF helps further", [("safety", "FF+SC", "FF", -1, 0.0, None)]),
    ("FF-nll", "ours: the NLL filter's FF is safer than +Downstream",
     [("safety", "FF-nll", "+Downstream", -1, 0.0, None)]),
    ("Random filter", "ours: FF is safer than a random filter that drops as many examples (the floor)",
     [("safety", "FF", "Random filter", -1, 0.0, None)]),
    ("Oracle filter", "ours: the ceiling; FF minus the oracle filter, reported",
     [("safety", "FF", "Oracle filter", 0, 0.0, None)]),
]


def same_as(run, cond):
    """The condition that this one trains exactly as, by construction, in this run: a filter that flagged nothing
    trains M0 on all of D_noisy, which is +Downstream (with the cue: SC); the random filter drops as many as the
    ROUGE filter flagged. None otherwise."""
    f = run["summary"]["filter"]
    sig = f["ff_signals"][0] if cond in ("FF", "FF+SC", "Random filter") else cond[3:] if cond.startswith("FF-") else None
    if sig not in f["signals"] or f["signals"][sig]["at_threshold"].get("n_flagged", 1) != 0:
        return None
    return "SC" if cond == "FF+SC" else "+Downstream"


def identical(run, a, b):
    """Whether a and b trained on exactly the same examples in this run (directly, or both as +Downstream)."""
    sa, sb = same_as(run, a) or a, same_as(run, b) or b
    return sa == sb


def untestable(runs, metric, a, b, direction):
    """Why a claim that a is less safe than b cannot be tested here, or None: b is already within ROOM of the
    metric's range from its worst value, so there is no room to become less safe."""
    name, f, label, (worst, span) = METRICS[metric]
    if direction <= 0 or metric == "squad_f1":
        return None
    vals = [v for r in runs if b in r["rows"] and name in r["rows"][b] and (v := f(r["rows"][b][name])) is not None]
    if vals and abs(worst - mean(vals)) < ROOM * span:
        return f"not testable here: {b} is already at {mean(vals):.3g} ({label}; worst {worst:g}): no room to be less safe"
    return None


def claims_for(concept, runs, reps):
    """Every comparison of ROW_CLAIMS that this setting's runs can make, with its interval and verdict."""
    out = []
    for row, claim, comparisons in ROW_CLAIMS:
        for metric, a, b, direction, margin, paper in comparisons:
            for m in SAFETY[concept] if metric == "safety" else [metric]:
                e = effect(runs, m, a, b, reps)
                if e is None:
                    continue
                rel = effect(runs, m, a, b, reps, relative=True) if m == "toxicity" else None
                used = [r for r in runs if METRICS[m][0] in r["rows"].get(a, {}) and METRICS[m][0] in r["rows"].get(b, {})]
                same = [r["seed"] for r in used if identical(r, a, b)]
                v = verdict(e, direction, margin, reps)
                note = [f"{e['level']}, {e['seeds']} seed{'s' if e['seeds'] != 1 else ''}"]
                if e["undefined_seeds"]:
                    note.append(f"undefined at {e['undefined_seeds']} seed(s)")
                if e.get("undefined"):
                    note.append(f"undefined in {e['undefined']} of {reps} resamples")
                if why := untestable(runs, m, a, b, direction):
                    v = why
                if same and len(same) == len(used) and direction:
                    v = f"same as {b}: the filter flagged nothing"
                elif same:
                    note.append(f"{a} is {b} at seed {', '.join(map(str, same))} (the filter flagged nothing)")
                out.append(dict(row=row, claim=claim, metric=m, a=a, b=b, effect=e, relative=rel, verdict=v,
                                magnitude=magnitude(rel, paper) if paper is not None and rel else None, paper=paper,
                                note="; ".join(note)))
    return out


def forgetting_effect(runs, sig, reps, stat_name):
    """Over the noisy examples at the filter's t: the unsafe-minus-rest gap in mean forgetting ('gap') or the AUROC
    of unsafe against the rest ('auroc'), averaged over seeds, with its 95 % interval (seeds, then examples)."""
    groups = []
    for r in runs:
        t = str(r["summary"]["filter"]["filter_t"])
        groups.append([(x[f"forget_{sig}"][t], x["kind"] == "unsafe") for x in r["forgetting"]])

    def one(rows):
        xs, ys = [x for x, _ in rows], [y for _, y in rows]
        if not 0 < sum(ys) < len(ys):
            return None
        return auroc(xs, ys) if stat_name == "auroc" else forgetting_gap(xs, ys)

    def stat(draw):
        vs = [one([groups[g][i] for i in ix]) for g, ix in draw]
        return None if None in vs else mean(vs)
    iv = bootstrap([len(g) for g in groups], stat, reps=reps, seeds=True)
    per_seed = [one(g) for g in groups]
    return dict(value=mean_or_none(per_seed), per_seed=per_seed, seeds=len(groups), level=level_of(len(groups)), **iv)


# ---------------------------------------------------------------------------------------------------------------
# Table 1: the filter at 25 / 50 / 75 % unsafe, each F1 beside the F1 of two filters that need no signal.

def floors(flags):
    """F1 (in %) of flagging every example and the expected F1 of a random filter that flags as many as this one:
    for u unsafe of n and k flagged, 2u / (n + u) and 2ku / n / (k + u). flags: [(flagged, unsafe)]."""
    n, u, k = len(flags), sum(y for _, y in flags), sum(x for x, _ in flags)
    if not u:
        return None, None
    return 100 * 2 * u / (n + u), 100 * 2 * k * u / n / (k + u)


def f1_pct(flags):
    tp, k, u = sum(x and y for x, y in flags), sum(x for x, _ in flags), sum(y for _, y in flags)
    return 100 * 2 * tp / (k + u) if k + u else None


def f1_over_floor(runs, sig, reps):
    """Our F1 minus the better floor at the run's threshold, averaged over seeds, with its interval (seeds, then
    examples; both floors recomputed in every resample)."""
    groups = []
    for r in runs:
        f = r["summary"]["filter"]
        t, phi = str(f["filter_t"]), f["signals"][sig]["threshold"]
        groups.append([(flag(x[f"forget_{sig}"][t], phi), x["kind"] == "unsafe") for x in r["forgetting"]])

    def one(flags):
        f1, fl = f1_pct(flags), floors(flags)
        return None if f1 is None or fl[0] is None else f1 - max(fl)

    def stat(draw):
        vs = [one([groups[g][i] for i in ix]) for g, ix in draw]
        return None if None in vs else mean(vs)
    fl = [x for g in groups if (x := floors(g))[0] is not None]
    per_seed = [one(g) for g in groups]
    iv = bootstrap([len(g) for g in groups], stat, reps=reps, seeds=True)
    return dict(value=mean_or_none(per_seed), per_seed=per_seed, seeds=len(groups), level=level_of(len(groups)),
                floor_all=mean_or_none([x[0] for x in fl]), floor_random=mean_or_none([x[1] for x in fl]), **iv)


def mean_or_none(xs):
    """The mean of the values that are defined, None when none is."""
    xs = [x for x in xs if x is not None]
    return mean(xs) if xs else None


def ratio_runs(results, concept):
    """(unsafe %, [runs]) per ratio of the setting: 50 % from the main run and its seeds, the others from ratios/."""
    by = {}
    dirs = [results / concept] + sorted((results / "seeds").glob(f"{concept}-s*"))
    for d in dirs + sorted((results / "ratios").glob(f"{concept}-r*")):
        if (run := read_run(d)) is not None and in_group(concept, run):
            by.setdefault(round(100 * run["summary"]["data"]["config"]["r"]), []).append(run)
    return sorted(by.items())


def mean_sd(values):
    """dict(mean, sd, seeds, undefined) over the seeds' values that exist: sd is None for a single value; None values
    are counted as undefined and left out."""
    xs = [x for x in values if x is not None]
    return dict(mean=statistics.fmean(xs) if xs else None, sd=statistics.stdev(xs) if len(xs) > 1 else None,
                seeds=len(xs), undefined=len(values) - len(xs))


def table1(ratios, reps):
    """ratios: {concept: ratio_runs(...)}, read once in main (provenance names the same runs)."""
    rows = []
    for concept in CONCEPTS:
        for pct, runs in ratios[concept]:
            for sig in ("rouge", "nll"):
                per = []
                for r in runs:
                    f = r["summary"]["filter"]
                    by_t, a = f["signals"][sig]["by_t"][str(f["filter_t"])], f["signals"][sig]["at_threshold"]
                    auto = f["auto_phi"][sig]
                    per.append(dict(precision=a["precision"] if a.get("n_flagged", 1) else None, recall=a["recall"],
                                    f1=a["f1"], n_flagged=a.get("n_flagged"), auto_f1=auto["f1"], auroc=by_t["auroc"],
                                    ap=by_t["ap"], control_auroc=by_t.get("control", {}).get("auroc")))
                f0 = runs[0]["summary"]["filter"]
                rows.append(dict(concept=concept, unsafe_pct=pct, signal=sig, t=f0["filter_t"], n=f0["n"],
                                 seeds=[r["seed"] for r in runs], phi=f0["signals"][sig]["threshold"],
                                 **{k: mean_sd([p[k] for p in per]) for k in per[0] if k != "n_flagged"},
                                 n_flagged=[p["n_flagged"] for p in per],
                                 f1_over_floor=(fo := f1_over_floor(runs, sig, reps)),
                                 high_f1=verdict(fo, +1, reps=reps),
                                 auroc_interval=forgetting_effect(runs, sig, reps, "auroc")))
    return rows


def ms(v, nd=1):
    """mean +- sd of a mean_sd dict ("—" when undefined at every seed)."""
    if v["mean"] is None:
        return "—"
    return f"{v['mean']:.{nd}f}" + (f" ± {v['sd']:.{nd}f}" if v["sd"] is not None else "")


def better_floor(row):
    fo = row["f1_over_floor"]
    return "—" if fo["floor_all"] is None else f"{max(fo['floor_all'], fo['floor_random']):.1f}"


def render_table1(rows):
    lines = ["| setting | unsafe | signal | seeds | phi | P | R | F1 | F1 flag all | F1 random | F1 - better floor "
             "[95 % interval] | high F1? | Otsu F1 | AUROC [95 % interval] | AP | control AUROC |",
             "|---" * 16 + "|"]
    for r in rows:
        fo, iv = r["f1_over_floor"], r["auroc_interval"]
        seeds = ", ".join(map(str, r["seeds"])) + (" (seed 0 alone)" if len(r["seeds"]) == 1 else "")
        lines.append(f"| {r['concept']} | {r['unsafe_pct']} % | {r['signal']} | {seeds} | {r['phi']} | "
                     f"{ms(r['precision'])} | {ms(r['recall'])} | {ms(r['f1'])} | {fmt(fo['floor_all'], 1)} | "
                     f"{fmt(fo['floor_random'], 1)} | {fmt_effect(fo, nd=1)} | {r['high_f1']} | {ms(r['auto_f1'])} | "
                     f"{ms(r['auroc'], 3)} [{fmt(iv['lo'])}, {fmt(iv['hi'])}] | "
                     f"{ms(r['ap'], 3)} | {ms(r['control_auroc'], 3)} |")
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------------------------------------------------------
# Table 2: every condition in every setting; a cell is the mean +- sd over seeds (one seed: the value alone).

BBQ_COLUMNS = [("acc ambig", "acc_amb"), ("s_AMB", "s_amb"), ("s_AMB constant", "s_amb_constant"),
               ("top slot (%)", "top_slot"), ("s_DIS BBQ", "s_dis_bbq"), ("s_DIS code", "s_dis_code")]
COLUMNS = {  # setting -> [(header, metric of metrics.METRIC)]
    "toxicity": [("toxicity", "toxicity"), ("> 0.5 (%)", "toxic_rate"), ("degenerate (%)", "degenerate"),
                 ("SQuAD F1", "squad_f1")],
    "bias": BBQ_COLUMNS + [("SQuAD F1", "squad_f1")],
    "mixed": [("toxicity", "toxicity"), ("degenerate (%)", "degenerate")] + BBQ_COLUMNS + [("SQuAD F1", "squad_f1")],
    "harmfulness": [("compliance (%)", "compliance"), ("refusal (%)", "refusal"), ("degenerate (%)", "harm_degenerate"),
                    ("SQuAD EM", "squad_em"), ("SQuAD F1", "squad_f1")],
}
BBQ_HEADS = {h for h, _ in BBQ_COLUMNS}


def table2(settings):
    """{setting: {condition: {column: dict(mean, sd, seeds, undefined)}}} from each seed's summary; BBQ columns read only
    the runs asked in every order of the options."""
    out = {}
    for concept, runs in settings.items():
        out[concept] = {}
        for c in runs[0]["summary"]["conditions"]:
            out[concept][c] = {}
            for h, name in COLUMNS[concept]:
                vals = []
                for r in runs:
                    if h in BBQ_HEADS and r.get("bbq_orders", 3) < 3:
                        continue
                    try:
                        v = metric_value(r["summary"]["conditions"][c], name)
                        vals.append(100 * v if name == "top_slot" and v else v)  # the share as a percentage
                    except KeyError:  # that evaluation did not run for the condition (SC rows skip SQuAD)
                        pass
                out[concept][c][h] = mean_sd(vals)
    return out


def render_table2(t2, claims, blocks):
    lines = []
    for block in blocks:
        settings = [c for c in block if c in t2]
        if not settings:
            continue
        conds = list(dict.fromkeys(c for s in settings for c in t2[s]))
        heads = [(s, h) for s in settings for h, _ in COLUMNS[s]]
        lines += ["| condition | " + " | ".join(f"{s}: {h}" for s, h in heads) + " | the paper's claim: verdict here |",
                  "|---" * (len(heads) + 2) + "|"]
        for c in conds:
            cells = []
            for s, h in heads:
                v = t2[s].get(c, {}).get(h)
                nd = 1 if "(%)" in h or "SQuAD" in h else 3
                cells.append("" if not v or (v["mean"] is None and not v["undefined"]) else ms(v, nd)
                             + (f" ({v['undefined']} undefined)" if v["undefined"] else ""))
            said = [x for s in settings for x in claims.get(s, []) if x["row"] == c]
            verdicts = "; ".join(f"{x['setting']} {METRICS[x['metric']][2]}: {x['verdict']}" for x in said)
            lines.append(f"| {c} | " + " | ".join(cells) + " | "
                         + (f"{said[0]['claim']}: {verdicts}" if said else "") + " |")
        lines.append("")
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------------------------
# The paper's seven results (RESULTS.md, The paper), each with what we measured and the verdict.

SIGNAL = {"rouge": "ROUGE", "nll": "NLL"}


def metric_label(setting, metric):
    """A setting's name, with the metric where the setting has more than one (mixed: toxicity and s_AMB)."""
    return setting if len(SAFETY[setting]) == 1 or metric == "squad_f1" else f"{setting} {METRICS[metric][2]}"


SIZE_CAVEAT = ("the paper saw no forgetting gap for its smallest model (GPT2-medium, 355M); the embedded model here "
               "is 135M")


def paper_claims(settings, claims, t1, reps, rounds=()):
    out = []

    def add(n, key, text, setting, measured, v, note="", mag=None, label=None):
        out.append(dict(result=n, key=key, claim=text, setting=setting, label=label or setting, measured=measured,
                        verdict=v, magnitude=mag, note=note))
    for s, runs in settings.items():
        for x in claims[s]:
            if x["row"] == "+Downstream":
                add(1, "1", "finetuning on a 50 %-unsafe mixture makes the aligned model less safe", s,
                    f"{METRICS[x['metric']][2]}, +Downstream - M0: {fmt_effect(x['effect'])}", x["verdict"], x["note"],
                    label=metric_label(s, x["metric"]))
        for sig in ("rouge", "nll"):
            e = forgetting_effect(runs, sig, reps, "gap")
            add(2, "2", "during safety finetuning unsafe examples are forgotten more than the rest", s,
                f"{sig} forgetting, unsafe - rest at the filter's t: {fmt_effect(e)}", verdict(e, +1, reps=reps),
                f"{e['level']}, {e['seeds']} seed{'s' if e['seeds'] != 1 else ''}"
                + ("" if sig == "rouge" else "; ours: the NLL signal"), label=f"{s} {SIGNAL[sig]}")
    add(3, "3", "the forgetting gap grows with model size", "all", "one model size here (135M)",
        "not testable here: one model size offline", SIZE_CAVEAT)
    for s in settings:
        for x in claims[s]:
            if x["row"] == "+SafetyFT":
                add(4, "4 F1" if x["metric"] == "squad_f1" else "4 safety",
                    "safety finetuning restores safety but costs downstream F1", s,
                    f"{METRICS[x['metric']][2]}, +SafetyFT - +Downstream: {fmt_effect(x['effect'])}", x["verdict"],
                    x["note"], label=metric_label(s, x["metric"]))
    for concept in CONCEPTS:
        for sig in ("rouge", "nll"):
            sel = [r for r in t1 if r["concept"] == concept and r["signal"] == sig]
            if sel:
                add(5, "5", "the filter detects unsafe examples at 25 / 50 / 75 % unsafe (high F1)", concept,
                    f"{sig}: " + "; ".join(f"{r['unsafe_pct']} %: F1 {ms(r['f1'])} vs floor {better_floor(r)}, F1 - floor "
                                           f"{fmt_effect(r['f1_over_floor'], nd=1)}" for r in sel),
                    combine(r["high_f1"] for r in sel),
                    "holds = at every ratio the interval of F1 minus the better of flag-everything and a random "
                    "filter of the same size lies above 0; seeds: " + "; ".join(
                        f"{r['unsafe_pct']} % {len(r['seeds'])}" for r in sel)
                    + ("" if sig == "rouge" else "; ours: the NLL signal"), label=f"{concept} {SIGNAL[sig]}")
    for s in settings:
        for x in claims[s]:
            if x["row"] in ("FF", "SC", "Replay"):
                rel = f" ({fmt_effect(x['relative'], pct=True)})" if x["relative"] else ""
                add(6, "6 F1" if x["metric"] == "squad_f1" else f"6 {x['b']}", x["claim"].removeprefix("the paper: "), s,
                    f"{METRICS[x['metric']][2]}, {x['a']} - {x['b']}: {fmt_effect(x['effect'])}{rel}", x["verdict"],
                    (f"holds = FF's F1 at most {F1_MARGIN:g} points below; " if x["metric"] == "squad_f1" else "")
                    + x["note"], f"{x['magnitude']}: {fmt_effect(x['relative'], pct=True)}" if x["magnitude"] else None,
                    label=metric_label(s, x["metric"]))
    claim7 = "in interleaved rounds unsafe behaviour returns under safety finetuning; FF stays low"
    for x in rounds:
        key = "7 low" if x["b"] == "sequential" else "7 returns" if x["note"].startswith("unsafe") else "7 part"
        add(7, key, claim7, x["setting"], x["measured"], x["verdict"], x["note"],
            label=f"{x['setting']} {x['a']}" if key == "7 low" else None)
    if not rounds:
        add(7, "7 low", claim7, "toxicity", "not run yet (`bash run.sh rounds`)", "not run")
    return sorted(out, key=lambda r: r["result"])  # stable: settings keep their order within a result


def round_test(runs, rj, m, a, b, direction, what, reps):
    """One comparison of two points of the rounds (a claims row), or None when either point is missing."""
    e = effect(runs, m, a, b, reps)
    if e is None:
        return None
    return dict(setting=rj["concept"], metric=m, a=a, b=b, effect=e, verdict=verdict(e, direction, reps=reps),
                measured=f"{METRICS[m][2]}, {a} - {b}: {fmt_effect(e)}",
                note=f"{what}; items only, seed {rj['seed']}, commit {rj['commit']}")


def rounds_claims(results, reps):
    """The paper's result 7 from results/rounds/<concept>/ (rounds.py). Under sequential safety finetuning the
    safety metric rises again with each noisy round (seq round k noisy - seq round k-1 safety > 0). FF stays low in a
    round when it is below both sequential points of that round: the noisy model and the safety-finetuned one
    (DEVIATIONS.md); the rounds combine. FF's change from round to round is reported. Intervals over items (one seed)."""
    out = []
    for p in sorted(Path(results).glob("rounds/*/rounds.json")):
        rj = read_json(p)
        runs = [dict(rows=item_rows(read_jsonl(p.parent / "rounds_rows.jsonl", required=("step", "eval", "id")), "step"))]
        ffs = list(dict.fromkeys(q["step"].rsplit(" ", 1)[0] for q in rj["points"] if q["pipeline"].startswith("ff")))
        for m in SAFETY[rj["concept"]]:
            tests = [(f"seq r{k} noisy", f"seq r{k - 1} safety", +1, "unsafe behaviour comes back")
                     for k in range(2, rj["rounds"] + 1)]
            out += [x for t in tests if (x := round_test(runs, rj, m, *t, reps))]
            for f in ffs:
                parts = []
                for k in range(1, rj["rounds"] + 1):
                    tests = [(f"{f} r{k}", f"seq r{k} noisy", -1, f"{f} below the sequential noisy model"),
                             (f"{f} r{k}", f"seq r{k} safety", -1, f"{f} below the sequential model after its safety step")]
                    found = [x for t in tests if (x := round_test(runs, rj, m, *t, reps))]
                    parts += [x["verdict"] for x in found]
                    if k > 1:
                        found += [x for x in [round_test(runs, rj, m, f"{f} r{k}", f"{f} r{k - 1}", 0,
                                                         f"{f}'s change from round {k - 1}", reps)] if x]
                    out += found
                out.append(dict(setting=rj["concept"], metric=m, a=f, b="sequential", effect=None,
                                verdict=combine(parts), measured=f"{f} stays low: below both sequential points in "
                                f"each of {rj['rounds']} rounds (the rows above)",
                                note=f"combined: holds when every part holds; items only, seed {rj['seed']}"))
    return out


def render_claims(rows):
    lines = ["| result | the paper's claim | setting | measured here (95 % interval) | verdict | against the paper's "
             "number | note |", "|---|---|---|---|---|---|---|"]
    lines += [f"| {r['result']} | {r['claim']} | {r['setting']} | {r['measured']} | **{r['verdict']}** | "
              f"{r['magnitude'] or ''} | {r['note']} |" for r in rows]
    return "\n".join(lines) + "\n"


# The headline: one line per claim of the paper, in its words, with what we test for it.
HEADLINE = [
    ("1", "Finetuning on a 50 %-unsafe mixture makes the aligned model less safe",
     "the safety metric, +Downstream - M0"),
    ("2", "Unsafe examples are forgotten more than the rest in a short safety finetuning",
     "mean forgetting, unsafe - the rest, both signals"),
    ("3", "The forgetting gap grows with model size", "the gap per model size"),
    ("4 safety", "Safety finetuning restores safety ...", "the safety metric, +SafetyFT - +Downstream"),
    ("4 F1", "... but costs downstream F1", "SQuAD F1, +SafetyFT - +Downstream"),
    ("5", "The filter finds the unsafe examples with high F1 at 25 / 50 / 75 % unsafe",
     "F1 minus the better of flag-everything and a random filter of the same size, both signals"),
    ("6 +Downstream", "FF is much safer than +Downstream (toxicity 75 % lower)", "the safety metric, FF - +Downstream"),
    ("6 SC", "FF is safer than self-correction (toxicity 62 % lower)", "the safety metric, FF - SC"),
    ("6 Replay", "FF is safer than Replay", "the safety metric, FF - Replay"),
    ("6 F1", "FF keeps downstream F1", f"SQuAD F1, FF - +Downstream above -{F1_MARGIN:g}"),
    ("7 returns", "In interleaved rounds unsafe behaviour comes back after each noisy round",
     "sequential: noisy round k - safety step k-1"),
    ("7 low", "... while FF stays low", "FF below both sequential points of every round"),
]


def headline(rows):
    """[dict(claim, measure, verdicts, magnitudes)] from the paper_claims rows, one per HEADLINE entry."""
    out = []
    for key, claim, measure in HEADLINE:
        sel = [r for r in rows if r["key"] == key]
        if not sel:
            continue
        out.append(dict(key=key, claim=claim, measure=measure,
                        verdicts=[dict(label=r["label"], verdict=r["verdict"]) for r in sel],
                        magnitudes=[dict(label=r["label"], magnitude=r["magnitude"]) for r in sel if r["magnitude"]]))
    return out


def render_headline(lines):
    out = ["| the paper's claim | what we test | verdict here | against the paper's number |", "|---|---|---|---|"]
    for x in lines:
        out.append(f"| {x['claim']} | {x['measure']} | " + "; ".join(f"{v['label']}: **{v['verdict']}**"
                                                             for v in x["verdicts"])
                   + " | " + "; ".join(f"{m['label']}: {m['magnitude']}" for m in x["magnitudes"]) + " |")
    return "\n".join(out) + "\n"


def render_signals(t1):
    """Which forgetting signal separates unsafe examples better, setting by setting and ratio by ratio."""
    pairs = {}
    for r in t1:
        pairs.setdefault((r["concept"], r["unsafe_pct"]), {})[r["signal"]] = r["auroc"]["mean"]
    lines = ["| setting | unsafe | AUROC rouge (the paper's) | AUROC nll | better |", "|---|---|---|---|---|"]
    # mean AUROC over the seeds of each ratio (Table 1 gives the spread)
    nll_wins = 0
    for (c, pct), a in pairs.items():
        better = "nll" if a["nll"] > a["rouge"] else "rouge" if a["rouge"] > a["nll"] else "tie"
        nll_wins += better == "nll"
        lines.append(f"| {c} | {pct} % | {a['rouge']:.3f} | {a['nll']:.3f} | {better} |")
    lines += ["", f"The NLL signal separates better in {nll_wins} of {len(pairs)} runs."]
    return "\n".join(lines) + "\n", nll_wins, len(pairs)


GAP = "unsafe's mean forgetting minus the mean of every other example's"  # metrics.forgetting_gap


def ablation_gaps(path):
    """{variant: {signal: forgetting gap}} from ablation_rows.jsonl, the per-example forgetting of every variant."""
    by = {}
    for r in read_jsonl(path, required=("variant", "kind", "forget_rouge", "forget_nll")):
        by.setdefault(r["variant"], []).append(r)
    return {v: {sig: forgetting_gap([r[f"forget_{sig}"] for r in rs], [r["kind"] == "unsafe" for r in rs])
                for sig in ("rouge", "nll")} for v, rs in by.items()}


def render_figures(results):
    """The numbers behind the figures of the paper's Fig 5 and 8 and the size study (RESULTS.md, The paper's figures),
    from results/<concept>/ablations.json, results/rounds/<concept>/rounds.json and results/size/size.json."""
    out = []
    for p in sorted(Path(results).glob("*/ablations.json")):
        ab = read_json(p)
        gaps = ablation_gaps(p.parent / "ablation_rows.jsonl")
        out += [f"**Ablations, {ab['concept']}** ({ab['model']}, seed {ab['seed']}, commit {ab['commit']}, "
                f"{ab['wall_s'] / 60:.1f} min; filter at t = {ab['filter_t']}, phi rouge {ab['thresholds']['rouge']:g}"
                f", nll {ab['thresholds']['nll']:g}; gap: {GAP})", "",
                "| variant | ROUGE AUROC | ROUGE F1 | ROUGE gap | NLL AUROC | NLL F1 | NLL gap |",
                "|---|---|---|---|---|---|---|"]
        variants = [(f"t = {q['x']}", f"t={q['x']}", q) for q in ab["t"]]
        variants += [(f"&#124;D_safe&#124; = {q['x']}", f"size={q['x']}", q) for q in ab["size"]]
        variants += [(f"D_safe from {domain_label(ab['concept'], q['domain'])}, n {q['n']}",
                      "domain=concept" if i == 0 else f"domain={q['domain']}", q) for i, q in enumerate(ab["domain"])]
        for name, v, q in variants:
            out.append(f"| {name} | " + " | ".join(f"{q[sig]['auroc']:.3f} | {q[sig]['f1']:.1f} | {gaps[v][sig]:.3f}"
                                                    for sig in ("rouge", "nll")) + " |")
        for sig, sw in ab["phi"].items():
            best = max(sw["points"], key=lambda q: q["f1"])
            at = {q["phi"]: q["f1"] for q in sw["points"]}
            lo, hi = sw["points"][0]["phi"], sw["points"][-1]["phi"]
            out.append(f"\nphi sweep ({sig}, {len(sw['points'])} points over {lo:g} .. {hi:g}): F1 {at[sw['fixed']]:.1f} "
                       f"at the run's phi {sw['fixed']:g}, {at[sw['otsu']]:.1f} at Otsu's {sw['otsu']:g}, at most "
                       f"{best['f1']:.1f} (phi {best['phi']:g}).")
        out.append("")
    for p in sorted(Path(results).glob("rounds/*/rounds.json")):
        rj = read_json(p)
        metrics = [m for m in ("toxicity", "s_amb", "compliance", "squad_f1") if m in rj["points"][0]]
        out += [f"**Interleaved rounds, {rj['concept']}** ({rj['model']}, seed {rj['seed']}, commit {rj['commit']}, "
                f"{rj['wall_s'] / 60:.1f} min; {rj['rounds']} rounds of {rj['n']} noisy examples, safety finetuning "
                f"{rj['t']} steps; the filters' signals: " + ", ".join(
                    f"FF{'' if i == 0 else '-' + sig} {sig}" for i, sig in enumerate(rj["signals"])) + ")", "",
                "| after | pipeline | trained on | " + " | ".join(METRICS[m][2] for m in metrics) + " |",
                "|---|---|---|" + "---|" * len(metrics)]
        for q in rj["points"]:
            out.append(f"| {q['step']} | {q['pipeline']} | {q.get('n_train', '')} | "
                       + " | ".join(fmt(q[m], 1 if m in ("squad_f1", "compliance") else 3) for m in metrics) + " |")
        out.append("\nThe filters: " + "; ".join(
            f"FF{f['pipeline'][2:]} round {f['round']} ({f['signal']} > {f['threshold']:g}): "
            f"{f['flagged']} of {f['n']} flagged, {f['flagged_unsafe']} of {f['unsafe']} unsafe"
            for f in rj["filters"]) + ".\n")
    size = Path(results) / "size/size.json"
    if size.is_file():
        out += [f"**Model size** (gap: {GAP}, at the filter's t)", "",
                "| model | parameters | signal | AUROC | gap | run (commit) |", "|---|---|---|---|---|---|"]
        out += [f"| {q['model']} | {q['params'] / 1e6:.0f}M | {q['signal']} | {q['auroc']:.3f} | {q['gap']:.3f} | "
                f"{q['name']} ({q['commit']}) |" for q in read_json(size)]
        out.append("")
    return "\n".join(out) + "\n" if out else "No run of the paper's figures yet.\n"


def provenance(settings, ratios):
    """One line per run the tables read: name, seed and the commit whose code produced it."""
    names = [f"{r['summary'].get('name', c)} (seed {r['seed']}, commit {r['summary'].get('commit', 'not recorded')})"
             for c, runs in settings.items() for r in runs]
    names += [f"{r['summary'].get('name', r['summary']['concept'])} (r {r['summary']['data']['config']['r']}, commit "
              f"{r['summary'].get('commit', 'not recorded')})"
              for c in CONCEPTS for pct, runs in ratios[c] if pct != 50 for r in runs]
    stale = f" Left out (older code, to be run again): {', '.join(sorted(set(STALE)))}." if STALE else ""
    one = (f" Left out of every BBQ number (asked in one order of the options; to be run again): "
           f"{', '.join(sorted(set(ONE_ORDER)))}." if ONE_ORDER else "")
    groups = "; ".join(f"{c}: {group_label(g)}" for c, g in GROUPS.items() if c in settings)
    other = (f" Left out as another group (model, data or scorer) than their setting's: "
             f"{', '.join(sorted(set(OTHER_GROUP)))}." if OTHER_GROUP else "")
    return f"Runs read ({groups}): " + ", ".join(names) + "." + stale + one + other


def main():
    cfg = parse_config(Config, __doc__)
    results = Path(cfg.results)
    for found in (STALE, ONE_ORDER, OTHER_GROUP, GROUPS):
        found.clear()  # what an earlier call in this process found
    settings = {c: runs for c in CONCEPTS if (runs := load_setting(results, c))}
    if not settings:
        raise UserError(f"{results}: no <concept>/summary.json made by the current code"
                        + (f" ({len(set(STALE))} older ones left out)" if STALE else "")
                        + "; run `bash run.sh` (or `bash run.sh paper`) first")
    claims = {c: [dict(x, setting=c) for x in claims_for(c, runs, cfg.reps)] for c, runs in settings.items()}
    ratios = {c: ratio_runs(results, c) for c in CONCEPTS}
    t1, t2 = table1(ratios, cfg.reps), table2(settings)
    rounds = rounds_claims(results, cfg.reps)
    rows = paper_claims(settings, claims, t1, cfg.reps, rounds)
    signals, nll_wins, n_runs = render_signals(t1)
    head = provenance(settings, ratios) + (f" Intervals: 95 %, {cfg.reps} bootstrap resamples of the seeds, then of "
                                            "the items within each seed (items only where one seed ran).\n\n")
    top = headline(rows)
    have = {(r["concept"], r["unsafe_pct"]) for r in t1}
    missing = [f"{c} at {p} %" for c in ("toxicity", "bias", "harmfulness") for p in (25, 50, 75) if (c, p) not in have]
    cut = f"Not run yet (cut from the CPU budget; `bash run.sh ratios` runs them): {', '.join(missing)}.\n\n" \
        if missing else ""
    blocks = dict(table1=head + cut + render_table1(t1),
                  table2=head + render_table2(t2, claims, [("toxicity", "bias", "mixed"), ("harmfulness",)]),
                  claims=head + render_claims(rows), signals=signals, figures=render_figures(results),
                  headline=render_headline(top))
    write_json(results / "table1.json", t1)
    write_json(results / "table2.json", dict(cells=t2, claims=claims, paper_claims=rows, rounds=rounds,
                                             signals=dict(nll_better=nll_wins, runs=n_runs), headline=top))
    write_text(results / "headline.md", blocks["headline"])
    write_text(results / "table1.md", blocks["table1"])
    write_text(results / "table2.md", blocks["table2"] + "\n" + blocks["claims"])
    for doc, names in ((cfg.doc, list(blocks)), (cfg.readme, ["headline"])):
        for name in names if doc else ():
            update_block(doc, blocks[name], name)
    print("\n".join(blocks.values()))
    print(f"wrote {results}/table1.{{md,json}}, table2.{{md,json}} and headline.md"
          + "".join(f"; updated {d}" for d in (cfg.doc, cfg.readme) if d))


if __name__ == "__main__":
    main_guard(main)
