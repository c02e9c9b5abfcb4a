"""Evaluation: run a suite's episodes, aggregate per env (success, reward, turns, pass@k), write a report.

The report is three artefacts in one folder: ``report.json`` (everything, for scripts), ``report.md``
(a Markdown table, for humans and PRs) and one ``<env>.png`` per env (bars of success / reward /
turns and the pass@k curve).
"""

from __future__ import annotations

import dataclasses
import functools
import json
from collections import Counter, defaultdict
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from agentrl.engines.config import EngineConfig
from agentrl.envs.prompt_data_config import PROMPT_DATA_ID, PromptDataConfig, dataset_of, eval_batches
from agentrl.errors import ConfigError
from agentrl.eval.compare_run import RUN_DECIDES, EvalPlan, plan_from_run, run_comparison
from agentrl.rollout.controller import RolloutConfig
from agentrl.run.metrics import pass_at_k, powers_of_two_upto
from agentrl.types import Trajectory, save_jsonl

__all__ = ["EnvReport", "EvalConfig", "make_plan", "pass_at_k", "run_eval", "summarize_env", "write_report"]


@dataclass
class EnvReport:
    """Aggregates of one suite entry."""

    env: str
    split: str
    episodes: int
    tasks: int
    success: float
    reward: float
    turns: float
    tool_calls: float
    response_tokens: float
    pass_at_k: dict[int, float] = field(default_factory=dict)
    status: dict[str, int] = field(default_factory=dict)


def _success(t: Trajectory) -> bool:
    value = t.metrics.get("success")
    return bool(value) if value is not None else t.reward > 0


def summarize_env(env: str, split: str, trajectories: Sequence[Trajectory], ks: Sequence[int]) -> EnvReport:
    """Per-env means over all episodes (FAILED / ABORTED count as failures: a broken episode did not
    solve the task) and pass@k per task, averaged over tasks."""
    n_eps = max(1, len(trajectories))
    by_task: dict[str, list[bool]] = defaultdict(list)
    for t in trajectories:
        by_task[t.task_id].append(t.trainable and _success(t))
    min_samples = min((len(v) for v in by_task.values()), default=0)
    passk = {
        k: sum(pass_at_k(len(v), sum(v), k) for v in by_task.values()) / max(1, len(by_task))
        for k in ks
        if k <= min_samples
    }
    return EnvReport(
        env=env,
        split=split,
        episodes=len(trajectories),
        tasks=len(by_task),
        success=sum(t.trainable and _success(t) for t in trajectories) / n_eps,
        reward=sum(t.reward for t in trajectories) / n_eps,
        turns=sum(len(t.turns) for t in trajectories) / n_eps,
        tool_calls=sum(float(t.metrics.get("tool_calls", 0) or 0) for t in trajectories) / n_eps,
        response_tokens=sum(sum(t.loss_mask) for t in trajectories) / n_eps,
        pass_at_k=passk,
        status=dict(Counter(t.status.value for t in trajectories)),
    )


def markdown_table(reports: Sequence[EnvReport], samples_per_task: int = 1) -> str:
    """One row per env (or eval dataset): episodes, success, reward (mean@n over the n samples per task),
    turns, tool calls, pass@k columns."""
    ks = sorted({k for r in reports for k in r.pass_at_k})
    head = [
        "env",
        "split",
        "episodes",
        "success",
        f"reward (mean@{samples_per_task})" if samples_per_task > 1 else "reward",
        "turns",
        "tool calls",
        *[f"pass@{k}" for k in ks],
    ]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in reports:
        cells = [r.env, r.split, str(r.episodes), f"{r.success:.3f}", f"{r.reward:.3f}", f"{r.turns:.2f}"]
        cells += [f"{r.tool_calls:.2f}", *[f"{r.pass_at_k[k]:.3f}" if k in r.pass_at_k else "-" for k in ks]]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def plot_env(report: EnvReport, path: Path) -> Path:
    """Bars of success / reward / turns, and pass@k against k, for one env."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(9, 3.5))
    names, values = ["success", "reward", "turns"], [report.success, report.reward, report.turns]
    left.bar(names, values, color=["tab:green", "tab:blue", "tab:gray"])
    for i, v in enumerate(values):
        left.text(i, v, f"{v:.2f}", ha="center", va="bottom")
    left.set_title(f"{report.env} ({report.split}, {report.episodes} episodes)")
    ks = sorted(report.pass_at_k)
    right.plot(ks, [report.pass_at_k[k] for k in ks], "o-")
    right.set_xlabel("k")
    right.set_ylabel("pass@k")
    right.set_ylim(0, 1.05)
    right.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def write_report(reports: Sequence[EnvReport], out_dir: Path, meta: dict[str, Any]) -> dict[str, Path]:
    """Write ``report.json``, ``report.md`` and ``<env>.png`` files into ``out_dir``; return their paths."""
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {"json": out_dir / "report.json", "markdown": out_dir / "report.md"}
    payload = {**meta, "envs": [asdict(r) for r in reports]}
    paths["json"].write_text(json.dumps(payload, indent=2) + "\n", encoding="utf-8")
    title = f"# agentrl eval: {meta.get('suite', '')} with {meta.get('model', '')}\n\n"
    comparison = meta.get("run", {}).get("comparison", [])
    run_lines = (
        "\nCompared with the run's own evaluation:\n\n" + "\n".join(comparison) + "\n" if comparison else ""
    )
    table = markdown_table(reports, int(meta.get("n_samples_per_prompt", 1)))
    paths["markdown"].write_text(title + table + run_lines, encoding="utf-8")
    for i, r in enumerate(reports):
        stem = f"{i:02d}_" + "".join(c if c.isalnum() or c in "-_" else "_" for c in r.env)
        paths[f"plot_{i}"] = plot_env(r, out_dir / f"{stem}.png")
    return paths


def _eval_rollout() -> RolloutConfig:
    return RolloutConfig(max_new_tokens=256, max_context=2048, temperature=0.0)


@dataclass(frozen=True)
class EvalConfig:
    """What ``agentrl eval`` runs; its flags are generated from these fields."""

    suite: str | None = field(default="search-heldout", metadata={"group": "task"})
    """Suite to evaluate on (a name in envs_registry/ or a YAML path); none: use --env."""
    env: str = field(default="search", metadata={"group": "task"})
    """Single env to evaluate on when --suite none."""
    env_kwargs: dict[str, Any] | None = field(default=None, metadata={"group": "task"})
    """Env constructor kwargs as JSON, applied to every suite entry over its own (e.g. a retriever URL)."""
    split: str = field(default="test", metadata={"group": "task"})
    """Split for --env (suite entries carry their own)."""
    episodes: int = field(default=0, metadata={"group": "task"})
    """Tasks per env (0: what the suite says; for --env: 100)."""
    model: str = field(default="smollm2-135m", metadata={"group": "model"})
    """Policy: a local HF folder (e.g. a run's hf_model/) or an alias."""
    n_samples_per_prompt: int = field(default=1, metadata={"group": "task"})
    """Samples per task; pass@k is reported for k = 1, 2, 4 and so on up to this."""
    rollout: RolloutConfig = field(default_factory=_eval_rollout, metadata={"group": "episode"})
    """Turn limit, token budgets, sampling (greedy by default; 1.0 when several samples and no
    --temperature) and concurrency."""
    inference: EngineConfig = field(default_factory=EngineConfig, metadata={"group": "engine"})
    """The inference engine (embedded or SGLang)."""
    seed: int = 0
    """Sampling seed."""
    out: str = "eval_report"
    """Folder for report.json, report.md, the plots and episodes.jsonl."""
    progress: bool = True
    """Show a progress bar of finished episodes (on stderr)."""
    data: PromptDataConfig = field(default_factory=PromptDataConfig, metadata={"group": "data"})
    """Evaluate on prompt files with a reward instead of a suite (--eval-prompt-data NAME PATH ...)."""
    run: str | None = None
    """A training run's log folder: repeat its own evaluation (env, kwargs, split, episodes, budgets, greedy)
    on its exported policy RUN/hf_model (or --model) and compare with the run's last logged numbers;
    --env-kwargs then overrides single kwargs of the run's (e.g. '{"retriever": "bm25"}' when its
    retrieval server is gone)."""

    def __post_init__(self) -> None:
        if self.n_samples_per_prompt < 1 or self.episodes < 0:
            raise ConfigError(
                f"--n-samples-per-prompt={self.n_samples_per_prompt} must be >= 1, --episodes >= 0"
            )


def plan_from_flags(config: EvalConfig) -> EvalPlan:
    """The plan of ``--suite`` (each entry's own split and episodes) or of ``--env`` with ``--split``."""
    from agentrl.rollout.driver import EnvSpec, env_specs

    if config.data.active:  # every eval dataset (or the --prompt-data file) through one prompt-data env
        specs = [EnvSpec(PROMPT_DATA_ID, "test", config.data.env_kwargs(), config.episodes)]
    elif config.suite:
        specs = env_specs(config.env, config.suite, "", config.env_kwargs)
    else:
        specs = [EnvSpec(config.env, config.split, dict(config.env_kwargs or {}), config.episodes or 100)]
    if config.episodes:
        specs = [EnvSpec(s.env, s.split, s.kwargs, config.episodes) for s in specs]
    r = config.rollout
    return EvalPlan(
        model=config.model,
        specs=specs,
        max_turns=r.max_turns,
        max_new_tokens=r.max_new_tokens,
        max_context=r.max_context,
        seed=config.seed,
    )


def make_plan(config: EvalConfig, given: frozenset[str] = frozenset()) -> EvalPlan:
    """The plan of ``config``; ``given`` names the flags set on the command line (checked against --run)."""
    if config.run is None:
        return plan_from_flags(config)
    clash = sorted(given & RUN_DECIDES)
    if clash:
        flags = ", ".join("--" + name.rsplit(".", 1)[-1].replace("_", "-") for name in clash)
        raise ConfigError(
            f"{flags}: with --run these come from the run's config.json, so that the evaluation repeats the "
            f"run's own; drop them, or evaluate without --run (--model RUN/hf_model --suite ... )"
        )
    return plan_from_run(config.run, config.model if "model" in given else None, config.env_kwargs)


def run_eval(config: EvalConfig, plan: EvalPlan | None = None) -> tuple[list[EnvReport], dict[str, Path]]:
    """Evaluate on every env of the plan (default: ``make_plan(config)``); write and return the report."""
    from tqdm import tqdm

    from agentrl.engines.factory import start_engine
    from agentrl.models import resolve_model
    from agentrl.rollout.driver import RolloutManager
    from agentrl.rollout.episodes import GenerationSettings

    plan = plan or make_plan(config)
    model_path = resolve_model(plan.model)
    rollout = dataclasses.replace(
        config.rollout,
        max_turns=plan.max_turns,
        max_new_tokens=plan.max_new_tokens,
        max_context=plan.max_context,
    )
    engine = functools.partial(start_engine, config.inference, model_path, seed=plan.seed)
    manager = RolloutManager(engine, model_path, [], eval_specs=plan.specs, rollout=rollout, seed=plan.seed)
    n = config.n_samples_per_prompt
    try:
        keys = manager.task_keys("eval")
        if plan.first_tasks:
            keys = keys[: plan.first_tasks]
        sampled = rollout.temperature or 1.0  # a dataset that asks for several samples samples
        batches = eval_batches(keys, config.data.eval_datasets(), n, rollout.temperature, sampled)
        total = sum(len(batch) * samples for batch, (samples, _, _) in batches)
        trajectories: list[Trajectory] = []
        with tqdm(total=total, desc="eval", unit="episode", disable=not config.progress) as bar:
            for batch, (samples, temperature, max_new_tokens) in batches:
                settings = GenerationSettings(
                    samples, temperature, rollout.top_p, max_new_tokens=max_new_tokens
                )
                trajectories += manager.generate(batch, settings, on_episode=lambda _: bar.update(1))
    finally:
        manager.close()
    ks = powers_of_two_upto(max((samples for _, (samples, _, _) in batches), default=n))
    reports = []
    for i, spec in enumerate(plan.specs):
        mine = [t for t in trajectories if t.group_id.split("/", 1)[1].startswith(f"{i}:")]
        if spec.env == PROMPT_DATA_ID:  # one report row per eval dataset
            by_dataset: dict[str, list[Trajectory]] = {}
            for t in mine:
                by_dataset.setdefault(dataset_of(t.task_id), []).append(t)
            reports += [summarize_env(name, spec.split, ts, ks) for name, ts in by_dataset.items()]
        elif mine or not plan.first_tasks:
            reports.append(summarize_env(spec.env, spec.split, mine, ks))
    source = f"the evaluation of run {config.run}" if config.run else (config.suite or config.env)
    if config.data.active and not config.run:
        names = [d.name for d in config.data.eval_datasets()]
        source = "prompt data " + ", ".join(names or [str(config.data.prompt_data)])
    meta: dict[str, Any] = {"suite": source, "model": plan.model, "n_samples_per_prompt": n}
    meta["temperature"] = rollout.temperature
    if config.run is not None:
        meta["run"] = run_comparison(Path(config.run), plan, trajectories)
    paths = write_report(reports, Path(config.out), meta)
    paths["episodes"] = Path(config.out) / "episodes.jsonl"
    save_jsonl(trajectories, paths["episodes"])  # for `agentrl view` and for comparing runs
    return reports, paths
