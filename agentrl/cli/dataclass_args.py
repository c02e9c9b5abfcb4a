"""Generate argparse flags from frozen config dataclasses, and build the dataclasses back from them.

Why: configs are the single source of truth (HOUSE_STYLE: "the CLI is generated from them"), so a new
field with its docstring appears in ``--help`` without touching the CLI. Nested dataclass fields become
argument groups; a field's flag is ``--name`` (underscores as dashes) when the name is unique across
the tree, else ``--parent-name``. Help text is the first sentence of the field's docstring, read from
the source with :mod:`ast` (Python does not keep attribute docstrings at runtime).

Example::

    parser = argparse.ArgumentParser()
    spec = add_dataclass_args(parser, TrainConfig)
    config = build_dataclass(TrainConfig, spec, parser.parse_args())
"""

from __future__ import annotations

import argparse
import ast
import dataclasses
import functools
import inspect
import itertools
import json
import re
import textwrap
import types
import typing
from collections import Counter
from dataclasses import MISSING, dataclass
from typing import Any, Literal

from agentrl.errors import ConfigError


@dataclass(frozen=True)
class _Leaf:
    path: tuple[str, ...]
    """Field names from the root dataclass down to this field."""
    type: Any
    default: Any
    doc: str
    group: str

    @property
    def dest(self) -> str:
        return "cfg__" + "__".join(self.path)


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
        stmts = body.body
        for stmt, nxt in itertools.pairwise(stmts):
            if (
                isinstance(stmt, ast.AnnAssign)
                and isinstance(stmt.target, ast.Name)
                and isinstance(nxt, ast.Expr)
                and isinstance(nxt.value, ast.Constant)
                and isinstance(nxt.value.value, str)
            ):
                docs[stmt.target.id] = inspect.cleandoc(nxt.value.value)
    return docs


def _first_sentence(doc: str, limit: int = 70) -> str:
    text = " ".join(doc.replace("``", "").split())
    text = re.split(r"(?<!e\.g)(?<!i\.e)\.\s", text, maxsplit=1)[0].rstrip(".")
    return text if len(text) <= limit else text[: limit - 3].rstrip() + "..."


def _unwrap_optional(tp: Any) -> tuple[Any, bool]:
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(args) == 1 and len(typing.get_args(tp)) == 2:
            return args[0], True
    return tp, False


def _default_of(f: dataclasses.Field[Any]) -> Any:
    if f.default is not MISSING:
        return f.default
    if f.default_factory is not MISSING:
        return f.default_factory()
    raise ConfigError(f"config field {f.name!r} has no default; every CLI-built field needs one")


def _leaves(cls: type, base: Any, prefix: tuple[str, ...], group: str, skip: frozenset[str]) -> list[_Leaf]:
    """Flatten ``cls``'s fields; defaults come from ``base`` (so a parent's default factory shows)."""
    hints = typing.get_type_hints(cls)
    docs = field_docs(cls)
    out: list[_Leaf] = []
    for f in dataclasses.fields(cls):
        path = (*prefix, f.name)
        if ".".join(path) in skip or not f.init:
            continue
        tp, default = hints[f.name], getattr(base, f.name)
        if dataclasses.is_dataclass(tp):
            out += _leaves(tp, default, path, f.metadata.get("group", f.name), skip)  # type: ignore[arg-type]
            continue
        out.append(_Leaf(path, tp, default, docs.get(f.name, ""), f.metadata.get("group", group)))
    return out


def _parse_value(tp: Any, text: str) -> Any:
    inner, optional = _unwrap_optional(tp)
    if optional and text.lower() in ("none", "null", ""):
        return None
    origin = typing.get_origin(inner)
    if origin is Literal:
        choices = typing.get_args(inner)
        if text not in [str(c) for c in choices]:
            raise argparse.ArgumentTypeError(f"{text!r} is not one of {', '.join(map(str, choices))}")
        return next(c for c in choices if str(c) == text)
    if origin is dict or inner is dict:
        value = json.loads(text)
        if not isinstance(value, dict):
            raise argparse.ArgumentTypeError(f"expected a JSON object, got {text!r}")
        return value
    if inner in (int, float, str):
        return inner(text)
    raise argparse.ArgumentTypeError(f"cannot parse {text!r} as {inner}")


def _add_leaf(group: argparse._ArgumentGroup, leaf: _Leaf, flag: str) -> None:
    inner, optional = _unwrap_optional(leaf.type)
    help_text = _first_sentence(leaf.doc)
    origin = typing.get_origin(inner)
    kwargs: dict[str, Any] = {"dest": leaf.dest, "default": argparse.SUPPRESS}
    if inner is bool:
        group.add_argument(flag, action=argparse.BooleanOptionalAction, help=help_text, **kwargs)
        return
    if origin is tuple or origin is list:
        args = typing.get_args(inner)
        elem = args[0] if args else str
        nargs: Any = "*" if (origin is list or (len(args) == 2 and args[1] is Ellipsis)) else len(args)
        shown = " ".join(map(str, leaf.default)) if leaf.default else "none"
        kwargs.update(nargs=nargs, type=functools.partial(_parse_value, elem), metavar=elem.__name__.upper())
        group.add_argument(flag, help=f"{help_text} [{shown}]", **kwargs)
        return
    metavar = getattr(inner, "__name__", "VALUE").upper()
    choices = [str(c) for c in typing.get_args(inner)] if origin is Literal else None
    if choices:
        choices += ["none"] if optional else []
        metavar = "{" + ",".join(choices) + "}"
        if len(metavar) > 24:
            help_text, metavar = f"{help_text}; one of {metavar}", "CHOICE"
    kwargs.update(type=str, choices=choices, metavar=metavar)
    group.add_argument(flag, help=f"{help_text} [{leaf.default}]", **kwargs)


def compact_help_formatter(prog: str) -> argparse.HelpFormatter:
    """A help formatter that keeps one flag per line on a wide terminal (``--help`` fits a screen or two)
    and prints the description as written (its examples keep their lines)."""
    return argparse.RawDescriptionHelpFormatter(prog, max_help_position=34, width=118)


def add_dataclass_args(
    parser: argparse.ArgumentParser, cls: type, *, skip: frozenset[str] = frozenset(), title: str = "settings"
) -> list[_Leaf]:
    """Add one flag per (nested) field of ``cls`` to ``parser``; return the spec for :func:`build_dataclass`.

    ``skip`` names dotted field paths (``"torch.algorithm"``) that get no flag and keep their default;
    ``title`` names the group of fields that set no ``metadata={"group": ...}``.
    """
    leaves = _leaves(cls, cls(), (), title, skip)
    counts = Counter(leaf.path[-1] for leaf in leaves)
    groups: dict[str, argparse._ArgumentGroup] = {}
    for leaf in leaves:
        name = leaf.path[-1] if counts[leaf.path[-1]] == 1 or len(leaf.path) == 1 else "-".join(leaf.path)
        if leaf.group not in groups:
            groups[leaf.group] = parser.add_argument_group(leaf.group)
        _add_leaf(groups[leaf.group], leaf, "--" + name.replace("_", "-"))
    return leaves


def _set_path(tree: dict[str, Any], path: tuple[str, ...], value: Any) -> None:
    for key in path[:-1]:
        tree = tree.setdefault(key, {})
    tree[path[-1]] = value


def _construct(cls: type, values: dict[str, Any], base: Any = None) -> Any:
    """Build ``cls`` from ``values``; unset fields keep ``base``'s values (the parent's default)."""
    hints = typing.get_type_hints(cls)
    defaults = {f.name: f for f in dataclasses.fields(cls)}
    kwargs = {}
    for key, value in values.items():
        tp = hints[key]
        if dataclasses.is_dataclass(tp):
            nested_base = getattr(base, key) if base is not None else _default_of(defaults[key])
            value = _construct(tp, value, nested_base)  # type: ignore[arg-type]
        kwargs[key] = value
    return dataclasses.replace(base, **kwargs) if base is not None else cls(**kwargs)


def build_dataclass(cls: type, spec: list[_Leaf], args: argparse.Namespace) -> Any:
    """Instantiate ``cls`` from parsed ``args``; fields whose flag was not given keep their defaults.

    Raises :class:`ConfigError` (from the dataclasses' own validation, or for an unparsable value).
    """
    tree: dict[str, Any] = {}
    for leaf in spec:
        if not hasattr(args, leaf.dest):
            continue
        raw = getattr(args, leaf.dest)
        try:
            value = raw if isinstance(raw, (bool, list)) else _parse_value(leaf.type, raw)
        except (ValueError, argparse.ArgumentTypeError) as e:
            flag = "--" + leaf.path[-1].replace("_", "-")
            raise ConfigError(f"{flag} {raw!r}: {e}; expected a {leaf.type}") from e
        if isinstance(value, list):
            value = tuple(value)
        _set_path(tree, leaf.path, value)
    return _construct(cls, tree)


def config_to_dict(config: Any) -> dict[str, Any]:
    """A JSON-serialisable dict of a (nested) config dataclass, for logging the resolved config."""
    return json.loads(json.dumps(dataclasses.asdict(config), default=str))
