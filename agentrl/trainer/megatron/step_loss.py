"""The policy loss of one packed micro-batch, with the whole batch's denominators.

The packed ``(T,)`` per-position outputs are scattered into the ``(B, T_max)`` right-padded layout
:func:`agentrl.trainer.losses.policy_loss` takes (the torch backend's layout), so both backends run
the same loss code. Each micro-batch's loss uses the *global* token / sequence counts, so the sum over
micro-batches (and data-parallel ranks) is the loss of the whole batch.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from agentrl.trainer.backend import TrainBatch
from agentrl.trainer.config import AlgorithmConfig
from agentrl.trainer.losses import policy_loss
from agentrl.trainer.megatron.packing import PackedMicroBatch


@dataclass(frozen=True)
class GlobalDenominators:
    """Normalisers of the whole batch (see :func:`agentrl.trainer.losses.aggregate_loss`)."""

    num_tokens: float
    """Trained (mask 1) tokens of the batch."""
    num_seqs: float
    """Sequences of the batch."""
    norm_tokens: float
    """Dr.GRPO's constant: the configured one, else the longest trained-token count."""

    @classmethod
    def of(cls, batch: TrainBatch, cfg: AlgorithmConfig) -> GlobalDenominators:
        per_seq = [float(m.sum()) for m in batch.loss_mask]
        norm = cfg.loss_norm_tokens if cfg.loss_norm_tokens is not None else max(per_seq, default=1.0)
        return cls(num_tokens=sum(per_seq), num_seqs=float(len(per_seq)), norm_tokens=float(norm))


def padded(mb: PackedMicroBatch, values: torch.Tensor) -> torch.Tensor:
    """Packed per-position (T,) -> (B, T_max) per token (batch convention: entry t from position t-1)."""
    rows = mb.unpack(values)
    out = values.new_zeros(len(rows), max(mb.lengths))
    for i, r in enumerate(rows):
        out[i, : r.numel()] = r
    return out


def _batch_rows(
    mb: PackedMicroBatch, tensors: list[torch.Tensor] | None, device: torch.device
) -> torch.Tensor | None:
    if tensors is None:
        return None
    out = torch.zeros(len(mb.seq_indices), max(mb.lengths), dtype=torch.float32)
    for row, i in enumerate(mb.seq_indices):
        out[row, : tensors[i].numel()] = tensors[i].float()
    return out.to(device)


def micro_batch_loss(
    mb: PackedMicroBatch,
    output: torch.Tensor,
    *,
    batch: TrainBatch,
    cfg: AlgorithmConfig,
    denominators: GlobalDenominators,
    scale: float,
) -> tuple[torch.Tensor, dict[str, Any]]:
    """Megatron ``loss_func``: ``output`` is the (2, T) logprob/entropy stack of the micro-batch.

    Returns ``(loss * scale, metrics)``: Megatron's schedule divides by the number of micro-batches
    and DDP averages over data-parallel ranks, so ``scale`` (= their product) undoes both.
    """
    dev = output.device
    logprobs, entropy = padded(mb, output[0]), padded(mb, output[1])  # (B, T_max)
    mask = _batch_rows(mb, batch.loss_mask, dev)
    assert mask is not None
    old = _batch_rows(mb, batch.old_logprobs, dev)
    out = policy_loss(
        logprobs,
        old if old is not None else logprobs.detach(),
        _batch_rows(mb, batch.advantages, dev),  # type: ignore[arg-type]
        mask,
        cfg,
        rollout_logprobs=_batch_rows(mb, batch.rollout_logprobs, dev),
        ref_logprobs=_batch_rows(mb, batch.ref_logprobs, dev),
        entropy=entropy,
        num_tokens=denominators.num_tokens,
        num_seqs=denominators.num_seqs,
        norm_tokens=denominators.norm_tokens,
    )
    metrics: dict[str, Any] = dict(out.metrics)
    metrics["loss"] = float(out.loss.detach().item())
    metrics["_tokens"] = float(mask.sum().item())
    return out.loss * scale, metrics
