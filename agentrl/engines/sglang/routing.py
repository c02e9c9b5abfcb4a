"""Request routing of :class:`~agentrl.engines.sglang.engine.SGLangEngine`: which live server a request
goes to (its session's while that server lives, for its prefix cache; else the least loaded), and how
long a request waits for one while servers restart before it is aborted or the engine fails for good.
The engine mixes :class:`SessionRouting` in; the state is the engine's own.
"""

from __future__ import annotations

import asyncio
from collections import OrderedDict

from agentrl.engines.sglang.config import SGLangEngineConfig
from agentrl.engines.sglang.health import _Server
from agentrl.errors import EngineDeadError, EngineError


class SessionRouting:
    """Pick a live server per request, sticking to one per session."""

    config: SGLangEngineConfig
    _servers: list[_Server]
    _sessions: OrderedDict[str, _Server]
    _alive_changed: asyncio.Event
    _fatal: EngineError | None

    def _live(self) -> list[_Server]:
        return [s for s in self._servers if s.alive]

    async def _pick(self, session_id: str | None) -> _Server | None:
        """The session's server if alive, else the least loaded live one; waits during restarts."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.config.server_wait_s
        while True:
            self._raise_if_failed()
            if session_id is not None and session_id in self._sessions:
                server = self._sessions[session_id]
                if server.alive:
                    self._sessions.move_to_end(session_id)
                    return server
            live = self._live()
            if live:
                server = min(live, key=lambda s: len(s.inflight))
                if session_id is not None:
                    self._remember(session_id, server)
                return server
            if not any(s.restarting or s.process is None for s in self._servers):
                return None
            remaining = deadline - loop.time()
            if remaining <= 0:
                self._raise_if_none_can_return()
                return None
            self._alive_changed.clear()
            try:
                await asyncio.wait_for(self._alive_changed.wait(), timeout=remaining)
            except TimeoutError:
                self._raise_if_none_can_return()
                return None

    def _raise_if_none_can_return(self) -> None:
        """``server_wait_s`` passed with no live server: a restart may still finish (this request is
        aborted), but servers given by URL that all stay dead fail the engine for good."""
        if not any(s.restarting for s in self._servers):
            self._fatal = EngineDeadError(
                f"no SGLang server answered /health_generate for {self.config.server_wait_s:.0f} s "
                f"({', '.join(s.url for s in self._servers)}); check that they are running"
            )
            raise self._fatal

    def _remember(self, session_id: str, server: _Server) -> None:
        self._sessions[session_id] = server
        self._sessions.move_to_end(session_id)
        while len(self._sessions) > self.config.max_sessions:
            self._sessions.popitem(last=False)

    def _raise_if_failed(self) -> None:
        if self._fatal is not None:
            raise self._fatal
