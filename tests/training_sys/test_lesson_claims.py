"""training_sys 各课的数字说法：打印在指标旁边的基线与预期值、docstring 里的数，都由这里独立地重新算一遍。

每个测试用与课程代码不同的办法（numpy、纯 Python 计数、直接模拟）得到同一个数，再与课程函数 / docstring 比较：
SGD 的收缩率与闭式解、AdamW 偏差修正的放大倍数、解耦衰减的预期、Lion 课的回归基线、Newton–Schulz 的奇异值范围、
高斯梯度范数的典型值、fp16 下溢比例、ZeRO 每个 rank 的字节数、loss 曲线的坐标轴与基线、预训练与 make run 的基线与实测范围、
cpu 预设里 lm_head 与主干的大小、Llama-2-7B 的参数张量个数。全部单进程、不下载。
"""

from __future__ import annotations

import math
import re
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch

from training_sys.optimization.adamw import AdamW, bias_correction_ratio
from training_sys.optimization.clipping import expected_gaussian_norm
from training_sys.optimization.lion import regression_baselines
from training_sys.optimization.mixed_precision import fp16_underflow_fraction
from training_sys.optimization.muon import CUBIC_COEFFICIENTS, NS_COEFFICIENTS, newton_schulz_figure, scalar_iteration
from training_sys.optimization.sgd import SGD, contraction_rate, quadratic_curvatures, quadratic_distance

REPO = Path(__file__).resolve().parents[2]


# ---------------------------------------------------------------------------
# optimization
# ---------------------------------------------------------------------------
def test_sgd_contraction_rates_match_gd_and_heavy_ball_theory_and_the_closed_form():
    # GD：最慢方向 h = 1/κ 每步乘 1 − 1/κ；heavy ball 欠阻尼时特征根的模长是 √μ（与 κ 无关）
    assert contraction_rate(1.0) == pytest.approx(1 - 1 / 100, abs=1e-8)  # h 是 fp32 的 logspace
    assert contraction_rate(1.0, momentum=0.9) == pytest.approx(math.sqrt(0.9), abs=1e-9)
    # GD 在二次函数上有闭式解：每个坐标乘 (1 − h_i)^n，距离 = sqrt(Σ (1 − h_i)^(2n))
    h = np.logspace(-2, 0, 10)
    for n in (50, 150):
        closed = math.sqrt(float(np.sum((1 - h) ** (2 * n))))
        assert quadratic_distance(lambda x: SGD([x], lr=1.0), n) == pytest.approx(closed, rel=1e-5)
    assert np.allclose(quadratic_curvatures().numpy(), h, rtol=1e-6)
    # 课上打印的量级：默认 150 步 GD 0.236，动量把距离再缩小两个数量级以上，Nesterov 又比 heavy ball 小
    gd = quadratic_distance(lambda x: SGD([x], lr=1.0), 150)
    hb = quadratic_distance(lambda x: SGD([x], lr=1.0, momentum=0.9), 150)
    nest = quadratic_distance(lambda x: SGD([x], lr=1.0, momentum=0.9, nesterov=True), 150)
    assert gd > 100 * hb > 100 * nest
    for rate, measured in ((contraction_rate(1.0, momentum=0.9), hb),
                           (contraction_rate(1.0, momentum=0.9, nesterov=True), nest)):
        assert 0.1 < measured / (math.sqrt(10) * rate**150) < 10  # "起点 × ρ^n 同量级"


def test_adamw_bias_correction_amplification_matches_the_docstring():
    # 直接模拟：梯度恒为 g 时，不修正的 m/sqrt(v) 与修正后的比值
    b1, b2, g = 0.9, 0.999, 0.37
    m = v = 0.0
    ratios = []
    for _ in range(1000):
        m, v = b1 * m + (1 - b1) * g, b2 * v + (1 - b2) * g * g
        ratios.append((m / math.sqrt(v)) / (g / abs(g)))  # 修正后 m̂/sqrt(v̂) = sign(g)
    assert ratios[0] == pytest.approx((1 - b1) / math.sqrt(1 - b2)) == pytest.approx(3.16, abs=0.005)
    assert [bias_correction_ratio(t) for t in (1, 12, 1000)] == pytest.approx([ratios[0], ratios[11], ratios[999]])
    assert int(np.argmax(ratios)) + 1 == 12 and max(ratios) == pytest.approx(6.6, abs=0.05)  # "t ≈ 12 时约 6.6 倍"
    above = [t for t, r in enumerate(ratios, 1) if r > 3]
    assert above == list(range(1, 118))  # "直到 t ≈ 117 都在 3 倍以上"
    assert ratios[999] == pytest.approx(1.26, abs=0.005)


def _alternating(opt_factory) -> list[float]:
    p = torch.nn.Parameter(torch.ones(2))
    opt = opt_factory(p)
    for i in range(100):
        p.grad = (1.0 if i % 2 == 0 else -1.0) * torch.tensor([1.0, 0.01])
        opt.step()
    return p.detach().tolist()


def test_adamw_decoupled_decay_is_the_lambda_zero_drift_times_the_plain_decay():
    base = _alternating(lambda p: AdamW([p], lr=1e-2, weight_decay=0.0))
    decoupled = _alternating(lambda p: AdamW([p], lr=1e-2, weight_decay=0.1))
    l2 = _alternating(lambda p: torch.optim.Adam([p], lr=1e-2, weight_decay=0.1))
    decay = (1 - 1e-2 * 0.1) ** 100
    assert base[0] < 0.99  # 交替梯度本身就有净移动：课上"净移动只来自权重衰减"的旧说法不成立
    assert decoupled == pytest.approx([base[0] * decay, base[1] * decay], abs=2e-3)
    assert l2[1] < 0.3 < 0.85 < l2[0]  # L2：梯度小的权重被衰减得多得多


def test_lion_regression_baselines_equal_numpy_variance_and_least_squares():
    gen = torch.Generator().manual_seed(3)
    x = torch.randn(200, 5, generator=gen)
    y = torch.sin(x @ torch.randn(5, 1, generator=gen)) + 0.3
    base = regression_baselines(x, y)
    xn, yn = x.double().numpy(), y.double().numpy()
    assert base["mean"] == pytest.approx(float(np.mean((yn - yn.mean()) ** 2)), rel=1e-12)
    design = np.hstack([xn, np.ones((200, 1))])
    coef, *_ = np.linalg.lstsq(design, yn, rcond=None)
    assert base["linear"] == pytest.approx(float(np.mean((design @ coef - yn) ** 2)), rel=1e-9)
    assert base["linear"] <= base["mean"]


def test_newton_schulz_quintic_and_cubic_ranges_in_the_docstring():
    s = torch.logspace(math.log10(3e-3), 0, 20001, dtype=torch.float64)
    out = scalar_iteration(s, NS_COEFFICIENTS, 5)
    assert out.min().item() == pytest.approx(0.68, abs=0.005) and out.max().item() == pytest.approx(1.20, abs=0.005)
    assert sum(NS_COEFFICIENTS) == pytest.approx(0.701, abs=1e-9)  # φ(1) = a + b + c
    small = torch.tensor([1e-3], dtype=torch.float64)
    assert scalar_iteration(small, NS_COEFFICIENTS, 5).item() == pytest.approx(0.47, abs=0.01)
    steps = next(n for n in range(1, 40) if scalar_iteration(small, CUBIC_COEFFICIENTS, n).item() > 0.5)
    assert steps == 16  # "s = 1e-3 要 16 步才超过 0.5"


def test_newton_schulz_figure_has_labelled_axes():
    g = torch.randn(16, 8, generator=torch.Generator().manual_seed(0))
    fig = newton_schulz_figure(g, g / g.norm())
    try:
        for ax in fig.axes:
            assert ax.get_xlabel() and ax.get_ylabel()
    finally:
        import matplotlib.pyplot as plt

        plt.close(fig)


def test_expected_gaussian_norms_match_a_simulation():
    rng = np.random.default_rng(0)
    n, sigma = 400_000, 3.0
    g = rng.standard_normal(n) * sigma
    assert np.linalg.norm(g) == pytest.approx(expected_gaussian_norm(n, sigma, 2.0), rel=5e-3)
    assert np.abs(g).sum() == pytest.approx(expected_gaussian_norm(n, sigma, 1.0), rel=5e-3)
    # 最大绝对值的中位数：重复 400 次的中位数
    maxima = np.abs(rng.standard_normal((400, 2000))).max(axis=1) * sigma
    assert np.median(maxima) == pytest.approx(expected_gaussian_norm(2000, sigma, float("inf")), rel=0.02)
    with pytest.raises(ValueError, match="norm_type"):
        expected_gaussian_norm(10, 1.0, 3.0)


def test_fp16_underflow_fraction_matches_the_actual_conversion():
    exps = torch.linspace(-10, -2, 200_001, dtype=torch.float64)  # 对数均匀的确定网格
    for scale in (1.0, 2.0**10, 2.0**16):
        actual = ((10**exps * scale).float().half() == 0).double().mean().item()
        assert actual == pytest.approx(fp16_underflow_fraction(-10, -2, scale), abs=1e-4)
    # 边界：恰好 2^-25 舍入到 0（就近取偶），比它大一点就变成最小的次正规数 2^-24
    assert torch.tensor(2.0**-25).half().item() == 0.0
    assert torch.tensor(2.0**-25 * 1.001).half().item() == 2.0**-24


# ---------------------------------------------------------------------------
# distributed（只测单进程能算的部分：字节数公式与实际持有的存储）
# ---------------------------------------------------------------------------
def test_zero_expected_bytes_formulas_and_the_single_process_adamw_footprint():
    from training_sys.distributed.zero import expected_bytes, held_bytes

    psi = 1000
    totals = {stage: sum(expected_bytes(psi, 8, stage).values()) for stage in (0, 1, 2)}
    assert totals == {0: 16 * psi, 1: 8 * psi + 8 * psi / 8, 2: 4 * psi + 12 * psi / 8}
    assert totals[2] == 5.5 * psi  # 模块说明："w=8 时约 5.5ψ"
    # stage 0 的理论值就是单进程 AdamW 实际持有的字节数（外加每个参数一个 4 字节的 step 标量）
    model = torch.nn.Sequential(torch.nn.Linear(7, 5), torch.nn.Linear(5, 3))
    model(torch.randn(2, 7)).sum().backward()
    opt = AdamW(model.parameters(), lr=1e-3)
    opt.step()
    n = sum(p.numel() for p in model.parameters())
    theory = expected_bytes(n, 2, 0)
    n_tensors = len(list(model.parameters()))
    assert held_bytes(model.parameters()) == theory["params"]
    assert held_bytes(p.grad for p in model.parameters()) == theory["grads"]
    assert held_bytes(t for st in opt.state.values() for t in st.values()) == theory["optimizer"] + 4 * n_tensors


def test_llama2_7b_has_291_parameter_tensors_65_of_them_norms():
    from model_lab import Llama, LlamaConfig

    cfg = LlamaConfig(vocab_size=32000, hidden_size=4096, intermediate_size=11008, num_hidden_layers=32,
                      num_attention_heads=32, num_key_value_heads=32)
    with torch.device("meta"):
        params = list(Llama(cfg).parameters())
    assert len(params) == 291 and sum(p.dim() == 1 for p in params) == 65  # ddp.py 的说法
    assert all(p.numel() == 4096 for p in params if p.dim() == 1)  # fp32 16 KB 一个


# ---------------------------------------------------------------------------
# pretrain / speedrun
# ---------------------------------------------------------------------------
def test_loss_baselines_equal_an_independent_count():
    from training_sys.evaluation import loss_baselines

    rng = np.random.default_rng(1)
    train = rng.integers(0, 9, 5000)
    val = rng.integers(0, 11, 800)  # 验证集里有训练集没见过的 token：加一平滑让它们概率不为 0
    vocab = 12
    counts = Counter(train.tolist())
    expected = -sum(math.log((counts[t] + 1) / (len(train) + vocab)) for t in val.tolist()) / len(val)
    assert loss_baselines(train, val, vocab) == pytest.approx({"uniform": math.log(12), "unigram": expected}, rel=1e-12)


def test_loss_figure_axes_baselines_and_no_two_point_eval_lines():
    from training_sys.pretrain import loss_figure

    records = [{"kind": "train", "step": s, "loss": 4.0 - 0.1 * s} for s in range(1, 11)]
    records += [{"kind": "eval", "step": s, "train_loss": 3.5, "val_loss": 3.6} for s in (5, 10)]
    fig = loss_figure(records, "t", {"uniform": 4.26, "unigram": 3.30})
    try:
        ax = fig.axes[0]
        assert ax.get_xlabel() == "optimizer step" and "nats/token" in ax.get_ylabel()
        lines = {line.get_label(): line for line in ax.get_lines()}
        assert lines["train (per step)"].get_xdata()[0] == 1  # 第 1 步的 loss 记在 x = 1
        assert lines["val (eval)"].get_linestyle() == "None"  # 只有 2 次评估：画点、不连线
        flat = {round(float(line.get_ydata()[0]), 2) for line in ax.get_lines() if "baseline" in line.get_label()}
        assert flat == {4.26, 3.30}
        legend = ax.get_legend()
        assert legend is not None and legend.get_bbox_to_anchor().x0 >= ax.get_window_extent().x1 - 1  # 图例在坐标区外
    finally:
        import matplotlib.pyplot as plt

        plt.close(fig)
    records.append({"kind": "eval", "step": 15, "train_loss": 3.4, "val_loss": 3.5})
    fig = loss_figure(records, "t")
    try:
        assert {line.get_label(): line for line in fig.axes[0].get_lines()}["val (eval)"].get_linestyle() == "-"
    finally:
        import matplotlib.pyplot as plt

        plt.close(fig)


def test_pretrain_baseline_summary_names_the_baselines_and_the_measured_default():
    from training_sys.pretrain import baseline_summary

    line = baseline_summary(1.7, {"uniform": 4.2627, "unigram": 3.3017}, "default")
    assert "ln V = 4.2627" in line and "unigram = 3.3017" in line and "1.69" in line
    assert "实测" not in baseline_summary(1.7, {"uniform": 4.2627, "unigram": 3.3017}, None)


def test_speedrun_measured_range_agrees_with_results_md_and_flags_outliers():
    from training_sys.speedrun_report import MEASURED_RANGES, expected_range

    lo, hi, bpb_lo, bpb_hi, _ = MEASURED_RANGES[("shakespeare", "cpu", 2048, 1500)]
    section = (REPO / "benchmarks" / "RESULTS.md").read_text(encoding="utf-8").split("BEGIN training_speedrun")[1]
    loss = float(re.search(r"最终 val loss[^|]*\| ([0-9.]+) nats/token", section).group(1))
    bpb = float(re.search(r"val bits/byte \| ([0-9.]+)", section).group(1))
    assert lo <= loss <= hi and bpb_lo <= round(bpb, 2) <= bpb_hi
    assert "3.91–3.94" in expected_range("shakespeare", "cpu", 2048, 1500, 3.93)
    assert "在范围内" in expected_range("shakespeare", "cpu", 2048, 1500, 3.93)
    assert "范围外" in expected_range("shakespeare", "cpu", 2048, 1500, 4.5)
    assert "没有实测的参考范围" in expected_range("shakespeare", "cpu", 2048, 3000, 3.5)


def test_cpu_preset_lm_head_is_two_thirds_of_the_body_at_4096_and_larger_at_8192():
    """speedrun.auto_vocab_size 的说法：cpu 预设的模型主体（解码层里全部线性层）约是 V=4096 的 lm_head 的 1.5 倍，V=8192 时 lm_head 更大。"""
    from training_sys.pretrain import TrainConfig, build_model
    from training_sys.speedrun import PRESETS

    t = PRESETS["cpu"].train
    with torch.device("meta"):  # 只数参数，不分配内存；build_model 就是 make run 建模型的那个函数
        model = build_model(TrainConfig(**t), vocab_size=4096)
    body = sum(m.weight.numel() for m in model.model.layers.modules() if isinstance(m, torch.nn.Linear))
    d = t["n_embd"]
    assert 4096 * d / body == pytest.approx(2 / 3, abs=0.01) and 8192 * d > body
    # 预设注释：1500 步 × batch × block ≈ 307 万 token ≈ 莎士比亚训练集（156 万 token，RESULTS.md 的 speedrun 段）的 2 遍
    assert t["max_iters"] * t["batch_size"] * t["block_size"] == 3_072_000
