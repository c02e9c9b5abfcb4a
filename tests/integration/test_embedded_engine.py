"""The embedded engine on a real (tiny, random) GPT-2, and the controller driven by real engines.

``engine_kind`` is parametrised so that other engines (SGLang on CPU) can join the controller tests:
add a kind to ``ENGINE_KINDS`` and a branch to ``make_engine``.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from rollout_harness import ScriptedEnv, ScriptTurn, check_trajectory, run_with_driver
from transformers import AutoModelForCausalLM

from agentrl.engines.base import SamplingParams
from agentrl.engines.embedded.engine import EmbeddedEngine, EmbeddedEngineConfig
from agentrl.models import make_tiny_gpt2
from agentrl.rollout.controller import RolloutConfig
from agentrl.types import Status

ENGINE_KINDS = ["embedded"]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny_gpt2(tmp_path_factory.mktemp("models") / "tiny")


def make_engine(kind: str, model_dir: Path) -> Any:
    if kind == "embedded":
        return EmbeddedEngine(model_dir, EmbeddedEngineConfig(device="cpu", batch_wait_ms=20))
    raise ValueError(kind)


@pytest.fixture(scope="module")
def engine(model_dir: Path) -> Iterator[EmbeddedEngine]:
    eng = EmbeddedEngine(model_dir, EmbeddedEngineConfig(device="cpu", batch_wait_ms=20))
    yield eng
    asyncio.run(eng.close())


def prompt(engine: EmbeddedEngine, question: str) -> list[int]:
    text = engine.tokenizer.apply_chat_template(
        [{"role": "user", "content": question}], tokenize=False, add_generation_prompt=True
    )
    return list(engine.tokenizer(text, add_special_tokens=False)["input_ids"])


def reference_logprobs(model: Any, ids: list[int], n_out: int, temperature: float) -> list[float]:
    """Logprobs of the last ``n_out`` ids under log_softmax(logits / T), from one unbatched forward."""
    with torch.no_grad():
        logits = model(torch.tensor([ids])).logits[0].float()  # (T, V)
    scaled = torch.log_softmax(logits / (temperature if temperature > 0 else 1.0), dim=-1)
    start = len(ids) - n_out
    return [float(scaled[t - 1, ids[t]]) for t in range(start, len(ids))]


def test_greedy_matches_transformers_generate(engine: EmbeddedEngine) -> None:
    ids = prompt(engine, "What is the capital of France?")
    out = asyncio.run(engine.generate(ids, SamplingParams(max_new_tokens=24, temperature=0.0)))
    ref = engine.model.generate(torch.tensor([ids]), max_new_tokens=24, do_sample=False)[
        0, len(ids) :
    ].tolist()
    assert out.output_ids == ref  # the whole continuation: a premature stop would be shorter
    assert out.finish_reason == ("stop" if out.output_ids[-1] in engine.eos_ids else "length")
    expected = reference_logprobs(engine.model, ids + out.output_ids, len(out.output_ids), 0.0)
    assert out.logprobs == pytest.approx(expected, abs=1e-4)


def test_ignore_eos_samples_past_the_models_eos(model_dir: Path, tmp_path: Path) -> None:
    """A copy whose config names the greedy first token as EOS stops there, unless ``ignore_eos``."""
    import json
    import shutil

    probe = EmbeddedEngine(model_dir, EmbeddedEngineConfig(device="cpu"))
    ids = prompt(probe, "What is the capital of France?")
    first = asyncio.run(probe.generate(ids, SamplingParams(max_new_tokens=1, temperature=0.0))).output_ids[0]
    asyncio.run(probe.close())
    copy = Path(shutil.copytree(model_dir, tmp_path / "eos"))
    config = json.loads((copy / "config.json").read_text())
    config["eos_token_id"] = first
    (copy / "config.json").write_text(json.dumps(config))

    eng = EmbeddedEngine(copy, EmbeddedEngineConfig(device="cpu"))
    try:
        stopped = asyncio.run(eng.generate(ids, SamplingParams(max_new_tokens=6, temperature=0.0)))
        kept = asyncio.run(
            eng.generate(ids, SamplingParams(max_new_tokens=6, temperature=0.0, ignore_eos=True))
        )
    finally:
        asyncio.run(eng.close())
    assert stopped.output_ids == [first] and stopped.finish_reason == "stop"
    assert kept.output_ids[0] == first and len(kept.output_ids) == 6 and kept.finish_reason == "length"


def test_concurrent_requests_are_batched_with_contract_logprobs(engine: EmbeddedEngine) -> None:
    prompts = [prompt(engine, f"Question number {i}: what is {i} plus {i}?") for i in range(6)]

    async def main() -> list[Any]:
        return await asyncio.gather(
            *(
                engine.generate(p, SamplingParams(max_new_tokens=16, temperature=0.7, seed=i))
                for i, p in enumerate(prompts)
            )
        )

    outs = asyncio.run(main())
    for p, out in zip(prompts, outs, strict=True):
        assert len(out.output_ids) == len(out.logprobs) >= 1
        # Contract logprobs: of the unscaled logits, although sampling used T = 0.7.
        expected = reference_logprobs(engine.model, p + out.output_ids, len(out.output_ids), 1.0)
        # Left-padded batched attention vs one unpadded forward: equal up to float noise.
        assert out.logprobs == pytest.approx(expected, abs=1e-3)
    # Seeded requests are reproducible, alone or in a batch.
    again = asyncio.run(
        engine.generate(prompts[2], SamplingParams(max_new_tokens=16, temperature=0.7, seed=2))
    )
    assert again.output_ids == outs[2].output_ids


def test_sampling_logprobs_are_post_temperature(model_dir: Path) -> None:
    """``logprobs="sampling"``: SGLang's default, log_softmax(logits / T)."""
    engine = EmbeddedEngine(model_dir, EmbeddedEngineConfig(device="cpu", logprobs="sampling"))
    ids = prompt(engine, "What is two plus two?")
    out = asyncio.run(engine.generate(ids, SamplingParams(max_new_tokens=12, temperature=0.7, seed=1)))
    expected = reference_logprobs(engine.model, ids + out.output_ids, len(out.output_ids), 0.7)
    assert out.logprobs == pytest.approx(expected, abs=1e-4)
    asyncio.run(engine.close())


def test_stop_string_and_stop_id(engine: EmbeddedEngine) -> None:
    tok = engine.tokenizer
    ids = prompt(engine, "Tell me about rivers.")
    free = asyncio.run(engine.generate(ids, SamplingParams(max_new_tokens=40, temperature=0.0)))
    text = str(tok.decode(free.output_ids))
    assert len(free.output_ids) >= 10, "need a long greedy continuation to cut"
    # A stop string that ends inside token 6: output stops there and keeps the stop string.
    cut = len(tok.decode(free.output_ids[:6]))
    stop = text[max(0, cut - 3) : cut]
    out = asyncio.run(engine.generate(ids, SamplingParams(max_new_tokens=40, temperature=0.0, stop=(stop,))))
    assert out.finish_reason == "stop"
    assert stop in tok.decode(out.output_ids) and stop not in tok.decode(out.output_ids[:-1])
    assert out.output_ids == free.output_ids[: len(out.output_ids)]
    # A stop token id: the output ends with it.
    stop_id = free.output_ids[4]
    first = free.output_ids.index(stop_id)
    out = asyncio.run(
        engine.generate(ids, SamplingParams(max_new_tokens=40, temperature=0.0, stop_token_ids=(stop_id,)))
    )
    assert out.finish_reason == "stop" and out.output_ids == free.output_ids[: first + 1]


def test_abort_pause_resume(engine: EmbeddedEngine) -> None:
    ids = prompt(engine, "Count forever.")
    greedy = SamplingParams(max_new_tokens=1500, temperature=0.0)  # this prompt never samples EOS greedily

    async def main() -> None:
        long = asyncio.ensure_future(engine.generate(ids, greedy, session_id="s1"))
        while not any(r.session_id == "s1" and len(r.output_ids) >= 3 for r in list(engine._running)):
            assert not long.done(), (await long).finish_reason
            await asyncio.sleep(0.01)
        await engine.abort("s1")
        out = await asyncio.wait_for(long, 30)
        assert out.finish_reason == "abort" and 3 <= len(out.output_ids) < 1500
        assert len(out.logprobs) == len(out.output_ids)
        await engine.pause()
        queued = asyncio.ensure_future(
            engine.generate(ids, SamplingParams(max_new_tokens=4), session_id="s2")
        )
        dropped = asyncio.ensure_future(
            engine.generate(ids, SamplingParams(max_new_tokens=4), session_id="s3")
        )
        await asyncio.sleep(0.4)
        assert not queued.done() and not dropped.done(), "a paused engine must not start new requests"
        await engine.abort("s3")  # aborting a queued request returns it without generating
        await engine.resume()
        assert (await asyncio.wait_for(queued, 30)).finish_reason in ("stop", "length")
        aborted = await asyncio.wait_for(dropped, 30)
        assert aborted.finish_reason == "abort" and aborted.output_ids == []

    asyncio.run(main())


def test_update_weights_changes_logprobs(model_dir: Path) -> None:
    engine = EmbeddedEngine(model_dir, EmbeddedEngineConfig(device="cpu"))
    ids = prompt(engine, "What is the capital of Peru?")
    sampling = SamplingParams(max_new_tokens=8, temperature=0.0)
    before = asyncio.run(engine.generate(ids, sampling))
    other = AutoModelForCausalLM.from_pretrained(model_dir)
    torch.manual_seed(7)
    with torch.no_grad():
        for p in other.parameters():
            p.add_(torch.randn_like(p) * 0.5)
    asyncio.run(engine.update_weights(other.state_dict(), version=5))
    after = asyncio.run(engine.generate(ids, sampling))
    assert after.weight_version == 5 and before.weight_version == 0
    assert after.logprobs != pytest.approx(before.logprobs, abs=1e-3)
    expected = reference_logprobs(other, ids + after.output_ids, len(after.output_ids), 0.0)
    assert after.logprobs == pytest.approx(expected, abs=1e-4)
    asyncio.run(engine.close())


@pytest.mark.parametrize("engine_kind", ENGINE_KINDS)
@pytest.mark.parametrize("inline", [False, True])
def test_controller_invariants_with_real_engine(engine_kind: str, inline: bool, model_dir: Path) -> None:
    """The controller's token invariants hold on what a real engine samples (random model, random text)."""
    script = [
        ScriptTurn("", observation=[{"role": "tool", "content": "Doc 1: Lima is the capital of Peru."}]),
        ScriptTurn("", observation=[{"role": "user", "content": "Anything else? é✓"}]),
        ScriptTurn(""),
    ]
    eng = make_engine(engine_kind, model_dir)
    envs: list[ScriptedEnv] = []

    def factory(**kwargs: Any) -> ScriptedEnv:
        envs.append(ScriptedEnv(script, inline=inline, num_tasks=2, **kwargs))
        return envs[-1]

    config = RolloutConfig(
        max_new_tokens=24, max_context=1024, temperature=1.0, stop_token_ids=(), max_concurrency=4
    )
    groups = run_with_driver(eng, model_dir, factory, ["0:t0", "0:t1"], 3, config)
    assert [len(g) for g in groups] == [3, 3] and len(envs) <= 4
    for group in groups:
        assert len({t.group_id for t in group}) == 1
        for traj in group:
            assert traj.status in (Status.COMPLETED, Status.TRUNCATED), traj.error
            assert sum(traj.loss_mask) >= 1
            assert all(lp <= 0 for lp, m in zip(traj.rollout_logprobs, traj.loss_mask, strict=True) if m)
    # Re-run the invariant check per episode with a fresh env that replays what the env saw.
    for traj in (t for g in groups for t in g):
        env = ScriptedEnv(script, inline=inline)
        env.received = [t["text"] for t in traj.turns if "info" in t]
        check_trajectory(traj, env, eng.tokenizer)


def test_next_turn_prefills_only_new_ids(engine: EmbeddedEngine) -> None:
    """A session's next turn (and a group-mate's identical prompt) reuse stored KV; logprobs stay exact."""
    tok = engine.tokenizer
    ids = prompt(engine, "Where is Lima?")
    first = asyncio.run(
        engine.generate(ids, SamplingParams(max_new_tokens=12, temperature=0.0), session_id="ep")
    )
    observation = tok("<information>Lima is in Peru.</information>", add_special_tokens=False)["input_ids"]
    ids2 = ids + first.output_ids + observation
    second = asyncio.run(
        engine.generate(ids2, SamplingParams(max_new_tokens=12, temperature=1.0, seed=3), session_id="ep")
    )
    # Everything the first turn fed the model: its prompt and all but the last sampled id.
    assert second.meta["cached_tokens"] == len(ids) + len(first.output_ids) - 1
    expected = reference_logprobs(engine.model, ids2 + second.output_ids, len(second.output_ids), 1.0)
    assert second.logprobs == pytest.approx(expected, abs=1e-4)
    greedy = asyncio.run(
        engine.generate(ids2, SamplingParams(max_new_tokens=12, temperature=0.0), session_id="x")
    )
    ref = engine.model.generate(torch.tensor([ids2]), max_new_tokens=12, do_sample=False)[
        0, len(ids2) :
    ].tolist()
    assert greedy.output_ids == ref
    assert greedy.meta["cached_tokens"] == len(ids2) - 1  # another session, same ids: all but the last


def test_request_joins_running_batch(engine: EmbeddedEngine) -> None:
    """Continuous batching: a request arriving mid-decode is served without waiting for the batch."""
    long_ids, short_ids = prompt(engine, "Count forever."), prompt(engine, "Say one short thing, please.")

    async def main() -> None:
        long = asyncio.ensure_future(
            engine.generate(long_ids, SamplingParams(max_new_tokens=400, temperature=0.0), session_id="long")
        )
        while not any(r.session_id == "long" and len(r.output_ids) >= 3 for r in list(engine._running)):
            await asyncio.sleep(0.005)
        short = await engine.generate(short_ids, SamplingParams(max_new_tokens=6, temperature=0.0))
        assert not long.done(), "the short request waited for the long one"
        for ids, out in ((short_ids, short), (long_ids, await long)):
            ref = engine.model.generate(
                torch.tensor([ids]), max_new_tokens=len(out.output_ids), do_sample=False
            )
            assert out.output_ids == ref[0, len(ids) :].tolist()
            expected = reference_logprobs(engine.model, ids + out.output_ids, len(out.output_ids), 0.0)
            assert out.logprobs == pytest.approx(expected, abs=1e-3)

    asyncio.run(main())


def test_engine_dtype_and_threads_reach_the_embedded_engine(model_dir: Path) -> None:
    from agentrl.engines.config import EngineConfig
    from agentrl.engines.factory import start_engine
    from agentrl.errors import ConfigError

    with pytest.raises(ConfigError, match="--engine-dtype='bf16' is not one of"):
        EngineConfig(dtype="bf16")
    with pytest.raises(ConfigError, match="--engine-threads=0 must be >= 1"):
        EngineConfig(threads=0)

    async def generate() -> tuple[Any, list[int], Any]:
        engine: Any = await start_engine(EngineConfig(device="cpu", dtype="bfloat16", threads=2), model_dir)
        try:
            ids = prompt(engine, "Hello there")
            out = await engine.generate(ids, SamplingParams(max_new_tokens=6, temperature=0.0))
            return engine, ids, out
        finally:
            await engine.close()

    engine, ids, out = asyncio.run(generate())
    assert engine.config.num_threads == 2
    assert {p.dtype for p in engine.model.parameters()} == {torch.bfloat16}
    assert len(out.output_ids) == 6
    # The contract's logprobs, of the bf16 model: within bf16 rounding of an fp32 forward.
    fp32 = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    want = reference_logprobs(fp32, ids + out.output_ids, len(out.output_ids), 1.0)
    gaps = [abs(a - b) for a, b in zip(out.logprobs, want, strict=True)]
    assert 0 < max(gaps) < 0.2
