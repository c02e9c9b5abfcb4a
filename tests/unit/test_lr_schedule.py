"""The lr schedule shared by both training backends, against hand-derived values."""

from __future__ import annotations

import math

import pytest

from agentrl.errors import ConfigError
from agentrl.run.train_config import TrainConfig
from agentrl.trainer.config import OptimizerConfig


def test_warmup_then_constant() -> None:
    opt = OptimizerConfig(lr=1e-3, warmup_steps=4)
    assert [opt.lr_at(s) for s in range(6)] == pytest.approx([2.5e-4, 5e-4, 7.5e-4, 1e-3, 1e-3, 1e-3])


def test_linear_and_cosine_decay_to_min_lr() -> None:
    linear = OptimizerConfig(lr=1e-3, warmup_steps=2, lr_decay_style="linear", min_lr=1e-4, lr_decay_steps=4)
    # after warmup: progress 0, 1/4, 2/4, 3/4, 1 -> 1e-4 + 9e-4 * (1 - progress), then it stays at min_lr
    assert [linear.lr_at(s) for s in range(2, 9)] == pytest.approx(
        [1e-3, 7.75e-4, 5.5e-4, 3.25e-4, 1e-4, 1e-4, 1e-4]
    )
    cosine = OptimizerConfig(lr=1e-3, lr_decay_style="cosine", min_lr=0.0, lr_decay_steps=3)
    half_cos = [(1 + math.cos(math.pi * k / 3)) / 2 for k in range(4)]  # 1, 0.75, 0.25, 0
    assert [cosine.lr_at(s) for s in range(5)] == pytest.approx([1e-3 * h for h in half_cos] + [0.0])


def test_run_budget_is_the_default_decay_length() -> None:
    config = TrainConfig(
        num_rollouts=10,
        steps_per_rollout=2,
        global_batch_size=8,
        optimizer=OptimizerConfig(lr=1e-4, warmup_steps=5, lr_decay_style="cosine"),
    )
    assert config.optimizer.lr_decay_steps == 10 * 2 - 5
    assert TrainConfig().optimizer.lr_decay_steps == 0  # constant: nothing to resolve


@pytest.mark.parametrize(
    "kwargs",
    [{"min_lr": 2e-3}, {"min_lr": -1.0}, {"lr_decay_steps": -1}, {"lr_decay_style": "step"}],
)
def test_bad_schedules_are_config_errors(kwargs: dict) -> None:  # type: ignore[type-arg]
    with pytest.raises(ConfigError):
        OptimizerConfig(lr=1e-3, **kwargs)
