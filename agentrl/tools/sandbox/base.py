"""The `Sandbox` interface: where model-written code runs. Backends: Docker (default), local (opt-in)."""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Self


@dataclass(frozen=True)
class ExecResult:
    """The outcome of one command in a sandbox. Output is always valid text (bytes decoded leniently)."""

    stdout: str
    stderr: str
    exit_code: int | None
    """The process's exit code; ``None`` when agentrl stopped it (timeout, or output past the cap)."""
    stdout_truncated: bool = False
    stderr_truncated: bool = False
    timed_out: bool = False
    oom_killed: bool = False
    duration_s: float = 0.0

    @property
    def ok(self) -> bool:
        return self.exit_code == 0 and not self.timed_out


class Sandbox(ABC):
    """A place to run untrusted code for one episode. Limits come from configuration, never from the model."""

    @abstractmethod
    def exec(
        self, cmd: str | list[str], *, timeout: float | None = None, stdin: str | None = None
    ) -> ExecResult:
        """Run ``cmd`` (a shell string or an argv list); ``timeout`` may only lower the configured one."""

    def run_python(self, code: str, *, timeout: float | None = None) -> ExecResult:
        """Run a Python program given as source text."""
        return self.exec(["python3", "-"], timeout=timeout, stdin=code)

    @abstractmethod
    def read_file(self, path: str) -> bytes:
        """Read a file inside the sandbox."""

    @abstractmethod
    def write_file(self, path: str, data: bytes | str) -> None:
        """Write a file inside the sandbox (within its writable, size-capped area)."""

    @abstractmethod
    def close(self) -> None:
        """Release the sandbox; idempotent; never raises."""

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
