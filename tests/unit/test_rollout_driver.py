"""Controller robustness and grouping: failures become data, every episode returns once, dynamic filter."""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path
from typing import Any

import pytest
from rollout_harness import ScriptedEngine, ScriptedEnv, ScriptTurn
from transformers import AutoTokenizer

from agentrl.envs.base import Task
from agentrl.errors import EngineError, SandboxError
from agentrl.models import make_tiny_gpt2
from agentrl.rollout.controller import RolloutConfig, RolloutController
from agentrl.engines.base import GenerateOutput, SamplingParams
from agentrl.rollout.groups import has_signal, run_groups, sample_groups
from agentrl.types import Status

SCRIPT = [
    ScriptTurn("look</call>", end="stop", observation=[{"role": "tool", "content": "found"}]),
    ScriptTurn("done", end="eos"),
]


@pytest.fixture(scope="module")
def tok(tmp_path_factory: pytest.TempPathFactory) -> Any:
    return AutoTokenizer.from_pretrained(make_tiny_gpt2(tmp_path_factory.mktemp("m") / "tiny"))


class LoopingEngine(ScriptedEngine):
    """Replays the script per episode (keyed by session id), counting requests in flight."""

    def __init__(self, tokenizer: Any, script: list[ScriptTurn], fail: str = "") -> None:
        super().__init__(tokenizer, script)
        self.turn: dict[str, int] = {}
        self.in_flight = self.peak = 0
        self.fail = fail

    async def generate(
        self, input_ids: list[int], sampling: SamplingParams, *, session_id: str | None = None
    ) -> GenerateOutput:
        key = session_id or ""
        k = self.turn.get(key, 0)
        self.turn[key] = k + 1
        if self.fail == "raise":
            raise EngineError("server unreachable")
        self.in_flight += 1
        self.peak = max(self.peak, self.in_flight)
        await asyncio.sleep(0.001)
        self.in_flight -= 1
        turn = self.script[k]
        if key.endswith("/1") and k == len(self.script) - 1:  # sample 1 answers differently
            turn = ScriptTurn("nope", end="eos")
        ids = self.turn_ids(turn)
        finish = "abort" if self.fail == "abort" else "stop"
        return GenerateOutput(ids, [-0.5] * len(ids), finish, weight_version=k)


class RewardEnv(ScriptedEnv):
    """Task ``"mixed"`` rewards the answer ``done`` only (samples disagree); other tasks reward anything."""

    def turn(self, text: str) -> Any:
        result = super().turn(text)
        if result.terminated and self.task is not None and self.task.id == "mixed":
            result.reward = 1.0 if text.startswith("done") else 0.0
        return result


def run(coro: Any) -> Any:
    return asyncio.run(coro)


def test_env_and_sandbox_errors_become_failed(tok: Any) -> None:
    class Broken(ScriptedEnv):
        def turn(self, text: str) -> Any:
            raise SandboxError("container died")

    controller = RolloutController(LoopingEngine(tok, SCRIPT), tok)
    traj = run(controller.run_episode(Broken(SCRIPT), task_id="t0", group_id="g"))
    assert traj.status is Status.FAILED and traj.error == "SandboxError: container died"
    assert not traj.trainable
    traj.check()
    assert len(traj.turns) == 1 and sum(traj.loss_mask) == traj.turns[0]["n_sampled"] == len(
        traj.response_ids
    )


def test_engine_error_and_abort(tok: Any) -> None:
    failed = run(
        RolloutController(LoopingEngine(tok, SCRIPT, fail="raise"), tok).run_episode(ScriptedEnv(SCRIPT))
    )
    assert failed.status is Status.FAILED and "EngineError: server unreachable" in failed.error
    env = ScriptedEnv(SCRIPT)
    aborted = run(RolloutController(LoopingEngine(tok, SCRIPT, fail="abort"), tok).run_episode(env))
    assert aborted.status is Status.ABORTED and env.received == []  # an aborted turn is not stepped
    aborted.check()


def test_completed_episode_metrics(tok: Any) -> None:
    engine = LoopingEngine(tok, SCRIPT)
    traj = run(
        RolloutController(engine, tok).run_episode(
            ScriptedEnv(SCRIPT), task_id="t0", group_id="g", env_id="e"
        )
    )
    assert traj.status is Status.COMPLETED and traj.reward == 1.0
    assert traj.metrics["num_turns"] == 2 and traj.metrics["tool_calls"] == 1
    assert traj.metrics["sampled_tokens"] == sum(traj.loss_mask)
    assert traj.metrics["sampled_tokens"] + traj.metrics["observation_tokens"] == len(traj.response_ids)
    assert traj.weight_version == 0 and [t["weight_version"] for t in traj.turns] == [0, 1]
    assert [t["finish_reason"] for t in traj.turns] == ["stop", "stop"]


def test_turn_limit_truncates(tok: Any) -> None:
    env = ScriptedEnv([*SCRIPT[:1], *SCRIPT], max_turns=1)
    traj = run(RolloutController(LoopingEngine(tok, [*SCRIPT[:1], *SCRIPT]), tok).run_episode(env))
    assert traj.status is Status.TRUNCATED and len(traj.turns) == 1 and traj.trainable


def test_groups_concurrency_pool_and_exactly_once(tok: Any) -> None:
    engine = LoopingEngine(tok, SCRIPT)
    made: list[ScriptedEnv] = []

    def factory() -> ScriptedEnv:
        made.append(ScriptedEnv(SCRIPT))
        return made[-1]

    controller = RolloutController(engine, tok, RolloutConfig(concurrency=4))
    finished: list[int] = []
    groups = run(
        run_groups(
            controller,
            factory,
            ["t0"] * 16,
            n_samples=4,
            env_id="s",
            on_group=lambda g: finished.append(len(g)),
        )
    )
    assert len(groups) == 16 and all(len(g) == 4 for g in groups)
    assert finished == [4] * 16  # the progress callback saw every group once, when it was whole
    assert engine.peak <= 4 and len(made) <= 4  # env instances are pooled per concurrent slot
    sessions = {(t.group_id, t.sample_index) for g in groups for t in g}
    assert len(sessions) == 64  # each dispatched episode came back exactly once
    assert all(t.status is Status.COMPLETED for g in groups for t in g)


def test_failed_env_construction_is_an_episode_failure(tok: Any) -> None:
    def factory() -> ScriptedEnv:
        raise SandboxError("docker is down")

    controller = RolloutController(LoopingEngine(tok, SCRIPT), tok)
    groups = run(run_groups(controller, factory, ["t0"], n_samples=3))
    assert [t.status for t in groups[0]] == [Status.FAILED] * 3
    assert all("docker is down" in t.error for t in groups[0])


def test_dynamic_filter_oversamples_and_keeps_everything(tok: Any) -> None:
    tasks = [Task(id=i, prompt="q", answer="a") for i in ("same", "mixed")]

    def factory() -> RewardEnv:
        env = RewardEnv(SCRIPT)
        env.tasks = tasks
        env._index = {t.id: k for k, t in enumerate(tasks)}
        return env

    controller = RolloutController(LoopingEngine(tok, SCRIPT), tok, RolloutConfig(concurrency=8))
    order = ["same", "same", "mixed", "same", "mixed", "mixed", "mixed"]
    batch = run(sample_groups(controller, factory, order, n_samples=2, num_groups=2, max_in_flight=2))
    assert len(batch.groups) == 2 and all(has_signal(g) for g in batch.groups)
    assert all(not has_signal(g) for g in batch.filtered)
    assert {t.task_id for g in batch.filtered for t in g} == {"same"}
    # Dispatch stopped once two informative groups were in: nothing was lost or dispatched past need.
    assert batch.num_dispatched == 2 * (len(batch.groups) + len(batch.surplus) + len(batch.filtered))
    assert batch.num_dispatched < 2 * len(order)


def test_rollout_config_validation() -> None:
    with pytest.raises(ValueError, match="concurrency"):
        RolloutConfig(concurrency=0)
    with pytest.raises(ValueError, match="top_p"):
        RolloutConfig(top_p=0.0)


def test_trajectories_round_trip_jsonl(tok: Any, tmp_path: Path) -> None:
    from agentrl.types import load_jsonl, save_jsonl

    traj = run(
        RolloutController(LoopingEngine(tok, SCRIPT), tok).run_episode(ScriptedEnv(SCRIPT), task_id="t0")
    )
    save_jsonl([traj], tmp_path / "t.jsonl")
    assert next(load_jsonl(tmp_path / "t.jsonl")) == traj


def test_env_steps_that_block_together_do_not_starve(tok: Any) -> None:
    # 24 episodes whose env.step blocks until all 24 are inside step at once (like episodes waiting on
    # each other's sandboxes). asyncio's default thread pool has min(32, cpus + 4) threads, 6 on a
    # 2-core machine, so it would time the barrier out; the controller's own env threads must not.
    n = 24
    barrier = threading.Barrier(n, timeout=20)

    class Waiting(ScriptedEnv):
        def turn(self, text: str) -> Any:
            barrier.wait()
            return super().turn(text)

    controller = RolloutController(LoopingEngine(tok, SCRIPT), tok, RolloutConfig(concurrency=n))
    groups = run(run_groups(controller, lambda: Waiting(SCRIPT), ["t0"] * (n // 4), n_samples=4))
    statuses = [t.status for g in groups for t in g]
    assert statuses == [Status.COMPLETED] * n, [t.error for g in groups for t in g if t.error][:1]
