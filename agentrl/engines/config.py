"""Which inference engine a command uses, and where: one config shared by train, eval and rollout."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from agentrl.errors import ConfigError


@dataclass(frozen=True)
class EngineConfig:
    """The inference engine of a run (`agentrl train`, `agentrl eval`, `agentrl rollout` share the flags)."""

    engine: Literal["embedded", "sglang"] = "embedded"
    """Inference engine: in-process transformers (the default where SGLang is absent) or SGLang servers."""
    device: str = field(default="auto", metadata={"rare": True, "flag": "engine-device"})
    """Embedded engine device: ``auto`` (one CUDA GPU if present, else CPU), ``cpu`` or ``cuda:N``."""
    dtype: str = field(default="auto", metadata={"rare": True, "flag": "engine-dtype"})
    """Embedded engine weights and activations: ``auto`` (bfloat16 on CUDA, float32 on CPU), ``float32``,
    ``bfloat16`` or ``float16``. On a CPU with AVX-512 BF16 or AMX, ``bfloat16`` decodes about 1.5x
    faster than float32 (2-core EPYC); its logprobs then differ from an fp32 trainer's by bf16 rounding,
    which an off-policy correction (--tis-cap) absorbs."""
    threads: int | None = field(default=None, metadata={"rare": True, "flag": "engine-threads"})
    """CPU threads of the embedded engine's model (default: half the cores, at most 8, so a trainer or
    other work beside it keeps cores). Where the engine runs alone (`agentrl eval`, or training with
    --async-mode off, whose phases take turns), every core is faster: 2 threads decoded 1.4x faster
    than 1 on a 2-core machine."""
    num_engines: int = field(default=1, metadata={"rare": True})
    """SGLang servers to launch (training on GPUs: one embedded engine per engine bundle)."""
    sglang_urls: tuple[str, ...] = ()
    """Use these running SGLang servers (or a router) instead of launching servers."""
    sglang_python: str | None = field(default=None, metadata={"rare": True})
    """Python of the SGLang venv (default: AGENTRL_SGLANG_PYTHON or the cache venv)."""
    sglang_args: tuple[str, ...] = field(default=(), metadata={"rare": True})
    """Extra sglang.launch_server arguments (`agentrl train` also passes any --sglang-X flag as --X)."""

    def __post_init__(self) -> None:
        if self.dtype not in ("auto", "float32", "bfloat16", "float16"):
            raise ConfigError(f"--engine-dtype={self.dtype!r} is not one of auto, float32, bfloat16, float16")
        if self.threads is not None and self.threads < 1:
            raise ConfigError(f"--engine-threads={self.threads} must be >= 1 (or left out: half the cores)")
        if self.num_engines < 1:
            raise ConfigError(f"--num-engines={self.num_engines} must be >= 1")
        if self.sglang_urls and self.engine != "sglang":
            raise ConfigError("--sglang-urls needs --engine sglang (the servers are SGLang servers)")
