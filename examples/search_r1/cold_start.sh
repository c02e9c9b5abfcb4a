#!/usr/bin/env bash
# Cold start, then GRPO, on the CPU: SmolLM2-135M-Instruct learns Search-R1's protocol from the Search env's
# scripted expert (agentrl sft on its demonstrations), then GRPO with the exact-match reward, evaluated
# greedily on 105 test-split questions (unseen subjects, 15 of each single-hop type) and on 50 questions
# of two held-out types. Prints a table with binomial standard errors and writes OUT/report.md and
# OUT/success.png.
#
#   bash examples/search_r1/cold_start.sh                 # OUT=runs/cold_start
#   CONTROL=1 bash examples/search_r1/cold_start.sh       # also a GRPO run on rewards shuffled per group
#   GPU=1 bash examples/search_r1/cold_start.sh           # one GPU: all 271 single-hop test questions, a
#                                                         # longer GRPO run (larger groups and batches)
#
# Every stage whose output exists is skipped, and the GRPO stage checkpoints (OUT/grpo_ckpt) and resumes:
# on a machine lent in time slices set DEADLINE_S (seconds for this whole command; the GRPO stage gets what
# the earlier stages left, less 90 s for the held-out evaluations, and stops cleanly, evaluated and
# exported, before a rollout it could not finish; GRPO_TIME_S sets its budget directly) and run the same
# command again to continue.
#
# MODEL (default smollm2-135m) is the policy to start from. Set AGENTRL to another agentrl command (e.g. "python -m agentrl") if it is not on PATH.
set -euo pipefail
cd "$(dirname "$0")/../.."
OUT=${OUT:-runs/cold_start}
A=${AGENTRL:-agentrl}
MODEL=${MODEL:-smollm2-135m}
PY=${PYTHON:-python}
DEMOS=${DEMOS:-96}
ENGINE_FLAGS=() TRAINER_FLAGS=()
if [ "${GPU:-0}" = 1 ]; then
  ROLLOUTS=${ROLLOUTS:-60}
  EVAL_EPISODES=${EVAL_EPISODES:-271}  # every single-hop test question (the split holds 271)
  GRPO_FLAGS=(--rollout-batch-size 32 --n-samples-per-prompt 8 --global-batch-size 64 --over-sample 2
              --steps-per-rollout 4 --lr 2e-5 --eval-interval 10 --save-interval 5 --max-concurrency 256)
else
  ROLLOUTS=${ROLLOUTS:-16}
  EVAL_EPISODES=${EVAL_EPISODES:-105}  # 15 of each type
  GRPO_FLAGS=(--rollout-batch-size 4 --n-samples-per-prompt 4 --global-batch-size 16 --over-sample 3 --lr ${LR:-3e-5})
  # bf16 on CPUs that have it (AVX-512 BF16 / AMX): the engine decodes ~1.5x and the trainer steps ~1.9x
  # faster; the engine gets every core (eval runs it alone; training's phases take turns).
  if grep -qE 'avx512_bf16|amx_bf16' /proc/cpuinfo 2>/dev/null; then
    ENGINE_FLAGS=(--engine-dtype bfloat16 --engine-threads "$(nproc)")
    TRAINER_FLAGS=(--cpu-bf16)
  fi
fi
mkdir -p "$OUT"
SECONDS=0
stage() { echo "== $1 ($((SECONDS / 60)) min $((SECONDS % 60)) s)"; }
quiet=(--no-progress)
budget=(--max-new-tokens 48 "${ENGINE_FLAGS[@]}")

done_or() { [ -e "$1" ] && echo "   (done: $1)"; }

stage "demonstrations: the Search expert on $DEMOS random single-hop training questions"
done_or "$OUT/demos.jsonl" || $A rollout --env search --env-kwargs '{"hops": 1}' --policy expert --num-tasks "$DEMOS" --shuffle-tasks \
  --n-samples-per-prompt 1 --max-turns 3 --model "$MODEL" --out "$OUT/demos.jsonl" "${quiet[@]}"

stage "the base model on the test questions"
done_or "$OUT/eval_base/report.json" || $A eval --suite search-1hop-test --model "$MODEL" "${budget[@]}" --out "$OUT/eval_base" "${quiet[@]}"

stage "supervised fine-tuning on the demonstrations"
done_or "$OUT/sft/hf_model/config.json" || $A sft --data "$OUT/demos.jsonl" --model "$MODEL" --lr 1e-4 --global-batch-size 16 --log-dir "$OUT/sft" "${quiet[@]}" \
  "${TRAINER_FLAGS[@]}"

grpo() {  # $1: log dir, then extra flags. Evaluates the SFT policy at step 0 and its own at the end.
  local dir=$1 resume=()
  shift
  [ -e "${dir}_ckpt/latest" ] && resume=(--resume)
  local budget_s=${GRPO_TIME_S:-0}
  if [ -n "${DEADLINE_S:-}" ] && [ -z "${GRPO_TIME_S:-}" ]; then budget_s=$((DEADLINE_S - SECONDS - 90)); fi
  $A train --suite search-1hop-train --eval-split test --eval-episodes "$EVAL_EPISODES" \
    --model "$OUT/sft/hf_model" "${budget[@]}" --num-rollouts "$ROLLOUTS" "${GRPO_FLAGS[@]}" \
    --save "${dir}_ckpt" --time-limit-s "$budget_s" --log-dir "$dir" "${resume[@]}" "${quiet[@]}" \
    "${TRAINER_FLAGS[@]}" "$@"
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
