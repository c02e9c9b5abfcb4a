"""Supervised fine-tuning: the loss against hand-derived numbers, assistant-only masks on a real chat
template, the data loader's errors, the batch order, and a backend step against an independent NLL."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from agentrl.errors import ConfigError
from agentrl.models import make_tiny_gpt2, resolve_model
from agentrl.run.sft import batch_order, to_batch
from agentrl.run.sft_data import chat_example, load_dataset
from agentrl.trainer.config import AlgorithmConfig, OptimizerConfig, TorchBackendConfig
from agentrl.trainer.losses import policy_loss
from agentrl.types import Status, Trajectory


def test_sft_loss_is_the_masked_nll_hand_derived() -> None:
    logprobs = torch.tensor([[-1.0, -2.0, -3.0], [-0.5, -4.0, 0.0]], requires_grad=True)
    mask = torch.tensor([[1.0, 1.0, 0.0], [1.0, 0.0, 0.0]])
    ignored = torch.full_like(mask, 7.0)  # advantages and old logprobs play no part
    out = policy_loss(logprobs, ignored, ignored, mask, AlgorithmConfig(loss_type="sft"))
    # token-mean: (1 + 2 + 0.5) / 3 trained tokens
    assert out.loss.item() == pytest.approx(3.5 / 3)
    assert out.metrics["nll"].item() == pytest.approx(3.5 / 3)
    out.loss.backward()
    assert logprobs.grad is not None
    assert torch.allclose(logprobs.grad, -mask / 3)  # d/dlogp of -sum(m logp)/3
    per_seq = AlgorithmConfig(loss_type="sft", loss_agg_mode="seq-mean-token-mean")
    # seq-mean-token-mean: ((1 + 2) / 2 + 0.5 / 1) / 2 sequences = 1.0
    assert policy_loss(logprobs, ignored, ignored, mask, per_seq).loss.item() == pytest.approx(1.0)


@pytest.fixture(scope="module")
def smollm2_tokenizer() -> Any:
    return AutoTokenizer.from_pretrained(resolve_model("smollm2-135m"))


CHAT = [
    {"role": "user", "content": "Hi"},
    {"role": "assistant", "content": "Hello there!"},
    {"role": "user", "content": "2+2?"},
    {"role": "assistant", "content": "5", "loss": 0},
    {"role": "user", "content": "3+3?"},
    {"role": "assistant", "content": "6"},
]


def test_chat_masks_train_assistant_turns_only_on_the_real_template(smollm2_tokenizer: Any) -> None:
    tok = smollm2_tokenizer
    example = chat_example(CHAT, tok)
    plain = [{k: v for k, v in m.items() if k != "loss"} for m in CHAT]
    # The ids are the template's own tokenization of the conversation.
    assert example.input_ids == tok.apply_chat_template(plain, tokenize=True, return_dict=False)
    trained = [tok.decode([i]) for i, m in zip(example.input_ids, example.loss_mask, strict=True) if m]
    # Content and the closing <|im_end|> of each trained assistant turn; not the "5" with "loss": 0, not
    # the role headers, not the newline the template writes after <|im_end|>.
    assert "".join(trained) == "Hello there!<|im_end|>6<|im_end|>"
    assert sum(example.loss_mask) == len(tok.encode("Hello there!")) + len(tok.encode("6")) + 2


def test_trajectory_lines_keep_their_mask_and_failed_episodes_are_skipped(tmp_path: Path) -> None:
    tok = AutoTokenizer.from_pretrained(make_tiny_gpt2(tmp_path / "tiny"))
    good = Trajectory(
        prompt_ids=[1, 2], response_ids=[3, 4, 5], loss_mask=[1, 0, 1], rollout_logprobs=[0.0] * 3
    )
    bad = Trajectory(prompt_ids=[1], status=Status.FAILED, error="x")
    path = tmp_path / "t.jsonl"
    path.write_text("\n".join(json.dumps(t.to_dict()) for t in (good, bad)) + "\n")
    data = load_dataset(path, tok, max_length=4)
    assert [(e.input_ids, e.loss_mask) for e in data.examples] == [([1, 2, 3, 4], [0, 0, 1, 0])]
    assert (data.skipped_failed, data.truncated) == (1, 1)


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("{not json", r"t\.jsonl:2: not valid JSON"),
        ('{"text": "hi", "label": 1}', r"t\.jsonl:2: a line needs 'messages' .* it has 'text', 'label'"),
        ('{"messages": [{"role": "user", "content": "hi"}]}', r"t\.jsonl:2: no assistant message"),
        ('{"messages": "hi"}', r"t\.jsonl:2: 'messages' must be a list"),
    ],
)
def test_bad_lines_name_the_file_and_line(
    tmp_path: Path, line: str, message: str, smollm2_tokenizer: Any
) -> None:
    path = tmp_path / "t.jsonl"
    path.write_text(json.dumps({"messages": CHAT}) + "\n" + line + "\n")
    with pytest.raises(ConfigError, match=message):
        load_dataset(path, smollm2_tokenizer, max_length=512)


def test_batch_order_is_a_seeded_permutation_per_epoch() -> None:
    steps = batch_order(10, 4, epochs=2, seed=3)
    assert [len(s) for s in steps] == [4, 4, 2, 4, 4, 2]
    first, second = [i for s in steps[:3] for i in s], [i for s in steps[3:] for i in s]
    assert sorted(first) == list(range(10)) == sorted(second)
    assert steps[:3] != steps[3:]  # a new order each epoch
    assert batch_order(10, 4, epochs=2, seed=3) == steps and batch_order(10, 4, epochs=2, seed=4) != steps


def test_a_torch_backend_sft_step_reports_the_independent_nll_and_lowers_it(tmp_path: Path) -> None:
    from agentrl.run.sft_data import Example
    from agentrl.trainer.torch_backend import TorchBackend

    model_dir = make_tiny_gpt2(tmp_path / "tiny", seed=1)
    examples = [Example([5, 9, 14, 3, 7, 2], [0, 0, 1, 1, 1, 1]), Example([8, 1, 4, 4], [0, 1, 1, 0])]
    reference = AutoModelForCausalLM.from_pretrained(model_dir).eval()
    expected_sum, count = 0.0, 0
    with torch.no_grad():
        for e in examples:
            logits = reference(torch.tensor([e.input_ids])).logits[0].double()  # (T, V)
            logp = torch.log_softmax(logits, dim=-1)
            for t in range(1, len(e.input_ids)):
                if e.loss_mask[t]:
                    expected_sum -= float(logp[t - 1, e.input_ids[t]])
                    count += 1
    config = TorchBackendConfig(
        device="cpu", algorithm=AlgorithmConfig(loss_type="sft"), optimizer=OptimizerConfig(lr=1e-2)
    )
    backend = TorchBackend(model_dir, config)
    first = backend.train_step(to_batch(examples))
    assert first["nll"] == pytest.approx(expected_sum / count, rel=1e-4)
    assert first["loss"] == pytest.approx(first["nll"], rel=1e-6)
    for _ in range(5):
        last = backend.train_step(to_batch(examples))
    assert last["nll"] < first["nll"] - 0.5
