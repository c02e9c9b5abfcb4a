"""The table and plot of `cold_start.sh`: exact match of each stage with binomial standard errors.

    python examples/search_r1/cold_start_report.py runs/cold_start

Reads the folder `cold_start.sh` filled: ``eval_base/report.json`` (the base model), ``grpo/metrics.jsonl``
(its step-0 evaluation is the fine-tuned policy, its last one the GRPO policy, on the same test tasks),
``grpo_shuffled/`` (the control, if run) and ``heldout_*/report.json``. Writes ``report.md`` and
``success.png`` there and prints the table.

The standard error of a success rate p over n tasks is sqrt(p (1 - p) / n); of a difference of two
rates, sqrt(se1^2 + se2^2) (conservative for the same tasks: it ignores their positive correlation).
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path
from typing import Any


def se(p: float, n: int) -> float:
    return math.sqrt(max(p * (1 - p), 0.0) / n) if n else math.nan


def suite_success(report: Path) -> tuple[float, int]:
    """Success over all episodes of an `agentrl eval` report (entries weighted by their episodes)."""
    envs = json.loads(report.read_text())["envs"]
    n = sum(int(e["episodes"]) for e in envs)
    return sum(float(e["success"]) * int(e["episodes"]) for e in envs) / max(n, 1), n


def run_evals(run: Path) -> list[dict[str, Any]]:
    """The evaluations logged by `agentrl train` (step, success, episodes)."""
    out = []
    for line in (run / "metrics.jsonl").read_text().splitlines():
        record = json.loads(line)
        if "eval/success" in record:
            out.append(
                {"step": record["step"], "p": record["eval/success"], "n": int(record["eval/episodes"])}
            )
    return out


def train_curve(run: Path) -> list[tuple[int, float]]:
    points = []
    for line in (run / "metrics.jsonl").read_text().splitlines():
        record = json.loads(line)
        if record.get("rollout/success") is not None:
            points.append((int(record["step"]), float(record["rollout/success"])))
    return points


def row(name: str, p: float, n: int) -> str:
    return f"| {name} | {n} | {p:.3f} | {se(p, n):.3f} |"


def diff(name: str, a: tuple[float, int], b: tuple[float, int]) -> str:
    d = b[0] - a[0]
    s = math.sqrt(se(*a) ** 2 + se(*b) ** 2)
    return f"| {name} | {d:+.3f} | {s:.3f} | {d / s if s else math.inf:+.1f} |"


def main(folder: str) -> None:
    root = Path(folder)
    base = suite_success(root / "eval_base" / "report.json")
    grpo = run_evals(root / "grpo")
    sft, final = (grpo[0]["p"], grpo[0]["n"]), (grpo[-1]["p"], grpo[-1]["n"])
    lines = [
        "Greedy exact match on the test split (unseen subjects) of the single-hop training types:",
        "",
        "| policy | tasks | exact match | s.e. |",
        "|---|---:|---:|---:|",
        row("SmolLM2-135M-Instruct (base)", *base),
        row("+ SFT on expert demonstrations", *sft),
        row(f"+ GRPO ({grpo[-1]['step']} rollouts)", *final),
    ]
    control = root / "grpo_shuffled"
    if (control / "metrics.jsonl").exists():
        shuffled = run_evals(control)
        lines.append(row("+ GRPO on shuffled rewards (control)", shuffled[-1]["p"], shuffled[-1]["n"]))
    lines += ["", "| difference | value | s.e. | in s.e. |", "|---|---:|---:|---:|"]
    lines.append(diff("SFT + GRPO over base", base, final))
    lines.append(diff("GRPO over SFT only", sft, final))
    if (control / "metrics.jsonl").exists():
        lines.append(diff("control GRPO over SFT only", sft, (shuffled[-1]["p"], shuffled[-1]["n"])))
    held = [(name, root / f"heldout_{name}" / "report.json") for name in ("base", "sft", "grpo")]
    held = [(name, path) for name, path in held if path.exists()]
    if held:
        lines += ["", "Held-out question types (demonym_of, person_kind; never trained on):", ""]
        lines += ["| policy | tasks | exact match | s.e. |", "|---|---:|---:|---:|"]
        lines += [row(name, *suite_success(path)) for name, path in held]
    text = "\n".join(lines) + "\n"
    (root / "report.md").write_text(text)
    print(text)
    plot(root, base, grpo)


def plot(root: Path, base: tuple[float, int], grpo: list[dict[str, Any]]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.5))
    curve = train_curve(root / "grpo")
    ax.plot([s for s, _ in curve], [p for _, p in curve], "o-", color="tab:gray", label="GRPO rollouts (T=1)")
    ax.errorbar(
        [e["step"] for e in grpo],
        [e["p"] for e in grpo],
        yerr=[2 * se(e["p"], e["n"]) for e in grpo],
        fmt="s",
        color="tab:green",
        capsize=4,
        label="greedy test EM (after SFT at step 0), ±2 s.e.",
    )
    ax.errorbar(
        [-0.5], [base[0]], yerr=[2 * se(*base)], fmt="s", color="tab:red", capsize=4, label="base model"
    )
    ax.set_xlabel("GRPO rollout step")
    ax.set_ylabel("exact match")
    ax.set_ylim(-0.05, 1.05)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    fig.savefig(root / "success.png", dpi=100)


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "runs/cold_start")
