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
  dl .whl megatron-core==0.19.2 mbridge gymnasium==1.4.0 farama-notifications==0.0.6 docker==7.2.0 \
    jsonschema==4.26.0 jsonschema-specifications==2025.9.1 referencing==0.37.0 rpds-py==2026.9.1
  if [ ! -f .whl/ray-2.60.0-pruned.tar.xz ]; then
    # Ray's 79 MB wheel without Java, RLlib, Serve, Data, Tune, Train and the dashboard client: about 20 MB.
    # Unzipped by Python, which drops the executable bits: put them back (gcs_server, raylet, ...).
    tmp=$(mktemp -d)
    dl "$tmp" ray==2.60.0
    python3 - "$tmp" <<'PY'
import glob, os, sys, zipfile
tmp = sys.argv[1]
with zipfile.ZipFile(glob.glob(f"{tmp}/ray-*.whl")[0]) as z:
    z.extractall(f"{tmp}/unpacked")
    for info in z.infolist():
        if (info.external_attr >> 16) & 0o111:
            os.chmod(f"{tmp}/unpacked/{info.filename}", 0o755)
PY
    (cd "$tmp/unpacked" && rm -rf ray/jars ray/dashboard/client/build ray/rllib ray/serve ray/data ray/tune \
      ray/train ray/llm && tar -c . | xz -T0 -9 >"$OLDPWD/.whl/ray-2.60.0-pruned.tar.xz")
    rm -rf "$tmp"
  fi
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
