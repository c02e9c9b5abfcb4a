"""Policy losses: golden numbers derived by hand, gradients against analytic ones, clipping switches."""

from __future__ import annotations

import math

import pytest
import torch

from agentrl.errors import ConfigError
from agentrl.trainer.config import AlgorithmConfig
from agentrl.trainer.losses import (
    aggregate_loss,
    icepop_mask,
    policy_loss,
    ppo_clip_loss,
    truncated_is_weights,
)

VALUES = torch.tensor([[1.0, 2.0, 3.0, 0.0], [4.0, 9.0, 9.0, 9.0]])
MASK = torch.tensor([[1.0, 1.0, 1.0, 0.0], [1.0, 0.0, 0.0, 0.0]])


def test_aggregation_golden() -> None:
    # Masked sums per sequence: 1+2+3 = 6 (3 tokens) and 4 (1 token); 4 tokens, 2 sequences.
    assert aggregate_loss(VALUES, MASK, "token-mean").item() == pytest.approx(10 / 4)  # 2.5
    assert aggregate_loss(VALUES, MASK, "seq-mean-token-mean").item() == pytest.approx((2 + 4) / 2)  # 3
    assert aggregate_loss(VALUES, MASK, "seq-mean-token-sum").item() == pytest.approx(10 / 2)  # 5
    # Dr.GRPO: token sums / (num_seqs * norm); default norm = longest masked length 3 -> 10 / 6.
    assert aggregate_loss(VALUES, MASK, "seq-mean-token-sum-norm").item() == pytest.approx(10 / 6)
    assert aggregate_loss(VALUES, MASK, "seq-mean-token-sum-norm", norm_tokens=10).item() == pytest.approx(
        0.5
    )
    with pytest.raises(ConfigError, match="token-mean"):
        aggregate_loss(VALUES, MASK, "mean")


@pytest.mark.parametrize(
    "mode", ["token-mean", "seq-mean-token-mean", "seq-mean-token-sum", "seq-mean-token-sum-norm"]
)
def test_micro_batches_with_global_denominators_sum_to_the_batch_loss(mode: str) -> None:
    whole = aggregate_loss(VALUES, MASK, mode, norm_tokens=3)
    parts = sum(
        aggregate_loss(VALUES[i : i + 1], MASK[i : i + 1], mode, num_tokens=4, num_seqs=2, norm_tokens=3)
        for i in range(2)
    )
    assert float(parts) == pytest.approx(whole.item())


def test_ppo_clip_golden_and_gradients() -> None:
    # eps low 0.2, high 0.28 -> clip range [0.8, 1.28]. Per token (ratio, A) -> loss, grad wrt ratio:
    #  (0.5, +1): max(-0.5, -0.8) = -0.5, unclipped, d/dr = -A = -1
    #  (1.0, +1): -1.0, unclipped, -1
    #  (1.5, +1): max(-1.5, -1.28) = -1.28, clipped, 0
    #  (1.2, -1): max(1.2, 1.2) = 1.2, unclipped, +1
    #  (0.5, -1): max(0.5, 0.8) = 0.8, clipped, 0
    #  (2.0, -1): max(2.0, 1.28) = 2.0, under the dual cap 3, +1
    #  (5.0, -1): max(5.0, 1.28) = 5.0 -> dual cap -c A = 3.0, dual clipped, 0
    ratio = torch.tensor([0.5, 1.0, 1.5, 1.2, 0.5, 2.0, 5.0], requires_grad=True)
    adv = torch.tensor([1.0, 1.0, 1.0, -1.0, -1.0, -1.0, -1.0])
    loss, clipped, dual = ppo_clip_loss(ratio, adv, 0.2, 0.28, dual_clip_c=3.0)
    assert loss.tolist() == pytest.approx([-0.5, -1.0, -1.28, 1.2, 0.8, 2.0, 3.0])
    assert clipped.tolist() == [False, False, True, False, True, False, False]
    assert dual.tolist() == [False] * 6 + [True]
    loss.sum().backward()
    assert ratio.grad is not None
    assert ratio.grad.tolist() == [-1.0, -1.0, 0.0, 1.0, 0.0, 1.0, 0.0]
    no_dual, _, _ = ppo_clip_loss(ratio.detach(), adv, 0.2, 0.28, dual_clip_c=None)
    assert no_dual[-1].item() == pytest.approx(5.0)


def test_ratio_one_gives_the_plain_policy_gradient() -> None:
    # A linear softmax policy pi(a | x) = softmax(W x). On-policy (old = current, ratio 1) with
    # token-mean, the loss gradient must be -(1/N) sum_t A_t grad log pi(a_t | x_t), where
    # grad_W log pi(a | x) = (onehot(a) - softmax(W x)) x^T.
    gen = torch.Generator().manual_seed(0)
    n, d, k = 6, 3, 4
    x = torch.randn(n, d, generator=gen, dtype=torch.float64)
    a = torch.randint(0, k, (n,), generator=gen)
    adv = torch.randn(n, generator=gen, dtype=torch.float64)
    w = torch.randn(k, d, generator=gen, dtype=torch.float64, requires_grad=True)
    logp = torch.log_softmax(x @ w.T, dim=-1)[torch.arange(n), a]  # (N,)
    out = policy_loss(
        logp.view(1, n),
        logp.detach().view(1, n),
        adv.view(1, n),
        torch.ones(1, n, dtype=torch.float64),
        AlgorithmConfig(),
    )
    out.loss.backward()
    probs = torch.softmax(x @ w.detach().T, dim=-1)  # (N, K)
    onehot = torch.nn.functional.one_hot(a, k).double()
    analytic = -((adv[:, None] * (onehot - probs)).T @ x) / n  # (K, D)
    assert w.grad is not None
    torch.testing.assert_close(w.grad, analytic, rtol=1e-12, atol=1e-12)
    assert out.floats()["clip_frac"] == 0.0
    assert out.floats()["ratio_mean"] == 1.0
    assert out.floats()["ppo_kl"] == 0.0


def test_clipped_tokens_get_no_gradient_in_the_full_loss() -> None:
    # Token logratios ln 1.5 (A=+1, above 1.28: clipped) and ln 0.9 (A=+1, inside: flows).
    # token-mean over 2: grads = (0, -0.9 / 2); value = (-1.28 - 0.9) / 2 = -1.09.
    lp = torch.tensor([[math.log(1.5), math.log(0.9)]], requires_grad=True)
    out = policy_loss(
        lp, torch.zeros(1, 2), torch.ones(1, 2), torch.ones(1, 2), AlgorithmConfig(dual_clip_c=None)
    )
    out.loss.backward()
    assert out.loss.item() == pytest.approx(-1.09, abs=1e-6)
    assert lp.grad is not None
    assert lp.grad.tolist()[0] == pytest.approx([0.0, -0.45], abs=1e-6)
    assert out.floats()["clip_frac"] == 0.5
    assert out.floats()["ratio_max"] == pytest.approx(1.5)
    assert out.floats()["ratio_min"] == pytest.approx(0.9)


def test_gspo_matches_the_sequence_level_objective() -> None:
    # Sequence 0: token log ratios (0.1, 0.3) -> s0 = exp(0.2) = 1.221403 for both tokens; sequence 1:
    # (-0.2) -> s1 = exp(-0.2) = 0.818731. A = (+1, -1). Clip range [1 - 0.3, 1 + 0.3] leaves both
    # unclipped: seq-mean-token-mean loss = (-1.221403 + 0.818731) / 2 = -0.201336. Its gradient must
    # equal that of the plain sequence objective -(1/2) sum_i A_i exp(mean_t log r_it).
    old = torch.tensor([[-1.0, -2.0], [-0.5, 0.0]])
    mask = torch.tensor([[1.0, 1.0], [1.0, 0.0]])
    lp = (old + torch.tensor([[0.1, 0.3], [-0.2, 0.0]])).requires_grad_(True)
    adv = torch.tensor([[1.0, 1.0], [-1.0, 0.0]])
    cfg = AlgorithmConfig(
        policy_loss="gspo", clip_eps_low=0.3, clip_eps_high=0.3, loss_agg_mode="seq-mean-token-mean"
    )
    out = policy_loss(lp, old, adv, mask, cfg)
    out.loss.backward()
    assert out.loss.item() == pytest.approx(-0.201336, abs=1e-6)

    lp2 = lp.detach().clone().requires_grad_(True)
    seq_log_ratio = ((lp2 - old) * mask).sum(-1) / mask.sum(-1)
    (-(torch.tensor([1.0, -1.0]) * seq_log_ratio.exp()).mean()).backward()
    assert lp.grad is not None and lp2.grad is not None
    torch.testing.assert_close(lp.grad * mask, lp2.grad * mask)


def test_gspo_clips_whole_sequences() -> None:
    # Tokens (0.1, 0.5): mean log ratio 0.3 -> s = 1.349859 > 1 + 0.28 with A > 0: both tokens clipped.
    old = torch.zeros(1, 2)
    lp = torch.tensor([[0.1, 0.5]], requires_grad=True)
    out = policy_loss(lp, old, torch.ones(1, 2), torch.ones(1, 2), AlgorithmConfig(policy_loss="gspo"))
    out.loss.backward()
    assert out.floats()["clip_frac"] == 1.0
    assert lp.grad is not None and lp.grad.abs().sum().item() == 0.0


def test_truncated_importance_sampling() -> None:
    # old - rollout = (0, ln 3, -ln 2) -> weights (1, 3 capped at 2, 0.5).
    old = torch.tensor([[0.0, math.log(3.0), -math.log(2.0)]])
    w = truncated_is_weights(old, torch.zeros(1, 3), cap=2.0)
    assert w.tolist()[0] == pytest.approx([1.0, 2.0, 0.5])
    # On-policy ratio 1, A = 1: per-token pg = -1 * w; token-mean = -(1 + 2 + 0.5) / 3 = -1.166667.
    lp = old.clone().requires_grad_(True)
    out = policy_loss(
        lp,
        old,
        torch.ones(1, 3),
        torch.ones(1, 3),
        AlgorithmConfig(tis_cap=2.0),
        rollout_logprobs=torch.zeros(1, 3),
    )
    assert out.loss.item() == pytest.approx(-3.5 / 3, abs=1e-6)
    assert out.floats()["tis_mean"] == pytest.approx(3.5 / 3, abs=1e-6)
    # |old - rollout| mean = (0 + ln 3 + ln 2) / 3 = (1.098612 + 0.693147) / 3 = 0.597253.
    assert out.floats()["train_rollout_logprob_abs_diff"] == pytest.approx(0.597253, abs=1e-6)
    assert out.floats()["train_rollout_logprob_abs_diff_max"] == pytest.approx(1.098612, abs=1e-6)
    with pytest.raises(ConfigError, match="rollout logprobs"):
        policy_loss(lp, old, torch.ones(1, 3), torch.ones(1, 3), AlgorithmConfig(tis_cap=2.0))


def test_icepop_masks_tokens_outside_the_ratio_band() -> None:
    # old - rollout = (0, ln 3, -ln 2, ln 6, -ln 4) -> ratios (1, 3, 0.5, 6, 0.25); band [0.5, 5]:
    # kept (1, 1, 1, 0, 0) (the bounds are inside the band).
    old = torch.tensor([[0.0, math.log(3.0), -math.log(2.0), math.log(6.0), -math.log(4.0)]])
    rollout = torch.zeros(1, 5)
    assert icepop_mask(old, rollout, 0.5, 5.0).tolist() == [[1.0, 1.0, 1.0, 0.0, 0.0]]
    # On-policy ratio 1, A = 1: per-token pg = -1 where kept, 0 where masked; token-mean over the 5
    # trained tokens (masked tokens stay in the denominator) = -3 / 5 = -0.6; with TIS cap 2 too the
    # kept tokens weigh (1, 2, 0.5): -(1 + 2 + 0.5) / 5 = -0.7.
    lp = old.clone().requires_grad_(True)
    cfg = AlgorithmConfig(icepop_low=0.5, icepop_high=5.0)
    out = policy_loss(lp, old, torch.ones(1, 5), torch.ones(1, 5), cfg, rollout_logprobs=rollout)
    assert out.loss.item() == pytest.approx(-0.6, abs=1e-6)
    assert out.floats()["icepop_masked_frac"] == pytest.approx(0.4, abs=1e-6)
    out.loss.backward()
    # d(-r)/d lp = -r = -1 per kept token, / 5 tokens; masked tokens get exactly 0.
    assert lp.grad is not None and lp.grad.tolist()[0] == pytest.approx([-0.2, -0.2, -0.2, 0.0, 0.0])
    both = AlgorithmConfig(icepop_low=0.5, icepop_high=5.0, tis_cap=2.0)
    out = policy_loss(old.clone(), old, torch.ones(1, 5), torch.ones(1, 5), both, rollout_logprobs=rollout)
    assert out.loss.item() == pytest.approx(-0.7, abs=1e-6)
    with pytest.raises(ConfigError, match="rollout logprobs"):
        policy_loss(lp, old, torch.ones(1, 5), torch.ones(1, 5), cfg)


@pytest.mark.parametrize(
    ("low", "high", "match"),
    [(0.5, None, "both"), (None, 5.0, "both"), (1.5, 5.0, "0 < low < 1 < high"), (0.5, 0.9, "0 < low")],
)
def test_icepop_band_is_checked(low: float | None, high: float | None, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        AlgorithmConfig(icepop_low=low, icepop_high=high)


def test_kl_and_entropy_terms() -> None:
    # Ratio 1, A = 0: pg = 0. k1 KL per token = lp - ref = (0.2, 0.4), mean 0.3; kl_coef 0.5 -> 0.15.
    # Entropy (1.0, 2.0), mean 1.5, coef 0.1 -> -0.15. Total 0.0; the KL gradient is 0.5 / 2 per token.
    lp = torch.tensor([[-1.0, -2.0]], requires_grad=True)
    ref = torch.tensor([[-1.2, -2.4]])
    cfg = AlgorithmConfig(kl_coef=0.5, kl_estimator="k1", entropy_coef=0.1)
    out = policy_loss(
        lp,
        lp.detach(),
        torch.zeros(1, 2),
        torch.ones(1, 2),
        cfg,
        ref_logprobs=ref,
        entropy=torch.tensor([[1.0, 2.0]]),
    )
    assert out.loss.item() == pytest.approx(0.0, abs=1e-6)
    assert out.floats()["kl"] == pytest.approx(0.3, abs=1e-6)
    assert out.floats()["entropy"] == pytest.approx(1.5)
    out.loss.backward()
    assert lp.grad is not None and lp.grad.tolist()[0] == pytest.approx([0.25, 0.25])
    with pytest.raises(ConfigError, match="reference logprobs"):
        policy_loss(lp, lp.detach(), torch.zeros(1, 2), torch.ones(1, 2), cfg)


def test_masked_tokens_do_not_contribute() -> None:
    lp = torch.tensor([[0.7, -3.0]], requires_grad=True)
    out = policy_loss(lp, torch.zeros(1, 2), torch.ones(1, 2), torch.tensor([[0.0, 1.0]]), AlgorithmConfig())
    out.loss.backward()
    assert lp.grad is not None and lp.grad[0, 0].item() == 0.0


def test_config_validation() -> None:
    with pytest.raises(ConfigError, match="dual_clip_c"):
        AlgorithmConfig(dual_clip_c=0.5)
    with pytest.raises(ConfigError, match="clip eps"):
        AlgorithmConfig(clip_eps_low=1.5)
