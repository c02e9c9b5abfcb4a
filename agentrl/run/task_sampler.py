"""A deterministic, resumable order of training tasks.

Why its own object: exact resume (docs/reliability.md E23) needs the *same* task order after a restart, so the
order must be a pure function of (seed, epoch) and the position in it a small piece of checkpointed
state — never a live RNG whose state depends on how many other things drew from it.

Each epoch is a fresh permutation of all task keys drawn from ``numpy.random.default_rng([seed,
epoch])``; :meth:`TaskSampler.sample` walks through it and into the next epoch when it runs out.

Example::

    sampler = TaskSampler(["q0", "q1", "q2"], seed=0)
    first = sampler.sample(2)
    state = sampler.state_dict()
    again = TaskSampler(["q0", "q1", "q2"], seed=0)
    again.load_state_dict(state)
    assert again.sample(2) == sampler.sample(2)
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from agentrl.errors import CheckpointError, ConfigError


class TaskSampler:
    """Walks through epochs of seeded permutations of ``keys``."""

    def __init__(self, keys: Sequence[str], *, seed: int = 0, shuffle: bool = True) -> None:
        if not keys:
            raise ConfigError("TaskSampler needs at least one task; the env/suite split has none")
        if len(set(keys)) != len(keys):
            raise ConfigError("TaskSampler keys must be unique (duplicate task ids in the env/suite)")
        self.keys = list(keys)
        self.seed = seed
        self.shuffle = shuffle
        self.epoch = 0
        self.cursor = 0
        self._order = self._permutation(0)

    def _permutation(self, epoch: int) -> list[int]:
        if not self.shuffle:
            return list(range(len(self.keys)))
        rng = np.random.default_rng([self.seed, epoch])
        return [int(i) for i in rng.permutation(len(self.keys))]

    def sample(self, n: int) -> list[str]:
        """The next ``n`` task keys (crossing into the next epoch's permutation when needed)."""
        out: list[str] = []
        while len(out) < n:
            if self.cursor == len(self._order):
                self.epoch += 1
                self.cursor = 0
                self._order = self._permutation(self.epoch)
            take = min(n - len(out), len(self._order) - self.cursor)
            out += [self.keys[i] for i in self._order[self.cursor : self.cursor + take]]
            self.cursor += take
        return out

    def state_dict(self) -> dict[str, Any]:
        """JSON-serialisable position: enough to continue exactly where this sampler is."""
        return {"seed": self.seed, "epoch": self.epoch, "cursor": self.cursor, "num_keys": len(self.keys)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue from ``state``; refuses a state saved over a different task list or seed."""
        if state["num_keys"] != len(self.keys) or state["seed"] != self.seed:
            raise CheckpointError(
                f"task sampler state was saved for {state['num_keys']} tasks with seed {state['seed']}, "
                f"but this run has {len(self.keys)} tasks with seed {self.seed}; resume with the same "
                "--env/--suite, --split and --seed as the checkpointed run"
            )
        self.epoch = int(state["epoch"])
        self.cursor = int(state["cursor"])
        self._order = self._permutation(self.epoch)
