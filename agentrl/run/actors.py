"""The Ray side of a run: a local (loopback-bound) Ray instance, and the trainer / engine / rollout actors.

Three actors, one process each, so that a run scales from a laptop to a cluster without code changes:

* :class:`TrainerWorker` holds the training backend (torch or Megatron): train steps, weights, checkpoints.
* :class:`~agentrl.engines.remote.EngineWorker` holds an :class:`~agentrl.engines.embedded.engine.EmbeddedEngine` and serves
  ``generate`` concurrently (an async actor, so concurrent requests batch inside the engine).
  SGLang engines need no actor: their servers are already processes, driven over HTTP by the
  rollout manager.
* :class:`~agentrl.rollout.driver.RolloutManager` runs the multi-turn controller over envs.

Actors are created with ``max_restarts=0`` on purpose (docs/reliability.md F24): a restarted trainer would
have lost its optimizer state, so a dead actor must surface as an exception in the driver, which
exits non-zero and is resumed from the last checkpoint.
"""

from __future__ import annotations

import functools
import json
import logging
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Protocol

import torch

from agentrl.engines.factory import start_engine
from agentrl.engines.memory import trim_host_memory
from agentrl.engines.packed_weights import (
    PackedWeights,
    SharedHostBuffer,
    device_uuid,
    pack_shared,
    pack_weights,
    put_weights,
)
from agentrl.engines.remote import EngineWorker, RemoteEngine, RemoteEngines, set_threads
from agentrl.errors import ConfigError
from agentrl.run.placement import (
    PlacedActors,
    TrainerGroup,
    create_placement_group,
    plan_for,
    start_engines,
    start_trainer_ranks,
)
from agentrl.run.train_config import TrainConfig
from agentrl.trainer.config import (
    AlgorithmConfig,
    CriticConfig,
    OptimizerConfig,
    TorchBackendConfig,
    TorchOptions,
)
from agentrl.trainer.step_metrics import combine_steps
from agentrl.types import Trajectory

log = logging.getLogger(__name__)


def init_ray(config: TrainConfig) -> None:
    """Connect to ``config.ray_address``, or start a local Ray bound to 127.0.0.1 (no dashboard)."""
    import ray

    if ray.is_initialized():
        return
    if config.ray_address:
        ray.init(address=config.ray_address, log_to_driver=True)
        return
    ray.init(
        address="local",
        num_cpus=config.num_cpus or os.cpu_count() or 1,
        include_dashboard=False,
        _node_ip_address="127.0.0.1",
        log_to_driver=True,
        configure_logging=False,
    )


class BackendSettings(Protocol):
    """What a training backend is made from: ``TrainConfig`` and ``SFTConfig`` both have it."""

    @property
    def backend(self) -> Literal["torch", "megatron"]: ...
    @property
    def algorithm(self) -> AlgorithmConfig: ...
    @property
    def optimizer(self) -> OptimizerConfig: ...
    @property
    def torch(self) -> TorchOptions: ...
    @property
    def seed(self) -> int: ...
    @property
    def megatron_args(self) -> tuple[str, ...]: ...


def make_backend(model_path: Path, config: BackendSettings) -> Any:
    """The torch or Megatron training backend ``config.backend`` names, on ``model_path`` (``agentrl
    train`` and ``agentrl sft``)."""
    if config.backend == "torch":
        from agentrl.trainer.torch_backend import TorchBackend

        critic = getattr(config, "critic", None)  # agentrl sft trains no critic
        options = TorchBackendConfig.of(config.torch, config.algorithm, config.optimizer, config.seed, critic)
        return TorchBackend(model_path, options)
    try:
        from agentrl.trainer.megatron.backend import MegatronBackend, MegatronBackendConfig
    except ImportError as e:
        raise ConfigError(
            f"--backend megatron could not be imported ({e}); install the megatron extra "
            "(pip install 'agentrl-gym[megatron]') on a CUDA machine, or use --backend torch"
        ) from e
    from agentrl.trainer.megatron.config import parse_megatron_args

    return MegatronBackend(
        model_path,
        MegatronBackendConfig(
            algorithm=config.algorithm,
            optimizer=config.optimizer,
            seed=config.seed,
            parallel=parse_megatron_args(list(config.megatron_args)),
            critic=getattr(config, "critic", None) or CriticConfig(),
        ),
    )


def split_by_group(trajectories: Sequence[Trajectory], parts: int) -> list[list[Trajectory]]:
    """Split a rollout into ``parts`` mini-batches of whole groups (advantages are per group)."""
    groups: dict[str, list[Trajectory]] = {}
    for t in trajectories:
        groups.setdefault(t.group_id, []).append(t)
    ordered = list(groups.values())
    per_part = -(-len(ordered) // parts) if ordered else 0
    return [
        [t for group in ordered[i * per_part : (i + 1) * per_part] for t in group]
        for i in range(parts)
        if ordered[i * per_part : (i + 1) * per_part]
    ]


class TrainerWorker:
    """Owns the training backend; the loop calls it once per rollout to train and hand out weights."""

    def __init__(self, model_path: str, config: TrainConfig) -> None:
        set_threads(config.num_cpus)
        self.config = config
        self.backend = make_backend(Path(model_path), config)
        self._sent_weights: torch.Tensor | None = None
        self._host_weights: SharedHostBuffer | None = None

    def pid(self) -> int:
        return os.getpid()

    def train(self, trajectories: list[Trajectory]) -> dict[str, float]:
        """``steps_per_rollout`` optimizer steps over the rollout, whole groups per step; their metrics
        combined (:func:`~agentrl.trainer.step_metrics.combine_steps`: means, and max/min for ``*_max`` /
        ``*_min``)."""
        from agentrl.trainer.batch import trajectories_to_batch

        steps: list[dict[str, float]] = []
        parts = split_by_group(trajectories, self.config.steps_per_rollout)
        converted = [trajectories_to_batch(part, self.config.algorithm) for part in parts]
        batches = [batch for batch, _ in converted]
        value_metrics: dict[str, float] = {}
        if self.config.algorithm.uses_critic:  # ppo: the critic values the whole rollout before any step
            batches, value_metrics = self.backend.estimate_advantages(batches)
        for batch, (_, batch_metrics) in zip(batches, converted, strict=True):
            step_metrics = self.backend.train_step(batch) if len(batch) else {}
            steps.append({**batch_metrics, **step_metrics})
        out = {f"train/{k}": v for k, v in combine_steps(steps).items()}  # *_max: the max over steps
        out.update({f"train/{k}": v for k, v in value_metrics.items()})
        out["train/optimizer_steps"] = float(len(parts))
        trim_host_memory()  # the step's activations, freed, leave the heap: the engine needs it next
        return out

    def state_dict(self) -> dict[str, torch.Tensor]:
        """The weights under HF names, for the embedded engine (sent through Ray's object store)."""
        return {name: tensor.detach().cpu() for name, tensor in self.backend.hf_state_dict()}

    def weights_for_engine(self, target: dict[str, Any] | None = None) -> PackedWeights:
        """The weights under HF names in one buffer, in the engine's dtype, handed over the cheapest way
        the engine (``target``, its ``weights_target``) can take (:mod:`agentrl.engines.packed_weights`):

        * on this trainer's GPU (``device_uuid``): a CUDA IPC handle of a GPU buffer, alive until
          :meth:`release_engine_weights`;
        * on this machine (Ray ``node_id``): the name of one shared-memory buffer, refilled in place at
          every sync (the caller waits for the engine's load before the next call);
        * elsewhere: host arrays put in Ray's object store, sent by reference.
        """
        import ray

        target = target or {}
        named = list(self.backend.hf_state_dict())
        here = device_uuid(named[0][1].device) if named else None
        same_gpu = here is not None and here == target.get("device_uuid")
        dtype = getattr(torch, target["dtype"]) if target.get("dtype") else None
        if same_gpu:
            packed, self._sent_weights = pack_weights(named, dtype=dtype, cuda_ipc=True)
            return packed
        if target.get("node_id") == ray.get_runtime_context().get_node_id():
            packed, self._host_weights = pack_shared(named, dtype=dtype, buffer=self._host_weights)
            return packed
        return put_weights(named, dtype=dtype)

    def release_engine_weights(self) -> None:
        """The engine has copied the weights of :meth:`weights_for_engine`: free the GPU buffer; the
        shared host buffer stays for the next sync, its name removed (the engine has mapped it)."""
        self._sent_weights = None
        if self._host_weights is not None:
            self._host_weights.release()
        if torch.cuda.is_available():
            torch.cuda.ipc_collect()  # memory the engine's mapping kept in limbo

    def close_engine_weights(self) -> None:
        """Unlink the shared host buffer (at the end of a run)."""
        if self._host_weights is not None:
            self._host_weights.close()
            self._host_weights = None

    def export_hf(self, path: str) -> str:
        self.backend.export_hf(Path(path))
        return path

    def export_critic_hf(self, path: str) -> str:
        self.backend.export_critic_hf(Path(path))
        return path

    def save(self, path: str) -> None:
        self.backend.save(Path(path))

    def load(self, path: str) -> None:
        self.backend.load(Path(path))

    def save_checkpoint(self, root: str, step: int, loop_state: dict[str, Any], keep_last: int) -> str:
        """Write ``root/step_N`` atomically (backend state + the loop's state) and move ``latest`` to it."""
        from agentrl.trainer.checkpoint import save_checkpoint

        return str(save_checkpoint(Path(root), step, self.backend, loop_state, keep_last=keep_last))

    def load_checkpoint(self, root: str) -> dict[str, Any] | None:
        """Restore the latest complete checkpoint under ``root``; its loop state, or None if there is none."""
        from agentrl.trainer.checkpoint import load_latest

        return load_latest(Path(root), self.backend)

    def placement_info(self) -> dict[str, Any]:
        from agentrl.engines.remote import where_am_i

        return where_am_i()

    def weight_group_address(self) -> tuple[str, int, str]:
        """Host, free port and backend of the weight-broadcast group this rank (0) will host."""
        from agentrl.engines.weight_transport import default_backend
        from agentrl.run.placement import rendezvous_address

        return (*rendezvous_address(), default_backend())

    def join_weight_group(self, address: str, port: int, world_size: int, backend: str) -> None:
        """Rank 0 of the trainer becomes rank 0 of the group the engines receive weights on."""
        from agentrl.engines.weight_transport import join_weight_group

        self._weight_group = join_weight_group(address, port, rank=0, world_size=world_size, backend=backend)

    def weight_metas(self) -> list[Any]:
        from agentrl.engines.weight_transport import tensor_metas

        return tensor_metas(self.backend.hf_state_dict())

    def broadcast_weights(self) -> float:
        """Send the HF-named weights over the weight group (rank 0); other ranks only help gather
        TP shards. Seconds taken."""
        from agentrl.engines.weight_transport import send_weights

        named = self.backend.hf_state_dict()
        group = getattr(self, "_weight_group", None)
        if group is None:
            start = time.perf_counter()
            for _ in named:
                pass
            return time.perf_counter() - start
        device = "cuda" if torch.cuda.is_available() else "cpu"
        seconds, _ = send_weights(named, group, device=device)
        return seconds


@dataclass
class Actors:
    """Handles of a run's actors; ``None`` where a debug mode does without one."""

    trainer: Any
    rollout: Any
    engines: list[Any] = field(default_factory=list)
    placed: PlacedActors | None = None
    """GPU runs: the placement group, and how weights and engine memory move (None without GPUs)."""

    def shutdown(self) -> None:
        """Close the rollout manager (envs, SGLang servers), then kill every actor."""
        import ray

        if self.rollout is not None:
            try:
                ray.get(self.rollout.close.remote(), timeout=60)
            except Exception as e:  # a dead actor must not mask the error that killed the run
                log.warning("closing the rollout manager failed: %s", e)
        for rank in getattr(self.trainer, "ranks", [self.trainer]) if self.trainer is not None else []:
            try:  # its shared weight buffer; if it is dead, Python's resource tracker unlinks it
                ray.get(rank.close_engine_weights.remote(), timeout=10)
            except Exception as e:
                log.warning("closing the trainer's weight buffer failed: %s", e)
        for actor in [self.rollout, *getattr(self.trainer, "ranks", [self.trainer]), *self.engines]:
            if actor is not None:
                ray.kill(actor)
        if self.placed is not None:
            self.placed.shutdown()


def create_actors(config: TrainConfig, model_path: Path, env_factory: Any, log_dir: Path) -> Actors:
    """Start Ray (if needed) and the actors ``config`` calls for; write their pids to ``actors.json``."""
    import ray

    from agentrl.rollout.driver import RolloutManager, env_specs

    init_ray(config)
    options = {"num_cpus": 0, "max_restarts": 0}
    plan = plan_for(config)
    group = create_placement_group(plan) if plan else None
    trainer: Any = None
    if not config.debug_rollout_only:
        if plan:
            trainer = TrainerGroup(start_trainer_ranks(TrainerWorker, plan, group, str(model_path), config))
        else:
            trainer = ray.remote(TrainerWorker).options(**options).remote(str(model_path), config)
    rollout: Any = None
    engines: list[Any] = []
    if not config.debug_train_only:
        engine: Any
        inference = config.inference
        worker_args = (
            str(model_path),
            config.num_cpus,
            config.seed,
            inference.device,
            inference.dtype,
            inference.threads,
        )
        if inference.engine == "embedded" and plan:
            engines = start_engines(EngineWorker, plan, group, *worker_args)
            engine = RemoteEngines(engines)
        elif inference.engine == "embedded":
            worker = ray.remote(EngineWorker).options(max_concurrency=1024, **options)
            engines = [worker.remote(*worker_args)]
            engine = RemoteEngine(engines[0])
        else:
            colocated_gpus = bool(config.placement.num_gpus) and config.placement.placement == "colocated"
            engine = functools.partial(
                start_engine,
                inference,
                str(model_path),
                seed=config.seed,
                log_dir=str(log_dir / "sglang"),
                release_memory=colocated_gpus,
            )
        rollout = (
            ray.remote(RolloutManager)
            .options(**options)
            .remote(
                engine,
                str(model_path),
                env_specs(config.env, config.suite, "" if config.suite else config.split, config.env_kwargs),
                eval_specs=env_specs(config.env, config.suite, config.eval_split, config.env_kwargs),
                rollout=config.rollout,
                seed=config.seed,
                env_factory=env_factory,
            )
        )
    actors = Actors(trainer, rollout, engines)
    if plan:
        actors.placed = PlacedActors(plan, group, trainer.ranks if trainer else [], engines)
        if trainer is not None:
            actors.placed.connect_weights()
    pids = {
        "trainer": trainer.pid.remote() if trainer else None,
        "rollout": rollout.pid.remote() if rollout else None,
    }
    resolved = {k: ray.get(v) if v is not None else None for k, v in pids.items()}
    (log_dir / "actors.json").write_text(json.dumps(resolved) + "\n", encoding="utf-8")
    return actors
