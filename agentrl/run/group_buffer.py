"""The buffer of ``--async-mode fully``: the groups admitted to generation and not yet trained, oldest first.

A group is *admitted* when its task is drawn and its episodes start generating; it is *finished* when
its episodes are all in. Groups leave in admission order, each once it and every older group are
finished: into the next batch, or, if the group filter rejects it (``--dynamic-filter``,
``--group-filter``), out of training (its episodes still count in the batch's metrics). ``capacity``
(``--async-buffer-size``, in groups) bounds the groups admitted and not yet trained, generating or
finished: generation runs ahead of the trainer by at most that many groups, and stops admitting when the
trainer falls behind.

Why admission order, when a later group may finish first: it makes the batches, and how many groups
leave before each (so when new ones are admitted), a pure function of the task order and the episodes,
never of timing; a resumed run takes the same batches. And a slow group cannot wait in the buffer until
its tokens are too stale to train.

Pure Python, no Ray: :mod:`agentrl.run.fully_async` drives it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from agentrl.errors import CheckpointError
from agentrl.types import Trajectory

Group = list[Trajectory]


@dataclass
class BufferedGroup:
    """One admitted group."""

    index: int
    """Admission order, from 0 over the whole run (the group id is ``"<index>/<key>"``)."""
    key: str
    """The task key."""
    sampler_before: dict[str, Any]
    """The task sampler's state before this group's task was drawn: where a run stopped by a failure
    winds back to, so that ``--resume`` generates this group again."""
    episodes: Group | None = None
    """The finished episodes, in sample order; None while they generate."""


class GroupBuffer:
    """Admitted groups, oldest first, at most ``capacity`` of them."""

    def __init__(self, capacity: int, keep: Callable[[Group], bool] = lambda group: True) -> None:
        self.capacity = capacity
        self.keep = keep
        """The group filter: a finished group it rejects leaves the buffer at once (never trained)."""
        self.groups: list[BufferedGroup] = []
        """Admitted groups not yet left, oldest first."""
        self.batch: list[BufferedGroup] = []
        """Groups that left for the next batch (:meth:`advance`), until :meth:`take` hands them out."""
        self.rejected: list[Group] = []
        """Groups the filter rejected since the last :meth:`take` (their episodes count in its metrics)."""
        self.next_index = 0

    @property
    def room(self) -> int:
        return self.capacity - len(self.groups) - len(self.batch)

    @property
    def generating(self) -> int:
        return sum(g.episodes is None for g in self.groups)

    @property
    def ready(self) -> int:
        """Finished groups waiting to train."""
        return len(self.groups) - self.generating

    def admit(self, key: str, sampler_before: dict[str, Any]) -> BufferedGroup:
        """Add a group whose episodes are starting to generate (there must be room)."""
        if self.room <= 0:
            raise RuntimeError(f"the buffer is full ({self.capacity} groups): admit after a take")
        group = BufferedGroup(self.next_index, key, sampler_before)
        self.next_index += 1
        self.groups.append(group)
        return group

    def finish(self, index: int, episodes: Group) -> None:
        """Group ``index``'s episodes are in."""
        group = next((g for g in self.groups if g.index == index), None)
        if group is None or group.episodes is not None:
            raise RuntimeError(f"group {index} finished but is not generating in the buffer")
        group.episodes = episodes

    def advance(self, n: int) -> bool:
        """Let the finished oldest groups leave, into the batch or rejected, until the batch has ``n``;
        True once it has (:meth:`take` it)."""
        while len(self.batch) < n and self.groups and (episodes := self.groups[0].episodes) is not None:
            group = self.groups.pop(0)
            if self.keep(episodes):
                self.batch.append(group)
            else:
                self.rejected.append(episodes)
        return len(self.batch) >= n

    def take(self) -> tuple[list[BufferedGroup], list[Group]]:
        """The batch and the groups rejected since the last take, handed out and forgotten."""
        taken, self.batch = self.batch, []
        rejected, self.rejected = self.rejected, []
        return taken, rejected

    def state_dict(self) -> dict[str, Any]:
        """The buffer, to checkpoint: every group must be finished (checkpoints come at drain points)."""
        if self.generating or self.batch or self.rejected:
            raise RuntimeError("checkpoint the buffer at a drain point: no group generating or half taken")
        return {
            "capacity": self.capacity,
            "next_index": self.next_index,
            "groups": [
                {
                    "index": g.index,
                    "key": g.key,
                    "sampler_before": g.sampler_before,
                    "episodes": [t.to_dict() for t in g.episodes or []],
                }
                for g in self.groups
            ],
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state["capacity"] != self.capacity:
            raise CheckpointError(
                f"the checkpoint's buffer holds up to {state['capacity']} groups, this run's "
                f"--async-buffer-size makes {self.capacity}: resume with the same --async-buffer-size "
                "(and --rollout-batch-size)"
            )
        self.next_index = int(state["next_index"])
        self.groups = [
            BufferedGroup(
                int(g["index"]),
                g["key"],
                g["sampler_before"],
                [Trajectory.from_dict(d) for d in g["episodes"]],
            )
            for g in state["groups"]
        ]
        self.batch, self.rejected = [], []
