"""Host-to-device copies that do not stall the host.

A plain ``tensor.to("cuda")`` from ordinary (pageable) host memory waits for the GPU to finish the work
already queued before it can copy: one hidden synchronisation per call, several per micro-batch. A copy
from page-locked memory with ``non_blocking=True`` is queued like a kernel instead; PyTorch's pinned
allocator keeps the source alive until the copy has run.
"""

from __future__ import annotations

import torch


def to_device(tensor: torch.Tensor, device: torch.device | str | int) -> torch.Tensor:
    """``tensor`` on ``device``; CPU tensors bound for a CUDA device go through pinned memory, queued."""
    target = torch.device("cuda", device) if isinstance(device, int) else torch.device(device)
    if target.type != "cuda" or tensor.device.type != "cpu":
        return tensor.to(target)
    source = tensor if tensor.is_pinned() else tensor.pin_memory()
    return source.to(target, non_blocking=True)
