"""SGLangEngine against a real SGLang server on CPU (tiny GPT-2, float32, torch-native attention).

Served logprobs are checked against transformers' own forward pass of the same weights on the same ids
(an independent implementation), so a wrong field name, a logprob of the wrong token, temperature
scaling or stale weights after an update would all show up as a mismatch. One server serves the whole
module (starting one takes about 40 s on two cores).
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from transformers import AutoTokenizer, GPT2LMHeadModel

from agentrl.engines.base import Engine, SamplingParams
from agentrl.engines.sglang.engine import SGLangEngine, SGLangEngineConfig
from agentrl.engines.sglang.launcher import CPU_SERVER_ARGS, find_sglang_python
from agentrl.errors import ConfigError
from agentrl.models import make_tiny_gpt2

LOGPROB_TOL = 1e-3


def sglang_python_or_skip() -> str:
    try:
        return find_sglang_python()
    except ConfigError as exc:
        pytest.skip(f"SGLang venv not installed (run scripts/setup_sglang.sh): {exc}")


def sharpened_copy(src: Path, dst: Path, *, scale: float, noise_seed: int | None = None) -> Path:
    """Save ``src`` with its (tied) embeddings scaled, optionally plus noise on every weight.

    A freshly initialised GPT-2 predicts an almost uniform distribution, against which any logprob
    check passes; scaling the embeddings spreads the logits so token-level differences are visible.
    """
    if (dst / "config.json").exists():
        return dst
    model = GPT2LMHeadModel.from_pretrained(src, dtype=torch.float32)
    with torch.no_grad():
        if noise_seed is not None:
            gen = torch.Generator().manual_seed(noise_seed)
            for param in model.parameters():
                param.add_(0.05 * torch.randn(param.shape, generator=gen))
        model.transformer.wte.weight.mul_(scale)
    model.save_pretrained(dst)
    AutoTokenizer.from_pretrained(src).save_pretrained(dst)
    return dst


def reference_logprobs(folder: Path, prompt: list[int], output: list[int]) -> list[float]:
    """log p(output[i] | prompt + output[:i]) from transformers, at temperature 1."""
    model = GPT2LMHeadModel.from_pretrained(folder, dtype=torch.float32).eval()
    ids = torch.tensor([prompt + output])  # (1, T)
    with torch.no_grad():
        logits = model(ids).logits[0]  # (T, V)
    logprobs = torch.log_softmax(logits.double(), dim=-1)
    start = len(prompt) - 1
    return [logprobs[start + i, tok].item() for i, tok in enumerate(output)]


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("sglang-models")
    base = make_tiny_gpt2(root / "tiny")
    return {
        "base": sharpened_copy(base, root / "sharp", scale=6.0),
        "perturbed": sharpened_copy(base, root / "perturbed", scale=6.0, noise_seed=7),
    }


@pytest.fixture(scope="module")
def event_loop_runner() -> Iterator[asyncio.Runner]:
    with asyncio.Runner() as runner:
        yield runner


@pytest.fixture(scope="module")
def engine(
    models: dict[str, Path], event_loop_runner: asyncio.Runner, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[SGLangEngine]:
    python = sglang_python_or_skip()
    config = SGLangEngineConfig(
        model_path=str(models["base"]),
        python=python,
        sglang_args=CPU_SERVER_ARGS,
        log_dir=str(tmp_path_factory.mktemp("sglang-logs")),
        startup_timeout_s=300,
        health_interval_s=1.0,
    )
    eng = event_loop_runner.run(SGLangEngine(config).start())
    yield eng
    event_loop_runner.run(eng.close())


@pytest.fixture
def run(event_loop_runner: asyncio.Runner):  # type: ignore[no-untyped-def]
    return event_loop_runner.run


def prompt_ids(folder: Path, text: str = "The capital of France is") -> list[int]:
    return list(AutoTokenizer.from_pretrained(folder)(text)["input_ids"])


def test_engine_protocol_and_health(engine: SGLangEngine, run) -> None:  # type: ignore[no-untyped-def]
    assert isinstance(engine, Engine)
    assert run(engine.health()) is True


def test_logprobs_match_transformers(engine: SGLangEngine, models: dict[str, Path], run) -> None:  # type: ignore[no-untyped-def]
    prompt = prompt_ids(models["base"])
    out = run(engine.generate(prompt, SamplingParams(max_new_tokens=24, temperature=1.0), session_id="s"))
    assert out.finish_reason in ("length", "stop")
    assert len(out.output_ids) == len(out.logprobs) > 0
    expected = reference_logprobs(models["base"], prompt, out.output_ids)
    assert max(abs(a - b) for a, b in zip(out.logprobs, expected, strict=True)) < LOGPROB_TOL
    # The sharpened model is far from uniform, so this comparison has teeth.
    assert max(expected) - min(expected) > 1.0


def test_logprobs_are_before_temperature(engine: SGLangEngine, models: dict[str, Path], run) -> None:  # type: ignore[no-untyped-def]
    prompt = prompt_ids(models["base"], "What is the capital of Peru?")
    out = run(engine.generate(prompt, SamplingParams(max_new_tokens=12, temperature=0.5, seed=3)))
    expected = reference_logprobs(models["base"], prompt, out.output_ids)
    assert max(abs(a - b) for a, b in zip(out.logprobs, expected, strict=True)) < LOGPROB_TOL


def test_greedy_matches_transformers_argmax(engine: SGLangEngine, models: dict[str, Path], run) -> None:  # type: ignore[no-untyped-def]
    prompt = prompt_ids(models["base"])
    out = run(engine.generate(prompt, SamplingParams(max_new_tokens=10, temperature=0.0)))
    model = GPT2LMHeadModel.from_pretrained(models["base"], dtype=torch.float32).eval()
    eos = model.config.eos_token_id
    ids = list(prompt)
    with torch.no_grad():
        while len(ids) - len(prompt) < 10 and ids[-1] != eos:  # greedy to the length cap or EOS
            ids.append(int(model(torch.tensor([ids])).logits[0, -1].argmax()))
    assert out.output_ids == ids[len(prompt) :]  # all of it: a premature stop would be shorter
    assert out.finish_reason == ("stop" if ids[-1] == eos else "length")


def test_stop_token_id_ends_generation_and_is_kept(
    engine: SGLangEngine, models: dict[str, Path], run
) -> None:  # type: ignore[no-untyped-def]
    prompt = prompt_ids(models["base"])
    free = run(engine.generate(prompt, SamplingParams(max_new_tokens=16, temperature=0.0)))
    stop_id = free.output_ids[4]
    first = free.output_ids.index(stop_id)
    out = run(
        engine.generate(prompt, SamplingParams(max_new_tokens=16, temperature=0.0, stop_token_ids=(stop_id,)))
    )
    assert out.finish_reason == "stop"
    assert out.output_ids == free.output_ids[: first + 1]
    assert len(out.logprobs) == len(out.output_ids)


def test_stop_string_ends_generation_and_is_kept(engine: SGLangEngine, models: dict[str, Path], run) -> None:  # type: ignore[no-untyped-def]
    tokenizer = AutoTokenizer.from_pretrained(models["base"])
    prompt = prompt_ids(models["base"])
    free = run(engine.generate(prompt, SamplingParams(max_new_tokens=24, temperature=0.0)))
    # Pick a stop string that first completes at token k of the greedy output.
    k = next(i for i in range(3, len(free.output_ids)) if tokenizer.decode(free.output_ids[i]).strip())
    stop = tokenizer.decode(free.output_ids[k]).strip()
    first = next(i for i in range(len(free.output_ids)) if stop in tokenizer.decode(free.output_ids[: i + 1]))
    out = run(engine.generate(prompt, SamplingParams(max_new_tokens=24, temperature=0.0, stop=(stop,))))
    assert out.finish_reason == "stop"
    assert out.output_ids == free.output_ids[: first + 1]
    assert stop in tokenizer.decode(out.output_ids)


def test_abort_one_session_leaves_others_running(engine: SGLangEngine, models: dict[str, Path], run) -> None:  # type: ignore[no-untyped-def]
    prompt = prompt_ids(models["base"])
    long = SamplingParams(max_new_tokens=1500, temperature=1.0, ignore_eos=True)  # only the abort ends it
    short = SamplingParams(max_new_tokens=8, temperature=1.0)

    async def scenario():  # type: ignore[no-untyped-def]
        victim = asyncio.create_task(engine.generate(prompt, long, session_id="victim"))
        other = asyncio.create_task(engine.generate(prompt, short, session_id="bystander"))
        # SGLang ignores an abort of a rid its scheduler has not registered yet, and nothing says when it
        # has: re-send the abort until the victim returns (no sleep that a slow machine could outrun).
        deadline = asyncio.get_running_loop().time() + 60
        while not victim.done():
            assert asyncio.get_running_loop().time() < deadline, "the abort never took"
            await engine.abort("victim")
            await asyncio.wait({victim}, timeout=0.2)
        return victim.result(), await asyncio.wait_for(other, 60)

    victim, other = run(scenario())
    assert victim.finish_reason == "abort"
    assert len(victim.output_ids) == len(victim.logprobs) < 1500
    assert other.finish_reason in ("length", "stop") and len(other.output_ids) > 0


def test_pause_holds_requests_until_resume(engine: SGLangEngine, models: dict[str, Path], run) -> None:  # type: ignore[no-untyped-def]
    prompt = prompt_ids(models["base"])

    async def scenario():  # type: ignore[no-untyped-def]
        inflight = asyncio.create_task(
            engine.generate(prompt, SamplingParams(max_new_tokens=1500, ignore_eos=True))
        )
        await asyncio.sleep(1.0)
        await engine.pause()  # pause_mode "abort": a request the scheduler holds comes back aborted
        held = asyncio.create_task(engine.generate(prompt, SamplingParams(max_new_tokens=4)))
        await asyncio.sleep(1.5)
        state = {"held": not held.done(), "inflight_done": inflight.done()}
        await engine.resume()
        return state, await asyncio.wait_for(inflight, 120), await asyncio.wait_for(held, 60)

    state, first, after = run(scenario())
    assert state["held"], "a paused engine must not start new requests"
    # On a loaded machine the first request may reach SGLang only after the pause; SGLang then holds
    # it like a new one and it finishes after resume. Either way it comes back, never lost.
    if state["inflight_done"]:
        assert first.finish_reason == "abort" and len(first.output_ids) < 1500
    assert len(first.output_ids) == len(first.logprobs)
    assert after.finish_reason in ("length", "stop") and len(after.output_ids) > 0
    assert run(engine.health()) is True


def test_update_weights_from_disk_changes_logprobs(
    engine: SGLangEngine, models: dict[str, Path], run
) -> None:  # type: ignore[no-untyped-def]
    prompt = prompt_ids(models["base"])
    sampling = SamplingParams(max_new_tokens=16, temperature=1.0)
    try:
        run(engine.update_weights(models["perturbed"], version=5))
        out = run(engine.generate(prompt, sampling))
        assert out.weight_version == 5
        new_expected = reference_logprobs(models["perturbed"], prompt, out.output_ids)
        old_expected = reference_logprobs(models["base"], prompt, out.output_ids)
        assert max(abs(a - b) for a, b in zip(out.logprobs, new_expected, strict=True)) < LOGPROB_TOL
        assert max(abs(a - b) for a, b in zip(out.logprobs, old_expected, strict=True)) > 0.1
    finally:
        run(engine.update_weights(models["base"], version=6))
    back = run(engine.generate(prompt, sampling))
    assert back.weight_version == 6
    expected = reference_logprobs(models["base"], prompt, back.output_ids)
    assert max(abs(a - b) for a, b in zip(back.logprobs, expected, strict=True)) < LOGPROB_TOL


def test_many_concurrent_sessions_all_return(engine: SGLangEngine, models: dict[str, Path], run) -> None:  # type: ignore[no-untyped-def]
    prompt = prompt_ids(models["base"])

    async def scenario():  # type: ignore[no-untyped-def]
        calls = [
            engine.generate(prompt, SamplingParams(max_new_tokens=8, seed=i), session_id=f"ep-{i}")
            for i in range(32)
        ]
        return await asyncio.gather(*calls)

    outs = run(scenario())
    assert all(o.finish_reason in ("length", "stop") for o in outs)
    assert all(len(o.output_ids) == len(o.logprobs) for o in outs)
    assert all(math.isfinite(lp) and lp <= 0 for o in outs for lp in o.logprobs)
    run(engine.flush_cache())
