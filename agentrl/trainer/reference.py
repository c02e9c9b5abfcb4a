"""The frozen reference model of the KL term, and where its weights wait between uses (both backends).

The Megatron backend builds the reference as a second set of model chunks with the policy's layout
(the same TP / PP / virtual-pipeline shards, so the same packed forward and chunked logprob head run
on it), loaded from the initial policy's HF folder or ``algorithm.ref_model``; the torch backend, as
one HF model. It is never trained: no DDP wrapper, no gradients, no optimizer state, so it costs its
weights only (Megatron: 2 bytes a parameter against the policy's 18 with fp32 main weights and Adam).

Where GPU memory is short those weights wait in pinned host memory: :meth:`ReferenceModel.resident`
copies them in for one reference pass and afterwards drops the GPU copy without copying back, since
they never change. Plain torch, so its logic is tested on CPU.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch

OFFLOAD_FRACTION = 0.1
"""``ref_offload="auto"`` keeps the reference on the host when its weights exceed this share of the
GPU memory free once the policy (and, on Megatron, its optimizer) is built."""


def should_offload(mode: str, weight_bytes: int, free_bytes: int) -> bool:
    """The ``ref_offload`` decision: ``always``, ``never``, or ``auto`` by :data:`OFFLOAD_FRACTION`."""
    if mode == "auto":
        return weight_bytes > OFFLOAD_FRACTION * free_bytes
    return mode == "always"


class ReferenceModel:
    """Frozen model chunks; with ``offload`` their parameters live on the host between passes."""

    def __init__(self, chunks: list[torch.nn.Module], *, offload: bool) -> None:
        self.chunks = chunks
        for chunk in chunks:
            chunk.eval().requires_grad_(False)
        self.offload = offload
        self._params = [p for chunk in chunks for p in chunk.parameters()]
        self.weight_bytes = sum(p.numel() * p.element_size() for p in self._params)
        self._device = self._params[0].device if self._params else torch.device("cpu")
        self._host: list[torch.Tensor] = []
        if offload:
            pin = torch.cuda.is_available()
            self._host = [
                p.detach().to("cpu").pin_memory() if pin else p.detach().clone() for p in self._params
            ]
            self._release()

    def _release(self) -> None:
        """Drop the device copies (the allocator reuses the memory, stream-ordered)."""
        for p in self._params:
            p.data = torch.empty(0, dtype=p.dtype, device=self._device)

    @contextmanager
    def resident(self) -> Iterator[list[torch.nn.Module]]:
        """The chunks with their weights on the device for the duration of the ``with`` block."""
        if self.offload:
            for p, host in zip(self._params, self._host, strict=True):
                p.data = host.to(self._device, non_blocking=True)
        try:
            yield self.chunks
        finally:
            if self.offload:
                self._release()
