"""Real SGLang servers on CPU that hang or restart (docs/reliability.md D20):

* a SIGSTOPped server (it accepts connections and answers nothing) is found by the health probes, its
  request in flight is retried on the other server, new requests go around it, and it is restarted;
* a server that restarts while a weight update lands serves the new weights when it rejoins: its
  samples carry the new version and logprobs equal to transformers' on the new weights (the trainer's
  view), not the old ones.
"""

from __future__ import annotations

import asyncio
import os
import signal
import time
from pathlib import Path

from test_sglang_engine import (
    LOGPROB_TOL,
    prompt_ids,
    reference_logprobs,
    sglang_python_or_skip,
    sharpened_copy,
)

from agentrl.engines.base import SamplingParams
from agentrl.engines.sglang.engine import SGLangEngine, SGLangEngineConfig
from agentrl.engines.sglang.launcher import CPU_SERVER_ARGS
from agentrl.models import make_tiny_gpt2


async def _wait_for(predicate, timeout_s: float, what: str) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout_s
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.2)


def _config(model: Path, tmp_path: Path, num_servers: int) -> SGLangEngineConfig:
    return SGLangEngineConfig(
        model_path=str(model),
        num_servers=num_servers,
        python=sglang_python_or_skip(),
        sglang_args=CPU_SERVER_ARGS,
        log_dir=str(tmp_path / "logs"),
        startup_timeout_s=400,
        health_interval_s=0.5,
        health_timeout_s=3.0,
        health_failures=2,
        restart_budget=1,
        retry_backoff_s=0.1,
        request_timeout_s=300.0,
    )


def test_sigstopped_server_is_routed_around_and_restarted(tmp_path: Path) -> None:
    model = make_tiny_gpt2(tmp_path / "tiny")
    prompt = prompt_ids(model)

    async def main() -> None:
        async with SGLangEngine(_config(model, tmp_path, 2)) as engine:
            stopped = engine._servers[0]
            old_url, process = stopped.url, stopped.process
            assert process is not None and process.pid is not None
            engine._remember("victim", stopped)
            os.killpg(process.pid, signal.SIGSTOP)  # alive, port open, answers nothing
            started = time.monotonic()
            long = SamplingParams(max_new_tokens=32, temperature=1.0, ignore_eos=True)
            out = await asyncio.wait_for(engine.generate(prompt, long, session_id="victim"), 120)
            # Retried on the live server once the probes failed, long before the 300 s request timeout.
            assert out.meta["server"] == engine._servers[1].url and len(out.output_ids) == 32
            assert time.monotonic() - started < 60
            assert engine.restarts_used == 1  # declared dead: restarted, not waited for
            others = await engine.generate(prompt, SamplingParams(max_new_tokens=4), session_id="new")
            assert others.meta["server"] == engine._servers[1].url
            await _wait_for(lambda: len(engine.alive_urls()) == 2, 400, "the restarted server")
            assert engine.server_urls[0] != old_url and not process.running()
            four = SamplingParams(max_new_tokens=4, ignore_eos=True)  # "length" whatever it samples
            again = await engine.generate(prompt, four, session_id="victim")
            assert again.finish_reason == "length" and again.meta["server"] in engine.server_urls

    asyncio.run(main())


def test_restart_during_a_weight_update_serves_the_new_weights(tmp_path: Path) -> None:
    base = make_tiny_gpt2(tmp_path / "tiny")
    old = sharpened_copy(base, tmp_path / "v0", scale=6.0)
    new = sharpened_copy(base, tmp_path / "v1", scale=6.0, noise_seed=7)
    prompt = prompt_ids(old)

    async def main() -> None:
        async with SGLangEngine(_config(old, tmp_path, 1)) as engine:
            server = engine._servers[0]
            assert server.process is not None and server.process.pid is not None
            os.killpg(server.process.pid, signal.SIGKILL)
            await _wait_for(lambda: server.restarting, 30, "the restart to begin")
            # The restart launched with the old weights; the trainer's update lands while it starts.
            await engine.update_weights(new, version=1)
            await _wait_for(lambda: server.alive and not server.restarting, 400, "the restarted server")
            out = await engine.generate(prompt, SamplingParams(max_new_tokens=16, temperature=1.0))
            assert out.weight_version == 1
            want = reference_logprobs(new, prompt, out.output_ids)
            stale = reference_logprobs(old, prompt, out.output_ids)
            assert max(abs(a - b) for a, b in zip(out.logprobs, want, strict=True)) < LOGPROB_TOL
            assert max(abs(a - b) for a, b in zip(out.logprobs, stale, strict=True)) > 0.1

    asyncio.run(main())
