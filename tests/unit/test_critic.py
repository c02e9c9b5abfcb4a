"""The torch backend's critic (``--advantage-estimator ppo``) on a tiny GPT-2 on CPU: it learns its
targets, warms up alone, is checkpointed exactly, exports and loads back, and is never handed to engines."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from agentrl.models import make_tiny_gpt2
from agentrl.trainer.backend import TrainBatch
from agentrl.trainer.batch import trajectories_to_batch
from agentrl.trainer.config import AlgorithmConfig, CriticConfig, OptimizerConfig, TorchBackendConfig
from agentrl.trainer.torch_backend import TorchBackend
from agentrl.types import Status, Trajectory

PPO = AlgorithmConfig(advantage_estimator="ppo", gamma=1.0, lambd=0.95)


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny_gpt2(tmp_path_factory.mktemp("models") / "tiny-gpt2", seed=0)


def _backend(model: Path, critic: CriticConfig | None = None) -> TorchBackend:
    config = TorchBackendConfig(
        device="cpu",
        algorithm=PPO,
        optimizer=OptimizerConfig(lr=1e-3),
        critic=critic or CriticConfig(critic_lr=1e-2),
    )
    return TorchBackend(model, config)


def _batch(seed: int) -> TrainBatch:
    """Three two-turn episodes with a tool output in the middle, one of them truncated."""
    g = torch.Generator().manual_seed(seed)
    trajs = []
    for i, reward in enumerate([1.0, 0.0, 0.5]):
        ids = torch.randint(1, 200, (7,), generator=g).tolist()
        trajs.append(
            Trajectory(
                prompt_ids=ids[:2],
                response_ids=ids[2:],
                loss_mask=[1, 1, 0, 0, 1],
                rollout_logprobs=[-1.0, -1.0, 0.0, 0.0, -1.0],
                reward=reward,
                status=Status.TRUNCATED if i == 2 else Status.COMPLETED,
                group_id="a",
            )
        )
    batch, _ = trajectories_to_batch(trajs, PPO)
    return batch


def _params(backend: TorchBackend) -> dict[str, torch.Tensor]:
    assert backend.critic is not None
    policy = {f"policy.{k}": v.detach().clone() for k, v in backend.model.state_dict().items()}
    critic = {f"critic.{k}": v.detach().clone() for k, v in backend.critic.model.state_dict().items()}
    return {**policy, **critic}


def test_critic_learns_its_targets_and_is_never_synced(tiny_model: Path) -> None:
    backend = _backend(tiny_model)
    batch = _batch(0)
    assert backend.critic is not None
    initial = backend.critic.values(batch.input_ids)
    assert all(v.abs().sum() == 0 for v in initial)  # value head starts at 0
    losses = [backend.train_step(batch)["vf_loss"] for _ in range(30)]
    assert losses[-1] < 0.2 * losses[0], losses
    # The policy's weights are what engines get: no critic tensor among them.
    assert {name for name, _ in backend.hf_state_dict()} == set(backend.model.state_dict())


def test_critic_warmup_steps_leave_the_policy_alone(tiny_model: Path) -> None:
    backend = _backend(tiny_model, CriticConfig(critic_lr=1e-2, critic_warmup_steps=2))
    batch = _batch(1)
    before = _params(backend)
    for _ in range(2):
        metrics = backend.train_step(batch)
        assert metrics["critic_warmup"] == 1.0
    warmed = _params(backend)
    policy_keys = [k for k in before if k.startswith("policy.")]
    critic_keys = [k for k in before if k.startswith("critic.")]
    assert all(torch.equal(before[k], warmed[k]) for k in policy_keys)
    assert any(not torch.equal(before[k], warmed[k]) for k in critic_keys)
    assert "critic_warmup" not in backend.train_step(batch)
    after = _params(backend)
    assert any(not torch.equal(warmed[k], after[k]) for k in policy_keys)


def test_value_clip_is_anchored_at_the_rollout_values(tiny_model: Path) -> None:
    # Two mini-batches of one rollout are valued before either is trained on (as PPO does): after the
    # first step moved the critic, the second step's values are more than the tiny clip away from
    # their anchors on some tokens. Recomputing the anchors per step would give a clip fraction of 0.
    backend = _backend(tiny_model, CriticConfig(critic_lr=5e-2, value_clip=1e-4))
    batches, metrics = backend.estimate_advantages([_batch(2), _batch(2)])
    assert "explained_var" in metrics
    first = backend.train_step(batches[0])
    second = backend.train_step(batches[1])
    assert first["vf_clip_frac"] == 0.0  # anchors are the current values: nothing moved yet
    assert second["vf_clip_frac"] > 0.0


def test_save_load_resumes_policy_and_critic_exactly(tiny_model: Path, tmp_path: Path) -> None:
    straight = _backend(tiny_model, CriticConfig(critic_lr=1e-2, critic_lr_warmup_steps=3))
    for seed in (3, 4):
        straight.train_step(_batch(seed))
    straight.save(tmp_path / "ckpt")
    tail = [straight.train_step(_batch(seed)) for seed in (5, 6)]
    want = _params(straight)

    resumed = _backend(tiny_model, CriticConfig(critic_lr=1e-2, critic_lr_warmup_steps=3))
    resumed.load(tmp_path / "ckpt")
    assert resumed.critic is not None and resumed.critic.step == 2
    again = [resumed.train_step(_batch(seed)) for seed in (5, 6)]
    got = _params(resumed)
    assert [m["vf_loss"] for m in again] == [m["vf_loss"] for m in tail]
    assert [m["critic_lr"] for m in again] == [m["critic_lr"] for m in tail]  # schedule restored
    for name, tensor in want.items():
        torch.testing.assert_close(got[name], tensor, atol=1e-6, rtol=0, msg=name)


def test_exported_critic_loads_back_with_its_value_head(tiny_model: Path, tmp_path: Path) -> None:
    backend = _backend(tiny_model)
    batch = _batch(7)
    for _ in range(3):
        backend.train_step(batch)
    assert backend.critic is not None
    trained = backend.critic.values(batch.input_ids)
    backend.export_critic_hf(tmp_path / "critic")
    loaded = _backend(tiny_model, CriticConfig(critic_model=str(tmp_path / "critic")))
    assert loaded.critic is not None
    for a, b in zip(loaded.critic.values(batch.input_ids), trained, strict=True):
        torch.testing.assert_close(a, b)
    assert any(v.abs().sum() > 0 for v in trained)  # a head of zeros would pass trivially
