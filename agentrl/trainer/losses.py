"""Policy losses of the GRPO family on per-token tensors; backend-agnostic (plain tensors in, scalar out).

Every per-token tensor is (B, T): B sequences right-padded to T, with a 0/1 ``mask`` marking the tokens
that are trained on. Entry ``t`` is the logprob of token ``t`` (computed from the logits at ``t - 1``).

Micro-batching: a backend that splits a batch into micro-batches and accumulates gradients passes the
*global* denominators (``num_tokens``, ``num_seqs``, ``norm_tokens``) to :func:`aggregate_loss`, so the
sum of the micro-batch losses equals the loss of the whole batch and so do the gradients.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from agentrl.errors import ConfigError
from agentrl.trainer.config import AlgorithmConfig
from agentrl.trainer.kl import kl_estimate
from agentrl.trainer.step_metrics import to_floats

LOSS_AGG_MODES = ("token-mean", "seq-mean-token-mean", "seq-mean-token-sum", "seq-mean-token-sum-norm")

_LOG_RATIO_CLAMP = 20.0


def aggregate_loss(
    values: torch.Tensor,
    mask: torch.Tensor,
    mode: str,
    *,
    num_tokens: float | None = None,
    num_seqs: float | None = None,
    norm_tokens: float | None = None,
) -> torch.Tensor:
    """Reduce a per-token loss (B, T) to a scalar.

    Args:
        values: (B, T) per-token loss.
        mask: (B, T) 0/1, tokens to include.
        mode: ``token-mean`` = sum(v m) / num_tokens; ``seq-mean-token-mean`` = sum_i [sum_t(v m) /
            sum_t m] / num_seqs; ``seq-mean-token-sum`` = sum_i sum_t(v m) / num_seqs;
            ``seq-mean-token-sum-norm`` = sum_i sum_t(v m) / (num_seqs * norm_tokens) (Dr.GRPO).
        num_tokens: global count of masked tokens (default: this tensor's ``mask.sum()``).
        num_seqs: global count of sequences (default: B).
        norm_tokens: Dr.GRPO's constant normaliser (default: the largest ``mask.sum(-1)`` here).
    """
    mask = mask.to(values.dtype)
    seq_sums = (values * mask).sum(dim=-1)  # (B,)
    n_seqs = float(values.shape[0]) if num_seqs is None else float(num_seqs)
    if mode == "token-mean":
        if num_tokens is None:  # stays on the device: no host sync
            return seq_sums.sum() / mask.sum().clamp(min=1.0)
        return seq_sums.sum() / max(float(num_tokens), 1.0)
    if mode == "seq-mean-token-mean":
        seq_means = seq_sums / mask.sum(dim=-1).clamp(min=1.0)  # (B,)
        return seq_means.sum() / max(n_seqs, 1.0)
    if mode == "seq-mean-token-sum":
        return seq_sums.sum() / max(n_seqs, 1.0)
    if mode == "seq-mean-token-sum-norm":
        if norm_tokens is None:
            return seq_sums.sum() / (max(n_seqs, 1.0) * mask.sum(dim=-1).max().clamp(min=1.0))
        return seq_sums.sum() / (max(n_seqs, 1.0) * max(float(norm_tokens), 1.0))
    raise ConfigError(f"unknown loss aggregation {mode!r}; choose one of {', '.join(LOSS_AGG_MODES)}")


def ppo_clip_loss(
    ratio: torch.Tensor,
    advantages: torch.Tensor,
    clip_eps_low: float,
    clip_eps_high: float,
    dual_clip_c: float | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """PPO's clipped surrogate, per token, with clip-higher and an optional dual clip.

    ``loss = max(-A r, -A clip(r, 1 - low, 1 + high))``; with dual clip, for A < 0 the loss is further
    capped at ``-c A`` (Ye et al. 2020), so a ratio far above 1 on a bad token cannot dominate.

    Args:
        ratio: (B, T) pi / pi_old (or GSPO's sequence ratio broadcast over tokens).
        advantages: (B, T).
        clip_eps_low, clip_eps_high: the clip range [1 - low, 1 + high].
        dual_clip_c: the dual-clip constant (> 1) or None.

    Returns:
        ``(loss, clipped, dual_clipped)``, each (B, T); the last two are bool tensors that mark where
        the clip (resp. the dual clip) set the gradient to zero.
    """
    unclipped = -advantages * ratio  # (B, T)
    clipped_obj = -advantages * ratio.clamp(1.0 - clip_eps_low, 1.0 + clip_eps_high)  # (B, T)
    # where (not maximum): at ties maximum splits the gradient between both branches.
    clipped = clipped_obj > unclipped
    loss = torch.where(clipped, clipped_obj, unclipped)
    dual_clipped = torch.zeros_like(clipped)
    if dual_clip_c is not None:
        cap = -advantages * dual_clip_c  # (B, T)
        dual_clipped = (advantages < 0) & (loss > cap)
        loss = torch.where(dual_clipped, cap, loss)
    return loss, clipped, dual_clipped


def gspo_log_ratio(logprobs: torch.Tensor, old_logprobs: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """GSPO's token-level log ratio: sg[mean_t log(pi/pi_old)] + logp - sg[logp], (B, T).

    Its value is the sequence's length-normalised log ratio log s_i at every token; its gradient is
    the token's grad log pi scaled so that, aggregated with ``seq-mean-token-mean``, the gradient is
    exactly GSPO's sequence objective (Zheng et al. 2025, "GSPO-token").
    """
    mask = mask.to(logprobs.dtype)
    token_log_ratio = (logprobs - old_logprobs) * mask  # (B, T)
    seq_log_ratio = token_log_ratio.sum(-1) / mask.sum(-1).clamp(min=1.0)  # (B,)
    return seq_log_ratio.detach().unsqueeze(-1) + logprobs - logprobs.detach()


def truncated_is_weights(
    old_logprobs: torch.Tensor, rollout_logprobs: torch.Tensor, cap: float
) -> torch.Tensor:
    """Truncated importance sampling weights min(pi_old / pi_rollout, cap), (B, T), no gradient.

    The engine samples with its own kernels (and maybe older weights), so pi_rollout != pi_old; weighting
    each token's loss by this ratio corrects the off-policy gap, and the cap bounds the variance.
    """
    log_w = (old_logprobs - rollout_logprobs).clamp(max=_LOG_RATIO_CLAMP)
    return torch.exp(log_w).clamp(max=cap).detach()


def icepop_mask(
    old_logprobs: torch.Tensor, rollout_logprobs: torch.Tensor, low: float, high: float
) -> torch.Tensor:
    """ICEPOP's token mask: 1 where low <= pi_old / pi_rollout <= high, else 0, (B, T), no gradient.

    Where TIS caps a large ratio, ICEPOP drops the token: a token the trainer and the engine disagree
    on that much (kernels, or weights several versions apart) carries more noise than signal.
    """
    log_w = (old_logprobs - rollout_logprobs).detach()  # compared in log space: no overflow
    inside = (log_w >= math.log(low)) & (log_w <= math.log(high))
    return inside.to(old_logprobs.dtype)


@dataclass
class PolicyLossOutput:
    """The loss to backpropagate and detached metrics (means over this call's masked tokens)."""

    loss: torch.Tensor
    """Scalar: policy loss + kl_coef * KL - entropy_coef * entropy."""
    metrics: dict[str, torch.Tensor]
    """0-dim detached tensors on the loss's device (no host sync until the caller asks):
    ``pg_loss``, ``clip_frac``, ``dual_clip_frac``, ``ppo_kl``, ``ratio_mean``/``_max``/``_min`` (NaN
    max/min without a masked token), and when given ``kl``, ``entropy``, ``tis_mean``, ``icepop_masked_frac``,
    ``train_rollout_logprob_abs_diff`` and its ``_max`` (the trainer's logprobs before the update
    against the engine's: the off-policy gap of the kernels, in nats). Combine micro-batches with
    :class:`agentrl.trainer.step_metrics.StepMetrics`."""

    def floats(self) -> dict[str, float]:
        """The metrics as Python floats (one host copy)."""
        return dict(zip(self.metrics, to_floats(list(self.metrics.values())), strict=True))


def policy_loss(
    logprobs: torch.Tensor,
    old_logprobs: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    config: AlgorithmConfig,
    *,
    rollout_logprobs: torch.Tensor | None = None,
    ref_logprobs: torch.Tensor | None = None,
    entropy: torch.Tensor | None = None,
    num_tokens: float | None = None,
    num_seqs: float | None = None,
    norm_tokens: float | None = None,
) -> PolicyLossOutput:
    """The full per-micro-batch loss of the configured algorithm (all tensors (B, T)).

    Args:
        logprobs: current policy logprobs (with grad).
        old_logprobs: logprobs before this update (no grad); equal to ``logprobs`` on-policy.
        advantages: per-token advantages (0 where ``mask`` is 0).
        mask: 0/1 trained tokens.
        config: the algorithm settings.
        rollout_logprobs: the engine's logprobs, needed for TIS (``config.tis_cap``), ICEPOP
            (``config.icepop_low``/``icepop_high``) and the train-vs-rollout metric.
        ref_logprobs: the reference model's logprobs, needed when ``config.kl_coef > 0``.
        entropy: per-token entropy; its gradient is used when ``config.entropy_coef > 0``.
        num_tokens, num_seqs, norm_tokens: global denominators, see :func:`aggregate_loss`.
    """
    mask_f = mask.to(logprobs.dtype)
    mode = config.loss_agg_mode
    norm = config.loss_norm_tokens if config.loss_norm_tokens is not None else norm_tokens
    denominators = {"num_tokens": num_tokens, "num_seqs": num_seqs, "norm_tokens": norm}

    if config.loss_type == "sft":  # supervised: -log p of every masked token, no advantage, no ratio
        pg, metrics = -logprobs, {"nll": _masked_mean(-logprobs.detach(), mask_f)}
        rollout_logprobs = None  # demonstrations have no engine logprobs to compare with
    else:
        pg, metrics = _token_policy_loss(logprobs, old_logprobs, advantages, mask_f, config, rollout_logprobs)
    pg_loss = aggregate_loss(pg, mask_f, mode, **denominators)
    loss = pg_loss

    if config.kl_coef > 0:
        if ref_logprobs is None:
            raise ConfigError("kl_coef > 0 needs reference logprobs; pass ref_logprobs or set kl_coef=0")
        kl = kl_estimate(logprobs, ref_logprobs, config.kl_estimator)
        loss = loss + config.kl_coef * aggregate_loss(kl, mask_f, mode, **denominators)
        metrics["kl"] = _masked_mean(kl, mask_f)
    if entropy is not None:
        if config.entropy_coef != 0:
            loss = loss - config.entropy_coef * aggregate_loss(entropy, mask_f, mode, **denominators)
        metrics["entropy"] = _masked_mean(entropy, mask_f)
    if rollout_logprobs is not None:
        gap = (old_logprobs - rollout_logprobs).detach().abs()  # (B, T)
        metrics["train_rollout_logprob_abs_diff"] = _masked_mean(gap, mask_f)
        nan = torch.full((), math.nan, dtype=gap.dtype, device=gap.device)
        metrics["train_rollout_logprob_abs_diff_max"] = torch.where(
            mask_f.bool().any(), torch.where(mask_f.bool(), gap, -math.inf).amax(), nan
        )

    metrics["pg_loss"] = pg_loss.detach()
    return PolicyLossOutput(loss=loss, metrics=metrics)


def _token_policy_loss(
    logprobs: torch.Tensor,
    old_logprobs: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    config: AlgorithmConfig,
    rollout_logprobs: torch.Tensor | None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The clipped (and TIS-weighted, ICEPOP-masked) per-token policy loss (B, T) and its ratio metrics."""
    if config.policy_loss == "gspo":
        log_ratio = gspo_log_ratio(logprobs, old_logprobs, mask)
    else:
        log_ratio = logprobs - old_logprobs
    ratio = torch.exp(log_ratio.clamp(-_LOG_RATIO_CLAMP, _LOG_RATIO_CLAMP))  # (B, T)
    pg, clipped, dual_clipped = ppo_clip_loss(
        ratio, advantages, config.clip_eps_low, config.clip_eps_high, config.dual_clip_c
    )
    metrics = _ratio_metrics(ratio, clipped, dual_clipped, log_ratio, mask)
    if config.tis_cap is not None:
        if rollout_logprobs is None:
            raise ConfigError(
                "tis_cap is set but no rollout logprobs were given; pass them or set tis_cap=None"
            )
        weights = truncated_is_weights(old_logprobs, rollout_logprobs, config.tis_cap)
        pg = pg * weights
        metrics["tis_mean"] = _masked_mean(weights, mask)
    if config.icepop_low is not None and config.icepop_high is not None:
        if rollout_logprobs is None:
            raise ConfigError(
                "ICEPOP masking needs the rollout logprobs; pass them or unset --icepop-low/high"
            )
        kept = icepop_mask(old_logprobs, rollout_logprobs, config.icepop_low, config.icepop_high)
        pg = pg * kept
        metrics["icepop_masked_frac"] = _masked_mean(1.0 - kept, mask)
    return pg, metrics


def _masked_mean(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean of ``x`` over masked entries as a detached 0-dim tensor (0 without any)."""
    return (x.detach() * mask).sum() / mask.sum().clamp(min=1.0)


def _ratio_metrics(
    ratio: torch.Tensor,
    clipped: torch.Tensor,
    dual_clipped: torch.Tensor,
    log_ratio: torch.Tensor,
    mask: torch.Tensor,
) -> dict[str, torch.Tensor]:
    """Clip fractions, the approximate KL(pi_old || pi) and ratio statistics over masked tokens.

    Computed with masks rather than boolean indexing, which would wait for the device to count the
    selected entries.
    """
    sel = mask.bool()
    r = ratio.detach()
    any_token = sel.any()
    nan = torch.full((), math.nan, dtype=r.dtype, device=r.device)
    return {
        "clip_frac": _masked_mean(clipped.to(mask.dtype), mask),
        "dual_clip_frac": _masked_mean(dual_clipped.to(mask.dtype), mask),
        # k1 estimate of KL(pi_old || pi): mean of log pi_old - log pi over sampled tokens.
        "ppo_kl": _masked_mean(-log_ratio, mask),
        "ratio_mean": torch.where(any_token, _masked_mean(r, mask), torch.ones_like(nan)),
        "ratio_max": torch.where(any_token, torch.where(sel, r, -math.inf).amax(), nan),
        "ratio_min": torch.where(any_token, torch.where(sel, r, math.inf).amin(), nan),
    }


def value_loss(
    values: torch.Tensor,
    old_values: torch.Tensor,
    returns: torch.Tensor,
    mask: torch.Tensor,
    clip: float | None,
    mode: str,
    *,
    num_tokens: float | None = None,
    num_seqs: float | None = None,
    norm_tokens: float | None = None,
) -> PolicyLossOutput:
    """The critic's clipped squared error (PPO2, as verl and slime), aggregated like the policy loss.

    ``loss_t = 0.5 * max((V_t - G_t)^2, (V_old_t + clip(V_t - V_old_t, -c, c) - G_t)^2)``: a value may
    not profit from moving more than ``c`` away from its value before the update. ``clip=None``: plain
    ``0.5 * (V_t - G_t)^2``.

    Args:
        values: (B, T) the critic's values (with grad).
        old_values: (B, T) its values when the returns were computed (no grad).
        returns: (B, T) the targets G.
        mask: (B, T) 0/1, the sampled tokens.
        clip: the clip range c, or None.
        mode, num_tokens, num_seqs, norm_tokens: as :func:`aggregate_loss`.

    Returns:
        ``loss`` and metrics ``vf_loss`` (the loss, detached) and ``vf_clip_frac`` (tokens where the
        clipped term was the larger one, so its gradient is zero).
    """
    mask_f = mask.to(values.dtype)
    unclipped = (values - returns) ** 2  # (B, T)
    if clip is None:
        per_token, clipped = unclipped, torch.zeros_like(unclipped, dtype=torch.bool)
    else:
        moved = old_values + (values - old_values).clamp(-clip, clip)
        clipped_sq = (moved - returns) ** 2
        clipped = clipped_sq > unclipped  # where (not maximum): ties keep the unclipped gradient
        per_token = torch.where(clipped, clipped_sq, unclipped)
    loss = 0.5 * aggregate_loss(
        per_token, mask_f, mode, num_tokens=num_tokens, num_seqs=num_seqs, norm_tokens=norm_tokens
    )
    metrics = {
        "vf_loss": loss.detach(),
        "vf_clip_frac": _masked_mean(clipped.to(mask_f.dtype), mask_f),
    }
    return PolicyLossOutput(loss=loss, metrics=metrics)
