"""Reward functions named by import path in the reward tests (``reward_fixtures:NAME``)."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Sequence
from typing import Any

from agentrl.envs.rewards import RewardSample, batched

calls: list[int] = []
"""Sizes of the batches ``judge`` and ``LengthModel.score`` were called with."""
lock = threading.Lock()


def length_ratio(sample: RewardSample) -> dict[str, Any]:
    """1 for an answer of the label's length, with the format part logged as a component."""
    fmt = float(sample.response.startswith("A:"))
    return {"reward": float(len(sample.response) == len(str(sample.label))), "format": fmt}


async def async_exact(sample: RewardSample) -> float:
    await asyncio.sleep(0)
    return float(sample.response.strip() == str(sample.label))


@batched
def judge(samples: Sequence[RewardSample]) -> list[float]:
    with lock:
        calls.append(len(samples))
    return [float(str(s.label) in s.response) for s in samples]


def broken(sample: RewardSample) -> float:
    raise ValueError("the judge is down")


def not_a_number(sample: RewardSample) -> str:
    return "yes"


class LengthModel:
    """A reward model: an async batched ``score`` (here the response length over 10)."""

    max_batch = 2

    async def score(self, samples: Sequence[RewardSample]) -> list[float]:
        calls.append(len(samples))
        return [len(s.response) / 10 for s in samples]
