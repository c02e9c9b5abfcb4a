"""Benchmark: where a training step's time goes (rollout, train, sync) and tokens/s, on this machine.

Runs a short real `agentrl train` (Ray actors, embedded engine by default) and prints, per rollout step,
the seconds spent generating, training and syncing weights, and tokens per second (all tokens of the
rollout over the step's wall time), then the means over the steps after the first (warm-up).

    python bench/train_step.py                                   # tiny GPT-2 on Search, 4 rollouts
    python bench/train_step.py --model smollm2-135m --num-rollouts 3
    python bench/train_step.py --engine sglang --sglang-device cpu --sglang-attention-backend torch_native \
        --sglang-disable-cuda-graph --sglang-mem-fraction-static 0.05
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

from agentrl.cli import main as agentrl_main
from agentrl.run.metrics import read_metrics

DEFAULTS = ["--env", "search", "--model", "tiny-gpt2", "--num-rollouts", "4", "--max-turns", "3"]
DEFAULTS += ["--eval-episodes", "0", "--dump-interval", "0", "--no-progress", "--no-export-hf"]
COLUMNS = ("time/rollout_s", "time/train_s", "time/sync_s", "rollout/total_tokens", "perf/tokens_per_s")


def main(argv: list[str]) -> int:
    log_dir = Path(tempfile.mkdtemp(prefix="agentrl-bench-"))
    code = agentrl_main(["train", *DEFAULTS, *argv, "--log-dir", str(log_dir)])
    if code:
        return code
    rows = [r for r in read_metrics(log_dir / "metrics.jsonl") if "time/rollout_s" in r]
    print(f"{'step':>4} {'rollout s':>10} {'train s':>9} {'sync s':>8} {'tokens':>8} {'tokens/s':>9}")
    for r in rows:
        print(
            f"{r['step']:>4} "
            + " ".join(f"{r.get(c) or 0:>{w}.2f}" for c, w in zip(COLUMNS, (10, 9, 8, 8, 9), strict=True))
        )
    warm = rows[1:] or rows
    means = [sum(r.get(c) or 0 for r in warm) / len(warm) for c in COLUMNS]
    print(
        "mean "
        + " ".join(f"{m:>{w}.2f}" for m, w in zip(means, (10, 9, 8, 8, 9), strict=True))
        + "  (steps after the first)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
