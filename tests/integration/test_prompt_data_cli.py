"""``agentrl train`` / ``agentrl eval`` on prompt files as a user runs them (tiny-gpt2, CPU): two eval
datasets reported separately, chat-format prompts, a custom reward by import path, a reward that raises on
one record recorded as a FAILED episode while the run goes on, and ``--num-rollouts 0``."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from agentrl.models import make_tiny_gpt2
from agentrl.run.metrics import read_metrics

REWARD = '''
def parity(sample):
    """1 for a response of odd length: the tiny model's groups disagree, so GRPO has a signal."""
    return {"reward": float(len(sample.response) % 2), "length": float(len(sample.response))}


def broken(sample):
    raise RuntimeError("judge unavailable")
'''


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny_gpt2(tmp_path_factory.mktemp("models") / "tiny-gpt2", seed=2)


def _write(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def _data(tmp: Path) -> tuple[Path, Path, Path, Path]:
    reward = tmp / "my_reward.py"
    reward.write_text(REWARD)
    broken = {"rm_type": f"{reward}:broken"}
    train = _write(tmp / "train.jsonl", [{"question": f"{i} + 1?", "answer": str(i + 1)} for i in range(6)])
    a = _write(
        tmp / "a.jsonl", [{"question": "2 + 2?", "answer": "4"}, {"question": "3 + 3?", "answer": "6"}]
    )
    chat = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "1 + 1?"}]
    b = _write(
        tmp / "b.jsonl",
        [{"question": chat, "answer": "2"}, {"question": "5 + 5?", "answer": "10", "metadata": broken}],
    )
    return reward, train, a, b


def _run(command: str, model: Path, *flags: str) -> subprocess.CompletedProcess[str]:
    argv = [sys.executable, "-m", "agentrl", command, "--model", str(model), "--max-new-tokens", "8"]
    argv += ["--input-key", "question", "--label-key", "answer", "--no-progress", *flags]
    return subprocess.run(argv, capture_output=True, text=True, timeout=900)


def test_train_on_prompt_data_with_two_eval_datasets(tiny_model: Path, tmp_path: Path) -> None:
    reward, train, a, b = _data(tmp_path)
    done = _run(
        "train", tiny_model, "--prompt-data", str(train), "--reward", f"{reward}:parity",
        "--eval-prompt-data", "a", str(a), "b", str(b), "--num-rollouts", "2", "--num-cpus", "2",
        "--rollout-batch-size", "2", "--n-samples-per-prompt", "2", "--global-batch-size", "4",
        "--log-dir", str(tmp_path / "logs"),
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    records = read_metrics(tmp_path / "logs" / "metrics.jsonl")
    assert [r["step"] for r in records] == [0, 1, 2]
    for step in (0, 2):  # before and after training, both datasets, every prompt of each
        assert records[step]["eval/a/episodes"] == 2.0 and records[step]["eval/b/episodes"] == 2.0
        assert records[step]["eval/b/failed"] == 1.0 and records[step]["eval/a/failed"] == 0.0
        assert 0.0 <= records[step]["eval/a/mean@1"] <= 1.0 and "eval/b/pass@1" in records[step]
    assert records[1]["rollout/episodes"] == 4.0 and "rollout/reward/length" in records[1]
    assert "eval  a/mean@1" in done.stdout and "eval  b/pass@1" in done.stdout
    dumped = [json.loads(line) for line in (tmp_path / "logs" / "eval_rollouts" / "step_000000.jsonl").open()]
    failed = [d for d in dumped if d["status"] == "failed"]
    assert [d["task_id"] for d in failed] == ["b/1"]
    assert (
        failed[0]["error"] == f"RewardError: reward '{reward}:broken' raised RuntimeError: judge unavailable"
    )
    chat = next(d for d in dumped if d["task_id"] == "b/0")
    assert chat["messages"][:2] == [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "1 + 1?"},
    ]


def test_num_rollouts_0_only_evaluates(tiny_model: Path, tmp_path: Path) -> None:
    _, train, a, _ = _data(tmp_path)
    done = _run(
        "train", tiny_model, "--prompt-data", str(train), "--reward", "exact",
        "--eval-prompt-data", "a", str(a), "--num-rollouts", "0", "--num-cpus", "2",
        "--log-dir", str(tmp_path / "logs"),
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    records = read_metrics(tmp_path / "logs" / "metrics.jsonl")
    assert [r["step"] for r in records] == [0] and records[0]["eval/a/episodes"] == 2.0
    assert not (tmp_path / "logs" / "hf_model").exists()


def test_eval_reports_each_dataset_with_pass_at_k(tiny_model: Path, tmp_path: Path) -> None:
    reward, _, a, b = _data(tmp_path)
    done = _run(
        "eval", tiny_model, "--eval-prompt-data", "a", str(a), "b", str(b), "--reward", f"{reward}:parity",
        "--n-samples-per-prompt", "2", "--out", str(tmp_path / "report"),
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads((tmp_path / "report" / "report.json").read_text())
    assert [(e["env"], e["episodes"], e["tasks"]) for e in report["envs"]] == [("a", 4, 2), ("b", 4, 2)]
    assert all(set(e["pass_at_k"]) == {"1", "2"} for e in report["envs"])
    assert report["envs"][1]["status"] == {"completed": 2, "failed": 2}
    assert "| a | test | 4 |" in done.stdout and "reward (mean@2)" in done.stdout


def test_eval_config_gives_a_dataset_its_own_samples_and_token_budget(
    tiny_model: Path, tmp_path: Path
) -> None:
    _, _, a, b = _data(tmp_path)
    config = tmp_path / "evals.yaml"
    config.write_text(
        f"datasets:\n  - {{name: a, path: {a}, n_samples_per_prompt: 4, max_new_tokens: 2, reward: exact}}\n"
        f"  - {{name: b, path: {b}}}\n"
    )
    done = _run("eval", tiny_model, "--eval-config", str(config), "--out", str(tmp_path / "report"))
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads((tmp_path / "report" / "report.json").read_text())
    a_report, b_report = report["envs"]
    assert (a_report["env"], a_report["episodes"], set(a_report["pass_at_k"])) == ("a", 8, {"1", "2", "4"})
    assert a_report["response_tokens"] <= 2.0  # its own max_new_tokens
    assert (b_report["env"], b_report["episodes"], set(b_report["pass_at_k"])) == ("b", 2, {"1"})
