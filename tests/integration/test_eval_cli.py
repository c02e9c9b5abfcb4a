"""`agentrl eval` on a two-entry suite with a tiny GPT-2: the report's JSON, Markdown table and PNGs."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from agentrl.models import make_tiny_gpt2
from agentrl.trainer.evaluate import pass_at_k


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
    cmd += ["--samples-per-task", "2", "--max-new-tokens", "12", "--out", str(out)]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads((out / "report.json").read_text())
    assert report["samples_per_task"] == 2 and report["temperature"] == 1.0
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
        "| env | split | episodes | success | reward | turns | tool calls | pass@1 | pass@2 |"
    )
    assert len([line for line in table if line.startswith("| agentrl/Search-v0")]) == 2
    plots = sorted(out.glob("*.png"))
    assert len(plots) == 2 and all(p.read_bytes()[:4] == b"\x89PNG" for p in plots)
    assert "| agentrl/Search-v0 | test | 6 |" in done.stdout
