"""int4.py：码、s、z 与 torchao 的 tinygemm 参数函数逐位相同；输出与 _weight_int4pack_mm_for_cpu 一致；SQNR；打包往返；两条路径；存取；坏输入。"""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file, save_file
from torch import nn

from inference_engine.quantization.basics import sqnr
from inference_engine.quantization.int4 import (
    KERNEL_MAX_ROWS,
    Int4WeightOnlyLinear,
    int4_dequantize,
    int4_qparams,
    int4_quantize,
    linear_int4_kernel,
    linear_int4_reference,
    pack_int4,
    pack_scales_and_zeros,
    to_kernel_layout,
    unpack_int4,
)

ao_utils = pytest.importorskip("torchao.quantization.utils")
requires_kernel = pytest.mark.skipif(not hasattr(torch.ops.aten, "_weight_int4pack_mm_for_cpu"),
                                     reason="这个 torch 没有 _weight_int4pack_mm_for_cpu")


def _weight(n: int, k: int, dtype=torch.float32) -> torch.Tensor:
    w = torch.randn(n, k) * 0.05
    w[1, :32] = 0.3  # 全相同的一组：s 取下限 1e-6
    w[2, 5] = 1.0  # 离群值
    w[3, 32:64] = w[3, 32:64].abs() + 0.1  # 全正的一组
    return w.to(dtype)


@pytest.mark.parametrize("group_size", [32, 64, 128])
@pytest.mark.parametrize("w_dtype,q_dtype", [(torch.float32, torch.bfloat16), (torch.float32, torch.float32),
                                             (torch.bfloat16, torch.bfloat16)])
def test_codes_scales_zeros_equal_torchao(group_size, w_dtype, q_dtype):
    w = _weight(32, 256, w_dtype)
    scales, zeros = int4_qparams(w, group_size, q_dtype)
    s_ref, z_ref = ao_utils.get_groupwise_affine_qparams(w, 4, group_size, q_dtype)
    assert scales.dtype == q_dtype and torch.equal(scales, s_ref) and torch.equal(zeros, z_ref)
    codes = int4_quantize(w, scales, zeros, group_size)
    codes_ref = ao_utils.groupwise_affine_quantize_tensor_from_qparams(w, s_ref, z_ref, 4, group_size)  # CPU：未打包的 int32
    assert codes.dtype == torch.uint8 and torch.equal(codes.to(torch.int32), codes_ref)
    _, sz_ref = ao_utils.groupwise_affine_quantize_tensor(w, 4, group_size, q_dtype)
    assert torch.equal(pack_scales_and_zeros(scales, zeros), sz_ref)
    deq_ref = ao_utils.groupwise_affine_dequantize_tensor_from_qparams(codes_ref, s_ref.float(), z_ref.float(), 4,
                                                                       group_size)
    assert torch.equal(int4_dequantize(codes, scales, zeros, group_size), deq_ref)


@requires_kernel
@pytest.mark.parametrize("group_size", [32, 128])
@pytest.mark.parametrize("m", [1, 3, 9])
def test_output_matches_the_cpu_kernel(group_size, m):
    w = _weight(64, 256)
    linear = nn.Linear(256, 64)
    with torch.no_grad():
        linear.weight.copy_(w)
    layer = Int4WeightOnlyLinear.from_float(linear, group_size=group_size, scale_dtype="float32")
    # 参照完全由 torchao + torch 给出：torchao 的码与 scales_and_zeros，torch 的打包与内核
    codes_ref, sz_ref = ao_utils.groupwise_affine_quantize_tensor(w, 4, group_size, torch.float32)
    packed_ref = torch.ops.aten._convert_weight_to_int4pack_for_cpu(codes_ref, 1)
    x = torch.randn(m, 256)
    y_ref = torch.ops.aten._weight_int4pack_mm_for_cpu(x, packed_ref, group_size, sz_ref) + linear.bias.detach()
    with torch.no_grad():
        y = layer(x)  # m ≤ 4 走内核，m = 9 走可读路径
        y_readable = linear_int4_reference(x, layer.qweight, layer.scales, layer.zeros, group_size, layer.bias)
        y_kernel = linear_int4_kernel(x, *layer.kernel_weight(torch.float32), group_size, layer.bias)
    assert layer.use_kernel(x) == (m <= KERNEL_MAX_ROWS[torch.float32])
    assert torch.equal(y_kernel, y_ref)  # 我们的码 / s / z 经 torch 打包后与 torchao 的逐位相同，内核输出也就逐位相同
    assert (y - y_ref).abs().max() <= 1e-3 and (y_readable - y_ref).abs().max() <= 1e-3
    # 实际远小于 1e-3：两边是同一个 ŵ = (q − 8)·s + z，只差 fp32 求和顺序
    assert (y_readable - y_ref).abs().max() <= 1e-5 * y_ref.abs().max()


@requires_kernel
def test_bf16_kernel_path_and_cache():
    linear = nn.Linear(256, 48)
    layer = Int4WeightOnlyLinear.from_float(linear, group_size=64)
    xb = torch.randn(2, 256).bfloat16()
    assert layer.use_kernel(xb)
    with torch.no_grad():
        y = layer(xb)
        y_readable = linear_int4_reference(xb, layer.qweight, layer.scales, layer.zeros, 64, layer.bias)
        exact = xb.float() @ layer.dequantize().T + linear.bias
    assert y.dtype == torch.bfloat16
    # 两条路径都只多了 bf16 的舍入：误差不超过输出尺度的 2⁻⁷
    tol = 2**-7 * exact.abs().max()
    assert (y.float() - exact).abs().max() <= tol and (y_readable.float() - exact).abs().max() <= tol
    # 缓存跟着 buffer 走：就地改写 qweight（load_state_dict 就是这样）后重新转换内核布局
    other = Int4WeightOnlyLinear.from_float(nn.Linear(256, 48), group_size=64)
    layer.load_state_dict(other.state_dict())
    with torch.no_grad():
        assert torch.equal(layer(xb), other(xb))
    # N 不是 16 的倍数：内核不收，退回可读路径，结果照样对
    odd = Int4WeightOnlyLinear.from_float(nn.Linear(256, 40), group_size=64)
    assert not odd.use_kernel(xb)
    with torch.no_grad():
        assert odd(xb).shape == (2, 40)


@pytest.mark.parametrize("group_size", [32, 64, 128])
def test_dequantized_weight_sqnr_on_gaussian(group_size):
    linear = nn.Linear(1024, 128)
    with torch.no_grad():
        linear.weight.normal_(0, 0.02)
    layer = Int4WeightOnlyLinear.from_float(linear, group_size=group_size)
    # 4 位 16 个格点铺满组内 [min, max]：g = 128 时约 20 dB，组越小越高
    assert sqnr(linear.weight, layer.dequantize()) >= 18.0


def test_pack_unpack_round_trip_and_nibble_order():
    codes = torch.randint(0, 16, (7, 64), dtype=torch.uint8)
    packed = pack_int4(codes)
    assert packed.shape == (7, 32) and packed.dtype == torch.uint8
    assert torch.equal(unpack_int4(packed), codes)
    assert pack_int4(torch.tensor([[1, 2, 15, 0]])).tolist() == [[0x21, 0x0F]]  # 低 4 位 = 偶数列
    with pytest.raises(ValueError, match=r"\[0, 15\]"):
        pack_int4(torch.tensor([[16, 0]]))
    with pytest.raises(ValueError, match="偶数"):
        pack_int4(torch.zeros(2, 3, dtype=torch.uint8))


@requires_kernel
def test_kernel_layout_is_not_ours():
    """CPU 内核的布局与可移植布局不同（所以 state_dict 存后者、运行时转换）：第 0 行和第 32 行共用一个字节。"""
    codes = torch.zeros(64, 64, dtype=torch.uint8)
    codes[0, 0], codes[32, 0] = 1, 4
    packed = to_kernel_layout(codes)
    assert packed.shape == (64, 32) and not torch.equal(packed, pack_int4(codes))


def test_state_dict_round_trip_through_safetensors(tmp_path):
    layer = Int4WeightOnlyLinear.from_float(nn.Linear(128, 32), group_size=32)
    assert layer.options() == {"group_size": 32, "scale_dtype": "bfloat16"}
    assert set(layer.state_dict()) == {"qweight", "scales", "zeros", "bias"}
    save_file(layer.state_dict(), tmp_path / "layer.safetensors")
    loaded = Int4WeightOnlyLinear.empty(128, 32, True, **layer.options())
    loaded.load_state_dict(load_file(tmp_path / "layer.safetensors"))
    x = torch.randn(5, 128)
    with torch.no_grad():
        assert torch.equal(loaded(x), layer(x))
        assert torch.equal(loaded(x.bfloat16()[:1]), layer(x.bfloat16()[:1]))
    assert Int4WeightOnlyLinear.scheme == "int4"


def test_bad_input():
    with pytest.raises(ValueError, match="不能整除 in_features=96"):
        Int4WeightOnlyLinear.from_float(nn.Linear(96, 16), group_size=64)
    with pytest.raises(ValueError, match="不能整除"):
        int4_qparams(torch.randn(4, 96), 64)
    with pytest.raises(ValueError, match="不支持"):
        Int4WeightOnlyLinear.from_float(nn.Linear(96, 16), group_size=48)
    with pytest.raises(ValueError, match="不认识选项"):
        Int4WeightOnlyLinear.from_float(nn.Linear(64, 16), bits=3)
    with pytest.raises(ValueError, match="nn.Linear"):
        Int4WeightOnlyLinear.from_float(nn.Embedding(10, 64))
    with pytest.raises(ValueError, match="scale_dtype"):
        Int4WeightOnlyLinear.empty(64, 16, False, scale_dtype="float16")
    layer = Int4WeightOnlyLinear.from_float(nn.Linear(64, 16), group_size=32)
    with pytest.raises(ValueError, match="in_features=64"):
        layer(torch.randn(3, 32))
