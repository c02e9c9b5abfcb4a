"""Training throughput of the Megatron backend: tokens/s, TFLOP/s, MFU and peak memory.

MFU is measured against a bf16 matmul (8192^3) timed in the same run, not a datasheet number.
FLOPs per step count the matmuls of forward + backward (3x forward): the linear layers and LM head
(2 * params-in-matmuls per token) plus causal attention (2 * 2 * s_i/2 * d per token and layer for
QK^T and PV), summed over the packed sequences' true lengths.

Run on a GPU with megatron-core installed (scripts/gpu_tests.sh does)::

    python bench/megatron.py --shapes qwen2.5-0.5b qwen2.5-1.5b --micro-batch-tokens 8192 --steps 5
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import torch

# This file is named like the megatron package: keep its folder off the import path.
sys.path = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]

from agentrl.trainer.backend import TrainBatch  # noqa: E402
from agentrl.trainer.config import OptimizerConfig  # noqa: E402
from agentrl.trainer.megatron.backend import MegatronBackend  # noqa: E402
from agentrl.trainer.megatron.config import MegatronBackendConfig  # noqa: E402
from agentrl.trainer.megatron.shapes import hf_config, random_checkpoint  # noqa: E402


def matmul_peak_tflops(n: int = 8192, reps: int = 20) -> float:
    """Measured bf16 dense matmul rate on random data (median of ``reps``)."""
    a, b = torch.randn(n, n, device="cuda").bfloat16(), torch.randn(n, n, device="cuda").bfloat16()
    for _ in range(3):
        a @ b
    times = []
    for _ in range(reps):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        a @ b
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end) / 1e3)
    return 2 * n**3 / sorted(times)[len(times) // 2] / 1e12


def step_flops(cfg: object, lengths: list[int]) -> float:
    """Forward + backward matmul FLOPs of one step over sequences of ``lengths``."""
    h, layers = cfg.hidden_size, cfg.num_hidden_layers  # type: ignore[attr-defined]
    heads, kv = cfg.num_attention_heads, cfg.num_key_value_heads  # type: ignore[attr-defined]
    d = getattr(cfg, "head_dim", None) or h // heads
    ffn, vocab = cfg.intermediate_size, cfg.vocab_size  # type: ignore[attr-defined]
    per_layer = h * (heads * d + 2 * kv * d) + heads * d * h + 3 * h * ffn
    dense = 2 * (layers * per_layer + h * vocab)  # per token
    tokens = sum(lengths)
    attention = sum(2 * 2 * layers * heads * d * (n * (n + 1) / 2) for n in lengths)
    return 3.0 * (dense * tokens + attention)


def batch_of(vocab: int, total_tokens: int, seed: int) -> TrainBatch:
    """Random sequences of 512-2048 tokens (prompt 25%) up to ``total_tokens``."""
    g = torch.Generator().manual_seed(seed)
    ids, lengths = [], []
    while sum(lengths) < total_tokens:
        n = min(int(torch.randint(512, 2049, (1,), generator=g)), total_tokens - sum(lengths))
        lengths.append(n)
        ids.append(torch.randint(0, vocab, (n,), generator=g))
    masks = [torch.cat([torch.zeros(n // 4), torch.ones(n - n // 4)]) for n in lengths]
    advs = [m * (1.0 if i % 2 else -1.0) for i, m in enumerate(masks)]
    return TrainBatch(
        input_ids=ids, loss_mask=masks, advantages=advs, rollout_logprobs=[torch.zeros(n) for n in lengths]
    )


def run_shape(shape: str, args: argparse.Namespace, peak: float) -> dict[str, float | str]:
    with tempfile.TemporaryDirectory() as tmp:
        folder = random_checkpoint(shape, Path(tmp), seed=0)
        cfg = MegatronBackendConfig(
            micro_batch_tokens=args.micro_batch_tokens,
            recompute=args.recompute,
            attention_backend=args.attention_backend,
            optimizer=OptimizerConfig(lr=1e-6),
        )
        backend = MegatronBackend(folder, cfg)
    batch = batch_of(backend.hf_config.vocab_size, args.micro_batch_tokens * args.micro_batches, seed=0)
    for _ in range(args.warmup):
        backend.train_step(batch)
    if args.profile:
        with torch.profiler.profile(
            activities=[torch.profiler.ProfilerActivity.CPU, torch.profiler.ProfilerActivity.CUDA]
        ) as prof:
            backend.train_step(batch)
            torch.cuda.synchronize()
        print(prof.key_averages().table(sort_by="cuda_time_total", row_limit=25, max_name_column_width=60))
        print(prof.key_averages().table(sort_by="cpu_time_total", row_limit=15, max_name_column_width=60))
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    for _ in range(args.steps):
        backend.train_step(batch)
    torch.cuda.synchronize()
    seconds = (time.perf_counter() - start) / args.steps
    flops = step_flops(hf_config(shape), [x.numel() for x in batch.input_ids])
    result: dict[str, float | str] = {
        "shape": shape,
        "tokens_per_step": float(batch.num_tokens),
        "step_s": seconds,
        "tokens_per_s": batch.num_tokens / seconds,
        "tflops": flops / seconds / 1e12,
        "mfu": flops / seconds / 1e12 / peak,
        "peak_mem_gb": torch.cuda.max_memory_allocated() / 1e9,
    }
    del backend
    torch.cuda.empty_cache()
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shapes", nargs="+", default=["qwen2.5-0.5b", "qwen2.5-1.5b"])
    parser.add_argument("--micro-batch-tokens", type=int, default=8192)
    parser.add_argument("--micro-batches", type=int, default=4, help="micro-batches per optimizer step")
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--recompute", default="none", choices=["none", "selective", "full"])
    parser.add_argument("--attention-backend", default="fused", choices=["fused", "local", "te"])
    parser.add_argument("--json", type=Path, help="append results as JSON lines here")
    parser.add_argument(
        "--profile", action="store_true", help="print the top ops of one step (torch.profiler)"
    )
    args = parser.parse_args()
    peak = matmul_peak_tflops()
    print(f"device: {torch.cuda.get_device_name()}  measured bf16 matmul peak: {peak:.0f} TFLOP/s")
    print(f"{'shape':<14}{'tokens/s':>10}{'TFLOP/s':>9}{'MFU':>7}{'step s':>8}{'peak GB':>9}")
    for shape in args.shapes:
        r = run_shape(shape, args, peak)
        print(
            f"{r['shape']:<14}{r['tokens_per_s']:>10.0f}{r['tflops']:>9.1f}{r['mfu']:>7.1%}"
            f"{r['step_s']:>8.3f}{r['peak_mem_gb']:>9.1f}",
            flush=True,
        )
        if args.json:
            with args.json.open("a") as f:
                f.write(
                    json.dumps({**r, "peak_matmul_tflops": peak, "device": torch.cuda.get_device_name()})
                    + "\n"
                )


if __name__ == "__main__":
    main()
