"""The env registry: agentrl ids on top of Gymnasium's registry, short names and plugins.

* :func:`register` adds ``namespace/Name-vN`` to ``gymnasium.registry``. No ``TimeLimit`` is added:
  :class:`~agentrl.envs.base.ToolEnv` truncates at ``max_turns`` itself, and Gymnasium's passive checker
  is off because ``agentrl envs check`` runs the full checker on demand.
* :func:`make` accepts a full id or a short name (``search``, ``python-tool``) that resolves to the
  latest version; an unknown name raises :class:`~agentrl.errors.EnvNotFoundError` with "did you mean".
* Plugins: installed distributions declare entry points in the group ``agentrl.envs``. They are loaded
  lazily (on the first lookup) so importing agentrl stays cheap. An entry point is either a callable
  that calls :func:`register`, or an env class, registered under the entry point's name.

Built-in envs are a flat list of string entry points, so nothing heavy is imported until ``make``.
"""

from __future__ import annotations

import contextlib
import difflib
import logging
import re
from collections.abc import Iterator
from dataclasses import dataclass
from importlib import metadata
from typing import Any

import gymnasium as gym

from agentrl.errors import ConfigError, EnvNotFoundError

log = logging.getLogger(__name__)

ENTRY_POINT_GROUP = "agentrl.envs"
_ID = re.compile(r"^(?:(?P<ns>[\w.-]+)/)?(?P<name>[\w.:-]+?)-v(?P<version>\d+)$")

BUILTINS: tuple[tuple[str, str], ...] = (
    ("agentrl/Search-v0", "agentrl.envs.search:SearchEnv"),
    ("agentrl/PythonTool-v0", "agentrl.envs.python_tool:PythonToolEnv"),
)


@dataclass(frozen=True)
class EnvInfo:
    """One registered agentrl env, as ``agentrl envs list`` shows it."""

    id: str
    entry_point: str
    source: str
    """``"builtin"``, ``"plugin:<distribution>"`` or ``"user"`` (a direct :func:`register` call)."""


_sources: dict[str, str] = {}
_current_source = ["user"]
_plugins_loaded = False
plugin_errors: dict[str, str] = {}
"""Entry points that failed to load: ``"<distribution>:<name>" -> error``; shown by ``agentrl envs list``."""


def register(id: str, entry_point: Any, **kwargs: Any) -> None:
    """Register an env under ``id`` (``namespace/Name-vN``); ``kwargs`` are passed to ``gymnasium.register``.

    ``entry_point`` is preferably a ``"module:Class"`` string, so that the module is imported only when
    the env is made.
    """
    if not _ID.match(id) or "/" not in id:
        raise ConfigError(f"env id {id!r} must look like 'namespace/Name-vN' (e.g. 'agentrl/Search-v0')")
    kwargs.setdefault("max_episode_steps", None)
    kwargs.setdefault("disable_env_checker", True)
    gym.register(id=id, entry_point=entry_point, **kwargs)
    _sources[id] = _current_source[-1]


def _entry_point_text(entry_point: Any) -> str:
    if isinstance(entry_point, str):
        return entry_point
    return f"{getattr(entry_point, '__module__', '?')}:{getattr(entry_point, '__qualname__', entry_point)}"


@contextlib.contextmanager
def _source(source: str) -> Iterator[None]:
    _current_source.append(source)
    try:
        yield
    finally:
        _current_source.pop()


def load_plugins(*, reload: bool = False) -> None:
    """Load every ``agentrl.envs`` entry point once; a broken plugin is logged and skipped."""
    global _plugins_loaded
    if _plugins_loaded and not reload:
        return
    _plugins_loaded = True
    for ep in metadata.entry_points(group=ENTRY_POINT_GROUP):
        dist = ep.dist.name if ep.dist is not None else "unknown"
        with _source(f"plugin:{dist}"):
            try:
                target = ep.load()
                if isinstance(target, type):
                    if ep.name not in gym.registry:
                        register(ep.name, ep.value)
                else:
                    target()
            except Exception as e:
                plugin_errors[f"{dist}:{ep.name}"] = f"{type(e).__name__}: {e}"
                log.warning("agentrl env plugin %s:%s failed to load: %s", dist, ep.name, e)


def registered() -> list[EnvInfo]:
    """Every env registered through agentrl (built-ins, plugins, direct calls), sorted by id."""
    load_plugins()
    return [
        EnvInfo(id, _entry_point_text(gym.registry[id].entry_point), source)
        for id, source in sorted(_sources.items())
        if id in gym.registry
    ]


def _key(text: str) -> str:
    """Normalise a short name: case, dashes and underscores do not matter (``python-tool`` = ``PythonTool``)."""
    return re.sub(r"[-_\s]", "", text).lower()


def _short_names() -> dict[str, list[str]]:
    """Map normalised short names (``search``, ``agentrl/search``) to the ids they may mean."""
    names: dict[str, list[str]] = {}
    for info in registered():
        m = _ID.match(info.id)
        assert m is not None  # register() checked the form
        for alias in (m["name"], f"{m['ns']}/{m['name']}"):
            names.setdefault(_key(alias), []).append(info.id)
    return names


def _version(env_id: str) -> int:
    m = _ID.match(env_id)
    return int(m["version"]) if m else 0


def resolve(name_or_id: str) -> str:
    """The full id that ``name_or_id`` means; raises :class:`EnvNotFoundError` with suggestions."""
    load_plugins()
    ids = [i for i in _sources if i in gym.registry]
    if name_or_id in ids:
        return name_or_id
    exact = [i for i in ids if _key(i) == _key(name_or_id)]
    if exact:
        return exact[0]
    candidates = _short_names().get(_key(name_or_id), [])
    if len({i.split("/")[0] for i in candidates}) > 1:  # the same name in several namespaces
        candidates = [i for i in candidates if i.startswith("agentrl/")] or _ambiguous(name_or_id, candidates)
    if candidates:
        return max(candidates, key=_version)
    raise EnvNotFoundError(_not_found_message(name_or_id))


def _ambiguous(name: str, candidates: list[str]) -> list[str]:
    raise EnvNotFoundError(f"{name!r} is ambiguous: it matches {', '.join(candidates)}; use the full id")


def _not_found_message(name: str) -> str:
    known = sorted(_sources)
    shorts = {_ID.match(i)["name"].lower(): i for i in known}  # type: ignore[index]
    close = difflib.get_close_matches(name, known, n=3, cutoff=0.5)
    close += [shorts[s] for s in difflib.get_close_matches(_key(name), list(shorts), n=3, cutoff=0.5)]
    hint = f" Did you mean {' or '.join(dict.fromkeys(repr(c) for c in close))}?" if close else ""
    return (
        f"No agentrl env is registered as {name!r}.{hint} Registered: {', '.join(known) or 'none'}. "
        "Run `agentrl envs list`, or install the plugin that provides it."
    )


def make(name_or_id: str, **kwargs: Any) -> gym.Env:
    """Create the env ``name_or_id`` (full id or short name) with constructor ``kwargs``.

    Example::

        env = agentrl.make("python-tool", split="test", sandbox="local")
        messages, info = env.reset(seed=0)
    """
    return gym.make(resolve(name_or_id), **kwargs)


def _register_builtins() -> None:
    with _source("builtin"):
        for env_id, entry_point in BUILTINS:
            if env_id not in gym.registry:
                register(env_id, entry_point)
            else:
                _sources[env_id] = "builtin"


_register_builtins()
