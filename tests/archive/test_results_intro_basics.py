"""入门课（01_Linear_Models、02_MLP）与 Kaggle 实验打印的"多少算好"、图的坐标轴与注释里的数字：

- 线性回归：只预测均值的 MSE = var(y)；噪声下限 σ²(n−d−1)/n 与蒙特卡洛一致；打印行带着基线与默认范围；
  损失曲线的横轴从 0（训练前）开始。
- 逻辑回归：常数预测 H(ȳ)、多数类、真实后验（贝叶斯最优）的 logit 与 scipy 的高斯密度一致，总体贝叶斯准确率
  Φ(2.5/1.8) ≈ 91.8% 与大样本一致；训练出的模型在新数据上不比真实后验好。
- 张量自动微分：瞎猜 / 多数类 / 线性分类器的测试准确率；打印行；图。
- 手推反向传播：线性 softmax 基线 = 同一配方下用 autograd 训练的无隐藏层模型；MLP 明显好于它。
- 初始化：均场理论与闭式解（relu）、与大宽度模拟（tanh）一致；打印行带理论值与 10 个种子的范围；横轴从第 1 层开始。
- 信息论：精度对照打印 float64 的 ε；图的坐标轴。
- micrograd：损失曲线横轴从 0 开始、带 ln 2 基线。
- Kaggle：隐藏测试集上的多数类基线；EDA 与 CV 图的 x、y 轴都有标签。
"""

from __future__ import annotations

import collections
import math

import matplotlib

matplotlib.use("Agg")
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from scipy.stats import multivariate_normal, norm
from sklearn.datasets import load_digits, make_moons
from sklearn.dummy import DummyClassifier
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import log_loss

from tests.conftest import load_script

INTRO = "archive/Introductory learning"


@pytest.fixture(scope="module")
def lin():
    return load_script(f"{INTRO}/01_Linear_Models/01_linear_regression.py")


@pytest.fixture(scope="module")
def log():
    return load_script(f"{INTRO}/01_Linear_Models/02_logistic_regression.py")


@pytest.fixture(scope="module")
def mg():
    return load_script(f"{INTRO}/02_MLP/01_micrograd.py")


@pytest.fixture(scope="module")
def ta():
    return load_script(f"{INTRO}/02_MLP/02_tensor_autograd.py")


@pytest.fixture(scope="module")
def mb():
    return load_script(f"{INTRO}/02_MLP/03_manual_backprop.py")


@pytest.fixture(scope="module")
def init():
    return load_script(f"{INTRO}/02_MLP/04_init_and_norm.py")


@pytest.fixture(scope="module")
def info():
    return load_script(f"{INTRO}/02_MLP/05_information_theory.py")


@pytest.fixture(scope="module")
def comp():
    return load_script("archive/kaggle/breast_cancer_competition.py")


def _labelled(ax) -> bool:
    return bool(ax.get_xlabel().strip()) and bool(ax.get_ylabel().strip())


# ----------------------------------------------------------------------------- 线性回归
def test_linear_regression_mean_baseline_is_variance_and_noise_floor_matches_monte_carlo(lin):
    X, y, _, _ = lin.make_data(50, 3, seed=0)
    base = lin.mse_baselines(X, y)
    assert base["mean"] == pytest.approx(np.mean((y - y.mean()) ** 2), rel=1e-12)
    # 噪声下限：200 份独立数据上最小二乘训练集 MSE 的平均（lstsq，与课上的正规方程无关）
    mses = []
    for seed in range(200):
        X, y, _, _ = lin.make_data(50, 3, seed=1000 + seed)
        Xb = np.column_stack([X, np.ones(len(X))])
        r = Xb @ np.linalg.lstsq(Xb, y, rcond=None)[0] - y
        mses.append(r @ r / len(y))
    assert base["noise_floor"] == pytest.approx(np.mean(mses), rel=0.05)  # σ² = 0.09 本身会差 8%
    assert base["noise_floor"] == pytest.approx(0.3**2 * 46 / 50)


def test_linear_regression_prints_mse_beside_baselines(lin, monkeypatch, capsys):
    solve_all = lin.solve_all
    monkeypatch.setattr(lin, "N_SAMPLES", 64)
    monkeypatch.setattr(lin, "solve_all", lambda X, y: solve_all(X, y, steps=100))
    lin.main()
    out = capsys.readouterr().out
    for d in (1, 5):
        X, y, _, _ = lin.make_data(64, d, seed=d)
        Xb = np.column_stack([X, np.ones(len(X))])
        r = Xb @ np.linalg.lstsq(Xb, y, rcond=None)[0] - y
        line = next(s for s in out.splitlines() if s.strip().startswith(f"训练集 MSE {r @ r / len(y):.4f}"))
        assert f"var(y) {np.var(y):.4f}" in line and f"{0.09 * (64 - d - 1) / 64:.4f}" in line
        assert "默认配置 n=500 约 0.08–0.10" in line


def test_linear_regression_loss_axis_starts_before_training(lin):
    X, y, _, _ = lin.make_data(40, 1, seed=1)
    results = lin.solve_all(X, y, steps=30)
    fig = lin.plot(X, y, results)
    ax_fit, ax_loss = fig.axes
    assert _labelled(ax_fit) and _labelled(ax_loss)
    curves = [ln for ln in ax_loss.get_lines() if len(ln.get_xdata()) > 2]
    assert len(curves) == 3
    for line in curves:
        assert line.get_xdata()[0] == 0 and line.get_xdata()[-1] == 29
        assert line.get_ydata()[0] == pytest.approx(np.mean(y**2))  # 第 0 步：θ = 0 时的 MSE
    assert any(np.allclose(ln.get_ydata(), np.var(y)) for ln in ax_loss.get_lines())  # var(y) 基线


# ----------------------------------------------------------------------------- 逻辑回归
def test_logistic_baselines_match_independent_computations(log):
    X, y = log.make_blobs(300, seed=4)
    base = log.baselines(X, y)
    assert base["constant_loss"] == pytest.approx(log_loss(y, np.full(len(y), y.mean())), rel=1e-9)
    assert base["majority_acc"] == pytest.approx(DummyClassifier(strategy="most_frequent").fit(X, y).score(X, y))
    mu0, mu1 = log.CENTERS
    cov = log.SPREAD**2 * np.eye(2)
    logit = multivariate_normal(mu1, cov).logpdf(X) - multivariate_normal(mu0, cov).logpdf(X)  # 先验相等
    np.testing.assert_allclose(log.bayes_optimal_logit(X), logit, atol=1e-10)
    assert base["bayes_loss"] == pytest.approx(log_loss(y, 1 / (1 + np.exp(-logit))), rel=1e-9)
    assert base["bayes_acc_population"] == pytest.approx(norm.cdf(math.hypot(2.0, 1.5) / 1.8), abs=1e-12)
    assert base["bayes_acc_population"] == pytest.approx(0.9176, abs=1e-4)  # 课文里的 91.8%


def test_logistic_fit_is_not_better_than_the_true_posterior_on_fresh_data(log):
    X, y = log.make_blobs(600, seed=0)
    w, b, _ = log.fit_gradient_descent(X, y, steps=300)
    Xn, yn = log.make_blobs(100_000, seed=123)
    fresh = log.baselines(Xn, yn)
    assert fresh["bayes_acc"] == pytest.approx(fresh["bayes_acc_population"], abs=0.004)
    assert log.bce_with_logits(Xn @ w + b, yn) >= fresh["bayes_loss"] - 1e-3
    assert log.accuracy(w, b, Xn, yn) <= fresh["bayes_acc"] + 0.002


def test_logistic_prints_loss_and_accuracy_beside_baselines(log, monkeypatch, capsys):
    gd, ref = log.fit_gradient_descent, log.fit_torch
    monkeypatch.setattr(log, "N_SAMPLES", 200)
    monkeypatch.setattr(log, "fit_gradient_descent", lambda X, y: gd(X, y, steps=60))
    monkeypatch.setattr(log, "fit_torch", lambda X, y: ref(X, y, steps=60))
    log.main()
    out = capsys.readouterr().out
    X, y = log.make_blobs(200)
    p = y.mean()
    loss_line = next(s for s in out.splitlines() if s.startswith("最终 loss="))
    assert f"H(ȳ)={-(p * np.log(p) + (1 - p) * np.log(1 - p)):.4f}" in loss_line and "约 0.17–0.24" in loss_line
    acc_line = next(s for s in out.splitlines() if s.startswith("训练集准确率"))
    assert f"多数类 {max(p, 1 - p):.1%}" in acc_line and "总体 91.8%" in acc_line and "约 89%–93%" in acc_line
    fig = log.plot(X, y, *gd(X, y, steps=5), ref(X, y, steps=5)[2])
    ax = fig.axes[1]
    assert _labelled(ax) and ax.get_lines()[0].get_xdata()[0] == 0
    assert ax.get_lines()[0].get_ydata()[0] == pytest.approx(math.log(2))


# ----------------------------------------------------------------------------- micrograd
def test_micrograd_loss_curve_starts_at_step_0_with_chance_line(mg):
    X, y = make_moons(12, noise=0.1, random_state=0)
    model = mg.MLP(2, [3, 1])
    losses = mg.train(model, X, y, 3)
    fig = mg.plot(model, X, y, losses)
    ax = fig.axes[0]
    assert _labelled(ax) and _labelled(fig.axes[1])
    curve = ax.get_lines()[0]
    assert list(curve.get_xdata()) == [0, 1, 2] and list(curve.get_ydata()) == losses
    assert any(np.allclose(ln.get_ydata(), math.log(2)) for ln in ax.get_lines()[1:])


# ----------------------------------------------------------------------------- 张量自动微分
def test_tensor_autograd_baselines_match_sklearn_and_counting(ta):
    Xtr, ytr, Xte, yte = ta.digits_split()
    Xtr, ytr = Xtr[:400], ytr[:400]
    base = ta.baselines(Xtr, ytr, Xte, yte)
    most_common = collections.Counter(ytr.tolist()).most_common(1)[0][0]
    assert base["chance"] == 0.1
    assert base["majority"] == pytest.approx(sum(int(t == most_common) for t in yte) / len(yte))
    assert base["linear"] == pytest.approx(LogisticRegression(max_iter=2000).fit(Xtr, ytr).score(Xte, yte))
    assert 0.9 < base["linear"] < 0.99 and base["majority"] < 0.15


def test_tensor_autograd_prints_test_accuracy_beside_baselines(ta, capsys):
    result = ta.main(["--epochs", "1", "--hidden", "16"])
    out = capsys.readouterr().out
    line = next(s for s in out.splitlines() if s.startswith("测试准确率"))
    base = result["baselines"]
    assert f"瞎猜 10%，多数类 {base['majority']:.1%}，线性分类器 {base['linear']:.1%}" in line
    assert "digits 默认配置约 97%–99%" in line and "≥ 95%" not in line


def test_tensor_autograd_loss_figure(ta):
    fig = ta.plot_losses([2.3, 1.0, 0.5], [2.3, 1.0, 0.5], "digits", 0.9)
    (ax,) = fig.axes
    assert _labelled(ax) and "nats" in ax.get_ylabel()
    assert ax.get_lines()[0].get_xdata()[0] == 0  # losses[0] 是训练前的 loss
    assert any(np.allclose(ln.get_ydata(), math.log(10)) for ln in ax.get_lines())


# ----------------------------------------------------------------------------- 手推反向传播
def _digits():
    d = load_digits()
    return torch.from_numpy(d.data / 16.0), torch.from_numpy(d.target).long()


def test_linear_softmax_baseline_is_the_same_recipe_without_hidden_layer(mb):
    X, y = _digits()
    steps, lr = 40, 0.2
    ours = mb.linear_baseline_losses(X, y, steps, lr)
    # 独立实现：同样的初始化与抽样种子，nn.functional + autograd 的线性 softmax 回归
    (W, b), = mb.init_params([64, 10], seed=0)
    W, b = W.clone().requires_grad_(), b.clone().requires_grad_()
    g = torch.Generator().manual_seed(0)
    ref = []
    for _ in range(steps):
        idx = torch.randint(len(X), (64,), generator=g)
        loss = F.cross_entropy(X[idx] @ W + b, y[idx])
        W.grad = b.grad = None
        loss.backward()
        with torch.no_grad():
            W -= lr * W.grad
            b -= lr * b.grad
        ref.append(loss.item())
    np.testing.assert_allclose(ours, ref, rtol=1e-10)


def test_mlp_beats_linear_baseline_and_chance(mb):
    X, y = _digits()
    mlp = mb.tail_loss(mb.train(mb.init_params([64, 64, 10]), X, y, 200, 0.2, "tanh", use_autograd=False))
    linear = mb.tail_loss(mb.linear_baseline_losses(X, y, 200, 0.2))
    assert mlp < 0.7 * linear and linear < 0.5 * math.log(10)  # 200 步时实测 0.25 vs 0.48，ln 10 = 2.30


def test_manual_backprop_prints_loss_beside_baselines(mb, monkeypatch, capsys):
    monkeypatch.setattr(mb, "STEPS", 30)
    mb.main()
    out = capsys.readouterr().out
    X, y = _digits()
    linear = mb.tail_loss(mb.linear_baseline_losses(X, y, 30, 0.2))
    line = next(s for s in out.splitlines() if "最后 20 步平均" in s)
    assert f"瞎猜 ln10 = {math.log(10):.3f}" in line and f"线性 softmax 回归 {linear:.3f}" in line
    assert "默认配置约 0.06–0.09" in line


# ----------------------------------------------------------------------------- 初始化：均场理论
def test_mean_field_matches_relu_closed_forms(init):
    c = math.sqrt(1 - 1 / math.pi)  # z ~ N(0, v)：std(relu z) = √(v/2 · (1 − 1/π))
    np.testing.assert_allclose(init.mean_field_stds("kaiming", "relu", 5, 512), [c] * 5, rtol=1e-6)
    np.testing.assert_allclose(init.mean_field_stds("xavier", "relu", 5, 512), [c * 2 ** (-k / 2) for k in range(1, 6)],
                               rtol=1e-6)
    np.testing.assert_allclose(init.mean_field_stds("N(0, 1)", "relu", 3, 512, batchnorm=True), [c / math.sqrt(2)] * 3,
                               rtol=1e-6)
    # 小初始化的 tanh 几乎是线性的：每层 std × √(n·σ²)
    small = init.mean_field_stds("N(0, 0.01)", "tanh", 3, 100)
    np.testing.assert_allclose(small, [0.1 ** (k + 1) for k in range(3)], rtol=0.02)


@pytest.mark.parametrize("cfg", [("xavier", "tanh"), ("N(0, 1)", "tanh")])  # 缓慢衰减；饱和（近似阶跃）
def test_mean_field_matches_wide_simulation_for_tanh(init, cfg):
    sim = init.activation_stds(*cfg, depth=4, width=1024, seed=0)
    # 宽 1024 时实测与理论只差 0.3% 以内；饱和的 tanh 近似阶跃，粗网格（201 点）积分会差 1.2%
    np.testing.assert_allclose(sim, init.mean_field_stds(*cfg, 4, 1024), rtol=0.005)


def test_init_depth_experiment_prints_theory_and_range_and_starts_at_layer_1(init):
    configs = [("kaiming", "relu", False), ("N(0, 0.01)", "relu", True)]
    fig, lines = init.run_depth_experiment(configs, depth=4, width=64)
    assert "均场理论 0.826" in lines[0] and "10 个种子 0.503–0.96" in lines[0]
    assert "均场理论 0.584" in lines[1] and "10 个种子 0.591–0.602" in lines[1]
    (ax,) = fig.axes
    assert _labelled(ax)
    for line in ax.get_lines():
        if len(line.get_xdata()):
            assert line.get_xdata()[0] == 1 and line.get_xdata()[-1] == 4
    assert ax.get_legend().get_bbox_to_anchor().x0 > ax.get_window_extent().x1 - 1  # 图例在坐标区之外


# ----------------------------------------------------------------------------- 信息论
def test_information_theory_prints_eps_and_labels_axes(info, monkeypatch, capsys):
    monkeypatch.setattr(info, "N_CHECKS", 300)
    info.main()
    out = capsys.readouterr().out
    assert f"float64 的 ε = {np.finfo(np.float64).eps:.1e}" in out and "默认配置约 7e-15" in out
    assert "（对称的话是 0）" in out
    fig = info.plot()
    assert all(_labelled(ax) for ax in fig.axes)
    assert fig.axes[0].get_lines()[0].get_ydata().max() == pytest.approx(1.0, abs=1e-4)  # 二元熵的最大值 1 bit


# ----------------------------------------------------------------------------- Kaggle
def test_kaggle_holdout_majority_baseline_and_figures(comp):
    out = comp.run_experiment(n_folds=2, mlp_epochs=5, gb_iters=5, make_plots=False)
    train, test = comp.train_test_split_stratified(comp.load_competition_data())
    dummy = DummyClassifier(strategy="most_frequent").fit(train.drop(columns=comp.TARGET), train[comp.TARGET])
    expected = dummy.score(test.drop(columns=comp.TARGET), test[comp.TARGET])
    assert out["holdout"]["majority_acc"] == pytest.approx(expected) and 0.6 < expected < 0.7
    assert f"准确率 {expected:.4f}）" in out["report_path"].read_text(encoding="utf-8")
    fig = comp.plot_cv(out["results"], out["ablation"])
    assert all(_labelled(ax) for ax in fig.axes) and "AUC" in fig.axes[0].get_ylabel()
    features = [c for c in train.columns if c not in ("id", comp.TARGET)]
    corr = train[features].corrwith(train[comp.TARGET]).sort_values(key=np.abs, ascending=False)
    fig = comp.plot_eda(train, features, corr, train[features].skew().sort_values(ascending=False))
    assert all(_labelled(ax) for ax in fig.axes if ax.get_label() != "<colorbar>")
