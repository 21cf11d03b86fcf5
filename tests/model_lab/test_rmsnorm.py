"""RMSNorm 课（model_lab/01_components/rmsnorm.py）对照 transformers.LlamaRMSNorm 与 torch 的 LayerNorm/RMSNorm。"""

from __future__ import annotations

import importlib

import pytest
import torch
from transformers.models.llama.modeling_llama import LlamaRMSNorm

rmsnorm = importlib.import_module("model_lab.01_components.rmsnorm")

SHAPES = [(1, 1, 8), (2, 7, 64), (3, 13, 257), (5, 1000)]  # 含奇数长度、奇数 hidden、2 维输入


def pair(d: int, eps: float = 1e-6):
    ours, ref = rmsnorm.RMSNorm(d, eps=eps), LlamaRMSNorm(d, eps=eps)
    with torch.no_grad():
        ours.weight.copy_(torch.randn(d))
        ref.weight.copy_(ours.weight)
    return ours, ref


@pytest.mark.parametrize("eps", [1e-6, 1e-5])
@pytest.mark.parametrize("shape", SHAPES)
def test_outputs_and_gradients_equal_llama_rmsnorm_fp32(shape, eps):
    ours, ref = pair(shape[-1], eps)
    x = (torch.randn(shape) * 3 + 0.5).requires_grad_()
    grad = torch.randn(shape)
    y, y_ref = ours(x), ref(x)
    torch.testing.assert_close(y, y_ref, rtol=1e-6, atol=1e-6)
    gx, gw = torch.autograd.grad((y * grad).sum(), (x, ours.weight))
    gx_ref, gw_ref = torch.autograd.grad((y_ref * grad).sum(), (x, ref.weight))
    torch.testing.assert_close(gx, gx_ref, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(gw, gw_ref, rtol=1e-6, atol=1e-5)


@pytest.mark.parametrize("shape", SHAPES)
def test_bf16_path_upcasts_inside_and_equals_hf_bitwise(shape):
    ours, ref = pair(shape[-1])
    ours, ref = ours.to(torch.bfloat16), ref.to(torch.bfloat16)
    x = (torch.randn(shape) * 4).to(torch.bfloat16).requires_grad_()
    grad = torch.randn(shape).to(torch.bfloat16)
    y, y_ref = ours(x), ref(x)
    assert y.dtype == torch.bfloat16
    torch.testing.assert_close(y, y_ref, rtol=0, atol=0)
    gx, gw = torch.autograd.grad((y * grad).sum(), (x, ours.weight))
    gx_ref, gw_ref = torch.autograd.grad((y_ref * grad).sum(), (x, ref.weight))
    torch.testing.assert_close(gx, gx_ref, rtol=0, atol=0)
    torch.testing.assert_close(gw, gw_ref, rtol=0, atol=0)


def test_fp16_large_activation_needs_upcast():
    x = torch.randn(3, 128).half()
    x[:, 5] = 400.0  # 400² 超出 fp16 的最大值 65504
    truth = x.double() * torch.rsqrt(x.double().pow(2).mean(-1, keepdim=True) + 1e-6)
    out = rmsnorm.RMSNorm(128).half()(x)
    torch.testing.assert_close(out.double(), truth, rtol=2e-3, atol=2e-3)
    naive = rmsnorm.rms_norm_naive(x, torch.ones(128, dtype=torch.float16))
    assert (naive == 0).all()  # x² 溢出为 inf，rsqrt(inf) = 0：反面教材确实坏掉了


def test_equals_torch_builtin_rms_norm():
    d = 96
    ours = rmsnorm.RMSNorm(d, eps=1e-6)
    builtin = torch.nn.RMSNorm(d, eps=1e-6)
    with torch.no_grad():
        ours.weight.copy_(torch.randn(d))
        builtin.weight.copy_(ours.weight)
    x = torch.randn(4, 9, d)
    torch.testing.assert_close(ours(x), builtin(x), rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("shape", SHAPES)
def test_hand_derived_backward_matches_autograd(shape):
    d = shape[-1]
    x = torch.randn(shape, dtype=torch.float64, requires_grad=True)
    w = torch.randn(d, dtype=torch.float64, requires_grad=True)
    grad = torch.randn(shape, dtype=torch.float64)
    y = w * (x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + 1e-6))
    gx_ref, gw_ref = torch.autograd.grad((y * grad).sum(), (x, w))
    gx, gw = rmsnorm.rms_norm_backward(x.detach(), w.detach(), grad)
    torch.testing.assert_close(gx, gx_ref, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(gw, gw_ref, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("shape", [(2, 5, 16), (3, 33)])
def test_layernorm_equals_torch(shape):
    d = shape[-1]
    ours, ref = rmsnorm.LayerNorm(d), torch.nn.LayerNorm(d)
    with torch.no_grad():
        ours.weight.copy_(torch.randn(d))
        ours.bias.copy_(torch.randn(d))
        ref.load_state_dict(ours.state_dict())
    x = (torch.randn(shape) + 2).requires_grad_()
    grad = torch.randn(shape)
    y, y_ref = ours(x), ref(x)
    torch.testing.assert_close(y, y_ref, rtol=1e-5, atol=1e-5)
    (gx,) = torch.autograd.grad((y * grad).sum(), x)
    (gx_ref,) = torch.autograd.grad((y_ref * grad).sum(), x)
    torch.testing.assert_close(gx, gx_ref, rtol=1e-5, atol=1e-5)


def test_rmsnorm_is_scale_invariant_but_not_shift_invariant():
    norm = rmsnorm.RMSNorm(32, eps=0.0)
    x = torch.randn(4, 32, dtype=torch.float32) + 0.3
    torch.testing.assert_close(norm(7.5 * x), norm(x))  # re-scaling 不变性保留
    assert not torch.allclose(norm(x + 1.0), norm(x), atol=1e-3)  # re-centering 不变性被去掉
    ln = rmsnorm.LayerNorm(32)
    torch.testing.assert_close(ln(x + 1.0), ln(x), rtol=1e-4, atol=1e-4)


def test_bad_inputs_raise_clear_errors():
    with pytest.raises(ValueError, match="hidden_size=64"):
        rmsnorm.RMSNorm(64)(torch.randn(2, 3, 65))
    with pytest.raises(ValueError, match="hidden_size=0"):
        rmsnorm.RMSNorm(0)
    with pytest.raises(ValueError, match="hidden_size=8"):
        rmsnorm.LayerNorm(8)(torch.randn(8, 4))
