"""Where trainer ranks and rollout engines run: Ray placement groups over a run's GPUs.

One placement group holds ``num_gpus`` bundles of one GPU each, packed onto as few nodes as possible.

* ``disaggregated``: trainer rank ``i`` on bundle ``i`` for ``i < trainer_gpus``, engine ``j`` on
  bundle ``trainer_gpus + j``. Both sides work at once only if the loop overlaps them; weights go from
  trainer rank 0 to the engines by broadcast over a group of their own (:mod:`.weight_broadcast`).
* ``colocated``: trainer rank ``i`` and engine ``i`` share bundle ``i`` (each asks for half its GPU, so
  Ray puts both on the same device). Engines release their GPU memory around each train step
  (:mod:`.engine_memory`); weights move in memory.
* ``shared``: the bundles of ``colocated``, but both sides keep their memory and may work at once:
  asynchronous training (``--async-mode``) on one GPU, or on GPUs that hold a small model twice over.

Every actor started here gets :data:`NCCL_SAFE_ENV`: NCCL's NVLink multicast (NVLS) can take a shared
host's GPUs out of service, so it is off everywhere, together with the multicast paths of torch's
symmetric memory and NVSHMEM.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Literal

from agentrl.engines.weight_transport import NCCL_SAFE_ENV
from agentrl.errors import ConfigError
from agentrl.run.train_config import TrainConfig

Placement = Literal["colocated", "shared", "disaggregated"]


@dataclass(frozen=True)
class PlacementPlan:
    """Which placement-group bundle (one GPU each) every trainer rank and engine takes."""

    mode: Placement
    """``colocated`` (GPUs time-shared), ``shared`` (GPUs shared at once) or ``disaggregated``
    (separate GPUs)."""
    num_gpus: int
    """Bundles in the placement group."""
    trainer_bundles: tuple[int, ...]
    """Bundle of trainer rank ``i`` at position ``i``."""
    engine_bundles: tuple[int, ...]
    """Bundle of engine ``j`` at position ``j``."""

    @property
    def gpu_share(self) -> float:
        """GPU fraction each actor asks of its bundle: half when two actors share one GPU."""
        return 1.0 if self.mode == "disaggregated" else 0.5


def plan_placement(mode: Placement, num_gpus: int, trainer_gpus: int | None = None) -> PlacementPlan:
    """The bundles of each role; ``trainer_gpus`` defaults to all (colocated) or half (disaggregated)."""
    if num_gpus < 1:
        raise ConfigError(f"a placement needs --num-gpus >= 1, got {num_gpus}")
    if mode in ("colocated", "shared"):
        if trainer_gpus not in (None, num_gpus):
            raise ConfigError(f"{mode} placement uses all {num_gpus} GPUs for the trainer")
        every = tuple(range(num_gpus))
        return PlacementPlan(mode, num_gpus, every, every)
    k = num_gpus // 2 if trainer_gpus is None else trainer_gpus
    if not 1 <= k < num_gpus:
        raise ConfigError(
            f"disaggregated placement on {num_gpus} GPUs needs 1 <= trainer GPUs < {num_gpus}, got {k}"
        )
    return PlacementPlan(mode, num_gpus, tuple(range(k)), tuple(range(k, num_gpus)))


def plan_for(config: TrainConfig) -> PlacementPlan | None:
    """The run's plan, or None on a run without GPUs (everything as plain actors)."""
    if config.placement.num_gpus == 0:
        return None
    p = config.placement
    return plan_placement(p.placement, p.num_gpus, p.trainer_gpus)


def create_placement_group(plan: PlacementPlan, *, timeout_s: float = 300.0) -> Any:
    """Reserve the plan's GPUs; fails with a ConfigError when the cluster cannot hold them in time."""
    import ray
    from ray.util.placement_group import placement_group, remove_placement_group

    group = placement_group([{"GPU": 1.0}] * plan.num_gpus, strategy="PACK", name="")
    ready, _ = ray.wait([group.ready()], timeout=timeout_s)
    if not ready:
        remove_placement_group(group)
        total = ray.cluster_resources().get("GPU", 0)
        raise ConfigError(
            f"Ray could not reserve {plan.num_gpus} GPUs in {timeout_s:.0f} s (the cluster has {total:g}); "
            "lower --num-gpus or add GPU nodes"
        )
    return group


def bundle_options(group: Any, bundle: int, gpus: float, env: dict[str, str] | None = None) -> dict[str, Any]:
    """Ray ``.options()`` that pin an actor to ``bundle`` with ``gpus`` of its GPU and the safe NCCL env."""
    from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

    return {
        "num_cpus": 0,
        "num_gpus": gpus,
        "max_restarts": 0,
        "scheduling_strategy": PlacementGroupSchedulingStrategy(
            placement_group=group, placement_group_bundle_index=bundle
        ),
        "runtime_env": {"env_vars": {**NCCL_SAFE_ENV, **(env or {})}},
    }


def rendezvous_address() -> tuple[str, int]:
    """This node's address and a free port on it (the host of a process group's TCP store)."""
    import ray

    ip = ray.util.get_node_ip_address()
    with socket.socket() as s:
        s.bind((ip, 0))
        return ip, int(s.getsockname()[1])


@dataclass
class TrainerGroup:
    """The trainer's ranks behind one handle: ``group.train.remote(x)`` calls ``train`` on every rank
    (they step together) and returns rank 0's result; any rank's error surfaces there."""

    ranks: list[Any]

    def __getattr__(self, method: str) -> _FanOut:
        if method.startswith("__"):
            raise AttributeError(method)
        return _FanOut(self.ranks, method)


@dataclass
class _FanOut:
    ranks: list[Any]
    method: str

    def remote(self, *args: Any) -> Any:
        import ray

        refs = [getattr(rank, self.method).remote(*args) for rank in self.ranks]
        if len(refs) == 1:
            return refs[0]
        return ray.remote(num_cpus=0)(_first).remote(*refs)


def _first(*results: Any) -> Any:
    """Ray resolves every argument first, so this fails if any rank failed."""
    return results[0]


def start_trainer_ranks(
    worker: type, plan: PlacementPlan, group: Any, model_path: str, config: TrainConfig
) -> list[Any]:
    """One trainer actor per trainer bundle, with torchrun's variables (rank 0 hosts the rendezvous)."""
    import ray

    task_options = bundle_options(group, plan.trainer_bundles[0], 0.0)
    task_options.pop("max_restarts")
    probe = ray.remote(rendezvous_address).options(**task_options)
    address, port = ray.get(probe.remote())
    ranks: list[Any] = []
    for rank, bundle in enumerate(plan.trainer_bundles):
        env = {
            "RANK": str(rank),
            "WORLD_SIZE": str(len(plan.trainer_bundles)),
            "LOCAL_RANK": "0",  # Ray shows each actor only its own GPU
            "MASTER_ADDR": address,
            "MASTER_PORT": str(port),
        }
        options = bundle_options(group, bundle, plan.gpu_share, env)
        ranks.append(ray.remote(worker).options(**options).remote(model_path, config))
    return ranks


def start_engines(worker: type, plan: PlacementPlan, group: Any, *args: Any) -> list[Any]:
    """One engine actor per engine bundle (async actors: concurrent requests batch inside)."""
    import ray

    return [
        ray.remote(worker)
        .options(max_concurrency=1024, **bundle_options(group, bundle, plan.gpu_share))
        .remote(*args)
        for bundle in plan.engine_bundles
    ]


@dataclass
class PlacedActors:
    """The GPU side of a run: its placement group, plan, and how weights and memory move."""

    plan: PlacementPlan
    group: Any
    trainer_ranks: list[Any]
    engines: list[Any]
    metas: list[Any] = field(default_factory=list)
    """The tensors one weight sync broadcasts (disaggregated), fixed at connect time."""

    def connect_weights(self) -> None:
        """Disaggregated: trainer rank 0 and every engine join one broadcast group (rank 0 = trainer)."""
        import ray

        if self.plan.mode != "disaggregated" or not self.engines:
            return
        address, port, backend = ray.get(self.trainer_ranks[0].weight_group_address.remote())
        world = 1 + len(self.engines)
        refs = [self.trainer_ranks[0].join_weight_group.remote(address, port, world, backend)]
        refs += [
            e.join_weight_group.remote(address, port, 1 + j, world, backend)
            for j, e in enumerate(self.engines)
        ]
        ray.get(refs)
        self.metas = ray.get(TrainerGroup(self.trainer_ranks).weight_metas.remote())

    def broadcast_weights(self, version: int) -> float:
        """Disaggregated sync: every trainer rank gathers its shards, rank 0 broadcasts; seconds taken."""
        import ray

        receives = [e.receive_weights.remote(self.metas, version) for e in self.engines]
        seconds = ray.get(TrainerGroup(self.trainer_ranks).broadcast_weights.remote())
        ray.get(receives)
        return float(seconds)

    @contextmanager
    def engines_released(self, rollout: Any, metrics: dict[str, float]) -> Iterator[None]:
        """Colocated: engines free their GPU memory for the body (a train step), then take it back."""
        import ray

        if self.plan.mode != "colocated" or rollout is None:
            yield
            return
        start = time.perf_counter()
        ray.get(rollout.engine_memory.remote("release"))
        metrics["time/release_s"] = time.perf_counter() - start
        try:
            yield
        finally:
            start = time.perf_counter()
            ray.get(rollout.engine_memory.remote("resume"))
            metrics["time/resume_s"] = time.perf_counter() - start

    def shutdown(self) -> None:
        from ray.util.placement_group import remove_placement_group

        remove_placement_group(self.group)
