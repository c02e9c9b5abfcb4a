"""Weights from a trainer to an engine on the same machine in one flat buffer: no pickling of tensors.

The trainer packs its HF-named tensors, converted to the engine's dtype, into one byte buffer with an
entry (name, dtype, shape, byte offset) per tensor, and hands over either

* a CUDA IPC handle of that buffer, when the engine runs on the same GPU (a colocated run: the engine
  maps the trainer's memory and copies it into its own weights in place, one device-to-device copy), or
* the name of a shared host buffer (:class:`SharedHostBuffer`, :func:`pack_shared`) when the engine runs
  on the same machine but not on the trainer's GPU (CPU runs): the trainer refills it in place at every
  sync and the engine keeps its mapping, so no sync after the first allocates or faults in memory, or
* a NumPy byte array, which Ray's object store keeps in shared memory and hands to the engine without a
  copy (engines on another machine: one host-to-device copy per tensor). A trainer in a Ray
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

import mmap
import os
import secrets
import warnings
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
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
    """One flat buffer of weights: on the host (``host``, or ``host_ref`` before it is fetched), in a
    shared host buffer (``shared_name``) or shared from a GPU (``cuda_ipc``)."""

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
    shared_name: str | None = None
    """The shared-memory segment on this machine that holds the buffer (:class:`SharedHostBuffer`), in
    place of ``host``: the receiver maps it (:func:`unpack_weights`)."""


def device_uuid(device: torch.device | str) -> str | None:
    """A GPU's UUID (the same in every process, whatever its ``CUDA_VISIBLE_DEVICES``); None for the CPU."""
    device = torch.device(device)
    if device.type != "cuda":
        return None
    index = device.index if device.index is not None else torch.cuda.current_device()
    return str(torch.cuda.get_device_properties(index).uuid)


def _aligned(n: int) -> int:
    return (n + ALIGN - 1) // ALIGN * ALIGN


def layout(
    named: Iterable[tuple[str, torch.Tensor]], *, dtype: torch.dtype | None = None
) -> tuple[list[tuple[str, torch.Tensor]], tuple[Entry, ...], int]:
    """The detached tensors of ``named``, their entries in a buffer (floating tensors converted to
    ``dtype`` when given) and the buffer's size in bytes.

    A tensor that is a view of the same memory as an earlier one (tied embeddings: ``lm_head.weight`` is
    ``model.embed_tokens.weight``) gets that tensor's offset: its bytes are stored and copied once.
    """
    tensors = [(name, t.detach()) for name, t in named]  # held: no address below is reused meanwhile
    entries: list[Entry] = []
    seen: dict[tuple[Any, ...], int] = {}
    offset = 0
    for name, t in tensors:
        out_dtype = dtype if dtype is not None and t.is_floating_point() else t.dtype
        key = (t.device, t.data_ptr(), t.dtype, tuple(t.shape), t.stride())
        if t.numel() and key in seen:
            entries.append(Entry(name, str(out_dtype).removeprefix("torch."), tuple(t.shape), seen[key]))
            continue
        seen[key] = offset
        entries.append(Entry(name, str(out_dtype).removeprefix("torch."), tuple(t.shape), offset))
        offset += _aligned(t.numel() * torch.empty((), dtype=out_dtype).element_size())
    return tensors, tuple(entries), offset


@contextmanager
def single_threaded_on_cpu(device: torch.device | str) -> Iterator[None]:
    """Host-to-host weight copies run on one thread: they are bound by memory bandwidth, and on a loaded
    machine torch's threads wait for each other at every tensor (SmolLM2-135M on the busy 2-core CPU:
    packing 0.14-0.34 s with 2 threads, 0.06-0.07 s with 1; the engine's load 0.25 s against 0.07 s)."""
    if torch.device(device).type != "cpu":
        yield
        return
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def _fill(buffer: torch.Tensor, entries: Iterable[Entry], tensors: list[tuple[str, torch.Tensor]]) -> None:
    """Copy (and convert) each tensor into its entry's place in ``buffer``; aliases are written once."""
    with single_threaded_on_cpu(buffer.device):
        written: set[int] = set()
        for entry, (_, t) in zip(entries, tensors, strict=True):
            if entry.offset not in written:
                written.add(entry.offset)
                _view(buffer, entry).copy_(t.reshape(entry.shape))


def pack_weights(
    named: Iterable[tuple[str, torch.Tensor]], *, dtype: torch.dtype | None = None, cuda_ipc: bool = False
) -> tuple[PackedWeights, torch.Tensor]:
    """Copy ``named`` (converted to ``dtype`` when given) into one buffer.

    With ``cuda_ipc`` the buffer is allocated on the tensors' GPU and shared by handle; otherwise it is a
    host array. Returns the packed weights and the buffer, which the caller keeps alive until the engine
    has loaded it (for the host array, Ray copied it into its store already; keeping it costs nothing).
    """
    tensors, entries, nbytes = layout(named, dtype=dtype)
    if not tensors:
        raise ValueError("no weights to pack")
    device = tensors[0][1].device if cuda_ipc else torch.device("cpu")
    if cuda_ipc and device.type != "cuda":
        raise ValueError(f"cuda_ipc needs weights on a GPU, they are on {device}")
    buffer = torch.empty(nbytes, dtype=torch.uint8, device=device)
    _fill(buffer, entries, tensors)
    if cuda_ipc:
        from torch.multiprocessing.reductions import reduce_tensor

        torch.cuda.current_stream(device).synchronize()  # the engine reads it from another process
        packed = PackedWeights(
            entries, nbytes, cuda_ipc=reduce_tensor(buffer), device_uuid=device_uuid(device)
        )
    else:
        packed = PackedWeights(entries, nbytes, host=buffer.numpy())
    return packed, buffer


SHM_DIR = Path("/dev/shm")
SHM_PREFIX = "agentrl-weights-"


class SharedHostBuffer:
    """The trainer's host buffer in shared memory (a file in ``/dev/shm``), refilled in place at every
    sync; engines on the same machine map it once and keep the mapping.

    Through Ray's object store every sync wrote the weights into a new object: pages the store had not
    used yet, faulted in one by one (about 0.5 s for SmolLM2-135M's 0.5 GiB on the 2-core CPU, at the
    first sync of a run and again whenever the store moved on to fresh pages), and mapped anew by the
    engine. Here the pages are faulted in once (the first fill in the trainer, ``MAP_POPULATE`` in the
    engine) and every later sync is two plain copies: into the buffer, then into the engine's weights.

    The next :meth:`pack` overwrites the buffer: the caller waits until every engine has loaded the
    previous weights first (``Run.sync_weights`` does). After the first load :meth:`release` removes the
    file's name: the memory lives as long as a process maps it, so nothing outlives the run, killed or
    not. A file left by a process killed before that is removed by the next buffer made on the machine.
    """

    def __init__(self, entries: tuple[Entry, ...], nbytes: int) -> None:
        remove_stale_buffers()
        self.entries, self.nbytes = entries, nbytes
        self.path: Path | None = SHM_DIR / f"{SHM_PREFIX}{os.getpid()}-{secrets.token_hex(4)}"
        self.name = self.path.name
        fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_RDWR, 0o600)
        try:
            os.ftruncate(fd, nbytes)
            self._mapped: mmap.mmap | None = mmap.mmap(fd, nbytes, flags=mmap.MAP_SHARED)
        finally:
            os.close(fd)
        self._buffer: torch.Tensor | None = torch.from_numpy(np.frombuffer(self._mapped, dtype=np.uint8))

    def pack(self, tensors: list[tuple[str, torch.Tensor]]) -> PackedWeights:
        """Copy ``tensors`` (laid out as :attr:`entries`, see :func:`layout`) into the buffer in place."""
        if self._buffer is None:
            raise ValueError("the shared weight buffer is closed")
        _fill(self._buffer, self.entries, tensors)
        return PackedWeights(self.entries, self.nbytes, shared_name=self.name)

    def release(self) -> None:
        """The engines have mapped the buffer: remove its name (their mappings and ours keep it)."""
        if self.path is not None:
            self.path.unlink(missing_ok=True)
            self.path = None

    def close(self) -> None:
        self.release()
        self._buffer = None  # the last view of the mapping: mmap.close refuses while one lives
        if self._mapped is not None:
            self._mapped.close()
            self._mapped = None


def remove_stale_buffers() -> list[str]:
    """Remove the shared weight buffers of processes that no longer run (killed before their engine
    loaded the first sync); returns their names."""
    removed = []
    for path in SHM_DIR.glob(f"{SHM_PREFIX}*"):
        pid = path.name.removeprefix(SHM_PREFIX).split("-")[0]
        if pid.isdigit() and not Path(f"/proc/{pid}").exists():
            path.unlink(missing_ok=True)
            removed.append(path.name)
    return removed


def pack_shared(
    named: Iterable[tuple[str, torch.Tensor]],
    *,
    dtype: torch.dtype | None = None,
    buffer: SharedHostBuffer | None = None,
) -> tuple[PackedWeights, SharedHostBuffer]:
    """Pack ``named`` into ``buffer`` (reused when its layout is the same, else replaced by a new one);
    returns the record, which names the segment, and the buffer to pass to the next call."""
    tensors, entries, nbytes = layout(named, dtype=dtype)
    if not tensors:
        raise ValueError("no weights to pack")
    if buffer is None or buffer.entries != entries:
        if buffer is not None:
            buffer.close()
        buffer = SharedHostBuffer(entries, nbytes)
    return buffer.pack(tensors), buffer


_MAPPED: dict[str, tuple[mmap.mmap, np.ndarray]] = {}
"""The receiver's mappings of shared buffers, by segment name: mapped (and faulted in) once."""


def _map_shared(name: str, nbytes: int) -> np.ndarray:
    """A read-only uint8 array over the shared segment ``name``; the mapping is kept for the next sync
    (the latest segment only: one the trainer replaced is unmapped once no view of it is left)."""
    if name in _MAPPED and _MAPPED[name][1].nbytes == nbytes:
        return _MAPPED[name][1]
    _MAPPED.clear()
    try:
        fd = os.open(SHM_DIR / name, os.O_RDONLY)
    except FileNotFoundError:
        raise ValueError(
            f"shared weight buffer {name} not found: the trainer runs on another machine or has exited "
            "(weights cross machines through Ray's object store: put_weights)"
        ) from None
    try:  # MAP_POPULATE: the page tables filled in one call, not a fault per page during the copy
        mapped = mmap.mmap(fd, nbytes, flags=mmap.MAP_SHARED | mmap.MAP_POPULATE, prot=mmap.PROT_READ)
    finally:
        os.close(fd)
    array = np.frombuffer(mapped, dtype=np.uint8)
    _MAPPED[name] = (mapped, array)
    return array


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
    if packed.shared_name is not None:
        packed = replace(packed, host=_map_shared(packed.shared_name, packed.nbytes), shared_name=None)
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
