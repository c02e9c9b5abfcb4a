"""The run's failure policy (agentrl/run/failures.py, docs/reliability.md G25): what stops a run, the
message it stops with, the failures counted by component, and what is saved before it stops."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from agentrl.errors import EngineDeadError, RunFailedError
from agentrl.run.failures import FailurePolicy, failure_metrics, failure_summary
from agentrl.run.task_sampler import TaskSampler
from agentrl.types import Status, Trajectory, save_jsonl


def _episode(status: Status, component: str | None = None, error: str = "") -> Trajectory:
    metrics = {"failed_component": component} if component else {}
    return Trajectory(prompt_ids=[1], status=status, error=error, metrics=metrics)


def test_failures_are_counted_by_component_aborted_ones_as_the_engines() -> None:
    rollout = [
        _episode(Status.COMPLETED),
        _episode(Status.TRUNCATED),
        _episode(Status.FAILED, "sandbox"),
        _episode(Status.FAILED, "sandbox"),
        _episode(Status.FAILED, "reward"),
        _episode(Status.FAILED),  # env construction before components were recorded: the env's
        _episode(Status.ABORTED),
    ]
    assert failure_metrics(rollout) == {
        "rollout/failed_engine": 1.0,
        "rollout/failed_env": 1.0,
        "rollout/failed_tool": 0.0,
        "rollout/failed_sandbox": 2.0,
        "rollout/failed_reward": 1.0,
    }
    records = [
        {"step": 1, "rollout/episodes": 7.0, **failure_metrics(rollout)},
        {"step": 2, "eval/reward": 0.0},
    ]
    assert failure_summary(records) == (
        "failed episodes 5 of 7: engine 1, env 1, tool 0, sandbox 2, reward 1"
    )


def _rollout_metrics(episodes: int, **failed: int) -> dict[str, float]:
    return {
        "rollout/episodes": float(episodes),
        **{f"rollout/failed_{c}": float(n) for c, n in failed.items()},
    }


def test_a_rollout_over_the_failed_fraction_stops_the_run_naming_the_component(tmp_path: Path) -> None:
    policy = FailurePolicy(max_failed_fraction=0.5, max_skipped_steps=0, log_dir=tmp_path)
    logged: list[tuple[int, dict[str, float]]] = []
    log = lambda step, metrics: logged.append((step, metrics))  # noqa: E731
    policy.check_rollout(1, _rollout_metrics(8, sandbox=3, engine=1), log)  # exactly half: goes on
    assert policy.checked_step == 1 and logged == []

    dump = tmp_path / "failed_rollouts" / "step_000002.jsonl"
    dump.parent.mkdir()
    save_jsonl([_episode(Status.FAILED, "sandbox", "SandboxError: docker is down")], dump)
    metrics = _rollout_metrics(8, sandbox=4, engine=1)
    with pytest.raises(RunFailedError) as caught:
        policy.check_rollout(2, metrics, log)
    failure = caught.value
    assert failure.component == "sandbox"
    text = str(failure)
    assert "rollout 2: 5 of 8 episodes failed" in text and "--max-failed-fraction 0.5" in text
    assert "agentrl sandbox doctor" in text  # what to check
    assert "SandboxError: docker is down" in text and str(dump) in text
    assert logged == [(2, metrics)]  # the failed rollout's metrics are logged before it stops
    assert policy.checked_step == 1


def test_skipped_steps_in_a_row_stop_the_run_and_a_trained_step_resets_the_count(tmp_path: Path) -> None:
    policy = FailurePolicy(max_failed_fraction=1.0, max_skipped_steps=3, log_dir=tmp_path)
    for step, skipped in enumerate([1.0, 1.0, 0.0, 1.0, 1.0], start=1):
        policy.check_trained(step, {"train/skipped": skipped})
    with pytest.raises(RunFailedError, match=r"rollouts 4\.\.6 trained nothing") as caught:
        policy.check_trained(6, {"train/skipped": 1.0})
    assert caught.value.component == "reward" and "--max-skipped-steps 3" in str(caught.value)
    never = FailurePolicy(max_failed_fraction=1.0, max_skipped_steps=0, log_dir=tmp_path)
    for step in range(1, 100):
        never.check_trained(step, {"train/skipped": 1.0})
    policy.check_trained(7, {})  # --debug-rollout-only: nothing trained, nothing counted


class _FakeRun:
    """What FailurePolicy.stopped touches on a Run: config, sampler, checkpoints, the logger."""

    def __init__(self, tmp_path: Path, *, save_interval: int, start_step: int = 0) -> None:
        self.config = SimpleNamespace(
            save=str(tmp_path / "ckpt"),
            debug_rollout_only=False,
            save_interval=save_interval,
            num_rollouts=50,
        )
        self.log_dir = tmp_path
        self.start_step = start_step
        self.sampler = TaskSampler([f"0:{i}" for i in range(10)], seed=0)
        self.sampler_before_rollout: tuple[int, dict[str, Any]] | None = None
        self.saved: list[tuple[int, dict[str, Any]]] = []
        self.logger = SimpleNamespace(write=lambda text: None)

    def generate(self, step: int) -> list[str]:
        self.sampler_before_rollout = (step, self.sampler.state_dict())
        return self.sampler.sample(2)

    def checkpoint(self, step: int) -> None:
        self.saved.append((step, self.sampler.state_dict()))


def test_a_failed_rollout_checkpoints_the_last_step_with_the_sampler_wound_back(tmp_path: Path) -> None:
    run = _FakeRun(tmp_path, save_interval=10)
    policy = FailurePolicy(max_failed_fraction=0.5, max_skipped_steps=0, log_dir=tmp_path)
    for step in (1, 2, 3):
        run.generate(step)
        policy.check_rollout(step, _rollout_metrics(4), lambda *a: None)
    before_4 = run.sampler.state_dict()
    run.generate(4)  # the engine died during rollout 4
    failure = policy.stopped(run, 3, EngineDeadError("restart budget spent"))
    assert failure.component == "engine" and "restart budget spent" in str(failure)
    assert "after step 3" in str(failure) and "SGLang server logs" in str(failure)
    assert run.saved == [(3, before_4)]  # --resume redoes rollout 4 on the same tasks
    summary = (tmp_path / "summary.txt").read_text()
    assert "run stopped: the inference engine failed for good" in summary


def test_no_checkpoint_when_the_failure_came_mid_step_or_the_step_is_saved(tmp_path: Path) -> None:
    policy = FailurePolicy(max_failed_fraction=0.5, max_skipped_steps=0, log_dir=tmp_path)
    run = _FakeRun(tmp_path, save_interval=10)
    for step in (1, 2):
        run.generate(step)
        policy.check_rollout(step, _rollout_metrics(4), lambda *a: None)
    # rollout 2 passed and was trained on, then its weight sync failed: step 1's state is gone and
    # step 2's is not complete, so nothing is saved (the periodic checkpoints stand).
    policy.stopped(run, 1, EngineDeadError("weight version mismatch"))
    assert run.saved == []
    saved_already = _FakeRun(tmp_path, save_interval=2)
    saved_already.generate(3)
    policy.stopped(saved_already, 2, RunFailedError("env", "too many failed"))
    assert saved_already.saved == []  # step 2 was checkpointed by the loop
    resumed = _FakeRun(tmp_path, save_interval=10, start_step=5)
    resumed.generate(6)
    policy.stopped(resumed, 5, RunFailedError("env", "too many failed"))
    assert resumed.saved == []  # nothing trained since the checkpoint it resumed from
