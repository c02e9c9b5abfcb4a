"""PPO's math on CPU: GAE over multi-turn loss masks, whitening, the clipped value loss, the ppo batch.

Every expectation is derived by hand in the comments (docs/critic.md has the formulas).
"""

from __future__ import annotations

import pytest
import torch

from agentrl.errors import ConfigError
from agentrl.trainer.advantages import compute_advantages
from agentrl.trainer.backend import TrainBatch
from agentrl.trainer.batch import trajectories_to_batch
from agentrl.trainer.config import AlgorithmConfig
from agentrl.trainer.gae import fill_gae, gae_advantages, whiten
from agentrl.trainer.losses import value_loss
from agentrl.types import Status, Trajectory

# Prompt of 2 tokens, then turn 1 (2 sampled tokens), a tool output (2 tokens), turn 2 (1 sampled
# token), a second tool output (1 token), turn 3 (2 sampled tokens): sampled positions 2, 3, 6, 8, 9.
TWO_TOOLS_MASK = torch.tensor([0, 0, 1, 1, 0, 0, 1, 0, 1, 1], dtype=torch.float32)
# Values before each token; 9.0 on prompt and tool-output positions must never be read.
TWO_TOOLS_VALUES = torch.tensor([9.0, 9.0, 0.5, 0.2, 9.0, 9.0, -0.1, 9.0, 0.4, 0.3])


def _at_steps(x: torch.Tensor, mask: torch.Tensor) -> list[float]:
    return x[mask > 0].tolist()


def test_gae_skips_two_tool_outputs_but_carries_credit_across_them() -> None:
    # gamma 0.9, lambda 0.8 (gamma * lambda = 0.72), reward 1 at the last sampled token; the sampled
    # tokens' values are V = (0.5, 0.2, -0.1, 0.4, 0.3) and V_6 = 0 (terminal):
    #   k=5: delta = 1 + 0 - 0.3 = 0.7                    A5 = 0.7
    #   k=4: delta = 0.9 * 0.3 - 0.4 = -0.13              A4 = -0.13 + 0.72 * 0.7 = 0.374
    #   k=3: delta = 0.9 * 0.4 + 0.1 = 0.46               A3 = 0.46 + 0.72 * 0.374 = 0.72928
    #   k=2: delta = 0.9 * -0.1 - 0.2 = -0.29             A2 = -0.29 + 0.72 * 0.72928 = 0.2350816
    #   k=1: delta = 0.9 * 0.2 - 0.5 = -0.32              A1 = -0.32 + 0.72 * 0.2350816 = -0.150741248
    # Returns G = A + V: (0.349258752, 0.4350816, 0.62928, 0.774, 1.0).
    adv, ret = gae_advantages(TWO_TOOLS_VALUES, TWO_TOOLS_MASK, 1.0, gamma=0.9, lambd=0.8)
    assert _at_steps(adv, TWO_TOOLS_MASK) == pytest.approx(
        [-0.150741248, 0.2350816, 0.72928, 0.374, 0.7], abs=1e-6
    )
    assert _at_steps(ret, TWO_TOOLS_MASK) == pytest.approx(
        [0.349258752, 0.4350816, 0.62928, 0.774, 1.0], abs=1e-6
    )
    # Tool outputs and the prompt: no advantage, no value target.
    assert adv[TWO_TOOLS_MASK == 0].tolist() == [0.0] * 5
    assert ret[TWO_TOOLS_MASK == 0].tolist() == [0.0] * 5


def test_gae_with_lambda_one_is_the_discounted_return_counting_sampled_tokens_only() -> None:
    # lambda 1: A_k = gamma^(K - k) R - V_k, where K - k counts sampled tokens, not tool-output tokens
    # (first token: 0.9^4 = 0.6561, not 0.9^7): (0.6561 - 0.5, 0.729 - 0.2, 0.81 + 0.1, 0.9 - 0.4, 1 - 0.3).
    adv, ret = gae_advantages(TWO_TOOLS_VALUES, TWO_TOOLS_MASK, 1.0, gamma=0.9, lambd=1.0)
    assert _at_steps(adv, TWO_TOOLS_MASK) == pytest.approx([0.1561, 0.529, 0.91, 0.5, 0.7], abs=1e-6)
    assert _at_steps(ret, TWO_TOOLS_MASK) == pytest.approx([0.6561, 0.729, 0.81, 0.9, 1.0], abs=1e-6)


def test_truncated_episode_is_terminal_no_bootstrap() -> None:
    # A truncated episode (context limit, reward 0) with sampled values (0.6, 0.5, 0.4); gamma 1,
    # lambda 0.95. No bootstrap: the state after the last token is worth 0, so
    #   k=3: delta = 0 + 0 - 0.4 = -0.4       A3 = -0.4
    #   k=2: delta = 0.4 - 0.5 = -0.1         A2 = -0.1 + 0.95 * -0.4 = -0.48
    #   k=1: delta = 0.5 - 0.6 = -0.1         A1 = -0.1 + 0.95 * -0.48 = -0.556
    # and the last target is the reward itself, G3 = 0 (a bootstrap would make it V_after = 0.8 here).
    values = torch.tensor([0.0, 0.6, 0.5, 0.4, 0.8])  # entry 4: the value after the last sampled token
    mask = torch.tensor([0.0, 1.0, 1.0, 1.0, 0.0])  # the episode ends in a (truncated) observation token
    adv, ret = gae_advantages(values, mask, 0.0, gamma=1.0, lambd=0.95)
    assert _at_steps(adv, mask) == pytest.approx([-0.556, -0.48, -0.4], abs=1e-6)
    assert _at_steps(ret, mask) == pytest.approx([0.044, 0.02, 0.0], abs=1e-6)

    # Through the batch: a TRUNCATED trajectory is trained on, with the same numbers as by hand.
    traj = Trajectory(
        prompt_ids=[7],
        response_ids=[8, 9, 10, 11],
        loss_mask=[1, 1, 1, 0],
        rollout_logprobs=[-1.0, -1.0, -1.0, 0.0],
        reward=0.0,
        status=Status.TRUNCATED,
        group_id="g",
    )
    algo = AlgorithmConfig(advantage_estimator="ppo", gamma=1.0, lambd=0.95)
    batch, _ = trajectories_to_batch([traj], algo)
    (filled,), metrics = fill_gae([batch], [[values]], algo)
    assert filled.returns is not None and filled.old_values is not None
    assert filled.returns[0].tolist() == pytest.approx([0.0, 0.044, 0.02, 0.0, 0.0], abs=1e-6)
    assert filled.old_values[0].tolist() == pytest.approx([0.0, 0.6, 0.5, 0.4, 0.0])
    assert metrics["return_mean"] == pytest.approx(0.064 / 3, abs=1e-6)


def test_whiten_over_every_sampled_token_of_the_rollout() -> None:
    # Sampled advantages (1, 3) and (5,): mean 3, unbiased std sqrt((4 + 0 + 4) / 2) = 2 -> (-1, 0, 1);
    # the masked entry (100) is ignored and stays 0.
    out = whiten(
        [torch.tensor([1.0, 100.0, 3.0]), torch.tensor([5.0])],
        [torch.tensor([1.0, 0.0, 1.0]), torch.ones(1)],
        eps=0.0,
    )
    assert out[0].tolist() == pytest.approx([-1.0, 0.0, 0.0]) and out[1].tolist() == pytest.approx([1.0])


def test_fill_gae_whitens_across_the_batches_of_a_rollout() -> None:
    # Two one-sequence batches, one sampled token each, V = 0, gamma = lambda = 1: raw advantages are
    # the rewards (1, 0) -> whitened over both batches: mean 0.5, std sqrt(0.5) -> +-0.707107.
    # Whitened per batch instead, each would be a lone 0.
    def one(reward: float) -> TrainBatch:
        return TrainBatch(
            input_ids=[torch.tensor([1, 2])],
            loss_mask=[torch.tensor([0.0, 1.0])],
            advantages=[torch.zeros(2)],
            rollout_logprobs=[torch.zeros(2)],
            rewards=[reward],
        )

    algo = AlgorithmConfig(advantage_estimator="ppo", gamma=1.0, lambd=1.0, adv_eps=0.0)
    out, metrics = fill_gae([one(1.0), one(0.0)], [[torch.zeros(2)], [torch.zeros(2)]], algo)
    assert out[0].advantages[0].tolist() == pytest.approx([0.0, 0.707107], abs=1e-6)
    assert out[1].advantages[0].tolist() == pytest.approx([0.0, -0.707107], abs=1e-6)
    assert metrics["adv_raw_mean"] == pytest.approx(0.5)
    assert metrics["explained_var"] == pytest.approx(0.0)  # V = 0 explains nothing


def test_value_loss_clipping_hand_derived() -> None:
    # clip 0.2; per token (V, V_old, G):
    #   (1.0, 0.5, 1.2): unclipped (1.0-1.2)^2 = 0.04; V_old + clip(0.5) = 0.7 -> (0.7-1.2)^2 = 0.25:
    #                    the clipped term is larger -> 0.25, gradient 0
    #   (0.6, 0.5, 0.0): within the clip: 0.36 both -> 0.36, gradient (V - G) = 0.6
    #   (0.1, 0.5, 0.3): unclipped 0.04; 0.5 - 0.2 = 0.3 -> 0.0: unclipped larger -> 0.04, grad -0.2
    #   (5.0, 0.0, 0.0): masked out
    # token-mean: 0.5 * (0.25 + 0.36 + 0.04) / 3 = 0.108333; clip fraction 1/3;
    # d loss / dV = (V - G) / 3 where unclipped: (0, 0.2, -0.066667, 0).
    values = torch.tensor([[1.0, 0.6, 0.1, 5.0]], requires_grad=True)
    old = torch.tensor([[0.5, 0.5, 0.5, 0.0]])
    returns = torch.tensor([[1.2, 0.0, 0.3, 0.0]])
    mask = torch.tensor([[1.0, 1.0, 1.0, 0.0]])
    out = value_loss(values, old, returns, mask, 0.2, "token-mean")
    out.loss.backward()
    assert out.loss.item() == pytest.approx(0.108333, abs=1e-6)
    assert out.floats()["vf_clip_frac"] == pytest.approx(1 / 3)
    assert values.grad is not None
    assert values.grad[0].tolist() == pytest.approx([0.0, 0.2, -0.066667, 0.0], abs=1e-6)
    # Without the clip: 0.5 * (0.04 + 0.36 + 0.04) / 3 = 0.073333.
    plain = value_loss(values.detach(), old, returns, mask, None, "token-mean")
    assert plain.loss.item() == pytest.approx(0.073333, abs=1e-6)
    assert plain.floats()["vf_clip_frac"] == 0.0


def test_ppo_batch_carries_rewards_and_leaves_advantages_to_the_critic() -> None:
    trajs = [
        Trajectory(
            prompt_ids=[1],
            response_ids=[2, 3],
            loss_mask=[1, 0],
            rollout_logprobs=[-1.0, 0.0],
            reward=r,
            status=s,
            group_id="a",
        )
        for r, s in [(1.0, Status.COMPLETED), (0.3, Status.FAILED), (0.2, Status.TRUNCATED)]
    ]
    batch, metrics = trajectories_to_batch(trajs, AlgorithmConfig(advantage_estimator="ppo"))
    assert batch.rewards == [1.0, 0.2]  # the FAILED one is out
    assert all(a.abs().sum() == 0 for a in batch.advantages)
    assert "frac_zero_adv" not in metrics  # the critic's advantages are not known yet
    with pytest.raises(ConfigError, match="critic"):
        compute_advantages(torch.tensor([1.0, 0.0]), torch.tensor([0, 0]), torch.tensor([True, True]), "ppo")


def test_gae_config_is_checked() -> None:
    with pytest.raises(ConfigError, match="lambd"):
        AlgorithmConfig(advantage_estimator="ppo", lambd=1.5)
    assert AlgorithmConfig(advantage_estimator="ppo").uses_critic
    assert not AlgorithmConfig().uses_critic
