"""The one-step asynchronous train loop (``--async-mode one-step``; slime's ``train_async.py``).

While the trainer trains on rollout ``s``, the engine already generates rollout ``s + 1`` with the
weights it has; after training, once rollout ``s + 1`` is in, the new weights are synced (every
``--update-weights-interval`` rollouts). A step then takes about ``max(generate, train) + sync``
instead of ``generate + train + sync``. The price: rollout ``s + 1``'s tokens were sampled by weights
up to ``--update-weights-interval`` policy versions older than the ones they train, which the loss
corrects on the rollout logprobs (TIS / ICEPOP; :mod:`agentrl.run.async_config` refuses a run without)
and ``--max-staleness`` bounds (:mod:`agentrl.run.staleness`).

Exact resume: checkpoints fall on weight syncs (``--save-interval`` is a multiple of the interval), when
the rollout generated ahead is complete; the checkpoint holds it, finished, and the policy version, so
a resumed run trains exactly what an uninterrupted one would have (docs/async.md).

Per step the loop logs the staleness of the trained tokens (``async/staleness_*``) and how long each
side waited for the other (``async/trainer_idle_s``, ``async/engine_idle_s``); the summary adds their
share of the wall clock.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from agentrl.errors import CheckpointError, EngineError, RunFailedError
from agentrl.rollout.driver import EnvFactory
from agentrl.run.failures import FailurePolicy, write_summary
from agentrl.run.loop_common import Deadline, RunResult, evaluate_before_training, out_of_time
from agentrl.run.metrics import dump_rollouts, plot_curves, read_metrics
from agentrl.run.run import PendingRollout, Run
from agentrl.run.staleness import enforce_staleness
from agentrl.run.train_config import TrainConfig
from agentrl.types import Trajectory

log = logging.getLogger(__name__)


def train_async(config: TrainConfig, *, env_factory: EnvFactory | None = None) -> RunResult:
    """Run ``config`` with rollout and training overlapping (see the module docstring); the same
    failure policy, checkpoints, evaluations and result as :func:`agentrl.run.loop.train`."""
    clock = Deadline(config.time_limit_s)
    run = Run.start(config, env_factory=env_factory)
    policy = FailurePolicy.of(config, run.log_dir)
    pipe = OneStepPipeline(run)
    last_step, stopped_early = run.start_step, False
    try:
        evaluate_before_training(run, clock)
        for step in range(run.start_step + 1, config.num_rollouts + 1):
            if out_of_time(run, clock, last_step):
                stopped_early = True
                break
            clock.step_started()
            trajectories, metrics = pipe.collect(step)  # generated ahead (or now, for the first one)
            if config.dump_interval and step % config.dump_interval == 0:
                dump_rollouts(trajectories, run.log_dir, step)
            policy.check_rollout(step, metrics, run.logger.log)  # too many FAILED episodes: stop
            if step < config.num_rollouts:
                pipe.launch(step + 1)  # generates with the engine's weights while this rollout trains
            metrics.update(pipe.train_and_sync(step, trajectories))
            metrics["perf/tokens_per_s"] = metrics["rollout/total_tokens"] / max(
                1e-9, metrics["async/step_s"]
            )
            if run.can_evaluate and config.eval_interval and step % config.eval_interval == 0:
                metrics.update(run.evaluate(step=step))  # after a sync (eval_interval is a multiple of K)
                clock.eval_s = max(clock.eval_s, metrics["time/eval_s"])
            run.logger.log(step, metrics)
            if config.save and (step % config.save_interval == 0 or step == config.num_rollouts):
                pipe.checkpoint(step)
            last_step = step
            clock.step_ended()
            policy.check_trained(step, metrics)
        hf_dir = finish_async(run, pipe, config, last_step, stopped_early)
    except (RunFailedError, EngineError) as error:
        raise policy.stopped(run, last_step, error)  # noqa: B904 (the engine's error is its context)
    finally:
        pipe.close()
        run.close()
    return async_result(run, last_step, hf_dir, stopped_early, mode="one-step")


@dataclass
class ReadyRollout:
    """A generated rollout, filtered and measured (:meth:`Run.finish_rollout`), waiting to train."""

    step: int
    trajectories: list[Trajectory]
    metrics: dict[str, float]
    sampler_before: tuple[int, dict[str, Any]] | None
    """The task sampler before it was sampled: where a run that fails on it winds back to."""


@dataclass
class Busy:
    """When each side worked, to tell how long the other waited: (start, end) intervals in
    ``time.perf_counter()`` seconds."""

    intervals: list[tuple[float, float]] = field(default_factory=list)

    def idle(self, start: float, end: float, ongoing: Sequence[tuple[float, float]] = ()) -> float:
        """Seconds of [start, end] not covered by a busy interval (intervals do not overlap), counting
        ``ongoing`` work (not finished at ``end``) as busy too."""
        covered = sum(max(0.0, min(b, end) - max(a, start)) for a, b in [*self.intervals, *ongoing])
        self.intervals = [(a, b) for a, b in self.intervals if b > end]  # older ones are done with
        return max(0.0, end - start - covered)


class OneStepPipeline:
    """The rollout generated ahead, the policy version, and the bookkeeping of who waited."""

    def __init__(self, run: Run) -> None:
        self.run = run
        self.config = run.config
        state = run.async_state  # from the checkpoint on --resume
        if state.get("buffer", {}).get("groups"):
            raise CheckpointError(
                f"{run.config.save} was written by --async-mode fully (it holds a buffer of generated "
                "groups, which one-step would skip): resume it with --async-mode fully"
            )
        self.policy_version = int(state.get("policy_version", 0))
        """Trained rollouts that changed the weights: the trainer's version (staleness is counted in it)."""
        self.engine_version = self.policy_version  # Run.start synced it on --resume
        self.pending: PendingRollout | None = None
        self.pending_sampler: tuple[int, dict[str, Any]] | None = None
        self.ready: ReadyRollout | None = None
        if state.get("ready") is not None:
            r = state["ready"]
            trajectories = [Trajectory.from_dict(d) for d in r["trajectories"]]
            self.ready = ReadyRollout(r["step"], trajectories, dict(r["metrics"]), r["sampler_before"])
        self.engine = Busy()
        self.trainer = Busy()
        self.step_started = 0.0
        """When the step being trained started collecting its rollout (the window of the idle times)."""
        self._threads = ThreadPoolExecutor(max_workers=1, thread_name_prefix="agentrl-train")
        self._keep_state()

    def launch(self, step: int) -> None:
        """Start generating rollout ``step`` with the engine's current weights."""
        training = self.run.sampler_before_rollout  # the rollout about to train, if it fails
        self.pending = self.run.start_rollout(step)
        self.pending_sampler, self.run.sampler_before_rollout = self.run.sampler_before_rollout, training

    def collect(self, step: int) -> tuple[list[Trajectory], dict[str, float]]:
        """Rollout ``step``'s episodes to train on and its metrics, waiting for it if it is not in
        (``time/wait_rollout_s``: the trainer had nothing to do meanwhile)."""
        started = time.perf_counter()
        if self.ready is None and self.pending is None:
            self.launch(step)
        self._finish_pending()
        ready, self.ready = self.ready, None
        assert ready is not None and ready.step == step, (
            f"rollout {step} expected, {ready and ready.step} ready"
        )
        self.run.sampler_before_rollout = ready.sampler_before
        self.step_started = started
        return ready.trajectories, {**ready.metrics, "time/wait_rollout_s": time.perf_counter() - started}

    def train_and_sync(self, step: int, trajectories: list[Trajectory]) -> dict[str, float]:
        """Train on rollout ``step`` (in a thread, while the engine generates the next), then sync the
        weights when ``step`` is a multiple of ``--update-weights-interval`` (or the last)."""
        a = self.config.asynchronous
        kept, metrics = enforce_staleness(trajectories, self.policy_version, a.max_staleness, a.stale_samples)
        started = time.perf_counter()
        job = self._threads.submit(self._train, kept, metrics["async/trained_tokens"] > 0)
        while self.pending is not None and not job.done():  # timestamp the generation's end as it comes
            self._finish_pending(timeout=0.02)
        train_metrics = job.result()
        metrics.update(train_metrics)
        metrics["time/train_s"] = self.trainer.intervals[-1][1] - started
        if not train_metrics["train/skipped"]:
            self.policy_version += 1
        due = step % a.update_weights_interval == 0 or step == self.config.num_rollouts
        waited = time.perf_counter()
        if due:
            self._finish_pending()  # the weights must not change under the rollout generated ahead
        sync_start = time.perf_counter()
        metrics["time/wait_ahead_s"] = sync_start - waited
        if due:
            self.sync()
        end = time.perf_counter()
        metrics["time/sync_s"] = end - sync_start
        generating = [(self.pending.started, end)] if self.pending is not None else []
        metrics["async/trainer_idle_s"] = self.trainer.idle(self.step_started, end)
        metrics["async/engine_idle_s"] = self.engine.idle(self.step_started, end, generating)
        metrics["async/step_s"] = end - self.step_started
        metrics["async/engine_version"] = float(self.engine_version)
        self._keep_state()
        return metrics

    def sync(self) -> None:
        """Wait for the rollout generated ahead (weights never change under it), then push the trainer's
        weights to the engine if they changed since its last sync."""
        self._finish_pending()
        if self.engine_version != self.policy_version:
            self.run.sync_weights(version=self.policy_version)
            self.engine_version = self.policy_version

    def checkpoint(self, step: int) -> None:
        """Checkpoint ``step`` with the rollout generated ahead, finished, and the policy version."""
        self._finish_pending()
        r = self.ready
        ready = None
        if r is not None:
            ready = {
                "step": r.step,
                "trajectories": [t.to_dict() for t in r.trajectories],
                "metrics": r.metrics,
                "sampler_before": r.sampler_before,
            }
        self.run.async_state = {"policy_version": self.policy_version, "ready": ready}
        try:
            self.run.checkpoint(step)
        finally:
            self._keep_state()

    def close(self) -> None:
        self._threads.shutdown(wait=True)

    def _train(self, trajectories: list[Trajectory], any_token: bool) -> dict[str, float]:
        start = time.perf_counter()
        try:
            if (
                not any_token
            ):  # e.g. --max-staleness dropped every token: no step (Adam moves on a 0 gradient)
                return {"train/skipped": 1.0, "train/optimizer_steps": 0.0, "train/frac_zero_adv": 1.0}
            return self.run.train(trajectories)
        finally:
            self.trainer.intervals.append((start, time.perf_counter()))

    def _finish_pending(self, timeout: float | None = None) -> None:
        """Wait (up to ``timeout``) for the rollout being generated; once in, filter and measure it."""
        import ray

        pending = self.pending
        if pending is None:
            return
        done, _ = ray.wait([pending.ref], timeout=timeout)
        if not done:
            return
        end = time.perf_counter()
        self.engine.intervals.append((pending.started, end))
        self.pending = None
        kept, metrics = self.run.finish_rollout(pending, ray.get(pending.ref), end - pending.started)
        metrics["time/rollout_s"] = end - pending.started
        self.ready = ReadyRollout(pending.step, kept, metrics, self.pending_sampler)

    def _keep_state(self) -> None:
        """What a checkpoint taken outside :meth:`checkpoint` (a stopped run's) holds: the policy version
        only; the run winds its sampler back to regenerate what was ahead."""
        self.run.async_state = {"policy_version": self.policy_version}


def finish_async(
    run: Run, pipe: Any, config: TrainConfig, last_step: int, stopped_early: bool
) -> Path | None:
    """The end of an async run (one-step or fully; ``pipe`` checkpoints and syncs): a checkpoint of a
    run stopped between save intervals, the final evaluation unless the last step had one, the HF
    export; its folder (None without --export-hf)."""
    if stopped_early and config.save and last_step > run.start_step and last_step % config.save_interval:
        pipe.checkpoint(last_step)
    evaluated = config.eval_interval and last_step % config.eval_interval == 0
    if run.can_evaluate and last_step > 0 and not evaluated:
        pipe.sync()
        run.logger.log(last_step, run.evaluate(step=last_step))
    return run.export_hf() if config.export_hf else None


def async_result(run: Run, last_step: int, hf_dir: Path | None, stopped_early: bool, mode: str) -> RunResult:
    """Curves, summary (with each side's idle time) and the result of a finished async run."""
    records = read_metrics(run.log_dir / "metrics.jsonl")
    plot_curves(records, run.log_dir / "curves.png")
    summary = write_summary(run.log_dir, extra=idle_summary(records, mode=mode))
    return RunResult(run.log_dir, last_step, summary, hf_dir, stopped_early)


def idle_summary(records: list[dict[str, Any]], mode: str = "one-step") -> str:
    """One summary line: how much of the trained steps' wall clock each side waited for the other."""
    steps = [r for r in records if r.get("async/step_s") is not None]
    wall = sum(r["async/step_s"] for r in steps)
    if not wall:
        return ""
    trainer = sum(r["async/trainer_idle_s"] for r in steps)
    engine = sum(r["async/engine_idle_s"] for r in steps)
    stale = [r["async/staleness_max"] for r in steps]
    line = (
        f"async ({mode}): over {wall:.1f} s of steps the trainer waited {trainer:.1f} s "
        f"({100 * trainer / wall:.0f}%), the engine {engine:.1f} s ({100 * engine / wall:.0f}%); "
        f"trained-token staleness max {max(stale):.0f}"
    )
    over = sum(r.get("async/stale_tokens", 0.0) for r in steps)
    if over:
        line += f", {over:.0f} tokens over --max-staleness"
    fill = [r["async/buffer_fill"] for r in steps if "async/buffer_fill" in r]
    if fill:  # fully: how full the buffer was when the trainer asked for a batch
        line += f"; buffer {100 * sum(fill) / len(fill):.0f}% full on average"
    return line
