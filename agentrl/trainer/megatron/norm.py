"""RMSNorm for the Megatron layer spec, with transformers' precision choices (no megatron import).

Megatron's local spec uses ``torch.nn.RMSNorm``, which multiplies by the weight before rounding and
cannot take an fp32 residual stream with bf16 weights. This norm normalises in fp32, rounds to the
weight's dtype, then multiplies by the weight — Qwen2/Llama ``RMSNorm`` in transformers does exactly
that — so its output is in the weight's dtype even when its input is fp32.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F


class HFRMSNorm(torch.nn.Module):
    """Drop-in for Megatron's norm builders: ``(config, hidden_size, eps)``; the weight is ``weight``."""

    def __init__(self, config: Any, hidden_size: int, eps: float = 1e-6, **_: Any) -> None:
        super().__init__()
        self.weight = torch.nn.Parameter(torch.ones(hidden_size, dtype=config.params_dtype))
        # Megatron all-reduces the gradients of parameters marked so over the TP group.
        self.weight.sequence_parallel = bool(config.sequence_parallel)  # type: ignore[attr-defined]
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        normed = F.rms_norm(x.float(), (x.shape[-1],), eps=self.eps)
        return self.weight * normed.to(self.weight.dtype)
