"""Shared rollout-test helpers: a scripted env, a scripted engine and the token-level invariant check.

The engine is fake only at the edge (it emits given token ids instead of sampling); everything else
(tokenizers, chat templates, the controller) is real. :func:`check_trajectory` works with any engine
(scripted, embedded, SGLang): it rebuilds the conversation from the sampled ids and the env's
observations, independently of the controller, and renders it with the tokenizer's chat template.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

from agentrl.engines.base import GenerateOutput, SamplingParams
from agentrl.envs.base import Task, ToolEnv, TurnResult
from agentrl.tools import Tool, tool
from agentrl.tools.render import render_prompt
from agentrl.types import Message, Trajectory


@tool
def lookup(query: str) -> str:
    """Look something up.

    Args:
        query: What to look up.
    """
    return query


@dataclass
class ScriptTurn:
    """One agent turn: what the model says, how it stops, and what the env answers."""

    text: str
    end: str = "eos"
    """``"eos"``: the engine appends the model's EOS id; ``"stop"``: ``text`` ends with a stop string;
    ``"none"``: neither (the turn may run into ``max_new_tokens``)."""
    observation: list[Message] = field(default_factory=list)


class ScriptedEnv(ToolEnv):
    """Plays a fixed script: turn ``i`` answers with ``script[i].observation``; the last turn terminates."""

    stop_strings: ClassVar[tuple[str, ...]] = ("</call>",)

    def __init__(
        self,
        script: Sequence[ScriptTurn],
        *,
        inline: bool = False,
        with_tools: bool = True,
        num_tasks: int = 1,
        **kw: Any,
    ):
        self.script = list(script)
        self.with_tools = with_tools
        self.received: list[str] = []
        self.observation_format = "inline" if inline else "chat"  # type: ignore[misc]
        tasks = [Task(id=f"t{i}", prompt="What is the answer?", answer="42") for i in range(num_tasks)]
        super().__init__(tasks=tasks, max_turns=kw.pop("max_turns", len(self.script)), **kw)

    @property
    def tools(self) -> list[Tool]:
        return [lookup] if self.with_tools else []

    def initial_messages(self, task: Task) -> list[Message]:
        self.received = []  # called by reset(): pooled envs start each episode afresh
        return [{"role": "system", "content": "Be brief."}, {"role": "user", "content": task.prompt}]

    def turn(self, text: str) -> TurnResult:
        self.received.append(text)
        i = self.turn_count - 1
        last = i == len(self.script) - 1
        return TurnResult(
            messages=[] if last else list(self.script[i].observation),
            reward=1.0 if last else 0.0,
            terminated=last,
            info={"tool_calls": 1 if self.script[i].observation else 0},
        )


class ScriptedEngine:
    """Emits the token ids of the next scripted turn; logprobs are ``-(k + 1) / 100`` for token ``k``."""

    def __init__(self, tokenizer: Any, script: Sequence[ScriptTurn]) -> None:
        self.tokenizer = tokenizer
        self.script = list(script)
        self.calls: list[tuple[list[int], SamplingParams]] = []

    def turn_ids(self, turn: ScriptTurn) -> list[int]:
        ids: list[int] = self.tokenizer.encode(turn.text, add_special_tokens=False)
        return [*ids, self.tokenizer.eos_token_id] if turn.end == "eos" else ids

    async def generate(
        self, input_ids: list[int], sampling: SamplingParams, *, session_id: str | None = None
    ) -> GenerateOutput:
        turn = self.script[len(self.calls)]
        self.calls.append((list(input_ids), sampling))
        ids = self.turn_ids(turn)
        finish = "stop" if turn.end in ("eos", "stop") else "length"
        if len(ids) > sampling.max_new_tokens:
            ids, finish = ids[: sampling.max_new_tokens], "length"
        return GenerateOutput(ids, [-(k + 1) / 100 for k in range(len(ids))], finish, weight_version=3)

    async def update_weights(self, source: Any, *, version: int) -> None:
        raise NotImplementedError

    async def health(self) -> bool:
        return True

    async def pause(self) -> None: ...

    async def resume(self) -> None: ...

    async def abort(self, session_id: str | None = None) -> None: ...

    async def close(self) -> None: ...


def turn_spans(traj: Trajectory) -> list[tuple[list[int], list[int]]]:
    """(sampled ids, observation ids) of each turn, cut from the flat response by the turn records."""
    spans, pos = [], 0
    for turn in traj.turns:
        n, m = turn["n_sampled"], turn["n_obs"]
        spans.append((traj.response_ids[pos : pos + n], traj.response_ids[pos + n : pos + n + m]))
        pos += n + m
    assert pos == len(traj.response_ids), "turn records do not cover the response"
    return spans


def check_trajectory(traj: Trajectory, env: ScriptedEnv, tokenizer: Any) -> None:
    """Token-in/token-out invariants of one episode of :class:`ScriptedEnv` (any engine)."""
    traj.check()
    spans = turn_spans(traj)
    pos = 0
    for sampled, obs in spans:
        assert traj.loss_mask[pos : pos + len(sampled)] == [1] * len(sampled)
        pos += len(sampled)
        assert traj.loss_mask[pos : pos + len(obs)] == [0] * len(obs)
        assert traj.rollout_logprobs[pos : pos + len(obs)] == [0.0] * len(obs)
        pos += len(obs)
    special = set(tokenizer.all_special_ids)
    for (sampled, _), text in zip(spans, env.received, strict=False):
        assert text == tokenizer.decode(sampled), "the env must see exactly the sampled text"
    decoded = tokenizer.decode(traj.prompt_ids + traj.response_ids)
    opening = env.initial_messages(env.tasks[0])
    tools = env.tools or None
    if env.observation_format == "inline":
        body = "".join(
            tokenizer.decode(sampled)
            + ("".join(m["content"] for m in env.script[k].observation) if obs else "")
            for k, (sampled, obs) in enumerate(spans)
        )
        assert decoded == render_prompt(tokenizer, opening, tools) + body
        return
    messages = list(opening)
    for k, (sampled, obs) in enumerate(spans):
        stopped = traj.turns[k]["finish_reason"] == "stop" and sampled and sampled[-1] in special
        messages.append(
            {"role": "assistant", "content": tokenizer.decode(sampled[:-1] if stopped else sampled)}
        )
        if obs:
            messages.extend(env.script[k].observation)
    full = render_prompt(tokenizer, messages, tools, add_generation_prompt=False)
    assert isinstance(full, str) and full.startswith(decoded), (decoded, full)
    assert full[len(decoded) :] in ("", "\n", tokenizer.eos_token + "\n")
    assert traj.messages[0]["role"] == "system" and traj.messages[1:] == messages[1:]


def run_with_driver(
    engine: Any,
    model_dir: Any,
    factory: Any,
    keys: Sequence[str],
    n_samples: int,
    config: Any = None,
    policy: str = "model",
) -> list[list[Any]]:
    """Episodes through the one rollout driver (as train, eval and ``agentrl rollout`` run them): one
    group of ``n_samples`` per key, in key order. ``factory(**kwargs)`` builds the env."""
    from agentrl.rollout.controller import RolloutConfig
    from agentrl.rollout.driver import EnvSpec, RolloutManager
    from agentrl.rollout.episodes import GenerationSettings

    config = config or RolloutConfig()
    manager = RolloutManager(
        engine,
        model_dir,
        [EnvSpec("scripted", "train")],
        rollout=config,
        seed=0,
        env_factory=factory,
        policy=policy,  # type: ignore[arg-type]
    )
    try:
        out = manager.generate(keys, GenerationSettings(n_samples, config.temperature, config.top_p))
    finally:
        manager.close()
    return [out[i : i + n_samples] for i in range(0, len(out), n_samples)]
