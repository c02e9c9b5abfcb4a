"""The base class of every agentrl environment: a multi-turn, tool-using Gymnasium env over chat messages.

Contract (see docs/envs.md):

* ``reset(*, seed=None, options=None) -> (messages, info)``: ``messages`` is the opening conversation
  (system / user); ``info`` holds ``task_id``, ``tools`` (OpenAI-style JSON schemas), ``stop`` (stop
  strings for generation) and ``observation_format``.
* ``step(text) -> (messages, reward, terminated, truncated, info)``: ``text`` is the agent's whole turn;
  ``messages`` are the *new* messages the environment answers with (tool results, feedback), empty when
  the episode ended. ``terminated`` comes from the env (an answer was given), ``truncated`` from the turn
  limit ``max_turns``.
* ``observation_format`` says how the rollout controller turns observation messages into tokens:
  ``"chat"`` renders them as new chat turns through the tokenizer's chat template (Hermes/Qwen tool
  calls); ``"inline"`` appends their content raw inside the assistant turn (Search-R1's
  ``<information>`` blocks).

Subclasses implement :meth:`load_tasks`, :meth:`initial_messages` and :meth:`turn`, and list their
:attr:`tools`.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar, Literal

import gymnasium as gym
from gymnasium.error import ResetNeeded

from agentrl.envs.spaces import Message, MessagesSpace, TextSpace
from agentrl.errors import ConfigError

if TYPE_CHECKING:
    from agentrl.tools import Tool


@dataclass(frozen=True)
class Task:
    """One problem an episode is about."""

    id: str
    """Stable, unique id within the env (e.g. ``"capital-0042"``); used for grouping and resume."""
    prompt: str
    """The question or instruction shown to the agent."""
    answer: Any
    """The gold answer (JSON-serialisable), read by the env's reward."""
    meta: dict[str, Any] = field(default_factory=dict)
    """Free-form facts about the task (question type, hops, difficulty) used by suites and reports."""


@dataclass
class TurnResult:
    """What one agent turn produced, as returned by :meth:`ToolEnv.turn`."""

    messages: list[Message]
    """Observation messages to show the agent next (empty when the episode is over)."""
    reward: float = 0.0
    """Reward of this turn (the episode's return is the sum)."""
    terminated: bool = False
    """True when the episode reached a natural end (an answer, a solved task)."""
    info: dict[str, Any] = field(default_factory=dict)
    """Per-step facts: ``tool_calls`` (int), ``tool_errors`` (int), ``success`` (bool, at the end), ..."""


class ToolEnv(gym.Env[list[Message], str]):
    """Base of multi-turn tool environments; see the module docstring for the contract."""

    metadata = {"render_modes": ["ansi"], "render_fps": 1}  # noqa: RUF012 (gymnasium declares it)
    observation_format: ClassVar[Literal["chat", "inline"]] = "chat"
    stop_strings: ClassVar[tuple[str, ...]] = ()

    def __init__(
        self,
        *,
        split: str = "train",
        max_turns: int = 5,
        tasks: Sequence[Task] | None = None,
        render_mode: str | None = None,
    ) -> None:
        if max_turns < 1:
            raise ConfigError(f"max_turns must be >= 1, got {max_turns}")
        if render_mode is not None and render_mode not in self.metadata["render_modes"]:
            raise ConfigError(f"render_mode {render_mode!r} is not one of {self.metadata['render_modes']}")
        self.split = split
        self.max_turns = max_turns
        self.render_mode = render_mode
        self.observation_space = MessagesSpace()
        self.action_space = TextSpace()
        self.tasks: Sequence[Task] = list(tasks) if tasks is not None else self.load_tasks(split)
        if not self.tasks:
            raise ConfigError(f"{type(self).__name__} has no tasks for split {split!r}")
        self._index = {t.id: i for i, t in enumerate(self.tasks)}
        self.task: Task | None = None
        self.turn_count = 0
        self.transcript: list[Message] = []
        self._done = False

    # ----------------------------------------------------------------- to implement in subclasses
    def load_tasks(self, split: str) -> Sequence[Task]:
        """Return the tasks of ``split`` (deterministic order)."""
        raise NotImplementedError(f"{type(self).__name__} must implement load_tasks() or be given tasks=")

    def initial_messages(self, task: Task) -> list[Message]:
        """The opening conversation for ``task``."""
        raise NotImplementedError

    def turn(self, text: str) -> TurnResult:
        """Act on the agent's turn ``text`` for ``self.task``; never raise on malformed text."""
        raise NotImplementedError

    @property
    def tools(self) -> list[Tool]:
        """Tools the agent may call (their schemas go into ``info["tools"]``)."""
        return []

    def expert_action(self) -> str:
        """A scripted expert's next turn for the current episode (demonstrations for a cold start:
        ``agentrl rollout --policy expert``). Optional; envs without an expert raise NotImplementedError.
        The text is what a model would write, stop string included (the controller tokenizes it with the
        model's own tokenizer and trains it like sampled text)."""
        raise NotImplementedError(f"{type(self).__name__} has no scripted expert (expert_action)")

    # ----------------------------------------------------------------- Gymnasium API
    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[list[Message], dict[str, Any]]:
        """Start an episode on ``options["task_id"]``, ``options["task_index"]`` or a seeded random task."""
        super().reset(seed=seed)
        self.task = self.tasks[self._pick(options or {})]
        self.turn_count = 0
        self._done = False
        self.transcript = self.initial_messages(self.task)
        info = {
            "task_id": self.task.id,
            "tools": [t.schema for t in self.tools],
            "stop": list(self.stop_strings),
            "observation_format": self.observation_format,
            "max_turns": self.max_turns,
            "split": self.split,
        }
        return copy.deepcopy(self.transcript), info

    def step(self, action: str) -> tuple[list[Message], float, bool, bool, dict[str, Any]]:
        """Play one agent turn; see the module docstring."""
        if self.task is None or self._done:
            raise ResetNeeded("call reset() before step(), and again after an episode ends")
        self.turn_count += 1
        result = self.turn(action)
        terminated = bool(result.terminated)
        truncated = not terminated and self.turn_count >= self.max_turns
        self._done = terminated or truncated
        self.transcript.append({"role": "assistant", "content": action})
        self.transcript.extend(result.messages)
        info = {"task_id": self.task.id, "turn": self.turn_count, **result.info}
        return copy.deepcopy(result.messages), float(result.reward), terminated, truncated, info

    def render(self) -> str | None:
        """``"ansi"``: the transcript so far as text."""
        if self.render_mode != "ansi":
            return None
        return "\n".join(f"[{m['role']}] {m['content']}" for m in self.transcript)

    # ----------------------------------------------------------------- helpers
    def _pick(self, options: dict[str, Any]) -> int:
        if "task_id" in options:
            task_id = str(options["task_id"])
            if task_id not in self._index:
                raise ConfigError(f"task_id {task_id!r} is not in {type(self).__name__} split {self.split!r}")
            return self._index[task_id]
        if "task_index" in options:
            return int(options["task_index"]) % len(self.tasks)
        return int(self.np_random.integers(0, len(self.tasks)))
