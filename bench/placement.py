"""Disaggregated vs colocated placement on 2 GPUs: step time, weight-sync time, GPU idle fraction.

One synchronous RL step = generate (sampling with a transformers model as the engine) -> one Megatron
GRPO step on the generated sequences -> weight sync. Two layouts of the same work:

* ``disaggregated``: rank 0 trains on GPU 0 (a Megatron world of one), rank 1 generates on GPU 1;
  weights go over a broadcast group (:mod:`agentrl.engines.weight_transport`, NCCL).
* ``colocated``: both ranks train (Megatron, data parallel 2) and both generate (half the prompts each)
  on their own GPU; the engine model moves to CPU during the train step and back before an in-memory
  sync (:mod:`agentrl.engines.memory`'s approach).

GPU idle fraction is phase-based: 1 - (time a GPU spends in its generate / train / sync phases) / step
time, averaged over GPUs. Run (what scripts/gpu_multi.sh does)::

    torchrun --nproc-per-node 2 bench/placement.py --mode disaggregated --out OUT
    torchrun --nproc-per-node 2 bench/placement.py --mode colocated --out OUT
    python bench/placement.py --report OUT
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path
from typing import Any

import torch

from agentrl.run.placement import NCCL_SAFE_ENV

os.environ.update(NCCL_SAFE_ENV)


def _engine(folder: Path, device: str) -> Any:
    from transformers import AutoModelForCausalLM

    model: Any = AutoModelForCausalLM.from_pretrained(str(folder), dtype=torch.bfloat16)
    return model.to(device).eval()


def _generate(
    model: Any, prompts: int, prompt_len: int, new: int, vocab: int, seed: int
) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, vocab, (prompts, prompt_len), generator=g).to(model.device)
    with torch.no_grad():
        out = model.generate(
            ids, max_new_tokens=new, min_new_tokens=new, do_sample=True, top_k=0, pad_token_id=0
        )
    torch.cuda.synchronize()
    return [row.cpu() for row in out]


def _batch(seqs: list[torch.Tensor], prompt_len: int, seed: int) -> Any:
    from agentrl.trainer.backend import TrainBatch

    g = torch.Generator().manual_seed(seed)
    masks = [torch.cat([torch.zeros(prompt_len), torch.ones(s.numel() - prompt_len)]) for s in seqs]
    advs = [m * float(torch.randn((), generator=g)) for m in masks]
    zeros = [torch.zeros(s.numel()) for s in seqs]
    return TrainBatch(
        input_ids=seqs, loss_mask=masks, advantages=advs, rollout_logprobs=zeros, old_logprobs=zeros
    )


def _backend(folder: Path) -> Any:
    from agentrl.trainer.config import OptimizerConfig
    from agentrl.trainer.megatron.backend import MegatronBackend
    from agentrl.trainer.megatron.config import MegatronBackendConfig

    return MegatronBackend(
        folder, MegatronBackendConfig(micro_batch_tokens=8192, optimizer=OptimizerConfig(lr=1e-6))
    )


def _timed(phases: dict[str, float], name: str, fn: Any, *args: Any, **kwargs: Any) -> Any:
    torch.cuda.synchronize()
    start = time.perf_counter()
    out = fn(*args, **kwargs)
    torch.cuda.synchronize()
    phases[name] = phases.get(name, 0.0) + time.perf_counter() - start
    return out


def run_disaggregated(args: argparse.Namespace, folder: Path, rank: int) -> dict[str, float]:
    from agentrl.engines.weight_transport import (
        join_weight_group,
        receive_weights,
        send_weights,
        tensor_metas,
    )

    torch.cuda.set_device(rank)
    phases: dict[str, float] = {}
    port = int(os.environ["MASTER_PORT"]) + 11
    metas: list[Any] = [None]
    if rank == 0:
        # The trainer is a Megatron world of one on GPU 0, apart from torchrun's world of two.
        os.environ.pop("TORCHELASTIC_USE_AGENT_STORE", None)
        os.environ.update(RANK="0", WORLD_SIZE="1", LOCAL_RANK="0", MASTER_PORT=str(port + 1))
        backend = _backend(folder)
        metas = [tensor_metas(backend.hf_state_dict())]
    else:
        engine = _engine(folder, "cuda:1")
    group = join_weight_group("127.0.0.1", port, rank=rank, world_size=2, backend="nccl")
    torch.distributed.broadcast_object_list(metas, src=0, group=group)
    vocab = int(json.loads((folder / "config.json").read_text())["vocab_size"])
    wall = time.perf_counter()
    for step in range(args.steps):
        box: list[Any] = [None]
        if rank == 1:
            gen = (args.prompts, args.prompt_len, args.new_tokens, vocab, step)
            box = [_timed(phases, "generate", _generate, engine, *gen)]
        torch.distributed.broadcast_object_list(box, src=1, group=group)  # rollout -> trainer (CPU ids)
        if rank == 0:
            _timed(phases, "train", backend.train_step, _batch(box[0], args.prompt_len, step))
            _timed(phases, "sync", send_weights, backend.hf_state_dict(), group, device="cuda")
        else:
            state = _timed(phases, "sync", receive_weights, metas[0], group, device="cuda:1")
            engine.load_state_dict(state, strict=False)
    phases["wall"] = time.perf_counter() - wall
    return phases


def _offload(engine: Any) -> None:
    engine.to("cpu")
    torch.cuda.empty_cache()


def _sync_in_memory(backend: Any, engine: Any) -> None:
    engine.load_state_dict(dict(backend.hf_state_dict()), strict=False)


def run_colocated(args: argparse.Namespace, folder: Path, rank: int) -> dict[str, float]:
    backend = _backend(folder)  # torchrun's world of 2: data parallel 2
    engine = _engine(folder, f"cuda:{rank}")
    vocab = int(json.loads((folder / "config.json").read_text())["vocab_size"])
    phases: dict[str, float] = {}
    wall = time.perf_counter()
    for step in range(args.steps):
        gen = (args.prompts // 2, args.prompt_len, args.new_tokens, vocab, 2 * step + rank)
        mine = _timed(phases, "generate", _generate, engine, *gen)
        parts: list[Any] = [None, None]
        torch.distributed.all_gather_object(parts, mine)
        seqs = [s for part in parts for s in part]

        _timed(phases, "release", _offload, engine)
        _timed(phases, "train", backend.train_step, _batch(seqs, args.prompt_len, step))
        _timed(phases, "resume", engine.to, f"cuda:{rank}")
        _timed(phases, "sync", _sync_in_memory, backend, engine)
    phases["wall"] = time.perf_counter() - wall
    return phases


def report(out: Path) -> str:
    rows = [
        "| placement | step s | generate s | train s | sync s | release+resume s | GPU idle |",
        "|---|---|---|---|---|---|---|",
    ]
    for mode in ("disaggregated", "colocated"):
        files = sorted(out.glob(f"placement_{mode}_rank*.json"))
        if not files:
            continue
        ranks = [json.loads(f.read_text()) for f in files]
        steps = ranks[0]["steps"]
        step = max(r["wall"] for r in ranks) / steps
        busy = [sum(r.get(k, 0.0) for k in ("generate", "train", "sync")) / steps for r in ranks]
        idle = 1 - sum(busy) / (len(ranks) * step)
        per_step = {k: max(r.get(k, 0.0) for r in ranks) / steps for k in ranks[0]}
        per_step.update({k: per_step.get(k, 0.0) for k in ("release", "resume")})
        rows.append(
            f"| {mode} | {step:.2f} | {per_step['generate']:.2f} | {per_step['train']:.2f} | {per_step['sync']:.3f} | "
            f"{per_step['release'] + per_step['resume']:.3f} | {idle:.0%} |"
        )
    table = "\n".join(rows)
    (out / "placement.md").write_text(table + "\n")
    return table


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mode", choices=["disaggregated", "colocated"])
    parser.add_argument("--out", type=Path, default=Path(os.environ.get("OUT", "out/gpu")))
    parser.add_argument("--report", type=Path, help="print the table of the results under this folder")
    parser.add_argument("--shape", default="qwen2.5-0.5b")
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--prompts", type=int, default=32)
    parser.add_argument("--prompt-len", type=int, default=256)
    parser.add_argument("--new-tokens", type=int, default=256)
    args = parser.parse_args()
    if args.report:
        print(report(args.report))
        return
    import torch.distributed as dist

    from agentrl.trainer.megatron.shapes import random_checkpoint

    rank = int(os.environ["RANK"])
    folder = Path(os.environ.get("AGENTRL_TP_TMP", "/tmp")) / f"agentrl-placement-{args.shape}"
    if rank == 0 and not (folder / "config.json").exists():
        random_checkpoint(args.shape, folder, seed=1)
    if args.mode == "colocated":
        torch.cuda.set_device(rank)
        dist.init_process_group("nccl")
        dist.barrier()
        phases = run_colocated(args, folder, rank)
    else:
        while not (folder / "config.json").exists():
            time.sleep(1)
        time.sleep(2)
        phases = run_disaggregated(args, folder, rank)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"placement_{args.mode}_rank{rank}.json").write_text(
        json.dumps({**phases, "steps": args.steps})
    )
    print(json.dumps({"mode": args.mode, "rank": rank, **phases}))


if __name__ == "__main__":
    main()
