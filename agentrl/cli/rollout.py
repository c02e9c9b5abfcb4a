"""`agentrl rollout`: run episodes of an env with a model and write the trajectories as JSONL.

For debugging an env or a prompt, and for collecting data; no training. It drives episodes through the
same driver as training and evaluation. Look at the result with ``agentrl view``.

Examples::

    agentrl rollout --env search --model smollm2-135m --n-samples-per-prompt 4 --num-tasks 8 --out search.jsonl
    agentrl rollout --env search --model ./my-hf-model --engine sglang --sglang-urls http://127.0.0.1:30000
    agentrl rollout --env search --policy expert --num-tasks 500 --n-samples-per-prompt 1 --out demos.jsonl
    agentrl rollout --env search --model runs/x/hf_model --min-reward 1 --out kept.jsonl   # rejection sampling

``--policy expert`` writes demonstrations: the env's scripted expert plays every turn, tokenized as the
model's own output would be (the token-in/token-out invariants hold), for ``agentrl sft``. ``--min-reward``
keeps only the episodes whose reward reaches it: ``agentrl sft`` on them is rejection-sampling
fine-tuning.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from agentrl.cli.dataclass_args import add_dataclass_args, build_dataclass, compact_help_formatter
from agentrl.engines.config import EngineConfig
from agentrl.errors import AgentRLError, ConfigError
from agentrl.rollout.controller import Policy, RolloutConfig

log = logging.getLogger(__name__)


def _rollout_defaults() -> RolloutConfig:
    return RolloutConfig(max_new_tokens=256, max_context=4096, max_concurrency=32)


@dataclass(frozen=True)
class RolloutCommandConfig:
    """What ``agentrl rollout`` runs; its flags are generated from these fields."""

    env: str = field(default="search", metadata={"group": "task"})
    """Env name or id, e.g. search or agentrl/Search-v0."""
    env_kwargs: dict[str, Any] | None = field(default=None, metadata={"group": "task"})
    """Env constructor kwargs as JSON, e.g. '{"hops": 1}'."""
    split: str = field(default="train", metadata={"group": "task"})
    """Task split of the env."""
    tasks: tuple[str, ...] = field(default=(), metadata={"group": "task"})
    """Task ids to run (default: the first --num-tasks of the split)."""
    num_tasks: int = field(default=4, metadata={"group": "task"})
    """How many tasks when --tasks is not given."""
    shuffle_tasks: bool = field(default=False, metadata={"group": "task"})
    """Take the --num-tasks tasks at random (seeded by --seed), not the first ones of the split."""
    model: str = field(default="smollm2-135m", metadata={"group": "model"})
    """Policy: a local HF folder or an alias (smollm2-135m, tiny-gpt2)."""
    n_samples_per_prompt: int = field(default=4, metadata={"group": "task"})
    """Episodes per task (one group per task)."""
    rollout: RolloutConfig = field(default_factory=_rollout_defaults, metadata={"group": "episode"})
    """Turn limit, token budgets, sampling and concurrency."""
    inference: EngineConfig = field(default_factory=EngineConfig, metadata={"group": "engine"})
    """The inference engine (embedded or SGLang)."""
    policy: Policy = field(default="model", metadata={"group": "task"})
    """Who plays the agent: the model (sampled by the engine) or the env's scripted expert (demonstrations)."""
    min_reward: float | None = field(default=None, metadata={"group": "task"})
    """Write only the completed or truncated episodes whose reward is at least this (rejection sampling)."""
    seed: int = 0
    """Sampling seed."""
    out: str = "rollouts.jsonl"
    """Output JSONL file of trajectories."""
    progress: bool = True
    """Show a progress bar of finished episodes (on stderr)."""

    def __post_init__(self) -> None:
        if self.n_samples_per_prompt < 1 or self.num_tasks < 1:
            raise ConfigError(
                f"--n-samples-per-prompt={self.n_samples_per_prompt} and --num-tasks={self.num_tasks} "
                "must be >= 1"
            )


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "rollout",
        help="run episodes of an env with a model, write trajectories (JSONL)",
        description=__doc__,
        usage="agentrl rollout [options]",
        formatter_class=compact_help_formatter,
    )
    spec = add_dataclass_args(parser, RolloutCommandConfig)
    parser.set_defaults(func=run, config_spec=spec)


def run(args: argparse.Namespace) -> int:
    from agentrl.cli.checks import check_env_inputs, check_model, check_output_file

    try:
        config: RolloutCommandConfig = build_dataclass(RolloutCommandConfig, args.config_spec, args)
        check_env_inputs(config.env, None, config.env_kwargs)
        model_dir = check_model(config.model)
        check_output_file(config.out, "--out")
        spec, task_ids = tasks_of(config)
        trajectories, elapsed = collect(config, spec, task_ids, model_dir)
    except AgentRLError as e:
        print(f"agentrl rollout: {e}", file=sys.stderr)
        return 2
    print(_summary(trajectories, elapsed, config.out, config.min_reward))
    return 0


def tasks_of(config: RolloutCommandConfig) -> tuple[Any, list[str]]:
    """The env spec and the task ids to run: ``--tasks`` (each checked) or the first ``--num-tasks``."""
    from agentrl.envs.registry import resolve
    from agentrl.rollout.driver import EnvSpec

    spec = EnvSpec(resolve(config.env), config.split, dict(config.env_kwargs or {}))
    probe = spec.make(config.rollout.max_turns)
    try:
        known = [t.id for t in probe.unwrapped.tasks]
        if config.policy == "expert" and not _has_expert(probe.unwrapped):
            raise ConfigError(
                f"--policy expert: {spec.env} has no scripted expert (an env offers one by implementing "
                "expert_action(); see docs/envs.md)"
            )
    finally:
        probe.close()
    if not config.tasks:
        if config.shuffle_tasks:
            import random

            known = random.Random(config.seed).sample(known, len(known))
        return spec, known[: config.num_tasks]
    unknown = [t for t in config.tasks if t not in set(known)]
    if unknown:
        raise ConfigError(
            f"--tasks: no task {', '.join(map(repr, unknown))} in split {config.split!r} of {spec.env} "
            f"(it has {len(known)}, e.g. {', '.join(known[:3])})"
        )
    return spec, list(config.tasks)


def collect(
    config: RolloutCommandConfig, spec: Any, task_ids: list[str], model_dir: Any
) -> tuple[list[Any], float]:
    """Run the episodes through the rollout driver and save them; (trajectories, seconds)."""
    import functools

    from tqdm import tqdm

    from agentrl.engines.factory import start_engine
    from agentrl.rollout.driver import RolloutManager
    from agentrl.rollout.episodes import GenerationSettings
    from agentrl.types import save_jsonl

    engine = (
        None
        if config.policy == "expert"
        else functools.partial(start_engine, config.inference, model_dir, seed=config.seed)
    )
    manager = RolloutManager(
        engine, model_dir, [spec], rollout=config.rollout, seed=config.seed, policy=config.policy
    )
    n, r = config.n_samples_per_prompt, config.rollout
    log.info("rollout: env=%s model=%s tasks=%d n=%d %s", spec.env, model_dir, len(task_ids), n, r)
    try:
        started = time.perf_counter()
        settings = GenerationSettings(n, r.temperature, r.top_p)
        keys = [f"0:{t}" for t in task_ids]
        with tqdm(total=len(keys) * n, desc="rollout", unit="episode", disable=not config.progress) as bar:
            trajectories = manager.generate(keys, settings, on_episode=lambda _: bar.update(1))
        elapsed = time.perf_counter() - started
    finally:
        manager.close()
    save_jsonl(keep(trajectories, config.min_reward), config.out)
    return trajectories, elapsed


def keep(trajectories: list[Any], min_reward: float | None) -> list[Any]:
    """The rejection filter: trainable episodes (completed or truncated) whose reward reaches
    ``min_reward``; every episode when it is None."""
    if min_reward is None:
        return list(trajectories)
    return [t for t in trajectories if t.trainable and t.reward >= min_reward]


def _has_expert(env: Any) -> bool:
    from agentrl.envs.base import ToolEnv

    return type(env).expert_action is not ToolEnv.expert_action


def _summary(trajectories: list[Any], elapsed: float, out: str, min_reward: float | None = None) -> str:
    statuses = Counter(t.status.value for t in trajectories)
    sampled = sum(sum(t.loss_mask) for t in trajectories)
    mean_reward = sum(t.reward for t in trajectories) / max(1, len(trajectories))
    errors = Counter(t.error.split(":")[0] for t in trajectories if t.error)
    kept = len(keep(trajectories, min_reward))
    written = (
        f"{kept} of {len(trajectories)} episodes (reward >= {min_reward:g})"
        if min_reward is not None
        else f"{len(trajectories)} episodes"
    )
    lines = [
        f"wrote {written} to {out} in {elapsed:.1f}s",
        f"  status: {dict(statuses)}   mean reward: {mean_reward:.3f}",
        f"  sampled tokens: {sampled} ({sampled / max(elapsed, 1e-9):.1f}/s)",
    ]
    if errors:
        lines.append(f"  errors: {dict(errors)}")
    return "\n".join(lines)
