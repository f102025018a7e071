"""Algorithm 1's wiring, checked from the outside on the tiny model: what each stage starts from, when each score
is taken, and that the stored numbers follow from the stored generations."""
import json

import pytest
import torch

import metrics
import ff
import data
import model as mdl
from conftest import script
from test_resume import ROOT, TINY

STEPS = {"n": 0}


@pytest.fixture(scope="module")
def lora_run(tiny_dir, tmp_path_factory, request):
    """ff.py --lora on the example pair, recording how many optimizer steps each score and each training saw, and
    the logits of the model that s0 (the M1 scores) was computed on."""
    run = tmp_path_factory.mktemp("wiring")
    probe = torch.tensor([[1, 2, 3, 4, 5, 6]])
    seen = dict(score={}, train={}, m1_logits=None)
    mp = pytest.MonkeyPatch()
    step = torch.optim.AdamW.step

    def counting_step(self, *a, **k):
        STEPS["n"] += 1
        return step(self, *a, **k)

    score, train = ff.score, ff.train

    def recording_score(model, tok, examples, cfg, desc):
        seen["score"][desc] = STEPS["n"]
        if desc == "score M1":
            with torch.no_grad():
                seen["m1_logits"] = model(probe).logits.clone()
        return score(model, tok, examples, cfg, desc)

    def recording_train(*a, desc="train", **k):
        seen["train"][desc] = STEPS["n"]
        return train(*a, desc=desc, **k)

    mp.setattr(torch.optim.AdamW, "step", counting_step)
    mp.setattr(ff, "score", recording_score)
    mp.setattr(ff, "train", recording_train)
    try:
        script("ff.py", "--noisy", ROOT / "examples/noisy.jsonl", "--safe", ROOT / "examples/safe.jsonl", "--run",
               run, "--model", tiny_dir, "--lora", "--no-control", "--safety-steps", "1", "3", "--phi", "0.0",
               "--phi-nll", "0.0", "--signals", "nll", "rouge", *TINY)
    finally:
        mp.undo()
    return run, seen, probe


def test_m1_is_scored_on_exactly_the_weights_m2_starts_from(lora_run):
    run, seen, probe = lora_run
    m1, _ = mdl.load_model(str(run / "ckpt/m1"))  # the merged checkpoint M2 loads
    with torch.no_grad():
        assert torch.equal(m1(probe).logits, seen["m1_logits"])


def test_scores_at_t_follow_exactly_t_safety_steps(lora_run):
    _, seen, _ = lora_run
    start = seen["train"]["M2 <- M1 + D_safe"]
    assert {t: seen["score"][f"M2 t={t}"] - start for t in (1, 3)} == {1: 1, 3: 3}
    assert seen["score"]["score M1"] == seen["train"]["M2 <- M1 + D_safe"]  # s0: after M1's training, before M2's


def test_stored_forgetting_follows_from_the_stored_generations(lora_run):
    run, _, _ = lora_run
    rows = [json.loads(x) for x in (run / "forgetting.jsonl").read_text().splitlines()]
    for r in rows:
        s0 = round(metrics.rouge1(r["target"], r["m1"]["gen"]), 4)
        for t in ("1", "3"):
            s1 = round(metrics.rouge1(r["target"], r["safety"][t]["gen"]), 4)
            assert r["forget_rouge"][t] == round(s0 - s1, 4)
            assert r["forget_nll"][t] == round(r["safety"][t]["nll"] - r["m1"]["nll"], 4)
        assert r["flagged"]["rouge"] == (r["forget_rouge"]["3"] > 0.0)  # --phi 0.0: strict, at the last t


def test_ff_is_trained_from_m0_on_the_kept_lines(lora_run, tiny_dir, tmp_path):
    """FF's weights equal an independent train(M0, D_kept), not anything that started from M1."""
    run, _, _ = lora_run
    kept, _, _ = data.load_examples(run / "filtered_nll.jsonl", "qa")  # tiny models forget little by ROUGE
    assert 0 < len(kept) < len(data.load_examples(ROOT / "examples/noisy.jsonl", "qa")[0])
    cfg = ff.Config(lora=True, epochs=1, lr=1e-3)
    torch.manual_seed(cfg.seed)
    model, tok = mdl.load_model(str(tiny_dir))
    model = mdl.add_lora(model, cfg)
    ff.train(model, tok, kept, cfg, cfg.lr, epochs=cfg.epochs)
    mdl.save_checkpoint(model, tok, tmp_path / "ff", base=tiny_dir)
    want = mdl.load_model(str(tmp_path / "ff"))[0].state_dict()
    got = mdl.load_model(str(run / "ckpt/ff_nll"))[0].state_dict()
    assert want.keys() == got.keys() and all(torch.equal(want[k], got[k]) for k in want)
