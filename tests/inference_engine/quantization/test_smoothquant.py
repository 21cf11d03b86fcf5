"""SmoothQuant W8A8：与 torchao 的 SmoothQuantConfig 逐位相同；离群通道上比普通 W8A8 好；整数矩阵乘精确；坏输入报错。"""

from __future__ import annotations

import copy
import json

import pytest
import torch
from torch import nn

from inference_engine.quantization.basics import quantize, sqnr
from inference_engine.quantization.smoothquant import (
    MAX_INT8_MATMUL_K,
    MIN_CALIB_ROWS,
    SmoothQuantLinear,
    int8_matmul,
    outlier_layer,
    quantize_per_token_int8,
    smoothing_factor,
)
from tests.conftest import requires_cuda


@pytest.fixture
def layer_and_data():
    """256 → 128 的层，5% 输入通道 ×20；前 256 个 token 校准，后 256 个测试。"""
    linear, x = outlier_layer(256, 128, 512)
    return linear, x[:256], x[256:]


def _torchao_smoothquant(linear: nn.Linear, calib: torch.Tensor, alpha: float | None) -> nn.Module:
    sq_api = pytest.importorskip("torchao.prototype.smoothquant")
    from torchao.quantization import Int8DynamicActivationInt8WeightConfig, quantize_

    model = nn.Sequential(copy.deepcopy(linear))
    base = Int8DynamicActivationInt8WeightConfig(set_inductor_config=False)
    quantize_(model, sq_api.SmoothQuantConfig(base_config=base, step="prepare", alpha=alpha))
    with torch.no_grad():
        model(calib)
    quantize_(model, sq_api.SmoothQuantConfig(base_config=base, step="convert", alpha=alpha))
    return model


@pytest.mark.parametrize("alpha", [0.5, 0.8, None])
def test_equals_torchao_smoothquant(layer_and_data, alpha):
    """平滑因子、权重码、权重 scale 与 torchao 逐位相同；输出（fp32）也逐位相同。"""
    linear, calib, test = layer_and_data
    ours = SmoothQuantLinear.from_float(linear, calib_inputs=calib, alpha=alpha)
    theirs = _torchao_smoothquant(linear, calib, alpha)
    tw = theirs[0].weight
    assert torch.equal(tw.qdata, ours.weight_codes)
    assert torch.equal(tw.scale.flatten(), ours.weight_scales)
    assert torch.equal(tw.act_pre_scale, 1.0 / ours.smooth)
    with torch.no_grad():
        assert torch.equal(theirs(test), ours(test))


def test_smoothing_beats_plain_w8a8_on_outlier_channels(layer_and_data):
    """5% 通道 ×20：α=0.5 的输出误差小于普通 W8A8（不平滑），SQNR > 20 dB；α 两端（0 与 1）都明显更差（U 形）。"""
    linear, calib, test = layer_and_data
    with torch.no_grad():
        ref = linear(test)
        sq = {a: sqnr(ref, SmoothQuantLinear.from_float(linear, calib_inputs=calib, alpha=a)(test))
              for a in (None, 0.0, 0.5, 1.0)}
    assert sq[0.5] > 20
    assert sq[0.5] > sq[None] + 3, sq  # 实测 ≈ 40.5 vs 33.1 dB
    assert sq[0.5] > max(sq[0.0], sq[1.0]) + 3, sq
    # 平滑后离群通道的最大值被压到 √20 倍左右：每个通道上 max|X'_j| = max|W'_j|（α = 0.5 的定义）
    m = SmoothQuantLinear.from_float(linear, calib_inputs=calib, alpha=0.5)
    x_max = (calib / m.smooth).abs().amax(0)
    w_max = (linear.weight.detach() * m.smooth).abs().amax(0)
    torch.testing.assert_close(x_max, w_max, rtol=1e-5, atol=1e-6)


def test_smoothing_factor_formula():
    """s_j = max|X_j|^α / max|W_j|^(1−α)（+ε），α=None 时全 1。"""
    x_max = torch.tensor([1.0, 4.0, 100.0])
    w = torch.tensor([[0.5, -2.0, 0.1], [-1.0, 1.0, 0.05]])
    s = smoothing_factor(x_max, w, 0.5)
    expected = torch.tensor([1.0, 2.0, 1000.0]).sqrt()
    torch.testing.assert_close(s, expected.float(), rtol=1e-6, atol=0)
    torch.testing.assert_close(smoothing_factor(x_max, w, 1.0), x_max, rtol=1e-6, atol=0)
    assert torch.equal(smoothing_factor(x_max, w, None), torch.ones(3))


def test_per_token_quantizer_equals_basics():
    """激活的快速量化器与 basics.quantize(…, 8, symmetric=True, axis=0) 逐位相同（一个想法一个实现的公式）。"""
    x = torch.randn(33, 70) * torch.logspace(-3, 2, 33)[:, None]
    x[4] = 0  # 全零的 token：scale 被 clamp 到 eps，码全 0
    codes, scale = quantize_per_token_int8(x)
    ref_codes, ref_scale, ref_zero = quantize(x, 8, symmetric=True, axis=0)
    assert torch.equal(codes, ref_codes) and torch.equal(scale, ref_scale) and (ref_zero == 0).all()
    assert (codes[4] == 0).all()


@pytest.mark.parametrize("impl", ["int_mm", "float64", "auto"])
def test_int8_matmul_exact(impl):
    """int8 × int8 → int32 与 int64 参考逐位相同，包括 −128 × −128 的极端值与奇数形状、转置视图。"""
    a = torch.randint(-128, 128, (7, 300), dtype=torch.int8)
    b = torch.randint(-128, 128, (45, 300), dtype=torch.int8).t()  # 非连续 (K, N)，与 weight_codes.t() 相同
    out = int8_matmul(a, b, impl=impl)
    assert out.dtype == torch.int32
    assert torch.equal(out.long(), a.long() @ b.long())
    # 全正、低位随机的乘积：部分和很快超过 2^24，fp32 累加必然丢掉低位（float64 / int32 不会）
    big_a = torch.full((2, 8192), 127, dtype=torch.int8)
    big_b = torch.randint(100, 128, (8192, 3), dtype=torch.int8)
    assert torch.equal(int8_matmul(big_a, big_b, impl=impl).long(), big_a.long() @ big_b.long())
    assert not torch.equal((big_a.float() @ big_b.float()).long(), big_a.long() @ big_b.long())
    extreme = torch.full((3, 2048), -128, dtype=torch.int8)
    assert torch.equal(int8_matmul(extreme, extreme.t(), impl=impl), torch.full((3, 3), 2048 * 128 * 128,
                                                                                 dtype=torch.int32))


def test_int8_matmul_bad_input():
    a = torch.zeros(2, 4, dtype=torch.int8)
    with pytest.raises(ValueError, match="int8"):
        int8_matmul(a.float(), a.t())
    with pytest.raises(ValueError, match=r"\(M, K\) @ \(K, N\)"):
        int8_matmul(a, a)
    with pytest.raises(ValueError, match="impl"):
        int8_matmul(a, a.t(), impl="fp32")
    big = torch.zeros(1, MAX_INT8_MATMUL_K + 1, dtype=torch.int8)
    with pytest.raises(ValueError, match="溢出"):
        int8_matmul(big, big.t())


def test_forward_is_exactly_the_quantized_product(layer_and_data):
    """forward = (Xq · a_t) @ (Wq · w_o)ᵀ + b：与 float64 里按同样的码与 scale 重算的结果一致（只差 fp32 舍入）。"""
    linear, calib, test = layer_and_data
    m = SmoothQuantLinear.from_float(linear, calib_inputs=calib, alpha=0.5)
    x_codes, x_scales = quantize_per_token_int8(test * (1.0 / m.smooth))
    expected = (x_codes.double() * x_scales.double()) @ (m.weight_codes.double() * m.weight_scales.double()[:, None]).t()
    expected = expected + linear.bias.detach().double()
    with torch.no_grad():
        out = m(test)
    torch.testing.assert_close(out.double(), expected, rtol=1e-6, atol=1e-5)
    # 权重码确实是 int8 全范围里的对称 RTN，dequantize() 回到原坐标的权重（只有权重那一半的量化误差）
    assert m.weight_codes.dtype == torch.int8 and m.weight_codes.abs().max() >= 127
    w = linear.weight.detach()
    step = (w * m.smooth).abs().amax(1, keepdim=True) / 127.5 / m.smooth  # 原坐标下每个元素的量化步长
    assert ((m.dequantize() - w).abs() <= step / 2 + 1e-6).all()


def test_shapes_dtypes_and_per_token_scales(layer_and_data):
    """(B, T, in) 进、(B, T, out) 出；bf16 进 bf16 出；每个 token 的 scale 独立（一个大 token 不影响别的 token）。"""
    linear, calib, test = layer_and_data
    m = SmoothQuantLinear.from_float(linear, calib_inputs=calib)
    x = test[:12].reshape(3, 4, 256)
    with torch.no_grad():
        y = m(x)
        assert y.shape == (3, 4, 128)
        torch.testing.assert_close(y.reshape(12, 128), m(test[:12]), rtol=0, atol=0)
        y_bf16 = m(x.bfloat16())
        assert y_bf16.dtype == torch.bfloat16
        torch.testing.assert_close(y_bf16.float(), y, rtol=2e-2, atol=5e-2)
        loud = test[:12].clone()
        loud[0] *= 1000  # 第 0 个 token 放大 1000 倍：动态按 token 量化，其余 token 的输出不变
        torch.testing.assert_close(m(loud)[1:], m(test[:12])[1:], rtol=0, atol=0)


def test_state_dict_roundtrips_through_safetensors(layer_and_data, tmp_path):
    from safetensors.torch import load_file, save_file

    linear, calib, test = layer_and_data
    m = SmoothQuantLinear.from_float(linear, calib_inputs=calib, alpha=0.75)
    path = tmp_path / "sq.safetensors"
    save_file(m.state_dict(), path)
    options = json.loads(json.dumps(m.options()))
    assert options == {"alpha": 0.75}
    loaded = SmoothQuantLinear.empty(256, 128, True, **options)
    loaded.load_state_dict(load_file(path))
    assert loaded.weight_codes.dtype == torch.int8
    with torch.no_grad():
        assert torch.equal(loaded(test), m(test))
    assert SmoothQuantLinear.empty(8, 4, False).bias is None


def test_bad_calibration_and_options_raise():
    linear = nn.Linear(32, 16)
    good = torch.randn(MIN_CALIB_ROWS, 32)
    with pytest.raises(ValueError, match="calib_inputs"):
        SmoothQuantLinear.from_float(linear)
    with pytest.raises(ValueError, match=r"\(N, 32\)"):
        SmoothQuantLinear.from_float(linear, calib_inputs=torch.randn(64, 31))
    with pytest.raises(ValueError, match="reshape"):
        SmoothQuantLinear.from_float(linear, calib_inputs=torch.randn(4, 16, 32))
    with pytest.raises(ValueError, match="至少需要"):
        SmoothQuantLinear.from_float(linear, calib_inputs=good[: MIN_CALIB_ROWS - 1])
    with pytest.raises(ValueError, match="浮点"):
        SmoothQuantLinear.from_float(linear, calib_inputs=torch.ones(64, 32, dtype=torch.long))
    bad = good.clone()
    bad[3, 5] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        SmoothQuantLinear.from_float(linear, calib_inputs=bad)
    for alpha in (-0.1, 1.5, "0.5", True):
        with pytest.raises(ValueError, match="alpha"):
            SmoothQuantLinear.from_float(linear, calib_inputs=good, alpha=alpha)
    with pytest.raises(ValueError, match="nn.Linear"):
        SmoothQuantLinear.from_float(nn.Conv1d(32, 16, 1), calib_inputs=good)
    with pytest.raises(ValueError, match="group_size"):
        SmoothQuantLinear.from_float(linear, calib_inputs=good, group_size=64)
    m = SmoothQuantLinear.from_float(linear, calib_inputs=good)
    with pytest.raises(ValueError, match="in_features=32"):
        m(torch.randn(2, 33))


def test_zero_channels_do_not_produce_inf():
    """校准里全零的输入通道、全零的权重列：ε 让 s 有限且为正，输出有限。"""
    linear = nn.Linear(16, 8)
    with torch.no_grad():
        linear.weight[:, 3] = 0
    calib = torch.randn(32, 16)
    calib[:, 5] = 0
    m = SmoothQuantLinear.from_float(linear, calib_inputs=calib)
    assert torch.isfinite(m.smooth).all() and (m.smooth > 0).all()
    with torch.no_grad():
        assert torch.isfinite(m(torch.randn(4, 16))).all()
        assert torch.isfinite(m(torch.zeros(4, 16))).all()


@requires_cuda
def test_cuda_int8_matmul_and_forward_match_cpu(layer_and_data):
    """GPU：torch._int_mm 的形状限制（M > 16、K 与 N 是 8 的倍数）靠补零绕过，结果仍与 int64 参考逐位相同；
    整个模块在 GPU 上的输出与 CPU 上的一致（整数部分精确，只差 fp32 舍入）。"""
    a = torch.randint(-128, 128, (1, 300), dtype=torch.int8)
    b = torch.randint(-128, 128, (45, 300), dtype=torch.int8).t()
    for impl in ("auto", "float64"):
        assert torch.equal(int8_matmul(a.cuda(), b.cuda(), impl=impl).cpu().long(), a.long() @ b.long())
    linear, calib, test = layer_and_data
    cpu = SmoothQuantLinear.from_float(linear, calib_inputs=calib)
    gpu = SmoothQuantLinear.from_float(linear.cuda(), calib_inputs=calib.cuda())
    assert torch.equal(gpu.weight_codes.cpu(), cpu.weight_codes)
    with torch.no_grad():
        torch.testing.assert_close(gpu(test.cuda()).cpu(), cpu(test), rtol=1e-6, atol=1e-5)
