"""agentrl/PythonTool-v0 with its default Docker sandbox: real isolation seen through the env."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest

import agentrl
from agentrl.errors import SandboxUnavailableError


def call(code: str) -> str:
    return f"<tool_call>{json.dumps({'name': 'python', 'arguments': {'code': code}})}</tool_call>"


@pytest.fixture
def env() -> Iterator[Any]:
    env = agentrl.make("python-tool", split="test", tasks_per_generator=2)
    env.reset(seed=0)
    try:
        env.step(call("print('up')"))
    except SandboxUnavailableError as e:
        pytest.skip(f"Docker is not available: {e}")
    yield env
    env.close()


def test_code_runs_in_a_container_without_network(env: Any) -> None:
    obs, *_ = env.step(call("import os, getpass\nprint(os.getuid() != 0, getpass.getuser() != 'root')"))
    assert obs[0]["content"] == "[exit code 0]\nstdout:\nTrue True"
    probe = (
        "import socket\ns = socket.socket()\ns.settimeout(3)\ns.connect(('1.1.1.1', 80))\nprint('connected')"
    )
    obs, *_ = env.step(call(probe))
    assert obs[0]["content"].startswith("[exit code 1]") and "connected" not in obs[0]["content"]
    assert "OSError" in obs[0]["content"] or "unreachable" in obs[0]["content"]


def test_each_episode_gets_a_fresh_sandbox(env: Any) -> None:
    obs, *_ = env.step(call("open('/tmp/mark', 'w').write('x')\nprint(open('/tmp/mark').read())"))
    assert obs[0]["content"] == "[exit code 0]\nstdout:\nx"
    env.reset(seed=1)
    obs, *_ = env.step(call("import os\nprint(os.path.exists('/tmp/mark'))"))
    assert obs[0]["content"] == "[exit code 0]\nstdout:\nFalse"
