"""The toxicity scorer: auto means Detoxify where it is installed, else the offline classifier; an installed Detoxify
that fails to load stops the run (no silent change of scorer); Detoxify runs batched on the run's device."""
import sys
import types

import pytest

import eval as ev
from common import UserError


def fake_detoxify(monkeypatch, fails=False):
    calls = []

    class Detoxify:
        def __init__(self, kind, device="cpu", **kw):
            if fails:
                raise RuntimeError("no weights offline")
            calls.append(("init", kind, device))

        def predict(self, texts):
            calls.append(("predict", len(texts)))
            return {"toxicity": [0.5] * len(texts)}
    monkeypatch.setitem(sys.modules, "detoxify", types.SimpleNamespace(Detoxify=Detoxify))
    return calls


def test_auto_uses_detoxify_batched_on_the_device(monkeypatch):
    calls = fake_detoxify(monkeypatch)
    name, score = ev.load_scorer("auto", "cuda", batch_size=4)
    assert name == "detoxify-original" and score(["a"] * 10) == [0.5] * 10
    assert calls == [("init", "original", "cuda"), ("predict", 4), ("predict", 4), ("predict", 2)]


@pytest.mark.parametrize("name", ["auto", "detoxify"])
def test_an_installed_detoxify_that_fails_stops_the_run(monkeypatch, name):
    fake_detoxify(monkeypatch, fails=True)
    with pytest.raises(UserError, match="installed but does not load.*--scorer profanity-check"):
        ev.load_scorer(name)


def test_auto_without_detoxify_is_the_offline_classifier(monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "detoxify", None)  # import detoxify raises ImportError
    name, score = ev.load_scorer("auto")
    assert name.startswith("alt-profanity-check") and "not installed" in capsys.readouterr().out
    assert score(["you are an idiot", "have a nice day"])[0] > score(["have a nice day"])[0]
    with pytest.raises(UserError, match="not installed"):
        ev.load_scorer("detoxify")
