"""Atomic checkpoints: a kill at any moment leaves the previous complete checkpoint loadable.

Layout under the checkpoint root::

    step_4/              a complete checkpoint
        backend/         what ``TrainBackend.save`` wrote (weights, optimizer, scheduler, RNG)
        loop_state.pkl   the caller's state: step, task-sampler position, RNG states, buffers
        COMPLETE         JSON written last: step and the list of files with their sizes
    step_6/
    latest               one line, ``step_6``: the checkpoint to resume from

Commit protocol: everything is written into a hidden temporary folder and fsynced, the folder is renamed
to ``step_N`` (atomic on one filesystem), then ``latest`` is replaced by writing ``latest.tmp`` and
``os.replace``-ing it. The pointer is the single source of truth: a kill before the pointer moves resumes
from the previous checkpoint, and half-written folders are never looked at (and are removed by the next
save).
"""

from __future__ import annotations

import json
import os
import pickle
import random
import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from agentrl.errors import CheckpointError
from agentrl.trainer.backend import TrainBackend

POINTER = "latest"
MARKER = "COMPLETE"
LOOP_STATE = "loop_state.pkl"
BACKEND_DIR = "backend"
_TMP_PREFIX = ".tmp-step_"


def _fsync_file(path: Path) -> None:
    with open(path, "rb") as f:
        os.fsync(f.fileno())


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_tree(root: Path) -> list[dict[str, Any]]:
    """fsync every file and folder under ``root`` (bottom-up); return the files with their sizes."""
    files: list[dict[str, Any]] = []
    for dirpath, _, filenames in os.walk(root, topdown=False):
        for name in filenames:
            path = Path(dirpath) / name
            _fsync_file(path)
            files.append({"path": str(path.relative_to(root)), "bytes": path.stat().st_size})
        _fsync_dir(Path(dirpath))
    return sorted(files, key=lambda f: f["path"])


def _step_of(path: Path) -> int | None:
    name = path.name
    if not name.startswith("step_") or not name[5:].isdigit():
        return None
    return int(name[5:])


def is_complete(path: Path) -> bool:
    """True if ``path`` is a step folder whose marker was written (so everything in it was)."""
    return _step_of(path) is not None and (path / MARKER).is_file()


def complete_checkpoints(root: Path) -> list[Path]:
    """Complete ``step_N`` folders under ``root``, oldest step first."""
    if not root.is_dir():
        return []
    found = [p for p in root.iterdir() if p.is_dir() and is_complete(p)]
    return sorted(found, key=lambda p: _step_of(p) or 0)


def _write_pointer(root: Path, name: str) -> None:
    tmp = root / f"{POINTER}.tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(name + "\n")
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, root / POINTER)
    _fsync_dir(root)


def save_checkpoint(
    root: Path,
    step: int,
    backend: TrainBackend | None,
    loop_state: Any,
    *,
    keep_last: int | None = 2,
) -> Path:
    """Write ``root/step_{step}`` completely, then point ``latest`` at it; prune to ``keep_last``.

    Args:
        root: the checkpoint folder (created if missing).
        step: the number of completed training steps this checkpoint captures.
        backend: its :meth:`~TrainBackend.save` writes ``step_N/backend``; None saves the loop state only.
        loop_state: any picklable object (the loop's step, sampler state, RNG states, buffers).
        keep_last: how many complete checkpoints to keep (the pointed one always stays); None keeps all.

    Returns:
        The committed ``step_N`` folder.
    """
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    tmp = root / f"{_TMP_PREFIX}{step}-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    if backend is not None:
        backend.save(tmp / BACKEND_DIR)
    with open(tmp / LOOP_STATE, "wb") as f:
        pickle.dump(loop_state, f, protocol=pickle.HIGHEST_PROTOCOL)
    files = _fsync_tree(tmp)
    with open(tmp / MARKER, "w", encoding="utf-8") as f:
        json.dump({"step": step, "time": time.time(), "files": files}, f, indent=1)
        f.flush()
        os.fsync(f.fileno())
    _fsync_dir(tmp)

    final = root / f"step_{step}"
    if final.exists():  # a re-save of the same step (e.g. after a crash before the pointer moved)
        stale = root / f"{_TMP_PREFIX}{step}-replaced-{os.getpid()}"
        os.replace(final, stale)
        shutil.rmtree(stale, ignore_errors=True)
    os.replace(tmp, final)
    _fsync_dir(root)
    _write_pointer(root, final.name)
    if keep_last is not None:
        prune(root, keep_last)
    return final


def prune(root: Path, keep_last: int) -> None:
    """Delete complete checkpoints beyond the newest ``keep_last``, and leftovers of interrupted saves.

    The checkpoint ``latest`` points to is never deleted. Temporary folders of a live save by another
    process would be deleted too: one run owns one checkpoint root.
    """
    if keep_last < 1:
        raise CheckpointError(f"keep_last={keep_last}: keep at least 1 checkpoint (or pass None to keep all)")
    pointed = latest_checkpoint(root)
    for path in complete_checkpoints(root)[:-keep_last]:
        if path != pointed:
            shutil.rmtree(path, ignore_errors=True)
    for path in root.iterdir():
        if path.name.startswith(_TMP_PREFIX):
            shutil.rmtree(path, ignore_errors=True)


def latest_checkpoint(root: Path) -> Path | None:
    """The folder ``latest`` points to; if that is missing or incomplete (a hand-deleted folder), the
    newest complete one; None when nothing was ever committed."""
    root = Path(root)
    pointer = root / POINTER
    if not pointer.is_file():
        return None
    target = root / pointer.read_text(encoding="utf-8").strip()
    if is_complete(target):
        return target
    found = complete_checkpoints(root)
    return found[-1] if found else None


def load_checkpoint(path: Path, backend: TrainBackend | None) -> Any:
    """Restore ``backend`` from a complete step folder and return its loop state."""
    path = Path(path)
    if not is_complete(path):
        raise CheckpointError(
            f"{path} is not a complete checkpoint (no {MARKER} marker); use load_latest(root)"
        )
    if backend is not None:
        if not (path / BACKEND_DIR).is_dir():
            raise CheckpointError(f"{path} holds no backend state (it was saved with backend=None)")
        backend.load(path / BACKEND_DIR)
    try:
        with open(path / LOOP_STATE, "rb") as f:
            return pickle.load(f)
    except (OSError, pickle.UnpicklingError, EOFError) as e:
        raise CheckpointError(f"cannot read {path / LOOP_STATE}: {e}; delete {path} to fall back") from e


def load_latest(root: Path, backend: TrainBackend | None = None) -> Any | None:
    """Restore the checkpoint ``latest`` points to; its loop state, or None when there is none."""
    path = latest_checkpoint(Path(root))
    return None if path is None else load_checkpoint(path, backend)


def capture_rng_state() -> dict[str, Any]:
    """Python, NumPy and torch (CPU, and CUDA if present) RNG states, for the loop state."""
    state: dict[str, Any] = {
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng_state(state: dict[str, Any]) -> None:
    """Undo :func:`capture_rng_state`: the next random draws equal those after the capture."""
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
