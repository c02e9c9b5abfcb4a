"""The run's failure policy: which faults end a training run, and what a stopped run leaves behind.

A bad episode is data (docs/reliability.md C19), but a run whose episodes keep failing trains nothing and
must not end looking like a success. Three things stop a run with :class:`~agentrl.errors.RunFailedError`
(``agentrl train`` exits 1), its message naming the component at fault and what to check
(docs/reliability.md G25):

* the engine can serve nothing any more, or refuses a weight sync (an :class:`~agentrl.errors.EngineError`
  out of a rollout, a sync or an evaluation; a single request's error is only that episode's);
* more than ``--max-failed-fraction`` of one rollout's episodes FAILED or were ABORTED;
* ``--max-skipped-steps`` rollouts in a row trained nothing (``train/skipped``: no advantage anywhere).

Before the error leaves the loop, what is safe is saved: the failed rollout's metrics (with the failures
counted by component) and its lost episodes (``failed_rollouts/``), a checkpoint of the last trained step
when the failure came at a step boundary (the task sampler wound back, so ``--resume`` redoes the failed
rollout), and ``summary.txt``.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from agentrl.errors import EngineError, RunFailedError
from agentrl.types import Status, Trajectory, load_jsonl

log = logging.getLogger(__name__)

COMPONENTS = ("engine", "env", "tool", "sandbox", "reward")
"""Where an episode's fault lies (``rollout/failed_<component>`` counts FAILED and ABORTED episodes)."""

CHECK = {
    "engine": "the inference engine: the SGLang server logs (<log dir>/sglang/ for launched servers), that "
    "the servers of --sglang-urls are up and reachable, the model path and free memory",
    "env": "the env's reset/step: run `agentrl rollout` with the same env flags and read the errors with "
    "`agentrl view`",
    "tool": "the tools' backends the env calls (e.g. the retriever server of --retriever http)",
    "sandbox": "the sandbox engine: `agentrl sandbox doctor` (Docker running, the image built, limits)",
    "reward": "the reward function: it raised on these samples, or (skipped steps) it gave every episode of "
    "each group the same reward",
}
"""What to look at when a component fails, for the messages."""


def component_of(trajectory: Trajectory) -> str | None:
    """The component at fault for an untrainable episode (ABORTED: the engine), None for a trainable one."""
    if trajectory.status is Status.ABORTED:
        return "engine"
    if trajectory.status is Status.FAILED:
        return str(trajectory.metrics.get("failed_component", "env"))
    return None


def failure_metrics(trajectories: Sequence[Trajectory], prefix: str = "rollout/") -> dict[str, float]:
    """``<prefix>failed_<component>``: FAILED and ABORTED episodes of one rollout, by component."""
    counts = Counter(component_of(t) for t in trajectories)
    return {f"{prefix}failed_{c}": float(counts.get(c, 0)) for c in COMPONENTS}


def failure_summary(records: Sequence[dict[str, Any]]) -> str:
    """One summary line: the run's FAILED and ABORTED episodes by component (train rollouts)."""
    totals = {c: sum(int(r.get(f"rollout/failed_{c}") or 0) for r in records) for c in COMPONENTS}
    episodes = sum(int(r.get("rollout/episodes") or 0) for r in records)
    shown = ", ".join(f"{c} {n}" for c, n in totals.items())
    return f"failed episodes {sum(totals.values())} of {episodes}: {shown}"


@dataclass
class FailurePolicy:
    """Decides, step by step, whether the run must stop; see the module docstring."""

    max_failed_fraction: float
    """A rollout with a larger fraction of FAILED or ABORTED episodes stops the run."""
    max_skipped_steps: int
    """This many skipped train steps in a row stop the run (0: never)."""
    log_dir: Path
    skipped_in_a_row: int = 0
    checked_step: int = 0
    """The last rollout step whose episodes passed :meth:`check_rollout`."""

    @classmethod
    def of(cls, config: Any, log_dir: Path) -> FailurePolicy:
        return cls(config.max_failed_fraction, config.max_skipped_steps, log_dir)

    def check_rollout(self, step: int, metrics: dict[str, float], log: Callable[..., None]) -> None:
        """Stop (after logging ``metrics`` with ``log(step, metrics)``) when too many episodes were lost."""
        episodes = metrics.get("rollout/episodes", 0.0)
        by_component = {c: int(metrics.get(f"rollout/failed_{c}", 0.0)) for c in COMPONENTS}
        lost = sum(by_component.values())
        if episodes and lost / episodes > self.max_failed_fraction:
            log(step, metrics)
            worst = max(COMPONENTS, key=lambda c: by_component[c])
            counts = ", ".join(f"{c} {n}" for c, n in by_component.items() if n)
            dump = self.log_dir / "failed_rollouts" / f"step_{step:06d}.jsonl"
            raise RunFailedError(
                worst,
                f"rollout {step}: {lost} of {int(episodes)} episodes failed or were aborted ({counts}), more "
                f"than --max-failed-fraction {self.max_failed_fraction}. The run stopped: {worst} failures. "
                f"Check {CHECK[worst]}. First error: {_first_error(dump)}. All of them: {dump} "
                "(`agentrl view` it).",
            )
        self.checked_step = step

    def check_trained(self, step: int, metrics: dict[str, float]) -> None:
        """Stop when ``max_skipped_steps`` rollouts in a row trained nothing."""
        if "train/skipped" not in metrics:  # --debug-rollout-only
            return
        self.skipped_in_a_row = self.skipped_in_a_row + 1 if metrics["train/skipped"] else 0
        if self.max_skipped_steps and self.skipped_in_a_row >= self.max_skipped_steps:
            raise RunFailedError(
                "reward",
                f"rollouts {step - self.skipped_in_a_row + 1}..{step} trained nothing (train/skipped: every "
                "group's rewards agreed, or the filters dropped every group), --max-skipped-steps "
                f"{self.max_skipped_steps} in a row. The run stopped. Check {CHECK['reward']}; the episodes "
                f"are in {self.log_dir / 'rollouts'} (`agentrl view`); or an easier task, more samples per "
                "prompt, or --max-skipped-steps 0 to go on regardless.",
            )

    def stopped(self, run: Any, last_step: int, error: RunFailedError | EngineError) -> RunFailedError:
        """The error to end the run with (a :class:`RunFailedError` for an engine failure), after saving
        what is safe: a checkpoint of ``last_step`` if the failure came at a step boundary, and the
        summary."""
        if isinstance(error, RunFailedError):
            failure = error
        else:
            cause = getattr(error, "cause", error)  # Ray's RayTaskError wraps the engine's own error
            failure = RunFailedError(
                "engine",
                f"the inference engine failed for good ({type(cause).__name__}: {cause}). The run stopped "
                f"after step {last_step}. Check {CHECK['engine']}.",
            )
        try:
            self._save_checkpoint(run, last_step)
        except Exception as e:  # saving is a courtesy: the failure itself must reach the user
            log.warning("could not checkpoint step %d after the failure: %s", last_step, e)
        write_summary(run.log_dir, extra=f"run stopped: {failure}")
        run.logger.write(f"run stopped ({failure.component}): {failure}")
        return failure

    def _save_checkpoint(self, run: Any, last_step: int) -> None:
        config = run.config
        if not config.save or config.debug_rollout_only or last_step <= run.start_step:
            return
        rollout_step, sampler_state = run.sampler_before_rollout or (0, None)
        if rollout_step > last_step:
            if self.checked_step >= rollout_step:  # it failed after training on that rollout: no boundary
                return
            run.sampler.load_state_dict(sampler_state)  # --resume redoes the failed rollout
        if last_step % config.save_interval and last_step != config.num_rollouts:  # not saved yet
            run.checkpoint(last_step)


def write_summary(log_dir: Path, extra: str = "") -> str:
    """Write ``summary.txt`` (what improved, the failures by component, ``extra``); returns its text."""
    from agentrl.run.metrics import read_metrics, summarize

    path = log_dir / "metrics.jsonl"
    records = read_metrics(path) if path.exists() else []
    summary = "\n".join(filter(None, [summarize(records), failure_summary(records), extra]))
    (log_dir / "summary.txt").write_text(summary + "\n", encoding="utf-8")
    return summary


def _first_error(dump: Path) -> str:
    try:
        return next((t.error for t in load_jsonl(dump) if t.error), "none recorded (aborted episodes)")
    except OSError:
        return f"({dump} could not be read)"
