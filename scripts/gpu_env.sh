# Sourced by the GPU scripts (gpu_tests.sh, gpu_multi.sh) on a CUDA machine without a package index:
# installs the wheels carried in .whl/ (megatron-core, mbridge, gymnasium, docker; Ray as a pruned tarball) into a scratch site dir, so the machine's
# own torch stays untouched, puts it and the repo on PYTHONPATH, keeps NCCL's NVLink multicast off (it
# can take a shared host's GPUs out of service) and records the device in $OUT/device.txt.
OUT=${OUT:-out/gpu}
SITE=${AGENTRL_GPU_SITE:-${AGENTRL_CACHE:-$HOME/.cache/agentrl}/gpu-site}
mkdir -p "$OUT"
if compgen -G ".whl/*.whl" >/dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$SITE" .whl/*.whl
fi
# Ray (for the end-to-end train test) comes pruned as a tarball (`bash scripts/gpu_tests.sh pack`).
if compgen -G ".whl/ray-*-pruned.tar.xz" >/dev/null && [ ! -d "$SITE/ray" ]; then
  tar -xJf .whl/ray-*-pruned.tar.xz -C "$SITE"
fi
export PYTHONPATH="$PWD:$SITE${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONUNBUFFERED=1 AGENTRL_GPU_RESULTS="$OUT/gpu_results.jsonl"
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1
export CUBLAS_WORKSPACE_CONFIG=${CUBLAS_WORKSPACE_CONFIG:-:4096:8} JAX_PLATFORMS=${JAX_PLATFORMS:-cpu}  # deterministic cuBLAS where a test asks for it; no JAX on the GPU
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$OUT/device.txt"
