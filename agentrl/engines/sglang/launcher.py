"""Start and stop SGLang server processes (``python -m sglang.launch_server``).

SGLang pins its own torch and transformers, so it lives in a venv of its own and agentrl starts it as a
subprocess with that venv's interpreter (``AGENTRL_SGLANG_PYTHON``, or the venv that
``scripts/setup_sglang.sh`` makes under ``${AGENTRL_CACHE:-~/.cache/agentrl}/sglang-venv``).
Each server runs in its own process group: ``launch_server`` forks a scheduler and a detokenizer, and
killing only the parent would leave them holding memory and ports.

Example::

    server = SGLangServerProcess(python, "/models/tiny", port=free_port(), extra_args=("--device", "cpu"))
    server.start()
    await server.wait_healthy(timeout_s=300)
    ...
    server.kill()
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import subprocess
import time
from collections.abc import Sequence
from pathlib import Path

import httpx

from agentrl.errors import ConfigError, EngineError

LOG_TAIL_LINES = 40
CPU_SERVER_ARGS: tuple[str, ...] = (
    "--device", "cpu",
    "--attention-backend", "torch_native",
    "--disable-cuda-graph",
    # SGLang sizes its KV pool from the machine's free memory, which other processes move; a fixed
    # token cap keeps the pool small (16k tokens, a few MB) whatever the fraction allows.
    "--mem-fraction-static", "0.8",
    "--max-total-tokens", "16384",
    "--dtype", "float32",
)  # fmt: skip
"""``sglang.launch_server`` arguments that serve a model without RoPE (e.g. a GPT-2) on a CPU."""


def agentrl_cache_dir() -> Path:
    """``${AGENTRL_CACHE:-~/.cache/agentrl}``: where slow artefacts (venvs, models) are kept."""
    return Path(os.environ.get("AGENTRL_CACHE", "~/.cache/agentrl")).expanduser()


def default_sglang_python() -> Path:
    """The interpreter of the SGLang venv: ``AGENTRL_SGLANG_PYTHON`` or the one setup_sglang.sh makes."""
    explicit = os.environ.get("AGENTRL_SGLANG_PYTHON")
    if explicit:
        return Path(explicit).expanduser()
    return agentrl_cache_dir() / "sglang-venv" / "bin" / "python"


def find_sglang_python(python: str | None = None) -> str:
    """Resolve the interpreter that runs SGLang, or raise with the command that installs it."""
    path = Path(python).expanduser() if python else default_sglang_python()
    if not (path.is_file() and os.access(path, os.X_OK)):
        raise ConfigError(
            f"no SGLang interpreter at {path}. Run `bash scripts/setup_sglang.sh` to create the SGLang "
            "venv, or point AGENTRL_SGLANG_PYTHON (or the engine's `python` option) at a Python that "
            "can `import sglang`."
        )
    return str(path)


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that nothing listens on right now (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


class SGLangServerProcess:
    """One ``sglang.launch_server`` process bound to ``host:port``, logging to ``log_path``."""

    def __init__(
        self,
        python: str,
        model_path: str,
        *,
        port: int,
        host: str = "127.0.0.1",
        extra_args: Sequence[str] = (),
        log_path: Path | None = None,
        env: dict[str, str] | None = None,
    ) -> None:
        self.python = python
        self.model_path = model_path
        self.host = host
        self.port = port
        self.extra_args = tuple(extra_args)
        self.log_path = log_path or agentrl_cache_dir() / "logs" / f"sglang-{port}.log"
        self.env = env
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc else None

    def command(self) -> list[str]:
        """The exact command line; ``extra_args`` come last so they can override nothing we need."""
        return [
            self.python,
            "-m",
            "sglang.launch_server",
            "--model-path",
            self.model_path,
            "--host",
            self.host,
            "--port",
            str(self.port),
            *self.extra_args,
        ]

    def start(self) -> None:
        """Spawn the server in a new process group; returns at once (see :meth:`wait_healthy`)."""
        if self.running():
            raise EngineError(f"SGLang server on {self.url} is already running (pid {self.pid})")
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        env = {**os.environ, **(self.env or {})}
        with open(self.log_path, "ab") as log:
            log.write(f"\n=== agentrl: {' '.join(self.command())}\n".encode())
            log.flush()
            self._proc = subprocess.Popen(
                self.command(),
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=env,
                start_new_session=True,
            )

    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def returncode(self) -> int | None:
        return self._proc.poll() if self._proc else None

    def log_tail(self, lines: int = LOG_TAIL_LINES) -> str:
        """The last lines of the server log, for error messages."""
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return "(no log)"
        return "\n".join(text.splitlines()[-lines:])

    async def wait_healthy(self, timeout_s: float, poll_s: float = 0.5) -> None:
        """Wait until ``/health_generate`` answers 200; raise with the log tail on exit or timeout."""
        deadline = time.monotonic() + timeout_s
        async with httpx.AsyncClient(timeout=httpx.Timeout(30.0, connect=2.0)) as client:
            while time.monotonic() < deadline:
                if not self.running():
                    raise EngineError(
                        f"SGLang server on {self.url} exited with code {self.returncode()} while starting. "
                        f"Log {self.log_path}, last lines:\n{self.log_tail()}"
                    )
                try:
                    response = await client.get(f"{self.url}/health_generate")
                    if response.status_code == 200:
                        return
                except httpx.HTTPError:
                    pass
                await asyncio.sleep(poll_s)
        self.kill()
        raise EngineError(
            f"SGLang server on {self.url} was not healthy after {timeout_s:.0f} s (raise the startup "
            f"timeout if the model is large). Log {self.log_path}, last lines:\n{self.log_tail()}"
        )

    def kill(self, grace_s: float = 5.0) -> None:
        """SIGTERM the whole process group, then SIGKILL it after ``grace_s``.

        The group is SIGKILLed even when the parent exits in time: SGLang's scheduler and detokenizer
        can outlive it.
        """
        proc = self._proc
        if proc is None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=grace_s)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=5.0)
