"""Rewards of the prompt-data env (``agentrl train --prompt-data FILE --reward NAME``).

A reward is named by ``--reward`` (or per sample by ``metadata.rm_type``, as in slime):

* a built-in: ``exact``, ``f1`` (:mod:`.text`), ``math``, ``boxed_math`` (:mod:`.maths`, math-verify);
* ``package.module:function`` (or ``file.py:function``): a function of one :class:`RewardSample`
  returning a float or a dict of components, sync or ``async``; decorated with :func:`batched` it takes
  a list of samples and returns a list (a judge, a reward model);
* ``package.module:Class``: a reward model, built once with no arguments, whose ``async score(samples)``
  returns one float or dict per sample (see :class:`RewardModel`);
* ``rm:PATH``: a Hugging Face sequence-classification model (:mod:`.model`).

A dict return must hold ``"reward"`` (the number trained on); its other numbers are logged as components
(``rollout/reward/<name>``), and a bool ``"success"`` overrides the default success test
(reward >= 1). :class:`~agentrl.envs.rewards.runner.RewardRunner` calls them (batching, async, a
concurrency limit); a reward that raises fails only its episode (FAILED, with the error).
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

from agentrl.envs.import_path import is_import_path, load_object
from agentrl.envs.rewards.maths import boxed_math, math_equal
from agentrl.envs.rewards.text import exact_match, f1_score
from agentrl.errors import AgentRLError, ConfigError
from agentrl.types import Message


@dataclass(frozen=True)
class RewardSample:
    """What a reward function sees of one episode."""

    response: str
    """The agent's final turn as text (end-of-turn tokens removed)."""
    label: Any
    """The row's ``--label-key`` value (None without one)."""
    metadata: dict[str, Any] = field(default_factory=dict)
    """The row's ``--metadata-key`` value (``rm_type`` in it chose this reward)."""
    prompt: list[Message] = field(default_factory=list)
    """The opening messages shown to the agent."""
    task_id: str = ""
    """``<dataset>/<row>``: which row of which file."""


class RewardError(AgentRLError):
    """A reward function raised or returned something that is not a reward; the episode is FAILED."""


@runtime_checkable
class RewardModel(Protocol):
    """A reward model named by ``--reward package.module:Class``: built once (no arguments), then scored in
    batches; :attr:`max_batch` and :attr:`concurrency` (optional attributes) bound the batches and the
    calls in flight."""

    async def score(self, samples: Sequence[RewardSample]) -> Sequence[float | dict[str, Any]]: ...


def batched(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Mark ``fn(samples: list[RewardSample]) -> list[float | dict]`` (sync or async) as batched: the runner
    gathers concurrent episodes' samples into one call."""
    fn.batched = True  # type: ignore[attr-defined]
    return fn


def _builtin(score: Callable[[str, Any], float]) -> Callable[[RewardSample], float]:
    @functools.wraps(score)
    def reward(sample: RewardSample) -> float:
        if sample.label is None:
            raise RewardError(f"the built-in reward compares with a label, and {sample.task_id} has none")
        return score(sample.response, sample.label)

    return reward


BUILTIN_REWARDS: dict[str, Callable[[RewardSample], float]] = {
    "exact": _builtin(exact_match),
    "f1": _builtin(f1_score),
    "math": _builtin(math_equal),
    "boxed_math": _builtin(boxed_math),
}
"""Built-in rewards by ``--reward`` name; each needs a label."""


@dataclass(frozen=True)
class Reward:
    """A resolved ``--reward``: the callable and how to call it."""

    name: str
    fn: Callable[..., Any]
    is_async: bool
    is_batched: bool
    max_batch: int = 64
    concurrency: int | None = None


def resolve_reward(name: str, flag: str = "--reward", *, build: bool = True) -> Reward:
    """The reward ``name`` means (a built-in name or an import path); raises :class:`ConfigError` naming
    ``flag`` and the built-ins when it is neither. ``build=False`` checks a reward-model class without
    building it (the input checks run before any model loads)."""
    if name in BUILTIN_REWARDS:
        return Reward(name, BUILTIN_REWARDS[name], is_async=False, is_batched=False)
    if name.startswith("rm:"):  # a sequence-classification reward model at a path
        from agentrl.envs.rewards.model import model_reward

        if not build:
            model_reward(name, build=False)
            return Reward(name, model_reward, True, True)
        if name not in _models:
            _models[name] = model_reward(name, build=True)
        model = _models[name]
        return Reward(name, model.score, True, True, model.max_batch, model.concurrency)
    if not is_import_path(name):
        raise ConfigError(
            f"{flag} {name!r} is not a built-in reward ({', '.join(BUILTIN_REWARDS)}) nor an import path "
            "'package.module:function' (or 'file.py:function'), nor a reward model 'rm:PATH'"
        )
    obj = load_object(name, flag)
    if inspect.isclass(obj):
        if not build:
            if not _is_async(getattr(obj, "score", None)):
                raise ConfigError(
                    f"{flag} {name!r}: a reward model class needs an `async def score(self, samples)`"
                )
            return Reward(name, obj, True, True)
        model = _build_model(obj, name, flag)
        limit = getattr(model, "concurrency", None)
        return Reward(name, model.score, True, True, int(getattr(model, "max_batch", 64)), limit)
    if not callable(obj):
        raise ConfigError(f"{flag} {name!r} names a {type(obj).__name__}, not a function or a class")
    return Reward(name, obj, _is_async(obj), bool(getattr(obj, "batched", False)))


_models: dict[str, Any] = {}
"""Reward models built in this process, by ``--reward`` value: one instance however many envs use it."""


def _build_model(cls: type, name: str, flag: str) -> Any:
    if name in _models:
        return _models[name]
    try:
        model = cls()
    except Exception as e:
        raise ConfigError(
            f"{flag} {name!r}: building the reward model failed: {type(e).__name__}: {e}"
        ) from e
    if not _is_async(getattr(model, "score", None)):
        raise ConfigError(f"{flag} {name!r}: a reward model class needs an `async def score(self, samples)`")
    _models[name] = model
    return model


def _is_async(fn: Any) -> bool:
    call = type(fn).__call__ if callable(fn) and not inspect.isroutine(fn) else None  # a callable object
    return inspect.iscoroutinefunction(fn) or inspect.iscoroutinefunction(call)


def as_components(value: Any, reward: str) -> dict[str, float]:
    """A reward function's return value as ``{"reward": float, ...}``; raises :class:`RewardError` when it
    is neither a number nor a dict with a numeric ``"reward"``."""
    if isinstance(value, bool | int | float):
        return {"reward": float(value)}
    if isinstance(value, dict) and isinstance(value.get("reward"), bool | int | float):
        out = {}
        for key, v in value.items():
            if isinstance(v, bool | int | float):
                out[str(key)] = v if isinstance(v, bool) else float(v)
        return out
    raise RewardError(
        f"reward {reward!r} returned {value!r}; it must return a number or a dict with a numeric 'reward' key"
    )


__all__ = [
    "BUILTIN_REWARDS",
    "Reward",
    "RewardError",
    "RewardModel",
    "RewardSample",
    "as_components",
    "batched",
    "boxed_math",
    "exact_match",
    "f1_score",
    "math_equal",
    "resolve_reward",
]
