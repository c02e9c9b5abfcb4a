"""Prepare Search-R1 QA data as parquet files in Search-R1's layout (train.parquet, test.parquet).

Two sources produce the same format (read back by ``agentrl.envs.qa_files.read_qa_tasks`` and used through
``agentrl train --env search --env-kwargs '{"task_file": "data/train.parquet"}'``):

* ``--source offline`` (no network): the packaged offline QA sets of ``agentrl/Search-v0`` — train,
  test (same question types) and heldout (question types never trained on), each interleaved by
  question type so that the first N rows of a file cover every type.
* ``--source flashrag`` (needs hub access and ``pip install datasets``): the paper's data from the
  ``RUC-NLPIR/FlashRAG_datasets`` hub repo — NQ + HotpotQA train for training, and the seven evaluation
  sets (NQ, TriviaQA, PopQA, HotpotQA, 2Wiki, Musique, Bamboogle) for testing, as Search-R1's
  ``qa_search_train_merge.py`` / ``qa_search_test_merge.py`` do.

Run::

    python examples/search_r1/prepare_data.py --source offline --out examples/search_r1/data
"""

from __future__ import annotations

import argparse
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from agentrl.envs.base import Task
from agentrl.envs.qa_files import row_to_task, task_to_row, write_qa_parquet
from agentrl.envs.search import PROMPT
from agentrl.errors import ConfigError

FLASHRAG_REPO = "RUC-NLPIR/FlashRAG_datasets"
FLASHRAG_TRAIN = ("nq", "hotpotqa")
FLASHRAG_TEST = ("nq", "triviaqa", "popqa", "hotpotqa", "2wikimultihopqa", "musique", "bamboogle")
OFFLINE_SPLITS = {"train": "train", "test": "test", "heldout": "heldout"}


def search_r1_question(question: str) -> str:
    """Search-R1 strips the question and makes sure it ends with a question mark."""
    question = question.strip()
    return question if question.endswith("?") else question + "?"


def rows_for(tasks: Iterable[Task], split: str) -> Iterator[dict[str, Any]]:
    for index, task in enumerate(tasks):
        yield task_to_row(task, prompt=PROMPT.format(question=task.prompt), split=split, index=index)


def interleave_by_type(tasks: list[Task]) -> list[Task]:
    """Round-robin over question types (first task of each type, then the second...).

    The packaged splits are grouped by type, and a run evaluates the first ``--eval-episodes`` tasks;
    interleaved, any prefix of the file covers every type in equal shares.
    """
    by_type: dict[str, list[Task]] = {}
    for task in tasks:
        by_type.setdefault(str(task.meta.get("type")), []).append(task)
    longest = max((len(group) for group in by_type.values()), default=0)
    return [group[i] for i in range(longest) for group in by_type.values() if i < len(group)]


def offline_tasks(split: str) -> list[Task]:
    from agentrl.envs.search import _offline_tasks

    return interleave_by_type(_offline_tasks(split))


def flashrag_tasks(names: Iterable[str], hf_split_order: tuple[str, ...]) -> list[Task]:
    """Load FlashRAG QA sets (``question``, ``golden_answers``) from the hub; first split found wins."""
    try:
        import datasets
    except ImportError:
        raise ConfigError("--source flashrag needs `pip install datasets` and hub access") from None
    tasks: list[Task] = []
    for name in names:
        ds = datasets.load_dataset(FLASHRAG_REPO, name)
        split = next((s for s in hf_split_order if s in ds), None)
        if split is None:
            raise ConfigError(f"{FLASHRAG_REPO}/{name} has none of the splits {hf_split_order}")
        for i, ex in enumerate(ds[split]):
            row = {
                "id": f"{name}-{split}-{i}",
                "question": search_r1_question(ex["question"]),
                "golden_answers": list(ex["golden_answers"]),
                "data_source": name,
                "extra_info": {"split": split, "index": i},
            }
            tasks.append(row_to_task(row, where=f"{name}/{split}:{i}", default_source=name))
    return tasks


def prepare(source: str, out: Path) -> dict[str, int]:
    """Write the parquet files of ``source`` under ``out``; returns rows per file."""
    written: dict[str, int] = {}
    if source == "offline":
        for split, name in OFFLINE_SPLITS.items():
            path = out / f"{name}.parquet"
            written[path.name] = write_qa_parquet(rows_for(offline_tasks(split), split), path)
    elif source == "flashrag":
        train = flashrag_tasks(FLASHRAG_TRAIN, ("train",))
        test = flashrag_tasks(FLASHRAG_TEST, ("test", "dev"))
        written["train.parquet"] = write_qa_parquet(rows_for(train, "train"), out / "train.parquet")
        written["test.parquet"] = write_qa_parquet(rows_for(test, "test"), out / "test.parquet")
    else:
        raise ConfigError(f"--source must be 'offline' or 'flashrag', got {source!r}")
    return written


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--source", choices=("offline", "flashrag"), default="offline")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "data")
    args = parser.parse_args(argv)
    for name, n in prepare(args.source, args.out).items():
        print(f"{args.out / name}: {n} rows")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
