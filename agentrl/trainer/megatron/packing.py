"""Sequence packing: variable-length sequences laid end to end in micro-batches of a token budget.

Megatron runs a packed micro-batch as one ``(1, T)`` row in ``thd`` layout with ``cu_seqlens``
marking where each sequence starts; attention never crosses a boundary, so no padding is needed (only
up to ``pad_to - 1`` tokens at the end, for sequence parallelism). Pure Python/torch, CPU-tested.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


def balance_across_ranks(lengths: list[int], num_ranks: int) -> list[list[int]]:
    """Split sequence indices over data-parallel ranks with near-equal token counts (longest first,
    each to the rank with the fewest tokens so far). Each rank's list keeps ascending index order."""
    loads = [0] * num_ranks
    parts: list[list[int]] = [[] for _ in range(num_ranks)]
    for i in sorted(range(len(lengths)), key=lambda j: (-lengths[j], j)):
        r = min(range(num_ranks), key=lambda k: (loads[k], k))
        parts[r].append(i)
        loads[r] += lengths[i]
    return [sorted(p) for p in parts]


def pack_by_budget(indices: list[int], lengths: list[int], budget: int) -> list[list[int]]:
    """First-fit-decreasing bins of at most ``budget`` tokens; a longer sequence gets a bin of its own.

    Fewer, fuller micro-batches mean fewer kernel launches and better GPU utilisation; the order of
    sequences inside a bin does not change any result (attention stays within each sequence)."""
    bins: list[list[int]] = []
    room: list[int] = []
    for i in sorted(indices, key=lambda j: (-lengths[j], j)):
        for b, free in enumerate(room):
            if lengths[i] <= free:
                bins[b].append(i)
                room[b] -= lengths[i]
                break
        else:
            bins.append([i])
            room.append(budget - lengths[i])
    return bins


@dataclass
class PackedMicroBatch:
    """One packed micro-batch. Position ``p`` of the pack predicts token ``targets[p]``."""

    seq_indices: list[int]
    """Indices (into the batch) of the packed sequences, in pack order."""
    input_ids: torch.Tensor
    """(1, T_pad) int64: the sequences end to end, then padding."""
    position_ids: torch.Tensor
    """(1, T_pad) int64: positions restarting at 0 in each sequence."""
    targets: torch.Tensor
    """(T_pad,) int64: the next token within the same sequence (0 at each sequence's last position)."""
    cu_seqlens: torch.Tensor
    """(n + 1,) int32 sequence boundaries; the last sequence absorbs the padding."""
    lengths: list[int]
    """True length of each packed sequence."""
    max_seqlen: int
    """Longest (padded) sequence of the pack."""

    @property
    def num_tokens(self) -> int:
        return int(self.input_ids.shape[1])

    def unpack(self, per_position: torch.Tensor) -> list[torch.Tensor]:
        """(T_pad,) values at positions -> one (T_i,) tensor per sequence in the batch's convention:
        entry ``t`` is the value for token ``t`` (from position ``t - 1``), entry 0 is 0."""
        out, start = [], 0
        for n in self.lengths:
            seq = torch.zeros(n, dtype=per_position.dtype, device=per_position.device)
            seq[1:] = per_position[start : start + n - 1]
            out.append(seq)
            start += n
        return out

    def to_positions(self, per_token: list[torch.Tensor]) -> torch.Tensor:
        """Inverse of :meth:`unpack` for batch tensors: token ``t``'s value goes to position ``t - 1``
        (0 at each sequence's last position and on padding). ``per_token`` is indexed like the batch."""
        out = torch.zeros(self.num_tokens, dtype=per_token[0].dtype)
        start = 0
        for i, n in zip(self.seq_indices, self.lengths, strict=True):
            out[start : start + n - 1] = per_token[i][1:n]
            start += n
        return out


def pack(input_ids: list[torch.Tensor], indices: list[int], pad_to: int = 1) -> PackedMicroBatch:
    """Lay ``input_ids[i] for i in indices`` end to end; pad the total to a multiple of ``pad_to``."""
    seqs = [input_ids[i].long().cpu() for i in indices]
    lengths = [int(s.numel()) for s in seqs]
    total = sum(lengths)
    padded = -(-total // pad_to) * pad_to
    ids = torch.zeros(padded, dtype=torch.long)
    ids[:total] = torch.cat(seqs)
    targets = torch.zeros(padded, dtype=torch.long)
    positions = torch.zeros(padded, dtype=torch.long)
    start = 0
    for s, n in zip(seqs, lengths, strict=True):
        targets[start : start + n - 1] = s[1:]
        positions[start : start + n] = torch.arange(n)
        start += n
    positions[total:] = torch.arange(lengths[-1], lengths[-1] + padded - total)
    bounds = torch.tensor([0, *lengths], dtype=torch.int64).cumsum(0)
    bounds[-1] = padded
    spans = (bounds[1:] - bounds[:-1]).tolist()
    return PackedMicroBatch(
        seq_indices=list(indices),
        input_ids=ids[None],
        position_ids=positions[None],
        targets=targets,
        cu_seqlens=bounds.to(torch.int32),
        lengths=lengths,
        max_seqlen=int(max(spans)),
    )
