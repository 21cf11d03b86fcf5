"""刘二第 08–13 讲"多少算好"：基线由脚本现算且算得对（用独立的写法再算一遍对照）、打印的结果行带着基线与
默认配置的实测范围、图的坐标轴（有 y 轴标签，横轴从 1 开始，或从 0 开始时那是训练前的值）、注释里的数字
（softmax 减 max 防溢出、hello → ohlol 的三条损失下限、梯度流的比值范围、离线数据上的基线数值）。"""

from __future__ import annotations

import collections
import math
import random

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from tests.conftest import horizontal_lines as _hlines
from tests.conftest import liu2_lecture as lecture


# ----------------------------------------------------------------------------- 08 Titanic
@pytest.fixture(scope="module")
def titanic():
    m = lecture(8)
    df = m.synthetic_titanic()
    train_set, test_set, _ = m.make_datasets(df)
    test_df = m.split_frame(df)[1]
    return m, train_set, test_set, test_df, m.titanic_baselines(train_set, test_set, test_df["p_survive_true"].to_numpy())


def test_l08_baselines_match_independent_computation(titanic):
    m, train_set, test_set, test_df, b = titanic
    y_tr, y_te = train_set.y[:, 0].double(), test_set.y[:, 0].double()
    # 多数类：训练集里多的那一类（这里是"遇难"），在测试集上数对了几个
    majority_label = 1.0 if y_tr.sum() * 2 >= len(y_tr) else 0.0
    assert b["majority"] == pytest.approx((y_te == majority_label).double().mean().item())
    # 常数模型的 BCE：直接用 torch 的 BCE 算"永远预测 p̄"
    p = y_tr.mean()
    assert b["constant_bce"] == pytest.approx(F.binary_cross_entropy(p.expand_as(y_tr), y_tr).item(), rel=1e-9)
    # 贝叶斯最优：按生成概率猜
    assert b["bayes"] == pytest.approx(((test_df["p_survive_true"] > 0.5) == (test_df["Survived"] == 1)).mean())
    # 逻辑回归：用牛顿法解同一个目标（sklearn 默认：C·Σ logloss + ½‖w‖²，C = 1，截距不罚），预测应一致
    x = torch.cat([train_set.x.double(), torch.ones(len(y_tr), 1, dtype=torch.float64)], 1)
    reg = torch.diag(torch.tensor([1.0] * train_set.x.shape[1] + [0.0], dtype=torch.float64))
    w = torch.zeros(x.shape[1], dtype=torch.float64)
    for _ in range(30):
        prob = torch.sigmoid(x @ w)
        grad = x.T @ (prob - y_tr) + reg @ w
        hess = x.T @ (x * (prob * (1 - prob))[:, None]) + reg
        w = w - torch.linalg.solve(hess, grad)
    assert grad.abs().max() < 1e-8  # 收敛到了最优点
    x_te = torch.cat([test_set.x.double(), torch.ones(len(y_te), 1, dtype=torch.float64)], 1)
    ours = ((x_te @ w > 0).double() == y_te).double().mean().item()
    assert b["logistic"] == pytest.approx(ours, abs=1 / len(y_te) + 1e-9)
    # 注释里写的数（离线合成数据，确定性）：逻辑回归 0.719、贝叶斯最优 0.702、H(p̄) ≈ ln 2
    assert b["logistic"] == pytest.approx(0.719, abs=0.001) and b["bayes"] == pytest.approx(0.702, abs=0.001)
    assert b["constant_bce"] == pytest.approx(0.693, abs=0.001)
    lo, hi = m.EXPECTED_TEST_ACC["synthetic"]
    assert b["majority"] < lo and abs(b["bayes"] - (lo + hi) / 2) < 0.03  # 实测范围落在天花板附近、远高于多数类


def test_l08_report_and_figure(titanic):
    m, *_, b = titanic
    history = [(0.67, 0.69), (0.5, 0.71), (0.475, 0.702)]
    line = m.report(history, b, m.SYNTHETIC_SOURCE, 30)
    for part in ("测试准确率 0.702", "瞎猜 0.500", f"多数类 {b['majority']:.3f}", f"逻辑回归 {b['logistic']:.3f}",
                 f"贝叶斯最优 {b['bayes']:.3f}", f"H(p̄) {b['constant_bce']:.3f}", "约 0.70–0.73"):
        assert part in line
    assert "贝叶斯" not in m.report(history, {k: v for k, v in b.items() if k != "bayes"}, "Kaggle", 30)
    fig = m.make_figure(history, b, m.SYNTHETIC_SOURCE)
    for ax in fig.axes:
        assert ax.get_xlabel() == "epoch" and ax.get_ylabel()
        assert ax.get_lines()[0].get_xdata()[0] == 1  # history[0] 是第 1 个 epoch 之后的值
    assert b["constant_bce"] in _hlines(fig.axes[0])
    assert {b["logistic"], b["majority"], b["bayes"]} <= set(_hlines(fig.axes[1]))
    plt.close(fig)


# ----------------------------------------------------------------------------- 09 softmax
def test_l09_softmax_subtracts_the_max_so_huge_logits_do_not_overflow():
    m = lecture(9)
    # exp 的溢出点：float64 ln(max) = 709.78，float32 88.72（文档字符串里写的数）
    assert math.log(torch.finfo(torch.float64).max) == pytest.approx(709.78, abs=0.005)
    assert math.log(torch.finfo(torch.float32).max) == pytest.approx(88.72, abs=0.005)
    z = torch.randn(16, 10, dtype=torch.float64, generator=torch.Generator().manual_seed(0)) * 20
    for shift, dtype in ((1000.0, torch.float64), (200.0, torch.float32)):  # 每个 logit 都过了溢出点
        big = (z + shift).to(dtype)
        assert torch.isnan(torch.exp(big) / torch.exp(big).sum(-1, keepdim=True)).all()  # 朴素写法：inf / inf
        torch.testing.assert_close(m.softmax(big), torch.softmax(big, -1))
        torch.testing.assert_close(m.log_softmax(big), torch.log_softmax(big, -1))
    torch.testing.assert_close(m.softmax(z + 1000), torch.softmax(z, -1))  # 平移不变：减 max 正是利用这一点


@pytest.fixture(scope="module")
def digits_baselines():
    m9 = lecture(9)
    train_set, test_set, name = m9.load_data()
    if not name.startswith("sklearn digits"):
        pytest.skip("装了 MNIST 时基线不同")
    return train_set, test_set, name, m9.classifier_baselines(train_set, test_set)


def test_l09_baselines_match_independent_computation(digits_baselines):
    m9, m10 = lecture(9), lecture(10)
    train_set, test_set, name, b = digits_baselines
    y_tr, y_te = train_set.tensors[1].tolist(), test_set.tensors[1].tolist()
    counts = collections.Counter(y_tr)
    top = max(counts, key=counts.get)
    assert b["majority"] == pytest.approx(sum(y == top for y in y_te) / len(y_te))
    assert b["chance"] == 0.1 and b["uniform_ce"] == pytest.approx(math.log(10))
    assert b["prior_ce"] == pytest.approx(-sum(c / len(y_tr) * math.log(c / len(y_tr)) for c in counts.values()))
    assert b["prior_ce"] <= b["uniform_ce"]
    # 线性基线：第 10 讲另写了一份（同一划分），两者必须相同；数值就是注释里的 0.967
    assert b["linear"] == pytest.approx(m10.linear_baseline(train_set, test_set))
    assert b["linear"] == pytest.approx(0.967, abs=0.001)
    lo, hi = m9.EXPECTED_TEST_ACC[name]
    assert b["majority"] < b["chance"] < lo <= b["linear"] <= hi


def test_l09_report_and_figure(digits_baselines):
    m = lecture(9)
    train_set, test_set, name, b = digits_baselines
    history = [(2.2, 0.5), (0.4, 0.9), (0.03, 0.967)]
    line = m.report(history, b, name)
    for part in ("测试准确率 0.967", "瞎猜 0.100", f"多数类 {b['majority']:.3f}", f"逻辑回归）{b['linear']:.3f}",
                 "ln 10 = 2.303", f"按类别频率猜 {b['prior_ce']:.3f}", "约 0.95–0.97"):
        assert part in line
    fig = m.make_figure(history, m.SoftmaxMLP(64, (128, 64)), test_set, name, b)
    ax1, ax2 = fig.axes[:2]
    for ax in (ax1, ax2):
        assert ax.get_xlabel() == "epoch" and ax.get_ylabel() and ax.get_lines()[0].get_xdata()[0] == 1
    assert b["uniform_ce"] in _hlines(ax1) and b["linear"] in _hlines(ax2)
    plt.close(fig)


# ----------------------------------------------------------------------------- 11 高级 CNN
def test_l11_baselines_report_grad_ratio_and_figure(digits_baselines):
    m = lecture(11)
    train_set, test_set, name, b9 = digits_baselines
    b = m.classifier_baselines(train_set, test_set)
    assert b == {k: b9[k] for k in ("chance", "majority", "linear")}  # 同一份数据、同一个定义：与第 09 讲一致
    line = m.report("ResNet", 0.982, b, name)
    for part in ("测试准确率 0.982", "瞎猜 0.100", f"逻辑回归）{b['linear']:.3f}", "基础 CNN 0.987", "约 0.93–0.99"):
        assert part in line
    # 注释里的梯度流范围：种子 0–4 的比值都在 EXPECTED_GRAD_RATIO 里，普通栈衰减 8 个数量级以上，残差栈不衰减
    (p_lo, p_hi), (r_lo, r_hi) = m.EXPECTED_GRAD_RATIO["plain"], m.EXPECTED_GRAD_RATIO["residual"]
    for seed in range(5):
        plain, res = m.input_grad_norms(residual=False, seed=seed), m.input_grad_norms(residual=True, seed=seed)
        assert p_lo * 0.95 <= plain[0] / plain[-1] <= p_hi and r_lo - 0.005 <= res[0] / res[-1] <= r_hi + 0.005
    assert "2.7e-09" in m.grad_ratio_report(*(m.input_grad_norms(residual=r, seed=0) for r in (False, True)))
    fig = m.make_figure(plain, res, {"InceptionNet": [0.5, 0.9, 0.97], "ResNet": [0.6, 0.95, 0.98]}, name, b)
    ax1, ax2 = fig.axes
    assert ax1.get_ylabel() and ax2.get_ylabel() == "test accuracy" and ax2.get_xlabel() == "epoch"
    assert all(line.get_xdata()[0] == 1 for line in ax2.get_lines()[:2]) and b["linear"] in _hlines(ax2)
    plt.close(fig)


# ----------------------------------------------------------------------------- 12 hello → ohlol
def _fit(params: list[torch.Tensor], loss_fn, steps: int = 200) -> float:
    opt = torch.optim.LBFGS(params, max_iter=steps, tolerance_grad=1e-12, tolerance_change=1e-15, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = loss_fn()
        loss.backward()
        return loss

    opt.step(closure)
    return loss_fn().item()


def test_l12_hello_baselines_are_the_optima_of_the_restricted_models():
    m = lecture(12)
    b = m.hello_baselines()
    x, y = m.encode(m.X_TEXT), m.encode(m.Y_TEXT)
    assert b["uniform"] == pytest.approx(math.log(4))
    # 无记忆：每个输入字符一行 logit 的查表模型，直接优化到最优（logit 不受限，所以只能逼近下确界）
    table = torch.zeros(4, 4, dtype=torch.float64, requires_grad=True)
    best = _fit([table], lambda: F.cross_entropy(table[x], y))
    assert best == pytest.approx(b["memoryless"], abs=1e-4) and b["memoryless"] == pytest.approx(2 * math.log(2) / 5)
    assert (table[x].argmax(1) == y).double().mean().item() == b["memoryless_acc"] == 0.8
    # logit = tanh(θ) ∈ (−1, 1)，每个时间步各自一组 θ（比任何 RNN 都自由）：最优值逼近 ln(1 + 3e^−2) = 0.341
    theta = torch.zeros(5, 4, dtype=torch.float64, requires_grad=True)
    free = _fit([theta], lambda: F.cross_entropy(torch.tanh(theta), y))
    assert b["tanh_floor"] == pytest.approx(0.3407, abs=1e-4) and b["tanh_floor"] < free < b["tanh_floor"] + 1e-3
    with pytest.raises(ValueError, match="长度"):
        m.hello_baselines("hell", "ohlol")


def test_l12_cell_stays_above_the_tanh_floor_and_figure():
    m = lecture(12)
    b = m.hello_baselines()
    pred, history = m.train_hello("cell", epochs=m.DEFAULT_EPOCHS, seed=2)  # 种子 2 学得成（种子 0、1 卡在 ohlll）
    lo, hi = m.EXPECTED_FINAL_LOSS["cell"]
    assert pred == "ohlol" and min(history) > b["tanh_floor"] and lo <= history[-1] <= hi
    line = m.report("cell", history, b)
    for part in ("ln 4 = 1.386", "只看当前字符的最优 0.277", "下限 0.341", "约 0.342–0.344"):
        assert part in line
    assert "下限" not in m.report("embedding", history, b)
    fig = m.make_figure({"cell": history, "embedding": history}, b)
    (ax,) = fig.axes
    assert ax.get_ylabel() and "0 = before training" in ax.get_xlabel()
    assert ax.get_lines()[0].get_xdata()[0] == 0  # history[0] 是训练前（第一次更新之前）的损失
    assert {b["uniform"], b["memoryless"], b["tanh_floor"]} <= set(_hlines(ax))
    plt.close(fig)


# ----------------------------------------------------------------------------- 13 名字分类
@pytest.fixture(scope="module")
def names():
    m = lecture(13)
    train_rows, test_rows, source = m.load_data()
    if source != m.OFFLINE_SOURCE:
        pytest.skip("装了真实的 names 数据时基线不同")
    return m, train_rows, test_rows, source, m.name_baselines(train_rows, test_rows)


def test_l13_baselines(names):
    m, train_rows, test_rows, _, b = names
    counts = collections.Counter(c for _, c in train_rows)
    top = max(counts, key=counts.get)
    assert b["majority"] == pytest.approx(sum(c == top for _, c in test_rows) / len(test_rows))
    assert b["chance"] == 1 / 8 and b["uniform_ce"] == pytest.approx(math.log(8))
    # 注释里的数：字母袋 0.867，加相邻字母对 0.991（高于 GRU 的实测范围）
    assert b["letters"] == pytest.approx(0.867, abs=0.001) and b["bigrams"] == pytest.approx(0.991, abs=0.001)
    assert b["bigrams"] > m.EXPECTED_TEST_ACC[m.OFFLINE_SOURCE][1] > b["letters"]
    # "字母袋"不看顺序：把每个名字的字母打乱，字母袋基线不变，加了 bigram 的会变
    rng = random.Random(0)
    shuffled = [("".join(rng.sample(n, len(n))), c) for n, c in test_rows]
    b2 = m.name_baselines(train_rows, shuffled)
    assert b2["letters"] == b["letters"] and b2["bigrams"] < b["bigrams"] - 0.05


def test_l13_report_and_figure(names):
    m, train_rows, test_rows, source, b = names
    line = m.report(0.976, b, source)
    for part in ("测试准确率 0.976", "瞎猜 0.125", f"多数类 {b['majority']:.3f}", f"字母袋逻辑回归 {b['letters']:.3f}",
                 f"加相邻字母对 {b['bigrams']:.3f}", "约 0.97–0.98"):
        assert part in line
    classes = sorted({c for _, c in train_rows})
    fig = m.make_figure([(0.86, 0.92), (0.14, 0.96), (0.06, 0.97)], np.eye(len(classes), dtype=int), classes, source, b)
    ax1, ax2, ax3 = fig.axes[:3]
    for ax in (ax1, ax2):
        assert ax.get_xlabel() == "epoch" and ax.get_ylabel() and ax.get_lines()[0].get_xdata()[0] == 1
    assert ax3.get_xlabel() == "predicted" and ax3.get_ylabel() == "true"
    assert b["uniform_ce"] in _hlines(ax1) and {b["letters"], b["bigrams"]} <= set(_hlines(ax2))
    plt.close(fig)
