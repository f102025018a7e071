"""The GPU check's command on CPU with the tiny architecture (the whole chain runs and its measurements are written),
and the projected cost on one GPU."""
import json
from pathlib import Path

import pytest

from conftest import script

ROOT = Path(__file__).resolve().parents[2]


def test_smoke_runs_the_chain_and_measures_it(tiny_dir, tmp_path):
    out = tmp_path / "smoke.json"
    script("smoke.py", "--arch", "tiny", "--device", "cpu", "--n", "24", "--steps", "1", "2", "--max-new-tokens", "6",
           "--tokenizer", tiny_dir, "--out", tmp_path / "run", "--json", out)
    s = json.loads(out.read_text())
    assert s["arch"] == "tiny" and s["device"] == "cpu" and s["params"] > 0
    assert set(s["train"]["by_stage"]) == {"m1", "m2", "ff_rouge", "ff_nll"}  # M1, M2, both FF models
    by = s["train"]["by_stage"].values()  # each training's first step (its warm-up) is left out of the rate
    assert s["train"]["tokens"] == sum(t["tokens"] - t["warmup"]["tokens"] for t in by) > 0
    assert all(0 < t["warmup"]["tokens"] < t["tokens"] for t in by)
    assert s["train"]["tokens_per_s"] > 0 and 0 < s["mfu"] < 1 and s["scoring"]["examples_per_s"] > 0
    assert set(s["eval_s"]) == {"M0", "+Downstream", "+SafetyFT", "FF", "FF-nll"}  # every condition evaluated
    assert s["peak_memory_gib"]["ff"] > 0 and s["peak_memory_gib"]["gpu_allocated"] is None
    assert (tmp_path / "run" / "forgetting.jsonl").is_file() and (tmp_path / "run" / "eval.json").is_file()


def test_cost_decode_floor_hand_case():
    import cost
    m = dict(params=1e9, layers=1, hidden=1, kv=1, vocab=1)
    cfg = cost.Config(gen_batch=2, bw_eff=1.0)
    # 4 prompts in batches of 2, 10 tokens each: 20 steps; each reads 2e9 bytes of bf16 weights and a KV cache of
    # 2 sequences x (0 + 10 / 2) positions x 1 layer x (K, V) x width 1 x 2 bytes = 40 bytes
    assert cost.decode_s(m, cfg, prompts=4, prompt_len=0, cap=10) == pytest.approx(20 * (2e9 + 40) / 3.35e12)
