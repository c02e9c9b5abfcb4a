"""`agentrl sft`: supervised fine-tuning on demonstrations (flags generated from SFTConfig).

Examples::

    agentrl rollout --env search --policy expert --num-tasks 400 --n-samples-per-prompt 1 --out demos.jsonl
    agentrl sft --data demos.jsonl --lr 1e-4 --epochs 2 --log-dir runs/cold
    agentrl train --env search --model runs/cold/hf_model           # RL from the cold start
    agentrl sft --data chats.jsonl --backend megatron                 # chat JSONL: {"messages": [...]}
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from agentrl.cli.dataclass_args import add_dataclass_args, build_dataclass, compact_help_formatter
from agentrl.errors import AgentRLError, ConfigError


def add_parser(subparsers: Any) -> None:
    from agentrl.run.sft import SFTConfig

    parser = subparsers.add_parser(
        "sft",
        help="supervised fine-tuning on trajectories or chat JSONL (a cold start for RL)",
        description=__doc__,
        usage="agentrl sft --data FILE [options]",
        formatter_class=compact_help_formatter,
    )
    spec = add_dataclass_args(parser, SFTConfig)
    parser.set_defaults(func=run, config_spec=spec)


def run(args: argparse.Namespace) -> int:
    from agentrl.cli.checks import check_model
    from agentrl.run.sft import SFTConfig, run_sft, summary

    try:
        config: SFTConfig = build_dataclass(SFTConfig, args.config_spec, args)
        if not config.data:
            raise ConfigError("--data FILE is required: a JSONL of trajectories or chat messages")
        model_path = check_model(config.model)
        from transformers import AutoTokenizer

        from agentrl.run.sft_data import load_dataset

        data = load_dataset(
            config.data, AutoTokenizer.from_pretrained(model_path), max_length=config.max_length
        )
        result = run_sft(config, data, model_path)
    except AgentRLError as e:
        print(f"agentrl sft: {e}", file=sys.stderr)
        return 2
    print("\n".join(summary(result, data)))
    return 0
