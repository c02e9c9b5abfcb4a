"""Episodes of one batch: the sampling settings, the seeds, the env pools and the runner that plays each
episode on the rollout manager's engine and envs (:class:`~agentrl.rollout.driver.RolloutManager`
owns them; it and the stream of ``--async-mode fully`` run batches through :class:`EpisodeRunner`)."""

from __future__ import annotations

import asyncio
import contextlib
import copy
import dataclasses
import hashlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from agentrl.errors import EngineDeadError
from agentrl.rollout.controller import RolloutController, failure_component
from agentrl.types import Status, Trajectory

# The driver's RolloutManager is typed Any here: the driver imports this module, and an import back (even
# under TYPE_CHECKING) would make a cycle.
RolloutManager = Any


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
    max_new_tokens: int | None = None
    """Per-turn cap on sampled tokens for this batch (an eval dataset's own); None: the rollout config's."""


class EnvPool:
    """Env instances of one spec reused across episodes: at most one per concurrent slot, created on
    demand on the controller's env threads (envs can be costly to build: an index, a sandbox)."""

    def __init__(self, build: Callable[[], Any]) -> None:
        self.build = build
        self.idle: list[Any] = []

    async def acquire(self, controller: RolloutController) -> Any:
        return self.idle.pop() if self.idle else await controller.in_env_thread(self.build)

    async def release(self, controller: RolloutController, env: Any, *, broken: bool) -> None:
        if broken:
            await controller.in_env_thread(_close_quietly, env)
        else:
            self.idle.append(env)

    def close(self) -> None:
        envs, self.idle = self.idle, []
        for env in envs:
            _close_quietly(env)


def _close_quietly(env: Any) -> None:
    with contextlib.suppress(Exception):  # closing must never take the batch down
        env.close()


def failed_construction(key: str, group_id: str, index: int, env_id: str, error: Exception) -> Trajectory:
    return Trajectory(
        prompt_ids=[],
        status=Status.FAILED,
        group_id=group_id,
        task_id=key.split(":", 1)[1],
        sample_index=index,
        env_id=env_id,
        error=f"{type(error).__name__}: {error}",
        metrics={"failed_at": "env_construction", "failed_component": failure_component(error)},
    )


class EpisodeRunner:
    """Runs single episodes of one batch's sampling settings on the manager's engine and envs: the
    controller (its concurrency limit shared by every episode of the runner), one controller per env
    chat template, and the env pools. :func:`generate_batch` uses one per batch; the stream of groups of
    ``--async-mode fully`` (:mod:`agentrl.rollout.stream`) one for the whole run."""

    def __init__(self, manager: RolloutManager, settings: GenerationSettings) -> None:
        config = dataclasses.replace(manager.rollout, temperature=settings.temperature, top_p=settings.top_p)
        if settings.max_new_tokens is not None:
            config = dataclasses.replace(config, max_new_tokens=settings.max_new_tokens)
        self.manager = manager
        self.config = config
        self.controller = RolloutController(manager.engine, manager.tokenizer, config, policy=manager.policy)
        self._by_template: dict[str, RolloutController] = {}

    def controller_for(self, env: Any) -> RolloutController:
        """An env with its own ``chat_template`` (PromptData-v0 without --apply-chat-template renders
        prompts as raw text) gets a controller whose tokenizer renders with that template."""
        template = getattr(env.unwrapped, "chat_template", None)
        if template is None:
            return self.controller
        if template not in self._by_template:
            manager = self.manager
            tokenizer = copy.copy(manager.tokenizer)  # shallow: the same vocabulary, its own template
            tokenizer.chat_template = template
            self._by_template[template] = RolloutController(
                manager.engine, tokenizer, self.config, policy=manager.policy
            )
        return self._by_template[template]

    async def episode(self, key: str, index: int, step: int) -> Trajectory:
        """Sample ``index`` of task ``key`` (group ``"<step>/<key>"``, seeded by step, key and index)."""
        manager = self.manager
        entry = int(key.split(":", 1)[0])
        spec, pool = manager.specs[entry], manager._pools[entry]
        group_id = f"{step}/{key}"
        async with self.controller.semaphore:
            try:
                env = await pool.acquire(self.controller)
            except Exception as e:  # env construction failed: that episode fails, the others go on
                trajectory = failed_construction(key, group_id, index, spec.env, e)
            else:
                trajectory = await self.controller_for(env).run_episode(
                    env,
                    task_id=key.split(":", 1)[1],
                    group_id=group_id,
                    sample_index=index,
                    env_id=spec.env,
                    seed=episode_seed(manager.seed, step, key, index),
                    bounded=False,
                )
                await pool.release(self.controller, env, broken=trajectory.status is Status.FAILED)
        trajectory.metrics["model"] = manager.model_path  # lets `agentrl view` find the tokenizer
        return trajectory

    def close(self) -> None:
        for c in (self.controller, *self._by_template.values()):
            c.env_threads.shutdown(wait=False)


def raise_if_engine_dead(trajectories: Sequence[Trajectory]) -> None:
    """An engine that can serve nothing any more fails every later request the same way: the command
    must stop (:class:`EngineDeadError`)."""
    dead = next((t for t in trajectories if t.metrics.get("engine_dead")), None)
    if dead is not None:
        raise EngineDeadError(dead.error.removeprefix("EngineDeadError: "))


# A module-level coroutine, not a method: Ray turns a class with any ``async def`` into an async actor,
# and this class must stay synchronous (it drives its own event loop).
async def generate_batch(
    manager: RolloutManager,
    keys: list[str],
    settings: GenerationSettings,
    on_episode: Callable[[Trajectory], None] | None = None,
) -> list[Trajectory]:
    runner = EpisodeRunner(manager, settings)

    async def one(key: str, index: int) -> Trajectory:
        trajectory = await runner.episode(key, index, settings.step)
        if on_episode is not None:
            on_episode(trajectory)
        return trajectory

    try:
        jobs = [one(key, i) for key in keys for i in range(settings.n_samples)]
        trajectories = list(await asyncio.gather(*jobs))
    finally:
        runner.close()
    raise_if_engine_dead(trajectories)
    return trajectories
