"""The embedded engine's fast path (slot cache, batched prefill, device sampling), run eagerly on CPU.

The CUDA graphs and compiled kernels are checked on the GPU machine (tests/gpu/test_engine_cuda.py);
here the same scheduling and math run in float32 against independent references: a teacher-forced
transformers forward of the same ids, and the transformers path of the same engine.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest
import torch
from torch._dynamo.utils import counters
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

from agentrl.engines.base import SamplingParams
from agentrl.engines.embedded import compiling
from agentrl.engines.embedded.attention import prefill_attention, prefill_attention_bmm, prefill_bias
from agentrl.engines.embedded.device_sampling import hash_uniforms
from agentrl.engines.embedded.engine import EmbeddedEngine, EmbeddedEngineConfig
from agentrl.engines.embedded.graphs import length_buckets
from agentrl.errors import ConfigError
from agentrl.models import make_tiny_gpt2

TINY = dict(
    hidden_size=64,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    intermediate_size=128,
    max_position_embeddings=512,
)


def tiny_model(folder: Path, model_type: str, tokenizer_dir: Path, seed: int = 0) -> Path:
    """A random float32 decoder of ``model_type`` with the tiny GPT-2's tokenizer."""
    tok = AutoTokenizer.from_pretrained(tokenizer_dir)
    extra = {"head_dim": 16} if model_type == "qwen3" else {}
    cfg = AutoConfig.for_model(
        model_type, vocab_size=len(tok), eos_token_id=tok.convert_tokens_to_ids("<|im_end|>"), **TINY, **extra
    )
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(cfg, dtype=torch.float32)
    with torch.no_grad():  # random-init biases are zero: make q/k/v biases matter
        for name, p in model.named_parameters():
            if name.endswith("bias") or "norm" in name:
                p.add_(0.1 * torch.randn_like(p))
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def tok_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny_gpt2(tmp_path_factory.mktemp("tok") / "tiny")


def engine(folder: Path, **overrides: Any) -> EmbeddedEngine:
    cfg = dict(device="cpu", fast_path=True, max_batch_size=8, max_seq_len=256, batch_wait_ms=20)
    return EmbeddedEngine(folder, EmbeddedEngineConfig(**{**cfg, **overrides}))  # type: ignore[arg-type]


def teacher_forced(folder: Path, ids: list[int], n_out: int) -> list[float]:
    """log_softmax of an unbatched transformers forward at each of the last ``n_out`` ids."""
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)
    with torch.no_grad():
        logp = torch.log_softmax(model(torch.tensor([ids])).logits[0].float(), dim=-1)
    return [float(logp[t - 1, ids[t]]) for t in range(len(ids) - n_out, len(ids))]


def prompts(n: int, vocab: int, seed: int = 0) -> list[list[int]]:
    g = torch.Generator().manual_seed(seed)
    return [
        torch.randint(5, vocab, (int(torch.randint(3, 40, (1,), generator=g)),), generator=g).tolist()
        for _ in range(n)
    ]


@pytest.mark.parametrize(
    ("model_type", "attention", "fused_prefill_mb"),
    [
        ("llama", "bmm", 64.0),
        ("qwen2", "bmm", 64.0),
        ("qwen3", "bmm", 64.0),
        ("qwen2", "sdpa", 64.0),
        ("llama", "fused", 64.0),
        ("qwen3", "fused", 64.0),
        ("qwen3", "fused", 0.0),  # every prefill chunk through SDPA, decode fused
    ],
)
def test_logprobs_match_teacher_forced_transformers(
    tmp_path: Path, tok_dir: Path, model_type: str, attention: str, fused_prefill_mb: float
) -> None:
    folder = tiny_model(tmp_path / model_type, model_type, tok_dir)
    eng = engine(folder, decode_attention=attention, fused_prefill_mb=fused_prefill_mb)
    assert eng._cuda is not None
    # what a CUDA start-up does (both prefill paths): must leave no trace in what follows
    eng._cuda.runner.warm_up()
    sp = SamplingParams(max_new_tokens=12, temperature=1.0, ignore_eos=True)

    async def run() -> list[Any]:
        return await asyncio.gather(*(eng.generate(p, sp) for p in prompts(6, len(eng.tokenizer))))

    outs = asyncio.run(run())
    for p, out in zip(prompts(6, len(eng.tokenizer)), outs, strict=True):
        assert len(out.output_ids) == 12 and out.finish_reason == "length"
        ref = teacher_forced(folder, p + out.output_ids, 12)
        assert max(abs(a - b) for a, b in zip(out.logprobs, ref, strict=True)) < 1e-4
    asyncio.run(eng.close())


@pytest.mark.parametrize("attention", ["bmm", "fused"])
def test_greedy_matches_transformers_path_and_prefix_reuse_is_exact(
    tmp_path: Path, tok_dir: Path, attention: str
) -> None:
    folder = tiny_model(tmp_path / "m", "qwen2", tok_dir)
    fast, slow = engine(folder, decode_attention=attention), engine(folder, fast_path=False)
    sp = SamplingParams(max_new_tokens=10, temperature=0.0, ignore_eos=True)
    first, follow = prompts(4, len(fast.tokenizer)), prompts(4, len(fast.tokenizer), seed=1)

    async def episode(e: EmbeddedEngine, i: int) -> tuple[list[int], int]:
        a = await e.generate(first[i], sp, session_id=f"s{i}")
        b = await e.generate(first[i] + a.output_ids + follow[i], sp, session_id=f"s{i}")
        return a.output_ids + b.output_ids, int(b.meta["cached_tokens"])

    async def run(e: EmbeddedEngine) -> list[tuple[list[int], int]]:
        return await asyncio.gather(*(episode(e, i) for i in range(4)))

    got, want = asyncio.run(run(fast)), asyncio.run(run(slow))
    assert [ids for ids, _ in got] == [ids for ids, _ in want]
    # the second turn reuses the first turn's prompt and all its fed outputs (the last id was never fed)
    assert [cached for _, cached in got] == [len(first[i]) + 9 for i in range(4)]
    asyncio.run(fast.close())
    asyncio.run(slow.close())


def test_stops_lengths_seeds_and_weight_updates(tmp_path: Path, tok_dir: Path) -> None:
    folder = tiny_model(tmp_path / "m", "llama", tok_dir)
    eng = engine(folder)
    p = prompts(1, len(eng.tokenizer))[0]

    async def run() -> None:
        greedy = await eng.generate(p, SamplingParams(max_new_tokens=5, temperature=0.0, ignore_eos=True))
        stop = greedy.output_ids[2]
        cut = await eng.generate(p, SamplingParams(max_new_tokens=5, temperature=0.0, stop_token_ids=(stop,)))
        assert (
            cut.finish_reason == "stop"
            and cut.output_ids == greedy.output_ids[: greedy.output_ids.index(stop) + 1]
        )
        one = await eng.generate(p, SamplingParams(max_new_tokens=1, ignore_eos=True))
        assert len(one.output_ids) == 1 and one.finish_reason == "length"
        seeded = SamplingParams(max_new_tokens=8, seed=7, ignore_eos=True, top_k=20, top_p=0.9)
        alone = await eng.generate(p, seeded)
        crowd = await asyncio.gather(
            *(eng.generate(q, seeded) for q in [p, *prompts(5, len(eng.tokenizer), 3)])
        )
        assert crowd[0].output_ids == alone.output_ids  # the seed alone decides, not the batch

        other = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(folder), dtype=torch.float32)
        await eng.update_weights(other.state_dict(), version=3)
        out = await eng.generate(p, SamplingParams(max_new_tokens=6, ignore_eos=True))
        other.save_pretrained(tmp_path / "new")
        AutoTokenizer.from_pretrained(folder).save_pretrained(tmp_path / "new")
        ref = teacher_forced(tmp_path / "new", p + out.output_ids, 6)
        assert out.weight_version == 3
        assert max(abs(a - b) for a, b in zip(out.logprobs, ref, strict=True)) < 1e-4

    asyncio.run(run())
    asyncio.run(eng.close())


def test_hash_uniforms_are_uniform_and_depend_on_seed_and_step() -> None:
    seeds = torch.arange(20000) * 7919
    u = hash_uniforms(seeds, torch.zeros_like(seeds))
    assert float(u.min()) >= 0 and float(u.max()) < 1
    assert abs(float(u.mean()) - 0.5) < 0.01 and abs(float(u.var()) - 1 / 12) < 0.003
    assert not torch.equal(u, hash_uniforms(seeds, torch.ones_like(seeds)))


def test_weights_moved_off_and_back_are_rebound(tmp_path: Path, tok_dir: Path) -> None:
    """The colocated memory release moves the model away and back (new parameter storage); the fast
    path must then serve the model's current weights, including updates loaded after the move."""
    folder = tiny_model(tmp_path / "m", "qwen2", tok_dir)
    eng = engine(folder)
    p = prompts(1, len(eng.tokenizer))[0]
    other = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(folder), dtype=torch.float32)
    other.save_pretrained(tmp_path / "new")
    AutoTokenizer.from_pretrained(folder).save_pretrained(tmp_path / "new")

    async def run() -> list[float]:
        with eng._model_lock:
            eng.model.double().float()  # every parameter gets new storage, as .to("cpu") and back does
        await eng.update_weights(other.state_dict(), version=1)
        out = await eng.generate(p, SamplingParams(max_new_tokens=6, ignore_eos=True))
        ref = teacher_forced(tmp_path / "new", p + out.output_ids, 6)
        return [abs(a - b) for a, b in zip(out.logprobs, ref, strict=True)]

    assert max(asyncio.run(run())) < 1e-4
    asyncio.run(eng.close())


def test_length_buckets_step_by_128_then_double() -> None:
    assert length_buckets(8192) == [128, 256, 384, 512, 640, 768, 896, 1024, 2048, 4096, 8192]
    assert length_buckets(1536) == [128, 256, 384, 512, 640, 768, 896, 1024, 1536]
    assert length_buckets(512) == [128, 256, 384, 512]
    assert length_buckets(100) == [100]


def test_unknown_decode_attention_is_refused(tmp_path: Path, tok_dir: Path) -> None:
    folder = tiny_model(tmp_path / "m", "llama", tok_dir)
    with pytest.raises(ConfigError, match="decode_attention must be"):
        engine(folder, decode_attention="flash")


def test_fused_prefill_attention_matches_a_per_query_softmax_with_cached_offsets() -> None:
    """Rows with different cached prefixes (offsets 0, 5, 11) and padded new ids: each query attends
    to the key columns up to its own position, checked against an explicit loop of softmaxes."""
    g = torch.Generator().manual_seed(3)
    n, t, hq, hkv, d, columns = 3, 6, 4, 2, 8, 17
    q = torch.randn(n, t, hq, d, generator=g)
    keys, values = torch.randn(n, hkv, columns, d, generator=g), torch.randn(n, hkv, columns, d, generator=g)
    positions = torch.tensor([0, 5, 11]).unsqueeze(1) + torch.arange(t)  # (n, t)
    scale = d**-0.5
    want = torch.empty(n, t, hq, d)
    for r in range(n):
        for i in range(t):
            p = int(positions[r, i])
            for h in range(hq):
                kv = h // (hq // hkv)  # grouped-query: query heads 0,1 read KV head 0; 2,3 read 1
                w = torch.softmax(keys[r, kv, : p + 1] @ q[r, i, h] * scale, dim=0)
                want[r, i, h] = w @ values[r, kv, : p + 1]
    got = prefill_attention_bmm(q, keys, values, prefill_bias(positions, columns), scale)
    assert torch.allclose(got, want.reshape(n * t, hq * d), atol=1e-5)
    sdpa = prefill_attention(q, keys, values, positions, scale)  # the path for large chunks agrees
    assert torch.allclose(sdpa, got, atol=1e-5)


def test_newcomers_wait_for_each_other_and_are_prefilled_together(tmp_path: Path, tok_dir: Path) -> None:
    """While one request decodes, six staggered arrivals are admitted in one prefill (admit_wait_steps
    large), and they sample exactly what they sample when admitted one step at a time."""
    folder = tiny_model(tmp_path / "m", "llama", tok_dir)
    long = SamplingParams(max_new_tokens=230, temperature=1.0, ignore_eos=True, seed=1)
    short = [
        SamplingParams(max_new_tokens=5, temperature=1.0, ignore_eos=True, seed=10 + i) for i in range(6)
    ]
    ps = [p[:20] for p in prompts(7, 300)]  # 20 + 230 ids fit max_seq_len 256

    async def run(e: EmbeddedEngine) -> list[list[int]]:
        first = asyncio.ensure_future(e.generate(ps[0], long))
        while e.stats["decode_steps"] < 1:  # the long request decodes (230 steps: longer than what follows)
            await asyncio.sleep(0.001)
        rest = []
        for i in range(6):
            rest.append(asyncio.ensure_future(e.generate(ps[1 + i], short[i])))
            await asyncio.sleep(0.001)
        return [o.output_ids for o in await asyncio.gather(first, *rest)]

    batched = engine(folder, admit_wait_steps=10_000)
    eager = engine(folder, admit_wait_steps=0)
    try:
        got, want = asyncio.run(run(batched)), asyncio.run(run(eager))
        assert batched.stats["prefills"] == 2 and batched.stats["prefill_requests"] == 7
        assert got == want
    finally:
        asyncio.run(batched.close())
        asyncio.run(eager.close())


def test_negative_admit_wait_steps_is_refused(tmp_path: Path, tok_dir: Path) -> None:
    folder = tiny_model(tmp_path / "m", "llama", tok_dir)
    with pytest.raises(ConfigError, match="admit_wait_steps must be >= 0"):
        engine(folder, admit_wait_steps=-1)


def test_warm_up_compiles_every_prefill_form(
    tmp_path: Path, tok_dir: Path, monkeypatch: pytest.MonkeyPatch, recompile_limit_hits: list[str]
) -> None:
    """The start-up warm-up compiles every form of the prefill, here with inductor on the CPU (the
    fast path compiles only on CUDA; the test turns compiling on): prefill chunks of other sizes
    afterwards (several rows, one-id turns, long cached prefixes, later rows) compile nothing new and
    never reach torch's recompile limit, past which a compiled function silently runs eagerly. The
    same check on the GPU, through whole multi-turn sessions: tests/gpu/test_engine_cuda.py."""
    real = compiling.compiled

    def always(fn: Any, enabled: bool, **kwargs: Any) -> Any:
        return real(fn, True, **kwargs)

    monkeypatch.setattr(compiling, "compiled", always)
    # the CPU compiles fewer forms than the GPU (no matmul padding): a lower limit than torch's 8 stands
    # in for the GPU's dozen forms, so the runner's own limit is what keeps every form compiled
    monkeypatch.setattr(torch._dynamo.config, "recompile_limit", 3)
    eng = engine(tiny_model(tmp_path / "m", "qwen2", tok_dir))
    try:
        assert eng._cuda is not None
        runner = eng._cuda.runner
        before = counters["frames"]["ok"]
        runner.warm_up()
        warmed = counters["frames"]["ok"]
        assert warmed > before  # it compiled (else this test checks nothing)
        with torch.inference_mode():
            for first, n, t, cached in [
                (0, 8, 5, 100),
                (2, 3, 1, 170),
                (0, 1, 7, 30),
                (4, 2, 1, 2),
                (1, 5, 40, 0),
            ]:
                ids = torch.randint(5, 50, (n, t))
                pos = (cached + torch.arange(t)).expand(n, t)
                out = runner._prefill_chunk(first, ids, pos, from_zero=cached == 0)
                assert out.shape == (n * t, runner.w.spec.hidden) and torch.isfinite(out).all()
        assert counters["frames"]["ok"] == warmed, "a prefill form was compiled after the warm-up"
        assert not recompile_limit_hits, recompile_limit_hits[:2]
    finally:
        asyncio.run(eng.close())
