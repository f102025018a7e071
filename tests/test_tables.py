"""The statistics behind Tables 1-2 against hand-computed cases: the bootstrap interval, mean +- sd over seeds,
paired effects and the verdict rule."""
import pytest

import tables
from eval import bootstrap, mean


def test_bootstrap_interval_hand_cases():
    # two items 0 and 1: a resample's mean is 0 (p 1/4), 0.5 (p 1/2) or 1 (p 1/4), so the central 95 % is [0, 1]
    assert bootstrap([2], lambda idx: mean([0, 1][i] for i in idx[0]), reps=2000) == (0.0, 1.0)
    assert bootstrap([5], lambda idx: mean([3.0] * 5), reps=50) == (3.0, 3.0)  # no spread, no interval
    # two groups resampled apart, [0, 1] and [10]: the mean of the group means runs from (0 + 10) / 2 to (1 + 10) / 2
    groups = [[0, 1], [10]]
    stat = lambda idx: mean(mean(g[i] for i in ix) for g, ix in zip(groups, idx))  # noqa: E731
    assert bootstrap([2, 1], stat, reps=2000) == (5.0, 5.5)


def test_bootstrap_is_seeded():
    stat = lambda idx: mean([1, 5, 2, 8, 3][i] for i in idx[0])  # noqa: E731
    assert bootstrap([5], stat, seed=3) == bootstrap([5], stat, seed=3)


def seed_run(seed, tox_ff, tox_down):
    return dict(seed=seed, summary=dict(conditions={"+Downstream": dict(toxicity=tox_down, toxic_rate=50.0,
                                                                        degenerate=0.0, squad_f1=40.0),
                                                    "FF": dict(toxicity=tox_ff, toxic_rate=10.0, degenerate=0.0)}))


def test_mean_and_sd_over_seeds():
    t2 = tables.table2({"toxicity": [seed_run(0, 0.2, 0.5), seed_run(1, 0.4, 0.5), seed_run(2, 0.6, 0.5)]})
    ff = t2["toxicity"]["FF"]["toxicity"]
    assert ff["mean"] == pytest.approx(0.4) and ff["sd"] == pytest.approx(0.2) and ff["seeds"] == 3
    assert t2["toxicity"]["+Downstream"]["toxicity"] == dict(mean=0.5, sd=0.0, seeds=3)
    assert t2["toxicity"]["FF"]["SQuAD F1"] == dict(mean=None, sd=None, seeds=0)  # FF has no SQuAD here
    one = tables.table2({"toxicity": [seed_run(0, 0.2, 0.5)]})["toxicity"]["FF"]["toxicity"]
    assert one == dict(mean=0.2, sd=None, seeds=1)  # one seed: no spread to report


def rows(values):
    return {"toxicity": [dict(id=f"x{i}", toxicity=v) for i, v in enumerate(values)]}


def test_paired_effect_and_verdict():
    runs = [dict(rows={"FF": rows([0.1, 0.2, 0.3, 0.2]), "+Downstream": rows([0.6, 0.7, 0.8, 0.7])})]
    e = tables.effect(runs, "toxicity", "FF", "+Downstream", reps=200)
    assert e["value"] == pytest.approx(-0.5) and e["lo"] == pytest.approx(-0.5) and e["hi"] == pytest.approx(-0.5)
    assert tables.verdict(e, -1) == "holds" and tables.verdict(e, +1) == "does not hold"
    rel = tables.effect(runs, "toxicity", "FF", "+Downstream", reps=200, relative=True)
    assert rel["value"] == pytest.approx(0.2 / 0.7 - 1)
    noisy = [dict(rows={"FF": rows([0.0, 1.0]), "+Downstream": rows([1.0, 0.0])})]  # -1 and +1: no effect
    assert tables.verdict(tables.effect(noisy, "toxicity", "FF", "+Downstream", reps=500), -1) == "cannot tell"


def test_verdict_rules():
    e = lambda v, lo, hi, *seeds: dict(value=v, lo=lo, hi=hi, per_seed=list(seeds or [v]))  # noqa: E731
    assert tables.verdict(e(-0.2, -0.3, -0.1, -0.2, -0.1, -0.3), -1) == "holds"
    assert tables.verdict(e(-0.2, -0.3, -0.1, -0.2, 0.05), -1) == "cannot tell"  # a seed disagrees
    assert tables.verdict(e(-2.0, -4.0, 1.0), +1, margin=5.0) == "holds"  # at most 5 points lower
    assert tables.verdict(e(-8.0, -9.0, -6.0), +1, margin=5.0) == "does not hold"
    assert tables.verdict(None, -1) == "not run" and tables.verdict(e(0.1, 0, 1), 0) == "reported"
