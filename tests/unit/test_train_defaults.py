"""The laptop defaults of `agentrl train`: the per-env preset, skipped dead steps, and what is reported."""

from __future__ import annotations

from pathlib import Path

import pytest

from agentrl.envs.presets import LAPTOP_ENV_KWARGS
from agentrl.envs.registry import make
from agentrl.envs.search import SearchEnv
from agentrl.run.actors import Actors
from agentrl.run.metrics import rollout_metrics, summarize
from agentrl.run.run import Run
from agentrl.run.train_config import TrainConfig
from agentrl.trainer.config import AlgorithmConfig
from agentrl.types import Status, Trajectory

SEARCH_PRESET = {"hops": 1, "structure_format_score": 0.2, "final_format_score": 0.1, "retrieval_score": 0.1}


def test_search_preset_applies_only_when_no_env_kwargs_are_given() -> None:
    assert TrainConfig().env_kwargs == SEARCH_PRESET
    assert TrainConfig(env="agentrl/Search-v0").env_kwargs == SEARCH_PRESET
    assert TrainConfig(env_kwargs={}).env_kwargs == {}  # '{}' on the CLI: plain Search-v0
    assert TrainConfig(env_kwargs={"hops": 2}).env_kwargs == {"hops": 2}  # never merged
    assert TrainConfig(suite="search-train").env_kwargs == {}  # suites carry their own kwargs
    assert TrainConfig(env="python-tool").env_kwargs == {}  # no preset for that env
    assert TrainConfig(env="no-such-env").env_kwargs == {}  # fails later, where the env is made
    config = TrainConfig()
    config.env_kwargs["hops"] = 2  # type: ignore[index]
    assert LAPTOP_ENV_KWARGS["agentrl/Search-v0"] == SEARCH_PRESET  # the config holds a copy


def test_search_preset_builds_a_single_hop_shaped_env() -> None:
    env = make("search", split="test", **(TrainConfig().env_kwargs or {})).unwrapped
    assert isinstance(env, SearchEnv)
    assert {t.meta["hops"] for t in env.tasks} == {1}
    env.reset(options={"task_id": "capital_of-jordan"})
    # a wrong answer in a well-formed episode: Search-R1's structure_format_score
    assert env.step("<think> hm </think><answer> Cairo </answer>")[1] == pytest.approx(0.2)


def _traj(
    group: str, reward: float, status: Status = Status.COMPLETED, turns: list | None = None
) -> Trajectory:
    return Trajectory(
        prompt_ids=[1, 2],
        response_ids=[5, 6],
        loss_mask=[1, 1],
        rollout_logprobs=[-0.5, -0.5],
        reward=reward,
        status=status,
        group_id=group,
        turns=turns or [],
    )


def _run(**algorithm: float) -> Run:
    config = TrainConfig(algorithm=AlgorithmConfig(**algorithm))  # type: ignore[arg-type]
    # no trainer actor: a skipped step must not reach it (calling it would fail on None)
    return Run(config, Path("."), Actors(trainer=None, rollout=None), None, [], logger=None)  # type: ignore[arg-type]


def test_a_rollout_without_advantage_skips_the_step_without_calling_the_trainer() -> None:
    run = _run()
    dead = [_traj("a", 0.1), _traj("a", 0.1), _traj("b", 0.0), _traj("b", 0.0)]
    assert run.can_learn_from(dead) is False
    assert run.train(dead) == {"train/skipped": 1.0, "train/optimizer_steps": 0.0, "train/frac_zero_adv": 1.0}
    # a FAILED episode is kept out of the advantages, so its different reward does not count
    assert run.can_learn_from([_traj("a", 0.0), _traj("a", 0.0), _traj("a", 1.0, Status.FAILED)]) is False
    assert run.can_learn_from([]) is False
    # one group whose rewards differ is enough
    assert run.can_learn_from([*dead, _traj("c", 0.1), _traj("c", 0.0)]) is True


def test_kl_or_entropy_terms_have_gradients_of_their_own_so_the_step_runs() -> None:
    dead = [_traj("a", 0.0), _traj("a", 0.0)]
    assert _run(kl_coef=0.001).can_learn_from(dead) is True
    assert _run(entropy_coef=0.01).can_learn_from(dead) is True
    assert _run(kl_coef=0.001).can_learn_from([]) is False  # nothing left to train on: still skipped


def test_rollout_metrics_report_answered_and_well_formed_rates() -> None:
    answered_valid = [{"info": {"valid_format": False}}, {"info": {"valid_format": True}}]
    answered_invalid = [{"info": {"valid_format": False}}]
    truncated = [{"info": {"valid_format": False}}] * 5
    trajs = [
        _traj("a", 1.0, turns=answered_valid),
        _traj("a", 0.1, turns=answered_invalid),
        _traj("a", 0.0, Status.TRUNCATED, turns=truncated),
        _traj("a", 0.0, Status.TRUNCATED, turns=truncated),
    ]
    m = rollout_metrics(trajs)
    assert m["rollout/completed"] == 0.5  # 2 of 4 ended by the env (an answer)
    assert m["rollout/valid_format"] == 0.25  # the last turn's judgement: 1 of 4
    assert m["rollout/turns"] == (2 + 1 + 5 + 5) / 4
    bare = rollout_metrics([_traj("a", 0.0)])  # an env that never reports a format
    assert bare["rollout/completed"] == 1.0 and bare["rollout/valid_format"] != bare["rollout/valid_format"]


def test_summary_lists_format_and_tool_metrics_for_train_and_eval() -> None:
    records = [
        {"step": 0, "eval/reward": 0.0, "eval/completed": 0.0625, "eval/tool_calls": 0.0},
        *({"step": s, "rollout/reward": 0.01 * s, "rollout/completed": 0.1 * s} for s in range(1, 7)),
        {"step": 6, "eval/reward": 0.05, "eval/completed": 0.5, "eval/tool_calls": 0.25},
    ]
    text = summarize(records)
    # completed, first 3 rollouts mean(0.1, 0.2, 0.3) = 0.2 -> last 3 mean(0.4, 0.5, 0.6) = 0.5
    assert "train completed" in text and "0.200" in text and "+0.300" in text
    assert "eval  completed" in text and "+0.438" in text  # 0.5 - 0.0625 = 0.4375
    assert "eval  tool_calls" in text and "+0.250" in text
