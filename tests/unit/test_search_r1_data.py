"""Search-R1 example data: a ``{split}`` in the Search env's ``task_file`` picks the file of the env's
split (one ``--env-kwargs`` serves ``--split train`` and ``--eval-split heldout``), and prepare_data.py
interleaves question types (a run evaluates the first N tasks; they must cover every type)."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path
from types import ModuleType

import pytest

from agentrl.envs.base import Task
from agentrl.envs.search import SearchEnv
from agentrl.errors import ConfigError
from agentrl.tools.retrieval.base import Doc, Retriever


class NoRetriever(Retriever):
    """These tests never search."""

    def search(self, queries: list[str], topk: int = 3) -> list[list[Doc]]:
        raise AssertionError("no search expected")


def _write(path: Path, questions: dict[str, str]) -> None:
    rows = [{"id": i, "question": q, "golden_answers": [i]} for i, q in questions.items()]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    _write(tmp_path / "train.jsonl", {"t1": "Capital of France", "t2": "Capital of Peru"})
    _write(tmp_path / "heldout.jsonl", {"h1": "Demonym of Japan"})
    return tmp_path


@pytest.mark.parametrize(("split", "ids"), [("train", ["t1", "t2"]), ("heldout", ["h1"])])
def test_split_placeholder_selects_the_split_file(data_dir: Path, split: str, ids: list[str]) -> None:
    env = SearchEnv(split=split, task_file=str(data_dir / "{split}.jsonl"), retriever=NoRetriever())
    assert [t.id for t in env.tasks] == ids
    messages, _ = env.reset(seed=0, options={"task_id": ids[0]})
    assert env.task is not None
    assert messages[0]["content"].endswith(f"Question: {env.task.prompt}?\n")


def test_task_file_without_placeholder_is_used_for_every_split(data_dir: Path) -> None:
    env = SearchEnv(split="heldout", task_file=data_dir / "train.jsonl", retriever=NoRetriever())
    assert [t.id for t in env.tasks] == ["t1", "t2"]


def test_missing_split_file_names_the_formatted_path(data_dir: Path) -> None:
    with pytest.raises(ConfigError, match=r"test\.jsonl does not exist"):
        SearchEnv(split="test", task_file=str(data_dir / "{split}.jsonl"), retriever=NoRetriever())


def _prepare_module() -> ModuleType:
    path = Path(__file__).parents[2] / "examples" / "search_r1" / "prepare_data.py"
    spec = importlib.util.spec_from_file_location("prepare_data", path)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_interleave_by_type_round_robins_over_types() -> None:
    tasks = [Task(id=f"{kind}{i}", prompt="q", answer="a", meta={"type": kind}) for kind, n in
             (("a", 3), ("b", 1), ("c", 2)) for i in range(n)]  # fmt: skip
    order = [t.id for t in _prepare_module().interleave_by_type(tasks)]
    assert order == ["a0", "b0", "c0", "a1", "c1", "a2"]


def test_prepared_heldout_prefix_covers_every_type(tmp_path: Path) -> None:
    _prepare_module().prepare("offline", tmp_path)
    env = SearchEnv(split="heldout", task_file=str(tmp_path / "{split}.parquet"), retriever=NoRetriever())
    types = {str(t.meta.get("type")) for t in SearchEnv(split="heldout", retriever=NoRetriever()).tasks}
    assert len(types) == 5
    first = [str(t.meta.get("type")) for t in env.tasks[: 4 * len(types)]]
    assert {kind: first.count(kind) for kind in types} == dict.fromkeys(types, 4)


def test_heldout_suite_evaluates_ten_tasks_of_each_heldout_type(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from agentrl.envs.suites import load_suite

    suite = load_suite(str(Path(__file__).parents[2] / "examples" / "search_r1" / "heldout_suite.yaml"))
    (entry,) = suite.entries
    assert (entry.split, entry.episodes) == ("heldout", 50)
    monkeypatch.chdir(tmp_path)  # the suite's task_file is relative to the working directory
    _prepare_module().prepare("offline", tmp_path / "examples" / "search_r1" / "data")
    env = SearchEnv(split=entry.split, retriever=NoRetriever(), **entry.kwargs)
    first = [str(t.meta.get("type")) for t in env.tasks[: entry.episodes]]
    assert sorted(set(first)) == ["calling_code_by_place", "demonym_by_capital", "demonym_of",
                                  "element_symbol_prev", "person_kind"]  # fmt: skip
    assert all(first.count(kind) == 10 for kind in set(first))
