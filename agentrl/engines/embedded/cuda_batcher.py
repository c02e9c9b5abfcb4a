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
from typing import TYPE_CHECKING, Any

import torch

from agentrl.engines.embedded import decoder
from agentrl.engines.embedded.cuda_runner import MAX_STOP_IDS, CudaRunner, RunnerOptions
from agentrl.engines.embedded.sampling import hits_stop_string
from agentrl.errors import ConfigError, EngineError

if TYPE_CHECKING:
    from agentrl.engines.embedded.engine import EmbeddedEngine, _Request

log = logging.getLogger(__name__)


class CudaBatcher:
    """Admits requests into runner rows, steps them, resolves them; the engine's worker drives it."""

    def __init__(self, engine: EmbeddedEngine, runner: CudaRunner) -> None:
        self.engine, self.runner = engine, runner
        self.rows: list[_Request] = []
        self._stops: list[frozenset[int]] = []

    def _limits(self, req: _Request) -> tuple[list[int], int]:
        """The request's device stop ids and the most ids it may sample."""
        sp = req.sampling
        stops = sorted({*sp.stop_token_ids, *(() if sp.ignore_eos else self.engine.eos_ids)})
        if len(stops) > MAX_STOP_IDS:
            raise EngineError(
                f"at most {MAX_STOP_IDS} stop token ids (EOS included) per request, got {len(stops)}"
            )
        room = min(self.engine.max_context, self.runner.opts.max_len - 1) - len(req.input_ids)
        return stops, min(sp.max_new_tokens, room)

    def admit(self, fresh: list[_Request]) -> list[_Request]:
        """Prefill ``fresh`` into new rows; returns the requests deferred to the next step."""
        seen: set[tuple[int, ...]] = set()
        joining, deferred = [], []
        for req in fresh:
            key = tuple(req.input_ids)
            if len(req.input_ids) >= self.runner.opts.max_len - 2:
                msg = (
                    f"prompt of {len(req.input_ids)} ids does not fit max_seq_len={self.runner.opts.max_len}"
                )
                req.resolve("abort", self.engine.weight_version, EngineError(msg))
            elif key in seen and self.runner.opts.prefix_cache:
                deferred.append(req)
            else:
                seen.add(key)
                joining.append(req)
        if joining:
            self._prefill(joining)
        return deferred

    def _prefill(self, reqs: list[_Request]) -> None:
        start = len(self.rows)
        state: dict[str, list[Any]] = {
            f: [] for f in ("temperature", "top_k", "top_p", "seed", "counter", "limit")
        }
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
            for name, value in zip(state, values, strict=True):
                state[name].append(value)
            stop_rows[j, : len(stops)] = torch.tensor(stops, dtype=torch.long)
            self._stops.append(frozenset(stops))
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
            prefill_tokens=sum(len(i) for i in new_ids),
            cached_tokens=sum(offsets),
            prefill_s=time.perf_counter() - started,
        )
        for j, req in enumerate(reqs):
            self.runner.store_prefix(req.key, req.input_ids, start + j)
        self._advance_all(results, first=start)

    def step(self) -> None:
        """One decode step of every running row; resolves and retires the finished ones."""
        longest = max(len(r.input_ids) + len(r.output_ids) for r in self.rows)
        started = time.perf_counter()
        results = self.runner.decode(len(self.rows), longest, self._filtered(self.rows))
        self.engine._count(
            decode_steps=1, decode_tokens=len(self.rows), decode_s=time.perf_counter() - started
        )
        self._advance_all(results, first=0)

    def _filtered(self, reqs: list[_Request]) -> bool:
        return any(r.sampling.top_k > 0 or r.sampling.top_p < 1 for r in reqs)

    def _advance_all(self, results: list[list[float]], first: int) -> None:
        """Record each row's new token from ``first`` on; retire the rows that finished."""
        done = []
        for i, (token, logprob, finished) in enumerate(results, start=first):
            if self._advance(self.rows[i], self._stops[i], int(token), logprob, finished > 0):
                done.append(i)
        if done:
            self._retire(done)

    def _advance(
        self, req: _Request, stops: frozenset[int], token: int, logprob: float, finished: bool
    ) -> bool:
        version = self.engine.weight_version
        if req.aborted:
            return req.finish("abort", version)
        req.output_ids.append(token)
        req.logprobs.append(logprob)
        if token in stops or hits_stop_string(self.engine.tokenizer, req.output_ids, req.sampling.stop):
            return req.finish("stop", version)
        return req.finish("length", version) if finished else False

    def _retire(self, done: list[int]) -> None:
        """Store finished sessions' KV, then fill the holes with the last rows."""
        for i in done:
            req = self.rows[i]
            if req.session_id is not None and req.finish_reason != "abort":
                self.runner.store_prefix(req.key, req.input_ids + req.output_ids[:-1], i)
        gone = set(done)
        left = len(self.rows) - len(gone)
        holes = [i for i in sorted(gone) if i < left]
        movers = [i for i in range(left, len(self.rows)) if i not in gone]
        if holes:
            length = max(len(self.rows[m].input_ids) + len(self.rows[m].output_ids) for m in movers)
            self.runner.move_rows(holes, movers, length)
        for hole, mover in zip(holes, movers, strict=True):
            self.rows[hole], self._stops[hole] = self.rows[mover], self._stops[mover]
        del self.rows[left:], self._stops[left:]

    def reset(self) -> None:
        """Forget every row (after a failed step: their requests were failed by the engine)."""
        self.rows.clear()
        self._stops.clear()

    def weights_changed(self) -> None:
        """Stored KV was computed by the old weights."""
        self.runner.prefix.clear()


def make_fast_path(engine: EmbeddedEngine) -> CudaBatcher | None:
    """The fast-path scheduler when the engine's config and model allow it (see
    ``EmbeddedEngineConfig.fast_path``), else None (the engine keeps its transformers path)."""
    cfg = engine.config
    wanted = cfg.fast_path if cfg.fast_path is not None else engine.device.type == "cuda"
    if not wanted or not decoder.supports(engine.model):
        if cfg.fast_path:
            raise ConfigError(f"fast_path needs a Llama-family model ({', '.join(decoder.SUPPORTED)})")
        return None
    opts = RunnerOptions(
        rows=cfg.max_batch_size,
        max_len=min(cfg.max_seq_len, engine.max_context),
        mem_fraction=cfg.mem_fraction_static,
        prefix_cache=cfg.prefix_cache_mb > 0,
        graphs=cfg.cuda_graphs,
        compile=cfg.compile,
        original_logprobs=cfg.logprobs == "original",
    )
    return CudaBatcher(engine, CudaRunner(engine.model, opts))
