"""Text rewards: ``exact`` (normalised exact match) and ``f1`` (SQuAD token F1), and answer extraction.

Both compare the response's *final answer* with the label: the content of the last ``\\boxed{...}``,
else of the last ``<answer>...</answer>``, else the whole response. A label may be a list of accepted
answers; the best match counts.

Example::

    >>> exact_match("so the capital is <answer>Paris.</answer>", "paris")
    1.0
    >>> round(f1_score("the Eiffel tower", "Eiffel Tower in Paris"), 3)   # 2 common of 2 and 4 tokens
    0.667
"""

from __future__ import annotations

import re
import string
from collections import Counter
from collections.abc import Callable
from typing import Any

_ANSWER_TAG = re.compile(r"<answer>(.*?)</answer>", re.DOTALL | re.IGNORECASE)
_TRAILING_SPECIAL = re.compile(r"(?:\s*(?:<\|[^|<>]*\|>|</s>|<eos>|<end_of_turn>))+\s*$")
_ARTICLES = re.compile(r"\b(a|an|the)\b")


def strip_end_tokens(text: str) -> str:
    """``text`` without trailing end-of-turn tokens (``<|im_end|>``, ``</s>``) the engine kept."""
    return _TRAILING_SPECIAL.sub("", text)


def last_boxed(text: str) -> str | None:
    """The content of the last ``\\boxed{...}`` (or ``\\fbox{...}``) in ``text``, braces balanced; None
    when there is none or it is not closed."""
    start = max(text.rfind("\\boxed"), text.rfind("\\fbox"))
    if start < 0:
        return None
    rest = text[start:]
    brace = rest.find("{")
    if brace < 0:
        return None
    command = "\\boxed" if rest.startswith("\\boxed") else "\\fbox"
    if rest[len(command) : brace].strip():
        return None  # "\boxed 5" or "\boxedfoo{": not a boxed group
    depth = 0
    for i in range(brace, len(rest)):
        if rest[i] == "{":
            depth += 1
        elif rest[i] == "}":
            depth -= 1
            if depth == 0:
                return rest[brace + 1 : i]
    return None


def final_answer(response: str) -> str:
    """The last ``\\boxed{}`` content, else the last ``<answer>`` content, else the whole response."""
    response = strip_end_tokens(response)
    boxed = last_boxed(response)
    if boxed is not None:
        return boxed
    tags = _ANSWER_TAG.findall(response)
    return tags[-1] if tags else response


def normalize_exact(text: str) -> str:
    """Lower case, whitespace collapsed, surrounding ``$`` and trailing ``.`` removed."""
    text = " ".join(str(text).split()).lower()
    if len(text) >= 2 and text[0] == text[-1] == "$":
        text = text[1:-1].strip()
    return text.rstrip(".").strip()


def normalize_tokens(text: str) -> list[str]:
    """SQuAD's normalisation: lower case, punctuation and articles (a, an, the) removed, split on spaces."""
    text = str(text).lower()
    text = "".join(ch for ch in text if ch not in set(string.punctuation))
    return _ARTICLES.sub(" ", text).split()


def labels(label: Any) -> list[str]:
    """A label as a list of accepted answers (a list stays a list; anything else becomes one string)."""
    if isinstance(label, list | tuple):
        return [str(x) for x in label]
    return [str(label)]


def best_over_labels(score: Callable[[str, str], float], response: str, label: Any) -> float:
    answer = final_answer(response)
    return max((score(answer, gold) for gold in labels(label)), default=0.0)


def _exact(answer: str, gold: str) -> float:
    return float(normalize_exact(answer) == normalize_exact(gold))


def _f1(answer: str, gold: str) -> float:
    pred, truth = normalize_tokens(answer), normalize_tokens(gold)
    common = sum((Counter(pred) & Counter(truth)).values())
    if not pred or not truth or common == 0:
        return float(pred == truth)  # both empty: a match; one empty: none
    precision, recall = common / len(pred), common / len(truth)
    return 2 * precision * recall / (precision + recall)


def exact_match(response: str, label: Any) -> float:
    """1.0 when the response's final answer equals a label after :func:`normalize_exact`, else 0.0."""
    return best_over_labels(_exact, response, label)


def f1_score(response: str, label: Any) -> float:
    """Token F1 between the response's final answer and the best label (SQuAD normalisation)."""
    return best_over_labels(_f1, response, label)
