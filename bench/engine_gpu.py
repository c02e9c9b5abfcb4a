"""Rollout speed of the embedded engine's CUDA fast path, beside transformers and the bandwidth floor.

Why: rollout is most of an agentic RL step, and on a single GPU without SGLang the embedded engine is
what generates. For each model shape (random-init bf16 weights of the published configs) and batch B
this prints sampled tokens/s and ms per decode step for B concurrent requests of 128 prompt ids + 256
new ids (``ignore_eos``, T=1, prefix cache off), in the same run transformers' ``generate`` with a
static cache on the same work, and the floor: the bytes one decode step must read (weights once, each
row's KV) over the device copy bandwidth measured here. Then a multi-turn Search-shaped workload:
64 episodes of 4 turns (a ~200-id prompt; each turn samples 40-160 ids, then a ~120-id observation
is appended; one session per episode, so turns reuse the previous turn's KV), with the prefix hit rate.

Run on a CUDA machine (the repo on PYTHONPATH)::

    python bench/engine_gpu.py                                   # all shapes, B in 1 64 256
    python bench/engine_gpu.py --shapes qwen2.5-0.5b --batches 256 --skip-hf --json out.jsonl
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import random
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from agentrl.engines.base import SamplingParams
from agentrl.engines.embedded.engine import EmbeddedEngine, EmbeddedEngineConfig
from agentrl.models import make_tiny_gpt2
from agentrl.trainer.megatron.shapes import hf_config, random_checkpoint

PROMPT, NEW = 128, 256


def copy_bandwidth(nbytes: int = 2 << 30, reps: int = 10) -> float:
    """Device copy bandwidth in bytes/s, counting bytes read plus bytes written (median of ``reps``)."""
    src = torch.randn(nbytes // 4, device="cuda")
    dst = torch.empty_like(src)
    times = []
    for i in range(reps + 2):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        dst.copy_(src)
        end.record()
        torch.cuda.synchronize()
        if i >= 2:
            times.append(start.elapsed_time(end) / 1e3)
    return 2 * nbytes / sorted(times)[len(times) // 2]


def floor_ms(cfg: Any, batch: int, mean_len: float, bandwidth: float) -> float:
    """Fewest bytes one decode step reads (bf16 weights once, every row's KV), over ``bandwidth``."""
    h, layers, vocab = cfg.hidden_size, cfg.num_hidden_layers, cfg.vocab_size
    heads, kv = cfg.num_attention_heads, cfg.num_key_value_heads
    d = getattr(cfg, "head_dim", None) or h // heads
    per_layer = h * (heads * d + 2 * kv * d) + heads * d * h + 3 * h * cfg.intermediate_size
    weights = 2 * (layers * per_layer + h * vocab)
    kv_bytes = 2 * 2 * layers * kv * d * mean_len * batch
    return (weights + kv_bytes) / bandwidth * 1e3


def make_model(shape: str, root: Path) -> Path:
    """A random bf16 checkpoint of ``shape`` with a small real tokenizer (ids are random anyway)."""
    folder = random_checkpoint(shape, root / shape, seed=0)
    tok = make_tiny_gpt2(root / "tokenizer")
    for f in tok.glob("tokenizer*"):
        (folder / f.name).write_bytes(f.read_bytes())
    return folder


def prompts(batch: int, vocab: int, length: int = PROMPT, seed: int = 0) -> list[list[int]]:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(100, vocab, (batch, length), generator=g).tolist()


LAST_RUN: dict[str, float] = {}
"""Where the last :func:`run_engine` call's wall clock went (seconds): prefill, decode steps, the rest."""


def run_engine(engine: EmbeddedEngine, batch: int, vocab: int, seed: int) -> tuple[float, float]:
    """Wall seconds for ``batch`` concurrent 128+256 requests, and mean ms per decode step."""
    sp = SamplingParams(max_new_tokens=NEW, temperature=1.0, ignore_eos=True)
    before = dict(engine.stats)

    async def go() -> None:
        await asyncio.gather(*(engine.generate(p, sp) for p in prompts(batch, vocab, seed=seed)))

    started = time.perf_counter()
    asyncio.run(go())
    wall = time.perf_counter() - started
    steps = engine.stats["decode_steps"] - before["decode_steps"]
    decode_s = engine.stats["decode_s"] - before["decode_s"]
    prefill_s = engine.stats["prefill_s"] - before["prefill_s"]
    LAST_RUN.update(prefill_s=prefill_s, decode_s=decode_s, other_s=wall - prefill_s - decode_s, steps=steps)
    return wall, decode_s / max(steps, 1) * 1e3


def profile_run(engine: EmbeddedEngine, batch: int, vocab: int, out: Path) -> None:
    """One more run under torch's profiler (host and device, every thread): the ops by host time, then
    by device time, to ``out``."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        run_engine(engine, batch, vocab, seed=99)
    averages = prof.key_averages()
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(
        f"wall split (s): {json.dumps(LAST_RUN)}\n\n"
        + averages.table(sort_by="self_cpu_time_total", row_limit=45)
        + "\n\n"
        + averages.table(sort_by="self_cuda_time_total", row_limit=25)
    )
    print(f"profile: {out}", flush=True)


def run_hf(folder: Path, batch: int, vocab: int) -> tuple[float, float]:
    """transformers ``generate`` (static cache, sampling, no EOS stop) on the same work: wall s, ms/step."""
    from transformers import AutoModelForCausalLM

    model: Any = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.bfloat16)
    model = model.cuda().eval()
    ids = torch.tensor(prompts(batch, vocab), device="cuda")
    kwargs = dict(
        max_new_tokens=NEW, min_new_tokens=NEW, do_sample=True, top_k=0, cache_implementation="static"
    )
    model.generate(
        ids, attention_mask=torch.ones_like(ids), **kwargs
    )  # warm-up (and any compile) on the same shapes
    torch.cuda.synchronize()
    started = time.perf_counter()
    model.generate(ids, attention_mask=torch.ones_like(ids), **kwargs)
    torch.cuda.synchronize()
    wall = time.perf_counter() - started
    del model
    return wall, wall / NEW * 1e3


def search_shaped(engine: EmbeddedEngine, vocab: int, episodes: int = 64, turns: int = 4) -> dict[str, float]:
    """Multi-turn episodes as in Search-R1: wall s, sampled tokens, prefix hit rate."""
    rng = random.Random(0)
    before = dict(engine.stats)

    async def episode(i: int) -> int:
        ids = prompts(1, vocab, length=rng.randint(180, 220), seed=1000 + i)[0]
        sampled = 0
        for t in range(turns):
            sp = SamplingParams(max_new_tokens=rng.randint(40, 160), ignore_eos=True, seed=i * 10 + t)
            out = await engine.generate(ids, sp, session_id=f"episode-{i}")
            sampled += len(out.output_ids)
            ids = ids + out.output_ids + prompts(1, vocab, length=rng.randint(100, 140), seed=i * 10 + t)[0]
        return sampled

    async def go() -> list[int]:
        return await asyncio.gather(*(episode(i) for i in range(episodes)))

    started = time.perf_counter()
    tokens = sum(asyncio.run(go()))
    wall = time.perf_counter() - started
    prefilled = engine.stats["prefill_tokens"] - before["prefill_tokens"]
    cached = engine.stats["cached_tokens"] - before["cached_tokens"]
    return {"wall_s": wall, "tokens": tokens, "hit_rate": cached / max(cached + prefilled, 1)}


def close(engine: EmbeddedEngine) -> None:
    asyncio.run(engine.close())
    del engine
    gc.collect()
    torch.cuda.empty_cache()


def engine_rows(
    shape: str,
    folder: Path,
    batches: list[int],
    fast: dict[str, Any],
    bw: float,
    repeats: int = 1,
    profile: Path | None = None,
) -> list[dict]:
    """The fast path on 128 + 256 ids at each batch size (after one warm-up run of each): the median of
    ``repeats`` timed runs, with the slowest and fastest run's tokens/s."""
    cfg = hf_config(shape)
    config = EmbeddedEngineConfig(max_batch_size=max(batches), prefix_cache_mb=0, batch_wait_ms=20, **fast)
    started = time.perf_counter()
    engine = EmbeddedEngine(folder, config)
    assert engine._cuda is not None, "the fast path did not engage"
    for b in batches:
        run_engine(engine, b, cfg.vocab_size, seed=1)  # warm-up: compiles, captures this bucket's graphs
    print(
        f"{shape} {fast['decode_attention']}: setup (load, compile, capture, warm-up) {time.perf_counter() - started:.1f} s"
    )
    rows = []
    for b in batches:
        runs, parts = [], []
        for i in range(repeats):
            runs.append(run_engine(engine, b, cfg.vocab_size, seed=2 + i))
            parts.append(dict(LAST_RUN))
        print(f"B={b}: where each run's wall clock went (s): {json.dumps(parts)}", flush=True)
        if profile is not None and b == max(batches):
            profile_run(engine, b, cfg.vocab_size, profile / f"{shape}-B{b}.txt")
        runs.sort()
        wall, step_ms = runs[len(runs) // 2]  # the median wall clock (the upper one of an even count)
        row = {"shape": shape, "attention": fast["decode_attention"], "batch": b, "tok_s": b * NEW / wall}
        spread = {"tok_s_min": b * NEW / runs[-1][0], "tok_s_max": b * NEW / runs[0][0], "repeats": repeats}
        rows.append(
            {
                **row,
                "ms_step": step_ms,
                "wall_s": wall,
                "floor_ms": floor_ms(cfg, b, PROMPT + NEW / 2, bw),
                **spread,
            }
        )
        print(json.dumps(rows[-1]), flush=True)
    close(engine)
    return rows


def multi_row(shape: str, folder: Path, fast: dict[str, Any]) -> dict:
    """The Search-shaped rollout, run twice: the first also compiles and captures graphs."""
    engine = EmbeddedEngine(folder, EmbeddedEngineConfig(max_batch_size=64, batch_wait_ms=20, **fast))
    first = search_shaped(engine, hf_config(shape).vocab_size)
    multi = search_shaped(engine, hf_config(shape).vocab_size)
    close(engine)
    row = {"shape": shape, "attention": fast["decode_attention"], "batch": "search-64x4", **multi}
    return {**row, "first_wall_s": first["wall_s"], "tok_s": multi["tokens"] / multi["wall_s"]}


def bench_shape(
    shape: str, batches: list[int], args: argparse.Namespace, root: Path, bw: float
) -> list[dict]:
    """The engine's rows first (its graphs alone on the GPU), then transformers' on the same work."""
    folder = make_model(shape, root)
    rows = []
    for attention, prefill_mb in [(a, mb) for a in args.attention for mb in args.fused_prefill_mb]:
        fast = dict(
            compile=not args.no_compile,
            cuda_graphs=not args.no_graphs,
            mem_fraction_static=args.mem_fraction,
            decode_attention=attention,
            fused_prefill_mb=prefill_mb,
        )
        print(
            f"{shape}: decode attention {attention}, fused prefill up to {prefill_mb} MB of scores",
            flush=True,
        )
        rows += engine_rows(shape, folder, batches, fast, bw, args.repeats, args.profile)
        if not args.skip_multi:
            rows.append(multi_row(shape, folder, fast))
            print(json.dumps(rows[-1]), flush=True)
    if not args.skip_hf:
        for b in batches:
            hf_wall, hf_ms = run_hf(folder, b, hf_config(shape).vocab_size)
            for row in rows:
                if row["batch"] == b:
                    row.update(hf_tok_s=b * NEW / hf_wall, hf_ms_step=hf_ms)
            print(json.dumps({"shape": shape, "batch": b, "hf_tok_s": b * NEW / hf_wall}), flush=True)
    torch._dynamo.reset()  # drop transformers' compiled graphs before the next shape
    return rows


def table(rows: list[dict], bw: float) -> str:
    lines = [
        f"copy bandwidth {bw / 1e12:.2f} TB/s",
        "| shape | attention | B | fast path tok/s | ms/step | transformers static tok/s | ms/step | floor ms/step |"
        " floor tok/s |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        if isinstance(r["batch"], str):
            lines.append(
                f"| {r['shape']} | {r['attention']} | {r['batch']} | {r['tok_s']:,.0f} | {r['wall_s']:.2f} s rollout "
                f"(first {r['first_wall_s']:.2f} s), {r['tokens']:,} tokens, prefix hit {r['hit_rate']:.0%} "
                "| | | | |"
            )
            continue
        hf = f"{r['hf_tok_s']:,.0f} | {r['hf_ms_step']:.2f}" if "hf_tok_s" in r else "- | -"
        floor_tok = r["batch"] / r["floor_ms"] * 1e3
        spread = f" ({r['tok_s_min']:,.0f}-{r['tok_s_max']:,.0f})" if r.get("repeats", 1) > 1 else ""
        lines.append(
            f"| {r['shape']} | {r['attention']} | {r['batch']} | {r['tok_s']:,.0f}{spread} | {r['ms_step']:.2f} | {hf} | "
            f"{r['floor_ms']:.3f} | {floor_tok:,.0f} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--shapes", nargs="+", default=["smollm2-135m", "qwen2.5-0.5b", "qwen2.5-1.5b"])
    parser.add_argument("--batches", nargs="+", type=int, default=[1, 64, 256])
    parser.add_argument("--skip-hf", action="store_true", help="leave out transformers' generate")
    parser.add_argument("--skip-multi", action="store_true", help="leave out the Search-shaped workload")
    parser.add_argument("--mem-fraction", type=float, default=0.5)
    parser.add_argument("--no-compile", action="store_true", help="eager kernels inside the graphs")
    parser.add_argument(
        "--attention",
        nargs="+",
        default=["fused"],
        choices=["bmm", "sdpa", "fused"],
        help="decode attention variants",
    )
    parser.add_argument("--no-graphs", action="store_true", help="eager launches (no CUDA graphs)")
    parser.add_argument(
        "--fused-prefill-mb",
        nargs="+",
        type=float,
        default=[64.0],
        help="prefill chunks with more float32 attention scores than this take SDPA (one row set per value)",
    )
    parser.add_argument(
        "--repeats", type=int, default=1, help="timed runs per batch size; the table shows their median"
    )
    parser.add_argument(
        "--profile", type=Path, help="folder: one more run of the largest batch under torch's profiler"
    )
    parser.add_argument("--json", type=Path, help="append one JSON line per row here")
    args = parser.parse_args()
    if args.repeats < 1:
        parser.error(f"--repeats must be >= 1, got {args.repeats}")
    bw = copy_bandwidth()
    rows: list[dict] = []
    with tempfile.TemporaryDirectory() as tmp:
        for shape in args.shapes:
            try:
                rows += bench_shape(shape, args.batches, args, Path(tmp), bw)
            except Exception as e:  # report the other shapes anyway
                print(f"{shape}: FAILED {type(e).__name__}: {e}", flush=True)
                gc.collect()
                torch.cuda.empty_cache()
    if args.json:
        with args.json.open("a") as f:
            for r in rows:
                f.write(json.dumps(r) + "\n")
    print(table(rows, bw))


if __name__ == "__main__":
    main()
