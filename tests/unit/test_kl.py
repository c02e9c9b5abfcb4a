"""KL estimators and entropy: golden numbers derived by hand, plus the estimators' defining properties."""

from __future__ import annotations

import math

import pytest
import torch

from agentrl.errors import ConfigError
from agentrl.trainer.kl import entropy_from_logits, kl_estimate


def test_golden_values_for_log_ratio_ln2() -> None:
    # policy p = 0.5, reference q = 0.25 for the sampled token: log r = ln 2 = 0.693147.
    # k1 = ln 2 = 0.693147; k2 = (ln 2)^2 / 2 = 0.240227; k3 = 1/2 + ln 2 - 1 = 0.193147.
    lp = torch.tensor([math.log(0.5)])
    ref = torch.tensor([math.log(0.25)])
    assert kl_estimate(lp, ref, "k1").item() == pytest.approx(0.693147, abs=1e-6)
    assert kl_estimate(lp, ref, "k2").item() == pytest.approx(0.240227, abs=1e-6)
    assert kl_estimate(lp, ref, "k3").item() == pytest.approx(0.193147, abs=1e-6)
    assert kl_estimate(lp, ref, "low_var_kl").item() == pytest.approx(0.193147, abs=1e-6)


def test_low_var_kl_clamps_extremes_where_k3_explodes() -> None:
    # log r = -30: k3 = e^30 - 31 (~1e13); low_var_kl clamps log r to -20 (e^20 - 21) and then to 10.
    # log r = +30: k3 = e^-30 + 29 = 29; low_var_kl: e^-20 + 19 -> clamped to 10.
    lp = torch.tensor([-30.0, 0.0])
    ref = torch.tensor([0.0, -30.0])
    k3 = kl_estimate(lp, ref, "k3")
    assert k3[0].item() == pytest.approx(math.exp(30) - 31, rel=1e-5)
    assert k3[1].item() == pytest.approx(29.0, abs=1e-5)
    assert kl_estimate(lp, ref, "low_var_kl").tolist() == [10.0, 10.0]


def test_k1_and_k3_are_unbiased_for_the_true_kl() -> None:
    # Sample x ~ p; E_p[k1] = E_p[k3] = KL(p || q) exactly; compare to the closed form.
    p = torch.tensor([0.5, 0.3, 0.2], dtype=torch.float64)
    q = torch.tensor([0.2, 0.4, 0.4], dtype=torch.float64)
    true_kl = float(
        (p * (p / q).log()).sum()
    )  # 0.5 ln 2.5 + 0.3 ln 0.75 + 0.2 ln 0.5 = 0.458145 - 0.086305 - 0.138629 = 0.233211
    assert true_kl == pytest.approx(0.233211, abs=1e-6)
    gen = torch.Generator().manual_seed(0)
    x = torch.multinomial(p, 400_000, replacement=True, generator=gen)
    lp, ref = p.log()[x], q.log()[x]
    for est in ("k1", "k3"):
        assert kl_estimate(lp, ref, est).mean().item() == pytest.approx(true_kl, abs=3e-3)
    assert bool((kl_estimate(lp, ref, "k3") >= 0).all())
    assert bool((kl_estimate(lp, ref, "k2") >= 0).all())


def test_identical_models_give_zero_kl() -> None:
    lp = torch.log(torch.tensor([0.1, 0.7, 0.99]))
    for est in ("k1", "k2", "k3", "low_var_kl"):
        assert torch.equal(kl_estimate(lp, lp, est), torch.zeros(3))


def test_unknown_estimator_names_the_choices() -> None:
    with pytest.raises(ConfigError, match="k1, k2, k3, low_var_kl"):
        kl_estimate(torch.zeros(1), torch.zeros(1), "k4")


def test_entropy_golden_values() -> None:
    # Uniform over 4: ln 4 = 1.386294. Probabilities (1/4, 3/4) (logits 0, ln 3):
    # H = -(0.25 ln 0.25 + 0.75 ln 0.75) = 0.346574 + 0.215762 = 0.562335.
    logits = torch.tensor([[0.0, 0.0, 0.0, 0.0], [0.0, math.log(3.0), -1e9, -1e9]])
    h = entropy_from_logits(logits)
    assert h[0].item() == pytest.approx(1.386294, abs=1e-6)
    assert h[1].item() == pytest.approx(0.562335, abs=1e-6)
    # bf16 logits are upcast: the result is fp32 (uniform logits are exact in bf16).
    assert entropy_from_logits(logits[:1].bfloat16()).dtype == torch.float32
    assert entropy_from_logits(logits[:1].bfloat16()).item() == pytest.approx(1.386294, abs=1e-6)
