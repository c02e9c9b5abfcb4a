"""``MegatronBackend``: the :class:`~agentrl.trainer.backend.TrainBackend` on megatron-core (GPU).

One step reads like Megatron's own training loop: pack the batch into micro-batches of a token budget,
run Megatron's forward-backward schedule (pipelined when PP > 1) whose last stage turns hidden states
straight into the sampled tokens' logprobs (:mod:`.logprobs`), compute the same policy loss as the
torch backend (:func:`agentrl.trainer.losses.policy_loss`, with the batch's global denominators), and
step Megatron's (distributed) optimizer. Weights come from and go back to HF safetensors folders.

With ``kl_coef > 0`` a frozen reference model (:mod:`agentrl.trainer.reference`: the initial policy, or
``algorithm.ref_model``) gives the KL term's logprobs through the same packed forward, in a
forward-only pass before the step's forward-backward, as slime and verl do.
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

from agentrl.errors import CheckpointError
from agentrl.trainer.backend import TrainBatch
from agentrl.trainer.device_copy import to_device
from agentrl.trainer.megatron import hf_io
from agentrl.trainer.megatron.config import MegatronBackendConfig
from agentrl.trainer.megatron.distributed import init_distributed
from agentrl.trainer.megatron.hf_weights import Layout
from agentrl.trainer.megatron.logprobs import token_logprobs
from agentrl.trainer.megatron.model import build_gpt_model
from agentrl.trainer.megatron.packing import PackedMicroBatch, balance_across_ranks, pack, pack_by_budget
from agentrl.trainer.megatron.step_loss import GlobalDenominators, micro_batch_loss
from agentrl.trainer.reference import ReferenceModel, should_offload
from agentrl.trainer.step_metrics import StepMetrics, finish_totals, merge_totals


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
        self.models = self._build_models()
        self.optimizer = self._build_optimizer()
        self.ref: ReferenceModel | None = None
        if cfg.algorithm.kl_coef > 0:
            self.ref = self._build_reference()
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

    def _build_models(self) -> list[Any]:
        """The policy's chunks, wrapped in Megatron DDP."""
        chunks = self._build_chunks(self.model_path)
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

    def _build_optimizer(self) -> Any:
        opt = self.cfg.optimizer
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
            self.models,
            use_gloo_process_groups=False,
        )
        config: Any = self.models[0].config
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

    def _forward(self, model: torch.nn.Module, mb: PackedMicroBatch) -> torch.Tensor:
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
            output_processor=self._output_processor,
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
        self, mbs: list[PackedMicroBatch], step_fn: Any, forward_only: bool, models: list[Any] | None = None
    ) -> list[Any]:
        """Megatron's forward(-backward) schedule over ``mbs`` on ``models`` (default: the policy)."""
        models = self.models if models is None else models
        data = iter(mbs)
        vpp = len(models)

        def forward_step(data_iterator: Any, model: torch.nn.Module) -> tuple[torch.Tensor, Any]:
            mb = next(data_iterator)
            return self._forward(model, mb), partial(step_fn, mb)

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
        return self._logprobs_with(self.models, input_ids)

    def ref_logprobs(self, input_ids: list[torch.Tensor]) -> list[torch.Tensor]:
        """Per-token logprobs under the frozen reference model, like :meth:`logprobs`."""
        if self.ref is None:
            self.ref = self._build_reference()
        with self.ref.resident() as chunks:
            return self._logprobs_with(chunks, input_ids)

    @torch.no_grad()
    def _logprobs_with(self, models: list[Any], input_ids: list[torch.Tensor]) -> list[torch.Tensor]:
        """A forward-only pass of ``models``; the micro-batches' logprobs stay on the GPU until one copy
        to the host at the end (no host wait per micro-batch)."""
        mbs = self._micro_batches(input_ids)
        outputs: list[tuple[PackedMicroBatch, torch.Tensor]] = []

        def collect(mb: PackedMicroBatch, output: torch.Tensor) -> tuple[torch.Tensor, dict[str, Any]]:
            outputs.append((mb, output[0].float()))
            return output.new_zeros(()), {}

        if mbs:
            self._run(mbs, collect, forward_only=True, models=models)
        results: dict[int, torch.Tensor] = {}
        if outputs:  # the last pipeline stage only
            host = torch.cat([lp for _, lp in outputs]).cpu().split([mb.num_tokens for mb, _ in outputs])
            for (mb, _), lp in zip(outputs, host, strict=True):
                results.update(zip(mb.seq_indices, mb.unpack(lp), strict=True))
        gathered = _share(results)
        return [gathered[i] for i in range(len(input_ids))]

    def train_step(self, batch: TrainBatch) -> dict[str, float]:
        """One optimizer step over ``batch``; every rank passes the same batch and gets the same metrics.

        With ``kl_coef > 0`` and no ``ref_logprobs`` in the batch, the reference model computes them
        first (a forward-only pass over the same micro-batches)."""
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
        metrics = _reduce_metrics(outputs)
        metrics.update(
            grad_norm=float(grad_norm or 0.0),
            update_ok=float(bool(ok)),
            lr=self._lr(),
            num_micro_batches=float(len(mbs)),
        )
        return metrics

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

    def save(self, path: Path) -> None:
        """Per-rank file: model shards, fp32 main weights and Adam state of this rank, step, RNG."""
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        state = {
            "models": [hf_io.unwrap(m).state_dict() for m in self.models],
            "optimizers": [_torch_optimizer_state(o) for o in _optimizers(self.optimizer)],
            "steps_done": self.steps_done,
            "rng": tensor_parallel.get_cuda_rng_tracker().get_states(),
            "torch_rng": torch.cuda.get_rng_state(),
        }
        torch.save(state, path / f"megatron_rank{dist.get_rank():05d}.pt")

    def load(self, path: Path) -> None:
        """Restore what :meth:`save` wrote (same parallel layout)."""
        file = Path(path) / f"megatron_rank{dist.get_rank():05d}.pt"
        if not file.exists():
            raise CheckpointError(f"{file} missing: was the checkpoint saved with the same world size?")
        state = torch.load(file, map_location="cuda", weights_only=False)
        for m, sd in zip(self.models, state["models"], strict=True):
            hf_io.unwrap(m).load_state_dict(sd)
        for o, sd in zip(_optimizers(self.optimizer), state["optimizers"], strict=True):
            _load_torch_optimizer_state(o, sd)
        self.steps_done = int(state["steps_done"])
        tensor_parallel.get_cuda_rng_tracker().set_states(state["rng"])
        torch.cuda.set_rng_state(state["torch_rng"].cpu())


def _optimizers(optimizer: Any) -> list[Any]:
    return list(getattr(optimizer, "chained_optimizers", [optimizer]))


def _torch_optimizer_state(opt: Any) -> dict[str, Any]:
    """The inner torch optimizer's state and its fp32 main parameters (this rank's shard)."""
    inner = opt.optimizer
    main = [p.detach().clone() for g in inner.param_groups for p in g["params"]]
    return {"inner": inner.state_dict(), "main_params": main}


def _load_torch_optimizer_state(opt: Any, state: dict[str, Any]) -> None:
    inner = opt.optimizer
    params = [p for g in inner.param_groups for p in g["params"]]
    with torch.no_grad():
        for p, saved in zip(params, state["main_params"], strict=True):
            p.copy_(saved)
    inner.load_state_dict(state["inner"])


def _share(results: dict[int, torch.Tensor]) -> dict[int, torch.Tensor]:
    """Merge per-rank results: from the last pipeline stage to all stages, then across DP ranks."""
    if dist.get_world_size() == 1:
        return results
    box = [results]
    pp_group = parallel_state.get_pipeline_model_parallel_group()
    last = dist.get_global_rank(pp_group, dist.get_world_size(pp_group) - 1)
    dist.broadcast_object_list(box, src=last, group=pp_group)
    parts: list[dict[int, torch.Tensor]] = [{} for _ in range(parallel_state.get_data_parallel_world_size())]
    dist.all_gather_object(parts, box[0], group=parallel_state.get_data_parallel_group())
    return {k: v for part in parts for k, v in part.items()}


def _reduce_metrics(outputs: list[dict[str, Any]]) -> dict[str, float]:
    """The step's metrics, the same on every rank.

    Combined as :mod:`agentrl.trainer.step_metrics` says: ``loss`` (and ``pg_loss``) add up, since each
    micro-batch's term is already normalised by whole-batch denominators; max/min metrics take the
    max/min; the others are means weighted by trained tokens. The micro-batches' device tensors are
    read in one host copy; the totals go from the last pipeline stage to all stages, then are merged
    across data-parallel ranks (each holds a share of the batch).
    """
    acc = StepMetrics()
    for o in outputs:
        values = {k: v for k, v in o.items() if k != "_tokens"}
        acc.add(values, float(o.get("_tokens", 0.0)))
    totals = acc.totals()
    if dist.get_world_size() > 1:
        box: list[Any] = [totals]
        pp_group = parallel_state.get_pipeline_model_parallel_group()
        last = dist.get_global_rank(pp_group, dist.get_world_size(pp_group) - 1)
        dist.broadcast_object_list(box, src=last, group=pp_group)
        parts: list[Any] = [None] * parallel_state.get_data_parallel_world_size()
        dist.all_gather_object(parts, box[0], group=parallel_state.get_data_parallel_group())
        totals = merge_totals(parts)
    return finish_totals(totals)
