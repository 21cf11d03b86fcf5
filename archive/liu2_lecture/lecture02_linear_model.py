"""刘二《PyTorch 深度学习实践》第 02 讲 线性模型：穷举参数，把损失曲线（曲面）画出来。

课上的数据：学习时间 x = 1, 2, 3 小时，得分 y = 2, 4, 6。模型 ŷ = x·w，
损失用均方误差 MSE(w) = (1/N) Σ (x_i w − y_i)²。不会优化也能"学习"：在 w ∈ [0, 4] 上
逐个试一遍，挑 MSE 最小的那个——这就是最朴素的"穷举搜索"。课后作业把模型换成 ŷ = x·w + b，
在 (w, b) 网格上画 MSE 曲面。

为什么穷举不可行：参数有 d 个、每维试 k 个值就要算 k^d 次损失（d=2 时已是 k²，神经网络 d 上百万），
下一讲用梯度下降代替。这里把穷举结果与闭式解对照：MSE 对 w 是二次函数，
∂MSE/∂w = (2/N) Σ x_i (x_i w − y_i) = 0 ⇒ w* = Σ x_i y_i / Σ x_i²；带 b 时用 torch.linalg.lstsq 解。

"多好算好"：不看 x、只预测 y 的均值 ȳ 时 MSE = var(y)（y = 2, 4, 6 时 8/3 ≈ 2.667，y = 2x + 1 时也是 2.667）；
两份数据都没有噪声、且网格恰好含精确解（w = 2，b = 1），所以默认与 SMOKE 的网格上最小 MSE 都应为 0。

    python archive/liu2_lecture/lecture02_linear_model.py

图：checkpoints/figures/liu2_lecture02_linear_model.png（左：MSE vs w；右：MSE(w, b) 等高线）。
"""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import torch

from utils.io import is_smoke, save_figure
from utils.lesson_cli import lesson_args
from utils.torch_playground import setup_seed

SMOKE = is_smoke()
X_DATA = np.array([1.0, 2.0, 3.0])
Y_DATA = np.array([2.0, 4.0, 6.0])
GRID_STEP = 0.1 if SMOKE else 0.02


def forward(x: np.ndarray, w: float, b: float = 0.0) -> np.ndarray:
    return x * w + b


def mse(x: np.ndarray, y: np.ndarray, w: float, b: float = 0.0) -> float:
    if x.shape != y.shape:
        raise ValueError(f"x 的形状 {x.shape} 与 y 的形状 {y.shape} 不一致：每个样本要有一个标签")
    return float(np.mean((forward(x, w, b) - y) ** 2))


def grid_search_w(x: np.ndarray, y: np.ndarray, ws: np.ndarray) -> tuple[float, np.ndarray]:
    """在网格 ws 上逐个计算 MSE(w)，返回 (最优 w, 全部损失)。"""
    losses = np.array([mse(x, y, w) for w in ws])
    return float(ws[np.argmin(losses)]), losses


def grid_search_wb(x: np.ndarray, y: np.ndarray, ws: np.ndarray, bs: np.ndarray):
    """(w, b) 网格上的 MSE 曲面：用广播一次算完，loss[i, j] = MSE(ws[i], bs[j])。"""
    pred = x[None, None, :] * ws[:, None, None] + bs[None, :, None]  # (len(ws), len(bs), N)
    loss = np.mean((pred - y) ** 2, axis=-1)  # (len(ws), len(bs))
    i, j = np.unravel_index(np.argmin(loss), loss.shape)
    return float(ws[i]), float(bs[j]), loss


def closed_form_w(x: np.ndarray, y: np.ndarray) -> float:
    """无偏置时 MSE 的最小点 w* = Σxy / Σx²。"""
    return float(np.dot(x, y) / np.dot(x, x))


def mean_baseline(y: np.ndarray) -> float:
    """基线：不看 x，永远预测 ȳ，MSE = mean((y − ȳ)²) = var(y)。"""
    return float(np.mean((y - y.mean()) ** 2))


def plot(ws, losses, wgrid, bgrid, surface, baseline: float | None = None):
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4))
    ax1.plot(ws, losses, label="MSE(w)")
    if baseline is not None:
        ax1.axhline(baseline, color="tab:gray", ls="--", lw=0.8, label="predict mean of y")
        ax1.legend(loc="upper center", fontsize=8)  # 正中上方：抛物线的两臂在左右两边，不会被挡
    ax1.set(title="y_hat = x*w : MSE vs w", xlabel="w", ylabel="MSE")
    cs = ax2.contour(wgrid, bgrid, surface.T, levels=np.logspace(-2, 1.5, 15))
    ax2.clabel(cs, fontsize=6)
    ax2.set(title="y_hat = x*w + b : MSE(w, b)", xlabel="w", ylabel="b")
    fig.tight_layout()
    path = save_figure(fig, "liu2_lecture02_linear_model.png", dpi=120)
    print(f"图已保存：{path}")
    return fig


def main() -> None:
    setup_seed()
    print("== 第 02 讲 线性模型：穷举 ==")
    ws = np.arange(0.0, 4.0 + 1e-9, GRID_STEP)
    w_best, losses = grid_search_w(X_DATA, Y_DATA, ws)
    print(f"ŷ = x·w：在 {len(ws)} 个 w 上穷举，最优 w = {w_best:.2f}，MSE = {losses.min():.4f}"
          f"（只预测均值 ȳ：var(y) = {mean_baseline(Y_DATA):.4f}；无噪声数据、网格含 w = 2，应为 0）；"
          f"闭式解 w* = {closed_form_w(X_DATA, Y_DATA):.4f}")
    assert abs(w_best - closed_form_w(X_DATA, Y_DATA)) <= GRID_STEP / 2 + 1e-9

    # 作业：ŷ = x·w + b，数据换成 y = 2x + 1，穷举 (w, b) 后与 torch.linalg.lstsq 的闭式解对照
    y_b = 2 * X_DATA + 1
    wgrid = np.arange(0.0, 4.0 + 1e-9, GRID_STEP)
    bgrid = np.arange(-2.0, 4.0 + 1e-9, GRID_STEP)
    w2, b2, surface = grid_search_wb(X_DATA, y_b, wgrid, bgrid)
    A = torch.stack([torch.from_numpy(X_DATA), torch.ones(3, dtype=torch.float64)], dim=1)
    w_ls, b_ls = torch.linalg.lstsq(A, torch.from_numpy(y_b)[:, None]).solution[:, 0].tolist()
    print(f"ŷ = x·w + b（数据 y = 2x + 1）：穷举 {surface.size} 个点得 (w, b) = ({w2:.2f}, {b2:.2f})，"
          f"MSE = {surface.min():.4f}（只预测均值 ȳ：{mean_baseline(y_b):.4f}；应为 0）；"
          f"torch.linalg.lstsq 得 ({w_ls:.4f}, {b_ls:.4f})")
    assert abs(w2 - w_ls) <= GRID_STEP and abs(b2 - b_ls) <= GRID_STEP
    plot(ws, losses, wgrid, bgrid, surface, mean_baseline(Y_DATA))


if __name__ == "__main__":
    lesson_args(__doc__)
    main()
