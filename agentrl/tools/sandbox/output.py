"""Output of untrusted code: capped while it streams, then made into clean text.

Why cap while streaming: a model can print gigabytes, or one line with no newline; buffering it first
would put the controller's memory in the model's hands (docs/reliability.md A7). Why sanitise: the text goes
into a prompt, a JSON log and a tokenizer, so NUL bytes, invalid UTF-8 and terminal escapes must become
a plain, valid string (docs/reliability.md A8).
"""

from __future__ import annotations

import codecs
import re

# CSI (ESC [ ... final), OSC (ESC ] ... BEL or ESC \), and two-byte escapes (ESC + one char).
_ANSI = re.compile(r"\x1b\[[0-?]*[ -/]*[@-~]|\x1b\][^\x07\x1b]*(?:\x07|\x1b\\)?|\x1b[@-Z\\-_]?")
# Control characters other than tab, newline and carriage return; NUL included.
_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")
REPLACEMENT = "\ufffd"


class CappedBuffer:
    """Keeps the first ``limit`` bytes of a stream and counts the rest."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._data = bytearray()
        self.total = 0

    def feed(self, chunk: bytes) -> None:
        self.total += len(chunk)
        room = self.limit - len(self._data)
        if room > 0:
            self._data += chunk[:room]

    @property
    def overflowed(self) -> bool:
        return self.total > self.limit

    def getvalue(self) -> bytes:
        return bytes(self._data)


def to_text(data: bytes, *, truncated: bool = False) -> str:
    """Decode leniently and strip what does not belong in a prompt.

    Invalid UTF-8 becomes U+FFFD; terminal escape sequences are removed; NUL and other control
    characters become U+FFFD so that their presence stays visible. When the data was cut at a limit,
    a multi-byte character split by the cut is dropped rather than shown as garbage.
    """
    decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
    text = decoder.decode(data, final=not truncated)
    text = _ANSI.sub("", text)
    return _CONTROL.sub(REPLACEMENT, text)


def limit_note(kind: str, detail: str) -> str:
    """The line appended to stderr when agentrl stopped a call, so the model sees why."""
    return f"\n[agentrl] {kind}: {detail}\n"
