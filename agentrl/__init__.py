"""agentrl: an agentic environment gym and multi-turn RL trainer for LLMs.

``agentrl.make``, ``agentrl.register`` and ``agentrl.load_suite`` are imported on first use, so that
``import agentrl`` (and ``agentrl --help``) stays instant.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_LAZY = {
    "make": "agentrl.envs.registry",
    "register": "agentrl.envs.registry",
    "load_suite": "agentrl.envs.suites",
    "list_suites": "agentrl.envs.suites",
}

__all__ = ["__version__", *_LAZY]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'agentrl' has no attribute {name!r}")
