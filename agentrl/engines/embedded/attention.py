"""Attention over the slot cache: one query per row (decode) and padded chunks of new ids (prefill).

Why two kernels' worth of code: a decode step has one query per row and a length bucket of keys, so
two batched matrix products with grouped-query heads folded into the query dimension read each row's
keys and values exactly once (no repeated K/V heads) and need no fused kernel; the mask cuts each row
at its real length. Prefill has many queries per row and runs once per admission, outside the graphs,
so it uses PyTorch's SDPA with an explicit causal-with-offset mask (rows may start from a cached prefix).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def length_bias(lengths: torch.Tensor, columns: int) -> torch.Tensor:
    """(B, 1, 1, columns) float32: 0 on each row's first ``lengths[b]`` keys, -inf after. Built once
    per decode step and shared by every layer."""
    valid = torch.arange(columns, device=lengths.device) < lengths.unsqueeze(1)  # (B, columns)
    return (
        torch.zeros(valid.shape, device=lengths.device)
        .masked_fill_(~valid, float("-inf"))
        .view(-1, 1, 1, columns)
    )


def decode_attention(
    q: torch.Tensor, keys: torch.Tensor, values: torch.Tensor, bias: torch.Tensor, scale: float
) -> torch.Tensor:
    """One query per row against its cached keys.

    Args:
        q: (B, Hq, D).
        keys, values: (B, Hkv, L, D) slices of the slot cache (strided views, not copies).
        bias: (B, 1, 1, L) from :func:`length_bias`.
    Returns:
        (B, Hq * D) attention output, in ``q``'s dtype.
    """
    b, hq, d = q.shape
    hkv = keys.shape[1]
    qg = q.view(b, hkv, hq // hkv, d)  # (B, Hkv, G, D): a KV head's query heads share its keys
    scores = torch.matmul(qg, keys.transpose(-1, -2))  # (B, Hkv, G, L)
    weights = torch.softmax(torch.add(bias, scores, alpha=scale), dim=-1)  # float32
    return torch.matmul(weights.to(q.dtype), values).reshape(b, hq * d)


def decode_attention_sdpa(
    q: torch.Tensor, keys: torch.Tensor, values: torch.Tensor, bias: torch.Tensor, scale: float
) -> torch.Tensor:
    """:func:`decode_attention` as one fused SDPA call: each KV head's ``G`` query heads are its
    "query positions", so plain multi-head SDPA with the length bias as its mask needs no repeated
    K/V heads. One kernel per layer instead of five (two products, the bias add, softmax, a cast).

    Args and returns as :func:`decode_attention`; ``bias`` in ``q``'s dtype.
    """
    b, hq, d = q.shape
    hkv = keys.shape[1]
    qg = q.view(b, hkv, hq // hkv, d)  # (B, Hkv, G, D)
    out = F.scaled_dot_product_attention(qg, keys, values, attn_mask=bias, scale=scale)  # (B, Hkv, G, D)
    return out.reshape(b, hq * d)


def prefill_attention(
    q: torch.Tensor,
    keys: torch.Tensor,
    values: torch.Tensor,
    positions: torch.Tensor,
    scale: float,
    *,
    from_zero: bool = False,
) -> torch.Tensor:
    """Queries of new ids (padded to ``T`` per row) against each row's keys up to their own position.

    Args:
        q: (n, T, Hq, D).
        keys, values: (n, Hkv, L, D), the rows' slots cut at the longest row's end.
        positions: (n, T) position of each query (padding queries may hold any position).
        from_zero: every row's queries sit at positions ``0..T-1`` (no cached prefix, no earlier
            chunk): then this is plain causal attention and runs without a mask.
    Returns:
        (n * T, Hq * D).
    """
    n, t, hq, d = q.shape
    group = hq // keys.shape[1]
    if from_zero:  # plain causal attention over the first T columns: SDPA's flash kernel, no mask
        k = keys[:, :, :t].repeat_interleave(group, dim=1)  # (n, Hq, T, D)
        v = values[:, :, :t].repeat_interleave(group, dim=1)
        out = F.scaled_dot_product_attention(q.transpose(1, 2), k, v, is_causal=True, scale=scale)
        return out.transpose(1, 2).reshape(n * t, hq * d)
    k = keys.repeat_interleave(group, dim=1)  # (n, Hq, L, D)
    v = values.repeat_interleave(group, dim=1)
    columns = torch.arange(keys.shape[2], device=q.device)
    mask = (columns.view(1, 1, -1) <= positions.unsqueeze(-1)).unsqueeze(1)  # (n, 1, T, L)
    out = F.scaled_dot_product_attention(
        q.transpose(1, 2), k, v, attn_mask=mask, scale=scale
    )  # (n, Hq, T, D)
    return out.transpose(1, 2).reshape(n * t, hq * d)
