"""Per-rank state of the Megatron backend's models: optimizer state for checkpoints, and results and
metrics merged over pipeline and data-parallel ranks (shared by the policy and the critic)."""

from __future__ import annotations

from typing import Any

import torch
import torch.distributed as dist
from megatron.core import parallel_state

from agentrl.trainer.step_metrics import StepMetrics, finish_totals, merge_totals


def optimizer_states(optimizer: Any) -> list[dict[str, Any]]:
    """This rank's state of every (chained) Megatron optimizer: inner torch state and fp32 main params."""
    return [_torch_optimizer_state(o) for o in _optimizers(optimizer)]


def load_optimizer_states(optimizer: Any, states: list[dict[str, Any]]) -> None:
    """Undo :func:`optimizer_states` (same parallel layout)."""
    for o, sd in zip(_optimizers(optimizer), states, strict=True):
        _load_torch_optimizer_state(o, sd)


def _optimizers(optimizer: Any) -> list[Any]:
    return list(getattr(optimizer, "chained_optimizers", [optimizer]))


def _torch_optimizer_state(opt: Any) -> dict[str, Any]:
    """The inner torch optimizer's state and its fp32 main parameters (this rank's shard)."""
    inner = opt.optimizer
    main = [p.detach().clone() for g in inner.param_groups for p in g["params"]]
    return {"inner": inner.state_dict(), "main_params": main}


def _load_torch_optimizer_state(opt: Any, state: dict[str, Any]) -> None:
    inner = opt.optimizer
    params = [p for g in inner.param_groups for p in g["params"]]
    with torch.no_grad():
        for p, saved in zip(params, state["main_params"], strict=True):
            p.copy_(saved)
    inner.load_state_dict(state["inner"])


def share(results: dict[int, torch.Tensor]) -> dict[int, torch.Tensor]:
    """Merge per-rank results: from the last pipeline stage to all stages, then across DP ranks."""
    if dist.get_world_size() == 1:
        return results
    box = [results]
    pp_group = parallel_state.get_pipeline_model_parallel_group()
    last = dist.get_global_rank(pp_group, dist.get_world_size(pp_group) - 1)
    dist.broadcast_object_list(box, src=last, group=pp_group)
    parts: list[dict[int, torch.Tensor]] = [{} for _ in range(parallel_state.get_data_parallel_world_size())]
    dist.all_gather_object(parts, box[0], group=parallel_state.get_data_parallel_group())
    return {k: v for part in parts for k, v in part.items()}


def reduce_metrics(outputs: list[dict[str, Any]]) -> dict[str, float]:
    """The step's metrics, the same on every rank.

    Combined as :mod:`agentrl.trainer.step_metrics` says: ``loss`` (and ``pg_loss``) add up, since each
    micro-batch's term is already normalised by whole-batch denominators; max/min metrics take the
    max/min; the others are means weighted by trained tokens. The micro-batches' device tensors are
    read in one host copy; the totals go from the last pipeline stage to all stages, then are merged
    across data-parallel ranks (each holds a share of the batch).
    """
    acc = StepMetrics()
    for o in outputs:
        values = {k: v for k, v in o.items() if k != "_tokens"}
        acc.add(values, float(o.get("_tokens", 0.0)))
    totals = acc.totals()
    if dist.get_world_size() > 1:
        box: list[Any] = [totals]
        pp_group = parallel_state.get_pipeline_model_parallel_group()
        last = dist.get_global_rank(pp_group, dist.get_world_size(pp_group) - 1)
        dist.broadcast_object_list(box, src=last, group=pp_group)
        parts: list[Any] = [None] * parallel_state.get_data_parallel_world_size()
        dist.all_gather_object(parts, box[0], group=parallel_state.get_data_parallel_group())
        totals = merge_totals(parts)
    return finish_totals(totals)
