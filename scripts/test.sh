#!/usr/bin/env bash
# Set up everything the tests need (venv, Docker engine + sandbox image, SGLang venv) and run them.
# Slow artefacts are cached under ${AGENTRL_CACHE:-~/.cache/agentrl} and reused.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
for step in scripts/setup_docker.sh scripts/setup_sglang.sh; do
  [ -f "$step" ] && bash "$step"
done
. .venv/bin/activate
ruff check agentrl tests bench examples
ruff format --check agentrl tests bench examples
mypy
python -m pytest -m "not gpu" "$@"
