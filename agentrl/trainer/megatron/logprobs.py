"""Logprobs (and entropy) of given tokens straight from hidden states, without full fp32 logits.

The plain path computes ``logits = hidden @ W.T`` for every token over the whole vocabulary, casts them
to fp32 and takes a log-softmax: for 8k tokens and Qwen's 152k vocabulary that is 5 GB of fp32 logits,
plus as much again for their gradient. Here the tokens are processed in chunks: each chunk's logits
live only inside the chunk loop, in forward and again (recomputed) in backward, so peak memory is one
chunk's ``(chunk, V)`` fp32 block, and the result is a ``(T,)`` vector.

With tensor parallelism the weight is vocab-parallel (each rank holds ``V / tp`` rows); the max,
the sum of exponentials, the target logit and ``sum p z`` are all-reduced over the TP group, as
Megatron's ``vocab_parallel_cross_entropy`` does. The caller makes the *input* TP-aware (an all-reduce
of its gradient), so this function's backward returns only this rank's partial gradient.

Gradients (z = logits of one token, p = softmax(z), y = target, S = sum_j p_j z_j, H = entropy):
``d logp_y / dz = onehot(y) - p`` and ``dH / dz = -p * (z - S)``.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.distributed as dist


def _all_reduce(x: torch.Tensor, op: dist.ReduceOp.RedOpType, group: Any) -> torch.Tensor:
    if group is not None and dist.get_world_size(group) > 1:
        dist.all_reduce(x, op=op, group=group)
    return x


def _logits_fp32(hidden: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """``hidden @ weight.T`` accumulated and *returned* in fp32 (no rounding of logits to bf16) where
    the CUDA ``mm(..., out_dtype=)`` overload exists; else a bf16 product cast up."""
    if hidden.is_cuda and hidden.dtype != torch.float32:
        try:
            return torch.mm(hidden, weight.t(), out_dtype=torch.float32)
        except (TypeError, RuntimeError, NotImplementedError):
            pass
    return (hidden @ weight.t()).float()


class _ChunkStats:
    """Per-chunk logits statistics shared by forward and backward."""

    def __init__(
        self, hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor, vocab_start: int, group: Any
    ):
        self.logits = _logits_fp32(hidden, weight)  # (c, V_local)
        local = targets - vocab_start  # (c,)
        self.in_range = (local >= 0) & (local < weight.shape[0])
        self.local = local.clamp(0, weight.shape[0] - 1)
        self.group = group

    def normaliser(self) -> tuple[torch.Tensor, torch.Tensor]:
        """``(lse, sum_pz)`` of each row: log-sum-exp of the logits and ``sum_j p_j z_j``.

        One temporary ``(c, V_local)`` block, reused in place (max, exp, sum, multiply, sum); the
        probabilities are never normalised into a block of their own.
        """
        z_max = self.logits.amax(dim=-1)  # (c,)
        _all_reduce(z_max, dist.ReduceOp.MAX, self.group)
        e = (self.logits - z_max[:, None]).exp_()  # (c, V_local): p * sum_exp
        sum_exp = _all_reduce(e.sum(dim=-1), dist.ReduceOp.SUM, self.group)
        ez = _all_reduce(e.mul_(self.logits).sum(dim=-1), dist.ReduceOp.SUM, self.group)
        return z_max + torch.log(sum_exp), ez / sum_exp

    def target_logit(self) -> torch.Tensor:
        z_y = self.logits.gather(1, self.local[:, None]).squeeze(1) * self.in_range
        return _all_reduce(z_y, dist.ReduceOp.SUM, self.group)


class FusedTokenLogprobs(torch.autograd.Function):
    """``(hidden (T, h), weight (V_local, h), targets (T,)) -> (logprobs (T,), entropy (T,))`` in fp32."""

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: Any,
        hidden: torch.Tensor,
        weight: torch.Tensor,
        targets: torch.Tensor,
        vocab_start: int,
        chunk: int,
        group: Any,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        n = hidden.shape[0]
        logp = torch.empty(n, dtype=torch.float32, device=hidden.device)
        entropy = torch.empty_like(logp)
        lse_all = torch.empty_like(logp)
        for s in range(0, n, chunk):
            stats = _ChunkStats(hidden[s : s + chunk], weight, targets[s : s + chunk], vocab_start, group)
            lse, sum_pz = stats.normaliser()
            logp[s : s + chunk] = stats.target_logit() - lse
            entropy[s : s + chunk] = lse - sum_pz
            lse_all[s : s + chunk] = lse
        ctx.save_for_backward(hidden, weight, targets, lse_all, entropy)
        ctx.vocab_start, ctx.chunk, ctx.group = vocab_start, chunk, group
        return logp, entropy

    @staticmethod
    def backward(ctx: Any, grad_logp: torch.Tensor, grad_entropy: torch.Tensor) -> tuple[Any, ...]:  # type: ignore[override]
        hidden, weight, targets, lse_all, entropy = ctx.saved_tensors
        grad_hidden = torch.empty_like(hidden)
        grad_weight = torch.zeros(weight.shape, dtype=torch.float32, device=weight.device)
        for s in range(0, hidden.shape[0], ctx.chunk):
            e = s + ctx.chunk
            stats = _ChunkStats(hidden[s:e], weight, targets[s:e], ctx.vocab_start, ctx.group)
            z = stats.logits  # (c, V_local), overwritten below: in-place passes, no temporaries
            g_lp, g_ent = grad_logp[s:e, None], grad_entropy[s:e, None]
            sum_pz = (lse_all[s:e] - entropy[s:e])[:, None]
            g = (z - lse_all[s:e, None]).exp_()  # p
            # d/dz of g_lp * logp_y + g_ent * H = -p * (g_lp + g_ent * (z - S)), plus onehot(y) * g_lp
            g.mul_(z.sub_(sum_pz).mul_(g_ent).add_(g_lp)).neg_()
            rows = torch.arange(g.shape[0], device=g.device)
            g[rows, stats.local] += g_lp.squeeze(1) * stats.in_range
            g = g.to(weight.dtype)
            grad_hidden[s:e] = g @ weight
            grad_weight += (g.t() @ hidden[s:e]).float()
        return grad_hidden, grad_weight.to(weight.dtype), None, None, None, None


def token_logprobs(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    targets: torch.Tensor,
    *,
    vocab_start: int = 0,
    chunk: int = 1024,
    group: Any = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Logprob of ``targets[t]`` under ``softmax(hidden[t] @ weight.T)`` and the entropy of that softmax.

    Args:
        hidden: (T, h) final hidden states (after the final norm).
        weight: (V_local, h) this rank's rows of the output (or tied embedding) matrix.
        targets: (T,) int64 global token ids to score (the next token of each position).
        vocab_start: global id of ``weight``'s first row (``tp_rank * V_local``).
        chunk: tokens per chunk; peak extra memory is about ``3 * chunk * V_local * 4`` bytes.
        group: the tensor-parallel process group (None: single rank).

    Returns:
        ``(logprobs, entropy)``, each (T,) fp32. Both are differentiable.
    """
    out: tuple[torch.Tensor, torch.Tensor] = FusedTokenLogprobs.apply(
        hidden, weight, targets, vocab_start, chunk, group
    )
    return out
