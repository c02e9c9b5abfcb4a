"""docs/reliability.md A (containment), each property against the real Docker engine and the built image.

Limits are small here so that each escape attempt hits them quickly; the defaults are the same
mechanisms with larger numbers. Every test also checks that the sandbox (or the next one) still works:
a contained attack must not end the run.
"""

from __future__ import annotations

import os
import threading
import time
import tracemalloc
from collections.abc import Iterator

import pytest

from agentrl.tools.sandbox import DockerSandbox, SandboxConfig
from agentrl.tools.sandbox.engine import connect

CONFIG = SandboxConfig(
    memory="128m",
    cpus=0.5,
    pids_limit=64,
    tmpfs_size="8m",
    shm_size="4m",
    exec_timeout_s=5.0,
    output_limit_bytes=4096,
    ttl_s=300,
    run_id="test-containment",
)


@pytest.fixture
def sandbox() -> Iterator[DockerSandbox]:
    sb = DockerSandbox(CONFIG)
    yield sb
    sb.close()


def _alive_after(sb: DockerSandbox) -> None:
    result = sb.exec("echo alive")
    assert (result.exit_code, result.stdout) == (0, "alive\n")


def _call_processes(sb: DockerSandbox) -> list[str]:
    """Command lines of the sandbox user's processes, other than the shell that lists them."""
    script = 'for p in /proc/[0-9]*; do [ "${p#/proc/}" = "$$" ] && continue; [ -O "$p" ] && tr "\\0" " " < "$p/cmdline" && echo; done'
    return [line for line in sb.exec(script).stdout.splitlines() if line.strip()]


def test_network_is_denied(sandbox: DockerSandbox) -> None:  # A1
    code = """
import socket
for host, port in [("1.1.1.1", 53), ("172.17.0.1", 2375), ("8.8.8.8", 443)]:
    try:
        socket.create_connection((host, port), timeout=2)
        print("CONNECTED", host)
    except OSError as e:
        print("refused", type(e).__name__)
try:
    socket.getaddrinfo("example.com", 80)
    print("RESOLVED")
except OSError:
    print("no dns")
"""
    result = sandbox.run_python(code)
    assert result.exit_code == 0, result.stderr
    assert "CONNECTED" not in result.stdout and "RESOLVED" not in result.stdout
    assert result.stdout.count("refused") == 3
    interfaces = sandbox.exec("ls /sys/class/net").stdout.split()
    assert interfaces == ["lo"]
    _alive_after(sandbox)


def _host_process_count() -> int:
    return sum(1 for name in os.listdir("/proc") if name.isdigit())


def _pids_current_file(container_id: str) -> str:
    """The host's pids.current of the container's cgroup (cgroup v1 pids controller, or v2)."""
    pid = connect().inspect_container(container_id)["State"]["Pid"]
    with open(f"/proc/{pid}/cgroup") as f:
        lines = [line.strip().split(":", 2) for line in f]
    v1 = [path for _, controllers, path in lines if "pids" in controllers.split(",")]
    if v1:
        return f"/sys/fs/cgroup/pids{v1[0]}/pids.current"
    return f"/sys/fs/cgroup{lines[0][2]}/pids.current"


SHELL_BOMB = "bomb() { bomb | bomb & }; bomb"
# Quiet and persistent: every process retries forever, so only agentrl's timeout and kill end it.
PYTHON_BOMB = "python3 -c 'import os\nwhile True:\n    try: os.fork()\n    except OSError: pass' 2>/dev/null"


@pytest.mark.parametrize(("bomb", "persistent"), [(SHELL_BOMB, False), (PYTHON_BOMB, True)])
def test_fork_bomb_is_contained(sandbox: DockerSandbox, bomb: str, persistent: bool) -> None:  # A2
    baseline = _host_process_count()
    pids_current = _pids_current_file(sandbox.id)
    peaks = {"host": 0, "container": 0}
    stop = threading.Event()

    def watch() -> None:
        while not stop.is_set():
            peaks["host"] = max(peaks["host"], _host_process_count())
            with open(pids_current) as f:
                peaks["container"] = max(peaks["container"], int(f.read()))

    watcher = threading.Thread(target=watch)
    watcher.start()
    start = time.monotonic()
    try:
        result = sandbox.exec(bomb, timeout=3)
    finally:
        stop.set()
        watcher.join()
    assert time.monotonic() - start < 3 + 10  # the kill that follows is bounded too
    if persistent:  # only agentrl's timeout ends it (the shell bomb may collapse by itself at the limit)
        assert result.timed_out and result.exit_code is None
        assert peaks["container"] >= CONFIG.pids_limit - 8  # it did fill the cgroup
    # Only processes *attached* by `docker exec` (agentrl's own cleanup call) may pass pids.max: the
    # kernel applies the limit to fork, not to migration into the cgroup.
    assert peaks["container"] <= CONFIG.pids_limit + 8
    with open(pids_current.replace("pids.current", "pids.max")) as f:
        assert int(f.read()) == CONFIG.pids_limit
    # The host's count is noisy (other work runs on it); without the limit a bomb adds thousands.
    assert peaks["host"] <= baseline + CONFIG.pids_limit + 200
    assert _call_processes(sandbox) == []
    _alive_after(sandbox)
    with DockerSandbox(CONFIG) as next_episode:
        _alive_after(next_episode)


def test_memory_cap_is_the_cgroup_and_reported(sandbox: DockerSandbox) -> None:  # A3
    # Raising the rlimit does not help: the cap is the cgroup's, with swap equal to memory.
    code = "import resource\nresource.setrlimit(resource.RLIMIT_AS, (-1, -1))\nb = b'x' * (600 << 20)\nprint('ALLOCATED')"
    result = sandbox.run_python(code)
    assert "ALLOCATED" not in result.stdout
    assert result.oom_killed and result.exit_code == 137
    assert "memory limit exceeded" in result.stderr
    inspected = connect().inspect_container(sandbox.id)["HostConfig"]
    assert inspected["Memory"] == inspected["MemorySwap"] == 128 * 1024**2
    small = sandbox.run_python("b = b'x' * (16 << 20); print(len(b))")
    assert small.stdout == f"{16 << 20}\n" and not small.oom_killed


def _cpu_usage_s(sb: DockerSandbox) -> float:
    """CPU seconds the container used so far, from its cgroup (v1 cpuacct or v2 cpu.stat)."""
    script = "cat /sys/fs/cgroup/cpuacct/cpuacct.usage 2>/dev/null || grep usage_usec /sys/fs/cgroup/cpu.stat"
    text = sb.exec(script).stdout.split()
    return int(text[-1]) / (1e6 if "usage_usec" in text else 1e9)


def test_cpu_quota_and_wall_timeout_leave_no_process(sandbox: DockerSandbox) -> None:  # A4
    before = _cpu_usage_s(sandbox)
    start = time.monotonic()
    spin = "import multiprocessing as m, time\ndef f():\n    while True: pass\nfor _ in range(2): m.Process(target=f).start()\ntime.sleep(60)"
    result = sandbox.run_python(spin, timeout=2)
    wall = time.monotonic() - start
    used = _cpu_usage_s(sandbox) - before
    assert result.timed_out and result.exit_code is None
    assert "time limit exceeded" in result.stderr
    assert 2 <= wall < 2 + 5
    # Two spinning processes for ~2 s would use ~4 CPU-s unthrottled; --cpus=0.5 allows ~1 (+ slack).
    assert used < 0.5 * wall + 0.6
    assert _call_processes(sandbox) == []
    _alive_after(sandbox)


def test_model_cannot_raise_limits(sandbox: DockerSandbox) -> None:  # A5
    tight = DockerSandbox(SandboxConfig(exec_timeout_s=1.0, run_id=CONFIG.run_id, memory="64m"))
    try:
        start = time.monotonic()
        result = tight.exec("sleep 30", timeout=10_000)
        assert result.timed_out and time.monotonic() - start < 1 + 4
        assert tight.exec("ulimit -v unlimited; echo ok").stdout == "ok\n"
        assert connect().inspect_container(tight.id)["HostConfig"]["Memory"] == 64 * 1024**2
    finally:
        tight.close()


def test_disk_is_bounded(sandbox: DockerSandbox) -> None:  # A6
    root = sandbox.exec("touch /etc/owned")
    assert root.exit_code != 0 and "Read-only file system" in root.stderr
    for target in ("$HOME/big", "/tmp/big", "/dev/shm/big"):
        result = sandbox.exec(f"dd if=/dev/zero of={target} bs=1M count=64")
        assert result.exit_code != 0 and "No space left on device" in result.stderr, target
        sandbox.exec(f"rm -f {target}")
    with pytest.raises(OSError, match="No space left"):
        sandbox.write_file("huge.bin", b"\0" * (9 << 20))
    # Nothing reached the host: the container's writable layer is empty.
    listed = connect().containers(filters={"id": sandbox.id}, size=True)
    assert (listed[0].get("SizeRw") or 0) < 64 * 1024
    _alive_after(sandbox)


@pytest.mark.parametrize(
    "program",
    [
        "yes",  # endless lines
        "python3 -c \"import sys\nwhile True: sys.stdout.write('x' * 65536)\"",  # one endless line
        "python3 -c \"import sys\nwhile True: sys.stderr.write('e' * 65536)\"",  # the same on stderr
    ],
)
def test_output_flood_is_capped_while_streaming(sandbox: DockerSandbox, program: str) -> None:  # A7
    tracemalloc.start()
    start = time.monotonic()
    result = sandbox.exec(program)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert result.stdout_truncated or result.stderr_truncated
    assert len(result.stdout) <= CONFIG.output_limit_bytes
    assert "output truncated" in result.stderr
    assert time.monotonic() - start < CONFIG.exec_timeout_s  # stopped at the cap, not at the timeout
    assert peak < 4 * 1024 * 1024  # the controller held a few caps' worth, not the flood
    assert _call_processes(sandbox) == []
    _alive_after(sandbox)


def test_binary_output_becomes_valid_text(sandbox: DockerSandbox) -> None:  # A8
    result = sandbox.exec(r"printf 'a\000b\377c\033[31mred\033[0m\n'; head -c 2048 /dev/urandom")
    assert result.exit_code == 0
    # NUL -> U+FFFD, the invalid byte 0xFF -> U+FFFD, colour escapes removed.
    assert result.stdout.startswith("a\ufffdb\ufffdcred\n")
    result.stdout.encode("utf-8")  # a valid string: no lone surrogates
    assert "\x00" not in result.stdout and "\x1b" not in result.stdout
    _alive_after(sandbox)


def test_least_privilege() -> None:  # A9
    os.environ["AGENTRL_HOST_CANARY"] = "secret-token"
    try:
        with DockerSandbox(CONFIG) as sb:
            status = sb.exec("cat /proc/self/status").stdout
            env = sb.exec("env").stdout
            fields = dict(line.split(":\t", 1) for line in status.splitlines() if ":\t" in line)
            assert sb.exec("id -u").stdout == "1000\n"
            assert fields["CapEff"].strip() == fields["CapBnd"].strip() == "0000000000000000"
            assert fields["NoNewPrivs"].strip() == "1"
            assert fields["Seccomp"].strip() == "2"  # the engine's default seccomp filter
            assert sb.exec("tr '\\0' ' ' < /proc/1/cmdline").stdout.startswith("/sbin/docker-init")
            assert sb.exec("test -e /var/run/docker.sock || test -e /run/docker.sock").exit_code == 1
            assert sb.exec("find / -xdev -type s 2>/dev/null").stdout == ""  # no unix socket at all
            assert sb.exec("touch /usr/bin/x").exit_code != 0  # read-only root
            assert "secret-token" not in env and "AGENTRL_HOST_CANARY" not in env
            host = connect().inspect_container(sb.id)["HostConfig"]
            assert host["CapDrop"] == ["ALL"] and host["ReadonlyRootfs"] and host["Init"]
            assert host["NetworkMode"] == "none" and host["SecurityOpt"] == ["no-new-privileges:true"]
            assert host["PidsLimit"] == CONFIG.pids_limit and not host["Privileged"]
    finally:
        del os.environ["AGENTRL_HOST_CANARY"]
