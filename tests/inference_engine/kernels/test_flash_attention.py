"""Triton FlashAttention-2 对照 F.scaled_dot_product_attention：前向与 dq/dk/dv，因果（右下对齐）与非因果、GQA、
非块倍数长度、T ≠ S、变长打包批量；坏输入报 ValueError；GPU 上 bf16/fp16 的"≤ 2× PyTorch 自身误差"规则。

CPU 上走 Triton 解释器（runtime.py 设好 TRITON_INTERPRET=1），形状故意小：解释器逐 program 用 numpy 模拟。
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from inference_engine.kernels.flash_attention import (
    benchmark_flash_attention,
    flash_attention,
    flash_attention_varlen,
)
from inference_engine.kernels.runtime import INTERPRET, KERNEL_DEVICE
from tests.conftest import cuda_available

DEV = KERNEL_DEVICE
# 有 GPU 但用户强制了 TRITON_INTERPRET=1 时内核只收 CPU 张量，GPU 测试同样跳过
requires_gpu = pytest.mark.skipif(not cuda_available() or INTERPRET, reason="needs an NVIDIA GPU (Triton compiled)")


def _run(fn, q, k, v, do):
    """fn(q, k, v) 的输出与 (dq, dk, dv)。"""
    q, k, v = (t.detach().clone().requires_grad_(True) for t in (q, k, v))
    out = fn(q, k, v)
    out.backward(do)
    return out.detach(), q.grad, k.grad, v.grad


def _sdpa_ref(q, k, v, *, causal, scale=None):
    """参考：SDPA；因果用显式的右下对齐 bool 掩码（T ≠ S 时 SDPA 的 is_causal 是左上对齐）。"""
    t, s = q.size(-2), k.size(-2)
    mask = torch.ones(t, s, dtype=torch.bool, device=q.device).tril(s - t) if causal else None
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=scale, enable_gqa=q.size(1) != k.size(1))


def _inputs(b, h, h_kv, t, s, d, dtype=torch.float32, device=DEV):
    q = torch.randn(b, h, t, d, device=device, dtype=dtype)
    k, v = (torch.randn(b, h_kv, s, d, device=device, dtype=dtype) for _ in range(2))
    return q, k, v, torch.randn_like(q)


def _assert_close(ours, ref, out_tol=1e-5, grad_tol=1e-4):
    names = ("out", "dq", "dk", "dv")
    for name, a, b, tol in zip(names, ours, ref, (out_tol, grad_tol, grad_tol, grad_tol)):
        err = (a - b).abs().max().item()
        assert err <= tol, f"{name}: max|Δ| = {err:.2e} > {tol}"


@pytest.mark.parametrize("causal", [False, True])
def test_dense_matches_sdpa(causal):
    """(1, 2, 128, 64)：多个 Q 块与 K 块，因果时同时走无掩码块、对角块和被跳过的块。"""
    q, k, v, do = _inputs(1, 2, 2, 128, 128, 64)
    ours = _run(lambda q, k, v: flash_attention(q, k, v, causal=causal), q, k, v, do)
    ref = _run(lambda q, k, v: F.scaled_dot_product_attention(q, k, v, is_causal=causal), q, k, v, do)
    _assert_close(ours, ref)


@pytest.mark.parametrize("causal", [False, True])
def test_gqa_sums_kv_grads_over_the_group(causal):
    """H=4 个 query 头共享 H_kv=2 个 KV 头：dk/dv 必须是组内两个 query 头的贡献之和；顺带测非默认 scale。"""
    q, k, v, do = _inputs(2, 4, 2, 64, 64, 32)
    ours = _run(lambda q, k, v: flash_attention(q, k, v, causal=causal, scale=0.3), q, k, v, do)
    ref = _run(lambda q, k, v: _sdpa_ref(q, k, v, causal=causal, scale=0.3), q, k, v, do)
    _assert_close(ours, ref)


@pytest.mark.parametrize("causal", [False, True])
def test_length_not_a_multiple_of_the_block(causal):
    """T = S = 50：最后一个 Q 块和 K 块都不满，越界的行列必须被掩掉（读成 0、不写回、不进 softmax）。"""
    q, k, v, do = _inputs(1, 2, 1, 50, 50, 16)
    ours = _run(lambda q, k, v: flash_attention(q, k, v, causal=causal), q, k, v, do)
    ref = _run(lambda q, k, v: _sdpa_ref(q, k, v, causal=causal), q, k, v, do)
    _assert_close(ours, ref)


@pytest.mark.parametrize(("t", "s"), [(16, 40), (48, 112), (1, 37)])
def test_causal_bottom_right_with_fewer_queries_than_keys(t, s):
    """T 个新 query 接在 S 的上下文后：query i 看 key j ≤ i + (S − T)（对照显式 bool 掩码，不是 SDPA 的 is_causal）。
    (48, 112)：偏移 64 大于一个 Q 块，只按 i ≤ j 划分块边界的内核会漏掉一整段 key；(1, 37)：解码一步，看全部 key。"""
    q, k, v, do = _inputs(1, 2, 2, t, s, 32)
    mask = torch.arange(s, device=DEV)[None, :] <= torch.arange(t, device=DEV)[:, None] + (s - t)
    ours = _run(lambda q, k, v: flash_attention(q, k, v, causal=True), q, k, v, do)
    ref = _run(lambda q, k, v: F.scaled_dot_product_attention(q, k, v, attn_mask=mask), q, k, v, do)
    _assert_close(ours, ref)


def test_causal_rows_without_keys_are_zero():
    """T=40 > S=16：前 24 个 query 一个 key 都看不到——输出 0、梯度 0，不是 NaN；其余行是普通的 S×S 因果。"""
    q, k, v, do = _inputs(1, 2, 2, 40, 16, 32)
    out, dq, dk, dv = _run(lambda q, k, v: flash_attention(q, k, v, causal=True), q, k, v, do)
    assert torch.isfinite(out).all() and torch.isfinite(dq).all()
    assert out[:, :, :24].abs().max().item() == 0.0 and dq[:, :, :24].abs().max().item() == 0.0
    ref = _run(lambda q, k, v: F.scaled_dot_product_attention(q[:, :, 24:], k, v, is_causal=True),
               q, k, v, do[:, :, 24:])
    _assert_close((out[:, :, 24:], dq[:, :, 24:], dk, dv), (ref[0], ref[1][:, :, 24:], ref[2], ref[3]))


def _cu(lengths):
    return torch.tensor([0, *torch.tensor(lengths).cumsum(0).tolist()], dtype=torch.int32, device=DEV)


def _varlen_ref(q, k, v, cu_q, cu_k, causal):
    """逐条序列跑 SDPA（序列内右下对齐的因果掩码）再拼回 (N, H, D)。"""
    outs = []
    for a, b, c, e in zip(cu_q[:-1].tolist(), cu_q[1:].tolist(), cu_k[:-1].tolist(), cu_k[1:].tolist()):
        qs, ks, vs = (x.transpose(0, 1)[None] for x in (q[a:b], k[c:e], v[c:e]))  # (1, H, L, D)
        outs.append(_sdpa_ref(qs, ks, vs, causal=causal)[0].transpose(0, 1))
    return torch.cat(outs)


@pytest.mark.parametrize(("lens_k", "causal"), [
    ([5, 17, 1], True),  # 打包的自注意力：cu_seqlens_k = cu_seqlens_q
    ([9, 17, 30], True),  # 上下文比新 token 长：分块 prefill / 带缓存前缀的一批新 token
    ([9, 17, 30], False),
])
def test_varlen_matches_per_sequence_sdpa(lens_k, causal):
    lens_q = [5, 17, 1]
    cu_q, cu_k = _cu(lens_q), _cu(lens_k)
    q = torch.randn(sum(lens_q), 4, 32, device=DEV)
    k, v = (torch.randn(sum(lens_k), 2, 32, device=DEV) for _ in range(2))
    do = torch.randn_like(q)
    ours = _run(lambda q, k, v: flash_attention_varlen(
        q, k, v, cu_seqlens_q=cu_q, cu_seqlens_k=cu_k, max_seqlen_q=max(lens_q), max_seqlen_k=max(lens_k),
        causal=causal), q, k, v, do)
    ref = _run(lambda q, k, v: _varlen_ref(q, k, v, cu_q, cu_k, causal), q, k, v, do)
    _assert_close(ours, ref)


def test_saves_only_output_and_logsumexp():
    """autograd 只保存 q, k, v, O 和 (B, H, T) 的 lse：没有 O(T·S) 的概率矩阵。"""
    q, k, v, _ = _inputs(1, 2, 1, 64, 48, 16)
    q.requires_grad_(True)
    out = flash_attention(q, k, v, causal=True)
    saved = [t for t in out.grad_fn.saved_tensors if t is not None]
    shapes = sorted(tuple(t.shape) for t in saved)
    assert shapes == sorted([(1, 2, 64, 16), (1, 1, 48, 16), (1, 1, 48, 16), (1, 2, 64, 16), (1, 2, 64)])


def test_backward_is_deterministic():
    """没有原子加：同样的输入两次反向逐位相同（GQA 的 dk/dv 在 program 内部对组求和）。"""
    q, k, v, do = _inputs(1, 4, 2, 40, 40, 16)
    first = _run(lambda q, k, v: flash_attention(q, k, v, causal=True), q, k, v, do)
    second = _run(lambda q, k, v: flash_attention(q, k, v, causal=True), q, k, v, do)
    for a, b in zip(first, second):
        assert torch.equal(a, b)


# ------------------------------- 坏输入 -------------------------------


@pytest.mark.parametrize("head_dim", [48, 256])
def test_unsupported_head_dim_names_the_fallback(head_dim):
    q, k, v, _ = _inputs(1, 2, 2, 8, 8, head_dim)
    with pytest.raises(ValueError, match="head_dim=.*sdpa"):
        flash_attention(q, k, v)


def test_bad_dense_inputs():
    q, k, v, _ = _inputs(1, 4, 2, 8, 8, 16)
    with pytest.raises(ValueError, match="连续"):
        flash_attention(q.transpose(1, 2), k, v)  # (B, T, H, D) 的转置视图，非连续
    with pytest.raises(ValueError, match="dtype"):
        flash_attention(q.double(), k.double(), v.double())
    with pytest.raises(ValueError, match="dtype"):
        flash_attention(q, k.half(), v.half())
    with pytest.raises(ValueError, match="整数倍"):
        flash_attention(torch.randn(1, 3, 8, 16, device=DEV), k, v)
    with pytest.raises(ValueError, match="4 维"):
        flash_attention(q[0], k[0], v[0])
    with pytest.raises(ValueError, match="形状"):
        flash_attention(q, k, v[:, :, :4].contiguous())


def test_bad_varlen_inputs():
    lens = [5, 17, 1]
    q = torch.randn(23, 4, 16, device=DEV)
    k, v = (torch.randn(23, 2, 16, device=DEV) for _ in range(2))
    cu = _cu(lens)

    def call(cu_q=cu, cu_k=cu, max_q=17, max_k=17):
        return flash_attention_varlen(q, k, v, cu_seqlens_q=cu_q, cu_seqlens_k=cu_k, max_seqlen_q=max_q,
                                      max_seqlen_k=max_k)

    with pytest.raises(ValueError, match="dtype"):
        call(cu_q=cu.long())
    with pytest.raises(ValueError, match="长度"):
        call(cu_k=cu[:-1].contiguous())  # 与 cu_seqlens_q 的条数不同
    with pytest.raises(ValueError, match="末项"):
        call(cu_q=torch.tensor([0, 5, 22], dtype=torch.int32, device=DEV))  # 末项 ≠ N
    with pytest.raises(ValueError, match="max_seqlen"):
        call(max_q=16)  # 比真实最长序列短：会漏算行
    with pytest.raises(ValueError, match="head_dim=.*sdpa"):
        flash_attention_varlen(torch.randn(23, 4, 48, device=DEV), torch.randn(23, 2, 48, device=DEV),
                               torch.randn(23, 2, 48, device=DEV), cu_seqlens_q=cu, cu_seqlens_k=cu,
                               max_seqlen_q=17, max_seqlen_k=17)


@pytest.mark.skipif(cuda_available() and not INTERPRET, reason="只在没有 GPU 时检查")
def test_benchmark_requires_a_gpu():
    with pytest.raises(RuntimeError, match="GPU"):
        benchmark_flash_attention()


# ------------------------------- GPU：bf16 / fp16 -------------------------------


@requires_gpu
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("causal", [False, True])
def test_low_precision_error_at_most_twice_pytorch(dtype, causal):
    """误差规则：内核对 fp32 参考的误差 ≤ 2 × PyTorch SDPA 在同一低精度下的误差（+ 一点绝对余量）。"""
    q, k, v, do = _inputs(2, 8, 2, 300, 300, 64, device="cuda")  # 非块倍数长度 + GQA
    ref32 = _run(lambda q, k, v: _sdpa_ref(q, k, v, causal=causal), q, k, v, do)
    low = [t.to(dtype) for t in (q, k, v, do)]
    ours = _run(lambda q, k, v: flash_attention(q, k, v, causal=causal), *low)
    torch_low = _run(lambda q, k, v: _sdpa_ref(q, k, v, causal=causal), *low)
    for name, a, b, r in zip(("out", "dq", "dk", "dv"), ours, torch_low, ref32):
        assert a.dtype == dtype
        ours_err = (a.float() - r).abs().max().item()
        torch_err = (b.float() - r).abs().max().item()
        assert ours_err <= 2 * torch_err + 1e-3, f"{name}: {ours_err:.2e} > 2 × {torch_err:.2e}"


@requires_gpu
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_low_precision_varlen(dtype):
    lens_q, lens_k = [100, 7, 260], [300, 7, 260]
    cu_q, cu_k = _cu(lens_q).cuda(), _cu(lens_k).cuda()
    q = torch.randn(sum(lens_q), 8, 128, device="cuda")
    k, v = (torch.randn(sum(lens_k), 2, 128, device="cuda") for _ in range(2))
    do = torch.randn_like(q)
    ref32 = _run(lambda q, k, v: _varlen_ref(q, k, v, cu_q, cu_k, True), q, k, v, do)
    low = [t.to(dtype) for t in (q, k, v, do)]
    ours = _run(lambda q, k, v: flash_attention_varlen(q, k, v, cu_seqlens_q=cu_q, cu_seqlens_k=cu_k,
                                                       max_seqlen_q=260, max_seqlen_k=300), *low)
    torch_low = _run(lambda q, k, v: _varlen_ref(q, k, v, cu_q, cu_k, True), *low)
    for name, a, b, r in zip(("out", "dq", "dk", "dv"), ours, torch_low, ref32):
        ours_err = (a.float() - r).abs().max().item()
        torch_err = (b.float() - r).abs().max().item()
        assert ours_err <= 2 * torch_err + 1e-3, f"{name}: {ours_err:.2e} > 2 × {torch_err:.2e}"


# ------------------------------- 练习模式：只有前向 -------------------------------
# 不调用 backward：前向内核（_flash_fwd_kernel / _fwd_inner）写好、反向还是桩时也能单独判分。
# 输出对照 SDPA（显式右下对齐掩码），lse 对照自然对数的 logsumexp（一个 key 都看不到的行记为 +inf）。


@pytest.mark.parametrize(("h, h_kv, t, s, causal"), [
    (2, 2, 64, 64, False),   # 两个 Q 块 × 两个 K 块，无掩码循环 + 最后一块
    (4, 2, 48, 112, True),   # GQA，T < S：偏移 64 大于一个 Q 块
    (2, 1, 40, 16, True),    # T > S：前 24 行没有 key，输出 0、lse = +inf
])
def test_forward_alone_output_and_logsumexp(h, h_kv, t, s, causal):
    q, k, v, _ = _inputs(1, h, h_kv, t, s, 16)
    q.requires_grad_(True)  # 只为了让 autograd 保存 lse，不做反向
    out = flash_attention(q, k, v, causal=causal)
    lse = out.grad_fn.saved_tensors[4]
    with torch.no_grad():
        mask = (torch.arange(s, device=DEV)[None, :] <= torch.arange(t, device=DEV)[:, None] + (s - t) if causal
                else torch.ones(t, s, dtype=torch.bool, device=DEV))
        has_key = mask.any(-1)
        kk, vv = (x.repeat_interleave(h // h_kv, dim=1) for x in (k, v))
        scores = (q @ kk.transpose(-2, -1) / 4.0).masked_fill(~mask, float("-inf"))  # scale = 1/√16
        ref = torch.where(has_key[:, None], torch.softmax(scores, -1).nan_to_num(), 0.0) @ vv
        lse_ref = torch.where(has_key, scores.logsumexp(-1), float("inf"))
    assert lse.shape == (1, h, t) and lse.dtype == torch.float32
    torch.testing.assert_close(out.detach(), ref, atol=1e-5, rtol=0)
    torch.testing.assert_close(lse, lse_ref, atol=1e-5, rtol=0)
