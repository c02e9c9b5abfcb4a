"""`agentrl eval`: evaluate a policy on a held-out suite and write a report (JSON, Markdown, PNG per env).

Examples::

    agentrl eval --suite search-heldout --model runs/20250101-120000/hf_model
    agentrl eval --suite none --env search --split test --episodes 50 --n-samples-per-prompt 4
    agentrl eval --run runs/20250101-120000      # repeat a training run's own evaluation on its hf_model
    agentrl eval --eval-prompt-data gsm8k gsm8k.jsonl aime aime.jsonl --input-key question \\
        --label-key answer --reward math --n-samples-per-prompt 4     # pass@k per dataset (docs/data.md)
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from agentrl.cli.dataclass_args import (
    add_dataclass_args,
    build_dataclass,
    compact_help_formatter,
    given_fields,
)
from agentrl.errors import AgentRLError


def add_parser(subparsers: Any) -> None:
    from agentrl.eval.evaluate import EvalConfig

    parser = subparsers.add_parser(
        "eval",
        help="evaluate a policy on an env suite and write a report",
        description=__doc__,
        usage="agentrl eval [options]",
        formatter_class=compact_help_formatter,
    )
    spec = add_dataclass_args(parser, EvalConfig)
    parser.set_defaults(func=run, config_spec=spec)


def run(args: argparse.Namespace) -> int:
    import dataclasses

    from agentrl.cli.checks import check_env_inputs, check_model, check_prompt_data
    from agentrl.eval.evaluate import EvalConfig, make_plan, run_eval

    given = given_fields(args.config_spec, args)
    try:
        config = build_dataclass(EvalConfig, args.config_spec, args)
        if config.n_samples_per_prompt > 1 and "rollout.temperature" not in given:
            # pass@k over identical greedy samples would mean nothing: sample unless told otherwise
            config = dataclasses.replace(config, rollout=dataclasses.replace(config.rollout, temperature=1.0))
        plan = make_plan(config, given)
        for spec in plan.specs:
            check_env_inputs(spec.env, None, spec.kwargs)
        check_prompt_data(config.data)
        check_model(plan.model)
        _, paths = run_eval(config, plan)
    except AgentRLError as e:
        print(f"agentrl eval: {e}", file=sys.stderr)
        return 2
    print(paths["markdown"].read_text(encoding="utf-8"))  # the table, and with --run the comparison
    print("report: " + ", ".join(str(p) for p in paths.values()))
    return 0
