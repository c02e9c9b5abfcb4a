"""The training-backend interface shared by the torch backend (CPU / one GPU) and the Megatron backend."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import torch


@dataclass
class TrainBatch:
    """Sequences to train on, unpadded. Entry ``t`` of each per-token tensor refers to token ``t``.

    ``loss_mask[t] == 1`` means token ``t`` was sampled by the policy and is trained on; its logprob is
    computed from the logits at position ``t - 1``. Prompt and observation tokens have mask 0.
    """

    input_ids: list[torch.Tensor]
    """Each (T_i,) int64: prompt ids + response ids."""
    loss_mask: list[torch.Tensor]
    """Each (T_i,) float32 in {0, 1}."""
    advantages: list[torch.Tensor]
    """Each (T_i,) float32 (a sequence's advantage broadcast over its tokens, or per-token)."""
    rollout_logprobs: list[torch.Tensor]
    """Each (T_i,) float32: the engine's logprobs (0 where mask is 0)."""
    old_logprobs: list[torch.Tensor] | None = None
    """Each (T_i,) float32: the trainer's logprobs before this update (for the PPO ratio)."""
    ref_logprobs: list[torch.Tensor] | None = None
    """Each (T_i,) float32: the reference model's logprobs (for KL)."""
    rewards: list[float] | None = None
    """``ppo``: each sequence's episode reward; with the critic's values it becomes per-token
    advantages and value targets (:func:`agentrl.trainer.gae.fill_gae`)."""
    old_values: list[torch.Tensor] | None = None
    """``ppo``: each (T_i,) float32, the critic's values when the advantages were computed (entry ``t``:
    the value of the state before token ``t``; 0 where the mask is 0); the value clip's anchor."""
    returns: list[torch.Tensor] | None = None
    """``ppo``: each (T_i,) float32, the critic's targets (advantage + old value; 0 where the mask is 0)."""

    def __len__(self) -> int:
        return len(self.input_ids)

    @property
    def num_tokens(self) -> int:
        return sum(int(x.numel()) for x in self.input_ids)


class TrainBackend(Protocol):
    """A policy model that computes logprobs, takes optimizer steps and hands out its weights."""

    def logprobs(self, input_ids: list[torch.Tensor]) -> list[torch.Tensor]:
        """Per-token logprobs, each (T_i,) float32 on CPU, entry 0 set to 0.0."""
        ...

    def train_step(self, batch: TrainBatch) -> dict[str, float]:
        """One optimizer step over ``batch`` (micro-batched by token budget); returns metrics
        (``loss``, ``grad_norm``, ``clip_frac``, ``kl``, ``entropy``, ...)."""
        ...

    def hf_state_dict(self) -> Iterator[tuple[str, torch.Tensor]]:
        """The weights under Hugging Face names (for weight sync to engines and HF export)."""
        ...

    def save(self, path: Path) -> None:
        """Write model + optimizer + scheduler state for exact resume."""
        ...

    def load(self, path: Path) -> None:
        """Restore what :meth:`save` wrote."""
        ...

    def export_hf(self, path: Path) -> None:
        """Write an HF model folder (config, safetensors, tokenizer) that transformers and SGLang load."""
        ...
