"""Benchmark the Docker sandbox: container start, warm exec latency, episodes per second.

Why: a tool call sits on the rollout's critical path, so a warm `exec` should cost no more than the
engine's own `docker exec` (target: p50 within 1.2x of a bare `docker exec <c> true` measured in the
same run, interleaved so that machine noise hits both alike). Episodes/s shows what the pool
sustains with 1, 4 and 16 concurrent episodes (pool size = concurrency).

Run: python bench/sandbox.py [--execs 60] [--starts 8] [--concurrency 1 4 16]
Needs a running engine and the image (`bash scripts/setup_docker.sh`).
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor

from agentrl.tools.sandbox import DockerSandbox, SandboxConfig, SandboxPool
from agentrl.tools.sandbox.engine import connect
from agentrl.tools.sandbox.reaper import reap_orphans

EPISODE_CALLS = 3
"""Tool calls in one benchmark episode (each a small Python program, as a python tool would run)."""


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1)))]


def bench_start(config: SandboxConfig, n: int) -> list[float]:
    """Seconds from `DockerSandbox()` to a container ready for exec."""
    times = []
    for _ in range(n):
        start = time.perf_counter()
        sb = DockerSandbox(config)
        times.append(time.perf_counter() - start)
        sb.close()
    return times


def bench_exec(config: SandboxConfig, n: int) -> tuple[list[float], list[float]]:
    """Warm `exec(["true"])` and the CLI's `docker exec <c> true`, interleaved in one container."""
    docker_cli = shutil.which("docker")
    if docker_cli is None:
        raise SystemExit("the docker CLI is needed for the baseline; apt-get install -y docker.io")
    ours, bare = [], []
    with DockerSandbox(config) as sb:
        for _ in range(3):  # warm both paths (connection pool, page cache)
            sb.exec(["true"])
            subprocess.run([docker_cli, "exec", sb.id, "true"], check=True)
        for _ in range(n):
            start = time.perf_counter()
            assert sb.exec(["true"]).exit_code == 0
            ours.append(time.perf_counter() - start)
            start = time.perf_counter()
            subprocess.run([docker_cli, "exec", sb.id, "true"], check=True)
            bare.append(time.perf_counter() - start)
    return ours, bare


def bench_episodes(config: SandboxConfig, concurrency: int) -> float:
    """Episodes per second: acquire a fresh sandbox, run `EPISODE_CALLS` Python calls, close."""
    cfg = SandboxConfig(**{**config.__dict__, "pool_size": concurrency, "warm": concurrency})
    client = connect()
    pool = SandboxPool(lambda: DockerSandbox(cfg, client=client), cfg)
    episodes = max(8, 2 * concurrency)

    def episode(i: int) -> None:
        with pool.acquire() as sb:
            for turn in range(EPISODE_CALLS):
                assert sb.run_python(f"print({i} * {turn})").stdout == f"{i * turn}\n"

    try:
        start = time.perf_counter()
        with ThreadPoolExecutor(concurrency) as workers:
            list(workers.map(episode, range(episodes)))
        return episodes / (time.perf_counter() - start)
    finally:
        pool.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--execs", type=int, default=60, help="warm execs (and bare docker execs) to time")
    parser.add_argument("--starts", type=int, default=8, help="container starts to time")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 4, 16])
    args = parser.parse_args()
    config = SandboxConfig(run_id="bench")
    reap_orphans(connect())

    starts = bench_start(config, args.starts)
    ours, bare = bench_exec(config, args.execs)
    rates = {c: bench_episodes(config, c) for c in args.concurrency}

    ms = 1000.0
    rows = [
        ("container start p50", f"{statistics.median(starts) * ms:.0f} ms"),
        ("warm exec p50", f"{statistics.median(ours) * ms:.1f} ms"),
        ("warm exec p99", f"{percentile(ours, 99) * ms:.1f} ms"),
        ("bare `docker exec c true` p50", f"{statistics.median(bare) * ms:.1f} ms"),
        (
            "warm exec p50 / bare p50",
            f"{statistics.median(ours) / statistics.median(bare):.2f}x (target <= 1.2x)",
        ),
    ]
    rows += [(f"episodes/s, {c} concurrent", f"{rate:.2f}") for c, rate in rates.items()]
    width = max(len(name) for name, _ in rows)
    print(f"{'metric':<{width}}  value")
    for name, value in rows:
        print(f"{name:<{width}}  {value}")


if __name__ == "__main__":
    main()
