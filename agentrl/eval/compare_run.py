"""Evaluating a finished training run the way it evaluated itself (``agentrl eval --run RUN``).

A run's ``config.json`` (the resolved :class:`~agentrl.run.train_config.TrainConfig`) fixes what its
in-training evaluation ran: the env or suite with its kwargs, the eval split, the first
``eval_episodes`` task keys (interleaved across suite entries), the turn and token budgets, greedy
decoding. :func:`plan_from_run` turns that into an :class:`EvalPlan` for the run's exported policy
(``RUN/hf_model``), and :func:`run_reference` reads the run's last logged evaluation, so the report can
show both numbers side by side: the exported checkpoint reproduces the run's result, or it does not.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from agentrl.errors import ConfigError
from agentrl.rollout.driver import EnvSpec, env_specs
from agentrl.types import Trajectory, load_jsonl

RUN_DECIDES = frozenset(
    {
        "env",
        "suite",
        "split",
        "episodes",
        "rollout.max_turns",
        "rollout.max_new_tokens",
        "rollout.max_context",
        "seed",
    }
)
"""EvalConfig fields that ``--run`` takes from the run's config; giving one of them too is an error
(``env_kwargs`` is not among them: it overrides single kwargs of the run's, e.g. a retriever URL)."""


@dataclass(frozen=True)
class EvalPlan:
    """Everything an evaluation needs besides the engine and the sampling settings."""

    model: str
    """A local HF folder or an alias (resolved by :func:`agentrl.models.resolve_model`)."""
    specs: list[EnvSpec]
    first_tasks: int = 0
    """Evaluate only the first N task keys (training's ``--eval-episodes``); 0: every key of the specs."""
    max_turns: int | None = None
    """The turn limit; ``None``: the suite's or the env's own (see :meth:`EnvSpec.turn_limit`)."""
    max_new_tokens: int = 256
    max_context: int = 2048
    seed: int = 0
    reference: dict[str, Any] = field(default_factory=dict)
    """The run's last logged evaluation (``step``, ``reward``, ``success``, ...); empty without ``--run``."""


def _read_json(path: Path, what: str) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(
            f"{path} not found: --run takes a training run's log folder (the --log-dir of `agentrl train`, "
            f"holding config.json, metrics.jsonl and hf_model/)"
        ) from None
    except json.JSONDecodeError as exc:
        raise ConfigError(f"{path} is not valid JSON ({exc}); is it {what}?") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path} holds a {type(data).__name__}, not {what}")
    return data


def run_reference(run_dir: Path) -> dict[str, Any]:
    """The last evaluation in ``run_dir/metrics.jsonl`` (``eval/`` prefix dropped), and the run's last step.

    Empty when the run logged no evaluation (``--eval-episodes 0``, or it stopped before one).
    """
    path = run_dir / "metrics.jsonl"
    if not path.exists():
        return {}
    last: dict[str, Any] = {}
    final_step = 0
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue  # a line cut by a kill: the ones before it still count
        step = int(record.get("step", 0))
        final_step = max(final_step, step)
        if "eval/reward" in record:
            last = {
                "step": step,
                **{k[len("eval/") :]: v for k, v in record.items() if k.startswith("eval/")},
            }
    return {**last, "final_step": final_step} if last else {}


def plan_from_run(
    run_dir: str | Path, model: str | None = None, env_kwargs: dict[str, Any] | None = None
) -> EvalPlan:
    """The plan that repeats ``run_dir``'s own evaluation on its exported policy (or on ``model``),
    with ``env_kwargs`` (if any) overriding single kwargs of the run's."""
    root = Path(run_dir)
    config = _read_json(root / "config.json", "a training run's resolved config")
    # Runs before the configs were composed logged the episode budgets at the top level.
    nested = config.get("rollout")
    rollout: dict[str, Any] = nested if isinstance(nested, dict) else config
    missing = [k for k in ("env", "eval_split", "eval_episodes") if k not in config]
    missing += [k for k in ("max_turns", "max_new_tokens") if k not in rollout]
    if missing:
        raise ConfigError(f"{root / 'config.json'} lacks {missing}: it was not written by `agentrl train`")
    if int(config["eval_episodes"]) == 0:
        raise ConfigError(
            f"{root} ran with --eval-episodes 0: it has no evaluation to repeat. Evaluate its policy "
            f"directly: agentrl eval --model {root / 'hf_model'} --suite ... (or --suite none --env ...)"
        )
    if model is None:
        exported = root / "hf_model"
        if not (exported / "config.json").exists():
            raise ConfigError(
                f"{exported} holds no exported policy: the run stopped before its end or ran with "
                f"--no-export-hf. Resume it to the end (`agentrl train ... --resume`), or pass --model with "
                f"the folder to evaluate."
            )
        model = str(exported)
    kwargs = {**(config.get("env_kwargs") or {}), **(env_kwargs or {})}
    specs = env_specs(config["env"], config.get("suite"), config["eval_split"], kwargs)
    return EvalPlan(
        model=model,
        specs=specs,
        # --eval-prompt-data: the run evaluated every prompt of its eval datasets (Run.start)
        first_tasks=0 if _evaluates_every_prompt(config) else int(config["eval_episodes"]),
        max_turns=None if rollout["max_turns"] is None else int(rollout["max_turns"]),
        max_new_tokens=int(rollout["max_new_tokens"]),
        max_context=int(rollout.get("max_context", 2048)),
        seed=int(config.get("seed", 0)),
        reference=run_reference(root),
    )


def _evaluates_every_prompt(config: dict[str, Any]) -> bool:
    """A run with eval datasets (--eval-prompt-data, --eval-config) evaluated every prompt of them."""
    data = config.get("data") or {}
    return bool(data.get("eval_prompt_data") or data.get("eval_config"))


COMPARED = ("reward", "success", "turns", "tool_calls", "response_tokens", "total_tokens", "episodes")
"""Metrics shown side by side: the run's ``eval/`` ones and the same :func:`rollout_metrics` of this run."""


def episode_agreement(run_dir: Path, step: int, trajectories: Sequence[Trajectory]) -> dict[str, int]:
    """Episode by episode against the run's dump of its evaluation at ``step`` (``eval_rollouts/``):
    how many episodes matched by task and sample have the very same sampled tokens, and the same reward.

    Empty when the run has no dump of that evaluation (runs before dumps existed).
    """
    path = run_dir / "eval_rollouts" / f"step_{step:06d}.jsonl"
    if not path.exists():
        return {}
    theirs = {(t.task_id, t.sample_index): t for t in load_jsonl(path)}
    pairs = [
        (t, theirs[(t.task_id, t.sample_index)])
        for t in trajectories
        if (t.task_id, t.sample_index) in theirs
    ]
    return {
        "matched": len(pairs),
        "run_episodes": len(theirs),
        "same_tokens": sum(a.response_ids == b.response_ids for a, b in pairs),
        "same_reward": sum(a.reward == b.reward for a, b in pairs),
    }


def comparison_lines(
    reference: dict[str, Any], mine: dict[str, float], agreement: dict[str, int] | None = None
) -> list[str]:
    """A small Markdown table of the run's last evaluation next to this one, and the episode agreement."""
    if not reference:
        return ["The run logged no evaluation to compare with."]
    lines = [
        f"| metric | run's eval (step {reference['step']}) | this eval |",
        "|---|---:|---:|",
        *(
            f"| {key} | {float(reference.get(key, float('nan'))):.4f} | {float(mine.get(key, float('nan'))):.4f} |"
            for key in COMPARED
        ),
    ]
    if agreement:
        lines.append(
            f"\nEpisode by episode ({agreement['matched']} of the run's {agreement['run_episodes']} matched by "
            f"task): {agreement['same_tokens']} with the very same sampled tokens, {agreement['same_reward']} "
            f"with the same reward."
        )
    if reference["step"] != reference.get("final_step", reference["step"]):
        lines.append(
            f"\nNote: the run's last evaluation was at step {reference['step']}, but it trained until step "
            f"{reference['final_step']}; the exported policy is the final one."
        )
    return lines


def run_comparison(run_dir: Path, plan: EvalPlan, trajectories: Sequence[Trajectory]) -> dict[str, Any]:
    """This evaluation next to the run's own last one: metrics, episode agreement, Markdown lines."""
    from agentrl.run.metrics import rollout_metrics

    measured = {
        k: v for k, v in rollout_metrics(trajectories, prefix="").items() if not k.startswith("status_")
    }
    step = plan.reference.get("step")
    agreement = episode_agreement(run_dir, step, trajectories) if step is not None else {}
    return {
        "dir": str(run_dir),
        "reference": plan.reference,
        "metrics": measured,
        "agreement": agreement,
        "comparison": comparison_lines(plan.reference, measured, agreement),
    }
