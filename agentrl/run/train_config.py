"""The configuration of one training run: what to train on, batch shape, budgets, eval, checkpoints, logs.

``agentrl train --help`` is generated from these dataclasses, so each field's docstring is its help text;
the components' own configs (rollout, engine, algorithm, optimizer) are shared with the other commands. The defaults are the laptop run that
``agentrl train --env search --max-turns 5`` performs on a 2-core CPU: SmolLM2-135M-Instruct, the
embedded engine, the torch backend, a short run that finishes in minutes and prints what improved.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Literal

from agentrl.engines.config import EngineConfig
from agentrl.envs.presets import laptop_env_kwargs
from agentrl.envs.prompt_data_config import PROMPT_DATA_ID, PromptDataConfig
from agentrl.errors import ConfigError
from agentrl.rollout.controller import RolloutConfig
from agentrl.run.async_config import AsyncConfig
from agentrl.trainer.config import (
    AlgorithmConfig,
    CriticConfig,
    OptimizerConfig,
    TorchBackendConfig,
    TorchOptions,
)


def _default_algorithm() -> AlgorithmConfig:
    return AlgorithmConfig()


def _default_optimizer() -> OptimizerConfig:
    return OptimizerConfig(lr=LAPTOP_LR)


LAPTOP_LR = 1e-4
"""The default lr, far above Search-R1's 1e-6 (3B-7B models, hundreds of steps): the laptop run of a
135M model gets only a handful of optimizer steps (those with a group whose rewards differ)."""


def _train_rollout() -> RolloutConfig:
    return RolloutConfig(max_new_tokens=32, max_context=768, temperature=1.0)


@dataclass(frozen=True)
class PlacementConfig:
    """How a GPU run shares its GPUs between trainer ranks and engines (docs/placement.md)."""

    placement: Literal["colocated", "shared", "disaggregated"] = "colocated"
    """GPU sharing. ``colocated`` time-shares every GPU between trainer ranks and engines (engines
    release their memory during train steps); ``shared`` puts them on the same GPUs too but both keep
    their memory and may run at once (asynchronous training on one GPU); ``disaggregated`` puts the
    trainer on GPUs [0, trainer_gpus) and engines on the rest, weights synced by broadcast."""
    num_gpus: int = 0
    """GPUs of the run (0: none). One Ray placement-group bundle each."""
    trainer_gpus: int | None = field(default=None, metadata={"rare": True})
    """Trainer ranks (one GPU each). Default: all GPUs (colocated) or half of them (disaggregated)."""

    def __post_init__(self) -> None:
        if self.num_gpus < 0:
            raise ConfigError(f"--num-gpus={self.num_gpus} must be >= 0 (0: no GPUs)")
        if self.placement == "disaggregated" and self.num_gpus == 1:
            raise ConfigError("--placement disaggregated needs --num-gpus >= 2 (trainer and engines apart)")
        if self.trainer_gpus is None:
            return
        if self.num_gpus == 0:
            raise ConfigError("--trainer-gpus needs --num-gpus N (the GPUs to split); drop it on CPU")
        if self.placement in ("colocated", "shared") and self.trainer_gpus != self.num_gpus:
            raise ConfigError(
                f"--placement {self.placement} shares all {self.num_gpus} GPUs between trainer and engines, so "
                f"--trainer-gpus must be {self.num_gpus} (or unset); use --placement disaggregated to split"
            )
        if self.placement == "disaggregated" and not 1 <= self.trainer_gpus < self.num_gpus:
            raise ConfigError(
                f"--trainer-gpus={self.trainer_gpus} must be between 1 and {self.num_gpus - 1} with "
                f"--placement disaggregated --num-gpus {self.num_gpus}: engines need the remaining GPUs"
            )


@dataclass(frozen=True)
class TrainConfig:
    """Everything ``agentrl train`` needs, composed of each component's own config; validated on
    construction. Rarely changed fields (``metadata={"rare": True}``) are listed by ``--help-all``."""

    env: str = field(default="search", metadata={"group": "task"})
    """Env to train on: a short name (``search``) or an id (``agentrl/Search-v0``). Ignored with --suite."""
    suite: str | None = field(default=None, metadata={"group": "task"})
    """Train on an env suite (a name in envs_registry/ or a YAML path) instead of a single env."""
    env_kwargs: dict[str, Any] | None = field(default=None, metadata={"group": "task"})
    """Env constructor kwargs as JSON, e.g. '{"hops": 1}'. Default: the env's laptop preset
    (agentrl/envs/presets.py; Search: single-hop questions, Search-R1 format scores); '{}' for none."""
    split: str = field(default="train", metadata={"group": "task", "rare": True})
    """Split of the env's tasks to train on."""
    eval_split: str = field(default="test", metadata={"group": "task", "rare": True})
    """Split the periodic and before/after evaluations use."""
    data: PromptDataConfig = field(default_factory=PromptDataConfig, metadata={"group": "data"})
    """Train on a prompt file with a reward instead of an env (slime's --prompt-data; docs/data.md)."""
    model: str = field(default="smollm2-135m", metadata={"group": "model"})
    """Policy to start from: a local HF folder or an alias (smollm2-135m, tiny-gpt2)."""
    backend: Literal["torch", "megatron"] = field(default="torch", metadata={"group": "model"})
    """Training backend: plain torch (CPU, one GPU) or Megatron-core (GPUs)."""
    megatron_args: tuple[str, ...] = field(default=(), metadata={"group": "model", "rare": True})
    """Megatron flags. E.g. --megatron-args=--tensor-model-parallel-size=2 (with --backend megatron)."""
    rollout: RolloutConfig = field(default_factory=_train_rollout, metadata={"group": "episode"})
    """Turn limit, token budgets, sampling and concurrency of the training episodes."""
    rollout_batch_size: int = field(default=4, metadata={"group": "batch"})
    """Prompts (tasks) per rollout."""
    n_samples_per_prompt: int = field(default=4, metadata={"group": "batch"})
    """Episodes per prompt; they form one group for GRPO-style advantages."""
    global_batch_size: int = field(default=16, metadata={"group": "batch"})
    """Episodes per optimizer step."""
    steps_per_rollout: int = field(default=1, metadata={"group": "batch"})
    """Optimizer steps per rollout; rollout_batch_size x n_samples == global_batch_size x this."""
    num_rollouts: int = field(default=8, metadata={"group": "batch"})
    """Rollouts (generate -> train -> sync iterations) in the run; 0 only evaluates (no trainer starts)."""
    over_sample: float = field(default=1.0, metadata={"group": "batch", "rare": True})
    """Sample this many times rollout_batch_size prompts when the dynamic filter is on, so enough survive."""
    dynamic_filter: bool = field(default=True, metadata={"group": "batch"})
    """Train only on groups whose rewards differ, DAPO-style. Groups whose rewards all agree carry no
    GRPO signal; the rollout/ metrics still cover every episode."""
    group_filter: str | None = field(default=None, metadata={"group": "batch", "rare": True})
    """package.module:fn(group: list[Trajectory]) -> bool replacing the dynamic filter's test (docs/data.md)."""
    sample_filter: str | None = field(default=None, metadata={"group": "batch", "rare": True})
    """package.module:fn(trajectory) -> bool; episodes it rejects are dropped before training."""
    buffer: str | None = field(default=None, metadata={"group": "batch", "rare": True})
    """package.module:Class with add(groups, step) and take(n, step): groups reused in later rollouts."""
    inference: EngineConfig = field(default_factory=EngineConfig, metadata={"group": "engine"})
    """The inference engine (embedded or SGLang) and its servers."""
    placement: PlacementConfig = field(default_factory=PlacementConfig, metadata={"group": "placement"})
    """GPUs and how trainer and engines share them."""
    eval_interval: int = field(default=0, metadata={"group": "eval"})
    """Evaluate every this many rollouts (0: only before and after training)."""
    eval_episodes: int = field(default=16, metadata={"group": "eval"})
    """Tasks per evaluation (greedy, one sample each); 0 disables evaluation. With --eval-prompt-data
    every prompt of the eval datasets is evaluated (0 still disables)."""
    n_samples_per_eval_prompt: int = field(default=1, metadata={"group": "eval", "rare": True})
    """Samples per eval task: 1 is greedy; more sample at --temperature, for pass@k and mean@k."""
    save: str | None = field(default=None, metadata={"group": "checkpoint"})
    """Checkpoint folder (atomic step_N/ dirs and a latest pointer); none: no checkpoints."""
    save_interval: int = field(default=5, metadata={"group": "checkpoint"})
    """Checkpoint every this many rollouts (and at the end)."""
    keep_last: int = field(default=2, metadata={"group": "checkpoint", "rare": True})
    """Checkpoints kept on disk (older ones are pruned)."""
    resume: bool = field(default=False, metadata={"group": "checkpoint"})
    """Continue from the latest complete checkpoint in --save (exact: tasks, RNG, optimizer)."""
    export_hf: bool = field(default=True, metadata={"group": "checkpoint", "rare": True})
    """At the end write the trained policy as an HF folder under the log dir (for agentrl eval)."""
    log_dir: str | None = field(default=None, metadata={"group": "logging"})
    """Where metrics.jsonl, TensorBoard events, rollout dumps and plots go (default: runs/<time>)."""
    dump_interval: int = field(default=1, metadata={"group": "logging", "rare": True})
    """Dump the rollouts as JSONL every this many rollouts (0: never)."""
    progress: bool = field(default=True, metadata={"group": "logging", "rare": True})
    """Show a tqdm progress bar with live reward and success."""
    seed: int = field(default=0, metadata={"group": "run"})
    """Seed of the task order, sampling and torch RNGs."""
    time_limit_s: float = field(default=0.0, metadata={"group": "run"})
    """Wall-clock budget in seconds (0: none). The run stops before a rollout it could not finish in time
    (estimated from its slowest so far, plus one evaluation), checkpoints (with --save), evaluates and
    exports as at its end; --resume continues it. For schedulers and time-limited machines."""
    max_failed_fraction: float = field(default=0.5, metadata={"group": "run", "rare": True})
    """Stop the run (exit 1) when more than this fraction of one rollout's episodes FAILED or were
    ABORTED (a dead engine, sandbox, env, tool or reward); 1 never stops."""
    max_skipped_steps: int = field(default=20, metadata={"group": "run", "rare": True})
    """Stop the run (exit 1) after this many rollouts in a row trained nothing (every group's rewards
    agreed); 0 never stops."""
    asynchronous: AsyncConfig = field(default_factory=AsyncConfig, metadata={"group": "async"})
    """Overlap generation with training (--async-mode), the weight-sync interval and the staleness
    bound (docs/async.md)."""
    ray_address: str | None = field(default=None, metadata={"group": "run", "rare": True})
    """Ray cluster address; none starts a local Ray bound to 127.0.0.1."""
    num_cpus: int | None = field(default=None, metadata={"group": "run", "rare": True})
    """CPUs of the local Ray instance and torch threads per actor (default: all)."""
    debug_rollout_only: bool = field(default=False, metadata={"group": "run", "rare": True})
    """Generate and log rollouts, never train (to check envs, prompts and rewards)."""
    debug_train_only: str | None = field(default=None, metadata={"group": "run", "rare": True})
    """Replay rollouts from this JSONL dump (or dump folder) instead of generating; no engine."""
    debug_shuffle_rewards: bool = field(default=False, metadata={"group": "run", "rare": True})
    """A control run: train on each group's rewards shuffled among its episodes (seeded), so advantages
    carry no information about which episode did well; the logged metrics keep the true rewards."""
    algorithm: AlgorithmConfig = field(default_factory=_default_algorithm)
    """Advantage estimator, policy loss, clipping, KL, TIS."""
    optimizer: OptimizerConfig = field(default_factory=_default_optimizer)
    """AdamW and the lr schedule."""
    critic: CriticConfig = field(default_factory=CriticConfig, metadata={"group": "critic"})
    """The value model of --advantage-estimator ppo (docs/critic.md)."""
    torch: TorchOptions = field(default_factory=TorchOptions, metadata={"rare": True})
    """Settings of the torch backend (device, precision, micro-batch size)."""

    def __post_init__(self) -> None:
        self._resolve_prompt_data()
        if self.env_kwargs is None:  # resolved here, so that the logged config shows what ran
            object.__setattr__(self, "env_kwargs", laptop_env_kwargs(self.env, self.suite))
        self._check_batch()
        opt = self.optimizer
        if opt.lr_decay_style != "constant" and opt.lr_decay_steps == 0:  # resolved: the config shows it
            budget = max(1, self.num_rollouts * self.steps_per_rollout - opt.warmup_steps)
            object.__setattr__(self, "optimizer", dataclasses.replace(opt, lr_decay_steps=budget))
        critic = self.critic
        if critic.critic_lr_decay_style != "constant" and critic.critic_lr_decay_steps == 0:
            budget = max(1, self.num_rollouts * self.steps_per_rollout - critic.critic_lr_warmup_steps)
            object.__setattr__(self, "critic", dataclasses.replace(critic, critic_lr_decay_steps=budget))
        if self.num_rollouts < 0:
            raise ConfigError(f"--num-rollouts={self.num_rollouts} must be >= 0 (0: only evaluate)")
        if self.n_samples_per_eval_prompt < 1:
            raise ConfigError(f"--n-samples-per-eval-prompt={self.n_samples_per_eval_prompt} must be >= 1")
        positive = {
            "max_turns": self.rollout.max_turns if self.rollout.max_turns is not None else 1,
            "save_interval": self.save_interval,
            "keep_last": self.keep_last,
        }
        for name, value in positive.items():
            if value < 1:
                raise ConfigError(f"--{name.replace('_', '-')}={value} must be >= 1")
        for name, value in {"eval_interval": self.eval_interval, "eval_episodes": self.eval_episodes}.items():
            if value < 0:
                raise ConfigError(f"--{name.replace('_', '-')}={value} must be >= 0 (0 turns it off)")
        if not 0 <= self.max_failed_fraction <= 1:
            raise ConfigError(
                f"--max-failed-fraction={self.max_failed_fraction} must be in [0, 1] (1: never stop)"
            )
        if self.max_skipped_steps < 0:
            raise ConfigError(f"--max-skipped-steps={self.max_skipped_steps} must be >= 0 (0: never stop)")
        if self.time_limit_s < 0:
            raise ConfigError(f"--time-limit-s={self.time_limit_s} must be >= 0 (0: no limit)")
        if self.dump_interval < 0:
            raise ConfigError(f"--dump-interval={self.dump_interval} must be >= 0 (0: never)")
        if self.rollout.temperature <= 0:
            raise ConfigError(
                f"--temperature={self.rollout.temperature} must be > 0 "
                "(RL needs sampling; use agentrl eval for greedy decoding)"
            )
        if self.over_sample < 1:
            raise ConfigError(f"--over-sample={self.over_sample} must be >= 1 (1: no over-sampling)")
        if self.resume and not self.save:
            raise ConfigError("--resume needs --save DIR: the folder whose latest checkpoint to continue")
        if self.debug_rollout_only and self.debug_train_only:
            raise ConfigError("--debug-rollout-only and --debug-train-only exclude each other; pick one")
        self.asynchronous.check(self)

    def _resolve_prompt_data(self) -> None:
        """``--prompt-data`` / ``--eval-prompt-data``: the run's env becomes the prompt-data env with the
        data flags as its kwargs, and ``--num-rollouts 0`` starts no trainer (resolved here, so that the
        logged config shows what ran and round-trips through --config)."""
        data = self.data
        if self.num_rollouts == 0 and not self.debug_rollout_only:
            if self.eval_episodes == 0:
                raise ConfigError(
                    "--num-rollouts 0 only evaluates, but --eval-episodes 0 turns evaluation off"
                )
            object.__setattr__(self, "debug_rollout_only", True)
        if not data.active:
            return
        if self.suite is not None or self.env not in ("search", PROMPT_DATA_ID):
            raise ConfigError(
                "--prompt-data / --eval-prompt-data make the prompt file the run's env; drop --env / --suite"
            )
        if not data.prompt_data and self.num_rollouts > 0:
            raise ConfigError(
                "--eval-prompt-data needs --prompt-data FILE to train on (or --num-rollouts 0 to only evaluate)"
            )
        object.__setattr__(self, "env", PROMPT_DATA_ID)
        object.__setattr__(self, "env_kwargs", {**(self.env_kwargs or {}), **data.env_kwargs()})

    def _check_batch(self) -> None:
        sizes = {
            "rollout_batch_size": self.rollout_batch_size,
            "n_samples_per_prompt": self.n_samples_per_prompt,
            "global_batch_size": self.global_batch_size,
            "steps_per_rollout": self.steps_per_rollout,
        }
        for name, value in sizes.items():
            if value < 1:
                raise ConfigError(f"--{name.replace('_', '-')}={value} must be >= 1")
        episodes = self.rollout_batch_size * self.n_samples_per_prompt
        if episodes != self.global_batch_size * self.steps_per_rollout:
            fix = (
                f"set --global-batch-size {episodes // self.steps_per_rollout}"
                if episodes % self.steps_per_rollout == 0
                else f"set --steps-per-rollout 1 --global-batch-size {episodes}"
            )
            raise ConfigError(
                f"rollout_batch_size ({self.rollout_batch_size}) x n_samples_per_prompt "
                f"({self.n_samples_per_prompt}) = {episodes} episodes per rollout, but global_batch_size "
                f"({self.global_batch_size}) x steps_per_rollout ({self.steps_per_rollout}) = "
                f"{self.global_batch_size * self.steps_per_rollout} trained per rollout; they must be "
                f"equal. Fix: {fix}, or change --rollout-batch-size / --n-samples-per-prompt."
            )
        if self.global_batch_size % self.n_samples_per_prompt:
            raise ConfigError(
                f"global_batch_size ({self.global_batch_size}) must be a multiple of n_samples_per_prompt "
                f"({self.n_samples_per_prompt}) so every optimizer step sees whole groups"
            )

    def torch_backend_config(self) -> TorchBackendConfig:
        """The torch backend's config with this run's algorithm, optimizer and seed."""
        return TorchBackendConfig.of(self.torch, self.algorithm, self.optimizer, self.seed, self.critic)
