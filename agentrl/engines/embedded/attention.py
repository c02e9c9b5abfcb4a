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


def prefill_bias(positions: torch.Tensor, columns: int) -> torch.Tensor:
    """(n, 1, 1, T, columns) float32: 0 where a query at ``positions[r, t]`` may see key column ``c``
    (``c <= position``: causal with each row's cached offset), -inf elsewhere. Built once per prefill
    chunk and shared by the layers."""
    visible = torch.arange(columns, device=positions.device) <= positions.unsqueeze(-1)  # (n, T, columns)
    bias = torch.zeros(visible.shape, device=positions.device).masked_fill_(~visible, float("-inf"))
    return bias.unsqueeze(1).unsqueeze(1)


def prefill_attention_bmm(
    q: torch.Tensor, keys: torch.Tensor, values: torch.Tensor, bias: torch.Tensor, scale: float
) -> torch.Tensor:
    """:func:`prefill_attention` as two batched products and a softmax, grouped-query heads folded
    into the query dimension (no repeated K/V heads): the form a compiler fuses with the rest of the
    layer. Materialises the (n, Hq, T, L) scores, so it is for prefills of short turns; the runner
    takes :func:`prefill_attention` above a size.

    Args:
        q: (n, T, Hq, D).
        keys, values: (n, Hkv, L, D).
        bias: (n, 1, 1, T, L) from :func:`prefill_bias`.
    Returns:
        (n * T, Hq * D), in ``q``'s dtype.
    """
    n, t, hq, d = q.shape
    hkv, columns = keys.shape[1], keys.shape[2]
    g = hq // hkv
    qg = q.view(n, t, hkv, g, d).permute(0, 2, 3, 1, 4).reshape(n, hkv, g * t, d)
    scores = torch.matmul(qg, keys.transpose(-1, -2)).view(n, hkv, g, t, columns)
    weights = torch.softmax(torch.add(bias, scores, alpha=scale), dim=-1)  # float32
    out = torch.matmul(weights.to(q.dtype).view(n, hkv, g * t, columns), values)  # (n, Hkv, G T, D)
    return out.view(n, hkv, g, t, d).permute(0, 3, 1, 2, 4).reshape(n * t, hq * d)
