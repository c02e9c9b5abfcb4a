"""Client of a retrieval server speaking Search-R1's API: ``POST /retrieve``.

Request ``{"queries": [...], "topk": k, "return_scores": true}``; answer ``{"result": [[{"document":
{"id", "contents", ...}, "score": s}, ...], ...]}`` (one list per query; without scores, the documents
themselves). Every call is bounded (docs/reliability.md D21): a timeout per attempt, retries with
exponential backoff on connection errors, timeouts and 5xx/429 answers, and a cap on calls in flight.
"""

from __future__ import annotations

import random
import threading
import time
from dataclasses import dataclass
from typing import Any

import httpx

from agentrl.errors import ConfigError, RetrievalError
from agentrl.tools.retrieval.base import Doc, Retriever

_RETRY_STATUS = {429, 500, 502, 503, 504}


@dataclass(frozen=True)
class HTTPRetrieverConfig:
    """Limits of the HTTP retriever client."""

    timeout_s: float = 30.0
    """Time limit of one attempt (connect + read)."""
    retries: int = 3
    """Further attempts after a failed one (connection error, timeout, HTTP 429/5xx)."""
    backoff_s: float = 0.5
    """First wait between attempts; doubled each retry, with up to 50% random jitter."""
    max_backoff_s: float = 8.0
    """Longest single wait between attempts."""
    max_concurrency: int = 32
    """Calls in flight at once from this client; more wait their turn."""


class HTTPRetriever(Retriever):
    """A :class:`Retriever` backed by a ``/retrieve`` server (agentrl's or Search-R1's own)."""

    def __init__(
        self,
        url: str,
        config: HTTPRetrieverConfig | None = None,
        *,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        if not url.startswith(("http://", "https://")):
            raise ConfigError(f"retriever_url {url!r} must start with http:// or https://")
        self.url = url if url.rstrip("/").endswith("/retrieve") else url.rstrip("/") + "/retrieve"
        self.config = config or HTTPRetrieverConfig()
        self._slots = threading.BoundedSemaphore(self.config.max_concurrency)
        limits = httpx.Limits(max_connections=self.config.max_concurrency)
        self._client = httpx.Client(timeout=self.config.timeout_s, limits=limits, transport=transport)

    def search(self, queries: list[str], topk: int = 3) -> list[list[Doc]]:
        if topk < 1:
            raise ConfigError(f"topk must be >= 1, got {topk}")
        if not queries:
            return []
        payload = {"queries": list(queries), "topk": topk, "return_scores": True}
        with self._slots:
            body = self._post(payload)
        return self._parse(body, len(queries))

    def _post(self, payload: dict[str, Any]) -> Any:
        delay, last = self.config.backoff_s, "no attempt made"
        for attempt in range(self.config.retries + 1):
            if attempt:
                time.sleep(min(delay, self.config.max_backoff_s) * (1 + 0.5 * random.random()))
                delay *= 2
            try:
                response = self._client.post(self.url, json=payload)
            except httpx.TransportError as e:  # connection refused/reset, timeouts
                last = f"{type(e).__name__}: {e}"
                continue
            if response.status_code in _RETRY_STATUS:
                last = f"HTTP {response.status_code}: {response.text[:200]}"
                continue
            if response.status_code != 200:
                raise RetrievalError(
                    f"retrieval server {self.url} rejected the request with HTTP {response.status_code}: "
                    f"{response.text[:500]}"
                )
            try:
                return response.json()
            except ValueError:
                raise RetrievalError(
                    f"retrieval server {self.url} answered non-JSON: {response.text[:200]!r}"
                ) from None
        raise RetrievalError(
            f"retrieval server {self.url} failed {self.config.retries + 1} attempts (last: {last}); "
            "check that it is running (python -m agentrl.tools.retrieval.server ...)"
        )

    def _parse(self, body: Any, n: int) -> list[list[Doc]]:
        result = body.get("result") if isinstance(body, dict) else None
        if not isinstance(result, list) or len(result) != n:
            raise RetrievalError(
                f"retrieval server {self.url} answered {str(body)[:200]!r}; expected 'result' with {n} lists"
            )
        try:
            return [[_doc(item) for item in hits] for hits in result]
        except (ConfigError, TypeError, AttributeError, KeyError) as e:
            raise RetrievalError(f"retrieval server {self.url} answered malformed documents: {e}") from None

    def health(self) -> bool:
        """True when the server's ``GET /health`` answers 200."""
        try:
            return (
                self._client.get(self.url.rsplit("/retrieve", 1)[0] + "/health", timeout=5.0).status_code
                == 200
            )
        except httpx.HTTPError:
            return False

    def close(self) -> None:
        self._client.close()


def _doc(item: dict[str, Any]) -> Doc:
    if "document" in item:
        return Doc.from_record(item["document"], score=float(item.get("score", 0.0)))
    return Doc.from_record(item)
