"""Megatron tensor parallel 2 against TP=1 on the same random-init weights (issue 8).

Run on two GPUs, one process each: ``torchrun --nproc-per-node 2 -m pytest -m gpu tests/gpu/test_megatron_tp.py``
(``scripts/gpu_multi.sh`` does). TP=1 runs first as data parallel 2 over the same world, then Megatron's
model-parallel groups are rebuilt with TP=2 and the same checkpoint is loaded again: per-token logprobs
(mean/max abs diff reported) and the loss of one GRPO step on a fixed batch must agree within bf16
tolerance. Skipped without two GPUs.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest
import torch

from tests.gpu.test_megatron_backend import _hf_logprobs, _sequences, record

pytestmark = pytest.mark.skipif(
    not torch.cuda.is_available()
    or torch.cuda.device_count() < 2
    or int(os.environ.get("WORLD_SIZE", 1)) < 2,
    reason="needs 2 GPUs and torchrun --nproc-per-node 2",
)

# SmolLM2-135M has 9 attention heads (3 KV heads): it cannot be split over 2 TP ranks.
SHAPES = ["qwen3-tiny", "qwen2.5-0.5b"]


def _shared_folder(shape: str) -> Path:
    """Rank 0 writes the random checkpoint; every rank then reads the same files."""
    import torch.distributed as dist

    from agentrl.trainer.megatron.shapes import random_checkpoint

    folder = Path(os.environ.get("AGENTRL_TP_TMP", "/tmp")) / f"agentrl-tp-{shape}"
    if dist.get_rank() == 0:
        folder.mkdir(parents=True, exist_ok=True)
        random_checkpoint(shape, folder, seed=1)
    dist.barrier()
    return folder


def _backend(folder: Path, tp: int) -> Any:
    from megatron.core import parallel_state

    from agentrl.trainer.config import AlgorithmConfig, OptimizerConfig
    from agentrl.trainer.megatron.backend import MegatronBackend
    from agentrl.trainer.megatron.config import MegatronBackendConfig, ParallelConfig

    if parallel_state.model_parallel_is_initialized():
        parallel_state.destroy_model_parallel()
    cfg = MegatronBackendConfig(
        micro_batch_tokens=2048,
        optimizer=OptimizerConfig(lr=2e-5, max_grad_norm=1.0),
        algorithm=AlgorithmConfig(kl_coef=0.1, kl_estimator="k3", entropy_coef=0.01),
        parallel=ParallelConfig(tensor_model_parallel_size=tp),
    )
    return MegatronBackend(folder, cfg)


def _batch(ids: list[torch.Tensor], logprobs: list[torch.Tensor]) -> Any:
    from agentrl.trainer.backend import TrainBatch

    prompt = 100
    masks = [torch.cat([torch.zeros(prompt), torch.ones(x.numel() - prompt)]) for x in ids]
    signs = [1.0, -1.0, 1.0, -1.0]
    g = torch.Generator().manual_seed(4)
    old = [
        (lp + 0.05 * torch.randn(lp.shape, generator=g)) * m for lp, m in zip(logprobs, masks, strict=True)
    ]
    ref = [
        (lp - 0.1 * torch.randn(lp.shape, generator=g).abs()) * m
        for lp, m in zip(logprobs, masks, strict=True)
    ]
    return TrainBatch(
        input_ids=ids,
        loss_mask=masks,
        advantages=[m * s for m, s in zip(masks, signs, strict=True)],
        rollout_logprobs=old,
        old_logprobs=old,
        ref_logprobs=ref,
    )


def _abs_diff(a: list[torch.Tensor], b: list[torch.Tensor]) -> torch.Tensor:
    return torch.cat([(x[1:].float().cpu() - y[1:].float().cpu()).abs() for x, y in zip(a, b, strict=True)])


def _fp32_reference(folder: Path, ids: list[torch.Tensor]) -> list[torch.Tensor]:
    """Logprobs of the same checkpoint under transformers in fp32: the error-free reference."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).cuda().eval()
    with torch.no_grad():
        lps, _ = _hf_logprobs(model, ids)
    del model
    torch.cuda.empty_cache()
    return lps


@pytest.mark.parametrize("shape", SHAPES)
def test_tp2_matches_tp1(shape: str) -> None:
    import torch.distributed as dist

    from agentrl.trainer.megatron.config import ParallelConfig
    from agentrl.trainer.megatron.distributed import init_distributed

    init_distributed(ParallelConfig(), seed=1234)
    folder = _shared_folder(shape)
    vocab = int(json.loads((folder / "config.json").read_text())["vocab_size"])
    ids = _sequences(vocab, [700, 64, 1500, 333, 1024], seed=2)
    step_ids = _sequences(vocab, [300, 420, 256, 380], seed=3)
    batch = None
    results: dict[int, tuple[list[torch.Tensor], float]] = {}
    for tp in (1, 2):
        backend = _backend(folder, tp)
        lps = backend.logprobs(ids)
        if batch is None:  # the same fixed batch for both: old logprobs from the TP=1 model
            batch = _batch(step_ids, backend.logprobs(step_ids))
        results[tp] = (lps, float(backend.train_step(batch)["loss"]))
        del backend
        torch.cuda.empty_cache()
    (lp1, loss1), (lp2, loss2) = results[1], results[2]
    ref = _fp32_reference(folder, ids)
    diffs = _abs_diff(lp1, lp2)
    err1, err2 = _abs_diff(lp1, ref).mean(), _abs_diff(lp2, ref).mean()
    if dist.get_rank() == 0:
        record(
            "tp2_vs_tp1",
            shape=shape,
            tokens=int(diffs.numel()),
            mean_abs_diff=float(diffs.mean()),
            max_abs_diff=float(diffs.max()),
            tp1_vs_fp32=float(err1),
            tp2_vs_fp32=float(err2),
            loss_tp1=loss1,
            loss_tp2=loss2,
        )
    # Two bf16 forwards with different reduction orders differ by about as much as each differs from
    # fp32 (measured 0.0103 TP2 vs TP1, cf. 0.0095 HF-bf16 vs Megatron-bf16); parity means splitting the
    # model adds no error of its own: TP=2 is as close to the fp32 forward as TP=1 is.
    assert float(err2) <= 1.1 * float(err1) + 1e-4
    assert abs(loss1 - loss2) < 2e-2 * max(1.0, abs(loss1))
