"""Weights from a trainer to an engine on the same machine in one flat buffer: no pickling of tensors.

The trainer packs its HF-named tensors, converted to the engine's dtype, into one byte buffer with an
entry (name, dtype, shape, byte offset) per tensor, and hands over either

* a CUDA IPC handle of that buffer, when the engine runs on the same GPU (a colocated run: the engine
  maps the trainer's memory and copies it into its own weights in place, one device-to-device copy), or
* a NumPy byte array, which Ray's object store keeps in shared memory and hands to the engine without a
  copy (CPU runs, and engines on another device: one host-to-device copy per tensor). A trainer in a Ray
  actor skips the packing: :func:`put_weights` puts each tensor's bytes in the store (one copy) and sends
  only the reference, so the record crosses the driver and the rollout manager as a few kilobytes and only
  the engine maps the arrays (:func:`resolve_reference`). Sent by value, each actor on the way
  deserialized the buffer and Ray copied it into the store again for the next hop: 0.5 GiB more shared
  memory for SmolLM2-135M, and a copy's time.

Before this, the trainer sent a dict of CPU tensors that Ray pickled: 2-8 s a sync for SmolLM2-135M on
the 2-core CPU, 3.5-6 s on an H200. The trainer keeps a CUDA buffer alive until the engine has loaded it
(:meth:`WeightSender.release`): the engine's mapping must not outlive the memory it maps.

Example::

    packed = pack_weights(backend.hf_state_dict(), dtype=torch.bfloat16, cuda_ipc=True)   # trainer
    state = unpack_weights(packed)     # engine: name -> tensor views of the buffer, ready for copy_
"""

from __future__ import annotations

import warnings
from collections.abc import Iterable
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import torch

ALIGN = 256
"""Byte alignment of each tensor in the buffer (a view of any dtype needs its offset to be a multiple of
the element size; 256 also keeps CUDA copies on aligned addresses)."""


@dataclass(frozen=True)
class Entry:
    name: str
    dtype: str
    """torch dtype without the ``torch.`` prefix."""
    shape: tuple[int, ...]
    offset: int
    """Byte offset in the buffer."""


@dataclass(frozen=True)
class PackedWeights:
    """One flat buffer of weights, on the host (``host``) or shared from a GPU (``cuda_ipc``)."""

    entries: tuple[Entry, ...]
    nbytes: int
    host: np.ndarray | list[np.ndarray] | None = None
    """uint8 array (shared memory once in Ray's object store), when not on a GPU; from
    :func:`put_weights`, one uint8 array per entry."""
    cuda_ipc: tuple[Any, ...] | None = None
    """``torch.multiprocessing.reductions.reduce_tensor`` of a uint8 CUDA tensor: (rebuild function, args)."""
    device_uuid: str | None = None
    """The GPU that holds the ``cuda_ipc`` buffer."""
    host_ref: Any = None
    """A Ray ``ObjectRef`` of the ``host`` arrays, in their place (:func:`put_weights`)."""


def device_uuid(device: torch.device | str) -> str | None:
    """A GPU's UUID (the same in every process, whatever its ``CUDA_VISIBLE_DEVICES``); None for the CPU."""
    device = torch.device(device)
    if device.type != "cuda":
        return None
    index = device.index if device.index is not None else torch.cuda.current_device()
    return str(torch.cuda.get_device_properties(index).uuid)


def _aligned(n: int) -> int:
    return (n + ALIGN - 1) // ALIGN * ALIGN


def pack_weights(
    named: Iterable[tuple[str, torch.Tensor]], *, dtype: torch.dtype | None = None, cuda_ipc: bool = False
) -> tuple[PackedWeights, torch.Tensor]:
    """Copy ``named`` (converted to ``dtype`` when given) into one buffer.

    With ``cuda_ipc`` the buffer is allocated on the tensors' GPU and shared by handle; otherwise it is a
    host array. Returns the packed weights and the buffer, which the caller keeps alive until the engine
    has loaded it (for the host array, Ray copied it into its store already; keeping it costs nothing).
    """
    tensors = [(name, t.detach()) for name, t in named]
    if not tensors:
        raise ValueError("no weights to pack")
    entries, offset = [], 0
    for name, t in tensors:
        out_dtype = dtype if dtype is not None and t.is_floating_point() else t.dtype
        entries.append(Entry(name, str(out_dtype).removeprefix("torch."), tuple(t.shape), offset))
        offset += _aligned(t.numel() * torch.empty((), dtype=out_dtype).element_size())
    device = tensors[0][1].device if cuda_ipc else torch.device("cpu")
    if cuda_ipc and device.type != "cuda":
        raise ValueError(f"cuda_ipc needs weights on a GPU, they are on {device}")
    buffer = torch.empty(offset, dtype=torch.uint8, device=device)
    for entry, (_, t) in zip(entries, tensors, strict=True):
        _view(buffer, entry).copy_(t.reshape(entry.shape))
    if cuda_ipc:
        from torch.multiprocessing.reductions import reduce_tensor

        torch.cuda.current_stream(device).synchronize()  # the engine reads it from another process
        packed = PackedWeights(
            tuple(entries), offset, cuda_ipc=reduce_tensor(buffer), device_uuid=device_uuid(device)
        )
    else:
        packed = PackedWeights(tuple(entries), offset, host=buffer.numpy())
    return packed, buffer


def put_weights(
    named: Iterable[tuple[str, torch.Tensor]], *, dtype: torch.dtype | None = None
) -> PackedWeights:
    """Put ``named`` (converted to ``dtype`` when given) in Ray's object store and return a record that
    holds only the reference (:func:`resolve_reference` on the receiving side). Call it in an actor that
    outlives the hand-over (the trainer: it owns the object).

    Each tensor goes in as its bytes, one array per tensor, which Ray copies straight into shared memory:
    one copy of the weights, where packing them first and putting the buffer took two.
    """
    import ray

    arrays, entries, offset = [], [], 0
    for name, tensor in named:
        t = tensor.detach()
        if dtype is not None and t.is_floating_point() and t.dtype != dtype:
            t = t.to(dtype)
        t = t.cpu().contiguous()
        entries.append(Entry(name, str(t.dtype).removeprefix("torch."), tuple(t.shape), offset))
        offset += _aligned(t.numel() * t.element_size())
        arrays.append(t.reshape(-1).view(torch.uint8).numpy())  # (nbytes,): the tensor's memory, no copy
    if not entries:
        raise ValueError("no weights to put")
    return PackedWeights(tuple(entries), offset, host_ref=ray.put(arrays))


async def resolve_reference(packed: PackedWeights) -> PackedWeights:
    """``packed`` with its arrays fetched from Ray's object store (read-only views of the shared memory,
    no copy); records without a reference are returned as they are."""
    if packed.host_ref is None:
        return packed
    return replace(packed, host=await packed.host_ref, host_ref=None)


def _view(buffer: torch.Tensor, entry: Entry) -> torch.Tensor:
    dtype: torch.dtype = getattr(torch, entry.dtype)
    n = int(np.prod(entry.shape, dtype=np.int64)) * torch.empty((), dtype=dtype).element_size()
    return buffer[entry.offset : entry.offset + n].view(dtype).view(entry.shape)


def unpack_weights(packed: PackedWeights) -> dict[str, torch.Tensor]:
    """Name -> tensor views of ``packed``'s buffer (no copy): host views, or views of the trainer's GPU
    memory mapped into this process (valid until the trainer releases it; copy them before returning)."""
    if packed.cuda_ipc is not None:
        rebuild, args = packed.cuda_ipc
        args = list(args)
        args[6] = _local_index(packed.device_uuid)  # storage_device: this process's index of that GPU
        buffer = rebuild(*args)
    elif isinstance(packed.host, list):  # put_weights: one array per entry
        with warnings.catch_warnings():  # Ray's zero-copy arrays are read-only; the views are only read
            warnings.simplefilter("ignore", UserWarning)
            return {
                e.name: torch.from_numpy(a).view(getattr(torch, e.dtype)).view(e.shape)
                for e, a in zip(packed.entries, packed.host, strict=True)
            }
    elif packed.host is not None:
        with warnings.catch_warnings():  # Ray's zero-copy arrays are read-only; the views are only read
            warnings.simplefilter("ignore", UserWarning)
            buffer = torch.from_numpy(packed.host)
    elif packed.host_ref is not None:
        raise ValueError("packed weights hold a Ray reference: fetch it first (resolve_reference)")
    else:
        raise ValueError("packed weights hold neither a host buffer nor a CUDA handle")
    if buffer.numel() != packed.nbytes:
        raise ValueError(f"packed weights: buffer of {buffer.numel()} bytes, entries need {packed.nbytes}")
    return {e.name: _view(buffer, e) for e in packed.entries}


def _local_index(uuid: str | None) -> int:
    for i in range(torch.cuda.device_count()):
        if str(torch.cuda.get_device_properties(i).uuid) == uuid:
            return i
    raise ValueError(f"the trainer's GPU {uuid} is not visible in this process: send host weights instead")
