"""TorchBackend on a tiny random GPT-2: logprobs vs a direct HF forward, learning direction, gradient
accumulation invariance, exact save/load, HF export."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from agentrl.models import make_tiny_gpt2
from agentrl.trainer.backend import TrainBatch
from agentrl.trainer.config import AlgorithmConfig, OptimizerConfig, TorchBackendConfig
from agentrl.trainer.reference import ReferenceModel
from agentrl.trainer.torch_backend import TorchBackend, plan_micro_batches


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny_gpt2(tmp_path_factory.mktemp("tiny") / "gpt2")


VOCAB = 200
"""Sampled ids stay below this: the tiny tokenizer has fewer tokens than the 1024 it asks for."""


def _config(**kw: object) -> TorchBackendConfig:
    algorithm = kw.pop("algorithm", AlgorithmConfig())
    optimizer = kw.pop("optimizer", OptimizerConfig(lr=1e-3))
    return TorchBackendConfig(device="cpu", algorithm=algorithm, optimizer=optimizer, **kw)  # type: ignore[arg-type]


def _sequences() -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(1)
    return [torch.randint(5, VOCAB, (n,), generator=gen) for n in (9, 5, 14)]


def _batch(backend: TorchBackend, advantages: list[float], prompt_len: int = 3) -> TrainBatch:
    ids = _sequences()
    masks = [torch.tensor([0.0] * prompt_len + [1.0] * (len(x) - prompt_len)) for x in ids]
    rollout = [lp * m for lp, m in zip(backend.logprobs(ids), masks, strict=True)]
    return TrainBatch(
        input_ids=ids,
        loss_mask=masks,
        advantages=[m * a for m, a in zip(masks, advantages, strict=True)],
        rollout_logprobs=rollout,
    )


def _masked_sums(backend: TorchBackend, batch: TrainBatch) -> list[float]:
    return [
        float((lp * m).sum())
        for lp, m in zip(backend.logprobs(batch.input_ids), batch.loss_mask, strict=True)
    ]


def test_plan_micro_batches_respects_the_budget() -> None:
    # Longest first: 14 alone (14 + 9 -> 2 x 14 = 28 > 20); then 9 with 5 (2 x 9 = 18 <= 20).
    assert plan_micro_batches([9, 5, 14], 20) == [[2], [0, 1]]
    # Over-budget sequences get their own group.
    assert plan_micro_batches([50, 3], 10) == [[0], [1]]


@pytest.mark.parametrize(("budget", "fp32_lm_head"), [(4096, True), (10, True), (4096, False)])
def test_logprobs_match_a_direct_hf_forward(model_dir: Path, budget: int, fp32_lm_head: bool) -> None:
    backend = TorchBackend(model_dir, _config(micro_batch_tokens=budget, fp32_lm_head=fp32_lm_head))
    hf = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    for ids, got in zip(_sequences(), backend.logprobs(_sequences()), strict=True):
        with torch.no_grad():
            logits = hf(input_ids=ids[None]).logits[0]  # (T, V), unpadded, one sequence at a time
        want = torch.log_softmax(logits[:-1], dim=-1).gather(-1, ids[1:, None]).squeeze(-1)
        assert got.shape == ids.shape and got[0].item() == 0.0
        torch.testing.assert_close(got[1:], want, rtol=0, atol=1e-5)


@pytest.mark.parametrize("sign", [1.0, -1.0])
def test_train_step_moves_logprobs_in_the_direction_of_the_advantage(model_dir: Path, sign: float) -> None:
    backend = TorchBackend(model_dir, _config())
    batch = _batch(backend, [sign, -sign, 0.0])
    before = _masked_sums(backend, batch)
    metrics = backend.train_step(batch)
    after = _masked_sums(backend, batch)
    assert sign * (after[0] - before[0]) > 0.1
    assert sign * (after[1] - before[1]) < -0.1
    assert metrics["clip_frac"] == 0.0  # on-policy: ratio exactly 1
    assert metrics["ratio_mean"] == pytest.approx(1.0)
    assert metrics["train_rollout_logprob_abs_diff"] < 1e-5  # rollout logprobs came from this model
    assert 0 < metrics["entropy"] <= torch.log(torch.tensor(1024.0)).item()
    assert metrics["grad_norm"] > 0 and metrics["num_tokens"] == 28 - 9
    assert backend.step == 1


@pytest.mark.parametrize("mode", ["token-mean", "seq-mean-token-mean", "seq-mean-token-sum-norm"])
def test_gradient_accumulation_does_not_change_the_update(model_dir: Path, mode: str) -> None:
    # One micro-batch vs one sequence per micro-batch: same loss and same gradient norm.
    algo = AlgorithmConfig(loss_agg_mode=mode)  # type: ignore[arg-type]
    whole = TorchBackend(model_dir, _config(micro_batch_tokens=4096, algorithm=algo))
    split = TorchBackend(model_dir, _config(micro_batch_tokens=1, algorithm=algo))
    batch = _batch(whole, [1.0, -0.5, 0.25])
    m1, m2 = whole.train_step(batch), split.train_step(batch)
    assert m2["num_micro_batches"] == 3 and m1["num_micro_batches"] == 1
    assert m2["loss"] == pytest.approx(m1["loss"], rel=1e-5, abs=1e-7)
    assert m2["pg_loss"] == pytest.approx(m1["pg_loss"], rel=1e-5, abs=1e-7)
    assert m2["grad_norm"] == pytest.approx(m1["grad_norm"], rel=1e-4)
    assert m2["entropy"] == pytest.approx(m1["entropy"], rel=1e-5)


def test_reference_model_and_kl(model_dir: Path) -> None:
    algo = AlgorithmConfig(kl_coef=0.1, kl_estimator="k3")
    backend = TorchBackend(model_dir, _config(algorithm=algo))
    batch = _batch(backend, [1.0, -1.0, 0.0])
    first = backend.train_step(batch)
    assert first["kl"] == pytest.approx(0.0, abs=1e-7)  # policy == reference before any update
    second = backend.train_step(batch)
    assert second["kl"] > 1e-4
    ref = backend.ref_logprobs(batch.input_ids)
    fresh = TorchBackend(model_dir, _config()).logprobs(batch.input_ids)
    for a, b in zip(ref, fresh, strict=True):
        torch.testing.assert_close(a, b)  # the reference stays the initial weights


@pytest.mark.parametrize("estimator", ["k1", "k2", "k3", "low_var_kl"])
def test_ref_model_path_gives_the_kl_of_every_estimator(
    model_dir: Path, tmp_path_factory: pytest.TempPathFactory, estimator: str
) -> None:
    """``ref_model``: another folder's weights are the reference; the step's ``kl`` metric equals the
    estimator's formula (written out here) over the two models' logprobs."""
    other = make_tiny_gpt2(tmp_path_factory.mktemp("other") / "gpt2", seed=7)
    algo = AlgorithmConfig(kl_coef=0.1, kl_estimator=estimator, ref_model=str(other))  # type: ignore[arg-type]
    backend = TorchBackend(model_dir, _config(algorithm=algo))
    batch = _batch(backend, [1.0, -1.0, 0.0])
    policy = backend.logprobs(batch.input_ids)
    ref = TorchBackend(other, _config()).logprobs(batch.input_ids)
    for a, b in zip(backend.ref_logprobs(batch.input_ids), ref, strict=True):
        torch.testing.assert_close(a, b)
    d = torch.cat([(p - r)[m.bool()] for p, r, m in zip(policy, ref, batch.loss_mask, strict=True)]).double()
    formula = {
        "k1": d,
        "k2": d**2 / 2,
        "k3": torch.exp(-d) + d - 1,
        "low_var_kl": (torch.exp(-d) + d - 1).clamp(-10, 10),
    }[estimator]
    assert float(d.abs().mean()) > 0.01  # the two models differ, so each estimator is tested
    assert backend.train_step(batch)["kl"] == pytest.approx(float(formula.mean()), rel=1e-4, abs=1e-6)


def test_reference_built_on_first_use_is_the_initial_model(model_dir: Path) -> None:
    """A backend built without KL that is switched to KL after training still takes the initial
    weights (read again from its folder), not the trained policy, as the reference."""
    backend = TorchBackend(model_dir, _config())
    batch = _batch(backend, [1.0, -1.0, 0.0])
    initial = backend.logprobs(batch.input_ids)
    backend.train_step(batch)
    trained = backend.logprobs(batch.input_ids)
    assert backend.ref_model is None
    backend.config = replace(backend.config, algorithm=AlgorithmConfig(kl_coef=0.1, kl_estimator="k1"))
    metrics = backend.train_step(batch)
    for a, b in zip(backend.ref_logprobs(batch.input_ids), initial, strict=True):
        torch.testing.assert_close(a, b)
    d = torch.cat([(t - i)[m.bool()] for t, i, m in zip(trained, initial, batch.loss_mask, strict=True)])
    assert metrics["kl"] == pytest.approx(float(d.mean()), rel=1e-4)  # k1 of the trained vs initial model


def test_offloaded_reference_gives_the_same_step(model_dir: Path) -> None:
    """With the reference's weights on the host (filled in for the whole batch first, one copy in)
    the step equals the one with the reference resident (per micro-batch)."""
    algo = AlgorithmConfig(kl_coef=0.5, kl_estimator="k2")
    resident = TorchBackend(model_dir, _config(algorithm=algo, micro_batch_tokens=10))
    offloaded = TorchBackend(model_dir, _config(algorithm=algo, micro_batch_tokens=10))
    assert offloaded.ref is not None and not offloaded.ref.offload  # never offloaded on CPU by itself
    offloaded.ref = ReferenceModel(offloaded.ref.chunks, offload=True)
    batch = _batch(resident, [1.0, -1.0, 0.5])
    for backend in (resident, offloaded):
        backend.train_step(batch)  # the policy moves off the reference: the second step has KL
    a, b = resident.train_step(batch), offloaded.train_step(batch)
    assert a["kl"] > 1e-5
    assert (b["kl"], b["loss"]) == pytest.approx((a["kl"], a["loss"]), rel=1e-5)
    assert all(p.numel() == 0 for p in offloaded.ref.chunks[0].parameters())  # back on the host


def test_save_load_resumes_exactly(model_dir: Path, tmp_path: Path) -> None:
    cfg = _config(optimizer=OptimizerConfig(lr=1e-3, warmup_steps=3))
    a = TorchBackend(model_dir, cfg)
    batch = _batch(a, [1.0, -1.0, 0.5])
    a.train_step(batch)
    a.save(tmp_path / "ckpt")
    m_a = a.train_step(batch)
    b = TorchBackend(model_dir, cfg)
    b.load(tmp_path / "ckpt")
    assert b.step == 1
    m_b = b.train_step(batch)
    assert m_b["lr"] == m_a["lr"] == pytest.approx(1e-3 * 2 / 3)  # warmup step 2 of 3
    for (name, pa), (_, pb) in zip(a.hf_state_dict(), b.hf_state_dict(), strict=True):
        torch.testing.assert_close(pa, pb, rtol=0, atol=1e-6, msg=name)


def test_export_hf_reloads_identically(model_dir: Path, tmp_path: Path) -> None:
    backend = TorchBackend(model_dir, _config())
    backend.train_step(_batch(backend, [1.0, -1.0, 0.0]))
    out = tmp_path / "hf"
    backend.export_hf(out)
    assert {"config.json", "model.safetensors", "generation_config.json", "tokenizer.json"} <= {
        p.name for p in out.iterdir()
    }
    reloaded = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32).eval()
    names = dict(reloaded.state_dict())
    for name, tensor in backend.hf_state_dict():
        torch.testing.assert_close(names[name], tensor, rtol=0, atol=0, msg=name)
    tok = AutoTokenizer.from_pretrained(out)
    assert tok.convert_tokens_to_ids("<|im_end|>") == reloaded.generation_config.eos_token_id


def test_empty_batch_is_skipped(model_dir: Path) -> None:
    backend = TorchBackend(model_dir, _config())
    metrics = backend.train_step(TrainBatch(input_ids=[], loss_mask=[], advantages=[], rollout_logprobs=[]))
    assert metrics["skipped_empty"] == 1.0 and backend.step == 0


def test_off_policy_old_logprobs_give_ratios_and_clipping(model_dir: Path) -> None:
    # A second update on the same rollout (old = logprobs before the first update): ratios move off 1
    # and a large first step (lr 0.05) pushes some tokens outside [0.8, 1.28], where they get clipped.
    backend = TorchBackend(model_dir, _config(optimizer=OptimizerConfig(lr=5e-2)))
    batch = _batch(backend, [1.0, -1.0, 0.5])
    batch.old_logprobs = backend.logprobs(batch.input_ids)
    backend.train_step(batch)
    metrics = backend.train_step(batch)
    assert metrics["ratio_max"] > 1.0 + 1e-3 and metrics["ratio_min"] < 1.0 - 1e-3
    assert metrics["clip_frac"] > 0.0
    assert metrics["ppo_kl"] != 0.0


def test_cosine_schedule_drives_the_optimizer_and_survives_resume(model_dir: Path, tmp_path: Path) -> None:
    # lr 1e-3, warmup 2, cosine over 4 steps to 1e-4 (hand-derived): 5e-4, 1e-3, 1e-3,
    # 1e-4 + 9e-4 * (1 + cos(pi / 4)) / 2 = 8.682e-4, then 5.5e-4.
    opt = OptimizerConfig(lr=1e-3, warmup_steps=2, lr_decay_style="cosine", min_lr=1e-4, lr_decay_steps=4)
    a = TorchBackend(model_dir, _config(optimizer=opt))
    batch = _batch(a, [1.0, -1.0, 0.5])
    seen = [a.train_step(batch)["lr"] for _ in range(3)]
    a.save(tmp_path / "ckpt")
    b = TorchBackend(model_dir, _config(optimizer=opt))
    b.load(tmp_path / "ckpt")
    seen += [b.train_step(batch)["lr"] for _ in range(2)]
    assert seen == pytest.approx([5e-4, 1e-3, 1e-3, 8.682e-4, 5.5e-4], rel=1e-4)


@pytest.mark.parametrize("fp32_lm_head", [True, False])
def test_masked_forward_equals_the_full_forward_on_the_mask(model_dir: Path, fp32_lm_head: bool) -> None:
    # A multi-turn shape: two sampled spans with a tool output between them. The LM head then runs only
    # on the masked positions; their logprobs, entropies and gradient must be the full forward's.
    backend = TorchBackend(model_dir, _config(fp32_lm_head=fp32_lm_head))
    ids = _sequences()
    spans = [(3, 5, 7, 9), (2, 3, 4, 5), (4, 8, 11, 14)]  # (start, end) of two sampled spans per row
    mask = torch.zeros(len(ids), max(len(x) for x in ids))
    for row, (a, b, c, d) in enumerate(spans):
        mask[row, a:b] = 1.0
        mask[row, c:d] = 1.0
    first = 2

    def run(masked: bool) -> tuple[torch.Tensor, torch.Tensor, list[torch.Tensor]]:
        backend.model.zero_grad()
        lp, ent = backend._forward(backend.model, ids, mask if masked else None, entropy=True, first=first)
        assert ent is not None
        (lp * mask).sum().backward()
        grads = [p.grad.clone() for p in backend.model.parameters() if p.grad is not None]
        return lp.detach(), ent.detach(), grads

    lp_full, ent_full, grads_full = run(False)
    lp_mask, ent_mask, grads_mask = run(True)
    on = mask.bool()
    torch.testing.assert_close(lp_mask[on], lp_full[on], rtol=0, atol=1e-6)
    torch.testing.assert_close(ent_mask[on], ent_full[on], rtol=0, atol=1e-6)
    assert bool((lp_mask[~on] == 0).all()) and bool((ent_mask[~on] == 0).all())
    assert bool((lp_full[~on][:, None] != 0).any())  # the full forward did fill the other positions
    assert len(grads_mask) == len(grads_full)
    for g_mask, g_full in zip(grads_mask, grads_full, strict=True):
        torch.testing.assert_close(g_mask, g_full, rtol=1e-5, atol=1e-7)


def test_cpu_bf16_runs_the_model_under_bf16_autocast(model_dir: Path) -> None:
    exact = TorchBackend(model_dir, _config())
    fast = TorchBackend(model_dir, _config(cpu_bf16=True))
    assert not exact.autocast_bf16 and fast.autocast_bf16
    for want, got in zip(exact.logprobs(_sequences()), fast.logprobs(_sequences()), strict=True):
        gap = (want[1:] - got[1:]).abs()
        # bf16 rounding of the activations: visible, but small against logprobs of about -7 (ln 1024)
        assert 0 < float(gap.max()) < 0.1
    batch = _batch(fast, [1.0, -1.0, 0.0])
    before = _masked_sums(fast, batch)
    fast.train_step(batch)
    after = _masked_sums(fast, batch)
    assert after[0] - before[0] > 0.1 and after[1] - before[1] < -0.1
    assert all(p.dtype == torch.float32 for p in fast.model.parameters())  # weights stay fp32
