#!/usr/bin/env bash
# Run the GPU tier (tests/gpu) and the Megatron benchmark on a CUDA machine.
# megatron-core (and mbridge) come as wheels in .whl/ (downloaded where a package index is reachable:
#   pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
#     --platform manylinux_2_28_x86_64 -d .whl megatron-core==0.19.2 mbridge
# ) and are installed into a scratch site dir, so the machine's own torch stays untouched.
# Results go to ${OUT:-out/gpu}: pytest log, JSON lines of the reported numbers, benchmark table.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/gpu_env.sh
rm -f "$AGENTRL_GPU_RESULTS"
python3 -c 'import torch, transformers, megatron.core as m; print("torch", torch.__version__, "transformers", transformers.__version__, "megatron-core", m.__version__)' | tee -a "$OUT/device.txt"
status=0
python3 -m pytest -m gpu tests/gpu -p no:cacheprovider -p no:logging -o addopts="" -q -s "$@" 2>&1 | tee "$OUT/pytest.log" || status=$?
if [ "${AGENTRL_SKIP_BENCH:-0}" != 1 ]; then
  python3 bench/megatron.py --json "$OUT/bench.jsonl" ${AGENTRL_BENCH_ARGS:-} 2>&1 | tee "$OUT/bench.log" || status=$?
fi
exit $status
