"""Rollout benchmarks: controller overhead per turn, episodes/s at 256 concurrent, embedded tokens/s.

Why: the controller must never be the bottleneck (target < 1 ms of controller work per turn, so a
GPU engine decoding thousands of tokens/s stays busy), and the CPU default engine should be usable.
The first two numbers use an *instant* engine (fixed ids, no model) and an instant env, so they
measure only the controller: chat-template deltas, tokenization, bookkeeping, the env thread hop.
The engine numbers: tokens/s of 8 concurrent requests, and the shape of `agentrl train`'s default
rollout (16 multi-turn episodes) with the engine's prefill/decode split (`engine.stats`).

Run::

    python bench/rollout.py                       # all, SmolLM2-135M tokenizer and model
    python bench/rollout.py --skip-engine         # controller numbers only
"""

from __future__ import annotations

import argparse
import asyncio
import time
from typing import Any

from transformers import AutoTokenizer

from agentrl.engines.base import GenerateOutput, SamplingParams
from agentrl.envs.base import Task, ToolEnv, TurnResult
from agentrl.models import resolve_model
from agentrl.rollout.controller import RolloutConfig, RolloutController
from agentrl.types import Message


class EchoEnv(ToolEnv):
    """Answers every turn with a short tool message; terminates after ``max_turns`` turns."""

    def __init__(self, turns: int) -> None:
        super().__init__(tasks=[Task(id="bench", prompt="What is 6 times 7?", answer="42")], max_turns=turns)

    def initial_messages(self, task: Task) -> list[Message]:
        return [
            {"role": "system", "content": "You are a calculator."},
            {"role": "user", "content": task.prompt},
        ]

    def turn(self, text: str) -> TurnResult:
        done = self.turn_count >= self.max_turns
        return TurnResult([] if done else [{"role": "tool", "content": "42"}], float(done), done)


class InstantEngine:
    """Returns the same ~30 sampled ids at once (the controller's cost only)."""

    def __init__(self, tokenizer: Any) -> None:
        text = '<tool_call>{"name": "python", "arguments": {"code": "print(6 * 7)"}}</tool_call>'
        self.ids = [*tokenizer.encode(text, add_special_tokens=False), tokenizer.eos_token_id]

    async def generate(
        self, input_ids: list[int], sampling: SamplingParams, *, session_id: str | None = None
    ) -> GenerateOutput:
        ids = self.ids[: sampling.max_new_tokens]
        return GenerateOutput(ids, [-0.1] * len(ids), "stop")

    async def update_weights(self, source: Any, *, version: int) -> None: ...

    async def health(self) -> bool:
        return True

    async def pause(self) -> None: ...

    async def resume(self) -> None: ...

    async def abort(self, session_id: str | None = None) -> None: ...

    async def close(self) -> None: ...


def bench_overhead(tokenizer: Any, turns: int = 8, episodes: int = 30) -> float:
    """Mean wall time per turn of sequential episodes with an instant engine and env (ms)."""
    controller = RolloutController(InstantEngine(tokenizer), tokenizer, RolloutConfig(max_context=32768))
    env = EchoEnv(turns)

    async def main() -> float:
        await controller.run_episode(env)  # warm up templates and caches
        started = time.perf_counter()
        for _ in range(episodes):
            traj = await controller.run_episode(env)
            assert len(traj.turns) == turns, traj.error
        return (time.perf_counter() - started) / (episodes * turns) * 1000

    return asyncio.run(main())


def bench_concurrent(tokenizer: Any, concurrent: int = 256, turns: int = 4) -> float:
    """Episodes per second with ``concurrent`` episodes in flight (instant engine and env)."""
    from agentrl.rollout.driver import EnvSpec, RolloutManager
    from agentrl.rollout.episodes import GenerationSettings

    manager = RolloutManager(
        InstantEngine(tokenizer),
        tokenizer.name_or_path,
        [EnvSpec("echo", "train")],
        rollout=RolloutConfig(max_concurrency=concurrent),
        seed=0,
        env_factory=lambda **kw: EchoEnv(turns),
    )
    try:
        started = time.perf_counter()
        trajectories = manager.generate(["0:bench"] * (concurrent // 8), GenerationSettings(8, 1.0))
        elapsed = time.perf_counter() - started
    finally:
        manager.close()
    assert all(t.status.value == "completed" for t in trajectories)
    return len(trajectories) / elapsed


def _engine(model: str) -> Any:
    from agentrl.engines.embedded.engine import EmbeddedEngine, EmbeddedEngineConfig

    return EmbeddedEngine(model, EmbeddedEngineConfig(device="cpu"))


def _chat_ids(tok: Any, text: str) -> list[int]:
    rendered = tok.apply_chat_template(
        [{"role": "user", "content": text}], tokenize=False, add_generation_prompt=True
    )
    return list(tok(rendered, add_special_tokens=False)["input_ids"])


def bench_engine(engine: Any, requests: int = 8, new_tokens: int = 64) -> float:
    """Sampled tokens per second of the embedded engine on ``requests`` concurrent requests."""
    ids = _chat_ids(engine.tokenizer, "Tell me about Peru.")
    sampling = SamplingParams(max_new_tokens=new_tokens, temperature=1.0, stop_token_ids=())

    async def main() -> float:
        await engine.generate(ids, SamplingParams(max_new_tokens=4))
        started = time.perf_counter()
        outs = await asyncio.gather(*(engine.generate(ids, sampling) for _ in range(requests)))
        return sum(len(o.output_ids) for o in outs) / (time.perf_counter() - started)

    return asyncio.run(main())


def bench_episodes(engine: Any, groups: int = 4, samples: int = 4, turns: int = 5) -> tuple[float, float]:
    """The shape of ``agentrl train``'s default rollout: ``groups`` x ``samples`` episodes of ``turns``
    turns, ~300-token prompts, 64 sampled tokens and a ~150-token observation per turn. Returns
    (seconds for all episodes, sampled tokens/s); per-request seeds make runs comparable."""
    tok = engine.tokenizer
    filler = " ".join(f"Doc {i}: Lima is the capital and largest city of Peru." for i in range(20))
    observation = tok(f"<information>{filler[:600]}</information>", add_special_tokens=False)["input_ids"]
    prompts = [
        _chat_ids(tok, f"Question {g}: {filler[: 1100 + 7 * g]} Which city is it?") for g in range(groups)
    ]

    async def episode(g: int, s: int) -> int:
        ids, sampled = list(prompts[g]), 0
        for t in range(turns):
            sampling = SamplingParams(max_new_tokens=64, temperature=1.0, seed=1000 * g + 100 * s + t)
            out = await engine.generate(ids, sampling, session_id=f"ep-{g}-{s}")
            ids += out.output_ids + observation
            sampled += len(out.output_ids)
        return sampled

    async def main() -> tuple[float, float]:
        started = time.perf_counter()
        counts = await asyncio.gather(*(episode(g, s) for g in range(groups) for s in range(samples)))
        elapsed = time.perf_counter() - started
        return elapsed, sum(counts) / elapsed

    return asyncio.run(main())


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--skip-engine", action="store_true")
    args = parser.parse_args()
    folder = resolve_model(args.model)
    tokenizer = AutoTokenizer.from_pretrained(folder)
    print(
        f"controller overhead per turn (instant engine): {bench_overhead(tokenizer):.3f} ms  (target < 1 ms)"
    )
    print(f"episodes/s, 256 concurrent, 4 turns each:     {bench_concurrent(tokenizer):.1f}")
    if not args.skip_engine:
        engine = _engine(str(folder))
        print(f"embedded engine on CPU ({args.model}), 8 x 64 tokens: {bench_engine(engine):.1f} tokens/s")
        before = dict(engine.stats)
        seconds, rate = bench_episodes(engine)
        print(f"embedded engine, 16 episodes x 5 turns x 64 tokens: {seconds:.1f} s, {rate:.1f} tokens/s")
        st = {k: v - before[k] for k, v in engine.stats.items()}
        print(
            f"  prefill {st['prefill_tokens']:.0f} ids in {st['prefill_s']:.1f} s "
            f"({st['cached_tokens']:.0f} ids from the prefix cache); decode {st['decode_tokens']:.0f} ids "
            f"in {st['decode_steps']:.0f} steps, {st['decode_s']:.1f} s"
        )
        asyncio.run(engine.close())


if __name__ == "__main__":
    main()
