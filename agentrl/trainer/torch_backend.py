"""`TorchBackend`: the policy as a plain Hugging Face transformers model on CPU or one GPU.

This is the backend of laptop and single-GPU runs (Megatron is the multi-GPU one); both implement
:class:`agentrl.trainer.backend.TrainBackend` and call the same loss functions. Sequences are right-padded
into micro-batches that fit a token budget; gradients accumulate over them and the loss uses the whole
batch's denominators, so the update does not depend on how the batch was split.

Example::

    >>> backend = TorchBackend("path/to/hf_model", TorchBackendConfig())
    >>> batch, _ = trajectories_to_batch(trajectories, backend.config.algorithm)
    >>> metrics = backend.train_step(batch)      # {'loss': ..., 'grad_norm': ..., 'clip_frac': ...}
    >>> backend.export_hf(Path("out/hf"))         # loadable by transformers and SGLang
"""

from __future__ import annotations

import copy
import math
from collections.abc import Iterator
from contextlib import AbstractContextManager, nullcontext, suppress
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch.nn.utils.rnn import pad_sequence

from agentrl.errors import CheckpointError, ConfigError
from agentrl.trainer.backend import TrainBatch
from agentrl.trainer.config import TorchBackendConfig
from agentrl.trainer.critic import TorchCritic
from agentrl.trainer.device_copy import to_device
from agentrl.trainer.gae import fill_gae
from agentrl.trainer.kl import entropy_from_logits
from agentrl.trainer.losses import policy_loss
from agentrl.trainer.micro_batches import pad_right, plan_micro_batches
from agentrl.trainer.reference import ReferenceModel, should_offload
from agentrl.trainer.step_metrics import StepMetrics

if TYPE_CHECKING:
    from transformers import PreTrainedModel

STATE_FILE = "trainer_state.pt"


def _resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device={name!r} but CUDA is not available here; use device='cpu' or 'auto'")
    return device


def _scales_logits(model: torch.nn.Module) -> bool:
    """Whether the model's forward changes its logits after the LM head (a scale or a soft cap), which
    the fp32 head path of :meth:`TorchBackend._forward` would skip."""
    cfg = getattr(model, "config", None)
    return any(getattr(cfg, k, None) not in (None, 1.0) for k in ("logit_scale", "final_logit_softcapping"))


class TorchBackend:
    """A trainable HF causal LM (and a frozen reference model when ``kl_coef > 0``).

    Dropout is switched off: the trainer's logprobs must equal those the engine sampled from, and
    dropout would make every recompute differ. The reference model is ``algorithm.ref_model`` or else
    the initial weights: a copy of the policy at construction when ``kl_coef > 0``, otherwise loaded
    from ``model_path`` on first use (a config switched to KL later). A resumed run constructs the
    backend from the same initial model before :meth:`load`, so it gets the same reference.
    """

    def __init__(self, model_path: str | Path, config: TorchBackendConfig | None = None) -> None:
        from transformers import AutoModelForCausalLM, AutoTokenizer

        self.config = config or TorchBackendConfig()
        self.model_path = Path(model_path)
        self.device = _resolve_device(self.config.device)
        torch.manual_seed(self.config.seed)
        self.model: PreTrainedModel = AutoModelForCausalLM.from_pretrained(model_path, dtype=torch.float32)
        self.model.to(self.device)  # type: ignore[call-arg,arg-type]  # transformers wraps .to in a decorator mypy misreads
        self.model.eval()
        for module in self.model.modules():
            if isinstance(module, torch.nn.Dropout):
                module.p = 0.0
        self.tokenizer: Any = None  # stays None for a weights-only folder: export_hf writes no tokenizer
        with suppress(OSError, ValueError):
            self.tokenizer = AutoTokenizer.from_pretrained(model_path)
        pad = getattr(self.model.config, "pad_token_id", None)
        self.pad_id = int(pad) if isinstance(pad, int) else 0
        on_gpu = self.device.type == "cuda"
        self.autocast_bf16 = self.config.bf16 if on_gpu else self.config.cpu_bf16
        if on_gpu and self.config.gradient_checkpointing:
            self.model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        self.ref: ReferenceModel | None = None
        if self.config.algorithm.kl_coef > 0:
            self.ref = self._build_reference(copy_policy=True)
        opt = self.config.optimizer
        self.optimizer = torch.optim.AdamW(
            self.model.parameters(), lr=opt.lr, betas=opt.betas, eps=opt.eps, weight_decay=opt.weight_decay
        )
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, lambda s: opt.lr_at(s) / opt.lr)
        self.step = 0
        self.critic: TorchCritic | None = None
        if self.config.algorithm.uses_critic:
            self.critic = TorchCritic(
                self.model_path,
                self.config.critic,
                device=self.device,
                autocast=self._autocast,
                micro_batch_tokens=self.config.micro_batch_tokens,
                pad_id=self.pad_id,
                gradient_checkpointing=self.config.gradient_checkpointing,
            )

    def _build_reference(self, *, copy_policy: bool) -> ReferenceModel:
        """The frozen reference: ``algorithm.ref_model``, else a copy of the (untrained) policy or the
        initial weights read again from ``model_path``; on GPU offloaded as ``ref_offload`` says."""
        from transformers import AutoModelForCausalLM

        path = self.config.algorithm.ref_model
        if path is None and copy_policy:
            ref: torch.nn.Module = copy.deepcopy(self.model)
        else:
            loaded: Any = AutoModelForCausalLM.from_pretrained(path or self.model_path, dtype=torch.float32)
            ref = loaded.to(self.device)
        offload = False
        if self.device.type == "cuda":
            weight_bytes = sum(p.numel() * p.element_size() for p in ref.parameters())
            free = torch.cuda.mem_get_info(self.device)[0]
            offload = should_offload(self.config.ref_offload, weight_bytes, free)
        return ReferenceModel([ref], offload=offload)

    @property
    def ref_model(self) -> torch.nn.Module | None:
        """The reference model (its weights may be on the host between passes), or None before use."""
        return None if self.ref is None else self.ref.chunks[0]

    def _reference(self) -> ReferenceModel:
        if self.ref is None:
            self.ref = self._build_reference(copy_policy=False)
        return self.ref

    def _autocast(self) -> AbstractContextManager[object]:
        if self.autocast_bf16:
            return torch.autocast(device_type=self.device.type, dtype=torch.bfloat16)
        return nullcontext()

    def _forward(
        self,
        model: torch.nn.Module,
        ids: list[torch.Tensor],
        mask: torch.Tensor | None = None,
        *,
        entropy: bool = False,
        first: int = 1,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Logprobs (B, T) of each token given its prefix and, with ``entropy``, entropy (B, T). Columns
        before ``first`` are 0.0: the LM head runs only on the positions that predict tokens
        ``first..T-1`` (a prompt shared by the batch costs no logits); given a ``mask`` (B, T), only on
        the positions predicting its nonzero tokens (the rest are 0.0: a multi-turn episode's tool output
        costs no logits). Full-vocab fp32 logits live only inside this call."""
        input_ids = pad_right(ids, self.device, self.pad_id).long()  # (B, T)
        n_seq, seq_len = input_ids.shape
        lengths = torch.tensor([len(x) for x in ids], device=self.device)
        attention_mask = (torch.arange(seq_len, device=self.device)[None] < lengths[:, None]).long()
        # the positions whose tokens get a logprob: all from ``first`` on, or the mask's
        sel = (torch.ones_like(input_ids, dtype=torch.bool) if mask is None else mask.bool())[:, first:]
        targets = input_ids[:, first:][sel]  # (N,)
        hf: Any = model  # a transformers PreTrainedModel
        head = hf.get_output_embeddings() if self.config.fp32_lm_head else None
        if isinstance(head, torch.nn.Linear) and not _scales_logits(model):
            with self._autocast():
                out = hf.base_model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False)
            hidden = out.last_hidden_state[:, first - 1 : -1]  # (B, T-first, H)
            hidden = hidden[sel].float()  # (N, H)
            with torch.autocast(device_type=self.device.type, enabled=False):
                logits = F.linear(
                    hidden, head.weight.float(), None if head.bias is None else head.bias.float()
                )
        else:
            with self._autocast():
                out = model(
                    input_ids=input_ids,
                    attention_mask=attention_mask,
                    use_cache=False,
                    logits_to_keep=seq_len - first + 1,
                )
            logits = out.logits[:, :-1].float()  # (B, T-first, V): position t-1 predicts token t
            logits = logits[sel]  # (N, V)
        token_lp = logits.gather(-1, targets.unsqueeze(-1)).squeeze(-1) - torch.logsumexp(logits, dim=-1)
        lp = token_lp.new_zeros(n_seq, seq_len)
        lp[:, first:][sel] = token_lp
        ent = None
        if entropy:
            with torch.set_grad_enabled(torch.is_grad_enabled() and self.config.algorithm.entropy_coef != 0):
                rows = entropy_from_logits(logits)  # (N,)
            ent = lp.new_zeros(lp.shape)
            ent[:, first:][sel] = rows
        return lp, ent

    @torch.no_grad()
    def _logprobs_with(self, model: torch.nn.Module, input_ids: list[torch.Tensor]) -> list[torch.Tensor]:
        out: list[torch.Tensor] = [torch.empty(0)] * len(input_ids)
        for group in plan_micro_batches([len(x) for x in input_ids], self.config.micro_batch_tokens):
            lp, _ = self._forward(model, [input_ids[i] for i in group])
            for row, i in enumerate(group):
                out[i] = lp[row, : len(input_ids[i])].float().cpu()
        return out

    def logprobs(self, input_ids: list[torch.Tensor]) -> list[torch.Tensor]:
        """Per-token logprobs under the current policy, each (T_i,) float32 on CPU, entry 0 = 0.0."""
        return self._logprobs_with(self.model, input_ids)

    def ref_logprobs(self, input_ids: list[torch.Tensor]) -> list[torch.Tensor]:
        """Per-token logprobs under the frozen reference model, like :meth:`logprobs`."""
        with self._reference().resident() as (ref,):
            return self._logprobs_with(ref, input_ids)

    def estimate_advantages(self, batches: list[TrainBatch]) -> tuple[list[TrainBatch], dict[str, float]]:
        """``ppo``: the critic values every batch of a rollout before any is trained on, then GAE
        (:func:`agentrl.trainer.gae.fill_gae`); other estimators: the batches as they are."""
        if self.critic is None:
            return batches, {}
        return fill_gae(batches, [self.critic.values(b.input_ids) for b in batches], self.config.algorithm)

    def train_step(self, batch: TrainBatch) -> dict[str, float]:
        """One AdamW step over ``batch``; gradients accumulate over token-budget micro-batches.

        ``old_logprobs`` default to the current policy's (on-policy: ratio 1, exactly GRPO's single
        update); ``ref_logprobs`` are computed from the reference model when needed and not given: per
        micro-batch, or for the whole batch first when its weights wait on the host (one copy in).
        A non-finite gradient norm skips the update (reported as ``skipped_nonfinite``).

        With ``ppo`` the critic takes a step too (advantages from :meth:`estimate_advantages` when the
        batch has none yet), and during its first ``critic_warmup_steps`` steps only the critic does
        (``critic_warmup`` 1, the policy unchanged).
        """
        n_tokens = float(sum(float(m.sum()) for m in batch.loss_mask))
        if len(batch) == 0 or n_tokens == 0:
            return {"skipped_empty": 1.0, "num_tokens": 0.0, "lr": float(self.scheduler.get_last_lr()[0])}
        denominators = {
            "num_tokens": n_tokens,
            "num_seqs": float(len(batch)),
            "norm_tokens": float(max(float(m.sum()) for m in batch.loss_mask)),
        }
        critic_metrics: dict[str, float] = {}
        if self.critic is not None:
            if batch.returns is None:
                (batch,), critic_metrics = self.estimate_advantages([batch])
            warming_up = self.critic.step < self.config.critic.critic_warmup_steps
            mode = self.config.algorithm.loss_agg_mode
            critic_metrics.update(self.critic.train_step(batch, mode, denominators))
            if warming_up:
                return {**critic_metrics, "critic_warmup": 1.0, "num_tokens": n_tokens}
        if self.config.algorithm.kl_coef > 0 and batch.ref_logprobs is None and self._reference().offload:
            batch = replace(batch, ref_logprobs=self.ref_logprobs(batch.input_ids))
        self.model.train()
        self.optimizer.zero_grad(set_to_none=True)
        acc = StepMetrics()  # tensors until the step ends: one host copy, not several per micro-batch
        groups = plan_micro_batches([len(x) for x in batch.input_ids], self.config.micro_batch_tokens)
        for group in groups:
            acc.add(*self._micro_step(batch, group, denominators))
        self.model.eval()
        result = {"loss": 0.0, **acc.result(), **critic_metrics}
        result.update(self._optimizer_step())
        result.update(num_tokens=n_tokens, num_micro_batches=float(len(groups)))
        return result

    def _micro_step(
        self, batch: TrainBatch, group: list[int], denominators: dict[str, float]
    ) -> tuple[dict[str, torch.Tensor], float]:
        """Forward + backward of one micro-batch; returns its metrics (``loss``: its share of the batch
        loss) as device tensors, and its trained-token count."""
        algo = self.config.algorithm
        ids = [batch.input_ids[i] for i in group]

        def pick(tensors: list[torch.Tensor]) -> torch.Tensor:  # (B, T) float32, zero-padded
            return pad_right([tensors[i].float() for i in group], self.device)

        host_mask = pad_sequence([batch.loss_mask[i].float() for i in group], batch_first=True)  # (B, T) CPU
        trained = host_mask.any(dim=0)  # decided on the host: no wait for the device
        if not bool(trained.any()):
            return {}, 0.0  # nothing trained here: skip the forward
        first = max(1, int(torch.nonzero(trained)[0, 0]))  # first trained column of the micro-batch
        mask = to_device(host_mask, self.device)
        ref = None if batch.ref_logprobs is None else pick(batch.ref_logprobs)
        if algo.kl_coef > 0 and ref is None:
            with torch.no_grad(), self._reference().resident() as (ref_model,):
                ref, _ = self._forward(ref_model, ids, mask, first=first)
        lp, entropy = self._forward(self.model, ids, mask, entropy=True, first=first)
        old = lp.detach() if batch.old_logprobs is None else pick(batch.old_logprobs)
        out = policy_loss(
            lp,
            old,
            pick(batch.advantages),
            mask,
            algo,
            rollout_logprobs=pick(batch.rollout_logprobs),
            ref_logprobs=ref,
            entropy=entropy,
            **denominators,
        )
        out.loss.backward()
        return {**out.metrics, "loss": out.loss.detach()}, float(host_mask.sum())

    def _optimizer_step(self) -> dict[str, float]:
        max_norm = self.config.optimizer.max_grad_norm
        params = [p for p in self.model.parameters() if p.requires_grad]
        grad_norm = float(
            torch.nn.utils.clip_grad_norm_(params, max_norm if max_norm is not None else math.inf)
        )
        lr = float(self.scheduler.get_last_lr()[0])
        if not math.isfinite(grad_norm):
            self.optimizer.zero_grad(set_to_none=True)
            return {"grad_norm": grad_norm, "lr": lr, "skipped_nonfinite": 1.0}
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.step += 1
        return {"grad_norm": grad_norm, "lr": lr}

    def hf_state_dict(self) -> Iterator[tuple[str, torch.Tensor]]:
        """The policy's weights under their Hugging Face names (detached, on the model's device)."""
        for name, tensor in self.model.state_dict().items():
            yield name, tensor.detach()

    def save(self, path: Path) -> None:
        """Write model, optimizer, scheduler, step, torch RNG state (and the critic's weights, optimizer,
        schedule and step) to ``path/trainer_state.pt``."""
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        rng = {"cpu": torch.get_rng_state()}
        if self.device.type == "cuda":
            rng["cuda"] = torch.cuda.get_rng_state(self.device)
        state = {
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "step": self.step,
            "rng": rng,
        }
        if self.critic is not None:
            state["critic"] = self.critic.state_dict()
        torch.save(state, path / STATE_FILE)

    def load(self, path: Path) -> None:
        """Restore what :meth:`save` wrote (the model must be the same architecture)."""
        file = Path(path) / STATE_FILE
        if not file.is_file():
            raise CheckpointError(f"{file} does not exist; pass the folder that TorchBackend.save wrote")
        state = torch.load(file, map_location=self.device, weights_only=True)
        try:
            self.model.load_state_dict(state["model"])
        except RuntimeError as e:
            raise CheckpointError(f"{file} holds weights of a different model: {e}") from e
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.step = int(state["step"])
        if self.critic is not None and "critic" in state:  # a run switched to ppo keeps its new critic
            self.critic.load_state_dict(state["critic"])
        torch.set_rng_state(state["rng"]["cpu"].cpu())
        if "cuda" in state["rng"] and self.device.type == "cuda":
            torch.cuda.set_rng_state(state["rng"]["cuda"].cpu(), self.device)

    def export_hf(self, path: Path) -> None:
        """Write config, safetensors weights, generation config and tokenizer to ``path``."""
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        self.model.save_pretrained(path, safe_serialization=True)
        if self.tokenizer is not None:
            self.tokenizer.save_pretrained(path)

    def export_critic_hf(self, path: Path) -> None:
        """The critic as an HF folder with its value head (``--critic-model`` loads it); ``ppo`` only."""
        if self.critic is None:
            raise ConfigError("no critic to export: it exists with --advantage-estimator ppo only")
        self.critic.export_hf(path)
