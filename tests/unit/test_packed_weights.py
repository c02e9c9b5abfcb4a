"""Weights packed in one buffer for the engine (agentrl/engines/packed_weights.py): exact round trips in the
engine's dtype, through pickling as Ray's object store does, and loaded by the embedded engine in place."""

from __future__ import annotations

import asyncio
import pickle
from pathlib import Path

import pytest
import torch

from agentrl.engines.packed_weights import ALIGN, pack_weights, unpack_weights
from agentrl.models import make_tiny_gpt2


@pytest.fixture(scope="module")
def tiny_model_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny_gpt2(tmp_path_factory.mktemp("models") / "tiny")


def _named() -> list[tuple[str, torch.Tensor]]:
    g = torch.Generator().manual_seed(0)
    return [
        ("embed.weight", torch.randn(70, 50, generator=g)),
        ("norm.weight", torch.randn(5, generator=g)),  # 20 bytes: the next tensor starts on an aligned offset
        ("scalar", torch.tensor(3.25)),
        ("steps", torch.tensor([1, 2, 3], dtype=torch.int64)),  # not floating: keeps its dtype
        ("proj.weight", torch.randn(3, 4, 2, generator=g)),
    ]


def test_round_trip_is_exact_and_aligned() -> None:
    named = _named()
    packed, _ = pack_weights(named)
    assert [e.offset % ALIGN for e in packed.entries] == [0] * len(named)
    assert packed.cuda_ipc is None and packed.host is not None and packed.host.nbytes == packed.nbytes
    out = unpack_weights(pickle.loads(pickle.dumps(packed)))  # what crossing Ray's object store does
    assert list(out) == [name for name, _ in named]
    for name, t in named:
        assert out[name].dtype == t.dtype and out[name].shape == t.shape
        assert torch.equal(out[name], t)


def test_floating_tensors_take_the_engines_dtype() -> None:
    named = _named()
    packed, _ = pack_weights(named, dtype=torch.bfloat16)
    out = unpack_weights(packed)
    for name, t in named:
        want = t.to(torch.bfloat16) if t.is_floating_point() else t
        assert out[name].dtype == want.dtype
        assert torch.equal(out[name], want)
    fp32, _ = pack_weights(named)
    assert packed.nbytes < fp32.nbytes  # half the bytes for the float tensors


def test_bad_input_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match="no weights"):
        pack_weights([])
    with pytest.raises(ValueError, match="cuda_ipc needs weights on a GPU"):
        pack_weights(_named(), cuda_ipc=True)


def test_embedded_engine_loads_packed_weights_in_place(tiny_model_path: Path) -> None:
    """An engine updated with packed weights samples exactly as one updated with the plain state dict."""
    from transformers import AutoModelForCausalLM

    from agentrl.engines.base import SamplingParams
    from agentrl.engines.embedded.engine import EmbeddedEngine, EmbeddedEngineConfig

    other = AutoModelForCausalLM.from_pretrained(tiny_model_path)
    with torch.no_grad():
        for p in other.parameters():
            p.mul_(1.5)
    state = {k: v.detach() for k, v in other.state_dict().items()}
    sampling = SamplingParams(max_new_tokens=6, temperature=0.0)

    async def run(source: object) -> tuple[list[int], list[float], int, list[int]]:
        engine = EmbeddedEngine(tiny_model_path, EmbeddedEngineConfig(device="cpu"))
        try:
            before = [p.data_ptr() for p in engine.model.parameters()]
            await engine.update_weights(source, version=4)
            out = await engine.generate([5, 9, 2, 7], sampling)
            assert [p.data_ptr() for p in engine.model.parameters()] == before  # loaded in place
            return out.output_ids, out.logprobs, out.weight_version, before
        finally:
            await engine.close()

    packed, _ = pack_weights(state.items(), dtype=torch.float32)
    via_dict = asyncio.run(run(state))
    via_packed = asyncio.run(run(pickle.loads(pickle.dumps(packed))))
    assert via_packed[2] == via_dict[2] == 4
    assert via_packed[0] == via_dict[0]
    assert via_packed[1] == pytest.approx(via_dict[1], abs=0.0)
