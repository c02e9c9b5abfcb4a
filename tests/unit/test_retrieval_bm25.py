"""The BM25 retriever, corpus reading, Search-R1 passage formatting, and the HTTP client's retries."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import httpx
import pytest

from agentrl.errors import ConfigError, RetrievalError
from agentrl.tools.retrieval.base import Doc, format_docs, read_corpus
from agentrl.tools.retrieval.bm25 import BM25Retriever
from agentrl.tools.retrieval.http import HTTPRetriever, HTTPRetrieverConfig

DOCS = [
    Doc("1", "Hydrogen", "Hydrogen has the symbol H and atomic number 1."),
    Doc("2", "Helium", "Helium has the symbol He and atomic number 2."),
    Doc("3", "Amman", "Amman is the capital city of Jordan."),
    Doc("4", "Jordan", "Jordan is a country in Western Asia. Its currency has the code JOD."),
]


@pytest.fixture
def bm25(tmp_path: Path) -> BM25Retriever:
    return BM25Retriever(DOCS, cache_dir=tmp_path)


def test_ranks_the_matching_doc_first(bm25: BM25Retriever) -> None:
    hits = bm25.search(["capital city of Jordan", "currency JOD", "symbol H"], topk=2)
    assert [h[0].id for h in hits] == ["3", "4", "1"]
    assert all(len(h) <= 2 for h in hits)
    assert hits[0][0].score > 0 and hits[0][0].score >= hits[0][-1].score


def test_single_characters_count(bm25: BM25Retriever) -> None:
    # bm25s' default token pattern drops "1" and "H"; ours keeps them.
    assert bm25.search(["atomic number 1"], topk=1)[0][0].id == "1"


def test_no_match_and_edge_cases(bm25: BM25Retriever) -> None:
    assert bm25.search(["zyxwv qqq", "", "the of and"], topk=3) == [[], [], []]
    assert bm25.search([], topk=3) == []
    assert len(bm25.search(["atomic number symbol"], topk=50)[0]) == 2  # only docs that match at all
    with pytest.raises(ConfigError, match="topk"):
        bm25.search(["x"], topk=0)


def test_index_is_cached_and_keyed_by_contents(tmp_path: Path) -> None:
    first = BM25Retriever(DOCS, cache_dir=tmp_path)
    assert (first.index_dir / "params.index.json").exists()
    again = BM25Retriever(DOCS, cache_dir=tmp_path)
    assert again.index_dir == first.index_dir
    assert again.search(["Jordan currency"], 2) == first.search(["Jordan currency"], 2)
    other = BM25Retriever([*DOCS[:3], Doc("4", "Jordan", "changed text")], cache_dir=tmp_path)
    assert other.index_dir != first.index_dir


def test_format_docs_is_search_r1_passages2string() -> None:
    text = format_docs([Doc("a", "T1", "one"), Doc("b", "T2", "two")])
    assert text == "Doc 1(Title: T1) one\nDoc 2(Title: T2) two\n"


def test_read_corpus_both_layouts_and_errors(tmp_path: Path) -> None:
    path = tmp_path / "c.jsonl.gz"
    rows = [
        {"id": "0", "contents": '"Paris"\nCapital of France.'},
        {"id": "1", "title": "Lyon", "text": "City."},
    ]
    with gzip.open(path, "wt") as f:
        f.write("\n".join(json.dumps(r) for r in rows) + "\n")
    assert read_corpus(path) == [Doc("0", "Paris", "Capital of France."), Doc("1", "Lyon", "City.")]
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"id": "0", "title": "a", "text": "b"}\nnot json\n')
    with pytest.raises(ConfigError, match=r"bad.jsonl:2: not valid JSON"):
        read_corpus(bad)
    with pytest.raises(ConfigError, match="does not exist"):
        read_corpus(tmp_path / "missing.jsonl")


def test_packaged_corpus_answers_a_capital_question(tmp_path: Path) -> None:
    bm25 = BM25Retriever.from_file(cache_dir=tmp_path)
    assert "city:amman" in [d.id for d in bm25.search(["Amman capital"], topk=3)[0]]


def _answer(request: httpx.Request) -> httpx.Response:
    body = json.loads(request.content)
    hits = [[{"document": {"id": "3", "contents": "Amman\nCapital."}, "score": 2.5}] for _ in body["queries"]]
    return httpx.Response(200, json={"result": hits})


def test_http_client_retries_5xx_then_succeeds() -> None:
    calls: list[dict[str, object]] = []

    def handler(request: httpx.Request) -> httpx.Response:
        calls.append(json.loads(request.content))
        return httpx.Response(503, text="busy") if len(calls) < 3 else _answer(request)

    config = HTTPRetrieverConfig(retries=3, backoff_s=0.001)
    client = HTTPRetriever("http://127.0.0.1:1", config, transport=httpx.MockTransport(handler))
    assert client.url == "http://127.0.0.1:1/retrieve"
    assert client.search(["q1", "q2"], topk=3) == [[Doc("3", "Amman", "Capital.", 2.5)]] * 2
    assert calls[0] == {"queries": ["q1", "q2"], "topk": 3, "return_scores": True}
    assert len(calls) == 3


def test_http_client_gives_up_and_rejects_bad_answers() -> None:
    config = HTTPRetrieverConfig(retries=2, backoff_s=0.001)

    def refuse(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("refused", request=request)

    with pytest.raises(RetrievalError, match="failed 3 attempts"):
        HTTPRetriever("http://127.0.0.1:1", config, transport=httpx.MockTransport(refuse)).search(["q"])
    bad = httpx.MockTransport(lambda r: httpx.Response(400, json={"error": "'topk' must be"}))
    with pytest.raises(RetrievalError, match="HTTP 400"):
        HTTPRetriever("http://127.0.0.1:1", config, transport=bad).search(["q"])
    short = httpx.MockTransport(lambda r: httpx.Response(200, json={"result": []}))
    with pytest.raises(RetrievalError, match="expected 'result' with 1 lists"):
        HTTPRetriever("http://127.0.0.1:1", config, transport=short).search(["q"])
