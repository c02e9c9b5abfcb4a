"""Prompt files (slime's ``--prompt-data``) read into :class:`~agentrl.envs.base.Task` lists.

A file holds one record per prompt: JSONL (one JSON object per line), JSON (a list of objects), Parquet,
or a folder written by Hugging Face ``datasets`` (``save_to_disk``; needs that package). Which fields
mean what is set by :class:`PromptKeys` (``--input-key``, ``--label-key``, ``--metadata-key``,
``--tool-key``). Every problem is a :class:`~agentrl.errors.ConfigError` that names the file and the
line (or row), and for a missing key the keys the record has, so a bad file stops a run before Ray or a
model starts (``agentrl.cli.checks`` reads the files first).

Example::

    {"question": "What is 2 + 3?", "answer": "5", "metadata": {"rm_type": "math"}}
    {"question": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "2 + 3?"}], "answer": "5"}
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from agentrl.envs.base import Task
from agentrl.errors import ConfigError
from agentrl.types import Message

ROLES = ("system", "user", "assistant", "tool")


@dataclass(frozen=True)
class PromptKeys:
    """Which record fields hold the prompt, the label, the metadata and the tool schemas."""

    input_key: str = "prompt"
    label_key: str | None = "label"
    metadata_key: str = "metadata"
    tool_key: str | None = None


def read_records(path: str | Path) -> Iterator[tuple[str, dict[str, Any]]]:
    """``(where, record)`` for each record of ``path``; ``where`` is ``file:line`` (JSONL, JSON) or
    ``file:row N`` (Parquet, datasets)."""
    path = Path(path)
    if not path.exists():
        raise ConfigError(f"prompt file {path} does not exist")
    if path.is_dir():
        yield from _dataset_folder(path)
        return
    suffix = path.suffix.lower()
    if suffix == ".jsonl":
        yield from _jsonl(path)
    elif suffix == ".json":
        yield from _json(path)
    elif suffix == ".parquet":
        import pyarrow.parquet as pq

        for i, row in enumerate(pq.read_table(path).to_pylist(), 1):
            yield f"{path}:row {i}", row
    else:
        raise ConfigError(
            f"prompt file {path}: unknown extension {path.suffix!r}; use .jsonl, .json or .parquet "
            "(or a folder saved by datasets' save_to_disk)"
        )


def _jsonl(path: Path) -> Iterator[tuple[str, dict[str, Any]]]:
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as e:
                raise ConfigError(
                    f"{path}:{n}: not valid JSON ({e.msg} at column {e.colno}); each line of a .jsonl file "
                    "must be one JSON object"
                ) from None
            yield f"{path}:{n}", _object(record, f"{path}:{n}")


def _json(path: Path) -> Iterator[tuple[str, dict[str, Any]]]:
    text = path.read_text(encoding="utf-8")
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        raise ConfigError(f"{path}:{e.lineno}: not valid JSON ({e.msg} at column {e.colno})") from None
    if not isinstance(data, list):
        raise ConfigError(
            f"{path}: a .json prompt file must hold a list of objects, got {type(data).__name__}"
        )
    starts = _object_lines(text, len(data))
    for i, record in enumerate(data):
        where = f"{path}:{starts[i]}" if i < len(starts) else f"{path}: item {i + 1}"
        yield where, _object(record, where)


def _object_lines(text: str, count: int) -> list[int]:
    """The line on which each top-level item of a JSON list starts (for messages); best effort."""
    decoder, i = json.JSONDecoder(), text.index("[") + 1
    lines: list[int] = []
    while len(lines) < count:
        while i < len(text) and text[i] in " \t\r\n,":
            i += 1
        if i >= len(text) or text[i] == "]":
            break
        lines.append(text.count("\n", 0, i) + 1)
        _, i = decoder.raw_decode(text, i)
    return lines


def _dataset_folder(path: Path) -> Iterator[tuple[str, dict[str, Any]]]:
    try:
        import datasets
    except ImportError:
        raise ConfigError(
            f"prompt data {path} is a folder: reading a saved Hugging Face dataset needs the `datasets` "
            "package (pip install datasets), or export it to .jsonl / .parquet"
        ) from None
    loaded = datasets.load_from_disk(str(path))
    if isinstance(loaded, datasets.DatasetDict):
        raise ConfigError(f"{path} holds several splits ({', '.join(loaded)}); give the folder of one split")
    for i, row in enumerate(loaded, 1):
        yield f"{path}:row {i}", dict(row)


def _object(record: Any, where: str) -> dict[str, Any]:
    if not isinstance(record, dict):
        raise ConfigError(f"{where}: expected a JSON object (a record), got {type(record).__name__}")
    return record


def _field(record: dict[str, Any], key: str, flag: str, where: str) -> Any:
    if key not in record:
        present = ", ".join(map(str, record)) or "none"
        raise ConfigError(
            f"{where}: no key {key!r} ({flag} {key}); the record's keys are: {present}. "
            f"Set {flag} to the key that holds it."
        )
    return record[key]


def prompt_messages(value: Any, where: str, key: str) -> list[Message]:
    """The input field as chat messages: a string is one user message; a list must be messages."""
    if isinstance(value, str):
        return [{"role": "user", "content": value}]
    if isinstance(value, list) and value:
        for i, m in enumerate(value):
            if not isinstance(m, dict) or m.get("role") not in ROLES or not isinstance(m.get("content"), str):
                raise ConfigError(
                    f"{where}: {key}[{i}] must be a message {{'role': one of {', '.join(ROLES)}, 'content': "
                    f"str}}, got {m!r}"
                )
        return [{"role": m["role"], "content": m["content"]} for m in value]
    raise ConfigError(f"{where}: {key} must be a string or a non-empty list of chat messages, got {value!r}")


def _json_field(value: Any, where: str, key: str, kind: type) -> Any:
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except json.JSONDecodeError:
            raise ConfigError(f"{where}: {key} is a string but not JSON") from None
    if not isinstance(value, kind):
        raise ConfigError(f"{where}: {key} must be a {kind.__name__} (or its JSON text), got {value!r}")
    return value


def record_to_task(record: dict[str, Any], where: str, task_id: str, keys: PromptKeys) -> Task:
    """One record as a task: ``meta`` holds ``messages``, ``metadata`` and ``tools`` (schemas)."""
    messages = prompt_messages(_field(record, keys.input_key, "--input-key", where), where, keys.input_key)
    label = None
    if keys.label_key is not None:
        label = _field(record, keys.label_key, "--label-key", where)
    metadata = record.get(keys.metadata_key)
    metadata = {} if metadata is None else _json_field(metadata, where, keys.metadata_key, dict)
    tools: list[Any] = []
    if keys.tool_key is not None and record.get(keys.tool_key) is not None:
        tools = _json_field(record[keys.tool_key], where, keys.tool_key, list)
    prompt = next((m["content"] for m in reversed(messages) if m["role"] == "user"), messages[-1]["content"])
    meta = {"messages": messages, "metadata": metadata, "tools": tools, "source": where}
    return Task(task_id, prompt, label, meta)


def read_tasks(path: str | Path, dataset: str, keys: PromptKeys) -> list[Task]:
    """Every record of ``path`` as a task with id ``<dataset>/<n>`` (n counts records from 0)."""
    tasks = [
        record_to_task(r, where, f"{dataset}/{i}", keys) for i, (where, r) in enumerate(read_records(path))
    ]
    if not tasks:
        raise ConfigError(f"prompt file {path} holds no records")
    return tasks
