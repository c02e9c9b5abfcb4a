"""Weights from trainer rank 0 to engines on other GPUs, over a process group of their own.

Why a separate group: in a disaggregated run the trainer's ranks already form Megatron's world, and
engines are separate processes (Ray actors, SGLang servers) that must not join it. Like SGLang's
``/init_weights_update_group``, the trainer's rank 0 is rank 0 of a small group whose other ranks are
the engines' GPUs; each sync broadcasts the HF-named tensors in an order both sides know (the list of
:class:`TensorMeta`). The group is built the way SGLang builds its side (TCP rendezvous hosted by rank
0, a store prefixed with the group name, torch's process-group helper), so the same trainer code can
talk to SGLang servers and to embedded-engine actors. NCCL between GPUs; gloo where there is no CUDA
(CPU tests of the same protocol).

Example (two processes)::

    group = join_weight_group("10.0.0.1", 29600, rank=0, world_size=2)         # trainer rank 0
    seconds = send_weights(backend.hf_state_dict(), group, device="cuda")
    # ... and on the engine: weights = receive_weights(metas, join_weight_group(..., rank=1, ...), device)
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist

NCCL_SAFE_ENV: dict[str, str] = {
    "NCCL_NVLS_ENABLE": "0",
    "TORCH_SYMM_MEM_DISABLE_MULTICAST": "1",
    "NVSHMEM_DISABLE_NVLS": "1",
}
"""Set in every process agentrl starts on GPUs (actors, servers, benchmark workers): NCCL's NVLink
multicast (NVLS) can take a shared host's GPUs out of service."""

DEFAULT_GROUP = "weight_update_group"
"""SGLang's default ``group_name`` of ``/init_weights_update_group``."""


@dataclass(frozen=True)
class TensorMeta:
    """What the receiver allocates before each broadcast (SGLang's ``names`` / ``dtypes`` / ``shapes``)."""

    name: str
    """HF parameter name."""
    dtype: str
    """torch dtype without the ``torch.`` prefix (``bfloat16``)."""
    shape: tuple[int, ...]
    """Tensor shape."""


def tensor_metas(named: Iterable[tuple[str, torch.Tensor]]) -> list[TensorMeta]:
    """Names, dtypes and shapes of ``named``, in order."""
    return [
        TensorMeta(name, str(t.dtype).removeprefix("torch."), tuple(int(s) for s in t.shape))
        for name, t in named
    ]


def default_backend() -> str:
    """NCCL where CUDA is present, gloo otherwise."""
    return "nccl" if torch.cuda.is_available() else "gloo"


def join_weight_group(
    master_address: str,
    master_port: int,
    *,
    rank: int,
    world_size: int,
    group_name: str = DEFAULT_GROUP,
    backend: str | None = None,
    timeout_s: float = 600.0,
) -> Any:
    """Join (rank 0: host) the weight group; blocks until all ``world_size`` ranks have joined.

    Works whether or not this process already has a default process group (Megatron's), because the
    group is made from its own store and never touches the default one."""
    from torch.distributed.distributed_c10d import (
        Backend,
        GroupName,
        PrefixStore,
        _new_process_group_helper,
        _world,
        rendezvous,
    )

    timeout = timedelta(seconds=timeout_s)
    url = f"tcp://{master_address}:{master_port}"
    store, _, _ = next(rendezvous(url, rank, world_size, timeout=timeout))
    store.set_timeout(timeout)
    group, _ = _new_process_group_helper(
        world_size,
        rank,
        [],
        Backend(backend or default_backend()),
        PrefixStore(group_name, store),
        group_name=GroupName(group_name),
        timeout=timeout,
    )
    # Without a default group torch cannot map group ranks to global ones; here they are the same.
    _world.pg_group_ranks[group] = {i: i for i in range(world_size)}
    return group


def send_weights(
    named: Iterable[tuple[str, torch.Tensor]], group: Any, *, device: str | torch.device
) -> tuple[float, int]:
    """Broadcast every tensor of ``named`` from rank 0, in order; (seconds, bytes) sent.

    ``named`` may be a generator that gathers TP shards lazily, so only one tensor is materialised at a
    time beyond the model itself."""
    start = time.perf_counter()
    sent = 0
    for _, tensor in named:
        t = tensor.detach().to(device).contiguous()
        dist.broadcast(t, src=0, group=group)
        sent += t.numel() * t.element_size()
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return time.perf_counter() - start, sent


def receive_weights(
    metas: list[TensorMeta], group: Any, *, device: str | torch.device
) -> dict[str, torch.Tensor]:
    """Receive the tensors rank 0 broadcasts, in ``metas`` order, as a state dict on ``device``."""
    out: dict[str, torch.Tensor] = {}
    for meta in metas:
        t = torch.empty(meta.shape, dtype=getattr(torch, meta.dtype), device=device)
        dist.broadcast(t, src=0, group=group)
        out[meta.name] = t
    return out
