"""``import agentrl`` registers the built-ins and the entry-point plugins with Gymnasium, in a fresh
interpreter, without importing env modules, torch or transformers; a broken plugin only warns."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest


def run_python(code: str, extra_path: Path | None = None) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ)
    if extra_path is not None:
        env["PYTHONPATH"] = os.pathsep.join(p for p in (str(extra_path), env.get("PYTHONPATH", "")) if p)
    return subprocess.run(
        [sys.executable, "-W", "always::RuntimeWarning", "-c", code],
        env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip


def test_gymnasium_make_works_after_import_agentrl() -> None:
    code = (
        "import json, sys\n"
        "import agentrl\n"
        "import gymnasium as gym\n"
        "before = sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'transformers')"
        " or m.startswith('agentrl.envs.search'))\n"
        "env = gym.make('agentrl/Search-v0')\n"
        "messages, info = env.reset(seed=0)\n"
        "print(json.dumps({'before': before, 'type': type(env.unwrapped).__name__, 'task': info['task_id'],"
        " 'ids': sorted(i for i in gym.registry if i.startswith('agentrl/'))}))\n"
    )
    done = run_python(code)
    assert done.returncode == 0, done.stderr
    out = json.loads(done.stdout.strip().splitlines()[-1])
    assert out["before"] == []  # nothing heavy, and the env's own module only when it is made
    assert out["type"] == "SearchEnv" and out["task"]
    assert {"agentrl/Search-v0", "agentrl/PythonTool-v0", "agentrl/Calculator-v0"} <= set(out["ids"])


@pytest.fixture
def plugins(tmp_path: Path) -> Path:
    """A site folder with one distribution declaring a lazy env, a broken lazy env and a broken callable."""
    dist = tmp_path / "mixed_plugin-0.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: mixed-plugin\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text(
        "[agentrl.envs]\n"
        "good/Calc-v0 = good_plugin_mod:CalculatorEnv\n"
        "good/Missing-v0 = no_such_plugin_module:Env\n"
        "register_broken = broken_plugin_mod:register\n"
    )
    (tmp_path / "good_plugin_mod.py").write_text("from agentrl.envs.example import CalculatorEnv\n")
    (tmp_path / "broken_plugin_mod.py").write_text("raise ImportError('broken on purpose')\n")
    return tmp_path


def test_plugins_register_on_import_and_a_broken_one_warns(plugins: Path) -> None:
    code = (
        "import json, sys\n"
        "import agentrl, gymnasium as gym\n"
        "from agentrl.envs import registry\n"
        "lazy = 'good_plugin_mod' not in sys.modules\n"
        "env = gym.make('good/Calc-v0', num_tasks=2)\n"
        "try:\n"
        "    agentrl.make('good/Missing-v0')\n"
        "    missing = 'made'\n"
        "except agentrl.errors.ConfigError as e:\n"
        "    missing = str(e)\n"
        "print(json.dumps({'lazy': lazy, 'tasks': len(env.unwrapped.tasks), 'missing': missing,"
        " 'errors': registry.plugin_errors,"
        " 'sources': {i.id: i.source for i in registry.registered() if i.id.startswith('good/')}}))\n"
    )
    done = run_python(code, plugins)
    assert done.returncode == 0, done.stderr
    out = json.loads(done.stdout.strip().splitlines()[-1])
    assert out["lazy"] and out["tasks"] == 2
    assert out["sources"] == {"good/Calc-v0": "plugin:mixed-plugin", "good/Missing-v0": "plugin:mixed-plugin"}
    assert "no_such_plugin_module:Env" in out["missing"] and "ModuleNotFoundError" in out["missing"]
    assert out["errors"] == {"mixed-plugin:register_broken": "ImportError: broken on purpose"}
    assert (
        "RuntimeWarning: agentrl env plugin 'register_broken' of distribution 'mixed-plugin'" in done.stderr
    )
    assert "broken on purpose" in done.stderr
