"""Supervised examples for `agentrl sft`: token ids and the mask of the tokens to train on.

Two JSONL formats, told apart per line:

* **trajectories** (what ``agentrl rollout`` and training dumps write; a ``prompt_ids`` key, which wins
  over their ``messages`` transcript): the ids as they are, loss where ``loss_mask`` is 1. FAILED and ABORTED episodes are skipped (counted).
* **chat** (a ``messages`` key, optionally ``tools``): rendered with the model's own chat template; loss on
  the assistant turns only (their content and the token that closes them, e.g. ``<|im_end|>``, not the
  newline the template writes after it), except a message with ``"loss": 0``.

Why spans of text, not per-message tokenization: the template decides the text; tokenizing the whole
rendered conversation once gives exactly the ids the model sees, and each token is trained when its
characters lie inside an assistant span (found by rendering growing prefixes of the conversation).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from agentrl.errors import ConfigError
from agentrl.types import Message, Trajectory

TEMPLATE_KEYS = ("role", "content", "name", "tool_calls", "tool_call_id")
"""Message keys handed to the chat template (others, like ``loss``, are agentrl's)."""


@dataclass
class Example:
    """One training sequence: ``input_ids`` and a 0/1 ``loss_mask`` of the same length."""

    input_ids: list[int]
    loss_mask: list[int]

    @property
    def num_trained(self) -> int:
        return sum(self.loss_mask)


@dataclass
class Dataset:
    """The examples of a file and what was left out of it."""

    examples: list[Example] = field(default_factory=list)
    skipped_failed: int = 0
    """Trajectories not trained on (FAILED / ABORTED)."""
    truncated: int = 0
    """Examples cut to ``max_length``."""

    @property
    def num_tokens(self) -> int:
        return sum(len(e.input_ids) for e in self.examples)


def chat_example(messages: Sequence[Message], tokenizer: Any, tools: list[Any] | None = None) -> Example:
    """``messages`` rendered with ``tokenizer``'s chat template; loss on the assistant turns."""
    clean = [{k: m[k] for k in TEMPLATE_KEYS if k in m} for m in messages]

    def render(upto: int, generation_prompt: bool) -> str:
        text = tokenizer.apply_chat_template(
            clean[:upto], tools=tools, tokenize=False, add_generation_prompt=generation_prompt
        )
        return str(text)

    full = render(len(clean), False)
    spans: list[tuple[int, int]] = []
    for i, message in enumerate(messages):
        if message.get("role") != "assistant" or message.get("loss", 1) == 0:
            continue
        before, upto = render(i, True), render(i + 1, False)
        if not (upto.startswith(before) and full.startswith(upto)):
            raise ConfigError(
                "the chat template does not render this conversation prefix by prefix (message "
                f"{i} changes the text before it), so its assistant tokens cannot be located; "
                "give trajectories (prompt_ids/response_ids/loss_mask) instead"
            )
        end = len(upto.rstrip())  # the closing token is trained, the template's newline after it is not
        spans.append((len(before), end))
    if not spans:
        raise ConfigError('no assistant message to train on (or every one has "loss": 0)')
    encoded = tokenizer(full, add_special_tokens=False, return_offsets_mapping=True)
    ids, offsets = list(encoded["input_ids"]), list(encoded["offset_mapping"])
    mask = [int(any(a <= s and e <= b for a, b in spans) and e > s) for s, e in offsets]
    return Example(ids, mask)


def trajectory_example(trajectory: Trajectory) -> Example:
    """A trajectory's ids: prompt (mask 0) then response (its own mask)."""
    return Example(
        trajectory.prompt_ids + trajectory.response_ids,
        [0] * len(trajectory.prompt_ids) + trajectory.loss_mask,
    )


def load_dataset(path: str | Path, tokenizer: Any, *, max_length: int) -> Dataset:
    """Every example of the JSONL file ``path``; errors name the file and the line."""
    source = Path(path)
    if not source.is_file():
        raise ConfigError(f"{path}: no such file (give a JSONL of trajectories or of chat messages)")
    data = Dataset()
    with source.open(encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            example = _parse_line(line, tokenizer, where=f"{source}:{n}", data=data)
            if example is None:
                continue
            if len(example.input_ids) > max_length:
                data.truncated += 1
                example = Example(example.input_ids[:max_length], example.loss_mask[:max_length])
            if example.num_trained:
                data.examples.append(example)
    if not data.examples:
        raise ConfigError(f"{path}: no example with a token to train on")
    return data


def _parse_line(line: str, tokenizer: Any, *, where: str, data: Dataset) -> Example | None:
    try:
        record = json.loads(line)
    except json.JSONDecodeError as e:
        raise ConfigError(f"{where}: not valid JSON ({e.msg})") from e
    if not isinstance(record, dict):
        raise ConfigError(f"{where}: expected a JSON object, got {type(record).__name__}")
    if "prompt_ids" in record:
        try:
            trajectory = Trajectory.from_dict(record)
            trajectory.check()
        except (KeyError, TypeError, ValueError, AssertionError) as e:
            raise ConfigError(f"{where}: not a trajectory record ({type(e).__name__}: {e})") from e
        if not trajectory.trainable:
            data.skipped_failed += 1
            return None
        return trajectory_example(trajectory)
    if "messages" in record:
        messages = record["messages"]
        if not isinstance(messages, list) or not all(isinstance(m, dict) and "role" in m for m in messages):
            raise ConfigError(
                f"{where}: 'messages' must be a list of {{'role': ..., 'content': ...}} objects"
            )
        try:
            return chat_example(messages, tokenizer, record.get("tools"))
        except ConfigError as e:
            raise ConfigError(f"{where}: {e}") from e
    raise ConfigError(
        f"{where}: a line needs 'messages' (chat) or 'prompt_ids' (a trajectory); it has "
        f"{', '.join(map(repr, record)) or 'no keys'}"
    )
