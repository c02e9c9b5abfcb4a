"""What the embedded engine loads: its device and dtype, the ids that end a generation, and new
weights from any source a trainer sends (a state dict, packed weights, an HF folder's safetensors)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from agentrl.engines.packed_weights import PackedWeights, unpack_weights
from agentrl.errors import ConfigError, EngineError


def pick_device(name: str) -> torch.device:
    """``auto``: the first GPU if there is one, else the CPU."""
    if name == "auto":
        return torch.device("cuda:0" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def pick_dtype(name: str, device: torch.device) -> torch.dtype:
    """``auto``: bfloat16 on a GPU, float32 on the CPU."""
    if name == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    if name not in ("float32", "bfloat16", "float16"):
        raise ConfigError(f"dtype must be auto, float32, bfloat16 or float16, got {name!r}")
    dtype: torch.dtype = getattr(torch, name)
    return dtype


def eos_ids(model: Any, tokenizer: Any) -> frozenset[int]:
    """Every id that ends a generation: the generation config's, the model config's, the tokenizer's."""
    ids: set[int] = set()
    for source in (model.generation_config, model.config):
        value = getattr(source, "eos_token_id", None)
        ids.update([value] if isinstance(value, int) else list(value or []))
    if tokenizer.eos_token_id is not None:
        ids.add(int(tokenizer.eos_token_id))
    return frozenset(ids)


def state_dict_of(source: Any) -> dict[str, torch.Tensor]:
    """New weights as a state dict: read from an HF folder, unpacked from :class:`PackedWeights` (views of
    the sender's buffer), or the given mapping."""
    if isinstance(source, (str, Path)):
        return read_state_dict(source)
    if isinstance(source, PackedWeights):
        return unpack_weights(source)
    return dict(source)


def read_state_dict(folder: str | Path) -> dict[str, torch.Tensor]:
    """Every tensor of the ``*.safetensors`` files in ``folder``."""
    from safetensors.torch import load_file

    files = sorted(Path(folder).glob("*.safetensors"))
    if not files:
        raise EngineError(f"{folder} has no *.safetensors files to load weights from")
    state: dict[str, torch.Tensor] = {}
    for f in files:
        state.update(load_file(str(f)))
    return state
