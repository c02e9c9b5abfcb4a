"""`LocalSandbox`: a subprocess with rlimits, a wall-clock timeout, output caps and a process-group kill.

Opt-in only (``make_sandbox("local")``): it is for trusted code, laptops without Docker and fast unit
tests. It does NOT isolate the network, the host's files outside its directory, or the process count
(RLIMIT_NPROC counts every process of the user on the machine, so it cannot cap one sandbox).
"""

from __future__ import annotations

import contextlib
import logging
import os
import resource
import selectors
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path

from agentrl.errors import SandboxError
from agentrl.tools.sandbox.base import ExecResult, Sandbox
from agentrl.tools.sandbox.config import SandboxConfig, parse_size
from agentrl.tools.sandbox.output import CappedBuffer, limit_note, to_text

log = logging.getLogger(__name__)
_warned = False
_CHUNK = 65536


def _warn_once() -> None:
    global _warned
    if not _warned:
        _warned = True
        log.warning(
            "LocalSandbox runs model-written code as this user on this machine, with network access and "
            "without process or file isolation; use it only for trusted code. The default is sandbox='docker'."
        )


class LocalSandbox(Sandbox):
    """Runs each call as a new session (process group) in a private temporary directory."""

    def __init__(self, config: SandboxConfig | None = None) -> None:
        _warn_once()
        self.config = config or SandboxConfig()
        self.root = Path(tempfile.mkdtemp(prefix="agentrl-sandbox-"))
        self._closed = False

    def _env(self) -> dict[str, str]:
        """A minimal environment: nothing of the host's (API keys, tokens) leaks into the code."""
        return {
            "PATH": "/usr/local/bin:/usr/bin:/bin",
            "HOME": str(self.root),
            "LANG": "C.UTF-8",
            "TMPDIR": str(self.root),
        }

    def _limits(self, timeout: float) -> None:
        """Runs in the child before exec: rlimits the code cannot raise again (hard = soft)."""
        memory = self.config.memory_bytes
        cpu = int(timeout) + 1
        for limit, value in (
            (resource.RLIMIT_AS, memory),
            (resource.RLIMIT_CPU, cpu),
            (resource.RLIMIT_FSIZE, parse_size(self.config.tmpfs_size)),
            (resource.RLIMIT_CORE, 0),
        ):
            resource.setrlimit(limit, (value, value))

    def exec(
        self, cmd: str | list[str], *, timeout: float | None = None, stdin: str | None = None
    ) -> ExecResult:
        if self._closed:
            raise SandboxError("this sandbox was closed; make a new one with make_sandbox()")
        argv = ["/bin/sh", "-c", cmd] if isinstance(cmd, str) else list(cmd)
        limit = self.config.effective_timeout(timeout)
        start = time.monotonic()
        proc = subprocess.Popen(
            argv,
            cwd=self.root,
            env=self._env(),
            stdin=subprocess.PIPE if stdin is not None else subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            start_new_session=True,
            preexec_fn=lambda: self._limits(limit),
        )
        out = CappedBuffer(self.config.output_limit_bytes)
        err = CappedBuffer(self.config.output_limit_bytes)
        data = stdin.encode("utf-8", "surrogateescape") if stdin is not None else None
        timed_out = self._pump(proc, data, out, err, start + limit)
        return self._result(proc, out, err, timed_out, limit, time.monotonic() - start)

    def _pump(
        self,
        proc: subprocess.Popen[bytes],
        stdin: bytes | None,
        out: CappedBuffer,
        err: CappedBuffer,
        deadline: float,
    ) -> bool:
        """Move bytes until both pipes close; returns True when the deadline passed."""
        sel = selectors.DefaultSelector()
        assert proc.stdout is not None and proc.stderr is not None
        sel.register(proc.stdout, selectors.EVENT_READ, out)
        sel.register(proc.stderr, selectors.EVENT_READ, err)
        pending = memoryview(stdin) if stdin is not None else None
        if proc.stdin is not None:
            os.set_blocking(proc.stdin.fileno(), False)
            sel.register(proc.stdin, selectors.EVENT_WRITE, None)
        while any(key.data is not None for key in sel.get_map().values()):
            left = deadline - time.monotonic()
            if left <= 0:
                self._kill(proc)
                return True
            for key, _ in sel.select(min(left, 0.1)):
                if key.data is None:
                    pending = self._write(proc, sel, pending)
                    continue
                chunk = os.read(key.fd, _CHUNK)
                if not chunk:
                    sel.unregister(key.fileobj)
                    continue
                key.data.feed(chunk)
            if out.overflowed or err.overflowed:
                self._kill(proc)
                return False
            if proc.poll() is not None and sel.get_map():
                self._kill(proc)  # the call is over; leftover background processes do not outlive it
        sel.close()
        return False

    @staticmethod
    def _write(
        proc: subprocess.Popen[bytes], sel: selectors.BaseSelector, pending: memoryview | None
    ) -> memoryview | None:
        assert proc.stdin is not None
        try:
            sent = os.write(proc.stdin.fileno(), pending[:_CHUNK]) if pending else 0
        except BlockingIOError:
            return pending
        except BrokenPipeError:
            sent, pending = 0, memoryview(b"")
        pending = pending[sent:] if pending is not None else None
        if not pending:
            sel.unregister(proc.stdin)
            proc.stdin.close()
            return None
        return pending

    @staticmethod
    def _kill(proc: subprocess.Popen[bytes]) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)

    def _result(
        self,
        proc: subprocess.Popen[bytes],
        out: CappedBuffer,
        err: CappedBuffer,
        timed_out: bool,
        limit: float,
        took: float,
    ) -> ExecResult:
        overflow = out.overflowed or err.overflowed
        self._kill(proc)
        code = proc.wait()
        for pipe in (proc.stdin, proc.stdout, proc.stderr):
            if pipe is not None and not pipe.closed:
                pipe.close()
        stderr = to_text(err.getvalue(), truncated=err.overflowed)
        if timed_out:
            stderr += limit_note("time limit exceeded", f"the call ran past {limit:g} s and was stopped")
        if overflow:
            stderr += limit_note(
                "output truncated", f"more than {self.config.output_limit_bytes} bytes; the call was stopped"
            )
        return ExecResult(
            stdout=to_text(out.getvalue(), truncated=out.overflowed),
            stderr=stderr,
            exit_code=None if timed_out or overflow else (128 - code if code < 0 else code),
            stdout_truncated=out.overflowed,
            stderr_truncated=err.overflowed,
            timed_out=timed_out,
            duration_s=took,
        )

    def _path(self, path: str) -> Path:
        """Resolve ``path`` inside the sandbox directory; anything outside it is refused."""
        resolved = (self.root / path.lstrip("/") if Path(path).is_absolute() else self.root / path).resolve()
        if resolved != self.root.resolve() and self.root.resolve() not in resolved.parents:
            raise PermissionError(f"{path} is outside the local sandbox directory")
        return resolved

    def read_file(self, path: str) -> bytes:
        target = self._path(path)
        if target.stat().st_size > self.config.file_limit_bytes:
            raise OSError(f"{path} is larger than file_limit_bytes={self.config.file_limit_bytes}")
        return target.read_bytes()

    def write_file(self, path: str, data: bytes | str) -> None:
        payload = data.encode("utf-8") if isinstance(data, str) else data
        if len(payload) > parse_size(self.config.tmpfs_size):
            raise OSError(28, f"{path}: {len(payload)} bytes exceed tmpfs_size={self.config.tmpfs_size}")
        target = self._path(path)
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(payload)

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            shutil.rmtree(self.root, ignore_errors=True)
