"""Calling rewards from env threads: sync, async and batched rewards behind one blocking ``score``.

The rollout steps each env on its own thread, so :meth:`RewardRunner.score` blocks its caller. A sync
per-sample reward runs right there. Async rewards and batched ones run on the runner's own event loop
(one daemon thread): an async reward under a semaphore of ``concurrency`` calls in flight; a batched
reward (or a reward model) gathers the samples that arrive within ``batch_wait_s`` of each other, up to
``max_batch``, into one call. So the n episodes of a group, which end at about the same time, are
judged in one batch.

One runner per (default reward, concurrency) is shared by every env of a process
(:func:`shared_runner`): env pools build several envs, and they should share batches and the limit.
"""

from __future__ import annotations

import asyncio
import functools
import threading
from concurrent.futures import Future
from typing import Any

from agentrl.envs.rewards import Reward, RewardError, RewardSample, as_components, resolve_reward


class RewardRunner:
    """Scores :class:`RewardSample` s with ``default`` or the reward their ``metadata["rm_type"]`` names."""

    def __init__(self, default: str, *, concurrency: int = 32, batch_wait_s: float = 0.02) -> None:
        self.default = default
        self.concurrency = concurrency
        self.batch_wait_s = batch_wait_s
        self._rewards: dict[str, Reward] = {}
        self._lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._limits: dict[str, asyncio.Semaphore] = {}
        self._queues: dict[str, list[tuple[RewardSample, asyncio.Future[Any]]]] = {}

    def reward_for(self, sample: RewardSample) -> Reward:
        """The reward of ``sample``: its ``metadata["rm_type"]``, else the runner's default."""
        name = str(sample.metadata.get("rm_type") or self.default) if sample.metadata else self.default
        with self._lock:
            if name not in self._rewards:
                flag = "metadata.rm_type" if name != self.default else "--reward"
                self._rewards[name] = resolve_reward(name, flag)
            return self._rewards[name]

    def score(self, sample: RewardSample) -> dict[str, float]:
        """``{"reward": float, ...components}`` of ``sample``; raises :class:`RewardError` naming the reward
        when it raises or returns something else than a reward."""
        reward = self.reward_for(sample)
        try:
            if not reward.is_async and not reward.is_batched:
                value = reward.fn(sample)
            else:
                value = self._submit(reward, sample).result()
        except RewardError:
            raise
        except Exception as e:
            raise RewardError(f"reward {reward.name!r} raised {type(e).__name__}: {e}") from e
        return as_components(value, reward.name)

    # ------------------------------------------------------------------ the runner's event loop
    def _submit(self, reward: Reward, sample: RewardSample) -> Future[Any]:
        loop = self._ensure_loop()
        if reward.is_batched:
            return asyncio.run_coroutine_threadsafe(self._enqueue(reward, sample), loop)
        return asyncio.run_coroutine_threadsafe(self._limited(reward, reward.fn(sample)), loop)

    def _ensure_loop(self) -> asyncio.AbstractEventLoop:
        with self._lock:
            if self._loop is None:
                self._loop = asyncio.new_event_loop()
                threading.Thread(target=self._loop.run_forever, name="agentrl-reward", daemon=True).start()
            return self._loop

    async def _limited(self, reward: Reward, awaitable: Any) -> Any:
        if reward.name not in self._limits:
            self._limits[reward.name] = asyncio.Semaphore(reward.concurrency or self.concurrency)
        async with self._limits[reward.name]:
            return await awaitable

    async def _enqueue(self, reward: Reward, sample: RewardSample) -> Any:
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        queue = self._queues.setdefault(reward.name, [])
        queue.append((sample, future))
        if len(queue) == 1:  # the first of a batch waits for the others, then sends them all
            asyncio.get_running_loop().call_later(self.batch_wait_s, self._flush, reward)
        elif len(queue) >= reward.max_batch:
            self._flush(reward)
        return await future

    def _flush(self, reward: Reward) -> None:
        batch, self._queues[reward.name] = self._queues.get(reward.name, []), []
        if batch:
            asyncio.get_running_loop().create_task(self._run_batch(reward, batch))

    async def _run_batch(self, reward: Reward, batch: list[tuple[RewardSample, asyncio.Future[Any]]]) -> None:
        samples = [sample for sample, _ in batch]
        try:
            if reward.is_async:
                values = await self._limited(reward, reward.fn(samples))
            else:
                call = functools.partial(reward.fn, samples)
                values = await self._limited(reward, asyncio.get_running_loop().run_in_executor(None, call))
            values = list(values)
            if len(values) != len(samples):
                raise RewardError(
                    f"batched reward {reward.name!r} returned {len(values)} values for {len(samples)} samples"
                )
        except Exception as e:
            for _, future in batch:
                if not future.done():
                    future.set_exception(e)
            return
        for (_, future), value in zip(batch, values, strict=True):
            if not future.done():
                future.set_result(value)


_shared: dict[tuple[str, int], RewardRunner] = {}
_shared_lock = threading.Lock()


def shared_runner(default: str, concurrency: int = 32) -> RewardRunner:
    """The process's runner for ``default`` (built on first use)."""
    with _shared_lock:
        key = (default, concurrency)
        if key not in _shared:
            _shared[key] = RewardRunner(default, concurrency=concurrency)
        return _shared[key]
