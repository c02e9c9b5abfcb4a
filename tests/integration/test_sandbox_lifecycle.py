"""docs/reliability.md B (lifecycle) against the real Docker engine: labels and reaping, TTL, bounded
teardown, no shared state, a sandbox dying mid-episode, and the pool cap."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor

import docker
import pytest

from agentrl.tools.sandbox import (
    DockerSandbox,
    SandboxConfig,
    SandboxDiedError,
    SandboxError,
    SandboxPool,
    make_sandbox,
)
from agentrl.tools.sandbox.engine import connect
from agentrl.tools.sandbox.reaper import reap_orphans


def _config(**overrides: object) -> SandboxConfig:
    values: dict[str, object] = {
        "run_id": f"test-{uuid.uuid4().hex[:8]}",
        "exec_timeout_s": 10.0,
        "ttl_s": 300,
    }
    values.update(overrides)
    return SandboxConfig.from_mapping(values)


def _exists(container_id: str) -> bool:
    return bool(connect().containers(all=True, filters={"id": container_id}))


def _wait_gone(container_id: str, within_s: float) -> bool:
    deadline = time.monotonic() + within_s
    while time.monotonic() < deadline:
        if not _exists(container_id):
            return True
        time.sleep(0.2)
    return False


ORPHAN_SCRIPT = """
import sys, time
from agentrl.tools.sandbox import DockerSandbox, SandboxConfig
sb = DockerSandbox(SandboxConfig(run_id=sys.argv[1]))
print(sb.id, flush=True)
time.sleep(600)
"""


def test_orphans_of_a_killed_controller_are_reaped() -> None:  # B10
    config = _config()
    controller = subprocess.Popen(
        [sys.executable, "-c", ORPHAN_SCRIPT, config.run_id], stdout=subprocess.PIPE, text=True
    )
    assert controller.stdout is not None
    orphan = controller.stdout.readline().strip()
    with DockerSandbox(config) as mine:  # a live owner's container must survive the reaping
        os.kill(controller.pid, signal.SIGKILL)  # no chance to clean up
        controller.wait()
        labels = connect().inspect_container(orphan)["Config"]["Labels"]
        assert labels["agentrl.run"] == config.run_id and labels["agentrl.sandbox"] == "1"
        assert labels["agentrl.owner.pid"] == str(controller.pid)
        assert _exists(orphan)  # killing the controller alone leaves it running
        with make_sandbox("docker", _config()) as next_start:  # a new run's first pool reaps
            assert next_start.exec("true").ok
        assert _wait_gone(orphan, 10)
        assert mine.exec("echo still here").stdout == "still here\n"
        assert reap_orphans(connect()) == []  # nothing else was orphaned


def test_ttl_dead_mans_switch() -> None:  # B11
    sb = DockerSandbox(_config(ttl_s=3))
    start = time.monotonic()
    assert sb.exec("echo up").stdout == "up\n"
    sb.exec("kill -9 -1")  # the sandbox user cannot stop the timer (it runs as another uid)
    assert _wait_gone(sb.id, 20)
    assert time.monotonic() - start >= 2.5
    with pytest.raises(SandboxDiedError):
        sb.exec("true")


def test_close_is_bounded_and_never_raises() -> None:  # B12
    config = _config(stop_timeout_s=1.0)
    busy = DockerSandbox(config)
    busy.exec("trap '' TERM; (trap '' TERM; while :; do :; done) >/dev/null 2>&1 &")
    start = time.monotonic()
    busy.close()
    busy.close()  # idempotent
    assert time.monotonic() - start < 1.0 + 10
    assert _wait_gone(busy.id, 10)

    gone = DockerSandbox(config)
    connect().remove_container(gone.id, force=True)
    gone.close()  # the container vanished first: nothing to raise

    unreachable = DockerSandbox(config)
    real = unreachable._client
    # The engine disappears mid-run (a closed socket): close logs and returns within the API timeout.
    unreachable._client = docker.APIClient(
        base_url="unix:///nonexistent/docker.sock", version="1.41", timeout=2
    )
    start = time.monotonic()
    unreachable.close()
    assert time.monotonic() - start < 10
    real.remove_container(unreachable.id, force=True)


def test_episodes_share_no_state() -> None:  # B13
    config = _config()
    with DockerSandbox(config) as first:
        first.write_file("notes.txt", "episode one")
        setup = "echo x > /tmp/t; echo y > /dev/shm/s; nohup sleep 1234 >/dev/null 2>&1 & echo started"
        assert first.exec(setup).stdout == "started\n"
        # '[1]234' matches the sleep's command line but not grep's own.
        assert first.exec("grep -l '[1]234' /proc/[0-9]*/cmdline | wc -l").stdout == "1\n"
    with DockerSandbox(config) as second:
        assert second.id != first.id
        check = "ls -A ~ /tmp /dev/shm; grep -l '[1]234' /proc/[0-9]*/cmdline 2>/dev/null | wc -l"
        assert second.exec(check).stdout.split() == ["/dev/shm:", "/home/sandbox:", "/tmp:", "0"]
        with pytest.raises(FileNotFoundError):
            second.read_file("notes.txt")


def test_container_killed_mid_episode_fails_that_episode_only() -> None:  # B14
    config = _config()
    sb = DockerSandbox(config)
    assert sb.exec("echo turn 1").ok
    connect().kill(sb.id)  # dies between steps
    start = time.monotonic()
    with pytest.raises(SandboxDiedError, match="FAILED"):
        sb.exec("echo turn 2")
    assert time.monotonic() - start < 5
    assert issubclass(SandboxDiedError, SandboxError)

    sb = DockerSandbox(config)
    threading.Timer(0.5, lambda: connect().kill(sb.id)).start()  # dies during a step
    start = time.monotonic()
    with pytest.raises(SandboxDiedError):
        sb.exec("sleep 8")
    assert time.monotonic() - start < 5  # noticed at once, not at the 10 s timeout

    with DockerSandbox(config) as next_episode:
        assert next_episode.exec("echo next").stdout == "next\n"


def test_pool_caps_concurrent_containers() -> None:  # B15
    config = _config(pool_size=4, warm=2)
    client = connect()
    pool = SandboxPool(lambda: DockerSandbox(config, client=client), config)
    peak = {"containers": 0, "alive": 0}
    stop = threading.Event()

    def watch() -> None:
        while not stop.is_set():
            running = client.containers(
                filters={"label": f"agentrl.run={config.run_id}", "status": "running"}
            )
            peak["containers"] = max(peak["containers"], len(running))
            peak["alive"] = max(peak["alive"], pool.alive)
            time.sleep(0.02)

    def episode(i: int) -> str:
        sb = pool.acquire(timeout=120)
        try:
            return sb.exec(f"echo {i}; ls -A ~ | wc -l; touch ~/mark").stdout
        finally:
            sb.close()

    watcher = threading.Thread(target=watch)
    watcher.start()
    try:
        with ThreadPoolExecutor(16) as workers:
            outputs = list(workers.map(episode, range(64)))
    finally:
        stop.set()
        watcher.join()
        pool.close()
    assert outputs == [f"{i}\n0\n" for i in range(64)]  # each episode saw a fresh home
    assert 1 <= peak["containers"] <= 4 and peak["alive"] <= 4
    assert _wait_gone_label(config.run_id, 15)


def _wait_gone_label(run_id: str, within_s: float) -> bool:
    deadline = time.monotonic() + within_s
    while time.monotonic() < deadline:
        if not connect().containers(all=True, filters={"label": f"agentrl.run={run_id}"}):
            return True
        time.sleep(0.2)
    return False
