"""Sandboxes for model-written code: hardened Docker containers by default, a local subprocess on request.

    from agentrl.tools.sandbox import make_sandbox

    with make_sandbox() as sb:                       # Docker; raises SandboxUnavailableError without an engine
        result = sb.run_python("print(6 * 7)")
        assert result.stdout == "42\\n"

See docs/sandbox.md for the guarantees (docs/reliability.md A and B) and how each is tested.
"""

from __future__ import annotations

import atexit
import threading
from typing import Any

from agentrl.errors import ConfigError, SandboxError, SandboxUnavailableError
from agentrl.tools.sandbox.base import ExecResult, Sandbox
from agentrl.tools.sandbox.config import SandboxConfig
from agentrl.tools.sandbox.local import LocalSandbox
from agentrl.tools.sandbox.pool import PooledSandbox, SandboxPool

__all__ = [
    "DockerSandbox",
    "ExecResult",
    "LocalSandbox",
    "PooledSandbox",
    "Sandbox",
    "SandboxConfig",
    "SandboxDiedError",
    "SandboxError",
    "SandboxPool",
    "SandboxUnavailableError",
    "docker_pool",
    "make_sandbox",
]

_pools: dict[SandboxConfig, SandboxPool] = {}


def __getattr__(name: str) -> Any:
    # The Docker SDK is imported only once a Docker sandbox is asked for, so what never runs code
    # (the Search env, `agentrl --help`, GPU training boxes without the `docker` package) works without it.
    if name in ("DockerSandbox", "SandboxDiedError"):
        from agentrl.tools.sandbox import docker_sandbox

        return getattr(docker_sandbox, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


_pools_lock = threading.Lock()


def docker_pool(config: SandboxConfig | None = None) -> SandboxPool:
    """This process's pool of Docker sandboxes for ``config``; the first call reaps orphaned containers."""
    config = config or SandboxConfig()
    with _pools_lock:
        pool = _pools.get(config)
        if pool is None:
            from agentrl.tools.sandbox.docker_sandbox import DockerSandbox
            from agentrl.tools.sandbox.engine import connect
            from agentrl.tools.sandbox.reaper import reap_orphans

            client = connect(config.api_timeout_s)
            reap_orphans(client)
            pool = _pools[config] = SandboxPool(lambda: DockerSandbox(config, client=client), config)
            atexit.register(pool.close)  # warm spares go with the process (the reaper covers SIGKILL)
        return pool


def make_sandbox(kind: str = "docker", config: SandboxConfig | None = None) -> Sandbox:
    """A fresh sandbox for one episode; close it when the episode ends.

    ``kind="docker"`` (default) lends a container from this process's pool, so at most
    ``config.pool_size`` exist at once: the call blocks while the pool is full (run it in a worker
    thread from async code). ``kind="local"`` is an unisolated subprocess for trusted code only.
    """
    if kind == "docker":
        return docker_pool(config).acquire()
    if kind == "local":
        return LocalSandbox(config)
    raise ConfigError(
        f"unknown sandbox kind {kind!r}; use 'docker' (hardened, default) or 'local' (trusted code only)"
    )
