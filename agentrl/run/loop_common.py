"""What both train loops share (:mod:`agentrl.run.loop`, :mod:`agentrl.run.async_loop`): the result of
a run, the step timer and the ``--time-limit-s`` clock."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from agentrl.run.run import Run


@dataclass
class RunResult:
    """What a finished run leaves behind."""

    log_dir: Path
    """metrics.jsonl, tensorboard/, rollouts/, curves.png, summary.txt."""
    last_step: int
    """The last rollout step trained (equals num_rollouts when the run completed)."""
    summary: str
    """The printed summary of what improved."""
    hf_dir: Path | None
    """The exported policy (HF folder), when --export-hf."""
    stopped_early: bool = False
    """True when --time-limit-s ended the run before num_rollouts; --resume continues it."""


@contextmanager
def timed(metrics: dict[str, float], name: str) -> Iterator[None]:
    start = time.perf_counter()
    yield
    metrics[f"time/{name}_s"] = time.perf_counter() - start


class Deadline:
    """``--time-limit-s``: whether the next rollout step still fits, judged by the slowest step so far
    plus one evaluation (for the final one). The first step of a process always runs: nothing is known
    about its cost before it."""

    def __init__(self, limit_s: float) -> None:
        self.limit_s = limit_s
        self.start = time.monotonic()
        self.eval_s = 0.0
        self.slowest_s = 0.0
        self._step_start: float | None = None

    def step_started(self) -> None:
        self._step_start = time.monotonic()

    def step_ended(self) -> None:
        if self._step_start is not None:
            self.slowest_s = max(self.slowest_s, time.monotonic() - self._step_start)

    def would_overrun(self) -> bool:
        if not self.limit_s or self.slowest_s == 0.0:
            return False
        return time.monotonic() - self.start + self.slowest_s + self.eval_s > self.limit_s


def evaluate_before_training(run: Run, clock: Deadline) -> None:
    """A fresh run's step-0 evaluation (the starting policy); its time joins the clock's estimate."""
    if run.start_step == 0 and run.can_evaluate:
        eval_metrics = run.evaluate(step=0)
        clock.eval_s = eval_metrics["time/eval_s"]
        run.logger.log(0, eval_metrics)


def out_of_time(run: Run, clock: Deadline, last_step: int) -> bool:
    """True (and said in the log) when the next rollout step would not finish within --time-limit-s."""
    if not clock.would_overrun():
        return False
    config = run.config
    run.logger.write(
        f"time limit ({config.time_limit_s:.0f} s): stopping after step {last_step} of "
        f"{config.num_rollouts} (the next would not finish in time)"
    )
    return True
