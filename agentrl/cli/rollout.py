"""`agentrl rollout`: run episodes of an env with a model and write the trajectories as JSONL.

For debugging an env or a prompt, and for collecting data; no training. Look at the result with
``agentrl view``.

Examples::

    agentrl rollout --env search --model smollm2-135m --n 4 --num-tasks 8 --out search.jsonl
    agentrl rollout --env search --model ./my-hf-model --engine sglang --sglang-url http://127.0.0.1:30000
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import time
from collections import Counter
from typing import Any

log = logging.getLogger(__name__)


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "rollout", help="run episodes of an env with a model, write trajectories (JSONL)"
    )
    p.add_argument("--env", required=True, help="env name or id, e.g. search or agentrl/Search-v0")
    p.add_argument("--model", default="smollm2-135m", help="HF folder or alias (smollm2-135m, tiny-gpt2)")
    p.add_argument("--out", required=True, help="output JSONL file")
    p.add_argument("--n", type=int, default=4, help="samples per task (one group per task)")
    p.add_argument("--tasks", default=None, help="comma-separated task ids (default: the first --num-tasks)")
    p.add_argument("--num-tasks", type=int, default=4, help="how many tasks when --tasks is not given")
    p.add_argument("--split", default="train", help="task split of the env")
    p.add_argument("--max-turns", type=int, default=None, help="turn limit passed to the env")
    p.add_argument("--max-new-tokens", type=int, default=256, help="sampled tokens per turn")
    p.add_argument("--max-total-tokens", type=int, default=4096, help="context budget per episode")
    p.add_argument("--temperature", type=float, default=1.0)
    p.add_argument("--top-p", type=float, default=1.0)
    p.add_argument("--concurrency", type=int, default=32, help="episodes in flight")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-progress", action="store_true", help="no progress bar of finished groups")
    p.add_argument("--engine", choices=("embedded", "sglang"), default="embedded")
    p.add_argument("--device", default="auto", help="embedded engine device: auto, cpu, cuda:0")
    p.add_argument("--sglang-url", action="append", default=[], help="running SGLang server (repeatable)")
    p.add_argument("--sglang-python", default=None, help="Python of SGLang's venv, to launch a server")
    p.set_defaults(func=run)


def _engine(args: argparse.Namespace, model_dir: Any) -> Any:
    if args.engine == "embedded":
        from agentrl.engines.embedded.engine import EmbeddedEngine, EmbeddedEngineConfig

        return EmbeddedEngine(model_dir, EmbeddedEngineConfig(device=args.device, seed=args.seed))
    from agentrl.engines.sglang.engine import SGLangEngine, SGLangEngineConfig

    return SGLangEngine(
        SGLangEngineConfig(
            model_path=str(model_dir), server_urls=tuple(args.sglang_url), python=args.sglang_python
        )
    )


def _task_ids(env: Any, args: argparse.Namespace) -> list[str]:
    if args.tasks:
        return [t.strip() for t in args.tasks.split(",") if t.strip()]
    return [t.id for t in env.unwrapped.tasks[: args.num_tasks]]


def run(args: argparse.Namespace) -> int:
    from tqdm import tqdm
    from transformers import AutoTokenizer

    import agentrl.envs as envs
    from agentrl.models import resolve_model
    from agentrl.rollout.controller import RolloutConfig, RolloutController
    from agentrl.rollout.groups import run_groups
    from agentrl.types import save_jsonl

    env_kwargs: dict[str, Any] = {"split": args.split}
    if args.max_turns is not None:
        env_kwargs["max_turns"] = args.max_turns
    env_id = envs.resolve(args.env)
    probe = envs.make(env_id, **env_kwargs)
    task_ids = _task_ids(probe, args)
    model_dir = resolve_model(args.model)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    config = RolloutConfig(
        max_new_tokens=args.max_new_tokens,
        max_total_tokens=args.max_total_tokens,
        temperature=args.temperature,
        top_p=args.top_p,
        concurrency=args.concurrency,
        seed=args.seed,
    )
    log.info("rollout: env=%s model=%s tasks=%d n=%d %s", env_id, model_dir, len(task_ids), args.n, config)
    pool = [probe]

    def factory() -> Any:
        return pool.pop() if pool else envs.make(env_id, **env_kwargs)

    async def main() -> list[list[Any]]:
        engine = _engine(args, model_dir)
        try:
            controller = RolloutController(engine, tokenizer, config)
            with tqdm(total=len(task_ids), desc="rollout", unit="group", disable=args.no_progress) as bar:
                return await run_groups(
                    controller, factory, task_ids, args.n, env_id=env_id, on_group=lambda _: bar.update(1)
                )
        finally:
            await engine.close()

    started = time.perf_counter()
    groups = asyncio.run(main())
    elapsed = time.perf_counter() - started
    trajectories = [t for g in groups for t in g]
    for t in trajectories:
        t.metrics["model"] = str(model_dir)  # lets `agentrl view` find the tokenizer
    save_jsonl(trajectories, args.out)
    print(_summary(trajectories, elapsed, args.out))
    return 0


def _summary(trajectories: list[Any], elapsed: float, out: str) -> str:
    statuses = Counter(t.status.value for t in trajectories)
    sampled = sum(sum(t.loss_mask) for t in trajectories)
    mean_reward = sum(t.reward for t in trajectories) / max(1, len(trajectories))
    errors = Counter(t.error.split(":")[0] for t in trajectories if t.error)
    lines = [
        f"wrote {len(trajectories)} episodes to {out} in {elapsed:.1f}s",
        f"  status: {dict(statuses)}   mean reward: {mean_reward:.3f}",
        f"  sampled tokens: {sampled} ({sampled / max(elapsed, 1e-9):.1f}/s)",
    ]
    if errors:
        lines.append(f"  errors: {dict(errors)}")
    return "\n".join(lines)
