"""The critic of ``--advantage-estimator ppo`` on the plain-torch backend: a value model and its optimizer.

The value model is the policy's architecture without the LM head (``transformers.AutoModel``) and a
scalar head on the last hidden states, read in fp32. Values use the batch's token convention: entry
``t`` is the value of the state *before* token ``t``, computed at position ``t - 1`` (where the policy
computes the logprob of token ``t``), entry 0 is 0.

Its weights and AdamW state are checkpointed with the policy's (:meth:`TorchCritic.state_dict`) and
exported as an HF folder plus ``value_head.safetensors`` (:meth:`TorchCritic.export_hf`), which
``--critic-model`` loads back. It is never sent to an inference engine. On GPU it can wait in host
memory between its passes (``critic_offload``), weights and Adam moments alike.

Example::

    >>> critic = TorchCritic("path/to/hf_model", CriticConfig(critic_lr=1e-5), device=torch.device("cpu"))
    >>> values = critic.values(batch.input_ids)           # each (T_i,) fp32
    >>> batches, _ = fill_gae([batch], [values], algorithm)
    >>> critic.train_step(batches[0], "token-mean")       # {'vf_loss': ..., 'critic_grad_norm': ...}
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch.nn.utils.rnn import pad_sequence

from agentrl.trainer.backend import TrainBatch
from agentrl.trainer.config import CriticConfig
from agentrl.trainer.device_copy import to_device
from agentrl.trainer.losses import value_loss
from agentrl.trainer.micro_batches import pad_right, plan_micro_batches
from agentrl.trainer.reference import should_offload
from agentrl.trainer.step_metrics import StepMetrics

VALUE_HEAD_FILE = "value_head.safetensors"
"""The scalar head's ``weight`` (1, H) and ``bias`` (1,) beside the trunk's HF files."""


class ValueModel(torch.nn.Module):
    """A transformer trunk and a scalar value head on its last hidden states."""

    def __init__(self, trunk: torch.nn.Module, hidden_size: int) -> None:
        super().__init__()
        self.trunk = trunk
        self.head = torch.nn.Linear(hidden_size, 1)
        torch.nn.init.zeros_(self.head.weight)  # V = 0 at first: the first advantages are the returns
        torch.nn.init.zeros_(self.head.bias)

    def values(self, hidden: torch.Tensor) -> torch.Tensor:
        """(B, T, H) hidden states -> (B, T) fp32 values (the head outside autocast)."""
        with torch.autocast(device_type=hidden.device.type, enabled=False):
            w, b = self.head.weight.float(), self.head.bias.float()
            return F.linear(hidden.float(), w, b).squeeze(-1)


def load_value_model(path: Path) -> ValueModel:
    """The trunk of the HF folder ``path`` (a causal LM loads without its LM head) and its value head
    from ``value_head.safetensors`` when the folder has one (an exported critic), else zeros."""
    from safetensors.torch import load_file
    from transformers import AutoModel

    trunk: Any = AutoModel.from_pretrained(path, dtype=torch.float32)
    model = ValueModel(trunk, int(trunk.config.hidden_size))
    if (path / VALUE_HEAD_FILE).is_file():
        model.head.load_state_dict(load_file(str(path / VALUE_HEAD_FILE)))
    for module in model.modules():
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.0
    return model


class TorchCritic:
    """The value model, its AdamW and lr schedule; values and one optimizer step per train step."""

    def __init__(
        self,
        model_path: str | Path,
        config: CriticConfig,
        *,
        device: torch.device,
        autocast: Callable[[], AbstractContextManager[object]] = nullcontext,
        micro_batch_tokens: int = 4096,
        pad_id: int = 0,
        gradient_checkpointing: bool = False,
    ) -> None:
        self.config = config
        self.device = device
        self.autocast = autocast
        self.micro_batch_tokens = micro_batch_tokens
        self.pad_id = pad_id
        self.model = load_value_model(Path(config.critic_model or model_path)).to(device)
        self.model.eval()
        if gradient_checkpointing and device.type == "cuda":
            trunk: Any = self.model.trunk
            trunk.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        opt = config.optimizer()
        self.optimizer = torch.optim.AdamW(
            self.model.parameters(), lr=opt.lr, betas=opt.betas, eps=opt.eps, weight_decay=opt.weight_decay
        )
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, lambda s: opt.lr_at(s) / opt.lr)
        self.step = 0
        self.offload = False
        if device.type == "cuda":
            weights = sum(p.numel() * p.element_size() for p in self.model.parameters())
            free = torch.cuda.mem_get_info(device)[0]
            # weights + AdamW's two fp32 moments
            self.offload = should_offload(config.critic_offload, 3 * weights, free)
        if self.offload:
            self._move(torch.device("cpu"))

    # ------------------------------------------------------------------------------- memory
    def _move(self, device: torch.device) -> None:
        """Weights and Adam moments to ``device`` (the step counters stay on the host, as AdamW keeps them)."""
        self.model.to(device)
        for state in self.optimizer.state.values():
            for key, value in state.items():
                if isinstance(value, torch.Tensor) and key != "step":
                    state[key] = value.to(device, non_blocking=True)

    @contextmanager
    def resident(self) -> Iterator[None]:
        """The critic on its device for the ``with`` block; back on the host afterwards when offloaded."""
        if self.offload:
            self._move(self.device)
        try:
            yield
        finally:
            if self.offload:
                self._move(torch.device("cpu"))
                torch.cuda.empty_cache()

    # ------------------------------------------------------------------------------ compute
    def _forward(self, ids: list[torch.Tensor]) -> torch.Tensor:
        """(B, T) values in the batch convention: entry t from position t - 1, entry 0 = 0."""
        input_ids = pad_right(ids, self.device, self.pad_id).long()  # (B, T)
        n_seq, seq_len = input_ids.shape
        lengths = torch.tensor([len(x) for x in ids], device=self.device)
        attention_mask = (torch.arange(seq_len, device=self.device)[None] < lengths[:, None]).long()
        trunk: Any = self.model.trunk
        with self.autocast():
            hidden = trunk(
                input_ids=input_ids, attention_mask=attention_mask, use_cache=False
            ).last_hidden_state
        per_position = self.model.values(hidden)  # (B, T): value of the state ending at each position
        return torch.cat([per_position.new_zeros(n_seq, 1), per_position[:, :-1]], dim=1)

    @torch.no_grad()
    def values(self, input_ids: list[torch.Tensor]) -> list[torch.Tensor]:
        """The value of the state before each token, each (T_i,) fp32 on CPU, entry 0 = 0."""
        out: list[torch.Tensor] = [torch.empty(0)] * len(input_ids)
        with self.resident():
            for group in plan_micro_batches([len(x) for x in input_ids], self.micro_batch_tokens):
                v = self._forward([input_ids[i] for i in group])
                for row, i in enumerate(group):
                    out[i] = v[row, : len(input_ids[i])].float().cpu()
        return out

    def train_step(
        self, batch: TrainBatch, loss_agg_mode: str, denominators: dict[str, float] | None = None
    ) -> dict[str, float]:
        """One AdamW step of the clipped value loss on ``batch.returns`` (anchored at ``old_values``);
        gradients accumulate over token-budget micro-batches with the batch's global denominators."""
        if batch.returns is None or batch.old_values is None:
            raise ValueError("the critic trains on TrainBatch.returns and old_values: run fill_gae first")
        returns, old_values = batch.returns, batch.old_values
        acc = StepMetrics()
        with self.resident():
            self.model.train()
            self.optimizer.zero_grad(set_to_none=True)
            for group in plan_micro_batches([len(x) for x in batch.input_ids], self.micro_batch_tokens):
                host_mask = pad_sequence([batch.loss_mask[i].float() for i in group], batch_first=True)
                if not bool(host_mask.any()):
                    continue
                out = value_loss(
                    self._forward([batch.input_ids[i] for i in group]),
                    pad_right([old_values[i].float() for i in group], self.device),
                    pad_right([returns[i].float() for i in group], self.device),
                    to_device(host_mask, self.device),
                    self.config.value_clip,
                    loss_agg_mode,
                    **(denominators or {}),
                )
                out.loss.backward()
                acc.add(out.metrics, float(host_mask.sum()))
            self.model.eval()
            result = {**acc.result(), **self._optimizer_step()}
        return result

    def _optimizer_step(self) -> dict[str, float]:
        max_norm = self.config.critic_max_grad_norm
        grad_norm = float(
            torch.nn.utils.clip_grad_norm_(
                self.model.parameters(), max_norm if max_norm is not None else math.inf
            )
        )
        lr = float(self.scheduler.get_last_lr()[0])
        if not math.isfinite(grad_norm):
            self.optimizer.zero_grad(set_to_none=True)
            return {"critic_grad_norm": grad_norm, "critic_lr": lr, "critic_skipped_nonfinite": 1.0}
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.step += 1
        return {"critic_grad_norm": grad_norm, "critic_lr": lr}

    # ---------------------------------------------------------------------------- persistence
    def state_dict(self) -> dict[str, Any]:
        """Weights, AdamW state, lr schedule and step count (for exact resume)."""
        return {
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "step": self.step,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict` (the optimizer state lands where the weights are)."""
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.step = int(state["step"])

    def export_hf(self, path: Path) -> None:
        """The trunk as an HF folder and ``value_head.safetensors``: ``--critic-model PATH`` loads it."""
        from safetensors.torch import save_file

        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        trunk: Any = self.model.trunk
        trunk.save_pretrained(path, safe_serialization=True)
        head = {k: v.detach().cpu().contiguous() for k, v in self.model.head.state_dict().items()}
        save_file(head, str(path / VALUE_HEAD_FILE))
