"""HF <-> Megatron weight layouts and sequence packing of the Megatron backend (pure torch, CPU).

The expectations are Megatron's own conventions, written out independently: SelfAttention views the
fused QKV output as ``(groups, (heads/groups + 2) * d)`` and splits it ``[q..., k, v]``; MLP chunks
each TP rank's fc1 output in two halves ``[gate, up]``.
"""

from __future__ import annotations

import torch

from agentrl.trainer.megatron import hf_weights
from agentrl.trainer.megatron.hf_weights import Layout
from agentrl.trainer.megatron.packing import balance_across_ranks, pack, pack_by_budget

LAYOUT = Layout(num_heads=6, num_kv_heads=2, head_dim=4, tied_embeddings=False)


def test_fused_qkv_matches_megatron_split_of_the_projection() -> None:
    h = 8
    q, k, v = torch.randn(24, h), torch.randn(8, h), torch.randn(8, h)
    x = torch.randn(5, h)
    mixed = x @ hf_weights.fuse_qkv(q, k, v, LAYOUT).t()  # (5, 40)
    grouped = mixed.view(5, 2, (3 + 2) * 4)  # Megatron: (s, groups, (np/ng + 2) * hn)
    mq, mk, mv = torch.split(grouped, [12, 4, 4], dim=-1)
    assert torch.allclose(mq.reshape(5, 24), x @ q.t(), atol=1e-5)
    assert torch.allclose(mk.reshape(5, 8), x @ k.t(), atol=1e-5)
    assert torch.allclose(mv.reshape(5, 8), x @ v.t(), atol=1e-5)


def test_gate_up_per_tp_shard_and_round_trips() -> None:
    gate, up = torch.randn(6, 3), torch.randn(6, 3)
    full = hf_weights.fuse_gate_up(gate, up, tp_size=2)
    for rank in range(2):
        g, u = hf_weights.shard("decoder.layers.0.mlp.linear_fc1.weight", full, rank, 2).chunk(2)
        assert torch.equal(g, gate[3 * rank : 3 * rank + 3]) and torch.equal(u, up[3 * rank : 3 * rank + 3])
    assert all(torch.equal(a, b) for a, b in zip(hf_weights.split_gate_up(full, 2), (gate, up), strict=True))


def test_every_mapped_tensor_round_trips_exactly_through_tp_shards() -> None:
    hf = {
        "model.layers.3.self_attn.q_proj.weight": torch.randn(24, 8),
        "model.layers.3.self_attn.k_proj.weight": torch.randn(8, 8),
        "model.layers.3.self_attn.v_proj.weight": torch.randn(8, 8),
        "model.layers.3.self_attn.q_proj.bias": torch.randn(24),
        "model.layers.3.self_attn.k_proj.bias": torch.randn(8),
        "model.layers.3.self_attn.v_proj.bias": torch.randn(8),
        "model.layers.3.self_attn.o_proj.weight": torch.randn(8, 24),
        "model.layers.3.mlp.gate_proj.weight": torch.randn(10, 8),
        "model.layers.3.mlp.up_proj.weight": torch.randn(10, 8),
        "model.layers.3.mlp.down_proj.weight": torch.randn(8, 10),
        "model.layers.3.input_layernorm.weight": torch.randn(8),
        "model.embed_tokens.weight": torch.randn(16, 8),
        "lm_head.weight": torch.randn(16, 8),
    }
    names = {
        "decoder.layers.3." + s
        for s in (
            "self_attention.linear_qkv.weight",
            "self_attention.linear_qkv.bias",
            "self_attention.linear_proj.weight",
            "mlp.linear_fc1.weight",
            "mlp.linear_fc2.weight",
            "input_layernorm.weight",
        )
    } | {"embedding.word_embeddings.weight", "output_layer.weight"}
    back: dict[str, torch.Tensor] = {}
    for name in sorted(names):
        full = hf_weights.from_hf(name, hf, LAYOUT, tp_size=2)
        shards = [hf_weights.shard(name, full, r, 2) for r in range(2)]
        back.update(hf_weights.to_hf(name, hf_weights.unshard(name, shards), LAYOUT, tp_size=2))
    assert set(back) == set(hf)
    assert all(torch.equal(back[n], hf[n]) for n in hf)


def test_tied_checkpoint_feeds_output_layer_from_embeddings_and_exports_no_lm_head() -> None:
    emb = torch.randn(16, 8)
    tied = Layout(6, 2, 4, tied_embeddings=True)
    assert torch.equal(
        hf_weights.from_hf("output_layer.weight", {"model.embed_tokens.weight": emb}, tied, 1), emb
    )
    out = dict(hf_weights.mcore_to_hf_state_dict([("output_layer.weight", emb)], tied, 1))
    assert out == {}


def test_packing_targets_positions_and_unpack() -> None:
    seqs = [torch.tensor([5, 6, 7]), torch.tensor([8, 9]), torch.tensor([1, 2, 3, 4])]
    mb = pack(seqs, [0, 2], pad_to=4)  # 7 tokens padded to 8
    assert mb.input_ids.tolist() == [[5, 6, 7, 1, 2, 3, 4, 0]]
    assert mb.position_ids.tolist() == [[0, 1, 2, 0, 1, 2, 3, 4]]
    assert mb.targets.tolist() == [6, 7, 0, 2, 3, 4, 0, 0]
    assert mb.cu_seqlens.tolist() == [0, 3, 8] and mb.max_seqlen == 5
    per_pos = torch.arange(8, dtype=torch.float32)
    assert [x.tolist() for x in mb.unpack(per_pos)] == [[0, 0, 1], [0, 3, 4, 5]]
    as_pos = mb.to_positions([torch.tensor([0.0, 1, 2]), torch.zeros(2), torch.tensor([0.0, 3, 4, 5])])
    assert as_pos.tolist() == [1, 2, 0, 3, 4, 5, 0, 0]


def test_budget_bins_and_rank_balance() -> None:
    lengths = [700, 300, 500, 200, 900, 100]
    bins = pack_by_budget(list(range(6)), lengths, budget=1000)
    assert sorted(i for b in bins for i in b) == list(range(6))
    assert all(sum(lengths[i] for i in b) <= 1000 for b in bins) and len(bins) == 3
    assert pack_by_budget([0], [1500], budget=1000) == [[0]]
    parts = balance_across_ranks(lengths, 2)
    assert sorted(parts[0] + parts[1]) == list(range(6))
    assert abs(sum(lengths[i] for i in parts[0]) - sum(lengths[i] for i in parts[1])) <= 100
