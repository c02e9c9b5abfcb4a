"""Data hooks for ``agentrl train`` (docs/data.md), one of each kind, to copy and change.

    agentrl train --prompt-data train.jsonl ... --over-sample 2 \\
        --sample-filter examples/gsm8k/hooks.py:drop_truncated \\
        --group-filter examples/gsm8k/hooks.py:some_solved_some_not \\
        --buffer examples/gsm8k/hooks.py:ReplaySurplus
"""

from __future__ import annotations

from agentrl.types import Status, Trajectory


def drop_truncated(trajectory: Trajectory) -> bool:
    """Sample filter: train only on episodes that ended on their own (an answer cut off by the token
    budget gets no reward for reasons that have nothing to do with the answer)."""
    return trajectory.status is not Status.TRUNCATED


def some_solved_some_not(group: list[Trajectory]) -> bool:
    """Group filter: keep a group when at least one sample solved the task and one did not (stricter than
    the default "rewards differ", which also keeps groups that differ only in partial credit)."""
    solved = [bool(t.metrics.get("success")) for t in group if t.trainable]
    return any(solved) and not all(solved)


class ReplaySurplus:
    """Buffer: keeps the informative groups a rollout generated beyond ``--rollout-batch-size`` (with
    ``--over-sample``), at most ``capacity`` of them, and gives the newest back when a later rollout has
    too few informative groups of its own."""

    capacity = 16

    def __init__(self) -> None:
        self.groups: list[list[Trajectory]] = []

    def add(self, groups: list[list[Trajectory]], step: int) -> None:
        informative = [g for g in groups if len({t.reward for t in g if t.trainable}) > 1]
        self.groups = (self.groups + informative)[-self.capacity :]

    def take(self, n: int, step: int) -> list[list[Trajectory]]:
        taken = self.groups[-n:] if n > 0 else []
        self.groups = self.groups[: len(self.groups) - len(taken)]
        return taken
