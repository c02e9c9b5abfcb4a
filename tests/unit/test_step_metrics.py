"""Combining micro-batch metrics: kinds by name, one host copy, data-parallel merge (hand-derived)."""

from __future__ import annotations

import math

import pytest
import torch

from agentrl.trainer.config import AlgorithmConfig
from agentrl.trainer.losses import policy_loss
from agentrl.trainer.step_metrics import (
    StepMetrics,
    combine_steps,
    finish_totals,
    kind_of,
    merge_totals,
    to_floats,
)


def test_kinds_follow_the_name() -> None:
    assert [kind_of(n) for n in ("ratio_max", "ratio_min", "loss", "pg_loss", "clip_frac")] == [
        "max",
        "min",
        "sum",
        "sum",
        "mean",
    ]


def test_to_floats_mixes_tensors_and_numbers() -> None:
    assert to_floats([torch.tensor(0.5), 2, torch.tensor([3.0]), 4.5]) == [0.5, 2.0, 3.0, 4.5]


def test_micro_batches_combine_by_kind() -> None:
    acc = StepMetrics()
    # micro-batch 1: 3 tokens; micro-batch 2: 1 token; micro-batch 3: no trained token (NaN max/min)
    acc.add(
        {"clip_frac": torch.tensor(0.2), "pg_loss": torch.tensor(-0.3), "ratio_max": torch.tensor(1.4)}, 3.0
    )
    acc.add(
        {"clip_frac": torch.tensor(0.6), "pg_loss": torch.tensor(0.1), "ratio_max": torch.tensor(1.1)},
        torch.tensor(1.0),
    )
    acc.add({"ratio_max": torch.tensor(math.nan), "ratio_min": torch.tensor(math.nan)}, 0.0)
    acc.add({}, 5.0)  # nothing measured: ignored
    result = acc.result()
    assert result["clip_frac"] == pytest.approx((0.2 * 3 + 0.6 * 1) / 4)  # token-weighted: 0.3
    assert result["pg_loss"] == pytest.approx(-0.2)  # shares of the batch loss add up
    assert result["ratio_max"] == pytest.approx(1.4)  # NaN of the empty micro-batch ignored
    assert math.isnan(result["ratio_min"])  # never measured


def test_data_parallel_ranks_merge_like_one_batch() -> None:
    ranks = []
    for values, weights in (([0.2, 0.6], [3.0, 1.0]), ([0.5], [4.0])):
        acc = StepMetrics()
        for v, w in zip(values, weights, strict=True):
            acc.add({"entropy": torch.tensor(v), "loss": torch.tensor(v), "ratio_min": torch.tensor(v)}, w)
        ranks.append(acc.totals())
    merged = finish_totals(merge_totals(ranks))
    assert merged["entropy"] == pytest.approx((0.6 + 0.6 + 2.0) / 8)  # 0.4
    assert merged["loss"] == pytest.approx(1.3)
    assert merged["ratio_min"] == pytest.approx(0.2)


def test_policy_loss_metrics_stay_tensors_until_asked() -> None:
    # Ratios (1.5, 0.9) on tokens 1-2, token 3 masked out: mean 1.2, max 1.5, min 0.9.
    lp = torch.tensor([[math.log(1.5), math.log(0.9), 5.0]])
    mask = torch.tensor([[1.0, 1.0, 0.0]])
    out = policy_loss(lp, torch.zeros(1, 3), torch.ones(1, 3), mask, AlgorithmConfig())
    assert all(isinstance(v, torch.Tensor) and v.dim() == 0 for v in out.metrics.values())
    floats = out.floats()
    assert floats["ratio_mean"] == pytest.approx(1.2) and floats["ratio_max"] == pytest.approx(1.5)
    assert floats["ratio_min"] == pytest.approx(0.9)
    empty = policy_loss(
        lp, torch.zeros(1, 3), torch.ones(1, 3), torch.zeros(1, 3), AlgorithmConfig()
    ).floats()
    assert empty["ratio_mean"] == 1.0 and math.isnan(empty["ratio_max"]) and empty["clip_frac"] == 0.0


def test_megatron_micro_batch_losses_combine_to_the_whole_batch() -> None:
    """Megatron's per-micro-batch loss (packed layout, global denominators) combined by StepMetrics equals
    one policy_loss over the whole right-padded batch: loss, token-weighted means and max/min."""
    from torch.nn.utils.rnn import pad_sequence

    from agentrl.trainer.backend import TrainBatch
    from agentrl.trainer.megatron.packing import pack
    from agentrl.trainer.megatron.step_loss import GlobalDenominators, micro_batch_loss

    g = torch.Generator().manual_seed(0)
    lengths = [6, 4, 9, 5]
    ids = [torch.randint(0, 50, (n,), generator=g) for n in lengths]
    masks = [torch.tensor([0.0] * 2 + [1.0] * (n - 2)) for n in lengths]
    masks[1][3] = 0.0  # an observation token inside a response
    advantages = [
        torch.full((n,), a) * m for n, a, m in zip(lengths, (1.0, -1.0, 0.5, -0.5), masks, strict=True)
    ]
    old = [(-torch.rand(n, generator=g) - 0.5) * m for n, m in zip(lengths, masks, strict=True)]
    new = [o + 0.3 * torch.randn(o.shape, generator=g) * m for o, m in zip(old, masks, strict=True)]
    batch = TrainBatch(ids, masks, advantages, rollout_logprobs=old, old_logprobs=old)
    cfg = AlgorithmConfig(loss_agg_mode="token-mean")
    denominators = GlobalDenominators.of(batch, cfg)

    acc = StepMetrics()
    for group in ([0, 2], [1, 3]):
        mb = pack(ids, group)
        stack = torch.zeros(2, mb.num_tokens)  # per position p: the logprob of token p + 1 (and entropy)
        start = 0
        for i in group:
            stack[0, start : start + lengths[i] - 1] = new[i][1:]
            start += lengths[i]
        _, metrics = micro_batch_loss(mb, stack, batch=batch, cfg=cfg, denominators=denominators, scale=1.0)
        acc.add({k: v for k, v in metrics.items() if k != "_tokens"}, metrics["_tokens"])
    combined = acc.result()

    def pad(xs: list[torch.Tensor]) -> torch.Tensor:
        return pad_sequence(xs, batch_first=True)

    whole = policy_loss(pad(new), pad(old), pad(advantages), pad(masks), cfg, rollout_logprobs=pad(old))
    expected = whole.floats()
    assert combined["loss"] == pytest.approx(whole.loss.item(), abs=1e-6)
    for key in ("pg_loss", "clip_frac", "ppo_kl", "ratio_mean", "ratio_max", "ratio_min"):
        assert combined[key] == pytest.approx(expected[key], abs=1e-6), key


def test_optimizer_steps_of_a_rollout_combine_by_kind() -> None:
    steps = [
        {"train_rollout_logprob_abs_diff_max": 0.30, "ratio_min": 0.9, "loss": 2.0, "kl": 0.01},
        {"train_rollout_logprob_abs_diff_max": math.nan, "ratio_min": 0.8, "loss": 4.0},  # no trained token
        {"train_rollout_logprob_abs_diff_max": 0.10, "ratio_min": 0.95, "loss": 6.0, "kl": 0.03},
    ]
    out = combine_steps(steps)
    assert out["train_rollout_logprob_abs_diff_max"] == 0.30  # the max of 0.30 and 0.10, not their mean
    assert out["ratio_min"] == 0.8
    assert out["loss"] == pytest.approx(4.0)  # (2 + 4 + 6) / 3: a step's loss is its batch's total
    assert out["kl"] == pytest.approx(0.02)  # (0.01 + 0.03) / 2: the steps that report it


def test_trainer_worker_reports_the_max_gap_over_its_optimizer_steps(monkeypatch: pytest.MonkeyPatch) -> None:
    """``TrainerWorker.train`` with two optimizer steps per rollout: the max of the trainer/engine
    logprob gap is the larger step's (0.30), where averaging the steps gave 0.20."""
    from types import SimpleNamespace

    import agentrl.trainer.batch
    from agentrl.run.actors import TrainerWorker

    step_metrics = iter(
        [
            {"train_rollout_logprob_abs_diff": 0.01, "train_rollout_logprob_abs_diff_max": 0.30, "loss": 2.0},
            {"train_rollout_logprob_abs_diff": 0.03, "train_rollout_logprob_abs_diff_max": 0.10, "loss": 4.0},
        ]
    )
    monkeypatch.setattr(
        agentrl.trainer.batch, "trajectories_to_batch", lambda part, _: ([0], {"n_trajectories": len(part)})
    )
    worker = object.__new__(TrainerWorker)
    worker.config = SimpleNamespace(steps_per_rollout=2, algorithm=SimpleNamespace(uses_critic=False))  # type: ignore[assignment]
    worker.backend = SimpleNamespace(train_step=lambda batch: next(step_metrics))
    groups = [SimpleNamespace(group_id=g) for g in ("a", "a", "a", "b")]
    out = worker.train(groups)  # type: ignore[arg-type]
    assert out["train/train_rollout_logprob_abs_diff_max"] == 0.30
    assert out["train/train_rollout_logprob_abs_diff"] == pytest.approx(0.02)
    assert out["train/loss"] == pytest.approx(3.0)
    assert out["train/n_trajectories"] == pytest.approx(2.0)  # 3 and 1 episodes
    assert out["train/optimizer_steps"] == 2.0
