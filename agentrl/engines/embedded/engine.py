"""`EmbeddedEngine`: an in-process transformers model behind the `Engine` protocol (the CPU default).

Why: laptops, CI and single small GPUs have no SGLang; RL still needs many concurrent episodes, so
this engine batches them continuously: a worker thread decodes all running requests together, one
token per step, and between two steps admits whatever requests have arrived (each prefilled alone,
then joining the batch; see `agentrl.engines.embedded.kv_cache`) and retires finished rows at once (their
futures resolve and the cache shrinks). A prefix store keeps the KV of each session's last turn and
of recent prompts, so a multi-turn episode prefills only its new observation ids and the samples of a
group share their prompt's prefill. The event loop only enqueues and awaits futures, so envs keep
stepping while the model runs.

On a CUDA device, for the Llama family, the worker drives the fast path instead
(:mod:`agentrl.engines.embedded.cuda_batcher`: a preallocated slot cache, batched prefill, decode
steps replayed as CUDA graphs with sampling and stop checks on the device; docs/engines-gpu.md);
the transformers path below serves everything else.

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
from pathlib import Path
from typing import Any

import torch

from agentrl.engines.base import GenerateOutput, SamplingParams
from agentrl.engines.embedded.config import EmbeddedEngineConfig
from agentrl.engines.embedded.cuda_batcher import make_fast_path
from agentrl.engines.embedded.kv_cache import KV, DecodeBatch, GrowingLayer, PrefixStore, cache_kv, make_cache
from agentrl.engines.embedded.loading import eos_ids, pick_device, pick_dtype, state_dict_of
from agentrl.engines.embedded.request import Request
from agentrl.engines.embedded.sampling import hits_stop_string, sample_tokens
from agentrl.engines.memory import trim_host_memory
from agentrl.engines.packed_weights import device_uuid, single_threaded_on_cpu
from agentrl.errors import EngineError

log = logging.getLogger(__name__)


class EmbeddedEngine:
    """In-process generation with continuous batching and a prefix cache; see the module docstring.

    Example::

        engine = EmbeddedEngine("tiny-gpt2")
        out = await engine.generate(prompt_ids, SamplingParams(max_new_tokens=32, stop=("</search>",)))
    """

    def __init__(self, model: str | Path, config: EmbeddedEngineConfig | None = None) -> None:
        from transformers import AutoModelForCausalLM, AutoTokenizer

        from agentrl.models import resolve_model

        self.config = config or EmbeddedEngineConfig()
        folder = resolve_model(model)
        self.device = pick_device(self.config.device)
        self.dtype = dtype = pick_dtype(self.config.dtype, self.device)
        self.tokenizer = AutoTokenizer.from_pretrained(folder)
        loaded: Any = AutoModelForCausalLM.from_pretrained(folder, dtype=dtype)
        self.model = loaded.to(self.device).eval()
        mc = self.model.config
        context: Any = getattr(mc, "max_position_embeddings", None) or getattr(mc, "n_positions", 2048)
        self.max_context = int(context)
        self.eos_ids = eos_ids(self.model, self.tokenizer)
        # transformers 5.x renamed the KV-cache argument; older releases only know past_key_values.
        params = inspect.signature(self.model.forward).parameters
        self._cache_arg = "cache" if "cache" in params else "past_key_values"
        self.weight_version = 0
        self.generator = torch.Generator(device="cpu").manual_seed(self.config.seed)
        self._queue: queue.Queue[Request] = queue.Queue()
        self._running: list[Request] = []
        self._held: list[Request] = []  # taken off the queue just as pause() came: admitted on resume
        self._reprefill = False  # weights changed under running requests: prefill them again
        self._waited_steps = 0  # decode steps the queued requests have waited for admission
        self._batch = DecodeBatch()
        self._prefixes = PrefixStore(self.config.prefix_cache_mb << 20)
        self.stats: dict[str, float] = dict.fromkeys(
            (
                "prefills",
                "prefill_requests",
                "prefill_tokens",
                "cached_tokens",
                "prefill_s",
                "decode_steps",
                "decode_tokens",
                "decode_s",
                "weight_updates",
                "update_running",
                "update_wait_s",
                "update_s",
            ),
            0,
        )
        """Counters since start, for profiling: where the worker's time goes."""
        self._admitting = threading.Event()
        self._admitting.set()
        self._closed = threading.Event()
        self._model_lock = threading.Lock()
        # Set while a weight update waits for the model lock: the worker, which takes and releases the
        # lock once a step, holds back so the update gets it (a plain Lock is not fair: the worker could
        # take it again every step and starve an update for the rest of a request).
        self._update_waiting = threading.Event()
        self._cuda = make_fast_path(self)
        self._running = self._cuda.rows if self._cuda is not None else self._running
        self._worker = threading.Thread(target=self._work, name="agentrl-embedded-engine", daemon=True)
        self._worker.start()

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
        req = Request(list(input_ids), sampling, session_id, loop, loop.create_future())
        if sampling.seed is not None:
            req.generator = torch.Generator(device="cpu").manual_seed(int(sampling.seed))
        self._queue.put(req)
        try:
            return await req.future
        except asyncio.CancelledError:
            req.aborted = True
            raise

    def weights_target(self) -> dict[str, Any]:
        """The GPU (UUID) and dtype of the served weights: what a trainer packs them for."""
        return {"device_uuid": device_uuid(self.device), "dtype": str(self.dtype).removeprefix("torch.")}

    async def update_weights(self, source: Any, *, version: int) -> None:
        """Load a state dict, :class:`PackedWeights` (or an HF folder's safetensors) between batches, in
        place (captured graphs stay valid); then report ``version``."""
        await asyncio.to_thread(self._load_weights, source, version)

    async def health(self) -> bool:
        return self._worker.is_alive() and not self._closed.is_set()

    async def pause(self) -> None:
        """Stop admitting requests; running ones finish. Queued requests wait for resume()."""
        self._admitting.clear()

    async def resume(self) -> None:
        self._admitting.set()

    async def abort(self, session_id: str | None = None) -> None:
        """Abort queued and running requests (of ``session_id``, or all); they return ``"abort"``."""
        for req in [*list(self._queue.queue), *self._held, *self._running]:
            if session_id is None or req.session_id == session_id:
                req.aborted = True

    async def close(self) -> None:
        self._closed.set()
        self._admitting.set()
        await self.abort()
        await asyncio.to_thread(self._worker.join, 30)
        if self._cuda is not None:
            # The slot cache and the captured graphs go with the batcher: a closed engine holds no KV memory,
            # so a second engine in the same process can size its cache from the free memory.
            self._cuda = None
            torch.cuda.empty_cache()

    # ------------------------------------------------------------------ worker thread
    def _work(self) -> None:
        if self.device.type == "cpu":
            torch.set_num_threads(self.config.num_threads or max(1, min(8, (os.cpu_count() or 2) // 2)))
        while not self._closed.is_set():
            if self._update_waiting.is_set():
                time.sleep(0.0005)
                continue
            fresh = self._gather(block=not self._running)
            busy = bool(fresh or self._running)
            with self._model_lock, torch.inference_mode():  # the batch's KV tensors are inference tensors
                if not self._admitting.is_set():  # paused since they were gathered: admit on resume
                    self._held, fresh = fresh + self._held, []
                try:
                    self._step(fresh)
                except Exception as e:  # a model error fails these requests, not the engine
                    log.exception("embedded engine step failed")
                    for req in [*fresh, *self._running]:
                        req.resolve("abort", self.weight_version, EngineError(f"embedded engine failed: {e}"))
                    self._running.clear()
                    self._batch = DecodeBatch()
                    if self._cuda is not None:
                        self._cuda.reset()
            if busy and not self._running and self._queue.empty():
                trim_host_memory()  # idle after a batch: its KV, freed, leaves the heap while the trainer steps
        for req in [*self._running, *self._held]:
            req.resolve("abort", self.weight_version)
        while not self._queue.empty():
            self._queue.get_nowait().resolve("abort", self.weight_version)

    def _step(self, fresh: list[Request]) -> None:
        """Admit ``fresh`` and decode one token of every running request (fast path or transformers)."""
        if self._cuda is not None:
            self._held = self._cuda.admit(fresh) + self._held
            if self._running:
                self._cuda.step()
            return
        if self._reprefill:  # new weights: running requests continue from a prefill under them
            self._reprefill = False
            fresh, self._running[:], self._batch = [*self._running, *fresh], [], DecodeBatch()
        self._admit_all(fresh)
        if self._running:
            self._decode_step()

    def _gather(self, *, block: bool) -> list[Request]:
        """New requests to admit: wait for some when nothing runs, else take what is queued."""
        if not self._admitting.is_set():
            if block:
                self._admitting.wait(timeout=0.1)
            return []
        room = self.config.max_batch_size - len(self._running)
        if not block and not self._held and not self._admission_due(room):
            return []
        fresh, self._held = self._held[:room], self._held[room:]
        try:
            if block and not fresh:
                fresh.append(self._queue.get(timeout=0.1))
                deadline = time.monotonic() + self.config.batch_wait_ms / 1000
                while len(fresh) < room and (left := deadline - time.monotonic()) > 0:
                    fresh.append(self._queue.get(timeout=left))
            while len(fresh) < room:
                fresh.append(self._queue.get_nowait())
        except queue.Empty:
            pass
        ready = []
        for req in fresh:
            if req.aborted:
                req.resolve("abort", self.weight_version)
            elif len(req.input_ids) >= self.max_context:
                msg = f"prompt of {len(req.input_ids)} ids does not fit the model's context of {self.max_context}"
                req.resolve("abort", self.weight_version, EngineError(msg))
            else:
                ready.append(req)
        return ready

    def _admission_due(self, room: int) -> bool:
        """While requests decode, whether to admit the queued ones now. On the fast path a prefill costs
        the same host time for one request as for a dozen, and turns of desynchronised episodes arrive
        one or two a step: newcomers wait up to ``admit_wait_steps`` decode steps (or until they would
        fill the free rows) and are then prefilled together."""
        waiting = self._queue.qsize()
        if self._cuda is None or waiting == 0:
            self._waited_steps = 0
            return waiting > 0
        self._waited_steps += 1
        if self._waited_steps > self.config.admit_wait_steps or waiting >= room:
            self._waited_steps = 0
            return True
        return False

    def _admit_all(self, fresh: list[Request]) -> None:
        joining = [(req, kv) for req in fresh if (kv := self._admit(req)) is not None]
        self._batch.add([kv for _, kv in joining])  # one copy of the batch at most, not one per request
        self._running.extend(req for req, _ in joining)

    def _admit(self, req: Request) -> KV | None:
        """Prefill what the prefix store lacks of ``req`` and sample its first token; its KV to join
        the batch, or None when it already finished."""
        ids = req.input_ids + req.output_ids  # the output too: a running request re-admitted (new weights)
        cached, kv = self._prefixes.lookup(ids)
        layers = [GrowingLayer(k, v, spare=len(ids) - cached) for k, v in kv] if kv else []
        cache = make_cache(layers)
        new = torch.tensor([ids[cached:]], device=self.device)  # (1, T_new)
        positions = torch.arange(cached, len(ids), device=self.device).unsqueeze(0)
        started = time.perf_counter()
        logits = self._forward(new, None, positions, cache)
        self._count(
            prefills=1,
            prefill_requests=1,
            prefill_tokens=len(ids) - cached,
            cached_tokens=cached,
            prefill_s=time.perf_counter() - started,
        )
        full = cache_kv(cache)
        self._prefixes.store(req.key, ids, full)
        req.cached_tokens = cached
        tokens, logprobs = self._sample(logits, [req])
        return None if self._advance(req, int(tokens[0]), float(logprobs[0])) else full

    def _decode_step(self) -> None:
        """Feed every running row its last sampled token; sample the next; retire finished rows."""
        rows = self._running
        tokens = torch.tensor([[r.output_ids[-1]] for r in rows], device=self.device)  # (B, 1)
        mask, positions = self._batch.step_inputs()
        started = time.perf_counter()
        logits = self._forward(tokens, mask.to(self.device), positions.to(self.device), self._batch.cache())
        self._count(decode_steps=1, decode_tokens=len(rows), decode_s=time.perf_counter() - started)
        self._batch.stepped()
        sampled, logprobs = self._sample(logits, rows)
        done = []
        for i, r in enumerate(rows):
            if self._advance(r, int(sampled[i]), float(logprobs[i])):
                done.append(i)
                if r.session_id is not None and r.finish_reason != "abort":
                    self._prefixes.store(r.key, r.input_ids + r.output_ids[:-1], self._batch.row(i))
        if done:
            self._running[:] = [rows[i] for i in self._batch.remove(done)]

    def _count(self, **amounts: float) -> None:
        for name, amount in amounts.items():
            self.stats[name] += amount

    def _sample(self, logits: torch.Tensor, rows: list[Request]) -> tuple[torch.Tensor, torch.Tensor]:
        return sample_tokens(
            logits,
            [r.sampling for r in rows],
            [r.generator for r in rows],
            self.generator,
            original=self.config.logprobs == "original",
        )

    def _forward(
        self, ids: torch.Tensor, mask: torch.Tensor | None, positions: torch.Tensor, cache: Any
    ) -> torch.Tensor:
        kwargs = {self._cache_arg: cache}
        out = self.model(
            input_ids=ids,
            attention_mask=mask,
            position_ids=positions,
            use_cache=True,
            logits_to_keep=1,
            **kwargs,
        )
        return out.logits[:, -1, :].float()  # (B, V) on the model's device: sampling happens there

    def _advance(self, req: Request, token: int, logprob: float) -> bool:
        """Append one sampled token; resolve and return True when the request is finished."""
        if req.aborted:
            return req.finish("abort", self.weight_version)
        req.output_ids.append(token)
        req.logprobs.append(logprob)
        req.versions.append(self.weight_version)
        sp = req.sampling
        if (
            (token in self.eos_ids and not sp.ignore_eos)
            or token in sp.stop_token_ids
            or hits_stop_string(self.tokenizer, req.output_ids, sp.stop)
        ):
            return req.finish("stop", self.weight_version)
        limit = min(sp.max_new_tokens, self.max_context - len(req.input_ids))
        if len(req.output_ids) >= limit:
            return req.finish("length", self.weight_version)
        return False

    def _load_weights(self, source: Any, version: int) -> None:
        state = state_dict_of(source)  # packed weights: views of the trainer's buffer, copied below
        asked = time.perf_counter()
        self._update_waiting.set()
        with self._model_lock, single_threaded_on_cpu(self.device):
            self._update_waiting.clear()
            started = time.perf_counter()
            missing, unexpected = self.model.load_state_dict(state, strict=False)
            tied = {"lm_head.weight"} if getattr(self.model.config, "tie_word_embeddings", False) else set()
            if unexpected or set(missing) - tied:
                raise EngineError(
                    f"state dict does not match the served model: missing {sorted(set(missing) - tied)[:5]}, "
                    f"unexpected {sorted(unexpected)[:5]}; send the full state dict of the same architecture"
                )
            self.weight_version = int(version)
            self._prefixes.clear()  # KV computed by the old weights
            self._reprefill = bool(self._running)  # and so is the running requests' (transformers path)
            if self._cuda is not None:
                self._cuda.weights_changed()
            # Under the lock, as the worker counts: how long the update waited for the worker to finish
            # its step, how long generation stood still for it, how many requests it landed under.
            self._count(
                weight_updates=1,
                update_running=len(self._running),
                update_wait_s=started - asked,
                update_s=time.perf_counter() - started,
            )
