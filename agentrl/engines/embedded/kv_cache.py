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
from collections.abc import Mapping
from dataclasses import dataclass
from functools import partial
from typing import Any

import torch
from transformers import DynamicCache
from transformers.cache_utils import DynamicLayer

KV = list[tuple[torch.Tensor, torch.Tensor]]
"""One ``(keys, values)`` pair per model layer, each ``(B, H, T, D)``."""


class GrowingLayer(DynamicLayer):
    """A cache layer over a buffer with spare room on the right (and spare rows): appends write in
    place. The model sees ``keys``/``values``: the first ``rows`` rows and ``length`` columns."""

    def __init__(self, keys: torch.Tensor | None = None, values: torch.Tensor | None = None, spare: int = 64):
        super().__init__()
        self.spare = spare
        self.length = 0
        self.rows = 0
        self.buf_k: torch.Tensor | None = None
        self.buf_v: torch.Tensor | None = None
        if keys is not None and values is not None:
            self.rows = keys.shape[0]
            self.allocate(keys, keys.shape[0], keys.shape[-2] + spare)
            self._write(keys, values)

    def allocate(self, like: torch.Tensor, rows: int, columns: int) -> None:
        """New zeroed buffers of ``rows`` x ``columns`` (shaped like ``like``), keeping what is held."""
        _, h, _, d = like.shape
        new_k, new_v = like.new_zeros((rows, h, columns, d)), like.new_zeros((rows, h, columns, d))
        if self.buf_k is not None and self.buf_v is not None:
            new_k[: self.rows, :, : self.length] = self.buf_k[: self.rows, :, : self.length]
            new_v[: self.rows, :, : self.length] = self.buf_v[: self.rows, :, : self.length]
        self.buf_k, self.buf_v = new_k, new_v
        self.is_initialized = True
        self.device = like.device

    def expose(self) -> None:
        """Point ``keys``/``values`` at the filled part of the buffers."""
        assert self.buf_k is not None and self.buf_v is not None
        self.keys = self.buf_k[: self.rows, :, : self.length]
        self.values = self.buf_v[: self.rows, :, : self.length]

    def _write(self, keys: torch.Tensor, values: torch.Tensor) -> None:
        n = keys.shape[-2]
        if self.buf_k is None:
            self.rows = keys.shape[0]
        if self.buf_k is None or self.length + n > self.buf_k.shape[-2]:
            rows = keys.shape[0] if self.buf_k is None else self.buf_k.shape[0]
            self.allocate(keys, rows, max(2 * self.length, self.length + n + self.spare))
        assert self.buf_k is not None and self.buf_v is not None
        self.buf_k[: self.rows, :, self.length : self.length + n] = keys
        self.buf_v[: self.rows, :, self.length : self.length + n] = values
        self.length += n
        self.expose()

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
    """Rows decoded together; row ``i`` holds its last ``lengths[i]`` of the ``width`` columns.

    Joining and leaving touch only the rows concerned (a row moves into a free slot; a leaving row's
    slot takes the last row), except when a row is wider than the batch or the slots run out: then
    all rows are copied once, with ``margin`` spare columns on the left so that the next slightly
    longer rows (the other episodes' next turns) fit without another copy.
    """

    def __init__(self, spare: int = 64, margin: int = 32) -> None:
        self.spare, self.margin = spare, margin
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

    def add(self, rows: list[KV]) -> None:
        """Append rows (``kv`` tensors of batch size 1, all their columns valid), in this order."""
        if not rows:
            return
        widest = max(kv[0][0].shape[-2] for kv in rows)
        count = len(self) + len(rows)
        if not self.layers or widest > self.width or count > self._slots():
            # A quarter of spare slots when they run out, not double (32 Search episodes of ~800 ids then
            # held 64 rows of KV, 2.4 GiB for SmolLM2-135M in fp32); a wider row alone keeps the slots.
            slots = self._slots() if count <= self._slots() else count + max(4, count // 4)
            self._reshape(slots, max(self.width, widest + self.margin), rows[0])
        for kv in rows:
            n, slot = kv[0][0].shape[-2], len(self.lengths)
            for layer, (k, v) in zip(self.layers, kv, strict=True):
                assert layer.buf_k is not None and layer.buf_v is not None
                layer.buf_k[slot, :, : self.width - n] = 0
                layer.buf_v[slot, :, : self.width - n] = 0
                layer.buf_k[slot, :, self.width - n : self.width] = k[0]
                layer.buf_v[slot, :, self.width - n : self.width] = v[0]
                layer.rows = slot + 1
                layer.expose()
            self.lengths.append(n)

    def remove(self, rows: list[int]) -> list[int]:
        """Drop ``rows``; the last rows move into their slots. Returns the old index of each row now
        held, in order. Copies all rows only when a quarter of the columns became padding."""
        gone = set(rows)
        left = len(self) - len(gone)
        holes = [i for i in sorted(gone) if i < left]
        movers = [i for i in range(left, len(self)) if i not in gone]
        order = list(range(left))
        for hole, mover in zip(holes, movers, strict=True):
            order[hole] = mover
            for layer in self.layers:
                assert layer.buf_k is not None and layer.buf_v is not None
                layer.buf_k[hole, :, : self.width] = layer.buf_k[mover, :, : self.width]
                layer.buf_v[hole, :, : self.width] = layer.buf_v[mover, :, : self.width]
        self.lengths = [self.lengths[i] for i in order]
        for layer in self.layers:
            layer.rows = left
            layer.expose()
        if not left:
            self.layers, self.width = [], 0
        elif (self.width - max(self.lengths)) >= max(2 * self.margin, self.width // 4):
            self._reshape(self._slots(), max(self.lengths) + self.margin, self.row(0))
        return order

    def _slots(self) -> int:
        buf = self.layers[0].buf_k if self.layers else None
        return 0 if buf is None else buf.shape[0]

    def _reshape(self, slots: int, width: int, template: KV) -> None:
        """Copy into new buffers of ``slots`` rows and ``width`` (+ spare) columns, right-aligned."""
        layers = []
        for i, (k, _) in enumerate(template):
            layer = GrowingLayer(spare=self.spare)
            layer.allocate(k, slots, width + self.spare)
            if self.layers:
                old = self.layers[i]
                assert old.keys is not None and old.values is not None and layer.buf_k is not None
                assert layer.buf_v is not None
                kept = min(self.width, width)
                layer.buf_k[: len(self), :, width - kept : width] = old.keys[:, :, self.width - kept :]
                layer.buf_v[: len(self), :, width - kept : width] = old.values[:, :, self.width - kept :]
            layer.rows, layer.length = len(self), width
            layer.expose()
            layers.append(layer)
        self.layers, self.width = layers, width

    def row(self, i: int) -> KV:
        """A copy of row ``i``'s valid columns, batch size 1."""
        start = self.width - self.lengths[i]
        kv = []
        for layer in self.layers:
            assert layer.keys is not None and layer.values is not None
            kv.append((layer.keys[i : i + 1, :, start:].clone(), layer.values[i : i + 1, :, start:].clone()))
        return kv


@dataclass
class _Entry:
    ids: torch.Tensor  # (T,) int64
    kv: KV
    nbytes: int


def longest_prefix(entries: Mapping[str, Any], ids: list[int]) -> tuple[int, str | None]:
    """The entry (by key) whose ``ids`` share the longest prefix with ``ids``, leaving at least one id of
    ``ids`` to feed the model; ``(0, None)`` when none shares any."""
    query = torch.tensor(ids)
    best, best_key = 0, None
    for key, entry in entries.items():
        m = min(len(entry.ids), len(ids) - 1)
        differ = (entry.ids[:m] != query[:m]).nonzero()
        n = int(differ[0]) if len(differ) else m
        if n > best:
            best, best_key = n, key
    return best, best_key


class PrefixStore:
    """KV of recent token sequences, found by longest common prefix, evicted least recently used."""

    def __init__(self, budget_bytes: int) -> None:
        self.budget = budget_bytes
        self._entries: OrderedDict[str, _Entry] = OrderedDict()
        self._bytes = 0

    def lookup(self, ids: list[int]) -> tuple[int, KV | None]:
        """The longest stored prefix of ``ids`` shorter than ``ids``: its length and KV (views)."""
        best, best_key = longest_prefix(self._entries, ids)
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
