"""Retrievers for the Search env: the interface, a local BM25 backend, an HTTP client and a server."""

from agentrl.tools.retrieval.base import Doc, Retriever, format_docs, iter_corpus, read_corpus

__all__ = ["Doc", "Retriever", "format_docs", "iter_corpus", "read_corpus"]
