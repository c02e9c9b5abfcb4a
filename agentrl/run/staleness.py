"""Which policy version sampled each token, how stale that is when it trains, and the staleness bound.

A *policy version* is a count of trained rollouts: the weights the run starts from are version 0 (or
the checkpoint's), and every rollout whose train step changed the weights adds one (a skipped step,
``train/skipped``, leaves them unchanged and the version with them). The engine reports the version of
the weights it sampled with, per turn (``turn["weight_version"]``); a turn whose tokens were sampled
by more than one version (a weight update in the middle of it) lists them in ``turn["token_versions"]``.
A token's staleness is the trainer's version when it trains minus the version that sampled it: 0 in the
synchronous loop, at most ``--update-weights-interval`` with ``--async-mode one-step``.
"""

from __future__ import annotations

import dataclasses
from collections import Counter
from collections.abc import Sequence

from agentrl.types import Trajectory


def token_versions(trajectory: Trajectory) -> list[int | None]:
    """The policy version that sampled each response token (None for observation tokens), aligned with
    ``response_ids``; rebuilt from the turns (each turn: its sampled tokens, then its observation)."""
    out: list[int | None] = []
    for turn in trajectory.turns:
        sampled = int(turn.get("n_sampled", 0))
        per_token = turn.get("token_versions")
        if per_token is not None:
            out.extend(int(v) for v in per_token)
        else:
            out.extend([int(turn.get("weight_version", trajectory.weight_version))] * sampled)
        out.extend([None] * int(turn.get("n_obs", 0)))
    if len(out) != len(trajectory.response_ids):
        raise ValueError(
            f"trajectory {trajectory.group_id}/{trajectory.sample_index}: its turns account for {len(out)} "
            f"tokens but it has {len(trajectory.response_ids)} response ids"
        )
    return out


def trained_staleness(trajectories: Sequence[Trajectory], trainer_version: int) -> list[int]:
    """The staleness of every token that trains (loss mask 1, trainable episodes)."""
    ages: list[int] = []
    for t in trajectories:
        if not t.trainable:
            continue
        for version, mask in zip(token_versions(t), t.loss_mask, strict=True):
            if mask and version is not None:
                ages.append(trainer_version - version)
    return ages


def enforce_staleness(
    trajectories: Sequence[Trajectory], trainer_version: int, max_staleness: int | None, action: str
) -> tuple[list[Trajectory], dict[str, float]]:
    """Apply ``--max-staleness`` before training at ``trainer_version``; the episodes to train and the
    ``async/`` metrics of the tokens that train (after the bound): their count, staleness mean, max and
    histogram (``async/staleness_tokens_<age>``), and the tokens over the bound.

    ``drop`` copies an episode with its stale tokens' loss mask set to 0 (the episode keeps its reward,
    so its group's baseline is unchanged). ``downweight`` keeps the tokens and scales the episode's
    advantage by ``0.5 ** (oldest token's staleness - max_staleness)`` (``metrics["advantage_scale"]``,
    read by :func:`agentrl.trainer.batch.trajectories_to_batch`).
    """
    kept: list[Trajectory] = []
    over = 0
    for t in trajectories:
        if not t.trainable or max_staleness is None:
            kept.append(t)
            continue
        versions = token_versions(t)
        stale = [
            m == 1 and v is not None and trainer_version - v > max_staleness
            for v, m in zip(versions, t.loss_mask, strict=True)
        ]
        n_stale = sum(stale)
        over += n_stale
        if not n_stale:
            kept.append(t)
        elif action == "drop":
            mask = [0 if s else m for s, m in zip(stale, t.loss_mask, strict=True)]
            kept.append(
                dataclasses.replace(t, loss_mask=mask, metrics={**t.metrics, "stale_tokens": n_stale})
            )
        else:
            oldest = min(v for v, s in zip(versions, stale, strict=True) if s and v is not None)
            scale = 0.5 ** (trainer_version - oldest - max_staleness)
            kept.append(dataclasses.replace(t, metrics={**t.metrics, "advantage_scale": scale}))
    ages = trained_staleness(kept, trainer_version)
    metrics = {
        "async/staleness_mean": sum(ages) / len(ages) if ages else 0.0,
        "async/staleness_max": float(max(ages, default=0)),
        "async/stale_tokens": float(over),
        "async/trained_tokens": float(len(ages)),
        "async/trainer_version": float(trainer_version),
    }
    metrics.update({f"async/staleness_tokens_{age}": float(n) for age, n in sorted(Counter(ages).items())})
    return kept, metrics
