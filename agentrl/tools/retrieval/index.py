"""Build, save and load the FAISS index of the dense retriever, with a manifest that pins what it indexes.

Why a manifest: a flat index is only rows of numbers; served with another corpus (or another order of
the same one) or queried with another encoder, it returns confident nonsense. The manifest records the
corpus digest, document count, encoder name, prefixes and dimension, and the loader refuses any mismatch
with a message that says how to rebuild.

Run::

    python -m agentrl.tools.retrieval.index --out idx/                        # packaged corpus + encoder
    python -m agentrl.tools.retrieval.index --corpus wiki-18.jsonl --encoder path/to/e5-base-v2 --out idx/

Without ``--out`` the index goes to ``${AGENTRL_CACHE:-~/.cache/agentrl}/dense/<key>``, where
``DenseRetriever`` looks for it when given no ``index_dir``.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import shutil
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from agentrl.errors import ConfigError
from agentrl.tools.retrieval.base import Doc
from agentrl.tools.retrieval.bm25 import cache_root

if TYPE_CHECKING:
    from agentrl.tools.retrieval.encoder import Encoder, EncoderSpec

MANIFEST = "manifest.json"
INDEX_FILE = "index.faiss"
FORMAT_VERSION = 1


@dataclass(frozen=True)
class Manifest:
    """What an index folder holds, written next to ``index.faiss``."""

    corpus_digest: str
    """sha256 (24 hex digits) of the documents' ids, titles and texts, in order."""
    count: int
    """Number of documents (rows of the index)."""
    encoder: str
    """Encoder name (see ``EncoderSpec.name``)."""
    query_prefix: str
    """Prefix that was (and must be) put before queries."""
    passage_prefix: str
    """Prefix that was put before passages."""
    dim: int
    """Embedding dimension."""
    metric: str = "inner_product"
    """FAISS metric over unit vectors, i.e. cosine similarity."""
    format: int = FORMAT_VERSION
    """Layout version of the index folder."""


def corpus_digest(docs: Sequence[Doc]) -> str:
    """A digest of the documents in order: row i of the index is document i."""
    h = hashlib.sha256()
    for d in docs:
        h.update(f"{d.id}\x00{d.title}\x00{d.text}\x01".encode())
    return h.hexdigest()[:24]


def default_index_dir(digest: str, spec: EncoderSpec) -> Path:
    """``<cache_root()>/dense/<corpus digest>-<encoder digest>``: one folder per (corpus, encoder)."""
    enc = hashlib.sha256(f"{spec.name}|{spec.query_prefix}|{spec.passage_prefix}".encode()).hexdigest()
    return cache_root() / "dense" / f"{digest}-{enc[:8]}"


def read_manifest(path: Path) -> Manifest:
    """The manifest of the index folder ``path``; ``ConfigError`` when it is missing or unreadable."""
    file = path / MANIFEST
    if not file.is_file():
        raise ConfigError(
            f"{path} is not a dense index (no {MANIFEST}); build one with "
            "python -m agentrl.tools.retrieval.index --corpus <corpus> --encoder <encoder> --out "
            f"{path}"
        )
    try:
        return Manifest(**json.loads(file.read_text()))
    except (ValueError, TypeError) as e:
        raise ConfigError(f"{file} is not a valid index manifest ({e}); rebuild the index") from e


def check_manifest(path: Path, digest: str, count: int, spec: EncoderSpec) -> Manifest:
    """Refuse an index built over another corpus or with another encoder, saying how to fix it."""
    m = read_manifest(path)
    rebuild = (
        "rebuild it with python -m agentrl.tools.retrieval.index --corpus <the corpus you serve> "
        f"--encoder {spec.name} --out <folder>, or pass the corpus and encoder it was built with"
    )
    if m.format != FORMAT_VERSION:
        raise ConfigError(
            f"index {path} has format {m.format}, this agentrl reads {FORMAT_VERSION}; {rebuild}"
        )
    if (m.corpus_digest, m.count) != (digest, count):
        raise ConfigError(
            f"index {path} was built over another corpus ({m.count} docs, digest {m.corpus_digest}) than "
            f"the one given ({count} docs, digest {digest}); {rebuild}"
        )
    if (m.encoder, m.query_prefix, m.passage_prefix) != (spec.name, spec.query_prefix, spec.passage_prefix):
        raise ConfigError(
            f"index {path} was built with encoder {m.encoder!r} (prefixes {m.query_prefix!r}/"
            f"{m.passage_prefix!r}), not {spec.name!r}; query vectors of another encoder are meaningless "
            f"against it: {rebuild}"
        )
    return m


def build_index(
    docs: Sequence[Doc], encoder: Encoder, out: Path, *, progress: bool = True, chunk: int = 1024
) -> Manifest:
    """Embed ``docs`` in batches, write ``index.faiss`` + ``manifest.json`` into ``out`` atomically."""
    from agentrl.tools.retrieval.encoder import import_faiss, passage_text

    faiss = import_faiss()
    from tqdm import tqdm

    index = faiss.IndexFlatIP(encoder.dim)
    with tqdm(total=len(docs), desc="encoding", unit="doc", disable=not progress) as bar:
        for start in range(0, len(docs), chunk):
            part = docs[start : start + chunk]
            index.add(encoder.encode([passage_text(d) for d in part], queries=False))
            bar.update(len(part))
    spec = encoder.spec
    manifest = Manifest(
        corpus_digest(docs), len(docs), spec.name, spec.query_prefix, spec.passage_prefix, encoder.dim
    )
    # Write to a temporary sibling, then rename: a crash mid-write never leaves a half index behind.
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=".tmp-"))
    try:
        faiss.write_index(index, str(tmp / INDEX_FILE))
        (tmp / MANIFEST).write_text(json.dumps(asdict(manifest), indent=2) + "\n")
        if out.exists() and not any(out.iterdir()):
            out.rmdir()
        tmp.rename(out)
    except OSError as e:
        shutil.rmtree(tmp, ignore_errors=True)
        if not (out / MANIFEST).is_file():
            raise ConfigError(f"could not write the index to {out} ({e}); pass an empty or new --out") from e
    return manifest


def load_index(path: Path, digest: str, count: int, encoder: Encoder) -> Any:
    """The FAISS index in ``path``, after checking that it matches the corpus and the encoder."""
    from agentrl.tools.retrieval.encoder import import_faiss

    m = check_manifest(path, digest, count, encoder.spec)
    if m.dim != encoder.dim:
        raise ConfigError(f"index {path} has dimension {m.dim}, encoder {m.encoder} gives {encoder.dim}")
    index = import_faiss().read_index(str(path / INDEX_FILE))
    if index.ntotal != count or index.d != encoder.dim:
        raise ConfigError(f"{path / INDEX_FILE} does not match its manifest; rebuild the index")
    return index


def main(argv: list[str] | None = None) -> int:
    from agentrl.tools.retrieval.base import read_corpus
    from agentrl.tools.retrieval.encoder import PACKAGED_ENCODER, Encoder, EncoderSpec

    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--corpus", default=None, help="JSONL(.gz) corpus (default: the packaged one)")
    parser.add_argument("--encoder", default=PACKAGED_ENCODER, help="model folder, hub id or the default")
    parser.add_argument("--out", default=None, help="index folder (default: the cache)")
    parser.add_argument("--batch-size", type=int, default=64, help="texts per encoder forward pass")
    parser.add_argument("--device", default="cpu", help="torch device of the encoder")
    args = parser.parse_args(argv)
    try:
        docs = read_corpus(args.corpus)
        spec = EncoderSpec.resolve(args.encoder)
        out = Path(args.out) if args.out else default_index_dir(corpus_digest(docs), spec)
        if (out / MANIFEST).is_file() or (out.exists() and any(out.iterdir())):
            raise ConfigError(f"{out} already exists and is not empty; remove it or pick another --out")
        started = time.perf_counter()
        encoder = Encoder(spec, batch_size=args.batch_size, device=args.device)
        manifest = build_index(docs, encoder, out)
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(
        f"indexed {manifest.count} docs with {manifest.encoder} (dim {manifest.dim}) into {out} "
        f"in {time.perf_counter() - started:.1f} s",
        flush=True,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
