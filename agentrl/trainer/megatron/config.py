"""Configuration of the Megatron-core backend, and pass-through of Megatron's own parallelism flags.

Parallelism flags keep Megatron's names (``--tensor-model-parallel-size 2``), as slime does, so a
Megatron user's command line carries over: :func:`parse_megatron_args` turns such a list into the
``parallel`` fields of :class:`MegatronBackendConfig`.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass, field, replace
from typing import Literal

from agentrl.errors import ConfigError
from agentrl.trainer.config import AlgorithmConfig, CriticConfig, OptimizerConfig, RefOffload

AttentionBackend = Literal["fused", "local", "te"]


@dataclass(frozen=True)
class ParallelConfig:
    """Megatron model parallelism; data parallelism is what remains of the world size."""

    tensor_model_parallel_size: int = 1
    """Shard each layer's matrices over this many GPUs (``--tensor-model-parallel-size``)."""
    pipeline_model_parallel_size: int = 1
    """Split the layers into this many pipeline stages (``--pipeline-model-parallel-size``)."""
    virtual_pipeline_model_parallel_size: int | None = None
    """Interleaved pipeline chunks per stage (``--virtual-pipeline-model-parallel-size``)."""
    context_parallel_size: int = 1
    """Split each sequence over this many GPUs (``--context-parallel-size``; needs attention_backend='te')."""
    sequence_parallel: bool = False
    """Shard norms/dropout activations along the sequence over the TP group (``--sequence-parallel``)."""

    def __post_init__(self) -> None:
        sizes = (
            self.tensor_model_parallel_size,
            self.pipeline_model_parallel_size,
            self.context_parallel_size,
        )
        if min(sizes) < 1:
            raise ConfigError(f"parallel sizes must be >= 1, got tp/pp/cp = {sizes}")
        if self.sequence_parallel and self.tensor_model_parallel_size == 1:
            raise ConfigError("--sequence-parallel needs --tensor-model-parallel-size > 1")


@dataclass(frozen=True)
class MegatronBackendConfig:
    """The Megatron-core training backend (GPU only)."""

    algorithm: AlgorithmConfig = field(default_factory=AlgorithmConfig)
    """Advantage / loss / KL settings (the same ones the torch backend reads)."""
    optimizer: OptimizerConfig = field(default_factory=OptimizerConfig)
    """AdamW settings; Megatron's distributed optimizer shards its state over data-parallel ranks."""
    parallel: ParallelConfig = field(default_factory=ParallelConfig)
    """Tensor / pipeline / context / sequence parallelism."""
    micro_batch_tokens: int = 8192
    """Token budget of one packed micro-batch; sequences are packed end to end (no padding) up to it.
    A sequence longer than the budget gets a micro-batch of its own."""
    recompute: Literal["none", "selective", "full"] = "none"
    """Activation recomputation: ``full`` recomputes every layer in backward (least memory),
    ``selective`` only the core attention, ``none`` keeps activations (fastest)."""
    attention_backend: AttentionBackend = "fused"
    """``fused``: FlashAttention varlen / SDPA through PyTorch (default, packs sequences); ``local``:
    Megatron's unfused attention (padded batches, for comparison); ``te``: Transformer Engine's spec
    (if installed; needed for context parallelism)."""
    logprob_chunk_tokens: int = 1024
    """Tokens per chunk of the fused logprob computation (bounds the fp32 (chunk, vocab) block)."""
    use_distributed_optimizer: bool = True
    """Shard fp32 master weights and Adam state over data-parallel ranks (ZeRO-1)."""
    grad_reduce_in_fp32: bool = True
    """All-reduce gradients in fp32 (exact accumulation over micro-batches and ranks)."""
    ref_offload: RefOffload = "auto"
    """Where the KL reference model's bf16 weights wait between reference passes: ``always`` in pinned
    host memory (copied in for each pass), ``never`` on the GPU, ``auto`` on the host when they exceed
    a tenth of the GPU memory free once the policy and its optimizer are built."""
    seed: int = 1234
    """Seed of Megatron's model-parallel RNG (initialisation of weights not loaded from HF)."""
    critic: CriticConfig = field(default_factory=CriticConfig)
    """The value model of ``ppo`` (a second model of the policy's layout and parallelism)."""

    def __post_init__(self) -> None:
        if self.micro_batch_tokens <= 0 or self.logprob_chunk_tokens <= 0:
            raise ConfigError("micro_batch_tokens and logprob_chunk_tokens must be > 0 (try 8192 and 1024)")
        if self.ref_offload not in ("auto", "always", "never"):
            raise ConfigError(f"ref_offload={self.ref_offload!r}: choose auto, always or never")
        if self.parallel.context_parallel_size > 1 and self.attention_backend != "te":
            raise ConfigError("--context-parallel-size > 1 needs attention_backend='te' (Transformer Engine)")


_FLAGS: dict[str, type] = {
    "tensor_model_parallel_size": int,
    "pipeline_model_parallel_size": int,
    "virtual_pipeline_model_parallel_size": int,
    "context_parallel_size": int,
}


def parse_megatron_args(argv: list[str], base: ParallelConfig | None = None) -> ParallelConfig:
    """Megatron-style flags (``["--tensor-model-parallel-size", "2", "--sequence-parallel"]``) ->
    :class:`ParallelConfig`. Unknown flags are an error that lists the known ones."""
    parser = argparse.ArgumentParser(prog="megatron-args", add_help=False, exit_on_error=False)
    for name, kind in _FLAGS.items():
        parser.add_argument("--" + name.replace("_", "-"), dest=name, type=kind, default=None)
    parser.add_argument("--sequence-parallel", dest="sequence_parallel", action="store_true", default=None)
    known, unknown = parser.parse_known_args(argv)
    if unknown:
        flags = ", ".join(["--" + n.replace("_", "-") for n in _FLAGS] + ["--sequence-parallel"])
        raise ConfigError(f"unknown Megatron flags {unknown}; supported: {flags}")
    given = {k: v for k, v in vars(known).items() if v is not None}
    return replace(base or ParallelConfig(), **given)
