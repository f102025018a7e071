#!/usr/bin/env bash
# ForgetFilter end to end, for the toxicity concept: build the data, learn -> forget -> filter -> retrain, evaluate,
# report. One command on a fresh machine:
#
#     bash run.sh        # CPU: embedded SmolLM2-135M-Instruct, offline, about 30 min on 2 cores
#                        # CUDA: the GPU preset below (SmolLM2-1.7B-Instruct + LoRA; downloads the model once)
#
# Each stage prints its own wall time. Outputs: runs/toxicity/ (checkpoints, scores, rows; not committed) and
# results/ (summary.json, table.md, forgetting.png, per-example rows) plus the table in README.md.
set -euo pipefail
cd "$(dirname "$0")"
bash setup.sh                      # 0) .venv with the pinned packages; does nothing the second time
PY=.venv/bin/python
RUN=${RUN:-runs/toxicity}

if $PY -c "import sys, torch; sys.exit(not torch.cuda.is_available())"; then
  # GPU preset: more data, a 1.7B model with the paper's LoRA (r 8, alpha 16, q_proj/v_proj), lr 2e-4, batch 32.
  DATA_ARGS=(--n 1000 --n-safety 500 --n-eval 300)
  FF_ARGS=(--model HuggingFaceTB/SmolLM2-1.7B-Instruct --lora --lr 2e-4 --safety-lr 2e-4 --epochs 3
           --batch-size 32 --micro-batch-size 16 --gen-batch-size 64 --max-new-tokens-text 64 --max-new-tokens-qa 96)
  EVAL_ARGS=(--gen-batch-size 64 --max-new-tokens 64)
else
  # CPU default: sized to finish in about 30 minutes on 2 cores (DEVIATIONS.md says how it differs from the paper).
  DATA_ARGS=()
  FF_ARGS=()
  EVAL_ARGS=()
fi

# 1) the noisy mixture (50% toxic), the safety set and the held-out evaluation sets      (seconds)
$PY data.py --out "$RUN" "${DATA_ARGS[@]}"
# 2) Algorithm 1: M1 = M0 + D_noisy; safety finetuning t = 10/25/50 steps; forgetting per example; the filter;
#    FF = M0 + D_kept. Also the control (the same safety finetuning applied to M0)       (about 20 min on CPU)
$PY ff.py --run "$RUN" "${FF_ARGS[@]}"
# 3) toxicity, degenerate rate and SQuAD for M0, +Downstream, +SafetyFT and FF; the report (about 5 min on CPU)
$PY eval.py --run "$RUN" "${EVAL_ARGS[@]}"
