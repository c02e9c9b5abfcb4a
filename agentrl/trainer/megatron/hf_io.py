"""Move weights between HF safetensors folders and (possibly TP/PP-sharded) Megatron GPTModels.

Each rank reads only the HF tensors its own parameters need and slices its tensor-parallel shard;
export gathers the TP shards (all-gather over the TP group) and renames them to HF names. With
pipeline parallelism every stage handles its own layers (global layer numbers, so names never clash).
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from megatron.core import parallel_state
from safetensors import safe_open
from safetensors.torch import save_file

from agentrl.errors import CheckpointError
from agentrl.trainer.megatron import hf_weights
from agentrl.trainer.megatron.hf_weights import Layout

_LOCAL_LAYER = re.compile(r"^decoder\.layers\.(\d+)\.")
VALUE_HEAD = "value_head"
"""Attribute of the critic's value head on its last chunk (:mod:`.critic`): no HF parameter, so neither
loaded nor exported with the trunk here (the critic writes it to ``value_head.safetensors``)."""


def unwrap(model: Any) -> Any:
    """The GPTModel inside DDP / Float16Module wrappers."""
    while hasattr(model, "module"):
        model = model.module
    return model


def global_named_parameters(model: torch.nn.Module) -> Iterator[tuple[str, torch.nn.Parameter]]:
    """Parameters of one model chunk under names with *global* layer numbers (PP/VPP offsets applied)."""
    gpt = unwrap(model)
    for name, param in gpt.named_parameters():
        if name.startswith(VALUE_HEAD + "."):
            continue
        match = _LOCAL_LAYER.match(name)
        if match:
            layer = gpt.decoder.layers[int(match.group(1))]
            name = f"decoder.layers.{layer.layer_number - 1}." + name[match.end() :]
        yield name, param


class SafetensorsFolder:
    """Lazy reader of every ``*.safetensors`` file in an HF model folder."""

    def __init__(self, folder: Path) -> None:
        files = sorted(Path(folder).glob("*.safetensors"))
        if not files:
            raise CheckpointError(
                f"no *.safetensors in {folder}; the Megatron backend loads HF safetensors checkpoints "
                "(convert with transformers: model.save_pretrained(folder))"
            )
        self._where: dict[str, Path] = {}
        for f in files:
            with safe_open(str(f), framework="pt") as h:
                self._where.update(dict.fromkeys(h.keys(), f))

    def get(self, names: tuple[str, ...]) -> dict[str, torch.Tensor]:
        out = {}
        for n in names:
            if n in self._where:
                with safe_open(str(self._where[n]), framework="pt") as h:
                    out[n] = h.get_tensor(n)
        return out


@torch.no_grad()
def load_hf_weights(models: list[torch.nn.Module], folder: Path, layout: Layout) -> int:
    """Copy an HF checkpoint into the local shards of ``models``; returns how many tensors were set."""
    reader = SafetensorsFolder(folder)
    tp_rank = parallel_state.get_tensor_model_parallel_rank()
    tp_size = parallel_state.get_tensor_model_parallel_world_size()
    count = 0
    for model in models:
        for name, param in global_named_parameters(model):
            names = hf_weights.hf_names(name)
            if names == ("lm_head.weight",):
                names = ("lm_head.weight", "model.embed_tokens.weight")
            full = hf_weights.from_hf(name, reader.get(names), layout, tp_size)
            local = hf_weights.shard(name, full, tp_rank, tp_size)
            if local.shape != param.shape:
                raise CheckpointError(
                    f"{name}: checkpoint gives {tuple(local.shape)}, model has {tuple(param.shape)}"
                )
            param.copy_(local.to(param.dtype))
            count += 1
    return count


def _gather_tp(name: str, local: torch.Tensor) -> torch.Tensor:
    tp_size = parallel_state.get_tensor_model_parallel_world_size()
    if tp_size == 1 or hf_weights.tp_split_dim(name) is None:
        return local
    shards = [torch.empty_like(local) for _ in range(tp_size)]
    dist.all_gather(shards, local.contiguous(), group=parallel_state.get_tensor_model_parallel_group())
    return hf_weights.unshard(name, shards)


def full_megatron_tensors(models: list[torch.nn.Module]) -> Iterator[tuple[str, torch.Tensor]]:
    """(global name, full TP-gathered tensor) for every parameter of this pipeline stage."""
    for model in models:
        for name, param in global_named_parameters(model):
            yield name, _gather_tp(name, param.detach())


def hf_tensors(models: list[torch.nn.Module], layout: Layout) -> Iterator[tuple[str, torch.Tensor]]:
    """This pipeline stage's weights under HF names (call on every TP rank: the gather is collective)."""
    tp_size = parallel_state.get_tensor_model_parallel_world_size()
    yield from hf_weights.mcore_to_hf_state_dict(full_megatron_tensors(models), layout, tp_size)


def export_hf_folder(models: list[torch.nn.Module], layout: Layout, hf_config: Any, folder: Path) -> None:
    """Write this stage's shard ``model-pp{k}.safetensors`` and (stage 0) the config and the index."""
    folder.mkdir(parents=True, exist_ok=True)
    tensors = {n: t.to("cpu").contiguous() for n, t in hf_tensors(models, layout)}
    pp_rank = parallel_state.get_pipeline_model_parallel_rank()
    pp_size = parallel_state.get_pipeline_model_parallel_world_size()
    writer = (
        parallel_state.get_data_parallel_rank() == 0 and parallel_state.get_tensor_model_parallel_rank() == 0
    )
    shard_name = "model.safetensors" if pp_size == 1 else f"model-pp{pp_rank:03d}.safetensors"
    if writer:
        save_file(tensors, str(folder / shard_name), metadata={"format": "pt"})
    if pp_size > 1:
        names: list[list[str]] = [[] for _ in range(pp_size)]
        dist.all_gather_object(names, list(tensors), group=parallel_state.get_pipeline_model_parallel_group())
        if writer and pp_rank == 0:
            weight_map = {n: f"model-pp{k:03d}.safetensors" for k, ns in enumerate(names) for n in ns}
            index = {"metadata": {}, "weight_map": weight_map}
            (folder / "model.safetensors.index.json").write_text(json.dumps(index, indent=1))
    if writer and pp_rank == 0:
        hf_config.save_pretrained(str(folder))
