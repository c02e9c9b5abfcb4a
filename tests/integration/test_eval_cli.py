"""`agentrl eval` with a tiny GPT-2: a two-entry suite (the report's JSON, Markdown table and PNGs), and
`--run`, repeating a training run's own evaluation on its exported policy."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from agentrl.eval.evaluate import pass_at_k
from agentrl.models import make_tiny_gpt2
from agentrl.types import load_jsonl


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny_gpt2(tmp_path_factory.mktemp("models") / "tiny-gpt2", seed=3)


def test_pass_at_k_matches_hand_derived_values() -> None:
    # n=4 samples, c=1 correct, k=2: 1 - C(3,2)/C(4,2) = 1 - 3/6 = 0.5
    assert pass_at_k(4, 1, 2) == 0.5
    # k=1 is the plain success rate c/n; c=0 never passes; n-c<k always passes
    assert pass_at_k(4, 3, 1) == 0.75 and pass_at_k(4, 0, 4) == 0.0 and pass_at_k(4, 3, 2) == 1.0


def test_eval_writes_json_markdown_and_a_plot_per_env(tiny_model: Path, tmp_path: Path) -> None:
    suite = tmp_path / "mini.yaml"
    suite.write_text(
        "name: mini\nversion: 1\ndescription: two Search entries\nentries:\n"
        "  - {env: search, split: test, episodes: 3, kwargs: {max_turns: 2}}\n"
        "  - {env: search, split: train, episodes: 2, kwargs: {max_turns: 1}}\n"
    )
    out = tmp_path / "report"
    cmd = [sys.executable, "-m", "agentrl", "eval", "--suite", str(suite), "--model", str(tiny_model)]
    cmd += ["--n-samples-per-prompt", "2", "--max-new-tokens", "12", "--out", str(out)]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads((out / "report.json").read_text())
    assert report["n_samples_per_prompt"] == 2 and report["temperature"] == 1.0
    envs = report["envs"]
    assert [(e["env"], e["split"], e["tasks"], e["episodes"]) for e in envs] == [
        ("agentrl/Search-v0", "test", 3, 6),
        ("agentrl/Search-v0", "train", 2, 4),
    ]
    for e in envs:
        assert set(e["pass_at_k"]) == {"1", "2"}
        # with equal samples per task, pass@1 is exactly the success rate
        assert e["pass_at_k"]["1"] == pytest.approx(e["success"])
        assert e["pass_at_k"]["2"] >= e["pass_at_k"]["1"]
        assert 1.0 <= e["turns"] <= 2.0
    assert envs[1]["turns"] == 1.0  # max_turns 1 from the suite entry's kwargs
    table = (out / "report.md").read_text().splitlines()
    assert table[2].startswith(
        "| env | split | episodes | success | reward (mean@2) | turns | tool calls | pass@1 | pass@2 |"
    )
    assert len([line for line in table if line.startswith("| agentrl/Search-v0")]) == 2
    plots = sorted(out.glob("*.png"))
    assert len(plots) == 2 and all(p.read_bytes()[:4] == b"\x89PNG" for p in plots)
    assert "| agentrl/Search-v0 | test | 6 |" in done.stdout
    assert "eval: 100%" in done.stderr and "10/10" in done.stderr  # the progress bar counted every episode
    episodes = list(load_jsonl(out / "episodes.jsonl"))
    assert len(episodes) == 10 and all(t.metrics["model"] == str(tiny_model) for t in episodes)


def _eval_run(run_dir: Path, out: Path, *extra: str) -> tuple[subprocess.CompletedProcess[str], dict]:  # type: ignore[type-arg]
    cmd = [sys.executable, "-m", "agentrl", "eval", "--run", str(run_dir), "--out", str(out), *extra]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    report = json.loads((out / "report.json").read_text()) if done.returncode == 0 else {}
    return done, report


def test_eval_run_reproduces_the_runs_final_evaluation_from_its_export(
    tiny_model: Path, tmp_path: Path
) -> None:
    """Train two rollouts (an entropy bonus and a large lr make sure the weights move), then
    `agentrl eval --run` on the exported policy: the same greedy episodes, token for token, as the run's
    own final evaluation; the base model instead reproduces the run's step-0 evaluation."""
    logs = tmp_path / "logs"
    train = [sys.executable, "-m", "agentrl", "train", "--env", "search", "--model", str(tiny_model)]
    train += ["--num-rollouts", "2", "--rollout-batch-size", "2", "--n-samples-per-prompt", "2"]
    train += [
        "--global-batch-size",
        "4",
        "--max-new-tokens",
        "24",
        "--max-context",
        "640",
        "--max-turns",
        "3",
    ]
    train += ["--eval-episodes", "5", "--eval-split", "heldout", "--entropy-coef", "1.0", "--lr", "0.01"]
    train += ["--no-dynamic-filter", "--num-cpus", "2", "--no-progress", "--log-dir", str(logs)]
    done = subprocess.run(train, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    records = [json.loads(line) for line in (logs / "metrics.jsonl").read_text().splitlines()]
    assert [r["train/skipped"] for r in records if "train/skipped" in r] == [0.0, 0.0]
    step0 = list(load_jsonl(logs / "eval_rollouts" / "step_000000.jsonl"))
    step2 = list(load_jsonl(logs / "eval_rollouts" / "step_000002.jsonl"))
    assert len(step0) == len(step2) == 5
    assert [t.response_ids for t in step0] != [t.response_ids for t in step2]  # training changed the policy

    done, report = _eval_run(logs, tmp_path / "final")
    assert done.returncode == 0, done.stderr[-3000:]
    assert report["model"] == str(logs / "hf_model")
    assert report["run"]["reference"]["step"] == 2
    assert report["run"]["agreement"] == {"matched": 5, "run_episodes": 5, "same_tokens": 5, "same_reward": 5}
    final = next(r for r in records if r["step"] == 2 and "eval/reward" in r)
    for key in ("reward", "success", "turns", "response_tokens", "total_tokens", "episodes"):
        assert report["run"]["metrics"][key] == final[f"eval/{key}"], key
    assert "5 with the very same sampled tokens" in done.stdout
    assert [e["split"] for e in report["envs"]] == ["heldout"]

    done, report = _eval_run(logs, tmp_path / "base", "--model", str(tiny_model))
    assert done.returncode == 0, done.stderr[-3000:]
    base = {(t.task_id, tuple(t.response_ids)) for t in load_jsonl(tmp_path / "base" / "episodes.jsonl")}
    assert base == {(t.task_id, tuple(t.response_ids)) for t in step0}
    assert report["run"]["agreement"]["same_tokens"] < 5


def test_eval_run_refuses_flags_the_run_decides(tmp_path: Path) -> None:
    done, _ = _eval_run(tmp_path, tmp_path / "out", "--max-turns", "3", "--split", "test")
    assert done.returncode == 2
    assert "--max-turns, --split: with --run these come from the run's config.json" in done.stderr
