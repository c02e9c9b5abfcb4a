"""`agentrl.models`: the tiny GPT-2 builder and `resolve_model` aliases."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from agentrl.errors import ModelNotFoundError
from agentrl.models import make_tiny_gpt2, resolve_model


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny_gpt2(tmp_path_factory.mktemp("m") / "tiny")


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_tiny_gpt2_is_deterministic_and_cached(tiny: Path, tmp_path: Path) -> None:
    again = make_tiny_gpt2(tmp_path / "again")
    for name in ("tokenizer.json", "model.safetensors", "config.json"):
        assert _digest(tiny / name) == _digest(again / name), name
    other_seed = make_tiny_gpt2(tmp_path / "seed1", seed=1)
    assert _digest(other_seed / "model.safetensors") != _digest(tiny / "model.safetensors")
    # A second call on an existing folder does not rebuild it.
    mtime = (tiny / "model.safetensors").stat().st_mtime_ns
    assert make_tiny_gpt2(tiny) == tiny
    assert (tiny / "model.safetensors").stat().st_mtime_ns == mtime
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")], "temp build folders left behind"


def test_tiny_gpt2_tokenizer_and_chat_template(tiny: Path) -> None:
    tok = AutoTokenizer.from_pretrained(tiny)
    assert tok.eos_token == "<|im_end|>"
    for special in ("<|endoftext|>", "<|im_start|>", "<|im_end|>"):
        ids = tok.encode(special, add_special_tokens=False)
        assert len(ids) == 1, f"{special} must be one token"
    messages = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "What is 2+2?"},
        {"role": "assistant", "content": "call"},
        {"role": "tool", "content": "4"},
    ]
    tools = [{"type": "function", "function": {"name": "python", "parameters": {}}}]
    text = tok.apply_chat_template(messages, tools=tools, tokenize=False, add_generation_prompt=True)
    expected = (
        "<|im_start|>system\nBe brief.\n\n# Tools\n\nYou may call one or more functions. "
        "Function signatures:\n<tools>\n"
        '{"type": "function", "function": {"name": "python", "parameters": {}}}\n</tools>\n'
        'Reply with <tool_call>{"name": ..., "arguments": ...}</tool_call> to call one.<|im_end|>\n'
        "<|im_start|>user\nWhat is 2+2?<|im_end|>\n<|im_start|>assistant\ncall<|im_end|>\n"
        "<|im_start|>tool\n4<|im_end|>\n<|im_start|>assistant\n"
    )
    assert text == expected
    plain = tok.apply_chat_template(messages[:2], tokenize=False)
    assert plain == "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nWhat is 2+2?<|im_end|>\n"
    # Byte-level BPE: any text round-trips, including characters never seen in training.
    sample = "Ünïcødé ✓ 数字 \t tabs\n\n and  double  spaces"
    assert tok.decode(tok.encode(sample, add_special_tokens=False)) == sample


def test_tiny_gpt2_model_config(tiny: Path) -> None:
    tok = AutoTokenizer.from_pretrained(tiny)
    model = AutoModelForCausalLM.from_pretrained(tiny)
    assert model.config.model_type == "gpt2"
    assert model.config.eos_token_id == tok.convert_tokens_to_ids("<|im_end|>")
    assert model.config.vocab_size == len(tok)
    logits = model(torch.tensor([[1, 5, 9]])).logits
    assert logits.shape == (1, 3, len(tok))


def test_resolve_model_local_folder_and_errors(tiny: Path, tmp_path: Path) -> None:
    assert resolve_model(tiny) == tiny
    assert resolve_model(str(tiny)) == tiny
    with pytest.raises(ModelNotFoundError, match="smollm2-135m, tiny-gpt2"):
        resolve_model("no-such-model")
    with pytest.raises(ModelNotFoundError, match=r"no config\.json"):
        resolve_model(tmp_path)


def test_resolve_tiny_alias_uses_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AGENTRL_CACHE", str(tmp_path))
    folder = resolve_model("tiny-gpt2")
    assert folder == tmp_path / "models" / "tiny-gpt2"
    assert (folder / "model.safetensors").exists()


def test_resolve_smollm2_converts_gguf() -> None:
    """Uses the shared cache: the first run converts the GGUF (tens of seconds), later runs reuse it."""
    folder = resolve_model("smollm2-135m")
    tok = AutoTokenizer.from_pretrained(folder)
    text = tok.apply_chat_template(
        [{"role": "user", "content": "Hi"}], tokenize=False, add_generation_prompt=True
    )
    assert text.endswith("<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n")
    model = AutoModelForCausalLM.from_pretrained(folder)
    assert model.config.model_type == "llama"
    assert model.config.vocab_size == 49152
