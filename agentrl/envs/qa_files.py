"""QA task files in Search-R1's parquet layout: read them into :class:`Task` lists, write tasks out.

Search-R1 (and verl) store QA data as parquet rows of the form::

    {"data_source": "nq",
     "prompt": [{"role": "user", "content": "<Search-R1 instruction> Question: ...?\\n"}],
     "ability": "fact-reasoning",
     "reward_model": {"style": "rule", "ground_truth": {"target": ["answer", "alias", ...]}},
     "extra_info": {"split": "train", "index": 17}}

agentrl additionally writes the bare ``question`` and a stable ``id`` column, and reads files with or
without them (the question is then cut out of the prompt after ``"Question: "``). JSONL files with the
same fields are accepted too, which is handy for small hand-written task sets.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from agentrl.envs.base import Task
from agentrl.errors import ConfigError

QUESTION_MARKER = "Question: "


def _question_of(row: dict[str, Any], where: str) -> str:
    if row.get("question"):
        return str(row["question"]).strip()
    prompt = row.get("prompt")
    if isinstance(prompt, Sequence) and prompt and isinstance(prompt[-1], dict):
        content = str(prompt[-1].get("content", ""))
        if QUESTION_MARKER in content:
            return content.rsplit(QUESTION_MARKER, 1)[1].strip()
    raise ConfigError(
        f"{where}: row has neither a 'question' field nor a prompt containing {QUESTION_MARKER!r}"
    )


def _answers_of(row: dict[str, Any], where: str) -> list[str]:
    if row.get("golden_answers") is not None:
        answers = row["golden_answers"]
    else:
        try:
            answers = row["reward_model"]["ground_truth"]["target"]
        except (KeyError, TypeError):
            raise ConfigError(
                f"{where}: row has no answers; expected 'golden_answers' or reward_model.ground_truth.target"
            ) from None
    if isinstance(answers, str):
        answers = [answers]
    answers = [str(a) for a in answers]
    if not answers:
        raise ConfigError(f"{where}: the list of gold answers is empty")
    return answers


def row_to_task(row: dict[str, Any], *, where: str, default_source: str) -> Task:
    """Turn one Search-R1 / FlashRAG row into a :class:`Task` (answer = list of gold aliases)."""
    source = str(row.get("data_source") or default_source)
    extra = row.get("extra_info") or {}
    task_id = row.get("id") or f"{source}-{extra.get('split', 'x')}-{extra.get('index', 0)}"
    meta = {"data_source": source, **{k: v for k, v in extra.items() if v is not None}}
    return Task(id=str(task_id), prompt=_question_of(row, where), answer=_answers_of(row, where), meta=meta)


def read_qa_tasks(path: str | Path) -> list[Task]:
    """Read a ``.parquet`` or ``.jsonl`` QA file into tasks (ids must be unique)."""
    path = Path(path)
    if not path.exists():
        raise ConfigError(f"QA task file {path} does not exist; see examples/search_r1/prepare_data.py")
    if path.suffix == ".parquet":
        import pyarrow.parquet as pq

        rows = pq.read_table(path).to_pylist()
    elif path.suffix in (".jsonl", ".json"):
        rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    else:
        raise ConfigError(f"QA task file {path}: unknown extension {path.suffix!r}; use .parquet or .jsonl")
    tasks = [row_to_task(r, where=f"{path}:{i + 1}", default_source=path.stem) for i, r in enumerate(rows)]
    seen: set[str] = set()
    for t in tasks:
        if t.id in seen:
            raise ConfigError(f"{path}: task id {t.id!r} appears twice; ids must be unique")
        seen.add(t.id)
    return tasks


def task_to_row(task: Task, *, prompt: str, split: str, index: int) -> dict[str, Any]:
    """A Search-R1 parquet row for ``task`` whose user turn is ``prompt`` (the full instruction)."""
    answers = task.answer if isinstance(task.answer, list) else [task.answer]
    source = str(task.meta.get("data_source", "agentrl-offline"))
    return {
        "id": task.id,
        "question": task.prompt,
        "data_source": source,
        "prompt": [{"role": "user", "content": prompt}],
        "ability": "fact-reasoning",
        "reward_model": {"style": "rule", "ground_truth": {"target": [str(a) for a in answers]}},
        "extra_info": {**_scalar_meta(task.meta), "split": split, "index": index},
    }


def _scalar_meta(meta: dict[str, Any]) -> dict[str, Any]:
    """Task facts that fit a parquet struct column (question type, hops...), kept for reports."""
    return {k: v for k, v in meta.items() if k != "data_source" and isinstance(v, str | int | float | bool)}


def write_qa_parquet(rows: Iterable[dict[str, Any]], path: str | Path) -> int:
    """Write rows made by :func:`task_to_row` to ``path``; returns the number of rows."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = list(rows)
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pylist(rows), path)
    return len(rows)
