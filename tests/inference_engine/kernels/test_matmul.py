"""Triton 分块矩阵乘：对照 torch.matmul / F.linear（解释器下在 CPU 上跑 fp32；GPU 上另测 bf16/fp16）。

容差：fp32 输出 rtol = 1e-5，atol = 1e-5·rms(参考)。绝对项的理由：点积 Σ_k a_k·b_k 的舍入误差正比于被加项和部分和的
量级（随机输入时 ≈ rms(C) = √K，K = 255 时约 16），而不是结果本身；相互抵消到接近 0 的元素上纯相对误差没有意义。
两种求和顺序（分块 vs BLAS）各自的误差约 u·K（u = 2⁻²⁴ ≈ 6e-8，随机游走下每步误差 ≈ u·√k，累计 ≈ u·K/√2），
K = 255 时 ~1e-5；atol = 1e-5·16 ≈ 1.6e-4 给了约 10 倍余量，同时仍比 TF32（误差 ~1e-3·rms）严两个数量级——
误用 TF32 或漏掉一个 K 块都会失败。
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from inference_engine.kernels import matmul as mm
from inference_engine.kernels.matmul import matmul, panels_per_wave, tile_order, triton_linear
from inference_engine.kernels.runtime import INTERPRET, KERNEL_DEVICE
from tests.conftest import requires_cuda

DEV = KERNEL_DEVICE


def _assert_matmul_close(out: torch.Tensor, ref: torch.Tensor, rtol: float = 1e-5) -> float:
    atol = rtol * ref.pow(2).mean().sqrt().item()
    torch.testing.assert_close(out, ref, rtol=rtol, atol=atol)
    return (out - ref).abs().max().item()


@pytest.mark.parametrize("m, n, k", [(129, 67, 255), (1, 1, 1), (64, 64, 64), (3, 100, 33)])
def test_matches_torch_matmul_fp32(m, n, k):
    """奇数形状（边缘块掩码在 M、N、K 三个方向都生效）、单元素、整块：fp32 与 torch.matmul 在 1e-5 内。"""
    a, b = torch.randn(m, k, device=DEV), torch.randn(k, n, device=DEV)
    out = matmul(a, b)
    assert out.shape == (m, n) and out.dtype == torch.float32 and out.is_contiguous()
    _assert_matmul_close(out, torch.matmul(a, b))


def _round_to_tf32(t: torch.Tensor) -> torch.Tensor:
    """把 fp32 的尾数截到 TF32 的 10 位（清掉低 13 位）：模拟 Tensor Core 的 tf32 输入舍入。"""
    return (t.view(torch.int32) & ~0x1FFF).view(torch.float32)


def test_tolerance_rejects_tf32_inputs():
    """容差足够严：若内核用 tf32（默认的 input_precision），同一个断言会失败——所以内核必须用 ieee。
    （解释器不模拟 tf32，GPU 上的 test_fp32_on_gpu_does_not_use_tf32 直接测内核本身。）"""
    a, b = torch.randn(129, 255, device=DEV), torch.randn(255, 67, device=DEV)
    tf32_like = torch.matmul(_round_to_tf32(a), _round_to_tf32(b))
    with pytest.raises(AssertionError):
        _assert_matmul_close(tf32_like, torch.matmul(a, b))


def _record_launch_strides(monkeypatch) -> list[tuple]:
    """记录每次启动内核时 A、B 的步长：证明非连续输入是按原步长直接送进内核的（没有先拷贝）。"""
    seen = []
    real = mm._launch

    def spy(a, b, bias=None):
        seen.append((a.stride(), b.stride(), a.data_ptr(), b.data_ptr()))
        return real(a, b, bias)

    monkeypatch.setattr(mm, "_launch", spy)
    return seen


@pytest.mark.parametrize("layout", ["b_transposed", "a_transposed", "both_transposed", "sliced", "expanded"])
def test_strided_inputs_read_in_place(layout, monkeypatch):
    """转置视图、步长 2 的切片、expand 出来的步长 0：结果正确，且内核拿到的就是原张量（同一地址、同一步长）。"""
    m, n, k = 37, 45, 70
    if layout == "b_transposed":
        a, b = torch.randn(m, k, device=DEV), torch.randn(n, k, device=DEV).t()
    elif layout == "a_transposed":
        a, b = torch.randn(k, m, device=DEV).t(), torch.randn(k, n, device=DEV)
    elif layout == "both_transposed":
        a, b = torch.randn(k, m, device=DEV).t(), torch.randn(n, k, device=DEV).t()
    elif layout == "sliced":
        a, b = torch.randn(2 * m, 3 * k, device=DEV)[::2, ::3], torch.randn(k, 2 * n, device=DEV)[:, 1::2]
    else:
        a, b = torch.randn(1, k, device=DEV).expand(m, k), torch.randn(k, 1, device=DEV).expand(k, n)
    assert not (a.is_contiguous() and b.is_contiguous())
    seen = _record_launch_strides(monkeypatch)
    out = matmul(a, b)
    assert seen == [(a.stride(), b.stride(), a.data_ptr(), b.data_ptr())]
    _assert_matmul_close(out, torch.matmul(a, b))


def test_masks_never_let_memory_outside_the_view_in():
    """A、B 是更大的 NaN 缓冲里的视图：边缘块若多读了一列/一行（哪怕另一侧被掩成 0，0·NaN = NaN），结果就会出现 NaN。"""
    m, n, k = 37, 45, 70
    a_buf = torch.full((m + 3, k + 5), float("nan"), device=DEV)
    b_buf = torch.full((k + 5, n + 3), float("nan"), device=DEV)
    a_buf[:m, :k] = torch.randn(m, k, device=DEV)
    b_buf[:k, :n] = torch.randn(k, n, device=DEV)
    a, b = a_buf[:m, :k], b_buf[:k, :n]
    out = matmul(a, b)
    assert torch.isfinite(out).all()
    _assert_matmul_close(out, torch.matmul(a, b))


def test_batched_input_and_gradients_match_torch():
    """3 维 a (B, T, K) 摊平成行；dA = dC·Bᵀ、dB = Aᵀ·dC 用同一个内核，对照 autograd 的 torch.matmul（1e-4）。"""
    a = torch.randn(2, 9, 40, device=DEV, requires_grad=True)
    b = torch.randn(40, 23, device=DEV, requires_grad=True)
    g = torch.randn(2, 9, 23, device=DEV)
    out = matmul(a, b)
    da, db = torch.autograd.grad(out, (a, b), g)
    ref = torch.matmul(a, b)
    ref_da, ref_db = torch.autograd.grad(ref, (a, b), g)
    assert out.shape == (2, 9, 23)
    _assert_matmul_close(out.detach(), ref.detach())
    torch.testing.assert_close(da, ref_da, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(db, ref_db, rtol=1e-4, atol=1e-4)


def test_backward_with_expanded_upstream_gradient():
    """out.sum().backward() 传来的 dC 是步长 0 的 expand：内核按步长读，不必 .contiguous()，梯度仍正确。"""
    a = torch.randn(20, 30, device=DEV, requires_grad=True)
    b = torch.randn(30, 10, device=DEV, requires_grad=True)
    matmul(a, b).sum().backward()
    ref_a, ref_b = a.detach().clone().requires_grad_(), b.detach().clone().requires_grad_()
    torch.matmul(ref_a, ref_b).sum().backward()
    torch.testing.assert_close(a.grad, ref_a.grad, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(b.grad, ref_b.grad, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("with_bias", [True, False])
def test_triton_linear_matches_F_linear(with_bias):
    """线性层：输出 1e-5，dx、dW、db 1e-4；dW 的布局与 W 相同（连续），不因 Wᵀ 视图而多一次拷贝。"""
    x = torch.randn(3, 7, 50, device=DEV, requires_grad=True)
    w = torch.randn(29, 50, device=DEV, requires_grad=True)
    bias = torch.randn(29, device=DEV, requires_grad=True) if with_bias else None
    g = torch.randn(3, 7, 29, device=DEV)
    params = (x, w) + ((bias,) if with_bias else ())
    out = triton_linear(x, w, bias)
    grads = torch.autograd.grad(out, params, g)
    ref = F.linear(x, w, bias)
    ref_grads = torch.autograd.grad(ref, params, g)
    _assert_matmul_close(out.detach(), ref.detach())
    for got, want in zip(grads, ref_grads):
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)
    assert grads[1].is_contiguous() and grads[1].shape == w.shape


def test_empty_dimensions():
    """M = 0、N = 0 不启动内核；K = 0 时和为空 → 全零（有偏置时等于偏置），与 torch 相同。"""
    assert matmul(torch.randn(0, 5, device=DEV), torch.randn(5, 4, device=DEV)).shape == (0, 4)
    assert matmul(torch.randn(3, 5, device=DEV), torch.randn(5, 0, device=DEV)).shape == (3, 0)
    out = matmul(torch.randn(3, 0, device=DEV), torch.randn(0, 4, device=DEV))
    torch.testing.assert_close(out, torch.zeros(3, 4, device=DEV), rtol=0, atol=0)
    bias = torch.randn(4, device=DEV)
    out = triton_linear(torch.randn(3, 0, device=DEV), torch.randn(4, 0, device=DEV), bias)
    torch.testing.assert_close(out, bias.expand(3, 4), rtol=0, atol=0)


def test_tile_order_is_grouped_and_a_bijection():
    """内核用的 pid → (pid_m, pid_n)：每个块恰好一个 program；组内列优先；最后一组不满时也对；GROUP_M = 1 即行优先。"""
    order = tile_order(5, 3, 2).tolist()
    # 行块 {0,1} 一组、{2,3} 一组、{4} 单独成组；组内先竖着走（pid_m 变），再右移一列
    assert order == [[0, 0], [1, 0], [0, 1], [1, 1], [0, 2], [1, 2],
                     [2, 0], [3, 0], [2, 1], [3, 1], [2, 2], [3, 2],
                     [4, 0], [4, 1], [4, 2]]
    for n_m, n_n, g in [(7, 4, 3), (4, 9, 8), (16, 16, 4), (1, 5, 2)]:
        pairs = {tuple(p) for p in tile_order(n_m, n_n, g).tolist()}
        assert pairs == {(i, j) for i in range(n_m) for j in range(n_n)}
    assert tile_order(3, 4, 1).tolist() == [[i, j] for i in range(3) for j in range(4)]


def test_panels_per_wave_follow_the_derivation():
    """文档第 3 节的公式：行优先 ⌈W/n_n⌉ + min(W, n_n)，分组 G + ⌈W/G⌉（W = 132，4096³ 与 16384³ 的 128×128 块）。"""
    assert panels_per_wave(32, 32, 1, 132) == (5, 32)
    assert panels_per_wave(32, 32, 8, 132) == (8, 17)
    assert panels_per_wave(128, 128, 1, 132) == (2, 128)
    assert panels_per_wave(128, 128, 8, 132) == (8, 17)


def test_autotune_pruned_to_one_config_under_interpreter():
    configs = mm._matmul_kernel.configs
    if INTERPRET:
        assert len(configs) == 1
    else:
        assert len(configs) > 1
    for cfg in configs:  # 块大小都是 2 的幂（tl.arange 的要求）
        for key in ("BLOCK_M", "BLOCK_N", "BLOCK_K"):
            assert cfg.kwargs[key] & (cfg.kwargs[key] - 1) == 0


_WRONG_DEVICE = "meta" if DEV.type == "cpu" else "cpu"


@pytest.mark.parametrize("make, match", [
    (lambda: (torch.randn(4, 6, device=DEV), torch.randn(5, 3, device=DEV)), "内维不匹配"),
    (lambda: (torch.randn(4, 6, device=DEV, dtype=torch.float64), torch.randn(6, 3, device=DEV,
                                                                              dtype=torch.float64)), "dtype"),
    (lambda: (torch.randint(0, 3, (4, 6), device=DEV), torch.randint(0, 3, (6, 3), device=DEV)), "dtype"),
    (lambda: (torch.randn(4, 6, device=DEV), torch.randn(6, 3, device=DEV, dtype=torch.float16)), "同一 dtype"),
    (lambda: (torch.randn(4, 6, device=_WRONG_DEVICE), torch.randn(6, 3, device=_WRONG_DEVICE)), "请把它移到"),
    (lambda: (torch.randn(6, device=DEV), torch.randn(6, 3, device=DEV)), "unsqueeze"),
    (lambda: (torch.randn(4, 6, device=DEV), torch.randn(2, 6, 3, device=DEV)), "2 维"),
    (lambda: ([[1.0]], torch.randn(1, 1, device=DEV)), "torch.Tensor"),
])
def test_bad_input_raises_clear_error(make, match):
    a, b = make()
    with pytest.raises(ValueError, match=match) as info:
        matmul(a, b)
    if match == "dtype":
        assert "kernels='torch'" in str(info.value)  # 不支持的输入要指出退路


def test_triton_linear_bad_input():
    x = torch.randn(2, 6, device=DEV)
    with pytest.raises(ValueError, match="内维不匹配"):
        triton_linear(x, torch.randn(3, 5, device=DEV))
    with pytest.raises(ValueError, match="bias"):
        triton_linear(x, torch.randn(3, 6, device=DEV), torch.randn(4, device=DEV))
    with pytest.raises(ValueError, match="weight 应是二维"):
        triton_linear(x, torch.randn(6, device=DEV))


@requires_cuda
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_low_precision_error_within_twice_torch(dtype):
    """1024³ 低精度：内核对高精度参考的误差 ≤ 2 × cuBLAS 在同一低精度下的误差（+ 一点绝对余量）；前向与梯度都测。"""
    a = torch.randn(1024, 1024, device="cuda").to(dtype)
    b = torch.randn(1024, 1024, device="cuda").to(dtype)
    ref = a.double() @ b.double()  # 参考用低精度输入本身在 fp64 里算：只比较累加与输出舍入带来的误差
    ours = matmul(a, b)
    assert ours.dtype == dtype
    err_ours = (ours.double() - ref).abs().max().item()
    err_torch = (torch.matmul(a, b).double() - ref).abs().max().item()
    assert err_ours <= 2 * err_torch + 1e-3, (err_ours, err_torch)

    x = a.clone().requires_grad_()
    w = b.t().contiguous().requires_grad_()  # (out, in)
    g = torch.randn(1024, 1024, device="cuda").to(dtype)
    dx, dw = torch.autograd.grad(triton_linear(x, w), (x, w), g)
    tdx, tdw = torch.autograd.grad(F.linear(x, w), (x, w), g)
    ref_dx, ref_dw = g.double() @ w.double(), g.double().t() @ x.double()
    for got, theirs, want in ((dx, tdx, ref_dx), (dw, tdw, ref_dw)):
        err_got = (got.double() - want).abs().max().item()
        err_theirs = (theirs.double() - want).abs().max().item()
        assert err_got <= 2 * err_theirs + 1e-3, (err_got, err_theirs)


@requires_cuda
def test_fp32_on_gpu_does_not_use_tf32():
    """GPU 上 fp32 的 tl.dot 走 ieee：K = 1024 时最大误差 / rms(C) 约 1e-5 以下（fp32 累加 ≈ u·√K），
    TF32 输入舍入（2⁻¹¹）会给出 ~1e-3，相差两个数量级，5e-5 的门槛把两者分开。"""
    a = torch.randn(512, 1024, device="cuda")
    b = torch.randn(1024, 384, device="cuda")
    ref = a.double() @ b.double()
    rel = ((matmul(a, b).double() - ref).abs().max() / ref.pow(2).mean().sqrt()).item()
    assert rel < 5e-5, rel
