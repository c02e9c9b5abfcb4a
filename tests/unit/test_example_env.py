"""The template env agentrl/Calculator-v0: tasks, the tool, the info keys, one full episode."""

from __future__ import annotations

import agentrl
from agentrl.envs.example import calculator


def call(a: object, op: str, b: object) -> str:
    return (
        f'<tool_call>{{"name": "calculator", "arguments": {{"a": {a}, "op": "{op}", "b": {b}}}}}</tool_call>'
    )


def test_tasks_are_deterministic_and_splits_differ() -> None:
    train = agentrl.make("calculator", num_tasks=5).unwrapped.tasks
    again = agentrl.make("calculator", num_tasks=5).unwrapped.tasks
    test = agentrl.make("calculator", split="test", num_tasks=5).unwrapped.tasks
    assert [t.prompt for t in train] == [t.prompt for t in again]
    assert {t.prompt for t in train}.isdisjoint(t.prompt for t in test)
    for t in train:  # the prompt's expression, evaluated by Python, is the gold answer
        assert t.prompt.startswith("What is ") and t.prompt.endswith("?")
        assert eval(t.prompt[len("What is ") : -1]) == t.answer


def test_calculator_schema_and_results() -> None:
    params = calculator.schema["function"]["parameters"]
    assert params["properties"]["op"] == {
        "type": "string",
        "enum": ["+", "-", "*", "/"],
        "description": "The operation.",
    }
    assert params["required"] == ["a", "op", "b"]
    assert calculator.call({"a": 6, "op": "*", "b": 7}) == "42"
    assert calculator.call({"a": 1, "op": "/", "b": 4}) == "0.25"
    assert calculator.call({"a": 1, "op": "/", "b": 0}).startswith(
        "Error: tool 'calculator' raised ZeroDivisionError"
    )
    assert calculator.call({"a": 1, "op": "^", "b": 2}).startswith("Error calling tool 'calculator'")


def test_an_episode_through_the_tool() -> None:
    env = agentrl.make("calculator", num_tasks=3, max_turns=5)
    messages, info = env.reset(options={"task_index": 0})
    task = env.unwrapped.task
    assert [m["role"] for m in messages] == ["system", "user"] and messages[1]["content"] == task.prompt
    assert info["tools"] == [calculator.schema] and info["observation_format"] == "chat"
    (a, op1, b), _ = task.meta["steps"]
    first = eval(f"{a} {op1} {b}")

    obs, reward, terminated, truncated, info = env.step(call(a, op1, b))
    assert obs == [{"role": "tool", "name": "calculator", "content": str(first)}]
    assert (reward, terminated, truncated) == (0.0, False, False)
    assert info["tool_calls"] == 1 and info["tool_errors"] == 0 and info["success"] is False

    obs, *_, info = env.step(call(1, "/", 0))
    assert obs[0]["content"].startswith("Error") and info["tool_errors"] == 1

    obs, *_, info = env.step('<tool_call>{"name": "calc"}</tool_call>')
    assert "unknown tool 'calc'" in obs[0]["content"] and info["tool_errors"] == 1

    obs, *_ = env.step("I am thinking.")
    assert obs[0]["role"] == "user" and "<answer>" in obs[0]["content"]

    obs, reward, terminated, truncated, info = env.step(f"<answer>{task.answer}</answer>")
    assert (obs, reward, terminated, truncated, info["success"]) == ([], 1.0, True, False, True)


def test_wrong_answer_and_turn_limit() -> None:
    env = agentrl.make("calculator", num_tasks=1, max_turns=2)
    env.reset(seed=0)
    wrong = env.unwrapped.task.answer + 1
    assert env.step(f"<answer>{wrong}</answer>")[1:3] == (0.0, True)
    env.reset(seed=0)
    assert env.step("hmm")[2:4] == (False, False)
    assert env.step("hmm")[2:4] == (False, True)
