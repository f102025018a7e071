"""The whole chain (data.py -> ff.py -> eval.py -> report.py) on the tiny model, and the command-line errors."""
import importlib
import json
import sys
from pathlib import Path

import pytest

from conftest import script

ROOT = Path(__file__).resolve().parents[1]


def run_chain(concept, tiny_dir, out):
    script("data.py", "--concept", concept, "--n", "24", "--n-safety", "16", "--n-eval", "6", "--out", out)
    script("ff.py", "--run", out, "--model", tiny_dir, "--epochs", "1", "--safety-steps", "1", "2", "--lr", "1e-3",
           "--safety-lr", "1e-3", "--max-new-tokens-text", "6", "--max-new-tokens-qa", "6")
    script("eval.py", "--run", out, "--max-new-tokens", "6")
    script("report.py", "--run", out, "--results", out / "results", "--name", concept)
    return out


@pytest.fixture(scope="module")
def chain(tiny_dir, tmp_path_factory):
    return run_chain("toxicity", tiny_dir, tmp_path_factory.mktemp("run"))


def test_chain_writes_every_output(chain):
    rows = [json.loads(line) for line in (chain / "forgetting.jsonl").read_text().splitlines()]
    assert len(rows) == 24  # int(24 * 0.5) = 12 unsafe + 3 * int(24 * 0.5 / 3) = 12 others
    r = rows[0]
    assert set(r) >= {"id", "source", "kind", "prompt", "target", "m0", "m1", "safety", "forget_rouge",
                      "forget_nll", "control", "control_forget_rouge", "control_forget_nll", "flagged"}
    assert set(r["safety"]) == {"1", "2"} and set(r["m1"]) == {"gen", "rouge", "nll"}
    for sig in ("rouge", "nll"):
        kept = (chain / f"filtered_{sig}.jsonl").read_text().splitlines()
        assert len(kept) == sum(not r["flagged"][sig] for r in rows)
    assert (chain / "filtered.jsonl").read_text() == (chain / "filtered_rouge.jsonl").read_text()
    for name in ("m1", "m2", "ff_rouge", "ff_nll"):
        assert (chain / "ckpt" / name / "config.json").is_file()
    s = json.loads((chain / "results" / "toxicity" / "summary.json").read_text())
    assert json.loads((chain / "results" / "summary.json").read_text()) == {"toxicity": s}
    assert list(s["conditions"]) == ["M0", "+Downstream", "+SafetyFT", "Replay", "FF", "FF-nll", "Random filter",
                                     "Oracle filter", "SC", "FF+SC"]
    assert "squad_f1" not in s["conditions"]["SC"] and "toxicity" in s["conditions"]["FF+SC"]
    assert s["scorer"].startswith("alt-profanity-check") and s["seed"] == 0 and s["wall_s"]["total"] > 0
    for sig in ("rouge", "nll"):
        assert set(s["filter"]["signals"][sig]["by_t"]["2"]) >= {"auroc", "ap", "mean_by_kind", "control"}
    assert {d["kind"] for d in s["filter"]["by_source"]} == {"unsafe", "safe", "task"}
    assert sum(d["n"] for d in s["filter"]["by_source"]) == 24
    assert set(s["filter"]["auto_phi"]["nll"]) >= {"threshold", "precision", "recall", "f1", "flagged"}
    assert (chain / "results" / "toxicity" / "forgetting.png").stat().st_size > 1000
    evals = [json.loads(x) for x in (chain / "results" / "toxicity" / "eval_rows.jsonl").read_text().splitlines()]
    assert len(evals) == 8 * (6 + 6) + 2 * 6 and {"condition", "id", "prompt", "generation"} <= set(evals[0])
    assert not list(chain.rglob("*.tmp"))  # no temporary file survives
    again = script("eval.py", "--run", chain, "--max-new-tokens", "6")  # all evaluated already: skipped, same numbers
    assert again.count("skipped") == 10
    script("report.py", "--run", chain, "--results", chain / "results2", "--name", "toxicity")
    s2 = json.loads((chain / "results2" / "toxicity" / "summary.json").read_text())
    assert s2["conditions"] == s["conditions"] and s2["wall_s"]["eval"] == s["wall_s"]["eval"]


def test_compared_conditions_train_on_what_they_claim(chain):
    """Random drops exactly as many examples as FF's filter, the oracle exactly the unsafe ones, and Replay adds safe
    examples from D_safe, disjoint from every evaluation set."""
    import data
    read = lambda name: [json.loads(x) for x in (chain / name).read_text().splitlines()]  # noqa: E731
    noisy, safety, rows = read("noisy.jsonl"), read("safety.jsonl"), read("forgetting.jsonl")
    ff_kept = read("filtered.jsonl")
    rand, oracle, replay = read("train_random.jsonl"), read("train_oracle.jsonl"), read("train_replay.jsonl")
    assert len(rand) == len(ff_kept) and {e["id"] for e in rand} <= {e["id"] for e in noisy}
    assert [e["id"] for e in oracle] == [e["id"] for e in noisy if e["kind"] != "unsafe"]
    extra = replay[len(noisy):]
    assert replay[:len(noisy)] == noisy and len(extra) == 16  # min(16 safe examples, ceil(max t 2 * batch 8 / 1 epoch))
    assert {e["id"] for e in extra} <= {e["id"] for e in safety}
    evals = {p.stem: read(p.name) for p in chain.glob("eval_*.jsonl") if p.stem != "eval_rows"}
    data.check_disjoint(dict(noisy=noisy, safety=extra, **evals))  # raises if any evaluation item leaks
    assert len(rows) == len(noisy)


def test_report_table_is_generated_from_summary(chain):
    import report
    s = json.loads((chain / "results" / "toxicity" / "summary.json").read_text())
    assert (chain / "results" / "toxicity" / "table.md").read_text() == report.render_tables(s)


def test_bias_chain_scores_bbq(tiny_dir, tmp_path):
    out = run_chain("bias", tiny_dir, tmp_path)
    s = json.loads((out / "results" / "bias" / "summary.json").read_text())
    m = s["conditions"]["FF"]["bias"]
    assert set(m) >= {"acc_amb", "acc_dis", "s_amb", "s_dis_bbq", "s_dis_code", "unparsable", "acc_by_category"}
    assert m["n_items"] == 6 and m["orders"] == 3 and m["n"] == 18  # each item asked in its 3 cyclic orders
    assert {"position_share", "position_mode", "constant"} <= set(m)
    assert "toxicity" not in s["conditions"]["FF"] and s["scorer"] is None
    rows = [json.loads(line) for line in (out / "results" / "bias" / "eval_rows.jsonl").read_text().splitlines()]
    bbq = [r for r in rows if r["eval"] == "bbq"]
    assert len(bbq) == 10 * 6 * 3  # 8 conditions and SC, FF+SC; 3 orders each
    ff = [r for r in bbq if r["condition"] == "FF"]
    for r in ff:  # the answer maps back to the original option through the order it was asked in
        assert r["pred"] == "unparsable" if r["position"] is None else r["pred"] == r["order"][r["position"]]
    assert sorted(tuple(r["order"]) for r in ff) == sorted([(0, 1, 2), (1, 2, 0), (2, 0, 1)] * 6)
    sc = [r for r in bbq if r["condition"] == "SC"]
    assert all(r["prompt"].endswith(ev_cue("bbq")) for r in sc)
    assert set(s["filter"]["bbq_signals"]["2"]) == {"rouge, whole line (the paper's)", "rouge, answer part only",
                                                     "chosen option", "nll, whole target"}
    assert set(bbq[0]) >= {"id", "category", "context_condition", "polarity", "generation", "pred", "gold", "stereotyped"}


def ev_cue(name):
    import eval as ev
    return ev.SC_CUES[name]


def test_harmfulness_chain_reports_compliance(tiny_dir, tmp_path):
    out = run_chain("harmfulness", tiny_dir, tmp_path)
    s = json.loads((out / "results" / "harmfulness" / "summary.json").read_text())
    assert list(s["conditions"]) == ["M0", "+Downstream", "+SafetyFT", "Replay", "FF", "FF-nll", "Random filter",
                                     "Oracle filter"]  # no cue for harmfulness
    h = s["conditions"]["FF"]["harm"]
    assert h["n"] == 6 and 0 <= h["compliance"] <= 100 and "keyword" in h["rule"]
    rows = [json.loads(line) for line in (out / "results" / "harmfulness" / "eval_rows.jsonl").read_text().splitlines()]
    harm = [r for r in rows if r["eval"] == "harmful"]
    assert len(harm) == 8 * 6 and all(r["complied"] == (not r["refusal"] and not r["degenerate"]) for r in harm)


GOOD = '{"id": "x", "kind": "safe", "format": "qa", "prompt": "a", "target": "b"}\n'


@pytest.mark.parametrize("args, needle, files", [
    (["data.py", "--r", "1.5"], "--r 1.5: must be below 1", {}),
    (["data.py", "--concept", "sarcasm"], "--concept sarcasm: choose one of toxicity, bias, harmfulness, mixed", {}),
    (["data.py", "--toxic-min", "0.999", "--out", "{tmp}/d"], "too few for even one", {}),
    (["ff.py", "--run", "/nonexistent/run"], "file not found", {}),
    (["ff.py", "--phi", "abc"], "not a number", {}),
    (["ff.py", "--model", "./no/such/model"], "no such folder", {}),
    (["ff.py", "--model", "no-such-org/no-such-model"], "cannot load it", {}),  # a hub id, offline
    (["ff.py", "--signals", "vibes"], "--signals vibes: choose one of auto, rouge, nll", {}),
    (["ff.py", "--signals", "nll", "nll"], "choose rouge and/or nll, each once", {}),
    (["ff.py", "--noisy", "{tmp}/n.jsonl"], "no examples", {"n.jsonl": "\n"}),
    (["ff.py", "--safe", "{tmp}/s.jsonl"], "no examples", {"s.jsonl": ""}),
    (["ff.py", "--noisy", "{tmp}/n.jsonl"], "n.jsonl:2: malformed JSON", {"n.jsonl": GOOD + "{oops\n"}),
    (["ff.py", "--noisy", "{tmp}/n.jsonl"], "missing field 'target'", {"n.jsonl": '{"prompt": "a"}\n'}),
    (["ff.py", "--noisy", "{tmp}/n.jsonl"], "unknown label 'toxic'",
     {"n.jsonl": '{"prompt": "a", "target": "b", "label": "toxic"}\n'}),
    (["ff.py", "--run", "/proc/ff-cannot-write", "--noisy", "{tmp}/noisy.jsonl", "--safe", "{tmp}/safety.jsonl"],
     "cannot write there", {}),
    (["ff.py", "--epochs", "0"], "--epochs 0: must be at least 1", {}),
    (["ff.py", "--model", "gpt2"], "cannot load it", {}),  # a hub id without an organisation, offline
    (["ff.py", "--noisy", "{tmp}/n.jsonl"], "n.jsonl:2: not UTF-8 (byte 89: 0xe9)",
     {"n.jsonl": GOOD.encode() + b'{"prompt": "caf\xe9", "target": "b"}\n'}),
    (["ff.py", "--noisy", "{tmp}/n.jsonl"], "n.jsonl:1: empty target", {"n.jsonl": '{"prompt": "a", "target": " "}\n'}),
    (["ff.py", "--noisy", "{tmp}/n.jsonl", "--model", "{tiny}", "--max-len", "12"],
     "n.jsonl:2: the prompt is 14 tokens, so --max-len 12 leaves no target token",
     {"n.jsonl": GOOD + '{"id": "y", "kind": "safe", "prompt": "one two three four five", "target": "b"}\n'}),
    (["eval.py", "--run", "/nonexistent/run"], "file not found", {}),
    (["eval.py", "--run", "{tmp}", "--filter-only"], "forgetting.jsonl: file not found", {}),
    (["report.py", "--run", "/nonexistent/run"], "data.json: file not found", {}),
    (["report.py", "--rebuild", "--results", "{tmp}/none"], "no {tmp}/none/<concept>/summary.json", {}),
    (["eval.py", "--run", "{tmp}"], "also appears in the training data",
     {"eval_squad.jsonl": '{"id": "x", "prompt": "a", "answers": ["b"]}\n'}),
    (["ff.py", "--precision", "fp8"], "--precision fp8: choose one of auto, fp32, bf16, fp16", {}),
    (["data.py", "--source", "web"], "--source web: choose one of offline, hub", {}),
    (["ablate.py", "--run", "{tmp}", "--domains", "web"], "--domains web: choose one of task, other", {}),
    (["ablate.py", "--run", "{tmp}"], "ckpt/m1: not found", {}),
    (["rounds.py", "--rounds", "0"], "--rounds 0: must be at least 1", {}),
    (["plots.py", "--run", "/nonexistent/run"], "filter.json: file not found", {}),
])
def test_bad_input_one_line_exit_2(args, needle, files, tmp_path, tiny_dir, monkeypatch, capsys):
    """Each bad input: exit 2, one line naming the problem and the fix, no traceback, nothing written is touched.
    In-process, through the scripts' own main_guard (conftest sets HF_HUB_OFFLINE before any import)."""
    (tmp_path / "noisy.jsonl").write_text(GOOD)
    (tmp_path / "safety.jsonl").write_text(GOOD)
    (tmp_path / "filter.json").write_text('{"an earlier": "result"}\n')
    for name, text in files.items():
        (tmp_path / name).write_bytes(text if isinstance(text, bytes) else text.encode())
    args = [a.replace("{tmp}", str(tmp_path)).replace("{tiny}", str(tiny_dir)) for a in args]
    needle = needle.replace("{tmp}", str(tmp_path))
    if args[0] == "ff.py" and "--run" not in args:
        args += ["--run", str(tmp_path)]
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    mod = importlib.import_module(args[0].removesuffix(".py"))
    monkeypatch.setattr(sys, "argv", args)
    with pytest.raises(SystemExit) as e:
        mod.main_guard(mod.main)
    code, stderr = e.value.code, capsys.readouterr().err
    assert code == 2, stderr
    assert needle in stderr and "Traceback" not in stderr
    assert len([line for line in stderr.splitlines() if line.startswith(("error", "usage", "ff.py", "data.py", "eval.py", "report.py"))]) <= 2
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before  # nothing written, nothing damaged


def test_no_remote_code_and_no_unpickling():
    src = "".join(p.read_text() for p in [*ROOT.glob("*.py"), *ROOT.glob("experiments/*.py"), *ROOT.glob("measure/*.py")])
    assert "trust_remote_code=True" not in src and "pickle" not in src and "torch.load(" not in src


def test_filter_only_ratio_run_and_the_tables(chain, tiny_dir):
    """A Table 1 run (another unsafe ratio: M1, M2 and the filter, no FF, no evaluation) reports, and tables.py
    draws Tables 1 and 2 and the claims from the results folder alone."""
    out = chain / "r25"
    script("data.py", "--concept", "toxicity", "--n", "24", "--n-safety", "16", "--n-eval", "6", "--r", "0.25",
           "--out", out)
    script("ff.py", "--run", out, "--model", tiny_dir, "--epochs", "1", "--safety-steps", "1", "2", "--lr", "1e-3",
           "--safety-lr", "1e-3", "--max-new-tokens-text", "6", "--max-new-tokens-qa", "6", "--no-retrain")
    script("eval.py", "--run", out, "--filter-only")
    script("report.py", "--run", out, "--results", chain / "results", "--name", "ratios/toxicity-r25")
    s = json.loads((chain / "results" / "ratios" / "toxicity-r25" / "summary.json").read_text())
    assert s["conditions"] == {} and s["data"]["noisy_kinds"]["unsafe"] == 6 and s["name"] == "ratios/toxicity-r25"
    script("tables.py", "--results", chain / "results", "--readme", "", "--doc", "", "--reps", "50")
    t1 = json.loads((chain / "results" / "table1.json").read_text())
    assert {(r["unsafe_pct"], r["signal"]) for r in t1} == {(25, "rouge"), (25, "nll"), (50, "rouge"), (50, "nll")}
    t2 = json.loads((chain / "results" / "table2.json").read_text())
    assert set(t2["cells"]["toxicity"]) >= {"Replay", "Random filter", "Oracle filter", "FF", "SC"}
    assert all(c["verdict"] in ("holds", "does not hold", "cannot tell", "reported") or
               c["verdict"].startswith(("same as ", "not testable here: ")) for c in t2["claims"]["toxicity"])
    assert {h["key"] for h in t2["headline"]} >= {"1", "2", "3", "5", "6 +Downstream"}
    assert (chain / "results" / "headline.md").read_text().startswith("| the paper's claim |")
    assert all("f1_over_floor" in r and r["high_f1"] for r in t1)
    assert [r["result"] for r in t2["paper_claims"]].count(7) == 1
    t1 = (chain / "results" / "table1.md").read_text()
    assert t1.startswith("Runs read (toxicity: ") and "): toxicity (seed 0, commit " in t1  # the group, then the runs
