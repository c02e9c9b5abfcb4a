"""agentrl/PythonTool-v0: tasks, the python tool through a real LocalSandbox, rewards, sandbox lifecycle."""

from __future__ import annotations

import json
import math
import re

import pytest

import agentrl
from agentrl.envs.python_tool import TEST_GENERATORS, TRAIN_GENERATORS, PythonToolEnv
from agentrl.errors import ConfigError
from agentrl.tools.python_tool import format_exec_result
from agentrl.tools.sandbox import make_sandbox
from agentrl.tools.sandbox.base import ExecResult, Sandbox

pytestmark = pytest.mark.filterwarnings("ignore")


def call(code: str) -> str:
    return f"<tool_call>{json.dumps({'name': 'python', 'arguments': {'code': code}})}</tool_call>"


class CountingFactory:
    """Creates real local sandboxes and remembers them, to observe the env's sandbox lifecycle."""

    def __init__(self) -> None:
        self.made: list[Sandbox] = []
        self.closed = 0

    def __call__(self) -> Sandbox:
        sandbox = make_sandbox("local")
        original_close = sandbox.close

        def close() -> None:
            self.closed += 1
            original_close()

        sandbox.close = close  # type: ignore[method-assign]
        self.made.append(sandbox)
        return sandbox


@pytest.fixture
def env() -> PythonToolEnv:
    return PythonToolEnv(split="test", tasks_per_generator=4, sandbox="local")


def test_splits_are_deterministic_and_held_out_families_disjoint() -> None:
    a = PythonToolEnv(split="train", tasks_per_generator=3, sandbox="local")
    b = PythonToolEnv(split="train", tasks_per_generator=3, sandbox="local")
    val = PythonToolEnv(split="validation", tasks_per_generator=3, sandbox="local")
    test = PythonToolEnv(split="test", tasks_per_generator=3, sandbox="local")
    other_seed = PythonToolEnv(split="train", tasks_per_generator=3, seed=1, sandbox="local")
    assert a.tasks == b.tasks and len(a.tasks) == 3 * len(TRAIN_GENERATORS)
    assert (
        {t.meta["generator"] for t in a.tasks}
        == set(TRAIN_GENERATORS)
        == {t.meta["generator"] for t in val.tasks}
    )
    assert {t.meta["generator"] for t in test.tasks} == set(TEST_GENERATORS)
    assert not set(TRAIN_GENERATORS) & set(TEST_GENERATORS)
    assert not {t.prompt for t in a.tasks} & {t.prompt for t in val.tasks}
    assert [t.prompt for t in a.tasks] != [t.prompt for t in other_seed.tasks]
    with pytest.raises(ConfigError, match="split must be one of"):
        PythonToolEnv(split="dev")


def test_reset_shows_problem_and_tool_schema(env: PythonToolEnv) -> None:
    messages, info = env.reset(options={"task_id": "gcd-0001"})
    assert [m["role"] for m in messages] == ["system", "user"]
    assert "<answer>" in messages[0]["content"] and "GCD" in messages[1]["content"]
    assert info["observation_format"] == "chat" and info["task_id"] == "gcd-0001"
    assert info["tools"][0]["function"]["name"] == "python"
    assert info["tools"][0]["function"]["parameters"]["required"] == ["code"]


def test_python_tool_runs_code_and_reports_output(env: PythonToolEnv) -> None:
    env.reset(options={"task_index": 0})
    obs, reward, terminated, truncated, info = env.step("Let me compute." + call("print(sum(range(10)))"))
    assert obs == [{"role": "tool", "name": "python", "content": "[exit code 0]\nstdout:\n45"}]
    assert (reward, terminated, truncated) == (0.0, False, False)
    assert info["tool_calls"] == 1 and info["tool_errors"] == 0
    obs, *_ = env.step(call("import sys\nprint('partial')\nprint('warn', file=sys.stderr)\n1/0"))
    text = obs[0]["content"]
    assert text.startswith("[exit code 1]\nstdout:\npartial\nstderr:\nwarn\nTraceback")
    assert text.rstrip().endswith("ZeroDivisionError: division by zero")


def test_correct_and_wrong_answers_scored_by_the_generator(env: PythonToolEnv) -> None:
    messages, _ = env.reset(options={"task_id": "gcd-0002"})
    numbers = [int(n) for n in re.findall(r"\d+", messages[1]["content"].split(":", 1)[1])]
    gold = math.gcd(*numbers)  # computed independently of reasoning-gym
    # Ask python for the gcd, then answer with what it printed.
    obs, *_ = env.step(call(f"import math\nprint(math.gcd(*{numbers}))"))
    assert obs[0]["content"] == f"[exit code 0]\nstdout:\n{gold}"
    obs, reward, terminated, truncated, info = env.step(f"<think>done</think><answer> {gold} </answer>")
    assert (obs, reward, terminated, truncated, info["success"]) == ([], 1.0, True, False, True)
    env.reset(options={"task_id": "gcd-0002"})
    assert env.step(f"<answer>{gold + 1}</answer>")[1] == 0.0


def test_a_scorer_that_chokes_on_junk_gives_zero(env: PythonToolEnv) -> None:
    env.reset(options={"task_id": "prime_factorization-0000"})
    _, reward, terminated, _, info = env.step("<answer>not a factorization</answer>")
    assert (reward, terminated, info["success"]) == (0.0, True, False)


def test_malformed_calls_and_empty_turns_become_observations(env: PythonToolEnv) -> None:
    env.reset(seed=1)
    obs, _, _, _, info = env.step('<tool_call>{"name": "python", "arguments": {"source": "1"}}</tool_call>')
    assert obs[0]["role"] == "tool" and obs[0]["content"].startswith(
        "Error: The tool call to 'python': missing"
    )
    assert info["tool_errors"] == 1 and info["parse_error"] == "bad_arguments"
    obs, _, _, _, info = env.step("I am not sure.")
    assert obs == [
        {
            "role": "user",
            "content": "Call the `python` tool, or give your final answer inside <answer> and </answer>.",
        }
    ]
    obs, _, _, _, info = env.step(call("print(1)")[:-5])
    assert "not closed" in obs[0]["content"] and info["parse_error"] == "truncated"


def test_turn_limit_truncates() -> None:
    env = PythonToolEnv(split="test", tasks_per_generator=1, max_turns=2, sandbox="local")
    env.reset(seed=0)
    assert env.step("hmm")[2:4] == (False, False)
    assert env.step("hmm")[2:4] == (False, True)


def test_sandbox_is_lazy_and_closed_on_reset_and_close() -> None:
    factory = CountingFactory()
    env = PythonToolEnv(split="test", tasks_per_generator=1, sandbox=factory)
    env.reset(seed=0)
    env.step("no tool this turn")
    assert factory.made == []
    env.step(call("print(1)"))
    env.step(call("print(2)"))
    assert len(factory.made) == 1
    env.reset(seed=0)
    assert factory.closed == 1
    env.step(call("print(3)"))
    env.close()
    assert (len(factory.made), factory.closed) == (2, 2)


def test_scripted_episode_solves_the_task_through_the_tool() -> None:
    env = agentrl.make("python-tool", split="test", tasks_per_generator=2, sandbox="local")
    for index in range(len(env.unwrapped.tasks)):
        env.reset(options={"task_index": index})
        first, second = env.unwrapped.scripted_episode()
        obs, *_ = env.step(first)
        assert obs[0]["content"].startswith("[exit code 0]\nstdout:\n")
        assert env.step(second)[1:3] == (1.0, True)
    env.close()


def test_format_exec_result_notes_truncation_and_limits() -> None:
    long = ExecResult(stdout="a" * 50 + "z" * 50, stderr="", exit_code=0)
    text = format_exec_result(long, max_chars=30)
    assert (
        text
        == "[exit code 0]\nstdout:\n"
        + "a" * 20
        + "\n...\n"
        + "z" * 10
        + "\n[stdout truncated: showing 30 of 100 characters]"
    )
    capped = ExecResult(stdout="x", stderr="", exit_code=0, stdout_truncated=True)
    assert format_exec_result(capped).endswith("[stdout truncated: showing 1 of 1+ characters]")
    assert (
        format_exec_result(ExecResult("", "", None, timed_out=True))
        == "[timed out (the program was killed)]\n(no output)"
    )
    assert format_exec_result(ExecResult("", "", 137, oom_killed=True)).startswith(
        "[killed: memory limit exceeded]"
    )
