"""PPO's advantages: generalised advantage estimation (GAE) over the sampled tokens of multi-turn episodes.

An episode's response interleaves sampled tokens (loss mask 1) with tool outputs and chat-template
tokens (mask 0). GAE runs over the sampled tokens only, in order, with the masked spans *transparent*
(as verl and slime do for multi-turn): the step after sampled token ``i_k`` is sampled token
``i_{k+1}``, whose state already contains the tool output between them. So credit for the final reward
flows back across tool outputs to the earlier turns, while a tool-output token is no step: it has no
value target, no advantage and no discount. With ``V_k`` the critic's value of the state before the
k-th of the K sampled tokens and ``R`` the episode's reward (given at its last sampled token)::

    delta_k = r_k + gamma * V_{k+1} - V_k      r_k = R if k == K else 0,  V_{K+1} = 0
    A_k     = delta_k + gamma * lambd * A_{k+1}                           A_{K+1} = 0
    G_k     = A_k + V_k                                                   (the critic's target)

Every episode end is terminal, truncated ones included: ``V_{K+1} = 0``, no bootstrap from the value
of the state after the last token. The turn and context limits are part of the task (a truncated
episode's reward is its outcome; it never continues), so the state after them is worth no further
reward. docs/critic.md has the derivation and a worked example.
"""

from __future__ import annotations

from dataclasses import replace

import torch

from agentrl.trainer.backend import TrainBatch
from agentrl.trainer.config import AlgorithmConfig


def gae_advantages(
    values: torch.Tensor, mask: torch.Tensor, reward: float, gamma: float, lambd: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """GAE of one episode over its mask-1 tokens (the module docstring has the formulas).

    Args:
        values: (T,) the critic's value of the state before each token (read only where mask is 1).
        mask: (T,) 0/1, the sampled tokens.
        reward: the episode's reward, given at its last sampled token.
        gamma, lambd: GAE's discount and lambda.

    Returns:
        ``(advantages, returns)``, each (T,) float32, 0 where the mask is 0.
    """
    steps = torch.nonzero(mask > 0).squeeze(-1)  # (K,) positions of the sampled tokens
    v = values[steps].double().tolist()
    adv = [0.0] * len(v)
    next_value, running = 0.0, 0.0  # terminal: V_{K+1} = 0, A_{K+1} = 0
    for k in reversed(range(len(v))):
        r = reward if k == len(v) - 1 else 0.0
        running = r + gamma * next_value - v[k] + gamma * lambd * running
        adv[k] = running
        next_value = v[k]
    advantages = torch.zeros(mask.shape, dtype=torch.float64)
    returns = torch.zeros(mask.shape, dtype=torch.float64)
    advantages[steps] = torch.tensor(adv, dtype=torch.float64)
    returns[steps] = advantages[steps] + torch.tensor(v, dtype=torch.float64)
    return advantages.float(), returns.float()


def whiten(
    advantages: list[torch.Tensor], masks: list[torch.Tensor], eps: float = 1e-6
) -> list[torch.Tensor]:
    """``(A - mean) / (std + eps)`` over every mask-1 token of the given sequences (unbiased std, as
    torch.std); 0 where the mask is 0. Fewer than two tokens: centred only."""
    picked = torch.cat(
        [torch.zeros(0, dtype=torch.float64)]
        + [a.double()[m > 0] for a, m in zip(advantages, masks, strict=True)]
    )
    if picked.numel() == 0:
        return [a.clone() for a in advantages]
    mean = picked.mean()
    scale = picked.std() + eps if picked.numel() > 1 else torch.ones((), dtype=torch.float64)
    return [(((a.double() - mean) / scale) * (m > 0)).float() for a, m in zip(advantages, masks, strict=True)]


def fill_gae(
    batches: list[TrainBatch], values: list[list[torch.Tensor]], config: AlgorithmConfig
) -> tuple[list[TrainBatch], dict[str, float]]:
    """Per-token advantages, returns and old values of ``batches`` (one rollout) from the critic's
    ``values`` (``values[b][i]``: (T_i,) for sequence i of batch b), computed before any of them is
    trained on, as PPO does; advantages are whitened over every sampled token of the rollout.

    Returns:
        The batches with ``advantages``, ``returns`` and ``old_values`` set, and metrics:
        ``value_mean``, ``return_mean``, ``adv_raw_mean`` (before whitening) and ``explained_var``
        (1 - Var(G - V) / Var(G) over sampled tokens: 1 is a perfect critic, <= 0 a useless one).
    """
    raw: list[list[torch.Tensor]] = []
    rets: list[list[torch.Tensor]] = []
    for batch, vals in zip(batches, values, strict=True):
        if batch.rewards is None:
            raise ValueError("the ppo estimator needs TrainBatch.rewards (trajectories_to_batch sets them)")
        pairs = [
            gae_advantages(v.float(), m, r, config.gamma, config.lambd)
            for v, m, r in zip(vals, batch.loss_mask, batch.rewards, strict=True)
        ]
        raw.append([a for a, _ in pairs])
        rets.append([g for _, g in pairs])
    all_masks = [m for b in batches for m in b.loss_mask]
    flat_adv = whiten([a for part in raw for a in part], all_masks, config.adv_eps)
    out, start = [], 0
    for batch, vals, ret in zip(batches, values, rets, strict=True):
        n = len(batch)
        old = [v.float() * (m > 0) for v, m in zip(vals, batch.loss_mask, strict=True)]
        out.append(replace(batch, advantages=flat_adv[start : start + n], returns=ret, old_values=old))
        start += n
    return out, _value_metrics(raw, rets, values, all_masks)


def _value_metrics(
    raw: list[list[torch.Tensor]],
    rets: list[list[torch.Tensor]],
    values: list[list[torch.Tensor]],
    masks: list[torch.Tensor],
) -> dict[str, float]:
    def picked(parts: list[list[torch.Tensor]]) -> torch.Tensor:
        flat = [x for part in parts for x in part]
        empty = torch.zeros(0, dtype=torch.float64)
        return torch.cat([empty] + [x.double()[m > 0] for x, m in zip(flat, masks, strict=True)])

    v, g, a = picked(values), picked(rets), picked(raw)
    if g.numel() == 0:
        return {}
    var_g = float(g.var()) if g.numel() > 1 else 0.0
    explained = 1.0 - float((g - v).var()) / var_g if var_g > 0 else 0.0
    return {
        "value_mean": float(v.mean()),
        "return_mean": float(g.mean()),
        "adv_raw_mean": float(a.mean()),
        "explained_var": explained,
    }
