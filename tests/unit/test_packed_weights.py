"""Weights packed in one buffer for the engine (agentrl/engines/packed_weights.py): exact round trips in the
engine's dtype, through pickling as Ray's object store does, and loaded by the embedded engine in place."""

from __future__ import annotations

import asyncio
import os
import pickle
from pathlib import Path

import pytest
import torch

from agentrl.engines.packed_weights import (
    ALIGN,
    SHM_DIR,
    SHM_PREFIX,
    pack_shared,
    pack_weights,
    remove_stale_buffers,
    unpack_weights,
)
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


def test_tied_tensors_are_stored_once() -> None:
    """lm_head.weight is embed_tokens.weight in a tied model: one place in the buffer, both names read it."""
    embed = torch.arange(12, dtype=torch.float32).reshape(4, 3)
    packed, _ = pack_weights([("embed", embed), ("lm_head", embed), ("norm", torch.ones(3))])
    offsets = [e.offset for e in packed.entries]
    assert offsets == [0, 0, ALIGN]  # 48 bytes of embed round up to one ALIGN; norm follows
    assert packed.nbytes == 2 * ALIGN
    out = unpack_weights(packed)
    assert torch.equal(out["lm_head"], embed) and torch.equal(out["embed"], embed)


def test_shared_buffer_is_refilled_in_place_and_the_reader_sees_each_sync() -> None:
    """Two syncs through one shared buffer: the second overwrites the first in the same segment, and a
    reader that mapped it at the first sync (its mapping kept, as the engine keeps it) reads exactly the
    second sync's values, even after the segment's name is removed."""
    first = [("w", torch.tensor([1.5, -2.0])), ("steps", torch.tensor([7], dtype=torch.int64))]
    second = [("w", torch.tensor([0.25, 3.0])), ("steps", torch.tensor([8], dtype=torch.int64))]
    packed, buffer = pack_shared(first)
    try:
        assert packed.host is None and packed.shared_name == buffer.name
        seen = pickle.loads(pickle.dumps(packed))  # what crosses Ray: a name, no bytes
        got = unpack_weights(seen)
        assert got["w"].tolist() == [1.5, -2.0] and got["steps"].tolist() == [7]
        buffer.release()  # the engine mapped it: the name goes, the memory stays
        assert not (SHM_DIR / buffer.name).exists()

        packed2, same = pack_shared(second, buffer=buffer)
        assert same is buffer and packed2.shared_name == packed.shared_name
        got = unpack_weights(pickle.loads(pickle.dumps(packed2)))
        assert got["w"].tolist() == [0.25, 3.0] and got["steps"].tolist() == [8]
        assert got["w"].dtype == torch.float32 and got["steps"].dtype == torch.int64
    finally:
        buffer.close()


def test_a_new_layout_replaces_the_shared_buffer() -> None:
    packed, buffer = pack_shared([("w", torch.zeros(2))])
    packed2, other = pack_shared([("w", torch.zeros(3))], buffer=buffer)
    try:
        assert other is not buffer and packed2.shared_name != packed.shared_name
        assert not (SHM_DIR / buffer.name).exists()  # the old one closed
        assert unpack_weights(packed2)["w"].tolist() == [0.0, 0.0, 0.0]
    finally:
        other.close()
    assert not (SHM_DIR / other.name).exists()


def test_stale_buffers_of_dead_processes_are_removed() -> None:
    dead = SHM_DIR / f"{SHM_PREFIX}{2**22 + 7}-0000"  # over Linux's largest pid_max: no such process
    alive = SHM_DIR / f"{SHM_PREFIX}{os.getpid()}-0000"
    dead.write_bytes(b"x")
    alive.write_bytes(b"x")
    try:
        assert remove_stale_buffers() == [dead.name]
        assert alive.exists() and not dead.exists()
    finally:
        alive.unlink(missing_ok=True)
        dead.unlink(missing_ok=True)


def test_embedded_engine_loads_the_second_sync_from_the_shared_buffer(tiny_model_path: Path) -> None:
    """The engine maps the buffer at the first sync; after the trainer refills it, the engine's weights
    are the second sync's bit for bit, not the first's."""
    from transformers import AutoModelForCausalLM

    from agentrl.engines.embedded.engine import EmbeddedEngine, EmbeddedEngineConfig

    model = AutoModelForCausalLM.from_pretrained(tiny_model_path)
    first = {k: v.detach() * 1.5 for k, v in model.state_dict().items()}
    second = {k: v.detach() - 0.25 for k, v in model.state_dict().items()}

    async def run() -> dict[str, torch.Tensor]:
        engine = EmbeddedEngine(tiny_model_path, EmbeddedEngineConfig(device="cpu"))
        try:
            packed, buffer = pack_shared(first.items(), dtype=torch.float32)
            await engine.update_weights(packed, version=1)
            buffer.release()
            assert all(torch.equal(v, first[k]) for k, v in engine.model.state_dict().items())
            packed, buffer = pack_shared(second.items(), dtype=torch.float32, buffer=buffer)
            await engine.update_weights(packed, version=2)
            buffer.close()
            return {k: v.clone() for k, v in engine.model.state_dict().items()}
        finally:
            await engine.close()

    got = asyncio.run(run())
    assert set(got) == set(second)
    for name, tensor in second.items():
        assert torch.equal(got[name], tensor), name
        assert not torch.equal(got[name], first[name]), name
