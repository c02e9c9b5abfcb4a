"""The ``engine/`` metrics of a rollout (agentrl/run/metrics.py: engine_metrics), from the embedded
engine's counters before and after it, against hand-computed numbers; and from a real engine."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from agentrl.run.metrics import engine_metrics


def test_deltas_and_rates_by_hand() -> None:
    before = {"prefills": 2, "prefill_requests": 3, "prefill_tokens": 100, "cached_tokens": 0, "prefill_s": 1.0,
              "decode_steps": 10,
              "decode_tokens": 40, "decode_s": 2.0}  # fmt: skip
    after = {"prefills": 6, "prefill_requests": 15, "prefill_tokens": 400, "cached_tokens": 100, "prefill_s": 1.5,
             "decode_steps": 60,
             "decode_tokens": 240, "decode_s": 3.5}  # fmt: skip
    out = engine_metrics(before, after, wall_s=4.0)
    assert out["engine/prefill_tokens"] == 300 and out["engine/cached_tokens"] == 100
    assert out["engine/decode_steps"] == 50 and out["engine/decode_tokens"] == 200
    assert out["engine/busy_frac"] == pytest.approx((0.5 + 1.5) / 4.0)  # half the rollout the engine waited
    assert out["engine/mean_decode_batch"] == pytest.approx(200 / 50)
    assert out["engine/prefix_hit_rate"] == pytest.approx(100 / 400)
    assert out["engine/mean_prefill_batch"] == pytest.approx(12 / 4)  # 12 requests in 4 prefills
    assert out["engine/decode_tokens_per_s"] == pytest.approx(200 / 4.0)


def test_engines_without_counters_give_nothing() -> None:
    assert engine_metrics({}, {}, 1.0) == {}


def test_counters_of_a_real_engine(tmp_path: Path) -> None:
    """Two requests with the same 12-id prompt in one session: the second turn reuses the first's KV."""
    from agentrl.engines.base import SamplingParams
    from agentrl.engines.embedded.engine import EmbeddedEngine, EmbeddedEngineConfig
    from agentrl.models import make_tiny_gpt2

    engine = EmbeddedEngine(make_tiny_gpt2(tmp_path / "tiny"), EmbeddedEngineConfig(device="cpu"))
    try:
        prompt = list(range(5, 17))
        sampling = SamplingParams(max_new_tokens=4, temperature=0.0, ignore_eos=True)
        before = dict(engine.stats)
        first = asyncio.run(engine.generate(prompt, sampling, session_id="s"))
        asyncio.run(engine.generate(prompt + first.output_ids + [7, 8], sampling, session_id="s"))
        out = engine_metrics(before, dict(engine.stats), wall_s=1.0)
    finally:
        asyncio.run(engine.close())
    assert out["engine/decode_tokens"] >= 6  # 2 x 4 new ids, the first of each may come from prefill
    assert out["engine/cached_tokens"] > 0 and 0 < out["engine/prefix_hit_rate"] < 1
    assert out["engine/prefills"] == 2 and out["engine/mean_prefill_batch"] == 1.0  # one turn at a time


def test_several_engines_summed_give_busy_frac_per_engine() -> None:
    before = {"engines": 2, "prefill_s": 0.0, "decode_s": 0.0, "decode_steps": 0, "decode_tokens": 0}
    after = {"engines": 2, "prefill_s": 1.0, "decode_s": 3.0, "decode_steps": 10, "decode_tokens": 80}
    out = engine_metrics(before, after, wall_s=4.0)
    assert out["engine/busy_frac"] == pytest.approx(4.0 / 2 / 4.0)  # 4 engine-seconds of 2 engines in 4 s
    assert "engine/engines" not in out


def test_a_weight_update_under_a_running_request_is_counted(tmp_path: Path) -> None:
    """A request generating when new weights load: one update, under one running request; generation
    stood still for the load (update_s) and the update waited for the worker's step (update_wait_s)."""
    from agentrl.engines.base import SamplingParams
    from agentrl.engines.embedded.engine import EmbeddedEngine, EmbeddedEngineConfig
    from agentrl.models import make_tiny_gpt2

    engine = EmbeddedEngine(make_tiny_gpt2(tmp_path / "tiny"), EmbeddedEngineConfig(device="cpu"))
    state = {k: v.clone() for k, v in engine.model.state_dict().items()}

    async def update_under_a_request() -> None:
        sampling = SamplingParams(max_new_tokens=400, temperature=1.0, ignore_eos=True)
        running = asyncio.ensure_future(engine.generate(list(range(5, 17)), sampling))
        while engine.stats["decode_steps"] < 3:  # it is decoding
            await asyncio.sleep(0.005)
        await engine.update_weights(state, version=1)
        out = await running
        assert out.meta["token_versions"][-1] == 1  # it went on under the new weights

    try:
        before = dict(engine.stats)
        asyncio.run(update_under_a_request())
        out = engine_metrics(before, dict(engine.stats), wall_s=1.0)
    finally:
        asyncio.run(engine.close())
    assert out["engine/weight_updates"] == 1
    assert out["engine/update_running"] == 1
    assert out["engine/update_s"] > 0 and out["engine/update_wait_s"] >= 0
