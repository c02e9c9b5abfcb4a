"""``agentrl/PromptData-v0``: an env made from a prompt file, slime's ``--prompt-data`` workflow.

``agentrl train --prompt-data train.jsonl --input-key question --label-key answer --reward math`` trains
on this env; :class:`PromptDataConfig` holds those flags (nested in ``TrainConfig`` and ``EvalConfig``,
so both commands take them) and turns them into the env's keyword arguments. See docs/data.md.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from agentrl.envs.base import Task, ToolEnv, TurnResult
from agentrl.envs.prompt_files import PromptKeys, read_tasks
from agentrl.envs.rewards import RewardSample
from agentrl.envs.rewards.text import strip_end_tokens
from agentrl.errors import ConfigError
from agentrl.tools.schema import Tool
from agentrl.types import Message

PROMPT_DATA_ID = "agentrl/PromptData-v0"
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
_NAME = re.compile(r"^[A-Za-z0-9_.-]+$")


@dataclass(frozen=True)
class EvalDataset:
    """One eval dataset, with the settings it overrides (None: the run's own)."""

    name: str
    path: str
    n_samples_per_prompt: int | None = None
    temperature: float | None = None
    max_new_tokens: int | None = None
    reward: str | None = None
    """Used for records without their own ``metadata.rm_type``."""

    def settings(
        self, n: int, temperature: float, sampled_temperature: float
    ) -> tuple[int, float, int | None]:
        """``(samples, temperature, max_new_tokens)`` for this dataset, from the run's ``n`` samples at
        ``temperature``; overriding only the samples (to more than 1) samples at ``sampled_temperature``."""
        samples = self.n_samples_per_prompt or n
        if self.temperature is not None:
            temperature = self.temperature
        elif samples != n:
            temperature = 0.0 if samples == 1 else sampled_temperature
        return samples, temperature, self.max_new_tokens


EVAL_CONFIG_FIELDS = {"name", "path", "n_samples_per_prompt", "temperature", "max_new_tokens", "reward"}


def read_eval_config(path: str) -> list[EvalDataset]:
    """The datasets of an ``--eval-config`` YAML file (slime's ``--eval-config``)::

    datasets:
      - name: aime
        path: aime.jsonl            # relative to this file's folder
        n_samples_per_prompt: 8     # the overrides are optional
        temperature: 0.6
        max_new_tokens: 1024
        reward: boxed_math
    """
    import yaml

    file = Path(path)
    if not file.is_file():
        raise ConfigError(f"--eval-config {path}: no such file")
    try:
        data = yaml.safe_load(file.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"--eval-config {path}: not valid YAML ({e})") from None
    entries = data.get("datasets") if isinstance(data, dict) else None
    if not isinstance(entries, list) or not entries:
        raise ConfigError(f"--eval-config {path}: expected a mapping with a non-empty list `datasets:`")
    out = []
    for i, entry in enumerate(entries):
        where = f"--eval-config {path}: datasets[{i}]"
        if not isinstance(entry, dict) or not {"name", "path"} <= set(entry):
            raise ConfigError(f"{where} must be a mapping with at least `name` and `path`, got {entry!r}")
        unknown = set(entry) - EVAL_CONFIG_FIELDS
        if unknown:
            raise ConfigError(
                f"{where}: unknown field(s) {sorted(unknown)}; known: {sorted(EVAL_CONFIG_FIELDS)}"
            )
        for key, kind, low in (
            ("n_samples_per_prompt", "an integer", 1),
            ("max_new_tokens", "an integer", 1),
            ("temperature", "a number", 0),
        ):
            value = entry.get(key)
            allowed = int if kind == "an integer" else int | float
            if value is not None and (
                not isinstance(value, allowed) or isinstance(value, bool) or value < low
            ):
                raise ConfigError(f"{where}.{key} must be {kind} >= {low}, got {value!r}")
        dataset_path = Path(str(entry["path"]))
        if not dataset_path.is_absolute():
            dataset_path = file.parent / dataset_path
        out.append(
            EvalDataset(
                name=str(entry["name"]),
                path=str(dataset_path),
                n_samples_per_prompt=entry.get("n_samples_per_prompt"),
                temperature=None if entry.get("temperature") is None else float(entry["temperature"]),
                max_new_tokens=entry.get("max_new_tokens"),
                reward=entry.get("reward"),
            )
        )
    return out


@dataclass(frozen=True)
class PromptDataConfig:
    """Prompt files, their keys, the reward and the eval datasets (slime's data flags; docs/data.md)."""

    prompt_data: str | None = None
    """Train on this prompt file (JSONL, JSON, Parquet) instead of --env; slime's --prompt-data."""
    input_key: str = "prompt"
    """Record key of the prompt: a string (one user message) or a list of chat messages."""
    label_key: str | None = "label"
    """Record key of the label the reward compares with; none: records carry no label."""
    metadata_key: str = field(default="metadata", metadata={"rare": True})
    """Record key of a per-record dict given to the reward; its rm_type picks that record's reward."""
    tool_key: str | None = field(default=None, metadata={"rare": True})
    """Record key of tool schemas (OpenAI style) handed to the chat template."""
    system_prompt: str | None = field(default=None, metadata={"rare": True})
    """A system message put before prompts that have none."""
    reward: str = "math"
    """Reward: exact, f1, math, boxed_math, or package.module:function (docs/data.md)."""
    reward_concurrency: int = field(default=32, metadata={"rare": True})
    """Most async or batched reward calls in flight (a judge or reward-model server's limit)."""
    apply_chat_template: bool = field(default=True, metadata={"rare": True})
    """Render prompts with the model's chat template (slime's flag); off: a string prompt is fed raw."""
    tools: tuple[str, ...] = field(default=(), metadata={"rare": True})
    """Tools the agent may call, by name (calculator) or package.module:function; makes episodes multi-turn."""
    eval_prompt_data: tuple[str, ...] = ()
    """Evaluate on these datasets: NAME PATH [NAME PATH ...]; metrics per dataset (eval/NAME/...)."""
    eval_config: str | None = field(default=None, metadata={"rare": True})
    """A YAML list of eval datasets with their own samples, temperature, max new tokens, reward."""

    def __post_init__(self) -> None:
        if len(self.eval_prompt_data) % 2:
            raise ConfigError(
                f"--eval-prompt-data takes NAME PATH pairs, got {len(self.eval_prompt_data)} values: "
                f"{' '.join(self.eval_prompt_data)}. Example: --eval-prompt-data gsm8k gsm8k.jsonl aime aime.jsonl"
            )
        names = self.eval_prompt_data[::2]
        for name in [*names, *(d.name for d in self.eval_datasets()[len(names) :])]:
            if not _NAME.match(name) or Path(name).suffix in (".jsonl", ".json", ".parquet"):
                raise ConfigError(
                    f"--eval-prompt-data: {name!r} is not a dataset name (letters, digits, _ . -); the values "
                    "are NAME PATH pairs, e.g. --eval-prompt-data gsm8k gsm8k.jsonl"
                )
        all_names = [d.name for d in self.eval_datasets()]
        if len(set(all_names)) != len(all_names):
            raise ConfigError(f"eval dataset names must differ, got {' '.join(all_names)}")
        if self.reward_concurrency < 1:
            raise ConfigError(f"--reward-concurrency={self.reward_concurrency} must be >= 1")

    @property
    def active(self) -> bool:
        """True when a prompt file or an eval dataset is given: the run uses this env, not --env."""
        return bool(self.prompt_data or self.eval_prompt_data or self.eval_config)

    def eval_datasets(self) -> list[EvalDataset]:
        """``--eval-prompt-data`` pairs, then the ``--eval-config`` file's datasets, in order."""
        pairs = self.eval_prompt_data
        datasets = [EvalDataset(name, path) for name, path in zip(pairs[::2], pairs[1::2], strict=True)]
        return datasets + (read_eval_config(self.eval_config) if self.eval_config else [])

    def env_kwargs(self) -> dict[str, Any]:
        """The keyword arguments of :class:`PromptDataEnv` these flags describe."""
        kwargs: dict[str, Any] = {
            "data": self.prompt_data,
            "eval_data": {d.name: d.path for d in self.eval_datasets()} or None,
            "eval_rewards": {d.name: d.reward for d in self.eval_datasets() if d.reward} or None,
            "input_key": self.input_key,
            "label_key": self.label_key,
            "metadata_key": self.metadata_key,
            "tool_key": self.tool_key,
            "system_prompt": self.system_prompt,
            "reward": self.reward,
            "reward_concurrency": self.reward_concurrency,
            "tools": list(self.tools),
            "apply_chat_template": self.apply_chat_template,
        }
        return kwargs


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


def eval_batches(
    keys: Sequence[str],
    datasets: Sequence[EvalDataset],
    n: int,
    temperature: float,
    sampled_temperature: float,
) -> list[tuple[list[str], tuple[int, float, int | None]]]:
    """Eval task keys (``"<entry>:<dataset>/<row>"``) in batches that share their ``(samples, temperature,
    max_new_tokens)``: the run's ``n`` and ``temperature``, or a dataset's overrides (see
    :meth:`EvalDataset.settings`). Keys of other envs share the run's settings."""
    by_name = {d.name: d for d in datasets}
    batches: dict[tuple[int, float, int | None], list[str]] = {}
    for key in keys:
        dataset = by_name.get(dataset_of(key.split(":", 1)[-1]))
        settings = (
            dataset.settings(n, temperature, sampled_temperature) if dataset else (n, temperature, None)
        )
        batches.setdefault(settings, []).append(key)
    return [(batch, settings) for settings, batch in batches.items()]


def dataset_of(task_id: str) -> str:
    """The dataset name of a task id ``<dataset>/<index>``."""
    return task_id.rsplit("/", 1)[0]


def _sample_meta(row: dict[str, str]) -> dict[str, Any]:
    messages = [{"role": "user", "content": row["prompt"]}]
    return {"messages": messages, "metadata": {}, "tools": [], "source": "built-in"}
