"""The figure every ff.py run draws (own data included): the forgetting histogram of both signals at the filter's t,
the control beside it, the threshold, and (with labels) the precision-recall curves. Drawn from saved outputs only.

    python plots.py --run runs/mine      # <run>/forgetting_hist.png of one ff.py run folder again

The paper's figures (rounds, ablations, model size, each setting's report) are drawn by experiments/figures.py.
"""
import os
from dataclasses import dataclass
from pathlib import Path

from common import main_guard, opt, parse_config, read_json, read_jsonl

COLORS = {"unsafe": "tab:red", "safe": "tab:green", "task": "tab:blue", None: "tab:gray"}
SIGNAL_AXIS = {"rouge": "ROUGE-1 forgetting (drop)", "nll": "NLL forgetting (nats/token)",
               "rank": "rank forgetting (mean rank of both, 0..1)"}


def pyplot():
    import matplotlib
    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt
    return plt


def save(fig, path):
    """Write the figure through a temporary file and a rename, as every other output."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp.png")
    fig.tight_layout()
    fig.savefig(tmp, dpi=120)
    pyplot().close(fig)
    os.replace(tmp, path)
    return path


# ---------------------------------------------------------------------------------------------------------------
# One run: forgetting per kind at the filter's t, the threshold, the control beside it, and (with labels) the
# precision-recall curves of both signals.

def forgetting_hist(rows, path, filter_t, phis, title="", default=None):
    """Row 1: a histogram of each signal's forgetting at t = filter_t, one colour per kind (one grey histogram when
    the rows carry no labels), the threshold as a dashed line; the `default` signal's (the one filtered.jsonl
    follows) is drawn solid and named so in its panel's title. Row 2 (when the control ran): the same for the control
    (M0 safety-finetuned), on the same axes: if it looks like row 1, the split is a domain shift, not forgetting.
    Last column (with labels): precision-recall curves of both signals, the filter's operating points marked."""
    plt = pyplot()
    t = str(filter_t)
    signals = [s for s in ("rouge", "nll", "rank") if t in rows[0].get(f"forget_{s}", {})]
    has_control = all(t in r.get(f"control_forget_{signals[0]}", {}) for r in rows)
    labelled = rows[0].get("kind") is not None
    kinds = [k for k in ("unsafe", "safe", "task") if any(r.get("kind") == k for r in rows)] if labelled else [None]
    n_rows, n_cols = 1 + has_control, len(signals) + labelled
    fig, axes = plt.subplots(n_rows, n_cols, figsize=(4.2 * n_cols, 3.2 * n_rows), squeeze=False)
    for j, sig in enumerate(signals):
        values = {who: [r[key][t] for r in rows] for who, key in
                  (("run", f"forget_{sig}"), ("control", f"control_forget_{sig}"))
                  if who == "run" or (has_control and key in rows[0])}  # rank: no control of its own
        if has_control and len(values) == 1:
            axes[1][j].axis("off")
        lo = min(min(v) for v in values.values())
        hi = max(max(v) for v in values.values())
        bins = [lo + (hi - lo) * i / 30 for i in range(31)] if hi > lo else 10
        for i, (who, xs) in enumerate(values.items()):
            ax = axes[i][j]
            for k in kinds:
                sel = [x for x, r in zip(xs, rows) if r.get("kind") == k]
                ax.hist(sel, bins=bins, alpha=0.55, color=COLORS.get(k, "tab:purple"),
                        label=f"{k or 'all'} ({len(sel)})")
            chosen = sig == default
            if sig in phis and phis[sig] is not None:
                ax.axvline(phis[sig], color="black", ls="-" if chosen else "--", lw=1.6 if chosen else 1,
                           label=f"phi = {phis[sig]:g}" + (" (filtered.jsonl)" if chosen else ""))
            ax.set_xlabel(SIGNAL_AXIS[sig])
            ax.set_ylabel("examples")
            ax.set_title(f"{sig}, t = {t}" + (": control (M0 + D_safe)" if who == "control" else ": M1 -> M2")
                         + (", default filter" if chosen and who == "run" else ""), fontsize=9)
            ax.legend(fontsize=7)
    if labelled:
        from sklearn.metrics import precision_recall_curve
        ax = axes[0][-1]
        y = [r["kind"] == "unsafe" for r in rows]
        for sig in signals:
            xs = [r[f"forget_{sig}"][t] for r in rows]
            if 0 < sum(y) < len(y):
                p, rc, _ = precision_recall_curve(y, xs)
                ax.plot(rc, p, label=sig)
                if phis.get(sig) is not None:
                    flagged = [x > phis[sig] for x in xs]
                    tp = sum(f and u for f, u in zip(flagged, y))
                    ax.plot(tp / sum(y), tp / max(1, sum(flagged)), "o", color=ax.lines[-1].get_color())
        ax.axhline(sum(y) / len(y), color="gray", lw=0.5, label="unsafe share")
        ax.set_xlabel("recall")
        ax.set_ylabel("precision")
        ax.set_xlim(0, 1.02)
        ax.set_ylim(0, 1.02)
        ax.set_title("precision-recall (dot: the filter)", fontsize=9)
        ax.legend(fontsize=7)
        if has_control:
            axes[1][-1].axis("off")
    fig.suptitle(title, fontsize=9)
    return save(fig, path)


def run_figure(run):
    """<run>/forgetting_hist.png from an ff.py run folder (forgetting.jsonl and filter.json)."""
    run = Path(run)
    filt = read_json(run / "filter.json")
    rows = read_jsonl(run / "forgetting.jsonl", required=("id",))
    cfg = filt["config"]
    return forgetting_hist(rows, run / "forgetting_hist.png", filt["filter_t"], filt["thresholds"],
                           f"{run.name}: {cfg['model']}, seed {cfg['seed']}, {filt['n']} noisy examples",
                           default=(filt.get("ff_signals") or list(filt["thresholds"]))[0])


@dataclass
class Config:
    run: str = opt("runs/toxicity", "ff.py run folder whose forgetting_hist.png is drawn again")


def main():
    cfg = parse_config(Config, __doc__)
    print(f"wrote {run_figure(cfg.run)}")


if __name__ == "__main__":
    main_guard(main)
