"""SGLangEngine's answers to server faults, against small fake SGLang servers over real HTTP
(docs/reliability.md D20-D21): a 4xx is a clear error and not retried, a 5xx is retried on another
server, a hung server (it accepts connections but answers nothing, as a SIGSTOPped one does) is found by
the health probes and its requests in flight are cut and retried elsewhere, and a server that does not
serve the synced weight version is an error; a request that a weight update cuts is continued under the
new weights (a partial rollout: one output, each id with its version), one the user aborts is not. The
real-server versions are in tests/integration/test_sglang_failover.py and
tests/integration/test_fully_async_sglang.py."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx
import pytest

from agentrl.engines.base import SamplingParams
from agentrl.engines.sglang.engine import SGLangEngine, SGLangEngineConfig
from agentrl.errors import EngineDeadError, EngineError


class FakeSGLang:
    """Answers /health_generate, /model_info, /generate and /update_weights_from_disk like SGLang.

    ``statuses``: HTTP codes to answer the next /generate calls with (then 200). ``hung``: while set,
    every request blocks (connections are accepted; nothing is answered). ``ignore_updates``: report the
    old weight version after an update (a server that did not load). ``hold_after``: the next /generate
    samples this many ids (logprob -0.5), then waits until /abort_request aborts it, and answers
    ``abort`` with them, as SGLang does."""

    def __init__(self) -> None:
        self.statuses: list[int] = []
        self.generate_calls = 0
        self.version = "default"
        self.ignore_updates = False
        self.drop_updates = False
        self.awake = threading.Event()
        self.awake.set()
        self.hold_after: int | None = None
        self.held = threading.Event()  # a held /generate has arrived
        self.abort_held = threading.Event()
        self.loading = threading.Event()  # cleared: /update_weights_from_disk waits (a slow load)
        self.loading.set()
        self.bodies: list[tuple[str, dict[str, Any]]] = []  # (path, body) of every POST
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                return None

            def _answer(self, status: int, body: dict[str, Any]) -> None:
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self) -> None:
                fake.awake.wait()
                if self.path == "/model_info":
                    self._answer(200, {"weight_version": fake.version})
                else:
                    self._answer(200, {})

            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                fake.awake.wait()
                fake.bodies.append((self.path, body))
                if self.path == "/abort_request":
                    fake.abort_held.set()
                    self._answer(200, {})
                    return
                if self.path.startswith("/flush_cache"):
                    self._answer(200, {})
                    return
                if self.path == "/update_weights_from_disk":
                    fake.loading.wait(10)
                if self.path == "/update_weights_from_disk":
                    if fake.drop_updates:  # killed mid-request: the connection closes unanswered
                        self.close_connection = True
                        return
                    if not fake.ignore_updates:
                        fake.version = body["weight_version"]
                    self._answer(200, {"success": True})
                    return
                if self.path == "/update_weight_version":
                    fake.version = body["new_version"]
                    self._answer(200, {"success": True})
                    return
                fake.generate_calls += 1
                status = fake.statuses.pop(0) if fake.statuses else 200
                if status != 200:
                    self._answer(status, {"error": {"message": f"fake error {status}"}})
                    return
                if fake.hold_after is not None:
                    ids, logprob, finish = [5] * fake.hold_after, -0.5, "abort"
                    fake.hold_after = None
                    fake.held.set()
                    fake.abort_held.wait(10)
                else:
                    ids, logprob, finish = [7] * body["sampling_params"]["max_new_tokens"], -1.0, "length"
                meta = {
                    "finish_reason": {"type": finish},
                    "weight_version": fake.version,
                    "output_token_logprobs": [[logprob, i, None] for i in ids],
                }
                self._answer(200, {"output_ids": ids, "meta_info": meta})

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.awake.set()
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def servers() -> Iterator[list[FakeSGLang]]:
    fakes = [FakeSGLang(), FakeSGLang()]
    yield fakes
    for fake in fakes:
        fake.close()


def _engine(fakes: list[FakeSGLang], **overrides: Any) -> SGLangEngine:
    config = SGLangEngineConfig(
        server_urls=tuple(f.url for f in fakes),
        health_interval_s=0.1,
        health_timeout_s=0.5,
        health_failures=2,
        retry_backoff_s=0.01,
        server_wait_s=2.0,
        **overrides,
    )
    return SGLangEngine(config)


SHORT = SamplingParams(max_new_tokens=3)


def test_a_4xx_answer_is_a_clear_error_and_not_retried(servers: list[FakeSGLang]) -> None:
    async def main() -> None:
        async with _engine(servers[:1]) as engine:
            servers[0].statuses = [400]
            with pytest.raises(EngineError, match="HTTP 400") as caught:
                await engine.generate([1, 2, 3], SHORT, session_id="s")
            assert servers[0].url in str(caught.value) and "fake error 400" in str(caught.value)
            assert "3 input ids" in str(caught.value)
            assert servers[0].generate_calls == 1  # the request is wrong, not the server: no retry
            assert engine.alive_urls() == [servers[0].url]
            out = await engine.generate([1, 2, 3], SHORT, session_id="s")  # the server still serves
            assert out.output_ids == [7, 7, 7]

    asyncio.run(main())


def test_a_5xx_answer_is_retried_on_another_server(servers: list[FakeSGLang]) -> None:
    async def main() -> None:
        async with _engine(servers) as engine:
            servers[0].statuses = [503]
            engine._remember("s", engine._servers[0])
            out = await engine.generate([1, 2, 3], SHORT, session_id="s")
            assert out.finish_reason == "length" and out.output_ids == [7, 7, 7]
            assert out.meta["server"] == servers[1].url
            assert (servers[0].generate_calls, servers[1].generate_calls) == (1, 1)

    asyncio.run(main())


def test_a_hung_server_is_routed_around_and_its_requests_in_flight_retried(servers: list[FakeSGLang]) -> None:
    async def main() -> None:
        async with _engine(servers, request_timeout_s=60.0) as engine:
            hung = servers[0]
            engine._remember("s", engine._servers[0])
            hung.awake.clear()  # accepts connections, answers nothing (like SIGSTOP)
            started = time.monotonic()
            out = await asyncio.wait_for(engine.generate([1, 2, 3], SHORT, session_id="s"), 30)
            # Cut by the health probes (2 x 0.5 s timeouts), not by the 60 s request timeout:
            assert time.monotonic() - started < 10
            assert out.meta["server"] == servers[1].url and out.output_ids == [7, 7, 7]
            assert engine.alive_urls() == [servers[1].url]
            more = await engine.generate([1], SHORT, session_id="s")
            assert more.meta["server"] == servers[1].url
            hung.awake.set()  # it answers again: the monitor brings it back
            deadline = time.monotonic() + 10
            while len(engine.alive_urls()) < 2:
                assert time.monotonic() < deadline, "the recovered server never came back"
                await asyncio.sleep(0.1)

    asyncio.run(main())


def test_servers_given_by_url_that_all_stay_dead_fail_the_engine(servers: list[FakeSGLang]) -> None:
    async def main() -> None:
        async with _engine(servers[:1]) as engine:
            servers[0].close()
            started = time.monotonic()
            with pytest.raises(EngineDeadError, match="no SGLang server answered"):
                for _ in range(100):
                    await engine.generate([1], SHORT)
            assert time.monotonic() - started < 15  # server_wait_s (2 s) plus detection
            with pytest.raises(EngineDeadError):  # and it stays failed
                await engine.generate([1], SHORT)

    asyncio.run(main())


def test_served_weight_version_is_checked_after_every_update(servers: list[FakeSGLang]) -> None:
    async def main() -> None:
        async with _engine(servers) as engine:
            await engine.update_weights("/ckpt/v1", version=1)
            assert [s.version for s in servers] == ["1", "1"] and engine.weight_version == 1
            out = await engine.generate([1], SHORT)
            assert out.weight_version == 1
            servers[1].ignore_updates = True  # it answers 200 but keeps serving version 1
            with pytest.raises(EngineError, match=r"serves weight version '1', the trainer's is 2"):
                await engine.update_weights("/ckpt/v2", version=2)

    asyncio.run(main())


def test_a_server_that_missed_an_update_reloads_the_newest_weights_before_it_rejoins(
    servers: list[FakeSGLang],
) -> None:
    async def main() -> None:
        async with _engine(servers, request_timeout_s=60.0) as engine:
            hung = servers[0]
            hung.awake.clear()
            deadline = time.monotonic() + 10
            while engine.alive_urls() != [servers[1].url]:
                assert time.monotonic() < deadline, "the hung server was never routed around"
                await asyncio.sleep(0.05)
            await engine.update_weights("/ckpt/v1", version=1)  # only the live server gets it
            assert (hung.version, servers[1].version) == ("default", "1")
            hung.awake.set()
            while len(engine.alive_urls()) < 2:
                assert time.monotonic() < deadline, "the recovered server never came back"
                await asyncio.sleep(0.05)
            assert hung.version == "1"  # loaded before it rejoined, never served with the old weights
            engine._remember("s", engine._servers[0])
            out = await engine.generate([1], SHORT, session_id="s")
            assert out.meta["server"] == hung.url and out.weight_version == 1

    asyncio.run(main())


class _DyingProcess:
    """A launched server's process as SGLangEngine sees it, SIGKILLed: its connections break a moment
    before the process can be reaped (``running()`` stays true for ``dies_after_s``)."""

    def __init__(self, url: str, dies_after_s: float = 0.0) -> None:
        self.url, self.log_path = url, "sglang.log"
        self.died_at = time.monotonic() + dies_after_s if dies_after_s else None
        self.killed = False

    def running(self) -> bool:
        return not self.killed and (self.died_at is None or time.monotonic() < self.died_at)

    def start(self) -> None:
        return None

    async def wait_healthy(self, timeout_s: float) -> None:
        return None

    def kill(self) -> None:
        self.killed = True

    def returncode(self) -> int | None:
        return None if self.running() else -9

    def log_tail(self) -> str:
        return ""


def test_a_launched_server_killed_during_a_weight_load_is_restarted_with_the_new_weights(
    servers: list[FakeSGLang],
) -> None:
    """The race CI met: the load's connection breaks (ReadError, empty message) while the process is not
    reaped yet; the update must not fail the run but restart the server, which then serves the update."""
    dying, fresh = servers

    async def main() -> None:
        engine = SGLangEngine(
            SGLangEngineConfig(model_path="/ckpt/v0", health_interval_s=0.1, exit_grace_s=2.0)
        )
        launched: list[str | None] = []

        def new_process(index: int, path: str | None = None) -> Any:
            launched.append(path)
            return _DyingProcess(fresh.url)

        engine._new_process = new_process  # type: ignore[method-assign,assignment]
        engine._client = httpx.AsyncClient(timeout=5.0)
        engine._servers = [engine._new_server(dying.url, _DyingProcess(dying.url))]  # type: ignore[arg-type]
        engine._monitor = asyncio.create_task(engine._monitor_loop())
        try:
            engine._servers[0].process.died_at = time.monotonic() + 0.3  # type: ignore[union-attr]
            dying.drop_updates = True
            await engine.update_weights("/ckpt/v1", version=1)  # no error: the restart loads v1
            deadline = time.monotonic() + 10
            while engine.alive_urls() != [fresh.url]:
                assert time.monotonic() < deadline, "the killed server was never replaced"
                await asyncio.sleep(0.05)
            assert launched == ["/ckpt/v1"] and engine._restarts_used == 1  # started from the new weights
            assert fresh.version == "1"
            out = await engine.generate([1], SHORT)
            assert out.weight_version == 1 and out.meta["server"] == fresh.url
        finally:
            await engine.close()

    asyncio.run(main())


def test_a_launched_server_still_running_after_a_broken_load_fails_the_update_naming_the_error(
    servers: list[FakeSGLang],
) -> None:
    async def main() -> None:
        engine = SGLangEngine(
            SGLangEngineConfig(model_path="/ckpt/v0", health_interval_s=60.0, exit_grace_s=0.3)
        )
        engine._client = httpx.AsyncClient(timeout=5.0)
        engine._servers = [engine._new_server(servers[0].url, _DyingProcess(servers[0].url))]  # type: ignore[arg-type]
        try:
            servers[0].drop_updates = True
            with pytest.raises(
                EngineError, match=r"loading weights version 1 failed on 1 server\(s\): .*: \w+Error"
            ):
                await engine.update_weights("/ckpt/v1", version=1)
        finally:
            await engine.close()

    asyncio.run(main())


async def _held_after_two_ids(engine: SGLangEngine, fake: FakeSGLang) -> asyncio.Task[Any]:
    """A 5-id request of session "s" that the fake server holds after its first 2 ids."""
    fake.hold_after = 2
    request = asyncio.create_task(
        engine.generate([1, 2, 3], SamplingParams(max_new_tokens=5), session_id="s")
    )
    assert await asyncio.to_thread(fake.held.wait, 10)
    return request


def test_a_request_cut_by_a_weight_update_continues_under_the_new_weights(servers: list[FakeSGLang]) -> None:
    """A partial rollout: the update aborts the request after 2 of its 5 ids (version 0, SGLang's
    "default"); the engine re-sends prompt + those 2 ids for the 3 left, and returns one output."""
    fake = servers[0]

    async def main() -> None:
        async with _engine(servers[:1]) as engine:
            request = await _held_after_two_ids(engine, fake)
            await engine.update_weights("/ckpt/v1", version=1)
            out = await asyncio.wait_for(request, 10)
            assert out.output_ids == [5, 5, 7, 7, 7]
            assert out.logprobs == [-0.5, -0.5, -1.0, -1.0, -1.0]
            assert out.finish_reason == "length"
            assert out.meta["token_versions"] == [0, 0, 1, 1, 1]
            assert out.weight_version == 0  # the oldest that sampled an id, as the embedded engine says
            generates = [body for path, body in fake.bodies if path == "/generate"]
            assert [g["input_ids"] for g in generates] == [[1, 2, 3], [1, 2, 3, 5, 5]]
            assert [g["sampling_params"]["max_new_tokens"] for g in generates] == [5, 3]
            # Cut, then waited for the server to be idle (its cache flushes), then loaded:
            paths = [path.split("?")[0] for path, _ in fake.bodies]
            assert paths == [
                "/generate",
                "/abort_request",
                "/flush_cache",
                "/update_weights_from_disk",
                "/generate",
            ]
            assert fake.bodies[1][1] == {"abort_all": True}
            # With nothing in flight, an update aborts nothing and a request is one piece.
            await engine.update_weights("/ckpt/v2", version=2)
            assert fake.bodies[-1][0] == "/update_weights_from_disk"
            again = await engine.generate([1], SHORT)
            assert (again.output_ids, again.weight_version) == ([7, 7, 7], 2)
            assert "token_versions" not in again.meta

    asyncio.run(main())


def test_a_request_aborted_by_the_user_is_not_continued(servers: list[FakeSGLang]) -> None:
    fake = servers[0]

    async def main() -> None:
        async with _engine(servers[:1]) as engine:
            request = await _held_after_two_ids(engine, fake)
            await engine.abort("s")
            out = await asyncio.wait_for(request, 10)
            assert (out.finish_reason, out.output_ids, out.weight_version) == ("abort", [5, 5], 0)
            assert "token_versions" not in out.meta
            assert fake.generate_calls == 1

    asyncio.run(main())


def test_a_cut_request_aborted_by_the_user_while_the_update_loads_is_not_continued(
    servers: list[FakeSGLang],
) -> None:
    fake = servers[0]

    async def main() -> None:
        async with _engine(servers[:1]) as engine:
            fake.hold_after, fake.loading = 2, threading.Event()  # the load takes until we set it
            request = asyncio.create_task(
                engine.generate([1, 2, 3], SamplingParams(max_new_tokens=5), session_id="s")
            )
            assert await asyncio.to_thread(fake.held.wait, 10)
            update = asyncio.create_task(engine.update_weights("/ckpt/v1", version=1))
            deadline = time.monotonic() + 10
            while not engine._between:  # cut, waiting for the new weights to continue
                assert time.monotonic() < deadline, "the cut request never waited to continue"
                await asyncio.sleep(0.01)
            await engine.abort("s")
            out = await asyncio.wait_for(request, 10)
            assert (out.finish_reason, out.output_ids, out.weight_version) == ("abort", [5, 5], 0)
            fake.loading.set()
            await asyncio.wait_for(update, 10)
            assert fake.generate_calls == 1 and not engine._aborted

    asyncio.run(main())
