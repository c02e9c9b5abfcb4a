"""What the embedded engine's schedulers share: a request in flight, and the engine as they see it.

Why a module of its own: the transformers path (engine.py) and the fast path (cuda_batcher.py) both
advance and resolve the same requests, and the fast path reads a few of the engine's settings; keeping
these here lets the engine import the fast path without the fast path importing the engine.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any, Protocol

import torch

from agentrl.engines.base import GenerateOutput, SamplingParams
from agentrl.engines.embedded.config import EmbeddedEngineConfig


@dataclass(eq=False)
class Request:
    """One generate() call on its way through the worker: its ids, what was sampled, its future."""

    input_ids: list[int]
    sampling: SamplingParams
    session_id: str | None
    loop: asyncio.AbstractEventLoop
    future: asyncio.Future[GenerateOutput]
    output_ids: list[int] = field(default_factory=list)
    logprobs: list[float] = field(default_factory=list)
    aborted: bool = False
    generator: torch.Generator | None = None
    finish_reason: str | None = None
    cached_tokens: int = 0
    """Prompt ids whose KV came from the prefix store (not prefilled again)."""
    versions: list[int] = field(default_factory=list)
    """The weight version that sampled each output id (a weight update mid-request changes it)."""

    @property
    def key(self) -> str:
        """Prefix-store key: the session (the next turn extends this one), else this request alone."""
        return self.session_id if self.session_id is not None else f"request-{id(self)}"

    def finish(self, reason: str, version: int) -> bool:
        self.finish_reason = reason
        self.resolve(reason, version)
        return True

    def resolve(self, finish_reason: str, version: int, error: Exception | None = None) -> None:
        """Settle the future. ``weight_version`` is the oldest version that sampled an output id
        (``version``, the engine's, when none was sampled); ``meta["token_versions"]`` lists one per
        id when a weight update came mid-request (a partial rollout, docs/async.md)."""
        meta: dict[str, Any] = {"cached_tokens": self.cached_tokens}
        if len(set(self.versions)) > 1:
            meta["token_versions"] = list(self.versions)
        out = GenerateOutput(
            list(self.output_ids),
            list(self.logprobs),
            finish_reason,
            weight_version=min(self.versions, default=version),
            meta=meta,
        )

        def settle() -> None:
            if self.future.done():
                return
            if error is not None:
                self.future.set_exception(error)
            else:
                self.future.set_result(out)

        if not self.loop.is_closed():
            self.loop.call_soon_threadsafe(settle)


class EngineView(Protocol):
    """The parts of :class:`agentrl.engines.embedded.engine.EmbeddedEngine` the fast path reads."""

    config: EmbeddedEngineConfig
    model: Any
    device: torch.device
    tokenizer: Any
    max_context: int
    eos_ids: frozenset[int]
    generator: torch.Generator
    weight_version: int

    def _count(self, **amounts: float) -> None:
        """Add to the engine's stats counters."""
        ...
