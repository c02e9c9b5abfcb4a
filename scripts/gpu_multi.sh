#!/usr/bin/env bash
# Multi-GPU checks of issue 8 on a machine with 2 GPUs (e.g. nvidia-h200-x2), in one call (< 8 min):
#   1. tests/gpu/test_megatron_tp.py under torchrun: Megatron TP=2 vs TP=1 logprobs and GRPO loss
#      (SmolLM2-135M and Qwen2.5-0.5B shapes, random init);
#   2. bench/placement.py: disaggregated vs colocated step time, weight-sync time, GPU idle fraction.
# megatron-core comes as a wheel in .whl/ (see scripts/gpu_tests.sh), installed into a scratch site dir.
# NCCL's NVLink multicast stays off (it can take a shared host's GPUs out of service).
# Results under ${OUT:-out/gpu}: tp.log, gpu_results.jsonl, placement_*.json, placement.md.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/gpu_env.sh
export AGENTRL_TP_TMP=${AGENTRL_TP_TMP:-${AGENTRL_CACHE:-$HOME/.cache/agentrl}/tp-tmp}
mkdir -p "$AGENTRL_TP_TMP"
status=0
timeout 300 python3 -m torch.distributed.run --nproc-per-node 2 -m pytest -m gpu tests/gpu/test_megatron_tp.py \
  -p no:cacheprovider -p no:logging -o addopts="" -q -s 2>&1 | tee "$OUT/tp.log" || status=$?
for mode in disaggregated colocated; do
  timeout 150 python3 -m torch.distributed.run --nproc-per-node 2 bench/placement.py --mode "$mode" \
    --out "$OUT" ${AGENTRL_PLACEMENT_ARGS:-} 2>&1 | tee "$OUT/placement_$mode.log" || status=$?
done
python3 bench/placement.py --report "$OUT" | tee -a "$OUT/placement_table.txt" || status=$?
exit $status
