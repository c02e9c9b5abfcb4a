"""Turn an agent's text into tool calls, or into an error that tells the model what it got wrong.

Two conventions:

* :class:`HermesParser`: Hermes/Qwen ``<tool_call>{"name": ..., "arguments": {...}}</tool_call>`` blocks
  (the format Qwen2.5/Qwen3 chat templates teach, and the one our system-prompt fallback documents).
* :class:`TagParser`: tag actions such as Search-R1's ``<search>query</search>`` and
  ``<answer>text</answer>``.

``parse(text)`` never raises: it returns ``list[ToolCall]`` (empty when the turn calls nothing) or a
:class:`ParseError` whose ``message`` is written for the model (it becomes the observation) and whose
``kind`` is a stable label for metrics. Reasoning inside ``<think>...</think>`` is not an action, so calls
found only there are rejected with a message that says to move them out.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from agentrl.tools.schema import Tool, json_type

ParseErrorKind = Literal[
    "bad_json", "truncated", "not_an_object", "unknown_tool", "bad_arguments", "too_large", "too_deep",
    "too_many_calls", "inside_think",
]  # fmt: skip


@dataclass(frozen=True)
class ToolCall:
    """One call the agent asked for."""

    name: str
    arguments: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class ParseError:
    """Why a turn's tool calls could not be used; ``message`` is shown to the model as is."""

    kind: ParseErrorKind
    message: str


ParseResult = list[ToolCall] | ParseError

_THINK = re.compile(r"<think>.*?(?:</think>|\Z)", re.DOTALL)


def split_think(text: str, protected: Sequence[tuple[int, int]] = ()) -> tuple[str, str]:
    """Return (text outside ``<think>`` blocks, text inside them); an unclosed block runs to the end.

    A ``<think>`` that starts inside a ``protected`` span (e.g. a tool call's JSON, whose strings may
    mention the tag) does not open a block.
    """
    outside: list[str] = []
    inside: list[str] = []
    pos = last = 0
    while (m := _THINK.search(text, pos)) is not None:
        if any(a <= m.start() < b for a, b in protected):
            pos = m.start() + len("<think>")
            continue
        outside.append(text[last : m.start()])
        inside.append(m.group(0))
        pos = last = max(m.end(), m.start() + 1)
    outside.append(text[last:])
    return " ".join(outside), "".join(inside)


def _outside_json_strings(text: str, start: int = 0) -> Iterator[tuple[int, str]]:
    """``(index, char)`` of each character from ``start`` that is outside JSON string literals (quotes
    themselves excluded), so structure can be read without being fooled by brackets or tags in strings."""
    in_string = escaped = False
    for i in range(start, len(text)):
        ch = text[i]
        if in_string:
            if escaped:
                escaped = False
            elif ch == "\\":
                escaped = True
            elif ch == '"':
                in_string = False
        elif ch == '"':
            in_string = True
        else:
            yield i, ch


def json_depth(payload: str) -> int:
    """Deepest nesting of ``[``/``{`` outside JSON strings (checked before ``json.loads`` recurses)."""
    depth = deepest = 0
    for _, ch in _outside_json_strings(payload):
        if ch in "[{":
            depth += 1
            deepest = max(deepest, depth)
        elif ch in "]}":
            depth -= 1
    return deepest


def _close_outside_strings(text: str, start: int, close_tag: str) -> int:
    """Index of the first ``close_tag`` after ``start`` that is not inside a JSON string.

    A call whose code argument mentions ``</tool_call>`` must not be cut there. When the JSON's quotes
    are unbalanced, the first occurrence anywhere is used, so the JSON error is reported, not a
    missing close tag.
    """
    for i, _ in _outside_json_strings(text, start):
        if text.startswith(close_tag, i):
            return i
    return text.find(close_tag, start)


@dataclass(frozen=True)
class _Limits:
    max_text_chars: int
    max_call_chars: int
    max_depth: int
    max_calls: int

    def check_text(self, text: str) -> ParseError | None:
        if len(text) > self.max_text_chars:
            return ParseError(
                "too_large", f"Your message has {len(text)} characters; the limit is {self.max_text_chars}."
            )
        return None


class HermesParser:
    """Parser of ``<tool_call>{json}</tool_call>`` blocks, validated against the env's tools.

    Args:
        tools: The tools the agent may call; when given, names and arguments are checked against them.
        max_text_chars: Longest turn parsed at all.
        max_call_chars: Longest JSON payload of one call.
        max_depth: Deepest JSON nesting accepted (deep nesting is a denial-of-service vector).
        max_calls: Most calls in one turn.
    """

    open_tag = "<tool_call>"
    close_tag = "</tool_call>"

    def __init__(
        self,
        tools: Sequence[Tool] | None = None,
        *,
        max_text_chars: int = 1 << 20,
        max_call_chars: int = 1 << 16,
        max_depth: int = 20,
        max_calls: int = 8,
    ) -> None:
        self.tools = {t.name: t for t in tools} if tools is not None else None
        self.limits = _Limits(max_text_chars, max_call_chars, max_depth, max_calls)

    def parse(self, text: str) -> ParseResult:
        """Tool calls in ``text`` (outside ``<think>``), or the first problem found."""
        if error := self.limits.check_text(text):
            return error
        outside, inside = split_think(text, self._call_spans(text))
        payloads = self._blocks(outside)
        if isinstance(payloads, ParseError):
            return payloads
        if not payloads and self.open_tag in inside:
            return ParseError(
                "inside_think",
                "Your <tool_call> is inside <think>...</think>, where it is not executed. "
                "Close </think> first, then write the <tool_call>.",
            )
        if len(payloads) > self.limits.max_calls:
            return ParseError(
                "too_many_calls",
                f"You made {len(payloads)} tool calls; at most {self.limits.max_calls} per turn.",
            )
        calls = []
        for i, payload in enumerate(payloads):
            call = self._decode(payload, f"Tool call {i + 1}" if len(payloads) > 1 else "The tool call")
            if isinstance(call, ParseError):
                return call
            calls.append(call)
        return calls

    def _call_spans(self, text: str) -> list[tuple[int, int]]:
        """(start, end) of each ``<tool_call>`` block; an unclosed one runs to the end of ``text``."""
        spans = []
        pos = 0
        while (start := text.find(self.open_tag, pos)) != -1:
            end = _close_outside_strings(text, start + len(self.open_tag), self.close_tag)
            end = len(text) if end == -1 else end + len(self.close_tag)
            spans.append((start, end))
            pos = end
        return spans

    def _blocks(self, text: str) -> list[str] | ParseError:
        payloads = []
        pos = 0
        while (start := text.find(self.open_tag, pos)) != -1:
            start += len(self.open_tag)
            end = _close_outside_strings(text, start, self.close_tag)
            if end == -1:
                return ParseError(
                    "truncated",
                    f"A {self.open_tag} was not closed with {self.close_tag}; the call is incomplete.",
                )
            payloads.append(text[start:end].strip())
            pos = end + len(self.close_tag)
        return payloads

    def _decode(self, payload: str, what: str) -> ToolCall | ParseError:
        if len(payload) > self.limits.max_call_chars:
            return ParseError(
                "too_large",
                f"{what} has {len(payload)} characters; the limit is {self.limits.max_call_chars}.",
            )
        if json_depth(payload) > self.limits.max_depth:
            return ParseError("too_deep", f"{what} nests JSON deeper than {self.limits.max_depth} levels.")
        try:
            obj = json.loads(payload, strict=False)  # raw newlines in a code string are common and harmless
        except json.JSONDecodeError as e:
            kind: ParseErrorKind = "truncated" if e.pos >= len(payload) else "bad_json"
            return ParseError(kind, f"{what} is not valid JSON ({e}).")
        except (ValueError, RecursionError) as e:
            return ParseError("bad_json", f"{what} is not valid JSON ({e}).")
        if not isinstance(obj, dict):
            return ParseError(
                "not_an_object",
                f'{what} must be a JSON object {{"name": ..., "arguments": {{...}}}}, got {json_type(obj)}.',
            )
        return self._validate(obj, what)

    def _validate(self, obj: dict[str, Any], what: str) -> ToolCall | ParseError:
        name, arguments = obj.get("name"), obj.get("arguments", {})
        if not isinstance(name, str):
            return ParseError("not_an_object", f'{what} needs a "name" string, got {json_type(name)}.')
        if isinstance(arguments, str):  # some models emit the arguments object as a JSON string
            try:
                deep = json_depth(arguments) > self.limits.max_depth
                arguments = None if deep else json.loads(arguments, strict=False)
            except (ValueError, RecursionError):
                arguments = None
        if not isinstance(arguments, dict):
            return ParseError("bad_arguments", f'{what}: "arguments" must be a JSON object.')
        if self.tools is not None:
            tool = self.tools.get(name)
            if tool is None:
                known = ", ".join(sorted(self.tools)) or "none"
                return ParseError(
                    "unknown_tool", f"{what} names unknown tool {name!r}; available tools: {known}."
                )
            if problem := tool.validate(arguments):
                return ParseError("bad_arguments", f"{what} to {name!r}: {problem}")
        return ToolCall(name, arguments)


class TagParser:
    """Parser of tag actions such as ``<search>q</search>`` or ``<answer>a</answer>``.

    Args:
        tags: Tag names, or a mapping from tag name to the argument name its content is passed as
            (``{"search": "query"}`` gives ``ToolCall("search", {"query": q})``); a plain sequence uses
            the argument name ``"content"``.
        max_text_chars: Longest turn parsed at all.
        max_call_chars: Longest content of one tag.
    """

    def __init__(
        self,
        tags: Sequence[str] | Mapping[str, str],
        *,
        max_text_chars: int = 1 << 20,
        max_call_chars: int = 1 << 16,
    ) -> None:
        self.tags = dict(tags) if isinstance(tags, Mapping) else dict.fromkeys(tags, "content")
        names = "|".join(re.escape(t) for t in self.tags)
        self._pattern = re.compile(rf"<({names})>(.*?)</\1>", re.DOTALL)
        self._open = re.compile(rf"<({names})>")
        self.limits = _Limits(max_text_chars, max_call_chars, max_depth=0, max_calls=0)

    def parse(self, text: str) -> ParseResult:
        """All tag actions outside ``<think>``, in order, or the first problem found."""
        if error := self.limits.check_text(text):
            return error
        outside, inside = split_think(text)
        calls = []
        for m in self._pattern.finditer(outside):
            tag, content = m.group(1), m.group(2).strip()
            if len(content) > self.limits.max_call_chars:
                return ParseError(
                    "too_large",
                    f"<{tag}> has {len(content)} characters; the limit is {self.limits.max_call_chars}.",
                )
            calls.append(ToolCall(tag, {self.tags[tag]: content}))
        if calls:
            return calls
        if opened := self._open.search(outside):
            tag = opened.group(1)
            return ParseError("truncated", f"<{tag}> was not closed with </{tag}>.")
        if self._open.search(inside):
            return ParseError(
                "inside_think",
                "Your action tag is inside <think>...</think>, where it is not executed. "
                "Close </think> first, then write the action.",
            )
        return []
