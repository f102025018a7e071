"""experiments/precision.py: the seed spread and the within-spread rule against hand-computed cases, and the run on
the committed toxicity run against a copy of it marked bf16."""
import json
import shutil
from pathlib import Path

import pytest

import precision
from common import UserError


def test_compare_hand_cases():
    a = {"x": 1.0, "y": 10.0, "z": None}
    b = {"x": 1.3, "y": 14.0, "z": None}
    seeds = [a, {"x": 0.8, "y": 12.0, "z": None}, {"x": 1.1, "y": 11.0, "z": None}]
    rows = {r["cell"]: r for r in precision.compare(a, b, seeds)}  # the spread: over the seeds given
    # x: effect |1.3 - 1.0| = 0.3; seeds 1.0, 0.8, 1.1: largest pairwise difference 0.3 -> within (a tie counts)
    assert rows["x"]["effect"] == pytest.approx(0.3) and rows["x"]["spread"] == pytest.approx(0.3)
    assert rows["x"]["within"] is True
    # y: effect 4; seeds 10, 12, 11: spread 2 -> outside
    assert rows["y"]["effect"] == 4.0 and rows["y"]["spread"] == 2.0 and rows["y"]["within"] is False
    assert "z" not in rows  # a cell no run has is left out


def test_precision_compare_on_the_committed_run(tmp_path):
    from conftest import script
    root = Path(__file__).resolve().parents[2] / "results"
    if not (root / "seeds/toxicity-s1/summary.json").is_file():
        pytest.skip("no committed toxicity seeds")
    b = tmp_path / "toxicity-bf16"
    shutil.copytree(root / "toxicity", b)
    s = json.loads((b / "summary.json").read_text())
    s["precision"] = "autocast torch.bfloat16"
    s["conditions"]["FF"]["toxicity"] += 1.0  # far outside any seed spread
    (b / "summary.json").write_text(json.dumps(s))
    seeds = f"{root}/toxicity,{root}/seeds/toxicity-s1,{root}/seeds/toxicity-s2"
    args = ["--a", root / "toxicity", "--b", b, "--seeds", seeds,
            "--out", tmp_path / "out/compare", "--doc", "", "--reps", "20"]
    out = script("precision.py", *args)
    assert "| FF: toxicity |" in out and "**no**" in out
    rows = {r["cell"]: r for r in json.loads((tmp_path / "out/compare.json").read_text())["cells"]}
    assert rows["FF: toxicity"]["within"] is False and rows["filter nll: AUROC"]["effect"] == 0
    assert out.split("verdicts** change")[0].rsplit("**", 1)[-1].startswith("0 of ")  # same rows, same verdicts
    s["precision"] = "fp32"
    (b / "summary.json").write_text(json.dumps(s))
    with pytest.raises(UserError, match="both ran in fp32, AMD EPYC"):
        script("precision.py", *args)
