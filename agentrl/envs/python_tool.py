"""``agentrl/PythonTool-v0``: math problems the agent may solve by running Python in a sandbox."""

from __future__ import annotations

import json
import zlib
from collections.abc import Callable, Sequence
from typing import Any

from agentrl.envs.base import Task, ToolEnv, TurnResult
from agentrl.errors import ConfigError
from agentrl.tools.parsers import HermesParser, ParseError, TagParser
from agentrl.tools.python_tool import make_python_tool
from agentrl.tools.sandbox.base import Sandbox
from agentrl.tools.schema import Tool
from agentrl.types import Message

TRAIN_GENERATORS = (
    "gsm_symbolic", "basic_arithmetic", "chain_sum", "leg_counting", "products", "decimal_arithmetic",
)  # fmt: skip
"""reasoning-gym families of the ``train`` and ``validation`` splits: arithmetic and word problems."""
TEST_GENERATORS = (
    "gcd", "lcm", "prime_factorization", "count_primes", "fraction_simplification", "time_intervals",
)  # fmt: skip
"""Families of the held-out ``test`` split: number theory and time, never seen in training."""
SPLITS = {"train": TRAIN_GENERATORS, "validation": TRAIN_GENERATORS, "test": TEST_GENERATORS}

SYSTEM_PROMPT = (
    "You solve math problems. You may run Python 3 code with the `python` tool as often as you like; "
    "it returns what the program prints. When you are sure, give only the final answer inside "
    "<answer> and </answer>, for example <answer>42</answer>."
)
NUDGE = "Call the `python` tool, or give your final answer inside <answer> and </answer>."


class PythonToolEnv(ToolEnv):
    """Math problems from reasoning-gym generators, with a sandboxed ``python`` tool.

    ## Description
    Each episode is one procedurally generated problem (word problems, arithmetic, number theory). The
    agent may call the ``python`` tool with Hermes/Qwen tool calls, any number of times within
    ``max_turns``, and ends the episode by writing ``<answer>...</answer>``. The ``train`` and
    ``validation`` splits draw from :data:`TRAIN_GENERATORS` (different seeds); ``test`` draws from
    :data:`TEST_GENERATORS`, families never seen in training. Tasks are deterministic given ``seed``.

    ## Action
    The agent's whole turn as text: ``<tool_call>{"name": "python", "arguments": {"code": "..."}}
    </tool_call>`` blocks and/or a final ``<answer>...</answer>``.

    ## Observation
    Chat messages (``observation_format = "chat"``): the system prompt and the problem at reset; after a
    tool call, one ``{"role": "tool", "name": "python", "content": ...}`` message per call with the exit
    status, stdout and stderr (with truncation notes); a malformed call yields a ``tool`` message saying
    what was wrong; a turn with neither a call nor an answer yields a ``user`` reminder.

    ## Reward
    On the answer turn, the generator's own ``score_answer`` (1.0 for a correct answer, partial credit
    where the generator defines it, 0.0 for an unparsable one); 0 on every other turn.

    ## Episode End
    Terminated when the agent answers; truncated after ``max_turns`` turns without an answer.

    ## Arguments
    * ``split``: ``"train"``, ``"validation"`` or ``"test"``.
    * ``max_turns``: turn limit (default 4).
    * ``tasks_per_generator``: problems generated per family (default 100).
    * ``generators``: override the split's families (a list of reasoning-gym dataset names).
    * ``seed``: base seed of task generation (default 0).
    * ``sandbox``: ``"docker"`` (default), ``"local"`` (opt-in, unisolated), or a callable returning a
      :class:`~agentrl.tools.sandbox.base.Sandbox`; created on the first ``python`` call, closed at the
      next ``reset`` and at ``close``.
    * ``sandbox_config``: a ``SandboxConfig`` for ``make_sandbox``.
    * ``tool_timeout``, ``max_output_chars``: per-call limits of the ``python`` tool.

    ## Version History
    * v0: initial version.
    """

    observation_format = "chat"

    def __init__(
        self,
        *,
        split: str = "train",
        max_turns: int = 4,
        tasks_per_generator: int = 100,
        generators: Sequence[str] | None = None,
        seed: int = 0,
        sandbox: str | Callable[[], Sandbox] = "docker",
        sandbox_config: Any = None,
        tool_timeout: float = 10.0,
        max_output_chars: int = 4000,
        tasks: Sequence[Task] | None = None,
        render_mode: str | None = None,
    ) -> None:
        if split not in SPLITS:
            raise ConfigError(f"PythonTool-v0 split must be one of {sorted(SPLITS)}, got {split!r}")
        if tasks_per_generator < 1:
            raise ConfigError(f"tasks_per_generator must be >= 1, got {tasks_per_generator}")
        self.generators = tuple(generators) if generators is not None else SPLITS[split]
        self.tasks_per_generator = tasks_per_generator
        self.seed = seed
        self._datasets: dict[str, Any] = {}
        self._sandbox_spec = sandbox
        self._sandbox_config = sandbox_config
        self._sandbox: Sandbox | None = None
        self._python = make_python_tool(
            self._get_sandbox, timeout=tool_timeout, max_output_chars=max_output_chars
        )
        self._tool_parser = HermesParser([self._python])
        self._answer_parser = TagParser({"answer": "answer"})
        super().__init__(split=split, max_turns=max_turns, tasks=tasks, render_mode=render_mode)

    # ----------------------------------------------------------------- tasks
    def load_tasks(self, split: str) -> Sequence[Task]:
        tasks = []
        for name in self.generators:
            dataset = self._dataset(name)
            for i in range(self.tasks_per_generator):
                entry = dataset[i]
                meta = {"generator": name, "index": i, "family_split": "test" if split == "test" else "train"}
                tasks.append(Task(f"{name}-{i:04d}", entry["question"], str(entry["answer"]), meta))
        return tasks

    def _dataset(self, name: str) -> Any:
        """The reasoning-gym dataset of ``name`` for this split; its seed differs per (split, family)."""
        if name not in self._datasets:
            import reasoning_gym

            family_seed = zlib.crc32(f"{self.split}:{name}".encode()) ^ self.seed
            try:
                self._datasets[name] = reasoning_gym.create_dataset(
                    name, seed=family_seed, size=self.tasks_per_generator
                )
            except (KeyError, ValueError) as e:
                raise ConfigError(f"{name!r} is not a reasoning-gym dataset usable here: {e}") from e
        return self._datasets[name]

    def score(self, task: Task, answer: str) -> float:
        """The generator's own score of ``answer``; a scorer that chokes on junk scores 0."""
        dataset = self._dataset(task.meta["generator"])
        try:
            return float(dataset.score_answer(answer, dataset[task.meta["index"]]))
        except Exception:
            return 0.0

    # ----------------------------------------------------------------- episode
    @property
    def tools(self) -> list[Tool]:
        return [self._python]

    def initial_messages(self, task: Task) -> list[Message]:
        return [{"role": "system", "content": SYSTEM_PROMPT}, {"role": "user", "content": task.prompt}]

    def turn(self, text: str) -> TurnResult:
        assert self.task is not None
        answers = self._answer_parser.parse(text)
        if isinstance(answers, list) and answers:
            reward = self.score(self.task, answers[0].arguments["answer"])
            return TurnResult([], reward, terminated=True, info={"success": reward >= 1.0, "tool_calls": 0})
        calls = self._tool_parser.parse(text)
        if isinstance(calls, ParseError):
            error: Message = {"role": "tool", "name": "python", "content": f"Error: {calls.message}"}
            return TurnResult([error], info={"tool_calls": 0, "tool_errors": 1, "parse_error": calls.kind})
        if not calls:
            return TurnResult([{"role": "user", "content": NUDGE}], info={"tool_calls": 0})
        results = [self._python.call(call.arguments) for call in calls]
        messages: list[Message] = [{"role": "tool", "name": "python", "content": r} for r in results]
        errors = sum(r.startswith("Error") for r in results)
        return TurnResult(messages, info={"tool_calls": len(calls), "tool_errors": errors})

    def scripted_episode(self) -> list[str]:
        """Agent turns that solve the current task: compute-by-printing the answer, then answer it.

        Used by ``agentrl envs check`` to drive one episode through the tool path and the sandbox.
        """
        assert self.task is not None, "call reset() first"
        call = {"name": "python", "arguments": {"code": f"print({self.task.answer!r})"}}
        return [f"<tool_call>{json.dumps(call)}</tool_call>", f"<answer>{self.task.answer}</answer>"]

    # ----------------------------------------------------------------- sandbox lifecycle
    def _get_sandbox(self) -> Sandbox:
        if self._sandbox is None:
            if callable(self._sandbox_spec):
                self._sandbox = self._sandbox_spec()
            else:
                from agentrl.tools.sandbox import make_sandbox

                self._sandbox = make_sandbox(self._sandbox_spec, self._sandbox_config)
        return self._sandbox

    def _close_sandbox(self) -> None:
        if self._sandbox is not None:
            sandbox, self._sandbox = self._sandbox, None
            sandbox.close()

    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[list[Message], dict[str, Any]]:
        """Start a new episode in a fresh sandbox (the previous episode's one is closed)."""
        self._close_sandbox()
        return super().reset(seed=seed, options=options)

    def close(self) -> None:
        self._close_sandbox()
        super().close()
