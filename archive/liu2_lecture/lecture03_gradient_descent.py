"""刘二《PyTorch 深度学习实践》第 03 讲 梯度下降：批量梯度下降（GD）与随机梯度下降（SGD）。

模型 ŷ = x·w，损失 cost(w) = (1/N) Σ (x_i w − y_i)²。对 w 求导（链式法则）：
    ∂cost/∂w = (1/N) Σ 2 x_i (x_i w − y_i)
更新 w ← w − α · ∂cost/∂w（α 是学习率）。cost 是凸二次函数，只要 α 足够小就收敛到 w* = 2：
误差 e = w − w* 每步乘以 (1 − 2α·mean(x²))，|1 − 2α·mean(x²)| < 1 ⇔ α < 1/mean(x²) 才收敛
（mean(x²) = 14/3，α = 0.01 时每步误差缩小到 0.9067 倍）。cost(w) = mean(x²)(w − w*)²（数据无噪声），
所以 T 个 epoch 后 cost = mean(x²)(w₀ − w*)² · 0.9067^{2T}：w₀ = 1、T = 100 时 1.4e-8——这就是"期望值"，脚本现场算出来
与实际轨迹对照。

SGD 每次只用**一个**样本的梯度 2x(xw − y)：单步更便宜、带噪声（有时能帮忙跳出鞍点），
但相邻样本的更新有先后依赖，不能像整批那样并行；折中就是后面常用的 mini-batch。
这份数据每个样本都落在 y = 2x 上，单个样本的梯度在 w* 处也为 0，所以 SGD 同样精确收敛：一个 epoch 误差乘
Π_i (1 − 2α x_i²) = 0.98 · 0.92 · 0.82 = 0.7393，100 个 epoch 后 cost ≈ 2.7e-26（远快于 GD，因为每 epoch 走 3 步）。

基线：不看 x、只预测 ȳ 的 cost = var(y) = 2.667；初值 w = 1 的 cost = 14/3 ≈ 4.667。

本讲的检查：手推梯度 = autograd 求出的梯度；手写 GD 轨迹 = torch.optim.SGD（整批）的轨迹。

    python archive/liu2_lecture/lecture03_gradient_descent.py

图：checkpoints/figures/liu2_lecture03_gradient_descent.png（GD 与 SGD 的 cost 曲线）。
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
LR = 0.01
EPOCHS = 30 if SMOKE else 100
W_INIT = 1.0


def cost(x: np.ndarray, y: np.ndarray, w: float) -> float:
    return float(np.mean((x * w - y) ** 2))


def gradient(x: np.ndarray, y: np.ndarray, w: float) -> float:
    """∂cost/∂w = mean(2x(xw − y))。"""
    return float(np.mean(2 * x * (x * w - y)))


def check_lr(lr: float, x: np.ndarray) -> None:
    limit = 1.0 / float(np.mean(x**2))
    if not 0 < lr < limit:
        raise ValueError(f"lr={lr} 会让梯度下降发散：这个数据上需要 0 < lr < 1/mean(x²) = {limit:.4f}")


def gradient_descent(x, y, w: float = W_INIT, lr: float = LR, epochs: int = EPOCHS) -> tuple[float, list[float]]:
    """批量 GD：每个 epoch 用全部样本的平均梯度更新一次。

    返回 (w, history)：history 有 epochs + 1 项，history[i] 是 i 个 epoch 之后的 cost（history[0] 是训练前）。
    """
    check_lr(lr, x)
    history = []
    for _ in range(epochs):
        history.append(cost(x, y, w))
        w -= lr * gradient(x, y, w)
    history.append(cost(x, y, w))
    return w, history


def stochastic_gradient_descent(x, y, w: float = W_INIT, lr: float = LR, epochs: int = EPOCHS):
    """SGD：每个样本各更新一次（课上按固定顺序遍历），一个 epoch 更新 N 次。history 的含义同 gradient_descent。"""
    check_lr(lr, x)
    history = []
    for _ in range(epochs):
        history.append(cost(x, y, w))
        for xi, yi in zip(x, y):
            w -= lr * 2 * xi * (xi * w - yi)
    history.append(cost(x, y, w))
    return w, history


def torch_gradient_descent(x, y, w: float = W_INIT, lr: float = LR, epochs: int = EPOCHS) -> tuple[float, list[float]]:
    """参照：同一件事交给 autograd + torch.optim.SGD。"""
    wt = torch.tensor(w, dtype=torch.float64, requires_grad=True)
    xt, yt = torch.from_numpy(x), torch.from_numpy(y)
    opt = torch.optim.SGD([wt], lr=lr)
    history = []
    for _ in range(epochs):
        loss = ((xt * wt - yt) ** 2).mean()
        history.append(loss.item())
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        history.append(((xt * wt - yt) ** 2).mean().item())
    return wt.item(), history


def gd_factor(x: np.ndarray, lr: float = LR) -> float:
    """批量 GD 每个 epoch 把误差 w − w* 乘上的因子 1 − 2α·mean(x²)。"""
    return 1.0 - 2.0 * lr * float(np.mean(x**2))


def sgd_epoch_factor(x: np.ndarray, lr: float = LR) -> float:
    """按固定顺序的 SGD，一个 epoch 把误差乘上 Π_i (1 − 2α x_i²)（每个样本的梯度在 w* 处为 0 时成立）。"""
    return float(np.prod(1.0 - 2.0 * lr * x**2))


def predicted_cost(x: np.ndarray, y: np.ndarray, factor: float, epochs: int, w0: float = W_INIT) -> float:
    """理论上 epochs 个 epoch 后的 cost：mean(x²)(w₀ − w*)² · factor^{2·epochs}，w* 取闭式解 Σxy/Σx²。

    cost(w) = mean(x²)(w − w*)² + cost(w*)，只在数据落在过原点的直线上（cost(w*) = 0）时没有第二项，这里就是。
    """
    w_star = float(np.dot(x, y) / np.dot(x, x))
    return float(np.mean(x**2)) * (w0 - w_star) ** 2 * factor ** (2 * epochs) + cost(x, y, w_star)


def plot(gd_hist, sgd_hist, baseline: float | None = None):
    fig, ax = plt.subplots(figsize=(6, 4))
    epochs = np.arange(len(gd_hist))  # hist[i] 是 i 个 epoch 之后的 cost：0 是训练前，横轴从 0 开始
    ax.semilogy(epochs, gd_hist, label="batch gradient descent")
    ax.semilogy(epochs, sgd_hist, label="stochastic gradient descent")
    if baseline is not None:
        ax.axhline(baseline, color="tab:gray", ls="--", lw=0.8, label="predict mean of y")
    ax.set(title=f"cost vs epoch (lr={LR})", xlabel="epoch (0 = before training)", ylabel="cost (MSE)")
    ax.legend(loc="lower left")  # 左下角空着：两条曲线都从左上出发
    fig.tight_layout()
    path = save_figure(fig, "liu2_lecture03_gradient_descent.png", dpi=120)
    print(f"图已保存：{path}")
    return fig


def main() -> None:
    setup_seed()
    print("== 第 03 讲 梯度下降 ==")
    # 1) 手推梯度 vs autograd，在几个 w 上
    for w in (-1.5, 0.0, 1.0, 3.7):
        wt = torch.tensor(w, dtype=torch.float64, requires_grad=True)
        ((torch.from_numpy(X_DATA) * wt - torch.from_numpy(Y_DATA)) ** 2).mean().backward()
        assert abs(gradient(X_DATA, Y_DATA, w) - wt.grad.item()) < 1e-12
    print("手推梯度 mean(2x(xw − y)) 与 autograd 在 4 个 w 上一致（差 < 1e-12）")

    # 2) 手写 GD vs torch.optim.SGD：逐 epoch 的 cost 完全一样
    w_gd, gd_hist = gradient_descent(X_DATA, Y_DATA)
    w_ref, ref_hist = torch_gradient_descent(X_DATA, Y_DATA)
    diff = max(abs(a - b) for a, b in zip(gd_hist, ref_hist))
    print(f"GD {EPOCHS} 个 epoch：w = {w_gd:.6f}（torch.optim.SGD: {w_ref:.6f}，cost 曲线最大差 {diff:.1e}）")
    assert diff < 1e-12 and abs(w_gd - w_ref) < 1e-12

    # 3) SGD：每 epoch 更新 3 次，收敛得更快
    w_sgd, sgd_hist = stochastic_gradient_descent(X_DATA, Y_DATA)
    gd_theory = predicted_cost(X_DATA, Y_DATA, gd_factor(X_DATA), EPOCHS)
    sgd_theory = predicted_cost(X_DATA, Y_DATA, sgd_epoch_factor(X_DATA), EPOCHS)
    print(f"最终 cost：GD {gd_hist[-1]:.2e}（理论 {gd_theory:.2e}，每 epoch 误差 ×{gd_factor(X_DATA):.4f}），"
          f"SGD {sgd_hist[-1]:.2e}（理论 {sgd_theory:.2e}，每 epoch ×{sgd_epoch_factor(X_DATA):.4f}）；"
          f"对照：只预测均值 ȳ {float(np.var(Y_DATA)):.3f}，初值 w = {W_INIT} 时 {gd_hist[0]:.3f}")
    # 学习结论：GD 的误差按 (1 − 2α·mean(x²))^epochs 收缩；两者都逼近 w* = 2
    expected = 2 + (W_INIT - 2) * (1 - 2 * LR * np.mean(X_DATA**2)) ** EPOCHS
    assert abs(w_gd - expected) < 1e-9
    assert abs(w_sgd - 2) < abs(w_gd - 2) < 1.0
    plot(gd_hist, sgd_hist, float(np.var(Y_DATA)))


if __name__ == "__main__":
    lesson_args(__doc__)
    main()
