"""Every registered env passes Gymnasium's env checker, documents itself, and solves its scripted episode."""

from __future__ import annotations

import re
from typing import Any

import pytest
from gymnasium.utils.env_checker import check_env

from agentrl.cli.envs import play_scripted_episode
from agentrl.envs import registry

# Constructor kwargs a unit test needs: no Docker here, and few tasks keep construction fast.
KWARGS: dict[str, dict[str, Any]] = {"agentrl/PythonTool-v0": {"sandbox": "local", "tasks_per_generator": 3}}
SECTIONS = ("Description", "Action", "Observation", "Reward", "Episode End", "Arguments", "Version History")
ENV_IDS = [info.id for info in registry.registered()]

pytestmark = pytest.mark.filterwarnings("ignore")


def test_every_builtin_is_checked() -> None:
    assert {"agentrl/PythonTool-v0", "agentrl/Search-v0"} <= set(ENV_IDS)


@pytest.mark.parametrize("env_id", ENV_IDS)
def test_gymnasium_env_checker(env_id: str) -> None:
    env = registry.make(env_id, **KWARGS.get(env_id, {}))
    check_env(env.unwrapped, skip_render_check=True)
    env.close()


@pytest.mark.parametrize("env_id", ENV_IDS)
def test_docstring_has_gymnasium_sections(env_id: str) -> None:
    env = registry.make(env_id, **KWARGS.get(env_id, {}))
    doc = type(env.unwrapped).__doc__ or ""
    missing = [s for s in SECTIONS if not re.search(rf"^\s*#*\s*{s}\b", doc, re.MULTILINE)]
    assert not missing, f"{env_id} docstring lacks sections {missing}"
    env.close()


@pytest.mark.parametrize("env_id", ENV_IDS)
def test_scripted_episode_succeeds(env_id: str, capsys: pytest.CaptureFixture[str]) -> None:
    env = registry.make(env_id, **KWARGS.get(env_id, {}))
    assert play_scripted_episode(env, seed=0) == 0, capsys.readouterr().out
    env.close()
