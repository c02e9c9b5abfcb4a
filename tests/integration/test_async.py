"""``--async-mode one-step`` end to end on a tiny GPT-2 and the letter env (local Ray, CPU).

Properties checked on what the run wrote, independently of the loop's own metrics where possible:
every sampled token of every trained episode carries the policy version that sampled it; rollout
``s`` (s >= 2) was sampled by the weights synced after training rollout ``s - 2`` (one rollout
behind), so no trained token is more than ``--update-weights-interval`` versions stale; the metrics
count the staleness the dumps imply; ``--max-staleness`` drops exactly the tokens over the bound.
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

import pytest
import ray
import tiny_envs

from agentrl.models import make_tiny_gpt2
from agentrl.rollout.controller import RolloutConfig
from agentrl.run.async_config import AsyncConfig
from agentrl.run.loop import train
from agentrl.run.metrics import read_metrics
from agentrl.run.staleness import token_versions
from agentrl.run.train_config import TrainConfig
from agentrl.trainer.config import AlgorithmConfig, OptimizerConfig
from agentrl.types import load_jsonl

ROLLOUTS = 5


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny_gpt2(tmp_path_factory.mktemp("models") / "tiny-gpt2", seed=3)


@pytest.fixture(scope="module", autouse=True)
def local_ray() -> object:
    ray.cloudpickle.register_pickle_by_value(tiny_envs)
    yield
    ray.shutdown()


def _run(model: Path, log_dir: Path, **asynchronous: Any) -> list[dict[str, Any]]:
    config = TrainConfig(
        env="letter",
        model=str(model),
        rollout_batch_size=4,
        n_samples_per_prompt=4,
        global_batch_size=16,
        num_rollouts=ROLLOUTS,
        rollout=RolloutConfig(max_turns=1, max_new_tokens=8, max_context=128),
        eval_episodes=0,
        dynamic_filter=False,
        progress=False,
        export_hf=False,
        log_dir=str(log_dir),
        seed=0,
        num_cpus=2,
        optimizer=OptimizerConfig(lr=1e-2),
        algorithm=AlgorithmConfig(tis_cap=2.0),
        asynchronous=AsyncConfig(async_mode="one-step", **asynchronous),
    )
    train(config, env_factory=functools.partial(tiny_envs.LetterEnv, num_tasks=8))
    return [r for r in read_metrics(log_dir / "metrics.jsonl") if r.get("async/step_s") is not None]


def test_one_step_tokens_carry_their_version_and_stay_within_the_bound(
    tiny_model: Path, tmp_path: Path
) -> None:
    records = _run(tiny_model, tmp_path)
    assert [r["step"] for r in records] == list(range(1, ROLLOUTS + 1))
    trained = {r["step"]: not r["train/skipped"] for r in records}
    version_after = {0: 0}  # policy version after training rollout s: +1 per trained rollout
    for s in range(1, ROLLOUTS + 1):
        version_after[s] = version_after[s - 1] + int(trained[s])
    for s in range(1, ROLLOUTS + 1):
        episodes = list(load_jsonl(tmp_path / "rollouts" / f"step_{s:06d}.jsonl"))
        sampled_by = version_after[max(0, s - 2)]  # generated while rollout s - 1 trained
        for t in episodes:
            versions = token_versions(t)
            for v, m in zip(versions, t.loss_mask, strict=True):
                assert (v is not None) == (m == 1)  # every sampled token has a version, no other does
            assert {v for v in versions if v is not None} == {sampled_by}, (s, t.turns)
        trainer_version = version_after[s - 1]
        assert records[s - 1]["async/trainer_version"] == trainer_version
        assert records[s - 1]["async/staleness_max"] == trainer_version - sampled_by <= 1
        assert records[s - 1]["async/stale_tokens"] == 0
        # the engine's own counters over the rollout (from its Ray actor): it decoded the episodes'
        # tokens (some come out of prefills instead) and no weight update landed under them
        sampled = sum(sum(t.loss_mask) for t in episodes)
        assert 0 < records[s - 1]["engine/decode_tokens"] <= sampled
        assert records[s - 1]["engine/weight_updates"] == 0
    assert sum(trained.values()) >= 2, "the tiny model trained too rarely to see staleness"
    assert max(r["async/staleness_max"] for r in records) == 1
    for r in records:  # the idle times are parts of the step
        assert 0 <= r["async/trainer_idle_s"] <= r["async/step_s"]
        assert 0 <= r["async/engine_idle_s"] <= r["async/step_s"]
    summary = (tmp_path / "summary.txt").read_text()
    assert "the trainer waited" in summary and "the engine" in summary


def test_max_staleness_drops_the_tokens_over_the_bound(tiny_model: Path, tmp_path: Path) -> None:
    """Weights sync every 2 rollouts: rollouts 3 and 5 were sampled 2 versions back (when the rollouts
    before them trained); a bound of 1 drops their sampled tokens, and only theirs. A rollout left with
    no token to train is skipped (an optimizer step on a zero gradient would still move Adam)."""
    records = _run(tiny_model, tmp_path, update_weights_interval=2, max_staleness=1)
    by_step = {r["step"]: r for r in records}
    for s, r in by_step.items():
        assert r["async/staleness_max"] <= 1  # of the tokens that trained
        episodes = list(load_jsonl(tmp_path / "rollouts" / f"step_{s:06d}.jsonl"))
        sampled = sum(sum(t.loss_mask) for t in episodes if t.trainable)
        age = r["async/trainer_version"] - min(t.weight_version for t in episodes)
        if age > 1:  # every sampled token is over the bound: all dropped, nothing trained
            assert s in (3, 5)
            assert r["async/stale_tokens"] == sampled
            assert r["train/skipped"] == 1
        else:
            assert r["async/stale_tokens"] == 0
    assert any(by_step[s]["async/stale_tokens"] > 0 for s in (3, 5)), records


def test_one_step_on_a_real_sglang_server(tmp_path: Path) -> None:
    """One-step with ``--engine sglang`` (a tiny GPT-2 served on CPU, weights synced from disk): rollout 2
    was generated while rollout 1 trained, so the server still served the initial weights (version 0)
    and its logprobs equal the initial model's; rollout 3 was served by version 1. Skipped without the
    SGLang venv (scripts/setup_sglang.sh)."""
    from test_train_sglang import _sampled_logprobs_under, _sglang_python

    from agentrl.engines.config import EngineConfig
    from agentrl.engines.sglang.launcher import CPU_SERVER_ARGS

    python = _sglang_python()
    model = make_tiny_gpt2(tmp_path / "tiny", seed=4)
    config = TrainConfig(
        env="letter",
        model=str(model),
        inference=EngineConfig(engine="sglang", sglang_python=python, sglang_args=CPU_SERVER_ARGS),
        rollout_batch_size=4,
        n_samples_per_prompt=4,
        global_batch_size=16,
        num_rollouts=3,
        rollout=RolloutConfig(max_turns=1, max_new_tokens=8, max_context=128),
        eval_episodes=0,
        dynamic_filter=False,
        progress=False,
        export_hf=False,
        log_dir=str(tmp_path / "logs"),
        num_cpus=2,
        optimizer=OptimizerConfig(lr=1e-2),
        algorithm=AlgorithmConfig(tis_cap=2.0),
        asynchronous=AsyncConfig(async_mode="one-step"),
    )
    train(config, env_factory=functools.partial(tiny_envs.LetterEnv, num_tasks=8))
    records = {r["step"]: r for r in read_metrics(tmp_path / "logs" / "metrics.jsonl")}
    assert records[1]["train/skipped"] == 0, "rollout 1 must train for rollout 3 to see version 1"
    rollouts = {s: list(load_jsonl(tmp_path / "logs" / "rollouts" / f"step_{s:06d}.jsonl")) for s in (2, 3)}
    assert {t.weight_version for t in rollouts[2]} == {0}
    assert {t.weight_version for t in rollouts[3]} == {1}
    served, initial = _sampled_logprobs_under(model, rollouts[2])
    assert sum(abs(a - b) for a, b in zip(served, initial, strict=True)) / len(served) < 2e-3
    assert records[2]["async/staleness_max"] == 1  # sampled by version 0, trained at version 1
