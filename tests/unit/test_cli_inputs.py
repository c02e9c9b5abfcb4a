"""Bad input to any command: a short message naming the problem, exit status 2, no traceback, and nothing
slow started (no Ray, no model): the checks run first."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from agentrl.cli import main


@pytest.fixture(autouse=True)
def _nothing_slow_starts(monkeypatch: pytest.MonkeyPatch) -> None:
    """Fail loudly if a command got as far as loading a model or starting Ray."""

    def forbidden(*args: object, **kwargs: object) -> None:
        raise AssertionError("a model or Ray was started before the inputs were checked")

    import ray
    import transformers

    monkeypatch.setattr(ray, "init", forbidden)
    monkeypatch.setattr(transformers.AutoTokenizer, "from_pretrained", forbidden)
    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained", forbidden)


def _run(argv: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    rc = main(argv)
    err = capsys.readouterr().err
    assert rc == 2, err
    assert "Traceback" not in err and len(err.strip().splitlines()) <= 3, err
    return err


@pytest.mark.parametrize("command", ["train", "eval", "rollout"])
def test_unknown_env_name_says_did_you_mean(command: str, capsys: pytest.CaptureFixture[str]) -> None:
    extra = ["--suite", "none"] if command == "eval" else []
    err = _run([command, "--env", "serch", *extra], capsys)
    assert f"agentrl {command}:" in err and "serch" in err and "agentrl/Search-v0" in err


@pytest.mark.parametrize("command", ["train", "eval", "rollout"])
def test_unknown_env_kwarg_is_named_with_the_accepted_ones(
    command: str, capsys: pytest.CaptureFixture[str]
) -> None:
    extra = ["--suite", "none"] if command == "eval" else []
    err = _run([command, "--env", "search", "--env-kwargs", '{"hopz": 1}', *extra], capsys)
    assert "'hopz' (did you mean 'hops'?)" in err and "it accepts:" in err and "max_turns" in err


def test_unknown_kwarg_in_a_suite_entry(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    suite = tmp_path / "mine.yaml"
    suite.write_text(
        "name: mine\nversion: 1\nentries:\n  - env: search\n    split: train\n    kwargs: {max_turn: 3}\n"
    )
    err = _run(["train", "--suite", str(suite)], capsys)
    assert "'max_turn' (did you mean 'max_turns'?)" in err


@pytest.mark.parametrize("command", ["train", "eval", "rollout"])
def test_missing_model_folder(command: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    extra = ["--suite", "none"] if command == "eval" else []
    err = _run([command, "--env", "search", "--model", str(tmp_path / "nope"), *extra], capsys)
    assert "nope" in err and "alias" in err


def test_train_replay_file_missing_or_corrupt(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    err = _run(["train", "--debug-train-only", str(tmp_path / "none.jsonl")], capsys)
    assert "none.jsonl: no such file" in err
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt_ids": [1], "status": "completed"}\n{not json\n')
    err = _run(["train", "--debug-train-only", str(bad)], capsys)
    assert f"{bad}:2: not a trajectory record" in err


def test_config_file_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    err = _run(["train", "--config", str(tmp_path / "none.yaml")], capsys)
    assert "none.yaml: no such file" in err
    bad = tmp_path / "c.yaml"
    bad.write_text(json.dumps({"max_turnz": 3}))
    err = _run(["eval", "--config", str(bad)], capsys)
    assert "unknown setting 'max_turnz'" in err


def test_view_missing_and_corrupt_files(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    err = _run(["view", str(tmp_path / "none.jsonl")], capsys)
    assert "none.jsonl: no such file" in err
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt_ids": [1], "status": "completed"}\n[1, 2]\n')
    err = _run(["view", str(bad)], capsys)
    assert f"{bad}:2: not a trajectory record" in err


def test_rollout_unknown_task_id(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    model = tmp_path / "model"  # the model is not loaded before the tasks are checked: a folder will do
    model.mkdir()
    (model / "config.json").write_text("{}")
    err = _run(["rollout", "--env", "search", "--model", str(model), "--tasks", "no-such-task"], capsys)
    assert "--tasks: no task 'no-such-task' in split 'train'" in err


@pytest.mark.parametrize("command", ["train", "eval"])
def test_prompt_data_errors_before_anything_starts(
    command: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = tmp_path / "train.jsonl"
    data.write_text('{"question": "1 + 1?", "answer": "2"}\n{"question": "2 + 2?" "answer": "4"}\n')
    flag = ["--prompt-data", str(data)] if command == "train" else ["--eval-prompt-data", "a", str(data)]
    keys = ["--input-key", "question", "--label-key", "answer"]
    err = _run([command, *flag, *keys], capsys)
    assert f"{data}:2: not valid JSON" in err
    data.write_text('{"question": "1 + 1?", "answer": "2"}\n{"prompt": "2 + 2?", "label": "4"}\n')
    err = _run([command, *flag, *keys], capsys)
    assert f"{data}:2: no key 'question'" in err and "keys are: prompt, label" in err
    err = _run([command, *flag, "--input-key", "prompt", "--label-key", "label", "--reward", "maths"], capsys)
    assert "'maths' is not a built-in reward (exact, f1, math, boxed_math)" in err
    err = _run([command, "--eval-prompt-data", "a", str(data), "b"], capsys)
    assert "NAME PATH pairs, got 3 values" in err


def test_prompt_data_missing_file_and_bad_hook(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    err = _run(["train", "--prompt-data", str(tmp_path / "none.jsonl")], capsys)
    assert f"--prompt-data: prompt file {tmp_path / 'none.jsonl'} does not exist" in err
    data = tmp_path / "t.jsonl"
    data.write_text('{"prompt": "1 + 1?", "label": "2", "metadata": {"rm_type": "no_module:fn"}}\n')
    err = _run(["train", "--prompt-data", str(data)], capsys)
    assert f"{data}:1: metadata.rm_type 'no_module:fn': cannot import 'no_module'" in err
    data.write_text('{"prompt": "1 + 1?", "label": "2"}\n')
    err = _run(["train", "--prompt-data", str(data), "--group-filter", "no_module:keep"], capsys)
    assert "--group-filter 'no_module:keep': cannot import 'no_module'" in err


def test_a_built_in_reward_needs_a_label_key(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = tmp_path / "t.jsonl"
    data.write_text('{"prompt": "1 + 1?"}\n')
    err = _run(["train", "--prompt-data", str(data), "--label-key", "none", "--reward", "math"], capsys)
    assert "--reward math compares answers with a label, but --label-key is none" in err
