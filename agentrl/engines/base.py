"""The inference-engine protocol: token ids in, token ids and logprobs out.

Implementations: :class:`agentrl.engines.sglang.engine.SGLangEngine` (SGLang servers over HTTP) and
:class:`agentrl.engines.embedded.engine.EmbeddedEngine` (in-process transformers model, the CPU default).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable


@dataclass(frozen=True)
class SamplingParams:
    """How to sample one turn."""

    max_new_tokens: int = 256
    """Upper bound of sampled tokens; the controller clamps it to what the context has left."""
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = -1
    """-1 means no top-k."""
    stop: tuple[str, ...] = ()
    """Stop strings; the stop string itself is kept in the output (as SGLang does with ``no_stop_trim``)."""
    stop_token_ids: tuple[int, ...] = ()
    """Extra stop token ids besides the model's EOS."""
    seed: int | None = None
    ignore_eos: bool = False
    """Keep sampling past the model's EOS (stop strings and ``stop_token_ids`` still stop): for
    benchmarks and for tests that need a request to run until it is aborted or hits the length cap."""


@dataclass
class GenerateOutput:
    """One generation. ``len(output_ids) == len(logprobs)``."""

    output_ids: list[int]
    logprobs: list[float]
    """Logprob of each sampled token under the sampling distribution before temperature scaling."""
    finish_reason: str
    """``"stop"`` (EOS, stop id or stop string), ``"length"`` (``max_new_tokens``) or ``"abort"``."""
    weight_version: int = 0
    meta: dict[str, Any] = field(default_factory=dict)


@runtime_checkable
class Engine(Protocol):
    """What the rollout controller and the trainer need from an inference engine."""

    async def generate(
        self, input_ids: list[int], sampling: SamplingParams, *, session_id: str | None = None
    ) -> GenerateOutput:
        """Continue ``input_ids``. Requests sharing ``session_id`` go to the same server (prefix cache)."""
        ...

    async def update_weights(self, source: Any, *, version: int) -> None:
        """Load new weights: a state dict (embedded) or an HF folder path (SGLang, from disk)."""
        ...

    async def health(self) -> bool:
        """True when the engine can serve requests."""
        ...

    async def pause(self) -> None:
        """Stop admitting new requests (in-flight ones finish or are aborted)."""
        ...

    async def resume(self) -> None:
        """Admit requests again."""
        ...

    async def abort(self, session_id: str | None = None) -> None:
        """Abort in-flight requests (of one session, or all); they return ``finish_reason="abort"``."""
        ...

    async def close(self) -> None:
        """Release servers / memory."""
        ...
