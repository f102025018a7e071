"""The documents' decimal numbers in prose against the committed outputs.

Every decimal number in README.md, RESULTS.md and PERFORMANCE.md outside the generated blocks (between `<!-- results:<name>:begin -->` and
`<!-- results:<name>:end -->`, which test_pipeline.py checks) and outside fenced code must be a value of
results/*/summary.json, results/bench.json, results/cost.json, the figures' JSON (ablations, rounds, size) or
results/table2.json (the claims' intervals), rounded to the decimals shown, or one of the few constants in ALLOWED.
Derived forms count too: a fraction as a percentage (x100), seconds as minutes (/60), the absolute value. A number
followed by "min"/"minutes" must come from a time, one followed by "GiB" from a memory figure.
"""
import json
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
BLOCK = re.compile(r"<!-- results:(\w+):begin -->.*?<!-- results:\1:end -->", re.S)
FENCE = re.compile(r"^```.*?^```[^\n]*$", re.S | re.M)
# A decimal number, not part of a word, a version (2.13.0) or a longer number.
NUMBER = re.compile(r"(?<![\w.])-?\d+\.\d+(?!\d|\.\d)")
UNIT = re.compile(r"\s*(minutes|min|GiB)\b")

# Constants that are no result of ours, each with its reason.
ALLOWED = {
    "2312.12736",  # the paper's arXiv id
    "3.11",        # the Python version setup.sh needs
}


def _walk(node, path=()):
    """(path, number) for every number in a JSON tree; numeric strings ("0.1") count as numbers."""
    if isinstance(node, dict):
        for k, v in node.items():
            yield from _walk(v, path + (str(k),))
    elif isinstance(node, list):
        for v in node:
            yield from _walk(v, path)
    elif isinstance(node, bool):
        return
    elif isinstance(node, (int, float)):
        yield path, float(node)
    elif isinstance(node, str):
        try:
            yield path, float(node)
        except ValueError:
            return


def committed_values(root=ROOT):
    """Candidate values by unit: 'any' (every value and its derived forms), 'min' (times), 'GiB' (memory)."""
    files = sorted((root / "results").glob("*/summary.json")) + [root / "results" / "bench.json",
                                                                   root / "results" / "cost.json"]
    files += sorted((root / "results").glob("*/ablations.json")) + sorted((root / "results").glob("*/*/rounds.json"))
    files += [root / "results" / "size" / "size.json", root / "results" / "table2.json"]  # table2: the claims
    pools = {"any": set(), "min": set(), "GiB": set()}
    for f in files:
        if not f.is_file():
            continue
        for path, v in _walk(json.loads(f.read_text())):
            keys = " ".join(path).lower()
            for d in (v, v * 100, v / 60):
                pools["any"].add(abs(d))
            if "wall" in keys or "stages_s" in keys or (path and path[-1].endswith("_s")):
                pools["min"].add(abs(v / 60))
            if "min" in keys and "micro" not in keys:
                pools["min"].add(abs(v))
            if "memory" in keys:
                pools["GiB"].add(abs(v))
    return pools


def prose(text):
    """README without its generated blocks and fenced code."""
    return FENCE.sub("", BLOCK.sub("", text))


def unmatched(text, pools):
    """The decimal numbers of `text`'s prose that no committed value explains, with their context."""
    bad = []
    for m in NUMBER.finditer(prose(text)):
        s = m.group(0)
        if s.lstrip("-") in ALLOWED:
            continue
        x = abs(float(s))
        tol = 0.5 * 10 ** -len(s.split(".")[1]) + 1e-9
        u = UNIT.match(m.string, m.end())
        pool = pools[{"minutes": "min", "min": "min", "GiB": "GiB"}[u.group(1)]] if u else pools["any"]
        if not any(abs(c - x) <= tol for c in pool):
            bad.append(m.string[max(0, m.start() - 40):m.end() + 20].replace("\n", " "))
    return bad


@pytest.fixture(scope="module")
def pools():
    p = committed_values()
    if not p["any"]:
        pytest.skip("no committed results")
    return p


DOCS = ("README.md", "RESULTS.md", "PERFORMANCE.md")


@pytest.mark.parametrize("doc", DOCS)
def test_prose_numbers_come_from_the_committed_results(pools, doc):
    text = (ROOT / doc).read_text()
    bad = unmatched(text, pools)
    assert not bad, f"{doc}: numbers in no committed result file:\n" + "\n".join(bad)


def test_the_prose_check_is_not_vacuous():
    assert sum(len(NUMBER.findall(prose((ROOT / d).read_text()))) for d in DOCS) > 100


def test_checker_catches_a_wrong_number(pools):
    text = (ROOT / "RESULTS.md").read_text()
    wrong = text + "\n* **Cost.** 18.4 minutes end to end on 2 CPU cores; peak memory 4.07 GiB.\n"
    bad = unmatched(wrong, pools)
    assert any("18.4 minutes" in b for b in bad) and any("4.07 GiB" in b for b in bad)
    tox = json.loads((ROOT / "results" / "toxicity" / "summary.json").read_text())
    right = text + (f"\n* **Cost.** {tox['wall_s']['end_to_end'] / 60:.1f} minutes end to end on 2 CPU cores; peak memory "
                    f"{tox['peak_memory_gib']} GiB.\n")
    assert unmatched(right, pools) == unmatched(text, pools)
    inside = text.replace("<!-- results:toxicity:end -->", "18.4 minutes\n<!-- results:toxicity:end -->")
    assert unmatched(inside, pools) == unmatched(text, pools)  # the generated blocks are test_pipeline's to check
