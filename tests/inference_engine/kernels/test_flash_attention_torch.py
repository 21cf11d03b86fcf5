"""纯 PyTorch 的 FlashAttention-2（inference_engine/kernels/flash_attention_torch.py）对照 SDPA 的 math 后端。

容差（issue 17）：fp32 输出 1e-5、dq/dk/dv 1e-4；float64 下 gradcheck；前向只保存 q、k、v、O、logsumexp。
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

from inference_engine.kernels import flash_attention_torch as fat
from inference_engine.kernels.flash_attention_torch import flash_attention_torch
from tests.conftest import requires_cuda

OUT_TOL, GRAD_TOL = 1e-5, 1e-4


def _qkv(b, h, h_kv, t, s, d, dtype=torch.float32, device="cpu"):
    q = torch.randn(b, h, t, d, dtype=dtype, device=device, requires_grad=True)
    k = torch.randn(b, h_kv, s, d, dtype=dtype, device=device, requires_grad=True)
    v = torch.randn(b, h_kv, s, d, dtype=dtype, device=device, requires_grad=True)
    return q, k, v


def _sdpa_math(q, k, v, **kw):
    with sdpa_kernel(SDPBackend.MATH):
        return F.scaled_dot_product_attention(q, k, v, enable_gqa=q.size(1) != k.size(1), **kw)


def _masked_reference(q, k, v, mask, scale=None):
    """softmax(q kᵀ·scale, 被禁止处 −inf) v，显式 (T, S) bool 掩码；一个 key 都看不到的行输出 0（与 flash-attn 的约定相同）。"""
    n_rep = q.size(1) // k.size(1)
    k, v = k.repeat_interleave(n_rep, dim=1), v.repeat_interleave(n_rep, dim=1)
    scale = 1 / math.sqrt(q.size(-1)) if scale is None else scale
    scores = (q @ k.transpose(-2, -1) * scale).masked_fill(~mask, float("-inf"))
    has_key = mask.any(dim=-1, keepdim=True)
    probs = torch.where(has_key, scores, 0.0).softmax(dim=-1) * has_key
    return probs @ v


def _bottom_right_mask(t, s):
    return torch.arange(s)[None, :] <= torch.arange(t)[:, None] + (s - t)


def _grads(out, inputs, do):
    return torch.autograd.grad(out, inputs, do, retain_graph=True)


def _assert_matches(ours, ref, inputs, *, out_tol=OUT_TOL, grad_tol=GRAD_TOL):
    do = torch.randn_like(ref)
    torch.testing.assert_close(ours, ref, atol=out_tol, rtol=0)
    for name, a, r in zip("qkv", _grads(ours, inputs, do), _grads(ref, inputs, do)):
        torch.testing.assert_close(a, r, atol=grad_tol, rtol=0, msg=lambda m, name=name: f"d{name}: {m}")


@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("scale", [None, 0.3])
def test_matches_sdpa_math(causal, scale):
    q, k, v = _qkv(2, 4, 4, 128, 128, 64)
    ours = flash_attention_torch(q, k, v, causal=causal, scale=scale)
    _assert_matches(ours, _sdpa_math(q, k, v, is_causal=causal, scale=scale), (q, k, v))


@pytest.mark.parametrize("causal", [False, True])
def test_long_sequence_matches_sdpa_math(causal):
    q, k, v = _qkv(1, 2, 2, 512, 512, 64)
    ours = flash_attention_torch(q, k, v, causal=causal)  # 8 × 8 块
    _assert_matches(ours, _sdpa_math(q, k, v, is_causal=causal), (q, k, v))


@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("h_kv", [2, 1])
def test_gqa_matches_sdpa_enable_gqa(causal, h_kv):
    q, k, v = _qkv(2, 4, h_kv, 128, 128, 64)
    ours = flash_attention_torch(q, k, v, causal=causal)
    _assert_matches(ours, _sdpa_math(q, k, v, is_causal=causal), (q, k, v))


@pytest.mark.parametrize("t,s", [(37, 100), (1, 100), (100, 37)])
def test_cross_lengths_causal_is_bottom_right(t, s):
    q, k, v = _qkv(1, 4, 2, t, s, 32)
    ours = flash_attention_torch(q, k, v, causal=True, block_q=16, block_k=16)
    _assert_matches(ours, _masked_reference(q, k, v, _bottom_right_mask(t, s)), (q, k, v))
    if t > s:  # 前 T − S 个 query 一个 key 都看不到：输出与梯度都是 0，不是 NaN
        assert torch.all(ours[:, :, : t - s] == 0)
        dq, dk, dv = _grads(ours, (q, k, v), torch.randn_like(ours))
        assert torch.all(dq[:, :, : t - s] == 0) and torch.isfinite(dk).all() and torch.isfinite(dv).all()


def test_cross_lengths_non_causal_matches_sdpa():
    q, k, v = _qkv(2, 4, 2, 37, 100, 32)
    ours = flash_attention_torch(q, k, v, block_q=16, block_k=32)
    _assert_matches(ours, _sdpa_math(q, k, v), (q, k, v))


@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("block_q,block_k", [(64, 64), (48, 32), (7, 13), (128, 256)])
def test_block_sizes_that_do_not_divide_the_length(causal, block_q, block_k):
    q, k, v = _qkv(1, 2, 2, 100, 100, 32)
    ours = flash_attention_torch(q, k, v, causal=causal, block_q=block_q, block_k=block_k)
    _assert_matches(ours, _sdpa_math(q, k, v, is_causal=causal), (q, k, v))


@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("t,s", [(6, 6), (5, 9), (9, 5)])
def test_gradcheck_float64(causal, t, s):
    q, k, v = _qkv(1, 2, 1, t, s, 4, dtype=torch.float64)
    fn = lambda q, k, v: flash_attention_torch(q, k, v, causal=causal, block_q=4, block_k=3)  # noqa: E731
    assert torch.autograd.gradcheck(fn, (q, k, v), eps=1e-6, atol=1e-8)


def test_saves_exactly_output_and_logsumexp():
    q, k, v = _qkv(2, 4, 2, 70, 90, 16)
    packed = []
    with torch.autograd.graph.saved_tensors_hooks(lambda x: packed.append(x) or x, lambda x: x):
        out = flash_attention_torch(q, k, v, causal=True, block_q=32, block_k=32)
    # 经由 autograd 保存的全部张量（任何路径都要经过 pack 钩子）恰好 5 个：q、k、v、O、L——没有任何 (T, S) 的东西
    assert len(packed) == 5
    saved = out.grad_fn.saved_tensors
    assert len(saved) == 5
    assert all(a.data_ptr() == b.data_ptr() and a.shape == b.shape for a, b in zip(saved[:3], (q, k, v)))
    assert torch.equal(saved[3], out)
    lse = saved[4]
    assert lse.shape == (2, 4, 70) and lse.dtype == torch.float32
    n_rep = 2
    scores = q @ k.repeat_interleave(n_rep, dim=1).transpose(-2, -1) / math.sqrt(16)
    expected = scores.masked_fill(~_bottom_right_mask(70, 90), float("-inf")).logsumexp(dim=-1)
    torch.testing.assert_close(lse, expected, atol=1e-5, rtol=0)
    # ctx 上除了 saved_tensors 之外只有标量（causal、scale、块大小），没有偷偷挂着的张量
    extra = [name for name, val in vars(out.grad_fn).items() if isinstance(val, torch.Tensor)]
    assert extra == []


def test_low_precision_keeps_input_dtype_and_fp32_logsumexp():
    q, k, v = (x.detach().to(torch.bfloat16).requires_grad_() for x in _qkv(1, 2, 2, 40, 40, 16))
    out = flash_attention_torch(q, k, v, causal=True, block_q=16, block_k=16)
    assert out.dtype == torch.bfloat16 and out.grad_fn.saved_tensors[4].dtype == torch.float32
    dq, dk, dv = _grads(out, (q, k, v), torch.ones_like(out))
    assert dq.dtype == dk.dtype == dv.dtype == torch.bfloat16
    ref = _sdpa_math(q.float(), k.float(), v.float(), is_causal=True)
    torch.testing.assert_close(out.float(), ref, atol=2e-2, rtol=0)


@pytest.mark.parametrize("causal,n_tiles", [(False, 16), (True, 10)])
def test_causal_skips_key_blocks_above_the_diagonal(monkeypatch, causal, n_tiles):
    # 4 × 4 块；causal 时只算对角线及其下方的 4·5/2 = 10 块。前向每块 2 次 einsum（q kᵀ、P V），
    # 反向每块 5 次（重算 q kᵀ、dV、dP、dQ、dK）——数 einsum 的调用次数就知道算了几块
    calls = []
    real = torch.einsum
    monkeypatch.setattr(torch, "einsum", lambda *a: calls.append(a[0]) or real(*a))
    q, k, v = _qkv(1, 1, 1, 256, 256, 8)
    out = flash_attention_torch(q, k, v, causal=causal, block_q=64, block_k=64)
    assert len(calls) == 2 * n_tiles
    out.sum().backward()
    assert len(calls) == 7 * n_tiles


def test_block_ranges_bottom_right():
    # T = 4、S = 10（offset 6）：query 块 [0, 2) 最多看到 key 7，只需扫前 8 个 key
    assert fat.key_block_range(0, 2, 10, causal=True, offset=6) == 8
    assert fat.key_block_range(0, 2, 10, causal=False, offset=6) == 10
    # T = 10、S = 4（offset −6）：前 6 个 query 看不到任何 key
    assert fat.key_block_range(0, 4, 4, causal=True, offset=-6) == 0
    # 反向：key 块从 8 开始时，query i 需 i ≥ 8 − 2 = 6，所在块（块大小 4）从 4 开始
    assert fat.query_block_start(8, 4, causal=True, offset=2) == 4
    assert fat.query_block_start(8, 4, causal=False, offset=2) == 0


def test_non_contiguous_inputs():
    # (B, T, H, D) 布局转置成 (B, H, T, D)：不连续，但纯 PyTorch 实现按视图切块，结果与连续输入相同
    q, k, v = (torch.randn(2, 50, h, 16).transpose(1, 2).requires_grad_() for h in (4, 2, 2))
    assert not q.is_contiguous()
    ours = flash_attention_torch(q, k, v, causal=True, block_q=16, block_k=16)
    _assert_matches(ours, _sdpa_math(q, k, v, is_causal=True), (q, k, v))


@pytest.mark.parametrize("case,match", [
    ("q_3d", "4 维"),
    ("batch", "batch"),
    ("heads", "整数倍"),
    ("head_dim", "head_dim"),
    ("kv_shape", "k 与 v"),
    ("dtype_mismatch", "dtype 必须相同"),
    ("int_dtype", "不受支持"),
    ("block", "block_q"),
    ("scale", "scale"),
    ("causal", "causal"),
])
def test_bad_input_raises_value_error(case, match):
    q, k, v = torch.randn(1, 4, 8, 16), torch.randn(1, 2, 8, 16), torch.randn(1, 2, 8, 16)
    kwargs = {}
    if case == "q_3d":
        q = q[0]
    elif case == "batch":
        k, v = k.expand(2, -1, -1, -1), v.expand(2, -1, -1, -1)
    elif case == "heads":
        k, v = torch.randn(1, 3, 8, 16), torch.randn(1, 3, 8, 16)
    elif case == "head_dim":
        k, v = torch.randn(1, 2, 8, 8), torch.randn(1, 2, 8, 8)
    elif case == "kv_shape":
        v = torch.randn(1, 2, 9, 16)
    elif case == "dtype_mismatch":
        k = k.double()
    elif case == "int_dtype":
        q, k, v = q.long(), k.long(), v.long()
    elif case == "block":
        kwargs["block_q"] = 0
    elif case == "scale":
        kwargs["scale"] = float("nan")
    elif case == "causal":
        kwargs["causal"] = "yes"
    with pytest.raises(ValueError, match=match):
        flash_attention_torch(q, k, v, **kwargs)


@requires_cuda
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("causal", [False, True])
def test_low_precision_error_within_twice_pytorch_on_gpu(dtype, causal):
    # 规则：我们在低精度下对 fp32 参考的误差 ≤ 2 × PyTorch SDPA 在同一低精度下的误差（+ 一点绝对余量）
    q, k, v = _qkv(2, 4, 2, 256, 256, 64, device="cuda")
    do = torch.randn(2, 4, 256, 64, device="cuda")
    ref = F.scaled_dot_product_attention(q, k, v, is_causal=causal, enable_gqa=True)
    ref_grads = _grads(ref, (q, k, v), do)
    low = [x.detach().to(dtype).requires_grad_() for x in (q, k, v)]
    ours = flash_attention_torch(*low, causal=causal)
    torch_low = F.scaled_dot_product_attention(*low, is_causal=causal, enable_gqa=True)
    ours_grads = _grads(ours, low, do.to(dtype))
    torch_grads = _grads(torch_low, low, do.to(dtype))
    pairs = [(ours, torch_low, ref)] + list(zip(ours_grads, torch_grads, ref_grads))
    for a, b, r in pairs:
        err_ours = (a.float() - r).abs().max().item()
        err_torch = (b.float() - r).abs().max().item()
        assert err_ours <= 2 * err_torch + 1e-3, (err_ours, err_torch)


# ---------------------------------------------------------------------------------------------------
# 练习模式：只做前向（不调用 backward）也能单独判 _flash_forward——输出与 logsumexp 对照显式掩码的参考
# ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("h_kv,t,s,causal,block_q,block_k", [
    (4, 64, 64, False, 16, 32),   # MHA，块整除
    (2, 37, 100, True, 16, 13),   # GQA，T < S 右下对齐，块不整除
    (1, 30, 12, True, 8, 5),      # MQA，T > S：前 18 个 query 一个 key 都看不到
])
def test_forward_alone_output_and_logsumexp_match_reference(h_kv, t, s, causal, block_q, block_k):
    q, k, v = _qkv(2, 4, h_kv, t, s, 16)
    out = flash_attention_torch(q, k, v, causal=causal, block_q=block_q, block_k=block_k)
    mask = _bottom_right_mask(t, s) if causal else torch.ones(t, s, dtype=torch.bool)
    with torch.no_grad():
        torch.testing.assert_close(out, _masked_reference(q, k, v, mask), atol=OUT_TOL, rtol=0)
        scores = q @ k.repeat_interleave(4 // h_kv, dim=1).transpose(-2, -1) / math.sqrt(16)
        lse_ref = scores.masked_fill(~mask, float("-inf")).logsumexp(dim=-1)  # 空行是 −inf
    lse = out.grad_fn.saved_tensors[4]
    assert lse.shape == (2, 4, t) and lse.dtype == torch.float32
    torch.testing.assert_close(lse, lse_ref, atol=1e-5, rtol=0)
