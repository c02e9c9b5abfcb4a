"""Vectorised packed RoPE and the HF-order RMSNorm of the Megatron backend, against transformers' own
Qwen2 rotary embedding / ``apply_rotary_pos_emb`` / ``Qwen2RMSNorm`` run one sequence at a time."""

from __future__ import annotations

import torch
from transformers import Qwen2Config
from transformers.models.qwen2.modeling_qwen2 import Qwen2RMSNorm, Qwen2RotaryEmbedding, apply_rotary_pos_emb

from agentrl.trainer.megatron.norm import HFRMSNorm
from agentrl.trainer.megatron.packing import pack
from agentrl.trainer.megatron.rope import apply_rope, inverse_frequencies, packed_positions, rope_tables
from agentrl.trainer.megatron.step_loss import padded, padded_index


def test_packed_positions_restart_in_each_sequence() -> None:
    cu = torch.tensor([0, 3, 5, 9], dtype=torch.int32)
    assert packed_positions(cu, 9).tolist() == [0, 1, 2, 0, 1, 0, 1, 2, 3]


def test_packed_rope_equals_transformers_per_sequence_bitwise() -> None:
    theta, heads, kv_heads, dim = 1_000_000.0, 4, 2, 64
    config = Qwen2Config(
        hidden_size=heads * dim,
        num_attention_heads=heads,
        rope_parameters={"rope_type": "default", "rope_theta": theta},
    )
    hf_rope = Qwen2RotaryEmbedding(config)
    lengths = [7, 1, 12, 5]
    cu = torch.tensor([0, *lengths]).cumsum(0).to(torch.int32)
    total = sum(lengths)
    g = torch.Generator().manual_seed(0)
    q = torch.randn(total, heads, dim, generator=g).bfloat16()
    k = torch.randn(total, kv_heads, dim, generator=g).bfloat16()
    cos, sin = rope_tables(packed_positions(cu, total), inverse_frequencies(dim, theta), torch.bfloat16)
    q_ours, k_ours = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
    for start, n in zip(cu[:-1].tolist(), lengths, strict=True):
        qs = q[start : start + n].transpose(0, 1)[None]  # (1, H, n, D), transformers' layout
        ks = k[start : start + n].transpose(0, 1)[None]
        hf_cos, hf_sin = hf_rope(qs, torch.arange(n)[None])
        q_ref, k_ref = apply_rotary_pos_emb(qs, ks, hf_cos, hf_sin)
        assert torch.equal(q_ours[start : start + n], q_ref[0].transpose(0, 1))
        assert torch.equal(k_ours[start : start + n], k_ref[0].transpose(0, 1))


def test_rope_on_padded_layout_broadcasts_over_batch() -> None:
    cos, sin = rope_tables(torch.arange(6), inverse_frequencies(8, 10_000.0), torch.float32)
    x = torch.randn(6, 3, 2, 8)  # (s, b, heads, D)
    out = apply_rope(x, cos, sin)
    for b in range(3):
        assert torch.allclose(out[:, b], apply_rope(x[:, b], cos, sin))
    # position 0 is the identity; a rotation keeps each (x_i, x_{i+D/2}) pair's norm
    assert torch.equal(out[0], x[0])
    pair_norm = x[..., :4] ** 2 + x[..., 4:] ** 2
    assert torch.allclose(out[..., :4] ** 2 + out[..., 4:] ** 2, pair_norm, atol=1e-5)


class _Cfg:
    params_dtype = torch.bfloat16
    sequence_parallel = False


def test_hf_rmsnorm_matches_transformers_and_takes_fp32_residual() -> None:
    g = torch.Generator().manual_seed(1)
    x = (torch.randn(16, 96, generator=g) * 3).bfloat16()
    ours, ref = HFRMSNorm(_Cfg(), 96, eps=1e-6), Qwen2RMSNorm(96, eps=1e-6).bfloat16()
    with torch.no_grad():
        w = (1 + 0.3 * torch.randn(96, generator=g)).bfloat16()
        ours.weight.copy_(w)
        ref.weight.copy_(w)
    out = ours(x)
    assert out.dtype == torch.bfloat16
    # fp32 reductions may differ in order: allow one bf16 rounding step of the normalised value
    assert torch.allclose(out.float(), ref(x).float(), rtol=2**-7, atol=0)
    assert ours(x.float()).dtype == torch.bfloat16  # fp32 residual stream in, bf16 out


def test_padded_gather_matches_unpack() -> None:
    ids = [torch.arange(5), torch.arange(1), torch.arange(3) + 10]
    mb = pack(ids, [2, 0, 1])
    values = torch.arange(mb.num_tokens, dtype=torch.float32) + 1
    rows = mb.unpack(values)
    out = padded(mb, values, padded_index(mb))
    assert out.shape == (3, 5)
    for r, row in enumerate(rows):
        assert torch.equal(out[r, : row.numel()], row)
        assert not out[r, row.numel() :].any()
