"""Env keyword arguments are checked against the constructor's signature, without building the env."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import gymnasium as gym
import pytest

import agentrl
from agentrl.envs import registry
from agentrl.envs.registry import check_env_kwargs
from agentrl.envs.suites import load_suite
from agentrl.errors import ConfigError, EnvNotFoundError, SuiteError

built: list[dict[str, Any]] = []


def make_strict(*, alpha: int, beta: int = 2) -> Any:
    """A factory entry point with two keyword arguments; it records every call."""
    built.append({"alpha": alpha, "beta": beta})
    return agentrl.make("calculator", num_tasks=1)


def make_open(**kwargs: Any) -> Any:
    built.append(kwargs)
    return agentrl.make("calculator", num_tasks=1)


@pytest.fixture
def envs() -> Iterator[None]:
    registry.register("kwtest/Strict-v0", make_strict)
    registry.register("kwtest/Open-v0", make_open)
    registry.register("kwtest/Missing-v0", "kwtest_no_such_module:Env")
    built.clear()
    yield
    for env_id in ("kwtest/Strict-v0", "kwtest/Open-v0", "kwtest/Missing-v0"):
        del gym.registry[env_id]
        del registry._sources[env_id]


def test_known_keywords_pass_without_building_the_env(envs: None) -> None:
    check_env_kwargs("kwtest/Strict-v0", {"alpha": 1, "beta": 3})
    check_env_kwargs("strict", {"alpha": 1})
    assert built == []


def test_unknown_keyword_is_named_with_the_accepted_ones(envs: None) -> None:
    with pytest.raises(ConfigError) as e:
        check_env_kwargs("strict", {"alpha": 1, "gamma": 0})
    assert str(e.value) == "env kwtest/Strict-v0 has no keyword argument 'gamma'; it accepts: alpha, beta."
    assert built == []


def test_several_unknown_keywords_and_a_close_match(envs: None) -> None:
    with pytest.raises(ConfigError) as e:
        check_env_kwargs("strict", {"alpah": 1, "zzz": 2})
    assert str(e.value) == (
        "env kwtest/Strict-v0 has no keyword arguments 'alpah' (did you mean 'alpha'?), 'zzz'; "
        "it accepts: alpha, beta."
    )


def test_missing_required_keyword(envs: None) -> None:
    with pytest.raises(ConfigError, match="needs the keyword argument\\(s\\) 'alpha'"):
        check_env_kwargs("strict", {"beta": 1})


def test_var_keyword_constructor_accepts_anything(envs: None) -> None:
    check_env_kwargs("kwtest/Open-v0", {"anything": 1, "at_all": [2]})
    assert built == []


def test_unknown_env_says_did_you_mean() -> None:
    with pytest.raises(EnvNotFoundError, match="Did you mean 'agentrl/Calculator-v0'"):
        check_env_kwargs("calculater", {})


def test_unimportable_entry_point_is_a_config_error(envs: None) -> None:
    with pytest.raises(
        ConfigError, match=r"kwtest/Missing-v0 .*kwtest_no_such_module:Env.*ModuleNotFoundError"
    ):
        check_env_kwargs("kwtest/Missing-v0", {})


def test_builtin_class_signatures() -> None:
    check_env_kwargs("search", {"max_turns": 3, "topk": 2, "split": "test"})
    with pytest.raises(
        ConfigError, match=r"'max_turn' \(did you mean 'max_turns'\?\).*accepts: split, max_turns"
    ):
        check_env_kwargs("search", {"max_turn": 3})


def test_make_rejects_a_bad_keyword_with_the_same_message(envs: None) -> None:
    with pytest.raises(
        ConfigError, match="no keyword argument 'nmu_tasks' \\(did you mean 'num_tasks'\\?\\)"
    ):
        agentrl.make("calculator", nmu_tasks=3)
    with pytest.raises(ConfigError, match="no keyword argument 'gamma'"):
        agentrl.make("strict", alpha=1, gamma=0)
    assert built == []
    env = agentrl.make("strict", alpha=5, max_episode_steps=3)  # gymnasium.make's own keyword passes
    assert built == [{"alpha": 5, "beta": 2}] and env.spec is not None and env.spec.max_episode_steps == 3
    env.close()


def test_suite_kwargs_are_checked_when_the_file_is_loaded(tmp_path: Path) -> None:
    path = tmp_path / "suite.yaml"
    path.write_text(
        "name: typo\nversion: 1\nentries:\n"
        "  - {env: calculator, kwargs: {num_tasks: 2}, episodes: 1}\n"
        "  - {env: calculator, kwargs: {num_task: 2}, episodes: 1}\n"
    )
    with pytest.raises(SuiteError) as e:
        load_suite(str(path))
    message = str(e.value)
    assert message.startswith(f"{path}: entries[1].kwargs do not fit the env: ")
    assert "'num_task' (did you mean 'num_tasks'?)" in message
