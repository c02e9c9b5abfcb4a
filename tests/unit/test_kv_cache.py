"""The embedded engine's KV bookkeeping on random tensors: rows join, step, leave; prefixes are found."""

from __future__ import annotations

import torch

from agentrl.engines.embedded.kv_cache import KV, DecodeBatch, PrefixStore

LAYERS, HEADS, DIM = 2, 2, 3


def random_row(n: int) -> KV:
    return [(torch.randn(1, HEADS, n, DIM), torch.randn(1, HEADS, n, DIM)) for _ in range(LAYERS)]


def step(batch: DecodeBatch, expected: list[KV]) -> None:
    """What the model does in one decode step: append one column to every row of every layer."""
    for li, layer in enumerate(batch.layers):
        k, v = torch.randn(len(batch), HEADS, 1, DIM), torch.randn(len(batch), HEADS, 1, DIM)
        layer.update(k, v)
        for r, row in enumerate(expected):
            row[li] = (torch.cat([row[li][0], k[r : r + 1]], 2), torch.cat([row[li][1], v[r : r + 1]], 2))
    batch.stepped()


def check(batch: DecodeBatch, expected: list[KV]) -> None:
    assert len(batch) == len(expected)
    mask, positions = batch.step_inputs()
    for i, row in enumerate(expected):
        n = row[0][0].shape[-2]
        assert int(positions[i, 0]) == n == batch.lengths[i]
        # Left padding: zeros, then ones for the row's n columns and the new token.
        assert mask[i].tolist() == [0] * (batch.width - n) + [1] * (n + 1)
        for (k, v), (ek, ev) in zip(batch.row(i), row, strict=True):
            assert torch.equal(k, ek) and torch.equal(v, ev)
        assert all(layer.keys is not None and layer.keys.shape[-2] == batch.width for layer in batch.layers)


def test_rows_join_step_and_leave() -> None:
    torch.manual_seed(0)
    batch = DecodeBatch(spare=2, margin=1)
    expected = [random_row(5), random_row(3)]
    batch.add([[(k.clone(), v.clone()) for k, v in row] for row in expected])
    check(batch, expected)
    for _ in range(4):  # grows past the spare columns
        step(batch, expected)
    check(batch, expected)
    wide = random_row(20)  # wider than the batch: everything is copied, right-aligned
    batch.add([wide])
    expected.append([(k.clone(), v.clone()) for k, v in wide])
    step(batch, expected)
    check(batch, expected)
    order = batch.remove([0])  # the last row moves into slot 0
    assert order == [2, 1]
    expected = [expected[i] for i in order]
    check(batch, expected)
    order = batch.remove([0])  # the wide row leaves: the padding columns are trimmed
    expected = [expected[i] for i in order]
    assert batch.width == expected[0][0][0].shape[-2] + batch.margin
    step(batch, expected)
    check(batch, expected)
    assert batch.remove([0]) == [] and len(batch) == 0 and batch.width == 0


def test_prefix_store_longest_prefix_and_eviction() -> None:
    row = random_row(6)
    one_row_bytes = sum(k.nbytes + v.nbytes for k, v in row)
    store = PrefixStore(budget_bytes=2 * one_row_bytes)
    store.store("a", [1, 2, 3, 4, 5, 6], row)
    store.store("b", [1, 2, 9, 9, 9, 9], random_row(6))
    n, kv = store.lookup([1, 2, 3, 4, 7])
    assert n == 4 and kv is not None and torch.equal(kv[0][0], row[0][0][:, :, :4])
    n, _ = store.lookup([1, 2, 3, 4, 5, 6])  # a full match leaves the last id to feed the model
    assert n == 5
    store.store("c", [7, 7, 7, 7, 7, 7], random_row(6))  # over budget: "b" was used least recently
    assert store.lookup([1, 2, 9, 9, 1])[0] == 2  # only "a" shares [1, 2] now
    assert store.lookup([8, 8])[0] == 0
