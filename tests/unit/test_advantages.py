"""Group advantages: hand-derived golden numbers, failure exclusion, invariants, and the batch builder."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from agentrl.errors import ConfigError
from agentrl.trainer.advantages import compute_advantages
from agentrl.trainer.batch import trajectories_to_batch
from agentrl.trainer.config import AlgorithmConfig
from agentrl.types import Status, Trajectory


def _adv(
    rewards: list[float], groups: list[int], estimator: str, valid: list[bool] | None = None
) -> list[float]:
    v = torch.tensor(valid if valid is not None else [True] * len(rewards))
    return compute_advantages(torch.tensor(rewards), torch.tensor(groups), v, estimator).tolist()


def test_grpo_golden() -> None:
    # Group 0 rewards (1, 0, 0, 1): mean 0.5; unbiased std = sqrt(4 * 0.25 / 3) = sqrt(1/3) = 0.577350;
    # advantages = +-0.5 / 0.577350 = +-0.866025. Group 1 (2, 2, 2): all equal -> 0.
    adv = _adv([1, 0, 0, 1, 2, 2, 2], [0, 0, 0, 0, 1, 1, 1], "grpo")
    assert adv[:4] == pytest.approx([0.866025, -0.866025, -0.866025, 0.866025], abs=1e-5)
    assert adv[4:] == [0.0, 0.0, 0.0]


def test_dr_grpo_golden() -> None:
    # No std division: (1, 0, 0, 1) -> +-0.5; group (3, 1): mean 2 -> (+1, -1).
    adv = _adv([1, 0, 0, 1, 3, 1], [7, 7, 7, 7, 9, 9], "dr_grpo")
    assert adv == pytest.approx([0.5, -0.5, -0.5, 0.5, 1.0, -1.0], abs=1e-6)


def test_rloo_golden() -> None:
    # (1, 0, 0): r0 - mean(0, 0) = 1; r1 - mean(1, 0) = -0.5; r2 likewise -0.5.
    adv = _adv([1, 0, 0], [0, 0, 0], "rloo")
    assert adv == pytest.approx([1.0, -0.5, -0.5], abs=1e-6)


def test_reinforce_plus_plus_baseline_golden() -> None:
    # Centred by group mean: g0 (1, 0) -> (0.5, -0.5); g1 (1, 1, 0, 0) -> (0.5, 0.5, -0.5, -0.5).
    # Batch whitening over the 6 values: mean 0, unbiased var = 6 * 0.25 / 5 = 0.3, std = 0.547723;
    # advantages = +-0.5 / 0.547723 = +-0.912871.
    adv = _adv([1, 0, 1, 1, 0, 0], [0, 0, 1, 1, 1, 1], "reinforce_plus_plus_baseline")
    assert adv == pytest.approx([0.912871, -0.912871, 0.912871, 0.912871, -0.912871, -0.912871], abs=1e-5)


def test_failed_episodes_are_excluded_from_group_statistics() -> None:
    # Valid rewards (1, 0, 0) (the failed one's reward 1 is ignored): mean 1/3; deviations
    # (2/3, -1/3, -1/3), sum of squares 2/3, unbiased var 1/3, std 0.577350;
    # advantages 0.666667 / 0.577350 = 1.154701 and -0.333333 / 0.577350 = -0.577350; failed -> 0.
    adv = _adv([1, 0, 1, 0], [0, 0, 0, 0], "grpo", valid=[True, True, False, True])
    assert adv == pytest.approx([1.154701, -0.577350, 0.0, -0.577350], abs=1e-5)
    # Dr.GRPO and RLOO ignore it too: mean of (1, 0, 0) = 1/3; RLOO: 1 - 0 = 1, 0 - 0.5 = -0.5.
    assert _adv([1, 0, 1, 0], [0] * 4, "dr_grpo", [True, True, False, True]) == pytest.approx(
        [2 / 3, -1 / 3, 0.0, -1 / 3], abs=1e-6
    )
    assert _adv([1, 0, 1, 0], [0] * 4, "rloo", [True, True, False, True]) == pytest.approx(
        [1.0, -0.5, 0.0, -0.5], abs=1e-6
    )


def test_singleton_groups_get_zero() -> None:
    # No baseline for a lone episode (its group mates failed): no signal rather than raw reward.
    for est in ("grpo", "dr_grpo", "rloo", "reinforce_plus_plus_baseline"):
        assert _adv([1, 5, 0], [0, 1, 1], est, [True, True, False]) == [0.0, 0.0, 0.0]


def test_unknown_estimator() -> None:
    with pytest.raises(ConfigError, match="grpo"):
        _adv([1.0], [0], "grpoo")


@settings(max_examples=60, deadline=None)
@given(
    st.lists(st.integers(min_value=2, max_value=6), min_size=1, max_size=5),
    st.floats(min_value=-5, max_value=5, allow_nan=False),
    st.sampled_from(["grpo", "dr_grpo", "rloo", "reinforce_plus_plus_baseline"]),
)
def test_equal_rewards_in_every_group_give_zero(sizes: list[int], reward: float, est: str) -> None:
    groups = [g for g, n in enumerate(sizes) for _ in range(n)]
    assert _adv([reward] * len(groups), groups, est) == [0.0] * len(groups)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.floats(min_value=0, max_value=1, allow_nan=False), min_size=2, max_size=8))
def test_grpo_group_has_zero_mean_and_unit_std(rewards: list[float]) -> None:
    r = torch.tensor(rewards, dtype=torch.float64)
    adv = torch.tensor(_adv(rewards, [0] * len(rewards), "grpo"), dtype=torch.float64)
    assert abs(adv.mean().item()) < 1e-5
    if r.std().item() > 1e-3:
        assert adv.std().item() == pytest.approx(1.0, abs=1e-3)


def _traj(group: str, reward: float, status: Status = Status.COMPLETED) -> Trajectory:
    return Trajectory(
        prompt_ids=[5, 6],
        response_ids=[7, 8, 9],
        loss_mask=[1, 0, 1],
        rollout_logprobs=[-0.5, 0.0, -1.5],
        reward=reward,
        status=status,
        group_id=group,
    )


def test_trajectories_to_batch_broadcasts_masks_and_counts_failures() -> None:
    trajs = [
        _traj("a", 1.0),
        _traj("a", 0.0),
        _traj("a", 1.0, Status.FAILED),
        _traj("b", 1.0, Status.TRUNCATED),
        _traj("b", 1.0),
        _traj("b", 0.0, Status.ABORTED),
    ]
    batch, metrics = trajectories_to_batch(trajs, AlgorithmConfig(advantage_estimator="dr_grpo"))
    # Group a: valid (1, 0) -> +-0.5; group b: valid (1, 1) -> 0, 0. Failed/aborted are dropped.
    assert len(batch) == 4
    assert batch.input_ids[0].tolist() == [5, 6, 7, 8, 9]
    assert batch.loss_mask[0].tolist() == [0, 0, 1, 0, 1]
    assert batch.advantages[0].tolist() == [0, 0, 0.5, 0, 0.5]
    assert batch.advantages[1].tolist() == [0, 0, -0.5, 0, -0.5]
    assert batch.advantages[2].tolist() == [0.0] * 5
    assert batch.rollout_logprobs[0].tolist() == [0, 0, -0.5, 0, -1.5]
    assert metrics["n_trajectories"] == 6
    assert metrics["n_trainable"] == 4
    assert metrics["n_failed"] == 1
    assert metrics["n_aborted"] == 1
    assert metrics["frac_zero_adv"] == 0.5
    assert metrics["adv_abs_mean"] == pytest.approx(0.25)


def test_trajectories_to_batch_rejects_broken_trajectories() -> None:
    bad = _traj("a", 1.0)
    bad.loss_mask = [1, 1]
    with pytest.raises(ValueError, match="mask entries"):
        trajectories_to_batch([bad], AlgorithmConfig())


@pytest.mark.parametrize("estimator", ["grpo", "dr_grpo", "rloo", "reinforce_plus_plus_baseline"])
def test_equal_reward_groups_get_exactly_zero(estimator: str) -> None:
    # 0.1 + 0.1 + 0.1 = 0.30000000000000004 in floating point: a mean-based advantage is -1.4e-17 or so,
    # not 0. Group "a" (all 0.1) and "c" (all 0.7, one FAILED episode ignored) must be exactly 0.
    rewards = torch.tensor([0.1, 0.1, 0.1, 1.0, 0.0, 0.7, 0.7, 0.2], dtype=torch.float64)
    groups = torch.tensor([0, 0, 0, 1, 1, 2, 2, 2])
    valid = torch.tensor([True, True, True, True, True, True, True, False])
    adv = compute_advantages(rewards, groups, valid, estimator, eps=1e-6)
    assert adv[[0, 1, 2, 5, 6, 7]].tolist() == [0.0] * 6
    assert adv[3] > 0 > adv[4]
