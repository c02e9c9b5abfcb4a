"""Compiling the embedded engine's layer functions: one compile per model, every form warmed up front.

torch.compile compiles a function apart for each "form" of its inputs: a dynamic size that is 1, a view
at storage offset 0, the grad mode, key lengths either side of inductor's matmul-padding threshold.
Past ``recompile_limit`` forms a function silently runs eagerly. :class:`~agentrl.engines.embedded.
cuda_runner.CudaRunner` compiles every form at start-up (``warm_up``); this module marks the dynamic
sizes and keeps the limit above the forms there are (docs/engines-gpu.md, "Start-up compiles").
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

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
