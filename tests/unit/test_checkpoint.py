"""Atomic checkpoints: round trip, pruning, and real SIGKILLs at the two dangerous moments of a save."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch

from agentrl.errors import CheckpointError
from agentrl.trainer.checkpoint import (
    capture_rng_state,
    complete_checkpoints,
    latest_checkpoint,
    load_checkpoint,
    load_latest,
    restore_rng_state,
    save_checkpoint,
)


class TensorBackend:
    """The part of ``TrainBackend`` checkpoints use: state that save writes and load restores."""

    def __init__(self, value: float) -> None:
        self.weights = torch.full((4,), value)

    def save(self, path: Path) -> None:
        path.mkdir(parents=True, exist_ok=True)
        torch.save(self.weights, path / "w.pt")

    def load(self, path: Path) -> None:
        self.weights = torch.load(path / "w.pt")


def test_round_trip_restores_backend_and_loop_state(tmp_path: Path) -> None:
    state = {"step": 3, "sampler": {"epoch": 1, "pos": 17}, "buffer": [np.arange(3)]}
    path = save_checkpoint(tmp_path, 3, TensorBackend(1.5), state)  # type: ignore[arg-type]
    assert path == tmp_path / "step_3"
    assert (tmp_path / "latest").read_text() == "step_3\n"
    restored = TensorBackend(0.0)
    loaded = load_latest(tmp_path, restored)  # type: ignore[arg-type]
    assert loaded["sampler"] == {"epoch": 1, "pos": 17}
    assert loaded["buffer"][0].tolist() == [0, 1, 2]
    assert torch.equal(restored.weights, torch.full((4,), 1.5))


def test_nothing_saved_gives_none(tmp_path: Path) -> None:
    assert load_latest(tmp_path / "missing") is None
    assert load_latest(tmp_path) is None


def test_keep_last_prunes_old_checkpoints(tmp_path: Path) -> None:
    for step in range(1, 6):
        save_checkpoint(tmp_path, step, TensorBackend(step), {"step": step}, keep_last=2)  # type: ignore[arg-type]
    assert [p.name for p in complete_checkpoints(tmp_path)] == ["step_4", "step_5"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["latest", "step_4", "step_5"]
    assert load_latest(tmp_path)["step"] == 5


def test_pointer_to_a_deleted_folder_falls_back_to_the_newest_complete(tmp_path: Path) -> None:
    for step in (1, 2):
        save_checkpoint(tmp_path, step, None, {"step": step})
    (tmp_path / "step_2" / "COMPLETE").unlink()
    assert latest_checkpoint(tmp_path) == tmp_path / "step_1"
    with pytest.raises(CheckpointError, match="not a complete checkpoint"):
        load_checkpoint(tmp_path / "step_2", None)


# The child commits step 1, then starts step 2 and blocks at the chosen moment, telling the parent
# on stdout; the parent then SIGKILLs it, exactly as an OOM killer or a preemption would.
_CHILD = textwrap.dedent(
    """
    import sys, time
    from pathlib import Path
    import torch
    import agentrl.trainer.checkpoint as ck

    class Backend:
        def __init__(self, v, block):
            self.v, self.block = v, block
        def save(self, path):
            path.mkdir(parents=True, exist_ok=True)
            torch.save(torch.full((4,), self.v), path / "w.pt")
            if self.block:
                print("BLOCKED", flush=True)
                time.sleep(600)

    def block_pointer(root, name):
        print("BLOCKED", flush=True)
        time.sleep(600)

    root, moment = Path(sys.argv[1]), sys.argv[2]
    ck.save_checkpoint(root, 1, Backend(1.0, False), {"step": 1})
    if moment == "pointer":
        ck._write_pointer = block_pointer
    ck.save_checkpoint(root, 2, Backend(2.0, moment == "backend"), {"step": 2})
    """
)


@pytest.mark.parametrize("moment", ["backend", "pointer"])
def test_a_kill_mid_save_resumes_from_the_previous_checkpoint(tmp_path: Path, moment: str) -> None:
    proc = subprocess.Popen(
        [sys.executable, "-c", _CHILD, str(tmp_path), moment], stdout=subprocess.PIPE, text=True
    )
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline().strip() == "BLOCKED"
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL
    # "backend": step 2 only exists as a hidden temporary folder; "pointer": step_2 was renamed into
    # place but the pointer never moved. Either way the resume point is step 1.
    assert (tmp_path / "step_2").exists() == (moment == "pointer")
    backend = TensorBackend(0.0)
    assert load_latest(tmp_path, backend)["step"] == 1  # type: ignore[arg-type]
    assert torch.equal(backend.weights, torch.full((4,), 1.0))
    # The resumed run saves step 2 again: leftovers are replaced/removed and the pointer moves.
    save_checkpoint(tmp_path, 2, TensorBackend(2.5), {"step": 2})  # type: ignore[arg-type]
    assert load_latest(tmp_path, backend)["step"] == 2  # type: ignore[arg-type]
    assert torch.equal(backend.weights, torch.full((4,), 2.5))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["latest", "step_1", "step_2"]


def test_rng_state_round_trip() -> None:
    state = capture_rng_state()
    first = (random.random(), float(np.random.rand()), float(torch.rand(1)))
    restore_rng_state(state)
    assert (random.random(), float(np.random.rand()), float(torch.rand(1))) == first
