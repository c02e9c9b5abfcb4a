"""One self-contained HTML page that shows trajectories token by token (``agentrl view``).

Why per token: the trainer learns from exactly these ids and masks, so the page shows them, not
re-rendered text. Sampled tokens (mask 1) are green, shaded by their probability; prompt and
observation tokens (mask 0) are blue-grey; hovering a token shows its id and logprob. Each episode
also lists its turns (finish reason, tokens, tool calls and latency, reward), status and error.
"""

from __future__ import annotations

import html
import math
from collections import Counter
from collections.abc import Sequence
from typing import Any

from agentrl.types import Status, Trajectory

_CSS = """
body{font:14px/1.45 system-ui,sans-serif;margin:24px;color:#1d2330;background:#f6f7f9}
h1{font-size:20px;margin:0 0 4px} .sub{color:#5b6475;margin-bottom:16px}
details.ep{background:#fff;border:1px solid #dde1e7;border-radius:8px;margin:10px 0;padding:6px 12px}
details.ep>summary{cursor:pointer;font-weight:600;padding:4px 0}
.badge{display:inline-block;border-radius:10px;padding:0 8px;font-size:12px;margin-left:6px;color:#fff}
.completed{background:#2e8b57}.truncated{background:#c98a00}.aborted{background:#7a5cc2}.failed{background:#c0392b}
.meta{color:#5b6475;font-weight:400;font-size:13px;margin-left:8px}
table.turns{border-collapse:collapse;margin:8px 0;font-size:13px}
table.turns td,table.turns th{border:1px solid #e3e6eb;padding:2px 8px;text-align:right}
table.turns th{background:#f0f2f5}
.tok{white-space:pre-wrap;font:13px/1.6 ui-monospace,Menlo,monospace;word-break:break-word}
.tok span{border-radius:2px}
.tok .o{background:#dfe7f2;color:#34495e}
.tok .p{background:#eceef1;color:#6b7280}
.legend span{padding:1px 6px;border-radius:3px;margin-right:8px;font:12px ui-monospace,monospace}
.err{color:#c0392b;font-weight:600;margin:6px 0}
"""


def _token_spans(ids: Sequence[int], mask: Sequence[int], logprobs: Sequence[float], tokenizer: Any) -> str:
    """One ``<span>`` per token: class ``s`` (sampled, shaded by probability) or ``o`` (observation)."""
    parts = []
    pieces = tokenizer.convert_ids_to_tokens(list(ids)) if tokenizer is not None else None
    for i, tid in enumerate(ids):
        text = tokenizer.decode([tid], skip_special_tokens=False) if tokenizer is not None else f"[{tid}]"
        if pieces is not None and "\ufffd" in text:  # a partial UTF-8 byte: show the raw piece
            text = str(pieces[i])
        title = f"id {tid} · logprob {logprobs[i]:.3f}" if mask[i] else f"id {tid} · masked"
        if mask[i]:
            # Lighter green for less likely tokens: lightness 45% (p=1) to 85% (p≈0).
            light = 85 - 40 * math.exp(max(logprobs[i], -50.0))
            style = f' style="background:hsl(140,55%,{light:.0f}%)"'
            parts.append(f'<span class="s" title="{title}"{style}>{html.escape(text)}</span>')
        else:
            parts.append(f'<span class="o" title="{title}">{html.escape(text)}</span>')
    return "".join(parts)


def _turn_table(turns: Sequence[dict[str, Any]]) -> str:
    head = "<tr><th>turn</th><th>finish</th><th>sampled</th><th>obs</th><th>tool calls</th><th>tool s</th><th>gen s</th><th>reward</th></tr>"
    rows = [
        f"<tr><td>{k + 1}</td><td>{html.escape(str(t.get('finish_reason', '')))}</td>"
        f"<td>{t.get('n_sampled', 0)}</td><td>{t.get('n_obs', 0)}</td><td>{t.get('tool_calls', 0)}</td>"
        f"<td>{t.get('tool_latency_s', 0.0):.3f}</td><td>{t.get('gen_latency_s', 0.0):.2f}</td>"
        f"<td>{t.get('reward', 0.0):g}</td></tr>"
        for k, t in enumerate(turns)
    ]
    return f'<table class="turns">{head}{"".join(rows)}</table>'


def _episode(t: Trajectory, tokenizer: Any, open_: bool) -> str:
    status = t.status.value
    summary = (
        f"{html.escape(t.task_id or '?')} · sample {t.sample_index}"
        f'<span class="badge {status}">{status}</span>'
        f'<span class="meta">reward {t.reward:g} · {len(t.turns)} turns · {len(t.prompt_ids)} prompt + '
        f"{len(t.response_ids)} response tokens ({sum(t.loss_mask)} sampled) · group {html.escape(t.group_id)}"
        f" · weights v{t.weight_version}</span>"
    )
    error = f'<div class="err">{html.escape(t.error)}</div>' if t.error else ""
    prompt = _token_spans(t.prompt_ids, [0] * len(t.prompt_ids), [0.0] * len(t.prompt_ids), tokenizer)
    prompt = prompt.replace('class="o"', 'class="p"')
    response = _token_spans(t.response_ids, t.loss_mask, t.rollout_logprobs, tokenizer)
    return (
        f'<details class="ep"{" open" if open_ else ""}><summary>{summary}</summary>{error}'
        f"{_turn_table(t.turns)}"
        f'<details><summary>prompt ({len(t.prompt_ids)} tokens)</summary><div class="tok">{prompt}</div></details>'
        f'<div class="tok">{response}</div></details>'
    )


def render_html(
    trajectories: Sequence[Trajectory], tokenizer: Any = None, *, title: str = "agentrl rollout"
) -> str:
    """The page for ``trajectories``; ``tokenizer`` turns ids into text (ids are shown without one)."""
    statuses = Counter(t.status.value for t in trajectories)
    mean = sum(t.reward for t in trajectories) / max(1, len(trajectories))
    trainable = sum(t.status in (Status.COMPLETED, Status.TRUNCATED) for t in trajectories)
    stats = " · ".join(f"{k} {v}" for k, v in sorted(statuses.items()))
    legend = (
        '<div class="legend"><span style="background:hsl(140,55%,45%)">sampled, p≈1</span>'
        '<span style="background:hsl(140,55%,80%)">sampled, unlikely</span>'
        '<span class="o" style="background:#dfe7f2">observation (masked)</span>'
        '<span style="background:#eceef1">prompt (masked)</span> hover a token for its id and logprob</div>'
    )
    episodes = "".join(_episode(t, tokenizer, open_=i < 3) for i, t in enumerate(trajectories))
    return (
        f'<!doctype html><html><head><meta charset="utf-8"><title>{html.escape(title)}</title>'
        f"<style>{_CSS}</style></head><body><h1>{html.escape(title)}</h1>"
        f'<div class="sub">{len(trajectories)} episodes ({trainable} trainable) · {stats} · '
        f"mean reward {mean:.3f}</div>{legend}{episodes}</body></html>"
    )
