"""The experiments of the paper's figures on the tiny model: the ablations, the interleaved rounds, the size study,
and every figure drawn from a small hand-made output folder without a model."""
import json
import random

import pytest

import plots
import ablate
import figures
import rounds
import tables
from conftest import script
from metrics import at_threshold

TINY = ("--epochs", "1", "--lr", "1e-3", "--safety-lr", "1e-3", "--max-new-tokens-text", "6", "--max-new-tokens-qa", "6")


def small_run(out, model, steps=("2", "3"), *extra):
    script("data.py", "--concept", "toxicity", "--n", "24", "--n-safety", "16", "--n-eval", "6", "--out", out)
    script("ff.py", "--run", out, "--model", model, "--safety-steps", *steps, "--phi", "0.1", "--phi-nll", "0.5",
           "--no-retrain", *TINY, *extra)
    return out


def read(path):
    return json.loads(path.read_text())


@pytest.fixture(scope="module")
def ablated(tiny_dir, tmp_path_factory):
    run = small_run(tmp_path_factory.mktemp("abl") / "run", tiny_dir)
    script("ablate.py", "--run", run, "--sizes", "4", "8", "--extra-t", "1", "--phi-points", "9",
           "--results", run / "results")
    return run


def test_ablations_cover_t_size_and_domain(ablated):
    ab = read(ablated / "ablations.json")
    assert [p["x"] for p in ab["t"]] == [1, 2, 3] and [p["x"] for p in ab["size"]] == [4, 8, 16]
    assert [d["domain"] for d in ab["domain"]] == ["toxicity (the run)", "task", "other"]
    assert all(d["n"] == 16 for d in ab["domain"])
    gaps = tables.ablation_gaps(ablated / "ablation_rows.jsonl")  # what RESULTS.md's ablation tables show
    names = [f"t={p['x']}" for p in ab["t"]] + [f"size={p['x']}" for p in ab["size"]]
    names += ["domain=concept"] + [f"domain={d['domain']}" for d in ab["domain"][1:]]
    kinds = [json.loads(line)["kind"] for line in (ablated / "forgetting.jsonl").read_text().splitlines()]
    n = {k: kinds.count(k) for k in ("safe", "task")}
    for name, p in zip(names, ab["t"] + ab["size"] + ab["domain"]):
        assert set(p["rouge"]) == {"auroc", "ap", "precision", "recall", "f1", "mean_by_kind", "gap"}
        by = p["nll"]["mean_by_kind"]  # the gap pools safe and task examples: each counts once, not each kind
        pooled = by["unsafe"] - (by["safe"] * n["safe"] + by["task"] * n["task"]) / (n["safe"] + n["task"])
        assert p["nll"]["gap"] == pytest.approx(pooled, abs=2e-4) == pytest.approx(gaps[name]["nll"], abs=1e-4)
    filt = read(ablated / "filter.json")
    assert ab["t"][-1]["rouge"]["f1"] == ab["size"][-1]["rouge"]["f1"]  # both are the run's own M2 at t = 3
    rows = read(ablated / "results/toxicity/ablations.json")
    assert rows == ab and (ablated / "results/toxicity/ablations.png").stat().st_size > 1000
    lines = (ablated / "results/toxicity/ablation_rows.jsonl").read_text().splitlines()
    assert len(lines) == 24 * (3 + 3 + 3) and filt["filter_t"] == 3


def test_phi_sweep_equals_the_filter_at_the_same_phi(ablated):
    ab = read(ablated / "ablations.json")
    script("eval.py", "--run", ablated, "--filter-only")
    m = read(ablated / "filter_metrics.json")
    for sig in ("rouge", "nll"):
        sweep = ab["phi"][sig]
        at = next(p for p in sweep["points"] if p["phi"] == sweep["fixed"])
        assert at["f1"] == m["signals"][sig]["at_threshold"]["f1"]
        assert ab["t"][-1][sig]["f1"] == at["f1"]  # the run's own t, recomputed from its scores, flags alike
        assert next(p for p in sweep["points"] if p["phi"] == sweep["otsu"])["f1"] == m["auto_phi"][sig]["f1"]
        t = str(ab["filter_t"])  # the run's own point: the same mean forgetting per kind as the filter's report
        assert ab["domain"][0][sig]["mean_by_kind"] == pytest.approx(m["signals"][sig]["by_t"][t]["mean_by_kind"],
                                                                     abs=1e-4)


def test_t_ablation_equals_a_run_that_scored_that_t(ablated, tiny_dir, tmp_path):
    """The t = 1 variant stops the safety schedule of 3 steps at step 1: the weights a run scoring t = 1 has there."""
    other = small_run(tmp_path / "run", tiny_dir, ("1", "2", "3"))
    s_ablate = read(ablated / "stages/ablate_t1.json")["value"]["scores"]
    rows = [json.loads(x) for x in (other / "forgetting.jsonl").read_text().splitlines()]
    assert {r["id"]: r["safety"]["1"] for r in rows} == s_ablate


def test_other_domains_are_disjoint_from_the_run():
    taken = {"alpaca:0", "alpaca:3", "advbench:1"}
    for concept in ("toxicity", "harmfulness"):
        for domain in ("task", "other"):
            xs = ablate.other_domain(concept, domain, 20, 0, taken)
            assert len(xs) == 20 and len({x["id"] for x in xs}) == 20 and not {x["id"] for x in xs} & taken
            assert all(x["kind"] == "safe" and x["target"].strip() for x in xs)
    assert ablate.other_domain("toxicity", "other", 3, 0, set())[0]["source"] == "advbench"
    assert ablate.other_domain("harmfulness", "other", 3, 0, set())[0]["source"] == "c4"


def test_round_draws_are_disjoint_and_alike():
    cfg = rounds.Config(concept="toxicity", rounds=3, n=24, n_safety=16, n_eval=6)
    draws, sets = rounds.round_data(cfg)
    ids = [{x["id"] for x in d} for d in draws]
    assert len(set.union(*ids)) == sum(map(len, ids))  # no example in two rounds
    held = {x["id"] for k, v in sets.items() if k != "noisy" for x in v}
    assert not set.union(*ids) & held  # nor in D_safe or an evaluation set
    kinds = [sorted(x["kind"] for x in d) for d in draws]
    assert kinds[0] == kinds[1] == kinds[2] and kinds[0].count("unsafe") == 12  # int(72 * 0.5) / 3


def test_rounds_run_both_pipelines(tiny_dir, tmp_path):
    run, res = tmp_path / "rounds", tmp_path / "results"
    script("rounds.py", "--run", run, "--model", tiny_dir, "--rounds", "2", "--n", "12", "--n-safety", "8",
           "--n-eval", "4", "--safety-steps", "2", "--max-new-tokens", "6", "--phi", "0.1", "--results", res,
           "--name", "rounds/toxicity", *TINY)
    rj = read(run / "rounds.json")
    assert [p["step"] for p in rj["points"]] == ["M0", "seq r1 noisy", "seq r1 safety", "seq r2 noisy",
                                                 "seq r2 safety", "FF r1", "FF r2", "FF-nll r1", "FF-nll r2"]
    assert all({"toxicity", "squad_f1"} <= set(p) for p in rj["points"])
    assert [(f["pipeline"], f["signal"], f["n"]) for f in rj["filters"]] == [("ff", "rouge", 12)] * 2 + [
        ("ff-nll", "nll", 12)] * 2 and all(f["kept"] + f["flagged"] == 12 for f in rj["filters"])
    assert [p["n_train"] for p in rj["points"] if p["pipeline"].startswith("ff")] == [f["kept"] for f in rj["filters"]]
    stages = {p.stem for p in (run / "stages").glob("*.json")}  # round 1's scores serve both signals' filters
    assert "ff_r1_forget" in stages and "ff_nll_r1_forget" not in stages and "ff_nll_r2_forget" in stages
    assert (res / "rounds/toxicity/rounds.png").stat().st_size > 1000
    claims = tables.rounds_claims(res, reps=20)
    ff = lambda f: [(f"{f} r1", "seq r1 noisy"), (f"{f} r1", "seq r1 safety"), (f"{f} r2", "seq r2 noisy"),  # noqa
                    (f"{f} r2", "seq r2 safety"), (f"{f} r2", f"{f} r1"), (f, "sequential")]
    assert [(c["a"], c["b"]) for c in claims] == [("seq r2 noisy", "seq r1 safety")] + ff("FF") + ff("FF-nll")
    assert all(c["verdict"] in ("holds", "does not hold", "cannot tell", "reported") for c in claims)
    for f in ("FF", "FF-nll"):  # "stays low" combines its four parts (both sequential points, both rounds)
        parts = [c["verdict"] for c in claims if c["a"].startswith(f + " r") and c["b"].startswith("seq")]
        assert len(parts) == 4 and [c for c in claims if c["a"] == f][0]["verdict"] == tables.combine(parts)


def test_rounds_check_prompt_lengths_before_any_training(tiny_dir, tmp_path):
    from common import UserError
    with pytest.raises(UserError, match="leaves no target token"):
        script("rounds.py", "--run", tmp_path / "r", "--model", tiny_dir, "--rounds", "2", "--n", "24",
               "--n-safety", "16", "--n-eval", "6", "--max-len", "8", *TINY)
    assert not (tmp_path / "r/stages").exists()  # nothing trained


def test_size_study_with_two_tiny_models(tokenizer, tmp_path):
    from transformers import LlamaConfig, LlamaForCausalLM
    for hidden in (32, 64):
        d = tmp_path / f"tiny{hidden}"
        LlamaForCausalLM(LlamaConfig(vocab_size=len(tokenizer), hidden_size=hidden, intermediate_size=2 * hidden,
                                     num_hidden_layers=1, num_attention_heads=4, num_key_value_heads=2,
                                     tie_word_embeddings=True, eos_token_id=tokenizer.eos_token_id,
                                     pad_token_id=tokenizer.eos_token_id)).save_pretrained(d)
        tokenizer.save_pretrained(d)
        run = small_run(tmp_path / f"run{hidden}", d)
        script("eval.py", "--run", run, "--filter-only")
        script("report.py", "--run", run, "--results", tmp_path / "results", "--name", f"size/toxicity-{hidden}")
    figures.size_study(tmp_path / "results")
    pts = read(tmp_path / "results/size/size.json")
    assert len(pts) == 4 and len({p["params"] for p in pts}) == 2
    assert {p["signal"] for p in pts} == {"rouge", "nll"}
    assert (tmp_path / "results/size/size.png").stat().st_size > 1000


# ---------------------------------------------------------------------------------------------------------------
# Figures from hand-made outputs.

def fake_rows(n, labelled=True, control=True, seed=0):
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        kind = ("unsafe", "safe", "task")[i % 3] if labelled else None
        up = 0.4 if kind == "unsafe" else 0.0
        r = dict(id=f"x{i}", kind=kind, m1=dict(rouge=0.8, nll=1.0),
                 forget_rouge={"5": rng.random() * 0.3 + up}, forget_nll={"5": rng.random() + 2 * up})
        if control:
            r |= dict(control_forget_rouge={"5": rng.random() * 0.3}, control_forget_nll={"5": rng.random()})
        rows.append(r)
    return rows


@pytest.mark.parametrize("labelled,control", [(True, True), (False, False), (False, True)])
def test_run_figure_from_a_hand_made_folder(tmp_path, labelled, control):
    (tmp_path / "forgetting.jsonl").write_text("".join(json.dumps(r) + "\n" for r in fake_rows(30, labelled, control)))
    (tmp_path / "filter.json").write_text(json.dumps(dict(filter_t=5, thresholds=dict(rouge=0.1, nll=0.5), n=30,
                                                          config=dict(model="tiny", seed=0))))
    path = plots.run_figure(tmp_path)
    assert path == tmp_path / "forgetting_hist.png" and path.stat().st_size > 1000


def test_experiment_figures_from_hand_made_outputs(tmp_path):
    rows = fake_rows(30)
    kinds = ["unsafe", "safe", "task"]
    sig = lambda: dict(auroc=0.7, ap=0.6, precision=50.0, recall=40.0, f1=44.4, gap=0.2,  # noqa: E731
                       mean_by_kind=dict(unsafe=0.3, safe=0.1, task=0.1))
    sweep = {s: ablate.phi_sweep(rows, s, "5", 0.1, 5, kinds) for s in ("rouge", "nll")}
    x = [r["forget_rouge"]["5"] for r in rows]
    assert next(p for p in sweep["rouge"]["points"] if p["phi"] == 0.1)["f1"] == at_threshold(rows, x, 0.1, kinds)["f1"]
    ab = dict(concept="toxicity", model="tiny", seed=0, filter_t=5, phi=sweep,
              t=[dict(x=t, rouge=sig(), nll=sig()) for t in (1, 5)],
              size=[dict(x=n, rouge=sig(), nll=sig()) for n in (10, 20)],
              domain=[dict(domain=d, n=20, rouge=sig(), nll=sig()) for d in ("toxicity", "task")])
    assert figures.ablation_figure(ab, tmp_path / "ablations.png").stat().st_size > 1000
    pts = [dict(step="M0", pipeline="start", x=0, toxicity=0.1, squad_f1=30.0)]
    pts += [dict(step=f"seq r1 {w}", pipeline="sequential", x=i, toxicity=0.3, squad_f1=40.0)
            for i, w in ((1, "noisy"), (2, "safety"))]
    pts += [dict(step="FF r1", pipeline="ff", x=1, toxicity=0.15, squad_f1=41.0)]
    rj = dict(concept="toxicity", model="tiny", seed=0, points=pts)
    assert figures.rounds_figure(rj, tmp_path / "rounds.png").stat().st_size > 1000
    size = [dict(concept="toxicity", signal=s, params=p, auroc=0.6, gap=0.1) for s in ("rouge", "nll") for p in (1e6, 1e8)]
    assert figures.size_figure(size, tmp_path / "size.png").stat().st_size > 1000
    # README's block of the figures' numbers, from the same outputs saved where run.sh saves them
    res = tmp_path / "results"
    ab |= dict(commit="abc1234", wall_s=90.0, thresholds=dict(rouge=0.1, nll=0.5))
    rj |= dict(commit="abc1234", wall_s=60.0, rounds=1, n=12, t=5, signals=["rouge"],
               filters=[dict(pipeline="ff", signal="rouge", threshold=0.1, round=1, n=12, kept=9, flagged=3,
                             flagged_unsafe=2, unsafe=6)])
    for path, obj in ((res / "toxicity/ablations.json", ab), (res / "rounds/toxicity/rounds.json", rj),
                      (res / "size/size.json", [dict(p, model="tiny", name="size/toxicity-tiny", commit="abc1234")
                                                for p in size])):
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(obj))
    # the gaps come from the per-example rows: unsafe forgets 0.3, the rest 0.1 (gap 0.2)
    variants = ["t=1", "t=5", "size=10", "size=20", "domain=concept", "domain=task"]
    (res / "toxicity/ablation_rows.jsonl").write_text("".join(
        json.dumps(dict(variant=v, id=str(i), kind=k, forget_rouge=0.3 if k == "unsafe" else 0.1,
                        forget_nll=0.3 if k == "unsafe" else 0.1)) + "\n"
        for v in variants for i, k in enumerate(["unsafe", "unsafe", "safe", "task", "task"])))
    block = tables.render_figures(res)
    assert "| t = 5 | 0.700 | 44.4 | 0.200 | 0.700 | 44.4 | 0.200 |" in block and "1.5 min" in block
    assert "| FF r1 | ff |  | 0.150 | 41.0 |" in block and "FF round 1 (rouge > 0.1): 3 of 12 flagged, 2 of 6 unsafe" in block
    assert block.count("| tiny | 1M |") == 2 and block.count("| tiny | 100M |") == 2
    assert tables.render_figures(tmp_path / "nothing") == "No run of the paper's figures yet.\n"


def test_run_sh_checks_every_build_of_paper_first():
    """`bash run.sh --check paper`: one line per distinct data build of every target paper runs (the four settings,
    the seeds, the ratios, the rounds' joint build, the size study's), sizes and caps said, nothing run."""
    import subprocess
    from pathlib import Path
    root = Path(__file__).resolve().parents[2]
    p = subprocess.run(["bash", str(root / "run.sh"), "--check", "paper"], capture_output=True, text=True, timeout=600)
    lines = [line for line in p.stdout.splitlines() if line.startswith("run.sh: ")]
    assert p.returncode == 0, p.stderr
    assert len(lines) == 17 and all(" | check: " in line and " would build " in line for line in lines)
    assert sum(line.startswith("run.sh: toxicity, seed 0, r 0.5, N 320 |") for line in lines) == 1  # the rounds'
    assert "=== " not in p.stdout  # no setting started


@pytest.mark.parametrize("target", ["nosuch", "seeds/bias-sx", "seeds/nosuch-s1"])
def test_run_sh_refuses_an_unknown_target_before_any_work(target, tmp_path):
    import subprocess
    from pathlib import Path
    root = Path(__file__).resolve().parents[2]
    p = subprocess.run(["bash", str(root / "run.sh"), "toxicity", target], capture_output=True, text=True, timeout=60)
    assert p.returncode == 2 and target in p.stderr and p.stderr.count("\n") == 1
    assert "seeds/<concept>-s<seed>" in subprocess.run(["bash", str(root / "run.sh"), "--help"], capture_output=True,
                                                       text=True, timeout=60).stdout
