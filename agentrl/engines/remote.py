"""Engine-side Ray stand-ins: the embedded engine's host actor, and the handles that speak the Engine
protocol over it (one engine, or several spread by session). SGLang servers are processes already and
need no actor of their own (:func:`agentrl.engines.factory.start_engine` starts them).
"""

from __future__ import annotations

import asyncio
import logging
import os
import zlib
from collections.abc import Sequence
from typing import Any

import torch

from agentrl.engines.base import GenerateOutput, SamplingParams

log = logging.getLogger(__name__)


def set_threads(num_cpus: int | None) -> None:
    """Ray sets OMP_NUM_THREADS=1 in workers; the phases of a run never overlap, so each actor may use
    every core while it works."""
    torch.set_num_threads(max(1, num_cpus or os.cpu_count() or 1))


def where_am_i() -> dict[str, Any]:
    """Inside an actor: its placement group, the resources Ray assigned it, the GPUs it sees."""
    import ray

    from agentrl.engines.weight_transport import NCCL_SAFE_ENV

    context = ray.get_runtime_context()
    return {
        "placement_group": context.get_placement_group_id(),
        "resources": context.get_assigned_resources(),
        "gpu_ids": [str(g) for g in ray.get_gpu_ids()],
        "env": {k: os.environ.get(k) for k in (*NCCL_SAFE_ENV, "CUDA_VISIBLE_DEVICES", "RANK", "WORLD_SIZE")},
    }


class EngineWorker:
    """Hosts an embedded engine; ``generate`` calls from the rollout manager run concurrently here."""

    def __init__(
        self,
        model_path: str,
        num_cpus: int | None,
        seed: int,
        device: str = "auto",
        dtype: str = "auto",
        threads: int | None = None,
    ) -> None:
        from agentrl.engines.embedded.engine import EmbeddedEngine, EmbeddedEngineConfig

        set_threads(num_cpus)
        config = EmbeddedEngineConfig(device=device, dtype=dtype, num_threads=threads, seed=seed)
        self.engine = EmbeddedEngine(model_path, config)

    async def generate(
        self, input_ids: list[int], sampling: SamplingParams, session_id: str | None = None
    ) -> GenerateOutput:
        return await self.engine.generate(input_ids, sampling, session_id=session_id)

    async def update_weights(self, source: Any, version: int) -> None:
        from agentrl.engines.packed_weights import PackedWeights, resolve_reference

        if isinstance(source, PackedWeights):  # sent by reference (put_weights): map the arrays here
            source = await resolve_reference(source)
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
        return where_am_i()

    def model_device(self) -> str:
        return str(next(self.engine.model.parameters()).device)

    def stats(self) -> dict[str, float]:
        """The engine's counters since it started (``EmbeddedEngine.stats``)."""
        return dict(self.engine.stats)

    def weights_target(self) -> dict[str, Any]:
        """The engine's GPU (UUID), dtype and Ray node, for the trainer to pack weights for it."""
        import ray

        return {**self.engine.weights_target(), "node_id": ray.get_runtime_context().get_node_id()}

    async def release_memory(self) -> int:
        """Colocated: stop generating and move the model off the GPU; bytes freed."""
        from agentrl.engines.memory import offload_embedded

        await self.engine.pause()
        return await asyncio.to_thread(offload_embedded, self.engine)

    async def resume_memory(self) -> None:
        from agentrl.engines.memory import reload_embedded

        await asyncio.to_thread(reload_embedded, self.engine)
        await self.engine.resume()

    async def join_weight_group(
        self, address: str, port: int, rank: int, world_size: int, backend: str
    ) -> None:
        from agentrl.engines.weight_transport import join_weight_group

        self._weight_group = await asyncio.to_thread(
            join_weight_group, address, port, rank=rank, world_size=world_size, backend=backend
        )

    async def receive_weights(self, metas: list[Any], version: int) -> None:
        """Disaggregated sync: receive the trainer's broadcast, then load it between batches."""
        from agentrl.engines.weight_transport import receive_weights

        device = self.engine.device if self._weight_group_backend() == "nccl" else "cpu"
        state = await asyncio.to_thread(receive_weights, metas, self._weight_group, device=device)
        await self.engine.update_weights(state, version=version)

    def _weight_group_backend(self) -> str:
        import torch.distributed as dist

        return str(dist.get_backend(self._weight_group))


class RemoteEngine:
    """The :class:`~agentrl.engines.base.Engine` protocol over an :class:`EngineWorker` actor handle."""

    def __init__(self, actor: Any) -> None:
        self.actor = actor

    async def generate(
        self, input_ids: list[int], sampling: SamplingParams, *, session_id: str | None = None
    ) -> GenerateOutput:
        return await self.actor.generate.remote(input_ids, sampling, session_id)

    async def update_weights(self, source: Any, *, version: int) -> None:
        await self.actor.update_weights.remote(source, version)

    def weights_target(self) -> dict[str, Any] | None:
        """The actor's engine's :meth:`~agentrl.engines.embedded.engine.EmbeddedEngine.weights_target`:
        a trainer on the same GPU then hands weights over by CUDA IPC."""
        import ray

        target: dict[str, Any] | None = ray.get(self.actor.weights_target.remote())
        return target

    @property
    def stats(self) -> dict[str, float]:
        """The actor's engine's counters since it started (a call to the actor): what the rollout
        manager turns into ``engine/`` metrics, as it does for an engine in its own process."""
        import ray

        counters: dict[str, float] = ray.get(self.actor.stats.remote())
        return counters

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

    def weights_target(self) -> dict[str, Any] | None:
        """The engines' common target; None when they differ (engines on several GPUs get host arrays)."""
        targets = [e.weights_target() for e in self.engines]
        return targets[0] if all(t == targets[0] for t in targets) else None

    @property
    def stats(self) -> dict[str, float]:
        """The engines' counters, summed (their seconds too: engine-seconds, as their work overlaps),
        and ``engines``, how many were summed."""
        total: dict[str, float] = {"engines": float(len(self.engines))}
        for e in self.engines:
            for name, value in e.stats.items():
                total[name] = total.get(name, 0.0) + value
        return total

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
