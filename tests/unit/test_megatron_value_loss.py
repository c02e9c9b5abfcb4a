"""The Megatron critic's per-micro-batch value loss on CPU (pure torch: no megatron import): packed
micro-batches with global denominators combine to the torch critic's loss over the right-padded batch."""

from __future__ import annotations

import pytest
import torch
from torch.nn.utils.rnn import pad_sequence

from agentrl.trainer.backend import TrainBatch
from agentrl.trainer.config import AlgorithmConfig
from agentrl.trainer.losses import value_loss
from agentrl.trainer.megatron.packing import pack
from agentrl.trainer.megatron.step_loss import GlobalDenominators, micro_batch_value_loss, position_values
from agentrl.trainer.step_metrics import StepMetrics


@pytest.mark.parametrize("mode", ["token-mean", "seq-mean-token-mean"])
def test_packed_value_losses_combine_to_the_whole_batch(mode: str) -> None:
    g = torch.Generator().manual_seed(0)
    lengths = [6, 4, 9, 5]
    ids = [torch.randint(0, 50, (n,), generator=g) for n in lengths]
    masks = [torch.tensor([0.0] * 2 + [1.0] * (n - 2)) for n in lengths]
    masks[2][4:6] = 0.0  # a tool output inside a response
    values = [torch.randn(n, generator=g) * m for n, m in zip(lengths, masks, strict=True)]
    old = [(v + 0.3 * torch.randn(v.shape, generator=g)) * m for v, m in zip(values, masks, strict=True)]
    returns = [torch.randn(n, generator=g) * m for n, m in zip(lengths, masks, strict=True)]
    zeros = [torch.zeros(n) for n in lengths]
    batch = TrainBatch(ids, masks, zeros, zeros, old_values=old, returns=returns)
    denominators = GlobalDenominators.of(batch, AlgorithmConfig(loss_agg_mode=mode))

    acc = StepMetrics()
    total = 0.0
    for group in ([0, 2], [1, 3]):
        mb = pack(ids, group)
        per_position = mb.to_positions(values)  # position t - 1 holds the value before token t
        loss, metrics = micro_batch_value_loss(
            mb, per_position, batch=batch, mode=mode, clip=0.2, denominators=denominators, scale=1.0
        )
        total += loss.item()
        acc.add({k: v for k, v in metrics.items() if k != "_tokens"}, metrics["_tokens"])
    combined = acc.result()

    def pad(xs: list[torch.Tensor]) -> torch.Tensor:
        return pad_sequence(xs, batch_first=True)

    whole = value_loss(pad(values), pad(old), pad(returns), pad(masks), 0.2, mode)
    assert total == pytest.approx(whole.loss.item(), abs=1e-6)
    assert combined["vf_loss"] == pytest.approx(whole.loss.item(), abs=1e-6)
    assert combined["vf_clip_frac"] == pytest.approx(whole.floats()["vf_clip_frac"], abs=1e-6)
    assert 0 < combined["vf_clip_frac"] < 1  # the clip is exercised both ways


def test_position_values_is_the_head_in_fp32() -> None:
    # hidden (2, 3) @ w (1, 3)^T + b: (1*1 + 2*0 + 3*-1) + 0.5 = -1.5; (0*1 + 1*0 + 0*-1) + 0.5 = 0.5.
    hidden = torch.tensor([[1.0, 2.0, 3.0], [0.0, 1.0, 0.0]], dtype=torch.bfloat16)
    out = position_values(hidden, torch.tensor([[1.0, 0.0, -1.0]], dtype=torch.bfloat16), torch.tensor([0.5]))
    assert out.dtype == torch.float32 and out.tolist() == [-1.5, 0.5]
