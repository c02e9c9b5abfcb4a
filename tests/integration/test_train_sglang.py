"""End to end with a real SGLang server on CPU: training rollouts of a tiny GPT-2, weights synced to the
server from disk (``update_weights_from_disk``), the server's logprobs matching the trainer's recomputed
ones after the sync (and far from the initial weights' , so a stale server would fail), a resumed run
whose server serves the checkpoint's weights, and ``agentrl train`` ending non-zero with a message naming
the engine when its only server dies for good. Skipped when the SGLang venv (scripts/setup_sglang.sh) is
absent."""

from __future__ import annotations

import functools
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import ray
import tiny_envs
import torch
from test_resume import DRIVER, _env
from transformers import AutoModelForCausalLM

from agentrl.engines.config import EngineConfig
from agentrl.engines.sglang.launcher import CPU_SERVER_ARGS, find_sglang_python
from agentrl.models import make_tiny_gpt2
from agentrl.rollout.controller import RolloutConfig
from agentrl.run.loop import train
from agentrl.run.metrics import read_metrics
from agentrl.run.train_config import TrainConfig
from agentrl.trainer.config import OptimizerConfig
from agentrl.types import Trajectory, load_jsonl


def _sglang_python() -> str:
    try:
        return find_sglang_python()
    except Exception as e:
        pytest.skip(f"SGLang venv not available ({e}); run scripts/setup_sglang.sh")


def _config(model: Path, python: str, tmp_path: Path, **overrides: object) -> TrainConfig:
    settings: dict[str, object] = dict(
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
        save=str(tmp_path / "ckpt"),
        num_cpus=2,
        optimizer=OptimizerConfig(lr=1e-2),
    )
    return TrainConfig(**{**settings, **overrides})  # type: ignore[arg-type]


def _sampled_logprobs_under(model: Path, trajectories: list[Trajectory]) -> tuple[list[float], list[float]]:
    """(served, recomputed): every sampled token's rollout logprob, and its logprob under ``model``
    computed by transformers."""
    net = AutoModelForCausalLM.from_pretrained(model, dtype=torch.float32).eval()
    served, recomputed = [], []
    for t in trajectories:
        ids = torch.tensor([t.prompt_ids + t.response_ids])  # (1, T)
        with torch.no_grad():
            logprobs = torch.log_softmax(net(ids).logits[0].double(), dim=-1)  # (T, V)
        for i, (token, mask) in enumerate(zip(t.response_ids, t.loss_mask, strict=True)):
            if mask:
                served.append(t.rollout_logprobs[i])
                recomputed.append(logprobs[len(t.prompt_ids) + i - 1, token].item())
    return served, recomputed


def test_disk_weight_sync_then_resume(tmp_path: Path) -> None:
    python = _sglang_python()
    model = make_tiny_gpt2(tmp_path / "tiny", seed=4)
    ray.cloudpickle.register_pickle_by_value(tiny_envs)
    env_factory = functools.partial(tiny_envs.LetterEnv, num_tasks=8)
    resumed_logs = tmp_path / "resumed"
    try:
        train(_config(model, python, tmp_path), env_factory=env_factory)
        ray.shutdown()
        resume = _config(model, python, tmp_path, num_rollouts=3, resume=True, log_dir=str(resumed_logs))
        train(resume, env_factory=env_factory)
    finally:
        ray.shutdown()
    records = {r["step"]: r for r in read_metrics(tmp_path / "logs" / "metrics.jsonl")}
    step2 = list(load_jsonl(tmp_path / "logs" / "rollouts" / "step_000002.jsonl"))
    # Rollout 2 was served by the weights trained in rollout 1 (loaded from disk, version 1) ...
    assert {t.weight_version for t in step2} == {1}
    # ... and the server's logprobs equal the trainer's recomputation on the synced weights ...
    assert records[1]["train/train_rollout_logprob_abs_diff"] < 2e-3
    assert records[2]["train/train_rollout_logprob_abs_diff"] < 2e-3
    # ... which a stale server (still on the initial weights) would not have matched: the initial
    # weights give these tokens logprobs far outside that tolerance.
    served, initial = _sampled_logprobs_under(model, step2)
    assert sum(abs(a - b) for a, b in zip(served, initial, strict=True)) / len(served) > 2e-2
    # The resumed run (--engine sglang) loads step 2's checkpoint and syncs it to a fresh server before
    # its first rollout: rollout 3 carries version 2 and the trainer agrees with the server again.
    resumed = {r["step"]: r for r in read_metrics(resumed_logs / "metrics.jsonl")}
    assert sorted(s for s in resumed if "rollout/reward" in resumed[s]) == [3]
    step3 = list(load_jsonl(resumed_logs / "rollouts" / "step_000003.jsonl"))
    assert {t.weight_version for t in step3} == {2}
    assert resumed[3]["train/train_rollout_logprob_abs_diff"] < 2e-3


def test_only_engine_dying_for_good_ends_agentrl_train_non_zero(tmp_path: Path) -> None:
    """The SGLang server is SIGKILLed after the first rollout and cannot come back (its interpreter is
    gone, as with a broken venv or a lost GPU): `agentrl train` must exit 1 within bounded time, naming
    the engine and what to check, never finish as if it had trained."""
    python = _sglang_python()
    model = make_tiny_gpt2(tmp_path / "tiny", seed=4)
    launched = tmp_path / "launched.pid"
    wrapper = tmp_path / "sglang-python"
    wrapper.write_text(
        "#!/bin/bash\n"
        f"if [ -e {launched} ]; then echo 'test: the SGLang interpreter is gone' >&2; exit 1; fi\n"
        f"echo $$ > {launched}\n"
        f'exec {python} "$@"\n'
    )
    wrapper.chmod(0o755)
    cpu_args = [a.replace("--", "--sglang-", 1) if a.startswith("--") else a for a in CPU_SERVER_ARGS]
    flags = ["--env", "letter", "--model", str(model), "--engine", "sglang", "--sglang-python", str(wrapper)]
    flags += ["--rollout-batch-size", "2", "--n-samples-per-prompt", "4", "--global-batch-size", "8"]
    flags += ["--num-rollouts", "200", "--max-turns", "1", "--max-new-tokens", "8", "--max-context", "128"]
    flags += ["--eval-episodes", "0", "--no-progress", "--num-cpus", "2", "--log-dir", str(tmp_path / "logs")]
    flags += ["--save", str(tmp_path / "ckpt"), "--save-interval", "1000", *cpu_args]
    with open(tmp_path / "stdout", "w") as out, open(tmp_path / "stderr", "w") as err:
        proc = subprocess.Popen(
            [sys.executable, "-c", DRIVER, *flags], env=_env(), stdout=out, stderr=err, start_new_session=True
        )
        try:
            metrics = tmp_path / "logs" / "metrics.jsonl"
            deadline = time.monotonic() + 600
            while not (metrics.exists() and metrics.read_text().strip()):
                assert proc.poll() is None, (tmp_path / "stderr").read_text()[-3000:]
                assert time.monotonic() < deadline, "no rollout within 10 minutes"
                time.sleep(0.5)
            os.killpg(int(launched.read_text()), signal.SIGKILL)  # the server, for good
            killed = time.monotonic()
            proc.wait(timeout=300)
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
    stderr = (tmp_path / "stderr").read_text()
    assert proc.returncode == 1, stderr[-3000:]
    assert time.monotonic() - killed < 240
    assert "agentrl train: the inference engine failed for good" in stderr
    assert "restarting SGLang server" in stderr and "the SGLang interpreter is gone" in stderr
    assert "SGLang server logs" in stderr  # what to check
    assert (
        "run stopped: the inference engine failed for good" in (tmp_path / "logs" / "summary.txt").read_text()
    )
    assert not (tmp_path / "logs" / "hf_model").exists()  # no export: nothing looks finished
    trained = [r["step"] for r in read_metrics(metrics) if "rollout/reward" in r]
    assert (tmp_path / "ckpt" / "latest").read_text().strip() == f"step_{max(trained)}"  # saved what is safe
