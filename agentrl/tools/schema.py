"""A tool is a typed Python function plus the OpenAI-style JSON schema the model sees.

The schema is derived from the function itself (type hints for types, the docstring for descriptions),
so that what the model is told and what the code accepts cannot drift apart. :meth:`Tool.call` is the
one place model-written arguments meet Python: it validates them against that schema and turns every
problem into an observation string the model can read and fix, because a bad call is data, not a crash.

Example::

    >>> @tool
    ... def add(a: int, b: int = 0) -> int:
    ...     '''Add two integers.
    ...
    ...     Args:
    ...         a: The first addend.
    ...         b: The second addend.
    ...     '''
    ...     return a + b
    >>> add.schema["function"]["parameters"]["required"]
    ['a']
    >>> add.call({"a": 2, "b": 3})
    '5'
    >>> add.call({"a": "2"})
    "Error calling tool 'add': argument 'a' must be of type integer, got string."
"""

from __future__ import annotations

import inspect
import json
import re
import types
import typing
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Literal, Union, get_args, get_origin

from agentrl.errors import ConfigError, SandboxError

JSONSchema = dict[str, Any]

_PRIMITIVES: dict[type, str] = {str: "string", int: "integer", float: "number", bool: "boolean"}
_SECTION = re.compile(r"^\s*(Args|Arguments|Parameters|Returns|Raises|Yields|Examples?|Notes?)\s*:?\s*$")
_GOOGLE_ARG = re.compile(r"^\s*(\*{0,2}\w+)\s*(?:\(([^)]*)\))?\s*:\s*(.*)$")
_NUMPY_ARG = re.compile(r"^(\w+)\s*(?::\s*(.*))?$")


@dataclass(frozen=True)
class Tool:
    """A callable the agent may invoke, with the JSON schema that describes its arguments."""

    name: str
    """The name the model calls the tool by (``[A-Za-z0-9_-]+``)."""
    description: str
    """What the tool does, shown to the model."""
    parameters: JSONSchema
    """JSON schema of the arguments: ``{"type": "object", "properties": ..., "required": [...]}``."""
    fn: Callable[..., Any]
    """The Python callable, invoked with the validated arguments as keyword arguments."""

    def __post_init__(self) -> None:
        if not re.fullmatch(r"[A-Za-z0-9_-]{1,64}", self.name):
            raise ConfigError(f"tool name {self.name!r} must be 1-64 characters of [A-Za-z0-9_-]")
        if self.parameters.get("type") != "object":
            raise ConfigError(f"tool {self.name!r}: parameters must be a JSON schema of type 'object'")

    @property
    def schema(self) -> JSONSchema:
        """The OpenAI-style function schema, as chat templates and APIs expect it."""
        return {
            "type": "function",
            "function": {"name": self.name, "description": self.description, "parameters": self.parameters},
        }

    def validate(self, arguments: Any) -> str | None:
        """Return ``None`` when ``arguments`` fit the schema, else a sentence saying what is wrong."""
        if not isinstance(arguments, Mapping):
            return f"arguments must be a JSON object, got {json_type(arguments)}."
        properties: dict[str, Any] = self.parameters.get("properties", {})
        missing = [k for k in self.parameters.get("required", []) if k not in arguments]
        if missing:
            return f"missing required argument(s) {', '.join(map(repr, missing))}."
        extra = [k for k in arguments if k not in properties]
        if extra and not self.parameters.get("additionalProperties", False):
            allowed = ", ".join(map(repr, properties)) or "none"
            return f"unexpected argument(s) {', '.join(map(repr, extra))}; allowed: {allowed}."
        for key, value in arguments.items():
            if key in properties:
                problem = check_value(value, properties[key], f"argument {key!r}")
                if problem:
                    return problem
        return None

    def call(self, arguments: Any) -> str:
        """Validate ``arguments`` and run the tool; any problem comes back as an error observation.

        A dead sandbox (:class:`~agentrl.errors.SandboxError`) is re-raised: it is a broken episode, not
        something the model can fix, and the rollout controller records it as FAILED.
        """
        problem = self.validate(arguments)
        if problem:
            return f"Error calling tool {self.name!r}: {problem}"
        try:
            result = self.fn(**arguments)
        except SandboxError:
            raise
        except Exception as e:
            return f"Error: tool {self.name!r} raised {type(e).__name__}: {e}"
        return result if isinstance(result, str) else json.dumps(result, default=str, ensure_ascii=False)


def json_type(value: Any) -> str:
    """The JSON type name of a Python value (as the model would call it)."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "integer"
    if isinstance(value, float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list | tuple):
        return "array"
    if isinstance(value, Mapping):
        return "object"
    return type(value).__name__


def check_value(value: Any, schema: JSONSchema, where: str) -> str | None:
    """Check ``value`` against the subset of JSON schema that :func:`tool` produces."""
    if "anyOf" in schema:
        if any(check_value(value, s, where) is None for s in schema["anyOf"]):
            return None
        kinds = " or ".join(s.get("type", "any") for s in schema["anyOf"])
        return f"{where} must be of type {kinds}, got {json_type(value)}."
    if "enum" in schema and value not in schema["enum"]:
        return f"{where} must be one of {schema['enum']}, got {value!r}."
    expected = schema.get("type")
    if expected is None:
        return None
    actual = json_type(value)
    if not (actual == expected or (expected == "number" and actual == "integer")):
        return f"{where} must be of type {expected}, got {actual}."
    if expected == "array" and "items" in schema:
        for i, item in enumerate(value):
            problem = check_value(item, schema["items"], f"{where}[{i}]")
            if problem:
                return problem
    if (
        expected == "object"
        and "additionalProperties" in schema
        and isinstance(schema["additionalProperties"], dict)
    ):
        for k, v in value.items():
            problem = check_value(v, schema["additionalProperties"], f"{where}[{k!r}]")
            if problem:
                return problem
    return None


def type_to_schema(annotation: Any) -> JSONSchema:
    """JSON schema of a Python type hint (str, int, float, bool, list[X], dict[str, X], Literal, X | None)."""
    if annotation is inspect.Parameter.empty or annotation is Any:
        return {}
    if annotation in _PRIMITIVES:
        return {"type": _PRIMITIVES[annotation]}
    if annotation is type(None):
        return {"type": "null"}
    origin, args = get_origin(annotation), get_args(annotation)
    if origin is Literal:
        return {"type": json_type(args[0]), "enum": list(args)}
    if origin in (Union, types.UnionType):
        return {"anyOf": [type_to_schema(a) for a in args]}
    if annotation in (list, tuple) or origin in (list, tuple):
        return {"type": "array", **({"items": type_to_schema(args[0])} if args else {})}
    if annotation is dict or origin is dict:
        return {"type": "object", **({"additionalProperties": type_to_schema(args[1])} if args else {})}
    raise ConfigError(
        f"cannot express type {annotation!r} in a tool schema; use str, int, float, bool, list, dict, "
        "Literal or Optional of those"
    )


def parse_docstring(doc: str | None) -> tuple[str, dict[str, str]]:
    """Split a Google- or numpy-style docstring into (description, {argument: description})."""
    lines = inspect.cleandoc(doc or "").splitlines()
    summary: list[str] = []
    arg_lines: list[str] = []
    numpy_style = False
    section: str | None = None
    for i, line in enumerate(lines):
        underlined = i + 1 < len(lines) and re.fullmatch(r"\s*-{3,}\s*", lines[i + 1]) is not None
        header = _SECTION.match(line)
        if header and (line.rstrip().endswith(":") or underlined):
            section = header.group(1).lower()
            numpy_style = numpy_style or underlined
            continue
        if re.fullmatch(r"\s*-{3,}\s*", line):
            continue
        if section is None:
            summary.append(line)
        elif section in ("args", "arguments", "parameters"):
            arg_lines.append(line)
    return " ".join(" ".join(summary).split()), _parse_args(arg_lines, numpy_style)


def _parse_args(lines: list[str], numpy_style: bool) -> dict[str, str]:
    """Parse an Args (``name (type): text``) or Parameters (``name : type`` + indented text) section."""
    args: dict[str, str] = {}
    current: str | None = None
    base: int | None = None
    for line in lines:
        if not line.strip():
            continue
        indent = len(line) - len(line.lstrip())
        base = indent if base is None else base
        match = (_NUMPY_ARG if numpy_style else _GOOGLE_ARG).match(line.strip())
        if indent <= base and match:
            current = match.group(1).lstrip("*")
            args[current] = "" if numpy_style else match.group(3).strip()
        elif current is not None:
            args[current] = f"{args[current]} {line.strip()}".strip()
    return args


def tool(
    fn: Callable[..., Any] | None = None, *, name: str | None = None, description: str | None = None
) -> Any:
    """Make a :class:`Tool` from a typed function; use as ``@tool`` or ``@tool(name=...)``."""

    def build(f: Callable[..., Any]) -> Tool:
        summary, arg_docs = parse_docstring(f.__doc__)
        hints = typing.get_type_hints(f)
        properties: dict[str, JSONSchema] = {}
        required: list[str] = []
        for pname, param in inspect.signature(f).parameters.items():
            if param.kind in (param.VAR_POSITIONAL, param.VAR_KEYWORD):
                raise ConfigError(f"tool {f.__name__!r}: *args/**kwargs cannot be described to a model")
            prop = type_to_schema(hints.get(pname, param.annotation))
            if arg_docs.get(pname):
                prop["description"] = arg_docs[pname]
            properties[pname] = prop
            if param.default is inspect.Parameter.empty:
                required.append(pname)
        params: JSONSchema = {"type": "object", "properties": properties, "required": required}
        return Tool(name=name or f.__name__, description=description or summary, parameters=params, fn=f)

    return build(fn) if fn is not None else build
