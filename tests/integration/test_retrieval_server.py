"""The retrieval server as a real subprocess on 127.0.0.1, and Search episodes over HTTP."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

from agentrl.envs.search import SearchEnv
from agentrl.tools.retrieval.bm25 import BM25Retriever
from agentrl.tools.retrieval.http import HTTPRetriever


@pytest.fixture(scope="module")
def cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("cache")


@pytest.fixture(scope="module")
def server(cache: Path) -> Iterator[str]:
    env = {**os.environ, "AGENTRL_CACHE": str(cache)}
    cmd = [sys.executable, "-m", "agentrl.tools.retrieval.server", "--port", "0", "--host", "127.0.0.1"]
    log = (cache / "server.log").open("w")
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=log, text=True, env=env)
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()  # printed once the index is loaded and the socket bound
        assert "/retrieve" in line, f"server did not start: {(cache / 'server.log').read_text()}"
        yield line.strip().rsplit(" ", 1)[1]
    finally:
        proc.terminate()
        proc.wait(timeout=10)
        log.close()


def test_health_and_search_r1_answer_format(server: str) -> None:
    base = server.rsplit("/retrieve", 1)[0]
    health = httpx.get(base + "/health").json()
    assert health["status"] == "ok" and health["docs"] > 8000
    body = httpx.post(
        server, json={"queries": ["Amman capital", "atomic number 26"], "topk": 2, "return_scores": True}
    )
    result = body.json()["result"]
    assert len(result) == 2 and all(len(hits) == 2 for hits in result)
    hit = result[0][0]
    assert set(hit) == {"document", "score"}
    assert hit["document"]["contents"] == hit["document"]["title"] + "\n" + hit["document"]["text"]
    assert result[0][0]["score"] >= result[0][1]["score"]
    plain = httpx.post(server, json={"queries": ["Amman capital"]}).json()["result"]
    assert len(plain[0]) == 3 and "contents" in plain[0][0]  # default topk 3, documents without scores


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b"not json", "not valid JSON"),
        (b'{"queries": "Paris"}', "'queries' must be a list of strings"),
        (b'{"queries": ["a"], "topk": 0}', "'topk' must be an integer from 1 to 100"),
        (b'{"queries": ["a"], "top_k": 3}', "unknown fields ['top_k']"),
        (b'{"queries": ["a"], "return_scores": "yes"}', "'return_scores' must be true or false"),
    ],
)
def test_bad_requests_say_what_is_wrong(server: str, body: bytes, message: str) -> None:
    response = httpx.post(server, content=body)
    assert response.status_code == 400
    assert message in response.json()["error"]


def test_unknown_route_is_404(server: str) -> None:
    assert httpx.get(server.rsplit("/retrieve", 1)[0] + "/nope").status_code == 404


def test_http_results_equal_local_bm25_under_concurrency(server: str, cache: Path) -> None:
    local = BM25Retriever.from_file(cache_dir=cache / "bm25")
    client = HTTPRetriever(server)
    queries = [
        f"capital of {c}" for c in ("Jordan", "France", "Peru", "Chad", "Fiji", "Laos", "Oman", "Iran")
    ]
    with ThreadPoolExecutor(16) as pool:
        remote = list(pool.map(lambda q: client.search([q], 3)[0], queries * 4))
    expected = [local.search([q], 3)[0] for q in queries * 4]
    assert [[d.id for d in h] for h in remote] == [[d.id for d in h] for h in expected]
    client.close()


def test_search_episodes_over_http(server: str) -> None:
    env = SearchEnv(split="test", retriever="http", retriever_url=server)
    started = time.monotonic()
    for index in range(0, len(env.tasks), 40):
        env.reset(options={"task_index": index})
        for text in env.scripted_episode():
            obs, reward, terminated, truncated, info = env.step(text)
            if info["tool_calls"]:
                assert obs[0]["content"].startswith("\n\n<information>Doc 1(Title: ")
        assert (reward, terminated, truncated) == (1.0, True, False)
    assert time.monotonic() - started < 60
