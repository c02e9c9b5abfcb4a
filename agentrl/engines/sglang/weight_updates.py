"""Weight updates of :class:`~agentrl.engines.sglang.engine.SGLangEngine`: every live server loads the
trainer's exported HF folder and is checked to serve the new version; requests in flight are cut first
(they answer with their partial output, which ``generate`` continues under the new weights: a partial
rollout, docs/async.md), and a server restarting meanwhile loads the newest weights when it rejoins.
The engine mixes :class:`WeightUpdates` in; the state is the engine's own.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any

from agentrl.engines.sglang import protocol as proto
from agentrl.engines.sglang.health import _TRANSIENT, ServerHealth, _failure, _Server
from agentrl.errors import EngineError

log = logging.getLogger(__name__)


class WeightUpdates(ServerHealth):
    """Load new weights on the servers under running requests."""

    _settled: asyncio.Event
    _preempted: set[str]
    _live: Callable[[], list[_Server]]
    _raise_if_failed: Callable[[], None]

    async def update_weights(self, source: Any, *, version: int) -> None:
        """Load an HF folder (``source``) on every live server with ``/update_weights_from_disk``, then
        check that each serves ``version``. A server restarting meanwhile, or dying during the update,
        loads it when it rejoins."""
        path = str(source)
        self._raise_if_failed()
        async with self._weights_lock:
            for server in self._servers:  # a launched server found dead by a request: restart it now
                if not server.alive and server.process is not None and not server.process.running():
                    self._mark_dead(server)  # its restart loads the newest weights when it rejoins
            live = self._live()
            if not live and not any(s.restarting for s in self._servers):
                raise EngineError("no live SGLang server to load weights on; see the server logs")
            self._weights_path, self.weight_version = path, version  # what restarts load from now on
            self._settled.clear()
            try:
                for server in live:  # the update aborts them: generate() continues them afterwards
                    self._preempted.update(server.inflight)
                results = await asyncio.gather(
                    *(self._load(s, path, version) for s in live), return_exceptions=True
                )
            finally:
                self._settled.set()
        errors = [_failure(s, r) for s, r in zip(live, results, strict=True) if isinstance(r, BaseException)]
        self._raise_if_failed()
        if errors:
            raise EngineError(
                f"loading weights version {version} failed on {len(errors)} server(s): " + "; ".join(errors)
            )

    async def _load(self, server: _Server, path: str, version: int) -> None:
        """Load ``path`` on ``server`` and check the version it serves; a launched server that died
        meanwhile is left to its restart (which loads the newest weights). Requests in flight there are
        aborted first (SGLang would otherwise wait for them to finish under the old weights)."""
        payload = proto.update_weights_from_disk_payload(path, version)
        try:
            if server.inflight:
                await self._cut_requests(server)
            await self._post(server, "/update_weights_from_disk", payload)
            await self._check_version(server, version)
        except _TRANSIENT:
            # A SIGKILLed server cuts its connections a moment before its process can be reaped.
            if server.process is None or not await self._exits_within(server, self.config.exit_grace_s):
                raise
            self._mark_dead(server)
        else:
            server.version = version

    async def _cut_requests(self, server: _Server) -> None:
        """Abort our requests in flight on ``server`` (they answer with their partial output) and wait
        until it is idle: SGLang refuses to flush the old weights' cache after a load while a request
        is still in its batch, which an aborted one is for a scheduler step after it answered."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.config.control_timeout_s / 2
        while server.inflight and loop.time() < deadline:
            # Again while any is left: one still on its way when the last abort arrived is not cut.
            await self._post(server, "/abort_request", proto.abort_payload(None))
            for _ in range(10):
                if not server.inflight:
                    break
                await asyncio.sleep(0.05)
        try:  # answers once the scheduler is idle (and flushes its cache)
            await self._post(server, proto.flush_when_idle_path(self.config.control_timeout_s / 2), {})
        except EngineError as exc:
            log.warning("SGLang %s stayed busy before a weight load: %s", server.url, exc)
