"""The embedded engine's counters read through its Ray actor (what ``engine/`` metrics come from in every
``agentrl train``), and a dead actor: the rollout manager then reports none instead of failing the run."""

from __future__ import annotations

import asyncio
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import ray

from agentrl.engines.base import SamplingParams
from agentrl.engines.remote import EngineWorker, RemoteEngine, RemoteEngines
from agentrl.models import make_tiny_gpt2
from agentrl.rollout.driver import RolloutManager


@pytest.fixture(scope="module")
def local_ray() -> object:
    ray.init(address="local", num_cpus=2, include_dashboard=False, _node_ip_address="127.0.0.1")
    yield
    ray.shutdown()


def test_counters_through_the_actor_and_a_dead_actor(local_ray: object, tmp_path: Path) -> None:
    model = make_tiny_gpt2(tmp_path / "tiny")
    actors: list[Any] = [
        ray.remote(EngineWorker).options(max_concurrency=8).remote(str(model), 1, s, "cpu") for s in (0, 1)
    ]
    one, both = RemoteEngine(actors[0]), RemoteEngines(actors)
    sampling = SamplingParams(max_new_tokens=5, temperature=0.0, ignore_eos=True)
    out = asyncio.run(one.generate([5, 6, 7], sampling))
    assert len(out.output_ids) == 5

    read = RolloutManager.engine_stats  # the manager's own method, on a stand-in holding just the engine
    counters = read(SimpleNamespace(engine=one))  # type: ignore[arg-type]
    # 5 sampled ids: the first from the prefill, the other 4 from decode steps of one row
    assert counters["prefills"] == 1 and counters["prefill_tokens"] == 3
    assert counters["decode_tokens"] == 4 and counters["weight_updates"] == 0
    summed = read(SimpleNamespace(engine=both))  # type: ignore[arg-type]
    assert summed["engines"] == 2 and summed["decode_tokens"] == 4  # the second engine did nothing

    ray.kill(actors[1])
    with pytest.raises(ray.exceptions.RayActorError):
        _ = RemoteEngine(actors[1]).stats
    assert read(SimpleNamespace(engine=both)) == {}  # type: ignore[arg-type]
