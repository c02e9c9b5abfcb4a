"""The settings of asynchronous training (docs/async.md): overlap generation with training, bound and
count how stale the trained tokens are.

``--async-mode off`` (the default) is the synchronous loop of :mod:`agentrl.run.loop`: generate ->
train -> sync, every token trained by the weights that sampled it. ``one-step`` generates the next
rollout while the current one trains (:mod:`agentrl.run.async_loop`), so its tokens are sampled by
weights up to ``update_weights_interval`` policy versions older than the ones they train. ``fully``
keeps groups generating into a bounded buffer while the trainer takes batches from it
(:mod:`agentrl.run.fully_async`); weights update under running episodes. Either gap needs an off-policy
correction in the loss (TIS or ICEPOP on the rollout logprobs), which is why the checks here refuse an
async run without one.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from agentrl.errors import ConfigError

AsyncMode = Literal["off", "one-step", "fully"]
StaleSamples = Literal["drop", "downweight"]


@dataclass(frozen=True)
class AsyncConfig:
    """How generation and training overlap, and what happens to samples of old weights."""

    async_mode: AsyncMode = "off"
    """``off`` (generate, train, sync in turn), ``one-step`` (the next rollout generates while this one
    trains) or ``fully`` (groups stream into a buffer while the trainer takes batches from it; weights
    update under running episodes). Async modes need --tis-cap and/or --icepop-low/--icepop-high
    (docs/async.md)."""
    update_weights_interval: int = field(default=1, metadata={"rare": True})
    """Sync the trainer's weights to the engine every this many rollouts (slime's flag). With one-step,
    a token is at most this many policy versions older than the weights it trains."""
    max_staleness: int | None = field(default=None, metadata={"rare": True})
    """Bound on a trained token's staleness: the policy versions (trained rollouts) between the weights
    that sampled it and the weights it trains. Older tokens are dropped or down-weighted
    (--stale-samples) and counted (async/stale_tokens). None: no bound beyond the mode's own."""
    stale_samples: StaleSamples = field(default="drop", metadata={"rare": True})
    """What --max-staleness does to a token over the bound: ``drop`` takes it out of the loss (mask 0;
    its episode still counts in its group's baseline); ``downweight`` halves its episode's advantage per
    version over the bound (critic-free estimators only)."""

    async_buffer_size: int | None = field(default=None, metadata={"rare": True})
    """``--async-mode fully``: most groups (of --n-samples-per-prompt episodes) admitted and not yet
    trained, generating or finished; generation stops admitting at this many. None: two rollouts'
    worth (2 x --rollout-batch-size)."""

    def __post_init__(self) -> None:
        if self.async_buffer_size is not None and self.async_buffer_size < 1:
            raise ConfigError(f"--async-buffer-size={self.async_buffer_size} must be >= 1 (groups)")
        if self.update_weights_interval < 1:
            raise ConfigError(f"--update-weights-interval={self.update_weights_interval} must be >= 1")
        if self.max_staleness is not None and self.max_staleness < 0:
            raise ConfigError(f"--max-staleness={self.max_staleness} must be >= 0 (or unset: no bound)")

    @property
    def enabled(self) -> bool:
        return self.async_mode != "off"

    def buffer_groups(self, rollout_batch_size: int) -> int:
        """The buffer's capacity in groups (``--async-buffer-size``, else two rollouts' worth)."""
        return self.async_buffer_size or 2 * rollout_batch_size

    def check(self, run: Any) -> None:
        """Refuse a run (a :class:`~agentrl.run.train_config.TrainConfig`) these settings cannot serve,
        before anything slow starts."""
        if not self.enabled and (self.update_weights_interval != 1 or self.max_staleness is not None):
            raise ConfigError(
                "--update-weights-interval and --max-staleness apply to asynchronous training; "
                "add --async-mode one-step or fully, or drop them (--async-mode off syncs after every "
                "rollout)"
            )
        if self.async_buffer_size is not None and self.async_mode != "fully":
            raise ConfigError(
                "--async-buffer-size bounds the buffer of --async-mode fully; add --async-mode fully "
                f"or drop it (--async-mode {self.async_mode} has no buffer)"
            )
        if not self.enabled:
            return
        if self.async_mode == "fully":
            self._check_fully(run)
        algorithm = run.algorithm
        if not algorithm.corrects_off_policy:
            raise ConfigError(
                f"--async-mode {self.async_mode} trains on tokens sampled by older weights: it needs an "
                "off-policy correction on the rollout logprobs. Add --tis-cap 2.0 (truncated importance "
                "sampling) and/or --icepop-low 0.5 --icepop-high 5.0 (ICEPOP masking); docs/async.md"
            )
        if self.stale_samples == "downweight" and algorithm.uses_critic:
            raise ConfigError(
                "--stale-samples downweight scales the episodes' advantages, which --advantage-estimator "
                "ppo computes later with its critic; use --stale-samples drop with ppo"
            )
        if run.debug_rollout_only or run.debug_train_only:
            raise ConfigError(
                f"--async-mode {self.async_mode} overlaps generating with training; --debug-rollout-only "
                "and --debug-train-only do only one of them: use --async-mode off"
            )
        if run.placement.num_gpus and run.placement.placement == "colocated":
            raise ConfigError(
                f"--async-mode {self.async_mode} needs the engines and the trainer on separate devices: "
                "--placement colocated time-shares the GPUs (engines release their memory while the "
                "trainer steps). Use --placement shared (both sides on the same GPUs at once, each "
                "keeping its memory: one GPU is enough) or --placement disaggregated"
            )
        k = self.update_weights_interval
        for name, every in (
            ("save_interval", run.save_interval if run.save else k),
            ("eval_interval", run.eval_interval),
        ):
            if every % k:
                flag = name.replace("_", "-")
                raise ConfigError(
                    f"--{flag}={every} must be a multiple of --update-weights-interval={k} with "
                    f"--async-mode {self.async_mode}: checkpoints and evaluations happen when the engine "
                    "has just received the trainer's weights (so resume is exact and evaluations see "
                    "the trained policy)"
                )

    def _check_fully(self, run: Any) -> None:
        """What ``--async-mode fully`` cannot serve (besides the checks of every async mode)."""
        size = self.buffer_groups(run.rollout_batch_size)
        if size < run.rollout_batch_size:
            raise ConfigError(
                f"--async-buffer-size={size} groups cannot hold one batch of --rollout-batch-size="
                f"{run.rollout_batch_size} groups: the trainer would wait forever; make it at least "
                f"{run.rollout_batch_size} (default: twice that)"
            )
        if run.buffer:
            raise ConfigError(
                "--buffer (a user's replay buffer) fills short rollouts from earlier ones; --async-mode "
                "fully has its own buffer and takes batches as groups finish: drop --buffer, or use "
                "--async-mode one-step"
            )
