#!/usr/bin/env bash
# ForgetFilter end to end: build the data, learn -> forget -> filter -> retrain, evaluate, report. One command on a
# fresh machine:
#
#     bash run.sh                 # toxicity (the default); CPU: embedded SmolLM2-135M-Instruct, offline
#     bash run.sh bias            # BBQ bias; `bash run.sh toxicity bias` runs both, one after the other
#
# On CUDA the same command runs the GPU preset below (SmolLM2-1.7B-Instruct + LoRA; downloads the model once).
# Each stage prints its own wall time. Outputs: runs/<concept>/ (checkpoints, scores, rows; not committed) and
# results/<concept>/ (summary.json, table.md, forgetting.png, per-example rows), results/summary.json, and the
# concept's table in README.md.
set -euo pipefail
cd "$(dirname "$0")"
bash setup.sh                      # 0) .venv with the pinned packages; does nothing the second time
PY=.venv/bin/python

if $PY -c "import sys, torch; sys.exit(not torch.cuda.is_available())"; then
  # GPU preset: more data, a 1.7B model with the paper's LoRA (r 8, alpha 16, q_proj/v_proj), lr 2e-4, batch 32.
  DATA_ARGS=(--n 1000 --n-safety 500 --n-eval 300)
  FF_ARGS=(--model HuggingFaceTB/SmolLM2-1.7B-Instruct --lora --lr 2e-4 --safety-lr 2e-4 --epochs 3
           --batch-size 32 --micro-batch-size 16 --gen-batch-size 64 --max-new-tokens-text 64 --max-new-tokens-qa 96)
  EVAL_ARGS=(--gen-batch-size 64 --max-new-tokens 64)
else
  # CPU default: sized to finish the toxicity table in about 30 minutes on 2 cores (see DEVIATIONS.md).
  DATA_ARGS=()
  FF_ARGS=()
  EVAL_ARGS=()
fi

for concept in "${@:-toxicity}"; do
  RUN=runs/$concept
  # 1) the noisy mixture (50% unsafe), the safety set and the held-out evaluation sets     (seconds)
  $PY data.py --concept "$concept" --out "$RUN" "${DATA_ARGS[@]}"
  # 2) Algorithm 1: M1 = M0 + D_noisy; safety finetuning t = 10/25/50 steps; forgetting per example; one filter
  #    per signal; FF = M0 + D_kept. Also the control (the same safety finetuning applied to M0) (about 25 min on CPU)
  $PY ff.py --run "$RUN" "${FF_ARGS[@]}"
  # 3) safety metrics and SQuAD for M0, +Downstream, +SafetyFT and FF; the report          (about 4 min on CPU)
  $PY eval.py --run "$RUN" "${EVAL_ARGS[@]}"
done
