#!/usr/bin/env bash
# Search-R1, the paper's setting on one 8-GPU node: Qwen2.5-3B(-Instruct), Megatron-core training
# and SGLang rollout, GRPO with n=5, lr 1e-6, low-variance KL 0.001, 4 turns, 500-token responses,
# 512 prompts a rollout in mini-batches of 256 prompts (2 optimizer steps), NQ + HotpotQA train set,
# e5-base-v2 + FAISS over wiki-18 (or BM25) served by agentrl's retrieval server.
#
#   python examples/search_r1/prepare_data.py --source flashrag --out examples/search_r1/data
#   RETRIEVER_URL=http://127.0.0.1:8000/retrieve MODEL=/models/Qwen2.5-3B-Instruct \
#     bash examples/search_r1/run_qwen2.5_3b_8gpu.sh
#
# Start the retriever first (a GPU-free process), e.g.:
#   python -m agentrl.tools.retrieval.server --corpus wiki-18.jsonl --backend dense --encoder e5-base-v2 --port 8000
# "max turns 4" in the paper is 4 search rounds plus the answer: --max-turns 5 here (see agentrl/Search-v0).
# Parallelism: Megatron's own flags pass through --megatron-args (e.g.
# --megatron-args=--tensor-model-parallel-size=2); the default TP=PP=1 fits a 3B model on one H100/H200 per rank.
# The lr warms up over 28.5% of training, as Search-R1's lr_warmup_steps_ratio=0.285 (counted here in
# optimizer steps: 0.285 x 200 rollouts x 2 steps = 114), then stays constant.
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
: "${MODEL:?set MODEL to a Qwen2.5-3B(-Instruct) HF folder}"
RETRIEVER_URL=${RETRIEVER_URL:-http://127.0.0.1:8000/retrieve}
DATA=${DATA:-$HERE/data}
OUT=${OUT:-runs/search_r1_qwen2.5_3b}
export NCCL_NVLS_ENABLE=0   # NVLink multicast can take a shared host's GPUs out of service

agentrl train \
  --env search \
  --env-kwargs "{\"task_file\": \"$DATA/{split}.parquet\", \"retriever\": \"http\", \"retriever_url\": \"$RETRIEVER_URL\", \"topk\": 3}" \
  --split train --eval-split test \
  --model "$MODEL" --backend megatron --engine sglang --num-engines 4 \
  --sglang-mem-fraction-static 0.7 \
  --rollout-batch-size 512 --n-samples-per-prompt 5 --global-batch-size 1280 --steps-per-rollout 2 \
  --num-rollouts 200 \
  --max-turns 5 --max-new-tokens 500 --max-context 4096 --temperature 1.0 \
  --advantage-estimator grpo --lr 1e-6 --warmup-steps 114 --kl-coef 0.001 --kl-estimator low_var_kl \
  --clip-eps-low 0.2 --clip-eps-high 0.2 \
  --eval-interval 50 --eval-episodes 1000 \
  --save "$OUT/ckpt" --save-interval 50 --log-dir "$OUT/logs" \
  "$@"
