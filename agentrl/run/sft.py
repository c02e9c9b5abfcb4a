"""`agentrl sft`: supervised fine-tuning on demonstrations, on the same backends as RL training.

A cold start for RL: small instruct models rarely follow an env's protocol, so GRPO gets no signal.
Fine-tuning first on demonstrations (an env's scripted expert: ``agentrl rollout --policy expert``) or on
the policy's own filtered successes (``agentrl rollout --min-reward 1``: rejection-sampling fine-tuning)
fixes that; ``agentrl train --model RUN/hf_model`` then starts RL from the export.

The loss is the mean negative log-likelihood of the trained tokens (``AlgorithmConfig(loss_type="sft")``,
the same ``policy_loss`` both backends call). Batches are a seeded permutation of the examples per epoch,
so a resumed run trains on exactly the batches an uninterrupted one would have.
"""

from __future__ import annotations

import json
import logging
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import torch

from agentrl.config_io import config_to_dict
from agentrl.errors import CheckpointError, ConfigError
from agentrl.run.sft_data import Dataset, Example
from agentrl.trainer.backend import TrainBatch
from agentrl.trainer.config import AlgorithmConfig, LossAggMode, OptimizerConfig, TorchOptions

log = logging.getLogger(__name__)


def _sft_optimizer() -> OptimizerConfig:
    return OptimizerConfig(lr=1e-5)


@dataclass(frozen=True)
class SFTConfig:
    """What ``agentrl sft`` runs; its flags are generated from these fields."""

    data: str = field(default="", metadata={"group": "data"})
    """JSONL of trajectories (agentrl rollout / training dumps) or of chat messages ({"messages": [...]})."""
    max_length: int = field(default=2048, metadata={"group": "data"})
    """Longer examples are cut to this many tokens (counted in the summary)."""
    model: str = field(default="smollm2-135m", metadata={"group": "model"})
    """Policy to start from: a local HF folder or an alias (smollm2-135m, tiny-gpt2)."""
    backend: Literal["torch", "megatron"] = field(default="torch", metadata={"group": "model"})
    """Training backend: plain torch (CPU, one GPU) or Megatron-core (GPUs)."""
    megatron_args: tuple[str, ...] = field(default=(), metadata={"group": "model", "rare": True})
    """Megatron flags, e.g. --megatron-args=--tensor-model-parallel-size=2."""
    epochs: int = field(default=1, metadata={"group": "batch"})
    """Passes over the data."""
    max_steps: int = field(default=0, metadata={"group": "batch"})
    """Stop after this many optimizer steps (0: the epochs decide)."""
    global_batch_size: int = field(default=16, metadata={"group": "batch"})
    """Examples per optimizer step."""
    loss_agg_mode: LossAggMode = field(default="token-mean", metadata={"group": "batch", "rare": True})
    """How token losses make the step's loss (token-mean: every trained token of the batch weighs the same)."""
    optimizer: OptimizerConfig = field(default_factory=_sft_optimizer)
    """AdamW and the lr schedule."""
    torch: TorchOptions = field(default_factory=TorchOptions, metadata={"rare": True})
    """Settings of the torch backend (device, precision, micro-batch size)."""
    save: str | None = field(default=None, metadata={"group": "checkpoint"})
    """Checkpoint folder (atomic step_N/ dirs and a latest pointer); none: no checkpoints."""
    save_interval: int = field(default=50, metadata={"group": "checkpoint"})
    """Checkpoint every this many optimizer steps (and at the end)."""
    keep_last: int = field(default=2, metadata={"group": "checkpoint", "rare": True})
    """Checkpoints kept on disk."""
    resume: bool = field(default=False, metadata={"group": "checkpoint"})
    """Continue from the latest complete checkpoint in --save (same batches, optimizer state)."""
    export_hf: bool = field(default=True, metadata={"group": "checkpoint", "rare": True})
    """At the end write the policy as an HF folder LOG_DIR/hf_model (for agentrl train --model)."""
    log_dir: str | None = field(default=None, metadata={"group": "logging"})
    """Where metrics.jsonl, TensorBoard events and the export go (default: runs/sft-<time>)."""
    progress: bool = field(default=True, metadata={"group": "logging"})
    """Show a progress bar of optimizer steps."""
    seed: int = 0
    """Seed of the batch order and torch's RNG."""

    def __post_init__(self) -> None:
        for name in ("max_length", "epochs", "global_batch_size", "save_interval", "keep_last"):
            if getattr(self, name) < 1:
                raise ConfigError(f"--{name.replace('_', '-')}={getattr(self, name)} must be >= 1")
        if self.max_steps < 0:
            raise ConfigError(f"--max-steps={self.max_steps} must be >= 0 (0: the epochs decide)")
        if self.resume and not self.save:
            raise ConfigError("--resume needs --save DIR: the folder whose latest checkpoint to continue")

    @property
    def algorithm(self) -> AlgorithmConfig:
        return AlgorithmConfig(loss_type="sft", loss_agg_mode=self.loss_agg_mode)


@dataclass
class SFTResult:
    log_dir: Path
    steps: int
    first_nll: float
    last_nll: float
    hf_dir: Path | None


def batch_order(n_examples: int, batch_size: int, epochs: int, seed: int) -> list[list[int]]:
    """The example indices of every optimizer step: a seeded permutation per epoch, cut into batches
    (the last batch of an epoch may be smaller)."""
    steps: list[list[int]] = []
    for epoch in range(epochs):
        order = torch.randperm(n_examples, generator=torch.Generator().manual_seed(seed * 1000 + epoch))
        steps += [order[i : i + batch_size].tolist() for i in range(0, n_examples, batch_size)]
    return steps


def to_batch(examples: list[Example]) -> TrainBatch:
    ids = [torch.tensor(e.input_ids, dtype=torch.long) for e in examples]
    masks = [torch.tensor(e.loss_mask, dtype=torch.float32) for e in examples]
    zeros = [torch.zeros_like(m) for m in masks]
    return TrainBatch(input_ids=ids, loss_mask=masks, advantages=zeros, rollout_logprobs=zeros)


def run_sft(config: SFTConfig, data: Dataset, model_path: Path) -> SFTResult:
    """Fine-tune ``model_path`` on ``data``; checkpoints, metrics and the HF export as configured."""
    from tqdm import tqdm

    from agentrl.run.actors import make_backend
    from agentrl.run.metrics import MetricsLogger
    from agentrl.trainer.checkpoint import load_latest, save_checkpoint

    log_dir = Path(config.log_dir or Path("runs") / time.strftime("sft-%Y%m%d-%H%M%S"))
    log_dir.mkdir(parents=True, exist_ok=True)
    (log_dir / "config.json").write_text(
        json.dumps(config_to_dict(config), indent=2) + "\n", encoding="utf-8"
    )
    steps = batch_order(len(data.examples), config.global_batch_size, config.epochs, config.seed)
    steps = steps[: config.max_steps] if config.max_steps else steps
    torch.manual_seed(config.seed)
    backend = make_backend(model_path, config)
    start = 0
    if config.resume:
        assert config.save is not None
        state = load_latest(Path(config.save), backend)
        if state is None:
            raise CheckpointError(f"--resume: no complete checkpoint in {config.save}; run without --resume")
        start = int(state["step"])
    logger = MetricsLogger(log_dir, total_steps=len(steps), initial_step=start, progress=False)
    nll: list[float] = []
    bar = tqdm(total=len(steps), initial=start, desc="sft", unit="step", disable=not config.progress)
    try:
        for step in range(start + 1, len(steps) + 1):
            metrics = backend.train_step(to_batch([data.examples[i] for i in steps[step - 1]]))
            nll.append(float(metrics.get("nll", math.nan)))
            logger.log(step, {f"train/{k}": float(v) for k, v in metrics.items()})
            bar.set_postfix(nll=f"{nll[-1]:.3f}", refresh=False)
            bar.update(1)
            if config.save and (step % config.save_interval == 0 or step == len(steps)):
                save_checkpoint(Path(config.save), step, backend, {"step": step}, keep_last=config.keep_last)
        hf_dir = None
        if config.export_hf:
            hf_dir = log_dir / "hf_model"
            backend.export_hf(hf_dir)
    finally:
        bar.close()
        logger.close()
    first = nll[0] if nll else math.nan
    return SFTResult(log_dir, len(steps), first, nll[-1] if nll else math.nan, hf_dir)


def describe(data: Dataset) -> str:
    trained = sum(e.num_trained for e in data.examples)
    parts = [f"{len(data.examples)} examples, {data.num_tokens} tokens, {trained} trained"]
    if data.skipped_failed:
        parts.append(f"{data.skipped_failed} failed/aborted episodes skipped")
    if data.truncated:
        parts.append(f"{data.truncated} cut to --max-length")
    return "; ".join(parts)


def summary(result: SFTResult, data: Dataset) -> list[str]:
    lines = [
        f"data: {describe(data)}",
        f"sft: {result.steps} optimizer steps, nll {result.first_nll:.4f} (first step) -> "
        f"{result.last_nll:.4f} (last)",
        f"logs: {result.log_dir} (metrics.jsonl, tensorboard/)",
    ]
    if result.hf_dir is not None:
        lines.append(
            f"fine-tuned policy: {result.hf_dir}  (RL from it: agentrl train --model {result.hf_dir})"
        )
    return lines
