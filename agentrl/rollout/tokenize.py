"""Token-in, token-out bookkeeping of one conversation: prompt ids, sampled ids, observation ids.

The trainer must see exactly the ids the engine consumed and produced, so sampled ids are appended
as they came and never re-tokenized. Only text the *environment* wrote is tokenized, and it is
tokenized as the chat template's delta: the text the template adds when the new messages are
appended to the conversation so far. Two ways to get that delta:

* **exact** (the default whenever it works): render the conversation with the assistant turn just
  sampled (no generation prompt) and with the new messages added (with the generation prompt for the
  next assistant turn). The first rendering must start with the text of the ids we already hold; what
  follows it (e.g. ``<|im_end|>\\n`` when the model stopped on a stop string, or ``\\n`` after a sampled
  ``<|im_end|>``) closes the assistant turn, and the second rendering's extra text is the observation.
  Both are tokenized and masked out of the loss.
* **fixed base** (templates that rewrite history, e.g. dropping ``<think>`` of earlier turns, so the
  prefix check fails): the same two renderings of a fixed two-message base conversation give the
  closing suffix and the observation's delta; this is the approach verl takes for such templates.

For ``observation_format == "inline"`` (Search-R1), observation content is tokenized raw and appended
inside the open assistant turn.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from agentrl.tools.render import prepare_chat
from agentrl.types import Message

_BASE: list[Message] = [{"role": "user", "content": "agentrl-base-user"}]
_BASE_REPLY = "agentrl-base-reply"


@dataclass
class Conversation:
    """One episode's conversation as text and as token ids; ``text == decode(ids)`` by construction."""

    tokenizer: Any
    messages: list[Message]
    """The conversation as rendered (tools already folded in when the template ignores them)."""
    template_kwargs: dict[str, Any]
    """Extra ``apply_chat_template`` arguments (``tools=...`` for templates that render them)."""
    text: str = ""
    """Text of every id so far (prompt, sampled, observations)."""
    prompt_ids: list[int] = field(default_factory=list)
    special_ids: frozenset[int] = frozenset()
    pending: str | None = None
    """Text of the open assistant turn (sampled text, plus inline observations); ``None`` when closed."""
    closing_special: str = ""
    """The special token (e.g. ``<|im_end|>``) the last sampled turn stopped on, or ``""``."""

    @classmethod
    def start(cls, tokenizer: Any, messages: Sequence[Message], tools: Sequence[Any] | None) -> Conversation:
        """Render the opening messages (with tools) and tokenize them as the prompt."""
        chat, extra = prepare_chat(tokenizer, messages, tools)
        conv = cls(tokenizer, chat, extra, special_ids=frozenset(tokenizer.all_special_ids))
        conv.text = conv.render(chat, add_generation_prompt=True)
        conv.prompt_ids = conv.encode(conv.text)
        return conv

    def render(self, messages: Sequence[Message], *, add_generation_prompt: bool) -> str:
        text: str = self.tokenizer.apply_chat_template(
            list(messages),
            tokenize=False,
            add_generation_prompt=add_generation_prompt,
            **self.template_kwargs,
        )
        return text

    def encode(self, text: str) -> list[int]:
        ids: list[int] = self.tokenizer(text, add_special_tokens=False)["input_ids"]
        return ids

    def add_sampled(self, ids: Sequence[int], *, stopped: bool) -> str:
        """Append sampled ids to the open assistant turn; return the turn's text."""
        turn_text = str(self.tokenizer.decode(list(ids), skip_special_tokens=False))
        self.text += turn_text
        self.pending = (self.pending or "") + turn_text
        # The template writes EOS / <|im_end|> itself when it renders the message, so a sampled
        # closing special token is not part of the message content.
        last = ids[-1] if ids else None
        self.closing_special = (
            str(self.tokenizer.decode([last], skip_special_tokens=False))
            if stopped and last in self.special_ids
            else ""
        )
        return turn_text

    def assistant_content(self) -> str:
        """Content of the open assistant turn, without a sampled closing special token."""
        pending = self.pending or ""
        if self.closing_special and pending.endswith(self.closing_special):
            return pending[: -len(self.closing_special)]
        return pending

    def transcript(self) -> list[Message]:
        """The conversation so far as messages, including the open assistant turn."""
        if self.pending is None:
            return list(self.messages)
        return [*self.messages, {"role": "assistant", "content": self.assistant_content()}]

    def chat_observation(self, observation: Sequence[Message]) -> tuple[list[int], str]:
        """Close the assistant turn, add ``observation`` and open the next assistant turn.

        Returns the ids to append (all masked) and which delta method was used.
        """
        closed = self.transcript()
        with_prev = self.render(closed, add_generation_prompt=False)
        extended = self.render([*closed, *observation], add_generation_prompt=True)
        if with_prev.startswith(self.text) and extended.startswith(with_prev):
            delta, method = extended[len(self.text) :], "exact"
        else:
            delta, method = self._fixed_base_delta(observation), "fixed-base"
        self.messages = [*closed, *observation]
        self.pending, self.closing_special = None, ""
        self.text += delta
        return self.encode(delta), method

    def _fixed_base_delta(self, observation: Sequence[Message]) -> str:
        system = [m for m in self.messages[:1] if m.get("role") == "system"]
        base = [*system, *_BASE, {"role": "assistant", "content": _BASE_REPLY}]
        closed = self.render(base, add_generation_prompt=False)
        extended = self.render([*base, *observation], add_generation_prompt=True)
        if not extended.startswith(closed) or _BASE_REPLY not in closed:
            raise ValueError(
                "the chat template renders an appended message by changing earlier text; "
                "use observation_format='inline' for this model or fix its chat template"
            )
        closing = closed[closed.rindex(_BASE_REPLY) + len(_BASE_REPLY) :]
        if self.closing_special and closing.startswith(self.closing_special):
            closing = closing[len(self.closing_special) :]
        return closing + extended[len(closed) :]

    def checkpoint(self) -> tuple[list[Message], str, str | None, str]:
        """The mutable state, for :meth:`rollback` when an observation turns out not to fit."""
        return self.messages, self.text, self.pending, self.closing_special

    def rollback(self, state: tuple[list[Message], str, str | None, str]) -> None:
        self.messages, self.text, self.pending, self.closing_special = state

    def inline_observation(self, observation: Sequence[Message]) -> list[int]:
        """Append the observation's content raw inside the open assistant turn."""
        text = "".join(str(m.get("content", "")) for m in observation)
        self.text += text
        self.pending = (self.pending or "") + text
        self.closing_special = ""
        return self.encode(text) if text else []
