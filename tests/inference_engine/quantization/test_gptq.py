"""GPTQ：H = I 时逐位等于 RTN；懒批量与不分块一致；与逐步高斯消元的朴素 OBS 实现一致；
累加的损失等于二次型目标；toy MLP 上输出 SQNR > 25 dB 且好于 RTN；act_order 不更差；坏输入报错。"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import nn

from inference_engine.quantization._groupwise import (
    dequantize_groupwise,
    group_qparams,
    pack_codes,
    quantize_with_qparams,
    rtn_groupwise,
    unpack_codes,
)
from inference_engine.quantization.basics import sqnr
from inference_engine.quantization.gptq import GPTQLinear, gptq_quantize, hessian_from_calibration, toy_activations
from tests.conftest import requires_cuda


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _correlated_hessian(in_features: int, seed: int = 0) -> torch.Tensor:
    x = toy_activations(4 * in_features, in_features, generator=_gen(seed), channel_spread=1.0)
    h, _ = hessian_from_calibration(x, in_features)
    return h


# ---------------------------------------------------------------------------------------------------
# 网格与打包
# ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("bits", [3, 4, 8])
def test_pack_unpack_round_trip_and_nibble_order(bits):
    codes = torch.randint(0, 2**bits, (5, 12), dtype=torch.uint8, generator=_gen())
    packed = pack_codes(codes, bits)
    assert torch.equal(unpack_codes(packed, bits), codes)
    if bits <= 4:
        assert packed.shape == (5, 6)
        assert torch.equal(packed[:, 0], codes[:, 0] * 16 + codes[:, 1])  # 偶数列在高 4 位


def test_rtn_grid_contains_zero_and_error_is_half_step():
    w = torch.randn(16, 64, generator=_gen())
    w[3, :32] = 0.0                                       # 全零的一组
    codes, s, z = rtn_groupwise(w, 4, 32)
    w_hat = dequantize_groupwise(codes, s, z, 32, torch.float64)
    assert torch.equal(w_hat[3, :32], torch.zeros(32, dtype=torch.float64))
    step = s.repeat_interleave(32, dim=1)
    assert ((w.double() - w_hat).abs() <= step / 2 + 1e-12).all()
    assert codes.max() <= 15 and ((z >= 0) & (z <= 15)).all()


# ---------------------------------------------------------------------------------------------------
# 证明：H = I 时 GPTQ 就是 RTN（逐位相同）
# ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("bits,group_size,block_size,act_order", [
    (4, 32, 128, False), (4, 64, 48, False), (3, None, 128, False), (8, 64, 16, False), (4, 32, 128, True),
])
def test_identity_hessian_reduces_exactly_to_rtn(bits, group_size, block_size, act_order):
    w = torch.randn(48, 128, generator=_gen(1))
    res = gptq_quantize(w, torch.eye(128, dtype=torch.float64), bits=bits, group_size=group_size,
                        block_size=block_size, act_order=act_order)
    codes, s, z = rtn_groupwise(w, bits, group_size)
    assert torch.equal(res.codes, codes)
    assert torch.equal(res.scales, s) and torch.equal(res.zeros, z)


def test_layer_with_isotropic_calibration_equals_rtn():
    # X = 3·I（N = in 行）⇒ H = 2·9/N · I：通过 from_float 的完整路径，也逐位等于 RTN
    lin = nn.Linear(128, 40)
    layer = GPTQLinear.from_float(lin, calib_inputs=3.0 * torch.eye(128), group_size=32)
    codes, s, z = rtn_groupwise(lin.weight, 4, 32)
    assert torch.equal(layer.codes(), codes)
    assert torch.equal(layer.dequantize(), dequantize_groupwise(codes, s.float(), z.float(), 32))


# ---------------------------------------------------------------------------------------------------
# 证明：懒批量只是重排了同一组运算；Cholesky 形式 = 逐步高斯消元的 OBS
# ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("group_size", [32, 128, None])
def test_block_size_does_not_change_the_result(group_size):
    w = torch.randn(64, 256, generator=_gen(2))
    h = _correlated_hessian(256)
    full = gptq_quantize(w, h, group_size=group_size, block_size=256)
    full_w = dequantize_groupwise(full.codes, full.scales, full.zeros, group_size or 256, torch.float64)
    for block_size in (128, 48, 7):  # 48、7 不是组大小的倍数：组参数要补上块内欠的补偿
        res = gptq_quantize(w, h, group_size=group_size, block_size=block_size)
        res_w = dequantize_groupwise(res.codes, res.scales, res.zeros, group_size or 256, torch.float64)
        assert torch.equal(res.codes, full.codes), block_size
        assert (res_w - full_w).abs().max().item() <= 1e-5
        assert res.loss == pytest.approx(full.loss, rel=1e-9)


def _naive_obs(w: torch.Tensor, h: torch.Tensor, bits: int, group_size: int, percdamp: float):
    """逐列 OBS：显式维护剩余坐标的 H_F⁻¹（每步一次高斯消元），补偿 δ = −(w_j − q_j)/[H⁻¹]_jj · H⁻¹_{j,:}。"""
    w = w.double().clone()
    h = h.double().clone()
    h.diagonal().add_(percdamp * h.diagonal().mean())
    h_inv = torch.linalg.inv(h)
    n = w.shape[1]
    out = torch.zeros_like(w)
    loss = 0.0
    for j in range(n):
        if j % group_size == 0:
            scale, zero = group_qparams(w[:, j:j + group_size], bits)
        q = scale * (quantize_with_qparams(w[:, j], scale, zero, bits) - zero)
        d = h_inv[j, j]
        loss += ((w[:, j] - q) ** 2).sum().item() / (2 * d.item())
        w[:, j:] -= ((w[:, j] - q) / d)[:, None] * h_inv[j, j:][None, :]
        out[:, j] = q
        h_inv = h_inv - h_inv[:, j:j + 1] @ h_inv[j:j + 1, :] / d  # 消去第 j 个坐标
    return out, loss


def test_cholesky_form_equals_naive_obs_elimination():
    w = torch.randn(24, 64, generator=_gen(3))
    h = _correlated_hessian(64, seed=3)
    naive_w, naive_loss = _naive_obs(w, h, 4, 16, 0.01)
    res = gptq_quantize(w, h, group_size=16, block_size=24)
    ours = dequantize_groupwise(res.codes, res.scales, res.zeros, 16, torch.float64)
    assert (ours - naive_w).abs().max().item() <= 1e-9
    assert res.loss == pytest.approx(naive_loss, rel=1e-9)


@pytest.mark.parametrize("act_order", [False, True])
def test_accumulated_loss_equals_quadratic_objective(act_order):
    # OBS 每步的 ΔE 相加 = 最终的 ½ Σ_行 (w − q)(H + λI)(w − q)ᵀ（目标恰好是二次的，每步都是精确最优）
    w = torch.randn(32, 128, generator=_gen(4))
    h = _correlated_hessian(128, seed=4)
    res = gptq_quantize(w, h, group_size=32, act_order=act_order)
    dw = w.double() - dequantize_groupwise(res.codes, res.scales, res.zeros, 32, torch.float64)
    h_damp = h + res.damp * torch.eye(128, dtype=torch.float64)
    objective = 0.5 * torch.einsum("oi,ij,oj->", dw, h_damp, dw).item()
    assert res.loss == pytest.approx(objective, rel=1e-8)


# ---------------------------------------------------------------------------------------------------
# 质量：toy MLP 512 → 2048 → 1024，10 批校准
# ---------------------------------------------------------------------------------------------------


def test_toy_mlp_output_sqnr_beats_rtn():
    torch.manual_seed(0)
    fc1, fc2, act = nn.Linear(512, 2048), nn.Linear(2048, 1024), nn.GELU()
    batch = 256
    x = toy_activations(12 * batch, 512, generator=_gen(5))
    x_cal, x_test = x[: 10 * batch], x[10 * batch:]
    with torch.no_grad():
        cases = {"fc1": (fc1, x_cal, x_test), "fc2": (fc2, act(fc1(x_cal)), act(fc1(x_test)))}
        for name, (lin, xc, xt) in cases.items():
            layer = GPTQLinear.from_float(lin, calib_inputs=list(xc.split(batch)), bits=4, group_size=128)
            ref = lin(xt)
            codes, s, z = rtn_groupwise(lin.weight, 4, 128)
            rtn = F.linear(xt, dequantize_groupwise(codes, s, z, 128), lin.bias)
            gptq_db, rtn_db = sqnr(ref, layer(xt)), sqnr(ref, rtn)
            assert gptq_db > 25.0, (name, gptq_db)
            assert gptq_db > rtn_db + 3.0, (name, gptq_db, rtn_db)


def test_act_order_is_not_worse_when_diag_h_varies():
    torch.manual_seed(6)
    lin = nn.Linear(256, 96)
    x = toy_activations(1536, 256, generator=_gen(6), channel_spread=2.0)
    xc, xt = x[:1024], x[1024:]
    h, _ = hessian_from_calibration(xc, 256)
    diag = h.diagonal()
    assert diag.max() / diag.min() > 100  # 这个例子里 diag(H) 确实差异很大
    with torch.no_grad():
        ref = lin(xt)
        plain = GPTQLinear.from_float(lin, calib_inputs=xc, group_size=64)
        ordered = GPTQLinear.from_float(lin, calib_inputs=xc, group_size=64, act_order=True)
        err_plain = (ref - plain(xt)).pow(2).mean().item()
        err_ordered = (ref - ordered(xt)).pow(2).mean().item()
    assert err_ordered <= err_plain
    assert ordered.gptq_loss <= plain.gptq_loss


def test_dead_input_channels_give_exact_zero_columns():
    lin = nn.Linear(64, 16)
    x = toy_activations(256, 64, generator=_gen(7))
    x[:, [3, 40]] = 0.0
    layer = GPTQLinear.from_float(lin, calib_inputs=x, group_size=32)
    w = layer.dequantize()
    assert torch.isfinite(w).all()
    assert torch.equal(w[:, [3, 40]], torch.zeros(16, 2))


# ---------------------------------------------------------------------------------------------------
# 接口：state_dict 往返、dtype、坏输入
# ---------------------------------------------------------------------------------------------------


def test_state_dict_round_trip_through_safetensors(tmp_path):
    lin = nn.Linear(128, 32)
    x = toy_activations(256, 128, generator=_gen(8))
    layer = GPTQLinear.from_float(lin, calib_inputs=x, bits=3, group_size=64, act_order=True)
    save_file(layer.state_dict(), tmp_path / "layer.safetensors")
    fresh = GPTQLinear.empty(128, 32, True, **layer.options())
    fresh.load_state_dict(load_file(tmp_path / "layer.safetensors"))
    assert fresh.qweight.dtype == torch.uint8 and fresh.qweight.shape == (32, 64)
    assert torch.equal(fresh(x[:5]), layer(x[:5]))
    y16 = layer(x[:5].bfloat16())
    assert y16.dtype == torch.bfloat16
    assert torch.allclose(y16.float(), layer(x[:5]), rtol=0.05, atol=0.05)


def test_bad_calibration_and_options_raise_clear_errors():
    lin = nn.Linear(64, 16)
    good = torch.randn(128, 64, generator=_gen(9))
    with pytest.raises(ValueError, match="calib_inputs"):
        GPTQLinear.from_float(lin, group_size=32)
    with pytest.raises(ValueError, match="in_features=64"):
        GPTQLinear.from_float(lin, calib_inputs=torch.randn(128, 63), group_size=32)
    with pytest.raises(ValueError, match="少于所需的 64"):
        GPTQLinear.from_float(lin, calib_inputs=good[:20], group_size=32)
    bad = good.clone()
    bad[5, 7] = math.nan
    with pytest.raises(ValueError, match="NaN"):
        GPTQLinear.from_float(lin, calib_inputs=[good, bad], group_size=32)
    with pytest.raises(ValueError, match="group_size=48 不整除 in_features=64"):
        GPTQLinear.from_float(lin, calib_inputs=good, group_size=48)
    with pytest.raises(ValueError, match="bits=2"):
        GPTQLinear.from_float(lin, calib_inputs=good, bits=2, group_size=32)
    with pytest.raises(ValueError, match="nn.Linear"):
        GPTQLinear.from_float(nn.Embedding(10, 64), calib_inputs=good)
    indefinite = -torch.eye(64, dtype=torch.float64)
    with pytest.raises(ValueError, match="percdamp"):
        gptq_quantize(lin.weight, indefinite, group_size=32, percdamp=0.0)
    # 显式放宽 token 下限后，token 少于列数也能跑（靠阻尼）
    layer = GPTQLinear.from_float(lin, calib_inputs=good[:20], group_size=32, min_tokens=16)
    assert torch.isfinite(layer.dequantize()).all()


@requires_cuda
def test_cuda_layer_matches_cpu():
    # 同一算法在 GPU 上（cuSOLVER 的 Cholesky、float64）：码几乎全同，输出误差与 CPU 同级
    lin = nn.Linear(256, 128)
    x = toy_activations(1024, 256, generator=_gen(10))
    cpu = GPTQLinear.from_float(lin, calib_inputs=x, group_size=64, act_order=True)
    gpu = GPTQLinear.from_float(lin.cuda(), calib_inputs=x.cuda(), group_size=64, act_order=True)
    assert gpu.qweight.is_cuda
    assert (gpu.codes().cpu() == cpu.codes()).float().mean() > 0.999
    with torch.no_grad():
        ref = lin(x.cuda()).cpu()
        assert abs(sqnr(ref, gpu(x.cuda()).cpu()) - sqnr(ref, cpu.cuda()(x.cuda()).cpu())) < 0.1


# ---------------------------------------------------------------------------------------------------
# 练习模式（utils/exercise_parts/quantization.py）用的专项测试：Hessian、H⁻¹ 的 Cholesky 因子、RTN 网格与 torchao 对照
# ---------------------------------------------------------------------------------------------------


def test_hessian_is_two_xtx_over_n_accumulated_over_batches():
    # 缩放 H 不改变 GPTQ 的码（阻尼按 mean(diag H) 取），所以 2/N 与 float64 累加要单独核对
    from inference_engine.quantization.gptq import hessian_from_calibration

    x = torch.randn(3, 50, 16, generator=_gen(12))                       # (B, T, in)：按 token 展平
    flat = x.reshape(-1, 16)
    expected = 2.0 * flat.double().T @ flat.double() / flat.shape[0]
    for calib in (x, [flat[:7], flat[7:100], flat[100:]]):               # 一个张量，或不等长的一串批
        h, n = hessian_from_calibration(calib, 16)
        assert n == 150 and h.dtype == torch.float64 and h.shape == (16, 16)
        torch.testing.assert_close(h, expected, rtol=1e-12, atol=1e-12)  # fp32 累加会差 ~1e-7


def test_inverse_hessian_cholesky_is_the_upper_factor_of_the_damped_inverse():
    from inference_engine.quantization.gptq import _inverse_hessian_cholesky

    h = _correlated_hessian(32, seed=13)
    before = h.clone()
    u, damp = _inverse_hessian_cholesky(h, 0.05)
    assert damp == pytest.approx(0.05 * h.diagonal().mean().item(), rel=1e-12)
    assert torch.equal(h, before)                                        # 不原地改调用者的 H
    assert u.dtype == torch.float64 and torch.equal(u, u.triu()) and (u.diagonal() > 0).all()
    h_damp = h + damp * torch.eye(32, dtype=torch.float64)
    inv = torch.linalg.inv(h_damp)
    torch.testing.assert_close(u.T @ u, inv, rtol=1e-9, atol=1e-9 * inv.abs().max().item())
    with pytest.raises(ValueError, match="percdamp"):
        _inverse_hessian_cholesky(-torch.eye(8, dtype=torch.float64), 0.0)


def test_rtn_groupwise_qparams_equal_torchao_asymmetric_and_codes_follow_the_formula():
    qp = pytest.importorskip("torchao.quantization.quant_primitives")
    w = torch.randn(24, 128, generator=_gen(11), dtype=torch.float64)
    w[2, 32:64] = w[2, 32:64].abs() + 0.5                                # 全正的一组：区间仍要把 0 包进来
    w[5, :32] = -w[5, :32].abs() - 0.5                                   # 全负的一组
    for bits, gs in [(4, 32), (3, 64), (8, 128)]:
        maxq = 2**bits - 1
        codes, s, z = rtn_groupwise(w, bits, gs)
        # torchao 的整数零点非对称约定：s = (max⁺ − min⁻)/(q_max − q_min)，z = q_min − round(min⁻/s)
        s_ref, z_ref = qp.choose_qparams_affine(w, qp.MappingType.ASYMMETRIC, (1, gs), torch.uint8, 0, maxq,
                                                eps=torch.finfo(torch.float64).eps, scale_dtype=torch.float64,
                                                zero_point_dtype=torch.int32)
        s_ref, z_ref = s_ref.reshape(24, -1), z_ref.reshape(24, -1).double()
        assert s.dtype == torch.float64 and torch.equal(s, s_ref) and torch.equal(z, z_ref)
        wg = w.reshape(24, -1, gs)
        q_ref = torch.clamp(torch.round(wg / s_ref[..., None]) + z_ref[..., None], 0, maxq).reshape(24, 128)
        assert codes.dtype == torch.uint8 and torch.equal(codes.double(), q_ref)
        w_hat = (s_ref[..., None] * (q_ref.reshape(24, -1, gs) - z_ref[..., None])).reshape(24, 128)
        assert torch.equal(dequantize_groupwise(codes, s, z, gs, torch.float64), w_hat)
