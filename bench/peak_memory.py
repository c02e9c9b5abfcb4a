"""Benchmark: the peak memory of a whole `agentrl train` run on the CPU, every process counted.

Issue 17 compares agentrl with TRL's GRPOTrainer on the same work: 8 prompts x 4 samples, 32 new tokens,
SmolLM2-135M-Instruct in fp32 on the CPU (TRL peaked at 8.4 GiB). This script runs that work as
`agentrl train`, either on a single-turn prompt file (``--work prompts``, the default and TRL's kind of
work: reasoning-gym's one-digit sums written by `examples/gsm8k/prepare_data.py`, reward `math`; the model
solves about three in four, so groups differ and every step trains) or on the multi-turn Search env
(``--work search``: up to 5 turns of 32 new tokens, documents in between, so much longer sequences), and, every
``--interval`` seconds, reads the memory of the CLI's whole process tree (the driver, Ray's GCS, raylet
and helpers, every worker and actor). It prints the peak of the sum over processes, each process's own
peak (by role), what each held at the moment of the total's peak, the step time and the weight-sync time
(``time/sync_s`` of the run's ``metrics.jsonl``, and the start-up sync of the initial weights that
warms the CPU transport, from the run's log).

Two sums are reported: PSS (``/proc/PID/smaps_rollup``: a page shared by n processes counts 1/n in each,
so the sum counts shared libraries and Ray's shared-memory object store once: the memory the run takes),
read every ``--pss-interval`` seconds because the kernel walks every page for it, and RSS (every shared
page counted in each process that maps it: an upper bound), read every ``--interval`` seconds.

    python bench/peak_memory.py                         # 3 rollouts (the first one warms up)
    python bench/peak_memory.py --json                  # one JSON object instead of the table
    python bench/peak_memory.py -- --micro-batch-tokens 1024   # flags after -- go to agentrl train
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil

ROOT = Path(__file__).resolve().parent.parent
GIB = float(1 << 30)
COMMON = [
    "--model", "smollm2-135m", "--rollout-batch-size", "8", "--n-samples-per-prompt", "4",
    "--global-batch-size", "32", "--max-new-tokens", "32", "--eval-episodes", "0", "--dump-interval", "0",
    "--no-progress", "--no-export-hf",
]  # fmt: skip
"""The work of the issue's TRL measurement; the engine and trainer run in fp32 on the CPU by default."""
PROMPTS = ["--input-key", "question", "--label-key", "answer", "--reward", "math"]


def role_of(proc: psutil.Process, root_pid: int) -> str:
    """A readable name: the CLI, a Ray actor's class (its process title), or Ray's own program."""
    if proc.pid == root_pid:
        return "agentrl CLI (driver)"
    cmd = proc.cmdline()
    if cmd and cmd[0].startswith("ray::"):
        return cmd[0].split()[0].split(".")[0]  # ray::TrainerWorker.train -> ray::TrainerWorker
    scripts = [Path(c).name for c in cmd if c.endswith(".py")]
    return scripts[0] if scripts else proc.name()


def read_pss(proc: psutil.Process) -> int | None:
    """``proc``'s PSS in bytes (``/proc/PID/smaps_rollup``), or None where the kernel does not report it."""
    try:
        return int(proc.memory_full_info().pss)
    except (psutil.AccessDenied, AttributeError):
        return None


@dataclass
class Peak:
    role: str
    rss: int = 0
    pss: int = 0


@dataclass
class Sampler:
    """The process tree's memory over time: the peak of its sum, and each process's own peak.

    RSS is read at every sample (``/proc/PID/statm``: microseconds). PSS is read at every
    ``pss_every``-th sample only: the kernel walks every page of a process for it, about 150 ms for a
    5 GiB one, and on 2 cores a sampler reading it 5 times a second slowed the run it measured.
    """

    root_pid: int
    pss_every: int = 10
    peak_rss: int = 0
    peak_pss: int = 0
    at_peak_rss: dict[int, tuple[str, int]] = field(default_factory=dict)
    at_peak_pss: dict[int, tuple[str, int]] = field(default_factory=dict)
    peak_rss_s: float = 0.0
    peak_pss_s: float = 0.0
    per_process: dict[int, Peak] = field(default_factory=dict)
    has_pss: bool = True
    samples: int = 0
    pss_samples: int = 0
    most_processes: int = 0

    def sample(self, elapsed_s: float) -> None:
        try:
            root = psutil.Process(self.root_pid)
            procs = [root, *root.children(recursive=True)]
        except psutil.NoSuchProcess:
            return
        with_pss = self.has_pss and self.samples % self.pss_every == 0
        rss_now: dict[int, tuple[str, int]] = {}
        pss_now: dict[int, tuple[str, int]] = {}
        for proc in procs:
            try:
                role = role_of(proc, self.root_pid)
                rss = int(proc.memory_info().rss)
                pss = read_pss(proc) if with_pss else None
            except (psutil.NoSuchProcess, psutil.ZombieProcess):
                continue
            peak = self.per_process.setdefault(proc.pid, Peak(role))
            peak.role = role  # an idle Ray worker becomes an actor
            rss_now[proc.pid] = (role, rss)
            peak.rss = max(peak.rss, rss)
            if with_pss and pss is None:
                self.has_pss = False
            elif pss is not None:
                pss_now[proc.pid] = (role, pss)
                peak.pss = max(peak.pss, pss)
        self.samples += 1
        self.most_processes = max(self.most_processes, len(rss_now))
        rss_total = sum(m for _, m in rss_now.values())
        if rss_total > self.peak_rss:
            self.peak_rss, self.at_peak_rss, self.peak_rss_s = rss_total, rss_now, elapsed_s
        if with_pss and self.has_pss:
            self.pss_samples += 1
            pss_total = sum(m for _, m in pss_now.values())
            if pss_total > self.peak_pss:
                self.peak_pss, self.at_peak_pss, self.peak_pss_s = pss_total, pss_now, elapsed_s


def run_and_sample(
    argv: list[str], log_dir: Path, interval_s: float, pss_interval_s: float, min_available_gib: float
) -> tuple[int, Sampler, float]:
    """Run ``agentrl train argv`` and sample its process tree until it exits; stop it (SIGTERM) when the
    machine's available memory falls under ``min_available_gib`` (a shared machine's other jobs first)."""
    out = (log_dir / "train.log").open("w")
    started = time.perf_counter()
    proc = subprocess.Popen(
        [sys.executable, "-m", "agentrl", "train", *argv, "--log-dir", str(log_dir)],
        stdout=out,
        stderr=subprocess.STDOUT,
        cwd=ROOT,
    )
    sampler = Sampler(proc.pid, pss_every=max(1, round(pss_interval_s / interval_s)))
    while proc.poll() is None:
        sampler.sample(time.perf_counter() - started)
        if psutil.virtual_memory().available < min_available_gib * GIB:
            print(f"available memory under {min_available_gib} GiB: stopping the run", file=sys.stderr)
            proc.terminate()
            proc.wait()
            break
        time.sleep(interval_s)
    out.close()
    return proc.returncode, sampler, time.perf_counter() - started


def step_times(log_dir: Path) -> dict[str, Any]:
    path = log_dir / "metrics.jsonl"
    lines = path.read_text().splitlines() if path.exists() else []
    rows = [json.loads(line) for line in lines if line]
    rows = [r for r in rows if "time/rollout_s" in r]
    keys = ("time/rollout_s", "time/train_s", "time/sync_s")
    steps = [{k: float(r.get(k) or 0.0) for k in keys} for r in rows]
    for s in steps:
        s["step_s"] = sum(s[k] for k in keys)
    train_log = log_dir / "train.log"
    warm = re.search(r"weight sync warmed up at start-up: ([0-9.]+) s", train_log.read_text(errors="replace"))
    return {"steps": steps, "startup_sync_s": float(warm.group(1)) if warm else None}


def _rows(at: dict[int, tuple[str, int]]) -> list[dict[str, Any]]:
    rows = [{"pid": pid, "role": role, "gib": mem / GIB} for pid, (role, mem) in at.items()]
    return sorted(rows, key=lambda r: -r["gib"])


def report(
    sampler: Sampler, times: dict[str, Any], wall_s: float, argv: list[str], work: str
) -> dict[str, Any]:
    steps = times["steps"]
    warm = steps[1:] or steps
    per_process = [
        {
            "pid": pid,
            "role": p.role,
            "pss_gib": p.pss / GIB if sampler.has_pss else None,
            "rss_gib": p.rss / GIB,
        }
        for pid, p in sampler.per_process.items()
    ]
    return {
        "command": "agentrl train " + " ".join(argv),
        "work": work,
        "peak_total_pss_gib": sampler.peak_pss / GIB if sampler.has_pss else None,
        "peak_total_pss_at_s": sampler.peak_pss_s,
        "peak_total_rss_gib": sampler.peak_rss / GIB,
        "peak_total_rss_at_s": sampler.peak_rss_s,
        "processes": sampler.most_processes,
        "samples": sampler.samples,
        "pss_samples": sampler.pss_samples,
        "at_peak_pss": _rows(sampler.at_peak_pss),
        "at_peak_rss": _rows(sampler.at_peak_rss),
        "per_process_peak": sorted(per_process, key=lambda r: -r["rss_gib"]),
        "steps": steps,
        "mean_step_s_after_first": sum(s["step_s"] for s in warm) / max(1, len(warm)),
        "sync_s": [s["time/sync_s"] for s in steps],
        "startup_sync_s": times["startup_sync_s"],
        "wall_s": wall_s,
    }


def print_table(r: dict[str, Any]) -> None:
    print(f"command: {r['command']}")
    print(f"work: {r['work']}")
    pss = r["peak_total_pss_gib"]
    if pss is not None:
        print(
            f"peak total PSS (shared pages split among their processes; {r['pss_samples']} samples): "
            f"{pss:.2f} GiB at {r['peak_total_pss_at_s']:.0f} s"
        )
    print(
        f"peak total RSS (shared pages counted in every process; {r['samples']} samples): "
        f"{r['peak_total_rss_gib']:.2f} GiB at {r['peak_total_rss_at_s']:.0f} s; {r['processes']} processes at most"
    )
    at_pss = {row["pid"]: row["gib"] for row in r["at_peak_pss"]}
    at_rss = {row["pid"]: row["gib"] for row in r["at_peak_rss"]}

    def cell(value: float | None) -> str:
        return "-" if value is None else f"{value:.2f}"

    print(
        f"\n{'pid':>7}  {'role':<26} {'peak PSS':>9} {'peak RSS':>9} {'PSS at PSS peak':>16} {'RSS at RSS peak':>16}"
    )
    for row in r["per_process_peak"]:
        pid = row["pid"]
        print(
            f"{pid:>7}  {row['role']:<26} {cell(row['pss_gib']):>9} {cell(row['rss_gib']):>9} "
            f"{cell(at_pss.get(pid)):>16} {cell(at_rss.get(pid)):>16}"
        )
    print(f"\n{'step':>4} {'rollout s':>10} {'train s':>8} {'sync s':>7} {'step s':>7}")
    for i, s in enumerate(r["steps"], 1):
        print(
            f"{i:>4} {s['time/rollout_s']:>10.2f} {s['time/train_s']:>8.2f} {s['time/sync_s']:>7.3f} "
            f"{s['step_s']:>7.2f}"
        )
    print(f"mean step after the first: {r['mean_step_s_after_first']:.2f} s; wall {r['wall_s']:.0f} s")
    if r["startup_sync_s"] is not None:
        print(
            f"weight sync at start-up (the initial weights, faulting the transport in): {r['startup_sync_s']:.3f} s"
        )


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of tables")
    parser.add_argument("--interval", type=float, default=0.2, help="seconds between RSS samples")
    parser.add_argument("--pss-interval", type=float, default=2.0, help="seconds between PSS samples")
    parser.add_argument("--work", choices=("prompts", "search"), default="prompts")
    parser.add_argument("--num-rollouts", type=int, default=3)
    parser.add_argument(
        "--min-available-gib", type=float, default=1.0, help="stop the run when the machine has less free"
    )
    parser.add_argument("--data", type=Path, help="folder with arith.jsonl (default: written to a temp dir)")
    parser.add_argument("--log-dir", type=Path, help="the run's log folder (default: a temp dir)")
    parser.add_argument("train_args", nargs="*", help="extra `agentrl train` flags, after --")
    args = parser.parse_args(argv)
    log_dir = args.log_dir or Path(tempfile.mkdtemp(prefix="agentrl-peak-"))
    log_dir.mkdir(parents=True, exist_ok=True)
    if args.work == "search":
        work, task = "Search env (agentrl/Search-v0), up to 5 turns", ["--env", "search"]
    else:
        data = args.data or log_dir / "data"
        if not (data / "arith.jsonl").exists():
            prepare = [sys.executable, str(ROOT / "examples/gsm8k/prepare_data.py"), "--out", str(data)]
            subprocess.run(prepare, check=True, stdout=subprocess.DEVNULL)
        work = "prompt file: one-digit sums (examples/gsm8k/prepare_data.py arith.jsonl), single turn"
        task = ["--prompt-data", str(data / "arith.jsonl"), *PROMPTS]
    train = [*task, *COMMON, "--num-rollouts", str(args.num_rollouts), *args.train_args]
    code, sampler, wall_s = run_and_sample(
        train, log_dir, args.interval, args.pss_interval, args.min_available_gib
    )
    if code:  # still report what was measured (a stopped run's peak is a lower bound)
        print(f"agentrl train exited {code}; its output: {log_dir / 'train.log'}", file=sys.stderr)
    result = report(sampler, step_times(log_dir), wall_s, train, work)
    result["log_dir"], result["exit_code"] = str(log_dir), code
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        print_table(result)
    return code


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main(sys.argv[1:]))
