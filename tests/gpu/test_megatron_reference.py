"""Megatron backend on a GPU: the KL reference model (offloaded to the host between passes) and an
exact save / load.

Expectations: before any update the policy is the reference, so KL is 0; after one update the step's
``kl`` equals k3 written out over the policy's and the initial logprobs; the reference's logprobs stay
the initial ones, bit for bit. A step taken after :meth:`load` repeats the step taken after
:meth:`save` (to the run-to-run noise of the attention backward's atomics, far below one step).
"""

from __future__ import annotations

from pathlib import Path

import torch

from tests.gpu.test_megatron_backend import _sequences, record


def _masked(values: list[torch.Tensor], masks: list[torch.Tensor]) -> torch.Tensor:
    return torch.cat([v[m.bool()] for v, m in zip(values, masks, strict=True)]).double()


def test_reference_kl_and_exact_resume(tmp_path: Path) -> None:
    from agentrl.trainer.backend import TrainBatch
    from agentrl.trainer.config import AlgorithmConfig, OptimizerConfig
    from agentrl.trainer.megatron.backend import MegatronBackend
    from agentrl.trainer.megatron.config import MegatronBackendConfig
    from agentrl.trainer.megatron.shapes import random_checkpoint

    folder = random_checkpoint("qwen3-tiny", tmp_path / "model", seed=3)
    cfg = MegatronBackendConfig(
        micro_batch_tokens=512,
        algorithm=AlgorithmConfig(kl_coef=0.05, kl_estimator="k3"),
        optimizer=OptimizerConfig(lr=1e-3),
        ref_offload="always",
    )
    backend = MegatronBackend(folder, cfg)
    assert backend.ref is not None and backend.ref.offload
    assert all(p.numel() == 0 for m in backend.ref.chunks for p in m.parameters())  # on the host now

    ids = _sequences(4096, [300, 200, 500, 120], seed=6)
    masks = [torch.cat([torch.zeros(50), torch.ones(x.numel() - 50)]) for x in ids]
    advs = [m * s for m, s in zip(masks, [1.0, -1.0, 0.5, -0.5], strict=True)]
    batch = TrainBatch(
        input_ids=ids, loss_mask=masks, advantages=advs, rollout_logprobs=[m * 0 for m in masks]
    )

    initial = backend.logprobs(ids)
    first = backend.train_step(batch)
    assert abs(first["kl"]) < 1e-6, first  # policy == reference before the first update
    backend.save(tmp_path / "ckpt")
    moved = backend.logprobs(ids)
    second = backend.train_step(batch)
    d = _masked(moved, masks) - _masked(initial, masks)
    k3 = float((torch.exp(-d) + d - 1).mean())
    ref = backend.ref_logprobs(ids)
    assert all(torch.equal(r, i) for r, i in zip(ref, initial, strict=True))  # frozen, bit for bit
    after = backend.logprobs(ids)

    backend.load(tmp_path / "ckpt")
    restored = backend.logprobs(ids)
    again = backend.train_step(batch)
    after_again = backend.logprobs(ids)
    step_size = float((_masked(after, masks) - _masked(moved, masks)).abs().max())
    repeat_gap = float((_masked(after_again, masks) - _masked(after, masks)).abs().max())
    record(
        "megatron_reference_and_resume",
        kl_step2=second["kl"],
        k3_expected=k3,
        mean_abs_log_ratio=float(d.abs().mean()),
        step_size_max=step_size,
        repeat_gap_max=repeat_gap,
        loss=second["loss"],
        loss_after_load=again["loss"],
    )
    assert float(d.abs().mean()) > 1e-3  # the first update moved the policy away from the reference
    assert abs(second["kl"] - k3) < 2e-2 * k3 + 1e-7
    assert all(torch.equal(r, m) for r, m in zip(restored, moved, strict=True))  # weights restored exactly
    assert abs(again["loss"] - second["loss"]) < 1e-3 * max(1.0, abs(second["loss"]))
    assert repeat_gap < 0.05 * step_size  # Adam's moments came back too: the same second step
