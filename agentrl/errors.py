"""Errors agentrl raises on purpose. Each message says what was wrong and how to fix it.

A bad rollout is data, not a crash: failures inside an episode (a tool error, a dead sandbox, an engine
timeout) are recorded on the `Trajectory`; these exceptions are for configuration and programming
errors that the user must fix before a run can make sense.
"""

from __future__ import annotations


class AgentRLError(Exception):
    """Base class of every error agentrl raises on purpose."""


class ConfigError(AgentRLError, ValueError):
    """A configuration value, file or flag is wrong; the message names it and the fix."""


class EnvNotFoundError(AgentRLError, LookupError):
    """No env is registered under the given name or id."""


class SuiteError(ConfigError):
    """An env suite file is malformed; the message names the file and the offending field."""


class SandboxError(AgentRLError):
    """A sandbox could not be created, or died; the message says why and how to fix it."""


class SandboxUnavailableError(SandboxError):
    """The sandbox backend (e.g. the Docker engine) is not reachable."""


class EngineError(AgentRLError):
    """An inference engine failed (unreachable, crashed, bad answer)."""


class EngineDeadError(EngineError):
    """The engine can serve nothing any more (its restart budget is spent, a restart failed, or no
    server it was given answered for too long): a run cannot go on, unlike one request's error."""


class RunFailedError(AgentRLError):
    """The run's failure policy stopped it (docs/reliability.md G25): ``component`` names what failed
    (``engine``, ``env``, ``tool``, ``sandbox``, ``reward``); the message says what to check."""

    def __init__(self, component: str, message: str) -> None:
        super().__init__(message)
        self.component = component


class ModelNotFoundError(AgentRLError, FileNotFoundError):
    """A `--model` value is neither a known alias nor a folder with a model in it."""


class CheckpointError(AgentRLError):
    """A checkpoint is missing, incomplete or incompatible."""


class RetrievalError(AgentRLError):
    """A retriever could not answer (server unreachable after retries, bad answer); the episode records it."""
