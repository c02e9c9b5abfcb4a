"""`agentrl sft` as a user runs it: chat JSONL in, metrics and an HF export out, and exact resume
(2 steps + resume 2 more gives the weights of 4 uninterrupted steps)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from agentrl.cli import main
from agentrl.models import make_tiny_gpt2
from agentrl.run.metrics import read_metrics


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny_gpt2(tmp_path_factory.mktemp("models") / "tiny-gpt2", seed=6)


def _chats(path: Path, n: int = 12) -> Path:
    with path.open("w") as f:
        for i in range(n):
            messages = [
                {"role": "user", "content": f"What is {i} plus {i}?"},
                {"role": "assistant", "content": f"It is {2 * i}."},
            ]
            f.write(json.dumps({"messages": messages}) + "\n")
    return path


def _sft(model: Path, data: Path, out: Path, *extra: str) -> int:
    return main(
        ["sft", "--data", str(data), "--model", str(model), "--global-batch-size", "4", "--lr", "1e-3",
         "--torch-device", "cpu", "--no-progress", "--save", str(out / "ckpt"), "--save-interval", "1",
         "--log-dir", str(out / "logs"), *extra]
    )  # fmt: skip


def _weights(folder: Path) -> dict[str, torch.Tensor]:
    return load_file(str(next(folder.glob("*.safetensors"))))


def test_sft_lowers_the_nll_and_resumes_exactly(
    tiny_model: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = _chats(tmp_path / "chats.jsonl")
    assert _sft(tiny_model, data, tmp_path / "full", "--epochs", "2", "--max-steps", "4") == 0
    out = capsys.readouterr().out
    assert "sft: 4 optimizer steps" in out and "fine-tuned policy:" in out
    records = read_metrics(tmp_path / "full" / "logs" / "metrics.jsonl")
    assert [r["step"] for r in records] == [1, 2, 3, 4]
    assert records[-1]["train/nll"] < records[0]["train/nll"]
    full = _weights(tmp_path / "full" / "logs" / "hf_model")

    part = tmp_path / "part"
    assert _sft(tiny_model, data, part, "--epochs", "2", "--max-steps", "2", "--no-export-hf") == 0
    assert _sft(tiny_model, data, part, "--epochs", "2", "--max-steps", "4", "--resume") == 0
    resumed = _weights(part / "logs" / "hf_model")
    assert full.keys() == resumed.keys()
    for name, tensor in full.items():
        assert torch.allclose(tensor, resumed[name], atol=1e-6), name
    steps = [r["step"] for r in read_metrics(part / "logs" / "metrics.jsonl")]
    assert steps == [1, 2, 3, 4]


def test_sft_without_data_or_with_a_bad_file_is_a_clear_error(
    tiny_model: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["sft", "--model", str(tiny_model)]) == 2
    assert "--data FILE is required" in capsys.readouterr().err
    bad = tmp_path / "bad.jsonl"
    bad.write_text(
        '{"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]}\n{x\n'
    )
    assert main(["sft", "--data", str(bad), "--model", str(tiny_model)]) == 2
    err = capsys.readouterr().err
    assert f"{bad}:2: not valid JSON" in err and "Traceback" not in err
