"""The paper's figures, drawn from saved outputs only (no model is loaded, no torch imported): the curves of a
setting's report, the ablations, the interleaved rounds and the model-size study, and every run's histogram again.

    python experiments/figures.py         # redraw every figure under results/ from the JSON beside it

The histogram of one ff.py run folder (own data included) is plots.py's (`python plots.py --run runs/mine`).

Each figure sits beside the JSON it is drawn from: results/<name>/forgetting.png and forgetting_hist.png (from
summary.json and forgetting.jsonl), results/<name>/ablations.png (ablations.json), results/rounds/<concept>/rounds.png
(rounds.json), results/size/size.png (size.json).
"""
import sys
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the tool (common, data, ff, ...) is one level up
from common import main_guard, opt, parse_config, read_json, read_jsonl, write_json
from metrics import forgetting_gap
from plots import COLORS, forgetting_hist, pyplot, save


# ---------------------------------------------------------------------------------------------------------------
# A setting's report: mean forgetting per kind against t (from summary.json), and the histogram.

def plot_forgetting(s, path):
    plt = pyplot()
    sigs = s["filter"]["signals"]
    fig, axes = plt.subplots(1, len(sigs), figsize=(5 * len(sigs), 3.6))
    for ax, (sig, d) in zip(axes, sigs.items()):
        ts = [0] + [int(t) for t in d["by_t"]]
        for k in s["filter"]["kinds"]:
            ax.plot(ts, [0] + [v["mean_by_kind"][k] for v in d["by_t"].values()], "o-", color=COLORS.get(k),
                    label=k)
            ct = [t for t, v in d["by_t"].items() if "control" in v]  # the control: M0 scored at the filter's t
            if ct:
                ax.plot([int(t) for t in ct], [d["by_t"][t]["control"]["mean_by_kind"][k] for t in ct], "x",
                        markersize=9, color=COLORS.get(k), label=f"{k} (control: M0)")
        ax.set_xlabel("safety-finetuning steps t")
        ax.set_ylabel("ROUGE-1 drop" if sig == "rouge" else "target NLL increase (nats/token)")
        ax.set_title(f"{sig} forgetting per kind")
        ax.axhline(0, color="gray", lw=0.5)
    axes[0].legend(fontsize=7)
    fig.suptitle(f"{s['concept']}: {s['model']}, seed {s['seed']}", fontsize=9)
    return save(fig, path)


def results_figures(folder, s):
    """forgetting.png (mean forgetting against t) and forgetting_hist.png (the filter's t) of one results folder."""
    folder = Path(folder)
    plot_forgetting(s, folder / "forgetting.png")
    if (folder / "forgetting.jsonl").is_file():
        f = s["filter"]
        forgetting_hist(read_jsonl(folder / "forgetting.jsonl", required=("id",)), folder / "forgetting_hist.png",
                        f["filter_t"], {sig: d["threshold"] for sig, d in f["signals"].items()},
                        f"{s.get('name', s['concept'])}: {s['model']}, seed {s['seed']}",
                        default=next(iter(f["signals"])))  # the paper's filter: the first signal


# ---------------------------------------------------------------------------------------------------------------
# The experiments of the paper's figures.

def domain_label(concept, domain):
    """What ablate.py's safe-set domains hold (ablate.other_domain), for the figure and RESULTS.md."""
    other = "AdvBench refusals" if concept in ("toxicity", "mixed") else "non-toxic C4 sentences"
    return {"task": "task: Alpaca answers", "other": f"other: {other}"}.get(domain, domain)


def ablation_figure(ab, path):
    """ablate.py's output: filter F1 and AUROC of both signals against t, phi, the safe set's size and its domain;
    per domain, the mean forgetting of each kind (does it spread over every kind, or stay on the unsafe ones?)."""
    plt = pyplot()
    fig, axes = plt.subplots(2, 4, figsize=(20, 7.6))
    axes = axes.ravel()
    for ax, key, xlabel in ((axes[0], "t", "safety steps t"), (axes[3], "size", "safe examples in D_safe")):
        for sig in ("rouge", "nll"):
            pts = ab[key]
            ax.plot([p["x"] for p in pts], [p[sig]["auroc"] for p in pts], "o-", label=f"{sig} AUROC")
            ax.plot([p["x"] for p in pts], [p[sig]["f1"] / 100 for p in pts], "s--", label=f"{sig} F1 / 100")
        ax.set_xlabel(xlabel)
        ax.set_ylim(0, 1.02)
        ax.legend(fontsize=7)
    for ax, sig in ((axes[1], "rouge"), (axes[2], "nll")):
        sw = ab["phi"][sig]
        ax.plot([p["phi"] for p in sw["points"]], [p["f1"] for p in sw["points"]], "-", label="F1")
        ax.plot([p["phi"] for p in sw["points"]], [p["precision"] for p in sw["points"]], ":", label="precision")
        ax.plot([p["phi"] for p in sw["points"]], [p["recall"] for p in sw["points"]], ":", label="recall")
        if sw["fixed"] != sw["otsu"]:  # a run with --phi auto filtered at Otsu's threshold itself
            ax.axvline(sw["fixed"], color="black", ls="--", lw=1, label=f"the run's phi {sw['fixed']:g}")
        ax.axvline(sw["otsu"], color="tab:orange", ls="--", lw=1, label=f"Otsu {sw['otsu']:g}")
        ax.set_xlabel(f"phi ({sig}), t = {ab['filter_t']}")
        ax.set_ylabel("%")
        ax.legend(fontsize=7)
    names = [f"{domain_label(ab['concept'], d['domain'])}\n(n = {d['n']})" for d in ab["domain"]]
    ax = axes[4]
    for k, sig in enumerate(("rouge", "nll")):
        ax.bar([i + 0.4 * k for i in range(len(names))], [d[sig]["auroc"] for d in ab["domain"]], width=0.4,
               label=f"{sig} AUROC")
    ax.axhline(0.5, color="gray", lw=0.5)
    ax.set_xticks([i + 0.2 for i in range(len(names))], names, fontsize=7)
    ax.set_ylim(0, 1.02)
    ax.legend(fontsize=7)
    for ax, sig in ((axes[5], "rouge"), (axes[6], "nll")):
        kinds = list(ab["domain"][0][sig].get("mean_by_kind", {}))
        w = 0.8 / max(len(kinds), 1)
        for k, kind in enumerate(kinds):
            ax.bar([i + w * k for i in range(len(names))], [d[sig]["mean_by_kind"][kind] for d in ab["domain"]],
                   width=w, label=kind)
        ax.axhline(0, color="gray", lw=0.5)
        ax.set_xticks([i + 0.4 - w / 2 for i in range(len(names))], names, fontsize=7)
        ax.set_ylabel(f"mean forgetting ({sig})")
        ax.legend(fontsize=7)
    axes[7].axis("off")
    titles = ("t", "phi (rouge)", "phi (nll)", "size of D_safe", "domain of D_safe: AUROC",
              "domain of D_safe: forgetting per kind (rouge)", "domain of D_safe: forgetting per kind (nll)")
    for ax, title in zip(axes, titles):
        ax.set_title(title, fontsize=9)
    fig.suptitle(f"ablations: {ab['concept']}, {ab['model']}, seed {ab['seed']}", fontsize=9)
    return save(fig, path)


def rounds_figure(rj, path):
    """rounds.py's output: the safety metric and SQuAD F1 after every finetuning, both pipelines side by side."""
    plt = pyplot()
    metrics = [m for m in ("toxicity", "s_amb", "compliance", "squad_f1") if m in rj["points"][0]]
    fig, axes = plt.subplots(1, len(metrics), figsize=(5 * len(metrics), 3.6), squeeze=False)
    for ax, m in zip(axes[0], metrics):
        pipes = list(dict.fromkeys(p["pipeline"] for p in rj["points"] if p["pipeline"] != "start"))
        for pipe, style in zip(pipes, ("o-", "s-", "^-", "v-")):  # x: the sequential step each point follows
            pts = [p for p in rj["points"] if p["pipeline"] in (pipe, "start")]
            ax.plot([p["x"] for p in pts], [float("nan") if p[m] is None else p[m] for p in pts], style, label=pipe)
        ticks = [p for p in rj["points"] if p["pipeline"] in ("sequential", "start")]
        ax.set_xticks([p["x"] for p in ticks], [p["step"].replace("seq ", "") for p in ticks], rotation=30,
                      fontsize=7)
        ax.set_ylabel(m)
        ax.set_title(m, fontsize=9)
        ax.legend(fontsize=7)
    fig.suptitle(f"interleaved rounds: {rj['concept']}, {rj['model']}, seed {rj['seed']} (FF, FF-nll: each round's "
                 "noisy draw filtered by the ROUGE, NLL signal; x: after each finetuning)", fontsize=9)
    return save(fig, path)


def size_points(results):
    """One point per run of the size study (results/size/<concept>-<model>/, run.sh size; the toxicity setting's run
    stands for its model when the study has no run of it) per signal: concept, model, parameter count, AUROC and the
    forgetting gap (metrics.forgetting_gap, from the run's forgetting.jsonl) at the filter's t."""
    points, seen = [], set()
    for p in sorted(Path(results).glob("size/*/summary.json")) + [Path(results) / "toxicity/summary.json"]:
        s = read_json(p) if p.is_file() else {}  # the toxicity setting: the embedded model's point, if not above
        if not s.get("params") or "filter" not in s or (s["model"], s["concept"]) in seen:
            continue
        seen.add((s["model"], s["concept"]))
        t = str(s["filter"]["filter_t"])
        rows = read_jsonl(p.parent / "forgetting.jsonl", required=("kind", "forget_rouge", "forget_nll"))
        for sig, d in s["filter"]["signals"].items():
            gap = forgetting_gap([r[f"forget_{sig}"][t] for r in rows], [r["kind"] == "unsafe" for r in rows])
            points.append(dict(concept=s["concept"], model=s["model"], params=s["params"], signal=sig,
                               name=s.get("name", s["concept"]), seed=s["seed"], auroc=d["by_t"][t]["auroc"],
                               gap=round(gap, 4), commit=s.get("commit")))
    return points


def size_figure(points, path):
    """AUROC and the unsafe-minus-rest forgetting gap against parameter count, one line per concept and signal."""
    plt = pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.6))
    for ax, key, label in ((axes[0], "auroc", "AUROC, unsafe vs rest"), (axes[1], "gap", "forgetting gap")):
        for c, sig in sorted({(p["concept"], p["signal"]) for p in points}):
            sel = sorted((p for p in points if (p["concept"], p["signal"]) == (c, sig)), key=lambda p: p["params"])
            ax.plot([p["params"] for p in sel], [p[key] for p in sel], "o-" if sig == "rouge" else "s--",
                    label=f"{c} ({sig})")
        ax.set_xscale("log")
        ax.set_xlabel("parameters")
        ax.set_ylabel(label)
        ax.legend(fontsize=7)
    axes[0].axhline(0.5, color="gray", lw=0.5)
    axes[1].axhline(0, color="gray", lw=0.5)
    fig.suptitle("the forgetting gap against model size", fontsize=9)
    return save(fig, path)


def size_study(results):
    """results/size/size.{json,png} from the size study's runs."""
    points = size_points(results)
    if not points:
        return None
    out = Path(results) / "size"
    write_json(out / "size.json", points)
    return size_figure(points, out / "size.png")


# ---------------------------------------------------------------------------------------------------------------

@dataclass
class Config:
    results: str = opt("results", "redraw every figure under this folder from the JSON beside it")


def main():
    cfg = parse_config(Config, __doc__)
    results, drawn = Path(cfg.results), []
    for p in sorted(results.rglob("summary.json")):
        if p.parent != results and "filter" in (s := read_json(p)):  # a run's, not report.py's index of its folder
            results_figures(p.parent, s)
            drawn.append(p.parent / "forgetting_hist.png")
    for p in sorted(results.rglob("ablations.json")):
        drawn.append(ablation_figure(read_json(p), p.with_suffix(".png")))
    for p in sorted(results.rglob("rounds.json")):
        drawn.append(rounds_figure(read_json(p), p.with_suffix(".png")))
    if size := size_study(results):
        drawn.append(size)
    print(f"drew {len(drawn)} figure sets under {results}")


if __name__ == "__main__":
    main_guard(main)
