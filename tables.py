"""The paper's tables across runs, from committed outputs only: Table 1 (the filter at 25 / 50 / 75 % unsafe), Table 2
(every compared condition in every setting, seeds as mean +- sd), and each of the paper's claims with what we measured,
a 95 % bootstrap interval and a verdict.

    python tables.py                 # reads results/, writes results/table1.{md,json}, table2.{md,json}, README blocks

Runs it reads (run.sh writes them): results/<concept>/ (seed 0, 50 % unsafe: the main run of each setting),
results/seeds/<concept>-s<k>/ (seed k) and results/ratios/<concept>-r<pct>/ (the filter at pct % unsafe, no
evaluation). A verdict "holds" only when the interval of the effect excludes no effect and every seed agrees on its
sign; "does not hold" when the interval lies on the other side; otherwise "cannot tell".
"""
import statistics
from dataclasses import dataclass
from pathlib import Path

from common import UserError, main_guard, opt, parse_config, read_json, read_jsonl, write_json, write_text
from eval import auroc, bbq_metrics, bootstrap, mean
from figures import domain_label
from report import fmt, update_readme

CONCEPTS = ("toxicity", "bias", "mixed", "harmfulness")
F1_MARGIN = 5.0  # "keeps downstream F1": FF's SQuAD F1 at most this many points below +Downstream's (DEVIATIONS.md)


@dataclass
class Config:
    results: str = opt("results", "folder of the committed runs (results/<concept>/, seeds/, ratios/)")
    readme: str = opt("README.md", "README whose table blocks are regenerated ('' = leave it alone)")
    reps: int = opt(1000, "bootstrap resamples per interval")


# ---------------------------------------------------------------------------------------------------------------
# Loading runs: one entry per seed, each with its summary and its per-item rows.

STALE = []  # runs left out: made by code older than these tables (no commit recorded); `bash run.sh paper` redoes them


def load_setting(results, concept):
    """Every seed of one setting at 50 % unsafe: [dict(seed, summary, rows by condition and set, forgetting rows)]."""
    dirs = [results / concept] + sorted((results / "seeds").glob(f"{concept}-s*"))
    runs = []
    for d in dirs:
        if not (d / "summary.json").is_file():
            continue
        s = read_json(d / "summary.json")
        if "commit" not in s:  # written before the compared conditions and the rows the intervals need existed
            STALE.append(str(d))
            continue
        rows = {}
        for r in read_jsonl(d / "eval_rows.jsonl", required=("condition", "eval", "id")):
            rows.setdefault(r["condition"], {}).setdefault(r["eval"], []).append(r)
        for by_set in rows.values():
            for v in by_set.values():
                v.sort(key=lambda r: r["id"])  # the same item order in every condition: paired resampling
        runs.append(dict(seed=s["seed"], dir=d, summary=s, rows=rows,
                         forgetting=read_jsonl(d / "forgetting.jsonl", required=("id", "kind"))))
    return runs


def bbq_items(rows):
    return [dict(condition=r["context_condition"], category=r["category"], gold=r["gold"], biased=r["biased"],
                 unknown=r["unknown"], pred=None if r["pred"] == "unparsable" else r["pred"]) for r in rows]


# metric -> (evaluation set, value of a list of its rows, label). Lower is safer for every safety metric.
METRICS = {
    "toxicity": ("toxicity", lambda rs: mean(r["toxicity"] for r in rs), "mean toxicity"),
    "s_amb": ("bbq", lambda rs: bbq_metrics(bbq_items(rs))["s_amb"] or 0.0, "s_AMB"),
    "compliance": ("harmful", lambda rs: 100 * mean(r["complied"] for r in rs), "compliance (%)"),
    "squad_f1": ("squad", lambda rs: 100 * mean(r["f1"] for r in rs), "SQuAD F1"),
}
SAFETY = {"toxicity": ["toxicity"], "bias": ["s_amb"], "mixed": ["toxicity", "s_amb"], "harmfulness": ["compliance"]}


def effect(runs, metric, a, b, reps, relative=False):
    """metric(a) - metric(b) (or metric(a) / metric(b) - 1), averaged over seeds, with its 95 % bootstrap interval
    (evaluation items resampled within each seed, the same items for both conditions) and each seed's own value."""
    name, f, _ = METRICS[metric]
    pairs = [(r["rows"][a][name], r["rows"][b][name]) for r in runs if a in r["rows"] and b in r["rows"]
             and name in r["rows"][a]]
    if not pairs:
        return None

    def diff(xa, xb):
        return f(xa) / f(xb) - 1 if relative else f(xa) - f(xb)

    def stat(idx):
        return mean(diff([ra[i] for i in ix], [rb[i] for i in ix]) for (ra, rb), ix in zip(pairs, idx))
    full = [list(range(len(ra))) for ra, _ in pairs]
    lo, hi = bootstrap([len(ra) for ra, _ in pairs], stat, reps=reps)
    return dict(value=stat(full), lo=lo, hi=hi, per_seed=[diff(ra, rb) for ra, rb in pairs], seeds=len(pairs))


def verdict(e, direction, margin=0.0):
    """direction -1: the claim is that the effect is below -margin (a < b); +1: above +margin; 0: reported only."""
    if e is None:
        return "not run"
    if direction == 0:
        return "reported"
    lo, hi = (e["lo"], e["hi"]) if direction > 0 else (-e["hi"], -e["lo"])
    if lo > -margin and all(direction * x > -margin for x in e["per_seed"]):
        return "holds"
    return "does not hold" if hi < -margin else "cannot tell"


def fmt_effect(e, pct=False):
    if e is None:
        return "n/a"
    k = 100 if pct else 1
    unit = " %" if pct else ""
    return f"{k * e['value']:+.{0 if pct else 3}f}{unit} [{k * e['lo']:+.{0 if pct else 3}f}, " \
           f"{k * e['hi']:+.{0 if pct else 3}f}]"


# ---------------------------------------------------------------------------------------------------------------
# The claims, one per row of Table 2: (row, claim in the paper's terms, [(metric, a, b, direction, margin)]).
# Metric "safety" stands for each of the setting's safety metrics.

ROW_CLAIMS = [
    ("+Downstream", "the paper: finetuning on the noisy mixture makes the model less safe than M0 (result 1)",
     [("safety", "+Downstream", "M0", +1, 0.0)]),
    ("+SafetyFT", "the paper: safety finetuning recovers safety but costs downstream F1 (result 4)",
     [("safety", "+SafetyFT", "+Downstream", -1, 0.0), ("squad_f1", "+SafetyFT", "+Downstream", -1, 0.0)]),
    ("Replay", "the paper: FF is safer than Replay (result 6)", [("safety", "FF", "Replay", -1, 0.0)]),
    ("SC", "the paper: FF is safer than SC (toxicity 62 % lower; result 6)", [("safety", "FF", "SC", -1, 0.0)]),
    ("FF", "the paper: FF is much safer than +Downstream (toxicity 75 % lower) and keeps downstream F1 (result 6)",
     [("safety", "FF", "+Downstream", -1, 0.0), ("squad_f1", "FF", "+Downstream", +1, F1_MARGIN)]),
    ("FF+SC", "the paper: adding SC to FF helps further", [("safety", "FF+SC", "FF", -1, 0.0)]),
    ("FF-nll", "ours: the NLL filter's FF is safer than +Downstream", [("safety", "FF-nll", "+Downstream", -1, 0.0)]),
    ("Random filter", "ours: FF is safer than a random filter that drops as many examples (the floor)",
     [("safety", "FF", "Random filter", -1, 0.0)]),
    ("Oracle filter", "ours: the ceiling; FF minus the oracle filter, reported", [("safety", "FF", "Oracle filter", 0, 0.0)]),
]


def claims_for(concept, runs, reps):
    """Every comparison of ROW_CLAIMS that this setting's runs can make, with its interval and verdict."""
    out = []
    for row, claim, comparisons in ROW_CLAIMS:
        for metric, a, b, direction, margin in comparisons:
            for m in SAFETY[concept] if metric == "safety" else [metric]:
                e = effect(runs, m, a, b, reps)
                if e is None:
                    continue
                rel = effect(runs, m, a, b, reps, relative=True) if m == "toxicity" else None
                out.append(dict(row=row, claim=claim, metric=m, a=a, b=b, effect=e, relative=rel,
                                verdict=verdict(e, direction, margin)))
    return out


def forgetting_effect(runs, sig, reps, stat_name):
    """Over the noisy examples at the filter's t, pooled over seeds: the unsafe-minus-rest gap in mean forgetting
    ('gap') or the AUROC of unsafe against the rest ('auroc'), with its 95 % bootstrap interval over examples."""
    groups = []
    for r in runs:
        t = str(r["summary"]["filter"]["filter_t"])
        groups.append([(x[f"forget_{sig}"][t], x["kind"] == "unsafe") for x in r["forgetting"]])

    def one(rows):
        xs, ys = [x for x, _ in rows], [y for _, y in rows]
        if stat_name == "auroc":
            return auroc(xs, ys)
        return mean(x for x, y in rows if y) - mean(x for x, y in rows if not y)

    def stat(idx):
        return mean(one([g[i] for i in ix]) for g, ix in zip(groups, idx))
    lo, hi = bootstrap([len(g) for g in groups], stat, reps=reps)
    return dict(value=stat([list(range(len(g))) for g in groups]), lo=lo, hi=hi, per_seed=[one(g) for g in groups],
                seeds=len(groups))


# ---------------------------------------------------------------------------------------------------------------
# Table 1: the filter at 25 / 50 / 75 % unsafe.

def ratio_runs(results, concept):
    """(unsafe %, summary) for every ratio of the setting: 50 from the main run, the others from ratios/."""
    out = []
    for d in [results / concept] + sorted((results / "ratios").glob(f"{concept}-r*")):
        if (d / "summary.json").is_file():
            s = read_json(d / "summary.json")
            if "commit" not in s:
                STALE.append(str(d))
                continue
            out.append((round(100 * s["data"]["config"]["r"]), s, d))
    return sorted(out, key=lambda x: x[0])


def table1(results, reps):
    rows = []
    for concept in CONCEPTS:
        for pct, s, d in ratio_runs(results, concept):
            f, t = s["filter"], str(s["filter"]["filter_t"])
            run = dict(summary=s, forgetting=read_jsonl(d / "forgetting.jsonl", required=("id", "kind")))
            for sig in ("rouge", "nll"):
                by_t, a, auto = f["signals"][sig]["by_t"][t], f["signals"][sig]["at_threshold"], f["auto_phi"][sig]
                rows.append(dict(concept=concept, unsafe_pct=pct, signal=sig, t=int(t), n=f["n"], seed=s["seed"],
                                 phi=f["signals"][sig]["threshold"], precision=a["precision"], recall=a["recall"],
                                 f1=a["f1"], auto_phi=auto["threshold"], auto_precision=auto["precision"],
                                 auto_recall=auto["recall"], auto_f1=auto["f1"], auroc=by_t["auroc"], ap=by_t["ap"],
                                 auroc_interval=forgetting_effect([run], sig, reps, "auroc"),
                                 control_auroc=by_t.get("control", {}).get("auroc")))
    return rows


def render_table1(rows):
    lines = ["| setting | unsafe | signal | t | phi | P | R | F1 | auto phi | P | R | F1 | AUROC [95 % interval] | AP | "
             "control AUROC |", "|---" * 15 + "|"]
    for r in rows:
        iv = r["auroc_interval"]
        lines.append(f"| {r['concept']} | {r['unsafe_pct']} % | {r['signal']} | {r['t']} | {r['phi']} | "
                     f"{r['precision']:.1f} | {r['recall']:.1f} | {r['f1']:.1f} | {r['auto_phi']} | "
                     f"{r['auto_precision']:.1f} | {r['auto_recall']:.1f} | {r['auto_f1']:.1f} | "
                     f"{r['auroc']:.3f} [{iv['lo']:.3f}, {iv['hi']:.3f}] | {r['ap']:.3f} | {fmt(r['control_auroc'])} |")
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------------------------------------------------------
# Table 2: every condition in every setting; a cell is the mean +- sd over seeds (one seed: the value alone).

COLUMNS = {  # setting -> [(header, value from a condition's metrics)]
    "toxicity": [("toxicity", lambda m: m["toxicity"]), ("> 0.5 (%)", lambda m: m["toxic_rate"]),
                 ("degenerate (%)", lambda m: m["degenerate"]), ("SQuAD F1", lambda m: m["squad_f1"])],
    "bias": [("acc ambig", lambda m: m["bias"]["acc_amb"]), ("s_AMB", lambda m: m["bias"]["s_amb"]),
             ("s_DIS BBQ", lambda m: m["bias"]["s_dis_bbq"]), ("s_DIS code", lambda m: m["bias"]["s_dis_code"]),
             ("SQuAD F1", lambda m: m["squad_f1"])],
    "mixed": [("toxicity", lambda m: m["toxicity"]), ("degenerate (%)", lambda m: m["degenerate"]),
              ("s_AMB", lambda m: m["bias"]["s_amb"]), ("s_DIS BBQ", lambda m: m["bias"]["s_dis_bbq"]),
              ("s_DIS code", lambda m: m["bias"]["s_dis_code"]), ("SQuAD F1", lambda m: m["squad_f1"])],
    "harmfulness": [("compliance (%)", lambda m: m["harm"]["compliance"]), ("refusal (%)", lambda m: m["harm"]["refusal"]),
                    ("degenerate (%)", lambda m: m["harm"]["degenerate"]), ("SQuAD EM", lambda m: m["squad_em"]),
                    ("SQuAD F1", lambda m: m["squad_f1"])],
}


def mean_sd(values):
    """(mean, sample standard deviation or None for a single value) of the values that exist."""
    xs = [x for x in values if x is not None]
    if not xs:
        return None, None
    return statistics.fmean(xs), (statistics.stdev(xs) if len(xs) > 1 else None)


def table2(settings):
    """{setting: {condition: {column: dict(mean, sd, seeds)}}} from each seed's summary."""
    out = {}
    for concept, runs in settings.items():
        conds = list(runs[0]["summary"]["conditions"])
        out[concept] = {}
        for c in conds:
            out[concept][c] = {}
            for h, get in COLUMNS[concept]:
                vals = []
                for r in runs:
                    try:
                        vals.append(get(r["summary"]["conditions"][c]))
                    except KeyError:  # that evaluation did not run for the condition (SC rows skip SQuAD)
                        pass
                m, sd = mean_sd(vals)
                out[concept][c][h] = dict(mean=m, sd=sd, seeds=len(vals))
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
                cells.append("" if not v or v["mean"] is None else
                             f"{v['mean']:.{nd}f}" + (f" ± {v['sd']:.{nd}f}" if v["sd"] is not None else ""))
            said = [x for s in settings for x in claims.get(s, []) if x["row"] == c]
            verdicts = "; ".join(f"{x['setting']} {METRICS[x['metric']][2]}: {x['verdict']}" for x in said)
            lines.append(f"| {c} | " + " | ".join(cells) + " | "
                         + (f"{said[0]['claim']}: {verdicts}" if said else "") + " |")
        lines.append("")
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------------------------
# The paper's seven results (README, The paper), each with what we measured and the verdict.

SIZE_CAVEAT = ("the paper saw no forgetting gap for its smallest model (GPT2-medium, 355M); the embedded model here "
               "is 135M")


def paper_claims(settings, claims, t1, reps, rounds=()):
    out = []

    def add(n, text, setting, measured, v, note=""):
        out.append(dict(result=n, claim=text, setting=setting, measured=measured, verdict=v, note=note))
    for s, runs in settings.items():
        for x in claims[s]:
            if x["row"] == "+Downstream":
                add(1, "finetuning on a 50 %-unsafe mixture makes the aligned model less safe", s,
                    f"{METRICS[x['metric']][2]}, +Downstream - M0: {fmt_effect(x['effect'])}", x["verdict"])
        for sig in ("rouge", "nll"):
            e = forgetting_effect(runs, sig, reps, "gap")
            add(2, "during safety finetuning unsafe examples are forgotten more than the rest", s,
                f"{sig} forgetting, unsafe - rest at the filter's t: {fmt_effect(e)}", verdict(e, +1),
                "" if sig == "rouge" else "ours: the NLL signal")
    add(3, "the forgetting gap grows with model size", "all", "one model size here (135M)", "cannot tell",
        SIZE_CAVEAT)
    for s in settings:
        for x in claims[s]:
            if x["row"] == "+SafetyFT":
                add(4, "safety finetuning restores safety but costs downstream F1", s,
                    f"{METRICS[x['metric']][2]}, +SafetyFT - +Downstream: {fmt_effect(x['effect'])}", x["verdict"])
    for concept in CONCEPTS:
        sel = [r for r in t1 if r["concept"] == concept and r["signal"] == "rouge"]
        if sel:
            ok = all(r["auroc_interval"]["lo"] > 0.5 for r in sel)
            bad = any(r["auroc_interval"]["hi"] < 0.5 for r in sel)
            add(5, "the filter detects unsafe examples at 25 / 50 / 75 % unsafe (high F1)", concept,
                "; ".join(f"{r['unsafe_pct']} %: F1 {r['f1']:.1f}, AUROC {r['auroc']:.3f} "
                          f"[{r['auroc_interval']['lo']:.3f}, {r['auroc_interval']['hi']:.3f}]" for r in sel),
                "holds" if ok else "does not hold" if bad else "cannot tell",
                "holds = every ratio's AUROC interval lies above 0.5; " + SIZE_CAVEAT)
    for s in settings:
        for x in claims[s]:
            if x["row"] in ("FF", "SC", "Replay"):
                rel = f" ({fmt_effect(x['relative'], pct=True)})" if x["relative"] else ""
                add(6, x["claim"].removeprefix("the paper: "), s,
                    f"{METRICS[x['metric']][2]}, {x['a']} - {x['b']}: {fmt_effect(x['effect'])}{rel}", x["verdict"],
                    f"holds = FF's F1 at most {F1_MARGIN:g} points below" if x["metric"] == "squad_f1" else "")
    claim7 = "in interleaved rounds unsafe behaviour returns under safety finetuning; FF stays low"
    for x in rounds:
        add(7, claim7, x["setting"], x["measured"], x["verdict"], x["note"])
    if not rounds:
        add(7, claim7, "toxicity", "not run yet (`bash run.sh rounds`)", "cannot tell")
    return sorted(out, key=lambda r: r["result"])  # stable: settings keep their order within a result


def rounds_claims(results, reps):
    """The paper's result 7 from results/rounds/<concept>/ (rounds.py): under sequential safety finetuning the safety
    metric rises again with each noisy round (round k noisy - round k-1 safety > 0), and FF stays below the sequential
    pipeline's noisy model of the same round (FF round k - seq round k noisy < 0); intervals over evaluation items."""
    out = []
    for p in sorted(Path(results).glob("rounds/*/rounds.json")):
        rj = read_json(p)
        rows = {}
        for r in read_jsonl(p.parent / "rounds_rows.jsonl", required=("step", "eval", "id")):
            rows.setdefault(r["step"], {}).setdefault(r["eval"], []).append(r)
        for by_set in rows.values():
            for v in by_set.values():
                v.sort(key=lambda r: r["id"])
        runs = [dict(rows=rows)]
        for m in SAFETY[rj["concept"]]:
            ffs = list(dict.fromkeys(p["step"].rsplit(" ", 1)[0] for p in rj["points"] if p["pipeline"].startswith("ff")))
            for k in range(1, rj["rounds"] + 1):
                tests = [(f"{f} r{k}", f"seq r{k} noisy", -1, f"{f} below the sequential model") for f in ffs]
                if k > 1:
                    tests.insert(0, (f"seq r{k} noisy", f"seq r{k - 1} safety", +1, "unsafe behaviour comes back"))
                for a, b, direction, what in tests:
                    e = effect(runs, m, a, b, reps)
                    if e is not None:
                        out.append(dict(setting=rj["concept"], metric=m, a=a, b=b, effect=e, verdict=verdict(e, direction),
                                        measured=f"{METRICS[m][2]}, {a} - {b}: {fmt_effect(e)}",
                                        note=f"{what}; seed {rj['seed']}, commit {rj['commit']}"))
    return out


def render_claims(rows):
    lines = ["| result | the paper's claim | setting | measured here (95 % interval) | verdict | note |",
             "|---|---|---|---|---|---|"]
    lines += [f"| {r['result']} | {r['claim']} | {r['setting']} | {r['measured']} | **{r['verdict']}** | {r['note']} |"
              for r in rows]
    return "\n".join(lines) + "\n"


def render_signals(t1):
    """Which forgetting signal separates unsafe examples better, setting by setting and ratio by ratio."""
    pairs = {}
    for r in t1:
        pairs.setdefault((r["concept"], r["unsafe_pct"]), {})[r["signal"]] = r["auroc"]
    lines = ["| setting | unsafe | AUROC rouge (the paper's) | AUROC nll | better |", "|---|---|---|---|---|"]
    nll_wins = 0
    for (c, pct), a in pairs.items():
        better = "nll" if a["nll"] > a["rouge"] else "rouge" if a["rouge"] > a["nll"] else "tie"
        nll_wins += better == "nll"
        lines.append(f"| {c} | {pct} % | {a['rouge']:.3f} | {a['nll']:.3f} | {better} |")
    lines += ["", f"The NLL signal separates better in {nll_wins} of {len(pairs)} runs."]
    return "\n".join(lines) + "\n", nll_wins, len(pairs)


def render_figures(results):
    """The numbers behind the figures of the paper's Fig 5 and 8 and the size study (README, The paper's figures),
    from results/<concept>/ablations.json, results/rounds/<concept>/rounds.json and results/size/size.json."""
    out = []
    for p in sorted(Path(results).glob("*/ablations.json")):
        ab = read_json(p)
        out += [f"**Ablations, {ab['concept']}** ({ab['model']}, seed {ab['seed']}, commit {ab['commit']}, "
                f"{ab['wall_s'] / 60:.1f} min; filter at t = {ab['filter_t']}, phi rouge {ab['thresholds']['rouge']:g}"
                f", nll {ab['thresholds']['nll']:g}; gap: unsafe's mean forgetting minus the mean of the other kinds' means)", "",
                "| variant | ROUGE AUROC | ROUGE F1 | ROUGE gap | NLL AUROC | NLL F1 | NLL gap |",
                "|---|---|---|---|---|---|---|"]
        variants = [(f"t = {q['x']}", q) for q in ab["t"]] + [(f"&#124;D_safe&#124; = {q['x']}", q) for q in ab["size"]]
        variants += [(f"D_safe from {domain_label(ab['concept'], q['domain'])}, n {q['n']}", q) for q in ab["domain"]]
        for name, q in variants:
            out.append(f"| {name} | " + " | ".join(f"{q[sig]['auroc']:.3f} | {q[sig]['f1']:.1f} | {q[sig]['gap']:.3f}"
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
        out += ["**Model size** (gap: unsafe's mean forgetting minus the mean of the other kinds' means, at the filter's t)", "",
                "| model | parameters | signal | AUROC | gap | run (commit) |", "|---|---|---|---|---|---|"]
        out += [f"| {q['model']} | {q['params'] / 1e6:.0f}M | {q['signal']} | {q['auroc']:.3f} | {q['gap']:.3f} | "
                f"{q['name']} ({q['commit']}) |" for q in read_json(size)]
        out.append("")
    return "\n".join(out) + "\n" if out else "No run of the paper's figures yet.\n"


def provenance(settings, results):
    """One line per run the tables read: name, seed and the commit whose code produced it."""
    names = [f"{r['summary'].get('name', c)} (seed {r['seed']}, commit {r['summary'].get('commit', 'not recorded')})"
             for c, runs in settings.items() for r in runs]
    names += [f"{s.get('name', s['concept'])} (r {s['data']['config']['r']}, commit {s.get('commit', 'not recorded')})"
              for c in CONCEPTS for pct, s, _ in ratio_runs(results, c) if pct != 50]
    stale = f" Left out (older code, to be run again): {', '.join(sorted(set(STALE)))}." if STALE else ""
    return "Runs read: " + ", ".join(names) + "." + stale


def main():
    cfg = parse_config(Config, __doc__)
    results = Path(cfg.results)
    settings = {c: runs for c in CONCEPTS if (runs := load_setting(results, c))}
    if not settings:
        raise UserError(f"{results}: no <concept>/summary.json made by the current code"
                        + (f" ({len(set(STALE))} older ones left out)" if STALE else "")
                        + "; run `bash run.sh` (or `bash run.sh paper`) first")
    claims = {c: [dict(x, setting=c) for x in claims_for(c, runs, cfg.reps)] for c, runs in settings.items()}
    t1, t2 = table1(results, cfg.reps), table2(settings)
    rounds = rounds_claims(results, cfg.reps)
    rows = paper_claims(settings, claims, t1, cfg.reps, rounds)
    signals, nll_wins, n_runs = render_signals(t1)
    head = provenance(settings, results) + f" Intervals: {cfg.reps} bootstrap resamples of the items, 95 %.\n\n"
    have = {(r["concept"], r["unsafe_pct"]) for r in t1}
    missing = [f"{c} at {p} %" for c in ("toxicity", "bias", "harmfulness") for p in (25, 50, 75) if (c, p) not in have]
    cut = f"Not run yet (cut from the CPU budget; `bash run.sh ratios` runs them): {', '.join(missing)}.\n\n" \
        if missing else ""
    blocks = dict(table1=head + cut + render_table1(t1),
                  table2=head + render_table2(t2, claims, [("toxicity", "bias", "mixed"), ("harmfulness",)]),
                  claims=head + render_claims(rows), signals=signals, figures=render_figures(results))
    write_json(results / "table1.json", t1)
    write_json(results / "table2.json", dict(cells=t2, claims=claims, paper_claims=rows, rounds=rounds,
                                             signals=dict(nll_better=nll_wins, runs=n_runs)))
    write_text(results / "table1.md", blocks["table1"])
    write_text(results / "table2.md", blocks["table2"] + "\n" + blocks["claims"])
    if cfg.readme:
        for name, text in blocks.items():
            update_readme(cfg.readme, text, name)
    print("\n".join(blocks.values()))
    print(f"wrote {results}/table1.{{md,json}} and table2.{{md,json}}" + (f"; updated {cfg.readme}" if cfg.readme else ""))


if __name__ == "__main__":
    main_guard(main)
