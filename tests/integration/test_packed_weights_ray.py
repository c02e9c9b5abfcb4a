"""Weight sync on the CPU through a local Ray (issue 17): the trainer puts its weights in the object store
once and sends a reference, or, for an engine on its machine, refills one shared buffer and sends its
name; an actor in between (the rollout manager) passes the record on without the weights; the engine
maps them and loads exactly the trainer's weights."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch

from agentrl.engines.packed_weights import PackedWeights
from agentrl.models import make_tiny_gpt2
from agentrl.run.train_config import TrainConfig

ray = pytest.importorskip("ray")


@pytest.fixture(scope="module")
def local_ray() -> Iterator[None]:
    if ray.is_initialized():
        ray.shutdown()
    ray.init(address="local", num_cpus=1, include_dashboard=False, _node_ip_address="127.0.0.1")
    yield
    ray.shutdown()


def test_trainer_weights_reach_the_engine_by_reference(local_ray: None, tmp_path: Path) -> None:
    from agentrl.engines.remote import EngineWorker
    from agentrl.run.actors import TrainerWorker

    class Trainer(TrainerWorker):
        def perturb(self) -> None:  # weights the engine did not load at start: a no-op sync fails the test
            with torch.no_grad():
                for p in self.backend.model.parameters():
                    p.mul_(1.25).add_(0.5)

    class Engine(EngineWorker):
        def weights(self) -> dict[str, torch.Tensor]:
            return {k: v.detach().clone() for k, v in self.engine.model.state_dict().items()}

    class Relay:  # stands where the rollout manager stands
        def forward(self, packed: PackedWeights, engine: Any) -> tuple[bool, bool]:
            ray.get(engine.update_weights.remote(packed, 3))
            return packed.host is None, packed.host_ref is not None

    model = make_tiny_gpt2(tmp_path / "tiny", seed=5)
    trainer = ray.remote(Trainer).remote(str(model), TrainConfig(model=str(model), num_cpus=1))
    engine = ray.remote(Engine).options(max_concurrency=8).remote(str(model), 1, 0, "cpu")
    ray.get(trainer.perturb.remote())
    record = trainer.weights_for_engine.remote({"dtype": "float32"})
    no_host, has_ref = ray.get(ray.remote(Relay).remote().forward.remote(record, engine))
    assert no_host and has_ref  # the relay got a reference, never the buffer

    expected, got = ray.get([trainer.state_dict.remote(), engine.weights.remote()])
    before = make_state(model)
    assert any(not torch.equal(before[k], v) for k, v in expected.items())
    for name, tensor in expected.items():
        assert torch.equal(got[name], tensor), name


def test_an_engine_on_the_same_machine_reads_the_shared_buffer_at_each_sync(
    local_ray: None, tmp_path: Path
) -> None:
    """An engine on the trainer's machine (its target names the same Ray node) gets the name of the
    trainer's shared buffer, not the weights; two syncs of different weights reuse that one buffer, and
    after each the engine holds exactly the trainer's weights of that sync."""
    from agentrl.engines.packed_weights import SHM_DIR
    from agentrl.engines.remote import EngineWorker
    from agentrl.run.actors import TrainerWorker

    class Trainer(TrainerWorker):
        def perturb(self, scale: float) -> None:
            with torch.no_grad():
                for p in self.backend.model.parameters():
                    p.mul_(scale).add_(0.5)

    class Engine(EngineWorker):
        def weights(self) -> dict[str, torch.Tensor]:
            return {k: v.detach().clone() for k, v in self.engine.model.state_dict().items()}

    model = make_tiny_gpt2(tmp_path / "tiny", seed=5)
    trainer = ray.remote(Trainer).remote(str(model), TrainConfig(model=str(model), num_cpus=1))
    engine = ray.remote(Engine).options(max_concurrency=8).remote(str(model), 1, 0, "cpu")
    target = ray.get(engine.weights_target.remote())
    names, states = [], []
    for version, scale in ((1, 1.25), (2, -0.5)):
        ray.get(trainer.perturb.remote(scale))
        packed = ray.get(trainer.weights_for_engine.remote(target))
        assert packed.host is None and packed.host_ref is None and packed.shared_name is not None
        ray.get(engine.update_weights.remote(packed, version))
        ray.get(trainer.release_engine_weights.remote())
        assert not (SHM_DIR / packed.shared_name).exists()  # mapped by both: the name is gone
        names.append(packed.shared_name)
        expected, got = ray.get([trainer.state_dict.remote(), engine.weights.remote()])
        for name, tensor in expected.items():
            assert torch.equal(got[name], tensor), (version, name)
        states.append(expected)
    assert names[0] == names[1]  # one buffer, refilled
    assert any(not torch.equal(states[0][k], v) for k, v in states[1].items())
    ray.get(trainer.close_engine_weights.remote())


def make_state(folder: Path) -> dict[str, torch.Tensor]:
    from transformers import AutoModelForCausalLM

    return dict(AutoModelForCausalLM.from_pretrained(folder).state_dict())


def test_the_engine_actors_target_reaches_the_trainer(local_ray: None, tmp_path: Path) -> None:
    """`Run.sync_weights` asks the rollout manager where the engine keeps its weights; for engines in
    their own actors (`RemoteEngine(s)`) that must reach the actor's engine, or a trainer on the engine's
    GPU never hands weights over by CUDA IPC (they would always go through host memory)."""
    from agentrl.engines.remote import EngineWorker, RemoteEngine, RemoteEngines

    model = make_tiny_gpt2(tmp_path / "tiny", seed=5)
    actors = [
        ray.remote(EngineWorker).options(max_concurrency=8).remote(str(model), 1, 0, "cpu") for _ in range(2)
    ]
    node = ray.get_runtime_context().get_node_id()  # this one machine's Ray node
    want = {"device_uuid": None, "dtype": "float32", "node_id": node}  # the CPU engine's: no GPU, fp32
    assert RemoteEngine(actors[0]).weights_target() == want
    assert RemoteEngines(actors).weights_target() == want
