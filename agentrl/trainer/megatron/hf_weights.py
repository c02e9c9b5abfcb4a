"""Hugging Face <-> Megatron-core weight names and layouts for Llama / Qwen2 / Qwen2.5 / Qwen3.

Pure tensor code (no megatron import), so the mapping is unit-tested on CPU.

Why not mbridge: mbridge's tables name the Transformer Engine layer spec (layer norms fused into the
next linear: ``linear_qkv.layer_norm_weight``), and it reads ``hf_config.rope_theta``, which
transformers 5 moved into ``rope_parameters``. agentrl builds the model on the local spec with its own
attention module, whose norms are separate modules (``input_layernorm``, ``pre_mlp_layernorm``), so the
names differ; the fused layouts below are the same ones mbridge converts.

Megatron layouts that differ from HF:

- ``linear_qkv.weight`` ``((nq + 2 nkv) d, h)`` is grouped by KV head: for each query group ``g`` the
  ``nq/nkv`` query heads of the group, then the group's key head, then its value head. Tensor
  parallelism splits it by whole groups along dim 0.
- ``linear_fc1.weight`` ``(2 f, h)`` is ``[gate; up]`` *per tensor-parallel shard*: rank ``r`` holds
  ``[gate_r; up_r]``, so the full tensor of TP size ``t`` interleaves ``t`` gate and up blocks.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

import torch

from agentrl.errors import CheckpointError


@dataclass(frozen=True)
class Layout:
    """The shapes the fused layouts depend on (from the HF config)."""

    num_heads: int
    """Query heads."""
    num_kv_heads: int
    """Key/value heads (query groups)."""
    head_dim: int
    """Channels per head."""
    tied_embeddings: bool
    """``lm_head`` shares the embedding matrix (no ``output_layer.weight`` in Megatron)."""

    @classmethod
    def from_hf_config(cls, hf_config: object) -> Layout:
        heads = int(hf_config.num_attention_heads)  # type: ignore[attr-defined]
        hidden = int(hf_config.hidden_size)  # type: ignore[attr-defined]
        head_dim = getattr(hf_config, "head_dim", None) or hidden // heads
        kv = getattr(hf_config, "num_key_value_heads", None) or heads
        tied = bool(getattr(hf_config, "tie_word_embeddings", False))
        return cls(num_heads=heads, num_kv_heads=int(kv), head_dim=int(head_dim), tied_embeddings=tied)


_LAYER = re.compile(r"^decoder\.layers\.(\d+)\.(.+)$")
_HF_LAYER = "model.layers.{i}."
# Megatron per-layer suffix -> HF per-layer suffixes (more than one: fused on the Megatron side).
_LAYER_MAP: dict[str, tuple[str, ...]] = {
    "input_layernorm.weight": ("input_layernorm.weight",),
    "self_attention.linear_qkv.weight": (
        "self_attn.q_proj.weight",
        "self_attn.k_proj.weight",
        "self_attn.v_proj.weight",
    ),
    "self_attention.linear_qkv.bias": (
        "self_attn.q_proj.bias",
        "self_attn.k_proj.bias",
        "self_attn.v_proj.bias",
    ),
    "self_attention.q_layernorm.weight": ("self_attn.q_norm.weight",),
    "self_attention.k_layernorm.weight": ("self_attn.k_norm.weight",),
    "self_attention.linear_proj.weight": ("self_attn.o_proj.weight",),
    "pre_mlp_layernorm.weight": ("post_attention_layernorm.weight",),
    "mlp.linear_fc1.weight": ("mlp.gate_proj.weight", "mlp.up_proj.weight"),
    "mlp.linear_fc2.weight": ("mlp.down_proj.weight",),
}
_GLOBAL_MAP: dict[str, tuple[str, ...]] = {
    "embedding.word_embeddings.weight": ("model.embed_tokens.weight",),
    "decoder.final_layernorm.weight": ("model.norm.weight",),
    "output_layer.weight": ("lm_head.weight",),
}
# Dim along which tensor parallelism splits each Megatron parameter (absent: replicated).
_TP_DIM: dict[str, int] = {
    "self_attention.linear_qkv.weight": 0,
    "self_attention.linear_qkv.bias": 0,
    "self_attention.linear_proj.weight": 1,
    "mlp.linear_fc1.weight": 0,
    "mlp.linear_fc2.weight": 1,
    "embedding.word_embeddings.weight": 0,
    "output_layer.weight": 0,
}


def hf_names(mcore_name: str) -> tuple[str, ...]:
    """The HF parameter names one Megatron parameter (global layer numbering) holds."""
    if mcore_name in _GLOBAL_MAP:
        return _GLOBAL_MAP[mcore_name]
    match = _LAYER.match(mcore_name)
    if match is None or match.group(2) not in _LAYER_MAP:
        raise CheckpointError(
            f"no HF name for Megatron parameter {mcore_name!r}: only Llama / Qwen2 / Qwen3 dense "
            "decoders on the local layer spec are mapped (see agentrl/trainer/megatron/hf_weights.py)"
        )
    prefix = _HF_LAYER.format(i=match.group(1))
    return tuple(prefix + s for s in _LAYER_MAP[match.group(2)])


def tp_split_dim(mcore_name: str) -> int | None:
    """The dim tensor parallelism shards ``mcore_name`` along, or None when every rank holds all of it."""
    match = _LAYER.match(mcore_name)
    key = match.group(2) if match else mcore_name
    return _TP_DIM.get(key)


def fuse_qkv(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, layout: Layout) -> torch.Tensor:
    """HF q/k/v projections (weights ``(n d, h)`` or biases ``(n d,)``) -> Megatron's grouped QKV."""
    groups, per_group, d = layout.num_kv_heads, layout.num_heads // layout.num_kv_heads, layout.head_dim
    rest = q.shape[1:]
    qg = q.reshape(groups, per_group * d, *rest)
    kg = k.reshape(groups, d, *rest)
    vg = v.reshape(groups, d, *rest)
    return torch.cat([qg, kg, vg], dim=1).reshape(-1, *rest)


def split_qkv(qkv: torch.Tensor, layout: Layout) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Inverse of :func:`fuse_qkv`."""
    groups, per_group, d = layout.num_kv_heads, layout.num_heads // layout.num_kv_heads, layout.head_dim
    rest = qkv.shape[1:]
    grouped = qkv.reshape(groups, (per_group + 2) * d, *rest)
    q, k, v = torch.split(grouped, [per_group * d, d, d], dim=1)
    return q.reshape(-1, *rest), k.reshape(-1, *rest), v.reshape(-1, *rest)


def fuse_gate_up(gate: torch.Tensor, up: torch.Tensor, tp_size: int) -> torch.Tensor:
    """HF gate/up ``(f, h)`` -> Megatron's full fc1: ``[gate_0; up_0; gate_1; up_1; ...]`` over TP ranks."""
    blocks = [t for pair in zip(gate.chunk(tp_size), up.chunk(tp_size), strict=True) for t in pair]
    return torch.cat(blocks, dim=0)


def split_gate_up(fc1: torch.Tensor, tp_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Inverse of :func:`fuse_gate_up`."""
    pairs = [shard.chunk(2) for shard in fc1.chunk(tp_size)]
    return torch.cat([g for g, _ in pairs]), torch.cat([u for _, u in pairs])


def to_hf(
    mcore_name: str, full: torch.Tensor, layout: Layout, tp_size: int
) -> list[tuple[str, torch.Tensor]]:
    """One full (TP-gathered) Megatron tensor -> its HF tensors."""
    names = hf_names(mcore_name)
    if "linear_qkv" in mcore_name:
        return list(zip(names, split_qkv(full, layout), strict=True))
    if mcore_name.endswith("linear_fc1.weight"):
        return list(zip(names, split_gate_up(full, tp_size), strict=True))
    return [(names[0], full)]


def from_hf(mcore_name: str, hf: dict[str, torch.Tensor], layout: Layout, tp_size: int) -> torch.Tensor:
    """The full Megatron tensor for ``mcore_name`` from HF tensors (``lm_head`` falls back to the
    embedding when the checkpoint ties them)."""
    names = hf_names(mcore_name)
    if names == ("lm_head.weight",) and "lm_head.weight" not in hf:
        names = ("model.embed_tokens.weight",)
    missing = [n for n in names if n not in hf]
    if missing:
        raise CheckpointError(f"HF checkpoint lacks {missing} (needed for Megatron {mcore_name!r})")
    parts = [hf[n] for n in names]
    if "linear_qkv" in mcore_name:
        return fuse_qkv(parts[0], parts[1], parts[2], layout)
    if mcore_name.endswith("linear_fc1.weight"):
        return fuse_gate_up(parts[0], parts[1], tp_size)
    return parts[0]


def shard(mcore_name: str, full: torch.Tensor, tp_rank: int, tp_size: int) -> torch.Tensor:
    """This TP rank's slice of a full Megatron tensor."""
    dim = tp_split_dim(mcore_name)
    if dim is None or tp_size == 1:
        return full
    if full.shape[dim] % tp_size:
        raise CheckpointError(
            f"{mcore_name} has {full.shape[dim]} rows along dim {dim}, not divisible by tensor-parallel "
            f"size {tp_size}; choose a --tensor-model-parallel-size that divides it"
        )
    return full.chunk(tp_size, dim=dim)[tp_rank]


def unshard(mcore_name: str, shards: list[torch.Tensor]) -> torch.Tensor:
    """Concatenate the TP shards of one Megatron tensor (inverse of :func:`shard`)."""
    dim = tp_split_dim(mcore_name)
    if dim is None or len(shards) == 1:
        return shards[0]
    return torch.cat(shards, dim=dim)


def mcore_to_hf_state_dict(
    full_tensors: Iterable[tuple[str, torch.Tensor]], layout: Layout, tp_size: int
) -> Iterator[tuple[str, torch.Tensor]]:
    """Full Megatron tensors (global layer numbers) -> HF-named tensors, lazily."""
    for name, tensor in full_tensors:
        if name == "output_layer.weight" and layout.tied_embeddings:
            continue
        yield from to_hf(name, tensor, layout, tp_size)
