"""Weights handed from a trainer process to an engine process on the same GPU by CUDA IPC
(agentrl/engines/packed_weights.py): exact in the engine's dtype, in another process, and fast."""

from __future__ import annotations

import json
import os
import pickle
import time

import pytest
import torch
import torch.multiprocessing as mp

from agentrl.engines.packed_weights import pack_weights, unpack_weights

pytestmark = pytest.mark.gpu

SHAPES = {"embed.weight": (49152, 576), "layers.0.mlp.weight": (1536, 576), "norm.weight": (576,)}
"""SmolLM2-135M's largest tensor (the tied embedding), an MLP matrix and a norm."""


def _weights(device: str) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return {name: torch.randn(shape, generator=g).to(device) for name, shape in SHAPES.items()}


def _trainer(queue: mp.Queue, done: mp.Event) -> None:
    weights = _weights("cuda")
    start = time.perf_counter()
    packed, keep = pack_weights(weights.items(), dtype=torch.bfloat16, cuda_ipc=True)
    queue.put((pickle.dumps(packed), time.perf_counter() - start))
    done.wait(120)  # the buffer must outlive the engine's copy
    del keep


def test_cuda_ipc_hands_weights_to_another_process_exactly() -> None:
    ctx = mp.get_context("spawn")
    queue, done = ctx.Queue(), ctx.Event()
    proc = ctx.Process(target=_trainer, args=(queue, done))
    proc.start()
    try:
        blob, pack_s = queue.get(timeout=120)
        start = time.perf_counter()
        packed = pickle.loads(blob)
        assert packed.cuda_ipc is not None and packed.host is None
        mine = {
            name: torch.empty(shape, dtype=torch.bfloat16, device="cuda") for name, shape in SHAPES.items()
        }
        views = unpack_weights(packed)
        for name, t in mine.items():
            t.copy_(views[name])
        torch.cuda.synchronize()
        load_s = time.perf_counter() - start
        del views
    finally:
        done.set()
        proc.join(60)
    assert proc.exitcode == 0
    for name, t in _weights("cuda").items():
        assert torch.equal(mine[name], t.to(torch.bfloat16)), name
    line = {"test": "packed_weights_ipc", "pack_s": pack_s, "load_s": load_s, "bytes": packed.nbytes}
    print(json.dumps(line))
    if os.environ.get("AGENTRL_GPU_RESULTS"):
        with open(os.environ["AGENTRL_GPU_RESULTS"], "a") as f:
            f.write(json.dumps(line) + "\n")
