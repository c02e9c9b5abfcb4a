"""Configuration of the RL algorithm and of the training backends (frozen dataclasses, one docstring a field).

The train loop and the CLI build these; the CLI generates its flags from the field docstrings, so every
field says what it does and what a sensible value is. ``AlgorithmConfig`` is backend-agnostic: the torch
and the Megatron backend read the same one and call the same loss functions.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Literal

from agentrl.errors import ConfigError

AdvantageEstimator = Literal["grpo", "dr_grpo", "rloo", "reinforce_plus_plus_baseline", "ppo"]
PolicyLoss = Literal["ppo", "gspo"]
LossType = Literal["policy", "sft"]
LossAggMode = Literal["token-mean", "seq-mean-token-mean", "seq-mean-token-sum", "seq-mean-token-sum-norm"]
KLEstimator = Literal["k1", "k2", "k3", "low_var_kl"]
LRDecayStyle = Literal["constant", "linear", "cosine"]
RefOffload = Literal["auto", "always", "never"]
Offload = Literal["auto", "always", "never"]


@dataclass(frozen=True)
class AlgorithmConfig:
    """How advantages and the policy loss are computed (GRPO family)."""

    loss_type: LossType = field(default="policy", metadata={"rare": True})
    """``policy``: the RL loss below (advantages, clipping, KL); ``sft``: supervised fine-tuning, the
    negative log-likelihood of the masked tokens aggregated by ``loss_agg_mode`` (advantages ignored;
    slime's ``--loss-type sft_loss``). ``agentrl sft`` sets it."""
    advantage_estimator: AdvantageEstimator = "grpo"
    """``grpo``: (r - group mean) / (group std + eps); ``dr_grpo``: r - group mean (no std division);
    ``rloo``: r - mean of the other samples of the group; ``reinforce_plus_plus_baseline``: r - group
    mean, then normalised by the std over the whole batch; ``ppo``: token-level GAE with a learned
    critic (its ``--critic-*`` flags are listed by --help-all; docs/critic.md)."""
    gamma: float = field(default=1.0, metadata={"rare": True})
    """``ppo``: GAE's discount per sampled token (tool-output tokens are not steps). 1.0 (slime, verl):
    the reward at the end is not shrunk by the episode's length."""
    lambd: float = field(default=0.95, metadata={"rare": True})
    """``ppo``: GAE's lambda (slime's ``--lambd``): 1.0 is the Monte-Carlo return minus the value
    (unbiased, high variance), 0.0 the one-step TD error (leans on the critic)."""
    adv_eps: float = field(default=1e-6, metadata={"rare": True})
    """Added to the std before dividing, so a group of equal rewards gives 0, not NaN."""
    policy_loss: PolicyLoss = "ppo"
    """``ppo``: token-level clipped ratio; ``gspo``: one ratio per sequence, the geometric mean of its
    token ratios (GSPO); use far smaller clip eps with it (the paper: 3e-4 low, 4e-4 high)."""
    clip_eps_low: float = 0.2
    """The ratio is clipped from below at ``1 - clip_eps_low``."""
    clip_eps_high: float = 0.28
    """The ratio is clipped from above at ``1 + clip_eps_high`` (DAPO's clip-higher: > low keeps
    exploration alive)."""
    dual_clip_c: float | None = field(default=3.0, metadata={"rare": True})
    """Dual clip: for negative advantages the loss is capped at ``-c * A`` so a huge ratio cannot blow
    it up (must be > 1). ``None`` turns it off."""
    loss_agg_mode: LossAggMode = field(default="token-mean", metadata={"rare": True})
    """``token-mean``: mean over every trained token of the batch; ``seq-mean-token-mean``: mean over
    sequences of each one's token mean (GRPO paper); ``seq-mean-token-sum``: mean over sequences of
    token sums; ``seq-mean-token-sum-norm``: token sums divided by the constant ``loss_norm_tokens``
    (Dr.GRPO), so no length bias."""
    loss_norm_tokens: int | None = field(default=None, metadata={"rare": True})
    """The constant normaliser of ``seq-mean-token-sum-norm`` (Dr.GRPO uses the max response length).
    ``None``: the longest trained-token count of the batch."""
    kl_coef: float = 0.0
    """Weight of the KL(policy || reference) term added to the loss. 0 skips the reference model
    entirely (no memory, no forward pass). Search-R1 uses 0.001."""
    ref_model: str | None = None
    """The KL term's reference model: an HF folder of the policy's architecture. ``None``: the initial
    policy (the ``--model`` weights), frozen. Only read when ``kl_coef > 0``."""
    kl_estimator: KLEstimator = field(default="low_var_kl", metadata={"rare": True})
    """Per-token KL estimator (Schulman): ``k1`` = log r, ``k2`` = (log r)^2 / 2, ``k3`` =
    exp(-log r) + log r - 1, ``low_var_kl`` = k3 clamped as verl does (for numerical safety)."""
    tis_cap: float | None = None
    """Truncated importance sampling: weight each token's loss by min(exp(old - rollout logprob),
    cap), correcting for the engine's sampling differing from the trainer's. ``None`` turns it off;
    2.0 is the usual cap."""
    icepop_low: float | None = field(default=None, metadata={"rare": True})
    """ICEPOP-style masking: tokens whose ratio exp(old - rollout logprob) is below this (or above
    ``icepop_high``) get no gradient at all, instead of TIS's capped weight; set both bounds (the
    ICEPOP paper: 0.5 and 5.0). ``None`` turns it off. Combines with ``tis_cap`` (docs/async.md)."""
    icepop_high: float | None = field(default=None, metadata={"rare": True})
    """The upper bound of the ICEPOP band (> 1); see ``icepop_low``."""
    entropy_coef: float = field(default=0.0, metadata={"rare": True})
    """Weight of an entropy bonus (subtracted from the loss). Entropy is always logged as a metric."""

    def __post_init__(self) -> None:
        if not 0 <= self.clip_eps_low < 1 or self.clip_eps_high < 0:
            raise ConfigError(
                f"clip eps low={self.clip_eps_low}, high={self.clip_eps_high}: need 0 <= low < 1 and "
                "high >= 0 (typical: 0.2 and 0.28)"
            )
        if self.dual_clip_c is not None and self.dual_clip_c <= 1.0:
            raise ConfigError(f"dual_clip_c={self.dual_clip_c} must be > 1 (typical: 3.0) or None")
        if self.kl_coef < 0:
            raise ConfigError(f"kl_coef={self.kl_coef} must be >= 0")
        if self.tis_cap is not None and self.tis_cap <= 0:
            raise ConfigError(f"tis_cap={self.tis_cap} must be > 0 (typical: 2.0) or None")
        if (self.icepop_low is None) != (self.icepop_high is None):
            raise ConfigError("ICEPOP masking needs both --icepop-low and --icepop-high (e.g. 0.5 and 5.0)")
        if self.icepop_low is not None and not 0 < self.icepop_low < 1 < self.icepop_high:  # type: ignore[operator]
            raise ConfigError(
                f"icepop band [{self.icepop_low}, {self.icepop_high}] must have 0 < low < 1 < high "
                "(typical: 0.5 and 5.0)"
            )
        if self.loss_norm_tokens is not None and self.loss_norm_tokens <= 0:
            raise ConfigError(f"loss_norm_tokens={self.loss_norm_tokens} must be a positive int or None")
        if not (0.0 <= self.gamma <= 1.0 and 0.0 <= self.lambd <= 1.0):
            raise ConfigError(
                f"gamma={self.gamma} and lambd={self.lambd} must be in [0, 1] (typical: 1.0, 0.95)"
            )

    @property
    def corrects_off_policy(self) -> bool:
        """Whether the loss reweights or masks tokens by the trainer-vs-rollout ratio (TIS or ICEPOP):
        what asynchronous training needs (docs/async.md)."""
        return self.tis_cap is not None or self.icepop_low is not None

    @property
    def uses_critic(self) -> bool:
        """Whether advantages come from a learned value model (``ppo``) rather than rewards alone."""
        return self.advantage_estimator == "ppo"


@dataclass(frozen=True)
class OptimizerConfig:
    """AdamW with a linear warmup, then a constant, linear or cosine lr (shared by the training backends)."""

    lr: float = 1e-6
    """Peak learning rate (Search-R1: 1e-6; tiny models on CPU learn faster with ~1e-5)."""
    weight_decay: float = field(default=0.0, metadata={"rare": True})
    """Decoupled weight decay of AdamW."""
    betas: tuple[float, float] = field(default=(0.9, 0.999), metadata={"rare": True})
    """AdamW betas."""
    eps: float = field(default=1e-8, metadata={"rare": True})
    """AdamW epsilon."""
    warmup_steps: int = 0
    """Optimizer steps over which the lr ramps linearly from lr/warmup_steps up to lr."""
    lr_decay_style: LRDecayStyle = "constant"
    """After warmup: constant at lr, or a linear / cosine decay from lr to min_lr over lr_decay_steps."""
    min_lr: float = field(default=0.0, metadata={"rare": True})
    """Where linear / cosine decay ends (and stays)."""
    lr_decay_steps: int = field(default=0, metadata={"rare": True})
    """Optimizer steps of the decay after warmup; 0: the run's whole budget (num_rollouts x
    steps_per_rollout, minus warmup). Rollouts skipped for lack of signal take no optimizer step."""
    max_grad_norm: float | None = field(default=1.0, metadata={"rare": True})
    """Clip the global gradient norm to this; ``None`` disables clipping (the norm is still logged)."""

    def __post_init__(self) -> None:
        if self.lr <= 0 or self.warmup_steps < 0:
            raise ConfigError(f"lr={self.lr} must be > 0 and warmup_steps={self.warmup_steps} >= 0")
        if self.max_grad_norm is not None and self.max_grad_norm <= 0:
            raise ConfigError(f"max_grad_norm={self.max_grad_norm} must be > 0 or None")
        if not 0 <= self.min_lr <= self.lr or self.lr_decay_steps < 0:
            raise ConfigError(
                f"min_lr={self.min_lr} must be in [0, lr={self.lr}] and lr_decay_steps={self.lr_decay_steps} >= 0"
            )
        if self.lr_decay_style not in ("constant", "linear", "cosine"):
            raise ConfigError(f"lr_decay_style={self.lr_decay_style!r}: choose constant, linear or cosine")

    def lr_at(self, step: int) -> float:
        """The learning rate of optimizer step ``step`` (0-based)."""
        if step < self.warmup_steps:
            return self.lr * (step + 1) / self.warmup_steps
        if self.lr_decay_style == "constant" or self.lr_decay_steps == 0:
            return self.lr
        progress = min(1.0, (step - self.warmup_steps) / self.lr_decay_steps)
        shape = (
            1.0 - progress if self.lr_decay_style == "linear" else 0.5 * (1.0 + math.cos(math.pi * progress))
        )
        return self.min_lr + (self.lr - self.min_lr) * shape


@dataclass(frozen=True)
class CriticConfig:
    """The value model of ``--advantage-estimator ppo``: the policy's architecture with a scalar head.

    It has its own optimizer and lr schedule (AdamW, as the policy's), is saved in checkpoints and
    exported beside the policy, and is never sent to the inference engines. Ignored by other estimators.
    """

    critic_model: str | None = field(default=None, metadata={"rare": True})
    """Where the critic starts: an HF folder of the policy's architecture (a critic exported by an
    earlier run brings its value head, ``value_head.safetensors``). ``None``: the initial policy's
    weights (``--model``) with a new value head initialised to 0."""
    critic_lr: float = field(default=1e-5, metadata={"rare": True})
    """Peak learning rate of the critic (critics usually take a larger one than the policy)."""
    critic_warmup_steps: int = field(default=0, metadata={"rare": True})
    """Train steps at the start that update only the critic (the policy stays as it is), so the first
    policy updates see advantages of a critic that has already learned something."""
    critic_lr_warmup_steps: int = field(default=0, metadata={"rare": True})
    """Critic optimizer steps over which its lr ramps linearly up to critic_lr."""
    critic_lr_decay_style: LRDecayStyle = field(default="constant", metadata={"rare": True})
    """After warmup: constant, or linear / cosine decay from critic_lr to critic_min_lr."""
    critic_min_lr: float = field(default=0.0, metadata={"rare": True})
    """Where the critic's linear / cosine decay ends."""
    critic_lr_decay_steps: int = field(default=0, metadata={"rare": True})
    """Critic optimizer steps of the decay after warmup; 0: the run's whole budget."""
    critic_weight_decay: float = field(default=0.0, metadata={"rare": True})
    """Decoupled weight decay of the critic's AdamW."""
    critic_max_grad_norm: float | None = field(default=1.0, metadata={"rare": True})
    """Clip the critic's gradient norm to this; ``None``: no clipping."""
    value_clip: float | None = field(default=0.2, metadata={"rare": True})
    """Value-loss clipping (PPO2): a value may move at most this far from its value before the
    update, ``0.5 * max((V - G)^2, (V_old + clip(V - V_old, -c, c) - G)^2)``. ``None`` turns it off."""
    critic_offload: Offload = field(default="auto", metadata={"rare": True})
    """On GPU, where the critic's weights and Adam state wait between its passes: ``always`` on the
    host, ``never`` on the GPU, ``auto`` on the host when they exceed a tenth of the free GPU memory
    (colocated runs, where engines need the memory while the trainer waits). Ignored on CPU."""

    def __post_init__(self) -> None:
        if self.critic_warmup_steps < 0:
            raise ConfigError(f"critic_warmup_steps={self.critic_warmup_steps} must be >= 0")
        if self.value_clip is not None and self.value_clip <= 0:
            raise ConfigError(f"value_clip={self.value_clip} must be > 0 (typical: 0.2) or None")
        if self.critic_offload not in ("auto", "always", "never"):
            raise ConfigError(f"critic_offload={self.critic_offload!r}: choose auto, always or never")
        self.optimizer()  # validates the lr settings

    def optimizer(self) -> OptimizerConfig:
        """The critic's AdamW and lr schedule as an :class:`OptimizerConfig`."""
        return OptimizerConfig(
            lr=self.critic_lr,
            weight_decay=self.critic_weight_decay,
            warmup_steps=self.critic_lr_warmup_steps,
            lr_decay_style=self.critic_lr_decay_style,
            min_lr=self.critic_min_lr,
            lr_decay_steps=self.critic_lr_decay_steps,
            max_grad_norm=self.critic_max_grad_norm,
        )


@dataclass(frozen=True)
class TorchOptions:
    """Settings of the plain-torch backend of its own (a run's algorithm, optimizer and seed are shared)."""

    device: str = field(default="auto", metadata={"flag": "torch-device"})
    """``auto`` (CUDA when available, else CPU), ``cpu``, ``cuda`` or ``cuda:N``."""
    bf16: bool = True
    """On GPU, run forward/backward under bf16 autocast (weights and optimizer stay fp32). On CPU see
    --cpu-bf16."""
    cpu_bf16: bool = field(default=False, metadata={"rare": True})
    """On CPU, run forward/backward under bf16 autocast too (weights and optimizer stay fp32). On a CPU
    with AVX-512 BF16 or AMX a step is about 1.9x faster (SmolLM2-135M, 2-core EPYC); off by default
    because the CPU default engine is fp32, whose logprobs an fp32 trainer matches exactly."""
    fp32_lm_head: bool = True
    """Compute the LM head in fp32 (outside autocast): logits not rounded to bf16, whose rounding
    (about |logit| / 512) dominated the trainer/engine logprob gap (issue 17); the Megatron backend's
    head returns fp32 logits as well. Models that scale their logits after the head keep their own."""
    ref_offload: RefOffload = "auto"
    """On GPU, where the KL reference model's weights wait between reference passes: ``always`` in
    pinned host memory (copied in once a step), ``never`` on the GPU, ``auto`` on the host when they
    exceed a tenth of the GPU memory free once the policy is built. Ignored on CPU."""
    gradient_checkpointing: bool = True
    """On GPU, recompute activations in backward to save memory. Ignored on CPU."""
    micro_batch_tokens: int = 4096
    """Token budget of one micro-batch (padded length x sequences); gradients accumulate over
    micro-batches. A sequence longer than the budget gets a micro-batch of its own."""

    def __post_init__(self) -> None:
        if self.micro_batch_tokens <= 0:
            raise ConfigError(f"micro_batch_tokens={self.micro_batch_tokens} must be > 0 (try 4096)")
        if self.ref_offload not in ("auto", "always", "never"):
            raise ConfigError(f"ref_offload={self.ref_offload!r}: choose auto, always or never")


@dataclass(frozen=True)
class TorchBackendConfig(TorchOptions):
    """The plain-torch training backend: an HF transformers model on CPU or one GPU."""

    algorithm: AlgorithmConfig = field(default_factory=AlgorithmConfig)
    """Advantage / loss / KL settings."""
    optimizer: OptimizerConfig = field(default_factory=OptimizerConfig)
    """Optimizer and lr schedule."""
    seed: int = 0
    """Seed of torch's RNG at construction (dropout, if the model has any)."""
    critic: CriticConfig = field(default_factory=CriticConfig)
    """The value model (only built when ``algorithm.advantage_estimator`` is ``ppo``)."""

    @classmethod
    def of(
        cls,
        options: TorchOptions,
        algorithm: AlgorithmConfig,
        optimizer: OptimizerConfig,
        seed: int,
        critic: CriticConfig | None = None,
    ) -> TorchBackendConfig:
        """The backend config of a run: its torch options with the run's algorithm, optimizer, seed and
        critic."""
        fields = {f.name: getattr(options, f.name) for f in dataclasses.fields(TorchOptions)}
        return cls(
            **fields, algorithm=algorithm, optimizer=optimizer, seed=seed, critic=critic or CriticConfig()
        )

    def __post_init__(self) -> None:
        if self.micro_batch_tokens <= 0:
            raise ConfigError(f"micro_batch_tokens={self.micro_batch_tokens} must be > 0 (try 4096)")
        if self.ref_offload not in ("auto", "always", "never"):
            raise ConfigError(f"ref_offload={self.ref_offload!r}: choose auto, always or never")
