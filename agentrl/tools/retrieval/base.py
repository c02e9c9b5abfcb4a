"""The retriever interface of the Search env, corpus reading, and Search-R1's passage formatting.

A corpus file is JSON Lines (optionally gzipped), one document per line, in either layout:

* agentrl's: ``{"id": "...", "title": "...", "text": "..."}`` (the packaged offline corpus);
* Search-R1's / FlashRAG's wiki-18: ``{"id": "...", "contents": "\\"Title\\"\\ntext"}``, the title on
  the first line of ``contents`` (quotes stripped, as Search-R1's server does).
"""

from __future__ import annotations

import gzip
import json
from abc import ABC, abstractmethod
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from agentrl.errors import ConfigError

PACKAGED_CORPUS = Path(__file__).parent / "corpus.jsonl.gz"
"""The offline corpus that ``agentrl/Search-v0`` retrieves from (8k documents; see docs/search.md)."""


@dataclass(frozen=True)
class Doc:
    """One retrieved passage."""

    id: str
    title: str
    text: str
    score: float = 0.0
    """Retriever score (higher is better); 0.0 where the backend gives none."""

    @property
    def contents(self) -> str:
        """Search-R1's ``contents`` field: the title, a newline, the text."""
        return f"{self.title}\n{self.text}"

    def to_search_r1(self) -> dict[str, Any]:
        """The ``document`` object of Search-R1's ``/retrieve`` answer."""
        return {"id": self.id, "title": self.title, "text": self.text, "contents": self.contents}

    @classmethod
    def from_record(cls, record: dict[str, Any], score: float = 0.0) -> Doc:
        """Read either corpus layout (see the module docstring); raise ``ConfigError`` on neither."""
        if "title" in record and "text" in record:
            return cls(str(record.get("id", "")), str(record["title"]), str(record["text"]), score)
        if "contents" in record:
            title, _, text = str(record["contents"]).partition("\n")
            return cls(str(record.get("id", "")), title.strip('"'), text, score)
        raise ConfigError(
            f"corpus record with keys {sorted(record)} has neither 'title'+'text' nor 'contents'; "
            "write one JSON object per line in one of those layouts"
        )


class Retriever(ABC):
    """Batched top-k search over a corpus. Implementations are thread-safe."""

    @abstractmethod
    def search(self, queries: list[str], topk: int = 3) -> list[list[Doc]]:
        """For each query, up to ``topk`` docs, best first. Raises ``RetrievalError`` when it cannot answer."""

    def close(self) -> None:  # noqa: B027 - optional hook; most retrievers hold nothing to release
        """Release connections or memory (no-op by default)."""

    def __enter__(self) -> Retriever:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def format_docs(docs: Sequence[Doc]) -> str:
    """Search-R1's ``_passages2string``: ``Doc i(Title: t) text`` lines, numbered from 1."""
    return "".join(f"Doc {i}(Title: {d.title}) {d.text}\n" for i, d in enumerate(docs, start=1))


def _open_text(path: Path) -> Any:
    return gzip.open(path, "rt", encoding="utf-8") if path.suffix == ".gz" else path.open(encoding="utf-8")


def iter_corpus(path: str | Path) -> Iterator[Doc]:
    """Documents of a JSONL(.gz) corpus file, in file order."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"corpus file {path} does not exist; pass a JSONL(.gz) file of documents")
    with _open_text(path) as f:
        for n, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as e:
                raise ConfigError(f"{path}:{n}: not valid JSON ({e.msg}); one JSON object per line") from e
            yield Doc.from_record(record)


def read_corpus(path: str | Path | None = None) -> list[Doc]:
    """All documents of ``path`` (default: the packaged offline corpus of ``agentrl/Search-v0``)."""
    if path is None:
        path = PACKAGED_CORPUS
    docs = list(iter_corpus(path))
    if not docs:
        raise ConfigError(f"corpus file {path} has no documents")
    return docs
