"""Micro-batches of the plain-torch models (policy, reference, critic): token-budget groups, right-padded."""

from __future__ import annotations

import torch
from torch.nn.utils.rnn import pad_sequence

from agentrl.trainer.device_copy import to_device


def plan_micro_batches(lengths: list[int], token_budget: int) -> list[list[int]]:
    """Group sequence indices so that (longest length x count) <= ``token_budget`` per group.

    Longest first, so each group's padding is small; a sequence over the budget gets its own group.
    Deterministic: ties keep the input order.
    """
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    groups: list[list[int]] = []
    for i in order:
        if groups and lengths[groups[-1][0]] * (len(groups[-1]) + 1) <= token_budget:
            groups[-1].append(i)
        else:
            groups.append([i])
    return groups


def pad_right(tensors: list[torch.Tensor], device: torch.device, value: float = 0.0) -> torch.Tensor:
    """(B, T_max) on ``device``: the tensors right-padded with ``value``."""
    return to_device(pad_sequence(tensors, batch_first=True, padding_value=value), device)
