"""The data: sizes, ids, kinds, and evaluation sets disjoint from every training set."""
import pytest

import data


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
    with pytest.raises(data.UserError, match="also appears in the training data"):
        data.check_disjoint(bad)


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
    with pytest.raises(data.UserError, match=r"x.jsonl:2: malformed JSON"):
        data.read_jsonl(p)
    p.write_text('{"prompt": "a"}\n')
    with pytest.raises(data.UserError, match=r"x.jsonl:1: missing field 'target'"):
        data.read_jsonl(p)
    p.write_text("\n")
    with pytest.raises(data.UserError, match="no examples"):
        data.read_jsonl(p)
    with pytest.raises(data.UserError, match="file not found"):
        data.read_jsonl(tmp_path / "missing.jsonl")


def test_atomic_write_leaves_no_partial_file(tmp_path):
    p = tmp_path / "out.json"
    data.write_json(p, {"a": 1})

    class Boom:
        def __iter__(self):
            raise RuntimeError("disk full")
    with pytest.raises(RuntimeError):
        data.write_jsonl(p, Boom())
    assert data.read_json(p) == {"a": 1}  # the earlier file is intact
    assert [f.name for f in tmp_path.iterdir()] == ["out.json"]  # no temporary file left behind
