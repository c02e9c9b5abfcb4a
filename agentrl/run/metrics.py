"""What a run reports: per-rollout metrics, a progress bar, TensorBoard + JSONL logs, dumps, plot, summary.

Everything a run logs goes through :class:`MetricsLogger`, one flat ``{name: float}`` dict per rollout
step, with names grouped by prefix (``rollout/``, ``train/``, ``time/``, ``eval/``). The same dicts are
written to ``metrics.jsonl`` (one line per step, for scripts), to TensorBoard and into the progress bar,
so the three never disagree.
"""

from __future__ import annotations

import json
import math
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from agentrl.types import Status, Trajectory, save_jsonl


def _mean(values: Sequence[float]) -> float:
    return float(sum(values) / len(values)) if values else float("nan")


def _success(t: Trajectory) -> float | None:
    value = t.metrics.get("success")
    return None if value is None else float(bool(value))


def _tool_calls(t: Trajectory) -> float:
    if "tool_calls" in t.metrics:
        return float(t.metrics["tool_calls"])
    return float(sum(int(turn.get("tool_calls", 0) or 0) for turn in t.turns))


def _valid_format(t: Trajectory) -> float | None:
    """Whether the env judged the episode's structure valid (envs that report ``valid_format`` only)."""
    for turn in reversed(t.turns):
        value = (turn.get("info") or {}).get("valid_format")
        if value is not None:
            return float(bool(value))
    return None


def rollout_metrics(trajectories: Sequence[Trajectory], prefix: str = "rollout/") -> dict[str, float]:
    """Means over the episodes of one rollout, plus counts by :class:`Status`.

    Reward, success, turns, tool calls and response length are averaged over *trainable* episodes
    (COMPLETED / TRUNCATED): FAILED and ABORTED ones are infrastructure faults, counted but not
    mixed into the learning signal. ``completed`` is the fraction that the env ended (for Search: an
    answer was given) rather than a turn or token limit; ``valid_format`` the fraction whose structure
    the env judged valid (NaN when the env does not say).
    """
    ok = [t for t in trajectories if t.trainable]
    successes = [s for s in (_success(t) for t in ok) if s is not None]
    formats = [f for f in (_valid_format(t) for t in ok) if f is not None]
    rewards = [t.reward for t in ok]
    reward_mean = _mean(rewards)
    out = {
        "reward": reward_mean,
        "reward_std": math.sqrt(_mean([(r - reward_mean) ** 2 for r in rewards])) if rewards else math.nan,
        "success": _mean(successes),
        "completed": _mean([float(t.status == Status.COMPLETED) for t in ok]),
        "valid_format": _mean(formats),
        "turns": _mean([float(len(t.turns)) for t in ok]),
        "tool_calls": _mean([_tool_calls(t) for t in ok]),
        "response_tokens": _mean([float(sum(t.loss_mask)) for t in ok]),
        "total_tokens": float(sum(t.num_tokens for t in trajectories)),
        "episodes": float(len(trajectories)),
    }
    counts = Counter(t.status for t in trajectories)
    for status in Status:
        out[f"status_{status.value}"] = float(counts.get(status, 0))
    return {prefix + k: v for k, v in out.items()}


class MetricsLogger:
    """Writes each step's metrics to ``metrics.jsonl``, TensorBoard and a tqdm bar."""

    def __init__(
        self, log_dir: Path, *, total_steps: int, initial_step: int = 0, progress: bool = True
    ) -> None:
        from torch.utils.tensorboard import SummaryWriter  # heavy; only when a run starts

        self.log_dir = log_dir
        log_dir.mkdir(parents=True, exist_ok=True)
        self.jsonl_path = log_dir / "metrics.jsonl"
        self._jsonl = open(self.jsonl_path, "a", encoding="utf-8")  # noqa: SIM115 (lives as long as the run)
        self._tb = SummaryWriter(str(log_dir / "tensorboard"))
        self._bar: Any = None
        if progress:
            from tqdm.auto import tqdm

            self._bar = tqdm(total=total_steps, initial=initial_step, desc="rollouts", unit="step")

    def log(self, step: int, metrics: dict[str, float]) -> None:
        """Record ``metrics`` of rollout ``step`` everywhere (NaN values are skipped in TensorBoard)."""
        record = {"step": step, **{k: _finite_or_none(v) for k, v in metrics.items()}}
        self._jsonl.write(json.dumps(record) + "\n")
        self._jsonl.flush()
        for name, value in metrics.items():
            if isinstance(value, (int, float)) and math.isfinite(value):
                self._tb.add_scalar(name, value, step)
        self._tb.flush()
        if self._bar is not None and "rollout/reward" in metrics:
            self._bar.set_postfix(
                reward=f"{metrics['rollout/reward']:.3f}",
                success=f"{metrics.get('rollout/success', math.nan):.2f}",
                refresh=False,
            )
            self._bar.update(1)

    def write(self, text: str) -> None:
        """Print a line without breaking the progress bar."""
        if self._bar is not None:
            self._bar.write(text)
        else:
            print(text, flush=True)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
        self._tb.close()
        self._jsonl.close()


def _finite_or_none(value: Any) -> Any:
    return None if isinstance(value, float) and not math.isfinite(value) else value


def read_metrics(path: Path) -> list[dict[str, Any]]:
    """The records of a ``metrics.jsonl``; a later record for the same step (after a resume) wins."""
    by_step: dict[int, dict[str, Any]] = {}
    with open(path, encoding="utf-8") as f:
        for line in f:
            if line.strip():
                record = json.loads(line)
                by_step.setdefault(int(record["step"]), {}).update(record)
    return [by_step[s] for s in sorted(by_step)]


def dump_rollouts(
    trajectories: Sequence[Trajectory], log_dir: Path, step: int, folder: str = "rollouts"
) -> Path:
    """Write one rollout's trajectories to ``<folder>/step_{step:06d}.jsonl`` (for replay and viewing;
    evaluations go to ``eval_rollouts/``, out of the way of ``--debug-train-only``)."""
    path = log_dir / folder / f"step_{step:06d}.jsonl"
    path.parent.mkdir(parents=True, exist_ok=True)
    save_jsonl(trajectories, path)
    return path


def plot_curves(records: Sequence[dict[str, Any]], path: Path) -> Path:
    """A PNG of reward and success per rollout (with eval points where present)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for ax, key in zip(axes, ("reward", "success"), strict=True):
        for prefix, style in (("rollout/", "-o"), ("eval/", "s--")):
            points = [(r["step"], r[prefix + key]) for r in records if r.get(prefix + key) is not None]
            if points:
                xs, ys = zip(*points, strict=True)
                ax.plot(xs, ys, style, label=f"{prefix.rstrip('/')} {key}", markersize=4)
        ax.set_xlabel("rollout step")
        ax.set_ylabel(key)
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


SUMMARY_KEYS = ("reward", "success", "completed", "valid_format", "tool_calls", "turns", "response_tokens")
"""What the summary compares, train and eval: reward, exact-match success, the answered (completed) and
well-formed rates, searches and turns per episode, sampled tokens per episode."""


def summarize(records: Sequence[dict[str, Any]], window: int = 3) -> str:
    """What improved: the mean of the first vs the last ``window`` rollouts, and the first vs last eval."""
    train = [r for r in records if r.get("rollout/reward") is not None]
    lines = ["== summary =="]
    if train:
        k = max(1, min(window, len(train) // 2))
        for key in SUMMARY_KEYS:
            first = _mean([r[f"rollout/{key}"] for r in train[:k] if r.get(f"rollout/{key}") is not None])
            last = _mean([r[f"rollout/{key}"] for r in train[-k:] if r.get(f"rollout/{key}") is not None])
            if not (math.isnan(first) and math.isnan(last)):
                lines.append(
                    f"train {key:<16} first {k} rollouts {first:8.3f}  ->  last {k} {last:8.3f}  ({last - first:+.3f})"
                )
    evals = [r for r in records if r.get("eval/reward") is not None]
    if evals:
        for key in SUMMARY_KEYS:
            before, after = evals[0].get(f"eval/{key}"), evals[-1].get(f"eval/{key}")
            if before is not None and after is not None:
                lines.append(
                    f"eval  {key:<16} step {evals[0]['step']:>3} {before:8.3f}  ->  step {evals[-1]['step']:>3} "
                    f"{after:8.3f}  ({after - before:+.3f})"
                )
    if len(lines) == 1:
        lines.append("no rollouts were logged")
    return "\n".join(lines)
