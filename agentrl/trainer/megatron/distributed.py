"""Process-group setup for the Megatron backend: torch.distributed plus Megatron's parallel state.

Launched by torchrun (or Ray, which sets the same variables) each rank reads ``RANK``,
``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR`` and ``MASTER_PORT``. Without them (one process, e.g. a
test or a single-GPU run) it starts a world of one on 127.0.0.1 and a free port.
"""

from __future__ import annotations

import os
import socket
from datetime import timedelta

import torch
import torch.distributed as dist
from megatron.core import parallel_state, tensor_parallel

from agentrl.errors import ConfigError
from agentrl.trainer.megatron.config import ParallelConfig


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def init_distributed(par: ParallelConfig, seed: int) -> None:
    """Start torch.distributed (NCCL) and Megatron's TP/PP/CP/DP groups once per process."""
    if not torch.cuda.is_available():
        raise ConfigError(
            "the Megatron backend needs CUDA GPUs; on CPU use the torch backend (--backend torch)"
        )
    if not dist.is_initialized():
        os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
        os.environ.setdefault("MASTER_PORT", str(_free_port()))
        rank, world = int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", rank % torch.cuda.device_count())))
        dist.init_process_group("nccl", rank=rank, world_size=world, timeout=timedelta(minutes=30))
    world = dist.get_world_size()
    model_parallel = (
        par.tensor_model_parallel_size * par.pipeline_model_parallel_size * par.context_parallel_size
    )
    if world % model_parallel:
        raise ConfigError(
            f"world size {world} is not divisible by tp*pp*cp = {model_parallel}; change the parallel sizes"
        )
    if not parallel_state.model_parallel_is_initialized():
        parallel_state.initialize_model_parallel(
            tensor_model_parallel_size=par.tensor_model_parallel_size,
            pipeline_model_parallel_size=par.pipeline_model_parallel_size,
            virtual_pipeline_model_parallel_size=par.virtual_pipeline_model_parallel_size,
            context_parallel_size=par.context_parallel_size,
            create_gloo_process_groups=False,
        )
    tensor_parallel.model_parallel_cuda_manual_seed(seed)


def destroy_distributed() -> None:
    """Tear down Megatron's groups and the default group (tests that build several backends)."""
    if parallel_state.model_parallel_is_initialized():
        parallel_state.destroy_model_parallel()
    if dist.is_initialized():
        dist.destroy_process_group()
