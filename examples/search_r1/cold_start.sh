#!/usr/bin/env bash
# Cold start, then GRPO, on the CPU: SmolLM2-135M-Instruct learns Search-R1's protocol from the Search env's
# scripted expert (agentrl sft on its demonstrations), then GRPO with the exact-match reward, evaluated
# greedily on 105 test-split questions (unseen subjects, 15 of each single-hop type) and on 50 questions
# of two held-out types. Prints a table with binomial standard errors and writes OUT/report.md and
# OUT/success.png.
#
#   bash examples/search_r1/cold_start.sh                 # OUT=runs/cold_start
#   CONTROL=1 bash examples/search_r1/cold_start.sh       # also a GRPO run on rewards shuffled per group
#
# Set AGENTRL to another agentrl command (e.g. "python -m agentrl") if it is not on PATH.
set -euo pipefail
cd "$(dirname "$0")/../.."
OUT=${OUT:-runs/cold_start}
A=${AGENTRL:-agentrl}
PY=${PYTHON:-python}
DEMOS=${DEMOS:-96}
ROLLOUTS=${ROLLOUTS:-5}
mkdir -p "$OUT"
SECONDS=0
stage() { echo "== $1 ($((SECONDS / 60)) min $((SECONDS % 60)) s)"; }
quiet=(--no-progress)
budget=(--max-new-tokens 48)

stage "demonstrations: the Search expert on $DEMOS random single-hop training questions"
$A rollout --env search --env-kwargs '{"hops": 1}' --policy expert --num-tasks "$DEMOS" --shuffle-tasks \
  --n-samples-per-prompt 1 --max-turns 3 --out "$OUT/demos.jsonl" "${quiet[@]}"

stage "the base model on the test questions"
$A eval --suite search-1hop-test --model smollm2-135m "${budget[@]}" --out "$OUT/eval_base" "${quiet[@]}"

stage "supervised fine-tuning on the demonstrations"
$A sft --data "$OUT/demos.jsonl" --lr 1e-4 --global-batch-size 16 --log-dir "$OUT/sft" "${quiet[@]}"

grpo() {  # $1: log dir, then extra flags. Evaluates the SFT policy at step 0 and its own at the end.
  local dir=$1
  shift
  $A train --suite search-1hop-train --eval-split test --eval-episodes 105 --model "$OUT/sft/hf_model" \
    "${budget[@]}" --num-rollouts "$ROLLOUTS" --rollout-batch-size 4 --n-samples-per-prompt 4 \
    --global-batch-size 16 --over-sample 3 --lr 2e-5 --log-dir "$dir" "${quiet[@]}" "$@"
}
stage "GRPO from the fine-tuned policy, exact-match reward"
grpo "$OUT/grpo"
if [ "${CONTROL:-0}" = 1 ]; then
  stage "control: the same GRPO run on rewards shuffled within each group"
  grpo "$OUT/grpo_shuffled" --debug-shuffle-rewards
fi

stage "held-out question types"
$A eval --suite search-1hop-heldout --model "$OUT/sft/hf_model" "${budget[@]}" --out "$OUT/heldout_sft" "${quiet[@]}"
$A eval --suite search-1hop-heldout --model "$OUT/grpo/hf_model" "${budget[@]}" --out "$OUT/heldout_grpo" "${quiet[@]}"

stage "report"
$PY examples/search_r1/cold_start_report.py "$OUT"
echo "total: $((SECONDS / 60)) min $((SECONDS % 60)) s"
