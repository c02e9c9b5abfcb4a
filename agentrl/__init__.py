"""agentrl: an agentic environment gym and multi-turn RL trainer for LLMs.

``import agentrl`` registers the built-in envs and the installed plugins (entry-point group
``agentrl.envs``) with Gymnasium, as any Gymnasium plugin package does, so that
``gymnasium.make("agentrl/Search-v0")`` works after it. Registration uses string entry points: it
imports Gymnasium but no env module, and never torch or transformers.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_LAZY = {
    "make": "agentrl.envs.registry",
    "register": "agentrl.envs.registry",
    "check_env_kwargs": "agentrl.envs.registry",
    "load_suite": "agentrl.envs.suites",
    "list_suites": "agentrl.envs.suites",
}

__all__ = ["__version__", *_LAZY]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'agentrl' has no attribute {name!r}")


# Last, so that a plugin which imports agentrl while it registers finds the names above.
importlib.import_module("agentrl.envs.registry").load_plugins()
