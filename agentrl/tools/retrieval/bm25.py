"""A local BM25 retriever (bm25s) whose index is cached on disk, keyed by the corpus contents.

Why bm25s: a pure numpy sparse index that builds for the packaged corpus in about a second and answers
a query in well under a millisecond, with no JVM (Search-R1's BM25 uses pyserini/Lucene).
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from agentrl.errors import ConfigError
from agentrl.tools.retrieval.base import Doc, Retriever, read_corpus

TOKEN_PATTERN = r"(?u)\b\w+\b"
"""Words of one or more characters: bm25s' default drops single characters, which loses symbols
(``H``) and atomic numbers 1-9."""


def cache_root() -> Path:
    """``${AGENTRL_CACHE:-~/.cache/agentrl}``."""
    return Path(os.environ.get("AGENTRL_CACHE") or Path.home() / ".cache" / "agentrl")


def _import_bm25s() -> Any:
    try:
        import bm25s
    except ImportError as e:
        raise ConfigError("the BM25 retriever needs bm25s: pip install 'agentrl-gym[search]'") from e
    return bm25s


def corpus_key(docs: Sequence[Doc], k1: float, b: float) -> str:
    """A digest of everything the index depends on (texts, parameters, tokenisation, bm25s version)."""
    bm25s = _import_bm25s()
    h = hashlib.sha256(f"{k1}|{b}|{TOKEN_PATTERN}|{bm25s.__version__}".encode())
    for d in docs:
        h.update(f"{d.id}\x00{d.title}\x00{d.text}\x01".encode())
    return h.hexdigest()[:24]


class BM25Retriever(Retriever):
    """BM25 (Lucene variant) over title + text of each document.

    Args:
        docs: The corpus; document order fixes ties.
        k1, b: BM25 parameters (Lucene defaults).
        cache_dir: Where indexes are kept; ``None`` means ``<cache_root()>/bm25``. The index of a corpus
            is built once and loaded on later runs.
    """

    def __init__(
        self, docs: Sequence[Doc], *, k1: float = 1.5, b: float = 0.75, cache_dir: Path | None = None
    ) -> None:
        if not docs:
            raise ConfigError("BM25Retriever needs at least one document")
        self.docs = list(docs)
        self._bm25s = _import_bm25s()
        self.index_dir = (cache_dir or cache_root() / "bm25") / corpus_key(self.docs, k1, b)
        self._model = self._load() if (self.index_dir / "params.index.json").exists() else self._build(k1, b)
        self._lock = threading.Lock()

    @classmethod
    def from_file(cls, path: str | Path | None = None, **kwargs: Any) -> BM25Retriever:
        """Index the corpus file ``path`` (default: the packaged Search corpus)."""
        return cls(read_corpus(path), **kwargs)

    def _tokenize(self, texts: list[str]) -> Any:
        return self._bm25s.tokenize(
            texts, token_pattern=TOKEN_PATTERN, stopwords="english", show_progress=False, return_ids=False
        )

    def _build(self, k1: float, b: float) -> Any:
        model = self._bm25s.BM25(k1=k1, b=b)
        model.index(self._tokenize([f"{d.title} {d.text}" for d in self.docs]), show_progress=False)
        # Save to a temporary sibling, then rename: a crash mid-save never leaves a half index behind.
        self.index_dir.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(dir=self.index_dir.parent, prefix=".tmp-"))
        try:
            model.save(str(tmp), show_progress=False)
            tmp.rename(self.index_dir)
        except OSError:
            shutil.rmtree(tmp, ignore_errors=True)  # another process won the race; its index is identical
        return model

    def _load(self) -> Any:
        return self._bm25s.BM25.load(str(self.index_dir), show_progress=False, verbosity=0)

    def search(self, queries: list[str], topk: int = 3) -> list[list[Doc]]:
        if topk < 1:
            raise ConfigError(f"topk must be >= 1, got {topk}")
        if not queries:
            return []
        k = min(topk, len(self.docs))
        tokens = self._tokenize([q or "" for q in queries])
        vocab = self._model.vocab_dict
        known = [[t for t in q if t in vocab] for q in tokens]
        out: list[list[Doc]] = [[] for _ in queries]
        rows = [i for i, q in enumerate(known) if q]  # a query of unknown words only matches nothing
        if rows:
            with self._lock:
                ids, scores = self._model.retrieve(
                    [known[i] for i in rows], k=k, show_progress=False, n_threads=1
                )
            for row, doc_ids, doc_scores in zip(rows, ids.tolist(), scores.tolist(), strict=True):
                out[row] = [
                    Doc(self.docs[j].id, self.docs[j].title, self.docs[j].text, float(s))
                    for j, s in zip(doc_ids, doc_scores, strict=True)
                    if s > 0.0
                ]
        return out
