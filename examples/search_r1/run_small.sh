#!/usr/bin/env bash
# Search-R1, small setting: SmolLM2-135M-Instruct, GRPO on the offline Search train split, retrieval over
# HTTP from agentrl's retrieval server, evaluation on the held-out split before and after training.
#
#   bash examples/search_r1/run_small.sh            # one GPU (embedded engine + torch backend on CUDA)
#   bash examples/search_r1/run_small.sh --cpu      # a two-rollout smoke run on CPU (what CI runs)
#
# Extra arguments go to `agentrl train` (e.g. --num-rollouts 40 --engine sglang).
# Environment: PYTHON (default: python), MODEL (default: smollm2-135m), OUT (default: runs/search_r1_small),
# RETRIEVER_PORT (default: a free port), DATA (a folder of prepare_data.py parquet files, read as
# DATA/{split}.parquet; default: the env's packaged offline splits).
# FORMAT_SCORES=1 adds Search-R1's partial credit for format (its compute_score_em: 0.2 for a wrong answer
# in a well-formed episode, 0.1 for an answer tag only, +0.1 when a retrieved passage held the answer).
# At exit the retriever's /health (with its query and batch counts) is saved to OUT/retriever_health.json.
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
PYTHON=${PYTHON:-python}
MODE=gpu
if [ "${1:-}" = "--cpu" ]; then MODE=cpu; shift; fi
OUT=${OUT:-runs/search_r1_small}
MODEL=${MODEL:-smollm2-135m}
mkdir -p "$OUT"

PORT=${RETRIEVER_PORT:-$("$PYTHON" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')}
"$PYTHON" -m agentrl.tools.retrieval.server --host 127.0.0.1 --port "$PORT" >"$OUT/retriever.log" 2>&1 &
SERVER=$!
finish() {
  "$PYTHON" -c "import httpx; print(httpx.get('http://127.0.0.1:$PORT/health').text)" \
    >"$OUT/retriever_health.json" 2>/dev/null || true
  kill $SERVER 2>/dev/null || true
}
trap finish EXIT
for _ in $(seq 1 120); do
  if "$PYTHON" -c "import httpx,sys; sys.exit(httpx.get('http://127.0.0.1:$PORT/health').status_code != 200)" 2>/dev/null; then
    break
  fi
  kill -0 $SERVER 2>/dev/null || { echo "retrieval server died; see $OUT/retriever.log" >&2; exit 1; }
  sleep 0.5
done

ENV_KWARGS="\"retriever\": \"http\", \"retriever_url\": \"http://127.0.0.1:$PORT/retrieve\""
if [ -n "${DATA:-}" ]; then ENV_KWARGS="$ENV_KWARGS, \"task_file\": \"$DATA/{split}.parquet\""; fi
if [ "${FORMAT_SCORES:-0}" = 1 ]; then
  ENV_KWARGS="$ENV_KWARGS, \"structure_format_score\": 0.2, \"final_format_score\": 0.1, \"retrieval_score\": 0.1"
fi
ENV_KWARGS="{$ENV_KWARGS}"
COMMON=(--env search --env-kwargs "$ENV_KWARGS" --split train --eval-split heldout --model "$MODEL"
        --max-turns 5 --save "$OUT/ckpt" --log-dir "$OUT/logs")
if [ "$MODE" = cpu ]; then
  ARGS=(--num-rollouts 2 --rollout-batch-size 2 --n-samples-per-prompt 2 --global-batch-size 4
        --max-new-tokens 32 --max-context 768 --eval-episodes 4 --save-interval 1 --no-progress)
else
  # GRPO n=8 with Search-R1's low-variance KL; a 135M model needs a larger lr than the paper's 1e-6 for 3B.
  # Measured on an H100 with the embedded engine: about 100 s a rollout (README.md, Results).
  ARGS=(--num-rollouts 12 --rollout-batch-size 8 --n-samples-per-prompt 8 --global-batch-size 64
        --max-new-tokens 96 --max-context 1536 --max-turns 4 --lr 1e-5 --kl-coef 0.001
        --kl-estimator low_var_kl --eval-interval 4 --eval-episodes 50 --save-interval 4
        --max-concurrency 64)
fi
set -x
"$PYTHON" -m agentrl train "${COMMON[@]}" "${ARGS[@]}" "$@"
