"""``agentrl envs list`` and ``agentrl envs check ID``: what envs exist, and does one work.

``check`` runs Gymnasium's ``check_env`` on the unwrapped env, then plays one scripted episode: after
``reset``, the env's optional ``scripted_episode()`` returns agent turns that solve the current task
(or ``(reset_options, turns)`` to pick the task itself). Each turn and its observation is printed; the
check fails (exit code 1) when the checker raises, the env offers no script, or the scripted episode
does not end with a positive return and no tool errors (``info["tool_errors"]``).

Examples::

    agentrl envs list
    agentrl envs check search
    agentrl envs check python-tool -k sandbox=local
"""

from __future__ import annotations

import argparse
import json
from typing import Any

_PREVIEW = 300


def add_parser(subparsers: Any) -> None:
    parser = subparsers.add_parser("envs", help="list registered envs, or check one")
    sub = parser.add_subparsers(dest="envs_command", metavar="ACTION", required=True)
    lister = sub.add_parser("list", help="list built-in and plugin envs")
    lister.add_argument("--json", action="store_true", help="print JSON lines instead of a table")
    lister.set_defaults(func=run)
    check = sub.add_parser("check", help="run Gymnasium's env checker and one scripted episode")
    check.add_argument("env", metavar="ID", help="env id or short name, e.g. search")
    check.add_argument(
        "-k", "--kwarg", action="append", default=[], metavar="KEY=VALUE",
        help="constructor argument (value parsed as YAML), e.g. -k sandbox=local; repeatable",
    )  # fmt: skip
    check.add_argument("--seed", type=int, default=0, help="reset seed of the scripted episode")
    check.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from agentrl.errors import AgentRLError

    try:
        if args.envs_command == "list":
            return list_envs(as_json=args.json)
        return check_env_cli(args.env, parse_kwargs(args.kwarg), seed=args.seed)
    except AgentRLError as e:
        print(f"error: {e}")
        return 2


def parse_kwargs(pairs: list[str]) -> dict[str, Any]:
    """``["a=1", "b=x"]`` -> ``{"a": 1, "b": "x"}`` (values read as YAML scalars)."""
    import yaml

    from agentrl.errors import ConfigError

    out: dict[str, Any] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise ConfigError(f"-k expects KEY=VALUE, got {pair!r}")
        out[key] = yaml.safe_load(value)
    return out


def list_envs(*, as_json: bool = False) -> int:
    from agentrl.envs import registry

    infos = registry.registered()
    if as_json:
        for info in infos:
            print(json.dumps({"id": info.id, "entry_point": info.entry_point, "source": info.source}))
        return 0
    rows = [("ID", "ENTRY POINT", "SOURCE")] + [(i.id, i.entry_point, i.source) for i in infos]
    widths = [max(len(r[c]) for r in rows) for c in range(2)]
    for env_id, entry_point, source in rows:
        print(f"{env_id:<{widths[0]}}  {entry_point:<{widths[1]}}  {source}")
    for name, error in registry.plugin_errors.items():
        print(f"plugin {name} failed to load: {error}")
    return 0


def _preview(text: str) -> str:
    text = text.replace("\n", "\\n")
    return text if len(text) <= _PREVIEW else f"{text[:_PREVIEW]}... ({len(text)} chars)"


def check_env_cli(name: str, kwargs: dict[str, Any], *, seed: int = 0) -> int:
    """Run the checker and the scripted episode; print what happens; return the exit code."""
    from gymnasium.utils.env_checker import check_env

    from agentrl.envs.registry import make

    env = make(name, **kwargs)
    print(f"env {env.spec.id if env.spec else name} ({type(env.unwrapped).__name__})")
    try:
        check_env(env.unwrapped, skip_render_check=True)
        print("gymnasium check_env: passed")
        return play_scripted_episode(env, seed)
    except Exception as e:
        print(f"FAILED: {type(e).__name__}: {e}")
        return 1
    finally:
        env.close()


def play_scripted_episode(env: Any, seed: int) -> int:
    """Play ``env.unwrapped.scripted_episode()``; 0 when it ends with a positive reward."""
    script_fn = getattr(env.unwrapped, "scripted_episode", None)
    if script_fn is None:
        print("FAILED: the env has no scripted_episode(); add one so that `envs check` can play it")
        return 1
    messages, info = env.reset(seed=seed)
    script = script_fn()
    if isinstance(script, tuple):
        options, script = script
        messages, info = env.reset(seed=seed, options=options)
    print(f"task {info.get('task_id')}: {_preview(messages[-1]['content'])}")
    total, ended, tool_errors = 0.0, False, 0
    for n, action in enumerate(script, 1):
        messages, reward, terminated, truncated, info = env.step(action)
        total += reward
        tool_errors += int(info.get("tool_errors", 0))
        print(f"turn {n} agent: {_preview(action)}")
        for m in messages:
            print(f"turn {n} {m['role']}: {_preview(m['content'])}")
        print(f"turn {n} reward={reward:g} terminated={terminated} truncated={truncated}")
        if terminated or truncated:
            ended = True
            break
    if not ended or total <= 0 or tool_errors:
        print(
            f"FAILED: scripted episode ended={ended}, return {total:g}, tool errors {tool_errors}; "
            "expected an ended episode with a positive return and no tool errors"
        )
        return 1
    print(f"scripted episode: passed (return {total:g})")
    return 0
