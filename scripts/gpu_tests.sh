#!/usr/bin/env bash
# Run the GPU tier (tests/gpu) and the Megatron benchmark on a CUDA machine.
# megatron-core, mbridge, and for the end-to-end train test gymnasium, docker, jsonschema (Ray needs it)
# and a pruned Ray, come in .whl/ (`bash scripts/gpu_tests.sh pack` fills it where a package index is
# reachable; about 24 MB) and are installed into a scratch site dir, so the machine's own torch stays untouched.
# Results go to ${OUT:-out/gpu}: pytest log, JSON lines of the reported numbers, benchmark table.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ "${1:-}" = pack ]; then  # here, where a package index is reachable: fill .whl/
  dl() { python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 -d "$@"; }
  dl .whl megatron-core==0.19.2 mbridge==0.15.1 gymnasium==1.4.0 farama-notifications==0.0.6 docker==7.2.0 \
    jsonschema==4.26.0 jsonschema-specifications==2025.9.1 referencing==0.37.0 rpds-py==2026.9.1 \
    bm25s==0.3.16 gguf==0.19.0
  if [ ! -f .whl/ray-2.60.0-pruned.tar.xz ]; then  # about 20 MB, executables kept (scripts/gpu_pack.py)
    tmp=$(mktemp -d)
    dl "$tmp" ray==2.60.0
    python3 scripts/gpu_pack.py ray "$tmp"/ray-*.whl .whl/ray-2.60.0-pruned.tar.xz
    rm -rf "$tmp"
  fi
  python3 scripts/gpu_pack.py check-ray .whl/ray-2.60.0-pruned.tar.xz
  du -sh .whl
  exit 0
fi
. scripts/gpu_env.sh
rm -f "$AGENTRL_GPU_RESULTS"
python3 -c 'import torch, transformers, megatron.core as m; print("torch", torch.__version__, "transformers", transformers.__version__, "megatron-core", m.__version__)' | tee -a "$OUT/device.txt"
status=0
python3 -m pytest -m gpu tests/gpu -p no:cacheprovider -p no:logging -o addopts="" -q -s "$@" 2>&1 | tee "$OUT/pytest.log" || status=$?
if [ "${AGENTRL_SKIP_BENCH:-0}" != 1 ]; then
  python3 bench/megatron.py --json "$OUT/bench.jsonl" ${AGENTRL_BENCH_ARGS:-} 2>&1 | tee "$OUT/bench.log" || status=$?
fi
exit $status
