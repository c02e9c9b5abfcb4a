"""The critic of ``--advantage-estimator ppo`` on megatron-core: the policy's model layout with a value head.

The value model is a second set of GPTModel chunks with the policy's parallel layout (the same TP / PP
/ virtual-pipeline shards, so the same packed forward and schedule run on it), loaded from
``critic_model`` or the initial policy, wrapped in Megatron DDP and stepped by its own (distributed)
optimizer with the critic's lr schedule. The last pipeline stage carries a value head (``Linear(h, 1)``,
registered on its last chunk so DDP reduces its gradient and the optimizer steps it; replicated over
the TP group); the LM head, unused, is frozen. Values are read in fp32 from the final hidden states
(:func:`~agentrl.trainer.megatron.step_loss.position_values`), as the torch critic does, and the loss is
the same :func:`~agentrl.trainer.losses.value_loss`.

The critic stays on the GPU: ``critic_offload`` is read by the torch backend only (the Megatron
policy is not offloaded either).
"""

from __future__ import annotations

from functools import partial
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from megatron.core import parallel_state, tensor_parallel
from safetensors.torch import load_file, save_file

from agentrl.trainer.backend import TrainBatch
from agentrl.trainer.config import CriticConfig
from agentrl.trainer.critic import VALUE_HEAD_FILE
from agentrl.trainer.megatron import hf_io
from agentrl.trainer.megatron.rank_state import load_optimizer_states, optimizer_states, reduce_metrics
from agentrl.trainer.megatron.step_loss import GlobalDenominators, micro_batch_value_loss, position_values


def _attach_value_head(chunk: Any, hidden_size: int, folder: Path) -> torch.nn.Linear:
    """A value head on the last stage's last chunk (zeros, or ``value_head.safetensors`` of an exported
    critic); the LM head's own weight (when not tied to the embedding) is frozen: no grad, no Adam."""
    gpt = hf_io.unwrap(chunk)
    head = torch.nn.Linear(hidden_size, 1, dtype=torch.bfloat16, device=torch.cuda.current_device())
    torch.nn.init.zeros_(head.weight)
    torch.nn.init.zeros_(head.bias)
    if (folder / VALUE_HEAD_FILE).is_file():
        with torch.no_grad():
            saved = load_file(str(folder / VALUE_HEAD_FILE))
            head.weight.copy_(saved["weight"])
            head.bias.copy_(saved["bias"])
    gpt.value_head = head
    output_layer = getattr(gpt, "output_layer", None)
    if output_layer is not None and not gpt.share_embeddings_and_output_weights:
        output_layer.weight.requires_grad_(False)
    return head


class MegatronCritic:
    """Value-model chunks, their optimizer and step count; driven by :class:`MegatronBackend`."""

    def __init__(self, backend: Any, config: CriticConfig) -> None:
        self.backend = backend
        self.config = config
        self.opt = config.optimizer()
        folder = Path(config.critic_model or backend.model_path)
        chunks = backend._build_chunks(folder)
        self.head: torch.nn.Linear | None = None
        if parallel_state.is_pipeline_last_stage():
            self.head = _attach_value_head(chunks[-1], int(backend.hf_config.hidden_size), folder)
        self.models = backend._wrap_ddp(chunks)
        self.optimizer = backend._make_optimizer(self.models, self.opt)
        self.steps_done = 0

    def _processor(self, *, hidden_states: torch.Tensor, **_: Any) -> torch.Tensor:
        """Last stage: hidden states (T, 1, h) -> (T,) fp32 values at each position.

        The head is replicated over the TP group, so every rank computes the full gradient of its
        input: with sequence parallelism the gather's backward splits it (``tensor_parallel_output_grad
        =False``) rather than summing TP identical copies."""
        assert self.head is not None
        if self.backend.cfg.parallel.sequence_parallel:
            hidden_states = tensor_parallel.gather_from_sequence_parallel_region(
                hidden_states,
                tensor_parallel_output_grad=False,
                group=parallel_state.get_tensor_model_parallel_group(),
            )
        return position_values(hidden_states.squeeze(1), self.head.weight, self.head.bias)

    def values(self, input_ids: list[torch.Tensor]) -> list[torch.Tensor]:
        """The value of the state before each token, each (T_i,) fp32 on CPU (entry 0 = 0), every rank."""
        for m in self.models:
            m.eval()
        return self.backend._per_token(self.models, input_ids, processor=self._processor)

    def train_step(self, batch: TrainBatch, denominators: GlobalDenominators) -> dict[str, float]:
        """One optimizer step of the clipped value loss on ``batch.returns``; the step's metrics."""
        for m in self.models:
            m.train()
            m.zero_grad_buffer()
        self.optimizer.zero_grad()
        lr = self.opt.lr_at(self.steps_done)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        mbs = self.backend._micro_batches(batch.input_ids)
        scale = len(mbs) * parallel_state.get_data_parallel_world_size()
        step_fn = partial(
            micro_batch_value_loss,
            batch=batch,
            mode=self.backend.cfg.algorithm.loss_agg_mode,
            clip=self.config.value_clip,
            denominators=denominators,
            scale=scale,
        )
        outputs = self.backend._run(mbs, step_fn, False, models=self.models, processor=self._processor)
        ok, grad_norm, _ = self.optimizer.step()
        self.steps_done += 1
        metrics = reduce_metrics(outputs)
        metrics.update(
            critic_grad_norm=float(grad_norm or 0.0), critic_update_ok=float(bool(ok)), critic_lr=lr
        )
        return metrics

    def state_dict(self) -> dict[str, Any]:
        """This rank's critic shards, optimizer state and step count."""
        return {
            "models": [hf_io.unwrap(m).state_dict() for m in self.models],
            "optimizers": optimizer_states(self.optimizer),
            "steps_done": self.steps_done,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for m, sd in zip(self.models, state["models"], strict=True):
            hf_io.unwrap(m).load_state_dict(sd)
        load_optimizer_states(self.optimizer, state["optimizers"])
        self.steps_done = int(state["steps_done"])

    def export_hf(self, path: Path) -> None:
        """The trunk as an HF folder (through the policy's exporter) and ``value_head.safetensors``
        (written by the last stage), which ``--critic-model`` loads back on either backend."""
        path = Path(path)
        hf_io.export_hf_folder(self.models, self.backend.layout, self.backend.hf_config, path)
        writer = (
            parallel_state.get_data_parallel_rank() == 0
            and parallel_state.get_tensor_model_parallel_rank() == 0
        )
        if self.head is not None and writer:
            head = {k: v.detach().float().cpu().contiguous() for k, v in self.head.state_dict().items()}
            save_file(head, str(path / VALUE_HEAD_FILE))
        if dist.is_initialized():
            dist.barrier()
