"""分页注意力内核：与"按页表 gather 再 SDPA"的参考、与 model_lab 的 packed_attention（真实的 PagedKVCache +
AttnMetadata）相同——解码、分块预填充、GQA / MQA、head_dim 16 / 64 / 12、block_size 16 / 5 / 4、物理块打乱；
paged_attention_decode 与 paged_attention 逐位相同；坏输入报清楚的错；GPU 上 bf16 / fp16 满足 2× 规则。"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from inference_engine.kernels.paged_attention import MAX_HEAD_DIM, paged_attention, paged_attention_decode
from inference_engine.kernels.runtime import KERNEL_DEVICE
from model_lab import PagedKVCache
from model_lab.attention_backends import packed_attention
from tests.conftest import requires_cuda

DEV = KERNEL_DEVICE
TOL = dict(rtol=1e-5, atol=1e-5)


def make_batch(q_lens, ctx_lens, *, h, h_kv, d, block_size, dtype=torch.float32, seed=0):
    """随机的分页批量：物理块号随机打乱（每条序列的块在池里不连续），页表里用不到的列填 -1——
    内核若读了它们就会越界，所以这些测试同时证明"多余的列从不被读"。"""
    g = torch.Generator().manual_seed(seed)
    need = [-(-lk // block_size) for lk in ctx_lens]
    num_blocks = sum(need) + 2
    perm = torch.randperm(num_blocks, generator=g)
    tables = torch.full((len(ctx_lens), max(need) + 2), -1, dtype=torch.int32)
    used = 0
    for b, nb in enumerate(need):
        tables[b, :nb] = perm[used:used + nb]
        used += nb
    shape = (num_blocks, block_size, h_kv, d)
    return dict(q=torch.randn(sum(q_lens), h, d, generator=g).to(DEV, dtype),
                k_cache=torch.randn(shape, generator=g).to(DEV, dtype),
                v_cache=torch.randn(shape, generator=g).to(DEV, dtype),
                cu_seqlens_q=torch.tensor([0, *q_lens]).cumsum(0).to(DEV, torch.int32),
                context_lens=torch.tensor(ctx_lens, dtype=torch.int32, device=DEV), block_tables=tables.to(DEV))


def gather_reference(q, k_cache, v_cache, *, cu_seqlens_q, context_lens, block_tables, scale=None):
    """逐条序列、逐个位置按页表取出 K/V 行（位置 p 在物理块 block_tables[b, p // bs] 的第 p % bs 行），
    复制 KV 头到 H 个，再用 SDPA + 右下对齐的因果掩码（第 i 个新 token 在位置 Lk − Lq + i）。"""
    bs, h_kv = k_cache.size(1), k_cache.size(2)
    cu, out = cu_seqlens_q.tolist(), []
    for b, lk in enumerate(context_lens.tolist()):
        rows = [(int(block_tables[b, p // bs]), p % bs) for p in range(lk)]
        k = torch.stack([k_cache[blk, off] for blk, off in rows], dim=1)  # (H_kv, Lk, D)
        v = torch.stack([v_cache[blk, off] for blk, off in rows], dim=1)
        qb = q[cu[b]:cu[b + 1]].transpose(0, 1)  # (H, Lq, D)
        rep = qb.size(0) // h_kv
        k, v = k.repeat_interleave(rep, dim=0), v.repeat_interleave(rep, dim=0)
        lq = qb.size(1)
        mask = torch.arange(lk, device=q.device)[None, :] <= torch.arange(lq, device=q.device)[:, None] + (lk - lq)
        out.append(F.scaled_dot_product_attention(qb, k, v, attn_mask=mask, scale=scale).transpose(0, 1))
    return torch.cat(out)


def check(batch, scale=None):
    ours = paged_attention(**batch, scale=scale)
    ref = gather_reference(**batch, scale=scale)
    assert ours.shape == batch["q"].shape and ours.dtype == batch["q"].dtype
    torch.testing.assert_close(ours, ref, **TOL)
    return ours


# ---------------------------------------------------------------------------------------------------
# 与 gather + SDPA 参考对照
# ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("d", [16, 64])
@pytest.mark.parametrize("h,h_kv", [(4, 2), (2, 2)])
def test_decode_matches_gather_reference(d, h, h_kv):
    """解码：上下文 [1, 7, 33]（1 个位置；不满一块；跨 3 块且最后一块只有 1 行），block_size 16，块打乱。"""
    batch = make_batch([1, 1, 1], [1, 7, 33], h=h, h_kv=h_kv, d=d, block_size=16)
    tables = batch["block_tables"]
    assert tables[2, 1] != tables[2, 0] + 1 or tables[2, 2] != tables[2, 1] + 1  # 物理块确实不连续
    ours = check(batch)
    decode = paged_attention_decode(batch["q"], batch["k_cache"], batch["v_cache"],
                                    context_lens=batch["context_lens"], block_tables=tables)
    assert torch.equal(decode, ours)


@pytest.mark.parametrize("d", [16, 64])
def test_chunked_prefill_matches_gather_reference(d):
    """分块预填充：Lq = [3, 1, 5] 接在上下文 [10, 1, 21] 之后（第 2 条只有 1 个 token，Lq = Lk），GQA 4 / 2。"""
    check(make_batch([3, 1, 5], [10, 1, 21], h=4, h_kv=2, d=d, block_size=16, seed=1))


def test_odd_shapes_and_several_query_blocks():
    """head_dim 12（tiny Llama 的尺寸，不是 2 的幂）、G = 3（不是 2 的幂）、block_size 5、自定义 scale；
    MQA（8 个 query 头共用 1 个 KV 头）下 20 个新 token 要 3 个 query 块、上下文 150 要 3 次 BLOCK_N 迭代，
    同批另一条序列只有 1 个新 token——它的后两个 query 块 program 无事可做，不能写坏任何输出。"""
    check(make_batch([2, 1, 4], [9, 14, 4], h=6, h_kv=2, d=12, block_size=5, seed=2), scale=0.3)
    check(make_batch([20, 1], [150, 70], h=8, h_kv=1, d=16, block_size=16, seed=3))


# ---------------------------------------------------------------------------------------------------
# 与 model_lab 的 packed_attention 对照：真实的 PagedKVCache 与 AttnMetadata
# ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("block_size", [16, 4])
def test_matches_packed_attention_on_paged_cache(block_size):
    """PagedKVCache.prepare 分配槽位、update 写入新 k/v，再按同一份 AttnMetadata 调内核与 packed_attention("sdpa")。
    几条序列交替分配块，所以第 2 条序列的块不连续；最后一步是解码与分块预填充混在一个批量里。"""
    h, h_kv, d = 4, 2, 16
    cache = PagedKVCache(1, num_blocks=24, block_size=block_size, num_kv_heads=h_kv, head_dim=d, device=DEV)
    g = torch.Generator().manual_seed(4)
    steps = [([1, 2], [6, 16]), ([2], [16]), ([0, 1, 2], [1, 1, 1]), ([0, 1, 2], [3, 1, 2])]
    with torch.no_grad():
        for seq_ids, new_lens in steps:
            meta = cache.prepare(seq_ids, new_lens)
            n = meta.num_tokens
            cache.update(0, torch.randn(n, h_kv, d, generator=g).to(DEV), torch.randn(n, h_kv, d, generator=g).to(DEV),
                         meta.slot_mapping)
            q = torch.randn(n, h, d, generator=g).to(DEV)
            ours = paged_attention(q, cache.k[0], cache.v[0], cu_seqlens_q=meta.cu_seqlens,
                                   context_lens=meta.context_lens, block_tables=meta.block_tables,
                                   scale=0.25, max_seqlen_q=meta.max_seqlen_q)
            ref = packed_attention("sdpa", q, cache.k[0], cache.v[0], attn_metadata=meta, scale=0.25)
            torch.testing.assert_close(ours, ref, **TOL)
    assert meta.context_lens.tolist() == [4, 8, 35]
    blocks = meta.block_tables[2, :-(-35 // block_size)].tolist()
    assert any(b2 != b1 + 1 for b1, b2 in zip(blocks, blocks[1:]))  # 交替分配：块确实不连续


# ---------------------------------------------------------------------------------------------------
# 坏输入
# ---------------------------------------------------------------------------------------------------


def _bad(change):
    """一个合法的批量（Lq = [1, 2]，上下文 [7, 20]），按 change 改坏其中几项。"""
    batch = make_batch([1, 2], [7, 20], h=4, h_kv=2, d=16, block_size=16)
    batch.update({k: v.to(DEV) for k, v in change(batch).items()})
    return batch


BAD_INPUTS = {
    "block table too short": (lambda b: {"block_tables": b["block_tables"][:, :1].contiguous()},
                              r"block_tables 太短：第 1 条序列的上下文长 20.*需要 2 个块.*只有 1 列"),
    "block id out of range": (lambda b: {"block_tables": b["block_tables"].clone().index_fill_(1, torch.tensor([0]), 99)},
                              r"block_tables\[0, 0\] = 99 不是合法的物理块号"),
    "head_dim unsupported": (lambda b: {"q": torch.randn(3, 4, 2 * MAX_HEAD_DIM),
                                        "k_cache": torch.randn(4, 16, 2, 2 * MAX_HEAD_DIM),
                                        "v_cache": torch.randn(4, 16, 2, 2 * MAX_HEAD_DIM)},
                             r"head_dim=512 不受支持.*attn_implementation='sdpa'"),
    "q dtype differs from cache": (lambda b: {"q": b["q"].to(torch.float16)}, r"dtype 必须相同"),
    "float64 cache": (lambda b: {"k_cache": b["k_cache"].double(), "v_cache": b["v_cache"].double()},
                      r"k_cache 的 dtype torch.float64 不受支持"),
    "int64 context_lens": (lambda b: {"context_lens": b["context_lens"].long()}, r"context_lens 的 dtype torch.int64"),
    "float block_tables": (lambda b: {"block_tables": b["block_tables"].float()}, r"block_tables 的 dtype torch.float32"),
    "heads not divisible": (lambda b: {"q": torch.randn(3, 3, 16)}, r"头数 3 不能被 KV 头数 2 整除"),
    "context shorter than new tokens": (lambda b: {"context_lens": torch.tensor([7, 1], dtype=torch.int32)},
                                        r"context_lens=\[7, 1\] 小于各序列的新 token 数 \[1, 2\]"),
    "cu_seqlens does not end at N": (lambda b: {"cu_seqlens_q": torch.tensor([0, 1, 2], dtype=torch.int32)},
                                     r"以 N = q.size\(0\) = 3 结束"),
    "metadata count mismatch": (lambda b: {"context_lens": torch.tensor([7], dtype=torch.int32)},
                                r"cu_seqlens_q 应有 B\+1 = 2 项"),
    "non-contiguous q": (lambda b: {"q": b["q"].transpose(0, 1).contiguous().transpose(0, 1)}, r"q 不是连续张量"),
    "cache shapes differ": (lambda b: {"v_cache": b["v_cache"][:-1].contiguous()}, r"形状不同"),
}


@pytest.mark.parametrize("case", sorted(BAD_INPUTS))
def test_bad_input_raises_clear_error(case):
    change, match = BAD_INPUTS[case]
    batch = _bad(change)
    with pytest.raises(ValueError, match=match):
        paged_attention(**batch)


def test_forward_only_max_seqlen_q_and_decode_batch_checked():
    batch = make_batch([1, 2], [7, 20], h=4, h_kv=2, d=16, block_size=16)
    with pytest.raises(ValueError, match=r"max_seqlen_q=1 小于实际最长的新 token 数 2"):
        paged_attention(**batch, max_seqlen_q=1)
    with pytest.raises(ValueError, match=r"B = 3.*context_lens 应为 \(3,\).*请用 paged_attention"):
        paged_attention_decode(batch["q"], batch["k_cache"], batch["v_cache"], context_lens=batch["context_lens"],
                               block_tables=batch["block_tables"])
    batch["q"].requires_grad_(True)
    with pytest.raises(ValueError, match=r"只有前向.*torch.no_grad"):
        paged_attention(**batch)
    with torch.no_grad():  # 推理时的正常用法
        torch.testing.assert_close(paged_attention(**batch), gather_reference(**batch), **TOL)


# ---------------------------------------------------------------------------------------------------
# GPU：低精度下的误差不超过 PyTorch 自己在同一精度下的误差的 2 倍
# ---------------------------------------------------------------------------------------------------


@requires_cuda
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("q_lens,ctx_lens", [([1, 1, 1, 1], [1, 7, 33, 700]), ([3, 1, 37], [10, 1, 300])])
def test_low_precision_within_twice_torch_error_on_gpu(dtype, q_lens, ctx_lens):
    batch = make_batch(q_lens, ctx_lens, h=32, h_kv=8, d=128, block_size=16, dtype=dtype, seed=5)
    fp32 = {k: (v.float() if v.is_floating_point() else v) for k, v in batch.items()}
    exact = gather_reference(**fp32)
    ours_err = (paged_attention(**batch).float() - exact).abs().max().item()
    torch_err = (gather_reference(**batch).float() - exact).abs().max().item()
    assert ours_err <= 2 * torch_err + 1e-3, (ours_err, torch_err)


# ---------------------------------------------------------------------------------------------------
# 练习模式：模块自带的 gather-then-attend 参考（paged_attention_reference）对照上面逐个位置查页表的 gather_reference
# ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("q_lens,ctx_lens,h,h_kv,d,block_size", [
    ([1, 1, 1], [1, 7, 33], 4, 2, 16, 16),   # 解码，GQA，块打乱
    ([3, 1, 5], [10, 1, 21], 4, 4, 16, 4),   # 分块预填充，MHA，小块
    ([2, 1], [9, 14], 6, 2, 12, 5),          # head_dim 12、block_size 5（都不是 2 的幂）
])
def test_module_reference_matches_position_by_position_gather(q_lens, ctx_lens, h, h_kv, d, block_size):
    from inference_engine.kernels.paged_attention import paged_attention_reference

    batch = make_batch(q_lens, ctx_lens, h=h, h_kv=h_kv, d=d, block_size=block_size, seed=6)
    ours = paged_attention_reference(**batch, scale=0.3)
    assert ours.shape == batch["q"].shape and ours.dtype == batch["q"].dtype
    torch.testing.assert_close(ours, gather_reference(**batch, scale=0.3), **TOL)
