"""``agentrl/PromptData-v0``: an env made from a prompt file, slime's ``--prompt-data`` workflow.

``agentrl train --prompt-data train.jsonl --input-key question --label-key answer --reward math`` trains
on this env; :class:`~agentrl.envs.prompt_data_config.PromptDataConfig` holds those flags and turns them
into this env's keyword arguments. See docs/data.md.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from agentrl.envs.base import Task, ToolEnv, TurnResult
from agentrl.envs.prompt_data_config import dataset_of
from agentrl.envs.prompt_files import PromptKeys, read_tasks
from agentrl.envs.rewards import RewardSample
from agentrl.envs.rewards.text import strip_end_tokens
from agentrl.errors import ConfigError
from agentrl.tools.schema import Tool
from agentrl.types import Message

TOOLS = {"calculator": "agentrl.envs.example:calculator"}
"""Tools ``--tools`` accepts by name; anything else is an import path of a ``@tool`` function."""
SAMPLE_ROWS = [
    {"prompt": f"What is {a} + {b}? Put the final answer in \\boxed{{}}.", "label": str(a + b)}
    for a, b in ((2, 3), (17, 25), (40, 2), (9, 91), (123, 77), (8, 13), (31, 11), (64, 36))
]
"""The prompts of the env made without ``data`` (for ``agentrl envs check`` and quick tries)."""
RAW_TEMPLATE = "{% for m in messages %}{{ m['content'] }}{% endfor %}"
"""``--no-apply-chat-template``: the conversation is its messages' text, as is (slime without
``--apply-chat-template``); the rollout driver renders this env's episodes with it."""


def load_tool(name: str) -> Tool:
    """A tool by name (:data:`TOOLS`) or by import path of a ``@tool`` function."""
    from agentrl.envs.import_path import load_object

    obj = load_object(TOOLS.get(name, name), "--tools")
    if not isinstance(obj, Tool):
        raise ConfigError(
            f"--tools {name!r} is a {type(obj).__name__}, not a @tool function (agentrl.tools.tool)"
        )
    return obj


class PromptDataEnv(ToolEnv):
    """Prompts and labels from a file, scored by a reward function: slime's ``--prompt-data``.

    ## Description
    Each task is one record of a prompt file (JSONL, JSON, Parquet, or a saved ``datasets`` folder),
    read with ``input_key``, ``label_key``, ``metadata_key`` and ``tool_key``. The ``train`` split is
    ``data``; any other split is the ``eval_data`` datasets, interleaved so that the first k tasks cover
    every dataset (``data`` itself when there are none). Task ids are ``<dataset>/<record index>``.
    Without ``data`` the env serves eight built-in addition prompts.

    ## Action
    The agent's turn as text. With ``tools``, ``<tool_call>{...}</tool_call>`` blocks call them; a turn
    without a call is the answer.

    ## Observation
    Chat messages: the record's prompt (a string becomes one user message; chat messages are used as
    they are), after ``system_prompt`` when given; with ``tools``, one ``tool`` message per call. With
    ``apply_chat_template=False`` the env's ``chat_template`` is :data:`RAW_TEMPLATE`: the rollout feeds
    the messages' text as it is, without the model's template (for base models and pre-rendered prompts).

    ## Reward
    The answer turn's reward from ``reward`` (exact, f1, math, boxed_math or an import path), or from the
    record's ``metadata["rm_type"]``; ``success`` is reward >= 1 unless the reward returns its own. A
    reward that raises ends the episode as FAILED with the error.

    ## Episode End
    Terminated by the answer: one turn without tools; with tools, the first turn without a tool call.
    Truncated after ``max_turns`` turns (default 1, or 4 with tools).

    ## Arguments
    * ``data``: the training prompt file. ``eval_data``: ``{name: path}`` of eval datasets;
      ``eval_rewards``: ``{name: reward}`` for records of that dataset without their own ``rm_type``.
    * ``input_key``, ``label_key`` (None: no label), ``metadata_key``, ``tool_key``: record keys.
    * ``system_prompt``: a system message for prompts that have none.
    * ``reward``: see Reward. ``reward_concurrency``: async/batched reward calls in flight.
    * ``tools``: tool names or import paths of ``@tool`` functions.
    * ``apply_chat_template``: False feeds prompts as raw text (no tools then).

    ## Version History
    * v0: initial version.
    """

    observation_format = "chat"

    def __init__(
        self,
        *,
        split: str = "train",
        data: str | None = None,
        eval_data: dict[str, str] | None = None,
        eval_rewards: dict[str, str] | None = None,
        input_key: str = "prompt",
        label_key: str | None = "label",
        metadata_key: str = "metadata",
        tool_key: str | None = None,
        system_prompt: str | None = None,
        reward: str = "math",
        reward_concurrency: int = 32,
        tools: Sequence[str] = (),
        apply_chat_template: bool = True,
        max_turns: int | None = None,
        tasks: Sequence[Task] | None = None,
        render_mode: str | None = None,
    ) -> None:
        from agentrl.envs.rewards.runner import shared_runner
        from agentrl.tools.parsers import HermesParser

        self.data, self.eval_data, self.eval_rewards = data, dict(eval_data or {}), dict(eval_rewards or {})
        self.keys = PromptKeys(input_key, label_key, metadata_key, tool_key)
        self.system_prompt = system_prompt
        self._tools = [load_tool(t) for t in tools]
        if not apply_chat_template and self._tools:
            raise ConfigError(
                "--tools need the chat template (tool calls are chat turns); drop --no-apply-chat-template"
            )
        self.chat_template = None if apply_chat_template else RAW_TEMPLATE
        self._parser = HermesParser(self._tools) if self._tools else None
        self.rewards = shared_runner(reward, reward_concurrency)
        self.rewards.reward_for(RewardSample("", None))  # an unknown reward fails here, not mid-run
        turns = max_turns if max_turns is not None else (4 if self._tools else 1)
        super().__init__(split=split, max_turns=turns, tasks=tasks, render_mode=render_mode)

    def datasets(self, split: str) -> dict[str, str | None]:
        """``{name: path}`` of ``split``: the training file, or the eval datasets (``None``: built-in)."""
        if split != "train" and self.eval_data:
            return dict(self.eval_data)
        return {Path(self.data).stem if self.data else "sample": self.data}

    def load_tasks(self, split: str) -> Sequence[Task]:
        per_dataset = []
        for name, path in self.datasets(split).items():
            if path is None:
                samples = enumerate(SAMPLE_ROWS)
                per_dataset.append(
                    [Task(f"{name}/{i}", r["prompt"], r["label"], _sample_meta(r)) for i, r in samples]
                )
            else:
                per_dataset.append(self._with_reward(read_tasks(path, name, self.keys), split, name))
        longest = max(len(tasks) for tasks in per_dataset)
        return [tasks[i] for i in range(longest) for tasks in per_dataset if i < len(tasks)]

    def _with_reward(self, tasks: list[Task], split: str, name: str) -> list[Task]:
        """An eval dataset's own reward (``--eval-config``) as the ``rm_type`` of records without one."""
        reward = self.eval_rewards.get(name) if split != "train" else None
        if not reward:
            return tasks
        for task in tasks:
            task.meta["metadata"] = {"rm_type": reward, **task.meta["metadata"]}
        return tasks

    @property
    def tools(self) -> list[Tool]:
        return list(self._tools)

    def initial_messages(self, task: Task) -> list[Message]:
        messages = [dict(m) for m in task.meta["messages"]]
        if self.system_prompt and messages[0]["role"] != "system":
            messages.insert(0, {"role": "system", "content": self.system_prompt})
        return messages

    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[list[Message], dict[str, Any]]:
        messages, info = super().reset(seed=seed, options=options)
        assert self.task is not None
        info["tools"] = [*self.task.meta.get("tools", []), *info["tools"]]  # the record's schemas first
        info["dataset"] = dataset_of(self.task.id)
        return messages, info

    def turn(self, text: str) -> TurnResult:
        assert self.task is not None
        base = {"dataset": dataset_of(self.task.id), "tool_calls": 0}
        if self._parser is not None:
            calls = self._parser.parse(text)
            if isinstance(calls, list) and calls:
                by_name = {t.name: t for t in self._tools}
                results = [by_name[c.name].call(c.arguments) for c in calls]
                messages: list[Message] = [
                    {"role": "tool", "name": c.name, "content": r}
                    for c, r in zip(calls, results, strict=True)
                ]
                errors = sum(r.startswith("Error") for r in results)
                return TurnResult(
                    messages, info={**base, "success": False, "tool_calls": len(calls), "tool_errors": errors}
                )
        sample = RewardSample(
            response=strip_end_tokens(text),
            label=self.task.answer,
            metadata=dict(self.task.meta.get("metadata") or {}),
            prompt=self.initial_messages(self.task),
            task_id=self.task.id,
        )
        components = self.rewards.score(sample)  # raises RewardError: the episode is FAILED, the run goes on
        reward = components.pop("reward")
        success = bool(components.pop("success", reward >= 1.0))
        info = {**base, "success": success, **{f"reward/{k}": v for k, v in components.items()}}
        return TurnResult([], reward, terminated=True, info=info)

    def scripted_episode(self) -> list[str]:
        """An answer that the built-in rewards score 1: the label in ``\\boxed{}``."""
        assert self.task is not None, "call reset() first"
        label = self.task.answer[0] if isinstance(self.task.answer, list) else self.task.answer
        return [f"The answer is \\boxed{{{label}}}."]


def _sample_meta(row: dict[str, str]) -> dict[str, Any]:
    messages = [{"role": "user", "content": row["prompt"]}]
    return {"messages": messages, "metadata": {}, "tools": [], "source": "built-in"}
