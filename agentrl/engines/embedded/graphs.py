"""CUDA graphs of the decode step, one per (batch bucket, length bucket, top-k/top-p on or off).

Why buckets: a graph replays fixed shapes. Rounding the running batch up to a bucket (idle rows
compute garbage nobody reads) and the longest row's length up to a bucket (multiples of 128 up to 1024, then powers
of two) keeps the number of graphs small while attention reads few columns it does not need. Graphs are captured lazily,
the first time a bucket is needed; they share one memory pool, since they never run at once.

A capture first runs the step once eagerly (to compile and to let the allocators settle), which
advances the step's own counters; the buffers ``state()`` names are saved before and restored after,
so the warm-up leaves no trace (its KV writes are repeated identically by the real step).
"""

from __future__ import annotations

import bisect
from collections.abc import Callable
from typing import Any

import torch

BodyFn = Callable[[int, int, bool], None]
"""``body(batch, length, filtered)``: one decode step over rows ``0..batch-1`` and ``length`` keys."""


def batch_buckets(rows: int) -> list[int]:
    """1, 2, 4, 8, 16, 32, 48, 64, then steps of 32: at most a third of a step is padding past 8."""
    small = [1, 2, 4, 8, 16, 24, 32, 48, 64, 80, 96, 112, 128]
    buckets = [b for b in small if b < rows] + list(range(160, rows, 32))
    return sorted({*buckets, rows})


def length_buckets(max_len: int, step: int = 128, linear_until: int = 1024) -> list[int]:
    """Multiples of ``step`` up to ``linear_until``, then powers of two, and ``max_len`` itself: a
    short row's attention reads at most ``step`` columns it does not need (a 384-id row reads 384,
    not 512), a long one at most twice its length."""
    out = list(range(step, min(linear_until, max_len - 1) + 1, step))
    n = 2 * linear_until
    while n < max_len:
        out.append(n)
        n *= 2
    return sorted({*out, max_len})


class DecodeGraphs:
    """Runs decode steps through captured graphs (CUDA) or eagerly (CPU, or ``enabled=False``)."""

    def __init__(
        self, body: BodyFn, state: Callable[[], list[torch.Tensor]], rows: int, max_len: int, *, enabled: bool
    ) -> None:
        self.body, self.state, self.enabled = body, state, enabled
        self.batches, self.lengths = batch_buckets(rows), length_buckets(max_len)
        self._graphs: dict[tuple[int, int, bool], torch.cuda.CUDAGraph] = {}
        self._pool: Any = None
        self.captures = 0

    def bucket(self, batch: int, length: int) -> tuple[int, int]:
        """The smallest (batch, length) buckets holding ``batch`` rows and ``length`` keys."""
        b = self.batches[bisect.bisect_left(self.batches, batch)]
        n = self.lengths[bisect.bisect_left(self.lengths, length)]
        return b, n

    def prepare(self, batch: int, length: int, filtered: bool) -> None:
        """Capture the graph of this (batch, length) bucket now, if graphs are on and it has none yet
        (start-up: the compiles a capture runs are paid before any request waits on them)."""
        key = (*self.bucket(batch, length), filtered)
        if self.enabled and key not in self._graphs:
            self._graphs[key] = self._capture(*key)

    def run(self, batch: int, length: int, filtered: bool) -> None:
        """One decode step of ``batch`` rows whose longest needs ``length`` keys."""
        if not self.enabled:
            self.body(batch, length, filtered)
            return
        key = (*self.bucket(batch, length), filtered)
        graph = self._graphs.get(key)
        if graph is None:
            graph = self._graphs[key] = self._capture(*key)
        graph.replay()

    def _capture(self, batch: int, length: int, filtered: bool) -> torch.cuda.CUDAGraph:
        saved = [t.clone() for t in self.state()]
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            self.body(batch, length, filtered)
        torch.cuda.current_stream().wait_stream(side)
        for t, s in zip(self.state(), saved, strict=True):
            t.copy_(s)
        if self._pool is None:
            self._pool = torch.cuda.graph_pool_handle()
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, pool=self._pool, capture_error_mode="thread_local"):
            self.body(batch, length, filtered)
        self.captures += 1
        return graph
