"""Every numeric and choice option of every script, generated from the Config dataclasses themselves (a new option is
covered the day it is added): a value outside its declared range, or outside its choices, gives one line on stderr
and exit 2 before any work starts."""
import contextlib
import dataclasses
import importlib
import io
import sys
from unittest import mock

import pytest

from common import main_guard

SCRIPTS = ["data", "ff", "eval", "plots", "ablate", "figures", "report", "tables", "rounds", "bench", "cost", "smoke"]


def numeric(f):
    d = f.default if f.default is not dataclasses.MISSING else f.default_factory()
    x = d[0] if isinstance(d, list) else d
    return isinstance(x, (int, float)) and not isinstance(x, bool), isinstance(d, list), type(x)


def bad_values(f):
    """Values outside what field f declares: below lo, at gt, above hi, at lt (and NaN for a float), or no choice."""
    m = f.metadata
    is_num, is_list, kind = numeric(f)
    out = []
    if m.get("choices") is not None:
        out.append("nosuch")
    if is_num:
        if m.get("lo") is not None:
            out.append(kind(m["lo"] - 1))
        if m.get("gt") is not None:
            out.append(kind(m["gt"]))
        if m.get("hi") is not None:
            out.append(kind(m["hi"] + 1))
        if m.get("lt") is not None:
            out.append(kind(m["lt"]))
        if kind is float:
            out.append("nan")
    return out


def cases():
    for name in SCRIPTS:
        for f in dataclasses.fields(importlib.import_module(name).Config):
            for v in bad_values(f):
                yield pytest.param(name, f.name, str(v), id=f"{name}--{f.name.replace('_', '-')}={v}")


def test_every_numeric_option_declares_its_range():
    missing = [f"{name} --{f.name.replace('_', '-')}" for name in SCRIPTS
               for f in dataclasses.fields(importlib.import_module(name).Config)
               if numeric(f)[0] and all(f.metadata.get(k) is None for k in ("lo", "hi", "gt", "lt"))]
    assert not missing, "numeric options without a declared range (opt(..., lo=, gt=, ...)): " + ", ".join(missing)


@pytest.mark.parametrize("script,option,value", list(cases()))
def test_a_bad_value_gives_one_line_and_exit_2(script, option, value, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # nothing a script might write lands in the checkout
    module = importlib.import_module(script)
    flag = "--" + option.replace("_", "-")
    err = io.StringIO()
    with mock.patch.object(sys, "argv", [script + ".py", flag, value]), contextlib.redirect_stderr(err), \
            pytest.raises(SystemExit) as e:
        main_guard(module.main)
    lines = err.getvalue().strip().splitlines()
    assert e.value.code == 2 and len(lines) == 1 and flag in lines[0], err.getvalue()
    assert not any(tmp_path.iterdir())  # refused before anything was written


def test_the_walk_covers_the_options_the_issue_found():
    ids = {(s, o, v) for s, o, v in (p.values for p in cases())}
    for case in [("ff", "lora_r", "0"), ("ff", "lora_dropout", "1.0"), ("ff", "gen_batch_size", "0"),
                 ("eval", "gen_batch_size", "0"), ("ff", "device", "nosuch"), ("ff", "max_new_tokens_qa", "0")]:
        assert case in ids
