"""What a run reports: per-rollout metrics, a progress bar, TensorBoard + JSONL logs, dumps, plot, summary.

Everything a run logs goes through :class:`MetricsLogger`, one flat ``{name: float}`` dict per rollout
step, with names grouped by prefix (``rollout/``, ``train/``, ``time/``, ``eval/``). The same dicts are
written to ``metrics.jsonl`` (one line per step, for scripts), to TensorBoard and into the progress bar,
so the three never disagree.
"""

from __future__ import annotations

import json
import math
import re
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
    components = sorted({k for t in ok for k in t.metrics if k.startswith("reward/")})
    for key in components:  # a reward's dict components (prompt-data env), e.g. reward/format
        out[key] = _mean([float(t.metrics[key]) for t in ok if key in t.metrics])
    counts = Counter(t.status for t in trajectories)
    for status in Status:
        out[f"status_{status.value}"] = float(counts.get(status, 0))
    return {prefix + k: v for k, v in out.items()}


def engine_metrics(before: dict[str, float], after: dict[str, float], wall_s: float) -> dict[str, float]:
    """``engine/`` metrics of one rollout from the embedded engine's counters before and after it: where
    the engine's worker spent the rollout (prefill, decode, or waiting for the envs), its mean decode
    batch and its prefix-cache hit rate; weight updates that landed in it (``engine/weight_updates``,
    ``engine/update_running``: requests they landed under, ``engine/update_s``: generation stood still
    for them, ``engine/update_wait_s``: they waited for a step to end). Counters summed over several
    engines (``engines`` among them) give ``engine/busy_frac`` per engine. Empty for engines without
    counters (SGLang)."""
    if not before or not after:
        return {}
    engines = float(after.get("engines", 1.0))
    d = {k: float(after.get(k, 0.0)) - float(before.get(k, 0.0)) for k in after if k != "engines"}
    busy = (d.get("prefill_s", 0.0) + d.get("decode_s", 0.0)) / engines
    offered = d.get("prefill_tokens", 0.0) + d.get("cached_tokens", 0.0)
    steps = d.get("decode_steps", 0.0)
    out = {f"engine/{k}": v for k, v in d.items()}
    out["engine/busy_frac"] = busy / wall_s if wall_s > 0 else 0.0
    out["engine/mean_decode_batch"] = d.get("decode_tokens", 0.0) / steps if steps else 0.0
    prefills = d.get("prefills", 0.0)
    out["engine/mean_prefill_batch"] = d.get("prefill_requests", 0.0) / prefills if prefills else 0.0
    out["engine/prefix_hit_rate"] = d.get("cached_tokens", 0.0) / offered if offered else 0.0
    out["engine/decode_tokens_per_s"] = d.get("decode_tokens", 0.0) / wall_s if wall_s > 0 else 0.0
    return out


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k from ``n`` samples of which ``c`` succeeded (Chen et al. 2021, HumanEval).

    ``1 - C(n - c, k) / C(n, k)``: the chance that at least one of ``k`` samples drawn without
    replacement from the ``n`` succeeds.
    """
    if k > n:
        raise ValueError(f"pass@{k} needs at least {k} samples per task, got {n}")
    if n - c < k:
        return 1.0
    return 1.0 - math.comb(n - c, k) / math.comb(n, k)


def solved(t: Trajectory) -> bool:
    """Whether an episode solved its task: the env's ``success``, else a positive return; a FAILED or
    ABORTED episode never did."""
    value = t.metrics.get("success")
    return t.trainable and (bool(value) if value is not None else t.reward > 0)


def powers_of_two_upto(n: int) -> list[int]:
    """The k of pass@k reported for ``n`` samples per task: 1, 2, 4, ... up to ``n``."""
    return [k for k in (2**i for i in range(12)) if k <= n]


def dataset_metrics(trajectories: Sequence[Trajectory], prefix: str = "eval/") -> dict[str, float]:
    """Per dataset of the prompt-data env (``--eval-prompt-data NAME PATH``): ``NAME/mean@n`` (reward
    averaged over each prompt's n samples, then over prompts), ``NAME/pass@k`` for k = 1, 2, 4 .. n
    (success), ``NAME/episodes`` and ``NAME/failed``. FAILED episodes (a reward that raised) count as
    reward 0 and unsolved. Trajectories of other envs are ignored."""
    from agentrl.envs.prompt_data_config import PROMPT_DATA_ID, dataset_of

    by_dataset: dict[str, dict[str, list[Trajectory]]] = {}
    for t in trajectories:
        if t.env_id == PROMPT_DATA_ID:
            by_dataset.setdefault(dataset_of(t.task_id), {}).setdefault(t.task_id, []).append(t)
    out: dict[str, float] = {}
    for name, tasks in by_dataset.items():
        n = min(len(samples) for samples in tasks.values())
        rewards = [_mean([t.reward if t.trainable else 0.0 for t in s]) for s in tasks.values()]
        out[f"{prefix}{name}/mean@{n}"] = _mean(rewards)
        for k in powers_of_two_upto(n):
            per_task = [pass_at_k(len(s), sum(solved(t) for t in s), k) for s in tasks.values()]
            out[f"{prefix}{name}/pass@{k}"] = _mean(per_task)
        episodes = [t for s in tasks.values() for t in s]
        out[f"{prefix}{name}/episodes"] = float(len(episodes))
        out[f"{prefix}{name}/failed"] = float(sum(t.status == Status.FAILED for t in episodes))
    return out


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


_PER_DATASET = re.compile(r"^eval/[^/]+/(mean|pass)@\d+$")


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
        per_dataset = sorted(k for k in evals[-1] if _PER_DATASET.match(k) and evals[-1][k] is not None)
        first, last = evals[0]["step"], evals[-1]["step"]
        for key in per_dataset:
            before, after = evals[0].get(key), evals[-1][key]
            if before is not None and len(evals) > 1:
                lines.append(
                    f"eval  {key[5:]:<16} step {first:>3} {before:8.3f}  ->  step {last:>3} {after:8.3f}  "
                    f"({after - before:+.3f})"
                )
            else:
                lines.append(f"eval  {key[5:]:<16} step {last:>3} {after:8.3f}")
    if len(lines) == 1:
        lines.append("no rollouts were logged")
    return "\n".join(lines)
