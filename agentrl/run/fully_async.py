"""The fully asynchronous train loop (``--async-mode fully``).

Generation never waits for the trainer: the rollout manager keeps groups generating in the background
(:mod:`agentrl.rollout.stream`), each finished group goes into a bounded buffer
(:mod:`agentrl.run.group_buffer`, ``--async-buffer-size`` groups), and the trainer takes a batch of
``--rollout-batch-size`` groups as soon as the oldest ones are in. Every ``--update-weights-interval``
train steps the weights sync to the engine *under the running episodes*: the embedded engine loads them
between two decode steps and samples on; SGLang aborts the running requests, loads the exported HF
folder, and the engine continues each from its partial output. Either way each token records the
version that sampled it (partial rollouts, docs/async.md), so generation stops no longer than the load. ``--max-staleness``
bounds the trained tokens (:mod:`agentrl.run.staleness`); TIS / ICEPOP correct the rest.

Checkpoints come at *drain points*: at a checkpoint step the loop stops admitting groups, lets the
running ones finish into the buffer, syncs, and saves the buffer with the policy version and the task
sampler. A resumed run starts from that buffer with nothing in flight, exactly as the uninterrupted run
goes on from it. Between drain points a run is not reproducible: which tokens a weight update reaches
depends on timing (docs/async.md).
"""

from __future__ import annotations

import logging
import time
from concurrent.futures import ThreadPoolExecutor

from agentrl.errors import CheckpointError, EngineError, RunFailedError
from agentrl.rollout.driver import EnvFactory, keep_informative_groups
from agentrl.rollout.episodes import GenerationSettings
from agentrl.run.async_loop import Busy, async_result, finish_async
from agentrl.run.failures import FailurePolicy, failure_metrics
from agentrl.run.group_buffer import BufferedGroup, Group, GroupBuffer
from agentrl.run.loop_common import Deadline, RunResult, evaluate_before_training, out_of_time
from agentrl.run.metrics import dump_rollouts, engine_metrics, rollout_metrics
from agentrl.run.run import Run
from agentrl.run.staleness import enforce_staleness
from agentrl.run.train_config import TrainConfig
from agentrl.types import Trajectory

log = logging.getLogger(__name__)

POLL_S = 0.02
"""How long one poll of the stream waits for a finished group (the resolution of the idle times)."""


def train_fully_async(config: TrainConfig, *, env_factory: EnvFactory | None = None) -> RunResult:
    """Run ``config`` with generation streaming into the buffer (see the module docstring); the same
    failure policy, checkpoints, evaluations and result as :func:`agentrl.run.loop.train`."""
    clock = Deadline(config.time_limit_s)
    run = Run.start(config, env_factory=env_factory)
    policy = FailurePolicy.of(config, run.log_dir)
    pipe = StreamingPipeline(run)
    last_step, stopped_early = run.start_step, False
    try:
        evaluate_before_training(run, clock)
        pipe.admit()  # from here on, generation runs ahead of the trainer by up to the buffer's size
        for step in range(run.start_step + 1, config.num_rollouts + 1):
            if out_of_time(run, clock, last_step):
                stopped_early = True
                break
            clock.step_started()
            trajectories, metrics = pipe.take_batch(step)  # the oldest groups, once they are all in
            if config.dump_interval and step % config.dump_interval == 0:
                dump_rollouts(trajectories, run.log_dir, step)
            policy.check_rollout(step, metrics, run.logger.log)  # too many FAILED episodes: stop
            saving = bool(config.save) and (step % config.save_interval == 0 or step == config.num_rollouts)
            metrics.update(pipe.train_and_sync(step, trajectories, drain=saving))
            metrics["perf/tokens_per_s"] = metrics["rollout/total_tokens"] / max(
                1e-9, metrics["async/step_s"]
            )
            if run.can_evaluate and config.eval_interval and step % config.eval_interval == 0:
                metrics.update(run.evaluate(step=step))  # after a sync (eval_interval is a multiple of K)
                clock.eval_s = max(clock.eval_s, metrics["time/eval_s"])
            run.logger.log(step, metrics)
            if saving:
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
    return async_result(run, last_step, hf_dir, stopped_early, mode="fully")


class StreamingPipeline:
    """The buffer, what streams into it, the policy version and who waited for whom."""

    def __init__(self, run: Run) -> None:
        self.run = run
        self.config = c = run.config
        self.rollout = run.actors.rollout
        self.batch_groups = c.rollout_batch_size
        filtering = c.dynamic_filter or run.hooks.group_filter is not None
        self.buffer = GroupBuffer(c.asynchronous.buffer_groups(c.rollout_batch_size), self._keep)
        self.groups_left: int | None = None if filtering else c.num_rollouts * c.rollout_batch_size
        """Groups still to admit when none can be filtered out: a run generates no group it will not
        train on. None with a group filter (how many it rejects is not known ahead)."""
        state = run.async_state  # from the checkpoint on --resume
        if "ready" in state:
            raise CheckpointError(
                f"{c.save} was written by --async-mode one-step (it holds a rollout generated ahead, not "
                "a buffer of groups): resume it with --async-mode one-step"
            )
        self.policy_version = int(state.get("policy_version", run.start_step))
        """Train steps that changed the weights: the trainer's version (staleness is counted in it)."""
        self.engine_version = self.policy_version  # Run.start synced it on --resume
        if "buffer" in state:
            self.buffer.load_state_dict(state["buffer"])
        if self.groups_left is not None:
            self.groups_left -= run.start_step * self.batch_groups + len(self.buffer.groups)
        self.settings = GenerationSettings(c.n_samples_per_prompt, c.rollout.temperature, c.rollout.top_p)
        self.draining = False
        self.engine = Busy()
        self.trainer = Busy()
        self.generating_since: float | None = None
        """When the engine last went from no group in flight to some (None: none in flight now)."""
        self.step_started = 0.0
        self.counters_at_start: dict[str, float] = {}
        """The engine's counters when the step began: the step's ``engine/`` metrics are the change."""
        self._threads = ThreadPoolExecutor(max_workers=1, thread_name_prefix="agentrl-train")
        self._keep_state(run.start_step + 1, self.buffer.groups)

    def admit(self) -> None:
        """Fill the buffer's room with new groups (none while draining), in the task sampler's order."""
        import ray

        assert self.run.sampler is not None
        n = self.buffer.room if self.groups_left is None else min(self.buffer.room, self.groups_left)
        if self.draining or n <= 0:
            return
        admitted: list[tuple[int, str]] = []
        for _ in range(n):
            before = self.run.sampler.state_dict()
            group = self.buffer.admit(self.run.sampler.sample(1)[0], before)
            admitted.append((group.index, group.key))
        if self.groups_left is not None:
            self.groups_left -= n
        if self.generating_since is None:
            self.generating_since = time.perf_counter()
        ray.get(self.rollout.stream_submit.remote(admitted, self.settings))

    def poll(self, timeout: float = POLL_S) -> None:
        """Mark the groups finished since the last poll in the buffer."""
        import ray

        finished = ray.get(self.rollout.stream_poll.remote(timeout))
        for index, episodes in finished:
            self.buffer.finish(index, episodes)
        if finished and self.buffer.generating == 0 and self.generating_since is not None:
            self.engine.intervals.append((self.generating_since, time.perf_counter()))
            self.generating_since = None

    def take_batch(self, step: int) -> tuple[list[Trajectory], dict[str, float]]:
        """The next batch of groups to train on, and the metrics of every episode they and the groups
        the filter rejected since the last batch hold; waits while the oldest groups generate
        (``time/wait_rollout_s``: the trainer had nothing to do meanwhile)."""
        started = time.perf_counter()
        self.counters_at_start = self.run.engine_counters()
        self.draining = False
        fill = {
            "async/buffer_ready_groups": float(self.buffer.ready),
            "async/buffer_generating_groups": float(self.buffer.generating),
            "async/buffer_fill": self.buffer.ready / self.buffer.capacity,
        }
        while not self.buffer.advance(self.batch_groups):
            self.admit()  # in place of the groups that left: only here, so admission never hangs on timing
            self.poll()
        groups, rejected = self.buffer.take()
        self._keep_state(step, groups)  # a failure in this step winds the sampler back to its first group
        self.admit()
        self.step_started = started
        trajectories, metrics = self._batch(step, groups, rejected)
        return trajectories, {**metrics, **fill, "time/wait_rollout_s": time.perf_counter() - started}

    def train_and_sync(self, step: int, trajectories: list[Trajectory], *, drain: bool) -> dict[str, float]:
        """Train on the batch (in a thread, polling the stream meanwhile); then, every
        ``--update-weights-interval`` steps (and at the last), sync the weights under the running
        episodes. ``drain`` (a checkpoint follows): first let every running group finish, admitting none."""
        a = self.config.asynchronous
        kept, metrics = enforce_staleness(trajectories, self.policy_version, a.max_staleness, a.stale_samples)
        started = time.perf_counter()
        job = self._threads.submit(self._train, kept, metrics["async/trained_tokens"] > 0)
        while not job.done():
            self.poll()
        train_metrics = job.result()
        metrics.update(train_metrics)
        metrics["time/train_s"] = self.trainer.intervals[-1][1] - started
        if not train_metrics["train/skipped"]:
            self.policy_version += 1
        drain_start = time.perf_counter()
        if drain:
            self.drain()
        sync_start = time.perf_counter()
        metrics["time/drain_s"] = sync_start - drain_start
        if step % a.update_weights_interval == 0 or step == self.config.num_rollouts:
            self.sync()
        end = time.perf_counter()
        metrics["time/sync_s"] = end - sync_start
        generating = [(self.generating_since, end)] if self.generating_since is not None else []
        metrics["async/trainer_idle_s"] = self.trainer.idle(self.step_started, end)
        metrics["async/engine_idle_s"] = self.engine.idle(self.step_started, end, generating)
        metrics["async/step_s"] = end - self.step_started
        metrics.update(
            engine_metrics(self.counters_at_start, self.run.engine_counters(), end - self.step_started)
        )
        metrics["async/engine_version"] = float(self.engine_version)
        self._keep_state(step + 1, self.buffer.groups)
        return metrics

    def drain(self) -> None:
        """Stop admitting and wait until no group is generating; admission goes on after the next take."""
        self.draining = True
        while self.buffer.generating:
            self.poll()

    def sync(self) -> None:
        """Push the trainer's weights to the engine if they changed since its last sync; running
        episodes go on under the new weights."""
        if self.engine_version != self.policy_version:
            self.run.sync_weights(version=self.policy_version)
            self.engine_version = self.policy_version

    def checkpoint(self, step: int) -> None:
        """Checkpoint ``step`` at a drain point: the buffer's finished groups, the policy version."""
        self.drain()
        self.run.async_state = {"policy_version": self.policy_version, "buffer": self.buffer.state_dict()}
        try:
            self.run.checkpoint(step)
        finally:
            self.draining = False
            self._keep_state(step + 1, self.buffer.groups)
        self.admit()

    def close(self) -> None:
        self._threads.shutdown(wait=True)

    def _keep(self, group: Group) -> bool:
        """The group filter (``--dynamic-filter``, ``--group-filter``) on one finished group."""
        c = self.config
        return bool(keep_informative_groups(group, 1, c.dynamic_filter, self.run.hooks.group_filter))

    def _batch(
        self, step: int, groups: list[BufferedGroup], rejected: list[Group]
    ) -> tuple[list[Trajectory], dict[str, float]]:
        """The batch's episodes to train on (after ``--sample-filter``), and the metrics of every episode
        of its groups and of the rejected ones (the filters must not make the policy look better)."""
        kept = [t for g in groups for t in g.episodes or []]
        every = kept + [t for g in rejected for t in g]
        lost = [t for t in every if not t.trainable]
        if lost:  # the filters keep them out of training and of rollouts/: their errors are here
            dump_rollouts(lost, self.run.log_dir, step, folder="failed_rollouts")
        metrics = {
            **rollout_metrics(every),
            **failure_metrics(every),
            "rollout/kept_episodes": float(len(kept)),
            "async/rejected_groups": float(len(rejected)),
            "async/oldest_group": float(groups[0].index),
        }
        sample_filter = self.run.hooks.sample_filter
        if sample_filter is not None:
            filtered = [t for t in kept if sample_filter(t)]
            metrics["rollout/sample_filtered"] = float(len(kept) - len(filtered))
            kept = filtered
        return kept, metrics

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

    def _keep_state(self, rollout_step: int, untrained: list[BufferedGroup]) -> None:
        """What a checkpoint taken outside :meth:`checkpoint` (a stopped run's) holds: the policy version
        and an empty buffer that admits again from the oldest untrained group, with the task sampler
        wound back to it (:class:`~agentrl.run.failures.FailurePolicy`): ``--resume`` generates the
        groups that were in the buffer again, with the newer weights."""
        assert self.run.sampler is not None
        oldest = untrained[0] if untrained else None
        sampler = oldest.sampler_before if oldest else self.run.sampler.state_dict()
        index = oldest.index if oldest else self.buffer.next_index
        self.run.sampler_before_rollout = (rollout_step, sampler)
        empty = {"capacity": self.buffer.capacity, "next_index": index, "groups": []}
        self.run.async_state = {"policy_version": self.policy_version, "buffer": empty}
