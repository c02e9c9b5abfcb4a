"""Megatron save -> load -> step equals the uninterrupted step (issue 18; docs/reliability.md E23 on GPU).

One backend steps on batch 1, saves, and steps on batch 2. A fresh backend built from the same HF
folder loads that checkpoint and steps on batch 2. Weights (fp32 main copies through the HF export),
optimizer counters and the step's metrics must agree to 1e-6: a checkpoint that lost the Adam moments,
the fp32 main weights, the step count (lr schedule) or the RNG state would not.

Run on the GPU machine: ``scripts/gpu_tests.sh tests/gpu/test_megatron_resume.py`` (or
``python -m pytest tests/gpu/test_megatron_resume.py -x -q`` where megatron-core is installed).
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch


def _batch(vocab: int, seed: int):  # type: ignore[no-untyped-def]
    from agentrl.trainer.backend import TrainBatch

    g = torch.Generator().manual_seed(seed)
    ids = [torch.randint(0, vocab, (n,), generator=g) for n in (300, 180, 420, 96)]
    masks = []
    for x in ids:
        m = torch.zeros(x.numel())
        m[40:] = 1.0
        masks.append(m)
    advantages = [torch.full((x.numel(),), a) for x, a in zip(ids, (1.0, -1.0, 0.5, -0.5), strict=True)]
    old = [(-2.0 - torch.rand(x.numel(), generator=g)) * m for x, m in zip(ids, masks, strict=True)]
    return TrainBatch(
        input_ids=ids, loss_mask=masks, advantages=advantages, rollout_logprobs=old, old_logprobs=old
    )


def _weights(backend) -> dict[str, torch.Tensor]:  # type: ignore[no-untyped-def]
    return {name: tensor.detach().float().cpu().clone() for name, tensor in backend.hf_state_dict()}


@pytest.fixture
def deterministic():  # type: ignore[no-untyped-def]
    """Deterministic kernels (the embedding's backward sums with atomics otherwise); cuBLAS needs
    CUBLAS_WORKSPACE_CONFIG, which scripts/gpu_env.sh sets before any process starts CUDA."""
    torch.use_deterministic_algorithms(True)
    yield
    torch.use_deterministic_algorithms(False)


def test_save_load_step_equals_the_uninterrupted_step(tmp_path: Path, deterministic: None) -> None:
    from agentrl.trainer.config import OptimizerConfig
    from agentrl.trainer.megatron.backend import MegatronBackend
    from agentrl.trainer.megatron.config import MegatronBackendConfig
    from agentrl.trainer.megatron.shapes import hf_config, random_checkpoint

    shape = "smollm2-135m"
    folder = random_checkpoint(shape, tmp_path / shape, seed=3)
    vocab = int(hf_config(shape).vocab_size)
    # warmup and decay: a resumed step with the wrong step count would take a different lr
    config = MegatronBackendConfig(
        micro_batch_tokens=512,
        optimizer=OptimizerConfig(lr=1e-4, warmup_steps=3, lr_decay_style="cosine", lr_decay_steps=10),
    )
    first, second = _batch(vocab, seed=1), _batch(vocab, seed=2)

    straight = MegatronBackend(folder, config)
    straight.train_step(first)
    straight.save(tmp_path / "ckpt")
    want_metrics = straight.train_step(second)
    want = _weights(straight)
    del straight
    torch.cuda.empty_cache()

    # Control: a second uninterrupted run. If it differs, the kernels are not deterministic and the
    # comparison below would blame the resume for it.
    again = MegatronBackend(folder, config)
    again.train_step(first)
    again.train_step(second)
    control = _weights(again)
    del again
    torch.cuda.empty_cache()
    for name, tensor in want.items():
        gap = (control[name] - tensor).abs().max().item()
        assert gap <= 1e-6, f"{name}: two uninterrupted runs differ by {gap:.3g} (non-deterministic kernels)"

    resumed = MegatronBackend(folder, config)
    before_load = _weights(resumed)
    resumed.load(tmp_path / "ckpt")
    got_metrics = resumed.train_step(second)
    got = _weights(resumed)

    assert want.keys() == got.keys()
    moved = max((want[k] - before_load[k]).abs().max().item() for k in want)
    assert moved > 1e-4, "two steps must move the weights, or equality proves nothing"
    for name, tensor in want.items():
        gap = (got[name] - tensor).abs().max().item()
        assert gap <= 1e-6, f"{name}: resumed and uninterrupted runs differ by {gap:.3g}"
    for key in ("loss", "grad_norm", "lr"):
        if key in want_metrics:
            assert abs(got_metrics[key] - want_metrics[key]) <= 1e-6, (
                key,
                got_metrics[key],
                want_metrics[key],
            )
    assert resumed.steps_done == 2
