"""Benchmark: step time of ``--async-mode off``, ``one-step`` and ``fully`` at equal work (CPU, or one GPU).

All modes run the same real ``agentrl train`` (Ray actors, embedded engine, torch backend, a random-init
GPT-2) for the same number of rollouts of the same size, with the same seed, on an agentic env whose
tool call takes a fixed latency (``--latency`` seconds per call, ``--turns`` turns an episode): the
rollout then waits on tools, as agentic rollouts wait on sandboxes and retrievers, while training is
compute. ``off`` does generate -> train -> sync in turn; ``one-step`` generates the next rollout while
the current one trains; ``fully`` streams groups into a buffer of two rollouts (the default
``--async-buffer-size``) while the trainer takes them 8 at a time, the weights syncing under the running
episodes. Every mode generates and trains the same groups (no filter: fully admits exactly the groups it
trains). Printed per mode: the mean step time over the steps after the first (the first cannot
overlap), the wall clock of all steps, how long the trainer and the engine waited, the staleness of the
trained tokens; then the speedups over off; then where the engine's time went (its ``engine/`` metrics:
mean decode batch, prefix-cache hit rate, prefill and decode seconds, weight updates landing under
running requests and how long generation stood still for them).

    python bench/async_step.py                        # 6 rollouts of 32 episodes, 2 turns, 0.4 s tools
    python bench/async_step.py --latency 0 --rollouts 4   # no tool latency: engine and trainer share the CPU
    python bench/async_step.py --modes off fully          # a subset of the modes

On a CUDA machine ``--gpu`` runs the same on one GPU: ``--model`` (default the real SmolLM2-135M-
Instruct) on the embedded engine's CUDA path, the torch trainer (bf16 autocast) on the same GPU under
``--placement shared`` (both keep their memory, so generation and training can overlap)::

    python bench/async_step.py --gpu --prompts 32 --new-tokens 128 --latency 0.5
"""

from __future__ import annotations

import argparse
import functools
import tempfile
import time
from pathlib import Path
from typing import Any

import ray

from agentrl.envs.base import Task, ToolEnv, TurnResult
from agentrl.models import make_tiny_gpt2
from agentrl.rollout.controller import RolloutConfig
from agentrl.run.async_config import AsyncConfig
from agentrl.run.loop import train
from agentrl.run.metrics import read_metrics
from agentrl.run.train_config import PlacementConfig, TrainConfig
from agentrl.trainer.config import AlgorithmConfig, OptimizerConfig, TorchOptions


class SlowToolEnv(ToolEnv):
    """``turns`` turns an episode; every turn but the last is a tool call that takes ``latency`` seconds;
    the reward is the share of 'e' in the last turn."""

    def __init__(self, *, latency: float = 0.4, turns: int = 2, **kwargs: Any) -> None:
        self.latency, self.turns = latency, turns
        self._turn = 0
        super().__init__(**kwargs)

    def load_tasks(self, split: str) -> list[Task]:
        return [
            Task(id=f"{split}-{i}", prompt=f"Look up fact {i}, then answer.", answer=None) for i in range(64)
        ]

    def initial_messages(self, task: Task) -> list[dict[str, str]]:
        self._turn = 0
        return [{"role": "user", "content": task.prompt}]

    def turn(self, text: str) -> TurnResult:
        self._turn += 1
        if self._turn < self.turns:
            time.sleep(self.latency)  # the tool (a sandbox, a retriever) answers after this long
            return TurnResult([{"role": "user", "content": "Tool result: fact found."}], reward=0.0)
        share = text.count("e") / len(text) if text else 0.0
        return TurnResult([], reward=share, terminated=True, info={"success": share > 0.2})


def run_mode(mode: str, model: Path | str, args: argparse.Namespace) -> dict[str, Any]:
    log_dir = Path(tempfile.mkdtemp(prefix=f"agentrl-async-{mode}-"))
    config = TrainConfig(
        env="slow-tool",
        model=str(model),
        rollout_batch_size=args.prompts,
        n_samples_per_prompt=4,
        global_batch_size=args.prompts * 4,
        num_rollouts=args.rollouts,
        rollout=RolloutConfig(
            max_turns=args.turns,
            max_new_tokens=args.new_tokens,
            max_context=max(512, 96 + args.turns * (args.new_tokens + 32)),
        ),
        dynamic_filter=False,
        eval_episodes=0,
        dump_interval=0,
        progress=False,
        export_hf=False,
        log_dir=str(log_dir),
        seed=0,
        num_cpus=args.threads,
        placement=PlacementConfig(placement="shared", num_gpus=1) if args.gpu else PlacementConfig(),
        optimizer=OptimizerConfig(lr=1e-5 if args.gpu else 1e-3),
        algorithm=AlgorithmConfig(tis_cap=2.0),  # the same loss in both modes
        torch=TorchOptions(micro_batch_tokens=16384 if args.gpu else 4096),
        asynchronous=AsyncConfig(
            async_mode=mode,  # type: ignore[arg-type]
            async_buffer_size=args.buffer_size if mode == "fully" else None,
        ),
    )
    factory = functools.partial(SlowToolEnv, latency=args.latency, turns=args.turns)
    train(config, env_factory=factory)
    rows = [r for r in read_metrics(log_dir / "metrics.jsonl") if r.get("rollout/total_tokens") is not None]
    steps, idle_t, idle_e = [], 0.0, 0.0
    for r in rows:
        if mode == "off":
            rollout, trained, sync = r["time/rollout_s"], r["time/train_s"], r["time/sync_s"]
            steps.append(rollout + trained + sync)
            idle_t += rollout + sync  # the trainer waits for the rollout and the sync
            idle_e += trained + sync  # the engine waits for training and the sync
        else:
            steps.append(r["async/step_s"])
            idle_t += r["async/trainer_idle_s"]
            idle_e += r["async/engine_idle_s"]
    later = steps[1:] or steps
    after_first = rows[1:] or rows

    def engine(name: str) -> float:  # per step after the first; nan where the engine keeps no counters
        values = [r.get(f"engine/{name}", float("nan")) for r in after_first]
        return sum(values) / len(values)

    return {
        "step_s": sum(later) / len(later),
        "wall_s": sum(steps),
        "rollout_s": sum(r.get("time/rollout_s", float("nan")) for r in rows) / len(rows),  # nan: fully
        "train_s": sum(r["time/train_s"] for r in rows) / len(rows),
        "trainer_idle": idle_t / sum(steps),
        "engine_idle": idle_e / sum(steps),
        "staleness_max": max(r.get("async/staleness_max", 0.0) for r in rows),
        "episodes": sum(r["rollout/episodes"] for r in rows),
        "decode_batch": engine("mean_decode_batch"),
        "hit_rate": engine("prefix_hit_rate"),
        "prefill_s": engine("prefill_s"),
        "decode_s": engine("decode_s"),
        "updates": engine("weight_updates"),
        "update_running": engine("update_running"),
        "update_s": engine("update_s"),
        "steps": steps,
        "first": {k: v for k, v in rows[0].items() if k.startswith(("time/", "async/"))} if rows else {},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rollouts", type=int, default=6)
    parser.add_argument("--prompts", type=int, default=8, help="prompts per rollout (4 samples each)")
    parser.add_argument("--turns", type=int, default=2)
    parser.add_argument("--latency", type=float, default=0.4, help="seconds per tool call")
    parser.add_argument("--new-tokens", type=int, default=16)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--width", type=int, default=256)
    parser.add_argument(
        "--threads", type=int, default=2, help="torch threads of the trainer and of the engine"
    )
    parser.add_argument("--modes", nargs="+", default=["off", "one-step", "fully"])
    parser.add_argument(
        "--buffer-size",
        type=int,
        default=None,
        help="fully: --async-buffer-size in groups (default 2 rollouts)",
    )
    parser.add_argument("--gpu", action="store_true", help="one CUDA GPU shared by engine and trainer")
    parser.add_argument("--model", default="smollm2-135m", help="--gpu: the policy (an alias or HF folder)")
    args = parser.parse_args()
    if args.gpu:
        model = args.model
        name = f"{args.model} (one GPU, --placement shared)"
        ray.init(
            address="local",
            num_cpus=2 * args.threads,
            num_gpus=1,
            include_dashboard=False,
            _node_ip_address="127.0.0.1",
        )
    else:
        folder = Path(tempfile.gettempdir()) / f"agentrl-bench-gpt2-{args.layers}x{args.width}"
        model = make_tiny_gpt2(folder, n_layer=args.layers, n_embd=args.width, n_head=4)
        name = f"GPT-2 {args.layers}x{args.width}"
        ray.init(address="local", num_cpus=2, include_dashboard=False, _node_ip_address="127.0.0.1")
    results = {mode: run_mode(mode, model, args) for mode in args.modes}
    ray.shutdown()
    print(
        f"{name}, {args.rollouts} rollouts x {args.prompts * 4} episodes, "
        f"{args.turns} turns, {args.latency} s per tool call"
        + (f", fully's buffer {args.buffer_size} groups" if args.buffer_size else "")
    )
    print(
        f"{'mode':>9} {'step s':>7} {'wall s':>7} {'rollout s':>9} {'train s':>8} {'trainer idle':>12} "
        f"{'engine idle':>11} {'staleness':>9} {'episodes':>8}"
    )
    for mode, r in results.items():
        print(
            f"{mode:>9} {r['step_s']:>7.2f} {r['wall_s']:>7.2f} {r['rollout_s']:>9.2f} {r['train_s']:>8.2f} "
            f"{r['trainer_idle']:>11.0%} {r['engine_idle']:>11.0%} {r['staleness_max']:>9.0f} {r['episodes']:>8.0f}"
        )
    print("the engine per step after the first (off, one-step: over the rollout; fully: over the step):")
    print(
        f"{'mode':>9} {'decode batch':>12} {'prefix hits':>11} {'prefill s':>9} {'decode s':>8} "
        f"{'updates':>7} {'under running':>13} {'update s':>8}"
    )
    for mode, r in results.items():
        print(
            f"{mode:>9} {r['decode_batch']:>12.1f} {r['hit_rate']:>11.0%} {r['prefill_s']:>9.2f} "
            f"{r['decode_s']:>8.2f} {r['updates']:>7.1f} {r['update_running']:>13.1f} {r['update_s']:>8.3f}"
        )
    print("every step's seconds, and where the first went (time/ and async/ metrics):")
    for mode, r in results.items():
        print(f"{mode:>9} " + " ".join(f"{x:.2f}" for x in r["steps"]))
        first = ", ".join(f"{k} {v:.2f}" for k, v in sorted(r["first"].items()) if k.endswith("_s"))
        print(f"{'':>9} first step: {first}")
    off = results.get("off")
    for mode, r in results.items():
        if off is not None and mode != "off":
            print(
                f"speedup {mode} vs off: {off['step_s'] / r['step_s']:.2f}x per step (steps 2..), "
                f"{off['wall_s'] / r['wall_s']:.2f}x over all steps"
            )


if __name__ == "__main__":
    main()
