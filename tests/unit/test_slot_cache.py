"""The embedded engine's slot cache: views a compiler sees never start at storage offset 0 or 1, and
slot copies move exactly the tokens asked for."""

from __future__ import annotations

import torch

from agentrl.engines.embedded.decoder import Spec
from agentrl.engines.embedded.slot_cache import SlotCache

SPEC = Spec(layers=3, hidden=32, heads=4, kv_heads=2, head_dim=8, vocab=100, eps=1e-6)


def test_no_view_starts_at_offset_zero_or_one() -> None:
    cache = SlotCache(SPEC, slots=4, max_len=16, dtype=torch.bfloat16, device=torch.device("cpu"))
    assert cache.kv.shape == (3, 2, 4, 2, 16, 8) and cache.kv.is_contiguous()
    views = [cache.kv[0], cache.keys(0), cache.keys(0)[0:2], cache.values(0)[0:1, :, :5]]
    views += [cache.kv[i, 0, 0:3, :, :7] for i in range(SPEC.layers)]
    assert min(v.storage_offset() for v in views) >= 2
    assert cache.keys(0).data_ptr() % 256 == cache.kv.untyped_storage().data_ptr() % 256  # alignment kept
    assert not cache.kv.any()  # starts zeroed


def test_copy_moves_the_first_tokens_of_every_layer() -> None:
    cache = SlotCache(SPEC, slots=3, max_len=8, dtype=torch.float32, device=torch.device("cpu"))
    cache.kv[:, :, 1] = torch.arange(cache.kv[:, :, 1].numel(), dtype=torch.float32).view_as(
        cache.kv[:, :, 1]
    )
    cache.copy(2, 1, 5)
    assert torch.equal(cache.kv[:, :, 2, :, :5], cache.kv[:, :, 1, :, :5])
    assert not cache.kv[:, :, 2, :, 5:].any() and not cache.kv[:, :, 0].any()
