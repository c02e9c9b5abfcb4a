"""Math rewards: ``math`` and ``boxed_math``, answers compared by Hugging Face's ``math-verify``.

``math`` lets math-verify find the answer anywhere in the response (its last ``\\boxed{}``, LaTeX or
plain expression); ``boxed_math`` takes only the content of the last ``\\boxed{...}`` and scores 0 when
there is none (the format is part of the task). Both parse the label the same way (as written, else
wrapped in ``$...$``), so ``\\frac{1}{2}``, ``1/2`` and ``0.5`` agree, units are dropped (``5 km`` is 5)
and ``x = 4`` is 4.

math-verify's own timeouts use ``signal.alarm``, which works only on the main thread, and rewards run on
the rollout's env threads: they are off here, and the response is cut to its last
:data:`MAX_RESPONSE_CHARS` characters instead, which bounds the parser's work (the answer is at the end).
"""

from __future__ import annotations

import logging
from typing import Any

from agentrl.envs.rewards.text import labels, last_boxed, strip_end_tokens

MAX_RESPONSE_CHARS = 4000
"""Only the end of a response is parsed: the answer is there, and a bounded input bounds the parse."""


class _NoTimeoutWarning(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith("Timeout is disabled")


for _name in ("math_verify.parser", "math_verify.grader"):
    logging.getLogger(_name).addFilter(_NoTimeoutWarning())


def _parse(text: str) -> list[Any]:
    from math_verify import parse

    parsed: list[Any] = parse(text, parsing_timeout=None)  # type: ignore[arg-type]
    return parsed


def parse_gold(label: str) -> list[Any]:
    """A label as math-verify expressions: as written, else as ``$label$``, else ``\\boxed{label}``."""
    text = str(label).strip()
    for candidate in (text, f"${text}$", f"\\boxed{{{text}}}"):
        parsed = _parse(candidate)
        if parsed:
            return parsed
    return []


def _equal(answer_text: str, label: Any) -> float:
    from math_verify import verify

    answer = _parse(answer_text)
    if not answer:
        return 0.0
    for gold in labels(label):
        parsed = parse_gold(gold)
        if parsed and verify(parsed, answer, timeout_seconds=None):  # type: ignore[arg-type]
            return 1.0
    return 0.0


def math_equal(response: str, label: Any) -> float:
    """1.0 when math-verify finds in ``response`` an answer equal to a label, else 0.0."""
    return _equal(strip_end_tokens(response)[-MAX_RESPONSE_CHARS:], label)


def boxed_math(response: str, label: Any) -> float:
    """1.0 when the last ``\\boxed{}`` of ``response`` equals a label (math-verify), else 0.0."""
    boxed = last_boxed(strip_end_tokens(response)[-MAX_RESPONSE_CHARS:])
    if boxed is None:
        return 0.0
    return _equal(f"\\boxed{{{boxed}}}", label)
