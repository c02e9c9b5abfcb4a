"""The rollout controller driving a real SGLang server on CPU: multi-turn episodes, token-exact.

The same scripted multi-turn episodes as the embedded-engine controller test (tests/integration/
test_embedded_engine.py), checked with the same independent invariant check (`check_trajectory`:
decoding equals the chat template's rendering, mask 1 exactly on sampled ids). On top, every sampled
token's rollout logprob is compared with transformers' forward pass over the whole episode
(prompt, sampled turns and observations): this holds only if the ids SGLang consumed each turn
(with its prefix cache reused across turns of a session) are exactly the ids the trainer will see.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from rollout_harness import ScriptedEnv, ScriptTurn, check_trajectory, run_with_driver
from test_sglang_engine import sglang_python_or_skip, sharpened_copy
from transformers import AutoTokenizer, GPT2LMHeadModel

from agentrl.engines.sglang.engine import SGLangEngine, SGLangEngineConfig
from agentrl.engines.sglang.launcher import CPU_SERVER_ARGS, SGLangServerProcess, free_port
from agentrl.models import make_tiny_gpt2
from agentrl.rollout.controller import RolloutConfig
from agentrl.types import Status, Trajectory

SCRIPT = [
    ScriptTurn("", observation=[{"role": "tool", "content": "Doc 1: Lima is the capital of Peru."}]),
    ScriptTurn("", observation=[{"role": "user", "content": "Anything else? é✓"}]),
    ScriptTurn(""),
]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("controller-models")
    return sharpened_copy(make_tiny_gpt2(root / "tiny"), root / "sharp", scale=6.0)


@pytest.fixture(scope="module")
def server(model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[SGLangServerProcess]:
    python = sglang_python_or_skip()
    log = tmp_path_factory.mktemp("controller-logs") / "sglang.log"
    process = SGLangServerProcess(
        python,
        str(model_dir),
        port=free_port(),
        extra_args=CPU_SERVER_ARGS,
        log_path=log,
        env={"SGLANG_RETURN_ORIGINAL_LOGPROB": "1"},
    )
    process.start()
    try:
        asyncio.run(process.wait_healthy(timeout_s=400))
        yield process
    finally:
        process.kill()


def _reference_logprobs(model: Any, traj: Trajectory) -> list[float]:
    """Logprob of every response id given everything before it, from one transformers forward."""
    ids = traj.prompt_ids + traj.response_ids
    with torch.no_grad():
        logprobs = torch.log_softmax(model(torch.tensor([ids])).logits[0].double(), dim=-1)  # (T, V)
    start = len(traj.prompt_ids)
    return [logprobs[start + i - 1, tok].item() for i, tok in enumerate(traj.response_ids)]


@pytest.mark.parametrize("inline", [False, True])
def test_controller_multi_turn_episodes_on_sglang(
    inline: bool, server: SGLangServerProcess, model_dir: Path
) -> None:
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    envs: list[ScriptedEnv] = []

    def factory(**kwargs: Any) -> ScriptedEnv:
        envs.append(ScriptedEnv(SCRIPT, inline=inline, num_tasks=2, **kwargs))
        return envs[-1]

    config = RolloutConfig(max_new_tokens=24, max_context=1024, temperature=1.0, max_concurrency=4)

    async def start() -> Any:
        return await SGLangEngine(SGLangEngineConfig(server_urls=(server.url,))).start()

    groups = run_with_driver(start, model_dir, factory, ["0:t0", "0:t1"], 3, config)
    assert [len(g) for g in groups] == [3, 3]
    model = GPT2LMHeadModel.from_pretrained(model_dir, dtype=torch.float32).eval()
    for traj in (t for g in groups for t in g):
        assert traj.status in (Status.COMPLETED, Status.TRUNCATED), traj.error
        env = ScriptedEnv(SCRIPT, inline=inline)
        env.received = [t["text"] for t in traj.turns if "info" in t]
        check_trajectory(traj, env, tokenizer)
        expected = _reference_logprobs(model, traj)
        sampled = [
            (lp, ref) for lp, ref, m in zip(traj.rollout_logprobs, expected, traj.loss_mask, strict=True) if m
        ]
        assert len(sampled) >= 3  # at least one token per turn
        assert max(abs(lp - ref) for lp, ref in sampled) < 1e-3
