"""Build a megatron-core ``GPTModel`` from a Hugging Face config (Llama / SmolLM2, Qwen2 / 2.5, Qwen3).

The layer spec is Megatron's local spec (no Transformer Engine or Apex needed) with its core attention
swapped for :class:`~agentrl.trainer.megatron.attention.FusedCoreAttention`, so packed sequences run
through FlashAttention's varlen kernel, and with RoPE applied there in one vectorised pass per layer
(Megatron's own rotary then stays off: its packed path loops over sequences). The norms are
:class:`~agentrl.trainer.megatron.norm.HFRMSNorm` (transformers' rounding order; takes an fp32
residual stream) and the SwiGLU is unfused (``silu(gate)`` rounded before the product, as in
transformers): the same rounding points as the HF model keep logprob parity with it.
``attention_backend="local"`` keeps Megatron's unfused attention and rotary (for comparison), ``"te"``
takes Transformer Engine's spec where it is installed.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from megatron.core.models.gpt import GPTModel
from megatron.core.models.gpt.gpt_layer_specs import get_gpt_layer_local_spec
from megatron.core.transformer.spec_utils import ModuleSpec
from megatron.core.transformer.transformer_block import TransformerBlockSubmodules, get_num_layers_to_build
from megatron.core.transformer.transformer_config import TransformerConfig

from agentrl.errors import ConfigError
from agentrl.trainer.megatron.attention import FusedCoreAttention
from agentrl.trainer.megatron.config import MegatronBackendConfig
from agentrl.trainer.megatron.norm import HFRMSNorm

SUPPORTED_MODEL_TYPES = ("llama", "qwen2", "qwen3")


def rope_theta(hf_config: Any) -> float:
    """RoPE base: ``rope_theta`` (transformers 4) or ``rope_parameters["rope_theta"]`` (transformers 5)."""
    params = getattr(hf_config, "rope_parameters", None) or {}
    scaling = getattr(hf_config, "rope_scaling", None) or {}
    kind = params.get("rope_type") or scaling.get("rope_type") or scaling.get("type") or "default"
    if kind != "default":
        raise ConfigError(
            f"RoPE scaling {kind!r} is not supported by the Megatron backend; use the torch backend"
        )
    theta = params.get("rope_theta", getattr(hf_config, "rope_theta", None))
    if theta is None:
        raise ConfigError("the HF config has no rope_theta; is this a Llama/Qwen config?")
    return float(theta)


def transformer_config(hf_config: Any, cfg: MegatronBackendConfig) -> TransformerConfig:
    """Megatron's ``TransformerConfig`` for an HF decoder config, with agentrl's parallelism and speed settings."""
    model_type = getattr(hf_config, "model_type", "")
    if model_type not in SUPPORTED_MODEL_TYPES:
        raise ConfigError(
            f"model_type {model_type!r} is not supported by the Megatron backend "
            f"(supported: {', '.join(SUPPORTED_MODEL_TYPES)}); use the torch backend"
        )
    heads = hf_config.num_attention_heads
    par = cfg.parallel
    recompute: dict[str, Any] = {}
    if cfg.recompute == "full":
        recompute = {
            "recompute_granularity": "full",
            "recompute_method": "uniform",
            "recompute_num_layers": 1,
        }
    elif cfg.recompute == "selective":
        recompute = {"recompute_granularity": "selective", "recompute_modules": ["core_attn"]}
    return TransformerConfig(
        num_layers=hf_config.num_hidden_layers,
        hidden_size=hf_config.hidden_size,
        num_attention_heads=heads,
        num_query_groups=getattr(hf_config, "num_key_value_heads", None) or heads,
        kv_channels=getattr(hf_config, "head_dim", None) or hf_config.hidden_size // heads,
        ffn_hidden_size=hf_config.intermediate_size,
        normalization="RMSNorm",
        layernorm_epsilon=hf_config.rms_norm_eps,
        gated_linear_unit=True,
        activation_func=F.silu,
        # The fused (scripted) SwiGLU keeps silu(gate) unrounded; transformers rounds it to bf16.
        bias_activation_fusion=cfg.attention_backend == "te",
        add_bias_linear=False,
        add_qkv_bias=model_type == "qwen2" or bool(getattr(hf_config, "attention_bias", False)),
        qk_layernorm=model_type == "qwen3",
        hidden_dropout=0.0,
        attention_dropout=0.0,
        init_method_std=getattr(hf_config, "initializer_range", 0.02),
        bf16=True,
        params_dtype=torch.bfloat16,
        pipeline_dtype=torch.bfloat16,
        tensor_model_parallel_size=par.tensor_model_parallel_size,
        pipeline_model_parallel_size=par.pipeline_model_parallel_size,
        virtual_pipeline_model_parallel_size=par.virtual_pipeline_model_parallel_size,
        context_parallel_size=par.context_parallel_size,
        sequence_parallel=par.sequence_parallel,
        variable_seq_lengths=True,
        # Megatron validates the (unused, dense model) MoE dispatcher against variable lengths.
        moe_token_dispatcher_type="alltoall",
        masked_softmax_fusion=False,
        gradient_accumulation_fusion=False,
        apply_rope_fusion=cfg.attention_backend == "te",
        **recompute,
    )


def layer_spec(
    config: TransformerConfig, cfg: MegatronBackendConfig, theta: float, vp_stage: int | None = None
) -> ModuleSpec | TransformerBlockSubmodules:
    """The decoder spec for ``cfg.attention_backend``: TE's layer spec, or the local one with our
    norms (final norm included, hence block submodules) and, for ``fused``, our core attention with
    RoPE inside (base ``theta``)."""
    if cfg.attention_backend == "te":
        try:
            from megatron.core.models.gpt.gpt_layer_specs import get_gpt_layer_with_transformer_engine_spec

            return get_gpt_layer_with_transformer_engine_spec(qk_layernorm=config.qk_layernorm)
        except (ImportError, AssertionError) as e:
            raise ConfigError(f"attention_backend='te' needs transformer-engine ({e}); use 'fused'") from e
    spec = get_gpt_layer_local_spec(qk_layernorm=config.qk_layernorm, normalization="RMSNorm")
    layer, attention = spec.submodules, spec.submodules.self_attention.submodules
    layer.input_layernorm = layer.pre_mlp_layernorm = HFRMSNorm
    if config.qk_layernorm:
        attention.q_layernorm = attention.k_layernorm = HFRMSNorm
    if cfg.attention_backend == "fused":
        attention.core_attention = ModuleSpec(module=FusedCoreAttention, params={"rotary_base": theta})
    layers = get_num_layers_to_build(config, vp_stage=vp_stage)
    return TransformerBlockSubmodules(layer_specs=[spec] * layers, layer_norm=HFRMSNorm)


def build_gpt_model(
    hf_config: Any,
    cfg: MegatronBackendConfig,
    *,
    pre_process: bool = True,
    post_process: bool = True,
    vp_stage: int | None = None,
) -> GPTModel:
    """One (pipeline stage of a) GPTModel on the current CUDA device, weights randomly initialised."""
    config = transformer_config(hf_config, cfg)
    tp = cfg.parallel.tensor_model_parallel_size
    if hf_config.vocab_size % tp:
        raise ConfigError(
            f"vocab size {hf_config.vocab_size} is not divisible by --tensor-model-parallel-size {tp}"
        )
    kwargs: dict[str, Any] = {"vp_stage": vp_stage} if vp_stage is not None else {}
    theta = rope_theta(hf_config)
    return GPTModel(
        config=config,
        transformer_layer_spec=layer_spec(config, cfg, theta, vp_stage),
        vocab_size=hf_config.vocab_size,
        max_sequence_length=hf_config.max_position_embeddings,
        pre_process=pre_process,
        post_process=post_process,
        share_embeddings_and_output_weights=bool(getattr(hf_config, "tie_word_embeddings", False)),
        # fused: RoPE is applied inside FusedCoreAttention, vectorised over the pack.
        position_embedding_type="none" if cfg.attention_backend == "fused" else "rope",
        rotary_base=theta,
        rotary_percent=1.0,
        **kwargs,
    )
