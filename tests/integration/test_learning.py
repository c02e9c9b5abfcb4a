"""Seeded CPU learning test: a tiny GPT-2 learns to write the letter 'e', and does not with the sign flipped.

The reward (share of 'e' characters in one sampled turn, see tiny_envs.LetterEnv) is measured by the env,
independently of the trainer. Stated margin: over 10 rollouts of 64 episodes (GRPO, lr 1e-2), the mean
share of the last two rollouts exceeds the first two by at least 0.05 (measured: 0.09 -> 0.20);
with the reward's sign flipped the share must not rise by more than 0.01, so the improvement comes from
the gradient's direction, not from drift.
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

import pytest
import ray
import tiny_envs

from agentrl.models import make_tiny_gpt2
from agentrl.rollout.controller import RolloutConfig
from agentrl.run.async_config import AsyncConfig
from agentrl.run.loop import train
from agentrl.run.metrics import read_metrics
from agentrl.run.train_config import TrainConfig
from agentrl.trainer.config import AlgorithmConfig, CriticConfig, OptimizerConfig

ROLLOUTS = 10
MARGIN = 0.05


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny_gpt2(tmp_path_factory.mktemp("models") / "tiny-gpt2", seed=0)


@pytest.fixture(scope="module", autouse=True)
def local_ray() -> object:
    # The env class lives in a test module that Ray workers cannot import: ship it by value.
    ray.cloudpickle.register_pickle_by_value(tiny_envs)
    yield
    ray.shutdown()


def letter_share_curve(model: Path, log_dir: Path, sign: float, **settings: Any) -> list[float]:
    config = TrainConfig(
        env="letter",
        model=str(model),
        rollout_batch_size=8,
        n_samples_per_prompt=8,
        global_batch_size=64,
        num_rollouts=ROLLOUTS,
        rollout=RolloutConfig(max_turns=1, max_new_tokens=12, max_context=256),
        eval_episodes=0,
        dump_interval=0,
        progress=False,
        export_hf=False,
        log_dir=str(log_dir),
        seed=0,
        num_cpus=2,
        optimizer=OptimizerConfig(lr=1e-2),
        **settings,
    )
    train(config, env_factory=functools.partial(tiny_envs.LetterEnv, sign=sign))
    records = [r for r in read_metrics(log_dir / "metrics.jsonl") if r.get("rollout/reward") is not None]
    assert [r["step"] for r in records] == list(range(1, ROLLOUTS + 1))
    return [sign * r["rollout/reward"] for r in records]  # the share of 'e', whatever the sign


def _mean(xs: list[float]) -> float:
    return sum(xs) / len(xs)


def test_grpo_learns_the_letter_and_fails_with_the_sign_flipped(tiny_model: Path, tmp_path: Path) -> None:
    learned = letter_share_curve(tiny_model, tmp_path / "plus", sign=1.0)
    gain = _mean(learned[-2:]) - _mean(learned[:2])
    assert gain >= MARGIN, f"share of 'e' per rollout: {learned}"
    flipped = letter_share_curve(tiny_model, tmp_path / "minus", sign=-1.0)
    assert _mean(flipped[-2:]) - _mean(flipped[:2]) <= 0.01, f"flipped run: {flipped}"


def test_ppo_learns_the_letter_and_fails_with_the_sign_flipped(tiny_model: Path, tmp_path: Path) -> None:
    """The same margins with ``--advantage-estimator ppo``: a critic (initialised from the policy, lr
    1e-2) and GAE instead of group baselines."""
    ppo = {"algorithm": AlgorithmConfig(advantage_estimator="ppo"), "critic": CriticConfig(critic_lr=1e-2)}
    learned = letter_share_curve(tiny_model, tmp_path / "plus", sign=1.0, **ppo)
    assert _mean(learned[-2:]) - _mean(learned[:2]) >= MARGIN, f"share of 'e' per rollout (ppo): {learned}"
    flipped = letter_share_curve(tiny_model, tmp_path / "minus", sign=-1.0, **ppo)
    assert _mean(flipped[-2:]) - _mean(flipped[:2]) <= 0.01, f"flipped run (ppo): {flipped}"


def test_grpo_learns_the_letter_in_one_step_async_mode(tiny_model: Path, tmp_path: Path) -> None:
    """The same margins with ``--async-mode one-step``: each rollout trains on tokens sampled one policy
    version back, corrected by TIS on the rollout logprobs (cap 2)."""
    one_step = {"asynchronous": AsyncConfig(async_mode="one-step"), "algorithm": AlgorithmConfig(tis_cap=2.0)}
    learned = letter_share_curve(tiny_model, tmp_path / "plus", sign=1.0, **one_step)
    assert _mean(learned[-2:]) - _mean(learned[:2]) >= MARGIN, (
        f"share of 'e' per rollout (one-step): {learned}"
    )
    flipped = letter_share_curve(tiny_model, tmp_path / "minus", sign=-1.0, **one_step)
    assert _mean(flipped[-2:]) - _mean(flipped[:2]) <= 0.01, f"flipped run (one-step): {flipped}"


def test_grpo_learns_the_letter_in_fully_async_mode(tiny_model: Path, tmp_path: Path) -> None:
    """The same margins with ``--async-mode fully``: groups stream into a buffer of two rollouts while
    the trainer takes the oldest 8 at a time, weights sync after every step under the running episodes,
    and TIS (cap 2) corrects for tokens sampled up to 2 versions back (measured: share 0.09 -> 0.17;
    flipped 0.09 -> 0.04)."""
    fully = {"asynchronous": AsyncConfig(async_mode="fully"), "algorithm": AlgorithmConfig(tis_cap=2.0)}
    learned = letter_share_curve(tiny_model, tmp_path / "plus", sign=1.0, **fully)
    assert _mean(learned[-2:]) - _mean(learned[:2]) >= MARGIN, f"share of 'e' per rollout (fully): {learned}"
    flipped = letter_share_curve(tiny_model, tmp_path / "minus", sign=-1.0, **fully)
    assert _mean(flipped[-2:]) - _mean(flipped[:2]) <= 0.01, f"flipped run (fully): {flipped}"
