"""model_lab 各课打印的"多少算好"（基线、期望误差）、图的坐标轴，以及文档字符串里学习者会依赖的数字：

- basics：Linear 不带偏置时与 F.linear 逐位相等、带偏置时差在 fp32 舍入量级；每层方差比 variance_ratio 的理论值
  与实测的激活标准差一致；初始化图的横轴第 0 个点是输入本身。
- rmsnorm：fp16 输入带离群值时，升到 fp32 的结果误差在 fp16 单位舍入 2⁻¹¹ 以内，naive 的相对误差是 1。
- rope：YaRN 注释里"换一种除法顺序会差一个 ulp、位置 500 处 ~8e-6 弧度"的数字；最后一对维度的波长。
- moe：均匀随机路由的 MaxVio / 丢弃槽位（暴力枚举对照）；无辅助损失的偏置更新把默认配置的负载压到随机路由的噪声附近。
- gpt2：随机初始化的 loss 接近均匀分布的 ln V。
- 各课的图：x、y 轴都有标签，从第几步开始画有明确的约定。
"""

from __future__ import annotations

import importlib
import math

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import pytest
import torch
import torch.nn.functional as F

from utils.torch_playground import setup_seed

basics = importlib.import_module("model_lab.01_components.basics")
rmsnorm = importlib.import_module("model_lab.01_components.rmsnorm")
rope = importlib.import_module("model_lab.01_components.rope")
swiglu = importlib.import_module("model_lab.01_components.swiglu")
attention = importlib.import_module("model_lab.01_components.attention")
mla = importlib.import_module("model_lab.01_components.mla")
moe_lib = importlib.import_module("model_lab.01_components.moe")
gpt2 = importlib.import_module("model_lab.02_architectures.gpt2")


def _labelled(ax) -> bool:
    return bool(ax.get_xlabel().strip()) and bool(ax.get_ylabel().strip())


# ----------------------------------------------------------------------------- basics
@pytest.mark.parametrize("batch_shape,d_in,d_out", [((4, 128), 512, 1024), ((16,), 512, 1024), ((2, 7), 32, 48)])
def test_linear_without_bias_is_bitwise_f_linear_and_with_bias_within_fp32_rounding(batch_shape, d_in, d_out):
    setup_seed(0)
    x = torch.randn(*batch_shape, d_in)
    for bias in (False, True):
        ref = torch.nn.Linear(d_in, d_out, bias=bias)
        y, y_ref = basics.Linear.from_torch(ref)(x), ref(x)
        if not bias:
            assert torch.equal(y, y_ref)  # 同一个 GEMM
        else:  # addmm 把 b 并进累加 vs 先乘后加：只差最后一位
            rel = ((y - y_ref).abs().max() / y_ref.abs().max()).item()
            assert rel <= 4 * torch.finfo(torch.float32).eps, rel


@pytest.mark.parametrize("init,std", [("kaiming_uniform", None), ("trunc_normal", None), ("trunc_normal", 0.02),
                                      ("trunc_normal", 0.05)])
def test_variance_ratio_matches_sampled_weights_and_activation_std(init, std):
    width, depth = 256, 6
    setup_seed(1)
    w = basics.Linear(width, width, bias=False, init=init, std=std).weight.detach().double()
    assert width * w.var().item() == pytest.approx(basics.variance_ratio(init, width, std), rel=0.03)
    setup_seed(2)
    stds = basics.activation_std_by_depth(init, width, depth, std, batch=1024)
    theory = basics.variance_ratio(init, width, std) ** (depth / 2)
    assert stds[-1] / stds[0] == pytest.approx(theory, rel=0.15)


def test_variance_ratio_known_values():
    c = basics.trunc_normal_std_factor()
    assert basics.variance_ratio("kaiming_uniform", 512) == pytest.approx(1 / 3)
    assert basics.variance_ratio("trunc_normal", 512) == pytest.approx(c**2)  # ≈ 0.774
    assert basics.variance_ratio("trunc_normal", 512, 0.02) == pytest.approx(512 * 0.02**2 * c**2)  # ≈ 0.158
    assert basics.variance_ratio("trunc_normal", 512, 1 / (c * math.sqrt(512))) == pytest.approx(1.0)
    with pytest.raises(ValueError, match="kaiming_uniform, trunc_normal"):
        basics.variance_ratio("xavier", 512)


def test_init_figure_axes_are_labelled_and_start_at_the_input():
    setup_seed(0)
    fig = basics.init_figure(32, 3)
    try:
        hist, depth_ax = fig.axes
        assert _labelled(hist) and _labelled(depth_ax)
        assert "0 = input" in depth_ax.get_xlabel()
        assert depth_ax.get_yscale() == "log"
        lines = depth_ax.get_lines()
        assert len(lines) == 2 * len(basics.init_schemes(32))  # 实测 + 理论虚线
        for line in lines:
            assert list(line.get_xdata()) == [0, 1, 2, 3]
    finally:
        plt.close(fig)


# ----------------------------------------------------------------------------- rmsnorm
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_fp16_outlier_upcast_error_is_within_fp16_unit_roundoff_and_naive_is_all_wrong(seed):
    setup_seed(seed)
    d = 256
    x = torch.randn(4, d).half()
    x[:, 0] = 300.0  # 300² 超过 fp16 的最大值 65504
    truth = x.double() * torch.rsqrt(x.double().pow(2).mean(-1, keepdim=True) + 1e-6)

    def rel_err(y):
        return ((y.double() - truth).abs().max() / truth.abs().max()).item()

    assert rel_err(rmsnorm.RMSNorm(d).half()(x)) <= 2.0**-11
    assert rel_err(rmsnorm.rms_norm_naive(x, torch.ones(d, dtype=torch.float16))) == pytest.approx(1.0)


# ----------------------------------------------------------------------------- rope
def test_yarn_division_order_claim_in_the_comment():
    """yarn_inv_freq 的注释：factor 不是 2 的幂时 (1/b)/factor 与 1/(factor·b) 在部分频率上差一个 ulp，
    位置 500 处是 ~8e-6 弧度；factor 是 2 的幂时逐位相同。（与 HF 逐位相等由 tests/model_lab/test_rope.py 核对。）"""
    head_dim, theta, factor = 128, 10000.0, 3.0
    pos_freqs = theta ** (torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim)
    a, b = 1.0 / (factor * pos_freqs), 1.0 / pos_freqs / factor
    differ = (a != b).sum().item()
    assert 0 < differ < head_dim // 2
    assert ((a - b).abs() / a).max().item() <= 1.5 * torch.finfo(torch.float32).eps
    assert 1e-6 < (500 * a - 500 * b).abs().max().item() < 2e-5
    a4, b4 = 1.0 / (4.0 * pos_freqs), 1.0 / pos_freqs / 4.0  # 2 的幂：除法精确
    assert torch.equal(a4, b4)


def test_rope_last_pair_wavelength_is_2pi_base_to_the_d_minus_2_over_d():
    head_dim, theta = 128, 10000.0
    inv_freq = rope.default_inv_freq(head_dim, theta).double()
    assert 2 * math.pi / inv_freq[-1].item() == pytest.approx(2 * math.pi * theta ** ((head_dim - 2) / head_dim),
                                                              rel=1e-6)
    assert 2 * math.pi / inv_freq[0].item() == pytest.approx(2 * math.pi)


# ----------------------------------------------------------------------------- moe
def test_random_routing_baseline_matches_brute_force_on_two_experts():
    # E=2、k=1、N=2：负载 (2,0)/(1,1)/(0,2) 的概率 1/4、1/2、1/4 → MaxVio 期望 0.5；容量 1 时丢弃期望 0.5
    vio, drop = moe_lib.random_routing_baseline(2, 2, 1, capacity=1, trials=4000, seed=3)
    assert vio == pytest.approx(0.5, abs=0.04)
    assert drop == pytest.approx(0.5, abs=0.04)
    # k = E：每个专家恰好接 N 个槽位，完全均衡
    assert moe_lib.random_routing_baseline(10, 4, 4, capacity=10, trials=5) == (0.0, 0.0)
    with pytest.raises(ValueError, match="top_k"):
        moe_lib.random_routing_baseline(10, 4, 5, capacity=10)


def test_aux_loss_free_bias_update_reaches_the_random_router_noise_floor():
    """main 的默认配置（E=16、k=4、分 4 组选 2 组、N=512、u=1e-3、300 步）：更新前远高于随机路由，更新后与它相当。"""
    setup_seed(0)
    cfg = moe_lib.MoEConfig(hidden_size=32, intermediate_size=16, num_experts=16, top_k=4, router="sigmoid",
                            n_group=4, topk_group=2, n_shared_experts=1, routed_scaling_factor=2.5)
    moe = moe_lib.MoE(cfg)
    skew = torch.randn(cfg.hidden_size)
    n_tok = 512
    rand_vio, _ = moe_lib.random_routing_baseline(n_tok, cfg.num_experts, cfg.top_k, capacity=n_tok)

    def vio() -> float:
        _, _, idx = moe.gate(torch.randn(n_tok, cfg.hidden_size) + 2 * skew)
        return moe_lib.max_violation(torch.bincount(idx.flatten(), minlength=cfg.num_experts))

    with torch.no_grad():
        before = vio()
        for _ in range(300):  # 只跑路由器：负载只取决于它
            _, _, idx = moe.gate(torch.randn(n_tok, cfg.hidden_size) + 2 * skew)
            moe.update_bias(torch.bincount(idx.flatten(), minlength=cfg.num_experts), speed=1e-3)
        after = sum(vio() for _ in range(5)) / 5
    assert 0.1 < rand_vio < 0.2, rand_vio
    assert before > 5 * rand_vio, (before, rand_vio)
    assert after < 2 * rand_vio, (after, rand_vio)


def test_expert_load_figure_axes_and_step_axis_starts_at_zero_updates():
    load = torch.tensor([5, 3, 0, 8])
    fig = moe_lib.expert_load_figure(load, load.flip(0), 6, [1.0, 0.6, 0.3], 0.15)
    try:
        bars, curve = fig.axes
        assert _labelled(bars) and _labelled(curve)
        history = curve.get_lines()[0]
        assert list(history.get_xdata()) == [0, 1, 2]  # 第 0 个点：还没做任何偏置更新
        assert any(line.get_ydata()[0] == 0.15 for line in curve.get_lines()[1:])  # 随机路由的基线
    finally:
        plt.close(fig)


# ----------------------------------------------------------------------------- gpt2
@pytest.mark.parametrize("seed", [0, 1])
def test_gpt2_random_init_loss_is_just_above_uniform_ln_v(seed):
    setup_seed(seed)
    config = gpt2.GPT2Config(vocab_size=512, n_positions=128, n_embd=64, n_layer=2, n_head=4, resid_pdrop=0.0,
                             embd_pdrop=0.0, attn_pdrop=0.0)
    model = gpt2.GPT2(config).eval()
    x = torch.randint(0, config.vocab_size, (4, 64))
    with torch.no_grad():
        _, loss = model(x, F.pad(x[:, 1:], (0, 1), value=-100))
    assert math.log(512) - 0.01 < loss.item() < math.log(512) + 0.1


def test_gpt2_decode_cost_figure_axes():
    fig = gpt2.decode_cost_figure([8, 32, 64], [1.0, 1.1, 1.2], [2.0, 6.0, 11.0])
    try:
        (ax,) = fig.axes
        assert _labelled(ax) and "tokens" in ax.get_xlabel() and "ms" in ax.get_ylabel()
        assert ax.get_yscale() == "log" and len(ax.get_lines()) == 2
    finally:
        plt.close(fig)


# ----------------------------------------------------------------------------- 其余的图
def test_component_figures_label_both_axes():
    figures = [swiglu.activation_figure(), rope.spectrum_figure(head_dim=16, original=64),
               attention.attention_figure(torch.ones(3, 3, dtype=torch.bool).tril(), torch.eye(3)),
               mla.kv_cache_figure(["MHA", "MLA"], [4880.0, 68.6], 61)]
    try:
        for fig in figures:
            for ax in fig.axes:
                if ax.get_label() == "<colorbar>":
                    continue
                assert _labelled(ax), (fig.axes[0].get_title(), ax.get_title())
    finally:
        for fig in figures:
            plt.close(fig)
