"""Gymnasium spaces for text agents: the agent's turn is a string, an observation a list of chat messages."""

from __future__ import annotations

from typing import Any

import numpy as np
from gymnasium import spaces

from agentrl.types import Message

ROLES = ("system", "user", "assistant", "tool")


class TextSpace(spaces.Space[str]):
    """Any Unicode string up to ``max_length`` characters: one turn of an agent.

    Sampling draws printable ASCII (a cheap random action for env checkers); ``contains`` accepts any
    ``str`` within the length bound, because models emit arbitrary Unicode.
    """

    def __init__(self, max_length: int = 1 << 20, seed: int | np.random.Generator | None = None):
        self.max_length = max_length
        super().__init__(shape=None, dtype=None, seed=seed)

    @property
    def is_np_flattenable(self) -> bool:
        return False

    def sample(self, mask: Any = None, probability: Any = None) -> str:
        n = int(self.np_random.integers(0, min(self.max_length, 64) + 1))
        return "".join(chr(int(c)) for c in self.np_random.integers(32, 127, size=n))

    def contains(self, x: Any) -> bool:
        return isinstance(x, str) and len(x) <= self.max_length

    def __repr__(self) -> str:
        return f"TextSpace(max_length={self.max_length})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, TextSpace) and other.max_length == self.max_length


class MessagesSpace(spaces.Space[list]):
    """A list of chat messages, each a dict with a ``role`` in :data:`ROLES` and a ``str`` ``content``."""

    def __init__(self, max_messages: int = 1 << 16, seed: int | np.random.Generator | None = None):
        self.max_messages = max_messages
        super().__init__(shape=None, dtype=None, seed=seed)

    @property
    def is_np_flattenable(self) -> bool:
        return False

    def sample(self, mask: Any = None, probability: Any = None) -> list[Message]:
        n = int(self.np_random.integers(1, 4))
        return [
            {"role": ROLES[int(self.np_random.integers(0, len(ROLES)))], "content": f"message {i}"}
            for i in range(n)
        ]

    def contains(self, x: Any) -> bool:
        if not isinstance(x, list) or len(x) > self.max_messages:
            return False
        return all(
            isinstance(m, dict) and m.get("role") in ROLES and isinstance(m.get("content"), str) for m in x
        )

    def __repr__(self) -> str:
        return f"MessagesSpace(max_messages={self.max_messages})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, MessagesSpace) and other.max_messages == self.max_messages
