"""Exact resume with the PPO critic (docs/reliability.md E23, issue 16): 4 rollouts straight == 2
rollouts, SIGKILL, resume, 2 more, with ``--advantage-estimator ppo`` and a critic warm-up step.

The same two legs as test_resume.py (the real CLI, a tiny GPT-2, the letter env, two optimizer steps
per rollout so the value clip's anchors are a step old), and compared: rollouts 3 and 4, every
parameter of the final policy and of the exported critic (trunk and value head), to 1e-6.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from test_resume import _command, _env, _latest_step, _rollout

from agentrl.models import make_tiny_gpt2

PPO = ("--advantage-estimator", "ppo", "--critic-lr", "1e-2", "--critic-warmup-steps", "1")


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny_gpt2(tmp_path_factory.mktemp("models") / "tiny-gpt2", seed=1)


def _weights(folder: Path) -> dict[str, torch.Tensor]:
    return {f"{f.name}:{k}": v for f in sorted(folder.glob("*.safetensors")) for k, v in load_file(f).items()}


def test_kill_and_resume_with_the_critic_equals_an_uninterrupted_run(
    tiny_model: Path, tmp_path: Path
) -> None:
    straight = tmp_path / "straight"
    subprocess.run(
        _command(tiny_model, straight / "ckpt", straight / "logs", *PPO), env=_env(), check=True, timeout=900
    )

    killed = tmp_path / "killed"
    proc = subprocess.Popen(
        _command(tiny_model, killed / "ckpt", killed / "logs", *PPO), env=_env(), start_new_session=True
    )
    deadline = time.monotonic() + 600
    while _latest_step(killed / "ckpt") != 2:
        assert proc.poll() is None, "the first leg ended before its step-2 checkpoint"
        assert time.monotonic() < deadline, "no step-2 checkpoint within 10 minutes"
        time.sleep(0.1)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=60)

    resumed = tmp_path / "resumed"
    subprocess.run(
        _command(tiny_model, killed / "ckpt", resumed / "logs", *PPO, "--resume"),
        env=_env(),
        check=True,
        timeout=900,
    )
    for step in (3, 4):
        assert _rollout(resumed / "logs", step) == _rollout(straight / "logs", step)
    for folder in ("hf_model", "critic_hf"):
        want = _weights(straight / "logs" / folder)
        got = _weights(resumed / "logs" / folder)
        assert want and want.keys() == got.keys(), folder
        for name, tensor in want.items():
            torch.testing.assert_close(got[name], tensor, atol=1e-6, rtol=0, msg=f"{folder}/{name}")
    assert "value_head.safetensors:weight" in _weights(straight / "logs" / "critic_hf")
