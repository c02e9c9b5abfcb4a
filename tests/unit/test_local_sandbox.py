"""LocalSandbox (opt-in subprocess backend), SandboxConfig validation, output sanitising, make_sandbox."""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from agentrl.errors import ConfigError, SandboxUnavailableError
from agentrl.tools.sandbox import LocalSandbox, SandboxConfig, SandboxPool, make_sandbox
from agentrl.tools.sandbox.output import CappedBuffer, to_text

CONFIG = SandboxConfig(
    memory="256m", exec_timeout_s=5.0, output_limit_bytes=1024, tmpfs_size="1m", run_id="unit"
)


def _running(pid: int) -> bool:
    """Whether ``pid`` still runs; a zombie (dead, not yet reaped by the host's init) does not."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] not in ("Z", "X")
    except FileNotFoundError:
        return False


@pytest.fixture
def local() -> Iterator[LocalSandbox]:
    sb = LocalSandbox(CONFIG)
    yield sb
    sb.close()


def test_runs_code_and_reports_streams(local: LocalSandbox) -> None:
    result = local.run_python("import sys\nprint(6 * 7)\nprint('oops', file=sys.stderr)\nsys.exit(3)")
    assert (result.stdout, result.stderr, result.exit_code, result.ok) == ("42\n", "oops\n", 3, False)
    assert local.exec(["echo", "a b"]).stdout == "a b\n"


def test_timeout_kills_the_whole_process_group(local: LocalSandbox) -> None:
    start = time.monotonic()
    result = local.exec("sleep 30 & echo $! > child.pid; sleep 30", timeout=0.5)
    assert result.timed_out and result.exit_code is None and "time limit exceeded" in result.stderr
    assert time.monotonic() - start < 3
    time.sleep(0.1)
    assert not _running(int(local.read_file("child.pid")))


def test_timeout_argument_cannot_exceed_the_config(local: LocalSandbox) -> None:
    tight = LocalSandbox(SandboxConfig(exec_timeout_s=0.3, run_id="unit"))
    try:
        start = time.monotonic()
        assert tight.exec("sleep 10", timeout=1e9).timed_out
        assert time.monotonic() - start < 3
    finally:
        tight.close()


def test_background_leftovers_end_with_the_call(local: LocalSandbox) -> None:
    result = local.exec("(sleep 30; echo late) & echo $! > bg.pid; echo done")
    assert result.stdout == "done\n" and result.exit_code == 0
    time.sleep(0.1)
    assert not _running(int(local.read_file("bg.pid")))


def test_output_cap_on_one_giant_line(local: LocalSandbox) -> None:
    result = local.run_python("import sys\nwhile True: sys.stdout.write('x' * 65536)")
    assert result.stdout == "x" * 1024 and result.stdout_truncated and result.exit_code is None
    assert "output truncated" in result.stderr


def test_memory_rlimit_and_no_host_environment(local: LocalSandbox) -> None:
    os.environ["AGENTRL_HOST_CANARY"] = "secret"
    try:
        env = local.exec("env").stdout
    finally:
        del os.environ["AGENTRL_HOST_CANARY"]
    assert "secret" not in env and f"HOME={local.root}" in env
    result = local.run_python("b = bytearray(1 << 30)")
    assert "MemoryError" in result.stderr and result.exit_code == 1


def test_files_stay_inside_the_sandbox_directory(local: LocalSandbox, tmp_path: Path) -> None:
    local.write_file("sub/data.bin", b"\x00\xff")
    assert local.read_file("sub/data.bin") == b"\x00\xff"
    assert local.exec("cat sub/data.bin | od -An -tx1").stdout.split() == ["00", "ff"]
    with pytest.raises(PermissionError):
        local.read_file("../../etc/passwd")
    with pytest.raises(OSError, match="exceed"):
        local.write_file("big", b"x" * (2 << 20))
    root = local.root
    local.close()
    assert not root.exists()


def test_opt_in_logs_a_warning(caplog: pytest.LogCaptureFixture) -> None:
    import agentrl.tools.sandbox.local as module

    module._warned = False
    with caplog.at_level(logging.WARNING):
        make_sandbox("local", CONFIG).close()
    assert "trusted code" in caplog.text


def test_unreachable_engine_says_how_to_fix(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("DOCKER_HOST", f"unix://{tmp_path}/missing.sock")
    with pytest.raises(SandboxUnavailableError, match=r"dockerd.*sandbox='local'"):
        make_sandbox("docker", SandboxConfig(run_id="unit-unreachable", api_timeout_s=2))
    with pytest.raises(ConfigError, match="unknown sandbox kind"):
        make_sandbox("podman")


def test_config_rejects_unknown_keys_and_bad_values() -> None:
    with pytest.raises(ConfigError, match="did you mean 'memory'"):
        SandboxConfig.from_mapping({"memroy": "1g"})
    with pytest.raises(ConfigError, match="size"):
        SandboxConfig(memory="lots")
    with pytest.raises(ConfigError, match="runsc"):
        SandboxConfig(runtime="kata")
    assert SandboxConfig(memory="1.5g").memory_bytes == 1536 * 1024**2
    assert SandboxConfig() == SandboxConfig()  # one default run id per process: one shared pool
    config = SandboxConfig(exec_timeout_s=10)
    assert (config.effective_timeout(None), config.effective_timeout(3), config.effective_timeout(99)) == (
        10,
        3,
        10,
    )


def test_text_sanitising() -> None:
    # 'é' is 2 bytes (c3 a9); cutting after c3 drops the half character instead of showing garbage.
    assert to_text("é".encode()[:1], truncated=True) == ""
    assert to_text(b"a\x00b\xffc\x1b[1;31mred\x1b[0m\x1b]0;title\x07\r\n\t") == "a\ufffdb\ufffdcred\r\n\t"
    buffer = CappedBuffer(4)
    for chunk in (b"ab", b"cdef", b"gh"):
        buffer.feed(chunk)
    assert (buffer.getvalue(), buffer.total, buffer.overflowed) == (b"abcd", 8, True)


def test_pool_caps_and_never_reuses() -> None:
    made: list[LocalSandbox] = []

    def factory() -> LocalSandbox:
        made.append(LocalSandbox(CONFIG))
        return made[-1]

    pool = SandboxPool(factory, SandboxConfig(pool_size=2, run_id="unit"))
    first, second = pool.acquire(), pool.acquire()
    assert pool.alive == 2
    with pytest.raises(Exception, match="no sandbox slot"):
        pool.acquire(timeout=0.2)
    first.close()
    third = pool.acquire(timeout=1)
    assert third.inner is not first.inner and len(made) == 3
    with pytest.raises(Exception, match="closed"):
        first.exec("true")
    second.close()
    third.close()
    assert pool.alive == 0


def test_docker_stream_demultiplexing_across_any_chunking() -> None:
    """Docker's stream format: [stream id, 0, 0, 0, big-endian u32 length] + payload, per frame."""
    import random
    import struct

    from agentrl.tools.sandbox.docker_exec import RawExec, _Demuxer

    frames = [(1, b"hello "), (2, b"warn\n"), (1, b"x" * 300_000), (2, b""), (1, b"end\n")]
    stream = b"".join(struct.pack(">BxxxL", sid, len(p)) + p for sid, p in frames)
    for seed in range(5):
        rng = random.Random(seed)
        result = RawExec(CappedBuffer(1 << 20), CappedBuffer(1 << 20))
        demux, pos = _Demuxer(result), 0
        while pos < len(stream):  # feed in random pieces, splitting headers and payloads anywhere
            step = rng.choice([1, 3, 7, 4096, 65536, 200_000])
            demux.feed(stream[pos : pos + step])
            pos += step
        assert result.stdout.getvalue() == b"hello " + b"x" * 300_000 + b"end\n"
        assert result.stderr.getvalue() == b"warn\n"
