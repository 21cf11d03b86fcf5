"""刘二第 01–07 讲"多少算好"：基线由脚本现算且算得对（用独立的写法再算一遍对照）、打印的结果行带着基线与
默认配置的实测范围、图的坐标轴（x、y 都有标签；横轴从 1 开始，或从 0 开始时那是训练前的值；图例不挡数据、
纵轴不截掉数据）、注释里的数字（正规方程把条件数平方、GD/SGD 的收缩因子、作业模型的谱半径与发散学习率、
可分数据上 loss ∝ 1/t 与最大间隔 2.5、float32 的舍入尺度、SGD 比 Adam 慢得多）。"""

from __future__ import annotations

import math

import matplotlib

matplotlib.use("Agg")
import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from matplotlib.backends.backend_agg import FigureCanvasAgg

from tests.conftest import horizontal_lines as _hlines
from tests.conftest import liu2_lecture as lecture


def _legend_outside(fig, ax) -> bool:
    """图例整块落在坐标区之外（不会挡住任何数据）。"""
    renderer = FigureCanvasAgg(fig).get_renderer()  # save_figure 关掉了图：重新挂一个 Agg 画布来量尺寸
    leg, box = ax.get_legend().get_window_extent(renderer), ax.get_window_extent(renderer)
    return not leg.overlaps(box)


# ----------------------------------------------------------------------------- 01 概述
def test_l01_baselines_and_report_line():
    m = lecture(1)
    x_tr, y_tr = m.make_data(m.N_TRAIN, seed=0)
    x_te, y_te = m.make_data(m.N_TEST, seed=1)
    base = m.baselines(x_tr, y_tr, x_te, y_te)
    _, test_err = m.degree_sweep(x_tr, y_tr, x_te, y_te, 3)
    # "预测训练集均值"就是 0 次多项式：两种算法得到同一个数
    assert base["mean"] == pytest.approx(sum((b - y_tr.sum() / len(y_tr)) ** 2 for b in y_te) / len(y_te))
    assert base["mean"] == pytest.approx(test_err[0], rel=1e-9)
    assert base["noise"] == 0.0625
    assert base["truth"] == pytest.approx(np.mean([(b - math.sin(2 * math.pi * a)) ** 2 for a, b in zip(x_te, y_te)]))
    line = m.report_line(3, test_err[3], base, (0.06, 0.13))
    assert "0.7531" in line and "σ² = 0.0625" in line and "0.0510" in line and "0.06–0.13" in line


def test_l01_spread_over_training_sets_matches_numpy_polyfit():
    m = lecture(1)
    x_te, y_te = m.make_data(m.N_TEST, seed=1)
    best = []
    for i in range(20):  # 独立的写法：numpy.polynomial 的 polyfit（它自己缩放列再解最小二乘）
        x, y = m.make_data(m.N_TRAIN, seed=100 + i)
        errs = [np.mean((np.polynomial.polynomial.polyval(2 * x_te - 1, np.polynomial.polynomial.polyfit(2 * x - 1, y, d))
                         - y_te) ** 2) for d in range(8)]  # 最佳次数总在 ≤ 5：高次不影响最小值
        best.append(min(errs))
    p10, p90 = m.best_test_mse_spread(x_te, y_te)
    np.testing.assert_allclose((p10, p90), np.percentile(best, [10, 90]), rtol=1e-6)
    assert f"{p10:.2f}–{p90:.2f}" == "0.06–0.13"  # 模块文档与打印行里的范围
    # 默认种子的最佳 3 次 0.074 落在这个范围里：它是一份"正常"的训练集
    x_tr, y_tr = m.make_data(m.N_TRAIN, seed=0)
    _, test_err = m.degree_sweep(x_tr, y_tr, x_te, y_te, m.MAX_DEGREE)
    assert int(np.argmin(test_err)) == 3 and p10 < min(test_err) < p90 and min(test_err) == pytest.approx(0.074, abs=5e-4)


def test_l01_conditioning_claims():
    m = lecture(1)
    x, _ = m.make_data(m.N_TRAIN, seed=0)
    for d in (3, 6, 9):
        phi = m.design_matrix(x, d)
        # 正规方程 ΦᵀΦ 的条件数 = Φ 条件数的平方
        assert np.linalg.cond(phi.T @ phi) == pytest.approx(np.linalg.cond(phi) ** 2, rel=1e-4)
        # 先把 x 映射到 [−1, 1]：条件数比直接用 x ∈ [0, 1] 的幂小得多
        assert np.linalg.cond(phi) < np.linalg.cond(np.vander(x, d + 1, increasing=True)) / 10


def test_l01_figure_axes_baselines_and_off_scale_points():
    m = lecture(1)
    x_tr, y_tr = m.make_data(m.N_TRAIN, seed=0)
    x_te, y_te = m.make_data(m.N_TEST, seed=1)
    train_err, test_err = m.degree_sweep(x_tr, y_tr, x_te, y_te, 11)
    base = m.baselines(x_tr, y_tr, x_te, y_te)
    fig = m.plot(x_tr, y_tr, {1: m.fit_polynomial(x_tr, y_tr, 1)}, train_err, test_err, base)
    ax1, ax2 = fig.axes
    assert ax1.get_xlabel() and ax1.get_ylabel() and ax2.get_xlabel() == "polynomial degree" and ax2.get_ylabel() == "MSE"
    curve = ax2.get_lines()[0]
    assert curve.get_xdata()[0] == 0 and len(curve.get_xdata()) == 12  # 横轴是次数 0..11
    assert base["mean"] in _hlines(ax2) and base["noise"] in _hlines(ax2)
    # 11 次的训练误差 ~1e-23 低于纵轴下限：画成底边上的标记并写出数值，而不是悄悄截掉
    assert train_err[11] < m.Y_FLOOR and ax2.get_ylim()[0] == m.Y_FLOOR
    assert any("off scale" in t.get_text() for t in ax2.texts)
    assert _legend_outside(fig, ax1)


# ----------------------------------------------------------------------------- 02 线性模型
def test_l02_mean_baseline_and_zero_minimum():
    m = lecture(2)
    assert m.mean_baseline(m.Y_DATA) == pytest.approx(8 / 3) == pytest.approx(np.var(2 * m.X_DATA + 1))
    for step in (0.1, 0.02):  # SMOKE 与默认的网格都含精确解：最小 MSE 为 0（打印行的"应为 0"）
        ws = np.arange(0.0, 4.0 + 1e-9, step)
        assert m.grid_search_w(m.X_DATA, m.Y_DATA, ws)[1].min() < 1e-20
        *_, surface = m.grid_search_wb(m.X_DATA, 2 * m.X_DATA + 1, ws, np.arange(-2.0, 4.0 + 1e-9, step))
        assert surface.min() < 1e-20
    ws = np.arange(0.0, 4.0 + 1e-9, 0.1)
    _, _, surface = m.grid_search_wb(m.X_DATA, m.Y_DATA, ws, ws)
    fig = m.plot(ws, m.grid_search_w(m.X_DATA, m.Y_DATA, ws)[1], ws, ws, surface, m.mean_baseline(m.Y_DATA))
    for ax in fig.axes[:2]:
        assert ax.get_xlabel() and ax.get_ylabel()
    assert _hlines(fig.axes[0]) == [pytest.approx(8 / 3)]


# ----------------------------------------------------------------------------- 03 梯度下降
def test_l03_costs_follow_the_contraction_factors():
    m = lecture(3)
    x, y = m.X_DATA, m.Y_DATA
    assert m.gd_factor(x) == pytest.approx(0.90667, abs=1e-5) and m.sgd_epoch_factor(x) == pytest.approx(0.7393, abs=1e-4)
    assert m.sgd_epoch_factor(x) == pytest.approx(0.98 * 0.92 * 0.82)
    for lr, epochs in ((0.01, 100), (0.01, 30), (0.05, 20)):
        _, gd = m.gradient_descent(x, y, lr=lr, epochs=epochs)
        _, sgd = m.stochastic_gradient_descent(x, y, lr=lr, epochs=epochs)
        assert len(gd) == len(sgd) == epochs + 1 and gd[0] == pytest.approx(14 / 3)  # [0] 是训练前（w = 1）
        assert gd[-1] == pytest.approx(m.predicted_cost(x, y, m.gd_factor(x, lr), epochs), rel=1e-6)
        assert sgd[-1] == pytest.approx(m.predicted_cost(x, y, m.sgd_epoch_factor(x, lr), epochs), rel=0.05)
    # 模块文档里的数：默认 100 个 epoch 后 GD 1.4e-8、SGD 2.7e-26
    assert m.predicted_cost(x, y, m.gd_factor(x), 100) == pytest.approx(1.44e-8, rel=0.01)
    assert m.predicted_cost(x, y, m.sgd_epoch_factor(x), 100) == pytest.approx(2.72e-26, rel=0.01)
    # 有噪声（不过原点）的数据上 cost(w*) > 0：理论值把它加上
    y_noisy = y + np.array([0.3, -0.2, 0.1])
    _, gd = m.gradient_descent(x, y_noisy, epochs=40)
    assert gd[-1] == pytest.approx(m.predicted_cost(x, y_noisy, m.gd_factor(x), 40), rel=1e-9)


def test_l03_history_ends_with_final_cost_and_figure_starts_at_zero():
    m = lecture(3)
    w, gd = m.gradient_descent(m.X_DATA, m.Y_DATA, epochs=10)
    w_ref, ref = m.torch_gradient_descent(m.X_DATA, m.Y_DATA, epochs=10)
    assert gd[-1] == pytest.approx(m.cost(m.X_DATA, m.Y_DATA, w), abs=1e-15)
    np.testing.assert_allclose(gd, ref, atol=1e-12)
    _, sgd = m.stochastic_gradient_descent(m.X_DATA, m.Y_DATA, epochs=10)
    fig = m.plot(gd, sgd, float(np.var(m.Y_DATA)))
    ax = fig.axes[0]
    line = ax.get_lines()[0]
    assert line.get_xdata()[0] == 0 and line.get_xdata()[-1] == 10  # 0 = 训练前，10 = 10 个 epoch 之后
    assert "before training" in ax.get_xlabel() and ax.get_ylabel() == "cost (MSE)"
    assert _hlines(ax) == [pytest.approx(8 / 3)]


# ----------------------------------------------------------------------------- 04 反向传播
def _sgd_epochs(m, theta, lr, epochs):
    """纯 Python 的作业模型 SGD（用手推梯度），返回每个 epoch 的平均样本损失。"""
    w1, w2, b = theta
    out = []
    for _ in range(epochs):
        total = 0.0
        for x, y in zip(m.X_DATA.tolist(), m.Y_DATA.tolist()):
            loss, g1, g2, gb = m.quadratic_forward_backward(x, y, w1, w2, b)
            w1, w2, b = w1 - lr * g1, w2 - lr * g2, b - lr * gb
            total += loss
        out.append(total / 3)
    return out, (w1, w2, b)


def test_l04_epoch_map_spectral_radius_and_divergence_lr():
    m = lecture(4)
    # 零损失解唯一：3×3 的范德蒙德方程组
    np.testing.assert_allclose(np.linalg.solve([[1, 1, 1], [4, 2, 1], [9, 3, 1]], [2, 4, 6]), [0, 2, 0], atol=1e-12)
    # 一个 epoch 的 SGD 对误差的作用 = quadratic_epoch_map
    e = np.array([0.3, -0.7, 0.4])
    _, theta = _sgd_epochs(m, (0 + e[0], 2 + e[1], 0 + e[2]), 0.01, 1)
    np.testing.assert_allclose(np.array(theta) - [0, 2, 0], m.quadratic_epoch_map(0.01) @ e, atol=1e-12)
    # 模块文档里的数：ρ = 0.99943，最慢方向 ≈ ±(0.16, −0.72, 0.67)，Hessian 条件数约 5000，发散的 lr ≈ 0.030
    rho = m.epoch_contraction(0.01)
    assert rho == pytest.approx(0.99943, abs=1e-5)
    vals, vecs = np.linalg.eig(m.quadratic_epoch_map(0.01))
    slow = np.real(vecs[:, np.argmax(np.abs(vals))])
    np.testing.assert_allclose(np.abs(slow), [0.16, 0.72, 0.67], atol=0.01)
    assert np.sign(slow[1]) != np.sign(slow[2])  # w2 和 b 此消彼长
    phis = np.array([[x * x, x, 1.0] for x in (1.0, 2.0, 3.0)])
    assert np.linalg.cond(phis.T @ phis) == pytest.approx(5030, rel=0.01)
    lr_max = m.divergence_lr()
    assert lr_max == pytest.approx(0.0302, abs=1e-4)
    # 用真的 SGD 验证：比它小一点收敛，大一点发散；lr = 0.01 时后期 loss 每 epoch 乘 ρ²
    assert _sgd_epochs(m, (1.0, 1.0, 1.0), lr_max * 0.97, 600)[0][-1] < 1e-2
    assert _sgd_epochs(m, (1.0, 1.0, 1.0), lr_max * 1.05, 600)[0][-1] > 1e3
    losses, _ = _sgd_epochs(m, (1.0, 1.0, 1.0), 0.01, 1500)
    assert losses[-1] / losses[-2] == pytest.approx(rho**2, abs=1e-5)


def test_l04_figure_starts_at_epoch_one():
    m = lecture(4)
    history, _ = m.train_quadratic(epochs=20)
    fig = m.plot(history, float(m.Y_DATA.var(unbiased=False)))
    ax = fig.axes[0]
    line = ax.get_lines()[0]
    assert line.get_xdata()[0] == 1 and line.get_xdata()[-1] == 20  # history[i] 是第 i + 1 个 epoch 里的平均损失
    assert ax.get_xlabel() == "epoch" and ax.get_ylabel()
    assert _hlines(ax) == [pytest.approx(8 / 3)]


# ----------------------------------------------------------------------------- 05 PyTorch 线性回归
def test_l05_baselines_and_reduction_claim():
    m = lecture(5)
    base = m.baselines()
    assert base["mean"] == pytest.approx((2 - 4) ** 2 + 0 + (6 - 4) ** 2)
    # float32 的 ulp：2 在 [2, 4) 里是 2^-22，4 与 6 在 [4, 8) 里是 2^-21；半个 ulp 的平方和
    assert base["float32"] == pytest.approx(2.0**-46 + 2 * 2.0**-44) == pytest.approx(1.28e-13, rel=0.01)
    # reduction="sum" 的梯度是 mean 的 N 倍（模块文档："等效学习率也大 N 倍"）
    model = m.LinearModel()
    grads = []
    for red in ("sum", "mean"):
        model.zero_grad()
        nn.MSELoss(reduction=red)(model(m.X_DATA), m.Y_DATA).backward()
        grads.append(torch.cat([p.grad.flatten() for p in model.parameters()]))
    torch.testing.assert_close(grads[0], 3 * grads[1])


def test_l05_history_includes_final_loss_and_figure_hides_nothing():
    m = lecture(5)
    histories = {}
    for name in ("SGD", "Rprop", "LBFGS"):
        model, h = m.train(name, epochs=150)
        assert len(h) == 151
        with torch.no_grad():
            assert h[-1] == pytest.approx(nn.MSELoss(reduction="sum")(model(m.X_DATA), m.Y_DATA).item(), rel=1e-6)
        histories[name] = h
    fig = m.plot(histories, m.baselines())
    ax = fig.axes[0]
    assert ax.get_lines()[0].get_xdata()[0] == 0 and "0 = before training" in ax.get_xlabel() and ax.get_ylabel()
    lo = min(min(h) for h in histories.values())
    assert ax.get_ylim()[0] <= lo  # 纵轴不截掉掉到最底下的曲线（以前截在 1e-12）
    assert _legend_outside(fig, ax)


# ----------------------------------------------------------------------------- 06 逻辑回归
def test_l06_baselines_match_bceloss_on_constant_predictions():
    m = lecture(6)
    base = m.baselines()
    y = m.Y_DATA
    bce_sum = nn.BCELoss(reduction="sum")
    assert base["chance"] == pytest.approx(bce_sum(torch.full_like(y, 0.5), y).item(), rel=1e-6)
    assert base["prior"] == pytest.approx(bce_sum(torch.full_like(y, 1 / 3), y).item(), rel=1e-6)
    assert base["chance"] == pytest.approx(2.079, abs=1e-3) and base["prior"] == pytest.approx(1.910, abs=1e-3)
    assert base["majority"] == pytest.approx(2 / 3)
    # p = 1/3 是最好的常数：别的常数都更差
    for c in (0.2, 0.3, 0.4, 0.5):
        assert bce_sum(torch.full_like(y, c), y).item() > base["prior"]
    # nn.BCELoss 把 log 截断到 −100：全错时 loss 正好是 100
    assert nn.BCELoss()(torch.tensor([0.0]), torch.tensor([1.0])).item() == 100.0


def test_l06_separable_loss_decays_like_one_over_t_and_boundary_tends_to_2_5():
    m = lecture(6)
    model, history = m.train(epochs=500)
    with torch.no_grad():
        assert history[-1] == pytest.approx(nn.BCELoss(reduction="sum")(model(m.X_DATA), m.Y_DATA).item(), rel=1e-6)
    # 独立的 float64 numpy 整批梯度下降，从同一个初始化出发；前 500 步与脚本一致，再跑到 40000 步看渐近行为
    init, _ = m.train(epochs=0)
    w, b = init.linear.weight.item(), init.linear.bias.item()
    x, y = m.X_DATA[:, 0].double().numpy(), m.Y_DATA[:, 0].double().numpy()
    losses = []
    for _ in range(40000):
        p = 1 / (1 + np.exp(-(w * x + b)))
        losses.append(-np.sum(y * np.log(p) + (1 - y) * np.log1p(-p)))
        w, b = w - m.LR * np.sum((p - y) * x), b - m.LR * np.sum(p - y)
    assert losses[499] == pytest.approx(history[499], rel=1e-4)
    assert losses[39999] == pytest.approx(0.0147, rel=0.02)  # 模块文档：loss 趋于 0 但到不了
    assert losses[19999] / losses[39999] == pytest.approx(2.0, abs=0.05)  # t 翻倍、loss 减半：∝ 1/t
    assert 2.47 < -b / w < 2.5  # 越训越靠近最大间隔的 2.5


def test_l06_figure_labels_and_base_rate():
    m = lecture(6)
    model, _ = m.train(epochs=50)
    fig = m.plot(model, 2.4, 1 / 3)
    ax = fig.axes[0]
    assert ax.get_xlabel() == "hours of study (h)" and ax.get_ylabel() == "P(pass | hours)"
    assert pytest.approx(1 / 3) in _hlines(ax) and 0.5 in _hlines(ax)
    assert _legend_outside(fig, ax)


# ----------------------------------------------------------------------------- 07 多维输入
@pytest.fixture(scope="module")
def cancer():
    m = lecture(7)
    X, y = m.load_offline()
    return m, m.split_and_standardize(X, y)


def _newton_logreg(X: np.ndarray, y: np.ndarray, C: float = 1.0, iters: int = 30) -> np.ndarray:
    """sklearn LogisticRegression 默认的目标：½‖w‖² + C·Σ logloss（截距不罚），用牛顿法解。"""
    A = np.hstack([X, np.ones((len(X), 1))])
    theta = np.zeros(A.shape[1])
    reg = np.eye(A.shape[1])
    reg[-1, -1] = 0.0
    for _ in range(iters):
        p = 1 / (1 + np.exp(-A @ theta))
        grad = reg @ theta + C * A.T @ (p - y)
        hess = reg + C * (A.T * (p * (1 - p))) @ A
        theta -= np.linalg.solve(hess, grad)
    return theta


def test_l07_baselines_match_independent_computation(cancer):
    m, (X_tr, y_tr, X_te, y_te) = cancer
    ytr, yte = y_tr[:, 0].numpy(), y_te[:, 0].numpy()
    # 多数类：训练集里多的那一类（这里是良性 = 1），在测试集上的准确率；不是"测试集里多的那一类"
    label = 1.0 if ytr.sum() * 2 >= len(ytr) else 0.0
    assert m.majority_baseline(y_tr, y_te) == pytest.approx(np.mean(yte == label))
    assert m.majority_baseline(y_tr, y_te) == pytest.approx(0.648, abs=1e-3)
    theta = _newton_logreg(X_tr.double().numpy(), ytr)
    pred = (np.hstack([X_te.double().numpy(), np.ones((len(yte), 1))]) @ theta > 0).astype(float)
    assert m.linear_baseline(X_tr, y_tr, X_te, y_te) == pytest.approx(np.mean(pred == yte), abs=1 / len(yte) + 1e-9)
    assert m.linear_baseline(X_tr, y_tr, X_te, y_te) == pytest.approx(0.979, abs=1e-3)
    p = ytr.mean()
    assert m.entropy_baseline(y_tr) == pytest.approx(F.binary_cross_entropy(torch.full((len(ytr),), float(p)),
                                                                            y_tr[:, 0]).item(), rel=1e-5)
    line = m.report_line(0.965, {"majority": 0.648, "linear": 0.979}, "sklearn breast_cancer")
    assert "瞎猜 0.500" in line and "多数类 0.648" in line and "0.979" in line and "0.96–0.97" in line
    assert "未测量" in m.report_line(0.7, {"majority": 0.65, "linear": 0.77}, "diabetes.csv.gz")


def test_l07_accuracy_trace_starts_before_training_and_figure(cancer):
    m, (X_tr, y_tr, X_te, y_te) = cancer
    torch.manual_seed(0)
    untrained = m.MultiDimModel(X_tr.shape[1])
    _, losses, test_acc = m.train(X_tr, y_tr, X_te, y_te, epochs=60)
    assert len(losses) == 61 and [e for e, _ in test_acc] == [0, 50, 60]
    assert test_acc[0][1] == m.accuracy(untrained, X_te, y_te)  # 第 0 个点是训练前的模型
    base = {"majority": 0.648, "linear": 0.979, "entropy": m.entropy_baseline(y_tr)}
    fig = m.plot(losses, test_acc, "sklearn breast_cancer", base)
    ax1, ax2 = fig.axes
    assert ax1.get_lines()[0].get_xdata()[0] == 0 and ax2.get_lines()[0].get_xdata()[0] == 0
    assert all("before training" in ax.get_xlabel() for ax in (ax1, ax2))
    assert ax1.get_ylabel() == "train BCE loss" and ax2.get_ylabel() == "test accuracy"
    assert {0.979, 0.648, 0.5} <= set(_hlines(ax2))


def test_l07_plain_sgd_is_much_slower_than_adam(cancer):
    """注释里的话："同样 lr = 0.01 的整批 SGD 要约 8300 步才到 0.1，Adam 约 140 步"——这里只跑前 200 步对照。"""
    m, (X_tr, y_tr, _, _) = cancer
    final = {}
    for name, cls in (("sgd", torch.optim.SGD), ("adam", torch.optim.Adam)):
        torch.manual_seed(0)
        model = m.MultiDimModel(X_tr.shape[1])
        opt = cls(model.parameters(), lr=m.LR)
        for _ in range(200):
            loss = F.binary_cross_entropy(model(X_tr), y_tr)
            opt.zero_grad()
            loss.backward()
            opt.step()
        final[name] = loss.item()
    assert final["adam"] < 0.1 < 0.6 < final["sgd"]
