"""Engines give their GPU memory back while the trainer steps, and take it back after (colocated runs).

In a colocated placement the trainer ranks and the rollout engines share every GPU. Generation and
training never overlap in the synchronous loop, so each engine frees its memory before a train step and
reclaims it before the weight sync:

* SGLang: ``POST /release_memory_occupation`` and ``/resume_memory_occupation`` with ``{"tags": [...]}``
  (``weights``, ``kv_cache``, ``cuda_graph``; none means all), from sglang 0.5.23's
  ``entrypoints/http_server.py`` / ``managers/io_struct.py``. The server must be launched with
  ``--enable-memory-saver`` and be idle (the loop only releases after a rollout has finished).
* Embedded engine: its model moves to CPU memory and CUDA's cache is emptied; it moves back to its
  device on resume. Generation is paused in between, so no batch runs on the moved model.

Host memory has the same turn-taking on the CPU, where glibc keeps what PyTorch frees:
:func:`trim_host_memory` hands it back when a phase ends.
"""

from __future__ import annotations

import asyncio
import ctypes
import ctypes.util
import functools
import sys
from collections.abc import Sequence
from typing import Any, Literal

import httpx
import torch

from agentrl.errors import EngineError

MemoryAction = Literal["release", "resume"]
"""What :func:`set_engine_memory` does: free the engine's GPU memory, or take it back."""

SGLANG_MEMORY_PATHS: dict[str, str] = {
    "release": "/release_memory_occupation",
    "resume": "/resume_memory_occupation",
}
"""SGLang's endpoints for each action."""


def sglang_memory_payload(tags: Sequence[str] | None = None) -> dict[str, Any]:
    """Body of ``/release_memory_occupation`` and ``/resume_memory_occupation`` (``tags``: None = all)."""
    return {"tags": list(tags) if tags is not None else None}


async def set_sglang_memory(
    urls: Sequence[str], action: MemoryAction, *, tags: Sequence[str] | None = None, timeout_s: float = 300.0
) -> None:
    """Release or resume the GPU memory of every SGLang server in ``urls``; raise if any refuses."""
    async with httpx.AsyncClient(timeout=timeout_s) as client:
        responses = await asyncio.gather(
            *(
                client.post(url + SGLANG_MEMORY_PATHS[action], json=sglang_memory_payload(tags))
                for url in urls
            ),
            return_exceptions=True,
        )
    errors = [
        f"{url}: {r if isinstance(r, BaseException) else f'HTTP {r.status_code} {r.text[:300]}'}"
        for url, r in zip(urls, responses, strict=True)
        if isinstance(r, BaseException) or r.status_code != 200
    ]
    if errors:
        raise EngineError(
            f"SGLang {SGLANG_MEMORY_PATHS[action]} failed on {len(errors)} server(s): {'; '.join(errors)}. "
            "Colocated placement needs servers launched with --enable-memory-saver"
        )


def offload_embedded(engine: Any) -> int:
    """Move an embedded engine's model to CPU memory (its worker must be paused); bytes of GPU freed."""
    before = torch.cuda.memory_allocated() if torch.cuda.is_available() else 0
    with engine._model_lock:  # waits for a running batch to finish
        engine.model.to("cpu")
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
        return before - torch.cuda.memory_allocated()
    return 0


def reload_embedded(engine: Any) -> None:
    """Move an offloaded embedded engine's model back to the device it serves on."""
    with engine._model_lock:
        engine.model.to(engine.device)


async def set_engine_memory(engine: Any, action: MemoryAction) -> None:
    """Release or resume ``engine``'s GPU memory: SGLang servers over HTTP, an engine object that
    implements ``release_memory`` / ``resume_memory`` (engine actors) directly."""
    if hasattr(engine, "alive_urls"):  # SGLangEngine
        if action == "release":
            await engine.pause()
        await set_sglang_memory(engine.alive_urls(), action)
        if action == "resume":
            await engine.resume()
        return
    method = getattr(engine, f"{action}_memory", None)
    if method is None:
        raise EngineError(
            f"{type(engine).__name__} cannot {action} its GPU memory; colocated placement needs an SGLang "
            "engine or embedded engine actors (or use --placement disaggregated)"
        )
    await method()


@functools.cache
def _malloc_trim() -> Any:
    if not sys.platform.startswith("linux"):
        return None
    try:
        return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").malloc_trim
    except (OSError, AttributeError):  # not glibc (musl has no malloc_trim)
        return None


def trim_host_memory() -> bool:
    """Give the C heap's free pages back to the OS (glibc's ``malloc_trim(0)``); False where there is none.

    PyTorch frees CPU tensors to malloc, and glibc keeps them: once it has freed a block of up to 32 MiB
    that it had mapped, it serves every later block up to that size from its heaps, whose free pages stay
    resident. A CPU trainer then holds its train step's peak through the next rollout, and an engine its
    rollout's peak through the train step: the processes of a run peak together at the sum of both phases'
    peaks instead of the larger one (measured in bench/peak_memory.py). Called when a phase ends (a train
    step, an engine going idle); it takes milliseconds.
    """
    trim = _malloc_trim()
    if trim is None:
        return False
    trim(0)
    return True
