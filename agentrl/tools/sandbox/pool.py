"""`SandboxPool`: caps how many sandboxes exist at once, optionally keeping a few started ahead.

Why a cap: 64 concurrent episodes on a 2-core machine must not mean 64 containers (docs/reliability.md B15).
Why warm spares are single-use: a container serves exactly one episode, then is destroyed, so episodes
share no files, /dev/shm or background processes (docs/reliability.md B13); warming only hides the start
latency. Spares count against the cap.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

from agentrl.errors import SandboxError
from agentrl.tools.sandbox.base import ExecResult, Sandbox
from agentrl.tools.sandbox.config import SandboxConfig

log = logging.getLogger(__name__)


class PooledSandbox(Sandbox):
    """A sandbox lent by a pool; `close` destroys it and gives the slot back."""

    def __init__(self, inner: Sandbox, pool: SandboxPool) -> None:
        self.inner = inner
        self._pool: SandboxPool | None = pool

    def _live(self) -> Sandbox:
        if self._pool is None:
            raise SandboxError("this sandbox was closed and returned to its pool; acquire a new one")
        return self.inner

    def exec(
        self, cmd: str | list[str], *, timeout: float | None = None, stdin: str | None = None
    ) -> ExecResult:
        return self._live().exec(cmd, timeout=timeout, stdin=stdin)

    def read_file(self, path: str) -> bytes:
        return self._live().read_file(path)

    def write_file(self, path: str, data: bytes | str) -> None:
        self._live().write_file(path, data)

    def close(self) -> None:
        pool, self._pool = self._pool, None
        if pool is not None:
            pool.release(self.inner)


class SandboxPool:
    """At most ``config.pool_size`` sandboxes alive at once (lent out plus warm spares).

    `acquire` blocks while the pool is full: call it from a worker thread in async code
    (``await pool.acquire_async()`` does that).
    """

    def __init__(self, factory: Callable[[], Sandbox], config: SandboxConfig | None = None) -> None:
        self.config = config or SandboxConfig()
        self._factory = factory
        self._cond = threading.Condition()
        self._alive = 0
        self._spares: list[Sandbox] = []
        self._closed = False
        self._filling = False
        self._filler: threading.Thread | None = None

    @property
    def alive(self) -> int:
        """Sandboxes that exist now (lent out or spare, or being created)."""
        with self._cond:
            return self._alive

    def acquire(self, timeout: float | None = None) -> PooledSandbox:
        """A fresh sandbox; waits for a free slot up to ``timeout`` (default ``config.acquire_timeout_s``)."""
        wait = self.config.acquire_timeout_s if timeout is None else timeout
        deadline = time.monotonic() + wait
        with self._cond:
            while not self._spares and self._alive >= self.config.pool_size:
                left = deadline - time.monotonic()
                if self._closed or left <= 0 or not self._cond.wait(left):
                    raise SandboxError(
                        f"no sandbox slot freed up within {wait:g} s (pool_size={self.config.pool_size}); "
                        "close sandboxes when episodes end, or raise pool_size"
                    )
            spare = self._spares.pop() if self._spares else None
            if spare is None:
                self._alive += 1
        sandbox = spare or self._create()
        self._refill()
        return PooledSandbox(sandbox, self)

    async def acquire_async(self, timeout: float | None = None) -> PooledSandbox:
        import asyncio

        return await asyncio.to_thread(self.acquire, timeout)

    def _create(self) -> Sandbox:
        try:
            return self._factory()
        except BaseException:
            self._give_slot_back()
            raise

    def _give_slot_back(self) -> None:
        with self._cond:
            self._alive -= 1
            self._cond.notify()

    def release(self, sandbox: Sandbox) -> None:
        """Destroy a sandbox this pool lent (never reused) and free its slot."""
        try:
            sandbox.close()
        finally:
            self._give_slot_back()
        self._refill()

    def _refill(self) -> None:
        """Start spares in the background up to ``config.warm``, within the cap."""
        with self._cond:
            if self._filling or self._closed or len(self._spares) >= self.config.warm:
                return
            self._filling = True
        self._filler = threading.Thread(target=self._fill, name="sandbox-pool-fill", daemon=True)
        self._filler.start()

    def _fill(self) -> None:
        try:
            while True:
                with self._cond:
                    full = self._alive >= self.config.pool_size
                    if self._closed or full or len(self._spares) >= self.config.warm:
                        return
                    self._alive += 1
                try:
                    spare = self._factory()
                except Exception as e:  # the next acquire will raise with the cause
                    log.warning("could not start a warm sandbox: %s", e)
                    self._give_slot_back()
                    return
                with self._cond:
                    closed = self._closed
                    if not closed:
                        self._spares.append(spare)
                        self._cond.notify()
                if closed:
                    spare.close()
                    self._give_slot_back()
                    return
        finally:
            with self._cond:
                self._filling = False

    def close(self) -> None:
        """Destroy the spares; sandboxes still lent out are destroyed when their holders close them."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        if self._filler is not None and self._filler is not threading.current_thread():
            self._filler.join(timeout=self.config.api_timeout_s)  # a spare being started is closed by it
        with self._cond:
            spares, self._spares = self._spares, []
        for spare in spares:
            spare.close()
            self._give_slot_back()
