#!/usr/bin/env bash
# ForgetFilter end to end: build the data, learn -> forget -> filter -> retrain, evaluate, report. One command on a
# fresh machine:
#
#     bash run.sh                      # the four settings at seed 0: toxicity, bias, harmfulness, mixed (CPU ~2.5 h)
#     bash run.sh bias                 # one setting (or several: `bash run.sh toxicity mixed`)
#     bash run.sh paper                # everything the paper's tables and figures need (CPU ~9 h): the four
#                                      # settings, seeds 1 and 2 of toxicity, harmfulness and bias, the filter at
#                                      # 25 / 75 % unsafe for toxicity, bias and harmfulness, ablations, rounds, size,
#                                      # tables
#     bash run.sh seeds                # part of paper: seeds 1 and 2 of toxicity and harmfulness (CPU ~1.8 h; on
#                                      # a GPU of all four settings)
#     bash run.sh seeds/bias-s1        # seeds/<concept>-s<seed>: one setting at one more seed (CPU: 30-55 min)
#     bash run.sh ratios               # part of paper: the filter at 25 / 75 % unsafe, no FF (CPU ~1 h)
#     bash run.sh tables               # Tables 1 and 2, the claims, the headline and every figure again, from
#                                      # results/ only
#     bash run.sh ablations            # the paper's Fig 8: the filter against t, phi, |D_safe| and its domain, on
#                                      # toxicity and harmfulness (CPU ~15 min each; their M1 and scores first when
#                                      # runs/ lacks them, ~10 min each)
#     bash run.sh rounds               # the paper's Fig 5: 2 interleaved rounds, sequential safety vs FF (CPU ~35 min)
#     bash run.sh size                 # the forgetting gap against model size; on CPU only the embedded 135M point
#                                      # (the toxicity run's, else ~20 min); on a GPU SmolLM2 135M/360M/1.7B and
#                                      # GPT-2 M/L/XL from the hub
#     bash run.sh precision            # the CPU precision's effect: toxicity at seed 0 in fp32 and in bf16 on this
#                                      # machine, compared cell by cell with the seed spread (CPU: 20-40 min each)
#     bash run.sh smoke                # the GPU check, offline: the whole chain on a random model of the preset's
#                                      # architecture at small N, timed -> results/smoke_<device>.json (CPU: tiny)
#     bash run.sh --check paper        # what every data build of the targets would be (sizes, caps), nothing run;
#                                      # every target checks this first and stops on an impossible build
#
# CPU: the embedded SmolLM2-135M-Instruct, offline. On CUDA the same command runs the GPU preset below
# (SmolLM2-1.7B-Instruct + LoRA; downloads the model once). Each stage prints its own wall time; finished stages are
# skipped when a target runs again. Outputs: runs/<name>/ (checkpoints, scores, rows; not committed) and
# results/<name>/ (summary.json, table.md, forgetting.png, per-example rows), results/summary.json, the setting's
# block in RESULTS.md; `paper` and `tables` add results/table1.*, table2.*, headline.md, RESULTS.md's tables and
# README's headline. On CUDA the reports go to results/gpu/ and no document is rewritten.
set -euo pipefail
cd "$(dirname "$0")"
if [[ ${1:-} == -h || ${1:-} == --help ]]; then sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0; fi
CHECK_ONLY=; [[ ${1:-} == --check ]] && { CHECK_ONLY=1; shift; }
TARGETS=("$@")
[[ ${#TARGETS[@]} -gt 0 ]] || TARGETS=(toxicity bias harmfulness mixed)
for t in "${TARGETS[@]}"; do  # check every name before hours of work start
  case $t in toxicity|bias|harmfulness|mixed|paper|seeds|ratios|tables|ablations|rounds|size|precision|smoke) ;;
    seeds/toxicity-s[0-9]*|seeds/bias-s[0-9]*|seeds/harmfulness-s[0-9]*|seeds/mixed-s[0-9]*)
      [[ ${t##*-s} =~ ^[0-9]+$ ]] || { echo "error: target '$t': the seed after -s must be a number" >&2; exit 2; } ;;
    *) echo "error: unknown target '$t'; choose from toxicity, bias, harmfulness, mixed, paper, seeds, ratios," \
            "tables, ablations, rounds, size, smoke or seeds/<concept>-s<seed> (bash run.sh --help says what each" \
            "does)" >&2; exit 2 ;;
  esac
done
bash setup.sh                      # 0) .venv with the pinned packages; does nothing the second time
PY=.venv/bin/python

GPU=
if $PY -c "import sys, torch; sys.exit(not torch.cuda.is_available())"; then
  GPU=1
  # The GPU preset (common.GPU_PRESET, the one copy): more data, a 1.7B model with the paper's LoRA, lr 2e-4,
  # batch 32. FF_MODEL=Qwen/Qwen2.5-7B-Instruct bash run.sh: the 7B preset (PERFORMANCE.md), same options.
  preset() { $PY -c "import common; print('\n'.join(common.GPU_PRESET['$1']))"; }
  mapfile -t DATA_ARGS < <(preset data)
  mapfile -t FF_ARGS < <(preset ff)
  FF_ARGS+=(--model "${FF_MODEL:-$($PY -c 'import common; print(common.GPU_MODEL)')}")
  mapfile -t EVAL_ARGS < <(preset eval)  # scorer: Detoxify 'original' (setup.sh installs it on CUDA)
  # The committed record is the CPU reference: a GPU run reports under results/gpu/ and rewrites no document.
  RESULTS=results/gpu DOC=
  # The paper's own data through `datasets` when the hub answers; else the offline files, said so.
  if $PY -c "from huggingface_hub import dataset_info; dataset_info('declare-lab/HarmfulQA')" >/dev/null 2>&1; then
    DATA_ARGS+=(--source hub) HUB=1
  else
    echo "run.sh: the hub does not answer: the GPU preset reads the offline data in data/ (DEVIATIONS.md)" >&2
  fi
  ABLATION_CONCEPTS=(toxicity bias harmfulness mixed) ROUND_CONCEPTS=(toxicity bias) ROUNDS=3 ROUND_N=333
  SEED_CONCEPTS=(toxicity bias harmfulness mixed) PAPER_SEEDS=()
  SIZE_MODELS=(HuggingFaceTB/SmolLM2-135M-Instruct HuggingFaceTB/SmolLM2-360M-Instruct
               HuggingFaceTB/SmolLM2-1.7B-Instruct gpt2-medium gpt2-large gpt2-xl)
else
  # CPU default (2 cores): toxicity at full size (N 160, t = 10/25/50; about 40 min). BBQ prompts are 2.5x longer
  # than toxicity texts, so bias, harmfulness and mixed are cut to N 96 and t = 10/25 (RESULTS.md has the times).
  DATA_ARGS=()
  FF_ARGS=()
  EVAL_ARGS=()
  RESULTS=results DOC=RESULTS.md  # the committed reference runs and their tables in RESULTS.md
  ABLATION_CONCEPTS=(toxicity harmfulness) ROUND_CONCEPTS=(toxicity) ROUNDS=2 ROUND_N=160
  SEED_CONCEPTS=(toxicity harmfulness)  # bias and mixed take 45-55 min a seed: one at a time, seeds/bias-s1
  PAPER_SEEDS=(seeds/bias-s1 seeds/bias-s2)  # the bias seeds the committed tables read
  SIZE_MODELS=(smollm2-135m)  # the embedded model: the other sizes need the hub and a GPU
fi
EXTRA_FF=()
# FF_PRECISION=bf16 bash run.sh: every run at that precision instead of ff.py's auto (fp32 on CPU, RESULTS.md)
[[ -z ${FF_PRECISION:-} ]] || EXTRA_FF+=(--precision "$FF_PRECISION")
small() { [[ -z "${GPU:-}" && "$1" != toxicity ]]; }  # the CPU cut for every setting but toxicity
cut_data() {  # CUT_DATA for concept $1: the CPU cut, or the GPU preset's harmfulness sizes
  CUT_DATA=()
  if small "$1"; then CUT_DATA=(--n 96); fi
  if [[ -n ${GPU:-} && $1 == harmfulness ]]; then  # HarmBench has 200 held-out prompts, AdvBench 520 goals
    CUT_DATA=(--n-eval 200); [[ -n ${HUB:-} ]] || CUT_DATA+=(--n 300 --n-safety 200)
  fi
}

# builds <target>: "concept seed r [N]" for every data build the target makes (paper: those of all its targets)
builds() {
  case $1 in
    paper) for t in toxicity bias harmfulness mixed seeds "${PAPER_SEEDS[@]}" ratios rounds size; do builds "$t"; done ;;
    seeds) for c in "${SEED_CONCEPTS[@]}"; do for s in 1 2; do echo "$c $s 0.5"; done; done ;;
    seeds/*) c=${1#seeds/}; echo "${c%-s*} ${1##*-s} 0.5" ;;
    ratios) for c in toxicity harmfulness bias; do echo "$c 0 0.25"; echo "$c 0 0.75"; done ;;
    toxicity|bias|harmfulness|mixed|size) echo "${1/size/toxicity} 0 0.5" ;;
    precision) echo "toxicity 0 0.5" ;;
    rounds) for c in "${ROUND_CONCEPTS[@]}"; do  # rounds.py builds all its rounds' draws at once
      if small "$c"; then echo "$c 0 0.5 $((ROUNDS * 96))"; else echo "$c 0 0.5 $((ROUNDS * ROUND_N))"; fi; done ;;
  esac
}
if [[ -z ${RUN_SH_CHECKED:-} ]]; then  # every build is possible (or capped, said in one line) before any work starts
  while read -r c s r n; do
    cut_data "$c"
    printf 'run.sh: %s, seed %s, r %s%s | ' "$c" "$s" "$r" "${n:+, N $n}"
    $PY data.py --concept "$c" --seed "$s" --r "$r" "${DATA_ARGS[@]}" "${CUT_DATA[@]}" ${n:+--n "$n"} --check \
      || { echo "run.sh: the build above is impossible; nothing was run" >&2; exit 2; }
  done < <(for t in "${TARGETS[@]}"; do builds "$t"; done | sort -u)
  export RUN_SH_CHECKED=1
fi
[[ -z $CHECK_ONLY ]] || exit 0

# setting <name> <concept> <full | filter | scores> <seed> <unsafe ratio>: one run into runs/<name>, reported as
# results/<name> (scores: the control, M1, M2 and the forgetting scores, for the ablations; no FF, no evaluation, no report)
setting() {
  local name=$1 concept=$2 mode=$3 seed=$4 r=$5
  local RUN=runs/$name START CUT_DATA=() CUT_FF=() RETRAIN=()
  START=$(date +%s)  # report.py reports the end-to-end time of the run from here
  cut_data "$concept"
  if small "$concept"; then CUT_FF=(--safety-steps 10 25); fi
  [[ $mode == full ]] || RETRAIN=(--no-retrain)
  echo "=== $name: $concept, seed $seed, $r unsafe, $mode"
  # 1) the noisy mixture, the safety set and the held-out evaluation sets                          (seconds)
  $PY data.py --concept "$concept" --out "$RUN" --seed "$seed" --r "$r" "${DATA_ARGS[@]}" "${CUT_DATA[@]}"
  # 2) Algorithm 1: M1 = M0 + D_noisy; safety finetuning t = 10/25/50 steps (10/25 in the CPU cut); forgetting per
  #    example; one filter per signal (the paper's ROUGE first: FF); FF = M0 + D_kept; the compared conditions
  #    (Replay, random and oracle filter); the control (the same safety finetuning applied to M0)   (CPU: 20-35 min)
  $PY ff.py --run "$RUN" --seed "$seed" --phi 0.1 --phi-nll 0.5 --signals rouge nll "${RETRAIN[@]}" \
    "${FF_ARGS[@]}" "${CUT_FF[@]}" "${EXTRA_FF[@]}"
  [[ $mode == scores ]] && return
  # 3) the filter's quality; safety metrics and SQuAD for every condition                        (CPU: 4-8 min)
  if [[ $mode == full ]]; then $PY eval.py --run "$RUN" "${EVAL_ARGS[@]}"; else $PY eval.py --run "$RUN" --filter-only; fi
  # 4) the report: results/<name>/, results/summary.json, RESULTS.md's block (from the saved outputs only)
  $PY experiments/report.py --run "$RUN" --results "$RESULTS" --name "$name" --doc "$DOC" --started "$START"
}

# compare_precision: experiments/precision.py on the precision target's runs (fp32 against bf16), and the committed
# reference run against the fp32 one (two processors); the spread from the reference seeds. Skipped until they exist.
compare_precision() {
  local P=$RESULTS/precision S=$RESULTS/seeds f
  local SEEDS=$RESULTS/toxicity,$S/toxicity-s1,$S/toxicity-s2
  for f in "$P/toxicity-fp32" "$P/toxicity-bf16" "$RESULTS/toxicity" "$S/toxicity-s1" "$S/toxicity-s2"; do
    [[ -f $f/summary.json ]] || return 0
  done
  $PY experiments/precision.py --a "$P/toxicity-fp32" --b "$P/toxicity-bf16" --seeds "$SEEDS" --out "$P/compare" \
    --doc "$DOC" --block precision
  $PY experiments/precision.py --a "$RESULTS/toxicity" --b "$P/toxicity-fp32" --seeds "$SEEDS" --out "$P/processor" \
    --doc "$DOC" --block precision_processor
}

for t in "${TARGETS[@]}"; do
  case $t in
    paper) bash "$0" toxicity bias harmfulness mixed seeds "${PAPER_SEEDS[@]}" ratios ablations rounds size tables ;;
    seeds) for c in "${SEED_CONCEPTS[@]}"; do for s in 1 2; do setting "seeds/$c-s$s" "$c" full "$s" 0.5; done; done ;;
    seeds/*) c=${t#seeds/}; setting "$t" "${c%-s*}" full "${t##*-s}" 0.5 ;;
    ratios)
      for c in toxicity harmfulness bias; do  # the cheapest first
        setting "ratios/$c-r25" "$c" filter 0 0.25
        setting "ratios/$c-r75" "$c" filter 0 0.75
      done ;;
    tables) $PY experiments/figures.py && $PY experiments/tables.py && compare_precision ;;  # figures first: tables
      # reads size.json
    precision)
      SAVED_FF=("${EXTRA_FF[@]}")
      for p in fp32 bf16; do EXTRA_FF=(--precision "$p"); setting "precision/toxicity-$p" toxicity full 0 0.5; done
      EXTRA_FF=("${SAVED_FF[@]}")
      compare_precision ;;
    smoke) $PY measure/smoke.py ;;
    ablations)
      for c in "${ABLATION_CONCEPTS[@]}"; do  # reuse the setting's run when its M1 and scores are there, else
        # make only those (the stages resume: a later `bash run.sh <concept>` adds FF and the evaluation to them)
        [[ -f runs/$c/forgetting.jsonl && -d runs/$c/ckpt/m1 ]] || setting "$c" "$c" scores 0 0.5
        $PY experiments/ablate.py --run "runs/$c" --name "$c" --results "$RESULTS"
      done ;;
    rounds)
      for c in "${ROUND_CONCEPTS[@]}"; do  # --n: each round's draw (N of the settings split over the rounds)
        CUT=(); if small "$c"; then CUT=(--n 96 --safety-steps 10 25); fi
        $PY experiments/rounds.py --run "runs/rounds/$c" --concept "$c" --rounds "$ROUNDS" --phi 0.1 --phi-nll 0.5 \
          --name "rounds/$c" --results "$RESULTS" "${DATA_ARGS[@]}" --n "$ROUND_N" "${FF_ARGS[@]}" "${EVAL_ARGS[@]}" \
          "${CUT[@]}" "${EXTRA_FF[@]}"
      done ;;
    size)
      SAVED_FF=("${EXTRA_FF[@]}")
      for m in "${SIZE_MODELS[@]}"; do  # the filter only (no FF, no evaluation), toxicity at 50 % unsafe
        # the embedded model's point is the toxicity setting itself when its run recorded the model's size
        [[ $m == smollm2-135m ]] && grep -qs '"params": [0-9]' results/toxicity/summary.json && continue
        EXTRA_FF=("${SAVED_FF[@]}" --model "$m"); [[ $m == gpt2* ]] && EXTRA_FF+=(--lora)
        setting "size/toxicity-${m##*/}" toxicity filter 0 0.5
      done
      EXTRA_FF=("${SAVED_FF[@]}")
      $PY experiments/figures.py ;;
    *) setting "$t" "$t" full 0 0.5 ;;
  esac
done
