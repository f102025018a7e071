"""Your own data in, forgetting rows and the filtered set out; resumable stages; byte-identical reruns."""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from common import UserError
from conftest import script

ROOT = Path(__file__).resolve().parents[1]
TINY = ["--epochs", "1", "--lr", "1e-3", "--safety-lr", "1e-3", "--max-new-tokens-text", "6",
        "--max-new-tokens-qa", "6"]


def byo_args(tiny_dir, out, *extra, noisy=ROOT / "examples/noisy.jsonl"):
    return ["--noisy", str(noisy), "--safe", str(ROOT / "examples/safe.jsonl"), "--run", str(out),
            "--model", str(tiny_dir), "--no-control", "--no-retrain", "--safety-steps", "1", "2", *TINY, *extra]


def byo(tiny_dir, out, *extra, noisy=ROOT / "examples/noisy.jsonl"):
    """ff.py on your own data (the README's command, on the tiny model); returns what it printed."""
    return script("ff.py", *byo_args(tiny_dir, out, *extra, noisy=noisy))


def test_own_data_gives_rows_and_the_kept_lines_verbatim(tiny_dir, tmp_path):
    byo(tiny_dir, tmp_path)
    lines = (ROOT / "examples/noisy.jsonl").read_text().splitlines(keepends=True)
    rows = [json.loads(x) for x in (tmp_path / "forgetting.jsonl").read_text().splitlines()]
    assert [r["id"] for r in rows] == [json.loads(x)["id"] for x in lines]
    kept = (tmp_path / "filtered.jsonl").read_text().splitlines(keepends=True)
    assert kept == [x for x, r in zip(lines, rows) if not r["flagged"]["rank"]]  # unchanged, in input order
    f = json.loads((tmp_path / "filter.json").read_text())
    assert f["config"]["signals"] == ["rank", "nll"]  # own data: the held-out study's choice first
    assert set(f["thresholds"]) == {"rouge", "nll", "rank"} and f["n_flagged"]["rank"] == len(lines) - len(kept)
    for sig in ("rank", "nll"):  # the label-free diagnostic of each filter, in plain words
        d = f["diagnostic"][sig]
        assert d["flagged"] == f["n_flagged"][sig] and d["verdict"].startswith(("the split looks real", "doubtful: "))
    assert not (tmp_path / "ckpt" / "ff_rouge").exists()  # --no-retrain
    printed = script("eval.py", "--run", tmp_path, "--filter-only")  # labels: the filter's metrics, no model
    m = json.loads((tmp_path / "filter_metrics.json").read_text())
    a = m["signals"]["rank"]["at_threshold"]
    assert a["n_flagged"] == f["n_flagged"]["rank"] and f"F1 {a['f1']}" in printed
    assert set(m["signals"]["nll"]["by_t"]) == {"1", "2"} and "control" not in m["signals"]["nll"]["by_t"]["2"]


def test_without_labels_no_filter_metrics(tiny_dir, tmp_path):
    unlabelled = tmp_path / "noisy.jsonl"
    unlabelled.write_text("".join(json.dumps({k: v for k, v in json.loads(x).items() if k != "label"}) + "\n"
                                  for x in (ROOT / "examples/noisy.jsonl").read_text().splitlines()))
    byo(tiny_dir, tmp_path / "run", noisy=str(unlabelled))
    f = json.loads((tmp_path / "run" / "filter.json").read_text())
    assert set(f["n_flagged"]) == {"rank", "nll"}
    with pytest.raises(UserError, match="carry no labels"):
        script("eval.py", "--run", tmp_path / "run", "--filter-only")
    assert not (tmp_path / "run" / "filter_metrics.json").exists()


def outputs(run):
    return {name: (run / name).read_bytes() for name in ("forgetting.jsonl", "filtered_rank.jsonl",
                                                         "filtered_nll.jsonl")}


def test_killed_run_resumes_to_the_same_outputs_and_reruns_are_identical(tiny_dir, tmp_path):
    args = ["--safety-steps", "2", "40", "--phi", "0.05", "--phi-nll", "0.2"]
    byo(tiny_dir, tmp_path / "a", *args)
    byo(tiny_dir, tmp_path / "b", *args)
    assert outputs(tmp_path / "a") == outputs(tmp_path / "b")  # determinism: byte-identical rows on CPU

    run = tmp_path / "c"
    run.mkdir()
    with open(run / "ff.log", "w") as log:  # a file, not a pipe: a child nobody reads from never blocks
        p = subprocess.Popen([sys.executable, "ff.py", *byo_args(tiny_dir, run, *args)], cwd=ROOT, stdout=log,
                             stderr=subprocess.STDOUT)
        while not (run / "stages" / "m1.json").exists():  # M1 is done: kill inside the safety finetuning
            assert p.poll() is None, "finished before it could be killed"
            time.sleep(0.01)
        os.kill(p.pid, signal.SIGKILL)
        p.wait()
    assert p.returncode == -signal.SIGKILL and not (run / "stages" / "m2.json").exists()
    for f in run.rglob("*.json"):
        json.loads(f.read_text())  # nothing half-written
    out = byo(tiny_dir, run, *args)
    assert "M1: learn D_noisy: done earlier with the same configuration, skipped" in out
    assert outputs(run) == outputs(tmp_path / "a")
    assert not list(run.rglob("*.tmp"))


def test_changed_option_redoes_only_the_stages_that_depend_on_it(tiny_dir, tmp_path):
    byo(tiny_dir, tmp_path, "--phi", "0.05")
    m1 = (tmp_path / "stages" / "m1.json").stat().st_mtime_ns
    m2 = (tmp_path / "stages" / "m2.json").stat().st_mtime_ns
    byo(tiny_dir, tmp_path, "--phi", "0.2")  # the threshold only: M1 and M2 are reused
    assert (tmp_path / "stages" / "m1.json").stat().st_mtime_ns == m1
    assert (tmp_path / "stages" / "m2.json").stat().st_mtime_ns == m2
    byo(tiny_dir, tmp_path, "--safety-lr", "5e-4")  # the safety finetuning changed: M2 is redone, M1 is not
    assert (tmp_path / "stages" / "m1.json").stat().st_mtime_ns == m1
    assert (tmp_path / "stages" / "m2.json").stat().st_mtime_ns != m2
