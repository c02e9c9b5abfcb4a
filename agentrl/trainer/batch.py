"""From trajectories to a :class:`TrainBatch`: advantages per group, broadcast over each episode's tokens.

FAILED and ABORTED episodes (dead sandbox, engine error, aborted generation) are kept out of the group
statistics, out of the batch and counted in the returned metrics: a bad rollout is data, not a gradient.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from agentrl.trainer.advantages import compute_advantages
from agentrl.trainer.backend import TrainBatch
from agentrl.trainer.config import AlgorithmConfig
from agentrl.types import Status, Trajectory


def trajectory_advantages(trajectories: Sequence[Trajectory], config: AlgorithmConfig) -> torch.Tensor:
    """One advantage per trajectory, (N,) float32, 0 for the non-trainable ones (critic-free
    estimators; ``ppo``'s per-token advantages need the critic: :func:`agentrl.trainer.gae.fill_gae`)."""
    slots: dict[str, int] = {}
    group_index = torch.tensor(
        [slots.setdefault(t.group_id, len(slots)) for t in trajectories], dtype=torch.long
    )
    rewards = torch.tensor([float(t.reward) for t in trajectories], dtype=torch.float64)
    valid = torch.tensor([t.trainable for t in trajectories], dtype=torch.bool)
    return compute_advantages(rewards, group_index, valid, config.advantage_estimator, eps=config.adv_eps)


def trajectories_to_batch(
    trajectories: Sequence[Trajectory], config: AlgorithmConfig
) -> tuple[TrainBatch, dict[str, float]]:
    """Build the batch of trainable episodes and the metrics of the conversion.

    Each sequence is ``prompt_ids + response_ids``; prompt tokens get mask 0, logprob 0 and advantage 0;
    response tokens keep the controller's mask and the engine's logprobs, and carry the episode's
    advantage where the mask is 1 (times ``metrics["advantage_scale"]`` where ``--stale-samples
    downweight`` set one). With ``ppo`` the advantages are left at 0 and the batch carries the
    rewards instead: the backend turns them into per-token advantages with its critic.

    Returns:
        ``(batch, metrics)``; metrics: ``n_trajectories``, ``n_trainable``, ``n_failed``,
        ``n_aborted``, ``adv_mean``, ``adv_abs_mean``, ``frac_zero_adv`` (trainable episodes whose
        advantage is 0, e.g. groups that all succeeded or all failed).
    """
    for t in trajectories:
        t.check()
    ppo = config.uses_critic
    adv = torch.zeros(len(trajectories)) if ppo else trajectory_advantages(trajectories, config)  # (N,)
    batch = TrainBatch(input_ids=[], loss_mask=[], advantages=[], rollout_logprobs=[])
    batch.rewards = [float(t.reward) for t in trajectories if t.trainable] if ppo else None
    kept: list[float] = []
    for t, a in zip(trajectories, adv.tolist(), strict=True):
        if not t.trainable:
            continue
        a *= float(t.metrics.get("advantage_scale", 1.0))  # --stale-samples downweight (run/staleness.py)
        n_prompt = len(t.prompt_ids)
        mask = torch.tensor([0.0] * n_prompt + [float(m) for m in t.loss_mask], dtype=torch.float32)  # (T,)
        batch.input_ids.append(torch.tensor(t.prompt_ids + t.response_ids, dtype=torch.long))
        batch.loss_mask.append(mask)
        batch.advantages.append(mask * a)
        batch.rollout_logprobs.append(
            torch.tensor([0.0] * n_prompt + list(t.rollout_logprobs), dtype=torch.float32) * mask
        )
        kept.append(a)
    kept_t = torch.tensor(kept, dtype=torch.float32)
    metrics = {
        "n_trajectories": float(len(trajectories)),
        "n_trainable": float(len(kept)),
        "n_failed": float(sum(t.status == Status.FAILED for t in trajectories)),
        "n_aborted": float(sum(t.status == Status.ABORTED for t in trajectories)),
    }
    if not ppo:  # ppo's advantages exist only once the critic has valued the batch
        metrics["adv_mean"] = float(kept_t.mean().item()) if kept else 0.0
        metrics["adv_abs_mean"] = float(kept_t.abs().mean().item()) if kept else 0.0
        metrics["frac_zero_adv"] = float((kept_t == 0).float().mean().item()) if kept else 0.0
    return batch, metrics
