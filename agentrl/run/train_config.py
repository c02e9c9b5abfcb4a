"""The configuration of one training run: what to train on, batch shape, budgets, eval, checkpoints, logs.

``agentrl train --help`` is generated from these dataclasses (see :mod:`agentrl.cli.dataclass_args`), so
each field's docstring is its help text. The defaults are the laptop run that
``agentrl train --env search --max-turns 5`` performs on a 2-core CPU: SmolLM2-135M-Instruct, the
embedded engine, the torch backend, a short run that finishes in minutes and prints what improved.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal

from agentrl.errors import AgentRLError, ConfigError
from agentrl.trainer.config import AlgorithmConfig, OptimizerConfig, TorchBackendConfig


def _default_algorithm() -> AlgorithmConfig:
    return AlgorithmConfig()


def _default_optimizer() -> OptimizerConfig:
    return OptimizerConfig(lr=LAPTOP_LR)


LAPTOP_LR = 1e-4
"""The default lr, far above Search-R1's 1e-6 (3B-7B models, hundreds of steps): the laptop run of a
135M model gets only a handful of optimizer steps (those with a group whose rewards differ)."""

LAPTOP_ENV_KWARGS: dict[str, dict[str, Any]] = {
    "agentrl/Search-v0": {
        "hops": 1,
        "structure_format_score": 0.2,
        "final_format_score": 0.1,
        "retrieval_score": 0.1,
    },
}
"""Env kwargs that ``--env`` gets when no ``--env-kwargs`` is given (and no ``--suite``), per env id.

Why Search has one: SmolLM2-135M-Instruct almost never writes Search-R1's tags (measured: with the
Search-R1 prompt it answers in prose; 0 to 12% of episodes sampled at temperature 1 end with an
``<answer>`` tag, 0 of 16 greedy ones, none with a right answer), so with the exact-match reward every
group's rewards agree and GRPO has nothing to learn from. The preset trains on single-hop questions with Search-R1's own partial credit for format
(``compute_score_em``: 0.1 for an answer tag, 0.2 for a well-formed episode, +0.1 when a retrieved
passage held the answer). It is a different reward from plain Search-v0, so it is visible: the resolved
config logs it, and ``--env-kwargs '{}'`` turns it off. Success (exact match) is reported as before.
"""


def laptop_env_kwargs(env: str, suite: str | None) -> dict[str, Any]:
    """The :data:`LAPTOP_ENV_KWARGS` preset of ``env`` (a short name or an id); none with a suite."""
    if suite is not None:
        return {}
    from agentrl.envs.registry import resolve

    try:
        env_id = resolve(env)
    except AgentRLError:  # an unknown or ambiguous name fails later, where the env is made
        return {}
    return dict(LAPTOP_ENV_KWARGS.get(env_id, {}))


@dataclass(frozen=True)
class TrainConfig:
    """Everything ``agentrl train`` needs; validated on construction."""

    CLI_SKIP: ClassVar[frozenset[str]] = frozenset({"torch.algorithm", "torch.optimizer", "torch.seed"})
    """Nested fields the CLI does not expose twice: they are set from the top-level ones."""

    env: str = field(default="search", metadata={"group": "task"})
    """Env to train on: a short name (``search``) or an id (``agentrl/Search-v0``). Ignored with --suite."""
    suite: str | None = field(default=None, metadata={"group": "task"})
    """Train on an env suite (a name in envs_registry/ or a YAML path) instead of a single env."""
    env_kwargs: dict[str, Any] | None = field(default=None, metadata={"group": "task"})
    """Env constructor kwargs as JSON, e.g. '{"hops": 1}'. Default: the env's LAPTOP_ENV_KWARGS preset
    (Search: single-hop questions, Search-R1 format scores); '{}' for none."""
    split: str = field(default="train", metadata={"group": "task"})
    """Split of the env's tasks to train on."""
    eval_split: str = field(default="test", metadata={"group": "task"})
    """Split the periodic and before/after evaluations use."""
    model: str = field(default="smollm2-135m", metadata={"group": "model"})
    """Policy to start from: a local HF folder or an alias (smollm2-135m, tiny-gpt2)."""
    backend: Literal["torch", "megatron"] = field(default="torch", metadata={"group": "model"})
    """Training backend: plain torch (CPU, one GPU) or Megatron-core (GPUs)."""
    engine: Literal["embedded", "sglang"] = field(default="embedded", metadata={"group": "model"})
    """Inference engine for rollouts: in-process transformers (CPU default) or SGLang servers."""
    rollout_batch_size: int = field(default=4, metadata={"group": "batch"})
    """Prompts (tasks) per rollout."""
    n_samples_per_prompt: int = field(default=4, metadata={"group": "batch"})
    """Episodes per prompt; they form one group for GRPO-style advantages."""
    global_batch_size: int = field(default=16, metadata={"group": "batch"})
    """Episodes per optimizer step."""
    steps_per_rollout: int = field(default=1, metadata={"group": "batch"})
    """Optimizer steps per rollout; rollout_batch_size x n_samples == global_batch_size x this."""
    num_rollouts: int = field(default=8, metadata={"group": "batch"})
    """Rollouts (generate -> train -> sync iterations) in the run."""
    over_sample: float = field(default=1.0, metadata={"group": "batch"})
    """Sample this many times rollout_batch_size prompts when the dynamic filter is on, so enough survive."""
    dynamic_filter: bool = field(default=True, metadata={"group": "batch"})
    """Train only on groups whose rewards differ, DAPO-style. Groups whose rewards all agree carry no
    GRPO signal; the rollout/ metrics still cover every episode."""
    max_turns: int = field(default=5, metadata={"group": "episode"})
    """Agent turns per episode before it is truncated."""
    max_new_tokens: int = field(default=32, metadata={"group": "episode"})
    """Sampled tokens per turn at most."""
    max_context: int = field(default=768, metadata={"group": "episode"})
    """Token budget of a whole episode (prompt + response); ending on it is TRUNCATED."""
    temperature: float = field(default=1.0, metadata={"group": "episode"})
    """Sampling temperature for training rollouts."""
    top_p: float = field(default=1.0, metadata={"group": "episode"})
    """Nucleus sampling for training rollouts."""
    max_concurrency: int = field(default=64, metadata={"group": "episode"})
    """Episodes in flight at once."""
    eval_interval: int = field(default=0, metadata={"group": "eval"})
    """Evaluate every this many rollouts (0: only before and after training)."""
    eval_episodes: int = field(default=16, metadata={"group": "eval"})
    """Tasks per evaluation (greedy, one sample each); 0 disables evaluation."""
    save: str | None = field(default=None, metadata={"group": "checkpoint"})
    """Checkpoint folder (atomic step_N/ dirs and a latest pointer); none: no checkpoints."""
    save_interval: int = field(default=5, metadata={"group": "checkpoint"})
    """Checkpoint every this many rollouts (and at the end)."""
    keep_last: int = field(default=2, metadata={"group": "checkpoint"})
    """Checkpoints kept on disk (older ones are pruned)."""
    resume: bool = field(default=False, metadata={"group": "checkpoint"})
    """Continue from the latest complete checkpoint in --save (exact: tasks, RNG, optimizer)."""
    export_hf: bool = field(default=True, metadata={"group": "checkpoint"})
    """At the end write the trained policy as an HF folder under the log dir (for agentrl eval)."""
    log_dir: str | None = field(default=None, metadata={"group": "logging"})
    """Where metrics.jsonl, TensorBoard events, rollout dumps and plots go (default: runs/<time>)."""
    dump_interval: int = field(default=1, metadata={"group": "logging"})
    """Dump the rollouts as JSONL every this many rollouts (0: never)."""
    progress: bool = field(default=True, metadata={"group": "logging"})
    """Show a tqdm progress bar with live reward and success."""
    seed: int = field(default=0, metadata={"group": "run"})
    """Seed of the task order, sampling and torch RNGs."""
    time_limit_s: float = field(default=0.0, metadata={"group": "run"})
    """Wall-clock budget in seconds (0: none). The run stops before a rollout it could not finish in time
    (estimated from its slowest so far, plus one evaluation), checkpoints (with --save), evaluates and
    exports as at its end; --resume continues it. For schedulers and time-limited machines."""
    ray_address: str | None = field(default=None, metadata={"group": "run"})
    """Ray cluster address; none starts a local Ray bound to 127.0.0.1."""
    num_cpus: int | None = field(default=None, metadata={"group": "run"})
    """CPUs of the local Ray instance and torch threads per actor (default: all)."""
    debug_rollout_only: bool = field(default=False, metadata={"group": "run"})
    """Generate and log rollouts, never train (to check envs, prompts and rewards)."""
    debug_train_only: str | None = field(default=None, metadata={"group": "run"})
    """Replay rollouts from this JSONL dump (or dump folder) instead of generating; no engine."""
    sglang_python: str | None = field(default=None, metadata={"group": "sglang"})
    """Python of the SGLang venv (default: AGENTRL_SGLANG_PYTHON or the cache venv)."""
    sglang_urls: tuple[str, ...] = field(default=(), metadata={"group": "sglang"})
    """Use these running SGLang servers / router instead of launching servers."""
    num_engines: int = field(default=1, metadata={"group": "sglang"})
    """SGLang servers to launch."""
    sglang_args: tuple[str, ...] = field(default=(), metadata={"group": "sglang"})
    """Extra sglang.launch_server arguments; any --sglang-X flag passes through as --X."""
    placement: Literal["colocated", "disaggregated"] = field(default="colocated", metadata={"group": "run"})
    """GPU sharing. ``colocated`` time-shares every GPU between trainer ranks and engines (engines
    release their memory during train steps); ``disaggregated`` puts the trainer on GPUs
    [0, trainer_gpus) and engines on the rest, weights synced by broadcast (docs/placement.md)."""
    num_gpus: int = field(default=0, metadata={"group": "run"})
    """GPUs of the run (0: none). One Ray placement-group bundle each."""
    trainer_gpus: int | None = field(default=None, metadata={"group": "run"})
    """Trainer ranks (one GPU each). Default: all GPUs (colocated) or half of them (disaggregated)."""
    megatron_args: tuple[str, ...] = field(default=(), metadata={"group": "model"})
    """Megatron flags. E.g. --megatron-args=--tensor-model-parallel-size=2 (with --backend megatron)."""
    algorithm: AlgorithmConfig = field(default_factory=_default_algorithm)
    """Advantage estimator, policy loss, clipping, KL, TIS."""
    optimizer: OptimizerConfig = field(default_factory=_default_optimizer)
    """AdamW and the lr schedule."""
    torch: TorchBackendConfig = field(default_factory=TorchBackendConfig)
    """Settings of the torch backend (its algorithm / optimizer / seed come from the fields above)."""

    def __post_init__(self) -> None:
        if self.env_kwargs is None:  # resolved here, so that the logged config shows what ran
            object.__setattr__(self, "env_kwargs", laptop_env_kwargs(self.env, self.suite))
        self._check_batch()
        opt = self.optimizer
        if opt.lr_decay_style != "constant" and opt.lr_decay_steps == 0:  # resolved: the config shows it
            budget = max(1, self.num_rollouts * self.steps_per_rollout - opt.warmup_steps)
            object.__setattr__(self, "optimizer", dataclasses.replace(opt, lr_decay_steps=budget))
        positive = {
            "num_rollouts": self.num_rollouts,
            "max_turns": self.max_turns,
            "max_new_tokens": self.max_new_tokens,
            "max_context": self.max_context,
            "max_concurrency": self.max_concurrency,
            "save_interval": self.save_interval,
            "keep_last": self.keep_last,
            "num_engines": self.num_engines,
        }
        for name, value in positive.items():
            if value < 1:
                raise ConfigError(f"--{name.replace('_', '-')}={value} must be >= 1")
        for name, value in {"eval_interval": self.eval_interval, "eval_episodes": self.eval_episodes}.items():
            if value < 0:
                raise ConfigError(f"--{name.replace('_', '-')}={value} must be >= 0 (0 turns it off)")
        if self.time_limit_s < 0:
            raise ConfigError(f"--time-limit-s={self.time_limit_s} must be >= 0 (0: no limit)")
        if self.dump_interval < 0:
            raise ConfigError(f"--dump-interval={self.dump_interval} must be >= 0 (0: never)")
        if self.temperature <= 0 or not 0 < self.top_p <= 1:
            raise ConfigError(
                f"--temperature={self.temperature} must be > 0 and --top-p={self.top_p} in (0, 1] "
                "(RL needs sampling; use agentrl eval for greedy decoding)"
            )
        if self.over_sample < 1:
            raise ConfigError(f"--over-sample={self.over_sample} must be >= 1 (1: no over-sampling)")
        if self.resume and not self.save:
            raise ConfigError("--resume needs --save DIR: the folder whose latest checkpoint to continue")
        if self.debug_rollout_only and self.debug_train_only:
            raise ConfigError("--debug-rollout-only and --debug-train-only exclude each other; pick one")
        self._check_placement()

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

    def _check_placement(self) -> None:
        if self.num_gpus < 0:
            raise ConfigError(f"--num-gpus={self.num_gpus} must be >= 0 (0: no GPUs)")
        if self.placement == "disaggregated" and self.num_gpus == 1:
            raise ConfigError("--placement disaggregated needs --num-gpus >= 2 (trainer and engines apart)")
        if self.trainer_gpus is None:
            return
        if self.num_gpus == 0:
            raise ConfigError("--trainer-gpus needs --num-gpus N (the GPUs to split); drop it on CPU")
        if self.placement == "colocated" and self.trainer_gpus != self.num_gpus:
            raise ConfigError(
                f"--placement colocated shares all {self.num_gpus} GPUs between trainer and engines, so "
                f"--trainer-gpus must be {self.num_gpus} (or unset); use --placement disaggregated to split"
            )
        if self.placement == "disaggregated" and not 1 <= self.trainer_gpus < self.num_gpus:
            raise ConfigError(
                f"--trainer-gpus={self.trainer_gpus} must be between 1 and {self.num_gpus - 1} with "
                f"--placement disaggregated --num-gpus {self.num_gpus}: engines need the remaining GPUs"
            )

    def torch_backend_config(self) -> TorchBackendConfig:
        """The torch backend's config with this run's algorithm, optimizer and seed."""
        return dataclasses.replace(
            self.torch, algorithm=self.algorithm, optimizer=self.optimizer, seed=self.seed
        )
