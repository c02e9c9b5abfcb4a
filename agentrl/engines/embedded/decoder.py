"""The math of one decoder layer of the Llama family (Llama, Qwen2, Qwen3), on flat token rows.

Why not the transformers module: its forward is built for generality (cache objects, mask builders,
hooks) and costs hundreds of small launches and host work per step; the CUDA path wants pure
functions of tensors it can compile (fusing norms, RoPE and SwiGLU into few kernels) and capture in a
CUDA graph. The functions here read the *same* parameter storage as the transformers model:
:func:`bind_weights` fuses q/k/v and gate/up into single matrices and points the model's parameters
at views of them, so ``model.load_state_dict`` (a weight update) writes straight into the fused
buffers: no reallocation, and captured graphs stay valid.

Every function mirrors transformers' numerics (RMSNorm in float32 then cast, RoPE in the model dtype
with its ``rotate_half`` layout), so logprobs match a teacher-forced transformers forward.
Shapes: ``N`` flat tokens, ``Hq``/``Hkv`` query/KV heads, ``D`` head dim.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from agentrl.engines.embedded.attention import decode_attention, prefill_attention_bmm

SUPPORTED = ("llama", "qwen2", "qwen3")
"""``model_type`` s whose layers :func:`bind_weights` understands."""


@dataclass(frozen=True)
class Spec:
    """Sizes of the served model."""

    layers: int
    hidden: int
    heads: int
    kv_heads: int
    head_dim: int
    vocab: int
    eps: float


@dataclass
class LayerWeights:
    """One layer's parameters; ``qkv`` and ``gate_up`` are the fused matrices the model's own
    ``q/k/v_proj`` and ``gate/up_proj`` parameters are views of."""

    ln1: torch.Tensor
    qkv: torch.Tensor
    qkv_bias: torch.Tensor | None
    o: torch.Tensor
    ln2: torch.Tensor
    gate_up: torch.Tensor
    down: torch.Tensor
    q_norm: torch.Tensor | None
    k_norm: torch.Tensor | None


@dataclass
class Weights:
    """The whole model's parameters plus a RoPE table (cos and sin of every position)."""

    spec: Spec
    embed: torch.Tensor
    layers: list[LayerWeights]
    norm: torch.Tensor
    lm_head: torch.Tensor
    cos: torch.Tensor  # (L, D), model dtype
    sin: torch.Tensor  # (L, D)
    bindings: list[tuple[torch.nn.Parameter, torch.Tensor]]
    """Each model parameter and the device tensor the graphs read (its ``.data`` at binding time)."""


def rebind(w: Weights) -> bool:
    """Re-point the model's parameters at the tensors the graphs read, copying their current values
    in, when something replaced their storage (``model.to("cpu")`` and back, as the colocated memory
    release does). True when it had to. Cheap when nothing moved: one pointer comparison."""
    param, tensor = w.bindings[0]
    if param.data.data_ptr() == tensor.data_ptr():
        return False
    with torch.no_grad():
        for param, tensor in w.bindings:
            if param.data.data_ptr() != tensor.data_ptr():
                tensor.copy_(param.data)
                param.data = tensor
    return True


def supports(model: Any) -> bool:
    """True when ``model`` is a decoder :func:`bind_weights` can serve (others take the HF path)."""
    return getattr(model.config, "model_type", None) in SUPPORTED and hasattr(model, "model")


def _fuse(linears: list[Any], attr: str) -> torch.Tensor | None:
    """Concatenate ``attr`` of ``linears`` along dim 0 and re-point each parameter at its slice."""
    parts = [getattr(m, attr) for m in linears]
    if any(p is None for p in parts):
        return None
    fused = torch.cat([p.data for p in parts], dim=0)
    start = 0
    for p in parts:
        n = p.shape[0]
        p.data = fused[start : start + n]
        start += n
    return fused


def bind_weights(model: Any, max_positions: int) -> Weights:
    """Fuse ``model``'s projections in place (see the module docstring) and gather its weights."""
    cfg, inner = model.config, model.model
    heads = int(cfg.num_attention_heads)
    head_dim = int(getattr(cfg, "head_dim", None) or cfg.hidden_size // heads)
    spec = Spec(
        layers=int(cfg.num_hidden_layers),
        hidden=int(cfg.hidden_size),
        heads=heads,
        kv_heads=int(getattr(cfg, "num_key_value_heads", None) or heads),
        head_dim=head_dim,
        vocab=int(cfg.vocab_size),
        eps=float(cfg.rms_norm_eps),
    )
    layers = []
    for layer in inner.layers:
        att, mlp = layer.self_attn, layer.mlp
        qkv = _fuse([att.q_proj, att.k_proj, att.v_proj], "weight")
        gate_up = _fuse([mlp.gate_proj, mlp.up_proj], "weight")
        assert qkv is not None and gate_up is not None
        q_norm, k_norm = getattr(att, "q_norm", None), getattr(att, "k_norm", None)
        layers.append(
            LayerWeights(
                ln1=layer.input_layernorm.weight.data,
                qkv=qkv,
                qkv_bias=_fuse([att.q_proj, att.k_proj, att.v_proj], "bias"),
                o=att.o_proj.weight.data,
                ln2=layer.post_attention_layernorm.weight.data,
                gate_up=gate_up,
                down=mlp.down_proj.weight.data,
                q_norm=None if q_norm is None else q_norm.weight.data,
                k_norm=None if k_norm is None else k_norm.weight.data,
            )
        )
    embed = inner.embed_tokens.weight.data
    positions = torch.arange(max_positions, device=embed.device).unsqueeze(0)  # (1, L)
    cos, sin = inner.rotary_emb(embed[:1], positions)  # each (1, L, D), model dtype
    bindings = [(p, p.data) for p in model.parameters()]  # unique parameters (tied ones once)
    head = model.lm_head.weight.data
    return Weights(spec, embed, layers, inner.norm.weight.data, head, cos[0], sin[0], bindings)


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """transformers' RMSNorm: normalise in float32, cast back, then scale."""
    h = x.float()
    h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + eps)
    return weight * h.to(x.dtype)


def _rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """RoPE in transformers' ``rotate_half`` layout. x: (N, H, D); cos, sin: (N, 1, D)."""
    half = x.shape[-1] // 2
    rotated = torch.cat((-x[..., half:], x[..., :half]), dim=-1)
    return x * cos + rotated * sin


def attention_inputs(
    x: torch.Tensor,
    ln1: torch.Tensor,
    qkv: torch.Tensor,
    qkv_bias: torch.Tensor | None,
    q_norm: torch.Tensor | None,
    k_norm: torch.Tensor | None,
    cos: torch.Tensor,
    sin: torch.Tensor,
    heads: int,
    kv_heads: int,
    eps: float,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Norm, fused q/k/v projection, optional q/k norms, RoPE.

    Args:
        x: (N, hidden) residual stream.
        cos, sin: (N, D) RoPE rows of each token's position.
    Returns:
        q (N, Hq, D), k (N, Hkv, D), v (N, Hkv, D).
    """
    n, d = x.shape[0], cos.shape[-1]
    out = F.linear(rms_norm(x, ln1, eps), qkv, qkv_bias)  # (N, (Hq + 2 Hkv) D)
    q, k, v = out.split([heads * d, kv_heads * d, kv_heads * d], dim=-1)
    q, k, v = q.view(n, heads, d), k.view(n, kv_heads, d), v.view(n, kv_heads, d)
    if q_norm is not None and k_norm is not None:
        q, k = rms_norm(q, q_norm, eps), rms_norm(k, k_norm, eps)
    c, s = cos.unsqueeze(1), sin.unsqueeze(1)
    return _rotate(q, c, s), _rotate(k, c, s), v


def attention_output_and_mlp(
    x: torch.Tensor,
    attn: torch.Tensor,
    o: torch.Tensor,
    ln2: torch.Tensor,
    gate_up: torch.Tensor,
    down: torch.Tensor,
    eps: float,
) -> torch.Tensor:
    """Output projection, residual, norm, SwiGLU MLP, residual. x: (N, hidden); attn: (N, Hq D)."""
    x = x + F.linear(attn, o)
    gate, up = F.linear(rms_norm(x, ln2, eps), gate_up).chunk(2, dim=-1)  # each (N, I)
    return x + F.linear(F.silu(gate) * up, down)


def final_logits(x: torch.Tensor, norm: torch.Tensor, lm_head: torch.Tensor, eps: float) -> torch.Tensor:
    """(N, hidden) -> (N, V) float32 logits."""
    return F.linear(rms_norm(x, norm, eps), lm_head).float()


def attention_inputs_kv(
    x: torch.Tensor,
    ln1: torch.Tensor,
    qkv: torch.Tensor,
    qkv_bias: torch.Tensor | None,
    q_norm: torch.Tensor | None,
    k_norm: torch.Tensor | None,
    cos: torch.Tensor,
    sin: torch.Tensor,
    heads: int,
    kv_heads: int,
    eps: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`attention_inputs` with keys and values stacked as (N, 2, Hkv, D): the layout of one
    index write into the slot cache (``kv[layer][:, rows, :, positions]``), one kernel instead of two."""
    q, k, v = attention_inputs(x, ln1, qkv, qkv_bias, q_norm, k_norm, cos, sin, heads, kv_heads, eps)
    return q, torch.stack((k, v), dim=1)


def decode_attention_and_mlp(
    x: torch.Tensor,
    q: torch.Tensor,
    keys: torch.Tensor,
    values: torch.Tensor,
    bias: torch.Tensor,
    o: torch.Tensor,
    ln2: torch.Tensor,
    gate_up: torch.Tensor,
    down: torch.Tensor,
    scale: float,
    eps: float,
) -> torch.Tensor:
    """A decode step's attention (:func:`~agentrl.engines.embedded.attention.decode_attention`) and the
    rest of the layer in one function, so a compiler fuses the length mask, softmax and cast with
    their neighbours. x: (B, hidden); q: (B, Hq, D); keys, values: (B, Hkv, L, D); bias: (B, 1, 1, L)."""
    return attention_output_and_mlp(
        x, decode_attention(q, keys, values, bias, scale), o, ln2, gate_up, down, eps
    )


def prefill_attention_and_mlp(
    x: torch.Tensor,
    q: torch.Tensor,
    keys: torch.Tensor,
    values: torch.Tensor,
    bias: torch.Tensor,
    o: torch.Tensor,
    ln2: torch.Tensor,
    gate_up: torch.Tensor,
    down: torch.Tensor,
    scale: float,
    eps: float,
) -> torch.Tensor:
    """A prefill chunk's attention (:func:`~agentrl.engines.embedded.attention.prefill_attention_bmm`)
    and the rest of the layer in one function: with the mask built once per chunk, a layer of a prefill
    is two compiled calls and one index write, not a dozen eager launches (a prefill of a few short
    turns is host-bound). x: (n T, hidden); q: (n, T, Hq, D); keys, values: (n, Hkv, L, D);
    bias: (n, 1, 1, T, L)."""
    return attention_output_and_mlp(
        x, prefill_attention_bmm(q, keys, values, bias, scale), o, ln2, gate_up, down, eps
    )
