"""The model side of the embedded engine's fast path: batched prefill and graph-captured decode steps.

Why: the transformers forward costs ~80 ms per decode step at batch 256 on an H200, almost all of it
launch and host overhead (the step's bytes take well under a millisecond). Here a decode step is
pure tensor code over static buffers (the last token and position of each row, the rows' sampling
state, the slot cache), so it is captured once per (batch bucket, length bucket) as a CUDA graph and
replayed with one launch; sampling and stop checks run inside it, and its only host sync is the copy of
(token, logprob, done) per row. The norms, RoPE and SwiGLU are compiled (``torch.compile``) into
few fused kernels. Rows ``0..B-1`` of the buffers are the running requests; the scheduler
(:mod:`agentrl.engines.embedded.cuda_batcher`) decides which request sits in which row.

On the CPU (tests) the same code runs eagerly.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from agentrl.engines.embedded import compiling, decoder
from agentrl.engines.embedded.attention import (
    decode_attention,
    decode_attention_sdpa,
    length_bias,
    prefill_attention,
    prefill_bias,
)
from agentrl.engines.embedded.config import MAX_STOP_IDS, RunnerOptions
from agentrl.engines.embedded.device_sampling import RowParams, finished_rows, sample_rows
from agentrl.engines.embedded.graphs import DecodeGraphs
from agentrl.engines.embedded.slot_cache import PrefixSlots, SlotCache, plan_slots


@dataclass
class Pending:
    """A launched decode step's results on their way to the host (the step's one sync is ``read``)."""

    host: torch.Tensor  # (B, 3) pinned: token, logprob, done
    event: torch.cuda.Event | None

    def read(self) -> list[list[float]]:
        if self.event is not None:
            self.event.synchronize()
        return self.host.tolist()


class CudaRunner:
    """Owns the slot cache, the per-row device state and the decode graphs of one model."""

    def __init__(self, model: Any, opts: RunnerOptions) -> None:
        self.model, self.opts = model, opts
        self.device = model.model.embed_tokens.weight.device
        self.w = decoder.bind_weights(model, opts.max_len)
        spec, dtype = self.w.spec, self.w.embed.dtype
        slots = plan_slots(spec, dtype, opts.max_len, opts.rows, opts.mem_fraction, self.device)
        self.cache = SlotCache(spec, slots, opts.max_len, dtype, self.device)
        self.prefix = PrefixSlots(opts.rows, slots - opts.rows if opts.prefix_cache else 0)
        self.params = RowParams.empty(opts.rows, MAX_STOP_IDS, self.device)
        self.tokens = torch.zeros(opts.rows, dtype=torch.long, device=self.device)  # next id to feed
        self.positions = torch.zeros(opts.rows, dtype=torch.long, device=self.device)  # its position
        self.out = torch.zeros(opts.rows, 3, dtype=torch.float64, device=self.device)  # token, logprob, done
        pin = self.device.type == "cuda"
        self._host = [torch.zeros(opts.rows, 3, dtype=torch.float64, pin_memory=pin) for _ in range(2)]
        self._flip = 0
        self.scale = spec.head_dim**-0.5
        self._rows = torch.arange(opts.rows, device=self.device)
        fast = opts.compile and self.device.type == "cuda"
        self._attn_in: Callable[..., Any] = compiling.compiled(
            decoder.attention_inputs, fast, token_args=(0, 6, 7)
        )
        self._attn_out: Callable[..., Any] = compiling.compiled(
            decoder.attention_output_and_mlp, fast, token_args=(0, 1)
        )
        self._attn_in_kv: Callable[..., Any] = compiling.compiled(
            decoder.attention_inputs_kv, fast, token_args=(0, 6, 7)
        )
        # dim 0 (rows) of x, q, keys, values, bias and dim 2 / 3 (the length bucket) of keys, values / bias
        self._attn_mlp: Callable[..., Any] = compiling.compiled(
            decoder.decode_attention_and_mlp, fast, token_args=(0, 1, 2, 3, 4), length_args={2: 2, 3: 2, 4: 3}
        )
        # x (n T tokens), q (n, T), keys / values (n rows, L columns), bias (n, T, L)
        self._prefill_attn_mlp: Callable[..., Any] = compiling.compiled(
            decoder.prefill_attention_and_mlp,
            fast,
            token_args=(0, 1, 2, 3, 4),
            length_args={1: (1,), 2: (2,), 3: (2,), 4: (3, 4)},
        )
        self.graphs = DecodeGraphs(
            self._decode_body,
            self._state,
            opts.rows,
            opts.max_len,
            enabled=opts.graphs and self.device.type == "cuda",
        )
        if fast:
            self.warm_up()

    # ------------------------------------------------------------------ the layers
    def _layers(
        self, x: torch.Tensor, pos: torch.Tensor, attend: Callable[..., torch.Tensor]
    ) -> torch.Tensor:
        """All decoder layers over flat tokens ``x`` (N, hidden) at ``pos`` (N,); ``attend(layer, q, k,
        v)`` writes the keys/values into the cache and returns the attention output (N, Hq D)."""
        spec, cos, sin = self.w.spec, self.w.cos[pos], self.w.sin[pos]
        for i, lw in enumerate(self.w.layers):
            q, k, v = self._attn_in(
                x,
                lw.ln1,
                lw.qkv,
                lw.qkv_bias,
                lw.q_norm,
                lw.k_norm,
                cos,
                sin,
                spec.heads,
                spec.kv_heads,
                spec.eps,
            )
            x = self._attn_out(x, attend(i, q, k, v), lw.o, lw.ln2, lw.gate_up, lw.down, spec.eps)
        return x

    def _fused_layers(
        self,
        x: torch.Tensor,
        pos: torch.Tensor,
        rows: torch.Tensor,
        window: slice,
        bias: torch.Tensor,
        attend_and_mlp: Callable[..., torch.Tensor],
        q_shape: tuple[int, ...] | None = None,
    ) -> torch.Tensor:
        """All decoder layers with fused attention (decode steps with ``attention="fused"``, and prefill
        chunks of moderate size): per layer, one compiled function to q and stacked k/v, one index write
        of k/v into the cache at (``rows``, ``pos``), one compiled function ``attend_and_mlp`` for
        attention over the ``window`` rows' first ``bias.shape[-1]`` columns and the rest of the layer.
        x: (N, hidden) flat tokens; ``q_shape``: the view ``attend_and_mlp`` takes q in."""
        spec, cos, sin = self.w.spec, self.w.cos[pos], self.w.sin[pos]
        length = bias.shape[-1]
        for i, lw in enumerate(self.w.layers):
            q, kv = self._attn_in_kv(
                x,
                lw.ln1,
                lw.qkv,
                lw.qkv_bias,
                lw.q_norm,
                lw.k_norm,
                cos,
                sin,
                spec.heads,
                spec.kv_heads,
                spec.eps,
            )
            layer = self.cache.kv[i]  # (2, slots, Hkv, max_len, D)
            layer[:, rows, :, pos] = kv  # kv: (N, 2, Hkv, D), the indexed dims first
            x = attend_and_mlp(
                x,
                q if q_shape is None else q.view(q_shape),
                layer[0, window, :, :length],
                layer[1, window, :, :length],
                bias,
                lw.o,
                lw.ln2,
                lw.gate_up,
                lw.down,
                self.scale,
                spec.eps,
            )
        return x

    def _logits(self, x: torch.Tensor) -> torch.Tensor:
        return decoder.final_logits(x, self.w.norm, self.w.lm_head, self.w.spec.eps)

    # ------------------------------------------------------------------ decode
    def _state(self) -> list[torch.Tensor]:
        """The buffers a decode step mutates besides the cache (saved around a graph's warm-up)."""
        return [self.tokens, self.positions, self.params.counter, self.out]

    def _decode_body(self, b: int, length: int, filtered: bool) -> None:
        """One decode step of rows ``0..b-1`` attending over ``length`` cache columns."""
        pos, rows = self.positions[:b], self._rows[:b]

        def attend(i: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
            keys, values = self.cache.keys(i), self.cache.values(i)
            keys[rows, :, pos] = k
            values[rows, :, pos] = v
            return attention(q, keys[:b, :, :length], values[:b, :, :length], bias, self.scale)

        bias = length_bias(pos + 1, length)  # (b, 1, 1, length), shared by the layers
        attention = decode_attention
        if self.opts.attention == "sdpa":
            attention, bias = decode_attention_sdpa, bias.to(self.w.embed.dtype)
        if self.opts.attention == "fused":
            x = self._fused_layers(
                self.w.embed[self.tokens[:b]], pos, rows, slice(0, b), bias, self._attn_mlp
            )
        else:
            x = self._layers(self.w.embed[self.tokens[:b]], pos, attend)
        logits = self._logits(x)  # (b, V)
        tokens, logprobs = sample_rows(
            logits, self.params, filtered=filtered, original=self.opts.original_logprobs
        )
        done = finished_rows(tokens, pos, self.params)
        self.tokens[:b] = tokens
        self.positions[:b] = (pos + 1).clamp_(max=self.opts.max_len - 2)  # idle padding rows never overflow
        self.out[:b, 0], self.out[:b, 1], self.out[:b, 2] = tokens, logprobs, done

    def launch(self, b: int, length: int, filtered: bool) -> Pending:
        """Queue one step for rows ``0..b-1`` (a graph of the smallest bucket holding ``b`` rows and
        ``length`` keys) and the copy of its (token, logprob, done) rows to the host; returns at once
        on CUDA, so the host can book the previous step while this one runs."""
        self.graphs.run(b, length, filtered)
        host = self._host[self._flip][:b]
        self._flip ^= 1
        host.copy_(self.out[:b], non_blocking=True)
        event = None
        if self.device.type == "cuda":
            event = torch.cuda.Event()
            event.record()
        return Pending(host, event)

    # ------------------------------------------------------------------ prefill
    def prefill(
        self, start: int, new_ids: list[list[int]], offsets: list[int], filtered: bool
    ) -> list[list[float]]:
        """Prefill rows ``start..start+n-1`` (row ``j`` already holds ``offsets[j]`` cached tokens) with
        ``new_ids[j]``, then sample each row's first token; (token, logprob, done) per row.

        Rows go in groups of at most ``prefill_tokens`` padded ids; a long prompt goes in chunks.
        """
        last: list[torch.Tensor] = []
        group: list[int] = []
        width = 0
        for j, ids in enumerate(new_ids):
            width = max(width, len(ids))
            if group and (len(group) + 1) * min(width, self.opts.prefill_tokens) > self.opts.prefill_tokens:
                last.append(self._prefill_group(start, group, new_ids, offsets))
                group, width = [], len(ids)
            group.append(j)
        last.append(self._prefill_group(start, group, new_ids, offsets))
        logits = self._logits(torch.cat(last))  # (n, V)
        n = len(new_ids)
        tokens, logprobs = sample_rows(
            logits, self.params, filtered=filtered, original=self.opts.original_logprobs, start=start
        )
        fed = torch.tensor(
            [o + len(i) - 1 for o, i in zip(offsets, new_ids, strict=True)], device=self.device
        )
        done = finished_rows(tokens, fed, self.params, start=start)
        self.tokens[start : start + n] = tokens
        self.positions[start : start + n] = fed + 1
        return torch.stack([tokens.double(), logprobs.double(), done.double()], dim=1).tolist()

    def _prefill_group(
        self, start: int, group: list[int], new_ids: list[list[int]], offsets: list[int]
    ) -> torch.Tensor:
        """Prefill rows ``start + j`` for ``j`` in ``group`` (consecutive); hidden state of each row's
        last new id, (len(group), hidden)."""
        first = start + group[0]
        lengths = [len(new_ids[j]) for j in group]
        chunk = max(1, self.opts.prefill_tokens // len(group))
        last = torch.empty(len(group), self.w.spec.hidden, dtype=self.w.embed.dtype, device=self.device)
        for c0 in range(0, max(lengths), chunk):
            t = min(chunk, max(lengths) - c0)
            ids = torch.zeros(len(group), t, dtype=torch.long)
            for r, j in enumerate(group):
                piece = new_ids[j][c0 : c0 + t]
                ids[r, : len(piece)] = torch.tensor(piece, dtype=torch.long)
            base = torch.tensor([offsets[j] + c0 for j in group]).unsqueeze(1)  # (n, 1)
            pos = (base + torch.arange(t)).clamp_(max=self.opts.max_len - 1).to(self.device)  # (n, t)
            from_zero = c0 == 0 and not any(offsets[j] for j in group) and t <= self.opts.max_len
            x = self._prefill_chunk(first, ids.to(self.device), pos, from_zero)  # (n * t, hidden)
            ending = [r for r, n in enumerate(lengths) if c0 <= n - 1 < c0 + t]
            if ending:
                flat = torch.tensor([r * t + lengths[r] - 1 - c0 for r in ending], device=self.device)
                last[torch.tensor(ending, device=self.device)] = x[flat]
        return last

    def _prefill_chunk(
        self, first: int, ids: torch.Tensor, pos: torch.Tensor, from_zero: bool, sdpa: bool = False
    ) -> torch.Tensor:
        """Run the layers over ``ids`` (n, t) at ``pos`` (n, t) of rows ``first..first+n-1``
        (``from_zero``: ``pos`` is ``0..t-1`` on every row; ``sdpa``: take the SDPA path whatever the
        chunk's size)."""
        n, t = ids.shape
        rows = torch.arange(first, first + n, device=self.device).repeat_interleave(t)  # (n t,)
        flat = pos.reshape(-1)
        length = int(pos.max()) + 1
        spec = self.w.spec
        if (
            not sdpa
            and self.opts.attention == "fused"
            and n * spec.heads * t * length * 4 <= self.opts.prefill_score_bytes
        ):
            bias = prefill_bias(pos, length)  # (n, 1, 1, t, length), shared by the layers
            window = slice(first, first + n)
            q_shape = (n, t, spec.heads, spec.head_dim)
            x = self.w.embed[ids.reshape(-1)]
            return self._fused_layers(x, flat, rows, window, bias, self._prefill_attn_mlp, q_shape)

        def attend(i: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
            keys, values = self.cache.keys(i), self.cache.values(i)
            keys[rows, :, flat] = k
            values[rows, :, flat] = v
            window = slice(first, first + n)
            return prefill_attention(
                q.view(n, t, spec.heads, spec.head_dim),
                keys[window, :, :length],
                values[window, :, :length],
                pos,
                self.scale,
                from_zero=from_zero,
            )

        return self._layers(self.w.embed[ids.reshape(-1)], flat, attend)

    def warm_up(self) -> None:
        """Compile at start-up every form the compiled layer functions take, so that no rollout pays a
        compile (1-5 s each on an H200) mid-run. A compiler compiles a dynamic size apart when it is 1,
        and inductor's matmul padding splits key lengths below and above 64: each prefill path runs for
        one and several rows, one and several new ids, after no, a short and a long cached prefix; then
        the decode graphs of one and two rows are captured (one row is a form of its own too). All of it
        under ``inference_mode``, as the engine's worker runs (grad mode is part of what a compile
        assumes). The slot cache's views never have storage offset 0 (``slot_cache.LEAD``), which would
        be a form of its own for the first layer from row 0. What this replaced warmed the fused prefill
        at rows 0-1 with one or two ids only; ``bench/rollout_search.py`` with ``TORCH_LOGS=recompiles``
        on an H200 then showed the fused prefill compiling in two of six rounds after its warm-up round
        (3.4-3.8 s those rounds against 1.9-2.1 s the others), each for one of the forms above. Writes
        only the KV of rows 0-1, which hold nothing yet."""
        fused = self.opts.attention == "fused" and self.opts.prefill_score_bytes > 0
        with torch.inference_mode():
            for sdpa in [True] + ([False] if fused else []):
                for n in (1, 2):
                    for t in (1, 3):
                        for cached in (0, 4, 160):
                            self._warm_chunk(n, t, cached, sdpa)
            for rows in (1, 2):
                self.graphs.prepare(rows, self.graphs.lengths[0], filtered=False)

    def _warm_chunk(self, n: int, t: int, cached: int, sdpa: bool) -> None:
        """One prefill chunk of rows ``0..n-1``: ``t`` new ids after ``cached`` cached ones."""
        if n > self.opts.rows or cached + t >= self.opts.max_len:
            return
        ids = torch.zeros(n, t, dtype=torch.long, device=self.device)
        pos = (cached + torch.arange(t, device=self.device)).expand(n, t)
        self._prefill_chunk(0, ids, pos, from_zero=cached == 0, sdpa=sdpa)

    # ------------------------------------------------------------------ row bookkeeping
    def move_rows(self, holes: list[int], movers: list[int], length: int) -> None:
        """Row ``movers[i]`` moves into row ``holes[i]`` (its KV up to ``length`` and its state)."""
        if not holes:
            return
        dst = torch.tensor(holes, device=self.device)
        src = torch.tensor(movers, device=self.device)
        self.cache.kv[:, :, dst, :, :length] = self.cache.kv[:, :, src, :, :length]
        for buf in [self.tokens, self.positions, *self.params.tensors()]:
            buf[dst] = buf[src]

    def set_rows(self, start: int, values: dict[str, torch.Tensor]) -> None:
        """Write per-row sampling state of rows ``start..`` (CPU tensors named like ``RowParams``'s fields)."""
        for name, host in values.items():
            getattr(self.params, name)[start : start + len(host)] = host.to(self.device)

    def store_prefix(self, key: str, ids: list[int], row: int) -> None:
        """Keep row ``row``'s KV of ``ids`` in the prefix store under ``key`` (if it has room)."""
        slot = self.prefix.reserve(key)
        if slot is not None:
            self.cache.copy(slot, row, len(ids))
            self.prefix.commit(key, ids, slot)

    def load_prefix(self, ids: list[int], row: int) -> int:
        """Copy the longest stored prefix of ``ids`` into row ``row``; its length (0 if none)."""
        n, slot = self.prefix.lookup(ids)
        if slot is None:
            return 0
        self.cache.copy(row, slot, n)
        return n
