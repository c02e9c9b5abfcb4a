"""Put tool schemas into the prompt the way the model was trained to read them.

A model that was trained with tools (Qwen2.5/3, Llama 3.1, Hermes) has a chat template that renders
``apply_chat_template(messages, tools=...)`` itself; its own format is what it knows, so we use it.
Many templates ignore ``tools`` silently (SmolLM2's does). Whether a template uses them is detected by
rendering a probe conversation with and without a probe tool: if the text does not change, the tools
go into the system message in the format below instead, and the model is taught the Hermes
``<tool_call>`` convention that :class:`~agentrl.tools.parsers.HermesParser` reads.

The fallback system-prompt format (:func:`tools_system_prompt`)::

    # Tools

    You may call functions to help with the task. Their JSON schemas, one per line:
    <tools>
    {"type": "function", "function": {"name": "python", ...}}
    </tools>

    To call a function, write a JSON object with its name and arguments between <tool_call> and
    </tool_call> tags, one call per block, for example:
    <tool_call>
    {"name": "python", "arguments": {"code": "..."}}
    </tool_call>
    Each result comes back in a message from the `tool` role.

The example is a real call of the first tool, built from its schema (:func:`example_call`), because a
small model copies a placeholder such as ``{<arguments as a JSON object>}`` verbatim.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from agentrl.tools.schema import JSONSchema, Tool
from agentrl.types import Message

_PROBE_MESSAGES: list[Message] = [{"role": "user", "content": "ping"}]
_PROBE_TOOL: JSONSchema = {
    "type": "function",
    "function": {
        "name": "agentrl_probe_tool",
        "description": "Probe whether the chat template renders tools.",
        "parameters": {"type": "object", "properties": {"x": {"type": "string"}}, "required": ["x"]},
    },
}
_uses_tools_cache: dict[str, bool] = {}


def schemas(tools: Sequence[Tool | JSONSchema]) -> list[JSONSchema]:
    """OpenAI-style schemas of ``tools`` (given as :class:`Tool` objects or schema dicts)."""
    return [t.schema if isinstance(t, Tool) else t for t in tools]


def template_uses_tools(tokenizer: Any) -> bool:
    """True when the tokenizer's chat template renders the ``tools`` argument (cached per template)."""
    template = str(getattr(tokenizer, "chat_template", None))
    if template not in _uses_tools_cache:
        plain = tokenizer.apply_chat_template(_PROBE_MESSAGES, tokenize=False, add_generation_prompt=True)
        with_tools = tokenizer.apply_chat_template(
            _PROBE_MESSAGES, tools=[_PROBE_TOOL], tokenize=False, add_generation_prompt=True
        )
        _uses_tools_cache[template] = plain != with_tools
    return _uses_tools_cache[template]


_EXAMPLE_VALUES: dict[str, Any] = {
    "string": "...",
    "integer": 1,
    "number": 1,
    "boolean": True,
    "array": [],
    "object": {},
    "null": None,
}


def example_value(schema: JSONSchema) -> Any:
    """A value that fits ``schema``: its first enum value, else a plain value of its (first) type."""
    if schema.get("enum"):
        return schema["enum"][0]
    if "anyOf" in schema:
        options = [s for s in schema["anyOf"] if s.get("type") != "null"] or schema["anyOf"]
        return example_value(options[0]) if options else "..."
    kind = schema.get("type")
    if isinstance(kind, list):
        kind = next((k for k in kind if k != "null"), kind[0] if kind else None)
    if kind == "array" and isinstance(schema.get("items"), dict):
        return [example_value(schema["items"])]
    return _EXAMPLE_VALUES.get(str(kind), "...")


def example_call(schema: JSONSchema) -> str:
    """A JSON tool call of the tool ``schema`` with example values for its required arguments.

    Example::

        >>> example_call({"type": "function", "function": {"name": "add", "parameters": {"type": "object",
        ...     "properties": {"a": {"type": "integer"}, "b": {"type": "integer"}}, "required": ["a"]}}})
        '{"name": "add", "arguments": {"a": 1}}'
    """
    function = schema.get("function", schema)
    parameters = function.get("parameters") or {}
    properties: dict[str, JSONSchema] = parameters.get("properties") or {}
    required = [k for k in parameters.get("required", []) if k in properties]
    arguments = {k: example_value(properties[k]) for k in required}
    return json.dumps({"name": function.get("name", ""), "arguments": arguments}, ensure_ascii=False)


def tools_system_prompt(tools: Sequence[Tool | JSONSchema]) -> str:
    """The documented fallback block that lists ``tools`` and teaches the ``<tool_call>`` convention
    with an example call of the first tool."""
    tool_schemas = schemas(tools)
    lines = "\n".join(json.dumps(s, ensure_ascii=False) for s in tool_schemas)
    return (
        "# Tools\n\n"
        "You may call functions to help with the task. Their JSON schemas, one per line:\n"
        f"<tools>\n{lines}\n</tools>\n\n"
        "To call a function, write a JSON object with its name and arguments between <tool_call> and\n"
        "</tool_call> tags, one call per block, for example:\n"
        f"<tool_call>\n{example_call(tool_schemas[0]) if tool_schemas else '{}'}\n</tool_call>\n"
        "Each result comes back in a message from the `tool` role."
    )


def add_tools_to_messages(messages: Sequence[Message], tools: Sequence[Tool | JSONSchema]) -> list[Message]:
    """A copy of ``messages`` whose system message ends with :func:`tools_system_prompt` (one is added
    at the front when the conversation has none)."""
    out = [dict(m) for m in messages]
    block = tools_system_prompt(tools)
    if out and out[0].get("role") == "system":
        out[0]["content"] = f"{out[0]['content']}\n\n{block}"
    else:
        out.insert(0, {"role": "system", "content": block})
    return out


def prepare_chat(
    tokenizer: Any, messages: Sequence[Message], tools: Sequence[Tool | JSONSchema] | None
) -> tuple[list[Message], dict[str, Any]]:
    """Messages and extra ``apply_chat_template`` kwargs that render this conversation with its tools.

    The rollout controller calls this once per episode on the opening messages and then renders every
    longer conversation the same way, so chat-template deltas stay consistent across turns.
    """
    if not tools:
        return [dict(m) for m in messages], {}
    if template_uses_tools(tokenizer):
        return [dict(m) for m in messages], {"tools": schemas(tools)}
    return add_tools_to_messages(messages, tools), {}


def render_prompt(
    tokenizer: Any,
    messages: Sequence[Message],
    tools: Sequence[Tool | JSONSchema] | None = None,
    *,
    add_generation_prompt: bool = True,
    tokenize: bool = False,
) -> str | list[int]:
    """Render ``messages`` with ``tools`` through the tokenizer's own chat template.

    Returns the prompt text, or its token ids when ``tokenize`` is true.
    """
    chat, extra = prepare_chat(tokenizer, messages, tools)
    text: str = tokenizer.apply_chat_template(
        chat, tokenize=False, add_generation_prompt=add_generation_prompt, **extra
    )
    if not tokenize:
        return text
    ids: list[int] = tokenizer(text, add_special_tokens=False)["input_ids"]
    return ids
