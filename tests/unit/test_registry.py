"""The registry: ids, short names, "did you mean", and a real pip-installed plugin package."""

from __future__ import annotations

import importlib
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import gymnasium as gym
import pytest

import agentrl
from agentrl.envs import registry
from agentrl.errors import ConfigError, EnvNotFoundError

PLUGIN_SRC = Path(__file__).resolve().parent.parent / "plugin_pkg"


def test_builtins_are_registered_without_time_limit() -> None:
    ids = {info.id: info for info in registry.registered()}
    assert ids["agentrl/PythonTool-v0"].entry_point == "agentrl.envs.python_tool:PythonToolEnv"
    assert ids["agentrl/Search-v0"].entry_point == "agentrl.envs.search:SearchEnv"
    assert {ids[i].source for i in ("agentrl/PythonTool-v0", "agentrl/Search-v0")} == {"builtin"}
    spec = gym.spec("agentrl/PythonTool-v0")
    assert spec.max_episode_steps is None and spec.disable_env_checker


@pytest.mark.parametrize(
    "name",
    ["python-tool", "pythontool", "PythonTool", "python_tool", "agentrl/PythonTool", "agentrl/pythontool-v0"],
)
def test_short_names_resolve(name: str) -> None:
    assert registry.resolve(name) == "agentrl/PythonTool-v0"
    assert registry.resolve("search") == "agentrl/Search-v0"


def test_short_name_resolves_to_latest_version() -> None:
    registry.register("agentrl/PythonTool-v1", "agentrl.envs.python_tool:PythonToolEnv")
    registry.register("agentrl/PythonTool-v10", "agentrl.envs.python_tool:PythonToolEnv")
    try:
        assert registry.resolve("python-tool") == "agentrl/PythonTool-v10"
        assert registry.resolve("agentrl/PythonTool-v0") == "agentrl/PythonTool-v0"
    finally:
        for env_id in ("agentrl/PythonTool-v1", "agentrl/PythonTool-v10"):
            del gym.registry[env_id]
            del registry._sources[env_id]


@pytest.mark.parametrize(
    ("typo", "suggestion"), [("pyton-tool", "agentrl/PythonTool-v0"), ("serch", "agentrl/Search-v0")]
)
def test_unknown_name_says_did_you_mean(typo: str, suggestion: str) -> None:
    with pytest.raises(EnvNotFoundError, match=f"Did you mean '{suggestion}'"):
        agentrl.make(typo)


def test_bad_ids_are_rejected() -> None:
    for bad in ("NoNamespace-v0", "agentrl/NoVersion", "agentrl/Bad Name-v0"):
        with pytest.raises(ConfigError, match="namespace/Name-vN"):
            registry.register(bad, "x:y")


def test_make_builds_the_env_with_kwargs() -> None:
    env = agentrl.make("python-tool", split="test", tasks_per_generator=2, sandbox="local")
    assert env.unwrapped.split == "test" and len(env.unwrapped.tasks) == 12
    env.close()


@pytest.fixture(scope="module")
def plugin_path(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """Install tests/plugin_pkg with pip into a temporary --target dir and put it on sys.path."""
    work = tmp_path_factory.mktemp("plugin")
    shutil.copytree(PLUGIN_SRC, work / "src")  # build outside the repo: no build/ or egg-info left there
    target = work / "site"
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation", "--no-index",
         "--target", str(target), str(work / "src")],
        check=True,
    )  # fmt: skip
    sys.path.insert(0, str(target))
    importlib.invalidate_caches()
    registry.load_plugins(reload=True)
    yield target
    sys.path.remove(str(target))


def test_plugin_entry_points_register_envs(plugin_path: Path) -> None:
    infos = {info.id: info for info in registry.registered()}
    assert infos["agentrl_echo/Echo-v0"].source == "plugin:agentrl-echo"
    assert infos["agentrl_echo/Echo-v0"].entry_point == "agentrl_echo:EchoEnv"
    assert infos["agentrl_echo/Shout-v0"].source == "plugin:agentrl-echo"
    env = agentrl.make("echo")
    _, info = env.reset(options={"task_index": 1})
    assert info["task_id"] == "echo-1"
    assert env.step("<answer>river</answer>")[1:3] == (1.0, True)
    shout = agentrl.make("agentrl_echo/Shout-v0")
    shout.reset(options={"task_index": 1})
    assert shout.step("<answer>RIVER</answer>")[1] == 1.0


def test_cli_lists_and_checks_the_plugin(plugin_path: Path) -> None:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(plugin_path), os.environ.get("PYTHONPATH", "")])}
    listed = subprocess.run(
        [sys.executable, "-m", "agentrl", "envs", "list"], env=env, capture_output=True, text=True, check=True
    ).stdout
    rows = {line.split()[0]: line.split() for line in listed.splitlines()[1:]}
    assert rows["agentrl_echo/Echo-v0"][1:] == ["agentrl_echo:EchoEnv", "plugin:agentrl-echo"]
    assert rows["agentrl_echo/Shout-v0"][2] == "plugin:agentrl-echo"
    assert rows["agentrl/PythonTool-v0"][2] == "builtin"
    checked = subprocess.run(
        [sys.executable, "-m", "agentrl", "envs", "check", "echo"], env=env, capture_output=True, text=True
    )
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert (
        "gymnasium check_env: passed" in checked.stdout
        and "scripted episode: passed (return 1)" in checked.stdout
    )
