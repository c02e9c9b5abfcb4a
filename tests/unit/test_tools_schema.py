"""Tool schemas from typed functions, argument validation, and errors as observations."""

from __future__ import annotations

from typing import Literal

import pytest

from agentrl.errors import ConfigError, SandboxError
from agentrl.tools import Tool, tool
from agentrl.tools.schema import parse_docstring


@tool
def search(
    query: str, topk: int = 3, mode: Literal["bm25", "dense"] = "bm25", boost: float | None = None
) -> str:
    """Search the corpus for passages.

    Args:
        query: What to look for; a few keywords
            work best.
        topk (int): How many passages to return.
        mode: Which retriever to use.
        boost: Optional score multiplier.

    Returns:
        The passages, one per line.
    """
    return f"{query}|{topk}|{mode}|{boost}"


def test_schema_is_openai_style_with_types_defaults_and_docs() -> None:
    assert search.schema == {
        "type": "function",
        "function": {
            "name": "search",
            "description": "Search the corpus for passages.",
            "parameters": {
                "type": "object",
                "properties": {
                    "query": {"type": "string", "description": "What to look for; a few keywords work best."},
                    "topk": {"type": "integer", "description": "How many passages to return."},
                    "mode": {
                        "type": "string",
                        "enum": ["bm25", "dense"],
                        "description": "Which retriever to use.",
                    },
                    "boost": {
                        "anyOf": [{"type": "number"}, {"type": "null"}],
                        "description": "Optional score multiplier.",
                    },
                },
                "required": ["query"],
            },
        },
    }


def test_numpy_docstring_and_containers() -> None:
    def total(values: list[int], weights: dict[str, float]) -> float:
        """Weighted total.

        Parameters
        ----------
        values : list of int
            The numbers,
            in order.
        weights : dict
            Per-name weights.
        """
        return 0.0

    t = tool(total)
    params = t.parameters["properties"]
    assert t.description == "Weighted total."
    assert params["values"] == {
        "type": "array",
        "items": {"type": "integer"},
        "description": "The numbers, in order.",
    }
    assert params["weights"] == {
        "type": "object",
        "additionalProperties": {"type": "number"},
        "description": "Per-name weights.",
    }


def test_decorator_with_options_and_parse_docstring_without_sections() -> None:
    @tool(name="calc", description="Evaluate.")
    def f(x: int) -> int:
        return x

    assert (f.name, f.description) == ("calc", "Evaluate.")
    assert parse_docstring("Just one\n  paragraph.") == ("Just one paragraph.", {})


@pytest.mark.parametrize(
    ("arguments", "expected"),
    [
        ({"query": "paris"}, "paris|3|bm25|None"),
        ({"query": "x", "topk": 5, "mode": "dense", "boost": 2}, "x|5|dense|2"),
        ({"query": "x", "boost": None}, "x|3|bm25|None"),
        ({}, "Error calling tool 'search': missing required argument(s) 'query'."),
        (
            {"query": "x", "k": 1},
            "Error calling tool 'search': unexpected argument(s) 'k'; allowed: 'query', 'topk', 'mode', 'boost'.",
        ),
        ({"query": 1}, "Error calling tool 'search': argument 'query' must be of type string, got integer."),
        ({"query": "x", "topk": True}, "Error calling tool 'search': argument 'topk' must be of type integer, got boolean."),
        ({"query": "x", "topk": 2.5}, "Error calling tool 'search': argument 'topk' must be of type integer, got number."),
        ({"query": "x", "mode": "grep"}, "Error calling tool 'search': argument 'mode' must be one of ['bm25', 'dense'], got 'grep'."),
        ({"query": "x", "boost": "high"}, "Error calling tool 'search': argument 'boost' must be of type number or null, got string."),
        (["x"], "Error calling tool 'search': arguments must be a JSON object, got array."),
    ],
)  # fmt: skip
def test_call_validates_and_never_raises_on_bad_arguments(arguments: object, expected: str) -> None:
    assert search.call(arguments) == expected


def test_nested_item_types_are_checked() -> None:
    @tool
    def mean(values: list[float]) -> float:
        return sum(values) / len(values)

    assert mean.call({"values": [1, 2.5]}) == "1.75"
    assert mean.call({"values": [1, "2"]}) == (
        "Error calling tool 'mean': argument 'values'[1] must be of type number, got string."
    )
    assert mean.call({"values": []}) == "Error: tool 'mean' raised ZeroDivisionError: division by zero"


def test_non_string_results_are_json_and_sandbox_errors_propagate() -> None:
    @tool
    def pair(a: int) -> dict[str, int]:
        return {"a": a, "b": a * 2}

    @tool
    def dead(code: str) -> str:
        raise SandboxError("container vanished")

    assert pair.call({"a": 2}) == '{"a": 2, "b": 4}'
    with pytest.raises(SandboxError):
        dead.call({"code": "1"})


def test_bad_definitions_raise_config_errors() -> None:
    with pytest.raises(ConfigError, match="name"):
        Tool("bad name", "d", {"type": "object"}, print)
    with pytest.raises(ConfigError, match=r"\*args"):
        tool(lambda *a: a)
    with pytest.raises(ConfigError, match="cannot express"):

        @tool
        def g(x: complex) -> None:
            return None
