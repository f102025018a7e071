"""The GPU check's command on CPU with the tiny architecture: the whole chain runs and its measurements are written."""
import json

from conftest import script


def test_smoke_runs_the_chain_and_measures_it(tiny_dir, tmp_path):
    out = tmp_path / "smoke.json"
    script("smoke.py", "--arch", "tiny", "--device", "cpu", "--n", "24", "--steps", "1", "2", "--max-new-tokens", "6",
           "--tokenizer", tiny_dir, "--out", tmp_path / "run", "--json", out)
    s = json.loads(out.read_text())
    assert s["arch"] == "tiny" and s["device"] == "cpu" and s["params"] > 0
    assert set(s["train"]["by_stage"]) == {"m1", "m2", "ff_rouge", "ff_nll"}  # M1, M2, both FF models
    assert s["train"]["tokens"] == sum(t["tokens"] for t in s["train"]["by_stage"].values()) > 0
    assert s["train"]["tokens_per_s"] > 0 and 0 < s["mfu"] < 1 and s["scoring"]["examples_per_s"] > 0
    assert set(s["eval_s"]) == {"M0", "+Downstream", "+SafetyFT", "FF", "FF-nll"}  # every condition evaluated
    assert s["peak_memory_gib"]["ff"] > 0 and s["peak_memory_gib"]["gpu_allocated"] is None
    assert (tmp_path / "run" / "forgetting.jsonl").is_file() and (tmp_path / "run" / "eval.json").is_file()
