"""AWQ：α = 0 逐位等于 RTN；10% 通道激活大 10 倍的层上输出误差明显小于 RTN；搜索在校准 token 上不差于 RTN；
网格的正齐次性（归一化不改变结果）；截断只减小组误差；forward 与等效权重一致；state_dict 往返；坏输入报错。"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import nn

from inference_engine.quantization._groupwise import dequantize_groupwise, rtn_groupwise
from inference_engine.quantization.awq import (
    AWQLinear,
    awq_search_clip,
    awq_search_scale,
    fake_quantize,
    salient_activations,
)
from tests.conftest import requires_cuda


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _mse(a: torch.Tensor, b: torch.Tensor) -> float:
    return (a.double() - b.double()).pow(2).mean().item()


def test_alpha_zero_without_clip_is_rtn_exactly():
    lin = nn.Linear(256, 64)
    x, _ = salient_activations(300, 256, generator=_gen(1))
    layer = AWQLinear.from_float(lin, calib_inputs=x, alpha=0.0, clip=False, group_size=64)
    codes, s, z = rtn_groupwise(lin.weight, 4, 64)
    assert torch.equal(layer.input_scale, torch.ones(256))
    assert torch.equal(layer.codes(), codes)
    assert torch.equal(layer.scales, s.float()) and torch.equal(layer.zeros, z.float())
    with torch.no_grad():
        assert torch.equal(layer(x), F.linear(x, dequantize_groupwise(codes, s.float(), z.float(), 64), lin.bias))


@pytest.mark.parametrize("bits,clip", [(4, False), (4, True), (3, True)])
def test_salient_channels_output_error_clearly_below_rtn(bits, clip):
    torch.manual_seed(2)
    lin = nn.Linear(512, 256)
    x, salient = salient_activations(1536, 512, generator=_gen(2), frac=0.1, factor=10.0)
    xc, xt = x[:1024], x[1024:]
    with torch.no_grad():
        ref = lin(xt)
        rtn = AWQLinear.from_float(lin, calib_inputs=xc, bits=bits, alpha=0.0, clip=False)
        awq = AWQLinear.from_float(lin, calib_inputs=xc, bits=bits, clip=clip)
        err_rtn, err_awq = _mse(ref, rtn(xt)), _mse(ref, awq(xt))
    assert awq.search.alpha > 0
    assert err_awq <= 0.9 * err_rtn, (err_awq, err_rtn)       # 实测约 0.78–0.86
    # 缩放保护的正是大激活的通道：它们的等效权重误差变小
    dw_rtn = (lin.weight - rtn.dequantize())[:, salient].pow(2).mean()
    dw_awq = (lin.weight - awq.dequantize())[:, salient].pow(2).mean()
    assert dw_awq < dw_rtn


def test_search_is_never_worse_than_rtn_on_calibration_tokens():
    w = torch.randn(96, 128, generator=_gen(3))
    x, _ = salient_activations(400, 128, generator=_gen(4))
    res = awq_search_scale(w, x, group_size=32, n_grid=20)
    assert res.alphas == [i / 20 for i in range(20)]
    assert min(res.losses) == res.losses[res.alphas.index(res.alpha)]
    # losses[0]（α = 0）就是 RTN 的输出误差：独立地算一遍对照
    xs = x[:: math.ceil(400 / 512)]
    codes, s, z = rtn_groupwise(w, 4, 32)
    rtn_loss = _mse(xs @ w.T, xs @ dequantize_groupwise(codes, s, z, 32).T)
    assert res.losses[0] == pytest.approx(rtn_loss, rel=1e-4)
    assert res.losses[res.alphas.index(res.alpha)] < res.losses[0]


def test_grid_is_positively_homogeneous_so_normalizing_s_is_harmless():
    # Q(c·W) = c·Q(W)（c 是 2 的幂时逐位相同）：s 整体乘常数不改变 AWQ 的结果
    w = torch.randn(16, 64, generator=_gen(5))
    assert torch.equal(fake_quantize(4.0 * w, 4, 32), 4.0 * fake_quantize(w, 4, 32))


def test_clip_search_only_lowers_each_group_error():
    w = torch.randn(32, 128, generator=_gen(6))
    x = torch.randn(256, 128, generator=_gen(7))
    max_val = awq_search_clip(w, x, group_size=32)
    org_max = w.reshape(32, 4, 32).abs().amax(-1)
    assert (max_val <= org_max).all() and (max_val >= 0.5 * org_max).all()
    assert (max_val < org_max).float().mean() > 0.2    # 相当一部分组选择了截断

    def group_err(wq):
        dw = (w - wq.float()).reshape(32, 4, 32)
        return torch.einsum("tgk,ogk->otg", x.reshape(256, 4, 32), dw).pow(2).mean(1)

    err_clip, err_plain = group_err(fake_quantize(w, 4, 32, max_val)), group_err(fake_quantize(w, 4, 32))
    assert (err_clip <= err_plain * (1 + 1e-5)).all()
    assert err_clip.sum() < err_plain.sum()


def test_forward_equals_effective_weight_and_state_dict_round_trip(tmp_path):
    lin = nn.Linear(128, 48)
    x, _ = salient_activations(200, 128, generator=_gen(8))
    layer = AWQLinear.from_float(lin, calib_inputs=x, group_size=32, bits=3)
    with torch.no_grad():
        y = layer(x)
        assert torch.allclose(y, F.linear(x, layer.dequantize(), lin.bias), rtol=1e-5, atol=1e-5)
    save_file(layer.state_dict(), tmp_path / "awq.safetensors")
    fresh = AWQLinear.empty(128, 48, True, **layer.options())
    fresh.load_state_dict(load_file(tmp_path / "awq.safetensors"))
    assert set(fresh.state_dict()) == {"qweight", "scales", "zeros", "bias", "input_scale"}
    with torch.no_grad():
        assert torch.equal(fresh(x), y)
        y16 = layer(x.bfloat16())
    assert y16.dtype == torch.bfloat16
    assert torch.allclose(y16.float(), y, rtol=0.05, atol=0.1)


def test_bad_calibration_and_options_raise_clear_errors():
    lin = nn.Linear(64, 16)
    good = torch.randn(128, 64, generator=_gen(9))
    with pytest.raises(ValueError, match="calib_inputs"):
        AWQLinear.from_float(lin, group_size=32)
    with pytest.raises(ValueError, match="in_features=64"):
        AWQLinear.from_float(lin, calib_inputs=torch.randn(128, 32), group_size=32)
    with pytest.raises(ValueError, match="少于所需的 64"):
        AWQLinear.from_float(lin, calib_inputs=good[:10], group_size=32)
    bad = good.clone()
    bad[0, 0] = math.inf
    with pytest.raises(ValueError, match="NaN / Inf"):
        AWQLinear.from_float(lin, calib_inputs=bad, group_size=32)
    with pytest.raises(ValueError, match="浮点"):
        AWQLinear.from_float(lin, calib_inputs=good.long(), group_size=32)
    with pytest.raises(ValueError, match="alpha"):
        AWQLinear.from_float(lin, calib_inputs=good, group_size=32, alpha=1.5)
    with pytest.raises(ValueError, match="不整除"):
        AWQLinear.from_float(lin, calib_inputs=good, group_size=40)
    with pytest.raises(ValueError, match="nn.Linear"):
        AWQLinear.from_float(nn.Conv1d(64, 16, 1), calib_inputs=good)


@requires_cuda
def test_cuda_layer_matches_cpu():
    lin = nn.Linear(256, 128)
    x, _ = salient_activations(512, 256, generator=_gen(10))
    cpu = AWQLinear.from_float(lin, calib_inputs=x, group_size=64)
    gpu = AWQLinear.from_float(lin.cuda(), calib_inputs=x.cuda(), group_size=64)
    assert gpu.search.alpha == cpu.search.alpha
    assert torch.allclose(gpu.input_scale.cpu(), cpu.input_scale, rtol=1e-5)
    assert (gpu.codes().cpu() == cpu.codes()).float().mean() > 0.999


# ---------------------------------------------------------------------------------------------------
# 练习模式（utils/exercise_parts/quantization.py）用的专项测试：fake_quantize = 逐组 RTN 再反量化（可选先截断）
# ---------------------------------------------------------------------------------------------------


def test_fake_quantize_is_rtn_then_dequantize_with_optional_clip():
    w = torch.randn(12, 64, generator=_gen(11))
    for bits, gs in ((4, 32), (3, 64), (8, 16)):
        codes, s, z = rtn_groupwise(w, bits, gs)
        out = fake_quantize(w, bits, gs)
        assert out.dtype == torch.float64 and out.shape == (12, 64)
        assert torch.equal(out, dequantize_groupwise(codes, s, z, gs, torch.float64))
    max_val = w.reshape(12, 2, 32).abs().amax(-1) * 0.7                 # 每组截到 70% 的最大幅度
    m = max_val.repeat_interleave(32, dim=1)
    codes, s, z = rtn_groupwise(torch.maximum(torch.minimum(w, m), -m), 4, 32)
    assert torch.equal(fake_quantize(w, 4, 32, max_val), dequantize_groupwise(codes, s, z, 32, torch.float64))
