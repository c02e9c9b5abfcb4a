"""The PPO critic on a GPU: the Megatron critic against the torch critic on the same batch (issue 16).

Both critics start from the same folder (a random bf16 checkpoint plus a random ``value_head.safetensors``,
loaded through ``--critic-model`` on both backends), so their values and their value loss must agree to
bf16 rounding; the torch critic waits on the host between passes (``critic_offload="always"``). Then,
on Megatron: one critic step lowers the loss, the critic-only warm-up leaves the policy alone, a save /
load restores the critic bit for bit, and its HF export loads back into the torch critic.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from tests.gpu.test_megatron_backend import _sequences, record

SHAPES = ["qwen3-tiny", "smollm2-135m"]


def _masked(values: list[torch.Tensor], masks: list[torch.Tensor]) -> torch.Tensor:
    return torch.cat([v.float().cpu()[m.bool()] for v, m in zip(values, masks, strict=True)]).double()


def _critic_folder(shape: str, folder: Path) -> Path:
    from agentrl.trainer.critic import VALUE_HEAD_FILE
    from agentrl.trainer.megatron.shapes import hf_config, random_checkpoint

    random_checkpoint(shape, folder, seed=5)
    hidden = int(hf_config(shape).hidden_size)
    g = torch.Generator().manual_seed(6)
    head = {"weight": torch.randn(1, hidden, generator=g) / hidden**0.5, "bias": torch.tensor([0.1])}
    save_file(head, str(folder / VALUE_HEAD_FILE))  # values of order 1 (a zero head would match trivially)
    return folder


def _batch(vocab: int):
    """Four two-turn episodes with a tool output (mask 0) inside each response."""
    from agentrl.trainer.backend import TrainBatch

    ids = _sequences(vocab, [300, 200, 420, 150], seed=7)
    masks = []
    for x in ids:
        m = torch.zeros(x.numel())
        m[60:] = 1.0
        m[100:130] = 0.0  # the tool output
        masks.append(m)
    zeros = [torch.zeros(x.numel()) for x in ids]
    return TrainBatch(ids, masks, zeros, zeros, rewards=[1.0, 0.0, 0.5, 0.0])


@pytest.mark.parametrize("shape", SHAPES)
def test_megatron_critic_matches_the_torch_critic(shape: str, tmp_path: Path) -> None:
    from agentrl.trainer.config import (
        AlgorithmConfig,
        CriticConfig,
        OptimizerConfig,
        TorchBackendConfig,
    )
    from agentrl.trainer.megatron.backend import MegatronBackend
    from agentrl.trainer.megatron.config import MegatronBackendConfig
    from agentrl.trainer.megatron.shapes import hf_config
    from agentrl.trainer.megatron.step_loss import GlobalDenominators
    from agentrl.trainer.torch_backend import TorchBackend

    folder = _critic_folder(shape, tmp_path / "critic")
    algo = AlgorithmConfig(advantage_estimator="ppo", gamma=1.0, lambd=0.95)
    # A small lr keeps one Adam step (about lr * sign(grad) on every weight) in the linear regime, where it
    # must lower the error against the targets; at 1e-4 one step overshoots by orders of magnitude.
    critic = CriticConfig(critic_model=str(folder), critic_lr=1e-6, critic_warmup_steps=1)
    optimizer = OptimizerConfig(lr=1e-5)
    torch_backend = TorchBackend(
        folder,
        TorchBackendConfig(
            device="cuda",
            algorithm=algo,
            optimizer=optimizer,
            critic=CriticConfig(critic_model=str(folder), critic_lr=1e-6, critic_offload="always"),
        ),
    )
    megatron = MegatronBackend(
        folder,
        MegatronBackendConfig(micro_batch_tokens=1024, algorithm=algo, optimizer=optimizer, critic=critic),
    )
    assert torch_backend.critic is not None and torch_backend.critic.offload
    assert megatron.critic is not None
    batch = _batch(int(hf_config(shape).vocab_size))
    masks = batch.loss_mask

    # Values: the same weights through both stacks, in bf16.
    torch_values = torch_backend.critic.values(batch.input_ids)
    meg_values = megatron.critic.values(batch.input_ids)
    diff = (_masked(meg_values, masks) - _masked(torch_values, masks)).abs()
    scale = float(_masked(torch_values, masks).abs().mean())

    # The value loss of one critic step on the same targets (the torch critic's GAE).
    (filled,), _ = torch_backend.estimate_advantages([batch])
    denominators = GlobalDenominators.of(filled, algo)
    as_dict = {"num_tokens": denominators.num_tokens, "num_seqs": denominators.num_seqs}
    torch_step = torch_backend.critic.train_step(filled, algo.loss_agg_mode, as_dict)
    torch_moved = torch_backend.critic.values(batch.input_ids)

    megatron.save(tmp_path / "ckpt")
    policy_before = megatron.logprobs(batch.input_ids)
    meg_step = megatron.train_step(filled)  # warm-up: the critic's step only
    policy_after = megatron.logprobs(batch.input_ids)
    moved = megatron.critic.values(batch.input_ids)
    mse = [
        float(((_masked(v, masks) - _masked(filled.returns, masks)) ** 2).mean())
        for v in (meg_values, moved, torch_values, torch_moved)
    ]
    step_gap = (_masked(moved, masks) - _masked(torch_moved, masks)).abs()
    megatron.load(tmp_path / "ckpt")
    restored = megatron.critic.values(batch.input_ids)
    megatron.export_critic_hf(tmp_path / "exported")
    reloaded = TorchBackend(
        folder,
        TorchBackendConfig(
            device="cuda",
            algorithm=algo,
            critic=CriticConfig(critic_model=str(tmp_path / "exported"), critic_offload="never"),
        ),
    )
    assert reloaded.critic is not None
    export_gap = (_masked(reloaded.critic.values(batch.input_ids), masks) - _masked(meg_values, masks)).abs()

    record(
        "megatron_critic",
        shape=shape,
        tokens=int(diff.numel()),
        value_mean_abs=scale,
        value_mean_abs_diff=float(diff.mean()),
        value_max_abs_diff=float(diff.max()),
        vf_loss_torch=torch_step["vf_loss"],
        vf_loss_megatron=meg_step["vf_loss"],
        mse_before_after=mse[:2],
        torch_mse_before_after=mse[2:],
        step_gap_mean=float(step_gap.mean()),
        export_gap_mean=float(export_gap.mean()),
    )
    assert float(diff.mean()) < 2e-2 * max(1.0, scale)
    assert abs(meg_step["vf_loss"] - torch_step["vf_loss"]) < 2e-2 * max(1e-2, abs(torch_step["vf_loss"]))
    assert meg_step["critic_warmup"] == 1.0
    assert all(torch.equal(a, b) for a, b in zip(policy_after, policy_before, strict=True))  # warm-up
    assert mse[3] < mse[2] and mse[1] < mse[0]  # both critics' steps moved the values toward the targets
    assert float(step_gap.mean()) < 2e-2 * max(1.0, scale)  # and to the same values
    assert all(torch.equal(a, b) for a, b in zip(restored, meg_values, strict=True))  # exact load
    assert float(export_gap.mean()) < 2e-2 * max(1.0, scale)
    del megatron, torch_backend, reloaded
    torch.cuda.empty_cache()
