"""`agentrl train`: RL-train a policy on an env or suite (flags generated from TrainConfig).

With no flag besides the env it runs the laptop default on CPU (SmolLM2-135M-Instruct, embedded engine,
torch backend) and prints a summary of what improved::

    agentrl train --env search --max-turns 5
    agentrl train --env search --save ckpt/ --resume            # continue a run exactly
    agentrl train --engine sglang --sglang-mem-fraction-static 0.5 --model /models/Qwen2.5-3B
    agentrl train --config runs/20250101-120000/config.json --num-rollouts 4   # a logged config, changed
    agentrl train --prompt-data train.jsonl --input-key question --label-key answer --reward math \\
        --eval-prompt-data gsm8k gsm8k.jsonl aime aime.jsonl        # slime's workflow (docs/data.md)

Rarely changed settings are not listed here: ``agentrl train --help-all`` shows every flag.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import sys
from typing import Any

from agentrl.cli.dataclass_args import add_dataclass_args, build_dataclass, compact_help_formatter
from agentrl.errors import AgentRLError, RunFailedError
from agentrl.run.train_config import TrainConfig

log = logging.getLogger(__name__)
SGLANG_PREFIX = "--sglang-"


def add_parser(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "train",
        help="RL-train a policy on an env or a suite",
        description=__doc__,
        usage="agentrl train [options] [--sglang-ARG VALUE ...]",
        formatter_class=compact_help_formatter,
    )
    spec = add_dataclass_args(parser, TrainConfig)
    parser.set_defaults(func=run, config_spec=spec, passthrough_prefix=SGLANG_PREFIX)


def sglang_passthrough(extra: list[str]) -> tuple[str, ...]:
    """``--sglang-mem-fraction-static 0.5`` -> ``--mem-fraction-static 0.5`` for sglang.launch_server."""
    return tuple("--" + a[len(SGLANG_PREFIX) :] if a.startswith(SGLANG_PREFIX) else a for a in extra)


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    """The TrainConfig that ``args`` describe, with ``--sglang-*`` pass-through flags folded in."""
    config: TrainConfig = build_dataclass(TrainConfig, args.config_spec, args)
    extra = sglang_passthrough(list(getattr(args, "passthrough", []) or []))
    if not extra:
        return config
    inference = dataclasses.replace(config.inference, sglang_args=config.inference.sglang_args + extra)
    return dataclasses.replace(config, inference=inference)


def check_inputs(config: TrainConfig) -> None:
    """Everything a user can get wrong, before Ray or a model starts (see agentrl.cli.checks)."""
    from agentrl.cli.checks import (
        check_env_inputs,
        check_hooks,
        check_model,
        check_prompt_data,
        check_trajectory_file,
    )

    if config.debug_train_only:
        check_trajectory_file(config.debug_train_only, "--debug-train-only")
    else:
        check_env_inputs(config.env, config.suite, config.env_kwargs)
        check_prompt_data(config.data)
    hooks = {"--sample-filter": config.sample_filter, "--group-filter": config.group_filter}
    check_hooks({**hooks, "--buffer": config.buffer})
    check_model(config.model)
    if config.resume and config.save:
        from pathlib import Path

        from agentrl.errors import CheckpointError
        from agentrl.trainer.checkpoint import latest_checkpoint

        if latest_checkpoint(Path(config.save)) is None:
            raise CheckpointError(
                f"--resume: no complete checkpoint in {config.save}, so there is nothing to continue. Point "
                "--save at the folder of the run to continue, or drop --resume to start a new run."
            )


def run(args: argparse.Namespace) -> int:
    try:
        config = config_from_args(args)
        check_inputs(config)
    except AgentRLError as e:
        print(f"agentrl train: {e}", file=sys.stderr)
        return 2
    from ray.exceptions import RayActorError, RayTaskError

    from agentrl.run.loop import train

    try:
        result = train(config)
    except RunFailedError as e:  # the failure policy stopped it: not the user's input, exit 1
        print(f"agentrl train: {e}", file=sys.stderr)
        return 1
    except AgentRLError as e:
        # Raised inside an actor, Ray re-raises it as a RayTaskError that is also an AgentRLError, its
        # text a remote traceback: a user error is shown as the message it carries.
        cause = e.cause if isinstance(e, RayTaskError) else e
        print(f"agentrl train: {cause}", file=sys.stderr)
        return 2
    except RayActorError as e:
        print(
            f"agentrl train: an actor died ({type(e).__name__}: {e}). The run stopped; continue it with "
            "--save DIR --resume (from the last checkpoint).",
            file=sys.stderr,
        )
        return 1
    print(result.summary)
    if result.stopped_early:
        print(
            f"stopped by --time-limit-s after rollout {result.last_step} of {config.num_rollouts}"
            + ("; continue with --resume" if config.save else " (no --save: a resumed run would start over)")
        )
    print(f"logs: {result.log_dir} (metrics.jsonl, tensorboard/, rollouts/, curves.png)")
    if result.hf_dir:
        print(
            f"trained policy: {result.hf_dir}  (repeat the run's evaluation: agentrl eval --run {result.log_dir})"
        )
    return 0
