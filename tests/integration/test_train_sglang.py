"""End to end with a real SGLang server on CPU: two training rollouts of a tiny GPT-2, weights synced to
the server from disk (``update_weights_from_disk``), and the server's logprobs matching the trainer's
recomputed ones after the sync. Skipped when the SGLang venv (scripts/setup_sglang.sh) is absent."""

from __future__ import annotations

import functools
from pathlib import Path

import pytest
import ray
import tiny_envs

from agentrl.engines.config import EngineConfig
from agentrl.engines.sglang.launcher import CPU_SERVER_ARGS, find_sglang_python
from agentrl.models import make_tiny_gpt2
from agentrl.rollout.controller import RolloutConfig
from agentrl.run.loop import train
from agentrl.run.metrics import read_metrics
from agentrl.run.train_config import TrainConfig
from agentrl.trainer.config import OptimizerConfig
from agentrl.types import load_jsonl


def _sglang_python() -> str:
    try:
        return find_sglang_python()
    except Exception as e:
        pytest.skip(f"SGLang venv not available ({e}); run scripts/setup_sglang.sh")


def test_two_rollouts_with_disk_weight_sync(tmp_path: Path) -> None:
    python = _sglang_python()
    model = make_tiny_gpt2(tmp_path / "tiny", seed=4)
    ray.cloudpickle.register_pickle_by_value(tiny_envs)
    config = TrainConfig(
        env="letter",
        model=str(model),
        inference=EngineConfig(engine="sglang", sglang_python=python, sglang_args=CPU_SERVER_ARGS),
        rollout_batch_size=4,
        n_samples_per_prompt=4,
        global_batch_size=16,
        num_rollouts=2,
        rollout=RolloutConfig(max_turns=1, max_new_tokens=8, max_context=128),
        eval_episodes=0,
        progress=False,
        log_dir=str(tmp_path / "logs"),
        num_cpus=2,
        optimizer=OptimizerConfig(lr=1e-2),
    )
    try:
        train(config, env_factory=functools.partial(tiny_envs.LetterEnv, num_tasks=8))
    finally:
        ray.shutdown()
    records = {r["step"]: r for r in read_metrics(tmp_path / "logs" / "metrics.jsonl")}
    # Rollout 2 was served by the weights trained in rollout 1 (loaded from disk, version 1) ...
    assert {t.weight_version for t in load_jsonl(tmp_path / "logs" / "rollouts" / "step_000002.jsonl")} == {1}
    # ... which moved the policy (lr 1e-2 on a random model), so a stale server would disagree:
    assert records[1]["train/grad_norm"] > 0
    # ... and the server's logprobs equal the trainer's recomputation on the synced weights.
    assert records[2]["train/train_rollout_logprob_abs_diff"] < 2e-3
    assert records[1]["train/train_rollout_logprob_abs_diff"] < 2e-3
