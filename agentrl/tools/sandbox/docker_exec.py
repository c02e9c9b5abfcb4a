"""One exec in a container over the engine's raw hijacked socket, with a deadline and output caps.

Why the raw socket: ``exec_run`` of the high-level SDK buffers the whole output and has no timeout.
Here the multiplexed stream (8-byte frame headers: stream id, 3 zero bytes, big-endian length) is read
with ``select`` against a host-side deadline, stdin is written as the process is able to take it, and
the caps are enforced as bytes arrive. It costs the same three requests as ``docker exec`` (create,
start, inspect) and no helper threads.
"""

from __future__ import annotations

import select
import socket
import struct
import time
from dataclasses import dataclass
from typing import Any

from agentrl.tools.sandbox.output import CappedBuffer

_HEADER = struct.Struct(">BxxxL")
_CHUNK = 65536


@dataclass
class RawExec:
    """What came back from one exec, before decoding."""

    stdout: CappedBuffer
    stderr: CappedBuffer
    exit_code: int | None = None
    timed_out: bool = False
    eof: bool = False
    """The engine closed the stream (the process ended or the container died)."""
    oom_killed: bool = False
    """Set by the caller once it has checked the cgroup's OOM-kill counter."""

    @property
    def overflowed(self) -> bool:
        return self.stdout.overflowed or self.stderr.overflowed


def _socket_of(raw: Any) -> socket.socket:
    """The OS socket under the SDK's wrapper (a ``SocketIO`` over a unix or TCP socket)."""
    sock = getattr(raw, "_sock", raw)
    if not isinstance(sock, socket.socket):
        raise TypeError(f"unexpected exec socket type {type(raw).__name__}")
    return sock


class _Demuxer:
    """Splits the multiplexed byte stream into stdout and stderr frames."""

    def __init__(self, result: RawExec) -> None:
        self._buf = bytearray()
        self._result = result

    def feed(self, chunk: bytes) -> None:
        self._buf += chunk
        while len(self._buf) >= _HEADER.size:
            stream, length = _HEADER.unpack_from(self._buf)
            if len(self._buf) < _HEADER.size + length:
                # Keep only what a header promised; a giant frame is consumed as it arrives.
                if len(self._buf) > _CHUNK * 4:
                    self._emit(stream, bytes(self._buf[_HEADER.size :]))
                    remaining = length - (len(self._buf) - _HEADER.size)
                    self._buf = bytearray(_HEADER.pack(stream, remaining))
                return
            payload = bytes(self._buf[_HEADER.size : _HEADER.size + length])
            del self._buf[: _HEADER.size + length]
            self._emit(stream, payload)

    def _emit(self, stream: int, payload: bytes) -> None:
        (self._result.stderr if stream == 2 else self._result.stdout).feed(payload)


def _pump(sock: socket.socket, stdin: bytes | None, deadline: float, result: RawExec) -> None:
    """Write stdin and read frames until EOF, the deadline, or an output cap is passed."""
    demux = _Demuxer(result)
    pending = memoryview(stdin) if stdin is not None else None
    if pending is not None and not pending:
        sock.shutdown(socket.SHUT_WR)
        pending = None
    sock.setblocking(False)
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            result.timed_out = True
            return
        want_write = [sock] if pending is not None else []
        readable, writable, _ = select.select([sock], want_write, [], left)
        if writable and pending is not None:
            try:
                sent = sock.send(pending[:_CHUNK])
            except BlockingIOError:
                sent = 0
            except (BrokenPipeError, ConnectionResetError):
                sent, pending = 0, memoryview(b"")  # the process stopped reading; drop the rest
            pending = pending[sent:]
            if not pending:
                sock.shutdown(socket.SHUT_WR)  # the engine closes the process's stdin
                pending = None
        if readable:
            try:
                chunk = sock.recv(_CHUNK)
            except BlockingIOError:
                continue
            except ConnectionResetError:
                chunk = b""
            if not chunk:
                result.eof = True
                return
            demux.feed(chunk)
            if result.overflowed:
                return


def run_exec(
    client: Any,
    container: str,
    argv: list[str],
    *,
    user: str,
    workdir: str,
    stdin: bytes | None,
    timeout: float,
    output_limit: int,
) -> RawExec:
    """Run ``argv`` in ``container``; the caller stops leftover processes when it timed out or overflowed.

    Raises the SDK's ``docker.errors.APIError``/``NotFound`` when the container is gone; the caller maps
    that to `SandboxError`.
    """
    deadline = time.monotonic() + timeout
    exec_id = client.exec_create(container, argv, stdin=stdin is not None, user=user, workdir=workdir)["Id"]
    raw = client.exec_start(exec_id, socket=True)
    result = RawExec(CappedBuffer(output_limit), CappedBuffer(output_limit))
    sock = _socket_of(raw)
    try:
        _pump(sock, stdin, deadline, result)
    finally:
        sock.close()
        raw.close()
    if result.eof:
        result.exit_code = _exit_code(client, exec_id)
    return result


def _exit_code(client: Any, exec_id: str) -> int | None:
    """The exit code; the engine may report ``Running`` for a moment after the stream closed."""
    for _ in range(50):
        state = client.exec_inspect(exec_id)
        if not state.get("Running"):
            code = state.get("ExitCode")
            return int(code) if code is not None else None
        time.sleep(0.002)
    return None
