"""basics.py：网格上的值精确往返、SQNR 手算、误差不超过半步、per-group 在离群列上胜过 per-channel、截断、与 torchao 原语逐位相同、坏输入。"""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from inference_engine.quantization.basics import (
    choose_qparams,
    dequantize,
    qrange,
    quantize,
    quantize_with_qparams,
    sqnr,
)

GRANULARITIES = [dict(), dict(axis=0), dict(axis=1), dict(group_size=16)]


@pytest.mark.parametrize("bits", [2, 4, 8])
@pytest.mark.parametrize("symmetric", [True, False])
@pytest.mark.parametrize("gran", GRANULARITIES, ids=["tensor", "axis0", "axis1", "g16"])
def test_values_on_the_grid_round_trip_exactly(bits, symmetric, gran):
    x = torch.randn(8, 64)
    scale, zero = choose_qparams(x, bits, symmetric=symmetric, **gran)
    q_min, q_max = qrange(bits, symmetric)
    shape = x.shape
    codes = torch.randint(q_min, q_max + 1, shape, dtype=torch.int32).to(torch.int8 if symmetric else torch.uint8)
    on_grid = dequantize(codes, scale, zero)
    assert torch.equal(quantize_with_qparams(on_grid, scale, zero, bits, symmetric=symmetric), codes)
    assert torch.equal(dequantize(quantize_with_qparams(on_grid, scale, zero, bits, symmetric=symmetric), scale, zero),
                       on_grid)


def test_asymmetric_zero_is_exactly_representable():
    x = torch.rand(4, 32) + 0.5  # 全正：非对称网格仍把 0 包进来
    x[:, 3] = 0.0
    codes, scale, zero = quantize(x, 4, symmetric=False, group_size=8)
    assert torch.equal(dequantize(codes, scale, zero)[:, 3], torch.zeros(4))


def test_sqnr_by_hand():
    assert sqnr(torch.tensor([3.0, 4.0]), torch.tensor([3.0, 3.0])) == pytest.approx(10 * math.log10(25.0), abs=1e-12)
    assert sqnr(torch.ones(5), torch.ones(5)) == float("inf")
    # 2 位对称、per-tensor：q ∈ [−2, 1]，s = amax / 1.5 = 2/3；x/s = [0, 0.45, −1.5, 0.75]
    # round（−1.5 按 half-to-even 到 −2）→ [0, 0, −2, 1] → x̂ = [0, 0, −4/3, 2/3]
    x = torch.tensor([0.0, 0.3, -1.0, 0.5])
    codes, scale, zero = quantize(x, 2, symmetric=True)
    assert codes.tolist() == [0, 0, -2, 1] and zero.item() == 0
    assert scale.item() == pytest.approx(2 / 3, rel=1e-7)
    signal = 0.3**2 + 1.0**2 + 0.5**2
    noise = 0.3**2 + (1 / 3) ** 2 + (0.5 - 2 / 3) ** 2
    assert sqnr(x, dequantize(codes, scale, zero)) == pytest.approx(10 * math.log10(signal / noise), rel=1e-6)


def test_six_db_per_bit_on_uniform_data():
    x = torch.rand(256, 256) * 2 - 1
    gains = [sqnr(x, dequantize(*quantize(x, b + 1, symmetric=True))) - sqnr(x, dequantize(*quantize(x, b, symmetric=True)))
             for b in (4, 5, 6, 7)]
    # 均匀数据上噪声功率 = s²/12，s = 2·amax/(2^b − 1)：多一位，SQNR 涨 20·log10((2^(b+1) − 1)/(2^b − 1)) ≈ 6.02 dB
    expected = [20 * math.log10((2 ** (b + 1) - 1) / (2**b - 1)) for b in (4, 5, 6, 7)]
    assert all(abs(g - e) < 0.1 for g, e in zip(gains, expected)), (gains, expected)


@settings(max_examples=40, deadline=None)
@given(rows=st.integers(1, 6), groups=st.integers(1, 4), bits=st.integers(2, 8), symmetric=st.booleans(),
       gran=st.sampled_from(["tensor", "axis0", "group"]), seed=st.integers(0, 2**16))
def test_error_never_exceeds_half_a_step(rows, groups, bits, symmetric, gran, seed):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(rows, groups * 8, generator=g) * torch.rand(rows, 1, generator=g) * 10
    kw = {"tensor": {}, "axis0": {"axis": 0}, "group": {"group_size": 8}}[gran]
    codes, scale, zero = quantize(x, bits, symmetric=symmetric, **kw)
    err = (x - dequantize(codes, scale, zero)).abs()
    step = scale.repeat_interleave(8, dim=-1) if gran == "group" else scale
    assert bool((err <= step * (0.5 + 1e-4)).all())  # 数据全在网格里：只有舍入误差，没有截断误差


def test_per_group_beats_per_channel_on_outlier_columns():
    w = torch.randn(128, 512) * 0.02
    w[:, torch.randperm(512)[:5]] *= 10.0  # 1% 的输入列是离群值
    per_channel = sqnr(w, dequantize(*quantize(w, 4, symmetric=True, axis=0)))
    per_group = sqnr(w, dequantize(*quantize(w, 4, symmetric=True, group_size=64)))
    per_tensor = sqnr(w, dequantize(*quantize(w, 4, symmetric=True)))
    assert per_group > per_channel + 3.0 and per_channel > per_tensor
    # 没有离群列时差距小得多：好处确实来自"离群值只连累自己那一组"
    clean = torch.randn(128, 512) * 0.02
    gap_clean = (sqnr(clean, dequantize(*quantize(clean, 4, symmetric=True, group_size=64)))
                 - sqnr(clean, dequantize(*quantize(clean, 4, symmetric=True, axis=0))))
    assert per_group - per_channel > gap_clean + 2.0


def test_clamping_to_the_code_range():
    scale, zero = torch.tensor([[0.1]]), torch.tensor([[0]], dtype=torch.int32)
    x = torch.tensor([[-100.0, -12.84, 12.6, 100.0, 0.04]])
    assert quantize_with_qparams(x, scale, zero, 8, symmetric=True).tolist() == [[-128, -128, 126, 127, 0]]
    zero_u = torch.tensor([[3]], dtype=torch.int32)
    assert quantize_with_qparams(x, scale, zero_u, 4, symmetric=False).tolist() == [[0, 0, 15, 15, 3]]
    # 对称 int8 的 s = amax / 127.5：+amax 落在 ≈127.5、被截到 127；−amax 落在 ≈−127.5，−127 或 −128 都只差半步
    w = torch.tensor([[1.0, -0.5, 0.25], [-2.0, 1.0, 0.0]])
    codes, scale, zero = quantize(w, 8, symmetric=True, axis=0)
    assert codes[0, 0].item() == 127 and codes[1, 0].item() in (-127, -128)
    assert torch.allclose(scale.flatten(), torch.tensor([1.0, 2.0]) / 127.5)
    assert bool(((w - dequantize(codes, scale, zero)).abs() <= scale * (0.5 + 1e-4)).all())


def test_all_zero_group_gets_the_eps_scale():
    x = torch.zeros(2, 16)
    x[1] = torch.randn(16)
    codes, scale, zero = quantize(x, 4, symmetric=False, axis=0)
    assert scale[0].item() == torch.finfo(torch.float32).eps and torch.equal(dequantize(codes, scale, zero)[0], x[0])


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_matches_torchao_affine_primitives(dtype):
    qp = pytest.importorskip("torchao.quantization.quant_primitives")
    w = (torch.randn(32, 128) * 0.05).to(dtype)
    eps = torch.finfo(torch.float32).eps
    for mapping, bits, symmetric, block in [(qp.MappingType.SYMMETRIC, 8, True, (1, 128)),
                                            (qp.MappingType.ASYMMETRIC, 4, False, (1, 32)),
                                            (qp.MappingType.SYMMETRIC, 4, True, (32, 128))]:
        q_min, q_max = qrange(bits, symmetric)
        target = torch.int8 if symmetric else torch.uint8
        s_ref, z_ref = qp.choose_qparams_affine(w, mapping, block, target, q_min, q_max, eps=eps,
                                                scale_dtype=torch.float32, zero_point_dtype=torch.int32)
        q_ref = qp.quantize_affine(w, block, s_ref, z_ref, target, q_min, q_max)
        gran = {(1, 128): dict(axis=0), (1, 32): dict(group_size=32), (32, 128): dict()}[block]
        codes, scale, zero = quantize(w, bits, symmetric=symmetric, **gran)
        assert torch.equal(codes, q_ref)
        assert torch.equal(scale.flatten(), s_ref.flatten()) and torch.equal(zero.flatten(), z_ref.flatten())


def test_bad_input():
    x = torch.randn(4, 48)
    with pytest.raises(ValueError, match="不能整除"):
        quantize(x, 4, symmetric=True, group_size=32)
    for bits in (1, 9, 4.0, True):
        with pytest.raises(ValueError, match="bits"):
            quantize(x, bits, symmetric=True)
    with pytest.raises(ValueError, match="只能给一个"):
        quantize(x, 4, symmetric=True, axis=0, group_size=16)
    with pytest.raises(ValueError, match="axis"):
        quantize(x, 4, symmetric=True, axis=2)
    with pytest.raises(ValueError, match="NaN"):
        quantize(torch.tensor([1.0, float("nan")]), 8, symmetric=True)
    with pytest.raises(ValueError, match="浮点"):
        quantize(torch.arange(8), 8, symmetric=True)
    with pytest.raises(ValueError, match="非空"):
        quantize(torch.empty(0), 8, symmetric=True)
    codes, scale, zero = quantize(x, 4, symmetric=True, group_size=16)
    with pytest.raises(ValueError, match="不是合法的分组"):
        dequantize(codes, torch.ones(4, 5), torch.zeros(4, 5, dtype=torch.int32))
    with pytest.raises(ValueError, match="形状不同"):
        dequantize(codes, scale, zero[:, :1])
    with pytest.raises(ValueError, match="整数码"):
        dequantize(codes.float(), scale, zero)
    with pytest.raises(ValueError, match="形状不同"):
        sqnr(torch.ones(3), torch.ones(4))
