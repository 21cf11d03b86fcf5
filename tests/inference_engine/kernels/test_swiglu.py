"""融合 SwiGLU 内核：前向与两个梯度对照 F.silu(gate) * up（解释器下在 CPU 上跑；GPU 上另测 bf16/fp16）。"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from inference_engine.kernels.runtime import KERNEL_DEVICE
from inference_engine.kernels.swiglu import BLOCK, swiglu, swiglu_backward, swiglu_forward
from tests.conftest import requires_cuda


def _pair(shape, dtype=torch.float32, scale=3.0):
    gate = (torch.randn(shape, dtype=dtype, device=KERNEL_DEVICE) * scale).requires_grad_(True)
    up = torch.randn(shape, dtype=dtype, device=KERNEL_DEVICE).requires_grad_(True)
    return gate, up


def _fwd_bwd(fn, gate, up, dout):
    g, u = gate.detach().clone().requires_grad_(True), up.detach().clone().requires_grad_(True)
    out = fn(g, u)
    out.backward(dout)
    return out.detach(), g.grad, u.grad


@pytest.mark.parametrize("shape", [(7,), (BLOCK + 1,), (3, 333), (2, 5, 77), (2, 3, 4, 129)])
def test_matches_silu_times_up_forward_and_grads(shape):
    """任意维数、非 2 的幂的大小（尾块掩码）、跨多个 program：前向 1e-5，梯度 1e-4。"""
    gate, up = _pair(shape)
    dout = torch.randn(shape, device=KERNEL_DEVICE)
    out, dg, du = _fwd_bwd(swiglu, gate, up, dout)
    ref_out, ref_dg, ref_du = _fwd_bwd(lambda g, u: F.silu(g) * u, gate, up, dout)
    assert out.shape == ref_out.shape and out.dtype == torch.float32
    torch.testing.assert_close(out, ref_out, atol=1e-5, rtol=0)
    torch.testing.assert_close(dg, ref_dg, atol=1e-4, rtol=0)
    torch.testing.assert_close(du, ref_du, atol=1e-4, rtol=0)


def test_backward_formula_at_extreme_gates():
    """σ 饱和处（|x| 很大）与 x = 0：silu'(x) = σ(1 + x(1−σ)) 的数值与 autograd 相同，没有 NaN/inf。"""
    gate = torch.tensor([-80.0, -20.0, -1.278, 0.0, 1e-3, 20.0, 80.0], device=KERNEL_DEVICE)
    up = torch.linspace(-2, 2, gate.numel(), device=KERNEL_DEVICE)
    dout = torch.ones_like(gate)
    _, dg, du = _fwd_bwd(swiglu, gate, up, dout)
    _, ref_dg, ref_du = _fwd_bwd(lambda g, u: F.silu(g) * u, gate, up, dout)
    assert torch.isfinite(dg).all() and torch.isfinite(du).all()
    torch.testing.assert_close(dg, ref_dg, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(du, ref_du, atol=1e-6, rtol=1e-5)


def test_launchers_direct_and_non_contiguous_upstream_grad():
    """启动器单独可用；上游梯度非连续（来自转置）时 autograd 包装先拷成连续再进内核，结果不变。"""
    gate, up = _pair((6, 10))
    torch.testing.assert_close(swiglu_forward(gate.detach(), up.detach()),
                               F.silu(gate.detach()) * up.detach(), atol=1e-5, rtol=0)
    dout = torch.randn(6, 10, device=KERNEL_DEVICE)
    dg, du = swiglu_backward(dout, gate.detach(), up.detach())
    dout_t = dout.t().contiguous().t()           # 值相同、步长转置：非连续
    assert not dout_t.is_contiguous()
    swiglu(gate, up).backward(dout_t)
    torch.testing.assert_close(gate.grad, dg, atol=0, rtol=0)
    torch.testing.assert_close(up.grad, du, atol=0, rtol=0)
    ref_g, ref_u = torch.autograd.grad(F.silu(gate) * up, (gate, up), dout)
    torch.testing.assert_close(dg, ref_g, atol=1e-4, rtol=0)
    torch.testing.assert_close(du, ref_u, atol=1e-4, rtol=0)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_low_precision_inputs_compute_in_fp32(dtype):
    """bf16/fp16 输入：内核升到 fp32 计算、按输入 dtype 写回——与"fp32 里算再转回"只差一次舍入（≤ 1 ulp）。"""
    gate, up = (t.detach().to(dtype) for t in _pair((3, 1000)))
    dout = torch.randn(3, 1000, device=KERNEL_DEVICE).to(dtype)
    out = swiglu_forward(gate, up)
    dg, du = swiglu_backward(dout, gate, up)
    g, u, d = gate.float(), up.float(), dout.float()
    s = torch.sigmoid(g)
    ulp = 2.0**-7 if dtype == torch.bfloat16 else 2.0**-10
    for ours, exact in ((out, g * s * u), (dg, d * u * s * (1 + g * (1 - s))), (du, d * g * s)):
        assert ours.dtype == dtype
        torch.testing.assert_close(ours.float(), exact, atol=1e-6, rtol=ulp)


def test_empty_input():
    gate, up = _pair((0, 5))
    out = swiglu(gate, up)
    out.sum().backward()
    assert out.shape == (0, 5) and gate.grad.shape == (0, 5)


@pytest.mark.parametrize("bad, match", [
    (lambda: (torch.randn(4, 6), torch.randn(4, 5)), "形状"),
    (lambda: (torch.randn(4, 6), torch.randn(4, 6, dtype=torch.float16)), "dtype"),
    (lambda: (torch.randn(6, 4).t(), torch.randn(4, 6)), "连续"),
    (lambda: (torch.randint(0, 3, (4,)), torch.randint(0, 3, (4,))), "dtype"),
    (lambda: ([1.0, 2.0], torch.randn(2)), "torch.Tensor"),
])
def test_bad_input_raises_clear_error(bad, match):
    gate, up = bad()
    with pytest.raises(ValueError, match=match) as info:
        swiglu(gate, up)
    if match == "dtype" and gate.dtype != torch.float32:
        assert "kernels='torch'" in str(info.value)  # 不支持的输入要指出退路


@requires_cuda
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_low_precision_error_within_twice_torch(dtype):
    """低精度：内核对 fp32 参考的误差 ≤ 2 × PyTorch 自己在同一低精度下的误差（+ 一点绝对余量）。"""
    gate32, up32 = _pair((4, 129, 1000))
    dout32 = torch.randn(4, 129, 1000, device=KERNEL_DEVICE)
    ref = _fwd_bwd(lambda g, u: F.silu(g) * u, gate32, up32, dout32)
    low = [t.detach().to(dtype) for t in (gate32, up32, dout32)]
    ours = _fwd_bwd(swiglu, low[0], low[1], low[2])
    torch_low = _fwd_bwd(lambda g, u: F.silu(g) * u, low[0], low[1], low[2])
    for o, t, r in zip(ours, torch_low, ref):
        assert o.dtype == dtype
        err_ours = (o.float() - r).abs().max().item()
        err_torch = (t.float() - r).abs().max().item()
        assert err_ours <= 2 * err_torch + 1e-3, (err_ours, err_torch)
