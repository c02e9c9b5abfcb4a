"""`EmbeddedEngine`: an in-process transformers model behind the `Engine` protocol (the CPU default).

Why: laptops, CI and single small GPUs have no SGLang; RL still needs many concurrent episodes, so
this engine batches whatever requests are waiting (dynamic batching): a worker thread gathers
requests that arrive within ``batch_wait_ms``, left-pads them, prefills once, then decodes them
together with a KV cache, retiring each row as soon as it finishes (its future resolves at once and
the cache shrinks). The event loop only enqueues and awaits futures, so envs keep stepping while the
model runs.

Logprobs follow the `Engine` contract and this project's `SGLangEngine` (which launches SGLang with
``SGLANG_RETURN_ORIGINAL_LOGPROB=1``): ``log_softmax(logits)`` of the unscaled logits at the sampled
token, whatever the temperature. ``logprobs="sampling"`` gives SGLang's own default instead: the
logprob under the sampling distribution after temperature, ``log_softmax(logits / T)`` (SGLang's
sampler takes ``log(probs)`` after temperature scaling, before top-k/top-p renormalisation).
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import os
import queue
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch

from agentrl.errors import ConfigError, EngineError
from agentrl.rollout.engine import GenerateOutput, SamplingParams
from agentrl.rollout.sampling import sample_tokens

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class EmbeddedEngineConfig:
    """How the in-process engine loads and batches."""

    device: str = "auto"
    """``"auto"`` (one CUDA GPU if present, else CPU), ``"cpu"`` or ``"cuda:N"``."""
    dtype: str = "auto"
    """``"auto"`` (float32 on CPU, bfloat16 on GPU), ``"float32"``, ``"bfloat16"`` or ``"float16"``."""
    max_batch_size: int = 64
    """Most requests decoded together."""
    batch_wait_ms: float = 5.0
    """How long the worker waits for more requests after the first one before it starts a batch."""
    seed: int = 0
    """Seed of the engine's sampler for requests without their own ``seed``."""
    logprobs: Literal["sampling", "original"] = "original"
    """``"original"``: of the raw logits (the Engine contract); ``"sampling"``: after temperature
    (SGLang's default without ``SGLANG_RETURN_ORIGINAL_LOGPROB``)."""
    num_threads: int | None = None
    """CPU threads of the worker's torch ops; ``None``: half the cores, at most 8. Oversubscribing a
    busy machine makes OpenMP threads spin: measured 40x slower with 2 threads on 2 shared cores."""


@dataclass(eq=False)
class _Request:
    input_ids: list[int]
    sampling: SamplingParams
    session_id: str | None
    loop: asyncio.AbstractEventLoop
    future: asyncio.Future[GenerateOutput]
    output_ids: list[int] = field(default_factory=list)
    logprobs: list[float] = field(default_factory=list)
    aborted: bool = False
    generator: torch.Generator | None = None

    def resolve(self, finish_reason: str, version: int, error: Exception | None = None) -> None:
        out = GenerateOutput(
            list(self.output_ids), list(self.logprobs), finish_reason, weight_version=version
        )

        def settle() -> None:
            if self.future.done():
                return
            if error is not None:
                self.future.set_exception(error)
            else:
                self.future.set_result(out)

        if not self.loop.is_closed():
            self.loop.call_soon_threadsafe(settle)


def _pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda:0" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def _pick_dtype(name: str, device: torch.device) -> torch.dtype:
    if name == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    if name not in ("float32", "bfloat16", "float16"):
        raise ConfigError(f"dtype must be auto, float32, bfloat16 or float16, got {name!r}")
    dtype: torch.dtype = getattr(torch, name)
    return dtype


class EmbeddedEngine:
    """In-process generation with dynamic batching; see the module docstring.

    Example::

        engine = EmbeddedEngine("tiny-gpt2")
        out = await engine.generate(prompt_ids, SamplingParams(max_new_tokens=32, stop=("</search>",)))
    """

    def __init__(self, model: str | Path, config: EmbeddedEngineConfig | None = None) -> None:
        from transformers import AutoModelForCausalLM, AutoTokenizer

        from agentrl.models import resolve_model

        self.config = config or EmbeddedEngineConfig()
        folder = resolve_model(model)
        self.device = _pick_device(self.config.device)
        dtype = _pick_dtype(self.config.dtype, self.device)
        self.tokenizer = AutoTokenizer.from_pretrained(folder)
        loaded: Any = AutoModelForCausalLM.from_pretrained(folder, dtype=dtype)
        self.model = loaded.to(self.device).eval()
        mc = self.model.config
        context: Any = getattr(mc, "max_position_embeddings", None) or getattr(mc, "n_positions", 2048)
        self.max_context = int(context)
        self.eos_ids = self._eos_ids()
        # transformers 5.x renamed the KV-cache argument; older releases only know past_key_values.
        params = inspect.signature(self.model.forward).parameters
        self._cache_arg = "cache" if "cache" in params else "past_key_values"
        self.weight_version = 0
        self.generator = torch.Generator(device="cpu").manual_seed(self.config.seed)
        self._queue: queue.Queue[_Request] = queue.Queue()
        self._running: list[_Request] = []
        self._admitting = threading.Event()
        self._admitting.set()
        self._closed = threading.Event()
        self._model_lock = threading.Lock()
        self._worker = threading.Thread(target=self._work, name="agentrl-embedded-engine", daemon=True)
        self._worker.start()

    def _eos_ids(self) -> frozenset[int]:
        ids: set[int] = set()
        for source in (self.model.generation_config, self.model.config):
            value = getattr(source, "eos_token_id", None)
            ids.update([value] if isinstance(value, int) else list(value or []))
        if self.tokenizer.eos_token_id is not None:
            ids.add(int(self.tokenizer.eos_token_id))
        return frozenset(ids)

    # ------------------------------------------------------------------ Engine protocol
    async def generate(
        self, input_ids: list[int], sampling: SamplingParams, *, session_id: str | None = None
    ) -> GenerateOutput:
        """Queue one request and await its result (``finish_reason`` stop / length / abort)."""
        if self._closed.is_set():
            raise EngineError("the embedded engine is closed; create a new one")
        if not input_ids or not all(isinstance(i, int) for i in input_ids):
            raise EngineError("generate() needs a non-empty list of int token ids")
        loop = asyncio.get_running_loop()
        req = _Request(list(input_ids), sampling, session_id, loop, loop.create_future())
        if sampling.seed is not None:
            req.generator = torch.Generator(device="cpu").manual_seed(int(sampling.seed))
        self._queue.put(req)
        try:
            return await req.future
        except asyncio.CancelledError:
            req.aborted = True
            raise

    async def update_weights(self, source: Any, *, version: int) -> None:
        """Load a state dict (or an HF folder's safetensors) between batches; then report ``version``."""
        await asyncio.to_thread(self._load_weights, source, version)

    async def health(self) -> bool:
        return self._worker.is_alive() and not self._closed.is_set()

    async def pause(self) -> None:
        """Stop starting new batches; the running batch finishes. Queued requests wait for resume()."""
        self._admitting.clear()

    async def resume(self) -> None:
        self._admitting.set()

    async def abort(self, session_id: str | None = None) -> None:
        """Abort queued and running requests (of ``session_id``, or all); they return ``"abort"``."""
        for req in [*list(self._queue.queue), *self._running]:
            if session_id is None or req.session_id == session_id:
                req.aborted = True

    async def close(self) -> None:
        self._closed.set()
        self._admitting.set()
        await self.abort()
        await asyncio.to_thread(self._worker.join, 30)

    # ------------------------------------------------------------------ worker thread
    def _work(self) -> None:
        if self.device.type == "cpu":
            torch.set_num_threads(self.config.num_threads or max(1, min(8, (os.cpu_count() or 2) // 2)))
        while not self._closed.is_set():
            if not self._admitting.wait(timeout=0.1):
                continue
            batch = self._gather()
            while not self._admitting.wait(timeout=0.1):  # paused while gathering: hold the batch
                pass
            if not batch:
                continue
            with self._model_lock:
                try:
                    self._run_batch(batch)
                except Exception as e:  # a model error fails these requests, not the engine
                    log.exception("embedded engine batch failed")
                    for req in batch:
                        req.resolve("abort", self.weight_version, EngineError(f"embedded engine failed: {e}"))
                finally:
                    self._running = []
        while not self._queue.empty():
            self._queue.get_nowait().resolve("abort", self.weight_version)

    def _gather(self) -> list[_Request]:
        try:
            batch = [self._queue.get(timeout=0.1)]
        except queue.Empty:
            return []
        deadline = time.monotonic() + self.config.batch_wait_ms / 1000
        while len(batch) < self.config.max_batch_size:
            left = deadline - time.monotonic()
            try:
                batch.append(self._queue.get(timeout=left) if left > 0 else self._queue.get_nowait())
            except queue.Empty:
                break
        ready = []
        for req in batch:
            if req.aborted:
                req.resolve("abort", self.weight_version)
            elif len(req.input_ids) >= self.max_context:
                msg = f"prompt of {len(req.input_ids)} ids does not fit the model's context of {self.max_context}"
                req.resolve("abort", self.weight_version, EngineError(msg))
            else:
                ready.append(req)
        return ready

    @torch.inference_mode()
    def _run_batch(self, batch: list[_Request]) -> None:
        from transformers import DynamicCache

        self._running = list(batch)
        rows = list(batch)
        width = max(len(r.input_ids) for r in rows)
        pad = int(self.tokenizer.pad_token_id or 0)
        ids = torch.full((len(rows), width), pad, dtype=torch.long)  # (B, T), left-padded
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        for i, r in enumerate(rows):
            ids[i, width - len(r.input_ids) :] = torch.tensor(r.input_ids)
            mask[i, width - len(r.input_ids) :] = 1
        ids, mask = ids.to(self.device), mask.to(self.device)
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        cache = DynamicCache()
        logits = self._forward(ids, mask, positions, cache)
        while rows:
            tokens, logprobs = sample_tokens(
                logits,
                [r.sampling for r in rows],
                [r.generator for r in rows],
                self.generator,
                original=self.config.logprobs == "original",
            )
            keep = [i for i, r in enumerate(rows) if not self._advance(r, int(tokens[i]), float(logprobs[i]))]
            if not keep:
                return
            if len(keep) < len(rows):
                index = torch.tensor(keep, device=self.device)
                cache.batch_select_indices(index)
                tokens, mask, positions = tokens[index.cpu()], mask[index], positions[index]  # tokens: CPU
                rows = [rows[i] for i in keep]
            mask = torch.cat([mask, torch.ones((len(rows), 1), dtype=mask.dtype, device=self.device)], dim=1)
            positions = positions[:, -1:] + 1
            logits = self._forward(tokens.view(-1, 1).to(self.device), mask, positions, cache)

    def _forward(
        self, ids: torch.Tensor, mask: torch.Tensor, positions: torch.Tensor, cache: Any
    ) -> torch.Tensor:
        kwargs = {self._cache_arg: cache}
        out = self.model(input_ids=ids, attention_mask=mask, position_ids=positions, use_cache=True, **kwargs)
        return out.logits[:, -1, :].float().cpu()  # (B, V)

    def _advance(self, req: _Request, token: int, logprob: float) -> bool:
        """Append one sampled token; resolve and return True when the request is finished."""
        if req.aborted:
            req.resolve("abort", self.weight_version)
            return True
        req.output_ids.append(token)
        req.logprobs.append(logprob)
        sp = req.sampling
        if token in self.eos_ids or token in sp.stop_token_ids or self._hit_stop_string(req):
            req.resolve("stop", self.weight_version)
            return True
        limit = min(sp.max_new_tokens, self.max_context - len(req.input_ids))
        if len(req.output_ids) >= limit:
            req.resolve("length", self.weight_version)
            return True
        return False

    def _hit_stop_string(self, req: _Request) -> bool:
        """True when a stop string ends in the newest tokens (it stays in the output, as in SGLang)."""
        stops = req.sampling.stop
        if not stops:
            return False
        window = max(len(s) for s in stops) + 4  # tokens: each carries at least one byte of text
        tail = self.tokenizer.decode(req.output_ids[-window:], skip_special_tokens=False)
        last = (
            self.tokenizer.decode(req.output_ids[-window:-1], skip_special_tokens=False)
            if len(req.output_ids) > 1
            else ""
        )
        return any(s in tail and s not in last for s in stops)

    def _load_weights(self, source: Any, version: int) -> None:
        state = _read_state_dict(source) if isinstance(source, (str, Path)) else dict(source)
        with self._model_lock:
            missing, unexpected = self.model.load_state_dict(state, strict=False)
            tied = {"lm_head.weight"} if getattr(self.model.config, "tie_word_embeddings", False) else set()
            if unexpected or set(missing) - tied:
                raise EngineError(
                    f"state dict does not match the served model: missing {sorted(set(missing) - tied)[:5]}, "
                    f"unexpected {sorted(unexpected)[:5]}; send the full state dict of the same architecture"
                )
            self.weight_version = int(version)


def _read_state_dict(folder: str | Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    files = sorted(Path(folder).glob("*.safetensors"))
    if not files:
        raise EngineError(f"{folder} has no *.safetensors files to load weights from")
    state: dict[str, torch.Tensor] = {}
    for f in files:
        state.update(load_file(str(f)))
    return state
