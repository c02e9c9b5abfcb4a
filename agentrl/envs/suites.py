"""Env suites: named, versioned lists of (env, kwargs, split, episodes) for training and evaluation.

A suite is a YAML file, ``envs_registry/<name>.yaml``::

    name: python-heldout
    version: 1
    description: Problem families never seen in training.
    entries:
      - env: agentrl/PythonTool-v0     # an id or a short name
        kwargs: {max_turns: 4}        # constructor arguments (not split: that has its own field)
        split: test
        episodes: 200
        seed: 1234                    # optional: the task-order seed

Files are looked up in this order: a path given directly, the directories in ``$AGENTRL_SUITES_PATH``
(``os.pathsep``-separated), then the ``envs_registry`` folder packaged inside agentrl (a symlink to the
repository's ``envs_registry/``, so editable and wheel installs find the same files). A bad file raises
:class:`~agentrl.errors.SuiteError` naming the file and the offending field, e.g.
``suite.yaml: entries[1].episodes must be a positive integer, got 0``. Each entry's ``kwargs`` are
checked against its env's constructor when the file is loaded, so a typo is reported then, not when
the first episode starts.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from agentrl.errors import ConfigError, EnvNotFoundError, SuiteError

PACKAGED_DIR = Path(__file__).resolve().parent.parent / "envs_registry"
_TOP_KEYS = {"name", "version", "description", "entries"}
_ENTRY_KEYS = {"env", "kwargs", "split", "episodes", "seed"}


@dataclass(frozen=True)
class SuiteEntry:
    """One env of a suite."""

    env: str
    """The full env id (short names in the file are resolved when it is loaded)."""
    kwargs: dict[str, Any] = field(default_factory=dict)
    """Constructor arguments passed to :func:`agentrl.make` (besides ``split``)."""
    split: str = "train"
    """Which task split the episodes come from."""
    episodes: int = 1
    """How many episodes to run on this env (tasks cycle if the split is smaller)."""
    seed: int | None = None
    """Seed of the task order; ``None`` lets the caller choose."""

    def make(self, **overrides: Any) -> Any:
        """Create this entry's env; ``overrides`` replace ``kwargs`` (e.g. ``sandbox="local"``)."""
        from agentrl.envs.registry import make

        return make(self.env, **{**self.kwargs, "split": self.split, **overrides})


@dataclass(frozen=True)
class EnvSuite:
    """A named, versioned collection of :class:`SuiteEntry`."""

    name: str
    """The suite's name (``python-heldout``); equals the file stem by convention."""
    version: int
    """Bumped whenever the suite's content changes, so results stay comparable."""
    description: str
    """What the suite measures."""
    entries: tuple[SuiteEntry, ...]
    """The envs, in order."""
    path: Path | None = None
    """The file it was read from."""

    @property
    def episodes(self) -> int:
        """Total episodes over all entries."""
        return sum(e.episodes for e in self.entries)


def search_path() -> list[Path]:
    """Directories searched for ``<name>.yaml``, in order."""
    extra = [Path(p) for p in os.environ.get("AGENTRL_SUITES_PATH", "").split(os.pathsep) if p]
    return [*extra, PACKAGED_DIR]


def list_suites() -> list[str]:
    """Names of every suite on the search path (first occurrence wins), sorted."""
    names = {p.stem for d in search_path() if d.is_dir() for p in d.glob("*.yaml")}
    return sorted(names)


def find_suite(name_or_path: str | os.PathLike[str]) -> Path:
    """The file ``name_or_path`` refers to; raises :class:`SuiteError` listing known suites."""
    path = Path(name_or_path)
    if path.suffix in (".yaml", ".yml") or path.is_file():
        if not path.is_file():
            raise SuiteError(f"suite file {path} does not exist")
        return path
    for directory in search_path():
        candidate = directory / f"{name_or_path}.yaml"
        if candidate.is_file():
            return candidate
    raise SuiteError(
        f"no suite named {str(name_or_path)!r}; known suites: {', '.join(list_suites()) or 'none'} "
        "(or give a path to a .yaml file, or add its folder to AGENTRL_SUITES_PATH)"
    )


def load_suite(name_or_path: str | os.PathLike[str], *, resolve_envs: bool = True) -> EnvSuite:
    """Read and validate a suite by name (``python-heldout``) or path.

    Args:
        name_or_path: A suite name on the search path, or a path to a YAML file.
        resolve_envs: Check each entry's env against the registry and store its full id.
    """
    path = find_suite(name_or_path)
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as e:
        raise SuiteError(f"{path}: cannot read YAML: {e}") from e
    return parse_suite(data, path, resolve_envs=resolve_envs)


def _fail(path: Path | None, where: str, problem: str) -> SuiteError:
    return SuiteError(f"{path or '<suite>'}: {where} {problem}")


def parse_suite(data: Any, path: Path | None = None, *, resolve_envs: bool = True) -> EnvSuite:
    """Validate the parsed YAML ``data`` of a suite file into an :class:`EnvSuite`."""
    if not isinstance(data, dict):
        raise _fail(path, "the file", f"must be a mapping with keys {sorted(_TOP_KEYS)}")
    if unknown := sorted(set(data) - _TOP_KEYS):
        raise _fail(path, f"key {unknown[0]!r}", f"is not a suite field; allowed: {sorted(_TOP_KEYS)}")
    name = data.get("name")
    if not isinstance(name, str) or not name:
        raise _fail(path, "name", f"must be a non-empty string, got {name!r}")
    version = data.get("version")
    if not isinstance(version, int) or isinstance(version, bool) or version < 1:
        raise _fail(path, "version", f"must be a positive integer, got {version!r}")
    description = data.get("description", "")
    if not isinstance(description, str):
        raise _fail(path, "description", f"must be a string, got {description!r}")
    entries = data.get("entries")
    if not isinstance(entries, list) or not entries:
        raise _fail(path, "entries", "must be a non-empty list of {env, kwargs, split, episodes, seed}")
    parsed = tuple(_parse_entry(e, f"entries[{i}]", path, resolve_envs) for i, e in enumerate(entries))
    return EnvSuite(name, version, description, parsed, path)


def _parse_entry(raw: Any, where: str, path: Path | None, resolve_envs: bool) -> SuiteEntry:
    if not isinstance(raw, dict):
        raise _fail(path, where, f"must be a mapping with keys {sorted(_ENTRY_KEYS)}")
    if unknown := sorted(set(raw) - _ENTRY_KEYS):
        raise _fail(path, f"{where}.{unknown[0]}", f"is not an entry field; allowed: {sorted(_ENTRY_KEYS)}")
    env = raw.get("env")
    if not isinstance(env, str) or not env:
        raise _fail(path, f"{where}.env", f"must be an env id or short name, got {env!r}")
    if resolve_envs:
        from agentrl.envs.registry import resolve

        try:
            env = resolve(env)
        except EnvNotFoundError as e:
            raise _fail(path, f"{where}.env", f"names no registered env: {e}") from e
    kwargs = raw.get("kwargs") or {}
    if not isinstance(kwargs, dict) or not all(isinstance(k, str) for k in kwargs):
        raise _fail(path, f"{where}.kwargs", f"must be a mapping of argument names to values, got {kwargs!r}")
    if "split" in kwargs:
        raise _fail(path, f"{where}.kwargs.split", "is not allowed: use the entry's own 'split' field")
    if resolve_envs:
        from agentrl.envs.registry import check_env_kwargs

        try:
            check_env_kwargs(env, kwargs)
        except ConfigError as e:
            raise _fail(path, f"{where}.kwargs", f"do not fit the env: {e}") from e
    split = raw.get("split", "train")
    if not isinstance(split, str) or not split:
        raise _fail(path, f"{where}.split", f"must be a non-empty string, got {split!r}")
    episodes = raw.get("episodes")
    if not isinstance(episodes, int) or isinstance(episodes, bool) or episodes < 1:
        raise _fail(path, f"{where}.episodes", f"must be a positive integer, got {episodes!r}")
    seed = raw.get("seed")
    if seed is not None and (not isinstance(seed, int) or isinstance(seed, bool)):
        raise _fail(path, f"{where}.seed", f"must be an integer or absent, got {seed!r}")
    return SuiteEntry(env, dict(kwargs), split, episodes, seed)
