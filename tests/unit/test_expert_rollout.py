"""Demonstrations from an env's scripted expert (`agentrl rollout --policy expert`): tokenized as the
model's own output would be, so the token-in/token-out invariants hold on SmolLM2's real tokenizer and
chat template; and the rejection filter of `agentrl rollout --min-reward`."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from rollout_harness import ScriptedEnv, ScriptTurn, check_trajectory, run_with_driver
from transformers import AutoTokenizer

import agentrl
from agentrl.cli.rollout import keep
from agentrl.models import resolve_model
from agentrl.rollout.controller import RolloutConfig
from agentrl.rollout.driver import EnvSpec, RolloutManager
from agentrl.rollout.episodes import GenerationSettings
from agentrl.tools.render import render_prompt
from agentrl.types import Status, Trajectory


@pytest.fixture(scope="module")
def smollm2() -> Path:
    return resolve_model("smollm2-135m")


@pytest.fixture(scope="module")
def tokenizer(smollm2: Path) -> Any:
    return AutoTokenizer.from_pretrained(smollm2)


def _spans(traj: Trajectory) -> list[tuple[int, list[int]]]:
    """Runs of equal mask in the response: (mask, ids)."""
    runs: list[tuple[int, list[int]]] = []
    for tid, m in zip(traj.response_ids, traj.loss_mask, strict=True):
        if runs and runs[-1][0] == m:
            runs[-1][1].append(tid)
        else:
            runs.append((m, [tid]))
    return runs


def test_search_expert_demonstrations_are_the_models_own_tokens(smollm2: Path, tokenizer: Any) -> None:
    spec = EnvSpec("search", "train", {"hops": 1})
    manager = RolloutManager(None, smollm2, [spec], rollout=RolloutConfig(), seed=0, policy="expert")
    try:
        keys = manager.task_keys("train")[:6]
        trajectories = manager.generate(keys, GenerationSettings(1, 1.0))
    finally:
        manager.close()
    assert [t.status for t in trajectories] == [Status.COMPLETED] * 6
    for traj in trajectories:
        traj.check()
        # Replay the same task in a fresh env: the expert's turns and the observations, independently.
        env = agentrl.make("search", split="train", hops=1).unwrapped
        messages, _ = env.reset(options={"task_id": traj.task_id})
        turns, observations = [], []
        while True:
            turns.append(env.expert_action())
            obs, reward, terminated, truncated, _ = env.step(turns[-1])
            if terminated or truncated:
                break
            observations.append("".join(m["content"] for m in obs))
        assert traj.reward == reward == 1.0
        runs = _spans(traj)
        assert [m for m, _ in runs] == [1, 0, 1]  # search, information (masked), answer
        for (_, ids), text in zip(runs[0::2], turns, strict=True):
            assert ids == tokenizer.encode(text, add_special_tokens=False)  # no EOS: stopped on a tag
            assert text.endswith(("</search>", "</answer>"))
        assert tokenizer.decode(runs[1][1]) == observations[0]
        assert traj.prompt_ids == tokenizer.encode(
            render_prompt(tokenizer, messages, None), add_special_tokens=False
        )
        assert all(lp == 0.0 for lp in traj.rollout_logprobs)


def test_expert_turn_without_a_stop_string_ends_with_eos_and_keeps_chat_invariants(
    smollm2: Path, tokenizer: Any
) -> None:
    script = [
        ScriptTurn("Let me look.", observation=[{"role": "tool", "content": "found it"}]),
        ScriptTurn("The answer is 42."),
    ]

    class Expert(ScriptedEnv):
        def expert_action(self) -> str:
            return self.script[self.turn_count].text

    groups = run_with_driver(None, smollm2, lambda **kw: Expert(script, **kw), ["0:t0"], 1, policy="expert")
    traj = groups[0][0]
    assert traj.status is Status.COMPLETED
    sampled = [i for i, m in zip(traj.response_ids, traj.loss_mask, strict=True) if m]
    assert sampled[-1] == tokenizer.eos_token_id  # <|im_end|>, as the model ends a turn
    env = Expert(script)
    env.received = [t["text"] for t in traj.turns]
    check_trajectory(traj, env, tokenizer)


def test_an_env_without_an_expert_is_a_clear_error_before_anything_loads(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from agentrl.cli import main

    rc = main(["rollout", "--env", "python-tool", "--policy", "expert", "--out", str(tmp_path / "x.jsonl")])
    err = capsys.readouterr().err
    assert rc == 2 and "has no scripted expert" in err and "Traceback" not in err


def test_rejection_filter_keeps_trainable_episodes_at_or_above_the_reward() -> None:
    episodes = [
        Trajectory(prompt_ids=[1], reward=1.0),
        Trajectory(prompt_ids=[1], reward=0.5),
        Trajectory(prompt_ids=[1], reward=1.0, status=Status.FAILED),
        Trajectory(prompt_ids=[1], reward=1.0, status=Status.TRUNCATED),
        Trajectory(prompt_ids=[1], reward=0.0),
    ]
    assert [t.reward for t in keep(episodes, 1.0)] == [1.0, 1.0]
    assert [t.status for t in keep(episodes, 1.0)] == [Status.COMPLETED, Status.TRUNCATED]
    assert len(keep(episodes, 0.5)) == 3 and len(keep(episodes, None)) == 5
