"""刘二《PyTorch 深度学习实践》第 01 讲 概述：从数据中学习，以及"训练集好 ≠ 真的好"。

第 01 讲是纯概念课：机器学习 = 用**数据**拟合一个**模型**，用**损失**衡量好坏，用**优化**找参数；
真正关心的不是训练集上的误差，而是没见过的数据上的误差（泛化）。
本脚本把这句话跑出来：给带噪声的 y = sin(2πx) 拟合 1…max_degree 次多项式，
- 训练误差随次数单调下降（模型越灵活越能"背下"训练集）；
- 测试误差先降后升——次数太高就过拟合（记住了噪声）。
于是要**留出一份验证集**来挑模型，这也是后面每一讲都把数据分成 train / test 的原因。

"多好算好"：最朴素的模型是"不看 x，预测训练集的均值"（恰好就是 0 次多项式），它的测试 MSE 是要超过的基线；
反过来，数据里有标准差 σ = 0.25 的噪声，任何模型的期望测试 MSE 都不会低于 σ² = 0.0625（真函数本身也只能到这里）。
默认配置（12 个训练点、数据种子 0）：均值基线 0.753，最佳 3 次 0.074，11 次 > 1000；
换 20 份训练集时最佳测试 MSE 的 10%–90% 分位约 0.06–0.13（脚本现场算）。

多项式最小二乘的闭式解：设计矩阵 Φ_{ij} = x_i^j，w* = argmin ‖Φw − y‖² 满足正规方程 ΦᵀΦ w = Φᵀy。
直接解正规方程会把条件数平方（高次时 ΦᵀΦ 几乎奇异），所以用 QR / SVD 的 lstsq；
这里用 numpy.linalg.lstsq 解，再与 torch.linalg.lstsq 对照。

    python archive/liu2_lecture/lecture01_overview.py

图：checkpoints/figures/liu2_lecture01_overfitting.png（左：几条拟合曲线；右：训练/测试误差 vs 次数）。
"""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import torch

from utils.io import is_smoke, save_figure
from utils.lesson_cli import lesson_args
from utils.torch_playground import setup_seed, time_block

SMOKE = is_smoke()
N_TRAIN = 12
N_TEST = 200
MAX_DEGREE = 9 if SMOKE else 11
NOISE = 0.25
Y_FLOOR = 1e-5  # 误差图纵轴的下限（更小的值在底边标出）

LECTURES = [
    "01 概述（本脚本）：数据、模型、损失、优化；过拟合与验证集",
    "02 线性模型：穷举 w 画出 MSE 曲线",
    "03 梯度下降：手推梯度 vs autograd，批量 GD vs SGD",
    "04 反向传播：计算图上手动反传 vs autograd",
    "05 用 PyTorch 实现线性回归：nn.Linear + MSELoss + 各种优化器",
    "06 逻辑回归：sigmoid + BCE，手写 BCE vs nn.BCELoss",
    "07 多维输入：8→6→4→1 网络，矩阵化的批量前向",
    "08 Dataset 与 DataLoader：自己写的加载器 vs torch DataLoader，Titanic",
    "09 多分类 softmax：softmax + NLL vs CrossEntropyLoss，手写数字",
    "10 基础 CNN：卷积输出尺寸公式，unfold 卷积 vs F.conv2d",
    "11 高级 CNN：Inception 块、残差块与梯度流",
    "12 基础 RNN：RNNCell 循环 vs nn.RNN，hello → ohlol",
    "13 高级 RNN：双向 GRU 名字 → 国家分类器",
]


def make_data(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    x = rng.uniform(0.0, 1.0, n)
    return x, np.sin(2 * np.pi * x) + NOISE * rng.standard_normal(n)


def design_matrix(x: np.ndarray, degree: int) -> np.ndarray:
    """Φ_{ij} = x_i^j，j = 0..degree；x 先映射到 [−1, 1]，让高次幂的列不至于全挤在 0 附近（条件数小得多）。"""
    if degree < 0:
        raise ValueError(f"degree={degree} 必须 ≥ 0")
    return np.vander(2 * x - 1, degree + 1, increasing=True)


def fit_polynomial(x: np.ndarray, y: np.ndarray, degree: int) -> np.ndarray:
    if degree + 1 > len(x):
        raise ValueError(f"degree={degree} 需要至少 {degree + 1} 个点才有唯一解，只有 {len(x)} 个；降低次数或多给数据")
    w, *_ = np.linalg.lstsq(design_matrix(x, degree), y, rcond=None)
    return w


def mse(w: np.ndarray, x: np.ndarray, y: np.ndarray) -> float:
    return float(np.mean((design_matrix(x, len(w) - 1) @ w - y) ** 2))


def degree_sweep(x_tr, y_tr, x_te, y_te, max_degree: int) -> tuple[list[float], list[float]]:
    train_err, test_err = [], []
    for d in range(max_degree + 1):
        w = fit_polynomial(x_tr, y_tr, d)
        train_err.append(mse(w, x_tr, y_tr))
        test_err.append(mse(w, x_te, y_te))
    return train_err, test_err


def baselines(x_tr, y_tr, x_te, y_te) -> dict[str, float]:
    """测试集上的参照：预测训练集均值的 MSE、噪声方差 σ²（期望意义下的下限）、真函数 sin(2πx) 在这份测试集上的 MSE。"""
    return {
        "mean": float(np.mean((y_te - y_tr.mean()) ** 2)),
        "noise": NOISE**2,
        "truth": float(np.mean((y_te - np.sin(2 * np.pi * x_te)) ** 2)),
    }


def best_test_mse_spread(x_te, y_te, n_sets: int = 20, first_seed: int = 100, max_degree: int = MAX_DEGREE):
    """换 n_sets 份新的训练集（种子 first_seed, first_seed+1, …）各做一次次数扫描，返回最佳测试 MSE 的 (10%, 90%) 分位。

    一份 12 个点的训练集运气好坏差很多：这个范围告诉你默认种子的结果在"正常波动"的哪里。
    """
    best = [min(degree_sweep(*make_data(N_TRAIN, seed=first_seed + i), x_te, y_te, max_degree)[1])
            for i in range(n_sets)]
    p10, p90 = np.percentile(best, [10, 90])
    return float(p10), float(p90)


def report_line(best: int, best_mse: float, base: dict[str, float], spread: tuple[float, float]) -> str:
    return (f"最佳 {best} 次：测试 MSE {best_mse:.4f}（预测训练集均值（= 0 次）{base['mean']:.4f}；"
            f"噪声的期望下限 σ² = {base['noise']:.4f}，真函数 sin(2πx) 在这份测试集上 {base['truth']:.4f}；"
            f"换 20 份训练集时最佳测试 MSE 约 {spread[0]:.2f}–{spread[1]:.2f}（10%–90% 分位））")


def plot(x_tr, y_tr, fits: dict[int, np.ndarray], train_err, test_err, base: dict[str, float] | None = None):
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4.6))
    grid = np.linspace(0, 1, 300)
    ax1.plot(grid, np.sin(2 * np.pi * grid), "k--", label="truth sin(2 pi x)")
    ax1.scatter(x_tr, y_tr, c="k", s=15, zorder=3, label="train")
    for d, w in fits.items():
        ax1.plot(grid, design_matrix(grid, d) @ w, label=f"degree {d}")
    ax1.set(ylim=(-2, 2), title="polynomial fits", xlabel="x", ylabel="y")
    ax1.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.14), ncol=3)  # 放在图外，不挡曲线
    degrees = np.arange(len(train_err))  # train_err[d] 是 d 次多项式的误差：横轴就是次数，从 0 开始
    ax2.semilogy(degrees, train_err, "o-", label="train MSE")
    ax2.semilogy(degrees, test_err, "s-", label="test MSE")
    if base is not None:
        ax2.axhline(base["mean"], color="tab:gray", ls="--", lw=0.8, label="predict train mean")
        ax2.axhline(base["noise"], color="k", ls=":", lw=0.8, label="noise floor sigma^2")
    # 次数 + 1 = 点数时多项式穿过每个训练点，训练 MSE 只剩舍入误差（~1e-23），把纵轴压扁；纵轴截在 Y_FLOOR，
    # 截掉的点画成底边上的 ▼ 并标出真实值（不藏数据）
    off = [d for d in degrees if train_err[d] < Y_FLOOR]
    for d in off:
        ax2.plot(d, Y_FLOOR, "v", color="tab:blue", clip_on=False)
        ax2.annotate(f"train {train_err[d]:.0e}\n(off scale)", (d, Y_FLOOR), textcoords="offset points",
                     xytext=(0, 14), fontsize=7, ha="center")
    ax2.set(title="generalisation", xlabel="polynomial degree", ylabel="MSE", ylim=(Y_FLOOR, None))
    ax2.legend(fontsize=8, loc="lower left")  # 左下角是空的：训练误差只在最高几次才掉下去
    fig.tight_layout()
    path = save_figure(fig, "liu2_lecture01_overfitting.png", dpi=120)
    print(f"图已保存：{path}")
    return fig


def main() -> None:
    setup_seed()
    print("== 第 01 讲 概述：本系列 13 讲 ==")
    for line in LECTURES:
        print("  " + line)
    x_tr, y_tr = make_data(N_TRAIN, seed=0)
    x_te, y_te = make_data(N_TEST, seed=1)

    # 与 PyTorch 对照：同一个最小二乘问题，torch.linalg.lstsq（float64）解出同样的系数
    w_np = fit_polynomial(x_tr, y_tr, 3)
    w_t = torch.linalg.lstsq(torch.from_numpy(design_matrix(x_tr, 3)), torch.from_numpy(y_tr)[:, None]).solution
    err = float(np.abs(w_np - w_t[:, 0].numpy()).max())
    print(f"3 次多项式系数：numpy lstsq vs torch.linalg.lstsq 最大差 {err:.1e}")
    assert err < 1e-8

    with time_block("degree sweep", verbose=False) as t:
        train_err, test_err = degree_sweep(x_tr, y_tr, x_te, y_te, MAX_DEGREE)
    best = int(np.argmin(test_err))
    print(f"{'次数':>4} {'训练 MSE':>10} {'测试 MSE':>10}")
    for d, (a, b) in enumerate(zip(train_err, test_err)):
        print(f"{d:>4} {a:>10.4f} {b:>10.4f}{'  ← 测试误差最小' if d == best else ''}")
    print(f"（{t.ms:.1f} ms）训练误差一路下降，测试误差在 {best} 次最低，之后过拟合")
    base = baselines(x_tr, y_tr, x_te, y_te)
    print(report_line(best, test_err[best], base, best_test_mse_spread(x_te, y_te)))
    # 学习结论：更灵活的模型训练误差不会更大（嵌套的模型族），但最高次的测试误差明显差于最优次数
    assert all(b <= a + 1e-9 for a, b in zip(train_err, train_err[1:]))
    assert test_err[-1] > 2 * test_err[best] and 0 < best < MAX_DEGREE
    plot(x_tr, y_tr, {1: fit_polynomial(x_tr, y_tr, 1), best: fit_polynomial(x_tr, y_tr, best),
                      MAX_DEGREE: fit_polynomial(x_tr, y_tr, MAX_DEGREE)}, train_err, test_err, base)


if __name__ == "__main__":
    lesson_args(__doc__)
    main()
