"""Search-R1 parquet QA files: the offline data round-trips, foreign layouts read, bad files say why."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from agentrl.envs.qa_files import read_qa_tasks
from agentrl.envs.search import PROMPT, SearchEnv
from agentrl.errors import ConfigError

ROOT = Path(__file__).resolve().parents[2]


def _prepare_module():
    spec = importlib.util.spec_from_file_location("prepare_data", ROOT / "examples/search_r1/prepare_data.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_offline_round_trip_keeps_every_task(tmp_path: Path) -> None:
    written = _prepare_module().prepare("offline", tmp_path)
    for split in ("train", "test", "heldout"):
        original = SearchEnv(split=split).tasks
        assert written[f"{split}.parquet"] == len(original)
        back = read_qa_tasks(tmp_path / f"{split}.parquet")
        # prepare_data interleaves question types; the same tasks, in another order
        assert sorted((t.id, t.prompt, str(t.answer)) for t in back) == sorted(
            (t.id, t.prompt, str(t.answer)) for t in original
        )
        assert {t.meta["type"] for t in back} == {t.meta["type"] for t in original}


def test_rows_follow_search_r1_layout(tmp_path: Path) -> None:
    _prepare_module().prepare("offline", tmp_path)
    row = pq.read_table(tmp_path / "test.parquet").to_pylist()[0]
    assert row["prompt"] == [{"role": "user", "content": PROMPT.format(question=row["question"])}]
    assert row["ability"] == "fact-reasoning"
    assert row["reward_model"]["style"] == "rule"
    assert row["reward_model"]["ground_truth"]["target"]
    assert row["extra_info"]["split"] == "test" and row["extra_info"]["index"] == 0


def test_env_trains_on_a_task_file(tmp_path: Path) -> None:
    _prepare_module().prepare("offline", tmp_path)
    env = SearchEnv(task_file=str(tmp_path / "heldout.parquet"))
    messages, info = env.reset(seed=3)
    assert info["task_id"] in {t.id for t in read_qa_tasks(tmp_path / "heldout.parquet")}
    assert messages[-1]["content"].startswith("Answer the given question.")


def test_flashrag_style_jsonl_without_question_column(tmp_path: Path) -> None:
    # A Search-R1 row as its own scripts write it: no 'question', no 'id'; the question sits after
    # "Question: " in the prompt and the answers under reward_model.ground_truth.target.
    row = {
        "data_source": "nq",
        "prompt": [{"role": "user", "content": PROMPT.format(question="who wrote hamlet?")}],
        "reward_model": {"style": "rule", "ground_truth": {"target": ["William Shakespeare"]}},
        "extra_info": {"split": "test", "index": 7},
    }
    path = tmp_path / "nq.jsonl"
    path.write_text(json.dumps(row) + "\n")
    (task,) = read_qa_tasks(path)
    assert task.id == "nq-test-7"
    assert task.prompt == "who wrote hamlet?"
    assert task.answer == ["William Shakespeare"]


def test_bad_files_name_the_problem(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        read_qa_tasks(tmp_path / "missing.parquet")
    no_answer = tmp_path / "a.jsonl"
    no_answer.write_text(json.dumps({"question": "q?"}) + "\n")
    with pytest.raises(ConfigError, match=r"a\.jsonl:1: row has no answers"):
        read_qa_tasks(no_answer)
    dup = tmp_path / "d.jsonl"
    dup.write_text(
        "\n".join(json.dumps({"id": "x", "question": "q?", "golden_answers": ["a"]}) for _ in "ab")
    )
    with pytest.raises(ConfigError, match="appears twice"):
        read_qa_tasks(dup)
