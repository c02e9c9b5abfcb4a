"""Server health for :class:`~agentrl.engines.sglang.engine.SGLangEngine`: probes, dead-marking, restarts.

Kept apart from request routing: the engine mixes :class:`ServerHealth` in, and this module owns what
"alive" means (``/health_generate`` answers in ``health_timeout_s``, the process runs), when a server is
given up on (``health_failures`` probes in a row, e.g. a hung or SIGSTOPped server that still accepts
connections, or its process exited; its requests in flight are then cut and retried elsewhere) and how
it comes back (a fresh process with the newest synced weights while the restart budget lasts; after that
the engine is failed for good: :class:`~agentrl.errors.EngineDeadError`).

Weights and restarts share one lock, so a restart that began before a weight update cannot come back
with the old weights under the new version: the restarted server loads whatever is newest when it
rejoins, and its served ``weight_version`` (``/model_info``) is checked against the engine's.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import httpx

from agentrl.engines.sglang import protocol as proto
from agentrl.engines.sglang.config import SGLangEngineConfig
from agentrl.engines.sglang.launcher import SGLangServerProcess
from agentrl.errors import EngineDeadError, EngineError

log = logging.getLogger(__name__)


class _ServerFailed(Exception):
    """A server answered with a 5xx: treat it like a dropped connection."""


_TRANSIENT = (httpx.TransportError, _ServerFailed)
"""Errors that mean "this server may be dead": connection refused or reset, read cut, timeout, 5xx."""


@dataclass(eq=False)
class _Server:
    """One server as the router sees it."""

    url: str
    semaphore: asyncio.Semaphore
    process: SGLangServerProcess | None = None
    alive: bool = True
    failures: int = 0
    restarting: bool = False
    version: int = 0
    """The weight version this server was last seen to serve (checked after each load)."""
    inflight: dict[str, str | None] = field(default_factory=dict)
    """rid -> session_id of requests sent to this server and not answered yet."""
    requests: dict[str, asyncio.Task[httpx.Response]] = field(default_factory=dict)
    """rid -> the HTTP call in flight, cancelled when the server is declared dead (it may be hung)."""


def _failure(server: _Server, error: BaseException) -> str:
    """``url: ReadError: ...``: httpx's transport errors often have an empty message."""
    return f"{server.url}: {type(error).__name__}: {error}".rstrip(": ")


class ServerHealth:
    """The health monitor and restart logic of the engine (state is the engine's own)."""

    config: SGLangEngineConfig
    weight_version: int
    _servers: list[_Server]
    _admitted: asyncio.Event
    _alive_changed: asyncio.Event
    _fatal: EngineError | None
    _restarts_used: int
    _weights_path: str | None
    _weights_lock: asyncio.Lock
    _client: httpx.AsyncClient | None
    _background: set[asyncio.Task[None]]

    _new_process: Callable[[int, str | None], SGLangServerProcess]
    _post: Callable[[_Server, str, dict[str, Any]], Awaitable[httpx.Response]]

    async def _probe(self, server: _Server) -> bool:
        assert self._client is not None, "call start() first"
        if server.process is not None and not server.process.running():
            return False
        try:
            response = await self._client.get(
                f"{server.url}/health_generate", timeout=self.config.health_timeout_s
            )
        except _TRANSIENT:
            return False
        return response.status_code == 200

    async def _monitor_loop(self) -> None:
        while True:
            await asyncio.sleep(self.config.health_interval_s)
            # A paused SGLang server cannot run the one-token health request; it would look dead.
            if not self._admitted.is_set():
                continue
            servers = [s for s in self._servers if not s.restarting]
            try:
                results = await asyncio.gather(*(self._probe(s) for s in servers))
            except Exception:  # the monitor must outlive any surprise, or dead servers go unnoticed
                log.exception("SGLang health probe raised")
                continue
            for server, ok in zip(servers, results, strict=True):
                self._record_probe(server, ok)

    async def _exits_within(self, server: _Server, seconds: float) -> bool:
        """True once ``server``'s process has exited, False if it still runs after ``seconds``."""
        process = server.process
        assert process is not None
        deadline = asyncio.get_running_loop().time() + seconds
        while process.running():
            if asyncio.get_running_loop().time() >= deadline:
                return False
            await asyncio.sleep(0.05)
        return True

    def _record_probe(self, server: _Server, ok: bool) -> None:
        if ok:
            server.failures = 0
            if not server.alive and server.version != self.weight_version:
                # It missed a weight update while it looked dead: load the newest before it rejoins.
                server.restarting = True
                task = asyncio.create_task(self._resync(server), name=f"sglang-resync-{server.url}")
                self._background.add(task)
                task.add_done_callback(self._background.discard)
            elif not server.alive:
                log.warning("SGLang server %s is healthy again", server.url)
                server.alive = True
                self._alive_changed.set()
            return
        server.failures += 1
        exited = server.process is not None and not server.process.running()
        if exited or server.failures >= self.config.health_failures:
            if server.alive or server.requests:
                log.warning(
                    "SGLang server %s failed %d health probes: routing around it", server.url, server.failures
                )
            for request in server.requests.values():  # a hung server would hold them until the timeout
                request.cancel()
            self._mark_dead(server)

    def _mark_dead(self, server: _Server) -> None:
        """Route around ``server``; restart it if we launched it and its process is gone."""
        server.alive = False
        process = server.process
        if process is None or server.restarting:
            return
        if process.running() and server.failures < self.config.health_failures:
            return  # one failed request is not proof; the monitor decides
        if self._restarts_used >= self.config.restart_budget:
            self._fatal = EngineDeadError(
                f"SGLang server {server.url} died and the restart budget ({self.config.restart_budget}) "
                f"is spent. Log {process.log_path}, last lines:\n{process.log_tail()}"
            )
            self._alive_changed.set()
            log.error("%s", self._fatal)
            return
        self._restarts_used += 1
        server.restarting = True
        task = asyncio.create_task(self._restart(server), name=f"sglang-restart-{server.url}")
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def _resync(self, server: _Server) -> None:
        """Bring a server that answers again but missed weight updates up to date, then let it rejoin;
        if it cannot load them it stays out (a launched one is restarted)."""
        try:
            async with self._weights_lock:
                version = self.weight_version
                payload = proto.update_weights_from_disk_payload(str(self._weights_path), version)
                await self._post(server, "/update_weights_from_disk", payload)
                await self._check_version(server, version)
                server.version, server.alive = version, True
                log.warning(
                    "SGLang server %s is healthy again (weights version %d reloaded)", server.url, version
                )
        except (EngineError, *_TRANSIENT) as exc:
            log.warning(
                "SGLang server %s answers but could not load the current weights: %s", server.url, exc
            )
            server.failures = self.config.health_failures
        finally:
            server.restarting = False
            self._alive_changed.set()
        if not server.alive:
            self._mark_dead(server)

    async def _restart(self, server: _Server) -> None:
        """Replace a dead launched server with a fresh process serving the latest weights."""
        old = server.process
        assert old is not None
        log.warning(
            "restarting dead SGLang server %s (%d/%d)",
            server.url,
            self._restarts_used,
            self.config.restart_budget,
        )
        await asyncio.to_thread(old.kill)
        index = self._servers.index(server)
        launched_with = self._weights_path
        process = self._new_process(index, launched_with)
        process.start()
        server.url = process.url
        try:
            await process.wait_healthy(self.config.startup_timeout_s)
            async with self._weights_lock:  # no weight update between this check and rejoining
                if self._weights_path != launched_with:  # an update landed while it started
                    payload = proto.update_weights_from_disk_payload(
                        str(self._weights_path), self.weight_version
                    )
                    await self._post(server, "/update_weights_from_disk", payload)
                elif self.weight_version:
                    await self._post(
                        server, "/update_weight_version", {"new_version": str(self.weight_version)}
                    )
                await self._check_version(server, self.weight_version)
                server.process, server.failures, server.alive = process, 0, True
                server.version = self.weight_version
        except (EngineError, *_TRANSIENT) as exc:
            self._fatal = EngineDeadError(f"restarting SGLang server {server.url} failed: {exc}")
            await asyncio.to_thread(process.kill)
        finally:
            server.restarting = False
            self._alive_changed.set()

    async def _check_version(self, server: _Server, version: int) -> None:
        """Raise unless ``server`` reports serving ``version`` (``/model_info``'s ``weight_version``)."""
        assert self._client is not None, "call start() first"
        response = await self._client.get(f"{server.url}/model_info", timeout=self.config.control_timeout_s)
        if response.status_code >= 500:
            raise _ServerFailed(f"HTTP {response.status_code} from {server.url}/model_info")
        served = response.json().get("weight_version") if response.status_code == 200 else None
        if proto.parse_weight_version(served, default=0) != version:
            raise EngineError(
                f"SGLang server {server.url} serves weight version {served!r}, the trainer's is {version} "
                f"(HTTP {response.status_code}); its samples would be labelled with the wrong policy"
            )
