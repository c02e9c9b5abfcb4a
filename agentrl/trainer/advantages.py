"""Group-relative advantages (GRPO family): one scalar per episode from the rewards of its group.

All functions take flat (N,) tensors: ``rewards``, ``group_index`` (an int per episode; episodes with
the same index answered the same prompt) and ``valid`` (False for FAILED / ABORTED episodes). Invalid
episodes are left out of every statistic and get advantage 0, so an infrastructure failure neither
rewards nor punishes its group mates. A group with a single valid episode has no baseline to compare
against and gets advantage 0.
"""

from __future__ import annotations

import torch

from agentrl.errors import ConfigError

ADVANTAGE_ESTIMATORS = ("grpo", "dr_grpo", "rloo", "reinforce_plus_plus_baseline")


def _group_stats(
    rewards: torch.Tensor, group_index: torch.Tensor, valid: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-episode (N,) group mean, unbiased group std and valid group size, over valid episodes only."""
    r = rewards.double() * valid  # (N,)
    _, inverse = torch.unique(group_index, return_inverse=True)  # (N,) group slot of each episode
    n_groups = int(inverse.max().item()) + 1 if inverse.numel() else 0
    count = torch.zeros(n_groups, dtype=torch.float64).index_add_(0, inverse, valid.double())  # (G,)
    total = torch.zeros(n_groups, dtype=torch.float64).index_add_(0, inverse, r)  # (G,)
    mean = total / count.clamp(min=1.0)  # (G,)
    sq_dev = ((rewards.double() - mean[inverse]) ** 2) * valid  # (N,)
    ss = torch.zeros(n_groups, dtype=torch.float64).index_add_(0, inverse, sq_dev)  # (G,)
    std = torch.sqrt(ss / (count - 1.0).clamp(min=1.0))  # (G,) Bessel-corrected, as torch.std
    return mean[inverse], std[inverse], count[inverse]


def _uniform(rewards: torch.Tensor, group_index: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """(N,) bool: the episode's group has one reward value among its valid episodes.

    Such a group carries no signal and must get advantages of exactly 0; computed from the mean, they
    would be rounding noise (three rewards of 0.1: 0.1 - 0.30000000000000004 / 3 = -1.4e-17 in float64,
    -1.4e-11 after the std division) and Adam would take a step on it.
    """
    _, inverse = torch.unique(group_index, return_inverse=True)  # (N,)
    n_groups = int(inverse.max().item()) + 1 if inverse.numel() else 0
    r = rewards.double()
    high = torch.full((n_groups,), -torch.inf, dtype=torch.float64)
    low = torch.full((n_groups,), torch.inf, dtype=torch.float64)
    high = high.scatter_reduce(0, inverse, torch.where(valid, r, -torch.inf), "amax")
    low = low.scatter_reduce(0, inverse, torch.where(valid, r, torch.inf), "amin")
    return (high == low)[inverse]


def _finish(
    adv: torch.Tensor, valid: torch.Tensor, size: torch.Tensor, uniform: torch.Tensor
) -> torch.Tensor:
    """Zero invalid episodes, those alone in their group and those of equal-reward groups; float32."""
    return torch.where(valid & (size > 1) & ~uniform, adv, torch.zeros_like(adv)).float()


def grpo_advantages(
    rewards: torch.Tensor,
    group_index: torch.Tensor,
    valid: torch.Tensor,
    *,
    eps: float = 1e-6,
    normalize_std: bool = True,
) -> torch.Tensor:
    """GRPO: ``(r - mean_g) / (std_g + eps)``; Dr.GRPO (``normalize_std=False``): ``r - mean_g``.

    Dr.GRPO drops the std division because it up-weights groups that are nearly all right or all wrong
    (Liu et al. 2025). Returns (N,) float32.
    """
    mean, std, size = _group_stats(rewards, group_index, valid)
    adv = rewards.double() - mean
    if normalize_std:
        adv = adv / (std + eps)
    return _finish(adv, valid, size, _uniform(rewards, group_index, valid))


def rloo_advantages(rewards: torch.Tensor, group_index: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """RLOO: ``r_i - mean_{j != i} r_j`` = ``n / (n - 1) * (r_i - mean_g)`` (Ahmadian et al. 2024).

    The baseline excludes the episode itself, so it stays an unbiased estimator. Returns (N,) float32.
    """
    mean, _, size = _group_stats(rewards, group_index, valid)
    adv = (rewards.double() - mean) * size / (size - 1.0).clamp(min=1.0)
    return _finish(adv, valid, size, _uniform(rewards, group_index, valid))


def reinforce_plus_plus_baseline_advantages(
    rewards: torch.Tensor, group_index: torch.Tensor, valid: torch.Tensor, *, eps: float = 1e-6
) -> torch.Tensor:
    """REINFORCE++ with baseline: subtract the group mean, then normalise by the batch's std.

    ``a_i = r_i - mean_g``; ``A_i = (a_i - mean(a)) / (std(a) + eps)`` over all valid episodes of the
    batch that have a baseline (Hu et al. 2025). The batch-wide scale avoids GRPO's per-group std bias.
    Returns (N,) float32.
    """
    mean, _, size = _group_stats(rewards, group_index, valid)
    uniform = _uniform(rewards, group_index, valid)
    centred = torch.where(uniform, 0.0, rewards.double() - mean)  # (N,) exact 0 in equal-reward groups
    keep = valid & (size > 1)
    if int(keep.sum().item()) < 2:
        return torch.zeros_like(rewards, dtype=torch.float32)
    vals = centred[keep]
    adv = (centred - vals.mean()) / (vals.std() + eps)
    return _finish(adv, valid, size, uniform)


def compute_advantages(
    rewards: torch.Tensor,
    group_index: torch.Tensor,
    valid: torch.Tensor,
    estimator: str,
    *,
    eps: float = 1e-6,
) -> torch.Tensor:
    """Dispatch on ``estimator`` (``AlgorithmConfig.advantage_estimator``); returns (N,) float32."""
    valid = valid.bool()
    if estimator == "grpo":
        return grpo_advantages(rewards, group_index, valid, eps=eps)
    if estimator == "dr_grpo":
        return grpo_advantages(rewards, group_index, valid, eps=eps, normalize_std=False)
    if estimator == "rloo":
        return rloo_advantages(rewards, group_index, valid)
    if estimator == "reinforce_plus_plus_baseline":
        return reinforce_plus_plus_baseline_advantages(rewards, group_index, valid, eps=eps)
    if estimator == "ppo":
        raise ConfigError(
            "ppo's advantages are per token and need the critic's values (agentrl.trainer.gae.fill_gae), "
            "not rewards alone"
        )
    raise ConfigError(
        f"unknown advantage estimator {estimator!r}; choose one of {', '.join(ADVANTAGE_ESTIMATORS)}"
    )
