"""Training, `agentrl eval` and `agentrl rollout` drive episodes through the one rollout driver: an env whose
constructor raises gives FAILED episodes with the error, never a crashed batch, in all three; and every
file they write opens in `agentrl view` as text, without a --model flag."""

from __future__ import annotations

import functools
import html
import json
from pathlib import Path
from typing import Any

import pytest
import ray
import tiny_envs
from transformers import AutoTokenizer

from agentrl import envs
from agentrl.cli import main
from agentrl.models import make_tiny_gpt2
from agentrl.rollout.controller import RolloutConfig
from agentrl.run.loop import train
from agentrl.run.metrics import read_metrics
from agentrl.run.train_config import TrainConfig
from agentrl.types import Status, load_jsonl

FAILING_ID = "tests/FailingLetter-v0"


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny_gpt2(tmp_path_factory.mktemp("models") / "tiny-gpt2", seed=5)


@pytest.fixture
def failing_env() -> Any:
    tiny_envs.FailingAfterTwoEnv.built = 0
    if FAILING_ID not in envs.registry.gym.registry:
        envs.register(FAILING_ID, entry_point=tiny_envs.FailingAfterTwoEnv)
    return tiny_envs.FailingAfterTwoEnv


def _failed(trajectories: list[Any]) -> list[Any]:
    return [t for t in trajectories if t.status is Status.FAILED]


def _shows_text(path: Path, tmp_path: Path, model: Path) -> None:
    page = tmp_path / (path.stem + ".html")
    assert main(["view", str(path), "-o", str(page)]) == 0  # no --model: the dump names it
    first = next(t for t in load_jsonl(path) if t.prompt_ids)
    tokenizer = AutoTokenizer.from_pretrained(model)
    shown = page.read_text(encoding="utf-8")
    # one span per token: the decoded tokens are there, and not only their ids
    token = first.prompt_ids[0]
    assert html.escape(tokenizer.decode([token])) in shown
    assert f">[{token}]<" not in shown  # what the page shows without a tokenizer


def test_rollout_command(failing_env: Any, tiny_model: Path, tmp_path: Path) -> None:
    out = tmp_path / "r.jsonl"
    rc = main(["rollout", "--env", FAILING_ID, "--model", str(tiny_model), "--n-samples-per-prompt", "3",
               "--num-tasks", "2", "--max-new-tokens", "8", "--out", str(out), "--engine-device", "cpu",
               "--max-concurrency", "2", "--no-progress"])  # fmt: skip
    assert rc == 0
    trajectories = list(load_jsonl(out))
    assert len(trajectories) == 6
    failed = _failed(trajectories)
    assert failed and all(t.error == "RuntimeError: sandbox pool exhausted" for t in failed)
    assert len(failed) < 6  # the env built to list the tasks was reused: some episodes ran
    _shows_text(out, tmp_path, tiny_model)


def test_eval_command(failing_env: Any, tiny_model: Path, tmp_path: Path) -> None:
    out = tmp_path / "eval"
    rc = main(["eval", "--suite", "none", "--env", FAILING_ID, "--split", "test", "--episodes", "3",
               "--model", str(tiny_model), "--max-new-tokens", "8", "--out", str(out), "--no-progress",
               "--max-concurrency", "3", "--engine-device", "cpu"])  # fmt: skip
    assert rc == 0
    trajectories = list(load_jsonl(out / "episodes.jsonl"))
    assert len(trajectories) == 3 and _failed(trajectories)
    report = json.loads((out / "report.json").read_text())
    assert report["envs"][0]["status"]["failed"] == len(_failed(trajectories))
    _shows_text(out / "episodes.jsonl", tmp_path, tiny_model)


def test_training(tiny_model: Path, tmp_path: Path) -> None:
    ray.cloudpickle.register_pickle_by_value(tiny_envs)
    tiny_envs.FailingAfterTwoEnv.built = 0  # pickled by value: the actors start from this count
    log_dir = tmp_path / "logs"
    config = TrainConfig(
        env="letter",
        model=str(tiny_model),
        rollout_batch_size=2,
        n_samples_per_prompt=2,
        global_batch_size=4,
        num_rollouts=2,
        dynamic_filter=False,
        max_failed_fraction=1.0,  # 3 of 4 episodes fail here: the failure policy would stop the run
        rollout=RolloutConfig(max_turns=1, max_new_tokens=8, max_context=128, max_concurrency=2),
        eval_episodes=2,
        progress=False,
        log_dir=str(log_dir),
        num_cpus=2,
    )
    train(config, env_factory=functools.partial(tiny_envs.FailingAfterTwoEnv, num_tasks=4))
    records = [r for r in read_metrics(log_dir / "metrics.jsonl") if "rollout/episodes" in r]
    assert [r["step"] for r in records] == [1, 2]
    assert all(r["rollout/status_failed"] >= 1 for r in records)
    dumped = list(load_jsonl(log_dir / "rollouts" / "step_000001.jsonl"))
    assert any(t.error == "RuntimeError: sandbox pool exhausted" for t in dumped)
    _shows_text(log_dir / "rollouts" / "step_000001.jsonl", tmp_path, tiny_model)
    _shows_text(log_dir / "eval_rollouts" / "step_000000.jsonl", tmp_path, tiny_model)
