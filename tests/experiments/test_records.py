"""The committed record: every generated block of RESULTS.md, PERFORMANCE.md and README equals what the scripts
render from the committed outputs; the reports and tables import no torch; and no run of the README's recipes
touches results/ or the documents."""
import json
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import script

ROOT = Path(__file__).resolve().parents[2]


def doc(name):
    return (ROOT / name).read_text()


def block(name, text):
    return f"<!-- results:{name}:begin -->\n{text}<!-- results:{name}:end -->"


def test_setting_blocks_equal_committed_summaries():
    import report
    summary = ROOT / "results" / "summary.json"
    if not summary.is_file():
        pytest.skip("no committed reference run")
    for concept, s in json.loads(summary.read_text()).items():
        assert json.loads((ROOT / "results" / concept / "summary.json").read_text()) == s
        if concept in ("toxicity", "bias", "harmfulness", "mixed"):
            assert block(concept, report.render_tables(s)) in doc("RESULTS.md"), concept


def test_figures_block_equals_committed_figure_json():
    import tables
    assert block("figures", tables.render_figures(ROOT / "results")) in doc("RESULTS.md")


def test_headline_equals_committed_claims_in_readme_and_results():
    import tables
    t2 = ROOT / "results" / "table2.json"
    if not t2.is_file():
        pytest.skip("no committed tables")
    text = tables.render_headline(json.loads(t2.read_text())["headline"])
    assert block("headline", text) in doc("README.md") and block("headline", text) in doc("RESULTS.md")
    assert (ROOT / "results" / "headline.md").read_text() == text


def test_precision_blocks_equal_what_precision_py_renders(tmp_path):
    """RESULTS.md's two precision blocks are experiments/precision.py's output on the committed runs, as run.sh has it."""
    r = ROOT / "results"
    seeds = f"{r}/toxicity,{r}/seeds/toxicity-s1,{r}/seeds/toxicity-s2"
    for name, a, b, out in (("precision", "precision/toxicity-fp32", "precision/toxicity-bf16", "compare"),
                            ("precision_processor", "toxicity", "precision/toxicity-fp32", "processor")):
        if not (r / a / "summary.json").is_file() or not (r / b / "summary.json").is_file():
            continue
        text = script("precision.py", "--a", r / a, "--b", r / b, "--seeds", seeds, "--out", tmp_path / out, "--doc", "")
        assert text == f"{(tmp_path / out).with_suffix('.md').read_text()}\n"
        assert block(name, (tmp_path / out).with_suffix(".md").read_text()) in doc("RESULTS.md"), name
        assert (r / "precision" / f"{out}.md").read_text() == (tmp_path / out).with_suffix(".md").read_text(), name


def test_bench_and_cost_blocks_equal_committed_json():
    import bench
    import cost
    for name, mod in (("bench", bench), ("cost", cost)):
        path = ROOT / "results" / f"{name}.json"
        if path.is_file():
            assert block(name, mod.render_table(json.loads(path.read_text()))) in doc("PERFORMANCE.md"), name


def test_readme_is_short_and_generated_blocks_live_elsewhere():
    readme = doc("README.md")
    assert len(readme.splitlines()) <= 250
    names = {line.split(":")[1] for line in readme.splitlines() if line.startswith("<!-- results:")}
    assert names == {"headline"}


def test_reporting_imports_no_torch():
    """`bash run.sh tables` on a machine without torch: the tables, figures and reports import none of it."""
    code = ("import sys; sys.modules['torch'] = None; sys.path[:0] = ['.', 'experiments']\n"
            "import tables, figures, report, metrics\n"
            "assert 'transformers' not in sys.modules")
    p = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr


def snapshot():
    """Every file under results/ and the three documents, as bytes."""
    files = [*sorted((ROOT / "results").rglob("*")), ROOT / "README.md", ROOT / "RESULTS.md", ROOT / "PERFORMANCE.md"]
    return {str(f): f.read_bytes() for f in files if f.is_file()}


def test_own_model_recipe_leaves_results_and_documents_alone(tiny_dir, tmp_path, monkeypatch):
    """README's "Your own model" commands, on the tiny model, from the repository root: the report goes beside the
    run; results/ and the documents are byte for byte as committed. Then a report over one of another experiment
    (here: another model) is refused without --overwrite."""
    import common
    monkeypatch.chdir(ROOT)
    before = snapshot()
    run = tmp_path / "mine"
    script("data.py", "--concept", "toxicity", "--out", run, "--n", "24", "--n-safety", "16", "--n-eval", "6")
    script("ff.py", "--run", run, "--model", tiny_dir, "--epochs", "1", "--safety-steps", "1", "2", "--lr", "1e-3",
           "--max-new-tokens-text", "6", "--max-new-tokens-qa", "6", "--gen-batch-size", "8", "--baselines", "none")
    script("eval.py", "--run", run, "--max-new-tokens", "6")
    script("report.py", "--run", run)
    path = run / "report" / "mine" / "summary.json"
    assert path.is_file() and snapshot() == before

    s = json.loads(path.read_text())
    path.write_text(json.dumps(dict(s, model="HuggingFaceTB/SmolLM2-135M-Instruct")))  # a reference run's
    with pytest.raises(common.UserError, match="holds a run of another experiment.*--overwrite"):
        script("report.py", "--run", run)
    assert json.loads(path.read_text())["model"] == "HuggingFaceTB/SmolLM2-135M-Instruct"  # untouched
    script("report.py", "--run", run, "--overwrite")
    assert json.loads(path.read_text())["model"] == s["model"]
    script("report.py", "--run", run)  # the same experiment again: replaced without a word
    s = json.loads(path.read_text())
    del s["data"]["config"]["source"]  # a report made before --source existed: the offline data, the same experiment
    path.write_text(json.dumps(s))
    script("report.py", "--run", run)
