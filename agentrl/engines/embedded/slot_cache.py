"""The CUDA path's KV memory: one preallocated tensor of fixed-length slots, and a prefix store in it.

Why fixed slots and not paged blocks: a decode step then attends over a plain strided slice
``k[:B, :, :Lb]`` (rows 0..B-1 are the running requests, ``Lb`` a length bucket), which batched
matrix products read at full bandwidth and a CUDA graph can capture with static shapes; no gather
through a block table. The price is memory for each slot's full ``max_len``, which a single GPU
serving a small policy has plenty of. Rows ``[0, rows)`` hold running requests (a leaving row's slot
takes the last row's KV, a short device copy); the slots after them are the prefix store: the KV of
finished turns and of recent prompts, so the next turn of an episode and the other samples of a group
copy their shared prefix (device to device) instead of prefilling it.

The memory is sized like SGLang's ``mem_fraction_static``: weights plus this cache take at most that
fraction of the device's memory; the rest stays for activations and graphs.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass

import torch

from agentrl.engines.embedded.decoder import Spec
from agentrl.engines.embedded.kv_cache import longest_prefix
from agentrl.errors import ConfigError


def slot_bytes(spec: Spec, max_len: int, dtype: torch.dtype) -> int:
    """Bytes of one slot: keys and values of every layer for ``max_len`` tokens."""
    per_token = 2 * spec.layers * spec.kv_heads * spec.head_dim * torch.empty((), dtype=dtype).element_size()
    return per_token * max_len


def plan_slots(
    spec: Spec, dtype: torch.dtype, max_len: int, rows: int, mem_fraction: float, device: torch.device
) -> int:
    """How many slots fit: at least ``rows`` (the running batch); the rest become the prefix store.

    On CUDA: ``mem_fraction`` of the device's memory, less what is in use already (the weights).
    On CPU (tests): the running rows plus as many again.
    """
    per_slot = slot_bytes(spec, max_len, dtype)
    if device.type != "cuda":
        return 2 * rows
    free, total = torch.cuda.mem_get_info(device)
    free += torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device)  # cached by torch: ours
    budget = free - (1.0 - mem_fraction) * total
    slots = int(budget // per_slot)
    if slots < rows:
        raise ConfigError(
            f"KV cache for {rows} rows of {max_len} tokens needs {rows * per_slot / 2**30:.1f} GiB but "
            f"mem_fraction_static={mem_fraction} leaves {max(budget, 0) / 2**30:.1f} GiB: lower "
            "max_batch_size or max_seq_len, or raise mem_fraction_static"
        )
    return slots


LEAD = 128
"""Elements before the cache in its storage (256 bytes in bf16: keeps the alignment kernels want)."""


class SlotCache:
    """``kv``: (layers, 2, slots, Hkv, max_len, D). Slot ``i < rows`` is running row ``i``."""

    def __init__(
        self, spec: Spec, slots: int, max_len: int, dtype: torch.dtype, device: torch.device
    ) -> None:
        shape = (spec.layers, 2, slots, spec.kv_heads, max_len, spec.head_dim)
        # The tensor starts LEAD elements into its storage, so no view of it (a layer, a window of rows)
        # has storage offset 0: a compiler specialises an offset of 0 (or 1), and the first layer's view
        # from row 0 would otherwise be compiled apart from every other layer's (seen on an H200).
        numel = int(torch.Size(shape).numel())
        storage = torch.zeros(numel + LEAD, dtype=dtype, device=device)
        self.kv = storage[LEAD:].view(shape)
        self.max_len = max_len
        self.slots = slots

    def keys(self, layer: int) -> torch.Tensor:
        """(slots, Hkv, max_len, D) view of ``layer``'s keys."""
        return self.kv[layer, 0]

    def values(self, layer: int) -> torch.Tensor:
        return self.kv[layer, 1]

    def copy(self, dst: int, src: int, length: int) -> None:
        """Copy the first ``length`` tokens of slot ``src`` into slot ``dst`` (every layer, one launch)."""
        if length > 0 and dst != src:
            self.kv[:, :, dst, :, :length] = self.kv[:, :, src, :, :length]


@dataclass
class _Stored:
    ids: torch.Tensor  # (T,) int64, on the CPU
    slot: int


class PrefixSlots:
    """Which store slot holds the KV of which token sequence; longest-prefix lookup, LRU eviction."""

    def __init__(self, first: int, count: int) -> None:
        self._free = list(range(first, first + count))
        self._entries: OrderedDict[str, _Stored] = OrderedDict()

    def lookup(self, ids: list[int]) -> tuple[int, int | None]:
        """The longest stored prefix of ``ids`` shorter than ``ids``: its length and slot."""
        if not self._entries:
            return 0, None
        best, best_key = longest_prefix(self._entries, ids)
        if best_key is None:
            return 0, None
        self._entries.move_to_end(best_key)
        return best, self._entries[best_key].slot

    def reserve(self, key: str) -> int | None:
        """A slot to store ``key``'s KV in: its old one, a free one, or the least recently used one."""
        old = self._entries.pop(key, None)
        if old is not None:
            return old.slot
        if self._free:
            return self._free.pop()
        if self._entries:
            return self._entries.popitem(last=False)[1].slot
        return None

    def commit(self, key: str, ids: list[int], slot: int) -> None:
        """Record that ``slot`` now holds the KV of exactly ``ids``."""
        self._entries[key] = _Stored(torch.tensor(ids), slot)

    def clear(self) -> None:
        self._free.extend(e.slot for e in self._entries.values())
        self._entries.clear()
