"""Token sampling of the embedded engine: inverse-CDF draws, top-k/top-p, reported logprobs."""

from __future__ import annotations

import torch

from agentrl.engines.base import SamplingParams
from agentrl.engines.embedded.sampling import inverse_cdf, sample_tokens


def test_inverse_cdf_follows_the_distribution_and_skips_zero_mass() -> None:
    # Unnormalised weights 0 : 1 : 3 : 0 -> probabilities 0, 1/4, 3/4, 0.
    probs = torch.tensor([[0.0, 1.0, 3.0, 0.0]]).expand(20000, 4)
    tokens = inverse_cdf(probs, torch.rand(20000, generator=torch.Generator().manual_seed(0)))
    counts = torch.bincount(tokens, minlength=4)
    assert counts[0] == 0 and counts[3] == 0
    # Binomial std of the count of token 1: sqrt(20000 * 1/4 * 3/4) ~ 61; allow 5 std.
    assert abs(int(counts[1]) - 5000) < 5 * 61


def test_sample_tokens_seeded_greedy_and_logprobs() -> None:
    logits = torch.tensor([[2.0, 1.0, 0.0, -1.0], [0.0, 3.0, 0.0, 0.0], [1.0, 1.0, 1.0, 5.0]])
    params = [
        SamplingParams(temperature=0.7, seed=5),
        SamplingParams(temperature=0.0),
        SamplingParams(temperature=1.0, top_k=1),
    ]
    gens = [torch.Generator().manual_seed(5), None, None]
    tokens, logprobs = sample_tokens(logits, params, gens, torch.Generator().manual_seed(0), original=True)
    assert int(tokens[1]) == 1 and int(tokens[2]) == 3  # greedy; top-k 1 keeps only the argmax
    again, _ = sample_tokens(
        logits, params, [torch.Generator().manual_seed(5), None, None], torch.Generator()
    )
    assert int(again[0]) == int(tokens[0])
    expected = torch.log_softmax(logits, dim=-1).gather(1, tokens.unsqueeze(1)).squeeze(1)
    assert torch.allclose(logprobs, expected)
    _, post = sample_tokens(logits[:1], params[:1], [torch.Generator().manual_seed(5)], torch.Generator())
    assert torch.allclose(post, torch.log_softmax(logits[:1] / 0.7, dim=-1)[0, tokens[:1]])


def test_a_seeded_row_samples_the_same_token_whatever_shares_its_batch() -> None:
    """Exact resume relies on it: a request's sample depends on its seed, not on its batch mates."""
    g = torch.Generator().manual_seed(3)
    logits = torch.randn(6, 300, generator=g)
    params = [SamplingParams(temperature=1.0, seed=40 + i) for i in range(6)]

    def seeded(rows: list[int]) -> list[int]:
        gens = [torch.Generator().manual_seed(40 + i) for i in rows]
        tokens, _ = sample_tokens(logits[rows], [params[i] for i in rows], gens, torch.Generator())
        return tokens.tolist()

    together = seeded(list(range(6)))
    assert [seeded([i])[0] for i in range(6)] == together
    assert seeded([5, 2, 0]) == [together[5], together[2], together[0]]


def test_top_p_keeps_the_nucleus_only() -> None:
    # probabilities 0.5, 0.3, 0.15, 0.05: top_p 0.7 keeps tokens 0 and 1 (mass before token 2 is 0.8)
    logits = torch.log(torch.tensor([[0.5, 0.3, 0.15, 0.05]])).expand(4000, 4).contiguous()
    params = [SamplingParams(temperature=1.0, top_p=0.7)] * 4000
    tokens, _ = sample_tokens(logits, params, [None] * 4000, torch.Generator().manual_seed(1))
    counts = torch.bincount(tokens, minlength=4)
    assert counts[2] == 0 and counts[3] == 0
    # within the nucleus the draw is proportional: 0.5 / 0.8 = 0.625 of 4000 = 2500, std ~ 31
    assert abs(int(counts[0]) - 2500) < 5 * 31
