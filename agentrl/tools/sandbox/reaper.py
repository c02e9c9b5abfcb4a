"""Labels that say who owns a sandbox container; reaping those whose owner died (docs/reliability.md B10).

A controller killed with SIGKILL cannot clean up. Each container therefore records its owner (host,
pid and the pid's start time, so a recycled pid is not mistaken for the owner); the next start reaps
containers whose owner is gone. Several runs may share one engine (two trainings, a test session), so
containers of live owners are left alone. Containers owned by another host are reaped only once their
TTL has long passed (they should have exited by themselves; docs/reliability.md B11).
"""

from __future__ import annotations

import logging
import os
import socket
import time
from typing import Any

import docker.errors

log = logging.getLogger(__name__)

LABEL = "agentrl.sandbox"
_GRACE_S = 60.0


def _start_time(pid: int) -> str | None:
    """The process's start time in clock ticks since boot (field 22 of /proc/PID/stat), or None."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            stat = f.read()
    except OSError:
        return None
    return stat.rsplit(")", 1)[1].split()[19]


def owner_labels() -> dict[str, str]:
    """Labels naming this process as the owner of a container it creates."""
    pid = os.getpid()
    return {
        "agentrl.owner.host": socket.gethostname(),
        "agentrl.owner.pid": str(pid),
        "agentrl.owner.start": _start_time(pid) or "",
        "agentrl.created": f"{time.time():.0f}",
    }


def owner_alive(labels: dict[str, str]) -> bool:
    """Whether the process that created a container still runs (unknown hosts: until TTL + grace)."""
    if labels.get("agentrl.owner.host") != socket.gethostname():
        created = float(labels.get("agentrl.created") or 0)
        ttl = float(labels.get("agentrl.ttl") or 0)
        return time.time() < created + ttl + _GRACE_S
    pid = int(labels.get("agentrl.owner.pid") or 0)
    return pid > 0 and _start_time(pid) == labels.get("agentrl.owner.start")


def reap_orphans(client: Any, *, everything: bool = False) -> list[str]:
    """Remove agentrl sandbox containers whose owner died (or all of them); returns their ids."""
    removed: list[str] = []
    try:
        containers = client.containers(all=True, filters={"label": LABEL})
    except (docker.errors.APIError, OSError) as e:
        log.warning("could not list sandbox containers to reap orphans: %s", e)
        return removed
    for container in containers:
        labels = container.get("Labels") or {}
        finished = container.get("State") in ("exited", "dead")
        if not everything and not finished and owner_alive(labels):
            continue
        try:
            client.remove_container(container["Id"], force=True)
        except docker.errors.NotFound:
            continue
        except docker.errors.APIError as e:
            log.warning("could not remove orphaned sandbox %s: %s", container["Id"][:12], e)
            continue
        removed.append(container["Id"])
    if removed:
        log.info("reaped %d orphaned sandbox container(s)", len(removed))
    return removed
