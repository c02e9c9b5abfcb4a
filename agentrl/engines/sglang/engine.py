"""`SGLangEngine`: the production :class:`~agentrl.engines.base.Engine`, SGLang servers over HTTP.

It either launches ``num_servers`` SGLang servers (each its own process group, in SGLang's own venv) or
connects to running servers / a router given by URL, and speaks SGLang's native API with httpx.

What it promises (docs/reliability.md D20-D21):

* Every request is bounded: a timeout, retries with exponential backoff, a concurrency cap per server.
* A health monitor probes ``/health_generate``; a server that fails (dead, or hung: it accepts
  connections but does not answer in ``health_timeout_s``) is marked dead and routed around. A request
  whose server dies or hangs mid-flight is retried on another live server, or returns
  ``finish_reason="abort"``. A 5xx answer is retried the same way; a 4xx answer is this request's fault
  and raises :class:`EngineError` naming the server, the status and SGLang's message.
* A launched server that dies is restarted (loading the newest synced weights, even when a weight update
  landed while it started) while the restart budget lasts; once it is spent, or a restart fails, or the
  servers given by URL all stay dead for ``server_wait_s``, the engine fails loudly: every later
  ``generate`` raises :class:`~agentrl.errors.EngineDeadError`.
* After every weight update and every restart, each server's served ``weight_version`` is checked
  against the trainer's: a sample is never labelled with a policy that did not produce it.
* Requests of one ``session_id`` (one episode) stick to one server while it lives, for its prefix cache.
* A weight update lands under running requests (``--async-mode fully``): the servers abort them, load the
  new weights, and ``generate`` continues each request that *our update* cut from its partial output
  (input ids + partial ids, the rest of the ``max_new_tokens`` budget) under the new weights, returning
  one output whose ``meta["token_versions"]`` gives each id's version (a partial rollout,
  docs/async.md). A request aborted by ``abort()`` or by a failed server still returns ``"abort"``.

The parts: health (:mod:`~agentrl.engines.sglang.health`), request routing
(:mod:`~agentrl.engines.sglang.routing`), weight updates (:mod:`~agentrl.engines.sglang.weight_updates`),
the wire format (:mod:`~agentrl.engines.sglang.protocol`); this module holds the lifecycle, ``generate``
and the control calls.

Example::

    config = SGLangEngineConfig(model_path="/models/tiny", sglang_args=("--device", "cpu"))
    async with SGLangEngine(config) as engine:
        out = await engine.generate([1, 2, 3], SamplingParams(max_new_tokens=8), session_id="ep-0")
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections import OrderedDict
from dataclasses import replace
from pathlib import Path
from typing import Any

import httpx

from agentrl.engines.base import GenerateOutput, SamplingParams
from agentrl.engines.sglang import protocol as proto
from agentrl.engines.sglang.config import SGLangEngineConfig
from agentrl.engines.sglang.health import _TRANSIENT, _failure, _Server, _ServerFailed
from agentrl.engines.sglang.launcher import (
    SGLangServerProcess,
    agentrl_cache_dir,
    find_sglang_python,
    free_port,
)
from agentrl.engines.sglang.routing import SessionRouting
from agentrl.engines.sglang.weight_updates import WeightUpdates
from agentrl.errors import EngineError

log = logging.getLogger(__name__)

_PREEMPTED = "preempted"
"""Key of a piece's meta while it travels from ``_generate_on`` to ``generate``: our own weight update
aborted it, so it is continued (never seen by callers)."""


class SGLangEngine(SessionRouting, WeightUpdates):
    """SGLang servers behind the :class:`~agentrl.engines.base.Engine` protocol."""

    def __init__(self, config: SGLangEngineConfig) -> None:
        self.config = config
        self.weight_version = 0
        self._weights_path = config.model_path
        self._weights_lock = asyncio.Lock()
        self._servers: list[_Server] = []
        self._sessions: OrderedDict[str, _Server] = OrderedDict()
        self._aborted: set[str] = set()
        """Request ids in flight that ``abort()`` aborted."""
        self._preempted: set[str] = set()
        """Request ids in flight when a weight update began: if they answer "abort", the update cut them."""
        self._between: dict[asyncio.Event, str | None] = {}
        """Requests cut by a weight update and waiting to continue: set to abort one -> its session_id."""
        self._settled = asyncio.Event()
        """Clear while a weight update runs: new requests and continuations wait for the new weights."""
        self._settled.set()
        self._admitted = asyncio.Event()
        self._admitted.set()
        self._alive_changed = asyncio.Event()
        self._fatal: EngineError | None = None
        self._restarts_used = 0
        self._client: httpx.AsyncClient | None = None
        self._monitor: asyncio.Task[None] | None = None
        self._background: set[asyncio.Task[None]] = set()

    # ---- lifecycle -----------------------------------------------------------------------------

    async def start(self) -> SGLangEngine:
        """Launch (or connect to) the servers and start the health monitor; returns self."""
        cfg = self.config
        self._client = httpx.AsyncClient(timeout=httpx.Timeout(cfg.request_timeout_s, connect=5.0))
        if cfg.server_urls:
            self._servers = [self._new_server(url.rstrip("/")) for url in cfg.server_urls]
            await self._check_connected()
        else:
            processes = [self._new_process(i) for i in range(cfg.num_servers)]
            for process in processes:
                process.start()
            try:
                await asyncio.gather(*(p.wait_healthy(cfg.startup_timeout_s) for p in processes))
            except BaseException:
                await asyncio.gather(*(asyncio.to_thread(p.kill) for p in processes))
                raise
            self._servers = [self._new_server(p.url, p) for p in processes]
        self._monitor = asyncio.create_task(self._monitor_loop(), name="sglang-health-monitor")
        return self

    async def __aenter__(self) -> SGLangEngine:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        """Stop the monitor, kill launched servers, close the HTTP client."""
        tasks = [t for t in (self._monitor, *self._background) if t is not None]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await asyncio.gather(*(asyncio.to_thread(s.process.kill) for s in self._servers if s.process))
        if self._client is not None:
            await self._client.aclose()
            self._client = None

    def _new_server(self, url: str, process: SGLangServerProcess | None = None) -> _Server:
        return _Server(url, asyncio.Semaphore(self.config.max_concurrency_per_server), process)

    def _new_process(self, index: int, model_path: str | None = None) -> SGLangServerProcess:
        cfg = self.config
        args = list(cfg.sglang_args)
        if model_path and model_path != cfg.model_path and "--tokenizer-path" not in args:
            # Trainer checkpoints may hold weights only; keep the original tokenizer.
            args += ["--tokenizer-path", str(cfg.model_path)]
        if cfg.gpus_per_server:
            args += ["--base-gpu-id", str(index * cfg.gpus_per_server)]
        port = free_port(cfg.host)
        log_dir = Path(cfg.log_dir) if cfg.log_dir else agentrl_cache_dir() / "logs"
        return SGLangServerProcess(
            find_sglang_python(cfg.python),
            model_path or cfg.model_path or "",
            port=port,
            host=cfg.host,
            extra_args=args,
            log_path=log_dir / f"sglang-{index}-{port}.log",
            env={"SGLANG_RETURN_ORIGINAL_LOGPROB": "1"} if cfg.original_logprobs else None,
        )

    async def _check_connected(self) -> None:
        results = await asyncio.gather(*(self._probe(s) for s in self._servers))
        if not any(results):
            raise EngineError(
                f"none of the SGLang servers {[s.url for s in self._servers]} answered /health_generate; "
                "check that they are running and reachable from this machine"
            )
        for server, ok in zip(self._servers, results, strict=True):
            server.alive = ok

    # ---- Engine protocol -------------------------------------------------------------------------

    async def generate(
        self, input_ids: list[int], sampling: SamplingParams, *, session_id: str | None = None
    ) -> GenerateOutput:
        """Continue ``input_ids``; retried on another server if this one dies, else ``abort``. A request
        that a weight update cut is continued under the new weights (see the module docstring)."""
        pieces = [await self._generate_piece(input_ids, sampling, session_id)]
        while pieces[-1].meta.pop(_PREEMPTED, False):
            sampled = [t for piece in pieces for t in piece.output_ids]
            left = sampling.max_new_tokens - len(sampled)
            if left <= 0:  # cut after its last token: it ended on the budget
                pieces[-1].finish_reason = "length"
                break
            if not await self._wait_to_continue(session_id):
                break  # abort() reached it while it waited: it ends here, "abort"
            rest = replace(sampling, max_new_tokens=left)
            pieces.append(await self._generate_piece(input_ids + sampled, rest, session_id))
        return pieces[0] if len(pieces) == 1 else proto.join_pieces(pieces)

    async def _wait_to_continue(self, session_id: str | None) -> bool:
        """Wait for the weight update that cut a request to load; False if ``abort()`` came first."""
        aborted = asyncio.Event()
        self._between[aborted] = session_id
        waiters = [asyncio.create_task(self._settled.wait()), asyncio.create_task(aborted.wait())]
        try:
            await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for waiter in waiters:
                waiter.cancel()
            self._between.pop(aborted, None)
        return not aborted.is_set()

    async def _generate_piece(
        self, input_ids: list[int], sampling: SamplingParams, session_id: str | None
    ) -> GenerateOutput:
        """One ``/generate`` call, retried on another server if this one dies, else ``abort``."""
        self._raise_if_failed()
        await self._admitted.wait()
        await self._settled.wait()
        error = "no live SGLang server"
        for attempt in range(self.config.max_retries + 1):
            server = await self._pick(session_id)
            if server is None:
                break
            rid = uuid.uuid4().hex
            try:
                return await self._generate_on(server, rid, input_ids, sampling, session_id)
            except _TRANSIENT as exc:
                if rid in self._aborted:
                    self._aborted.discard(rid)
                    return _aborted_output(self.weight_version, "aborted while the server failed")
                error = f"{type(exc).__name__} from {server.url}: {exc}"
                log.warning("SGLang request failed (attempt %d): %s", attempt + 1, error)
                if server.process is not None:  # killed: its connections break before it can be reaped
                    await self._exits_within(server, self.config.exit_grace_s)
                self._mark_dead(server)  # restarted if its process exited; the next attempt waits for it
                self._raise_if_failed()
                await asyncio.sleep(self.config.retry_backoff_s * 2**attempt)
        return _aborted_output(self.weight_version, error)

    async def _generate_on(
        self,
        server: _Server,
        rid: str,
        input_ids: list[int],
        sampling: SamplingParams,
        session_id: str | None,
    ) -> GenerateOutput:
        assert self._client is not None, "call start() first"
        async with server.semaphore:
            await self._settled.wait()  # a weight update began while this waited for a slot
            server.inflight[rid] = session_id
            request = asyncio.create_task(
                self._client.post(
                    f"{server.url}/generate", json=proto.generate_payload(input_ids, sampling, rid)
                )
            )
            server.requests[rid] = request
            try:
                response = await request
            except asyncio.CancelledError:
                current = asyncio.current_task()
                if current is not None and current.cancelling():  # our caller cancelled us
                    raise
                raise _ServerFailed(f"{server.url} stopped answering (failed its health probes)") from None
            finally:
                server.inflight.pop(rid, None)
                server.requests.pop(rid, None)
                preempted = rid in self._preempted
                self._preempted.discard(rid)
        by_user = rid in self._aborted
        self._aborted.discard(rid)
        if response.status_code >= 500:
            raise _ServerFailed(f"HTTP {response.status_code}: {response.text[:500]}")
        if response.status_code != 200:  # 4xx: this request is wrong, not the server; no retry
            raise EngineError(
                f"SGLang {server.url}/generate rejected a request with {len(input_ids)} input ids "
                f"(max_new_tokens {sampling.max_new_tokens}): HTTP {response.status_code} {response.text[:500]}"
            )
        # SGLang says "default" before its first update: the version this server was last checked at.
        out = proto.parse_generate_response(response.json(), server.version)
        out.meta["server"] = server.url
        if preempted and out.finish_reason == "abort" and not by_user:
            out.meta[_PREEMPTED] = True
        return out

    async def health(self) -> bool:
        """True while the engine is usable and at least one server answers ``/health_generate``."""
        if self._fatal is not None or not self._servers:
            return False
        results = await asyncio.gather(*(self._probe(s) for s in self._live()))
        return any(results)

    async def pause(self) -> None:
        """Hold new requests here and pause generation on the servers (``pause_mode``)."""
        self._admitted.clear()
        await self._broadcast("/pause_generation", proto.pause_payload(self.config.pause_mode))

    async def resume(self) -> None:
        """Continue generation on the servers and admit requests again."""
        await self._broadcast("/continue_generation", {})
        self._admitted.set()

    async def flush_cache(self) -> None:
        """Drop every server's prefix cache, each once it is idle (as a weight update's flush does)."""
        await self._broadcast(proto.flush_when_idle_path(self.config.control_timeout_s / 2), {})

    async def abort(self, session_id: str | None = None) -> None:
        """Abort in-flight requests of ``session_id`` (or all); they return ``finish_reason="abort"``."""
        for cut, sid in self._between.items():
            if session_id in (None, sid):
                cut.set()
        calls = []
        for server in self._live():
            if session_id is None:
                self._aborted.update(server.inflight)
                calls.append(self._post(server, "/abort_request", proto.abort_payload(None)))
                continue
            for rid, sid in list(server.inflight.items()):
                if sid == session_id:
                    self._aborted.add(rid)
                    calls.append(self._post(server, "/abort_request", proto.abort_payload(rid)))
        await asyncio.gather(*calls, return_exceptions=True)

    @property
    def server_urls(self) -> list[str]:
        """Current URLs (a restarted server gets a new port)."""
        return [s.url for s in self._servers]

    @property
    def processes(self) -> list[SGLangServerProcess | None]:
        """Launched server processes (None for connected servers), e.g. to read their logs."""
        return [s.process for s in self._servers]

    def alive_urls(self) -> list[str]:
        return [s.url for s in self._live()]

    @property
    def restarts_used(self) -> int:
        return self._restarts_used

    # ---- control calls -------------------------------------------------------------------------

    async def _post(self, server: _Server, path: str, payload: dict[str, Any]) -> httpx.Response:
        assert self._client is not None, "call start() first"
        response = await self._client.post(
            f"{server.url}{path}", json=payload, timeout=self.config.control_timeout_s
        )
        if response.status_code != 200:
            raise EngineError(
                f"SGLang {server.url}{path} failed: HTTP {response.status_code} {response.text[:500]}"
            )
        return response

    async def _broadcast(self, path: str, payload: dict[str, Any]) -> None:
        """POST to every live server; raise if any of them refuses."""
        servers = self._live()
        if not servers:
            raise EngineError(f"no live SGLang server to send {path} to; see the server logs")
        results = await asyncio.gather(
            *(self._post(s, path, payload) for s in servers), return_exceptions=True
        )
        errors = [_failure(s, r) for s, r in zip(servers, results, strict=True) if isinstance(r, Exception)]
        if errors:
            raise EngineError(f"SGLang {path} failed on {len(errors)} server(s): " + "; ".join(errors))


def _aborted_output(version: int, error: str) -> GenerateOutput:
    return GenerateOutput(
        output_ids=[], logprobs=[], finish_reason="abort", weight_version=version, meta={"error": error}
    )
