"""Token sampling of the embedded engine: inverse-CDF draws, top-k/top-p, reported logprobs."""

from __future__ import annotations

import torch

from agentrl.rollout.engine import SamplingParams
from agentrl.rollout.sampling import draw, sample_tokens


def test_draw_follows_the_distribution_and_skips_zero_mass() -> None:
    # Unnormalised weights 0 : 1 : 3 : 0 -> probabilities 0, 1/4, 3/4, 0.
    probs = torch.tensor([[0.0, 1.0, 3.0, 0.0]]).expand(20000, 4)
    tokens = draw(probs, torch.Generator().manual_seed(0))
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
