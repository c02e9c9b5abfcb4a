"""The Megatron backend's reference-model holder (plain torch, CPU): frozen, offloaded weights come
back bit for bit for each pass and leave the device between passes; the offload rule."""

from __future__ import annotations

import pytest
import torch

from agentrl.trainer.reference import ReferenceModel, should_offload


def _chunks() -> list[torch.nn.Module]:
    torch.manual_seed(0)
    return [torch.nn.Linear(6, 4), torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.Linear(3, 2))]


def _forward(chunks: list[torch.nn.Module], x: torch.Tensor) -> torch.Tensor:
    return chunks[1](chunks[0](x))


@pytest.mark.parametrize("offload", [True, False])
def test_weights_are_frozen_and_the_same_in_every_pass(offload: bool) -> None:
    chunks = _chunks()
    x = torch.randn(5, 6)
    want = _forward(chunks, x).detach()
    saved = [p.detach().clone() for c in chunks for p in c.parameters()]
    ref = ReferenceModel(chunks, offload=offload)
    assert ref.weight_bytes == 4 * sum(p.numel() for p in saved)  # fp32: 4 bytes each
    for _ in range(2):  # a second pass gets the weights back after the first dropped them
        with ref.resident() as resident:
            got = _forward(resident, x)
            assert not got.requires_grad
            torch.testing.assert_close(got, want, rtol=0, atol=0)
        params = [p for c in chunks for p in c.parameters()]
        sizes = [p.numel() for p in params]
        assert sizes == ([0] * len(saved) if offload else [s.numel() for s in saved])
    if not offload:
        assert all(torch.equal(p, s) for p, s in zip(params, saved, strict=True))


def test_offload_rule() -> None:
    gib = 1 << 30
    assert should_offload("auto", 2 * gib, 10 * gib)  # a fifth of the free memory: offload
    assert not should_offload("auto", gib // 2, 10 * gib)  # a twentieth: stay
    assert should_offload("always", 1, 10 * gib)
    assert not should_offload("never", 100 * gib, 10 * gib)
