"""Partial rollouts on the embedded engine (docs/async.md): a weight update in the middle of a request
pauses it between two decode steps, loads the weights, prefills what the request has so far under the
new weights and continues. Every output id records the version that sampled it, and its logprob is the
logprob under that version's weights: checked against a teacher-forced forward pass of each version
(transformers, independent of the engine's batching and caches).
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM

from agentrl.engines.base import SamplingParams
from agentrl.engines.embedded.engine import EmbeddedEngine, EmbeddedEngineConfig
from agentrl.models import make_tiny_gpt2


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny_gpt2(tmp_path_factory.mktemp("models") / "tiny-gpt2", seed=2)


def _teacher_forced(model: Path, state: dict[str, torch.Tensor], ids: list[int]) -> torch.Tensor:
    """log_softmax of the logits at every position of ``ids`` under ``state``, (T, V)."""
    net = AutoModelForCausalLM.from_pretrained(model, dtype=torch.float32).eval()
    net.load_state_dict(state, strict=False)
    with torch.no_grad():
        return torch.log_softmax(net(torch.tensor([ids])).logits[0].double(), dim=-1)


def test_a_weight_update_mid_request_keeps_each_tokens_version_and_logprob(tiny_model: Path) -> None:
    engine = EmbeddedEngine(tiny_model, EmbeddedEngineConfig(device="cpu", seed=0, num_threads=1))
    old = {k: v.clone() for k, v in engine.model.state_dict().items()}
    generator = torch.Generator().manual_seed(0)
    new = {
        k: v + 0.5 * torch.randn(v.shape, generator=generator) if v.is_floating_point() else v
        for k, v in old.items()
    }
    prompt = [5, 17, 42, 99, 7]

    asked_at: list[float] = []

    async def generate_across_an_update() -> tuple[list[int], list[float], list[int]]:
        request = asyncio.create_task(
            engine.generate(prompt, SamplingParams(max_new_tokens=200, ignore_eos=True, seed=3))
        )
        while engine.stats["decode_steps"] < 8:  # some tokens sampled by version 0
            await asyncio.sleep(0.001)
        asked_at.append(engine.stats["decode_steps"])
        await engine.update_weights(new, version=1)
        out = await request
        await engine.close()
        return out.output_ids, out.logprobs, out.meta.get("token_versions", [])

    ids, logprobs, versions = asyncio.run(generate_across_an_update())
    assert len(versions) == len(ids) == 200
    switch = versions.index(1)  # versions go 0...0 1...1: one update, never back
    assert 8 <= switch < 200 and versions == [0] * switch + [1] * (200 - switch)
    # the update lands within a few steps of being asked for: the worker, which takes the model lock
    # every step, lets a waiting update in (an unfair lock let it wait out the whole request: 2 runs in 3)
    assert switch <= asked_at[0] + 20, (switch, asked_at)
    under = {
        0: _teacher_forced(tiny_model, old, prompt + ids),
        1: _teacher_forced(tiny_model, new, prompt + ids),
    }
    for i, (token, version) in enumerate(zip(ids, versions, strict=True)):
        want = under[version][len(prompt) + i - 1, token].item()
        assert logprobs[i] == pytest.approx(want, abs=1e-4), (i, version)
    # The check discriminates: under the other version the tokens after the switch score differently.
    other = [under[0][len(prompt) + i - 1, ids[i]].item() for i in range(switch, 200)]
    assert sum(abs(a - b) for a, b in zip(other, logprobs[switch:], strict=True)) / len(other) > 0.05
