"""Config dataclasses to and from plain data: the logged resolved config, ``--config FILE.yaml``, field docs.

Every component owns a small frozen dataclass with a docstring under each field; a run's config is
made of them (``TrainConfig`` holds a ``RolloutConfig``, an ``EngineConfig``, ...). This module is the
library side of that: the CLI (:mod:`agentrl.cli.dataclass_args`) generates flags from the same fields.

Example::

    >>> from agentrl.rollout.controller import RolloutConfig
    >>> config_from_dict(RolloutConfig, {"max-turns": 3})
    RolloutConfig(max_new_tokens=512, max_context=4096, ...)
"""

from __future__ import annotations

import ast
import dataclasses
import functools
import inspect
import itertools
import json
import textwrap
import types
import typing
from dataclasses import MISSING
from pathlib import Path
from typing import Any, Literal

from agentrl.errors import ConfigError


@functools.cache
def field_docs(cls: type) -> dict[str, str]:
    """Map each field of dataclass ``cls`` to the docstring written under it (``""`` when none)."""
    docs: dict[str, str] = {}
    for klass in reversed(cls.__mro__):
        if not dataclasses.is_dataclass(klass):
            continue
        try:
            source = textwrap.dedent(inspect.getsource(klass))
        except (OSError, TypeError):
            continue
        body = ast.parse(source).body[0]
        assert isinstance(body, ast.ClassDef)
        for stmt, nxt in itertools.pairwise(body.body):
            if (
                isinstance(stmt, ast.AnnAssign)
                and isinstance(stmt.target, ast.Name)
                and isinstance(nxt, ast.Expr)
                and isinstance(nxt.value, ast.Constant)
                and isinstance(nxt.value.value, str)
            ):
                docs[stmt.target.id] = inspect.cleandoc(nxt.value.value)
    return docs


def unwrap_optional(tp: Any) -> tuple[Any, bool]:
    """``X | None`` -> ``(X, True)``; anything else -> ``(tp, False)``."""
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(args) == 1 and len(typing.get_args(tp)) == 2:
            return args[0], True
    return tp, False


def default_of(f: dataclasses.Field[Any]) -> Any:
    if f.default is not MISSING:
        return f.default
    if f.default_factory is not MISSING:
        return f.default_factory()
    raise ConfigError(f"config field {f.name!r} has no default; every CLI-built field needs one")


def parse_text(tp: Any, text: str) -> Any:
    """A field value from command-line text (``"none"`` for an optional field's ``None``)."""
    inner, optional = unwrap_optional(tp)
    if optional and text.lower() in ("none", "null", ""):
        return None
    origin = typing.get_origin(inner)
    if origin is Literal:
        choices = typing.get_args(inner)
        if text not in [str(c) for c in choices]:
            raise ValueError(f"{text!r} is not one of {', '.join(map(str, choices))}")
        return next(c for c in choices if str(c) == text)
    if origin is dict or inner is dict:
        value = json.loads(text)
        if not isinstance(value, dict):
            raise ValueError(f"expected a JSON object, got {text!r}")
        return value
    if inner is bool:
        if text.lower() not in ("true", "false", "1", "0", "yes", "no"):
            raise ValueError(f"expected true or false, got {text!r}")
        return text.lower() in ("true", "1", "yes")
    if inner in (int, float, str):
        return inner(text)
    raise ValueError(f"cannot parse {text!r} as {inner}")


def coerce(tp: Any, value: Any) -> Any:
    """A field value from data (YAML / JSON): text is parsed as on the command line, lists become
    tuples, ints are accepted for floats; anything else of the wrong type raises ``ValueError``."""
    inner, optional = unwrap_optional(tp)
    if isinstance(value, str) and (inner is not str or optional):
        return parse_text(tp, value)
    if value is None:
        if optional:
            return None
        raise ValueError("null is only allowed for optional settings")
    origin = typing.get_origin(inner)
    if origin is Literal:
        if value not in typing.get_args(inner):
            raise ValueError(f"{value!r} is not one of {', '.join(map(str, typing.get_args(inner)))}")
        return value
    if origin in (tuple, list):
        if not isinstance(value, (list, tuple)):
            raise ValueError(f"expected a list, got {value!r}")
        elem = (typing.get_args(inner) or (str,))[0]
        return tuple(coerce(elem, v) for v in value)
    if origin is dict or inner is dict:
        if not isinstance(value, dict):
            raise ValueError(f"expected a mapping, got {value!r}")
        return value
    if inner is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if (isinstance(inner, type) and not isinstance(value, inner)) or (
        inner is int and isinstance(value, bool)
    ):
        raise ValueError(f"expected {getattr(inner, '__name__', inner)}, got {value!r}")
    return value


def read_yaml(path: str | Path, flag: str) -> Any:
    """The YAML (or JSON) document of the file ``path`` given to ``flag``; errors name both."""
    import yaml

    file = Path(path)
    if not file.is_file():
        raise ConfigError(f"{flag} {path}: no such file")
    try:
        return yaml.safe_load(file.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"{flag} {path}: not valid YAML ({e})") from e


def config_to_dict(config: Any) -> dict[str, Any]:
    """A JSON-serialisable dict of a (nested) config dataclass, for logging the resolved config."""
    return json.loads(json.dumps(dataclasses.asdict(config), default=str))


def config_from_dict(cls: type, data: dict[str, Any], base: Any = None) -> Any:
    """Build ``cls`` from nested ``data`` (the form :func:`config_to_dict` writes; keys may use dashes).

    Fields not in ``data`` keep ``base``'s values; without a ``base`` the dataclass is constructed
    afresh (so fields it resolves from others, e.g. a preset, are resolved for the given values).
    Unknown keys raise :class:`ConfigError` naming the key and the accepted ones.
    """
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    kwargs: dict[str, Any] = {}
    for raw_key, value in data.items():
        key = str(raw_key).replace("-", "_")
        if key not in fields:
            raise ConfigError(
                f"unknown setting {raw_key!r} in {cls.__name__}; accepted: {', '.join(sorted(fields))}"
            )
        tp = hints[key]
        if dataclasses.is_dataclass(tp):
            if not isinstance(value, dict):
                name = getattr(tp, "__name__", str(tp))
                raise ConfigError(f"{raw_key!r} must be a mapping of {name} settings, got {value!r}")
            nested = getattr(base, key) if base is not None else default_of(fields[key])
            kwargs[key] = config_from_dict(tp, value, nested)  # type: ignore[arg-type]
            continue
        try:
            kwargs[key] = coerce(tp, value)
        except ValueError as e:
            raise ConfigError(f"{raw_key}: {e}") from e
    return dataclasses.replace(base, **kwargs) if base is not None else cls(**kwargs)


def merge_trees(low: dict[str, Any], high: dict[str, Any]) -> dict[str, Any]:
    """``high`` over ``low``, nested mappings merged key by key."""
    out = dict(low)
    for key, value in high.items():
        both = isinstance(value, dict) and isinstance(out.get(key), dict)
        out[key] = merge_trees(out[key], value) if both else value
    return out
