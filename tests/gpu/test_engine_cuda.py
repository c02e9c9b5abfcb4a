"""The embedded engine's CUDA fast path on the GPU: logprob parity, graphs, in-place weight updates.

Reference: a teacher-forced transformers forward of each full sequence (prompt + sampled ids), in the
engine's dtype. The Engine contract asks bf16 mean abs diff <= 1e-2 and fp32 <= 1e-4.
"""

from __future__ import annotations

import asyncio
import gc
import json
import os
from pathlib import Path
from typing import Any

import pytest
import torch

from agentrl.engines.base import SamplingParams
from agentrl.engines.embedded.engine import EmbeddedEngine, EmbeddedEngineConfig
from agentrl.models import make_tiny_gpt2
from agentrl.trainer.megatron.shapes import random_checkpoint

pytestmark = pytest.mark.gpu


def record(name: str, **values: Any) -> None:
    path = os.environ.get("AGENTRL_GPU_RESULTS")
    if path:
        with open(path, "a") as f:
            f.write(json.dumps({"test": name, **values}) + "\n")


@pytest.fixture(scope="module")
def tokenizer_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny_gpt2(tmp_path_factory.mktemp("tok") / "tiny")


def checkpoint(shape: str, root: Path, tokenizer_dir: Path, seed: int = 1) -> Path:
    folder = random_checkpoint(shape, root / shape, seed=seed)
    for f in tokenizer_dir.glob("tokenizer*"):
        (folder / f.name).write_bytes(f.read_bytes())
    return folder


def sample(engine: EmbeddedEngine, n: int, new: int, seed: int = 0) -> tuple[list[list[int]], list[Any]]:
    g = torch.Generator().manual_seed(seed)
    vocab = engine.model.config.vocab_size
    prompts = [
        torch.randint(100, vocab, (int(k),), generator=g).tolist()
        for k in torch.randint(20, 200, (n,), generator=g)
    ]
    sp = SamplingParams(max_new_tokens=new, temperature=1.0, ignore_eos=True)

    async def go() -> list[Any]:
        return await asyncio.gather(*(engine.generate(p, sp) for p in prompts))

    return prompts, asyncio.run(go())


def load_reference(folder: Path, dtype: torch.dtype) -> Any:
    from transformers import AutoModelForCausalLM

    model: Any = AutoModelForCausalLM.from_pretrained(folder, dtype=dtype, attn_implementation="sdpa")
    return model.cuda().eval()


def teacher_forced_diffs(model: Any, prompts: list[list[int]], outs: list[Any]) -> torch.Tensor:
    """|engine logprob - transformers logprob| of every sampled token."""
    diffs = []
    with torch.no_grad():
        for p, out in zip(prompts, outs, strict=True):
            ids = torch.tensor([p + out.output_ids], device="cuda")
            logp = torch.log_softmax(model(ids).logits[0].float(), dim=-1)  # (T, V)
            n = len(out.output_ids)
            targets = ids[0, -n:]
            ref = logp[-n - 1 : -1].gather(1, targets.unsqueeze(1)).squeeze(1)
            diffs.append((torch.tensor(out.logprobs, device="cuda") - ref).abs())
    return torch.cat(diffs)


@pytest.mark.parametrize(
    ("shape", "dtype", "tol"), [("qwen2.5-0.5b", "bfloat16", 1e-2), ("smollm2-135m", "float32", 1e-4)]
)
def test_logprob_parity_graphs_and_in_place_weight_update(
    shape: str, dtype: str, tol: float, tmp_path: Path, tokenizer_dir: Path
) -> None:
    folder = checkpoint(shape, tmp_path, tokenizer_dir)
    engine = EmbeddedEngine(
        folder, EmbeddedEngineConfig(dtype=dtype, max_batch_size=64, mem_fraction_static=0.3)
    )
    assert engine._cuda is not None
    torch_dtype = getattr(torch, dtype)
    ref = load_reference(folder, torch_dtype)
    prompts, outs = sample(engine, 24, 48)
    diff = teacher_forced_diffs(ref, prompts, outs)
    graphs = engine._cuda.runner.graphs.captures
    record(
        "engine_cuda_parity",
        shape=shape,
        dtype=dtype,
        mean=float(diff.mean()),
        max=float(diff.max()),
        tokens=diff.numel(),
    )
    assert graphs > 0
    assert float(diff.mean()) <= tol

    new = checkpoint(shape, tmp_path / "new", tokenizer_dir, seed=2)
    ref2 = load_reference(new, torch_dtype)
    asyncio.run(engine.update_weights(ref2.state_dict(), version=1))
    prompts, outs = sample(engine, 24, 48, seed=1)
    diff2 = teacher_forced_diffs(ref2, prompts, outs)
    record(
        "engine_cuda_parity_after_update",
        shape=shape,
        dtype=dtype,
        mean=float(diff2.mean()),
        max=float(diff2.max()),
    )
    assert float(diff2.mean()) <= tol and all(o.weight_version == 1 for o in outs)
    assert (
        engine._cuda.runner.graphs.captures == graphs
    )  # same buckets: the old graphs served the new weights
    asyncio.run(engine.close())
    del engine, ref, ref2
    gc.collect()
    torch.cuda.empty_cache()


def test_no_compile_after_start_up(
    tmp_path: Path, tokenizer_dir: Path, recompile_limit_hits: list[str]
) -> None:
    """Every form the compiled layer functions take is compiled at start-up: multi-turn sessions of
    varied sizes afterwards (one and many rows, one-id turns, long cached prefixes, group samples that
    share a prompt) compile nothing and never reach torch's recompile limit, past which a function runs
    eagerly (how the commonest fused-prefill form once lost its kernels on the H200)."""
    from torch._dynamo.utils import counters

    folder = checkpoint("smollm2-135m", tmp_path, tokenizer_dir)
    engine = EmbeddedEngine(
        str(folder),
        EmbeddedEngineConfig(
            device="cuda", dtype="bfloat16", max_batch_size=64, max_seq_len=1024, mem_fraction_static=0.3
        ),
    )
    try:
        compiled = counters["frames"]["ok"]
        g = torch.Generator().manual_seed(0)
        vocab = engine.model.config.vocab_size

        def ids(k: int) -> list[int]:
            return torch.randint(100, vocab, (k,), generator=g).tolist()

        async def episode(i: int, prompt: list[int]) -> None:
            sp = SamplingParams(max_new_tokens=int(8 + 24 * (i % 3)), temperature=1.0, ignore_eos=True)
            context = list(prompt)
            for turn in range(3):
                out = await engine.generate(list(context), sp, session_id=f"s{i}")
                context += out.output_ids + ids(1 if turn == 0 and i % 2 else 5 + 30 * (i % 4))

        async def waves() -> None:
            for groups, n in ((1, 1), (8, 8), (3, 5), (1, 3)):  # a lone request, a full rollout, ...
                prompts = [ids(int(k)) for k in torch.randint(20, 400, (groups,), generator=g)]
                await asyncio.gather(*(episode(j, prompts[j // n]) for j in range(groups * n)))

        asyncio.run(waves())
        after = counters["frames"]["ok"]
        record("no_compile_after_start_up", compiles_at_start_up=compiled, compiles_after=after - compiled)
        assert after == compiled, f"{after - compiled} compiles after start-up"
        assert not recompile_limit_hits, recompile_limit_hits[:2]
    finally:
        asyncio.run(engine.close())
