"""The packaged offline corpus and QA tasks of ``agentrl/Search-v0`` (built by ``build.py``).

``corpus.jsonl.gz``: one ``{"id", "title", "text"}`` document per line. ``tasks.jsonl.gz``: one
``{"id", "split", "question", "answers", "type", "hops", "docs"}`` task per line, where ``split`` is
``train``, ``test`` (same question types as train, disjoint subjects) or ``heldout`` (question types
never seen in training) and ``docs`` are the gold documents in the order a solver needs them.
"""

from __future__ import annotations

import gzip
import json
from functools import cache
from pathlib import Path
from typing import Any

from agentrl.errors import ConfigError
from agentrl.tools.retrieval.base import PACKAGED_CORPUS

DATA_DIR = Path(__file__).parent
CORPUS_PATH = PACKAGED_CORPUS
TASKS_PATH = DATA_DIR / "tasks.jsonl.gz"
SPLITS = ("train", "test", "heldout")


@cache
def _all_tasks() -> tuple[dict[str, Any], ...]:
    if not TASKS_PATH.exists():
        raise ConfigError(
            f"{TASKS_PATH} is missing: reinstall agentrl or run python -m agentrl.envs.search_data.build"
        )
    with gzip.open(TASKS_PATH, "rt", encoding="utf-8") as f:
        return tuple(json.loads(line) for line in f if line.strip())


def load_tasks(split: str) -> list[dict[str, Any]]:
    """The task records of ``split``, in a stable order (sorted by id)."""
    if split not in SPLITS:
        raise ConfigError(f"unknown Search split {split!r}; choose one of {', '.join(SPLITS)}")
    return [dict(t) for t in _all_tasks() if t["split"] == split]


def question_types() -> dict[str, list[str]]:
    """The question types present in each split."""
    out: dict[str, set[str]] = {s: set() for s in SPLITS}
    for t in _all_tasks():
        out[t["split"]].add(t["type"])
    return {s: sorted(v) for s, v in out.items()}


@cache
def _corpus_index() -> dict[str, dict[str, str]]:
    with gzip.open(CORPUS_PATH, "rt", encoding="utf-8") as f:
        return {d["id"]: d for d in map(json.loads, f)}


def doc_by_id(doc_id: str) -> dict[str, str]:
    """The packaged corpus document ``doc_id`` (``{"id", "title", "text"}``)."""
    try:
        return _corpus_index()[doc_id]
    except KeyError:
        raise ConfigError(f"no document {doc_id!r} in the packaged Search corpus") from None
