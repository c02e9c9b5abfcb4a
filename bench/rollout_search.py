"""Wall time of a real Search-R1 rollout (env, controller, tokenizer, embedded engine) and where it goes.

Why: the engine alone decodes 64 rows in ~2 ms a step on an H200 (bench/engine_gpu.py), but the
Search-R1 small recipe's rollout of 64 episodes took 9.6-13.9 s from the base model (about 25 ms per
decode step of its longest episode). This runs that rollout in one process, through the same
``RolloutManager`` as ``agentrl train`` / ``rollout`` (groups of n episodes of the Search env, up to
``--max-turns`` turns of ``--max-new-tokens``), once to warm up (compile, graph capture) and then
``--rounds`` times, and prints per round: wall s, sampled tokens, turns, the engine's decode steps,
ms per step, prefills and their seconds, and the share of the wall the engine worked. With
``--profile`` it samples every thread's Python stack each millisecond and prints where the engine
thread and the controller's thread spend their time. ``--switch-interval`` sets Python's GIL switch
interval for a round (several values compare them in one run).

Run (the repo on PYTHONPATH)::

    python bench/rollout_search.py --model smollm2-135m                       # CUDA if present
    python bench/rollout_search.py --model smollm2-135m --switch-interval 0.005 0.0002 --profile
    python bench/rollout_search.py --shape qwen3-tiny --device cpu --groups 4   # host-bound on CPU
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import dataclasses
import itertools
import json
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import torch

from agentrl.engines.embedded.engine import EmbeddedEngine, EmbeddedEngineConfig
from agentrl.envs.registry import resolve
from agentrl.models import resolve_model
from agentrl.rollout.controller import RolloutConfig
from agentrl.rollout.driver import EnvSpec, RolloutManager
from agentrl.rollout.episodes import GenerationSettings


class StackSampler:
    """Samples every thread's innermost frames each ``interval`` s; counts per thread name."""

    def __init__(self, interval: float = 0.001, depth: int = 6) -> None:
        self.interval, self.depth = interval, depth
        self.counts: dict[str, collections.Counter[str]] = collections.defaultdict(collections.Counter)
        self.samples: collections.Counter[str] = collections.Counter()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="stack-sampler", daemon=True)

    def __enter__(self) -> StackSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        me = threading.get_ident()
        while not self._stop.wait(self.interval):
            names = {t.ident: t.name for t in threading.enumerate()}
            for ident, frame in sys._current_frames().items():
                if ident == me:
                    continue
                name = names.get(ident, str(ident))
                chain: list[str] = []
                f: Any = frame
                while f is not None and len(chain) < self.depth:
                    code = f.f_code
                    chain.append(f"{Path(code.co_filename).name}:{code.co_name}")
                    f = f.f_back
                self.samples[name] += 1
                self.counts[name][" <- ".join(chain)] += 1

    def report(self, top: int = 12) -> str:
        lines = []
        for name, n in self.samples.most_common():
            if n < 20:
                continue
            lines.append(f"  thread {name}: {n} samples")
            for stack, c in self.counts[name].most_common(top):
                lines.append(f"    {100 * c / n:5.1f}%  {stack}")
        return "\n".join(lines)


def make_engine(args: argparse.Namespace, model_dir: Path) -> EmbeddedEngine:
    cfg = EmbeddedEngineConfig(
        device=args.device,
        max_batch_size=max(64, args.groups * args.n),
        fast_path=args.fast_path,
        decode_attention=args.attention,
        fused_prefill_mb=args.fused_prefill_mb,
    )
    return EmbeddedEngine(model_dir, cfg)


def model_folder(args: argparse.Namespace, root: Path) -> Path:
    if not args.shape:
        return resolve_model(args.model)
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from agentrl.trainer.megatron.shapes import hf_config

    tokenizer_of = resolve_model(args.model)  # a real chat template and tokenizer: the env needs them
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_of)
    config = hf_config(args.shape)
    config.vocab_size = len(tokenizer)
    torch.manual_seed(0)
    folder = root / args.shape
    AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16).save_pretrained(str(folder))
    tokenizer.save_pretrained(str(folder))
    return folder


def compile_counts(manager: RolloutManager) -> tuple[int, int]:
    """Frames torch.compile has compiled in this process so far, and decode graphs captured."""
    from torch._dynamo.utils import counters

    runner = getattr(getattr(manager.engine, "_cuda", None), "runner", None)  # the fast path, if on
    graphs = runner.graphs.captures if runner is not None else 0
    return int(counters["frames"]["ok"]), int(graphs)


def one_round(manager: RolloutManager, keys: list[str], n: int) -> dict[str, float]:
    before = manager.engine_stats()
    compiled = compile_counts(manager)
    started = time.perf_counter()
    trajectories = manager.generate(keys, GenerationSettings(n, 1.0, 1.0))
    wall = time.perf_counter() - started
    after = manager.engine_stats()
    compiled_after = compile_counts(manager)
    d = {k: after.get(k, 0.0) - before.get(k, 0.0) for k in after}
    steps = max(d.get("decode_steps", 0.0), 1.0)
    return {
        "wall_s": wall,
        "episodes": len(trajectories),
        "sampled_tokens": sum(sum(t.loss_mask) for t in trajectories),
        "turns": sum(len(t.turns) for t in trajectories) / max(len(trajectories), 1),
        "decode_steps": d.get("decode_steps", 0.0),
        "ms_per_step": 1e3 * d.get("decode_s", 0.0) / steps,
        "mean_batch": d.get("decode_tokens", 0.0) / steps,
        "prefill_s": d.get("prefill_s", 0.0),
        "prefills": d.get("prefills", 0.0),
        "prefill_batch": d.get("prefill_requests", 0.0) / max(d.get("prefills", 0.0), 1.0),
        "engine_busy_frac": (d.get("decode_s", 0.0) + d.get("prefill_s", 0.0)) / wall,
        "compiles": compiled_after[0] - compiled[0],
        "graph_captures": compiled_after[1] - compiled[1],
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="smollm2-135m", help="model (and, with --shape, the tokenizer)")
    p.add_argument("--shape", default=None, help="random weights of this shape instead (e.g. qwen3-tiny)")
    p.add_argument("--device", default="auto")
    p.add_argument("--fast-path", action=argparse.BooleanOptionalAction, default=None)
    p.add_argument("--attention", default="fused", choices=["bmm", "sdpa", "fused"])
    p.add_argument(
        "--fused-prefill-mb",
        type=float,
        default=EmbeddedEngineConfig.fused_prefill_mb,
        help="prefill chunks whose scores exceed this take SDPA (0: every chunk)",
    )
    p.add_argument("--groups", type=int, default=8)
    p.add_argument("--n", type=int, default=8)
    p.add_argument("--max-new-tokens", type=int, default=96)
    p.add_argument("--max-turns", type=int, default=4)
    p.add_argument("--max-context", type=int, default=1536)
    p.add_argument("--rounds", type=int, default=1)
    p.add_argument("--switch-interval", type=float, nargs="+", default=[sys.getswitchinterval()])
    p.add_argument(
        "--admit-wait-steps",
        type=int,
        nargs="+",
        default=[EmbeddedEngineConfig.admit_wait_steps],
        help="fast path: decode steps newcomers wait to be prefilled together (each value its own rounds)",
    )
    p.add_argument("--env-kwargs", type=json.loads, default={})
    p.add_argument("--profile", action="store_true")
    p.add_argument("--torch-profile", action="store_true", help="torch.profiler over the rounds: top ops")
    p.add_argument("--json", default=None, help="append one JSON line per round here")
    args = p.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        model_dir = model_folder(args, Path(tmp))
        spec = EnvSpec(resolve("search"), "train", args.env_kwargs)
        rollout = RolloutConfig(
            max_new_tokens=args.max_new_tokens,
            max_context=args.max_context,
            max_turns=args.max_turns,
            max_concurrency=args.groups * args.n,
        )

        async def start() -> EmbeddedEngine:
            return make_engine(args, model_dir)

        started = time.perf_counter()
        manager = RolloutManager(start, model_dir, [spec], rollout=rollout, seed=0)
        compiles, graphs = compile_counts(manager)
        print(
            f"engine start-up: {time.perf_counter() - started:.1f} s "
            f"({compiles} compiles, {graphs} decode graphs captured)"
        )
        try:
            keys = manager.task_keys()[: args.groups]
            warm = one_round(manager, keys, args.n)
            print(
                f"warm-up: {warm['wall_s']:.2f} s ({warm['sampled_tokens']} sampled tokens, "
                f"{warm['compiles']} compiles, {warm['graph_captures']} decode graphs captured)"
            )
            header = (
                "| admit wait | switch ms | round | wall s | sampled | turns | steps | ms/step | batch "
                "| prefills | prefill batch | prefill s | busy | compiles | graphs |"
            )
            print(header + "\n|" + "---:|" * 15)
            engine: Any = manager.engine
            for wait, interval in itertools.product(args.admit_wait_steps, args.switch_interval):
                sys.setswitchinterval(interval)
                engine.config = dataclasses.replace(engine.config, admit_wait_steps=wait)
                for r in range(args.rounds):
                    with (
                        StackSampler() if args.profile else _Null() as sampler,
                        _torch_profile(args.torch_profile),
                    ):
                        row = one_round(manager, keys, args.n)
                    row["switch_interval_s"], row["admit_wait_steps"] = interval, wait
                    print(
                        f"| {wait} | {interval * 1e3:g} | {r} | {row['wall_s']:.2f} | {row['sampled_tokens']} | "
                        f"{row['turns']:.2f} | {row['decode_steps']:.0f} | {row['ms_per_step']:.2f} | "
                        f"{row['mean_batch']:.1f} | {row['prefills']:.0f} | {row['prefill_batch']:.1f} | "
                        f"{row['prefill_s']:.2f} | {row['engine_busy_frac']:.2f} | {row['compiles']} | "
                        f"{row['graph_captures']} |"
                    )
                    if args.profile and isinstance(sampler, StackSampler):
                        print(sampler.report())
                    if args.json:
                        with open(args.json, "a") as f:
                            f.write(json.dumps(row) + "\n")
        finally:
            manager.close()


class _torch_profile:
    """torch.profiler over the block when ``on``; prints the ops by device time and by host time."""

    def __init__(self, on: bool) -> None:
        self.on = on
        self.prof: Any = None

    def __enter__(self) -> None:
        if self.on:
            from torch.profiler import ProfilerActivity, profile

            acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if torch.cuda.is_available() else [])
            self.prof = profile(activities=acts)
            self.prof.__enter__()

    def __exit__(self, *exc: Any) -> None:
        if self.prof is not None:
            self.prof.__exit__(*exc)
            table = self.prof.key_averages()
            for key in ("self_cuda_time_total", "self_cpu_time_total", "cpu_time_total"):
                print(f"--- by {key}")
                print(table.table(sort_by=key, row_limit=18, max_name_column_width=60))


class _Null:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: Any) -> None:
        return None


if __name__ == "__main__":
    asyncio.set_event_loop_policy(None)
    main()
