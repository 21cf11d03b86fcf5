"""model_lab/kv_cache.py：稠密 KVCache、打包元数据（位置、分块对角掩码）、PagedKVCache 的槽位分配与读写，
以及 attention_backends 里的掩码约定（bool、NaN 保护）。"""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from model_lab import AttnMetadata, KVCache, PagedKVCache, pack_sequences
from model_lab.attention_backends import eager_attention, make_attention_mask, packed_attention


def test_dense_cache_update_returns_history_and_advance_moves_position():
    cache = KVCache(2, 1, 1, 6, 2)
    k1, v1 = torch.ones(1, 1, 3, 2), 2 * torch.ones(1, 1, 3, 2)
    k, v = cache.update(1, k1, v1)
    assert k.shape == (1, 1, 3, 2) and cache.seq_len == 0  # 位置由模型在所有层写完后前进
    cache.advance(3)
    k, v = cache.update(1, 3 * torch.ones(1, 1, 1, 2), 4 * torch.ones(1, 1, 1, 2))
    assert k[0, 0, :, 0].tolist() == [1, 1, 1, 3] and v[0, 0, :, 0].tolist() == [2, 2, 2, 4]
    assert cache.k[0].abs().sum() == 0  # 别的层没被写
    cache.reset()
    assert cache.seq_len == 0
    with pytest.raises(ValueError, match=r"max_seq_len=0"):
        KVCache(2, 1, 1, 0, 2)


def test_metadata_positions_last_tokens_and_mask_by_hand():
    meta = AttnMetadata.from_lengths([2, 3])
    assert meta.cu_seqlens.tolist() == [0, 2, 5] and meta.cu_seqlens.dtype == torch.int32
    assert meta.position_ids.tolist() == [[0, 1, 0, 1, 2]]
    assert meta.last_token_indices.tolist() == [1, 4]
    assert (meta.num_tokens, meta.max_seqlen_q, meta.max_seqlen_k) == (5, 3, 3)
    assert meta.dense_mask.int().tolist() == [[1, 0, 0, 0, 0],
                                              [1, 1, 0, 0, 0],
                                              [0, 0, 1, 0, 0],
                                              [0, 0, 1, 1, 0],
                                              [0, 0, 1, 1, 1]]
    ids, pos, meta2 = pack_sequences([torch.tensor([5, 6]), torch.tensor([7, 8, 9])])
    assert ids.tolist() == [[5, 6, 7, 8, 9]] and torch.equal(pos, meta.position_ids)
    assert torch.equal(meta2.cu_seqlens, meta.cu_seqlens)
    with pytest.raises(ValueError, match=r"一维 token 张量"):
        pack_sequences([torch.tensor([1]), torch.tensor([], dtype=torch.long)])


@settings(max_examples=30, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 6), st.integers(1, 4)), min_size=1, max_size=4))
def test_dense_mask_is_block_diagonal_causal(spec):
    """任意"已缓存 c、新 n"的组合：query i 能看 key j 当且仅当同一序列、且 j 的位置不晚于 i 的位置。"""
    cache = PagedKVCache(1, 32, 3, 1, 2)
    for b, (c, _) in enumerate(spec):
        if c:
            cache.prepare([b], [c])
    meta = cache.prepare(list(range(len(spec))), [n for _, n in spec])
    q_seq = [b for b, (_, n) in enumerate(spec) for _ in range(n)]
    q_pos = [c + i for c, n in spec for i in range(n)]
    k_seq = [b for b, (c, n) in enumerate(spec) for _ in range(c + n)]
    k_pos = [j for c, n in spec for j in range(c + n)]
    expected = [[qs == ks and kp <= qp for ks, kp in zip(k_seq, k_pos)] for qs, qp in zip(q_seq, q_pos)]
    assert meta.dense_mask.tolist() == expected
    assert meta.position_ids[0].tolist() == q_pos


def test_paged_allocation_slots_tables_and_free_by_hand():
    cache = PagedKVCache(1, 6, 4, 1, 1)
    meta = cache.prepare(["a", "b"], [5, 2])  # a 用块 0、1；b 用块 2
    assert meta.slot_mapping.tolist() == [0, 1, 2, 3, 4, 8, 9]
    assert meta.block_tables.tolist() == [[0, 1], [2, 0]]
    assert meta.context_lens.tolist() == [5, 2] and cache.num_free_blocks == 3
    meta = cache.prepare(["b", "a"], [3, 1])  # b 写到第 2..4 个位置：块 2 写满、再要一块 3
    assert meta.slot_mapping.tolist() == [10, 11, 12, 5]
    assert meta.block_tables.tolist() == [[2, 3], [0, 1]] and meta.context_lens.tolist() == [5, 6]
    assert meta.position_ids.tolist() == [[2, 3, 4, 5]]
    assert meta.context_slots(4).tolist() == [8, 9, 10, 11, 12, 0, 1, 2, 3, 4, 5]
    with pytest.raises(ValueError, match=r"需要 3 个新块，只剩 2 个空闲.*free\(seq_id\)"):
        cache.prepare(["c"], [12])
    assert cache.num_free_blocks == 2 and cache.seq_len("c") == 0  # 失败的分配什么也没改
    cache.free("a")
    assert cache.num_free_blocks == 4
    meta = cache.prepare(["c"], [12])
    assert sorted(meta.block_tables[0].tolist()) == [0, 1, 4]
    with pytest.raises(ValueError, match=r"'a' 不在缓存里"):
        cache.free("a")
    with pytest.raises(ValueError, match=r"有重复"):
        cache.prepare(["b", "b"], [1, 1])


def test_paged_update_writes_slots_and_packed_fallback_reads_them():
    """写进块池再按 block_tables 读出，等于直接在各序列的上下文上做因果注意力。"""
    torch.manual_seed(0)
    cache = PagedKVCache(1, 8, 2, 2, 4)
    lens = [3, 1, 4]
    meta = cache.prepare([0, 1, 2], lens)
    n = sum(lens)
    q, k, v = torch.randn(n, 2, 4), torch.randn(n, 2, 4), torch.randn(n, 2, 4)
    k_pool, v_pool = cache.update(0, k, v, meta.slot_mapping)
    assert torch.equal(k_pool.flatten(0, 1)[meta.slot_mapping], k)
    paged = packed_attention("eager", q, k_pool, v_pool, attn_metadata=meta, scale=0.5)
    flat = packed_attention("eager", q, k, v, attn_metadata=AttnMetadata.from_lengths(lens), scale=0.5)
    torch.testing.assert_close(paged, flat)
    start = 0
    for t in lens:
        sl = slice(start, start + t)
        ref = eager_attention(q[sl].transpose(0, 1)[None], k[sl].transpose(0, 1)[None], v[sl].transpose(0, 1)[None],
                              is_causal=True, attn_mask=None, scale=0.5)[0].transpose(0, 1)
        torch.testing.assert_close(flat[sl], ref)
        start += t


def test_attention_mask_convention_bool_with_nan_guard():
    pad = torch.tensor([[0, 0, 1, 1], [1, 1, 1, 1]])
    mask = make_attention_mask(4, 0, pad, torch.device("cpu"))
    assert mask.dtype == torch.bool and mask.shape == (2, 1, 4, 4)
    assert mask[0, 0, 0].all() and mask[0, 0, 1].all()  # 左 padding 的行一个 key 都不能看：改为看全部（NaN 保护）
    assert mask[0, 0, 3].tolist() == [False, False, True, True]
    assert mask[1, 0].tolist() == torch.ones(4, 4, dtype=torch.bool).tril().tolist()
    assert make_attention_mask(4, 0, None, torch.device("cpu")) is None  # 纯因果：走 is_causal
    assert make_attention_mask(1, 7, None, torch.device("cpu")) is None  # 解码一步：看全部
    prefix = make_attention_mask(2, 3, None, torch.device("cpu"))  # 右下对齐
    assert prefix[0, 0].tolist() == [[True] * 4 + [False], [True] * 5]
    q = torch.randn(2, 1, 4, 8)
    out = eager_attention(q, q, q, is_causal=False, attn_mask=mask, scale=1.0)
    assert torch.isfinite(out).all()
