"""Token-in/token-out invariants of the rollout controller, property-tested on real tokenizers.

For random tool-using conversations (random texts, stop kinds, observations, budgets) driven by a
scripted engine, on SmolLM2's tokenizer and the tiny GPT-2's:

* the ids decode to exactly the chat template's rendering of the conversation (up to the template's
  closing of the final assistant turn);
* mask 1 exactly on the sampled ids (with the engine's logprobs), 0 on prompt and observation ids;
* equal lengths; the token budget is never exceeded and ends the episode TRUNCATED.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from rollout_harness import ScriptedEngine, ScriptedEnv, ScriptTurn, check_trajectory, lookup, turn_spans
from transformers import AutoTokenizer

from agentrl.models import make_tiny_gpt2, resolve_model
from agentrl.rollout.controller import RolloutConfig, RolloutController
from agentrl.tools.render import render_prompt
from agentrl.types import Status, Trajectory

_TOKENIZERS: dict[str, Any] = {}


def get_tokenizer(name: str, tmp_root: Path) -> Any:
    if name not in _TOKENIZERS:
        folder = resolve_model("smollm2-135m") if name == "smollm2" else make_tiny_gpt2(tmp_root / "tiny")
        _TOKENIZERS[name] = AutoTokenizer.from_pretrained(folder)
    return _TOKENIZERS[name]


@pytest.fixture(scope="module", params=["smollm2", "tiny-gpt2"])
def tokenizer(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Any:
    return get_tokenizer(request.param, tmp_path_factory.mktemp("tok"))


_ALPHABET = st.sampled_from([*'abc xyz0123\n\t.,{}":<>/ é✓数', "<search>", "</call>", " the", "  "])
_TEXT = st.lists(_ALPHABET, min_size=0, max_size=25).map("".join)


@st.composite
def scripts(draw: st.DrawFn) -> list[ScriptTurn]:
    n = draw(st.integers(1, 4))
    turns = []
    for i in range(n):
        end = draw(st.sampled_from(["eos", "stop", "none"]))
        text = draw(_TEXT) + ("</call>" if end == "stop" else "")
        obs: list[dict[str, str]] = []
        if i < n - 1:
            roles = draw(st.lists(st.sampled_from(["tool", "user"]), min_size=1, max_size=2))
            obs = [{"role": r, "content": draw(_TEXT)} for r in roles]
        turns.append(ScriptTurn(text=text, end=end, observation=obs))
    return turns


def run(env: ScriptedEnv, engine: ScriptedEngine, tokenizer: Any, config: RolloutConfig) -> Trajectory:
    controller = RolloutController(engine, tokenizer, config)
    return asyncio.run(controller.run_episode(env, task_id="t0", group_id="g", env_id="scripted"))


def check_scripted(traj: Trajectory, env: ScriptedEnv, engine: ScriptedEngine, tokenizer: Any) -> None:
    """The generic invariants, plus: sampled ids are the script's, with the engine's logprobs."""
    check_trajectory(traj, env, tokenizer)
    assert traj.status is not Status.FAILED, traj.error
    pos = 0
    for k, (sampled, obs) in enumerate(turn_spans(traj)):
        assert sampled == engine.turn_ids(engine.script[k])[: len(sampled)]
        assert traj.rollout_logprobs[pos : pos + len(sampled)] == [
            -(i + 1) / 100 for i in range(len(sampled))
        ]
        pos += len(sampled) + len(obs)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(script=scripts(), inline=st.booleans(), max_new=st.integers(4, 40))
def test_tokens_match_template(tokenizer: Any, script: list[ScriptTurn], inline: bool, max_new: int) -> None:
    env = ScriptedEnv(script, inline=inline)
    engine = ScriptedEngine(tokenizer, script)
    traj = run(env, engine, tokenizer, RolloutConfig(max_new_tokens=max_new, max_context=100_000))
    check_scripted(traj, env, engine, tokenizer)
    assert traj.status in (Status.COMPLETED, Status.TRUNCATED)
    if traj.status is Status.COMPLETED:
        assert traj.reward == 1.0 and len(traj.turns) == len(script)
    # Each request continued exactly the ids so far, with the env's stop strings.
    for k, (input_ids, sampling) in enumerate(engine.calls):
        assert sampling.stop == ("</call>",)
        consumed = sum(t["n_sampled"] + t["n_obs"] for t in traj.turns[:k])
        assert input_ids == traj.prompt_ids + traj.response_ids[:consumed]


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(script=scripts(), inline=st.booleans(), slack=st.integers(0, 60), max_new=st.integers(1, 30))
def test_budget_never_exceeded(
    tokenizer: Any, script: list[ScriptTurn], inline: bool, slack: int, max_new: int
) -> None:
    env = ScriptedEnv(script, inline=inline)
    engine = ScriptedEngine(tokenizer, script)
    prompt_len = len(render_prompt(tokenizer, env.initial_messages(env.tasks[0]), [lookup], tokenize=True))
    budget = prompt_len + slack
    traj = run(env, engine, tokenizer, RolloutConfig(max_new_tokens=max_new, max_context=budget))
    traj.check()
    assert traj.num_tokens <= budget
    assert traj.status in (Status.COMPLETED, Status.TRUNCATED)
    if traj.status is Status.COMPLETED:
        assert len(traj.turns) == len(script)
    for _, sampling in engine.calls:
        assert 1 <= sampling.max_new_tokens <= max_new
    if slack == 0:
        assert traj.status is Status.TRUNCATED and not traj.response_ids and not engine.calls


def test_closing_tokens_are_masked_observation(tmp_path: Path) -> None:
    """A turn stopped on a stop string is closed by template tokens (``<|im_end|>\\n``) with mask 0."""
    tok = get_tokenizer("tiny-gpt2", tmp_path)
    script = [
        ScriptTurn("call it</call>", end="stop", observation=[{"role": "tool", "content": "42"}]),
        ScriptTurn("42", end="eos"),
    ]
    env, engine = ScriptedEnv(script), ScriptedEngine(tok, script)
    traj = run(env, engine, tok, RolloutConfig(max_new_tokens=64))
    assert traj.status is Status.COMPLETED and traj.reward == 1.0
    n1 = traj.turns[0]["n_sampled"]
    obs = traj.response_ids[n1 : n1 + traj.turns[0]["n_obs"]]
    assert tok.decode(obs) == "<|im_end|>\n<|im_start|>tool\n42<|im_end|>\n<|im_start|>assistant\n"
    # The final turn ends with the sampled <|im_end|>, mask 1, and nothing after it.
    assert traj.response_ids[-1] == tok.eos_token_id and traj.loss_mask[-1] == 1
    assert traj.turns[0]["delta"] == "exact"
    assert traj.messages[-1] == {"role": "assistant", "content": "42"}
