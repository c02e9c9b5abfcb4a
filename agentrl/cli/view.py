"""`agentrl view FILE.jsonl -o page.html`: one self-contained HTML page of trajectories, token by token.

The tokenizer comes from ``--model``, else from the ``model`` the rollout driver records in every
trajectory's metrics (training dumps, eval episodes, `agentrl rollout` output); without one, token ids
are shown instead of text.

Example::

    agentrl view search.jsonl -o search.html
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from agentrl.errors import AgentRLError, ConfigError

log = logging.getLogger(__name__)


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("view", help="write an HTML page showing trajectories token by token")
    p.add_argument("file", help="trajectories JSONL (from agentrl rollout or a training dump)")
    p.add_argument("-o", "--out", default=None, help="output HTML (default: FILE with .html)")
    p.add_argument("--model", default=None, help="model folder or alias whose tokenizer decodes the ids")
    p.add_argument("--limit", type=int, default=200, help="show at most this many episodes")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    try:
        return _run(args)
    except AgentRLError as e:
        print(f"agentrl view: {e}", file=sys.stderr)
        return 2


def _run(args: argparse.Namespace) -> int:
    from agentrl.rollout.view import render_html
    from agentrl.types import load_jsonl

    source = Path(args.file)
    if not source.is_file():
        raise ConfigError(
            f"{args.file}: no such file (give a trajectories JSONL: agentrl rollout --out, "
            "a run's rollouts/step_N.jsonl or an eval's episodes.jsonl)"
        )
    try:
        trajectories = [t for _, t in zip(range(args.limit), load_jsonl(source), strict=False)]
    except (ValueError, UnicodeDecodeError) as e:
        raise ConfigError(str(e)) from e
    model = args.model or next((t.metrics.get("model") for t in trajectories if t.metrics.get("model")), None)
    tokenizer = None
    if model:
        from transformers import AutoTokenizer

        from agentrl.models import resolve_model

        tokenizer = AutoTokenizer.from_pretrained(resolve_model(model))
    else:
        log.warning("no --model given and none recorded in %s: showing token ids", args.file)
    out = Path(args.out or source.with_suffix(".html"))
    out.write_text(render_html(trajectories, tokenizer, title=f"agentrl · {source.name}"), encoding="utf-8")
    print(f"wrote {out} ({len(trajectories)} episodes)")
    return 0
