"""Groups of episodes: n samples per task, env instances pooled per concurrent slot, dynamic filtering.

GRPO-style advantages compare the n samples of one task, so samples are dispatched and returned as a
group sharing a ``group_id``. A group whose rewards all agree carries no learning signal (every
advantage is zero); :func:`sample_groups` over-samples tasks and drops such groups (DAPO's dynamic
sampling) until enough informative groups are collected. Every dispatched episode is returned
exactly once: kept, surplus or filtered.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from agentrl.errors import ConfigError
from agentrl.rollout.controller import RolloutController
from agentrl.types import Status, Trajectory

Group = list[Trajectory]


class EnvPool:
    """Env instances reused across episodes: at most one per concurrent slot, created on demand.

    Envs can be costly to build (a retriever index, a sandbox); reusing them across episodes keeps
    that cost per slot, not per episode. An env whose episode FAILED is closed and replaced, since it
    may hold a dead sandbox.
    """

    def __init__(self, factory: Callable[[], Any], controller: RolloutController) -> None:
        self.factory = factory
        self.run = controller.in_env_thread
        self.idle: list[Any] = []
        self.created = 0

    async def acquire(self) -> Any:
        if self.idle:
            return self.idle.pop()
        self.created += 1
        return await self.run(self.factory)

    async def release(self, env: Any, *, broken: bool) -> None:
        if broken:
            await self.run(_close_quietly, env)
        else:
            self.idle.append(env)

    async def close(self) -> None:
        envs, self.idle = self.idle, []
        await asyncio.gather(*(self.run(_close_quietly, e) for e in envs))


def _close_quietly(env: Any) -> None:
    with contextlib.suppress(Exception):  # closing must never take the batch down
        env.close()


def _failed(task_id: str, group_id: str, index: int, env_id: str, error: Exception) -> Trajectory:
    return Trajectory(
        prompt_ids=[],
        status=Status.FAILED,
        group_id=group_id,
        task_id=task_id,
        sample_index=index,
        env_id=env_id,
        error=f"{type(error).__name__}: {error}",
    )


async def run_group(
    controller: RolloutController,
    pool: EnvPool,
    task_id: str,
    n_samples: int,
    *,
    group_id: str,
    env_id: str = "",
) -> Group:
    """Run ``n_samples`` episodes of ``task_id`` concurrently (bounded by the controller's semaphore)."""

    async def one(index: int) -> Trajectory:
        async with controller.semaphore:
            try:
                env = await pool.acquire()
            except Exception as e:  # env construction failed: that episode fails, the others go on
                return _failed(task_id, group_id, index, env_id, e)
            traj = await controller.run_episode(
                env, task_id=task_id, group_id=group_id, sample_index=index, env_id=env_id, bounded=False
            )
            await pool.release(env, broken=traj.status is Status.FAILED)
            return traj

    return list(await asyncio.gather(*(one(i) for i in range(n_samples))))


async def run_groups(
    controller: RolloutController,
    env_factory: Callable[[], Any],
    task_ids: Sequence[str],
    n_samples: int,
    *,
    env_id: str = "",
    group_prefix: str = "g",
    on_group: Callable[[Group], None] | None = None,
) -> list[Group]:
    """One group of ``n_samples`` episodes per task id, in the order of ``task_ids``; ``on_group`` (e.g.
    a progress bar) is called as each group ends."""
    pool = EnvPool(env_factory, controller)

    async def one(i: int, task_id: str) -> Group:
        group = await run_group(
            controller, pool, task_id, n_samples, group_id=f"{group_prefix}{i}:{task_id}", env_id=env_id
        )
        if on_group is not None:
            on_group(group)
        return group

    try:
        return list(await asyncio.gather(*(one(i, t) for i, t in enumerate(task_ids))))
    finally:
        await pool.close()


def has_signal(group: Group) -> bool:
    """True when the group's trainable episodes have at least two distinct rewards."""
    rewards = {t.reward for t in group if t.trainable}
    return len(rewards) > 1


@dataclass
class GroupBatch:
    """What :func:`sample_groups` returns; together the lists hold every dispatched episode once."""

    groups: list[Group] = field(default_factory=list)
    """Informative groups, at most the number asked for, in completion order."""
    surplus: list[Group] = field(default_factory=list)
    """Informative groups that finished after enough were collected (keep them for the next step)."""
    filtered: list[Group] = field(default_factory=list)
    """Groups dropped by the filter (all rewards agree, or none trainable)."""

    @property
    def num_dispatched(self) -> int:
        return sum(len(g) for g in (*self.groups, *self.surplus, *self.filtered))


async def sample_groups(
    controller: RolloutController,
    env_factory: Callable[[], Any],
    task_ids: Iterable[str],
    n_samples: int,
    num_groups: int,
    *,
    env_id: str = "",
    max_in_flight: int | None = None,
    keep: Callable[[Group], bool] = has_signal,
) -> GroupBatch:
    """Dispatch groups from ``task_ids`` until ``num_groups`` pass ``keep`` (or the tasks run out).

    ``max_in_flight`` groups run at once (default: enough to fill the controller's concurrency
    twice, the over-sampling). Groups still in flight when enough are kept are awaited, not cancelled,
    and returned as surplus so no episode is lost.
    """
    if num_groups < 1 or n_samples < 1:
        raise ConfigError("num_groups and n_samples must be >= 1")
    in_flight_cap = max_in_flight or max(1, 2 * controller.config.concurrency // n_samples)
    tasks = iter(task_ids)
    pool, batch, counter = EnvPool(env_factory, controller), GroupBatch(), itertools.count()
    running: set[asyncio.Task[Group]] = set()

    def dispatch() -> bool:
        task_id = next(tasks, None)
        if task_id is None:
            return False
        gid = f"g{next(counter)}:{task_id}"
        running.add(
            asyncio.ensure_future(
                run_group(controller, pool, task_id, n_samples, group_id=gid, env_id=env_id)
            )
        )
        return True

    try:
        while len(running) < in_flight_cap and dispatch():
            pass
        while running:
            done, _ = await asyncio.wait(running, return_when=asyncio.FIRST_COMPLETED)
            for fut in done:
                running.discard(fut)
                group = fut.result()
                if not keep(group):
                    batch.filtered.append(group)
                elif len(batch.groups) < num_groups:
                    batch.groups.append(group)
                else:
                    batch.surplus.append(group)
            while len(batch.groups) < num_groups and len(running) < in_flight_cap and dispatch():
                pass
    finally:
        await pool.close()
    return batch


def run_groups_sync(
    controller_factory: Callable[[], RolloutController],
    env_factory: Callable[[], Any],
    task_ids: Sequence[str],
    n_samples: int,
    *,
    env_id: str = "",
) -> list[Group]:
    """:func:`run_groups` from synchronous code (the controller is built inside the event loop)."""

    async def main() -> list[Group]:
        return await run_groups(controller_factory(), env_factory, task_ids, n_samples, env_id=env_id)

    return asyncio.run(main())
