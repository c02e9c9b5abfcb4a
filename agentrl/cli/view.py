"""`agentrl view FILE.jsonl -o page.html`: one self-contained HTML page of trajectories, token by token.

The tokenizer comes from ``--model``, else from the ``model`` that ``agentrl rollout`` recorded in each
trajectory's metrics; without one, token ids are shown instead of text.

Example::

    agentrl view search.jsonl -o search.html
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

log = logging.getLogger(__name__)


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("view", help="write an HTML page showing trajectories token by token")
    p.add_argument("file", help="trajectories JSONL (from agentrl rollout or a training dump)")
    p.add_argument("-o", "--out", default=None, help="output HTML (default: FILE with .html)")
    p.add_argument("--model", default=None, help="model folder or alias whose tokenizer decodes the ids")
    p.add_argument("--limit", type=int, default=200, help="show at most this many episodes")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from agentrl.types import load_jsonl
    from agentrl.rollout.view import render_html

    trajectories = [t for _, t in zip(range(args.limit), load_jsonl(args.file), strict=False)]
    model = args.model or next((t.metrics.get("model") for t in trajectories if t.metrics.get("model")), None)
    tokenizer = None
    if model:
        from transformers import AutoTokenizer

        from agentrl.models import resolve_model

        tokenizer = AutoTokenizer.from_pretrained(resolve_model(model))
    else:
        log.warning("no --model given and none recorded in %s: showing token ids", args.file)
    out = Path(args.out or Path(args.file).with_suffix(".html"))
    out.write_text(
        render_html(trajectories, tokenizer, title=f"agentrl · {Path(args.file).name}"), encoding="utf-8"
    )
    print(f"wrote {out} ({len(trajectories)} episodes)")
    return 0
