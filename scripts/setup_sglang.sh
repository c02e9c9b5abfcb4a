#!/usr/bin/env bash
# Create the SGLang venv used by the real-server integration tests (and by SGLangEngine's launcher).
#
# Why a separate venv: sglang pins its own torch and transformers, which would clash with the project's
# CPU torch. The venv lives at ${AGENTRL_CACHE:-~/.cache/agentrl}/sglang-venv (about 11 GB, about
# 2.5 min to install). It is (re)built only when missing or when `import sglang` fails in it.
# The project venv is never touched. Tests find the interpreter through AGENTRL_SGLANG_PYTHON or this
# default path, and skip with a reason when neither works.
#
# Usage: bash scripts/setup_sglang.sh
set -euo pipefail
SGLANG_VERSION=${AGENTRL_SGLANG_VERSION:-0.5.23}
CACHE=${AGENTRL_CACHE:-$HOME/.cache/agentrl}
VENV="$CACHE/sglang-venv"
PY=${PYTHON:-python3.11}
command -v "$PY" >/dev/null || PY=python3

healthy() {
  [ -x "$VENV/bin/python" ] &&
    "$VENV/bin/python" -c "import sglang, sglang.launch_server; assert sglang.__version__ == '$SGLANG_VERSION'" \
      >/dev/null 2>&1
}

if healthy; then
  echo "sglang $SGLANG_VERSION already installed in $VENV"
  exit 0
fi
rm -rf "$VENV"
mkdir -p "$CACHE"
"$PY" -m venv "$VENV"
"$VENV/bin/python" -m pip install -q -U pip
"$VENV/bin/python" -m pip install -q "sglang==$SGLANG_VERSION"
healthy || { echo "sglang installed in $VENV but 'import sglang.launch_server' fails" >&2; exit 1; }
echo "sglang $SGLANG_VERSION installed in $VENV"
