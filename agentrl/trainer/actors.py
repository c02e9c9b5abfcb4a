"""The Ray side of a run: a local (loopback-bound) Ray instance, and the trainer / engine / rollout actors.

Three actors, one process each, so that a run scales from a laptop to a cluster without code changes:

* :class:`TrainerWorker` holds the training backend (torch or Megatron): train steps, weights, checkpoints.
* :class:`EngineWorker` holds an :class:`~agentrl.rollout.embedded_engine.EmbeddedEngine` and serves
  ``generate`` concurrently (an async actor, so concurrent requests batch inside the engine).
  SGLang engines need no actor: their servers are already processes, driven over HTTP by the
  rollout manager.
* :class:`~agentrl.trainer.rollout_manager.RolloutManager` runs the multi-turn controller over envs.

Actors are created with ``max_restarts=0`` on purpose (RELIABILITY F24): a restarted trainer would
have lost its optimizer state, so a dead actor must surface as an exception in the driver, which
exits non-zero and is resumed from the last checkpoint.
"""

from __future__ import annotations

import asyncio
import functools
import json
import logging
import os
import time
import zlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from agentrl.errors import ConfigError
from agentrl.rollout.engine import GenerateOutput, SamplingParams
from agentrl.rollout.trajectory import Trajectory
from agentrl.trainer.placement import (
    PlacedActors,
    TrainerGroup,
    create_placement_group,
    plan_for,
    start_engines,
    start_trainer_ranks,
)
from agentrl.trainer.train_config import TrainConfig

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


def set_threads(num_cpus: int | None) -> None:
    """Ray sets OMP_NUM_THREADS=1 in workers; the phases of a run never overlap, so each actor may use
    every core while it works."""
    torch.set_num_threads(max(1, num_cpus or os.cpu_count() or 1))


def make_backend(model_path: Path, config: TrainConfig) -> Any:
    """The training backend ``config.backend`` names, on ``model_path``."""
    if config.backend == "torch":
        from agentrl.trainer.torch_backend import TorchBackend

        return TorchBackend(model_path, config.torch_backend_config())
    try:
        from agentrl.trainer.megatron.backend import MegatronBackend, MegatronBackendConfig
    except ImportError as e:
        raise ConfigError(
            f"--backend megatron could not be imported ({e}); install the megatron extra "
            "(pip install 'agentrl[megatron]') on a CUDA machine, or use --backend torch"
        ) from e
    from agentrl.trainer.megatron.config import parse_megatron_args

    return MegatronBackend(
        model_path,
        MegatronBackendConfig(
            algorithm=config.algorithm,
            optimizer=config.optimizer,
            seed=config.seed,
            parallel=parse_megatron_args(list(config.megatron_args)),
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

    def pid(self) -> int:
        return os.getpid()

    def train(self, trajectories: list[Trajectory]) -> dict[str, float]:
        """``steps_per_rollout`` optimizer steps over the rollout, whole groups per step; mean metrics."""
        from agentrl.trainer.batch import trajectories_to_batch

        sums: dict[str, float] = {}
        parts = split_by_group(trajectories, self.config.steps_per_rollout)
        for part in parts:
            batch, batch_metrics = trajectories_to_batch(part, self.config.algorithm)
            step_metrics = self.backend.train_step(batch) if len(batch) else {}
            for key, value in {**batch_metrics, **step_metrics}.items():
                sums[key] = sums.get(key, 0.0) + float(value)
        out = {f"train/{k}": v / max(1, len(parts)) for k, v in sums.items()}
        out["train/optimizer_steps"] = float(len(parts))
        return out

    def state_dict(self) -> dict[str, torch.Tensor]:
        """The weights under HF names, for the embedded engine (sent through Ray's object store)."""
        return {name: tensor.detach().cpu() for name, tensor in self.backend.hf_state_dict()}

    def export_hf(self, path: str) -> str:
        self.backend.export_hf(Path(path))
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
        from agentrl.trainer.placement import where_am_i

        return where_am_i()

    def weight_group_address(self) -> tuple[str, int, str]:
        """Host, free port and backend of the weight-broadcast group this rank (0) will host."""
        from agentrl.trainer.placement import rendezvous_address
        from agentrl.trainer.weight_broadcast import default_backend

        return (*rendezvous_address(), default_backend())

    def join_weight_group(self, address: str, port: int, world_size: int, backend: str) -> None:
        """Rank 0 of the trainer becomes rank 0 of the group the engines receive weights on."""
        from agentrl.trainer.weight_broadcast import join_weight_group

        self._weight_group = join_weight_group(address, port, rank=0, world_size=world_size, backend=backend)

    def weight_metas(self) -> list[Any]:
        from agentrl.trainer.weight_broadcast import tensor_metas

        return tensor_metas(self.backend.hf_state_dict())

    def broadcast_weights(self) -> float:
        """Send the HF-named weights over the weight group (rank 0); other ranks only help gather
        TP shards. Seconds taken."""
        from agentrl.trainer.weight_broadcast import send_weights

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


class EngineWorker:
    """Hosts an embedded engine; ``generate`` calls from the rollout manager run concurrently here."""

    def __init__(self, model_path: str, num_cpus: int | None, seed: int) -> None:
        from agentrl.rollout.embedded_engine import EmbeddedEngine, EmbeddedEngineConfig

        set_threads(num_cpus)
        self.engine = EmbeddedEngine(model_path, EmbeddedEngineConfig(seed=seed))

    async def generate(
        self, input_ids: list[int], sampling: SamplingParams, session_id: str | None = None
    ) -> GenerateOutput:
        return await self.engine.generate(input_ids, sampling, session_id=session_id)

    async def update_weights(self, source: Any, version: int) -> None:
        await self.engine.update_weights(source, version=version)

    async def health(self) -> bool:
        return bool(await self.engine.health())

    async def pause(self) -> None:
        await self.engine.pause()

    async def resume(self) -> None:
        await self.engine.resume()

    async def abort(self, session_id: str | None = None) -> None:
        await self.engine.abort(session_id)

    async def close(self) -> None:
        await self.engine.close()

    def placement_info(self) -> dict[str, Any]:
        from agentrl.trainer.placement import where_am_i

        return where_am_i()

    def model_device(self) -> str:
        return str(next(self.engine.model.parameters()).device)

    async def release_memory(self) -> int:
        """Colocated: stop generating and move the model off the GPU; bytes freed."""
        from agentrl.trainer.engine_memory import offload_embedded

        await self.engine.pause()
        return await asyncio.to_thread(offload_embedded, self.engine)

    async def resume_memory(self) -> None:
        from agentrl.trainer.engine_memory import reload_embedded

        await asyncio.to_thread(reload_embedded, self.engine)
        await self.engine.resume()

    async def join_weight_group(
        self, address: str, port: int, rank: int, world_size: int, backend: str
    ) -> None:
        from agentrl.trainer.weight_broadcast import join_weight_group

        self._weight_group = await asyncio.to_thread(
            join_weight_group, address, port, rank=rank, world_size=world_size, backend=backend
        )

    async def receive_weights(self, metas: list[Any], version: int) -> None:
        """Disaggregated sync: receive the trainer's broadcast, then load it between batches."""
        from agentrl.trainer.weight_broadcast import receive_weights

        device = self.engine.device if self._weight_group_backend() == "nccl" else "cpu"
        state = await asyncio.to_thread(receive_weights, metas, self._weight_group, device=device)
        await self.engine.update_weights(state, version=version)

    def _weight_group_backend(self) -> str:
        import torch.distributed as dist

        return str(dist.get_backend(self._weight_group))


class RemoteEngine:
    """The :class:`~agentrl.rollout.engine.Engine` protocol over an :class:`EngineWorker` actor handle."""

    def __init__(self, actor: Any) -> None:
        self.actor = actor

    async def generate(
        self, input_ids: list[int], sampling: SamplingParams, *, session_id: str | None = None
    ) -> GenerateOutput:
        return await self.actor.generate.remote(input_ids, sampling, session_id)

    async def update_weights(self, source: Any, *, version: int) -> None:
        await self.actor.update_weights.remote(source, version)

    async def health(self) -> bool:
        return bool(await self.actor.health.remote())

    async def pause(self) -> None:
        await self.actor.pause.remote()

    async def resume(self) -> None:
        await self.actor.resume.remote()

    async def abort(self, session_id: str | None = None) -> None:
        await self.actor.abort.remote(session_id)

    async def close(self) -> None:
        await self.actor.close.remote()

    async def release_memory(self) -> None:
        await self.actor.release_memory.remote()

    async def resume_memory(self) -> None:
        await self.actor.resume_memory.remote()


class RemoteEngines:
    """Several engine actors as one engine: an episode's turns stick to one actor (its session); control
    calls go to all of them."""

    def __init__(self, actors: Sequence[Any]) -> None:
        self.engines = [RemoteEngine(a) for a in actors]
        self._next = 0

    def _pick(self, session_id: str | None) -> RemoteEngine:
        if session_id is not None:
            return self.engines[zlib.crc32(session_id.encode()) % len(self.engines)]
        self._next = (self._next + 1) % len(self.engines)
        return self.engines[self._next]

    async def generate(
        self, input_ids: list[int], sampling: SamplingParams, *, session_id: str | None = None
    ) -> GenerateOutput:
        return await self._pick(session_id).generate(input_ids, sampling, session_id=session_id)

    async def update_weights(self, source: Any, *, version: int) -> None:
        await asyncio.gather(*(e.update_weights(source, version=version) for e in self.engines))

    async def health(self) -> bool:
        return all(await asyncio.gather(*(e.health() for e in self.engines)))

    async def pause(self) -> None:
        await asyncio.gather(*(e.pause() for e in self.engines))

    async def resume(self) -> None:
        await asyncio.gather(*(e.resume() for e in self.engines))

    async def abort(self, session_id: str | None = None) -> None:
        await asyncio.gather(*(e.abort(session_id) for e in self.engines))

    async def close(self) -> None:
        await asyncio.gather(*(e.close() for e in self.engines))

    async def release_memory(self) -> None:
        await asyncio.gather(*(e.release_memory() for e in self.engines))

    async def resume_memory(self) -> None:
        await asyncio.gather(*(e.resume_memory() for e in self.engines))


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
        for actor in [self.rollout, *getattr(self.trainer, "ranks", [self.trainer]), *self.engines]:
            if actor is not None:
                ray.kill(actor)
        if self.placed is not None:
            self.placed.shutdown()


async def start_sglang_engine(config: TrainConfig, model_path: str, log_dir: str) -> Any:
    """Launch (or connect to) the SGLang servers of ``config``; called inside the rollout manager."""
    from agentrl.rollout.sglang_engine import SGLangEngine, SGLangEngineConfig

    engine_config = SGLangEngineConfig(
        model_path=model_path,
        server_urls=tuple(config.sglang_urls),
        num_servers=config.num_engines,
        python=config.sglang_python,
        sglang_args=_sglang_args(config),
        log_dir=log_dir,
    )
    return await SGLangEngine(engine_config).start()


def _sglang_args(config: TrainConfig) -> tuple[str, ...]:
    """Colocated GPU runs release SGLang's memory around train steps, which needs its memory saver."""
    args = tuple(config.sglang_args)
    if config.num_gpus and config.placement == "colocated" and "--enable-memory-saver" not in args:
        args += ("--enable-memory-saver",)
    return args


def create_actors(config: TrainConfig, model_path: Path, env_factory: Any, log_dir: Path) -> Actors:
    """Start Ray (if needed) and the actors ``config`` calls for; write their pids to ``actors.json``."""
    import ray

    from agentrl.trainer.rollout_manager import RolloutManager, env_specs

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
        if config.engine == "embedded" and plan:
            engines = start_engines(EngineWorker, plan, group, str(model_path), config.num_cpus, config.seed)
            engine = RemoteEngines(engines)
        elif config.engine == "embedded":
            worker = ray.remote(EngineWorker).options(max_concurrency=1024, **options)
            engines = [worker.remote(str(model_path), config.num_cpus, config.seed)]
            engine = RemoteEngine(engines[0])
        else:
            engine = functools.partial(start_sglang_engine, config, str(model_path), str(log_dir / "sglang"))
        rollout = (
            ray.remote(RolloutManager)
            .options(**options)
            .remote(
                engine,
                str(model_path),
                env_specs(config.env, config.suite, "" if config.suite else config.split, config.env_kwargs),
                eval_specs=env_specs(config.env, config.suite, config.eval_split, config.env_kwargs),
                max_turns=config.max_turns,
                max_new_tokens=config.max_new_tokens,
                max_context=config.max_context,
                max_concurrency=config.max_concurrency,
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
