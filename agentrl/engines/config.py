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
    num_engines: int = field(default=1, metadata={"rare": True})
    """SGLang servers to launch (training on GPUs: one embedded engine per engine bundle)."""
    sglang_urls: tuple[str, ...] = ()
    """Use these running SGLang servers (or a router) instead of launching servers."""
    sglang_python: str | None = field(default=None, metadata={"rare": True})
    """Python of the SGLang venv (default: AGENTRL_SGLANG_PYTHON or the cache venv)."""
    sglang_args: tuple[str, ...] = field(default=(), metadata={"rare": True})
    """Extra sglang.launch_server arguments (`agentrl train` also passes any --sglang-X flag as --X)."""

    def __post_init__(self) -> None:
        if self.num_engines < 1:
            raise ConfigError(f"--num-engines={self.num_engines} must be >= 1")
        if self.sglang_urls and self.engine != "sglang":
            raise ConfigError("--sglang-urls needs --engine sglang (the servers are SGLang servers)")
