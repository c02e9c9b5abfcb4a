"""The rollout manager: which envs and tasks a run uses, and generating groups of episodes on them.

It is a plain class (the train loop wraps it in a Ray actor; ``agentrl eval`` uses it in-process). Task
keys are ``"<entry>:<task id>"`` strings, ``<entry>`` being the index of the env spec (one for ``--env``,
one per suite entry), so one :class:`~agentrl.run.task_sampler.TaskSampler` orders tasks across a
whole suite.

Sampling seeds are a pure function of (run seed, step, task key, sample index): a resumed run samples
exactly what an uninterrupted one would have, whatever the batching inside the engine.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from agentrl.errors import ConfigError
from agentrl.engines.base import Engine
from agentrl.types import Trajectory

EnvFactory = Callable[..., Any]
"""Builds an env from keyword arguments (``split``, ``max_turns``, the spec's kwargs); tests pass a class."""


@dataclass(frozen=True)
class EnvSpec:
    """One env a run draws tasks from."""

    env: str
    """Registered id or short name (``search``)."""
    split: str
    """Task split."""
    kwargs: dict[str, Any] = field(default_factory=dict)
    """Constructor arguments besides ``split`` and ``max_turns``."""
    episodes: int = 0
    """Episodes to evaluate on this env (suites); 0: the caller decides."""

    def make(self, max_turns: int, factory: EnvFactory | None = None) -> Any:
        """Create the env (through ``agentrl.make`` unless a ``factory`` is given)."""
        kwargs = {"split": self.split, "max_turns": max_turns, **self.kwargs}
        if factory is not None:
            return factory(**kwargs)
        from agentrl.envs.registry import make

        return make(self.env, **kwargs)


def env_specs(env: str, suite: str | None, split: str, env_kwargs: dict[str, Any] | None) -> list[EnvSpec]:
    """The specs of ``--env`` (one) or of ``--suite`` (one per entry, with its own split unless
    ``split`` is given to override it, as evaluation does with held-out splits)."""
    env_kwargs = env_kwargs or {}
    if suite is None:
        return [EnvSpec(env, split, dict(env_kwargs))]
    from agentrl.envs.suites import load_suite

    loaded = load_suite(suite)
    return [EnvSpec(e.env, split or e.split, {**e.kwargs, **env_kwargs}, e.episodes) for e in loaded.entries]


def episode_seed(seed: int, step: int, key: str, sample_index: int) -> int:
    """A 31-bit sampling seed that depends only on its arguments (stable across processes and runs)."""
    digest = hashlib.blake2b(f"{seed}/{step}/{key}/{sample_index}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") & 0x7FFFFFFF


@dataclass(frozen=True)
class GenerationSettings:
    """How one batch of episodes is sampled."""

    n_samples: int
    """Episodes per task (a group)."""
    temperature: float
    """Sampling temperature; 0 is greedy."""
    top_p: float = 1.0
    """Nucleus sampling."""
    step: int = 0
    """The rollout step (part of the sampling seed, recorded as the weight version)."""


class RolloutManager:
    """Runs groups of multi-turn episodes over the envs of a run with one engine."""

    def __init__(
        self,
        engine: Engine | Callable[[], Awaitable[Engine]],
        model_path: str | Path,
        specs: Sequence[EnvSpec],
        *,
        eval_specs: Sequence[EnvSpec] = (),
        max_turns: int,
        max_new_tokens: int,
        max_context: int,
        max_concurrency: int,
        seed: int,
        env_factory: EnvFactory | None = None,
    ) -> None:
        from transformers import AutoTokenizer

        if not specs and not eval_specs:
            raise ConfigError("a run needs at least one env: pass --env NAME or --suite NAME")
        self._loop = asyncio.new_event_loop()
        # An engine factory runs here, in this process and loop: SGLang servers and clients belong to it.
        self.engine: Engine = (
            engine if isinstance(engine, Engine) else self._loop.run_until_complete(engine())
        )
        self.tokenizer = AutoTokenizer.from_pretrained(str(model_path))
        self.specs = [*specs, *eval_specs]
        self._groups = {"train": range(len(specs)), "eval": range(len(specs), len(self.specs))}
        self.max_turns = max_turns
        self.max_new_tokens = max_new_tokens
        self.max_context = max_context
        self.max_concurrency = max_concurrency
        self.seed = seed
        self.env_factory = env_factory
        self._envs: dict[int, list[Any]] = {}
        self.version = 0

    def pid(self) -> int:
        return os.getpid()

    def env_ids(self) -> list[str]:
        return [s.env for s in self.specs]

    def task_keys(self, which: str = "train") -> list[str]:
        """Every task of the ``"train"`` or ``"eval"`` specs, as ``"<entry>:<task id>"`` in the envs'
        own order. A suite's eval entries are interleaved, so the first k keys cover every env."""
        per_entry: list[list[str]] = []
        for i in self._groups[which]:
            spec = self.specs[i]
            env = spec.make(self.max_turns, self.env_factory)
            ids = [f"{i}:{t.id}" for t in env.unwrapped.tasks]
            per_entry.append(ids[: spec.episodes] if spec.episodes else ids)
            env.close()
        if which == "train":
            return [k for ids in per_entry for k in ids]
        longest = max((len(ids) for ids in per_entry), default=0)
        return [ids[j] for j in range(longest) for ids in per_entry if j < len(ids)]

    def generate(
        self,
        keys: Sequence[str],
        settings: GenerationSettings,
        on_episode: Callable[[Trajectory], None] | None = None,
    ) -> list[Trajectory]:
        """``settings.n_samples`` episodes of each task key; every episode comes back, with a status.
        ``on_episode`` (in-process callers only, e.g. a progress bar) is called as each one ends."""
        return self._loop.run_until_complete(_generate(self, list(keys), settings, on_episode))

    def _checkout(self, entry: int) -> Any:
        pool = self._envs.setdefault(entry, [])
        return pool.pop() if pool else self.specs[entry].make(self.max_turns, self.env_factory)

    def _return(self, entry: int, env: Any) -> None:
        self._envs[entry].append(env)

    def update_weights(self, source: Any, version: int) -> None:
        """Load new weights into the engine (a state dict, or an HF folder path for SGLang)."""
        self._loop.run_until_complete(self.engine.update_weights(source, version=version))
        self.version = version

    def engine_memory(self, action: str) -> None:
        """Colocated placement: the engine releases (``"release"``) or takes back (``"resume"``) its GPU
        memory around a train step (see :mod:`agentrl.engines.memory`)."""
        from agentrl.engines.memory import set_engine_memory

        if action not in ("release", "resume"):
            raise ValueError(f"engine_memory action must be 'release' or 'resume', got {action!r}")
        self._loop.run_until_complete(set_engine_memory(self.engine, action))  # type: ignore[arg-type]

    def close(self) -> None:
        for pool in self._envs.values():
            for env in pool:
                env.close()
        self._envs.clear()
        self._loop.run_until_complete(self.engine.close())


# A module-level coroutine, not a method: Ray turns a class with any ``async def`` into an async actor,
# and this class must stay synchronous (it drives its own event loop).
async def _generate(
    manager: RolloutManager,
    keys: list[str],
    settings: GenerationSettings,
    on_episode: Callable[[Trajectory], None] | None = None,
) -> list[Trajectory]:
    from agentrl.rollout.controller import RolloutConfig, RolloutController

    config = RolloutConfig(
        max_turns=manager.max_turns,
        max_new_tokens=manager.max_new_tokens,
        max_total_tokens=manager.max_context,
        temperature=settings.temperature,
        top_p=settings.top_p,
        concurrency=manager.max_concurrency,
    )
    controller = RolloutController(manager.engine, manager.tokenizer, config)
    semaphore = asyncio.Semaphore(manager.max_concurrency)

    async def one(key: str, index: int) -> Trajectory:
        entry, task_id = key.split(":", 1)
        async with semaphore:
            env = manager._checkout(int(entry))
            try:
                trajectory = await controller.run_episode(
                    env,
                    task_id=task_id,
                    group_id=f"{settings.step}/{key}",
                    sample_index=index,
                    env_id=manager.specs[int(entry)].env,
                    seed=episode_seed(manager.seed, settings.step, key, index),
                )
            finally:
                manager._return(int(entry), env)
        if on_episode is not None:
            on_episode(trajectory)
        return trajectory

    jobs = [one(key, i) for key in keys for i in range(settings.n_samples)]
    return list(await asyncio.gather(*jobs))
