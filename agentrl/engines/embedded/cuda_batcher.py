"""Continuous batching for the fast path: which request sits in which row of the :class:`CudaRunner`.

Why a separate scheduler: the transformers path keeps Python KV objects per request; here every
request's state lives in device buffers indexed by row, so admitting is "write the row's sampling
state, copy its cached prefix, prefill its new ids together with the other newcomers", and retiring is
"move the last row into the hole". Rows ``0..len(rows)-1`` are running; newcomers join at the end.

Prefix reuse: every admitted prompt and every finished turn of a session is kept in the runner's
prefix store, so the next turn of an episode prefills only its new ids and the other samples of a
group copy their prompt's KV. Identical prompts that arrive together are admitted one step apart (the
first one's prefill is then stored), not prefilled twice.

EOS, stop ids and the length cap are checked on the device; stop strings on the host, only for
requests that have them.
"""

from __future__ import annotations

import logging
import time
from typing import Any

import torch

from agentrl.engines.embedded import decoder
from agentrl.engines.embedded.config import MAX_STOP_IDS, RunnerOptions
from agentrl.engines.embedded.cuda_runner import CudaRunner, Pending
from agentrl.engines.embedded.request import EngineView, Request
from agentrl.engines.embedded.sampling import hits_stop_string
from agentrl.errors import ConfigError, EngineError

log = logging.getLogger(__name__)


class CudaBatcher:
    """Admits requests into runner rows, steps them, resolves them; the engine's worker drives it."""

    def __init__(self, engine: EngineView, runner: CudaRunner) -> None:
        self.engine, self.runner = engine, runner
        self.rows: list[Request] = []
        self._stops: dict[int, frozenset[int]] = {}  # by id(request): its stop ids
        self._pending: tuple[list[Request], Pending] | None = None

    def _limits(self, req: Request) -> tuple[list[int], int]:
        """The request's device stop ids and the most ids it may sample."""
        sp = req.sampling
        stops = sorted({*sp.stop_token_ids, *(() if sp.ignore_eos else self.engine.eos_ids)})
        room = min(self.engine.max_context, self.runner.opts.max_len - 1) - len(req.input_ids)
        return stops, min(sp.max_new_tokens, room)

    def _refusal(self, req: Request) -> str | None:
        """Why the fast path cannot serve ``req`` (None when it can)."""
        max_len = self.runner.opts.max_len
        if len(req.input_ids) >= max_len - 2:
            return f"prompt of {len(req.input_ids)} ids does not fit max_seq_len={max_len}"
        if len(stops := self._limits(req)[0]) > MAX_STOP_IDS:
            return f"at most {MAX_STOP_IDS} stop token ids (EOS included) per request, got {len(stops)}"
        return None

    def admit(self, fresh: list[Request]) -> list[Request]:
        """Prefill ``fresh`` into new rows; returns the requests deferred to the next step."""
        seen: set[tuple[int, ...]] = set()
        joining, deferred = [], []
        for req in fresh:
            key = tuple(req.input_ids)
            if (msg := self._refusal(req)) is not None:
                req.resolve("abort", self.engine.weight_version, EngineError(msg))
            elif key in seen and self.runner.opts.prefix_cache:
                deferred.append(req)
            else:
                seen.add(key)
                joining.append(req)
        if joining:
            self._prefill(joining)
        return deferred

    def _prefill(self, reqs: list[Request]) -> None:
        decoder.rebind(self.runner.w)
        start = len(self.rows)
        names = ("temperature", "top_k", "top_p", "seed", "counter", "limit")
        state: dict[str, list[Any]] = {name: [] for name in names}
        stop_rows = torch.full((len(reqs), MAX_STOP_IDS), -1, dtype=torch.long)
        offsets, new_ids = [], []
        for j, req in enumerate(reqs):
            stops, most = self._limits(req)
            sp = req.sampling
            seed = (
                sp.seed
                if sp.seed is not None
                else int(torch.randint(2**31, (1,), generator=self.engine.generator))
            )
            values = (sp.temperature, sp.top_k, sp.top_p, seed, 0, len(req.input_ids) + most - 2)
            for name, value in zip(names, values, strict=True):
                state[name].append(value)
            stop_rows[j, : len(stops)] = torch.tensor(stops, dtype=torch.long)
            self._stops[id(req)] = frozenset(stops)
            req.cached_tokens = self.runner.load_prefix(req.input_ids, start + j)
            offsets.append(req.cached_tokens)
            new_ids.append(req.input_ids[req.cached_tokens :])
        tensors = {name: torch.tensor(v) for name, v in state.items()}
        tensors["temperature"], tensors["top_p"] = tensors["temperature"].float(), tensors["top_p"].float()
        self.runner.set_rows(start, {**tensors, "stop_ids": stop_rows})
        self.rows.extend(reqs)
        started = time.perf_counter()
        results = self.runner.prefill(start, new_ids, offsets, self._filtered(reqs))
        self.engine._count(
            prefills=1,
            prefill_requests=len(reqs),
            prefill_tokens=sum(len(i) for i in new_ids),
            cached_tokens=sum(offsets),
            prefill_s=time.perf_counter() - started,
        )
        for j, req in enumerate(reqs):
            self.runner.store_prefix(req.key, req.input_ids, start + j)
        self._book(reqs, results)

    def step(self) -> None:
        """Launch a decode step of every running row, then book the previous step's tokens while it
        runs (the device is one step ahead of the host: a row that finished then computes one token
        nobody reads); resolves and retires the finished requests."""
        # each row's cache holds its ids plus, while a step is unbooked, one more
        longest = max(len(r.input_ids) + len(r.output_ids) for r in self.rows) + (self._pending is not None)
        started = time.perf_counter()
        decoder.rebind(self.runner.w)
        rows = list(self.rows)
        pending = self.runner.launch(len(rows), longest, self._filtered(rows))
        if self._pending is not None:
            self._book(self._pending[0], self._pending[1].read())
        self._pending = (rows, pending) if self.rows else None
        self.engine._count(decode_steps=1, decode_tokens=len(rows), decode_s=time.perf_counter() - started)

    def _filtered(self, reqs: list[Request]) -> bool:
        return any(r.sampling.top_k > 0 or r.sampling.top_p < 1 for r in reqs)

    def _book(self, rows: list[Request], results: list[list[float]]) -> None:
        """Record one token per request of ``rows`` (the rows a step ran over, in order); retire
        the requests that finished."""
        done = []
        for req, (token, logprob, finished) in zip(rows, results, strict=True):
            if req.finish_reason is None and self._advance(req, int(token), logprob, finished > 0):
                done.append(req)
        if done:
            where = {id(r): i for i, r in enumerate(self.rows)}
            self._retire([where[id(r)] for r in done])

    def _advance(self, req: Request, token: int, logprob: float, finished: bool) -> bool:
        version = self.engine.weight_version
        if req.aborted:
            return req.finish("abort", version)
        req.output_ids.append(token)
        req.logprobs.append(logprob)
        req.versions.append(version)
        if token in self._stops[id(req)] or hits_stop_string(
            self.engine.tokenizer, req.output_ids, req.sampling.stop
        ):
            return req.finish("stop", version)
        return req.finish("length", version) if finished else False

    def _retire(self, done: list[int]) -> None:
        """Store finished sessions' KV, then fill the holes with the last rows."""
        for i in done:
            req = self.rows[i]
            del self._stops[id(req)]
            if req.session_id is not None and req.finish_reason != "abort":
                self.runner.store_prefix(req.key, req.input_ids + req.output_ids[:-1], i)
        gone = set(done)
        left = len(self.rows) - len(gone)
        holes = [i for i in sorted(gone) if i < left]
        movers = [i for i in range(left, len(self.rows)) if i not in gone]
        if holes:
            # +1: a launched, unbooked step may have written one more column
            length = max(len(self.rows[m].input_ids) + len(self.rows[m].output_ids) for m in movers) + 1
            self.runner.move_rows(holes, movers, min(length, self.runner.opts.max_len))
        for hole, mover in zip(holes, movers, strict=True):
            self.rows[hole] = self.rows[mover]
        del self.rows[left:]

    def reset(self) -> None:
        """Forget every row (after a failed step: their requests were failed by the engine)."""
        self.rows.clear()
        self._stops.clear()
        self._pending = None

    def weights_changed(self) -> None:
        """Stored KV was computed by the old weights."""
        self.runner.prefix.clear()


def make_fast_path(engine: EngineView) -> CudaBatcher | None:
    """The fast-path scheduler when the engine's config and model allow it (see
    ``EmbeddedEngineConfig.fast_path``), else None (the engine keeps its transformers path)."""
    cfg = engine.config
    wanted = cfg.fast_path if cfg.fast_path is not None else engine.device.type == "cuda"
    if not wanted or not decoder.supports(engine.model):
        if cfg.fast_path:
            raise ConfigError(f"fast_path needs a Llama-family model ({', '.join(decoder.SUPPORTED)})")
        return None
    if cfg.decode_attention not in ("bmm", "sdpa", "fused"):
        raise ConfigError(f"decode_attention must be 'bmm', 'sdpa' or 'fused', got {cfg.decode_attention!r}")
    if cfg.fused_prefill_mb < 0:
        raise ConfigError(
            f"fused_prefill_mb must be >= 0 (0: SDPA for every prefill), got {cfg.fused_prefill_mb}"
        )
    if cfg.admit_wait_steps < 0:
        raise ConfigError(
            f"admit_wait_steps must be >= 0 (0 admits at every step), got {cfg.admit_wait_steps}"
        )
    opts = RunnerOptions(
        rows=cfg.max_batch_size,
        max_len=min(cfg.max_seq_len, engine.max_context),
        mem_fraction=cfg.mem_fraction_static,
        prefix_cache=cfg.prefix_cache_mb > 0,
        graphs=cfg.cuda_graphs,
        compile=cfg.compile,
        original_logprobs=cfg.logprobs == "original",
        attention=cfg.decode_attention,
        prefill_score_bytes=int(cfg.fused_prefill_mb * (1 << 20)),
    )
    return CudaBatcher(engine, CudaRunner(engine.model, opts))
