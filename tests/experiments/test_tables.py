"""The statistics behind Tables 1-2 against hand-computed cases: the bootstrap interval, mean +- sd over seeds,
paired effects and the verdict rule."""
import pytest

import tables
from metrics import bootstrap, mean


def test_bootstrap_interval_hand_cases():
    # two items 0 and 1: a resample's mean is 0 (p 1/4), 0.5 (p 1/2) or 1 (p 1/4), so the central 95 % is [0, 1]
    one = lambda draw: mean([0, 1][i] for _, ix in draw for i in ix)  # noqa: E731
    assert bootstrap([2], one, reps=2000) == dict(lo=0.0, hi=1.0, undefined=0)
    assert bootstrap([5], lambda draw: 3.0, reps=50) == dict(lo=3.0, hi=3.0, undefined=0)  # no spread, no interval
    # two groups resampled apart, [0, 1] and [10]: the mean of the group means runs from (0 + 10) / 2 to (1 + 10) / 2
    groups = [[0, 1], [10]]
    stat = lambda draw: mean(mean(groups[g][i] for i in ix) for g, ix in draw)  # noqa: E731
    assert bootstrap([2, 1], stat, reps=2000) == dict(lo=5.0, hi=5.5, undefined=0)
    # the groups drawn too: a resample can hold group 1 twice (mean 10) or group 0 twice (at most 1)
    both = bootstrap([2, 1], stat, reps=2000, seeds=True)
    assert both["lo"] <= 0.5 and both["hi"] == 10.0


def test_bootstrap_counts_undefined_resamples():
    # stat undefined whenever the resample misses item 1 (probability 1/4 for two items)
    iv = bootstrap([2], lambda draw: 1.0 if 1 in draw[0][1] else None, reps=2000)
    assert iv["lo"] == iv["hi"] == 1.0 and 400 < iv["undefined"] < 600
    assert bootstrap([1], lambda draw: float("nan"), reps=10) == dict(lo=None, hi=None, undefined=10)


def test_bootstrap_is_seeded():
    stat = lambda draw: mean([1, 5, 2, 8, 3][i] for i in draw[0][1])  # noqa: E731
    assert bootstrap([5], stat, seed=3) == bootstrap([5], stat, seed=3)


def seed_run(seed, tox_ff, tox_down):
    return dict(seed=seed, summary=dict(conditions={"+Downstream": dict(toxicity=tox_down, toxic_rate=50.0,
                                                                        degenerate=0.0, squad_f1=40.0),
                                                    "FF": dict(toxicity=tox_ff, toxic_rate=10.0, degenerate=0.0)}))


def test_mean_and_sd_over_seeds():
    t2 = tables.table2({"toxicity": [seed_run(0, 0.2, 0.5), seed_run(1, 0.4, 0.5), seed_run(2, 0.6, 0.5)]})
    ff = t2["toxicity"]["FF"]["toxicity"]
    assert ff["mean"] == pytest.approx(0.4) and ff["sd"] == pytest.approx(0.2) and ff["seeds"] == 3
    assert t2["toxicity"]["+Downstream"]["toxicity"] == dict(mean=0.5, sd=0.0, seeds=3, undefined=0)
    assert t2["toxicity"]["FF"]["SQuAD F1"] == dict(mean=None, sd=None, seeds=0, undefined=0)  # FF has no SQuAD here
    one = tables.table2({"toxicity": [seed_run(0, 0.2, 0.5)]})["toxicity"]["FF"]["toxicity"]
    assert one == dict(mean=0.2, sd=None, seeds=1, undefined=0)  # one seed: no spread to report


def rows(values):
    return {"toxicity": [dict(id=f"x{i}", toxicity=v) for i, v in enumerate(values)]}


def test_paired_effect_and_verdict():
    runs = [dict(rows={"FF": rows([0.1, 0.2, 0.3, 0.2]), "+Downstream": rows([0.6, 0.7, 0.8, 0.7])})]
    e = tables.effect(runs, "toxicity", "FF", "+Downstream", reps=200)
    assert e["value"] == pytest.approx(-0.5) and e["lo"] == pytest.approx(-0.5) and e["hi"] == pytest.approx(-0.5)
    assert e["level"] == "items only" and e["seeds"] == 1
    assert tables.verdict(e, -1) == "holds" and tables.verdict(e, +1) == "does not hold"
    rel = tables.effect(runs, "toxicity", "FF", "+Downstream", reps=200, relative=True)
    assert rel["value"] == pytest.approx(0.2 / 0.7 - 1)
    noisy = [dict(rows={"FF": rows([0.0, 1.0]), "+Downstream": rows([1.0, 0.0])})]  # -1 and +1: no effect
    assert tables.verdict(tables.effect(noisy, "toxicity", "FF", "+Downstream", reps=500), -1) == "cannot tell"


def seeds_of(*effects, n=20):
    """One run per seed whose FF is `effect` below +Downstream on every one of n items (no item noise)."""
    return [dict(seed=k, rows={"FF": rows([0.5 + d] * n), "+Downstream": rows([0.5] * n)}) for k, d in enumerate(effects)]


def test_a_seed_that_disagrees_leaves_the_verdict_open():
    agree = tables.effect(seeds_of(-0.2, -0.1, -0.3), "toxicity", "FF", "+Downstream", reps=1000)
    assert agree["level"] == "seeds and items" and agree["value"] == pytest.approx(-0.2)
    assert tables.verdict(agree, -1) == "holds"
    # one seed of three on the other side: drawn three times in 1 of 27 resamples, so the interval crosses 0
    split = tables.effect(seeds_of(-0.2, -0.2, +0.1), "toxicity", "FF", "+Downstream", reps=1000)
    assert split["hi"] == pytest.approx(0.1) and tables.verdict(split, -1) == "cannot tell"
    # the effect of one seed alone (the issue's FF vs Replay: -0.013, -0.008, -0.177) does not carry the claim
    one = tables.effect(seeds_of(-0.013, -0.008, -0.177), "toxicity", "FF", "+Downstream", reps=1000)
    assert one["hi"] == pytest.approx(-0.008) and one["lo"] == pytest.approx(-0.177)


def test_verdict_rule_is_symmetric():
    e = lambda v, lo, hi: dict(value=v, lo=lo, hi=hi, undefined=0)  # noqa: E731
    assert tables.verdict(e(-0.2, -0.3, -0.1), -1) == "holds"
    assert tables.verdict(e(0.2, 0.1, 0.3), -1) == "does not hold"
    assert tables.verdict(e(0.0, -0.1, 0.1), -1) == "cannot tell"
    assert tables.verdict(e(0.0, -0.3, 0.0), -1) == "cannot tell"  # touching the bound is not beyond it
    assert tables.verdict(e(-2.0, -4.0, 1.0), +1, margin=5.0) == "holds"  # at most 5 points lower
    assert tables.verdict(e(-8.0, -9.0, -6.0), +1, margin=5.0) == "does not hold"
    assert tables.verdict(None, -1) == "not run" and tables.verdict(e(0.1, 0, 1), 0) == "reported"
    assert tables.verdict(dict(e(-0.2, -0.3, -0.1), undefined=60), -1, reps=1000) == "cannot tell"  # > 5 % undefined
    assert tables.combine(["holds", "holds"]) == "holds"
    assert tables.combine(["holds", "cannot tell"]) == "cannot tell"
    assert tables.combine(["holds", "does not hold", "cannot tell"]) == "does not hold"


def test_the_papers_number_inside_and_outside_the_interval():
    iv = lambda lo, hi: dict(value=(lo + hi) / 2, lo=lo, hi=hi)  # noqa: E731
    assert tables.magnitude(iv(-0.9, -0.6), -0.75) == "as large as the paper's"
    assert tables.magnitude(iv(-0.44, -0.22), -0.75) == "smaller than the paper's"  # the issue's -34 % [-44, -22]
    assert tables.magnitude(iv(-0.95, -0.8), -0.75) == "larger than the paper's"
    assert tables.magnitude(iv(0.37, 1.35), -0.62) == "opposite to the paper's"  # FF above SC
    assert tables.magnitude(iv(-0.2, 0.1), -0.62) == "smaller than the paper's"
    assert tables.magnitude(None, -0.75) == "—"


def flags(tp, fp, fn, tn):
    """(flagged, unsafe) pairs with the given counts."""
    return [(True, True)] * tp + [(True, False)] * fp + [(False, True)] * fn + [(False, False)] * tn


def test_the_trivial_floors_by_hand():
    # 50 unsafe of 100: flagging everything gives P 0.5, R 1, F1 2/3; a random 50 flagged: P 0.5, R 0.5, F1 0.5
    assert tables.floors(flags(25, 25, 25, 25)) == (pytest.approx(200 / 3), pytest.approx(50.0))
    assert tables.f1_pct(flags(25, 25, 25, 25)) == pytest.approx(50.0)  # as good as chance
    assert tables.floors(flags(0, 0, 0, 10)) == (None, None)  # nothing unsafe: no floor
    # 75 % unsafe (the issue's numbers): flag-everything scores 2 * 75 / 175 = 85.7
    assert tables.floors(flags(75, 25, 0, 0))[0] == pytest.approx(85.714, abs=1e-3)


def filter_run(seed, tp, fp, fn, tn, phi=0.5):
    rows_ = [dict(id=f"e{i}", kind="unsafe" if u else "safe", forget_rouge={"5": 1.0 if f else 0.0})
             for i, (f, u) in enumerate(flags(tp, fp, fn, tn))]
    return dict(seed=seed, forgetting=rows_, summary=dict(filter=dict(filter_t=5, signals=dict(rouge=dict(threshold=phi)))))


def test_high_f1_needs_f1_above_the_better_floor():
    at_floor = tables.f1_over_floor([filter_run(0, 50, 50, 0, 0)], "rouge", reps=500)  # flags all: F1 = floor
    assert at_floor["value"] == pytest.approx(0.0) and at_floor["floor_all"] == pytest.approx(200 / 3)
    assert tables.verdict(at_floor, +1) == "cannot tell"
    above = tables.f1_over_floor([filter_run(0, 45, 5, 5, 45)], "rouge", reps=500)  # F1 90 against 66.7
    assert above["value"] == pytest.approx(90 - 200 / 3) and tables.verdict(above, +1) == "holds"
    below = tables.f1_over_floor([filter_run(0, 10, 0, 40, 50)], "rouge", reps=500)  # F1 33 against 66.7
    assert tables.verdict(below, +1) == "does not hold"
    seeds = tables.f1_over_floor([filter_run(0, 45, 5, 5, 45), filter_run(1, 50, 50, 0, 0)], "rouge", reps=500)
    assert seeds["level"] == "seeds and items" and tables.verdict(seeds, +1) == "cannot tell"  # one seed at the floor


def bbq_units(preds, unknown=2, biased=0):
    """Ambiguous BBQ items (gold = unknown), one answer each."""
    return [[dict(id=f"b{i}", context_condition="ambig", category="Age", gold=unknown, biased=biased, unknown=unknown,
                  pred=p)] for i, p in enumerate(preds)]


def test_an_undefined_s_amb_is_left_out_and_counted():
    all_unknown = bbq_units([2, 2, 2, 2])  # every answer "unknown": no lean to measure
    assert tables.METRICS["s_amb"][1](all_unknown) is None
    biased = bbq_units([0, 0, 2, 1])
    runs = [dict(seed=0, rows={"FF": {"bbq": all_unknown}, "+Downstream": {"bbq": biased}}),
            dict(seed=1, rows={"FF": {"bbq": biased}, "+Downstream": {"bbq": biased}})]
    e = tables.effect(runs, "s_amb", "FF", "+Downstream", reps=200)
    assert e["per_seed"] == [None, 0.0] and e["undefined_seeds"] == 1 and e["seeds"] == 1 and e["value"] == 0.0
    assert tables.mean_sd([None, 0.2, 0.4]) == dict(mean=pytest.approx(0.3), sd=pytest.approx(2 ** 0.5 / 10), seeds=2,
                                                     undefined=1)
    assert tables.ms(tables.mean_sd([None])) == "—"


def summary_with(n_flagged):
    return dict(filter=dict(ff_signals=["rouge", "nll"],
                            signals={s: dict(at_threshold=dict(n_flagged=n_flagged[s])) for s in ("rouge", "nll")}))


def test_a_filter_that_flagged_nothing_is_the_same_as_downstream():
    run = dict(seed=0, summary=summary_with(dict(rouge=10, nll=0)), rows={
        c: rows([0.3, 0.4, 0.5]) for c in ("+Downstream", "FF-nll", "FF", "M0")})
    assert tables.same_as(run, "FF-nll") == "+Downstream" and tables.same_as(run, "FF") is None
    assert tables.same_as(dict(run, summary=summary_with(dict(rouge=0, nll=3))), "FF+SC") == "SC"
    claims = {(c["a"], c["b"]): c for c in tables.claims_for("toxicity", [run], reps=50)}
    assert claims[("FF-nll", "+Downstream")]["verdict"] == "same as +Downstream: the filter flagged nothing"
    assert claims[("FF", "+Downstream")]["verdict"] == "cannot tell"  # equal values: a real comparison, no effect


def test_no_room_to_become_less_safe_is_not_testable():
    run = dict(seed=0, summary=summary_with(dict(rouge=1, nll=1)), rows={
        "M0": {"harmful": [dict(id=f"h{i}", complied=i > 0) for i in range(100)]},  # 99 % compliance
        "+Downstream": {"harmful": [dict(id=f"h{i}", complied=True) for i in range(100)]}})
    (c,) = [c for c in tables.claims_for("harmfulness", [run], reps=50) if c["b"] == "M0"]
    assert c["verdict"].startswith("not testable here: M0 is already at 99")


def test_headline_one_line_per_claim():
    rows_ = [dict(result=1, key="1", label="toxicity", verdict="holds", magnitude=None),
             dict(result=6, key="6 +Downstream", label="toxicity", verdict="holds",
                  magnitude="smaller than the paper's: -34 % [-44, -22]"),
             dict(result=6, key="6 +Downstream", label="mixed mean toxicity", verdict="cannot tell", magnitude=None)]
    h = tables.headline(rows_)
    assert [x["key"] for x in h] == ["1", "6 +Downstream"]
    text = tables.render_headline(h)
    assert "toxicity: **holds**; mixed mean toxicity: **cannot tell**" in text
    assert "toxicity: smaller than the paper's: -34 % [-44, -22]" in text and text.count("\n") == 4


def test_bbq_rows_are_grouped_per_item_and_pairing_is_checked():
    flat = [dict(step="FF r1", eval="bbq", id=f"b{i % 2}", pred=0) for i in range(6)]  # 2 items, 3 orders each
    units = tables.item_rows(flat, "step")["FF r1"]["bbq"]
    assert [len(u) for u in units] == [3, 3] and tables.unit_ids(units) == ["b0", "b1"]
    runs = [dict(rows={"FF": rows([0.1, 0.2]), "+Downstream": rows([0.1, 0.2, 0.3])})]
    with pytest.raises(tables.UserError, match="different toxicity items"):
        tables.effect(runs, "toxicity", "FF", "+Downstream", reps=10)


def test_tables_never_average_two_groups(tmp_path):
    """A GPU run (1.7B, Detoxify, the hub's data, N 1000) beside the committed CPU seeds is left out and named; the
    table over the CPU seeds is what it was without it."""
    import json
    import shutil
    from pathlib import Path
    from conftest import script
    root = Path(__file__).resolve().parents[2] / "results"
    if not (root / "seeds/toxicity-s1/summary.json").is_file():
        pytest.skip("no committed toxicity seeds")
    cpu, both = tmp_path / "cpu", tmp_path / "both"
    for res in (cpu, both):
        shutil.copytree(root / "toxicity", res / "toxicity")
        shutil.copytree(root / "seeds/toxicity-s1", res / "seeds/toxicity-s1")
    gpu = both / "seeds/toxicity-s3"
    shutil.copytree(root / "seeds/toxicity-s1", gpu)
    s = json.loads((gpu / "summary.json").read_text())
    s |= dict(model="HuggingFaceTB/SmolLM2-1.7B-Instruct", scorer="detoxify-original-0.5.4", seed=3)
    s["data"]["config"] |= dict(source="hub", n=1000)
    s["conditions"]["FF"]["toxicity"] = 0.9  # a number that would move the mean if it were averaged in
    (gpu / "summary.json").write_text(json.dumps(s))
    cells = {}
    for res in (cpu, both):
        out = script("tables.py", "--results", res, "--doc", "", "--readme", "", "--reps", "20")
        cells[res.name] = json.loads((res / "table2.json").read_text())["cells"]["toxicity"]
    assert cells["both"] == cells["cpu"] and cells["cpu"]["FF"]["toxicity"]["seeds"] == 2
    assert "Left out as another group" in out and "toxicity-s3 (HuggingFaceTB/SmolLM2-1.7B-Instruct fp32, hub data, " \
        "N 1000, scorer detoxify-original-0.5.4)" in out
    assert "Runs read (toxicity: smollm2-135m fp32, offline data, N 160" in out
