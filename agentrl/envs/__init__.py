"""Environments: the ToolEnv base class, the registry and env suites."""

from agentrl.envs.base import Task, ToolEnv, TurnResult
from agentrl.envs.spaces import Message, MessagesSpace, TextSpace

__all__ = ["Message", "MessagesSpace", "Task", "TextSpace", "ToolEnv", "TurnResult"]
