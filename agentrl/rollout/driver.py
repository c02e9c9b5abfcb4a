"""The one rollout driver: which envs and tasks a command uses, and generating groups of episodes on them.

Training (inside a Ray actor), ``agentrl eval`` and ``agentrl rollout`` all call
:meth:`RolloutManager.generate`, so the debugging command exercises the training path and failures are
handled once: an env that cannot be built, or an episode that fails, becomes a FAILED trajectory with
the error and the component at fault (``metrics["failed_component"]``: engine, env, tool, sandbox or
reward; never a crash of the batch), and an env whose episode FAILED is closed and replaced, since it
may hold a dead sandbox. The one exception is an engine that can serve nothing any more: once the batch
is over, :class:`~agentrl.errors.EngineDeadError` ends the command.

Task keys are ``"<entry>:<task id>"`` strings, ``<entry>`` being the index of the env spec (one for
``--env``, one per suite entry), so one task sampler orders tasks across a whole suite. Sampling seeds are
a pure function of (run seed, step, task key, sample index): a resumed run samples exactly what an
uninterrupted one would have, whatever the batching inside the engine.

The turn limit has one owner: :meth:`EnvSpec.turn_limit` (a user's ``--max-turns`` wins over the suite's
``max_turns`` kwarg, which wins over the env's default); the env is built with it and the controller
enforces the env's own limit.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from agentrl.engines.base import Engine, GenerateOutput, SamplingParams
from agentrl.errors import ConfigError, EngineError
from agentrl.rollout.controller import Policy, RolloutConfig
from agentrl.rollout.episodes import (
    EnvPool,
    EpisodeRunner,
    GenerationSettings,
    generate_batch,
    raise_if_engine_dead,
)
from agentrl.types import Trajectory

if TYPE_CHECKING:
    from agentrl.rollout.stream import GroupStream

log = logging.getLogger(__name__)
T = TypeVar("T")

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
    """Constructor arguments besides ``split`` (a suite's ``max_turns`` among them)."""
    episodes: int = 0
    """Episodes to evaluate on this env (suites); 0: the caller decides."""

    def turn_limit(self, user: int | None) -> int | None:
        """The turn limit of this env: the user's, else the spec's (suite) kwarg, else ``None`` (the env's
        own default)."""
        return user if user is not None else self.kwargs.get("max_turns")

    def make(self, max_turns: int | None, factory: EnvFactory | None = None) -> Any:
        """Create the env (through ``agentrl.make`` unless a ``factory`` is given) with the resolved turn
        limit."""
        kwargs = {"split": self.split, **self.kwargs}
        limit = self.turn_limit(max_turns)
        if limit is not None:
            kwargs["max_turns"] = limit
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


def has_signal(group: Sequence[Trajectory]) -> bool:
    """True when the group's trainable episodes have at least two distinct rewards."""
    return len({t.reward for t in group if t.trainable}) > 1


GroupFilter = Callable[[list[Trajectory]], bool]
"""``--group-filter package.module:fn``: ``fn(group) -> bool``, True to train on the group (its
``n_samples_per_prompt`` episodes of one task, in sample order). It replaces :func:`has_signal` as the
dynamic filter's test."""


def keep_informative_groups(
    trajectories: list[Trajectory], groups: int, dynamic_filter: bool, keep: GroupFilter | None = None
) -> list[Trajectory]:
    """The first ``groups`` groups, skipping (with ``dynamic_filter``, DAPO's dynamic sampling) those
    whose rewards all agree: every GRPO advantage of such a group is zero. ``keep`` (a user's
    ``--group-filter``) replaces that test; it applies even with ``dynamic_filter`` off."""
    by_group: dict[str, list[Trajectory]] = {}
    for t in trajectories:
        by_group.setdefault(t.group_id, []).append(t)
    test = keep if keep is not None else (has_signal if dynamic_filter else None)
    kept = [g for g in by_group.values() if test is None or test(g)][:groups]
    return [t for g in kept for t in g]


class RolloutManager:
    """Runs groups of multi-turn episodes over the envs of a command with one engine.

    A plain class: the train loop wraps it in a Ray actor; ``agentrl eval`` and ``agentrl rollout`` use
    it in-process.
    """

    def __init__(
        self,
        engine: Engine | Callable[[], Awaitable[Engine]] | None,
        model_path: str | Path,
        specs: Sequence[EnvSpec],
        *,
        eval_specs: Sequence[EnvSpec] = (),
        rollout: RolloutConfig,
        seed: int,
        env_factory: EnvFactory | None = None,
        policy: Policy = "model",
    ) -> None:
        from transformers import AutoTokenizer

        if not specs and not eval_specs:
            raise ConfigError("a run needs at least one env: pass --env NAME or --suite NAME")
        if engine is None and policy != "expert":
            raise ConfigError("the model policy needs an engine")
        self._loop = asyncio.new_event_loop()
        # An engine factory runs here, in this process and loop: SGLang servers and clients belong to it.
        self.engine: Engine = (
            _NoEngine()
            if engine is None
            else engine
            if isinstance(engine, Engine)
            else self._loop.run_until_complete(engine())
        )
        self.policy: Policy = policy
        self.model_path = str(model_path)
        self.tokenizer = AutoTokenizer.from_pretrained(self.model_path)
        self.specs = [*specs, *eval_specs]
        self._groups = {"train": range(len(specs)), "eval": range(len(specs), len(self.specs))}
        self.rollout = rollout
        self.seed = seed
        self.env_factory = env_factory
        self._pools = [EnvPool(self._builder(i)) for i in range(len(self.specs))]
        self.version = 0
        self._stream: GroupStream | None = None
        """``--async-mode fully``: groups generating in the background (:meth:`stream_submit`)."""

    def _builder(self, entry: int) -> Callable[[], Any]:
        spec = self.specs[entry]
        return lambda: spec.make(self.rollout.max_turns, self.env_factory)

    def pid(self) -> int:
        return os.getpid()

    def task_keys(self, which: str = "train") -> list[str]:
        """Every task of the ``"train"`` or ``"eval"`` specs, as ``"<entry>:<task id>"`` in the envs'
        own order. A suite's eval entries are interleaved, so the first k keys cover every env."""
        per_entry: list[list[str]] = []
        for i in self._groups[which]:
            spec = self.specs[i]
            try:
                env = self._builder(i)()
            except Exception as e:
                raise ConfigError(
                    f"env {spec.env!r} (split {spec.split!r}, kwargs {spec.kwargs}) could not be built to "
                    f"list its tasks: {type(e).__name__}: {e}"
                ) from e
            ids = [f"{i}:{t.id}" for t in env.unwrapped.tasks]
            per_entry.append(ids[: spec.episodes] if spec.episodes else ids)
            self._pools[i].idle.append(env)  # reused by the first episode
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
        """``settings.n_samples`` episodes of each task key, in key order; every episode comes back once,
        with a status. ``on_episode`` (in-process callers only, e.g. a progress bar) is called as each
        one ends."""
        return self._run(generate_batch(self, list(keys), settings, on_episode))

    def stream_submit(self, groups: list[tuple[int, str]], settings: GenerationSettings) -> None:
        """Start generating each ``(index, task key)`` group in the background and return at once
        (:mod:`agentrl.rollout.stream`); :meth:`stream_poll` hands back the finished ones."""
        if self._stream is None:
            from agentrl.rollout.stream import GroupStream

            self._stream = GroupStream(self, lambda base: EpisodeRunner(self, base), raise_if_engine_dead)
        self._stream.submit(groups, settings)

    def stream_poll(self, timeout: float) -> list[tuple[int, list[Trajectory]]]:
        """The streamed groups finished since the last call, as ``(index, episodes)``, waiting up to
        ``timeout`` seconds for one."""
        return self._stream.poll(timeout) if self._stream is not None else []

    def _run(self, coro: Coroutine[Any, Any, T]) -> T:
        """Run ``coro`` on the manager's loop: here, or on the stream's thread once a stream runs it."""
        if self._stream is not None:
            return self._stream.run(coro)
        return self._loop.run_until_complete(coro)

    def engine_stats(self) -> dict[str, float]:
        """The engine's counters since it started (prefill / decode tokens and seconds, weight updates), if
        it keeps any: the embedded engine, here or in its actors (:mod:`agentrl.engines.remote`). Empty when
        they cannot be read (an engine actor that died): metrics never stop a run, and the requests to that
        engine fail where the failure policy sees them."""
        try:
            stats = getattr(self.engine, "stats", None)
        except Exception as e:  # a dead actor's RayActorError, or any other: the metrics go without
            log.warning(
                "engine counters unavailable (%s: %s); this step has no engine/ metrics", type(e).__name__, e
            )
            return {}
        return dict(stats) if isinstance(stats, dict) else {}

    def weights_target(self) -> dict[str, Any] | None:
        """Where the engine keeps its weights (``device_uuid``, ``dtype``), so a trainer can pack them
        for it (:mod:`agentrl.engines.packed_weights`); None for engines that load HF folders."""
        target = getattr(self.engine, "weights_target", None)
        return target() if callable(target) else None

    def update_weights(self, source: Any, version: int) -> None:
        """Load new weights into the engine (a state dict, packed weights, or an HF folder for SGLang)."""
        self._run(self.engine.update_weights(source, version=version))
        self.version = version

    def engine_memory(self, action: str) -> None:
        """Colocated placement: the engine releases (``"release"``) or takes back (``"resume"``) its GPU
        memory around a train step (see :mod:`agentrl.engines.memory`)."""
        from agentrl.engines.memory import set_engine_memory

        if action not in ("release", "resume"):
            raise ValueError(f"engine_memory action must be 'release' or 'resume', got {action!r}")
        self._run(set_engine_memory(self.engine, action))  # type: ignore[arg-type]

    def close(self) -> None:
        if self._stream is not None:
            self._stream.close()  # cancels the groups still running
        for pool in self._pools:
            pool.close()
        self._run(self.engine.close())
        if self._stream is not None:
            self._stream.stop()
            self._stream = None  # the loop is this thread's again: a second close runs on it


class _NoEngine:
    """The engine of an expert-policy rollout: the env's expert writes every turn, so nothing generates."""

    async def generate(
        self, input_ids: list[int], sampling: SamplingParams, *, session_id: str | None = None
    ) -> GenerateOutput:
        raise EngineError("an expert-policy rollout has no engine to generate with")

    async def update_weights(self, source: Any, *, version: int) -> None:
        raise EngineError("an expert-policy rollout has no engine to update")

    async def health(self) -> bool:
        return True

    async def pause(self) -> None:
        return None

    async def resume(self) -> None:
        return None

    async def abort(self, session_id: str | None = None) -> None:
        return None

    async def close(self) -> None:
        return None
