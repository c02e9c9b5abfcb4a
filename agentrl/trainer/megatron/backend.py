"""``MegatronBackend``: the :class:`~agentrl.trainer.backend.TrainBackend` on megatron-core (GPU).

One step reads like Megatron's own training loop: pack the batch into micro-batches of a token budget,
run Megatron's forward-backward schedule (pipelined when PP > 1) whose last stage turns hidden states
straight into the sampled tokens' logprobs (:mod:`.logprobs`), compute the same policy loss as the
torch backend (:func:`agentrl.trainer.losses.policy_loss`, with the batch's global denominators), and
step Megatron's (distributed) optimizer. Weights come from and go back to HF safetensors folders.

With ``kl_coef > 0`` a frozen reference model (:mod:`agentrl.trainer.reference`: the initial policy, or
``algorithm.ref_model``) gives the KL term's logprobs through the same packed forward, in a
forward-only pass before the step's forward-backward, as slime and verl do.

With ``--advantage-estimator ppo`` a critic (:mod:`.critic`: the same layout with a value head, its
own optimizer) values the rollout, GAE turns its values into advantages (:mod:`agentrl.trainer.gae`),
and each train step takes a critic step before the policy's (only the critic's during its warm-up).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import replace
from functools import partial
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from megatron.core import parallel_state, tensor_parallel
from megatron.core.distributed import (
    DistributedDataParallel,
    DistributedDataParallelConfig,
    finalize_model_grads,
)
from megatron.core.optimizer import OptimizerConfig as MegatronOptimizerConfig
from megatron.core.optimizer import get_megatron_optimizer
from megatron.core.packed_seq_params import PackedSeqParams
from megatron.core.pipeline_parallel import get_forward_backward_func
from transformers import AutoConfig

from agentrl.errors import CheckpointError, ConfigError
from agentrl.trainer.backend import TrainBatch
from agentrl.trainer.config import OptimizerConfig
from agentrl.trainer.device_copy import to_device
from agentrl.trainer.gae import fill_gae
from agentrl.trainer.megatron import hf_io
from agentrl.trainer.megatron.config import MegatronBackendConfig
from agentrl.trainer.megatron.critic import MegatronCritic
from agentrl.trainer.megatron.distributed import init_distributed
from agentrl.trainer.megatron.hf_weights import Layout
from agentrl.trainer.megatron.logprobs import token_logprobs
from agentrl.trainer.megatron.model import build_gpt_model
from agentrl.trainer.megatron.packing import PackedMicroBatch, balance_across_ranks, pack, pack_by_budget
from agentrl.trainer.megatron.rank_state import load_optimizer_states, optimizer_states, reduce_metrics, share
from agentrl.trainer.megatron.step_loss import GlobalDenominators, micro_batch_loss
from agentrl.trainer.reference import ReferenceModel, should_offload


class MegatronBackend:
    """Policy on megatron-core: logprobs, train steps, HF weights in and out, exact save/load.

    The reference model (KL) is built with the backend when ``kl_coef > 0``, else on first use (a
    config switched to KL later), in both cases from the initial weights' folder: a resumed run, which
    constructs the backend from the same ``model_path`` and then calls :meth:`load`, gets the same one.
    """

    def __init__(self, model_path: str | Path, cfg: MegatronBackendConfig) -> None:
        self.cfg = cfg
        self.model_path = Path(model_path)
        init_distributed(cfg.parallel, cfg.seed)
        self.hf_config = AutoConfig.from_pretrained(str(model_path))
        self.layout = Layout.from_hf_config(self.hf_config)
        self.models = self._wrap_ddp(self._build_chunks(self.model_path))
        self.optimizer = self._make_optimizer(self.models, cfg.optimizer)
        self.ref: ReferenceModel | None = None
        if cfg.algorithm.kl_coef > 0:
            self.ref = self._build_reference()
        self.critic = MegatronCritic(self, cfg.critic) if cfg.algorithm.uses_critic else None
        self.steps_done = 0
        self._last_metrics: dict[str, float] = {}

    # ----------------------------------------------------------------------------------------- setup
    def _build_chunks(self, folder: Path) -> list[Any]:
        """Model chunks (several with virtual pipeline stages) with the HF weights of ``folder``."""
        vpp = self.cfg.parallel.virtual_pipeline_model_parallel_size or 1
        chunks = []
        for stage in range(vpp):
            pre = parallel_state.is_pipeline_first_stage(ignore_virtual=False, vp_stage=stage)
            post = parallel_state.is_pipeline_last_stage(ignore_virtual=False, vp_stage=stage)
            model = build_gpt_model(
                self.hf_config,
                self.cfg,
                pre_process=pre,
                post_process=post,
                vp_stage=stage if vpp > 1 else None,
            )
            chunks.append(model.cuda())
        hf_io.load_hf_weights(chunks, folder, self.layout)
        return chunks

    def _wrap_ddp(self, chunks: list[Any]) -> list[Any]:
        """Model chunks (the policy's or the critic's) wrapped in Megatron DDP."""
        ddp_config = DistributedDataParallelConfig(
            grad_reduce_in_fp32=self.cfg.grad_reduce_in_fp32,
            use_distributed_optimizer=self.cfg.use_distributed_optimizer,
            overlap_grad_reduce=False,
        )
        wrapped = []
        for i, model in enumerate(chunks):
            ddp = DistributedDataParallel(
                config=model.config, ddp_config=ddp_config, module=model, disable_bucketing=i > 0
            )
            ddp.broadcast_params()
            wrapped.append(ddp)
        return wrapped

    def _make_optimizer(self, models: list[Any], opt: OptimizerConfig) -> Any:
        """Megatron's (distributed) Adam over ``models`` with ``opt``'s settings; its loss scaling and
        gradient finalisation are hooked into the chunks' config, which the schedule reads."""
        optimizer = get_megatron_optimizer(
            MegatronOptimizerConfig(
                optimizer="adam",
                lr=opt.lr,
                weight_decay=opt.weight_decay,
                adam_beta1=opt.betas[0],
                adam_beta2=opt.betas[1],
                adam_eps=opt.eps,
                clip_grad=opt.max_grad_norm or 0.0,
                bf16=True,
                params_dtype=torch.bfloat16,
                use_distributed_optimizer=self.cfg.use_distributed_optimizer,
            ),
            models,
            use_gloo_process_groups=False,
        )
        config: Any = models[0].config
        config.grad_scale_func = optimizer.scale_loss
        config.finalize_model_grads_func = finalize_model_grads
        return optimizer

    def _build_reference(self) -> ReferenceModel:
        """The frozen reference: ``algorithm.ref_model`` or the initial policy, on the GPU or the host."""
        ref_path = self.cfg.algorithm.ref_model
        chunks = self._build_chunks(Path(ref_path) if ref_path else self.model_path)
        weight_bytes = sum(p.numel() * p.element_size() for m in chunks for p in m.parameters())
        offload = should_offload(self.cfg.ref_offload, weight_bytes, torch.cuda.mem_get_info()[0])
        return ReferenceModel(chunks, offload=offload)

    # ------------------------------------------------------------------------------------ forward
    def _output_processor(
        self,
        *,
        hidden_states: torch.Tensor,
        output_layer: Any,
        output_weight: Any,
        context: torch.Tensor,
        **_: Any,
    ) -> torch.Tensor:
        """Last stage: hidden states (T, 1, h) -> stacked (logprob, entropy) of the targets, (2, T)."""
        weight = output_weight if output_weight is not None else output_layer.weight
        tp = parallel_state.get_tensor_model_parallel_world_size()
        group = parallel_state.get_tensor_model_parallel_group() if tp > 1 else None
        if self.cfg.parallel.sequence_parallel:
            hidden_states = tensor_parallel.gather_from_sequence_parallel_region(hidden_states, group=group)
        elif tp > 1:
            hidden_states = tensor_parallel.copy_to_tensor_model_parallel_region(hidden_states, group=group)
        vocab_start = parallel_state.get_tensor_model_parallel_rank() * weight.shape[0]
        logp, entropy = token_logprobs(
            hidden_states.squeeze(1),
            weight,
            context,
            vocab_start=vocab_start,
            chunk=self.cfg.logprob_chunk_tokens,
            group=group,
        )
        return torch.stack([logp, entropy])

    def _forward(self, model: torch.nn.Module, mb: PackedMicroBatch, processor: Any = None) -> torch.Tensor:
        dev = torch.cuda.current_device()
        cu = to_device(mb.cu_seqlens, dev)
        params = PackedSeqParams(
            qkv_format="thd",
            cu_seqlens_q=cu,
            cu_seqlens_kv=cu,
            # Megatron's own RoPE (local/te backends) reads the *_padded copies with .tolist(); a CPU
            # copy avoids a GPU sync per layer. The fused backend's RoPE reads cu_seqlens_q on the GPU.
            cu_seqlens_q_padded=mb.cu_seqlens,
            cu_seqlens_kv_padded=mb.cu_seqlens,
            max_seqlen_q=mb.max_seqlen,
            max_seqlen_kv=mb.max_seqlen,
        )
        return model(
            input_ids=to_device(mb.input_ids, dev),
            position_ids=to_device(mb.position_ids, dev),
            attention_mask=None,
            packed_seq_params=params,
            output_processor=processor or self._output_processor,
            output_processor_context=to_device(mb.targets, dev),
        )

    def _micro_batches(self, input_ids: list[torch.Tensor]) -> list[PackedMicroBatch]:
        """This data-parallel rank's share of the batch, packed by the token budget."""
        lengths = [int(x.numel()) for x in input_ids]
        dp = parallel_state.get_data_parallel_world_size()
        mine = balance_across_ranks(lengths, dp)[parallel_state.get_data_parallel_rank()]
        pad_to = (
            parallel_state.get_tensor_model_parallel_world_size()
            if self.cfg.parallel.sequence_parallel
            else 1
        )
        bins = pack_by_budget(mine, lengths, self.cfg.micro_batch_tokens)
        return [pack(input_ids, b, pad_to=pad_to) for b in bins]

    def _run(
        self,
        mbs: list[PackedMicroBatch],
        step_fn: Any,
        forward_only: bool,
        models: list[Any] | None = None,
        processor: Any = None,
    ) -> list[Any]:
        """Megatron's forward(-backward) schedule over ``mbs`` on ``models`` (default: the policy) whose
        last stage applies ``processor`` (default: the policy's logprob head)."""
        models = self.models if models is None else models
        data = iter(mbs)
        vpp = len(models)

        def forward_step(data_iterator: Any, model: torch.nn.Module) -> tuple[torch.Tensor, Any]:
            mb = next(data_iterator)
            return self._forward(model, mb, processor), partial(step_fn, mb)

        return get_forward_backward_func()(
            forward_step_func=forward_step,
            data_iterator=[data] * vpp if vpp > 1 else data,
            model=models if vpp > 1 else models[0],
            num_microbatches=len(mbs),
            seq_length=max(mb.num_tokens for mb in mbs),
            micro_batch_size=1,
            forward_only=forward_only,
        )

    # ------------------------------------------------------------------------------- public API
    def logprobs(self, input_ids: list[torch.Tensor]) -> list[torch.Tensor]:
        """Per-token logprobs of every sequence (entry 0 = 0.0), fp32 on CPU, on every rank."""
        for m in self.models:
            m.eval()
        return self._per_token(self.models, input_ids)

    def ref_logprobs(self, input_ids: list[torch.Tensor]) -> list[torch.Tensor]:
        """Per-token logprobs under the frozen reference model, like :meth:`logprobs`."""
        if self.ref is None:
            self.ref = self._build_reference()
        with self.ref.resident() as chunks:
            return self._per_token(chunks, input_ids)

    @torch.no_grad()
    def _per_token(
        self, models: list[Any], input_ids: list[torch.Tensor], processor: Any = None
    ) -> list[torch.Tensor]:
        """A forward-only pass of ``models``: per-token logprobs (or, with the critic's ``processor``,
        values); the micro-batches' results stay on the GPU until one copy to the host at the end (no
        host wait per micro-batch)."""
        mbs = self._micro_batches(input_ids)
        outputs: list[tuple[PackedMicroBatch, torch.Tensor]] = []

        def collect(mb: PackedMicroBatch, output: torch.Tensor) -> tuple[torch.Tensor, dict[str, Any]]:
            outputs.append((mb, (output[0] if output.dim() == 2 else output).float()))
            return output.new_zeros(()), {}

        if mbs:
            self._run(mbs, collect, forward_only=True, models=models, processor=processor)
        results: dict[int, torch.Tensor] = {}
        if outputs:  # the last pipeline stage only
            host = torch.cat([lp for _, lp in outputs]).cpu().split([mb.num_tokens for mb, _ in outputs])
            for (mb, _), lp in zip(outputs, host, strict=True):
                results.update(zip(mb.seq_indices, mb.unpack(lp), strict=True))
        gathered = share(results)
        return [gathered[i] for i in range(len(input_ids))]

    def train_step(self, batch: TrainBatch) -> dict[str, float]:
        """One optimizer step over ``batch``; every rank passes the same batch and gets the same metrics.

        With ``kl_coef > 0`` and no ``ref_logprobs`` in the batch, the reference model computes them
        first (a forward-only pass over the same micro-batches). With ``ppo`` the critic takes its step
        first (advantages from :meth:`estimate_advantages` when the batch has none yet); during its
        ``critic_warmup_steps`` only the critic does (``critic_warmup`` 1)."""
        critic_metrics: dict[str, float] = {}
        if self.critic is not None:
            if batch.returns is None:
                (batch,), critic_metrics = self.estimate_advantages([batch])
            warming_up = self.critic.steps_done < self.cfg.critic.critic_warmup_steps
            critic_metrics.update(
                self.critic.train_step(batch, GlobalDenominators.of(batch, self.cfg.algorithm))
            )
            if warming_up:
                return {**critic_metrics, "critic_warmup": 1.0}
        if self.cfg.algorithm.kl_coef > 0 and batch.ref_logprobs is None:
            batch = replace(batch, ref_logprobs=self.ref_logprobs(batch.input_ids))
        for m in self.models:
            m.train()
            m.zero_grad_buffer()
        self.optimizer.zero_grad()
        self._set_lr()
        denominators = GlobalDenominators.of(batch, self.cfg.algorithm)
        mbs = self._micro_batches(batch.input_ids)
        scale = len(mbs) * parallel_state.get_data_parallel_world_size()
        step_fn = partial(
            micro_batch_loss, batch=batch, cfg=self.cfg.algorithm, denominators=denominators, scale=scale
        )
        outputs = self._run(mbs, step_fn, forward_only=False)
        ok, grad_norm, _ = self.optimizer.step()
        self.steps_done += 1
        metrics = {**reduce_metrics(outputs), **critic_metrics}
        metrics.update(
            grad_norm=float(grad_norm or 0.0),
            update_ok=float(bool(ok)),
            lr=self._lr(),
            num_micro_batches=float(len(mbs)),
        )
        return metrics

    def estimate_advantages(self, batches: list[TrainBatch]) -> tuple[list[TrainBatch], dict[str, float]]:
        """``ppo``: the critic values every batch of a rollout before any is trained on, then GAE
        (:func:`agentrl.trainer.gae.fill_gae`); other estimators: the batches as they are."""
        if self.critic is None:
            return batches, {}
        return fill_gae(batches, [self.critic.values(b.input_ids) for b in batches], self.cfg.algorithm)

    def _lr(self) -> float:
        return self.cfg.optimizer.lr_at(self.steps_done)

    def _set_lr(self) -> None:
        for group in self.optimizer.param_groups:
            group["lr"] = self._lr()

    def hf_state_dict(self) -> Iterator[tuple[str, torch.Tensor]]:
        """This pipeline stage's weights under HF names, TP-gathered (a collective over the TP group)."""
        return hf_io.hf_tensors(self.models, self.layout)

    def export_hf(self, path: Path) -> None:
        """An HF folder (config, safetensors, tokenizer files copied from the source folder)."""
        hf_io.export_hf_folder(self.models, self.layout, self.hf_config, Path(path))
        if dist.get_rank() == 0:
            for f in self.model_path.glob("*"):
                if f.name.startswith(
                    ("tokenizer", "special_tokens", "vocab", "merges", "generation_config", "chat_template")
                ):
                    (Path(path) / f.name).write_bytes(f.read_bytes())

    def export_critic_hf(self, path: Path) -> None:
        """The critic as an HF folder with ``value_head.safetensors``; ``ppo`` only."""
        if self.critic is None:
            raise ConfigError("no critic to export: it exists with --advantage-estimator ppo only")
        self.critic.export_hf(Path(path))

    def save(self, path: Path) -> None:
        """Per-rank file: model shards, fp32 main weights and Adam state of this rank, step, RNG."""
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        state = {
            "models": [hf_io.unwrap(m).state_dict() for m in self.models],
            "optimizers": optimizer_states(self.optimizer),
            "steps_done": self.steps_done,
            "rng": tensor_parallel.get_cuda_rng_tracker().get_states(),
            "torch_rng": torch.cuda.get_rng_state(),
        }
        if self.critic is not None:
            state["critic"] = self.critic.state_dict()
        torch.save(state, path / f"megatron_rank{dist.get_rank():05d}.pt")

    def load(self, path: Path) -> None:
        """Restore what :meth:`save` wrote (same parallel layout)."""
        file = Path(path) / f"megatron_rank{dist.get_rank():05d}.pt"
        if not file.exists():
            raise CheckpointError(f"{file} missing: was the checkpoint saved with the same world size?")
        state = torch.load(file, map_location="cuda", weights_only=False)
        for m, sd in zip(self.models, state["models"], strict=True):
            hf_io.unwrap(m).load_state_dict(sd)
        load_optimizer_states(self.optimizer, state["optimizers"])
        self.steps_done = int(state["steps_done"])
        if self.critic is not None and "critic" in state:
            self.critic.load_state_dict(state["critic"])
        tensor_parallel.get_cuda_rng_tracker().set_states(state["rng"])
        torch.cuda.set_rng_state(state["torch_rng"].cpu())
