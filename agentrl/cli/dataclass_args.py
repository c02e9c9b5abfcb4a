"""Generate argparse flags from frozen config dataclasses, and build the dataclasses back from them.

Why: configs are the single source of truth (one owner per setting), so a new field with its docstring
appears in ``--help`` without touching the CLI, and a concept shared by two commands (a nested
``RolloutConfig``, ``EngineConfig``) has the same flag in both. Nested dataclass fields become argument
groups; a field's flag is ``--name`` (underscores as dashes) when the name is unique across the tree,
else ``--parent-name``. Help text is the first sentence of the field's docstring.

Field metadata: ``group`` (the help section), ``rare`` (a flag kept out of ``--help``, listed by
``--help-all``: settings most runs never change), ``cli=False`` (no flag; settable in ``--config``),
``flag`` (a fixed flag name, for a field whose bare name is ambiguous, e.g. ``engine-device``).
Every command also takes ``--config FILE.yaml``: keys are flag names (``max-turns: 3``) or the nested
form of the logged ``config.json``; flags given on the command line override the file.

Example::

    parser = argparse.ArgumentParser()
    spec = add_dataclass_args(parser, TrainConfig)
    config = build_dataclass(TrainConfig, spec, parser.parse_args())
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import re
import typing
from collections import Counter
from dataclasses import dataclass
from typing import Any, Literal

from agentrl.config_io import (
    coerce,
    config_from_dict,
    field_docs,
    merge_trees,
    parse_text,
    read_yaml,
    unwrap_optional,
)
from agentrl.errors import ConfigError

SHOW_RARE = False
"""Set by ``agentrl COMMAND --help-all`` before the parsers are built: rare flags are listed too."""


@dataclass(frozen=True)
class _Leaf:
    path: tuple[str, ...]
    """Field names from the root dataclass down to this field."""
    type: Any
    default: Any
    doc: str
    group: str
    rare: bool = False
    cli: bool = True
    flag: str = ""

    @property
    def dest(self) -> str:
        return "cfg__" + "__".join(self.path)


def _first_sentence(doc: str, limit: int = 70) -> str:
    text = " ".join(doc.replace("``", "").split())
    text = re.split(r"(?<!e\.g)(?<!i\.e)\.\s", text, maxsplit=1)[0].rstrip(".")
    return text if len(text) <= limit else text[: limit - 3].rstrip() + "..."


def _leaves(cls: type, base: Any, prefix: tuple[str, ...], group: str, rare: bool) -> list[_Leaf]:
    """Flatten ``cls``'s fields; defaults come from ``base`` (so a parent's default factory shows)."""
    hints = typing.get_type_hints(cls)
    docs = field_docs(cls)
    out: list[_Leaf] = []
    for f in dataclasses.fields(cls):
        if not f.init:
            continue
        path, meta = (*prefix, f.name), f.metadata
        tp, default = hints[f.name], getattr(base, f.name)
        is_rare = rare or bool(meta.get("rare"))
        if dataclasses.is_dataclass(tp):
            out += _leaves(tp, default, path, meta.get("group", f.name), is_rare)  # type: ignore[arg-type]
            continue
        leaf = _Leaf(path, tp, default, docs.get(f.name, ""), meta.get("group", group), is_rare)
        flag = "--" + meta["flag"] if "flag" in meta else ""
        out.append(dataclasses.replace(leaf, cli=meta.get("cli", True), flag=flag))
    return out


def _add_leaf(group: argparse._ArgumentGroup, leaf: _Leaf) -> None:
    inner, optional = unwrap_optional(leaf.type)
    help_text = _first_sentence(leaf.doc) if SHOW_RARE or not leaf.rare else argparse.SUPPRESS
    origin = typing.get_origin(inner)
    kwargs: dict[str, Any] = {"dest": leaf.dest, "default": argparse.SUPPRESS}
    hidden = help_text is argparse.SUPPRESS
    if inner is bool:
        group.add_argument(leaf.flag, action=argparse.BooleanOptionalAction, help=help_text, **kwargs)
        return
    if origin is tuple or origin is list:
        args = typing.get_args(inner)
        elem = args[0] if args else str
        nargs: Any = "*" if (origin is list or (len(args) == 2 and args[1] is Ellipsis)) else len(args)
        shown = " ".join(map(str, leaf.default)) if leaf.default else "none"
        kwargs.update(nargs=nargs, type=functools.partial(_parse_arg, elem), metavar=elem.__name__.upper())
        group.add_argument(leaf.flag, help=help_text if hidden else f"{help_text} [{shown}]", **kwargs)
        return
    metavar = getattr(inner, "__name__", "VALUE").upper()
    choices = [str(c) for c in typing.get_args(inner)] if origin is Literal else None
    if choices:
        choices += ["none"] if optional else []
        metavar = "{" + ",".join(choices) + "}"
        if len(metavar) > 24 and not hidden:
            help_text, metavar = f"{help_text}; one of {metavar}", "CHOICE"
    kwargs.update(type=str, choices=choices, metavar=metavar)
    group.add_argument(leaf.flag, help=help_text if hidden else f"{help_text} [{leaf.default}]", **kwargs)


def _parse_arg(tp: Any, text: str) -> Any:
    try:
        return parse_text(tp, text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from e


def compact_help_formatter(prog: str) -> argparse.HelpFormatter:
    """A help formatter that keeps one flag per line on a wide terminal (``--help`` fits a screen or two)
    and prints the description as written (its examples keep their lines)."""
    return argparse.RawDescriptionHelpFormatter(prog, max_help_position=34, width=118)


def add_dataclass_args(parser: argparse.ArgumentParser, cls: type, *, title: str = "settings") -> list[_Leaf]:
    """Add one flag per (nested) field of ``cls`` to ``parser`` and ``--config FILE``; return the spec
    for :func:`build_dataclass`. ``title`` names the group of fields that set no ``group`` metadata."""
    leaves = _leaves(cls, cls(), (), title, rare=False)
    counts = Counter(leaf.path[-1] for leaf in leaves)
    named = []
    for leaf in leaves:
        if leaf.flag:  # fixed by the field's metadata: the same in every command
            named.append(leaf)
            continue
        name = leaf.path[-1] if counts[leaf.path[-1]] == 1 or len(leaf.path) == 1 else "-".join(leaf.path)
        named.append(dataclasses.replace(leaf, flag="--" + name.replace("_", "-")))
    groups: dict[str, argparse._ArgumentGroup] = {}
    for leaf in named:
        if not leaf.cli:
            continue
        if leaf.group not in groups:
            groups[leaf.group] = parser.add_argument_group(leaf.group)
        _add_leaf(groups[leaf.group], leaf)
    rare = sum(leaf.rare and leaf.cli for leaf in named)
    parser.add_argument(
        "--config",
        metavar="FILE",
        default=None,
        help="YAML/JSON settings (flag names as keys, or a run's config.json); flags override"
        + ("" if SHOW_RARE or not rare else f"; {rare} rarer flags: --help-all"),
    )
    return named


def _set_path(tree: dict[str, Any], path: tuple[str, ...], value: Any) -> None:
    for key in path[:-1]:
        tree = tree.setdefault(key, {})
    tree[path[-1]] = value


def _file_tree(path: str, spec: list[_Leaf]) -> dict[str, Any]:
    """The nested settings of a ``--config`` file; top-level flag names are mapped to their fields."""
    data = read_yaml(path, "--config")
    if not isinstance(data, dict):
        raise ConfigError(f"--config {path}: expected a mapping of settings, got {type(data).__name__}")
    by_flag = {leaf.flag[2:]: leaf for leaf in spec}
    roots = {leaf.path[0] for leaf in spec}
    tree: dict[str, Any] = {}
    for key, value in data.items():
        name = str(key).replace("_", "-")
        if name in by_flag and not (str(key).replace("-", "_") in roots and isinstance(value, dict)):
            _set_path(tree, by_flag[name].path, value)
        else:
            tree[str(key).replace("-", "_")] = value
    return tree


def build_dataclass(cls: type, spec: list[_Leaf], args: argparse.Namespace) -> Any:
    """Instantiate ``cls`` from ``--config`` (if given) and the parsed flags, which win over the file;
    fields set by neither keep their defaults.

    Raises :class:`ConfigError` (from the dataclasses' own validation, or for an unparsable value).
    """
    config_file = getattr(args, "config", None)
    tree: dict[str, Any] = {}
    for leaf in spec:
        if not hasattr(args, leaf.dest):
            continue
        raw = getattr(args, leaf.dest)
        try:
            value = raw if isinstance(raw, (bool, list)) else coerce(leaf.type, raw)
        except ValueError as e:
            raise ConfigError(f"{leaf.flag} {raw!r}: {e}; expected a {leaf.type}") from e
        _set_path(tree, leaf.path, tuple(value) if isinstance(value, list) else value)
    if config_file:
        from_file = _file_tree(config_file, spec)
        try:
            config_from_dict(cls, from_file)  # the file's own errors, named as the file's
        except ConfigError as e:
            raise ConfigError(f"--config {config_file}: {e}") from e
        tree = merge_trees(from_file, tree)
    return config_from_dict(cls, tree)


def given_fields(spec: list[_Leaf], args: argparse.Namespace) -> frozenset[str]:
    """Dotted paths of the fields whose flags were given on the command line."""
    return frozenset(".".join(leaf.path) for leaf in spec if hasattr(args, leaf.dest))
