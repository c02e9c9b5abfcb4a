"""Benchmark: where a CPU weight sync's time goes, the first sync of a run included (issue 17).

`agentrl train` on the CPU hands the trainer's weights to the embedded engine through Ray's object store
(`agentrl/engines/packed_weights.py`). This script starts the same two actors as a run (a
`TrainerWorker` with the torch backend and an `EngineWorker`, each in its own process), then does
``--syncs`` syncs, changing the trainer's weights before each one so that no sync is a no-op, and prints
per sync the time of each phase:

* ``start-up``: the sync of the initial weights that `agentrl train` does once at start-up on a run
  without GPUs (`Run._warm_weight_sync`: it faults the shared buffer's pages in, in the trainer and the
  engine), outside the syncs as in a run, but timed here; ``--no-warm`` leaves it out;
* ``trainer``: ``weights_for_engine`` inside the trainer (HF state dict, dtype conversion, the copy into
  shared memory);
* ``engine``: ``update_weights`` inside the engine (fetching the record's arrays, copying them into the
  model's parameters);
* ``sync``: the whole `Run.sync_weights`-shaped round trip seen by the driver (both of the above, the
  calls' overhead and the release);

and checks that the engine ends with exactly the trainer's weights.

    python bench/weight_sync_cpu.py                 # SmolLM2-135M-Instruct, fp32, 4 syncs
    python bench/weight_sync_cpu.py --model PATH --syncs 6 --no-warm
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path
from typing import Any

import torch

from agentrl.engines.packed_weights import PackedWeights
from agentrl.engines.remote import EngineWorker
from agentrl.run.actors import TrainerWorker
from agentrl.run.train_config import TrainConfig

DEFAULT_MODEL = Path.home() / ".cache" / "agentrl" / "models" / "smollm2-135m"


class TimedTrainer(TrainerWorker):
    def perturb(self, seed: int) -> None:
        """New weights (a small shift), as an optimizer step would leave them."""
        g = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            for p in self.backend.model.parameters():
                p.add_(torch.randn(p.shape, generator=g, dtype=p.dtype) * 1e-3)

    def timed_weights(self, target: dict[str, Any]) -> tuple[PackedWeights, float]:
        start = time.perf_counter()
        packed = self.weights_for_engine(target)
        return packed, time.perf_counter() - start

    def weights(self) -> dict[str, torch.Tensor]:
        return {k: v.detach().clone() for k, v in self.backend.model.state_dict().items()}


class TimedEngine(EngineWorker):
    async def timed_update(self, packed: PackedWeights, version: int) -> float:
        start = time.perf_counter()
        await self.update_weights(packed, version)
        return time.perf_counter() - start

    def weights(self) -> dict[str, torch.Tensor]:
        return {k: v.detach().clone() for k, v in self.engine.model.state_dict().items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, default=DEFAULT_MODEL)
    parser.add_argument("--syncs", type=int, default=4)
    parser.add_argument("--no-warm", action="store_true", help="skip the trainer's start-up warm-up")
    args = parser.parse_args()

    import ray

    ray.init(
        address="local", num_cpus=os.cpu_count() or 1, include_dashboard=False, _node_ip_address="127.0.0.1"
    )
    config = TrainConfig(model=str(args.model))
    trainer = ray.remote(TimedTrainer).options(num_cpus=0).remote(str(args.model), config)
    engine = (
        ray.remote(TimedEngine)
        .options(num_cpus=0, max_concurrency=1024)
        .remote(str(args.model), None, 0, "cpu")
    )
    target = ray.get(engine.weights_target.remote())
    ray.get([trainer.pid.remote(), engine.health.remote()])  # both models loaded

    def sync(version: int) -> tuple[float, float, float]:  # what Run.sync_weights does, with timers
        start = time.perf_counter()
        packed, trainer_s = ray.get(trainer.timed_weights.remote(target))
        engine_s = ray.get(engine.timed_update.remote(packed, version))
        ray.get(trainer.release_engine_weights.remote())
        return trainer_s, engine_s, time.perf_counter() - start

    print(
        f"device: CPU ({os.cpu_count()} cores), load average {os.getloadavg()[0]:.2f}; model {args.model.name}"
    )
    print(f"{'sync':>8} {'trainer s':>10} {'engine s':>9} {'sync s':>7}")
    rows = [("start-up", *sync(0))] if not args.no_warm else []
    for i in range(1, args.syncs + 1):
        ray.get(trainer.perturb.remote(i))
        rows.append((str(i), *sync(i)))
    for name, trainer_s, engine_s, sync_s in rows:
        print(f"{name:>8} {trainer_s:>10.3f} {engine_s:>9.3f} {sync_s:>7.3f}")
    want, got = ray.get([trainer.weights.remote(), engine.weights.remote()])
    exact = all(torch.equal(got[name], tensor) for name, tensor in want.items())
    print(f"engine holds the trainer's last weights bit for bit: {exact}")
    ray.get(trainer.close_engine_weights.remote())
    ray.shutdown()


if __name__ == "__main__":
    main()
