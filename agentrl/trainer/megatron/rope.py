"""Rotary position embedding for a whole packed batch in one vectorised pass (no megatron import).

Megatron's local path rotates packed (``thd``) batches one sequence at a time: a Python loop with slice
copies for q and for k in every layer, forward and backward, which made a training step launch-bound.
Here positions come from ``cu_seqlens`` on the device (no host sync), the cos/sin tables are built once
per micro-batch, and q and k are rotated with a handful of elementwise kernels regardless of how many
sequences are packed.

The arithmetic is Hugging Face's (``rotate_half`` convention, default RoPE): inverse frequencies from an
int64 ``arange`` cast to fp32, angles and cos/sin in fp32, tables cast to the activation dtype, then
``x * cos + rotate_half(x) * sin`` in that dtype — the same roundings as transformers, which keeps
logprob parity with it.
"""

from __future__ import annotations

import torch


def inverse_frequencies(head_dim: int, theta: float) -> torch.Tensor:
    """(head_dim / 2,) fp32 ``1 / theta^(2i / head_dim)``, computed as transformers computes it."""
    exponents = torch.arange(0, head_dim, 2, dtype=torch.int64).to(torch.float32) / head_dim
    return 1.0 / (theta**exponents)


def packed_positions(cu_seqlens: torch.Tensor, total: int) -> torch.Tensor:
    """(total,) int64 position of every token inside its own sequence, from ``cu_seqlens`` (n + 1,).

    Tokens past ``cu_seqlens[-1]`` (none in our packs) would count on from the last sequence's start."""
    cu = cu_seqlens.to(torch.int64)
    index = torch.arange(total, device=cu.device)
    seq = torch.searchsorted(cu[1:], index, right=True).clamp_(max=cu.numel() - 2)
    return index - cu[seq]


def rope_tables(
    positions: torch.Tensor, inv_freq: torch.Tensor, dtype: torch.dtype
) -> tuple[torch.Tensor, torch.Tensor]:
    """(T, head_dim) cos and sin for ``positions`` (T,), in ``dtype`` (angles computed in fp32)."""
    freqs = positions.to(torch.float32)[:, None] * inv_freq.to(positions.device)[None, :]
    emb = torch.cat((freqs, freqs), dim=-1)
    return emb.cos().to(dtype), emb.sin().to(dtype)


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    """``[-x2, x1]`` for ``x = [x1, x2]`` split in halves along the last dimension."""
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate ``x`` (T, ..., head_dim) by per-token tables ``cos``/``sin`` (T, head_dim)."""
    shape = (cos.shape[0],) + (1,) * (x.dim() - 2) + (cos.shape[-1],)
    return x * cos.view(shape) + rotate_half(x) * sin.view(shape)
