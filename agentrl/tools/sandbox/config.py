"""`SandboxConfig`: every limit a sandbox enforces. Limits come from here, never from the model.

Why one frozen dataclass: the hardening promises of docs/reliability.md (A1-A9) are only as good as the
values behind them, so they live in one reviewed place, are logged with the run config, and cannot be
changed by a tool call. Unknown keys in a mapping are rejected rather than ignored (docs/reliability.md A5).
"""

from __future__ import annotations

import dataclasses
import difflib
import os
import re
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from agentrl.errors import ConfigError

DEFAULT_IMAGE = "agentrl/sandbox-python:bookworm"
SANDBOX_UID = 1000
"""The uid model-written code runs as (user ``sandbox`` in the image)."""
KEEPER_UID = 65534
"""The uid of the container's own processes (init + TTL timer): not the sandbox user, so code cannot
signal them and a ``kill -9 -1`` by the sandbox user stops every process of a call but not the container."""

_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmg]?)i?b?\s*$", re.IGNORECASE)
_UNITS = {"": 1, "k": 1024, "m": 1024**2, "g": 1024**3}


def parse_size(value: str | int) -> int:
    """Bytes from ``512m``/``1g``/``65536``; raises `ConfigError` naming the value when malformed."""
    if isinstance(value, int):
        return value
    match = _SIZE.match(value)
    if not match:
        raise ConfigError(
            f"size {value!r} is not understood; write bytes or a number with k, m or g (e.g. '512m')"
        )
    return int(float(match.group(1)) * _UNITS[match.group(2).lower()])


_PROCESS_RUN_ID = uuid.uuid4().hex[:12]


def _default_run_id() -> str:
    """``AGENTRL_RUN_ID``, else one id per process: equal configs then share one pool and its cap."""
    return os.environ.get("AGENTRL_RUN_ID") or _PROCESS_RUN_ID


@dataclass(frozen=True)
class SandboxConfig:
    """Limits and lifecycle of sandboxes. Defaults are the hardened ones; loosen only on purpose."""

    image: str = DEFAULT_IMAGE
    """Docker image to run; `agentrl sandbox build` makes the default without any registry."""
    memory: str = "512m"
    """cgroup memory limit; swap is set equal, so there is no swap (docs/reliability.md A3)."""
    cpus: float = 1.0
    """CPU quota in cores (``--cpus``)."""
    pids_limit: int = 128
    """Most processes and threads one container may hold (``--pids-limit``; contains fork bombs)."""
    tmpfs_size: str = "64m"
    """Size of each writable tmpfs (/tmp and the home directory); the root filesystem is read-only."""
    shm_size: str = "16m"
    """Size of /dev/shm."""
    exec_timeout_s: float = 30.0
    """Wall-clock limit of one call; a call may ask for less, never more (docs/reliability.md A4, A5)."""
    output_limit_bytes: int = 64 * 1024
    """Most bytes kept from each of stdout and stderr; a call that prints more is stopped."""
    file_limit_bytes: int = 16 * 1024 * 1024
    """Largest file `read_file` returns."""
    ttl_s: float = 3600.0
    """Dead-man's switch: a container exits by itself this long after it started (docs/reliability.md B11)."""
    runtime: str = "runc"
    """OCI runtime: "runc", or "runsc" for gVisor where `agentrl sandbox doctor` reports it."""
    pool_size: int = 16
    """Most sandboxes open at once in this process (docs/reliability.md B15). Idle containers are light (two
    sleeping processes; memory and CPU are caps, not reservations), so the default is generous."""
    warm: int = 0
    """Containers the pool starts ahead of demand (each is used by one episode only)."""
    acquire_timeout_s: float = 600.0
    """How long `make_sandbox` waits for a free pool slot before raising `SandboxError`."""
    stop_timeout_s: float = 2.0
    """Grace between stop and kill when a sandbox closes; the whole escalation is bounded by it."""
    api_timeout_s: float = 30.0
    """Timeout of one Docker API request (so a hung engine cannot hang training)."""
    run_id: str = field(default_factory=_default_run_id)
    """Label ``agentrl.run`` on every container of this run (``AGENTRL_RUN_ID`` or a per-process id)."""
    workdir: str = "/home/sandbox"
    """Working directory of calls; a size-capped tmpfs owned by the sandbox user."""

    def __post_init__(self) -> None:
        for name in ("memory", "tmpfs_size", "shm_size"):
            parse_size(getattr(self, name))
        positive = ("cpus", "pids_limit", "exec_timeout_s", "output_limit_bytes", "ttl_s", "pool_size")
        for name in positive:
            if getattr(self, name) <= 0:
                raise ConfigError(f"sandbox {name}={getattr(self, name)!r} must be > 0")
        if self.runtime not in ("runc", "runsc"):
            raise ConfigError(f"sandbox runtime={self.runtime!r}: use 'runc' (default) or 'runsc' (gVisor)")

    @property
    def memory_bytes(self) -> int:
        return parse_size(self.memory)

    @classmethod
    def from_mapping(cls, values: Mapping[str, Any]) -> SandboxConfig:
        """Build from a YAML/CLI mapping; an unknown key is an error that suggests the closest name."""
        names = [f.name for f in dataclasses.fields(cls)]
        for key in values:
            if key not in names:
                close = difflib.get_close_matches(key, names, n=1)
                hint = f"; did you mean {close[0]!r}?" if close else f"; known keys: {', '.join(names)}"
                raise ConfigError(f"unknown sandbox config key {key!r}{hint}")
        return cls(**dict(values))

    def effective_timeout(self, requested: float | None) -> float:
        """The timeout of one call: the configured one, or less when the caller asks for less."""
        if requested is None or requested <= 0:
            return self.exec_timeout_s
        return min(float(requested), self.exec_timeout_s)
