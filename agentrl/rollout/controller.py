"""The multi-turn rollout controller: runs episodes of an env against an engine, token in, token out.

One episode (:meth:`RolloutController.run_episode`)::

    env.reset() -> messages, info                     # in a thread: envs may block on Docker
    prompt ids = chat template(messages, info["tools"])
    loop:
        engine.generate(ids, stop=info["stop"], max_new_tokens=min(per-turn cap, budget left))
        append sampled ids (mask 1, engine logprobs)
        env.step(text) -> observation, reward, terminated, truncated, info
        append observation ids (chat-template delta, or raw for "inline" envs; mask 0, logprob 0)
    until terminated (COMPLETED) / truncated or out of budget (TRUNCATED) / engine abort (ABORTED)

A bad episode is data, not a crash: an exception from the env, its sandbox or the engine ends that
episode with ``Status.FAILED`` and the error text; the batch goes on. Groups, env pooling and the dynamic
filter live in the one driver, :mod:`agentrl.rollout.driver`.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
import traceback
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Literal, TypeVar

from agentrl.engines.base import Engine, GenerateOutput, SamplingParams
from agentrl.errors import (
    ConfigError,
    EngineDeadError,
    EngineError,
    RetrievalError,
    SandboxError,
)
from agentrl.rollout.tokenize import Conversation
from agentrl.types import Message, Status, Trajectory

log = logging.getLogger(__name__)

T = TypeVar("T")


Policy = Literal["model", "expert"]
"""Who writes the agent's turns: the engine's model, or the env's scripted expert (demonstrations)."""


FailureComponent = Literal["engine", "env", "tool", "sandbox", "reward"]
"""What a FAILED episode's fault lies with (``Trajectory.metrics["failed_component"]``)."""


def failure_component(error: BaseException) -> FailureComponent:
    """Whose fault an episode's exception is: the engine (anything ``engine.generate`` raised, or a bad
    answer from it), a sandbox, a tool backend (the retriever), the reward function, else the env."""
    from agentrl.envs.rewards import RewardError

    if isinstance(error, EngineError):
        return "engine"
    if isinstance(error, SandboxError):
        return "sandbox"
    if isinstance(error, RetrievalError):
        return "tool"
    if isinstance(error, RewardError):
        return "reward"
    return "env"


@dataclass(frozen=True)
class RolloutConfig:
    """How episodes are sampled and bounded."""

    max_new_tokens: int = 512
    """Per-turn cap on sampled tokens (clamped further to what the budgets have left)."""
    max_context: int = 4096
    """Context budget: prompt + response ids of one episode never exceed it (else TRUNCATED)."""
    max_response_tokens: int | None = field(default=None, metadata={"rare": True})
    """Optional budget on response ids (sampled + observation) per episode; ``None`` = no extra cap."""
    max_turns: int | None = None
    """Turn limit. The driver builds each env with it (a user's value wins over a suite's, which wins over
    the env's default); the controller enforces the env's own ``max_turns`` and uses this only for an env
    that has none."""
    temperature: float = 1.0
    """Sampling temperature (0 = greedy)."""
    top_p: float = field(default=1.0, metadata={"rare": True})
    """Nucleus sampling threshold."""
    top_k: int = field(default=-1, metadata={"rare": True})
    """Top-k sampling (-1 = off)."""
    stop_token_ids: tuple[int, ...] = field(default=(), metadata={"rare": True})
    """Stop token ids besides the model's EOS."""
    max_concurrency: int = 64
    """Most episodes in flight at once (each holds an env instance and an engine request)."""
    seed: int | None = field(default=None, metadata={"cli": False})
    """Base sampling seed; episode ``i`` of a group samples with ``seed + i`` when set."""

    def __post_init__(self) -> None:
        if self.max_new_tokens < 1 or self.max_context < 2:
            raise ConfigError("max_new_tokens must be >= 1 and max_context >= 2")
        if self.max_turns is not None and self.max_turns < 1:
            raise ConfigError(f"max_turns must be >= 1 (or unset: the env decides), got {self.max_turns}")
        if self.max_concurrency < 1:
            raise ConfigError(f"max_concurrency must be >= 1, got {self.max_concurrency}")
        if self.temperature < 0 or not 0 < self.top_p <= 1:
            raise ConfigError("temperature must be >= 0 and top_p in (0, 1]")


class _EpisodeEnd(Exception):
    """Internal: ends the turn loop with a status (not an error)."""

    def __init__(self, status: Status, reason: str) -> None:
        super().__init__(reason)
        self.status = status


class RolloutController:
    """Runs multi-turn episodes against an :class:`~agentrl.engines.base.Engine`.

    Example::

        controller = RolloutController(engine, tokenizer, RolloutConfig(max_new_tokens=256))
        traj = await controller.run_episode(env, task_id="capital-0001", group_id="g0")
    """

    def __init__(
        self,
        engine: Engine,
        tokenizer: Any,
        config: RolloutConfig | None = None,
        *,
        policy: Policy = "model",
    ) -> None:
        self.engine = engine
        self.tokenizer = tokenizer
        self.config = config or RolloutConfig()
        self.policy = policy
        self.semaphore = asyncio.Semaphore(self.config.max_concurrency)
        # Env work (build, reset, step, close) runs on the controller's own threads, one per episode
        # slot, not on asyncio's default pool (min(32, cpus + 4) threads): an env may block for long,
        # e.g. waiting for a container from a full sandbox pool, and with more such waiters than
        # default threads the episodes that hold containers could never step again.
        self.env_threads = ThreadPoolExecutor(
            max_workers=self.config.max_concurrency + 2, thread_name_prefix="agentrl-env"
        )

    async def in_env_thread(self, fn: Callable[..., T], /, *args: Any, **kwargs: Any) -> T:
        """Run blocking env work on the controller's env threads."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self.env_threads, functools.partial(fn, *args, **kwargs))

    async def run_episode(
        self,
        env: Any,
        *,
        task_id: str | None = None,
        group_id: str = "",
        sample_index: int = 0,
        env_id: str = "",
        seed: int | None = None,
        bounded: bool = True,
    ) -> Trajectory:
        """Play one episode of ``env`` on ``task_id``; always returns a Trajectory (never raises).

        ``bounded=False`` skips the concurrency semaphore, for callers that already hold a slot
        (the group runner holds one for the env instance and the episode together).
        """
        if bounded:
            async with self.semaphore:
                return await self.run_episode(
                    env,
                    task_id=task_id,
                    group_id=group_id,
                    sample_index=sample_index,
                    env_id=env_id,
                    seed=seed,
                    bounded=False,
                )
        traj = Trajectory(prompt_ids=[], group_id=group_id, env_id=env_id, task_id=task_id or "")
        traj.sample_index = sample_index
        started = time.perf_counter()
        try:
            await self._play(env, traj, task_id, seed)
        except _EpisodeEnd as end:
            traj.status = end.status
            traj.metrics["end_reason"] = str(end)
        except Exception as e:  # a bad episode is data: record it, keep the batch going
            traj.status = Status.FAILED
            traj.error = f"{type(e).__name__}: {e}"
            traj.metrics["failed_component"] = failure_component(e)
            if isinstance(e, EngineDeadError):
                traj.metrics["engine_dead"] = True  # the driver stops the command (nothing can generate)
            log.debug("episode %s/%d failed:\n%s", group_id, sample_index, traceback.format_exc())
        traj.metrics["episode_time_s"] = time.perf_counter() - started
        return traj

    async def _play(self, env: Any, traj: Trajectory, task_id: str | None, seed: int | None) -> None:
        options = {"task_id": task_id} if task_id is not None else None
        messages, info = await self.in_env_thread(env.reset, seed=seed, options=options)
        traj.task_id = str(info.get("task_id", task_id or ""))
        conv = Conversation.start(self.tokenizer, messages, info.get("tools") or None)
        traj.prompt_ids = conv.prompt_ids
        traj.messages = conv.transcript()
        if len(conv.prompt_ids) >= self.config.max_context:
            raise _EpisodeEnd(Status.TRUNCATED, "prompt does not fit max_context")
        stop = tuple(info.get("stop") or ())
        inline = info.get("observation_format", "chat") == "inline"
        session = f"{traj.group_id}/{traj.sample_index}"
        versions: list[int] = []
        # One owner of the turn limit: an env that truncates on its own max_turns (every ToolEnv) decides;
        # config.max_turns only caps envs that set none. The driver builds envs with the resolved limit.
        limit = getattr(env.unwrapped, "max_turns", None) or self.config.max_turns
        try:
            while True:
                out = await self._generate(env, traj, stop, session, seed)
                versions.append(out.weight_version)
                turn = self._append_sampled(traj, conv, out)
                if out.finish_reason == "abort":
                    raise _EpisodeEnd(Status.ABORTED, "engine aborted generation")
                if out.finish_reason == "length" and turn["max_new_tokens"] < self.config.max_new_tokens:
                    raise _EpisodeEnd(Status.TRUNCATED, "token budget exhausted")
                observation, done = await self._step(env, traj, turn)
                if done:
                    return
                self._append_observation(traj, conv, observation, inline, turn)
                if limit is not None and len(traj.turns) >= limit:
                    raise _EpisodeEnd(Status.TRUNCATED, "max_turns reached")
        finally:
            traj.messages = conv.transcript()
            traj.weight_version = min(versions) if versions else 0
            self._summarise(traj)

    def _budget(self, traj: Trajectory) -> int:
        left = self.config.max_context - traj.num_tokens
        if self.config.max_response_tokens is not None:
            left = min(left, self.config.max_response_tokens - len(traj.response_ids))
        return left

    async def _generate(
        self, env: Any, traj: Trajectory, stop: tuple[str, ...], session: str, seed: int | None
    ) -> GenerateOutput:
        budget = self._budget(traj)
        if budget < 1:
            raise _EpisodeEnd(Status.TRUNCATED, "token budget exhausted")
        cfg = self.config
        if self.policy == "expert":
            return await self._expert_turn(env, stop, min(cfg.max_new_tokens, budget))
        base_seed = seed if seed is not None else cfg.seed
        sampling = SamplingParams(
            max_new_tokens=min(cfg.max_new_tokens, budget),
            temperature=cfg.temperature,
            top_p=cfg.top_p,
            top_k=cfg.top_k,
            stop=stop,
            stop_token_ids=cfg.stop_token_ids,
            seed=None if base_seed is None else base_seed + traj.sample_index + 1000 * len(traj.turns),
        )
        started = time.perf_counter()
        try:
            out = await self.engine.generate(
                traj.prompt_ids + traj.response_ids, sampling, session_id=session
            )
        except EngineError:
            raise
        except Exception as e:  # e.g. a dead engine actor: the engine's fault, not the env's
            raise EngineError(f"engine.generate raised {type(e).__name__}: {e}") from e
        if len(out.output_ids) != len(out.logprobs):
            raise EngineError(f"engine returned {len(out.output_ids)} ids but {len(out.logprobs)} logprobs")
        if len(out.output_ids) > sampling.max_new_tokens:
            raise EngineError(
                f"engine returned {len(out.output_ids)} ids, over max_new_tokens={sampling.max_new_tokens}"
            )
        out.meta["latency_s"] = time.perf_counter() - started
        out.meta["max_new_tokens"] = sampling.max_new_tokens
        return out

    async def _expert_turn(self, env: Any, stop: tuple[str, ...], max_new_tokens: int) -> GenerateOutput:
        """The env's scripted expert writes the turn; it is tokenized as the model's own output would be:
        the text's ids, then EOS unless the text ends on a stop string (where an engine stops without
        one). Logprob 0: the demonstration is not a sample of the policy."""
        text = await self.in_env_thread(env.unwrapped.expert_action)
        ids = list(self.tokenizer.encode(text, add_special_tokens=False))
        if not any(text.endswith(s) for s in stop) and self.tokenizer.eos_token_id is not None:
            ids.append(int(self.tokenizer.eos_token_id))
        finish = "stop" if len(ids) <= max_new_tokens else "length"
        ids = ids[:max_new_tokens]
        return GenerateOutput(
            ids, [0.0] * len(ids), finish, meta={"latency_s": 0.0, "max_new_tokens": max_new_tokens}
        )

    def _append_sampled(self, traj: Trajectory, conv: Conversation, out: GenerateOutput) -> dict[str, Any]:
        traj.response_ids.extend(out.output_ids)
        traj.loss_mask.extend([1] * len(out.output_ids))
        traj.rollout_logprobs.extend(float(x) for x in out.logprobs)
        text = conv.add_sampled(out.output_ids, stopped=out.finish_reason == "stop")
        turn: dict[str, Any] = {
            "text": text,
            "n_sampled": len(out.output_ids),
            "n_obs": 0,
            "finish_reason": out.finish_reason,
            "gen_latency_s": out.meta.get("latency_s", 0.0),
            "max_new_tokens": out.meta.get("max_new_tokens", 0),
            "weight_version": out.weight_version,
            "tool_calls": 0,
            "tool_latency_s": 0.0,
            "reward": 0.0,
        }
        if "token_versions" in out.meta:  # a weight update mid-turn (partial rollout): a version a token
            turn["token_versions"] = list(out.meta["token_versions"])
        traj.turns.append(turn)
        return turn

    async def _step(self, env: Any, traj: Trajectory, turn: dict[str, Any]) -> tuple[list[Message], bool]:
        started = time.perf_counter()
        observation, reward, terminated, truncated, info = await self.in_env_thread(env.step, turn["text"])
        turn["tool_latency_s"] = time.perf_counter() - started
        turn["reward"] = float(reward)
        turn["tool_calls"] = int(info.get("tool_calls", 0) or 0)
        turn["info"] = {k: v for k, v in info.items() if isinstance(v, (bool, int, float, str))}
        traj.reward += float(reward)
        if terminated:
            traj.status = Status.COMPLETED
            return observation, True
        if truncated:
            traj.status = Status.TRUNCATED
            traj.metrics["end_reason"] = "env truncated (turn limit)"
            return observation, True
        return observation, False

    def _append_observation(
        self,
        traj: Trajectory,
        conv: Conversation,
        observation: list[Message],
        inline: bool,
        turn: dict[str, Any],
    ) -> None:
        saved = conv.checkpoint()
        if inline:
            ids, method = conv.inline_observation(observation), "inline"
        else:
            ids, method = conv.chat_observation(observation)
        # Room for the observation and at least one sampled token, or the episode ends here.
        if len(ids) + 1 > self._budget(traj):
            conv.rollback(saved)
            raise _EpisodeEnd(Status.TRUNCATED, "observation does not fit the token budget")
        traj.response_ids.extend(ids)
        traj.loss_mask.extend([0] * len(ids))
        traj.rollout_logprobs.extend([0.0] * len(ids))
        turn["n_obs"] = len(ids)
        turn["delta"] = method

    def _summarise(self, traj: Trajectory) -> None:
        sampled = sum(traj.loss_mask)
        last_info = traj.turns[-1].get("info", {}) if traj.turns else {}
        traj.metrics.update(
            {k: v for k, v in last_info.items() if k not in ("turn", "task_id")},
            num_turns=len(traj.turns),
            sampled_tokens=sampled,
            observation_tokens=len(traj.response_ids) - sampled,
            tool_calls=sum(t["tool_calls"] for t in traj.turns),
            gen_time_s=sum(t["gen_latency_s"] for t in traj.turns),
            tool_time_s=sum(t["tool_latency_s"] for t in traj.turns),
        )
