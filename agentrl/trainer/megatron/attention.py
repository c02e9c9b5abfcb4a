"""Core attention for the Megatron local layer spec through fused kernels instead of the unfused
``softmax(QK^T)V`` of ``DotProductAttention`` (which materialises ``(b, heads, s, s)`` scores and cannot
take packed sequences).

- Packed sequences (``qkv_format="thd"``): ``torch.nn.attention.varlen.varlen_attn`` (FlashAttention's
  variable-length kernel, in PyTorch since 2.9) over ``cu_seqlens``: causal inside each sequence, no
  attention across sequences, no padding. Where it is missing (CPU, old torch) each sequence goes
  through SDPA on its own, which is exact but slower.
- Padded batches (``sbhd``): ``scaled_dot_product_attention(is_causal=True)`` with native GQA.

Given ``rotary_base``, it also applies RoPE to q and k first (the model is then built without
Megatron's own rotary, whose packed path loops over sequences): one vectorised pass per layer over
the whole pack, with tables built once per micro-batch (:mod:`.rope`).
"""

from __future__ import annotations

import inspect
import itertools
import math
from typing import Any

import torch
import torch.nn.functional as F
from megatron.core.packed_seq_params import PackedSeqParams
from megatron.core.transformer.module import MegatronModule
from megatron.core.transformer.transformer_config import TransformerConfig

from agentrl.errors import ConfigError
from agentrl.trainer.megatron.rope import apply_rope, inverse_frequencies, packed_positions, rope_tables

try:
    from torch.nn.attention.varlen import varlen_attn as _varlen_attn_fn

    _varlen_attn: Any = _varlen_attn_fn

    _VARLEN_PARAMS = set(inspect.signature(_varlen_attn_fn).parameters)
except ImportError:  # torch < 2.9
    _varlen_attn = None
    _VARLEN_PARAMS = set()


def varlen_causal_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, cu_seqlens: torch.Tensor, max_seqlen: int, scale: float
) -> torch.Tensor:
    """Causal attention over packed sequences. q (T, Hq, D), k/v (T, Hkv, D) -> (T, Hq, D)."""
    groups = q.shape[1] // k.shape[1]
    if _varlen_attn is not None and q.is_cuda:
        kwargs: dict[str, Any] = {}
        if "window_size" in _VARLEN_PARAMS:  # torch >= 2.11 spells causal as a (-1, 0) window
            kwargs["window_size"] = (-1, 0)
        else:
            kwargs["is_causal"] = True
        if "scale" in _VARLEN_PARAMS:
            kwargs["scale"] = scale
        elif not math.isclose(scale, q.shape[-1] ** -0.5):
            q = q * (scale * q.shape[-1] ** 0.5)
        if groups > 1 and "enable_gqa" in _VARLEN_PARAMS:
            kwargs["enable_gqa"] = True
        elif groups > 1:
            k, v = k.repeat_interleave(groups, dim=1), v.repeat_interleave(groups, dim=1)
        out: torch.Tensor = _varlen_attn(q, k, v, cu_seqlens, cu_seqlens, max_seqlen, max_seqlen, **kwargs)
        return out
    out = torch.empty_like(q)
    bounds = cu_seqlens.tolist()
    for start, end in itertools.pairwise(bounds):
        qs, ks, vs = (x[start:end].transpose(0, 1)[None] for x in (q, k, v))  # (1, H, s, D)
        o = F.scaled_dot_product_attention(qs, ks, vs, is_causal=True, scale=scale, enable_gqa=groups > 1)
        out[start:end] = o[0].transpose(0, 1)
    return out


class FusedCoreAttention(MegatronModule):
    """Drop-in ``core_attention`` for Megatron's ``SelfAttention`` (same constructor and forward)."""

    def __init__(
        self,
        config: TransformerConfig,
        layer_number: int,
        attn_mask_type: Any,
        attention_type: str,
        attention_dropout: float | None = None,
        softmax_scale: float | None = None,
        cp_comm_type: str | None = None,
        pg_collection: Any = None,
        rotary_base: float | None = None,
    ) -> None:
        super().__init__(config=config)
        if config.context_parallel_size != 1:
            raise ConfigError(
                "context parallelism needs Transformer Engine's attention: install transformer-engine and "
                "set attention_backend='te', or use --context-parallel-size 1"
            )
        if (attention_dropout if attention_dropout is not None else config.attention_dropout) > 0:
            raise ConfigError("attention dropout is not supported by the fused attention; set it to 0")
        self.scale = softmax_scale if softmax_scale is not None else config.kv_channels**-0.5
        # A plain attribute, not a buffer: it must stay fp32 and out of state dicts.
        self.inv_freq = None if rotary_base is None else inverse_frequencies(config.kv_channels, rotary_base)

    def _tables(
        self, packed_seq_params: PackedSeqParams | None, total: int, like: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """cos/sin (total, head_dim) for this micro-batch. The tables are cached on the micro-batch's
        ``PackedSeqParams`` (the one object every layer sees), so they are built once, not per layer."""
        assert self.inv_freq is not None
        if self.inv_freq.device != like.device:  # once: a pageable host-to-device copy waits for the GPU
            self.inv_freq = self.inv_freq.to(like.device)
        if packed_seq_params is None:
            return rope_tables(torch.arange(total, device=like.device), self.inv_freq, like.dtype)
        cache: dict[Any, tuple[torch.Tensor, torch.Tensor]] = packed_seq_params.__dict__.setdefault(
            "_agentrl_rope", {}
        )
        key = (total, like.dtype, like.device)
        if key not in cache:
            positions = packed_positions(packed_seq_params.cu_seqlens_q, total)
            cache[key] = rope_tables(positions, self.inv_freq, like.dtype)
        return cache[key]

    def forward(
        self,
        query: torch.Tensor,
        key: torch.Tensor,
        value: torch.Tensor,
        attention_mask: torch.Tensor | None,
        attn_mask_type: Any = None,
        attention_bias: torch.Tensor | None = None,
        packed_seq_params: PackedSeqParams | None = None,
    ) -> torch.Tensor:
        if attention_bias is not None:
            raise ConfigError("attention bias is not supported by the fused attention")
        if self.inv_freq is not None:  # (T, heads, D) packed or (s, b, heads, D) padded: dim 0 is position
            thd = packed_seq_params is not None and packed_seq_params.qkv_format == "thd"
            cos, sin = self._tables(packed_seq_params if thd else None, query.shape[0], query)
            query, key = apply_rope(query, cos, sin), apply_rope(key, cos, sin)
        if packed_seq_params is not None and packed_seq_params.qkv_format == "thd":
            # (T, heads, D) -> (T, heads, D); Megatron reshapes it to (T, 1, heads * D).
            return varlen_causal_attention(
                query, key, value, packed_seq_params.cu_seqlens_q, packed_seq_params.max_seqlen_q, self.scale
            )
        # (s, b, heads, D) -> (b, heads, s, D) for SDPA, back to (s, b, heads * D).
        q, k, v = (x.permute(1, 2, 0, 3) for x in (query, key, value))
        out = F.scaled_dot_product_attention(
            q, k, v, is_causal=True, scale=self.scale, enable_gqa=q.shape[1] != k.shape[1]
        )
        s, b = query.shape[0], query.shape[1]
        return out.permute(2, 0, 1, 3).reshape(s, b, -1)
