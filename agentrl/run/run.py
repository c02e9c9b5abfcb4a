"""One training run's moving parts, behind the few verbs the train loop uses.

:class:`Run` owns the log folder, the Ray actors (trainer, engine, rollout manager), the task sampler
and the metrics logger; :func:`agentrl.run.loop.train` only calls ``generate``, ``train``,
``sync_weights``, ``evaluate``, ``checkpoint`` and ``export_hf`` on it.
"""

from __future__ import annotations

import json
import logging
import math
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from agentrl.config_io import config_to_dict
from agentrl.errors import CheckpointError, ConfigError
from agentrl.rollout.driver import EnvFactory, GroupFilter, keep_informative_groups
from agentrl.rollout.episodes import GenerationSettings
from agentrl.run.actors import Actors, create_actors
from agentrl.run.failures import failure_metrics
from agentrl.run.metrics import MetricsLogger, dataset_metrics, dump_rollouts, engine_metrics, rollout_metrics
from agentrl.run.task_sampler import TaskSampler
from agentrl.run.train_config import TrainConfig
from agentrl.types import Trajectory, load_jsonl

log = logging.getLogger(__name__)


@dataclass
class DataHooks:
    """User code named by import path that decides what is trained on (docs/data.md):

    * ``sample_filter(trajectory) -> bool``: False drops that episode before training (after the
      group filter, so advantages are computed over the episodes kept).
    * ``group_filter(group) -> bool``: the dynamic filter's test (see ``keep_informative_groups``).
    * ``buffer``: an object with ``add(groups, step)``, called with the groups of each rollout that
      were not trained on, and ``take(n, step) -> groups``, called when fewer than
      ``rollout_batch_size`` groups survived the filter, to fill up to ``n`` from earlier rollouts
      (replay, partial or off-policy groups). Its state is not checkpointed.
    """

    sample_filter: Callable[[Trajectory], bool] | None = None
    group_filter: GroupFilter | None = None
    buffer: Any = None

    @classmethod
    def load(cls, config: TrainConfig) -> DataHooks:
        from agentrl.envs.import_path import load_object

        hooks = cls(
            sample_filter=load_object(config.sample_filter, "--sample-filter")
            if config.sample_filter
            else None,
            group_filter=load_object(config.group_filter, "--group-filter") if config.group_filter else None,
        )
        if config.buffer:
            buffer = load_object(config.buffer, "--buffer")
            hooks.buffer = buffer() if isinstance(buffer, type) else buffer
            if not all(callable(getattr(hooks.buffer, m, None)) for m in ("add", "take")):
                raise ConfigError(
                    f"--buffer {config.buffer}: needs methods add(groups, step) and take(n, step)"
                )
        return hooks

    def select(
        self, trajectories: list[Trajectory], groups: int, dynamic_filter: bool, step: int
    ) -> tuple[list[Trajectory], dict[str, float]]:
        """The episodes of one rollout to train on, and how many each stage kept: the group filter
        (``keep_informative_groups``), then the buffer (what it is given, what it gives back), then the
        sample filter."""
        kept = keep_informative_groups(trajectories, groups, dynamic_filter, self.group_filter)
        counts = {"rollout/kept_episodes": float(len(kept))}
        if self.buffer is not None:
            used = {t.group_id for t in kept}
            self.buffer.add([g for g in _groups(trajectories) if g[0].group_id not in used], step)
            missing = groups - len(used)
            reused = [t for g in (self.buffer.take(missing, step) if missing > 0 else []) for t in g]
            kept += reused
            counts["rollout/reused_episodes"] = float(len(reused))
        if self.sample_filter is not None:
            before = len(kept)
            kept = [t for t in kept if self.sample_filter(t)]
            counts["rollout/sample_filtered"] = float(before - len(kept))
        return kept, counts


def _groups(trajectories: list[Trajectory]) -> list[list[Trajectory]]:
    by_group: dict[str, list[Trajectory]] = {}
    for t in trajectories:
        by_group.setdefault(t.group_id, []).append(t)
    return list(by_group.values())


def shuffle_rewards_within_groups(trajectories: list[Trajectory], seed: int) -> list[Trajectory]:
    """Copies of ``trajectories`` whose rewards are permuted among the episodes of each group (a seeded
    permutation per group id): the control of ``--debug-shuffle-rewards``."""
    import dataclasses
    import hashlib
    import random

    by_group: dict[str, list[int]] = {}
    for i, t in enumerate(trajectories):
        by_group.setdefault(t.group_id, []).append(i)
    rewards = [t.reward for t in trajectories]
    for group_id, members in by_group.items():
        digest = hashlib.blake2b(f"{seed}/{group_id}".encode(), digest_size=8).digest()
        order = list(members)
        random.Random(int.from_bytes(digest, "little")).shuffle(order)
        for dst, src in zip(members, order, strict=True):
            rewards[dst] = trajectories[src].reward
    return [dataclasses.replace(t, reward=r) for t, r in zip(trajectories, rewards, strict=True)]


@dataclass
class PendingRollout:
    """A rollout whose episodes are being generated (:meth:`Run.start_rollout`)."""

    step: int
    ref: Any
    """The Ray reference to the episodes."""
    engine_before: dict[str, float]
    """The engine's counters when it started."""
    started: float
    """``time.perf_counter()`` when it started."""


@dataclass
class Run:
    config: TrainConfig
    log_dir: Path
    actors: Actors
    sampler: TaskSampler | None
    eval_keys: list[str]
    logger: MetricsLogger
    start_step: int = 0
    hooks: DataHooks = field(default_factory=DataHooks)
    _weights_target: dict[str, Any] | None = None
    sampler_before_rollout: tuple[int, dict[str, Any]] | None = None
    """(step, task sampler state) before the latest rollout: a run stopped by a failed rollout is
    checkpointed with it, so that --resume redoes that rollout (:mod:`agentrl.run.failures`)."""
    async_state: dict[str, Any] = field(default_factory=dict)
    """--async-mode: the policy version and the rollout generated ahead, kept in checkpoints
    (:mod:`agentrl.run.async_loop`); empty otherwise."""

    @classmethod
    def start(cls, config: TrainConfig, *, env_factory: EnvFactory | None = None) -> Run:
        """Make the log folder, log the resolved config, start Ray and the actors, resume if asked."""
        from agentrl.models import resolve_model

        log_dir = Path(config.log_dir or Path("runs") / time.strftime("%Y%m%d-%H%M%S"))
        log_dir.mkdir(parents=True, exist_ok=True)
        resolved = config_to_dict(config)
        (log_dir / "config.json").write_text(json.dumps(resolved, indent=2) + "\n", encoding="utf-8")
        log.info("resolved config (also in %s): %s", log_dir / "config.json", json.dumps(resolved))
        model_path = resolve_model(config.model)
        hooks = DataHooks.load(config)
        actors = create_actors(config, model_path, env_factory, log_dir)
        sampler, eval_keys = None, []
        if actors.rollout is not None:
            import ray

            train_keys, all_eval = ray.get(
                [actors.rollout.task_keys.remote("train"), actors.rollout.task_keys.remote("eval")]
            )
            sampler = TaskSampler(train_keys, seed=config.seed)
            every = config.data.eval_datasets() and config.eval_episodes  # eval datasets: every prompt
            eval_keys = all_eval if every else all_eval[: config.eval_episodes]
        run = cls(config, log_dir, actors, sampler, eval_keys, logger=None, hooks=hooks)  # type: ignore[arg-type]
        if config.resume:
            run.start_step = run._resume()  # syncs the checkpoint's weights to the engine
        warm_s = run._warm_weight_sync() if not config.resume else None
        run.logger = MetricsLogger(
            log_dir, total_steps=config.num_rollouts, initial_step=run.start_step, progress=config.progress
        )
        if warm_s is not None:
            run.logger.write(f"weight sync warmed up at start-up: {warm_s:.3f} s")
        return run

    def _warm_weight_sync(self) -> float | None:
        """Sync the initial weights (the engine has them already) once at start-up, on a CPU run with an
        embedded engine: the first fill of the trainer's shared buffer and the engine's mapping fault
        their pages in here, so the first sync of the loop costs what every later one does (0.5 s of
        faults for SmolLM2-135M on 2 cores). Returns its seconds; None where nothing was warmed."""
        if not (
            self.config.inference.engine == "embedded"
            and self.actors.placed is None
            and self.actors.trainer is not None
            and self.actors.rollout is not None
        ):
            return None
        start = time.perf_counter()
        self.sync_weights(version=self.start_step)
        return time.perf_counter() - start

    @property
    def can_evaluate(self) -> bool:
        return bool(self.eval_keys) and self.actors.rollout is not None

    def generate(self, step: int) -> tuple[list[Trajectory], dict[str, float]]:
        """One rollout: ``rollout_batch_size`` groups of ``n_samples_per_prompt`` episodes to train on,
        and the ``rollout/`` metrics of *every* episode generated (the dynamic filter must not make the
        policy look better than it is: it drops exactly the groups that all failed)."""
        import ray

        c = self.config
        if c.debug_train_only:
            replayed = self._replay(step)
            return replayed, rollout_metrics(replayed)
        pending = self.start_rollout(step)
        trajectories = ray.get(pending.ref)
        return self.finish_rollout(pending, trajectories, time.perf_counter() - pending.started)

    def start_rollout(self, step: int) -> PendingRollout:
        """Sample the tasks of rollout ``step`` and start generating them (:meth:`generate` waits for
        the episodes; the asynchronous loop, :mod:`agentrl.run.async_loop`, trains meanwhile)."""

        c = self.config
        assert self.sampler is not None
        n_prompts = math.ceil(c.rollout_batch_size * (c.over_sample if c.dynamic_filter else 1.0))
        settings = GenerationSettings(c.n_samples_per_prompt, c.rollout.temperature, c.rollout.top_p, step)
        self.sampler_before_rollout = (step, self.sampler.state_dict())
        keys = self.sampler.sample(n_prompts)
        before, started = self.engine_counters(), time.perf_counter()
        return PendingRollout(step, self.actors.rollout.generate.remote(keys, settings), before, started)

    def engine_counters(self) -> dict[str, float]:
        """The engine's counters now (empty for engines without them): ``engine/`` metrics are their
        change over a rollout or a step (:func:`~agentrl.run.metrics.engine_metrics`)."""
        import ray

        counters: dict[str, float] = ray.get(self.actors.rollout.engine_stats.remote())
        return counters

    def finish_rollout(
        self, pending: PendingRollout, trajectories: list[Trajectory], seconds: float
    ) -> tuple[list[Trajectory], dict[str, float]]:
        """The episodes of a started rollout to train on, and the metrics of all of them (see
        :meth:`generate`); ``seconds``: how long it generated."""

        c, step = self.config, pending.step
        engine = engine_metrics(pending.engine_before, self.engine_counters(), seconds)
        lost = [t for t in trajectories if not t.trainable]
        if lost:  # the filters keep them out of training and of rollouts/: their errors are here
            dump_rollouts(lost, self.log_dir, step, folder="failed_rollouts")
        kept, counts = self.hooks.select(trajectories, c.rollout_batch_size, c.dynamic_filter, step)
        return kept, {**rollout_metrics(trajectories), **failure_metrics(trajectories), **counts, **engine}

    def _replay(self, step: int) -> list[Trajectory]:
        source = Path(self.config.debug_train_only or "")
        files = sorted(source.glob("step_*.jsonl")) if source.is_dir() else [source]
        if not files or not files[0].exists():
            raise ConfigError(f"--debug-train-only {source}: no rollout dump (step_*.jsonl) found there")
        return list(load_jsonl(files[(step - 1) % len(files)]))

    def train(self, trajectories: list[Trajectory]) -> dict[str, float]:
        """The optimizer steps of one rollout; skipped (``train/skipped`` 1) when they could not learn.

        When every trainable episode's advantage is 0 (each group's rewards agree) and no KL or entropy
        term adds a gradient of its own, the policy-gradient loss is 0 everywhere: the forward and
        backward passes would only produce a zero gradient. The step is then skipped outright: the
        optimizer, its lr schedule and the weights stay as they are, and so does their checkpointed
        state (a resumed run takes the same decision on the same rollout).
        """
        import ray

        if self.config.debug_shuffle_rewards:
            trajectories = shuffle_rewards_within_groups(trajectories, self.config.seed)
        if not self.can_learn_from(trajectories):
            return {"train/skipped": 1.0, "train/optimizer_steps": 0.0, "train/frac_zero_adv": 1.0}
        if self.actors.placed is None:
            return {**ray.get(self.actors.trainer.train.remote(trajectories)), "train/skipped": 0.0}
        timings: dict[str, float] = {}
        with self.actors.placed.engines_released(self.actors.rollout, timings):  # colocated only
            metrics = dict(ray.get(self.actors.trainer.train.remote(trajectories)))
        return {**metrics, **timings, "train/skipped": 0.0}

    def can_learn_from(self, trajectories: list[Trajectory]) -> bool:
        """False when training on ``trajectories`` would give an all-zero gradient (see :meth:`train`)."""
        from agentrl.trainer.batch import trajectory_advantages

        algo = self.config.algorithm
        trainable = [t for t in trajectories if t.trainable]
        if not trainable:  # e.g. the dynamic filter dropped every group
            return False
        if algo.kl_coef > 0 or algo.entropy_coef != 0 or algo.uses_critic:  # ppo: the critic always learns
            return True
        return bool(trajectory_advantages(trainable, algo).abs().max() > 0)

    def sync_weights(self, version: int) -> None:
        """Push the trainer's weights to the engine: in memory (embedded) or through an HF folder (SGLang)."""
        import ray

        if self.actors.rollout is None:
            return
        if self.actors.placed is not None and self.actors.placed.metas:  # disaggregated: broadcast
            self.actors.placed.broadcast_weights(version)
            return
        if self.config.inference.engine == "embedded":
            # One buffer in the engine's dtype: mapped from the trainer's GPU when the engine shares it,
            # a shared host buffer refilled in place on the same machine, else Ray's object store.
            if self._weights_target is None:
                self._weights_target = ray.get(self.actors.rollout.weights_target.remote()) or {}
            source: Any = self.actors.trainer.weights_for_engine.remote(self._weights_target)
        else:
            folder = self.log_dir / "weights" / f"v{version:06d}"
            source = ray.get(self.actors.trainer.export_hf.remote(str(folder)))
        ray.get(self.actors.rollout.update_weights.remote(source, version))
        if self.config.inference.engine == "embedded":
            ray.get(self.actors.trainer.release_engine_weights.remote())
        for old in (self.log_dir / "weights").glob("v*"):  # the engine has loaded the new folder
            if old.name != f"v{version:06d}":
                shutil.rmtree(old, ignore_errors=True)

    def evaluate(self, step: int) -> dict[str, float]:
        """Greedy episodes on the first ``eval_episodes`` tasks of the eval split (the same every time)."""
        import ray

        from agentrl.envs.prompt_data_config import eval_batches

        c = self.config
        n = c.n_samples_per_eval_prompt  # 1: greedy; more: sampled, for pass@k
        temperature = 0.0 if n == 1 else c.rollout.temperature
        start = time.perf_counter()
        trajectories: list[Trajectory] = []
        datasets = c.data.eval_datasets()  # --eval-config: a dataset's own samples, temperature, max tokens
        for keys, (samples, temp, max_new) in eval_batches(
            self.eval_keys, datasets, n, temperature, c.rollout.temperature
        ):
            settings = GenerationSettings(samples, temp, step=0, max_new_tokens=max_new)
            trajectories += ray.get(self.actors.rollout.generate.remote(keys, settings))
        dump_rollouts(
            trajectories, self.log_dir, step, folder="eval_rollouts"
        )  # `agentrl eval --run` compares
        metrics = rollout_metrics(trajectories, prefix="eval/")
        per_dataset = dataset_metrics(trajectories)
        metrics.update(per_dataset)
        metrics["time/eval_s"] = time.perf_counter() - start
        shown = "".join(
            f"; {key[len('eval/') :]} {value:.3f}" for key, value in per_dataset.items() if "@" in key
        )
        self.logger.write(
            f"eval @ step {step}: reward {metrics['eval/reward']:.3f}, success {metrics['eval/success']:.3f}"
            + shown
        )
        return metrics

    def _loop_state(self, step: int) -> dict[str, Any]:
        from agentrl.trainer.checkpoint import capture_rng_state

        sampler = self.sampler.state_dict() if self.sampler else None
        state = {"step": step, "sampler": sampler, "driver_rng": capture_rng_state()}
        return {**state, "async": self.async_state} if self.async_state else state

    def checkpoint(self, step: int) -> None:
        import ray

        assert self.config.save
        ray.get(
            self.actors.trainer.save_checkpoint.remote(
                self.config.save, step, self._loop_state(step), self.config.keep_last
            )
        )

    def _resume(self) -> int:
        import ray

        from agentrl.trainer.checkpoint import restore_rng_state

        state = ray.get(self.actors.trainer.load_checkpoint.remote(self.config.save))
        if state is None:
            raise CheckpointError(
                f"--resume: no complete checkpoint in {self.config.save}; run without --resume"
            )
        if self.sampler is not None and state["sampler"] is not None:
            self.sampler.load_state_dict(state["sampler"])
        restore_rng_state(state["driver_rng"])
        step = int(state["step"])
        self.async_state = state.get("async", {})
        self.sync_weights(version=self.async_state.get("policy_version", step))
        log.info("resumed from step %d of %s", step, self.config.save)
        return step

    def export_hf(self) -> Path:
        import ray

        folder = self.log_dir / "hf_model"
        ray.get(self.actors.trainer.export_hf.remote(str(folder)))
        if self.config.algorithm.uses_critic:  # beside the policy, never inside what engines load
            ray.get(self.actors.trainer.export_critic_hf.remote(str(self.log_dir / "critic_hf")))
        return folder

    def close(self) -> None:
        if self.logger is not None:
            self.logger.close()
        self.actors.shutdown()
