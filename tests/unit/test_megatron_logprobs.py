"""The chunked fused logprob/entropy head of the Megatron backend on CPU, against plain autograd over a
full log-softmax in float64 (the head computes in float32: a formula slip shows far above its rounding)."""

from __future__ import annotations

import pytest
import torch

from agentrl.trainer.megatron.logprobs import token_logprobs


@pytest.mark.parametrize("chunk", [7, 64])
def test_values_and_gradients_match_a_full_log_softmax(chunk: int) -> None:
    g = torch.Generator().manual_seed(0)
    t, h, v = 29, 16, 97
    hidden = torch.randn(t, h, generator=g, requires_grad=True)
    weight = (0.5 * torch.randn(v, h, generator=g)).requires_grad_()
    targets = torch.randint(0, v, (t,), generator=g)
    g_lp, g_ent = (
        torch.randn(t, generator=g, dtype=torch.float64),
        torch.randn(t, generator=g, dtype=torch.float64),
    )

    lp, ent = token_logprobs(hidden, weight, targets, chunk=chunk)
    (lp * g_lp + ent * g_ent).sum().backward()
    ours = (lp.detach(), ent.detach(), hidden.grad, weight.grad)
    assert all(x is not None and x.dtype == torch.float32 for x in ours)

    h64, w64 = (x.detach().double().requires_grad_() for x in (hidden, weight))
    logp = torch.log_softmax(h64 @ w64.t(), dim=-1)  # (t, v)
    lp_ref = logp.gather(1, targets[:, None]).squeeze(1)
    ent_ref = -(logp.exp() * logp).sum(-1)
    (lp_ref * g_lp.double() + ent_ref * g_ent.double()).sum().backward()
    for a, b in zip(ours, (lp_ref.detach(), ent_ref.detach(), h64.grad, w64.grad), strict=True):
        torch.testing.assert_close(a.double(), b, rtol=1e-5, atol=1e-5)


def test_vocab_shard_scores_only_its_own_targets() -> None:
    """A rank holding rows [vocab_start, vocab_start + V_local) without a TP group: targets outside its
    shard contribute no target logit (the all-reduce would add the owner's), and their gradient has no
    one-hot term."""
    g = torch.Generator().manual_seed(1)
    hidden = torch.randn(4, 8, generator=g)
    weight = torch.randn(10, 8, generator=g)
    targets = torch.tensor([20, 25, 3, 29])  # shard holds 20..29; id 3 is elsewhere
    lp, _ = token_logprobs(hidden, weight, targets, vocab_start=20, chunk=3)
    lse = torch.logsumexp(hidden @ weight.t(), dim=-1)
    z = hidden @ weight.t()
    expected = torch.stack([z[0, 0], z[1, 5], torch.zeros(()), z[3, 9]]) - lse
    torch.testing.assert_close(lp, expected)
