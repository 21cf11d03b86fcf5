"""int8.py：码与 scale 与 torchao Int8WeightOnlyConfig 逐位相同，输出与 torchao 的量化线性层一致，SQNR，bf16 路径，存取，坏输入。"""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file, save_file
from torch import nn

from inference_engine.quantization.basics import sqnr
from inference_engine.quantization.int8 import (
    KERNEL_MAX_ROWS,
    Int8WeightOnlyLinear,
    linear_int8_kernel,
    linear_int8_reference,
)

torchao_quant = pytest.importorskip("torchao.quantization")


def _torchao_linear(linear: nn.Linear) -> nn.Linear:
    ao = nn.Linear(linear.in_features, linear.out_features, bias=linear.bias is not None,
                   dtype=linear.weight.dtype)
    ao.load_state_dict(linear.state_dict())
    # set_inductor_config=False：不去改全局的 inductor 配置（测试进程里别的测试还要用）
    torchao_quant.quantize_(ao, torchao_quant.Int8WeightOnlyConfig(set_inductor_config=False))
    return ao


def _weights(n: int, k: int, dtype: torch.dtype) -> nn.Linear:
    linear = nn.Linear(k, n, dtype=dtype)
    with torch.no_grad():
        linear.weight.copy_(torch.randn(n, k) * 0.05)
        linear.weight[3] = 0.0  # 全零的一行：scale 取 eps 下限
        linear.weight[5, 7] = 1.0  # 一个离群值：这一行的步长被它撑大
    return linear


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("shape", [(16, 64), (48, 200)])
def test_codes_and_scales_equal_torchao(dtype, shape):
    linear = _weights(*shape, dtype)
    ao = _torchao_linear(linear)
    layer = Int8WeightOnlyLinear.from_float(linear)
    assert layer.qweight.dtype == torch.int8 and ao.weight.qdata.dtype == torch.int8
    assert torch.equal(layer.qweight, ao.weight.qdata)
    assert torch.equal(layer.scales, ao.weight.scale.flatten().float())
    assert layer.scales[3].item() == torch.finfo(torch.float32).eps
    assert torch.equal(layer.dequantize().to(dtype), ao.weight.dequantize())


@pytest.mark.parametrize("x_shape", [(1, 200), (5, 200), (2, 3, 200)])
def test_outputs_match_torchao_linear(x_shape):
    linear = _weights(48, 200, torch.float32)
    ao, layer = _torchao_linear(linear), Int8WeightOnlyLinear.from_float(linear)
    x = torch.randn(x_shape)
    with torch.no_grad():
        y_ao = ao(x)
        y = layer(x)
        y_kernel = linear_int8_kernel(x.reshape(-1, 200), layer.qweight, layer.scales, layer.bias).reshape(y.shape)
    assert y.shape == y_ao.shape and y.dtype == torch.float32
    # 两边都在 fp32 里算 s_j · Σ_k x_k q_jk、用同样的整数码，只有求和顺序不同（BLAS 的分块 vs 内核的向量通道）：
    # fp32 累加误差 ~ √K · 2⁻²⁴ · Σ|x q| ≪ 1e-5 · max|y|，所以 1e-5（相对输出的尺度）够紧也够稳
    scale = y_ao.abs().max()
    assert (y - y_ao).abs().max() <= 1e-5 * scale
    assert (y_kernel - y_ao).abs().max() <= 1e-5 * scale


def test_sqnr_on_gaussian_weight():
    linear = nn.Linear(512, 256)
    with torch.no_grad():
        linear.weight.normal_(0, 0.02)
    layer = Int8WeightOnlyLinear.from_float(linear)
    # 理论值：s ≈ amax/127.5，amax ≈ 3σ（512 个样本）→ 10·log10(12·127.5²/9) ≈ 43 dB
    assert sqnr(linear.weight, layer.dequantize()) > 40.0
    x = torch.randn(64, 512)
    with torch.no_grad():
        assert sqnr(linear(x), layer(x)) > 40.0


def test_bf16_input_path():
    linear = _weights(64, 256, torch.float32)
    ao, layer = _torchao_linear(linear), Int8WeightOnlyLinear.from_float(linear)
    x = torch.randn(4, 256)
    xb = x.bfloat16()
    exact = x.bfloat16().float() @ layer.dequantize().T + linear.bias.detach()  # 同样的量化权重、同样的 bf16 输入，fp32 里算
    assert layer.use_kernel(xb) == hasattr(torch, "_weight_int8pack_mm")
    assert not layer.use_kernel(x)  # 4 行 fp32 激活：内核的通用循环已经比参考路径慢，不用
    assert not layer.use_kernel(torch.randn(KERNEL_MAX_ROWS[torch.bfloat16] + 1, 256).bfloat16())
    with torch.no_grad():
        y = layer(xb)
        y_ref_path = linear_int8_reference(xb, layer.qweight, layer.scales, layer.bias)
        y_ao = ao(xb)
    assert y.dtype == torch.bfloat16 and y_ref_path.dtype == torch.bfloat16
    err_ours = (y.float() - exact).abs().max()
    err_ref_path = (y_ref_path.float() - exact).abs().max()
    err_ao = (y_ao.float() - exact).abs().max()
    slack = 1e-3 * exact.abs().max()
    # bf16 的误差来自舍入（s 与输出各舍入到 bf16）：我们的两条路径都不比 torchao 的 bf16 路径差 2 倍以上
    assert err_ours <= 2 * err_ao + slack and err_ref_path <= 2 * err_ao + slack
    assert err_ours <= 2 ** -7 * exact.abs().max()


def test_kernel_is_not_used_when_in_features_is_not_a_multiple_of_16():
    """torch 2.13 的 bf16 内核不处理 K 的尾巴（K = 24 结果错、K = 200 且 M ≥ 2 段错误）：这种层必须走参考路径。"""
    linear = _weights(48, 200, torch.float32)
    layer = Int8WeightOnlyLinear.from_float(linear)
    xb = torch.randn(4, 200).bfloat16()
    assert not layer.use_kernel(xb)
    with torch.no_grad():
        y = layer(xb)
    exact = xb.float() @ layer.dequantize().T + linear.bias.detach()
    assert (y.float() - exact).abs().max() <= 2**-7 * exact.abs().max()


def test_state_dict_round_trip_through_safetensors(tmp_path):
    layer = Int8WeightOnlyLinear.from_float(_weights(32, 64, torch.float32))
    save_file(layer.state_dict(), tmp_path / "layer.safetensors")
    assert set(layer.state_dict()) == {"qweight", "scales", "bias"}
    loaded = Int8WeightOnlyLinear.empty(64, 32, True, **layer.options())
    loaded.load_state_dict(load_file(tmp_path / "layer.safetensors"))
    x = torch.randn(3, 64)
    with torch.no_grad():
        assert torch.equal(loaded(x), layer(x))
    no_bias = Int8WeightOnlyLinear.from_float(nn.Linear(64, 32, bias=False))
    assert no_bias.bias is None and set(no_bias.state_dict()) == {"qweight", "scales"}
    assert Int8WeightOnlyLinear.scheme == "int8"


def test_bad_input():
    with pytest.raises(ValueError, match="nn.Linear"):
        Int8WeightOnlyLinear.from_float(nn.Conv1d(4, 4, 1))
    with pytest.raises(ValueError, match="没有可调的选项"):
        Int8WeightOnlyLinear.from_float(nn.Linear(8, 8), group_size=4)
    layer = Int8WeightOnlyLinear.from_float(nn.Linear(8, 4))
    with pytest.raises(ValueError, match="in_features=8"):
        layer(torch.randn(2, 7))
    with pytest.raises(ValueError, match="浮点"):
        layer(torch.ones(2, 8, dtype=torch.long))
    bad = nn.Linear(8, 4)
    with torch.no_grad():
        bad.weight[0, 0] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        Int8WeightOnlyLinear.from_float(bad)
