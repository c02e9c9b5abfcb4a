"""`agentrl train` as a user runs it: a tiny two-rollout run on the Search env, its files, `--resume`,
and a killed trainer actor making the run exit non-zero instead of hanging (docs/reliability.md F24)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from agentrl.models import make_tiny_gpt2
from agentrl.run.metrics import read_metrics


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny_gpt2(tmp_path_factory.mktemp("models") / "tiny-gpt2", seed=2)


def _train(model: Path, tmp: Path, *extra: str) -> list[str]:
    flags = ["--env", "search", "--model", str(model), "--max-turns", "2", "--max-new-tokens", "16"]
    flags += ["--rollout-batch-size", "2", "--n-samples-per-prompt", "2", "--global-batch-size", "4"]
    flags += ["--eval-episodes", "2", "--lr", "1e-4", "--num-cpus", "2", "--no-progress"]
    # The tiny model's rewards are all 0: the dynamic filter would drop every group, and without a loss
    # term of its own (an entropy bonus) every step would be skipped (train/skipped). Keep both off the
    # path, so that this test exercises the optimizer.
    flags += ["--no-dynamic-filter", "--entropy-coef", "0.001"]
    flags += ["--save", str(tmp / "ckpt"), "--save-interval", "1", "--log-dir", str(tmp / "logs")]
    return [sys.executable, "-m", "agentrl", "train", *flags, *extra]


def test_two_rollouts_then_resume_for_a_third(tiny_model: Path, tmp_path: Path) -> None:
    done = subprocess.run(
        _train(tiny_model, tmp_path, "--num-rollouts", "2"), capture_output=True, text=True, timeout=900
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert "== summary ==" in done.stdout and "eval  reward" in done.stdout
    logs = tmp_path / "logs"
    records = read_metrics(logs / "metrics.jsonl")
    assert [r["step"] for r in records] == [0, 1, 2]  # eval before training, two rollouts (+ final eval)
    for key in (
        "rollout/reward",
        "train/loss",
        "train/grad_norm",
        "time/rollout_s",
        "time/train_s",
        "time/sync_s",
        "engine/prefix_hit_rate",
        "engine/busy_frac",
    ):
        assert isinstance(records[1][key], float), key
    assert records[1]["engine/decode_tokens"] > 0  # the engine's counters, read from its Ray actor
    assert records[2]["rollout/episodes"] == 4.0  # 2 prompts x 2 samples
    assert "eval/reward" in records[0] and "eval/reward" in records[2]
    assert list((logs / "tensorboard").glob("events.out.tfevents.*"))
    assert sorted(p.name for p in (logs / "rollouts").iterdir()) == ["step_000001.jsonl", "step_000002.jsonl"]
    assert (logs / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (logs / "hf_model" / "config.json").exists()
    assert (tmp_path / "ckpt" / "latest").read_text().strip() == "step_2"
    config = json.loads((logs / "config.json").read_text())
    assert config["optimizer"]["lr"] == 1e-4 and config["rollout"]["max_turns"] == 2  # the resolved config

    resumed = subprocess.run(
        _train(tiny_model, tmp_path, "--num-rollouts", "3", "--resume"),
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resumed from step 2" in resumed.stderr
    steps = [r["step"] for r in read_metrics(logs / "metrics.jsonl") if "rollout/reward" in r]
    assert steps == [1, 2, 3]
    assert (tmp_path / "ckpt" / "latest").read_text().strip() == "step_3"


def test_time_limit_stops_cleanly_and_resume_finishes(tiny_model: Path, tmp_path: Path) -> None:
    """A 1 s budget: the first rollout always runs (its cost is unknown), the second would overrun, so
    the run checkpoints step 1 (not a --save-interval step), evaluates, exports and says how to go on."""
    limited = ["--num-rollouts", "4", "--save-interval", "5", "--time-limit-s", "1"]
    done = subprocess.run(_train(tiny_model, tmp_path, *limited), capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "stopped by --time-limit-s after rollout 1 of 4; continue with --resume" in done.stdout
    logs = tmp_path / "logs"
    records = read_metrics(logs / "metrics.jsonl")
    assert [r["step"] for r in records if "rollout/reward" in r] == [1]
    assert [r["step"] for r in records if "eval/reward" in r] == [0, 1]
    assert (tmp_path / "ckpt" / "latest").read_text().strip() == "step_1"
    assert (logs / "hf_model" / "config.json").exists()

    rest = ["--num-rollouts", "4", "--save-interval", "5", "--resume"]
    resumed = subprocess.run(_train(tiny_model, tmp_path, *rest), capture_output=True, text=True, timeout=900)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "stopped by" not in resumed.stdout
    steps = [r["step"] for r in read_metrics(logs / "metrics.jsonl") if "rollout/reward" in r]
    assert steps == [1, 2, 3, 4]
    assert (tmp_path / "ckpt" / "latest").read_text().strip() == "step_4"


def test_bad_batch_shape_is_a_clear_error(tiny_model: Path, tmp_path: Path) -> None:
    done = subprocess.run(
        _train(tiny_model, tmp_path, "--global-batch-size", "3"), capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 2
    assert "rollout_batch_size (2) x n_samples_per_prompt (2) = 4" in done.stderr


def test_resume_without_a_checkpoint_is_a_clear_error(tiny_model: Path, tmp_path: Path) -> None:
    (tmp_path / "ckpt").mkdir()  # the folder exists; no checkpoint was ever committed in it
    done = subprocess.run(
        _train(tiny_model, tmp_path, "--resume"), capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 2
    assert f"--resume: no complete checkpoint in {tmp_path / 'ckpt'}" in done.stderr
    assert "drop --resume to start a new run" in done.stderr
    assert not (tmp_path / "logs").exists()  # refused before anything started


def test_a_killed_trainer_actor_ends_the_run_non_zero(tiny_model: Path, tmp_path: Path) -> None:
    proc = subprocess.Popen(
        _train(tiny_model, tmp_path, "--num-rollouts", "1000", "--eval-episodes", "0"),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    actors = tmp_path / "logs" / "actors.json"
    deadline = time.monotonic() + 600
    while not actors.exists() or not (tmp_path / "logs" / "metrics.jsonl").exists():
        assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
        assert time.monotonic() < deadline
        time.sleep(0.2)
    os.kill(json.loads(actors.read_text())["trainer"], signal.SIGKILL)
    _, stderr = proc.communicate(timeout=180)  # must exit, not hang
    assert proc.returncode not in (0, None)
    assert "actor died" in stderr and "--resume" in stderr
