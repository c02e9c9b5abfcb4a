"""KV caches of the embedded engine: a growable cache layer, the running decode batch, a prefix store.

Why: transformers' ``DynamicLayer`` appends each decoded token with ``torch.cat``, copying the whole
cache of every layer at every step (hundreds of MB per step at batch 16 and a thousand tokens);
:class:`GrowingLayer` writes into spare room instead. :class:`DecodeBatch` holds the rows being decoded
together, right-aligned (left-padded) so that one decode step appends one column for all rows, and
lets rows join (continuous batching) and leave at any step. :class:`PrefixStore` keeps the KV of
finished prompts and turns, so the next turn of an episode (whose ids extend the previous turn's) and
the other samples of a group (same prompt) prefill only the ids the store does not already cover.

Layout of every KV tensor: ``(B, H, T, D)`` — batch, KV heads, tokens, head dim.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
from functools import partial

import torch
from transformers import DynamicCache
from transformers.cache_utils import DynamicLayer

KV = list[tuple[torch.Tensor, torch.Tensor]]
"""One ``(keys, values)`` pair per model layer, each ``(B, H, T, D)``."""


class GrowingLayer(DynamicLayer):
    """A cache layer over a buffer with spare room on the right: appends write in place."""

    def __init__(self, keys: torch.Tensor | None = None, values: torch.Tensor | None = None, spare: int = 64):
        super().__init__()
        self.spare = spare
        self.length = 0
        self.buf_k: torch.Tensor | None = None
        self.buf_v: torch.Tensor | None = None
        if keys is not None and values is not None:
            self._allocate(keys, keys.shape[-2] + spare)
            self._write(keys, values)

    def _allocate(self, like: torch.Tensor, capacity: int) -> None:
        b, h, _, d = like.shape
        new_k = like.new_zeros((b, h, capacity, d))
        new_v = like.new_zeros((b, h, capacity, d))
        if self.buf_k is not None and self.buf_v is not None:
            new_k[:, :, : self.length] = self.buf_k[:, :, : self.length]
            new_v[:, :, : self.length] = self.buf_v[:, :, : self.length]
        self.buf_k, self.buf_v = new_k, new_v
        self.is_initialized = True
        self.device = like.device

    def _write(self, keys: torch.Tensor, values: torch.Tensor) -> None:
        n = keys.shape[-2]
        if self.buf_k is None or self.length + n > self.buf_k.shape[-2]:
            self._allocate(keys, max(2 * self.length, self.length + n + self.spare))
        assert self.buf_k is not None and self.buf_v is not None
        self.buf_k[:, :, self.length : self.length + n] = keys
        self.buf_v[:, :, self.length : self.length + n] = values
        self.length += n
        self.keys = self.buf_k[:, :, : self.length]
        self.values = self.buf_v[:, :, : self.length]

    def update(
        self, key_states: torch.Tensor, value_states: torch.Tensor, *args: object, **kwargs: object
    ) -> tuple[torch.Tensor, torch.Tensor]:
        self._write(key_states, value_states)
        assert self.keys is not None and self.values is not None
        return self.keys, self.values


def make_cache(layers: list[GrowingLayer]) -> DynamicCache:
    """A ``DynamicCache`` whose layers are ``layers`` (the model appends to them in place); with no
    layers, it creates exact-size ``GrowingLayer`` s on the first forward."""
    cache = DynamicCache()
    cache.layers = list(layers)
    if not layers:
        cache.layer_class_to_replicate = partial(GrowingLayer, spare=0)  # type: ignore[assignment]
    return cache


def cache_kv(cache: DynamicCache) -> KV:
    """The filled part of each layer of ``cache`` (views, not copies)."""
    kv = []
    for layer in cache.layers:
        assert isinstance(layer, GrowingLayer) and layer.keys is not None and layer.values is not None
        kv.append((layer.keys, layer.values))
    return kv


class DecodeBatch:
    """Rows decoded together; row ``i`` holds its last ``lengths[i]`` columns of the ``width`` columns."""

    def __init__(self, spare: int = 64) -> None:
        self.spare = spare
        self.layers: list[GrowingLayer] = []
        self.lengths: list[int] = []
        self.width = 0

    def __len__(self) -> int:
        return len(self.lengths)

    def cache(self) -> DynamicCache:
        return make_cache(self.layers)

    def step_inputs(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Attention mask ``(B, width + 1)`` and position ids ``(B, 1)`` of one decode step."""
        lengths = torch.tensor(self.lengths)  # (B,)
        columns = torch.arange(self.width + 1)  # (W + 1,)
        mask = (columns.unsqueeze(0) >= (self.width - lengths).unsqueeze(1)).long()  # (B, W + 1)
        return mask, lengths.unsqueeze(1)

    def stepped(self) -> None:
        """Record that the model appended one column to every row."""
        self.lengths = [n + 1 for n in self.lengths]
        self.width += 1

    def add(self, kv: KV) -> None:
        """Append one row (``kv`` tensors of batch size 1, all their columns valid)."""
        n = kv[0][0].shape[-2]
        width = max(self.width, n)
        layers = []
        for i, (k, v) in enumerate(kv):
            old = self.layers[i] if self.layers else None
            layers.append(self._merged(old, k, v, width))
        self.layers = layers
        self.lengths.append(n)
        self.width = width

    def _merged(self, old: GrowingLayer | None, k: torch.Tensor, v: torch.Tensor, width: int) -> GrowingLayer:
        rows = 1 + (len(self.lengths) if old is not None else 0)
        layer = GrowingLayer(spare=self.spare)
        layer._allocate(k.new_zeros((rows, k.shape[1], 0, k.shape[3])), width + self.spare)
        assert layer.buf_k is not None and layer.buf_v is not None
        if old is not None and old.buf_k is not None and old.buf_v is not None:
            shift = width - self.width
            layer.buf_k[:-1, :, shift:width] = old.buf_k[:, :, : self.width]
            layer.buf_v[:-1, :, shift:width] = old.buf_v[:, :, : self.width]
        n = k.shape[-2]
        layer.buf_k[-1:, :, width - n : width] = k
        layer.buf_v[-1:, :, width - n : width] = v
        layer.length = width
        layer.keys, layer.values = layer.buf_k[:, :, :width], layer.buf_v[:, :, :width]
        return layer

    def row(self, i: int) -> KV:
        """A copy of row ``i``'s valid columns, batch size 1."""
        start = self.width - self.lengths[i]
        kv = []
        for layer in self.layers:
            assert layer.keys is not None and layer.values is not None
            kv.append((layer.keys[i : i + 1, :, start:].clone(), layer.values[i : i + 1, :, start:].clone()))
        return kv

    def keep(self, rows: list[int]) -> None:
        """Keep only ``rows`` (in this order) and drop columns that are padding in all of them."""
        if not rows:
            self.layers, self.lengths, self.width = [], [], 0
            return
        lengths = [self.lengths[i] for i in rows]
        start = self.width - max(lengths)
        index = torch.tensor(rows)
        layers = []
        for old in self.layers:
            assert old.keys is not None and old.values is not None
            layer = GrowingLayer(old.keys[index, :, start:], old.values[index, :, start:], spare=self.spare)
            layers.append(layer)
        self.layers, self.lengths, self.width = layers, lengths, self.width - start


@dataclass
class _Entry:
    ids: torch.Tensor  # (T,) int64
    kv: KV
    nbytes: int


class PrefixStore:
    """KV of recent token sequences, found by longest common prefix, evicted least recently used."""

    def __init__(self, budget_bytes: int) -> None:
        self.budget = budget_bytes
        self._entries: OrderedDict[str, _Entry] = OrderedDict()
        self._bytes = 0

    def lookup(self, ids: list[int]) -> tuple[int, KV | None]:
        """The longest stored prefix of ``ids`` shorter than ``ids``: its length and KV (views)."""
        query = torch.tensor(ids)
        best, best_key = 0, None
        for key, entry in self._entries.items():
            m = min(len(entry.ids), len(ids) - 1)  # at least one id left to feed the model
            differ = (entry.ids[:m] != query[:m]).nonzero()
            n = int(differ[0]) if len(differ) else m
            if n > best:
                best, best_key = n, key
        if best_key is None:
            return 0, None
        self._entries.move_to_end(best_key)
        kv = self._entries[best_key].kv
        return best, [(k[:, :, :best], v[:, :, :best]) for k, v in kv]

    def store(self, key: str, ids: list[int], kv: KV) -> None:
        """Keep ``kv`` (of exactly ``ids``) under ``key``, replacing what ``key`` held."""
        self.drop(key)
        nbytes = sum(k.nbytes + v.nbytes for k, v in kv)
        if nbytes > self.budget:
            return
        self._entries[key] = _Entry(torch.tensor(ids), kv, nbytes)
        self._bytes += nbytes
        while self._bytes > self.budget:
            _, old = self._entries.popitem(last=False)
            self._bytes -= old.nbytes

    def drop(self, key: str) -> None:
        old = self._entries.pop(key, None)
        if old is not None:
            self._bytes -= old.nbytes

    def clear(self) -> None:
        self._entries.clear()
        self._bytes = 0
