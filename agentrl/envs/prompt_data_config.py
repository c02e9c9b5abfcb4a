"""The prompt-data settings of `agentrl train` and `agentrl eval` (slime's data flags; docs/data.md):
:class:`PromptDataConfig` (nested in ``TrainConfig`` and ``EvalConfig``, so both commands take the same
flags) turns them into the keyword arguments of ``agentrl/PromptData-v0`` (:mod:`agentrl.envs.dataset`);
``--eval-config`` files and the per-dataset evaluation settings live here too.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from agentrl.config_io import read_yaml
from agentrl.errors import ConfigError

PROMPT_DATA_ID = "agentrl/PromptData-v0"
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
    file = Path(path)
    data = read_yaml(file, "--eval-config")
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
