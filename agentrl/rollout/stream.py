"""Groups of episodes generated in the background, one task at a time (``--async-mode fully``).

:meth:`RolloutManager.generate <agentrl.rollout.driver.RolloutManager.generate>` runs a whole batch to
its end on the manager's event loop, and the actor answers nothing else meanwhile. The fully
asynchronous loop (:mod:`agentrl.run.fully_async`) instead keeps groups generating while it trains,
syncs weights and evaluates, and takes each group as it finishes. A :class:`GroupStream` does that
inside the rollout manager's actor: it runs the manager's event loop on a thread of its own, so the
actor's methods return at once while episodes go on; :meth:`submit` starts groups, :meth:`poll` hands
back the finished ones, and the manager's other work (a weight update, an evaluation) runs on the same
loop, between the episodes' awaits. A group's episodes are seeded, and their group id named, by the
group's index (``"<index>/<key>"``), which the caller gives: the same index and key sample the same
episodes, whenever they run.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

from agentrl.rollout.episodes import EpisodeRunner, GenerationSettings
from agentrl.types import Trajectory

# The driver's RolloutManager is typed Any here: the driver imports this module, and an import back
# (even under TYPE_CHECKING) would make a cycle.
RolloutManager = Any

T = TypeVar("T")

FinishedGroup = tuple[int, list[Trajectory]]
"""A finished group: its index and its episodes, in sample order."""


class GroupStream:
    """Generates groups on the manager's event loop, run by a thread of this stream's own."""

    def __init__(
        self,
        manager: RolloutManager,
        make_runner: Callable[[GenerationSettings], EpisodeRunner],
        check_group: Callable[[list[Trajectory]], None],
    ) -> None:
        """``make_runner`` builds the manager's episode runner for some settings and ``check_group``
        raises for a group whose engine died (both from :mod:`agentrl.rollout.driver`, which imports
        this module: passed in, not imported back)."""
        self.manager = manager
        self._make_runner, self._check_group = make_runner, check_group
        self.loop = manager._loop
        self._thread = threading.Thread(target=self.loop.run_forever, name="agentrl-stream", daemon=True)
        self._thread.start()
        self._runners: dict[GenerationSettings, EpisodeRunner] = {}
        self._tasks: set[asyncio.Task[list[Trajectory]]] = set()
        self._finished: list[FinishedGroup] = []
        self._error: BaseException | None = None
        self._ready = threading.Condition()

    def run(self, coro: Coroutine[Any, Any, T]) -> T:
        """Run ``coro`` on the stream's loop, beside the groups, and wait for its result."""
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result()

    def submit(self, groups: list[tuple[int, str]], settings: GenerationSettings) -> None:
        """Start generating ``settings.n_samples`` episodes of each (index, task key)."""
        base = _without_step(settings)
        if base not in self._runners:  # one runner, so one concurrency limit, for the stream
            self._runners[base] = self._make_runner(base)
        runner = self._runners[base]
        for index, key in groups:
            self.loop.call_soon_threadsafe(self._start, runner, index, key, settings.n_samples)

    def poll(self, timeout: float) -> list[FinishedGroup]:
        """The groups finished since the last poll, waiting up to ``timeout`` seconds for one; raises
        what a group raised, and :class:`~agentrl.errors.EngineDeadError` for a dead engine."""
        with self._ready:
            if not self._finished and self._error is None:
                self._ready.wait(timeout)
            if self._error is not None:
                raise self._error
            finished, self._finished = self._finished, []
        for _, group in finished:
            self._check_group(group)
        return finished

    def close(self) -> None:
        """Cancel the groups still running and stop the loop's thread (the manager closes the engine
        on it first, through :meth:`run`)."""
        self.run(self._cancel_all())
        for runner in self._runners.values():
            runner.close()

    def stop(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(timeout=60)

    def _start(self, runner: EpisodeRunner, index: int, key: str, n_samples: int) -> None:
        async def group() -> list[Trajectory]:
            return list(await asyncio.gather(*(runner.episode(key, i, index) for i in range(n_samples))))

        task = self.loop.create_task(group())
        self._tasks.add(task)
        task.add_done_callback(lambda t: self._finish(index, t))

    def _finish(self, index: int, task: asyncio.Task[list[Trajectory]]) -> None:
        self._tasks.discard(task)
        if task.cancelled():
            return
        with self._ready:
            error = task.exception()
            if error is not None:
                self._error = self._error or error
            else:
                self._finished.append((index, task.result()))
            self._ready.notify_all()

    async def _cancel_all(self) -> None:
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


def _without_step(settings: GenerationSettings) -> GenerationSettings:
    import dataclasses

    return dataclasses.replace(settings, step=0)
