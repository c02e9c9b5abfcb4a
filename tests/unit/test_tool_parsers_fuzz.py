"""Property tests: the tool-call parsers never raise and name the problem in every malformed call."""

from __future__ import annotations

import json
from typing import Any

from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from agentrl.tools import HermesParser, ParseError, TagParser, ToolCall, tool


@tool
def search(query: str, topk: int = 3) -> str:
    """Search.

    Args:
        query: Keywords.
        topk: How many results.
    """
    return query


@tool
def python(code: str) -> str:
    """Run Python.

    Args:
        code: Source.
    """
    return code


HERMES = HermesParser([search, python])
TAGS = TagParser({"search": "query", "answer": "answer"})
FUZZ = settings(max_examples=1000, deadline=None, suppress_health_check=[HealthCheck.too_slow])

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=12,
)
valid_calls = st.one_of(
    st.builds(lambda q: ToolCall("search", {"query": q}), st.text(max_size=40)),
    st.builds(lambda q, k: ToolCall("search", {"query": q, "topk": k}), st.text(max_size=40), st.integers()),
    st.builds(lambda c: ToolCall("python", {"code": c}), st.text(max_size=80)),
)
# Text that looks like our syntax, so the fuzzer reaches the interesting branches often.
tokens = st.sampled_from(
    ["<tool_call>", "</tool_call>", "<think>", "</think>", "<search>", "</search>", "<answer>", "</answer>",
     "{", "}", "[", "]", '"name"', '"arguments"', ":", ",", '"search"', '"python"', '"query"', "1", "\\", '"']
)  # fmt: skip
syntaxy_text = st.lists(st.one_of(tokens, st.text(max_size=5)), max_size=30).map("".join)


def wrap(call: ToolCall) -> str:
    return f"<tool_call>{json.dumps({'name': call.name, 'arguments': call.arguments})}</tool_call>"


def assert_result(result: Any) -> None:
    assert isinstance(result, list | ParseError)
    if isinstance(result, ParseError):
        assert result.message and result.kind


@FUZZ
@given(st.one_of(st.text(), syntaxy_text))
def test_hermes_never_raises_and_is_deterministic(text: str) -> None:
    result = HERMES.parse(text)
    assert_result(result)
    assert HERMES.parse(text) == result


@FUZZ
@given(st.one_of(st.text(), syntaxy_text))
def test_tag_parser_never_raises(text: str) -> None:
    result = TAGS.parse(text)
    assert_result(result)
    if isinstance(result, list):
        assert all(c.name in ("search", "answer") for c in result)


@FUZZ
@given(st.lists(valid_calls, min_size=1, max_size=4), st.text(alphabet="abc \n", max_size=20))
def test_valid_calls_round_trip(calls: list[ToolCall], prose: str) -> None:
    text = prose + prose.join(wrap(c) for c in calls) + prose
    assume("<think>" not in text)  # text inside <think> is reasoning, not an action
    assert HERMES.parse(text) == calls


@FUZZ
@given(valid_calls, st.data())
def test_truncated_call_says_truncated(call: ToolCall, data: st.DataObject) -> None:
    text = wrap(call)
    cut = data.draw(st.integers(len("<tool_call>"), len(text) - 1))
    result = HERMES.parse(text[:cut])
    assert isinstance(result, ParseError) and result.kind == "truncated"
    assert "not closed" in result.message


@FUZZ
@given(json_values)
def test_any_json_payload_is_classified(value: Any) -> None:
    payload = json.dumps(value)
    assume("</tool_call>" not in payload and "<think>" not in payload)  # a tag in a string ends the block
    result = HERMES.parse(f"<tool_call>{payload}</tool_call>")
    if not isinstance(value, dict):
        assert isinstance(result, ParseError) and result.kind == "not_an_object"
    elif not isinstance(value.get("name"), str):
        assert isinstance(result, ParseError) and '"name"' in result.message
    elif value["name"] not in ("search", "python"):
        assert isinstance(result, ParseError) and result.kind == "unknown_tool"
        assert repr(value["name"]) in result.message and "available tools: python, search" in result.message
    else:
        assert_result(result)


@FUZZ
@given(json_values.filter(lambda v: not isinstance(v, str)), st.sampled_from(["query", "code"]))
def test_wrong_argument_type_names_the_argument(value: Any, arg: str) -> None:
    name = "search" if arg == "query" else "python"
    result = HERMES.parse(wrap(ToolCall(name, {arg: value})))
    assert isinstance(result, ParseError) and result.kind == "bad_arguments"
    assert f"argument '{arg}' must be of type string" in result.message


@FUZZ
@given(st.text(min_size=1, max_size=10).filter(lambda k: k not in ("query", "topk")))
def test_extra_and_missing_arguments_are_named(key: str) -> None:
    extra = HERMES.parse(wrap(ToolCall("search", {"query": "q", key: 1})))
    assert isinstance(extra, ParseError) and f"unexpected argument(s) {key!r}" in extra.message
    missing = HERMES.parse(wrap(ToolCall("search", {key: "q"})))
    assert isinstance(missing, ParseError) and "missing required argument(s) 'query'" in missing.message


@FUZZ
@given(valid_calls, st.text(alphabet="xyz .", max_size=30))
def test_call_inside_think_is_rejected(call: ToolCall, thought: str) -> None:
    closed = HERMES.parse(f"<think>{thought}{wrap(call)}</think>")
    unclosed = HERMES.parse(f"<think>{thought}{wrap(call)}")
    for result in (closed, unclosed):
        assert isinstance(result, ParseError) and result.kind == "inside_think"
    assert HERMES.parse(f"<think>{thought}</think>{wrap(call)}") == [call]
    answer = TAGS.parse(f"<think><answer>{thought}</answer></think>")
    assert isinstance(answer, ParseError) and answer.kind == "inside_think"


def test_megabyte_input_and_deep_nesting_are_bounded() -> None:
    huge = HERMES.parse(wrap(ToolCall("python", {"code": "x" * (1 << 20)})))
    assert isinstance(huge, ParseError) and huge.kind == "too_large" and "limit is 1048576" in huge.message
    big_call = HERMES.parse(wrap(ToolCall("python", {"code": "x" * 70_000})))
    assert isinstance(big_call, ParseError) and big_call.kind == "too_large" and "65536" in big_call.message
    deep = HERMES.parse("<tool_call>" + "[" * 30_000 + "]" * 30_000 + "</tool_call>")
    assert isinstance(deep, ParseError) and deep.kind == "too_deep"
    deep_args = HERMES.parse('<tool_call>{"name": "python", "arguments": "' + "[" * 5000 + '"}</tool_call>')
    assert isinstance(deep_args, ParseError) and deep_args.kind == "bad_arguments"
    long_int = HERMES.parse(
        '<tool_call>{"name": "search", "arguments": {"query": "q", "topk": ' + "9" * 5000 + "}}</tool_call>"
    )
    assert isinstance(long_int, ParseError) and long_int.kind == "bad_json"


def test_hand_written_cases() -> None:
    assert HERMES.parse("no call here") == []
    assert HERMES.parse(
        '<tool_call>{"name": "python", "arguments": "{\\"code\\": \\"1\\"}"}</tool_call>'
    ) == [ToolCall("python", {"code": "1"})]
    bad = HERMES.parse("<tool_call>{'name': 'python'}</tool_call>")
    assert bad == ParseError(
        "bad_json",
        "The tool call is not valid JSON (Expecting property name enclosed in double quotes: line 1 column 2 (char 1)).",
    )
    many = HERMES.parse(wrap(ToolCall("python", {"code": "1"})) * 9)
    assert isinstance(many, ParseError) and many.kind == "too_many_calls"
    second = HERMES.parse(wrap(ToolCall("python", {"code": "1"})) + '<tool_call>{"name": "ls"}</tool_call>')
    assert isinstance(second, ParseError) and second.message.startswith("Tool call 2 names unknown tool 'ls'")
    code = ToolCall("python", {"code": 'print("</tool_call>")'})
    assert HERMES.parse(wrap(code)) == [code]
    raw_newline = '<tool_call>{"name": "python", "arguments": {"code": "x = 1\nprint(x)"}}</tool_call>'
    assert HERMES.parse(raw_newline) == [ToolCall("python", {"code": "x = 1\nprint(x)"})]
    assert TAGS.parse("<search> capital of France </search>") == [
        ToolCall("search", {"query": "capital of France"})
    ]
    assert TAGS.parse("<answer>Paris") == ParseError("truncated", "<answer> was not closed with </answer>.")
    assert TagParser(["answer"]).parse("<answer>4</answer>") == [ToolCall("answer", {"content": "4"})]


def test_think_tag_inside_a_call_is_data_not_a_think_block() -> None:
    # Found by the fuzzer: an argument named (or containing) "<think>" used to open a think block that
    # swallowed the rest of the call. Inside a call's JSON the tag is data; outside, a call within
    # <think>...</think> is still refused.
    calls = HERMES.parse(wrap(ToolCall("search", {"query": "what does <think> mean"})))
    assert calls == [ToolCall("search", {"query": "what does <think> mean"})]
    extra = HERMES.parse(wrap(ToolCall("search", {"query": "q", "<think>": 1})))
    assert isinstance(extra, ParseError) and "unexpected argument(s) '<think>'" in extra.message
    hidden = HERMES.parse("<think>" + wrap(ToolCall("search", {"query": "q"})) + "</think>")
    assert isinstance(hidden, ParseError) and hidden.kind == "inside_think"
