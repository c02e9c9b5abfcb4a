"""The `agentrl` command: `agentrl train | eval | rollout | view | envs | sandbox ...`.

Each subcommand lives in its own module of this package with two functions:
``add_parser(subparsers)`` (registers its arguments and ``set_defaults(func=run)``; optionally
``passthrough_prefix="--x-"`` to receive unknown ``--x-*`` flags in ``args.passthrough``) and
``run(args) -> int``. Heavy imports happen inside ``run`` so that ``agentrl --help`` is instant.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

SUBCOMMANDS = ("train", "sft", "eval", "rollout", "view", "envs", "sandbox")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="agentrl",
        description="agentrl: an agentic environment gym and multi-turn RL trainer for LLMs.",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in SUBCOMMANDS:
        try:
            module = importlib.import_module(f"agentrl.cli.{name}")
        except ModuleNotFoundError as e:  # a subcommand still being written on this branch
            if e.name != f"agentrl.cli.{name}":
                raise
            continue
        module.add_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if "--help-all" in argv:  # every flag, the rare ones included (plain --help lists the common ones)
        from agentrl.cli import dataclass_args

        dataclass_args.SHOW_RARE = True
        argv = [a if a != "--help-all" else "--help" for a in argv]
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    # A subcommand may accept flags it does not know under a prefix (``train``: ``--sglang-*`` pass
    # through to sglang.launch_server); anything else unknown is an error, as with parse_args.
    prefix = getattr(args, "passthrough_prefix", None)
    flags = [a for a in extra if a.startswith("-")]
    if extra and (
        not prefix or not extra[0].startswith(prefix) or not all(f.startswith(prefix) for f in flags)
    ):
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    args.passthrough = extra
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
    )
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
