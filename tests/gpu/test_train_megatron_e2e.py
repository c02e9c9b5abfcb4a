"""`agentrl train --backend megatron` end to end on one GPU, KL on: two rollouts, a checkpoint, a
resumed third rollout, the HF export reloaded in the engine.

The policy is a random-init two-layer Llama with the tiny BPE tokenizer and ChatML template of
:func:`agentrl.models.make_tiny_gpt2` (Megatron takes Llama / Qwen shapes), trained on the Calculator
env, as a user runs ``agentrl train``. Checked: the run's records (KL reported, finite losses), the resume taking up at step 3,
and the exported folder loading in the embedded engine with the weights the trainer wrote, which the
three updates moved away from the initial ones. Then asynchronous training (one-step and fully) on the
one GPU under ``--placement shared``, on both backends.
"""

from __future__ import annotations

import asyncio
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from tests.gpu.test_megatron_backend import record


@pytest.fixture(scope="module")
def tiny_llama(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    from agentrl.models import make_tiny_gpt2

    base = tmp_path_factory.mktemp("models")
    gpt2 = make_tiny_gpt2(base / "gpt2", seed=1)
    tokenizer = AutoTokenizer.from_pretrained(gpt2)
    ids = {
        k: tokenizer.convert_tokens_to_ids(t) for k, t in (("eos", "<|im_end|>"), ("pad", "<|endoftext|>"))
    }
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=128,
        intermediate_size=256,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=2048,
        rope_theta=10000.0,
        tie_word_embeddings=True,
        bos_token_id=ids["pad"],
        eos_token_id=ids["eos"],
        pad_token_id=ids["pad"],
    )
    torch.manual_seed(2)
    folder = base / "tiny-llama"
    LlamaForCausalLM(config).to(torch.bfloat16).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def _train(model: Path, tmp: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    flags = ["--env", "calculator", "--model", str(model), "--backend", "megatron", "--num-gpus", "1"]
    flags += ["--kl-coef", "0.001", "--kl-estimator", "low_var_kl", "--lr", "1e-4"]
    # A random model's rewards are all 0: keep the dynamic filter from dropping every group, and give the
    # loss a gradient of its own (an entropy bonus; KL's is 0 until the policy moves off the reference).
    flags += ["--no-dynamic-filter", "--entropy-coef", "0.001"]
    flags += ["--rollout-batch-size", "4", "--n-samples-per-prompt", "4", "--global-batch-size", "16"]
    flags += ["--max-turns", "2", "--max-new-tokens", "24", "--max-context", "1024", "--eval-episodes", "4"]
    flags += ["--save", str(tmp / "ckpt"), "--save-interval", "1", "--log-dir", str(tmp / "logs")]
    flags += ["--no-progress", "--num-cpus", "4"]
    cmd = [sys.executable, "-m", "agentrl", "train", *flags, *extra]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-2000:] + "\n" + done.stderr[-6000:]
    return done


def test_train_megatron_kl_checkpoint_resume_export(tiny_llama: Path, tmp_path: Path) -> None:
    from transformers import AutoModelForCausalLM

    from agentrl.engines.base import GenerateOutput, SamplingParams
    from agentrl.engines.embedded.engine import EmbeddedEngine
    from agentrl.run.metrics import read_metrics

    _train(tiny_llama, tmp_path, "--num-rollouts", "2")
    assert (tmp_path / "ckpt" / "latest").read_text().strip() == "step_2"
    resumed = _train(tiny_llama, tmp_path, "--num-rollouts", "3", "--resume")
    assert "resumed from step 2" in resumed.stderr
    assert (tmp_path / "ckpt" / "latest").read_text().strip() == "step_3"

    records = [r for r in read_metrics(tmp_path / "logs" / "metrics.jsonl") if "rollout/reward" in r]
    assert [r["step"] for r in records] == [1, 2, 3]
    for r in records:
        assert r["train/skipped"] == 0.0, r
        assert math.isfinite(r["train/loss"]) and r["train/kl"] >= 0.0, r
    gaps = [
        (r["train/train_rollout_logprob_abs_diff"], r["train/train_rollout_logprob_abs_diff_max"])
        for r in records
    ]
    record(
        "train_megatron_e2e",
        kl=[r["train/kl"] for r in records],
        loss=[r["train/loss"] for r in records],
        train_rollout_logprob_abs_diff=gaps,
        train_s=[r.get("time/train_s") for r in records],
        sync_s=[r.get("time/sync_s") for r in records],
    )
    assert records[-1]["train/kl"] > 0.0  # three updates later the policy is off the reference

    exported = tmp_path / "logs" / "hf_model"
    written = load_file(exported / "model.safetensors")
    initial = load_file(tiny_llama / "model.safetensors")
    assert written.keys() == initial.keys()
    assert any(not torch.equal(written[k], initial[k]) for k in initial)  # training moved the weights

    reloaded = AutoModelForCausalLM.from_pretrained(str(exported), dtype=torch.bfloat16).state_dict()
    for name, tensor in written.items():
        assert torch.equal(reloaded[name], tensor.to(torch.bfloat16)), name
    engine = EmbeddedEngine(str(exported))
    text = engine.tokenizer.apply_chat_template(
        [{"role": "user", "content": "Say e."}], add_generation_prompt=True, tokenize=False
    )
    prompt = engine.tokenizer.encode(text, add_special_tokens=False)

    async def sample() -> GenerateOutput:
        try:
            return await engine.generate(list(prompt), SamplingParams(max_new_tokens=8, ignore_eos=True))
        finally:
            await engine.close()

    out = asyncio.run(sample())
    assert len(out.output_ids) == len(out.logprobs) > 0 and all(math.isfinite(x) for x in out.logprobs)


@pytest.mark.parametrize("backend", ["torch", "megatron"])
@pytest.mark.parametrize("mode", ["one-step", "fully"])
def test_async_training_on_one_shared_gpu(tiny_llama: Path, tmp_path: Path, backend: str, mode: str) -> None:
    """`--placement shared`: the engine keeps its memory beside the trainer on the one GPU, so rollouts
    are generated while the trainer steps; every trained token is at most one version stale (one-step)
    or within the default bound (fully), and three updates move the exported weights."""
    from agentrl.run.metrics import read_metrics

    flags = ["--env", "calculator", "--model", str(tiny_llama), "--backend", backend, "--num-gpus", "1"]
    flags += ["--placement", "shared", "--async-mode", mode, "--tis-cap", "2", "--lr", "1e-4"]
    flags += ["--no-dynamic-filter", "--entropy-coef", "0.001", "--num-rollouts", "3"]
    flags += ["--rollout-batch-size", "4", "--n-samples-per-prompt", "4", "--global-batch-size", "16"]
    flags += ["--max-turns", "2", "--max-new-tokens", "24", "--max-context", "1024", "--eval-episodes", "0"]
    flags += ["--log-dir", str(tmp_path / "logs"), "--no-progress", "--num-cpus", "4"]
    done = subprocess.run(
        [sys.executable, "-m", "agentrl", "train", *flags], capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stdout[-2000:] + "\n" + done.stderr[-6000:]
    records = [r for r in read_metrics(tmp_path / "logs" / "metrics.jsonl") if "train/loss" in r]
    assert len(records) == 3
    for r in records:
        assert math.isfinite(r["train/loss"]) and r["train/skipped"] == 0.0, r
    if mode == "one-step":
        assert max(r["async/staleness_max"] for r in records) <= 1
    record(
        f"async_shared_gpu_{backend}_{mode}",
        step_s=[r.get("async/step_s") for r in records],
        train_s=[r.get("time/train_s") for r in records],
        staleness_max=[r.get("async/staleness_max") for r in records],
        trainer_idle_s=[r.get("async/trainer_idle_s") for r in records],
    )
    written = load_file(tmp_path / "logs" / "hf_model" / "model.safetensors")
    initial = load_file(tiny_llama / "model.safetensors")
    assert any(not torch.equal(written[k], initial[k]) for k in initial)
