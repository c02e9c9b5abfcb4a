"""Checks of a command's inputs that run before anything slow (Ray, a model, an engine) starts.

Each raises :class:`~agentrl.errors.AgentRLError` with a message that names the bad input and how to fix
it; the commands print it without a traceback and exit with status 2.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from agentrl.errors import ConfigError

if TYPE_CHECKING:
    from agentrl.envs.prompt_data_config import PromptDataConfig


def check_env_inputs(env: str, suite: str | None, env_kwargs: dict[str, Any] | None) -> None:
    """The env name (with "did you mean"), or the suite and each of its envs, and the kwargs each env
    would be built with, against its constructor's signature."""
    from agentrl.envs.registry import check_env_kwargs

    if suite is None:
        check_env_kwargs(env, dict(env_kwargs or {}))
        return
    from agentrl.envs.suites import load_suite

    for entry in load_suite(suite).entries:
        check_env_kwargs(entry.env, {**entry.kwargs, **(env_kwargs or {})})


def check_prompt_data(data: PromptDataConfig) -> None:
    """Every prompt file of ``--prompt-data`` and ``--eval-prompt-data`` exists and every record parses and
    has the keys (errors name the file and line); ``--reward``, each record's ``metadata.rm_type`` and
    ``--tools`` resolve. Reward-model classes are imported, not built."""
    from agentrl.envs.dataset import load_tool
    from agentrl.envs.prompt_files import PromptKeys, read_tasks
    from agentrl.envs.rewards import BUILTIN_REWARDS, resolve_reward

    resolve_reward(data.reward, build=False)
    if data.label_key is None and data.reward in BUILTIN_REWARDS:
        raise ConfigError(
            f"--reward {data.reward} compares answers with a label, but --label-key is none; name the "
            "label's key, or use a reward that needs none (package.module:function, rm:PATH)"
        )
    keys = PromptKeys(data.input_key, data.label_key, data.metadata_key, data.tool_key)
    files = [("--prompt-data", data.prompt_data)] if data.prompt_data else []
    datasets = data.eval_datasets()
    files += [(f"eval dataset {d.name}", d.path) for d in datasets]
    for d in datasets:
        if d.reward:
            resolve_reward(
                d.reward, f"--eval-config {data.eval_config}: dataset {d.name}: reward", build=False
            )
    for flag, path in files:
        try:
            tasks = read_tasks(path, "check", keys)
        except ConfigError as e:
            raise ConfigError(f"{flag}: {e}") from e
        for rm_type in sorted({str(t.meta["metadata"].get("rm_type") or "") for t in tasks} - {""}):
            source = next(t.meta["source"] for t in tasks if t.meta["metadata"].get("rm_type") == rm_type)
            resolve_reward(rm_type, f"{source}: metadata.rm_type", build=False)
    for name in data.tools:
        load_tool(name)


def check_hooks(hooks: dict[str, str | None]) -> None:
    """Each data hook (``{"--sample-filter": "pkg.mod:fn", ...}``) imports."""
    from agentrl.envs.import_path import load_object

    for flag, spec in hooks.items():
        if spec:
            load_object(spec, flag)


def check_model(model: str) -> Path:
    """The local HF folder of ``--model`` (an alias is built once into the cache)."""
    from agentrl.models import resolve_model

    return resolve_model(model)


def check_output_file(path: str, flag: str) -> None:
    """``path`` can be written: its folder exists (or can be made) and it is not a folder itself."""
    target = Path(path)
    if target.is_dir():
        raise ConfigError(f"{flag} {path}: is a folder; give a file name")
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ConfigError(f"{flag} {path}: cannot create its folder ({e.strerror})") from e


def check_trajectory_file(path: str, flag: str) -> None:
    """A trajectory JSONL (or a folder of ``step_*.jsonl`` dumps) exists and every record parses; a
    corrupt record is named by file and line."""
    from agentrl.types import load_jsonl

    source = Path(path)
    files = sorted(source.glob("step_*.jsonl")) if source.is_dir() else [source]
    if not files or not files[0].is_file():
        raise ConfigError(f"{flag} {path}: no such file (or no step_*.jsonl dump in that folder)")
    for file in files:
        try:
            for _ in load_jsonl(file):
                pass
        except ValueError as e:
            raise ConfigError(f"{flag}: {e}") from e
