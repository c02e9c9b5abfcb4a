"""The one place engines are made: ``start_engine(config, model_path)`` for every command.

`agentrl eval` and `agentrl rollout` call it in their own process; training calls it inside the rollout
manager's Ray actor (SGLang servers and their clients belong to that process and event loop), or hosts
embedded engines in Ray actors of their own (:mod:`agentrl.engines.remote`) on GPUs.
"""

from __future__ import annotations

from pathlib import Path

from agentrl.engines.base import Engine
from agentrl.engines.config import EngineConfig


async def start_engine(
    config: EngineConfig,
    model_path: str | Path,
    *,
    seed: int = 0,
    log_dir: str | Path | None = None,
    release_memory: bool = False,
) -> Engine:
    """A started engine serving ``model_path``.

    Args:
        config: which engine, and its servers.
        model_path: HF folder of the policy.
        seed: the embedded engine's base sampling seed (requests with their own seed use theirs).
        log_dir: where SGLang servers write their logs.
        release_memory: the engine must release its GPU memory during train steps (colocated GPU
            training): SGLang then starts with its memory saver.
    """
    if config.engine == "embedded":
        from agentrl.engines.embedded.engine import EmbeddedEngine, EmbeddedEngineConfig

        embedded = EmbeddedEngineConfig(
            device=config.device, dtype=config.dtype, num_threads=config.threads, seed=seed
        )
        return EmbeddedEngine(str(model_path), embedded)
    from agentrl.engines.sglang.engine import SGLangEngine, SGLangEngineConfig

    args = tuple(config.sglang_args)
    if release_memory and "--enable-memory-saver" not in args:
        args += ("--enable-memory-saver",)
    sglang = SGLangEngineConfig(
        model_path=str(model_path),
        server_urls=tuple(config.sglang_urls),
        num_servers=config.num_engines,
        python=config.sglang_python,
        sglang_args=args,
        log_dir=str(log_dir) if log_dir is not None else None,
    )
    return await SGLangEngine(sglang).start()
