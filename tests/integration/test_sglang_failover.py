"""A real SGLang server killed mid-rollout (docs/reliability.md D20): nothing lost, restart, then budget.

Two launched servers, restart budget 1. Phase 1: SIGKILL server 0 while requests are in flight on
it; every request still returns (retried on server 1, or aborted) and none is served by the dead one.
Phase 2: the engine restarts server 0 and serves on both again. Phase 3: SIGKILL server 1; the budget is
spent, so the engine fails loudly (EngineError) instead of limping on.
"""

from __future__ import annotations

import asyncio
import os
import signal
import time
from pathlib import Path

import pytest
from transformers import AutoTokenizer

from agentrl.engines.base import GenerateOutput, SamplingParams
from agentrl.engines.sglang.engine import SGLangEngine, SGLangEngineConfig
from agentrl.engines.sglang.launcher import CPU_SERVER_ARGS, SGLangServerProcess, find_sglang_python
from agentrl.errors import ConfigError, EngineError
from agentrl.models import make_tiny_gpt2


def _sigkill(process: SGLangServerProcess | None) -> None:
    assert process is not None and process.pid is not None
    os.killpg(process.pid, signal.SIGKILL)


async def _wait_for(predicate, timeout_s: float) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout_s
    while not predicate():
        assert time.monotonic() < deadline, "timed out waiting for the engine"
        await asyncio.sleep(0.2)


async def _scenario(engine: SGLangEngine, prompt: list[int]) -> None:
    long = SamplingParams(max_new_tokens=300, temperature=1.0, ignore_eos=True)  # still running at the kill
    # Phase 1: 8 sessions, balanced over both servers, all mid-generation when server 0 dies.
    tasks = [asyncio.create_task(engine.generate(prompt, long, session_id=f"ep-{i}")) for i in range(8)]
    killed_url = engine.server_urls[0]
    await _wait_for(lambda: len(engine._servers[0].inflight) >= 2, 30)
    on_killed = set(engine._servers[0].inflight.values())
    _sigkill(engine.processes[0])
    outs: list[GenerateOutput] = await asyncio.wait_for(asyncio.gather(*tasks), 600)

    assert len(outs) == 8  # every request came back
    assert all(o.finish_reason in ("stop", "length", "abort") for o in outs)
    assert all(len(o.output_ids) == len(o.logprobs) for o in outs)
    victims = [out for i, out in enumerate(outs) if f"ep-{i}" in on_killed]
    assert len(victims) >= 2
    for out in victims:  # retried elsewhere, or returned as aborted; never served by the dead server
        assert out.finish_reason == "abort" or out.meta["server"] != killed_url

    # Phase 2: the dead server is restarted (new port) and both serve.
    await _wait_for(lambda: engine.restarts_used == 1 and len(engine.alive_urls()) == 2, 400)
    assert engine.server_urls[0] != killed_url
    short = SamplingParams(max_new_tokens=4)
    more = await asyncio.gather(*(engine.generate(prompt, short, session_id=f"new-{i}") for i in range(6)))
    assert {o.meta["server"] for o in more} == set(engine.server_urls)

    # Phase 3: another death with the budget spent fails the engine loudly.
    _sigkill(engine.processes[1])
    with pytest.raises(EngineError, match="restart budget"):
        for _ in range(50):
            await engine.generate(prompt, short)
            await asyncio.sleep(0.2)


def test_server_killed_mid_rollout(tmp_path: Path) -> None:
    try:
        python = find_sglang_python()
    except ConfigError as exc:
        pytest.skip(f"SGLang venv not installed (run scripts/setup_sglang.sh): {exc}")
    model = make_tiny_gpt2(tmp_path / "tiny")
    prompt = list(AutoTokenizer.from_pretrained(model)("The capital of France is")["input_ids"])
    config = SGLangEngineConfig(
        model_path=str(model),
        num_servers=2,
        python=python,
        sglang_args=CPU_SERVER_ARGS,
        log_dir=str(tmp_path / "logs"),
        startup_timeout_s=400,
        health_interval_s=0.5,
        restart_budget=1,
        retry_backoff_s=0.1,
    )

    async def main() -> None:
        async with SGLangEngine(config) as engine:
            await _scenario(engine, prompt)

    asyncio.run(main())
