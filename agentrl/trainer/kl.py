"""Per-token KL estimators between the policy and a reference model, and entropy from logits.

Only the sampled token's logprob is known under each model, so KL(policy || ref) is estimated from the
log ratio ``log r = logp - ref_logp`` of that token (J. Schulman, "Approximating KL divergence"):

- ``k1 = log r``: unbiased, high variance, can be negative per token.
- ``k2 = (log r)^2 / 2``: biased, low variance, always >= 0.
- ``k3 = exp(-log r) + log r - 1``: unbiased, low variance, always >= 0 (the GRPO paper's estimator).
- ``low_var_kl``: k3 with the log ratio clamped to [-20, 20] and the result clamped to [-10, 10], as
  verl's ``kl_penalty`` does, so one token the reference finds absurd cannot produce an inf/NaN loss.
"""

from __future__ import annotations

import torch

from agentrl.errors import ConfigError

KL_ESTIMATORS = ("k1", "k2", "k3", "low_var_kl")

_LOG_RATIO_CLAMP = 20.0
_LOW_VAR_KL_CLAMP = 10.0


def kl_estimate(logprobs: torch.Tensor, ref_logprobs: torch.Tensor, estimator: str) -> torch.Tensor:
    """Per-token KL(policy || ref) estimate; same shape as the inputs.

    Args:
        logprobs: policy logprobs of the sampled tokens, (B, T) or any shape.
        ref_logprobs: reference logprobs of the same tokens, same shape.
        estimator: one of ``k1``, ``k2``, ``k3``, ``low_var_kl``.

    Returns:
        The estimate per token (not masked; the caller aggregates over its loss mask).
    """
    log_ratio = logprobs - ref_logprobs  # (B, T): log pi(x) / ref(x)
    if estimator == "k1":
        return log_ratio
    if estimator == "k2":
        return 0.5 * log_ratio.square()
    if estimator == "k3":
        return torch.exp(-log_ratio) + log_ratio - 1.0
    if estimator == "low_var_kl":
        clamped = log_ratio.clamp(-_LOG_RATIO_CLAMP, _LOG_RATIO_CLAMP)
        return (torch.exp(-clamped) + clamped - 1.0).clamp(-_LOW_VAR_KL_CLAMP, _LOW_VAR_KL_CLAMP)
    raise ConfigError(f"unknown KL estimator {estimator!r}; choose one of {', '.join(KL_ESTIMATORS)}")


def entropy_from_logits(logits: torch.Tensor) -> torch.Tensor:
    """Entropy of the softmax distribution at each position: ``logsumexp(z) - sum(softmax(z) * z)``.

    Computed in fp32 (bf16 logits lose the small differences that matter here). Pass only the rows you
    need (e.g. ``logits[mask.bool()]``): this materialises a (..., V) fp32 softmax.

    Args:
        logits: (..., V) unnormalised scores.

    Returns:
        (...) entropy in nats.
    """
    z = logits.float()  # (..., V)
    probs = torch.softmax(z, dim=-1)  # (..., V)
    return torch.logsumexp(z, dim=-1) - (probs * z).sum(dim=-1)
