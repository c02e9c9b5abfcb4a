#!/usr/bin/env bash
# Make a Docker engine answer and build agentrl's sandbox image, without any image registry.
#
# Why: model-written code runs in hardened Docker containers (docs/sandbox.md). CI starts on a fresh
# Debian machine as root with no engine and no reachable registry, so this script installs docker.io
# and debootstrap when missing, starts dockerd in the background when no engine answers, then runs
# `agentrl sandbox build` (debootstrap rootfs -> `docker import`), which is a no-op once the image exists.
#
# Run: bash scripts/setup_docker.sh   (after scripts/setup.sh created .venv)
# Env: AGENTRL_DOCKERD_TIMEOUT (seconds to wait for dockerd, default 60), AGENTRL_CACHE.
set -euo pipefail
cd "$(dirname "$0")/.."

need_apt=()
command -v dockerd >/dev/null || need_apt+=(docker.io)
command -v debootstrap >/dev/null || need_apt+=(debootstrap)
if [ ${#need_apt[@]} -gt 0 ]; then
  if [ "$(id -u)" -ne 0 ]; then
    echo "setup_docker: missing ${need_apt[*]}; install them as root: apt-get install -y ${need_apt[*]}" >&2
    exit 1
  fi
  echo "setup_docker: installing ${need_apt[*]}"
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q "${need_apt[@]}" >/dev/null \
    || { apt-get update -q >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -q "${need_apt[@]}" >/dev/null; }
fi

if ! docker info >/dev/null 2>&1; then
  if [ "$(id -u)" -ne 0 ]; then
    echo "setup_docker: no Docker engine answers and this is not root; start one (sudo systemctl start docker)" >&2
    exit 1
  fi
  log_dir="${AGENTRL_CACHE:-$HOME/.cache/agentrl}/sandbox"
  mkdir -p "$log_dir"
  echo "setup_docker: starting dockerd (log: $log_dir/dockerd.log)"
  # setsid: dockerd must outlive this script and the test run that called it.
  setsid nohup dockerd >"$log_dir/dockerd.log" 2>&1 < /dev/null &
  deadline=$(( $(date +%s) + ${AGENTRL_DOCKERD_TIMEOUT:-60} ))
  until docker info >/dev/null 2>&1; do
    if [ "$(date +%s)" -ge "$deadline" ]; then
      echo "setup_docker: dockerd did not answer within ${AGENTRL_DOCKERD_TIMEOUT:-60}s; last log lines:" >&2
      tail -n 20 "$log_dir/dockerd.log" >&2 || true
      exit 1
    fi
    sleep 1
  done
fi
echo "setup_docker: engine $(docker version --format '{{.Server.Version}}')"

.venv/bin/agentrl sandbox build
