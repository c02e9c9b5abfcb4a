"""The records every layer shares: ``Message`` (a chat message), ``Trajectory`` (one episode, exactly the
tokens the engine consumed and produced) and its ``Status``. Imports nothing of agentrl."""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any

Message = dict[str, Any]
"""A chat message: ``{"role": str, "content": str}`` (plus optional keys such as ``tool_call_id``)."""


class Status(StrEnum):
    """How an episode ended. Only COMPLETED and TRUNCATED episodes are trained on."""

    COMPLETED = "completed"
    """The env terminated the episode (an answer was given)."""
    TRUNCATED = "truncated"
    """A budget ended it: the turn limit or the context/token limit."""
    ABORTED = "aborted"
    """The engine aborted generation (server died, weights changed mid-flight, run stopped)."""
    FAILED = "failed"
    """Infrastructure failed (env exception, dead sandbox, engine error); ``error`` says what."""


@dataclass
class Trajectory:
    """One episode. ``response_ids``, ``loss_mask`` and ``rollout_logprobs`` have equal lengths.

    ``response_ids`` holds everything after the prompt: sampled tokens (mask 1, with the engine's
    logprobs) interleaved with observation tokens (mask 0, logprob 0.0).
    """

    prompt_ids: list[int]
    response_ids: list[int] = field(default_factory=list)
    loss_mask: list[int] = field(default_factory=list)
    rollout_logprobs: list[float] = field(default_factory=list)
    reward: float = 0.0
    status: Status = Status.COMPLETED
    turns: list[dict[str, Any]] = field(default_factory=list)
    """Per-turn facts: ``text``, ``n_sampled``, ``n_obs``, ``tool_calls``, ``tool_latency_s``, ``finish_reason``."""
    group_id: str = ""
    env_id: str = ""
    task_id: str = ""
    sample_index: int = 0
    weight_version: int = 0
    error: str = ""
    metrics: dict[str, Any] = field(default_factory=dict)
    """Episode-level facts from the env (``success``, ``tool_calls``, ...) and the controller."""
    messages: list[dict[str, Any]] = field(default_factory=list)
    """The conversation as chat messages (for viewing and debugging; training uses the ids)."""

    @property
    def trainable(self) -> bool:
        return self.status in (Status.COMPLETED, Status.TRUNCATED)

    @property
    def num_tokens(self) -> int:
        return len(self.prompt_ids) + len(self.response_ids)

    def check(self) -> None:
        """Raise ``ValueError`` if the token-level invariants do not hold."""
        n = len(self.response_ids)
        if len(self.loss_mask) != n or len(self.rollout_logprobs) != n:
            raise ValueError(
                f"trajectory {self.group_id}/{self.sample_index}: {n} response ids but "
                f"{len(self.loss_mask)} mask entries and {len(self.rollout_logprobs)} logprobs"
            )
        if any(m not in (0, 1) for m in self.loss_mask):
            raise ValueError("loss_mask entries must be 0 or 1")

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["status"] = self.status.value
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Trajectory:
        d = dict(d)
        d["status"] = Status(d["status"])
        return cls(**d)


def save_jsonl(trajectories: Iterable[Trajectory], path: str | Path, *, append: bool = False) -> None:
    """Write trajectories one JSON object per line (floats round-trip exactly through ``repr``)."""
    with open(path, "a" if append else "w", encoding="utf-8") as f:
        for t in trajectories:
            f.write(json.dumps(t.to_dict(), ensure_ascii=False) + "\n")


def load_jsonl(path: str | Path) -> Iterator[Trajectory]:
    """Read trajectories written by :func:`save_jsonl`; a corrupt record raises ``ValueError`` naming the
    file and the line."""
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
                if not isinstance(record, dict):
                    raise TypeError(f"expected a JSON object, got {type(record).__name__}")
                trajectory = Trajectory.from_dict(record)
            except (ValueError, KeyError, TypeError) as e:
                raise ValueError(f"{path}:{n}: not a trajectory record ({type(e).__name__}: {e})") from e
            yield trajectory
