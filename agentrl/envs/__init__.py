"""Environments: the ToolEnv base class, the registry and env suites."""

from agentrl.envs.base import Task, ToolEnv, TurnResult
from agentrl.envs.registry import (
    EnvInfo,
    check_env_kwargs,
    load_plugins,
    make,
    register,
    registered,
    resolve,
)
from agentrl.envs.spaces import Message, MessagesSpace, TextSpace
from agentrl.envs.suites import EnvSuite, SuiteEntry, list_suites, load_suite

__all__ = [
    "EnvInfo",
    "EnvSuite",
    "Message",
    "MessagesSpace",
    "SuiteEntry",
    "Task",
    "TextSpace",
    "ToolEnv",
    "TurnResult",
    "check_env_kwargs",
    "list_suites",
    "load_plugins",
    "load_suite",
    "make",
    "register",
    "registered",
    "resolve",
]
