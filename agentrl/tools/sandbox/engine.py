"""Connecting to the Docker engine, with an error that says how to fix an unreachable one."""

from __future__ import annotations

import docker
import docker.errors

from agentrl.errors import SandboxUnavailableError

HOW_TO_FIX = (
    "Start a Docker engine: `bash scripts/setup_docker.sh` (installs docker.io and starts dockerd as root), "
    "or `sudo systemctl start docker`; set DOCKER_HOST if the engine listens elsewhere. "
    "To run model-written code without isolation instead (trusted code only), opt in with sandbox='local'."
)


def connect(timeout: float = 30.0) -> docker.APIClient:
    """A low-level client of the engine named by DOCKER_HOST (default: the local socket).

    The low-level `APIClient` is used throughout because exec over a raw hijacked socket is what keeps
    a warm call close to a bare ``docker exec`` (no per-call thread or buffering layers).
    """
    try:
        # One client serves every sandbox of the process from many threads: keep enough connections.
        client = docker.APIClient(
            version="auto", timeout=timeout, max_pool_size=64, **docker.utils.kwargs_from_env()
        )
        client.ping()
    except (docker.errors.DockerException, OSError) as e:
        raise SandboxUnavailableError(f"the Docker engine is not reachable ({e}). {HOW_TO_FIX}") from e
    return client
