"""`EmbeddedEngineConfig`: how the in-process engine loads, batches and which path it runs; and
`RunnerOptions`, what that config decides for the CUDA fast path's runner."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal


@dataclass(frozen=True)
class EmbeddedEngineConfig:
    """How the in-process engine loads and batches."""

    device: str = "auto"
    """``"auto"`` (one CUDA GPU if present, else CPU), ``"cpu"`` or ``"cuda:N"``."""
    dtype: str = "auto"
    """``"auto"`` (float32 on CPU, bfloat16 on GPU), ``"float32"``, ``"bfloat16"`` or ``"float16"``."""
    max_batch_size: int = 64
    """Most requests decoded together."""
    batch_wait_ms: float = 5.0
    """When idle, how long the worker waits for more requests after the first one before it starts
    decoding (later ones join the running batch at the next step anyway)."""
    seed: int = 0
    """Seed of the engine's sampler for requests without their own ``seed``."""
    logprobs: Literal["sampling", "original"] = "original"
    """``"original"``: of the raw logits (the Engine contract); ``"sampling"``: after temperature
    (SGLang's default without ``SGLANG_RETURN_ORIGINAL_LOGPROB``)."""
    prefix_cache_mb: int = 1024
    """Memory for the KV of finished turns and prompts (least recently used dropped first): the next
    turn of an episode and the other samples of a group prefill only the ids it does not cover.
    SmolLM2-135M in float32 takes 46 KB per token. 0 turns the prefix cache off."""
    fast_path: bool | None = None
    """The compiled, graph-captured path (:mod:`agentrl.engines.embedded.cuda_runner`): ``None`` uses it
    on CUDA for the Llama family (Llama, Qwen2, Qwen3) and the transformers path otherwise; ``True``
    forces it (on the CPU it runs eagerly: for tests); ``False`` keeps the transformers path."""
    mem_fraction_static: float = 0.85
    """Fast path: weights plus KV cache take at most this fraction of the GPU's memory (as SGLang's
    option of that name); the KV slots not needed by running rows hold the prefix cache."""
    max_seq_len: int = 8192
    """Fast path: the most tokens (prompt plus output) of one request; longer prompts are refused."""
    cuda_graphs: bool = True
    """Fast path: capture decode steps as CUDA graphs (off: eager launches, for debugging)."""
    decode_attention: Literal["bmm", "sdpa", "fused"] = "fused"
    """Fast path: decode attention as two batched products and a softmax compiled together with the
    rest of each layer, keys and values written by one index write (``"fused"``, the default: on an
    H200, 84k sampled tokens/s for SmolLM2-135M at batch 256 against 77k for ``"bmm"``, bench/RESULTS.md);
    ``"bmm"`` the same math with the attention uncompiled; ``"sdpa"`` one SDPA call per layer (measured
    no faster than ``"bmm"``)."""
    fused_prefill_mb: float = 64.0
    """Fast path: a prefill chunk whose float32 attention scores (rows x heads x new ids x keys) take
    more than this many MB runs SDPA (flash / memory-efficient kernels) instead of the fused batched
    products, which materialise the scores. On an H200 a chunk of 128 rows x 128 new ids (75 MB of
    SmolLM2 scores) took 109 ms of prefill fused and 38-49 ms with SDPA (bench/RESULTS.md, session 7);
    small chunks (a Search-R1 turn's few rows) stay fused, where the fused path's fewer host calls pay."""
    admit_wait_steps: int = 8
    """Fast path: while requests decode, newly arrived ones wait up to this many decode steps (less if
    they fill the free rows) so that they are prefilled together: a prefill's host cost hardly depends
    on how many requests it holds. 0 admits at every step. On an H200, a Search-R1 rollout of 64 episodes
    (base SmolLM2-135M, 4 turns): 1.5-2.5 s with 8 (35-39 prefills), 2.6-4.0 s with 0 (~120 prefills)."""
    compile: bool = True
    """Fast path: ``torch.compile`` the norms, RoPE, SwiGLU and masked softmax into fused kernels."""
    num_threads: int | None = None
    """CPU threads of the worker's torch ops; ``None``: half the cores, at most 8. Oversubscribing a
    busy machine makes OpenMP threads spin: measured 40x slower with 2 threads on 2 shared cores."""


MAX_STOP_IDS = 8
"""Stop ids per row checked on the device (EOS ids included); a request with more is refused."""


@dataclass(frozen=True)
class RunnerOptions:
    """What the engine's config decides for the runner."""

    rows: int
    max_len: int
    mem_fraction: float
    prefix_cache: bool
    graphs: bool
    compile: bool
    original_logprobs: bool
    attention: str = "fused"
    """Decode attention: ``"bmm"`` (two batched products and a softmax; measured), ``"sdpa"`` (one
    fused SDPA call per layer) or ``"fused"`` (the bmm math compiled together with the rest of the
    layer, keys and values written by one index write)."""
    prefill_score_bytes: int = 1 << 28
    """A fused-attention prefill chunk materialises its (n, Hq, T, L) float32 scores; above this many bytes
    the chunk takes SDPA (flash / memory-efficient kernels) instead."""
    prefill_tokens: int = 16384
    """Most ids (rows x padded chunk) in one prefill forward: bounds its activation memory."""
