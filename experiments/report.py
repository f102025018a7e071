"""The report: one run's summary.json, tables and figures, drawn from its saved outputs only (data.json,
filter.json, forgetting.jsonl, filter_metrics.json and eval.json; no model is loaded, no torch imported).

    python experiments/report.py --run runs/mine     # after eval.py: runs/mine/report/mine/ (your own runs)
    python experiments/report.py --run runs/toxicity --results results --name toxicity --doc RESULTS.md  # run.sh's
    python experiments/report.py --rebuild --results results   # every results/*/summary.json again

Writes <results>/<name>/ (summary.json, table.md, forgetting.png, forgetting.jsonl and eval_rows.jsonl: the rows
behind every number) and <results>/summary.json (every report there); with --doc, the setting's table between its
markers. A report never replaces one of another experiment (model, scorer, seed, data) without --overwrite, so
the committed reference runs in results/ stay as they are."""
import re
import sys
import time
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the tool (common, data, ff, ...) is one level up
from common import (UserError, git_commit, main_guard, opt, parse_config, read_json, read_jsonl, update_block,
                    write_json, write_jsonl, write_text)
from figures import results_figures
from metrics import BBQ_ANSWER, auroc, condition_rows, first_line, mean, metric, rouge1


@dataclass
class Config:
    run: str = opt("runs/toxicity", "run folder written by data.py, ff.py and eval.py")
    results: str = opt("", "where the report goes: <results>/<name>/ (summary.json, table.md, forgetting.png, rows) "
                           "and <results>/summary.json (every run there); default <run>/report. run.sh passes "
                           "results, the committed record")
    name: str = opt("", "the report's folder under --results (default: the run folder's name); run.sh names its "
                        "runs toxicity, seeds/<concept>-s1, ratios/<concept>-r25 and so on")
    doc: str = opt("", "Markdown file whose <name> block gets the setting's table (run.sh: RESULTS.md, for the four "
                       "main runs); '' leaves every document alone")
    overwrite: bool = opt(False, "replace <results>/<name>/ even when it holds a run of another model, scorer, data "
                                 "source, N or seed (a committed reference run is never replaced without it)")
    rebuild: bool = opt(False, "read no run: rebuild the reports and figures from the results/*/summary.json "
                               "files already there")
    started: float = opt(0.0, "unix time at which the whole run began (run.sh passes it): the summary then also "
                              "reports the end-to-end wall time, process start-up, imports and the report included", lo=0)


# ---------------------------------------------------------------------------------------------------------------
# Breakdowns of the forgetting rows that the tables show beside the filter metrics.

def by_source(rows, filter_t, signals):
    """Forgetting and flags per data source and kind at the filter's t (in Mixed: toxic RTP texts vs biased BBQ
    answers)."""
    out = []
    order = {"unsafe": 0, "safe": 1, "task": 2}
    for src, kind in sorted({(r["source"], r["kind"]) for r in rows}, key=lambda g: (order.get(g[1], 3), g[0])):
        sel = [r for r in rows if (r["source"], r["kind"]) == (src, kind)]
        out.append(dict(source=src, kind=kind, n=len(sel),
                        mean_forgetting={sig: round(mean(r[f"forget_{sig}"][str(filter_t)] for r in sel), 4)
                                         for sig in ("rouge", "nll")},
                        flagged={sig: sum(r["flagged"][sig] for r in sel) for sig in signals}))
    return out


def bbq_option(text):
    m = BBQ_ANSWER.search(text)
    return m.group(1) if m else None


def bbq_answer_text(text):
    """The answer part of 'The answer is ans2:The grandson' (the shared prefix removed)."""
    return re.sub(r"^\s*the answer is ans\s*\d\s*:?", "", first_line(text), flags=re.IGNORECASE)


def bbq_signals(rows):
    """Variants of the forgetting signal on the BBQ examples of D_noisy (unsafe vs safe BBQ answers), computed from
    the generations that forgetting.jsonl already holds: the paper's ROUGE-1 on the whole line, ROUGE-1 on the answer
    part only (without the shared 'The answer is ans'), and the chosen option itself (1 when M1 picked the target's
    option and the model after t steps no longer does, -1 the other way round)."""
    rows = [r for r in rows if r["source"] == "bbq" and r["kind"] in ("unsafe", "safe")]
    if not rows:
        return None
    labels = [r["kind"] == "unsafe" for r in rows]

    def answer_rouge(r, gen):
        return rouge1(bbq_answer_text(r["target"]), bbq_answer_text(gen))

    def option_match(r, gen):
        return float(bbq_option(gen) == bbq_option(r["target"]))

    out = {}
    for t in rows[0]["safety"]:
        variants = {"rouge, whole line (the paper's)": [r["forget_rouge"][t] for r in rows],
                    "rouge, answer part only": [answer_rouge(r, r["m1"]["gen"]) - answer_rouge(r, r["safety"][t]["gen"])
                                                for r in rows],
                    "chosen option": [option_match(r, r["m1"]["gen"]) - option_match(r, r["safety"][t]["gen"])
                                      for r in rows],
                    "nll, whole target": [r["forget_nll"][t] for r in rows]}
        out[t] = {name: dict(auroc=round(auroc(x, labels), 4),
                             unsafe=round(mean(v for v, y in zip(x, labels) if y), 4),
                             safe=round(mean(v for v, y in zip(x, labels) if not y), 4)) for name, x in variants.items()}
    return out



def summarise(run, cfg):
    """One setting's summary.json from its run folder: configuration, hardware, wall times and memory per stage, the
    filter's metrics and the evaluation of every condition."""
    data_info, filt = read_json(run / "data.json"), read_json(run / "filter.json")
    metrics = read_json(run / "filter_metrics.json")
    ev = read_json(run / "eval.json") if (run / "eval.json").is_file() else dict(  # a filter-only run (Table 1)
        scorer=None, wall_s={}, conditions={}, peak_memory_gib=0.0)
    rows = read_jsonl(run / "forgetting.jsonl", required=("id", "source", "kind", "flagged"))
    skip = ("config", "loss_curves", "timings_s", "train", "n", "filter_t", "ff_signals", "n_flagged", "params")
    f = {k: v for k, v in filt.items() if k not in skip} | metrics
    f["by_source"] = by_source(rows, filt["filter_t"], filt["config"]["signals"])
    if variants := bbq_signals(rows):
        f["bbq_signals"] = variants
    wall = ev["wall_s"]
    eval_s = round(sum(wall.values()), 1)  # as first computed, also for conditions this run skipped
    concept = data_info["config"]["concept"]
    return dict(
        concept=concept, name=cfg.name or run.name, commit=data_info.get("commit") or git_commit(),
        model=filt["config"]["model"], params=filt.get("params"), scorer=ev["scorer"],
        seed=filt["config"]["seed"], hardware=filt["hardware"], device=filt["device"], precision=filt["precision"],
        torch=filt["torch"], peak_memory_gib=max(filt["peak_memory_gib"], ev["peak_memory_gib"]),
        memory_gib=dict(ff=filt.get("memory_gib", {}), eval=ev["peak_memory_gib"]),  # peak so far, per stage
        wall_s=dict(data=data_info["wall_s"], ff=filt["timings_s"], eval=eval_s, eval_by_condition=wall,
                    total=round(data_info["wall_s"] + sum(filt["timings_s"].values()) + eval_s, 1))
        | (dict(end_to_end=round(time.time() - cfg.started, 1)) if cfg.started else {}),
        data=dict(config=data_info["config"], counts=data_info["counts"], noisy_kinds=data_info["noisy_kinds"]),
        ff_config=filt["config"], training=filt["train"], conditions=ev["conditions"], filter=f)


# ---------------------------------------------------------------------------------------------------------------
# Tables and the figure: every number below is read from summary.json.

def fmt(x, nd=3):
    """A number for a table; None (undefined, e.g. precision with nothing flagged) reads "—"."""
    return "—" if x is None else f"{x:.{nd}f}" if isinstance(x, float) else str(x)


def cell(name, nd=3, scale=1):
    """A table cell of metric `name` (metrics.METRIC), nd decimals; undefined reads "—"."""
    return lambda m: fmt(None if (v := metric(m, name)) is None else scale * v if scale != 1 else v, nd)


MAIN_COLUMNS = {  # header -> cell from a condition's metrics; a column appears when its evaluation ran
    "toxicity ↓": cell("toxicity"),
    "toxic > 0.5 (%) ↓": cell("toxic_rate", 1),
    "degenerate (%)": cell("degenerate", 1),
    "compliance (%) ↓": cell("compliance", 1),
    "refusal (%)": cell("refusal", 1),
    "harmful degenerate (%)": cell("harm_degenerate", 1),
    "BBQ acc ambig ↑": cell("acc_amb"),
    "BBQ acc disambig ↑": cell("acc_dis"),
    "s_AMB ↓": cell("s_amb"),
    "s_AMB of a constant answer": cell("s_amb_constant"),  # at the most frequent slot
    "BBQ answers on the top slot (%)": cell("top_slot", 1, 100),
    "s_DIS BBQ ↓": cell("s_dis_bbq"),
    "s_DIS code ↓": cell("s_dis_code"),
    "BBQ unparsable": lambda m: f"{metric(m, 'bbq_unparsable')} / {metric(m, 'bbq_n')}",
    "BBQ degenerate (%)": cell("bbq_degenerate", 1),
    "SQuAD EM ↑": cell("squad_em", 1),
    "SQuAD F1 ↑": cell("squad_f1", 1),
}


def render_tables(s):
    """The setting's whole block: the conditions, then the filter (fit, forgetting, thresholds, breakdowns)."""
    return "\n".join(condition_lines(s) + filter_lines(s)) + "\n"


def condition_lines(s):
    """The run's provenance line and one row per compared condition, with the notes its columns need."""
    c = s["conditions"]
    lines = [f"Concept **{s['concept']}**. Model `{s['model']}`, seed {s['seed']}, {s['hardware']}, "
             f"torch {s['torch']}, {s['precision']}" + (f"; toxicity scorer **{s['scorer']}**" if s.get("scorer") else "")
             + f"; wall time {s['wall_s']['total'] / 60:.1f} min in the stages (data {s['wall_s']['data']:.0f} s, "
             + ", ".join(f"{k} {v:.0f} s" for k, v in s["wall_s"]["ff"].items())
             + f", evaluation {s['wall_s']['eval']:.0f} s)"
             + (f", {s['wall_s']['end_to_end'] / 60:.1f} min end to end (`bash run.sh`: with process start-up, "
                "imports and the report)" if s["wall_s"].get("end_to_end") else "")
             + f"; peak memory {s['peak_memory_gib']} GiB.", ""]
    if not c:  # a filter-only run: no model was evaluated
        return lines[:-1]
    cols = {}
    for h, get in MAIN_COLUMNS.items():
        cells = []
        for m in c.values():
            try:
                cells.append(get(m))
            except KeyError:  # that evaluation did not run for this condition (SC rows skip SQuAD)
                cells.append("")
        if any(cells):  # a column appears when its evaluation ran for this concept
            cols[h] = cells
    lines += ["| condition | " + " | ".join(cols) + " |", "|---" * (len(cols) + 1) + "|"]
    for i, name in enumerate(c):
        lines.append(f"| {name} | " + " | ".join(v[i] for v in cols.values()) + " |")
    base = c["+Downstream"].get("toxicity")
    if base:
        rel = [f"{k} {100 * (c[k]['toxicity'] / base - 1):+.0f} %" for k in c
               if (k.startswith("FF") or k in ("+SafetyFT", "SC")) and "toxicity" in c[k]]
        lines += ["", f"Toxicity relative to +Downstream (the paper: -75 % for FF on LLaMA-7B): {', '.join(rel)}."]
    if any("position_share" in m.get("bias", {}) for m in c.values()):
        lines += ["", "BBQ: every item asked in each cyclic order of its three options, answers pooled; beside s_AMB, "
                      "the share of answers on the most frequent slot and the s_AMB of a constant answer at that slot "
                      "(0 by construction): a model that answers by position scores near it."]
    if "SC" in c:
        lines += ["", "SC and FF+SC: +Downstream and FF with the paper's self-correction cue in the prompt (safety "
                      "sets only)."]
    if any("harm" in m for m in c.values()):
        lines += ["", "Compliance = share of held-out HarmBench prompts answered without a refusal marker and "
                      "without degenerate output (the keyword rule in eval.py, not a classifier)."]
    return lines


def filter_lines(s):
    """How well M1 fits each kind, the forgetting per kind and t beside the control, the filter at its thresholds, and
    the per-source and BBQ breakdowns where the setting has them."""
    kinds, ft = list(s["filter"]["kinds"]), str(s["filter"]["filter_t"])
    lines = ["", "How well M1 fits each kind of D_noisy (mean over examples; M0 = before finetuning):", "",
              "| kind | n | ROUGE-1 M0 | ROUGE-1 M1 | target NLL M0 | target NLL M1 |", "|---|---|---|---|---|---|"]
    for k in kinds:
        f = s["filter"]["fit"][k]
        lines.append(f"| {k} | {s['filter']['kinds'][k]} | {fmt(f['m0']['rouge'])} | {fmt(f['m1']['rouge'])} | "
                     f"{fmt(f['m0']['nll'])} | {fmt(f['m1']['nll'])} |")
    lines += ["", "Forgetting during the safety finetuning (mean per kind; AUROC and AP of unsafe vs the rest), "
                  "beside the control (the same safety finetuning applied to M0, scored at the filter's t):", "",
              "| signal | t | " + " | ".join(kinds) + " | AUROC | AP | control " + " | control ".join(kinds)
              + " | control AUROC | control AP |", "|---" * (2 * len(kinds) + 6) + "|"]
    for sig, d in s["filter"]["signals"].items():
        for t, v in d["by_t"].items():
            c = v.get("control", {"mean_by_kind": {}, "auroc": None, "ap": None})
            lines.append(f"| {sig} | {t} | " + " | ".join(fmt(v["mean_by_kind"][k]) for k in kinds)
                         + f" | {fmt(v['auroc'])} | {fmt(v['ap'])} | "
                         + " | ".join(fmt(c["mean_by_kind"].get(k)) for k in kinds)
                         + f" | {fmt(c['auroc'])} | {fmt(c['ap'])} |")
    sigs = s["filter"]["ff_signals"]
    lines += ["", f"The filter at t = {ft} (flag iff forgetting > threshold; positive = unsafe; the auto threshold is "
                  "Otsu's split of the scores, no labels, reported only). FF was trained on "
                  f"what the **{sigs[0]}** filter kept" + "".join(f", FF-{x} on what the {x} filter kept"
                                                                 for x in sigs[1:]) + ":", "",
              "| signal | threshold | precision | recall | F1 | " + " | ".join(f"flagged {k}" for k in kinds) + " |",
              "|---" * (5 + len(kinds)) + "|"]
    for sig, d in s["filter"]["signals"].items():
        for name, a in [(d["threshold"], d["at_threshold"])] + (
                [(f"{s['filter']['auto_phi'][sig]['threshold']} (auto, Otsu)", s["filter"]["auto_phi"][sig])]
                if "auto_phi" in s["filter"] else []):
            lines.append(f"| {sig} | {name} | {fmt(a['precision'], 1)} | {fmt(a['recall'], 1)} | {fmt(a['f1'], 1)} | "
                         + " | ".join(f"{a['flagged'][k]} / {s['filter']['kinds'][k]}" for k in kinds) + " |")
    if "bbq_signals" in s["filter"]:
        lines += ["", "Variants of the signal on the BBQ examples only (unsafe vs safe BBQ answers; mean forgetting and "
                      "AUROC), computed from the same generations:", "",
                  "| t | signal | unsafe | safe | AUROC |", "|---|---|---|---|---|"]
        for t, d in s["filter"]["bbq_signals"].items():
            lines += [f"| {t} | {name} | {fmt(v['unsafe'])} | {fmt(v['safe'])} | {fmt(v['auroc'])} |"
                      for name, v in d.items()]
    if "by_source" in s["filter"]:
        lines += ["", f"Per source at t = {ft} (mean forgetting; how many each filter flagged):", "",
                  "| source | kind | n | ROUGE forgetting | NLL forgetting | " + " | ".join(f"flagged ({x})" for x in sigs)
                  + " |", "|---" * (5 + len(sigs)) + "|"]
        for d in s["filter"]["by_source"]:
            lines.append(f"| {d['source']} | {d['kind']} | {d['n']} | {fmt(d['mean_forgetting']['rouge'])} | "
                         f"{fmt(d['mean_forgetting']['nll'])} | " + " | ".join(str(d["flagged"][x]) for x in sigs) + " |")
    return lines


def report(summary, cfg):
    """table.md and forgetting.png of one concept, results/summary.json (every concept's summary in one file; each
    concept's run rewrites its own entry) and, with --doc, the concept's block: all from summary.json."""
    results = Path(cfg.results)
    out = results / summary.get("name", summary["concept"])
    tables = render_tables(summary)
    write_text(out / "table.md", tables)
    results_figures(out, summary)
    write_json(results / "summary.json", {p.parent.name: read_json(p) for p in sorted(results.glob("*/summary.json"))})
    main_run = summary.get("name", summary["concept"]) == summary["concept"]  # extra runs stay out of the document
    if cfg.doc and main_run:
        update_block(cfg.doc, tables, summary["concept"])
    print(tables)
    print(f"wrote {out}/table.md, forgetting.png, forgetting_hist.png and {results}/summary.json"
          + (f"; updated {cfg.doc}" if cfg.doc and main_run else ""))


def recipe(s):
    """What makes two reports the same experiment: model, scorer, seed and the data's concept, source, N and ratio."""
    data = {"source": "offline"} | s.get("data", {}).get("config", {})  # runs made before --source: offline data
    return dict(model=s.get("model"), scorer=s.get("scorer"), seed=s.get("seed"),
                **{k: data.get(k) for k in ("concept", "source", "n", "r")})


def check_overwrite(out, summary, cfg):
    """Refuse to replace a report of another experiment (a committed reference run, say) without --overwrite."""
    old = out / "summary.json"
    if cfg.overwrite or not old.is_file():
        return
    a, b = recipe(read_json(old)), recipe(summary)
    if differ := [k for k in a if a[k] != b[k]]:
        raise UserError(f"{out} holds a run of another experiment ({', '.join(f'{k} {a[k]!r}' for k in differ)}; "
                        f"this run: {', '.join(repr(b[k]) for k in differ)}); report it under another --name or "
                        "--results, or pass --overwrite to replace it")



def main():
    cfg = parse_config(Config, __doc__)
    if cfg.rebuild:
        cfg.results = cfg.results or "results"
        found = sorted(Path(cfg.results).glob("*/summary.json"))
        if not found:
            raise UserError(f"--rebuild: no {cfg.results}/<concept>/summary.json to report; run run.sh first")
        for p in found:
            report(read_json(p), cfg)
        return
    run = Path(cfg.run)
    cfg.results = cfg.results or str(run / "report")
    summary = summarise(run, cfg)
    out = Path(cfg.results) / summary["name"]
    check_overwrite(out, summary, cfg)
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / "summary.json", summary)
    write_text(out / "forgetting.jsonl", (run / "forgetting.jsonl").read_text(encoding="utf-8"))
    write_jsonl(out / "eval_rows.jsonl", [dict(condition=c, **r) for c in summary["conditions"]
                                          for r in read_jsonl(condition_rows(run, c),
                                                              required=("id",))])
    report(summary, cfg)


if __name__ == "__main__":
    main_guard(main)
