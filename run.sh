#!/usr/bin/env bash
# ForgetFilter end to end: build the data, learn -> forget -> filter -> retrain, evaluate, report. One command on a
# fresh machine:
#
#     bash run.sh                      # all four settings: toxicity, bias, harmfulness, mixed
#     bash run.sh bias                 # one setting (or several: `bash run.sh toxicity mixed`)
#
# CPU: the embedded SmolLM2-135M-Instruct, offline. On CUDA the same command runs the GPU preset below
# (SmolLM2-1.7B-Instruct + LoRA; downloads the model once). Each stage prints its own wall time. Outputs:
# runs/<setting>/ (checkpoints, scores, rows; not committed) and results/<setting>/ (summary.json, table.md,
# forgetting.png, per-example rows), results/summary.json, and the setting's table in README.md.
set -euo pipefail
cd "$(dirname "$0")"
SETTINGS=("$@")
[[ ${#SETTINGS[@]} -gt 0 ]] || SETTINGS=(toxicity bias harmfulness mixed)
for concept in "${SETTINGS[@]}"; do  # check every name before hours of work start
  case $concept in toxicity|bias|harmfulness|mixed) ;;
    *) echo "error: unknown setting '$concept'; choose from toxicity, bias, harmfulness, mixed" >&2; exit 2 ;;
  esac
done
bash setup.sh                      # 0) .venv with the pinned packages; does nothing the second time
PY=.venv/bin/python

GPU=
if $PY -c "import sys, torch; sys.exit(not torch.cuda.is_available())"; then
  GPU=1
  # GPU preset: more data, a 1.7B model with the paper's LoRA (r 8, alpha 16, q_proj/v_proj), lr 2e-4, batch 32.
  DATA_ARGS=(--n 1000 --n-safety 500 --n-eval 300)
  FF_ARGS=(--model HuggingFaceTB/SmolLM2-1.7B-Instruct --lora --lr 2e-4 --safety-lr 2e-4 --epochs 3
           --batch-size 32 --micro-tokens 8192 --gen-batch-size 64 --max-new-tokens-text 64 --max-new-tokens-qa 96)
  EVAL_ARGS=(--gen-batch-size 64 --max-new-tokens 64)
else
  # CPU default (2 cores): toxicity at full size (N 160, t = 10/25/50; about 18 min). BBQ prompts are 2.5x longer
  # than toxicity texts, so bias, harmfulness and mixed are cut to N 96 and t = 10/25 (see README for times).
  DATA_ARGS=()
  FF_ARGS=()
  EVAL_ARGS=()
fi
small() { [[ -z "${GPU:-}" && "$1" != toxicity ]]; }  # the CPU cut for every setting but toxicity
for concept in "${SETTINGS[@]}"; do
  RUN=runs/$concept
  START=$(date +%s)  # report.py reports the end-to-end time of the setting from here
  CUT_DATA=() CUT_FF=()
  if small "$concept"; then CUT_DATA=(--n 96) CUT_FF=(--safety-steps 10 25); fi
  # 1) the noisy mixture (50% unsafe), the safety set and the held-out evaluation sets     (seconds)
  $PY data.py --concept "$concept" --out "$RUN" "${DATA_ARGS[@]}" "${CUT_DATA[@]}"
  # 2) Algorithm 1: M1 = M0 + D_noisy; safety finetuning t = 10/25/50 steps (10/25 in the CPU cut); forgetting per
  #    example; one filter per signal; FF = M0 + D_kept. Also the control: the same safety finetuning applied
  #    to M0                                                                                  (CPU: 11-22 min)
  $PY ff.py --run "$RUN" --phi 0.1 --phi-nll 0.5 "${FF_ARGS[@]}" "${CUT_FF[@]}"
  # 3) the filter's quality; safety metrics and SQuAD for M0, +Downstream, +SafetyFT, FF, FF-nll, SC, FF+SC
  #                                                                                          (CPU: 3-6 min)
  $PY eval.py --run "$RUN" "${EVAL_ARGS[@]}"
  # 4) the report: results/<setting>/, results/summary.json, README's table (from the saved outputs only)
  $PY report.py --run "$RUN" --started "$START"
done
