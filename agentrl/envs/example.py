"""``agentrl/Calculator-v0``: the env to copy when writing your own (see docs/envs.md).

Arithmetic problems (``(a op b) op c``) that the agent solves with a ``calculator`` tool, one
operation per call. It is small on purpose and shows every part an env needs: tasks, the opening
messages, a typed tool, parsing a turn into tool calls or an answer, the ``info`` keys that training
and evaluation read, and a scripted episode for ``agentrl envs check``.
"""

from __future__ import annotations

import operator
import random
from collections.abc import Sequence
from typing import Literal

from agentrl.envs.base import Task, ToolEnv, TurnResult
from agentrl.errors import ConfigError
from agentrl.tools.parsers import HermesParser, ParseError, TagParser
from agentrl.tools.schema import Tool, tool
from agentrl.types import Message

SYSTEM_PROMPT = (
    "You solve arithmetic problems with the `calculator` tool, one operation per call. When you know the "
    "result, give only the number inside <answer> and </answer>, for example <answer>42</answer>."
)
NUDGE = "Call the `calculator` tool, or give your final answer inside <answer> and </answer>."
OPERATIONS = {"+": operator.add, "-": operator.sub, "*": operator.mul, "/": operator.truediv}


@tool
def calculator(a: float, op: Literal["+", "-", "*", "/"], b: float) -> str:
    """Apply one arithmetic operation to two numbers.

    Args:
        a: The left operand.
        op: The operation.
        b: The right operand.
    """
    result = OPERATIONS[op](a, b)  # 1 / 0 raises; Tool.call turns that into an error observation
    return str(int(result)) if float(result).is_integer() else repr(result)


class CalculatorEnv(ToolEnv):
    """Two-step arithmetic with a ``calculator`` tool: the template env to copy.

    ## Description
    Each episode is one problem ``(a op1 b) op2 c`` with integers from 2 to 99 and ``op`` one of
    ``+ - *``. The agent may call the ``calculator`` tool (Hermes/Qwen ``<tool_call>`` blocks) and ends
    the episode with ``<answer>...</answer>``. Tasks are deterministic given ``split`` and ``seed``; the
    ``train`` and ``test`` splits draw different problems.

    ## Action
    The agent's turn as text: ``<tool_call>{"name": "calculator", "arguments": {"a": 3, "op": "*",
    "b": 4}}</tool_call>`` blocks and/or a final ``<answer>...</answer>``.

    ## Observation
    Chat messages (``observation_format = "chat"``): the system prompt and the problem at reset; after
    a call, one ``{"role": "tool", "name": "calculator", "content": result}`` message per call; a
    malformed call gives a ``tool`` message saying what was wrong; a turn with neither a call nor an
    answer gives a ``user`` reminder.

    ## Reward
    1.0 on the answer turn when the answer equals the exact result, else 0.0.

    ## Episode End
    Terminated when the agent answers; truncated after ``max_turns`` turns without an answer.

    ## Arguments
    * ``split``: ``"train"`` or ``"test"``.
    * ``max_turns``: turn limit (default 4: two calls, an answer and one spare turn).
    * ``num_tasks``: problems per split (default 100).
    * ``seed``: seed of task generation (default 0).

    ## Version History
    * v0: initial version.
    """

    observation_format = "chat"

    def __init__(
        self,
        *,
        split: str = "train",
        max_turns: int = 4,
        num_tasks: int = 100,
        seed: int = 0,
        tasks: Sequence[Task] | None = None,
        render_mode: str | None = None,
    ) -> None:
        if split not in ("train", "test"):
            raise ConfigError(f"Calculator-v0 split must be 'train' or 'test', got {split!r}")
        if num_tasks < 1:
            raise ConfigError(f"num_tasks must be >= 1, got {num_tasks}")
        self.num_tasks, self.seed = num_tasks, seed
        self._tool_parser = HermesParser([calculator])
        self._answer_parser = TagParser({"answer": "answer"})
        super().__init__(split=split, max_turns=max_turns, tasks=tasks, render_mode=render_mode)

    def load_tasks(self, split: str) -> Sequence[Task]:
        rng = random.Random(f"calculator:{split}:{self.seed}")  # a str seed is stable across runs
        tasks = []
        for i in range(self.num_tasks):
            a, b, c = rng.randint(2, 99), rng.randint(2, 99), rng.randint(2, 99)
            op1, op2 = rng.choice("+-*"), rng.choice("+-*")
            answer = OPERATIONS[op2](OPERATIONS[op1](a, b), c)
            meta = {"steps": [[a, op1, b], [op2, c]]}
            tasks.append(Task(f"calc-{split}-{i:04d}", f"What is ({a} {op1} {b}) {op2} {c}?", answer, meta))
        return tasks

    @property
    def tools(self) -> list[Tool]:
        return [calculator]

    def initial_messages(self, task: Task) -> list[Message]:
        return [{"role": "system", "content": SYSTEM_PROMPT}, {"role": "user", "content": task.prompt}]

    def turn(self, text: str) -> TurnResult:
        assert self.task is not None
        answers = self._answer_parser.parse(text)
        if isinstance(answers, list) and answers:
            success = _number(answers[0].arguments["answer"]) == self.task.answer
            return TurnResult([], float(success), terminated=True, info={"success": success, "tool_calls": 0})
        calls = self._tool_parser.parse(text)
        if isinstance(calls, ParseError):
            error: Message = {"role": "tool", "name": "calculator", "content": f"Error: {calls.message}"}
            return TurnResult([error], info={"success": False, "tool_calls": 0, "tool_errors": 1})
        if not calls:
            return TurnResult([{"role": "user", "content": NUDGE}], info={"success": False, "tool_calls": 0})
        results = [calculator.call(call.arguments) for call in calls]
        messages: list[Message] = [{"role": "tool", "name": "calculator", "content": r} for r in results]
        errors = sum(r.startswith("Error") for r in results)
        return TurnResult(messages, info={"success": False, "tool_calls": len(calls), "tool_errors": errors})

    def scripted_episode(self) -> list[str]:
        """Turns that solve the current task: both operations through the tool, then the answer."""
        assert self.task is not None, "call reset() first"
        (a, op1, b), (op2, c) = self.task.meta["steps"]
        first = calculator.call({"a": a, "op": op1, "b": b})
        call = (
            '<tool_call>{{"name": "calculator", "arguments": {{"a": {}, "op": "{}", "b": {}}}}}</tool_call>'
        )
        return [call.format(a, op1, b), call.format(first, op2, c), f"<answer>{self.task.answer}</answer>"]


def _number(text: str) -> float | None:
    """The number ``text`` spells (``"42"``, ``" 42.0 "``), or None."""
    try:
        return float(text.strip().replace(",", ""))
    except ValueError:
        return None
