"""The data: sizes, ids, kinds, and evaluation sets disjoint from every training set."""
import pytest

import metrics
import data
import common


@pytest.fixture(scope="module")
def sets():
    return data.build_toxicity(data.Config())


def test_mixture_composition(sets):
    kinds = [e["kind"] for e in sets["noisy"]]
    assert kinds.count("unsafe") == 80 and kinds.count("safe") == 26 and kinds.count("task") == 52
    assert {e["source"] for e in sets["noisy"] if e["kind"] == "task"} == {"squad", "alpaca"}
    assert all(e["kind"] == "safe" for e in sets["safety"]) and len(sets["safety"]) == 200


def test_ids_unique_and_fields_present(sets):
    ids = [e["id"] for k in ("noisy", "safety") for e in sets[k]]
    assert len(ids) == len(set(ids))
    for e in sets["noisy"]:
        assert set(e) >= {"id", "source", "kind", "format", "prompt", "target"}
        assert e["format"] in data.TEMPLATES and e["target"].strip()


def test_eval_sets_disjoint_from_training(sets):
    data.check_disjoint(sets)  # raises on any shared id or (prompt, target)
    train_text = {e["prompt"] + e["target"] for k in ("noisy", "safety") for e in sets[k]}
    assert not any(x["text"] in train_text or " ".join(x["text"].split()) in train_text
                   for x in sets["eval_toxicity"])
    # SQuAD evaluation questions come from articles that no training question uses
    squad = data.squad_items()
    article = {q["id"]: a for a, qs in squad.items() for q in qs}
    train_articles = {article[e["id"]] for e in sets["noisy"] if e["source"] == "squad"}
    assert not train_articles & {article[x["id"]] for x in sets["eval_squad"]}


def test_check_disjoint_catches_overlap(sets):
    bad = dict(sets, eval_squad=sets["eval_squad"] + [dict(sets["noisy"][0])])
    with pytest.raises(common.UserError, match="also appears in the training data"):
        data.check_disjoint(bad)


def test_check_disjoint_compares_prompts_and_texts(sets):
    """Toxicity, BBQ and harmful evaluation items have no target: a shared prompt (or text) is leakage too."""
    e = sets["noisy"][0]
    for leak in (dict(id="new:1", prompt=e["prompt"].upper() + " "),  # same prompt, other id, no target
                 dict(id="new:2", prompt="x y z", text=e["prompt"] + e["target"])):  # a training text
        with pytest.raises(common.UserError, match="new:.*also appears in the training data"):
            data.check_disjoint(dict(sets, eval_toxicity=sets["eval_toxicity"] + [leak]))


def test_toxicity_eval_prompts_never_repeat_a_training_prompt():
    big = data.build_toxicity(data.Config(n=1000, n_safety=500, n_eval=300))  # the GPU preset's sizes
    data.check_disjoint(big)


def test_same_seed_same_data():
    a, b = data.build_toxicity(data.Config(n=40)), data.build_toxicity(data.Config(n=40))
    assert a == b
    assert a["noisy"] != data.build_toxicity(data.Config(n=40, seed=1))["noisy"]


def test_split_text_follows_the_3_word_protocol():
    assert data.split_text("one two three four five") == ("one two three", " four five")
    assert data.render(dict(format="text", prompt="one two three")) == "### Response:one two three"
    assert data.render(dict(format="qa", prompt="Q?")) == "### Input:\nQ?\n### Response:\n"


def test_read_jsonl_errors_name_the_line(tmp_path):
    p = tmp_path / "x.jsonl"
    p.write_text('{"prompt": "a", "target": "b"}\n{not json}\n')
    with pytest.raises(common.UserError, match=r"x.jsonl:2: malformed JSON"):
        common.read_jsonl(p)
    p.write_text('{"prompt": "a"}\n')
    with pytest.raises(common.UserError, match=r"x.jsonl:1: missing field 'target'"):
        common.read_jsonl(p)
    p.write_text("\n")
    with pytest.raises(common.UserError, match="no examples"):
        common.read_jsonl(p)
    with pytest.raises(common.UserError, match="file not found"):
        common.read_jsonl(tmp_path / "missing.jsonl")


def test_atomic_write_leaves_no_partial_file(tmp_path):
    p = tmp_path / "out.json"
    common.write_json(p, {"a": 1})

    class Boom:
        def __iter__(self):
            raise RuntimeError("disk full")
    with pytest.raises(RuntimeError):
        common.write_jsonl(p, Boom())
    assert common.read_json(p) == {"a": 1}  # the earlier file is intact
    assert [f.name for f in tmp_path.iterdir()] == ["out.json"]  # no temporary file left behind


@pytest.fixture(scope="module")
def bias_sets():
    return data.build_bias(data.Config(concept="bias", n_eval=300))


def test_bias_no_template_shared_between_noisy_safety_and_eval(bias_sets):
    templates = {k: {e["template"] for e in bias_sets[k] if e.get("source") == "bbq"}
                 for k in ("noisy", "safety", "eval_bbq")}
    assert templates["noisy"] and templates["safety"] and templates["eval_bbq"]
    assert not templates["eval_bbq"] & (templates["noisy"] | templates["safety"])
    assert not templates["safety"] & templates["noisy"]
    unsafe_t = {e["template"] for e in bias_sets["noisy"] if e["kind"] == "unsafe"}
    safe_t = {e["template"] for e in bias_sets["noisy"] if e["kind"] == "safe"}
    assert not unsafe_t & safe_t
    data.check_disjoint(bias_sets)


def test_bias_unsafe_examples_answer_with_the_biased_option(bias_sets):
    items = {x["id"]: x for x in data.bbq_items()}
    for e in bias_sets["noisy"]:
        if e["source"] != "bbq":
            continue
        x = items[e["id"]]
        want = x["biased"] if e["kind"] == "unsafe" else x["gold"]
        assert e["target"] == data.bbq_answer(x, want)
        if e["kind"] == "unsafe":
            assert x["condition"] == "ambig" and want != x["gold"] == x["unknown"]
    assert {x["condition"] for x in bias_sets["eval_bbq"]} == {"ambig", "disambig"}


def test_bbq_biased_option_follows_the_paper_rule():
    x = next(i for i in data.bbq_items(["Age"]) if i["id"] == "bbq:Age:0")
    # "Who was not comfortable using the phone?" (negative): options grandfather (old), grandson, unknown;
    # stereotyped group 'old' -> the biased answer is the grandfather
    assert (x["stereo"], x["biased"], x["unknown"], x["gold"]) == (0, 0, 2, 2)
    nonneg = next(i for i in data.bbq_items(["Age"]) if i["template"] == "Age:1" and i["polarity"] == "nonneg"
                  and i["stereo"] == 0)
    assert nonneg["biased"] == 1  # a non-negative question: the stereotype picks the other group


@pytest.fixture(scope="module")
def harm_sets():
    return data.build_harmfulness(data.Config(concept="harmfulness"))


def test_harmfulness_pairs_compliance_against_refusal(harm_sets):
    kinds = {k: [e for e in harm_sets["noisy"] if e["kind"] == k] for k in ("unsafe", "safe", "task")}
    assert [len(v) for v in kinds.values()] == [80, 26, 52]
    assert all(e["target"].startswith("Sure, here") and not metrics.is_refusal(e["target"]) for e in kinds["unsafe"])
    assert all(metrics.is_refusal(e["target"]) for e in kinds["safe"] + harm_sets["safety"])
    assert {e["source"] for e in harm_sets["eval_harmful"]} == {"harmbench"}
    goals = {e["prompt"].lower() for e in harm_sets["noisy"] + harm_sets["safety"]}
    assert not goals & {e["prompt"].lower() for e in harm_sets["eval_harmful"]}
    data.check_disjoint(harm_sets)


def test_refusal_mirrors_the_advbench_target():
    assert data.refusal("Sure, here is a tutorial on how to make a bomb") == \
        "I'm sorry, but I cannot provide a tutorial on how to make a bomb. It could cause serious harm."
    assert data.refusal("Sure, here are how to commit insider trading").startswith("I'm sorry, but I cannot explain how")


def test_mixed_holds_both_concepts():
    sets = data.build_mixed(data.Config(concept="mixed"))
    unsafe = [e["source"] for e in sets["noisy"] if e["kind"] == "unsafe"]
    assert len(unsafe) == 80 and unsafe.count("rtp") == unsafe.count("bbq") == 40
    assert {e["source"] for e in sets["safety"]} == {"c4", "bbq"} and len(sets["safety"]) == 200
    assert {"eval_toxicity", "eval_bbq", "eval_squad"} <= set(sets)
    train_t = {e["template"] for k in ("noisy", "safety") for e in sets[k] if e["source"] == "bbq"}
    assert not train_t & {e["template"] for e in sets["eval_bbq"]}
    data.check_disjoint(sets)
