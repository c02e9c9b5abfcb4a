"""Compiling the embedded engine's layer functions: one compile per model, every form warmed up front.

torch.compile compiles a function apart for each "form" of its inputs: a dynamic size that is 1, a view
at storage offset 0, the grad mode, key lengths either side of inductor's matmul-padding threshold.
Past ``recompile_limit`` forms a function silently runs eagerly. :class:`~agentrl.engines.embedded.
cuda_runner.CudaRunner` compiles every form at start-up (:func:`warm_up`, here); this module marks the dynamic
sizes and keeps the limit above the forms there are (docs/engines-gpu.md, "Start-up compiles").
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import torch

if TYPE_CHECKING:
    from agentrl.engines.embedded.cuda_runner import CudaRunner

RECOMPILE_LIMIT = 64
"""Forms one compiled layer function may be compiled for before torch runs it eagerly."""


def compiled(
    fn: Callable[..., Any],
    enabled: bool,
    token_args: tuple[int, ...],
    length_args: dict[int, int | tuple[int, ...]] | None = None,
) -> Callable[..., Any]:
    """``fn`` compiled with a dynamic token count (dim 0 of the ``token_args`` arguments), dynamic
    lengths (dims ``length_args[i]`` of argument ``i``) and every other size static: one compile serves
    every layer, batch size and length bucket of one model, and a model of other sizes gets its own
    kernels (never ones generated for another model's sizes)."""
    if not enabled:
        return fn
    # A function compiled for more forms than the limit (8 by default) runs EAGERLY for every further
    # form, silently: the fused prefill has about a dozen (one/several rows and ids, key lengths either
    # side of inductor's matmul-padding threshold), and on an H200 its commonest form, warmed ninth,
    # fell back to eager and doubled the Search-R1 rollout's prefill time.
    torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit, RECOMPILE_LIMIT)
    compiled_fn = torch.compile(fn, dynamic=False)
    marks = [(i, 0) for i in token_args]
    for i, dims in (length_args or {}).items():
        marks += [(i, d) for d in ((dims,) if isinstance(dims, int) else dims)]

    def call(*args: Any) -> Any:
        for i, dim in marks:
            torch._dynamo.maybe_mark_dynamic(args[i], dim)
        return compiled_fn(*args)

    return call


def warm_up(runner: CudaRunner) -> None:
    """Compile at start-up every form the compiled layer functions take, so that no rollout pays a
    compile (1-5 s each on an H200) mid-run. A compiler compiles a dynamic size apart when it is 1,
    and inductor's matmul padding splits key lengths below and above 64: each prefill path runs for
    one and several rows, one and several new ids, after no, a short and a long cached prefix; then
    the decode graphs of one and two rows are captured (one row is a form of its own too). All of it
    under ``inference_mode``, as the engine's worker runs (grad mode is part of what a compile
    assumes). The slot cache's views never have storage offset 0 (``slot_cache.LEAD``), which would
    be a form of its own for the first layer from row 0. What this replaced warmed the fused prefill
    at rows 0-1 with one or two ids only; ``bench/rollout_search.py`` with ``TORCH_LOGS=recompiles``
    on an H200 then showed the fused prefill compiling in two of six rounds after its warm-up round
    (3.4-3.8 s those rounds against 1.9-2.1 s the others), each for one of the forms above. Writes
    only the KV of rows 0-1, which hold nothing yet."""
    fused = runner.opts.attention == "fused" and runner.opts.prefill_score_bytes > 0
    with torch.inference_mode():
        for sdpa in [True] + ([False] if fused else []):
            for n in (1, 2):
                for t in (1, 3):
                    for cached in (0, 4, 160):
                        _warm_chunk(runner, n, t, cached, sdpa)
        for rows in (1, 2):
            runner.graphs.prepare(rows, runner.graphs.lengths[0], filtered=False)


def _warm_chunk(runner: CudaRunner, n: int, t: int, cached: int, sdpa: bool) -> None:
    """One prefill chunk of rows ``0..n-1``: ``t`` new ids after ``cached`` cached ones."""
    if n > runner.opts.rows or cached + t >= runner.opts.max_len:
        return
    ids = torch.zeros(n, t, dtype=torch.long, device=runner.device)
    pos = (cached + torch.arange(t, device=runner.device)).expand(n, t)
    runner._prefill_chunk(0, ids, pos, from_zero=cached == 0, sdpa=sdpa)
