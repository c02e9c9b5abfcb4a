"""The controller and the one rollout driver: failures become data, every episode returns once, env pooling,
the dynamic filter, one owner of the turn limit."""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path
from typing import Any

import pytest
from rollout_harness import ScriptedEngine, ScriptedEnv, ScriptTurn, run_with_driver
from transformers import AutoTokenizer

from agentrl.engines.base import GenerateOutput, SamplingParams
from agentrl.envs.rewards import RewardError
from agentrl.errors import EngineDeadError, EngineError, RetrievalError, SandboxError
from agentrl.models import make_tiny_gpt2
from agentrl.rollout.controller import RolloutConfig, RolloutController
from agentrl.rollout.driver import EnvSpec, RolloutManager, has_signal, keep_informative_groups
from agentrl.rollout.episodes import GenerationSettings
from agentrl.types import Status, Trajectory

SCRIPT = [
    ScriptTurn("look</call>", end="stop", observation=[{"role": "tool", "content": "found"}]),
    ScriptTurn("done", end="eos"),
]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny_gpt2(tmp_path_factory.mktemp("m") / "tiny")


@pytest.fixture(scope="module")
def tok(model_dir: Path) -> Any:
    return AutoTokenizer.from_pretrained(model_dir)


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
    assert traj.metrics["failed_component"] == "sandbox"
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
    assert failed.metrics["failed_component"] == "engine"
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


def test_groups_concurrency_pool_and_exactly_once(tok: Any, model_dir: Path) -> None:
    engine = LoopingEngine(tok, SCRIPT)
    made: list[ScriptedEnv] = []

    def factory(**kwargs: Any) -> ScriptedEnv:
        made.append(ScriptedEnv(SCRIPT, num_tasks=16, **kwargs))
        return made[-1]

    keys = [f"0:t{i}" for i in range(16)]
    groups = run_with_driver(engine, model_dir, factory, keys, 4, RolloutConfig(max_concurrency=4))
    assert len(groups) == 16 and all(len(g) == 4 for g in groups)
    assert [g[0].task_id for g in groups] == [f"t{i}" for i in range(16)]  # key order kept
    assert all(len({t.group_id for t in g}) == 1 for g in groups)
    assert engine.peak <= 4 and len(made) <= 4  # env instances are pooled per concurrent slot
    sessions = {(t.group_id, t.sample_index) for g in groups for t in g}
    assert len(sessions) == 64  # each dispatched episode came back exactly once
    assert all(t.status is Status.COMPLETED for g in groups for t in g)
    assert all(t.metrics["model"] == str(model_dir) for g in groups for t in g)  # for `agentrl view`


def test_failed_env_construction_is_an_episode_failure(tok: Any, model_dir: Path) -> None:
    def factory(**kwargs: Any) -> ScriptedEnv:
        raise SandboxError("docker is down")

    groups = run_with_driver(LoopingEngine(tok, SCRIPT), model_dir, factory, ["0:t0"], 3)
    assert [t.status for t in groups[0]] == [Status.FAILED] * 3
    assert all(t.error == "SandboxError: docker is down" and t.task_id == "t0" for t in groups[0])
    assert all(t.metrics["failed_component"] == "sandbox" for t in groups[0])


def test_an_env_whose_episode_failed_is_closed_not_reused(tok: Any, model_dir: Path) -> None:
    closed: list[int] = []

    class Dying(ScriptedEnv):
        def turn(self, text: str) -> Any:
            raise SandboxError("container died")

        def close(self) -> None:
            closed.append(id(self))

    made: list[ScriptedEnv] = []

    def factory(**kwargs: Any) -> ScriptedEnv:
        made.append(Dying(SCRIPT, **kwargs))
        return made[-1]

    config = RolloutConfig(max_concurrency=1)
    groups = run_with_driver(LoopingEngine(tok, SCRIPT), model_dir, factory, ["0:t0"], 3, config)
    assert [t.status for t in groups[0]] == [Status.FAILED] * 3
    assert len(made) == 3 and sorted(closed) == sorted(id(e) for e in made)  # one fresh env per episode


@pytest.mark.parametrize(
    ("error", "component"),
    [
        (RewardError("reward 'em' raised KeyError"), "reward"),
        (RetrievalError("retriever at http://x unreachable"), "tool"),
        (SandboxError("container died"), "sandbox"),
        (RuntimeError("bad state in the env"), "env"),
    ],
)
def test_env_step_failures_are_counted_by_component(tok: Any, error: Exception, component: str) -> None:
    class Raising(ScriptedEnv):
        def turn(self, text: str) -> Any:
            raise error

    traj = run(RolloutController(LoopingEngine(tok, SCRIPT), tok).run_episode(Raising(SCRIPT)))
    assert traj.status is Status.FAILED and traj.metrics["failed_component"] == component


def test_anything_the_engine_raises_is_the_engines_fault(tok: Any) -> None:
    """A dead engine actor raises Ray's errors, not EngineError: still the engine's, not the env's."""

    class DeadActor(LoopingEngine):
        async def generate(self, *args: Any, **kwargs: Any) -> GenerateOutput:
            raise ConnectionResetError("actor gone")

    class Overlong(LoopingEngine):
        async def generate(self, *args: Any, **kwargs: Any) -> GenerateOutput:
            return GenerateOutput([1] * 10_000, [0.0] * 10_000, "stop")

    for engine, text in ((DeadActor, "ConnectionResetError: actor gone"), (Overlong, "over max_new_tokens")):
        traj = run(RolloutController(engine(tok, SCRIPT), tok).run_episode(ScriptedEnv(SCRIPT)))
        assert traj.status is Status.FAILED and traj.metrics["failed_component"] == "engine"
        assert text in traj.error


def test_a_dead_engine_stops_the_batch_after_every_episode_returned(tok: Any, model_dir: Path) -> None:
    """EngineDeadError (restart budget spent) is not one episode's fault: the driver raises it, once the
    batch is over (nothing left running in its event loop)."""
    calls: list[str] = []

    class Dead(LoopingEngine):
        async def generate(self, input_ids: list[int], sampling: SamplingParams, **kw: Any) -> GenerateOutput:
            calls.append(kw.get("session_id") or "")
            raise EngineDeadError("SGLang server http://x died and the restart budget (2) is spent")

    with pytest.raises(EngineDeadError, match="restart budget") as caught:
        run_with_driver(Dead(tok, SCRIPT), model_dir, lambda **kw: ScriptedEnv(SCRIPT, **kw), ["0:t0"], 4)
    assert not caught.value.args[0].startswith("EngineDeadError")
    assert len(calls) == 4  # every episode ran (and failed) before the driver raised


def _traj(group: str, reward: float, status: Status = Status.COMPLETED) -> Trajectory:
    return Trajectory(prompt_ids=[1], reward=reward, status=status, group_id=group)


def test_dynamic_filter_keeps_the_first_informative_groups() -> None:
    batch = [
        *[_traj("a", 1.0), _traj("a", 1.0)],  # all agree: no signal
        *[_traj("b", 0.0), _traj("b", 1.0)],
        *[_traj("c", 0.5), _traj("c", 0.5, Status.FAILED)],  # one trainable reward only
        *[_traj("d", 1.0), _traj("d", 0.0)],
        *[_traj("e", 0.0), _traj("e", 0.2)],
    ]
    assert [t.group_id for t in keep_informative_groups(batch, 2, True)] == ["b", "b", "d", "d"]
    assert [t.group_id for t in keep_informative_groups(batch, 2, False)] == ["a", "a", "b", "b"]
    assert has_signal(batch[2:4]) and not has_signal(batch[4:6])


def test_turn_limit_has_one_owner_the_user_then_the_suite_then_the_env(tok: Any, model_dir: Path) -> None:
    long_script = [*SCRIPT[:1]] * 5 + SCRIPT[1:]  # answers on turn 6
    suite_entry = EnvSpec("scripted", "train", {"max_turns": 4})
    seen: dict[str, tuple[Status, int]] = {}
    for label, spec, user in [
        ("suite", suite_entry, None),
        ("user below suite", suite_entry, 2),
        ("user above suite", suite_entry, 5),
        ("env default", EnvSpec("scripted", "train"), None),
    ]:
        manager = RolloutManager(
            LoopingEngine(tok, long_script),
            model_dir,
            [spec],
            rollout=RolloutConfig(max_turns=user),
            seed=0,
            env_factory=lambda **kw: ScriptedEnv(long_script, **kw),
        )
        try:
            traj = manager.generate(["0:t0"], GenerationSettings(1, 1.0))[0]
        finally:
            manager.close()
        seen[label] = (traj.status, len(traj.turns))
    truncated = Status.TRUNCATED
    assert seen == {
        "suite": (truncated, 4),
        "user below suite": (truncated, 2),
        "user above suite": (truncated, 5),
        "env default": (Status.COMPLETED, 6),  # ScriptedEnv's own limit is its script's length
    }


def test_rollout_config_validation() -> None:
    with pytest.raises(ValueError, match="concurrency"):
        RolloutConfig(max_concurrency=0)
    with pytest.raises(ValueError, match="top_p"):
        RolloutConfig(top_p=0.0)


def test_trajectories_round_trip_jsonl(tok: Any, tmp_path: Path) -> None:
    from agentrl.types import load_jsonl, save_jsonl

    traj = run(
        RolloutController(LoopingEngine(tok, SCRIPT), tok).run_episode(ScriptedEnv(SCRIPT), task_id="t0")
    )
    save_jsonl([traj], tmp_path / "t.jsonl")
    assert next(load_jsonl(tmp_path / "t.jsonl")) == traj


def test_env_steps_that_block_together_do_not_starve(tok: Any, model_dir: Path) -> None:
    # 24 episodes whose env.step blocks until all 24 are inside step at once (like episodes waiting on
    # each other's sandboxes). asyncio's default thread pool has min(32, cpus + 4) threads, 6 on a
    # 2-core machine, so it would time the barrier out; the controller's own env threads must not.
    n = 24
    barrier = threading.Barrier(n, timeout=20)

    class Waiting(ScriptedEnv):
        def turn(self, text: str) -> Any:
            barrier.wait()
            return super().turn(text)

    keys = [f"0:t{i}" for i in range(n // 4)]
    groups = run_with_driver(
        LoopingEngine(tok, SCRIPT),
        model_dir,
        lambda **kw: Waiting(SCRIPT, num_tasks=n // 4, **kw),
        keys,
        4,
        RolloutConfig(max_concurrency=n),
    )
    statuses = [t.status for g in groups for t in g]
    assert statuses == [Status.COMPLETED] * n, [t.error for g in groups for t in g if t.error][:1]


def test_reward_shuffle_control_permutes_within_each_group_only() -> None:
    from agentrl.run.run import shuffle_rewards_within_groups

    batch = [_traj("a", r) for r in (1.0, 0.0, 0.0, 0.0)] + [_traj("b", r) for r in (0.5, 0.25)]
    shuffled = shuffle_rewards_within_groups(batch, seed=0)
    assert [t.group_id for t in shuffled] == [t.group_id for t in batch]
    assert sorted(t.reward for t in shuffled[:4]) == [0.0, 0.0, 0.0, 1.0]
    assert sorted(t.reward for t in shuffled[4:]) == [0.25, 0.5]
    assert [t.reward for t in batch] == [1.0, 0.0, 0.0, 0.0, 0.5, 0.25]  # the originals are untouched
    assert shuffle_rewards_within_groups(batch, seed=0) == shuffled  # seeded
    moved = {tuple(t.reward for t in shuffle_rewards_within_groups(batch, seed=s)[:4]) for s in range(20)}
    assert len(moved) > 1  # the winner's reward lands on other episodes
