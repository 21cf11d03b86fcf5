"""inference_engine 各课的数字说法：量化课打印在 SQNR 旁边的预测值、docstring 里的 dB 数与分布常数、图的坐标轴。

用独立的办法重算再比较：步长预测的 SQNR 与实测（以及它失效的情形）、int8 与 int4 的 24.6 dB、
均匀 / 高斯初始化下 int8 的 48 / 43–41 dB、int4 分组的约 20 dB、NF4 码本的 1.848 与"64 个高斯的最大绝对值约 2.6σ"、
解码量化表的均匀分布基线。全部在 CPU 上几秒内跑完。
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from inference_engine.quantization.basics import dequantize, quantize, rtn_noise_sqnr, sqnr


def _close(fig) -> None:
    import matplotlib.pyplot as plt

    plt.close(fig)


def test_step_size_prediction_matches_measured_sqnr_and_fails_when_codes_collapse_to_zero():
    gen = torch.Generator().manual_seed(0)
    w = torch.randn(256, 512, generator=gen) * 0.02
    for kw in (dict(bits=8, symmetric=True, axis=0), dict(bits=4, symmetric=True, group_size=32),
               dict(bits=4, symmetric=False, group_size=128)):
        codes, scale, zero = quantize(w, **kw)
        assert rtn_noise_sqnr(w, scale) == pytest.approx(sqnr(w, dequantize(codes, scale, zero)), abs=0.3), kw
    # 1% 的列放大 10 倍、int4 per-tensor：步长被离群值撑大，绝大多数元素舍入成 0，误差就是元素本身——预测偏低好几 dB
    w_out = w.clone()
    w_out[:, :5] *= 10
    codes, scale, zero = quantize(w_out, 4, symmetric=True)
    assert (codes == 0).float().mean() > 0.9
    assert sqnr(w_out, dequantize(codes, scale, zero)) - rtn_noise_sqnr(w_out, scale) > 1.0
    with pytest.raises(ValueError, match="不配套"):
        rtn_noise_sqnr(w, torch.ones(256, 3))


def test_int8_beats_int4_by_20_log10_17_dB_at_the_same_granularity():
    w = torch.randn(64, 256, generator=torch.Generator().manual_seed(1))
    _, s8, _ = quantize(w, 8, symmetric=True, axis=0)
    _, s4, _ = quantize(w, 4, symmetric=True, axis=0)
    assert torch.allclose(s4 / s8, torch.full_like(s8, 17.0), rtol=1e-6)  # amax/7.5 对 amax/127.5
    assert rtn_noise_sqnr(w, s8) - rtn_noise_sqnr(w, s4) == pytest.approx(20 * math.log10(17), abs=1e-6)
    assert 20 * math.log10(17) == pytest.approx(24.6, abs=0.01)


def test_int8_sqnr_for_uniform_and_gaussian_weights_as_in_the_docstring():
    torch.manual_seed(0)
    uniform = torch.nn.Linear(256, 64).weight.detach()  # nn.Linear 默认 U(−a, a)
    codes, scale, zero = quantize(uniform, 8, symmetric=True, axis=0)
    assert sqnr(uniform, dequantize(codes, scale, zero)) == pytest.approx(10 * math.log10(4 * 127.5**2), abs=0.3)
    for k, expected in ((256, 43.2), (4096, 41.3)):  # amax ≈ 3.0σ / 3.8σ
        w = torch.randn(512, k)
        codes, scale, zero = quantize(w, 8, symmetric=True, axis=0)
        assert sqnr(w, dequantize(codes, scale, zero)) == pytest.approx(expected, abs=0.4), k


def test_int4_tinygemm_groups_reach_about_20_to_22_dB_on_gaussian_weights():
    from inference_engine.quantization.int4 import Int4WeightOnlyLinear

    torch.manual_seed(0)
    linear = torch.nn.Linear(512, 256)
    with torch.no_grad():
        linear.weight.normal_(0, 0.02)
    measured = {}
    for g in (32, 128):
        layer = Int4WeightOnlyLinear.from_float(linear, group_size=g)
        measured[g] = sqnr(linear.weight, layer.dequantize())
        assert rtn_noise_sqnr(linear.weight.detach(), layer.scales.float()) == pytest.approx(measured[g], abs=0.4)
    assert measured[32] == pytest.approx(22.1, abs=0.4) and measured[128] == pytest.approx(20.0, abs=0.4)
    # 组内 max − min 的均值：32 个高斯约 4.1σ、128 个约 5.2σ（int4 的打印说明）
    z = np.random.default_rng(0).standard_normal((20000, 128))
    assert np.ptp(z[:, :32], axis=1).mean() == pytest.approx(4.1, abs=0.05)
    assert np.ptp(z, axis=1).mean() == pytest.approx(5.2, abs=0.05)


def test_nf4_offset_quantile_and_block_absmax_constants():
    from statistics import NormalDist

    from inference_engine.quantization.nf4 import nf4_codebook

    offset = 0.5 * ((1 - 1 / 30) + (1 - 1 / 32))
    assert offset == pytest.approx(0.96770833, abs=1e-8)
    assert NormalDist().inv_cdf(0.9677083) == pytest.approx(1.848, abs=5e-4)  # 码本的 ±1 对应 ±1.85σ
    assert nf4_codebook()[[0, -1]].tolist() == [-1.0, 1.0]
    z = np.random.default_rng(0).standard_normal((50000, 64))
    assert np.abs(z).max(axis=1).mean() == pytest.approx(2.6, abs=0.03)  # "64 个正态数的最大绝对值平均约 2.6σ"
    # 双重量化的元数据：8/64 + 32/(64·256) ≈ 0.127 位/权重，比 fp32 absmax 的 0.5 位省 0.373
    assert 8 / 64 + 32 / (64 * 256) == pytest.approx(0.127, abs=5e-4)


def test_quantization_figures_have_labelled_axes():
    from inference_engine.quantization.basics import error_histogram_figure
    from inference_engine.quantization.nf4 import occupancy_figure

    gen = torch.Generator().manual_seed(0)
    fig = error_histogram_figure({"a": torch.randn(100, generator=gen), "b": torch.randn(100, generator=gen)}, "t")
    try:
        ax = fig.axes[0]
        assert ax.get_xlabel() and ax.get_ylabel() and ax.get_yscale() == "log"
    finally:
        _close(fig)
    codes = torch.randint(0, 16, (64, 32), generator=gen)
    fig = occupancy_figure(codes, codes)
    try:
        assert all(ax.get_xlabel() and ax.get_ylabel() for ax in fig.axes)
    finally:
        _close(fig)


def test_uniform_bits_per_byte_baseline_of_the_quantization_table():
    from inference_engine.quantization.__main__ import uniform_bpb

    ids = torch.arange(1 + 3 * 16) % 7
    # 每个 token 2 字节：均匀分布每 token log2(V) 位 → log2(V) / 2 bits/byte；只数被预测的 3·16 个 token
    assert uniform_bpb(ids, 16, lambda toks: 2 * len(toks), vocab_size=512) == pytest.approx(9 / 2)
    assert uniform_bpb(torch.arange(40), 16, lambda toks: len(toks), vocab_size=2) == pytest.approx(1.0)
    with pytest.raises(ValueError, match="不够一个"):
        uniform_bpb(torch.arange(10), 16, len, vocab_size=2)
