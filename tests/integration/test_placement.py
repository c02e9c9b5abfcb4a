"""Placement on a local Ray with two logical GPUs (no CUDA needed): which bundle every trainer rank and
engine lands on, the disaggregated weight broadcast (gloo here, NCCL on GPUs) between real actors, and
colocated release/resume of engine memory around the train step."""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, ClassVar

import pytest

from agentrl.engines.base import SamplingParams
from agentrl.errors import ConfigError
from agentrl.models import make_tiny_gpt2
from agentrl.run.placement import NCCL_SAFE_ENV, PlacedActors, plan_placement
from agentrl.run.train_config import PlacementConfig, TrainConfig

ray = pytest.importorskip("ray")


@pytest.fixture(scope="module")
def local_ray() -> Iterator[None]:
    if ray.is_initialized():
        ray.shutdown()
    ray.init(
        address="local",
        num_cpus=2,
        num_gpus=2,
        include_dashboard=False,
        _node_ip_address="127.0.0.1",
        configure_logging=False,
    )
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny_gpt2(tmp_path_factory.mktemp("models") / "tiny-gpt2", seed=3)


def test_plans() -> None:
    plan = plan_placement("disaggregated", 4)
    assert (plan.trainer_bundles, plan.engine_bundles, plan.gpu_share) == ((0, 1), (2, 3), 1.0)
    assert plan_placement("disaggregated", 3, trainer_gpus=2).engine_bundles == (2,)
    plan = plan_placement("colocated", 2)
    assert (plan.trainer_bundles, plan.engine_bundles, plan.gpu_share) == ((0, 1), (0, 1), 0.5)
    with pytest.raises(ConfigError, match="trainer GPUs"):
        plan_placement("disaggregated", 2, trainer_gpus=2)
    with pytest.raises(ConfigError, match="num-gpus >= 2"):
        PlacementConfig(placement="disaggregated", num_gpus=1)
    with pytest.raises(ConfigError, match="--trainer-gpus must be 2"):
        PlacementConfig(placement="colocated", num_gpus=2, trainer_gpus=1)
    plan = plan_placement("shared", 1)  # the bundles of colocated: one GPU holds both sides
    assert (plan.trainer_bundles, plan.engine_bundles, plan.gpu_share) == ((0,), (0,), 0.5)
    with pytest.raises(ConfigError, match="--placement shared shares all 2 GPUs"):
        PlacementConfig(placement="shared", num_gpus=2, trainer_gpus=1)


def _start(mode: str, tiny_model: Path) -> PlacedActors:
    from agentrl.run.actors import EngineWorker, TrainerWorker
    from agentrl.run.placement import create_placement_group, start_engines, start_trainer_ranks

    placement = PlacementConfig(num_gpus=2, placement=mode)  # type: ignore[arg-type]
    config = TrainConfig(model=str(tiny_model), placement=placement, num_cpus=1)
    plan = plan_placement(placement.placement, placement.num_gpus, placement.trainer_gpus)
    group = create_placement_group(plan, timeout_s=60)
    trainers = start_trainer_ranks(TrainerWorker, plan, group, str(tiny_model), config)
    engines = start_engines(EngineWorker, plan, group, str(tiny_model), 1, 0)
    return PlacedActors(plan, group, trainers, engines)


def _kill(placed: PlacedActors) -> None:
    for actor in [*placed.trainer_ranks, *placed.engines]:
        ray.kill(actor)
    placed.shutdown()


def _greedy(engine: Any, ids: list[int]) -> Any:
    return ray.get(engine.generate.remote(ids, SamplingParams(max_new_tokens=6, temperature=0.0)))


def test_disaggregated_bundles_and_weight_broadcast(local_ray: None, tiny_model: Path) -> None:
    import torch

    placed = _start("disaggregated", tiny_model)
    try:
        group_id = placed.group.id.hex()
        (trainer,), (engine,) = placed.trainer_ranks, placed.engines
        t_info, e_info = ray.get([trainer.placement_info.remote(), engine.placement_info.remote()])
        assert t_info["placement_group"] == e_info["placement_group"] == group_id
        assert t_info["resources"] == e_info["resources"] == {"GPU": 1.0}  # a whole GPU each
        assert sorted(t_info["gpu_ids"] + e_info["gpu_ids"]) == ["0", "1"]  # separate GPUs
        assert t_info["env"]["RANK"] == "0" and t_info["env"]["WORLD_SIZE"] == "1"
        for info in (t_info, e_info):
            assert all(info["env"][k] == v for k, v in NCCL_SAFE_ENV.items())

        prompt = [5, 9, 2, 7]
        served = _greedy(engine, prompt)
        # Scramble the engine's weights: after that its logprobs cannot match the trainer's model.
        weights = ray.get(trainer.state_dict.remote())
        ray.get(engine.update_weights.remote({k: torch.zeros_like(v) for k, v in weights.items()}, 1))
        zeroed = _greedy(engine, prompt)
        assert zeroed.logprobs != pytest.approx(served.logprobs, abs=1e-4)

        placed.connect_weights()
        assert [m.name for m in placed.metas] == list(weights)
        seconds = placed.broadcast_weights(version=2)
        synced = _greedy(engine, prompt)
        assert seconds > 0
        assert synced.weight_version == 2
        assert synced.output_ids == served.output_ids
        assert synced.logprobs == pytest.approx(served.logprobs, abs=1e-5)
    finally:
        _kill(placed)


def test_colocated_bundles_and_embedded_release_resume(local_ray: None, tiny_model: Path) -> None:
    placed = _start("colocated", tiny_model)
    try:
        group_id = placed.group.id.hex()
        infos = ray.get([a.placement_info.remote() for a in [*placed.trainer_ranks, *placed.engines]])
        t0, t1, e0, e1 = infos
        assert all(i["placement_group"] == group_id and i["resources"] == {"GPU": 0.5} for i in infos)
        # Trainer rank i and engine i share bundle i's GPU; the two bundles are different GPUs.
        assert t0["gpu_ids"] == e0["gpu_ids"] and t1["gpu_ids"] == e1["gpu_ids"]
        assert sorted(t0["gpu_ids"] + t1["gpu_ids"]) == ["0", "1"]
        assert [t0["env"]["RANK"], t1["env"]["RANK"], t1["env"]["WORLD_SIZE"]] == ["0", "1", "2"]

        engine = placed.engines[0]
        prompt = [3, 1, 4, 1, 5]
        before = _greedy(engine, prompt)
        ray.get(engine.release_memory.remote())
        assert ray.get(engine.model_device.remote()) == "cpu"
        pending = engine.generate.remote(prompt, SamplingParams(max_new_tokens=6, temperature=0.0))
        ready, _ = ray.wait([pending], timeout=1.0)
        assert not ready  # released: nothing generates until resume
        ray.get(engine.resume_memory.remote())
        after = ray.get(pending, timeout=60)
        # Same tokens; logprobs equal up to float noise (the second request reuses the prompt's cached KV).
        assert after.output_ids == before.output_ids
        assert max(abs(a - b) for a, b in zip(after.logprobs, before.logprobs, strict=True)) < 1e-5
    finally:
        _kill(placed)


def test_shared_engines_keep_serving_through_the_train_step(local_ray: None, tiny_model: Path) -> None:
    placed = _start("shared", tiny_model)
    try:
        infos = ray.get([a.placement_info.remote() for a in [*placed.trainer_ranks, *placed.engines]])
        t0, t1, e0, e1 = infos
        assert all(i["resources"] == {"GPU": 0.5} for i in infos)
        assert t0["gpu_ids"] == e0["gpu_ids"] and t1["gpu_ids"] == e1["gpu_ids"]
        engine = placed.engines[0]
        prompt = [3, 1, 4, 1, 5]
        before = _greedy(engine, prompt)
        metrics: dict[str, float] = {}
        # No rollout manager is reached: a shared engine is never asked to release its memory.
        with placed.engines_released(rollout=object(), metrics=metrics):
            during = _greedy(engine, prompt)  # served while the train step's body runs
        assert metrics == {}
        assert during.output_ids == before.output_ids
    finally:
        _kill(placed)


class _RecordingSGLang(BaseHTTPRequestHandler):
    """Answers 200 to everything and records each POST (the SGLang server edge)."""

    calls: ClassVar[list[tuple[str, Any]]] = []

    def do_GET(self) -> None:
        self._ok()

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        self.calls.append((self.path, json.loads(body) if body else None))
        self._ok()

    def _ok(self) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.end_headers()
        self.wfile.write(b"{}")

    def log_message(self, *args: Any) -> None:
        pass


def test_sglang_release_and_resume_requests() -> None:
    from agentrl.engines.memory import set_engine_memory
    from agentrl.engines.sglang.engine import SGLangEngine, SGLangEngineConfig

    server = ThreadingHTTPServer(("127.0.0.1", 0), _RecordingSGLang)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_address[1]}"

    async def cycle() -> None:
        async with SGLangEngine(SGLangEngineConfig(server_urls=(url,), health_interval_s=60)) as engine:
            await set_engine_memory(engine, "release")
            await set_engine_memory(engine, "resume")

    try:
        asyncio.run(cycle())
    finally:
        server.shutdown()
    assert [(p, b) for p, b in _RecordingSGLang.calls if p != "/pause_generation"] == [
        ("/release_memory_occupation", {"tags": None}),
        ("/resume_memory_occupation", {"tags": None}),
        ("/continue_generation", {}),
    ]
    assert _RecordingSGLang.calls[0][0] == "/pause_generation"
