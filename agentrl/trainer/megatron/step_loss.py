"""The policy loss (and the critic's value loss) of one packed micro-batch, with the whole batch's
denominators.

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
from agentrl.trainer.device_copy import to_device
from agentrl.trainer.losses import policy_loss, value_loss
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


def padded_index(mb: PackedMicroBatch) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, T_max) index into the packed positions and its validity mask, for :func:`padded`."""
    width = max(mb.lengths)
    t = torch.arange(width)
    starts = torch.tensor([0, *mb.lengths[:-1]]).cumsum(0)
    valid = (t[None, :] >= 1) & (t[None, :] < torch.tensor(mb.lengths)[:, None])
    return (starts[:, None] + t[None, :] - 1).clamp(min=0) * valid, valid


def padded(
    mb: PackedMicroBatch, values: torch.Tensor, index: tuple[torch.Tensor, torch.Tensor]
) -> torch.Tensor:
    """Packed per-position (T,) -> (B, T_max) per token (batch convention: entry t from position t-1),
    one gather instead of a copy per sequence."""
    idx, valid = index
    return values[idx] * valid


def _batch_rows(
    mb: PackedMicroBatch, fields: list[list[torch.Tensor] | None], device: torch.device
) -> list[torch.Tensor | None]:
    """The batch's per-token fields of this micro-batch's sequences, right-padded (B, T_max) fp32,
    moved to ``device`` in one copy."""
    present = [f for f in fields if f is not None]
    out = torch.zeros(len(present), len(mb.seq_indices), max(mb.lengths), dtype=torch.float32)
    for k, tensors in enumerate(present):
        for row, i in enumerate(mb.seq_indices):
            out[k, row, : tensors[i].numel()] = tensors[i].float()
    moved = iter(to_device(out, device).unbind(0))
    return [None if f is None else next(moved) for f in fields]


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
    index = tuple(to_device(x, dev) for x in padded_index(mb))
    logprobs, entropy = (padded(mb, output[k], index) for k in (0, 1))  # type: ignore[arg-type]  # (B, T_max)
    fields = [
        batch.loss_mask,
        batch.advantages,
        batch.old_logprobs,
        batch.rollout_logprobs,
        batch.ref_logprobs,
    ]
    mask, advantages, old, rollout, ref = _batch_rows(mb, fields, dev)
    assert mask is not None and advantages is not None
    out = policy_loss(
        logprobs,
        old if old is not None else logprobs.detach(),
        advantages,
        mask,
        cfg,
        rollout_logprobs=rollout,
        ref_logprobs=ref,
        entropy=entropy,
        num_tokens=denominators.num_tokens,
        num_seqs=denominators.num_seqs,
        norm_tokens=denominators.norm_tokens,
    )
    metrics: dict[str, Any] = dict(out.metrics)  # device tensors: read once when the step ends
    metrics["loss"] = out.loss.detach()
    metrics["_tokens"] = float(sum(float(batch.loss_mask[i].sum()) for i in mb.seq_indices))  # host tensors
    return out.loss * scale, metrics


def position_values(hidden: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """The critic's value head: (T, h) final hidden states -> (T,) fp32 values, computed in fp32 (as the
    torch critic's head) whatever the dtype of the hidden states and the head's weights."""
    out = hidden.float() @ weight.float().t()  # (T, 1)
    if bias is not None:
        out = out + bias.float()
    return out.squeeze(-1)


def micro_batch_value_loss(
    mb: PackedMicroBatch,
    output: torch.Tensor,
    *,
    batch: TrainBatch,
    mode: str,
    clip: float | None,
    denominators: GlobalDenominators,
    scale: float,
) -> tuple[torch.Tensor, dict[str, Any]]:
    """Megatron ``loss_func`` of the critic: ``output`` is the (T,) per-position values of the pack (the
    value at position ``t - 1`` is the value of the state before token ``t``).

    Returns ``(loss * scale, metrics)`` as :func:`micro_batch_loss`: the clipped value loss of
    :func:`agentrl.trainer.losses.value_loss` on ``batch.returns``, anchored at ``batch.old_values``.
    """
    dev = output.device
    index = tuple(to_device(x, dev) for x in padded_index(mb))
    values = padded(mb, output, index)  # type: ignore[arg-type]  # (B, T_max)
    mask, old, returns = _batch_rows(mb, [batch.loss_mask, batch.old_values, batch.returns], dev)
    assert mask is not None and old is not None and returns is not None, "run fill_gae first"
    out = value_loss(
        values,
        old,
        returns,
        mask,
        clip,
        mode,
        num_tokens=denominators.num_tokens,
        num_seqs=denominators.num_seqs,
        norm_tokens=denominators.norm_tokens,
    )
    metrics: dict[str, Any] = dict(out.metrics)
    metrics["_tokens"] = float(sum(float(batch.loss_mask[i].sum()) for i in mb.seq_indices))
    return out.loss * scale, metrics
