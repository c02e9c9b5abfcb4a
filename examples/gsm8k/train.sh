#!/usr/bin/env bash
# GRPO on GSM8K-style problems from a prompt file, scored by math-verify (--reward math), evaluated on two
# datasets before and after training: slime's first workflow with agentrl (docs/data.md).
#
#   bash examples/gsm8k/train.sh           # CPU, SmolLM2-135M-Instruct, a short run (minutes)
#   bash examples/gsm8k/train.sh --chat    # the same data written as chat messages
#
# Extra arguments go to `agentrl train` (e.g. --num-rollouts 40 --num-gpus 1 --model Qwen/Qwen2.5-0.5B-Instruct).
# Environment: PYTHON (default: python), MODEL (default: smollm2-135m), OUT (default: runs/gsm8k),
# DATA (default: OUT/data).
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
PYTHON=${PYTHON:-python}
OUT=${OUT:-runs/gsm8k}
CHAT=()
if [ "${1:-}" = "--chat" ]; then CHAT=(--chat); shift; fi
DATA=${DATA:-$OUT/data}

"$PYTHON" "$HERE/prepare_data.py" --out "$DATA" "${CHAT[@]}"
"$PYTHON" -m agentrl train \
  --model "${MODEL:-smollm2-135m}" \
  --prompt-data "$DATA/train.jsonl" --input-key question --label-key answer --reward math \
  --eval-prompt-data gsm "$DATA/gsm.jsonl" arith "$DATA/arith.jsonl" \
  --rollout-batch-size 4 --n-samples-per-prompt 4 --global-batch-size 16 --num-rollouts 4 \
  --max-new-tokens 96 --max-context 512 --eval-interval 2 \
  --log-dir "$OUT" "$@"
