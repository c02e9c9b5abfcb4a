"""`agentrl sandbox build | doctor | reap` against the real engine, and the image recipe's user setup."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

from agentrl.tools.sandbox import DockerSandbox, SandboxConfig
from agentrl.tools.sandbox.config import DEFAULT_IMAGE
from agentrl.tools.sandbox.engine import connect
from agentrl.tools.sandbox.image import IMAGE_VERSION, add_sandbox_user


def agentrl(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "agentrl", "sandbox", *args], capture_output=True, text=True, timeout=300
    )


def test_build_is_a_no_op_when_the_image_exists() -> None:
    start = time.monotonic()
    done = agentrl("build")
    assert done.returncode == 0, done.stderr
    assert f"image {DEFAULT_IMAGE} already present" in done.stdout
    assert time.monotonic() - start < 30
    labels = connect().inspect_image(DEFAULT_IMAGE)["Config"]["Labels"]
    assert labels["agentrl.image.version"] == IMAGE_VERSION


def test_doctor_reports_engine_runtimes_and_image() -> None:
    done = agentrl("doctor")
    assert done.returncode == 0, done.stdout + done.stderr
    rows = dict(line.split(None, 1) for line in done.stdout.splitlines())
    assert rows["engine"].startswith("Docker ") and "runc" in rows["runtimes"]
    assert rows["image"] == f"{DEFAULT_IMAGE} present"
    assert rows["gVisor"] in ("not configured", "available: set runtime='runsc'")


def test_reap_spares_containers_of_live_owners() -> None:
    sb = DockerSandbox(SandboxConfig(run_id="test-cli-reap"))
    done = agentrl("reap")  # the owner (this process) is alive: nothing of ours goes
    assert done.returncode == 0 and sb.exec("true").ok
    sb.close()


def test_sandbox_user_is_added_once(tmp_path: Path) -> None:
    etc = tmp_path / "etc"
    etc.mkdir()
    (etc / "passwd").write_text("root:x:0:0:root:/root:/bin/bash\n")
    (etc / "group").write_text("root:x:0:\n")
    (etc / "shadow").write_text("root:*:19000:0:99999:7:::\n")
    add_sandbox_user(tmp_path)
    add_sandbox_user(tmp_path)
    passwd = (etc / "passwd").read_text().splitlines()
    assert passwd == [
        "root:x:0:0:root:/root:/bin/bash",
        "sandbox:x:1000:1000:agentrl sandbox:/home/sandbox:/bin/sh",
    ]
    assert (etc / "shadow").read_text().splitlines()[1].startswith("sandbox:!:")  # no password: no login
    home = tmp_path / "home" / "sandbox"
    assert (home.stat().st_uid, home.stat().st_mode & 0o777) == (1000, 0o700)
