"""刘二《PyTorch 深度学习实践》第 04 讲 反向传播：在计算图上手动求梯度，再交给 autograd。

模型一复杂，"手推 ∂loss/∂w 的整条公式"就不现实了。反向传播把模型拆成一张**计算图**，
每个节点只需知道自己的局部导数：前向时记下中间结果，反向时把上游梯度 g = ∂L/∂out
乘以局部导数传给输入（链式法则）：
    z = a·b  ⇒ ∂L/∂a = g·b，∂L/∂b = g·a
    z = a + b ⇒ ∂L/∂a = ∂L/∂b = g
    z = a²   ⇒ ∂L/∂a = 2a·g
一个变量被多处使用时，各路回来的梯度要**相加**（这正是 autograd 对 .grad 做累加的原因）。

课后作业：ŷ = w1·x² + w2·x + b，loss = (ŷ − y)²，画出计算图并求三个梯度。本讲手写了它，
以及一个两层网络 h = σ(x W1ᵀ + b1)，ŷ = h W2ᵀ + b2 的手动反传，逐个张量与 autograd 对照。

作业模型训练得有多好：3 个点、3 个参数，零损失解唯一，是 (w1, w2, b) = (0, 2, 0)；不看 x、只预测 ȳ 的基线
MSE = var(y) = 2.667。为什么要几千个 epoch：特征 x² 大到 9 而常数特征是 1（曲率差 81 倍），三列又高度相关，
Hessian ∝ Σ φφᵀ 的条件数约 5000。
按样本顺序做一轮 SGD，误差 e = θ − θ* 被乘上 M = Π_i (I − 2α φ_i φ_iᵀ)（φ = (x², x, 1)），M 的谱半径
ρ(M) 就是每个 epoch 最慢方向的收缩倍数：α = 0.01 时 ρ = 0.99943，loss 每 epoch 只乘 ρ² ≈ 0.9989；
最慢的方向 ≈ (0.16, −0.72, 0.67)，主要是 w2 和 b 此消彼长。α 超过约 0.030 时 ρ > 1 才发散。
默认 5000 个 epoch：每 epoch 平均 loss 从 9.17 降到约 1.0e-4；SMOKE 200 个 epoch 降到约 2e-2。

课上的另一个要点：没有非线性激活时，两层线性层等于一层——
    W2 (W1 x + b1) + b2 = (W2 W1) x + (W2 b1 + b2)
再多的层也只是一个线性变换，所以每层之后要接 σ / ReLU 这样的非线性函数。

    python archive/liu2_lecture/lecture04_back_propagation.py

图：checkpoints/figures/liu2_lecture04_back_propagation.png（作业模型的训练损失）。
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
X_DATA = torch.tensor([1.0, 2.0, 3.0], dtype=torch.float64)
Y_DATA = torch.tensor([2.0, 4.0, 6.0], dtype=torch.float64)
LR = 0.01
EPOCHS = 200 if SMOKE else 5000


# =============================================================================
# 1) 作业：ŷ = w1·x² + w2·x + b 的计算图，手动前向 + 反向
# =============================================================================
def quadratic_forward_backward(x: float, y: float, w1: float, w2: float, b: float):
    """单个样本的 loss 与 (∂L/∂w1, ∂L/∂w2, ∂L/∂b)，按计算图一步步写：
        a = x²;  p = w1·a;  q = w2·x;  ŷ = p + q + b;  r = ŷ − y;  L = r²
    """
    a = x * x
    y_hat = w1 * a + w2 * x + b
    r = y_hat - y
    loss = r * r
    g_r = 2 * r  # ∂L/∂r
    g_yhat = g_r  # 减法节点：梯度原样传过去
    # 加法节点把 g 原样分给 p、q、b；乘法节点 p = w1·a 给 w1 的是 g·a
    return loss, g_yhat * a, g_yhat * x, g_yhat


def train_quadratic(epochs: int = EPOCHS, lr: float = LR) -> tuple[list[float], tuple[float, float, float]]:
    """课上的写法：w 是 requires_grad 的张量，loss.backward() 之后用 w.data 更新、再 w.grad.zero_()。
    每个样本更新一次（SGD），同时断言 autograd 的梯度 = 上面手推的梯度。

    返回 (history, (w1, w2, b))：history[i] 是第 i + 1 个 epoch 里 3 个样本损失的平均（每个都在该样本更新前算）。
    """
    w1, w2, b = (torch.tensor(v, dtype=torch.float64, requires_grad=True) for v in (1.0, 1.0, 1.0))
    history = []
    for _ in range(epochs):
        epoch_loss = 0.0
        for x, y in zip(X_DATA.tolist(), Y_DATA.tolist()):
            manual = quadratic_forward_backward(x, y, w1.item(), w2.item(), b.item())
            loss = (w1 * x**2 + w2 * x + b - y) ** 2
            loss.backward()
            grads = (w1.grad.item(), w2.grad.item(), b.grad.item())
            if max(abs(m - a) for m, a in zip(manual[1:], grads)) > 1e-9:
                raise AssertionError(f"手推梯度 {manual[1:]} 与 autograd {grads} 不一致")
            with torch.no_grad():  # 更新参数不应被记进计算图（课上写作 w.data -= lr * w.grad.data）
                for p in (w1, w2, b):
                    p -= lr * p.grad
                    p.grad.zero_()  # 梯度会累加，不清零下一步就用了两步梯度之和
            epoch_loss += loss.item()
        history.append(epoch_loss / len(X_DATA))
    return history, (w1.item(), w2.item(), b.item())


# =============================================================================
# 2) 两层网络的手动反传
# =============================================================================
def two_layer_manual(x, y, W1, b1, W2, b2):
    """h = σ(x W1ᵀ + b1)，ŷ = h W2ᵀ + b2，L = mean((ŷ − y)²)。返回 (L, dW1, db1, dW2, db2)。"""
    if x.shape[1] != W1.shape[1]:
        raise ValueError(f"x 有 {x.shape[1]} 个特征，但 W1 期望 {W1.shape[1]} 个（W1 形状应为 (hidden, in)）")
    z1 = x @ W1.T + b1  # (N, H)
    h = torch.sigmoid(z1)  # (N, H)
    y_hat = h @ W2.T + b2  # (N, O)
    loss = ((y_hat - y) ** 2).mean()
    g_yhat = 2 * (y_hat - y) / y.numel()  # ∂L/∂ŷ，mean 的 1/numel 也要带上
    dW2 = g_yhat.T @ h  # (O, H)：ŷ = h W2ᵀ ⇒ ∂L/∂W2 = gᵀ h
    db2 = g_yhat.sum(0)  # 偏置在 batch 上广播 ⇒ 梯度沿 batch 求和
    g_h = g_yhat @ W2  # (N, H)
    g_z1 = g_h * h * (1 - h)  # σ'(z) = σ(z)(1 − σ(z))
    dW1 = g_z1.T @ x  # (H, in)
    db1 = g_z1.sum(0)
    return loss, dW1, db1, dW2, db2


def two_layer_autograd(x, y, W1, b1, W2, b2):
    params = [p.detach().clone().requires_grad_() for p in (W1, b1, W2, b2)]
    loss = ((torch.sigmoid(x @ params[0].T + params[1]) @ params[2].T + params[3] - y) ** 2).mean()
    loss.backward()
    return (loss.detach(), *(p.grad for p in params))


def linear_layers_collapse(x, W1, b1, W2, b2) -> tuple[torch.Tensor, torch.Tensor]:
    """两层不带激活的线性层 vs 合并后的一层：返回两边的输出。"""
    two = (x @ W1.T + b1) @ W2.T + b2
    one = x @ (W2 @ W1).T + (W2 @ b1 + b2)
    return two, one


def quadratic_epoch_map(lr: float = LR, xs=None) -> np.ndarray:
    """作业模型按样本顺序 SGD 一个 epoch 对误差 e = θ − θ* 的线性映射 M = A_N ⋯ A_1，A_i = I − 2α φ_i φ_iᵀ。

    单个样本的更新 θ ← θ − 2α(φᵀθ − y)φ，在 θ* 处 φᵀθ* = y（零损失解存在），所以 e ← (I − 2α φφᵀ) e。
    """
    xs = X_DATA.tolist() if xs is None else xs
    M = np.eye(3)
    for x in xs:
        phi = np.array([x * x, x, 1.0])
        M = (np.eye(3) - 2 * lr * np.outer(phi, phi)) @ M
    return M


def epoch_contraction(lr: float = LR) -> float:
    """M 的谱半径 ρ：每个 epoch 最慢方向的误差收缩倍数（loss 收缩 ρ²）；ρ ≥ 1 时发散。"""
    return float(np.abs(np.linalg.eigvals(quadratic_epoch_map(lr))).max())


def divergence_lr(lo: float = LR, hi: float = 1.0, iters: int = 50) -> float:
    """二分出 ρ(M) = 1 的学习率（lo 处收敛、hi 处发散）：比它大的 α 让这个 SGD 发散。"""
    if not (epoch_contraction(lo) < 1 <= epoch_contraction(hi)):
        raise ValueError(f"二分需要 lr={lo} 收敛、lr={hi} 发散，换一个区间")
    for _ in range(iters):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if epoch_contraction(mid) < 1 else (lo, mid)
    return lo


def plot(history, baseline: float | None = None):
    fig, ax = plt.subplots(figsize=(6, 4))
    epochs = np.arange(1, len(history) + 1)  # history[i] 是第 i + 1 个 epoch 里的平均损失：横轴从 1 开始
    ax.semilogy(epochs, history, label=f"SGD, lr={LR}")
    if baseline is not None:
        ax.axhline(baseline, color="tab:gray", ls="--", lw=0.8, label="predict mean of y")
    ax.set(title="y_hat = w1*x^2 + w2*x + b  (SGD)", xlabel="epoch", ylabel="mean squared error over the epoch")
    ax.legend(loc="lower left")  # 左下角空着：曲线从左上往右下走
    fig.tight_layout()
    path = save_figure(fig, "liu2_lecture04_back_propagation.png", dpi=120)
    print(f"图已保存：{path}")
    return fig


def main() -> None:
    setup_seed()
    print("== 第 04 讲 反向传播 ==")
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(16, 5, generator=g, dtype=torch.float64), torch.randn(16, 3, generator=g, dtype=torch.float64)
    params = [torch.randn(*s, generator=g, dtype=torch.float64) for s in ((7, 5), (7,), (3, 7), (3,))]
    manual, ref = two_layer_manual(x, y, *params), two_layer_autograd(x, y, *params)
    err = max((m - r).abs().max().item() for m, r in zip(manual, ref))
    print(f"两层网络：手动反传的 loss 与 4 个梯度 vs autograd，最大差 {err:.1e}")
    assert err < 1e-12

    two, one = linear_layers_collapse(x, *params)
    print(f"无激活的两层线性层 = 一层（W2W1, W2b1+b2）：最大差 {(two - one).abs().max().item():.1e}")
    assert torch.allclose(two, one, atol=1e-12)

    history, (w1, w2, b) = train_quadratic()
    baseline = float(Y_DATA.var(unbiased=False))
    print(f"作业 ŷ = w1x² + w2x + b，SGD {EPOCHS} 个 epoch（每步都校验手推梯度 = autograd）："
          f"w1={w1:.4f} w2={w2:.4f} b={b:.4f}（零损失解 (0, 2, 0)）")
    print(f"  每 epoch 平均 loss {history[0]:.3f} → {history[-1]:.2e}（只预测均值 ȳ：var(y) = {baseline:.3f}；"
          f"零损失解 0；默认 5000 epoch 约 1.0e-4，SMOKE 200 epoch 约 2e-2）")
    rho = epoch_contraction()
    print(f"  为什么这么慢：一个 epoch 的误差映射谱半径 ρ = {rho:.5f}（loss 每 epoch ×{rho**2:.4f}），"
          f"lr > {divergence_lr():.4f} 才发散——慢在 Hessian 病态，而不是 lr 已到上限")
    # 3 个点 3 个参数：唯一的零损失解是 (0, 2, 0)；损失至少下降两个数量级，完整训练时明显逼近该解
    # （Hessian 条件数约 5000：最慢方向 ≈ (0.16, −0.72, 0.67)，每 epoch 只收缩 ρ = 0.99943）
    assert history[-1] < history[0] / 100
    if not SMOKE:
        assert history[-1] < 1e-3 and abs(w1) < 0.05 and abs(w2 - 2) < 0.15 and abs(b) < 0.15
    plot(history, baseline)


if __name__ == "__main__":
    lesson_args(__doc__)
    main()
