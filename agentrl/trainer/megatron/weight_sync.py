"""Weights from the Megatron trainer to inference engines, in buckets.

Three routes, as SGLang offers them:

- **disk**: :meth:`MegatronBackend.export_hf` writes an HF folder, then ``POST /update_weights_from_disk``
  with :func:`disk_request` (any placement; slowest).
- **tensor** (colocated: engine and trainer on the same GPUs): each bucket of HF-named CUDA tensors is
  pickled with CUDA IPC handles (no copy) and sent as ``POST /update_weights_from_tensor`` with
  :func:`tensor_request`.
- **distributed** (engines on other GPUs): ``POST /init_weights_update_group`` once
  (:func:`init_group_request`), then per bucket ``POST /update_weights_from_distributed`` with
  :func:`distributed_request` (names, dtypes, shapes) while rank 0 of the trainer broadcasts the
  tensors in that order over the NCCL group.

The embedded engine (in-process) takes ``dict(backend.hf_state_dict())`` directly.
Field names follow SGLang's ``managers/io_struct.py``.
"""

from __future__ import annotations

import base64
import io
from collections.abc import Iterable, Iterator
from multiprocessing.reduction import ForkingPickler
from typing import Any

import torch

# Importing torch.multiprocessing registers its reducers: CUDA tensors then pickle as IPC handles.
import torch.multiprocessing

DEFAULT_BUCKET_BYTES = 512 * 1024 * 1024


def buckets(
    named: Iterable[tuple[str, torch.Tensor]], bucket_bytes: int = DEFAULT_BUCKET_BYTES
) -> Iterator[list[tuple[str, torch.Tensor]]]:
    """Group tensors, in order, into lists of at most ``bucket_bytes`` (a bigger tensor goes alone).

    Buckets bound the extra memory of a sync (one bucket materialised at a time) while keeping the
    number of HTTP round trips small."""
    bucket: list[tuple[str, torch.Tensor]] = []
    size = 0
    for name, tensor in named:
        nbytes = tensor.numel() * tensor.element_size()
        if bucket and size + nbytes > bucket_bytes:
            yield bucket
            bucket, size = [], 0
        bucket.append((name, tensor))
        size += nbytes
    if bucket:
        yield bucket


def disk_request(model_path: str, version: int) -> dict[str, Any]:
    """Body of ``POST /update_weights_from_disk``."""
    return {"model_path": model_path, "weight_version": str(version), "abort_all_requests": False}


def serialize_bucket(bucket: list[tuple[str, torch.Tensor]]) -> str:
    """SGLang's ``MultiprocessingSerializer.serialize(..., output_str=True)``: ForkingPickler (CUDA
    tensors become IPC handles, so the receiver maps the same memory) then base64."""
    buf = io.BytesIO()
    ForkingPickler(buf).dump(bucket)
    return base64.b64encode(buf.getvalue()).decode("ascii")


def tensor_request(
    bucket: list[tuple[str, torch.Tensor]], version: int, *, engine_tp_size: int = 1, flush_cache: bool = True
) -> dict[str, Any]:
    """Body of ``POST /update_weights_from_tensor`` (one serialized copy per engine TP rank)."""
    payload = serialize_bucket(bucket)
    return {
        "serialized_named_tensors": [payload] * engine_tp_size,
        "load_format": None,
        "flush_cache": flush_cache,
        "weight_version": str(version),
    }


def init_group_request(
    master_address: str,
    master_port: int,
    rank_offset: int,
    world_size: int,
    group_name: str = "agentrl_weights",
) -> dict[str, Any]:
    """Body of ``POST /init_weights_update_group``: the trainer is rank 0, engine ranks start at
    ``rank_offset``; ``world_size`` = 1 + all engine GPUs."""
    return {
        "master_address": master_address,
        "master_port": master_port,
        "rank_offset": rank_offset,
        "world_size": world_size,
        "group_name": group_name,
        "backend": "nccl",
    }


def distributed_request(
    bucket: list[tuple[str, torch.Tensor]],
    version: int,
    group_name: str = "agentrl_weights",
    flush_cache: bool = True,
) -> dict[str, Any]:
    """Body of ``POST /update_weights_from_distributed``: what the following broadcasts carry."""
    return {
        "names": [n for n, _ in bucket],
        "dtypes": [str(t.dtype).removeprefix("torch.") for _, t in bucket],
        "shapes": [list(t.shape) for _, t in bucket],
        "group_name": group_name,
        "flush_cache": flush_cache,
        "weight_version": str(version),
    }
