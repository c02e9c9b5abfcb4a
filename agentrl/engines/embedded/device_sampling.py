"""Sampling and stop checks on the device, inside the captured decode step (no host round trip).

Why a counter-based hash instead of ``torch.Generator`` s: a CUDA graph replays fixed kernels, and
per-request generators would each need a host call per step. Each row carries a 32-bit seed and a
step counter; its uniform is a hash of the two, so a request's samples depend on its seed and step
only (not on which other requests share the batch), and replaying the graph draws fresh numbers
because the counters advance on the device. One uniform per row picks the token by inverse CDF
(:func:`agentrl.engines.embedded.sampling.inverse_cdf`, as on the CPU path).

Logprobs as the Engine contract says: ``log_softmax(logits)`` at the sampled token (``original``), or
``log_softmax(logits / T)`` (SGLang's default without ``SGLANG_RETURN_ORIGINAL_LOGPROB``).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from agentrl.engines.embedded.sampling import filter_top_k_top_p, inverse_cdf

_MASK32 = 0xFFFFFFFF


def _mix32(x: torch.Tensor) -> torch.Tensor:
    """A 32-bit integer hash (two multiply-xorshift rounds) on int64 tensors holding values < 2**32:
    products stay below 2**59, so nothing overflows."""
    x = ((x >> 16) ^ x) * 0x45D9F3B & _MASK32
    x = ((x >> 16) ^ x) * 0x45D9F3B & _MASK32
    return (x >> 16) ^ x


def hash_uniforms(seeds: torch.Tensor, counters: torch.Tensor) -> torch.Tensor:
    """(B,) float32 uniforms in [0, 1) with 24 random bits, from (B,) int64 seeds and step counters."""
    x = _mix32(seeds & _MASK32)
    x = _mix32(x ^ (counters * 0x9E3779B1 & _MASK32))
    return (x >> 8).float() * (1.0 / (1 << 24))


@dataclass
class RowParams:
    """Per-row sampling state as device tensors (static buffers of the decode graph), ``R`` rows."""

    temperature: torch.Tensor  # (R,) float32; <= 0 means greedy
    top_k: torch.Tensor  # (R,) int64; <= 0 means no limit
    top_p: torch.Tensor  # (R,) float32
    seed: torch.Tensor  # (R,) int64
    counter: torch.Tensor  # (R,) int64, the number of tokens this row sampled so far
    stop_ids: torch.Tensor  # (R, S) int64, padded with -1; EOS included unless ignore_eos
    limit: torch.Tensor  # (R,) int64: the row is done once its position reaches this

    @classmethod
    def empty(cls, rows: int, stops: int, device: torch.device) -> RowParams:
        def z(dtype: torch.dtype) -> torch.Tensor:
            return torch.zeros(rows, dtype=dtype, device=device)

        return cls(
            z(torch.float32),
            z(torch.int64),
            z(torch.float32),
            z(torch.int64),
            z(torch.int64),
            torch.full((rows, stops), -1, dtype=torch.int64, device=device),
            z(torch.int64),
        )

    def tensors(self) -> list[torch.Tensor]:
        """Every buffer, in field order (for moving rows: each is indexed by row first)."""
        return [self.temperature, self.top_k, self.top_p, self.seed, self.counter, self.stop_ids, self.limit]


def sample_rows(
    logits: torch.Tensor, p: RowParams, *, filtered: bool, original: bool, start: int = 0
) -> tuple[torch.Tensor, torch.Tensor]:
    """One token per row and its logprob.

    Args:
        logits: (B, V) float32, for rows ``start..start+B-1`` of ``p``.
        filtered: apply top-k / top-p (a full sort: only when some row asks for it).
        original: report ``log_softmax(logits)`` rather than the post-temperature logprob.
    Returns:
        tokens (B,) int64, logprobs (B,) float32; ``p.counter`` advances by one.
    """
    rows = slice(start, start + logits.shape[0])
    temp = p.temperature[rows]
    greedy = temp <= 0
    scaled = logits / torch.where(greedy, 1.0, temp).unsqueeze(1)  # (B, V)
    logp = torch.log_softmax(scaled, dim=-1)
    probs = logp.exp()
    if filtered:
        probs = filter_top_k_top_p(probs, p.top_k[rows], p.top_p[rows])
    drawn = inverse_cdf(probs, hash_uniforms(p.seed[rows], p.counter[rows]), in_place=True)
    tokens = torch.where(greedy, logits.argmax(dim=-1), drawn)  # (B,)
    if original:
        chosen = logits.gather(1, tokens.unsqueeze(1)).squeeze(1) - torch.logsumexp(logits, dim=-1)
    else:
        chosen = logp.gather(1, tokens.unsqueeze(1)).squeeze(1)
    p.counter[rows] += 1
    return tokens, chosen


def finished_rows(
    tokens: torch.Tensor, positions: torch.Tensor, p: RowParams, start: int = 0
) -> torch.Tensor:
    """(B,) bool: the token is a stop id of its row, or the row reached its length limit.

    ``positions`` (B,) are those of the tokens fed this step; the sampled token goes one further.
    """
    rows = slice(start, start + tokens.shape[0])
    stop = (tokens.unsqueeze(1) == p.stop_ids[rows]).any(dim=1)
    return stop | (positions >= p.limit[rows])
