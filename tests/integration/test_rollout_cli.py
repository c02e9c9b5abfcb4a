"""`agentrl rollout` + `agentrl view` end to end: Search env, tiny GPT-2, embedded engine."""

from __future__ import annotations

import html
from pathlib import Path

import pytest
from transformers import AutoTokenizer

from agentrl.cli import main
from agentrl.models import make_tiny_gpt2
from agentrl.types import Status, load_jsonl


def test_rollout_then_view(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    model = make_tiny_gpt2(tmp_path / "tiny")
    out = tmp_path / "r.jsonl"
    rc = main(
        ["rollout", "--env", "search", "--model", str(model), "--n-samples-per-prompt", "2",
         "--num-tasks", "2", "--max-turns", "2", "--max-new-tokens", "16", "--out", str(out), "--engine-device", "cpu"]
    )  # fmt: skip
    assert rc == 0
    trajectories = list(load_jsonl(out))
    assert len(trajectories) == 4
    assert len({t.group_id for t in trajectories}) == 2
    for t in trajectories:
        t.check()
        assert t.status in (Status.COMPLETED, Status.TRUNCATED), t.error
        assert 1 <= len(t.turns) <= 2 and sum(t.loss_mask) >= 1
        assert t.env_id == "agentrl/Search-v0" and t.metrics["model"] == str(model)
    assert "wrote 4 episodes" in capsys.readouterr().out

    page = tmp_path / "r.html"
    assert main(["view", str(out), "-o", str(page)]) == 0
    text = page.read_text(encoding="utf-8")
    t = trajectories[0]
    tok = AutoTokenizer.from_pretrained(model)
    # One span per response token, sampled ones with their logprob in the hover title.
    assert text.count('class="s"') == sum(sum(x.loss_mask) for x in trajectories)
    first = next(i for i, m in enumerate(t.loss_mask) if m)
    assert f"id {t.response_ids[first]} · logprob {t.rollout_logprobs[first]:.3f}" in text
    assert html.escape(tok.decode([t.prompt_ids[0]])) in text
    # Each episode's own status as its badge, and the header's counts by status.
    for status in {x.status.value for x in trajectories}:
        badges = sum(x.status.value == status for x in trajectories)
        assert text.count(f'<span class="badge {status}">{status}</span>') == badges
        assert f"{status} {badges}" in text
