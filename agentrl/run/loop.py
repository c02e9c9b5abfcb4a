"""The train loop: generate -> advantages -> train -> sync weights -> eval -> checkpoint.

This file is meant to be read top to bottom in a minute. The pieces it calls live elsewhere: the actors
and their set-up in :mod:`agentrl.run.run` / :mod:`agentrl.run.actors`, the rollout manager in
:mod:`agentrl.rollout.driver`, advantages and losses in the backend's ``train_step``, metrics in
:mod:`agentrl.run.metrics`.

Run it with ``agentrl train --env search --max-turns 5`` (see ``agentrl train --help``).
"""

from __future__ import annotations

import logging

from agentrl.errors import EngineError, RunFailedError
from agentrl.rollout.driver import EnvFactory
from agentrl.run.failures import FailurePolicy, write_summary
from agentrl.run.loop_common import Deadline, RunResult, evaluate_before_training, out_of_time, timed
from agentrl.run.metrics import dump_rollouts, plot_curves, read_metrics
from agentrl.run.run import Run
from agentrl.run.train_config import TrainConfig

log = logging.getLogger(__name__)


def train(config: TrainConfig, *, env_factory: EnvFactory | None = None) -> RunResult:
    """Run ``config`` to the end; raises if an actor dies (the run is then resumed from a checkpoint), and
    :class:`RunFailedError` when the failure policy stops it (:mod:`agentrl.run.failures`). With
    ``--async-mode one-step`` the overlapping loop of :mod:`agentrl.run.async_loop` runs instead, with
    ``fully`` the streaming one of :mod:`agentrl.run.fully_async`."""
    if config.asynchronous.async_mode == "fully":
        from agentrl.run.fully_async import train_fully_async

        return train_fully_async(config, env_factory=env_factory)
    if config.asynchronous.enabled:
        from agentrl.run.async_loop import train_async

        return train_async(config, env_factory=env_factory)
    clock = Deadline(config.time_limit_s)
    run = Run.start(config, env_factory=env_factory)
    policy = FailurePolicy.of(config, run.log_dir)
    last_step, stopped_early = run.start_step, False
    try:
        evaluate_before_training(run, clock)
        for step in range(run.start_step + 1, config.num_rollouts + 1):
            if out_of_time(run, clock, last_step):
                stopped_early = True
                break
            clock.step_started()
            metrics: dict[str, float] = {}
            with timed(metrics, "rollout"):
                trajectories, rollout_stats = run.generate(step)  # groups of n episodes per task, filtered
            metrics.update(rollout_stats)  # of every episode generated, the filtered-out ones included
            if config.dump_interval and step % config.dump_interval == 0:
                dump_rollouts(trajectories, run.log_dir, step)
            policy.check_rollout(step, metrics, run.logger.log)  # too many FAILED episodes: stop
            if not config.debug_rollout_only:
                with timed(metrics, "train"):
                    metrics.update(run.train(trajectories))  # advantages + steps_per_rollout optimizer steps
                with timed(metrics, "sync"):
                    if not metrics["train/skipped"]:  # skipped (no advantage anywhere): weights unchanged
                        run.sync_weights(version=step)  # state dict (embedded) or HF folder (SGLang)
            metrics["perf/tokens_per_s"] = metrics["rollout/total_tokens"] / max(
                1e-9, sum(v for k, v in metrics.items() if k.startswith("time/"))
            )
            if run.can_evaluate and config.eval_interval and step % config.eval_interval == 0:
                metrics.update(run.evaluate(step=step))
                clock.eval_s = max(clock.eval_s, metrics["time/eval_s"])
            run.logger.log(step, metrics)
            if config.save and (step % config.save_interval == 0 or step == config.num_rollouts):
                run.checkpoint(step)
            last_step = step
            clock.step_ended()
            policy.check_trained(step, metrics)  # --max-skipped-steps in a row: stop
        if stopped_early and config.save and last_step > run.start_step and last_step % config.save_interval:
            run.checkpoint(last_step)  # where --resume picks up
        evaluated = config.eval_interval and last_step % config.eval_interval == 0
        if run.can_evaluate and last_step > 0 and not evaluated:
            run.logger.log(last_step, run.evaluate(step=last_step))
        hf_dir = run.export_hf() if config.export_hf and not config.debug_rollout_only else None
    except (RunFailedError, EngineError) as error:  # never a silent success; save what is safe first
        raise policy.stopped(run, last_step, error)  # noqa: B904 (the engine's error is its context)
    finally:
        run.close()
    records = read_metrics(run.log_dir / "metrics.jsonl")
    plot_curves(records, run.log_dir / "curves.png")
    summary = write_summary(run.log_dir)
    return RunResult(run.log_dir, last_step, summary, hf_dir, stopped_early)
