"""The embedded engine's contract tests, run again on the fast path (eagerly, on CPU).

tests/integration/test_embedded_engine.py checks the transformers path on a tiny GPT-2 (which the fast
path does not serve); here the same test functions run against a fast-path engine over a tiny Llama
with the same tokenizer and chat template, so both paths answer to one set of expectations: greedy
equals ``model.generate``, contract logprobs, seeded reproducibility, stop strings and ids, abort /
pause / resume, prefix reuse, and the rollout controller's token-in/token-out invariants.
"""

from __future__ import annotations

import asyncio
import importlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

from agentrl.engines.embedded.engine import EmbeddedEngine, EmbeddedEngineConfig
from agentrl.models import make_tiny_gpt2

contract: Any = importlib.import_module("integration.test_embedded_engine")


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A random tiny Llama with the tiny GPT-2's tokenizer, EOS and chat template."""
    tok_dir = make_tiny_gpt2(tmp_path_factory.mktemp("tok") / "tiny")
    folder = tmp_path_factory.mktemp("models") / "llama"
    tok = AutoTokenizer.from_pretrained(tok_dir)
    eos = tok.convert_tokens_to_ids("<|im_end|>")
    cfg = AutoConfig.for_model(
        "llama",
        vocab_size=len(tok),
        hidden_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        intermediate_size=128,
        max_position_embeddings=2048,
        eos_token_id=eos,
    )
    torch.manual_seed(0)
    AutoModelForCausalLM.from_config(cfg, dtype=torch.float32).save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder


def fast_engine(model_dir: Path) -> EmbeddedEngine:
    cfg = EmbeddedEngineConfig(
        device="cpu", fast_path=True, max_batch_size=8, max_seq_len=2048, batch_wait_ms=20
    )
    engine = EmbeddedEngine(model_dir, cfg)
    assert engine._cuda is not None
    return engine


@pytest.fixture(scope="module")
def engine(model_dir: Path) -> Iterator[EmbeddedEngine]:
    eng = fast_engine(model_dir)
    yield eng
    asyncio.run(eng.close())


@pytest.mark.parametrize(
    "name",
    [
        "test_greedy_matches_transformers_generate",
        "test_concurrent_requests_are_batched_with_contract_logprobs",
        "test_stop_string_and_stop_id",
        "test_abort_pause_resume",
        "test_next_turn_prefills_only_new_ids",
    ],
)
def test_contract_on_fast_path(name: str, engine: EmbeddedEngine) -> None:
    getattr(contract, name)(engine)


@pytest.mark.parametrize("inline", [False, True])
def test_controller_invariants_on_fast_path(
    inline: bool, model_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(contract, "make_engine", lambda kind, folder: fast_engine(folder))
    contract.test_controller_invariants_with_real_engine("embedded", inline, model_dir)
