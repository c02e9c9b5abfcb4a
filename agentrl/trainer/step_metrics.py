"""Combining the metrics of a train step's micro-batches (and data-parallel ranks) without host syncs.

The loss functions return their metrics as 0-dim tensors on the accelerator. Turning each into a
Python float as it is made (``.item()``) stalls the host until the GPU catches up, several times per
micro-batch; :class:`StepMetrics` keeps them as tensors until the step is over and then copies all of
them to the host at once (one synchronisation per step).

How a metric combines follows its name: ``*_max`` / ``*_min`` take the max / min (NaN values, from
micro-batches with no trained token, are ignored); :data:`SUMMED` ones add up (each micro-batch's value
is already its share of the batch total); every other one is a mean weighted by the micro-batch's
trained tokens.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import torch

SUMMED = frozenset({"loss", "pg_loss", "vf_loss"})
"""Metrics whose micro-batch values are shares of a whole-batch total (normalised by global denominators)."""

Number = torch.Tensor | float
Totals = dict[str, tuple[float, float]]
"""Per metric: (combined value so far, total weight); for means the value is the weighted *sum*."""


def kind_of(name: str) -> str:
    """``"max"``, ``"min"``, ``"sum"`` or ``"mean"``: how the metric ``name`` combines."""
    if name.endswith("_max"):
        return "max"
    if name.endswith("_min"):
        return "min"
    return "sum" if name in SUMMED else "mean"


def to_floats(values: Sequence[Number]) -> list[float]:
    """Python floats of ``values``; the tensors among them are copied to the host in one go per device."""
    out: list[float] = [0.0] * len(values)
    by_device: dict[torch.device, list[int]] = {}
    for i, v in enumerate(values):
        if isinstance(v, torch.Tensor):
            by_device.setdefault(v.device, []).append(i)
        else:
            out[i] = float(v)
    for indices in by_device.values():
        stacked = torch.stack([values[i].detach().reshape(()).float() for i in indices])  # type: ignore[union-attr]
        for i, value in zip(indices, stacked.tolist(), strict=True):
            out[i] = value
    return out


def _fold(kind: str, acc: tuple[float, float] | None, value: float, weight: float) -> tuple[float, float]:
    """Fold one (value, weight) into a running (value, weight) of a metric of ``kind``."""
    if kind in ("max", "min"):
        if math.isnan(value):
            return acc if acc is not None else (math.nan, 0.0)
        if acc is None or math.isnan(acc[0]):
            return value, weight
        pick = max if kind == "max" else min
        return pick(acc[0], value), acc[1] + weight
    if kind == "sum":
        return (acc[0] if acc else 0.0) + value, (acc[1] if acc else 0.0) + weight
    return (acc[0] if acc else 0.0) + value * weight, (acc[1] if acc else 0.0) + weight


class StepMetrics:
    """Collects per-micro-batch metric dicts (tensors or floats) with their token weights."""

    def __init__(self) -> None:
        self._items: list[tuple[Mapping[str, Number], Number]] = []

    def add(self, metrics: Mapping[str, Number], weight: Number) -> None:
        """Record one micro-batch's ``metrics``; ``weight`` is its number of trained tokens."""
        if metrics:
            self._items.append((metrics, weight))

    def totals(self) -> Totals:
        """Per metric (value, weight) after one host copy: max/min values, sums, or weighted sums for means
        (divide by the weight, or merge with other ranks' totals through :func:`merge_totals` first)."""
        flat: list[Number] = []
        for metrics, weight in self._items:
            flat.append(weight)
            flat.extend(metrics.values())
        host = iter(to_floats(flat))
        totals: dict[str, tuple[float, float]] = {}
        for metrics, _ in self._items:
            weight = next(host)
            for name in metrics:
                totals[name] = _fold(kind_of(name), totals.get(name), next(host), weight)
        return totals

    def result(self) -> dict[str, float]:
        """The combined metrics of this process's micro-batches."""
        return finish_totals(self.totals())


def merge_totals(parts: Sequence[Totals]) -> Totals:
    """Combine the :meth:`StepMetrics.totals` of several ranks (each with its share of the batch)."""
    merged: dict[str, tuple[float, float]] = {}
    for part in parts:
        for name, (value, weight) in part.items():
            kind = kind_of(name)  # a mean's value is already a weighted sum: it merges as a sum
            merged[name] = _fold("sum" if kind == "mean" else kind, merged.get(name), value, weight)
    return merged


def finish_totals(totals: Totals) -> dict[str, Any]:
    """Final values: weighted sums divided by their weights; max/min/sums as they are."""
    return {
        name: (value / weight if weight > 0 else math.nan) if kind_of(name) == "mean" else value
        for name, (value, weight) in totals.items()
    }


def combine_steps(steps: Sequence[Mapping[str, float]]) -> dict[str, float]:
    """The metrics of several optimizer steps (one rollout's ``steps_per_rollout``) as one record:
    ``*_max`` / ``*_min`` the max / min over the steps (NaN ignored), every other metric the mean over
    the steps that report it (a step's loss is already its batch's total, so losses are averaged too)."""
    totals: dict[str, tuple[float, float]] = {}
    for metrics in steps:
        for name, value in metrics.items():
            kind = kind_of(name)
            totals[name] = _fold(
                kind if kind in ("max", "min") else "mean", totals.get(name), float(value), 1.0
            )
    return {
        name: value if kind_of(name) in ("max", "min") else value / weight
        for name, (value, weight) in totals.items()
    }
