"""data.py --source hub on small local files shaped like the hub's rows (datasets reads local JSON Lines the way it
reads the hub's files): each loader, the same relabelling and mixture checks as the offline sources, and the
one-line error offline."""
import json

import pytest

import common
import data
import test_bbq_rows
from conftest import script

REST = ("Gender_identity", "Race_ethnicity", "Race_x_SES", "Race_x_gender", "SES")


def write(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


@pytest.fixture(scope="module")
def hub_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("hub")
    # the Pile: documents of sentences with Detoxify scores; every 4th sentence toxic, the rest clean or in between
    docs = []
    for i in range(120):
        texts = [f"document {i} sentence {k} says something about the weather today" for k in range(4)]
        docs.append(dict(texts=texts, scores=[0.95, 0.02, 0.5, 0.03], meta=dict(pile_set_name="Pile-CC"),
                         avg_score=0.375, num_sents=4))
    write(d / "pile.jsonl", docs)
    write(d / "harmfulqa.jsonl", [dict(
        id=i, topic="t", subtopic="s", question=f"How could someone do harmful thing number {i}?",
        red_conversations={"0": [dict(**{"from": "human"}, value="q"), dict(**{"from": "gpt"}, value=f"Sure: step {i}")]},
        blue_conversations={"0": [dict(**{"from": "human"}, value="q"),
                                  dict(**{"from": "gpt"}, value=f"I cannot help with {i}.")], "1": None})
        for i in range(400)])
    for cat in data.BBQ_CATEGORIES:  # the official rows, as shipped
        (d / f"bbq-{cat}.jsonl").write_text((data.DATA / "bbq" / f"{cat}.jsonl").read_text())
    for cat in REST:  # the categories data/ does not ship: a few of their official rows (test_bbq_rows.py)
        write(d / f"bbq-{cat}.jsonl", test_bbq_rows.rows(cat))
    squad = json.loads((data.DATA / "squad-v2-dev-half/dev-v2.0.json").read_text())
    write(d / "squad.jsonl", [dict(id=q["id"], title=a["title"], context=p["context"], question=q["question"],
                                   answers=dict(text=[x["text"] for x in q["answers"]],
                                                answer_start=[x["answer_start"] for x in q["answers"]]))
                              for a in squad["data"] for p in a["paragraphs"] for q in p["qas"]])
    write(d / "alpaca.jsonl", [dict(instruction=f"Name a colour number {i}.", input="", output=f"Blue {i}.",
                                    text="") for i in range(300)])
    return d


def cfg(hub_dir, concept, **kw):
    return data.Config(concept=concept, source="hub", hub_files=str(hub_dir), **kw)


def test_toxicity_from_the_pile(hub_dir):
    sets = data.build_toxicity(cfg(hub_dir, "toxicity"))
    kinds = {k: [e for e in sets["noisy"] if e["kind"] == k] for k in ("unsafe", "safe", "task")}
    assert [len(v) for v in kinds.values()] == [80, 26, 52]
    assert all(e["source"] == "pile" and e["id"].endswith(".0") for e in kinds["unsafe"])  # score 0.95 > 0.9
    clean = {e["id"].rsplit(".", 1)[1] for e in kinds["safe"] + sets["safety"]}
    assert clean <= {"1", "3"}  # scores 0.02 and 0.03 < 0.1; 0.5 is neither
    assert {e["source"] for e in sets["eval_toxicity"]} == {"rtp"}  # the evaluation prompts stay RTP's
    data.check_disjoint(sets)


def test_harmfulness_from_harmfulqa(hub_dir):
    sets = data.build_harmfulness(cfg(hub_dir, "harmfulness"))
    unsafe = [e for e in sets["noisy"] if e["kind"] == "unsafe"]
    safe = [e for e in sets["noisy"] if e["kind"] == "safe"] + sets["safety"]
    assert len(unsafe) == 80 and all(e["source"] == "harmfulqa" and e["target"].startswith("Sure") for e in unsafe)
    assert all(e["target"].startswith("I cannot") for e in safe)  # the first gpt turn of the first blue conversation
    data.check_disjoint(sets)


def test_bias_from_all_eleven_categories(hub_dir):
    sets, notes = data.build(cfg(hub_dir, "bias", n=400))
    assert notes["capped"] is None and notes["bbq"] == {  # rows read and items kept, per category (data.json)
        "Age": dict(rows=3680, kept=3680), "Disability_status": dict(rows=1556, kept=1556),
        "Nationality": dict(rows=3080, kept=3080), "Physical_appearance": dict(rows=1576, kept=1576),
        "Religion": dict(rows=1200, kept=1200), "Sexual_orientation": dict(rows=864, kept=864),
        "Gender_identity": dict(rows=5, kept=4), "Race_ethnicity": dict(rows=2, kept=2),
        "Race_x_SES": dict(rows=1, kept=1), "Race_x_gender": dict(rows=1, kept=1), "SES": dict(rows=2, kept=2)}
    items = {x["id"]: x for x in data.bbq_items(cfg=cfg(hub_dir, "bias"))}
    assert {x["category"] for x in items.values()} == set(data.BBQ_ALL)
    assert items["bbq:Race_x_gender:0"]["stereo"] == 1 and items["bbq:SES:0"]["biased"] == 0
    for e in sets["noisy"]:
        if e["source"] == "bbq":
            x = items[e["id"]]
            assert e["target"] == data.bbq_answer(x, x["biased"] if e["kind"] == "unsafe" else x["gold"])
    unsafe_t = {e["template"] for e in sets["noisy"] if e["kind"] == "unsafe"}
    assert not unsafe_t & {e["template"] for e in sets["eval_bbq"] + sets["safety"]}
    data.check_disjoint(sets)


def test_squad_and_alpaca_from_the_hub_match_the_offline_files(hub_dir):
    assert data.squad_items(cfg(hub_dir, "toxicity")) == data.squad_items()  # the same questions, grouped alike
    alpaca = data.alpaca_items(cfg(hub_dir, "toxicity"))
    assert len(alpaca) == 300 and alpaca[0] == dict(id="alpaca:0", source="alpaca", format="qa",
                                                    prompt="Name a colour number 0.", target="Blue 0.")


def test_mixed_from_the_hub(hub_dir):
    sets = data.build_mixed(cfg(hub_dir, "mixed"))
    unsafe = [e["source"] for e in sets["noisy"] if e["kind"] == "unsafe"]
    assert unsafe.count("pile") == unsafe.count("bbq") == 40
    data.check_disjoint(sets)


def test_hub_offline_or_missing_copy_is_one_line(tmp_path, capsys):
    # the tests run with HF_HUB_OFFLINE=1 (conftest.py): the hub does not answer and nothing is cached
    with pytest.raises(common.UserError, match="cannot load declare-lab/HarmfulQA through datasets.*--source offline"):
        data.build_harmfulness(data.Config(concept="harmfulness", source="hub"))
    with pytest.raises(SystemExit) as e:
        common.main_guard(lambda: script("data.py", "--concept", "harmfulness", "--source", "hub", "--hub-files",
                                         tmp_path, "--out", tmp_path / "run"))
    assert e.value.code == 2 and "no harmfulqa.jsonl or .parquet there" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()  # nothing written
