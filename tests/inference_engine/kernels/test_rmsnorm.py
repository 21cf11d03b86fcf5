"""Triton RMSNorm：前向与反向（dx、dw）对照 torch.nn.RMSNorm 与模型自己的 RMSNorm 模块（fp32：前向 1e-5，梯度 1e-4）。"""

from __future__ import annotations

import importlib

import pytest
import torch

from inference_engine.kernels.rmsnorm import rms_norm
from inference_engine.kernels.runtime import KERNEL_DEVICE

llama = importlib.import_module("model_lab.02_architectures.llama")
EPS = 1e-6


def _grads(fn, x, w, g):
    x = x.detach().clone().requires_grad_()
    y = fn(x)
    dx, dw = torch.autograd.grad(y, (x, w), g)
    return y.detach(), dx, dw


def _check_against(module, x, g):
    """同一个 x、同一个上游梯度 g：我们的 rms_norm 与 module（共享同一个 weight）前向和梯度都一致。"""
    w = module.weight
    y, dx, dw = _grads(lambda t: rms_norm(t, w, EPS), x, w, g)
    y_ref, dx_ref, dw_ref = _grads(module, x, w, g)
    assert y.dtype == y_ref.dtype and y.shape == y_ref.shape
    torch.testing.assert_close(y, y_ref, rtol=0, atol=1e-5)
    torch.testing.assert_close(dx, dx_ref, rtol=0, atol=1e-4)
    torch.testing.assert_close(dw, dw_ref, rtol=0, atol=1e-4)


def _random_weight(module):
    with torch.no_grad():
        module.weight.copy_(1 + 0.3 * torch.randn_like(module.weight))
    return module


@pytest.mark.parametrize("shape", [(5, 64), (3, 96), (2, 7, 100), (300, 33), (2, 3, 4, 96)])
def test_matches_torch_nn_rmsnorm(shape):
    module = _random_weight(torch.nn.RMSNorm(shape[-1], eps=EPS).to(KERNEL_DEVICE))
    x = torch.randn(shape, device=KERNEL_DEVICE) * 2
    _check_against(module, x, torch.randn(shape, device=KERNEL_DEVICE))


@pytest.mark.parametrize("shape", [(4, 7, 96), (257, 100)])
def test_matches_model_rmsnorm_module(shape):
    module = _random_weight(llama.RMSNorm(shape[-1], eps=1e-5).to(KERNEL_DEVICE))
    x = torch.randn(shape, device=KERNEL_DEVICE)
    g = torch.randn(shape, device=KERNEL_DEVICE)
    w = module.weight
    y, dx, dw = _grads(lambda t: rms_norm(t, w, module.eps), x, w, g)
    y_ref, dx_ref, dw_ref = _grads(module, x, w, g)
    torch.testing.assert_close(y, y_ref, rtol=0, atol=1e-5)
    torch.testing.assert_close(dx, dx_ref, rtol=0, atol=1e-4)
    torch.testing.assert_close(dw, dw_ref, rtol=0, atol=1e-4)


def test_bf16_input_with_fp32_weight_gives_fp32_like_the_module():
    module = _random_weight(llama.RMSNorm(64, eps=EPS).to(KERNEL_DEVICE))
    x = torch.randn(6, 64, device=KERNEL_DEVICE).bfloat16()
    y, y_ref = rms_norm(x, module.weight, EPS), module(x)
    assert y.dtype == y_ref.dtype == torch.float32
    # 解释器把 fp32→bf16 截断（GPU 上就近舍入），x̂ 可差 1 个 bf16 ulp（2⁻⁷ 相对）
    torch.testing.assert_close(y, y_ref.detach(), rtol=2**-7, atol=1e-6)


def test_saves_only_x_and_per_row_rstd():
    x = torch.randn(6, 5, 32, device=KERNEL_DEVICE, requires_grad=True)
    w = torch.ones(32, device=KERNEL_DEVICE, requires_grad=True)
    saved = rms_norm(x, w, EPS).grad_fn.saved_tensors
    assert len(saved) == 3
    assert saved[0] is x or saved[0].data_ptr() == x.data_ptr()  # x 本身，不是拷贝
    assert saved[1].data_ptr() == w.data_ptr()  # 参数
    assert saved[2].shape == (30,) and saved[2].dtype == torch.float32  # 每行一个 r
    torch.testing.assert_close(saved[2], torch.rsqrt(x.detach().pow(2).mean(-1).flatten() + EPS), rtol=1e-6, atol=0)


def test_dw_reduction_across_programs_is_deterministic_and_handles_expanded_grad():
    # 1000 行、D = 16：ROWS = 256 行一块，共 4 块，分给最多 4 个反向 program；y.sum() 的上游梯度是步长 0 的视图
    module = _random_weight(torch.nn.RMSNorm(16, eps=EPS).to(KERNEL_DEVICE))
    x = torch.randn(1000, 16, device=KERNEL_DEVICE)
    dws = [torch.autograd.grad(rms_norm(x, module.weight, EPS).sum(), module.weight)[0] for _ in range(2)]
    assert torch.equal(dws[0], dws[1])
    (dw_ref,) = torch.autograd.grad(module(x).sum(), module.weight)
    torch.testing.assert_close(dws[0], dw_ref, rtol=1e-5, atol=1e-4)


def test_grad_only_for_x_or_only_for_weight():
    w = torch.randn(40, device=KERNEL_DEVICE, requires_grad=True)
    x = torch.randn(3, 40, device=KERNEL_DEVICE, requires_grad=True)
    (dx,) = torch.autograd.grad(rms_norm(x, w.detach(), EPS).sum(), x)
    (dx_ref,) = torch.autograd.grad(torch.nn.functional.rms_norm(x, (40,), w.detach(), EPS).sum(), x)
    torch.testing.assert_close(dx, dx_ref, rtol=0, atol=1e-4)
    (dw,) = torch.autograd.grad(rms_norm(x.detach(), w, EPS).sum(), w)
    (dw_ref,) = torch.autograd.grad(torch.nn.functional.rms_norm(x.detach(), (40,), w, EPS).sum(), w)
    torch.testing.assert_close(dw, dw_ref, rtol=0, atol=1e-4)


def test_empty_rows():
    w = torch.ones(8, device=KERNEL_DEVICE, requires_grad=True)
    x = torch.randn(0, 8, device=KERNEL_DEVICE, requires_grad=True)
    y = rms_norm(x, w, EPS)
    assert y.shape == (0, 8)
    dx, dw = torch.autograd.grad(y.sum(), (x, w))
    assert dx.shape == (0, 8) and torch.equal(dw, torch.zeros_like(w))


@pytest.mark.parametrize("make, match", [
    (lambda: (torch.randn(4, 8).double(), torch.ones(8)), "dtype"),
    (lambda: (torch.randint(0, 3, (4, 8)), torch.ones(8)), "dtype"),
    (lambda: (torch.randn(8, 4).t(), torch.ones(8)), "连续"),
    (lambda: (torch.randn(4, 8), torch.ones(9)), "D=8"),
    (lambda: (torch.randn(4, 8), torch.ones(1, 8)), "1 维"),
    (lambda: (torch.tensor(1.0), torch.ones(1)), "标量"),
])
def test_bad_input_raises_clear_error(make, match):
    x, w = make()
    with pytest.raises(ValueError, match=match):
        rms_norm(x.to(KERNEL_DEVICE), w.to(KERNEL_DEVICE), EPS)


def test_bad_eps_raises():
    with pytest.raises(ValueError, match="eps"):
        rms_norm(torch.randn(2, 8, device=KERNEL_DEVICE), torch.ones(8, device=KERNEL_DEVICE), -1.0)


def _fp32_reference(x, w, g):
    """同样（已舍入到低精度的）输入在 fp32 里算出的前向与梯度：低精度实现的误差都对照它来量。"""
    x, w = x.detach().float().requires_grad_(), w.detach().float().requires_grad_()
    y = w * (x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + EPS))
    dx, dw = torch.autograd.grad(y, (x, w), g.float())
    return y.detach(), dx, dw


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs an NVIDIA GPU")
@pytest.mark.parametrize("x_dtype, w_dtype", [(torch.bfloat16, torch.bfloat16), (torch.float16, torch.float16),
                                              (torch.bfloat16, torch.float32)])
def test_low_precision_on_gpu_within_twice_torch_error(x_dtype, w_dtype):
    d = 1000
    x = torch.randn(512, d, device="cuda").to(x_dtype)
    module = _random_weight(llama.RMSNorm(d, EPS).cuda()).to(w_dtype)
    w = module.weight
    g = torch.randn(512, d, device="cuda").to(torch.result_type(w, x))
    ref = _fp32_reference(x, w, g)
    ours = _grads(lambda t: rms_norm(t, w, EPS), x, w, g)
    theirs = _grads(module, x, w, g)
    for o, t, r in zip(ours, theirs, ref):
        ours_err = (o.float() - r).abs().max().item()
        torch_err = (t.float() - r).abs().max().item()
        assert ours_err <= 2 * torch_err + 1e-5 * r.abs().max().item(), (ours_err, torch_err)
