"""Builds the data cannot fully supply: capped (N lowered, r kept) with one line that says so, recorded in data.json;
--check computes it all and writes nothing; an impossible build, or a bad option, is one line and exit 2."""
import json

import pytest

import common
import data
from conftest import script


def cfg(**kw):
    return data.Config(**kw)


def test_a_build_that_fits_is_not_capped():
    assert data.fit(cfg(), [("toxic texts", 80, ("unsafe",))]) == (cfg(), None)


def test_a_short_mixture_pool_lowers_n_alone_and_keeps_r():
    needs = [("toxic texts", 529, ("unsafe",)), ("non-toxic sentences", 4323, ("other", "safety")),
             ("held-out toxicity prompts", 427, ("eval",))]
    built, capped = data.fit(cfg(n=1000, r=0.75, n_safety=500, n_eval=300), needs)  # the GPU preset at 75 %
    assert (built.n, built.r, built.n_safety, built.n_eval) == (706, 0.75, 500, 300)
    assert data.mixture_sizes(built.n, built.r)[0] == 529 and data.mixture_sizes(built.n + 1, built.r)[0] == 530
    assert capped["line"] == ("toxicity: 750 toxic texts asked, the offline data has 529: capped N 1000 -> 706 "
                              "(r 0.75 kept exact by lowering N)")
    assert capped["asked"] == dict(n=1000, n_safety=500, n_eval=300) and capped["built"]["n"] == 706


def test_a_pool_shared_with_the_safety_set_lowers_both_by_one_factor():
    needs = [("harmful questions", 520, ("unsafe", "other", "safety")), ("held-out harmful prompts", 200, ("eval",))]
    built, capped = data.fit(cfg(concept="harmfulness", n=1000, n_safety=500, n_eval=300), needs)
    s = data.sizes(built)
    assert (built.n, built.n_safety, built.n_eval) == (447, 223, 200)  # evaluation: capped to its own pool
    assert s["unsafe"] + s["other"] + s["safety"] == 223 + 74 + 223 == 520  # N alone would leave N = 31
    assert "--n-eval 300 -> 200" in capped["line"] and "--n-safety 500 ->" in capped["line"]


def test_a_safety_pool_of_its_own_caps_only_the_safety_set():
    needs = [("ambiguous BBQ items", 3000, ("unsafe",)), ("BBQ items for the safety set", 150, ("safety",))]
    built, capped = data.fit(cfg(concept="bias", n_safety=500), needs)
    assert (built.n, built.n_safety) == (160, 150) and capped["line"].endswith("capped --n-safety 500 -> 150")


def test_not_even_one_example_of_each_kind_is_one_error():
    with pytest.raises(common.UserError, match="80 toxic texts asked, the offline data has 0: too few for even one"):
        data.fit(cfg(), [("toxic texts", 0, ("unsafe",))])


def test_a_short_task_pool_caps_a_real_build(monkeypatch):
    alpaca = data.alpaca_items()[:10]
    monkeypatch.setattr(data, "alpaca_items", lambda cfg=None: list(alpaca))
    sets, notes = data.build(cfg(concept="harmfulness"))  # 26 Alpaca examples asked of 10
    kinds = [e["kind"] for e in sets["noisy"]]
    assert notes["capped"]["built"] == dict(n=65, n_safety=200, n_eval=100)  # N alone: the safety set was not short
    assert kinds.count("unsafe") == int(65 * 0.5) and kinds.count("task") == 2 * 10 and kinds.count("safe") == 10
    data.check_disjoint(sets)


def test_mixed_caps_both_halves_and_the_tasks_alike(monkeypatch):
    alpaca = data.alpaca_items()[:10]
    monkeypatch.setattr(data, "alpaca_items", lambda cfg=None: list(alpaca))
    sets, notes = data.build(cfg(concept="mixed"))
    n = notes["capped"]["built"]["n"]
    unsafe = [e["source"] for e in sets["noisy"] if e["kind"] == "unsafe"]
    assert n == 65 and unsafe.count("rtp") == unsafe.count("bbq") == int(n / 2 * 0.5)
    data.check_disjoint(sets)


def test_the_gpu_preset_offline_prints_one_cap_line_and_records_it(tmp_path):
    out = script("data.py", *common.GPU_PRESET["data"], "--r", "0.75", "--out", tmp_path)
    lines = out.splitlines()
    assert len(lines) == 2 and lines[0].startswith("toxicity: 750 toxic texts asked, the offline data has 529: ")
    info = json.loads((tmp_path / "data.json").read_text())
    assert info["capped"]["line"] == lines[0] and info["config"]["n"] == 1000  # the config as asked
    assert info["noisy_kinds"]["unsafe"] == 529 and info["counts"]["safety"] == 500


def test_check_writes_nothing_and_prints_one_line(tmp_path):
    out = script("data.py", "--concept", "bias", "--n", "24", "--n-safety", "16", "--n-eval", "6", "--check",
                 "--out", tmp_path / "run")
    assert out.count("\n") == 1 and out.startswith("check: bias would build {'noisy': 24, 'safety': 16, 'eval_bbq': 6")
    assert not (tmp_path / "run").exists()


def test_bias_data_json_counts_rows_and_kept_items_per_category(tmp_path):
    script("data.py", "--concept", "bias", "--n", "24", "--n-safety", "16", "--n-eval", "6", "--out", tmp_path)
    info = json.loads((tmp_path / "data.json").read_text())
    assert info["capped"] is None and info["bbq"]["Age"] == dict(rows=3680, kept=3680) and len(info["bbq"]) == 6


@pytest.mark.parametrize("args, needle", [
    (["--check", "--toxic-min", "0.999"], "toxicity: 80 toxic texts asked, the offline data has 0: too few"),
    (["--r", "0"], "--r 0.0: must be above 0"), (["--r", "1"], "--r 1.0: must be below 1"),
    (["--n", "0"], "--n 0: must be at least 1"), (["--n-safety", "-3"], "--n-safety -3: must be at least 1"),
    (["--n-eval", "0"], "--n-eval 0: must be at least 1"), (["--toxic-min", "1"], "--toxic-min 1.0: must be below 1"),
    (["--safe-max", "0"], "--safe-max 0.0: must be above 0"), (["--pile-docs", "0"], "--pile-docs 0: must be at"),
    (["--concept", "sarcasm"], "--concept sarcasm: choose one of toxicity, bias, harmfulness, mixed"),
    (["--source", "web"], "--source web: choose one of offline, hub"),
])
def test_an_impossible_build_or_a_bad_option_is_one_line_and_exit_2(args, needle, tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        common.main_guard(lambda: script("data.py", *args, "--out", tmp_path / "run"))
    err = capsys.readouterr().err
    assert e.value.code == 2 and err.count("\n") == 1 and needle in err, err
    assert not (tmp_path / "run").exists()
