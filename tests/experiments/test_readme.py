"""The documents' decimal numbers in prose (outside the generated blocks between `<!-- results:<name>:begin -->` and
`<!-- results:<name>:end -->`, which test_records.py checks, and outside fenced code) against where they come from.

* README.md and PERFORMANCE.md quote no result in prose: their results are the generated blocks. The decimals their
  prose may hold are constants, each tied to its source (CONSTANTS): the arXiv id, the Python of this machine, the
  GPU preset's model and ff.py's LoRA defaults.
* RESULTS.md's readings: a number in a setting's own section (### Toxicity, ### Bias (BBQ), ...) must be a value of
  that setting's committed files (results/<concept>/, seeds/<concept>-*, ratios/<concept>-*, rounds/<concept>/,
  size/<concept>-*) or of the claims (results/table2.json); elsewhere, a value of any committed result file.
  Rounded to the decimals shown; derived forms count too: a fraction as a percentage (x100), seconds as minutes (/60),
  the absolute value. A number followed by "min"/"minutes" must come from a time, one followed by "GiB" from a memory
  figure. This ties a number to its setting's files, not yet to one field.
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
SETTINGS = {"Toxicity": "toxicity", "Bias (BBQ)": "bias", "Harmfulness": "harmfulness", "Mixed": "mixed"}


def constants():
    """{decimal as written: where it is defined} for README's and PERFORMANCE's prose, each checked at its source."""
    import sys
    import common
    import ff
    lora = ff.Config()
    size = common.GPU_MODEL.split("-")[1].removesuffix("B")  # SmolLM2-1.7B-Instruct -> 1.7
    return {"2312.12736": "the paper's arXiv id (CITATION in README)",
            f"{sys.version_info[0]}.{sys.version_info[1]}": "the Python this project is tested on",
            size: f"the GPU preset's model, {common.GPU_MODEL}",
            f"{lora.lora_dropout:g}": "ff.py's --lora-dropout default (the paper's)"}


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


def result_files(root=ROOT, concept=None):
    """The committed result files: all of them, or a setting's own with the claims (table2.json)."""
    res = root / "results"
    if concept:
        files = sorted(res.glob(f"{concept}/*.json")) + sorted(res.glob(f"seeds/{concept}-*/*.json"))
        files += sorted(res.glob(f"ratios/{concept}-*/*.json")) + sorted(res.glob(f"rounds/{concept}/*.json"))
        files += sorted(res.glob(f"size/{concept}-*/*.json"))
    else:
        files = sorted(res.glob("*/summary.json")) + [res / "bench.json", res / "cost.json"]
        files += sorted(res.glob("*/ablations.json")) + sorted(res.glob("*/*/rounds.json"))
        files += [res / "size" / "size.json"]
    return [f for f in files + [res / "table2.json"] if f.is_file()]


def committed_values(root=ROOT, concept=None):
    """Candidate values by unit: 'any' (every value and its derived forms), 'min' (times), 'GiB' (memory)."""
    pools = {"any": set(), "min": set(), "GiB": set()}
    for f in result_files(root, concept):
        for path, v in _walk(json.loads(f.read_text())):
            keys = " ".join(path).lower()
            if f.name == "ablations.json" and "gap" in path:
                continue  # written before the gap had one definition; the gaps below replace it
            for d in (v, v * 100, v / 60):
                pools["any"].add(abs(d))
            if "wall" in keys or "stages_s" in keys or (path and path[-1].endswith("_s")):
                pools["min"].add(abs(v / 60))
            if "min" in keys and "micro" not in keys:
                pools["min"].add(abs(v))
            if "memory" in keys:
                pools["GiB"].add(abs(v))
    if concept is None:  # the ablation tables' gaps, computed from the committed rows as tables.py computes them
        from tables import ablation_gaps
        for f in sorted((root / "results").glob("*/ablation_rows.jsonl")):
            pools["any"] |= {abs(g) for v in ablation_gaps(f).values() for g in v.values() if g is not None}
    return pools


def sections(text):
    """RESULTS.md cut at its headings: [(concept or None, text)], a setting's section (### Toxicity, ...) naming it."""
    out, concept, start = [], None, 0
    for m in re.finditer(r"^#{2,3} (.+)$", text, re.M):
        out.append((concept, text[start:m.start()]))
        concept, start = SETTINGS.get(m.group(1).strip()), m.start()
    return out + [(concept, text[start:])]


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


@pytest.mark.parametrize("doc", ("README.md", "PERFORMANCE.md"))
def test_readme_and_performance_prose_quote_no_result(doc):
    known = constants()
    bad = [p for p in NUMBER.findall(prose((ROOT / doc).read_text())) if p.lstrip("-") not in known]
    assert not bad, f"{doc}: decimals in prose that are no named constant (move results into a generated block): {bad}"


def test_readme_names_the_python_it_is_tested_on():
    assert f"Python {next(k for k, v in constants().items() if 'Python' in v)}" in (ROOT / "README.md").read_text()


def test_results_prose_numbers_come_from_their_settings_files(pools):
    text = (ROOT / "RESULTS.md").read_text()
    bad = []
    for concept, part in sections(text):
        bad += [f"[{concept or 'any'}] {b}" for b in unmatched(part, committed_values(concept=concept) if concept
                                                               else pools)]
    assert not bad, "RESULTS.md: numbers in no committed result file of their section:\n" + "\n".join(bad)


def test_the_prose_check_is_not_vacuous():
    assert len(NUMBER.findall(prose((ROOT / "RESULTS.md").read_text()))) > 100
    assert sum(c is not None for c, _ in sections((ROOT / "RESULTS.md").read_text())) == 4


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
    assert unmatched(inside, pools) == unmatched(text, pools)  # the generated blocks are test_records' to check


def test_a_settings_number_must_come_from_its_own_files():
    bias = json.loads((ROOT / "results" / "bias" / "summary.json").read_text())
    x = f"{bias['wall_s']['end_to_end'] / 60:.1f}"
    tox = committed_values(concept="toxicity")
    assert not unmatched(f"{x} minutes", committed_values(concept="bias"))
    if not any(abs(v - float(x)) <= 0.05 for v in tox["min"]):  # a bias figure quoted in the toxicity section
        assert unmatched(f"{x} minutes", tox)


def test_readme_prose_check_catches_a_result():
    text = (ROOT / "README.md").read_text() + "\nThe filter reaches AUROC 0.932 on toxicity.\n"
    assert "0.932" in [p for p in NUMBER.findall(prose(text)) if p not in constants()]
