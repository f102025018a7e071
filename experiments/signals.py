"""Which forgetting signal and which label-free threshold the own-data filter should use: a study over every
committed labelled run (the four settings, their seeds and ratios), from the stored rows only, no training.

    python experiments/signals.py          # results/signals/study.{json,md,png} and RESULTS.md's study block

Each candidate is a signal (metrics.SIGNALS and metrics.RANKED, at the run's filter t) with a label-free threshold
(metrics.THRESHOLDS: Otsu, a two-component Gaussian mixture, or a high quantile of the control's forgetting); the
paper's fixed phi (rouge 0.1, nll 0.5) is reported beside them as a reference, never chosen. Per run: AUROC, AP and
the threshold's F1. The choice is made the way it will be used, by leaving one setting out (DEVIATIONS.md, The
own-data filter): on three settings choose the candidate with the best mean F1 (each setting the mean of its runs;
ties to the better mean AUROC), score it on the fourth. The held-out scores are the numbers RESULTS.md quotes; the
candidate the same rule picks on all four settings becomes ff.py's own-data default.
"""
import sys
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the tool (common, metrics, ...) is one level up
from common import UserError, main_guard, opt, parse_config, read_json, read_jsonl, update_block, write_json, write_text
from metrics import (RANKED, SIGNALS, THRESHOLDS, at_threshold, auroc, average_precision, control_values, mean,
                     signal_values, threshold)
from plots import pyplot, save
from tables import floors

CONCEPTS = ("toxicity", "bias", "harmfulness", "mixed")
FIXED = {"rouge": 0.1, "nll": 0.5}  # the paper's fixed phi (run.sh), a reference


@dataclass
class Config:
    results: str = opt("results", "folder of the committed runs (<concept>/, seeds/, ratios/)")
    out: str = opt("results/signals", "where study.json, study.md and study.png go")
    doc: str = opt("RESULTS.md", "document whose study block is regenerated ('' = none)")


def load_runs(results):
    """Every labelled run of the four settings: name, concept, filter t and its forgetting rows."""
    runs = []
    for c in CONCEPTS:
        for d in [results / c] + sorted((results / "seeds").glob(f"{c}-s*")) + sorted(
                (results / "ratios").glob(f"{c}-r*")):
            if (d / "summary.json").is_file() and (d / "forgetting.jsonl").is_file():
                s = read_json(d / "summary.json")
                runs.append(dict(name=str(d.relative_to(results)), concept=c, t=str(s["filter"]["filter_t"]),
                                 rows=read_jsonl(d / "forgetting.jsonl", required=("id", "kind"))))
    if not runs:
        raise UserError(f"{results}: no labelled run (<concept>/summary.json and forgetting.jsonl); run `bash run.sh`")
    return runs


def measure(run):
    """{(signal, threshold): dict(auroc, ap, f1, phi, flagged)} for one run; 'fixed' is the paper's phi."""
    rows, t = run["rows"], run["t"]
    labels = [r["kind"] == "unsafe" for r in rows]
    kinds = sorted({r["kind"] for r in rows})
    out = {}
    for sig in list(SIGNALS) + list(RANKED):
        x = signal_values(rows, sig, t)
        if x is None:
            continue
        ctrl = control_values(rows, sig, t)
        a, ap = round(auroc(x, labels), 4), round(average_precision(x, labels), 4)
        for method in THRESHOLDS + (("fixed",) if sig in FIXED else ()):
            phi = FIXED[sig] if method == "fixed" else threshold(method, x, ctrl)
            if phi is None:
                continue
            m = at_threshold(rows, x, phi, kinds)
            out[(sig, method)] = dict(auroc=a, ap=ap, f1=m["f1"] or 0.0, phi=round(phi, 4), flagged=m["n_flagged"])
    return out


def flag_all_f1(run):
    """F1 (%) of flagging every line: the floor a useful filter must beat (tables.floors, as Table 1 has it)."""
    return floors([(True, r["kind"] == "unsafe") for r in run["rows"]])[0]


def by_setting(runs, scores, cand):
    """{concept: mean F1 and AUROC of the candidate over that setting's runs}."""
    out = {}
    for c in CONCEPTS:
        vals = [scores[r["name"]][cand] for r in runs if r["concept"] == c and cand in scores[r["name"]]]
        if vals:
            out[c] = dict(f1=round(mean(v["f1"] for v in vals), 1), auroc=round(mean(v["auroc"] for v in vals), 3),
                          runs=len(vals))
    return out


def choose(table, candidates, settings):
    """The rule: the best mean F1 over `settings` (each setting the mean of its runs), ties to the best AUROC."""
    return max(candidates, key=lambda c: (mean(table[c][s]["f1"] for s in settings),
                                          mean(table[c][s]["auroc"] for s in settings)))


def render(study):
    t, held = study["table"], study["held_out"]
    lines = [f"Over {len(study['runs'])} labelled runs ({', '.join(study['runs'])}), from the stored rows only. "
             "Each cell: the threshold's F1 (%) / the signal's AUROC, the mean over the setting's runs. Chosen by "
             "leaving one setting out (best mean F1 on the other three, ties to AUROC); the fixed phi is a "
             "reference, never chosen.", "",
             "| signal | threshold | " + " | ".join(CONCEPTS) + " | mean |", "|---|---|" + "---|" * (len(CONCEPTS) + 1)]
    for key, row in sorted(t.items(), key=lambda kv: -mean(v["f1"] for v in kv[1].values())):
        sig, method = key.split(" ")
        cells = [f"{row[c]['f1']:.1f} / {row[c]['auroc']:.3f}" if c in row else "" for c in CONCEPTS]
        lines.append(f"| {sig} | {method} | " + " | ".join(cells) + f" | {mean(v['f1'] for v in row.values()):.1f} |")
    lines.append("| every line | (flag all: the floor) | " + " | ".join(f"{study['flag_all_f1'][c]:.1f} / 0.500"
                                                                  for c in CONCEPTS) + " | |")
    lines += ["", "| held-out setting | chosen on the other three | held-out F1 | flag-all F1 | held-out AUROC | "
                  "share flagged |", "|---|---|---|---|---|---|"]
    lines += [f"| {c} | {h['chosen']} | {h['f1']:.1f} | {study['flag_all_f1'][c]:.1f} | {h['auroc']:.3f} | "
              f"{100 * h['share_flagged']:.0f} % |" for c, h in held.items()]
    lines += ["", f"Held-out mean: F1 {study['held_out_mean']['f1']:.1f}, AUROC {study['held_out_mean']['auroc']:.3f}. "
              f"The same rule on all four settings picks **{study['default']}**: the own-data default of ff.py."]
    return "\n".join(lines) + "\n"


def figure(study, path):
    """Held-out F1 per setting for every candidate (the leave-one-setting-out choice boxed)."""
    plt = pyplot()
    keys = sorted(study["table"], key=lambda k: -mean(v["f1"] for v in study["table"][k].values()))
    grid = [[study["table"][k].get(c, {}).get("f1", float("nan")) for c in CONCEPTS] for k in keys]
    fig, ax = plt.subplots(figsize=(6, 0.28 * len(keys) + 1.5))
    im = ax.imshow(grid, cmap="viridis", vmin=0, vmax=100, aspect="auto")
    ax.set_xticks(range(len(CONCEPTS)), CONCEPTS, fontsize=8)
    ax.set_yticks(range(len(keys)), keys, fontsize=7)
    for j, c in enumerate(CONCEPTS):
        i = keys.index(study["held_out"][c]["chosen"])
        ax.add_patch(plt.Rectangle((j - 0.5, i - 0.5), 1, 1, fill=False, edgecolor="red", linewidth=2))
        for i2, k in enumerate(keys):
            v = grid[i2][j]
            if v == v:
                ax.text(j, i2, f"{v:.0f}", ha="center", va="center", fontsize=6, color="white" if v < 60 else "black")
    fig.colorbar(im, ax=ax, label="F1 (%)")
    ax.set_title("F1 of each signal + threshold; red: chosen on the other three settings", fontsize=8)
    return save(fig, path)


def main():
    cfg = parse_config(Config, __doc__)
    results, out = Path(cfg.results), Path(cfg.out)
    # 1. every labelled run, each candidate measured on its stored rows
    runs = load_runs(results)
    scores = {r["name"]: measure(r) for r in runs}
    cands = sorted({k for s in scores.values() for k in s})
    table = {c: by_setting(runs, scores, c) for c in cands}
    floor = {c: round(mean(flag_all_f1(r) for r in runs if r["concept"] == c), 1) for c in CONCEPTS
             if any(r["concept"] == c for r in runs)}
    # 2. the choice by leaving one setting out, among the label-free candidates every setting has
    choosable = [c for c in cands if c[1] != "fixed" and set(table[c]) == set(CONCEPTS)]
    held = {}
    for s in CONCEPTS:
        pick = choose(table, choosable, [c for c in CONCEPTS if c != s])
        flagged = [(scores[r["name"]][pick]["flagged"], len(r["rows"])) for r in runs if r["concept"] == s]
        held[s] = dict(chosen=" ".join(pick), **{k: table[pick][s][k] for k in ("f1", "auroc")},
                       share_flagged=round(mean(k / n for k, n in flagged), 3))
    default = choose(table, choosable, CONCEPTS)
    study = dict(runs=[r["name"] for r in runs], flag_all_f1=floor, rule="leave one setting out: best mean F1 over the other three "
                 "settings (each the mean of its runs), ties to AUROC; fixed phi never chosen",
                 table={" ".join(c): v for c, v in table.items()}, held_out=held,
                 held_out_mean=dict(f1=round(mean(h["f1"] for h in held.values()), 1),
                                    auroc=round(mean(h["auroc"] for h in held.values()), 3)),
                 default=" ".join(default), per_run={n: {" ".join(k): v for k, v in s.items()} for n, s in scores.items()})
    # 3. the outputs
    write_json(out / "study.json", study)
    block = render(study)
    write_text(out / "study.md", block)
    figure(study, out / "study.png")
    if cfg.doc:
        update_block(cfg.doc, block, "study")
    print(block + f"wrote {out}/study.json, study.md, study.png" + (f"; updated {cfg.doc}" if cfg.doc else ""))


if __name__ == "__main__":
    main_guard(main)
