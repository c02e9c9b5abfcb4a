"""The env registry: agentrl ids on top of Gymnasium's registry, short names and plugins.

* :func:`register` adds ``namespace/Name-vN`` to ``gymnasium.registry``. No ``TimeLimit`` is added:
  :class:`~agentrl.envs.base.ToolEnv` truncates at ``max_turns`` itself, and Gymnasium's passive checker
  is off because ``agentrl envs check`` runs the full checker on demand.
* :func:`make` accepts a full id or a short name (``search``, ``python-tool``) that resolves to the
  latest version; an unknown name raises :class:`~agentrl.errors.EnvNotFoundError` with "did you mean".
* :func:`check_env_kwargs` checks constructor keyword arguments against the env's signature without
  building the env, so a command can reject a typo before it starts Ray or loads a model; :func:`make`
  runs the same check, so a bad keyword is a :class:`~agentrl.errors.ConfigError`, not a ``TypeError``.
* Plugins: installed distributions declare entry points in the group ``agentrl.envs``; ``import agentrl``
  loads them (see docs/envs.md). An entry point named like an id (``mylab/Echo-v0 = "mylab:EchoEnv"``)
  is registered under that id with its value as a string entry point, without importing the plugin; any
  other entry point is a callable, imported and called, that calls :func:`register` itself. A plugin
  that fails is skipped with a warning that names it, and listed in :data:`plugin_errors`.

Built-in envs are a flat list of string entry points, so nothing heavy is imported until ``make``:
``import agentrl`` registers them with Gymnasium, after which ``gymnasium.make("agentrl/Search-v0")``
works as with any Gymnasium plugin package.
"""

from __future__ import annotations

import contextlib
import difflib
import inspect
import re
import warnings
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from importlib import metadata
from typing import Any

import gymnasium as gym
from gymnasium.envs.registration import load_env_creator

from agentrl.errors import ConfigError, EnvNotFoundError

ENTRY_POINT_GROUP = "agentrl.envs"
_ID = re.compile(r"^(?:(?P<ns>[\w.-]+)/)?(?P<name>[\w.:-]+?)-v(?P<version>\d+)$")

BUILTINS: tuple[tuple[str, str], ...] = (
    ("agentrl/Search-v0", "agentrl.envs.search:SearchEnv"),
    ("agentrl/PythonTool-v0", "agentrl.envs.python_tool:PythonToolEnv"),
    ("agentrl/Calculator-v0", "agentrl.envs.example:CalculatorEnv"),
    ("agentrl/PromptData-v0", "agentrl.envs.dataset:PromptDataEnv"),
)
"""Built-in envs as (id, ``"module:Class"``); registered when this module is imported."""
MAKE_KWARGS = frozenset({"max_episode_steps", "disable_env_checker"})
"""Keywords that ``gymnasium.make`` consumes itself; they are not constructor arguments."""


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
    """Register every ``agentrl.envs`` entry point once; a broken plugin is skipped with a warning.

    ``import agentrl`` calls this. An entry point whose name is an env id is registered lazily (its
    module is imported by ``make``); any other entry point is loaded and called.
    """
    global _plugins_loaded
    if _plugins_loaded and not reload:
        return
    _plugins_loaded = True
    for ep in metadata.entry_points(group=ENTRY_POINT_GROUP):
        dist = ep.dist.name if ep.dist is not None else "unknown"
        with _source(f"plugin:{dist}"):
            try:
                if _ID.match(ep.name) and "/" in ep.name:
                    if ":" not in ep.value:
                        raise ConfigError(f"entry point value {ep.value!r} must look like 'module:Class'")
                    if ep.name not in gym.registry:
                        register(ep.name, ep.value)
                    else:
                        _sources.setdefault(ep.name, _current_source[-1])
                else:
                    ep.load()()
            except Exception as e:
                plugin_errors[f"{dist}:{ep.name}"] = f"{type(e).__name__}: {e}"
                warnings.warn(
                    f"agentrl env plugin {ep.name!r} of distribution {dist!r} failed to load and is skipped "
                    f"({ep.name} = {ep.value}): {type(e).__name__}: {e}",
                    RuntimeWarning,
                    stacklevel=2,
                )


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


def env_constructor(name_or_id: str) -> Any:
    """The class (or factory) that ``make(name_or_id)`` calls, imported but not called.

    Raises :class:`ConfigError` naming the env and its source when the entry point cannot be imported
    (a plugin whose module is missing, a typo in ``"module:Class"``).
    """
    env_id = resolve(name_or_id)
    entry_point = gym.spec(env_id).entry_point
    if not isinstance(entry_point, str):
        return entry_point
    try:
        return load_env_creator(entry_point)
    except Exception as e:
        raise ConfigError(
            f"env {env_id} ({_sources.get(env_id, 'user')}) cannot be imported from {entry_point!r}: "
            f"{type(e).__name__}: {e}. Is the package that provides it installed in this environment?"
        ) from e


def check_env_kwargs(env: str, kwargs: Mapping[str, Any]) -> None:
    """Check constructor keyword arguments ``kwargs`` of ``env`` (id or short name) without building it.

    The env's class is imported and its signature read; nothing is constructed, so a command can call
    this before it starts Ray or loads a model. A constructor that takes ``**kwargs`` accepts anything.

    Raises:
        EnvNotFoundError: ``env`` names no registered env (with "did you mean").
        ConfigError: a key is not a constructor argument (the message names it and lists the accepted
            ones), a required argument is missing, or the env cannot be imported.

    Example::

        >>> check_env_kwargs("search", {"max_turn": 3})
        Traceback (most recent call last):
        ...
        agentrl.errors.ConfigError: env agentrl/Search-v0 has no keyword argument 'max_turn' (did you mean 'max_turns'?); ...
    """
    env_id = resolve(env)
    constructor = env_constructor(env_id)
    try:
        params = list(inspect.signature(constructor).parameters.values())
    except (TypeError, ValueError):  # a builtin or C callable: nothing to check against
        return
    if any(p.kind is p.VAR_KEYWORD for p in params):
        return
    named = [p for p in params if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]
    accepted = [p.name for p in named]
    unknown = [k for k in kwargs if k not in accepted]
    if unknown:
        hints = [
            f"{k!r} (did you mean {close[0]!r}?)"
            if (close := difflib.get_close_matches(k, accepted, n=1))
            else repr(k)
            for k in unknown
        ]
        plural = "s" if len(unknown) > 1 else ""
        raise ConfigError(
            f"env {env_id} has no keyword argument{plural} {', '.join(hints)}; "
            f"it accepts: {', '.join(accepted) or 'none'}."
        )
    given = {**gym.spec(env_id).kwargs, **kwargs}
    missing = [p.name for p in named if p.default is p.empty and p.name not in given]
    if missing:
        raise ConfigError(f"env {env_id} needs the keyword argument(s) {', '.join(map(repr, missing))}.")


def make(name_or_id: str, **kwargs: Any) -> gym.Env:
    """Create the env ``name_or_id`` (full id or short name) with constructor ``kwargs``.

    The keywords are checked first (:func:`check_env_kwargs`), so a typo raises :class:`ConfigError`
    that names it; ``max_episode_steps`` and ``disable_env_checker`` go to ``gymnasium.make``.

    Example::

        env = agentrl.make("python-tool", split="test", sandbox="local")
        messages, info = env.reset(seed=0)
    """
    env_id = resolve(name_or_id)
    check_env_kwargs(env_id, {k: v for k, v in kwargs.items() if k not in MAKE_KWARGS})
    return gym.make(env_id, **kwargs)


def _register_builtins() -> None:
    with _source("builtin"):
        for env_id, entry_point in BUILTINS:
            if env_id not in gym.registry:
                register(env_id, entry_point)
            else:
                _sources[env_id] = "builtin"


_register_builtins()
