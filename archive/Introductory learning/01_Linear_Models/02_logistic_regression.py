"""逻辑回归：sigmoid + 二元交叉熵，把梯度 ∂L/∂z = p − y 亲手推出来，再与 PyTorch 对照。

模型：z = x·w + b（logit），p = σ(z) = 1/(1+e^{−z}) 是 "y=1" 的概率。
损失（负对数似然 = 二元交叉熵，BCE）：
    L = −(1/n) Σ_i [ y_i log p_i + (1−y_i) log(1−p_i) ]

推导 ∂L/∂z（对单个样本，省去下标与 1/n）：
    σ'(z) = e^{−z}/(1+e^{−z})² = σ(z)(1−σ(z)) = p(1−p)
    ∂/∂z [−y log p − (1−y) log(1−p)] = −y·p'/p + (1−y)·p'/(1−p)
                                     = −y(1−p) + (1−y)p = p − y
σ' 里的 p(1−p) 恰好与 log 的导数 1/p、1/(1−p) 约掉——这正是"sigmoid 配交叉熵"的原因：
若配 MSE，梯度 (p−y)·p(1−p) 在 p 饱和到 0 或 1 时几乎为 0，预测错得离谱时反而学不动。
再由链式法则 z = Xw + b：∇_w L = (1/n) Xᵀ(p − y)，∂L/∂b = (1/n) Σ (p − y)——与线性回归的形状一模一样。

数值稳定：直接算 log σ(z) 在 z ≪ 0 时会 log(0)。用恒等式
    log σ(z) = −softplus(−z)，log(1−σ(z)) = −softplus(z)，softplus(t) = log(1+e^t) = logaddexp(0, t)
于是 L = mean[ softplus(z) − y·z ]（把两项合并即得），这就是 BCEWithLogitsLoss 的算法。

多少算好：数据是我们自己生成的两团高斯，所以连"最好能做到多好"都能算出来。
    - 瞎猜：w = 0 时 p ≡ 1/2，loss = ln 2 ≈ 0.693、准确率 50%；最好的常数预测 p ≡ ȳ 的 loss 是 H(ȳ)，
      多数类的准确率是 max(ȳ, 1 − ȳ)（默认数据 ȳ = 0.457：H(ȳ) = 0.689，多数类 54.3%）；
    - 贝叶斯最优：两团方差相同的高斯，真实后验的 logit 本身就是 x 的线性函数（见 bayes_optimal_logit），
      总体准确率 Φ(‖μ₁ − μ₀‖ / 2s) = Φ(2.5 / 1.8) ≈ 91.8%，没有任何分类器能超过它。
    默认配置（n = 600、1500 步）实测 loss 0.213、训练集准确率 90.8%，与真实后验在同一份数据上（0.214、90.8%）
    几乎一样；换数据种子，loss 约 0.17–0.24、准确率约 89–93%。

    python "archive/Introductory learning/01_Linear_Models/02_logistic_regression.py"

图：checkpoints/figures/logistic_regression.png（左：数据与决策边界；右：损失曲线）。
"""

from __future__ import annotations

import math

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from utils.io import is_smoke, save_figure
from utils.lesson_cli import lesson_args
from utils.torch_playground import setup_seed, time_block

SMOKE = is_smoke()
N_SAMPLES = 100 if SMOKE else 600
STEPS = 100 if SMOKE else 1500
LR = 0.5
CENTERS = (np.array([-1.0, -0.5]), np.array([1.0, 1.0]))  # 两团高斯的中心 μ₀、μ₁
SPREAD = 0.9  # 两团共用的标准差 s（各向同性：协方差 s²I）
# 默认配置（n = 600、1500 步）实测：loss 0.213、训练集准确率 90.8%；换 30 个数据种子，loss 0.17–0.24、准确率 89–93%
REFERENCE_LOSS = (0.17, 0.24)
REFERENCE_ACC = (0.89, 0.93)


# =============================================================================
# 数据：两团部分重叠的高斯（完全可分时最大似然解在无穷远，w 会一直变大）
# =============================================================================
def make_blobs(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    y = (rng.random(n) < 0.5).astype(np.float64)
    centers = np.where(y[:, None] == 1, CENTERS[1], CENTERS[0])
    X = centers + rng.standard_normal((n, 2)) * SPREAD
    return X, y


def bayes_optimal_logit(X: np.ndarray) -> np.ndarray:
    """真实后验的 logit：log p(y=1|x)/p(y=0|x)。类别先验各 1/2，x | y=k ~ N(μ_k, s²I)，贝叶斯公式给出
        log N(x; μ₁) − log N(x; μ₀) = [‖x − μ₀‖² − ‖x − μ₁‖²] / (2s²) = (μ₁ − μ₀)·x / s² − (‖μ₁‖² − ‖μ₀‖²) / (2s²)
    （‖x‖² 两边相消）。它是 x 的线性函数：逻辑回归的模型族里就有最优分类器，训练能逼近的上限就是它。"""
    mu0, mu1 = CENTERS
    return X @ (mu1 - mu0) / SPREAD**2 - (mu1 @ mu1 - mu0 @ mu0) / (2 * SPREAD**2)


def baselines(X: np.ndarray, y: np.ndarray) -> dict[str, float]:
    """同一份数据上的尺子：最好的常数预测、多数类、真实后验（贝叶斯最优），以及总体的贝叶斯准确率。

    - 常数预测 p ≡ c 的 BCE 在 c = ȳ 时最小，等于标签的熵 H(ȳ) = −ȳ ln ȳ − (1 − ȳ) ln(1 − ȳ)；
    - 总体贝叶斯准确率：最优决策边界是 μ₀、μ₁ 连线的中垂线，每一类的点落到另一侧的概率是
      P(N(0, s²) 在连线方向上超过 ‖μ₁ − μ₀‖/2) = 1 − Φ(‖μ₁ − μ₀‖ / 2s)。
    """
    check_xy(X, y)
    p = float(y.mean())
    h = -(p * np.log(p) + (1 - p) * np.log(1 - p)) if 0 < p < 1 else 0.0
    z = bayes_optimal_logit(X)
    margin = float(np.linalg.norm(CENTERS[1] - CENTERS[0])) / (2 * SPREAD)
    return {
        "constant_loss": float(h),
        "majority_acc": max(p, 1 - p),
        "bayes_loss": bce_with_logits(z, y),
        "bayes_acc": float(np.mean((z > 0) == (y == 1))),
        "bayes_acc_population": 0.5 * (1 + math.erf(margin / math.sqrt(2))),  # Φ(margin)
    }


def check_xy(X: np.ndarray, y: np.ndarray) -> None:
    if X.ndim != 2:
        raise ValueError(f"X 的形状应为 (n, d)，收到 {X.shape}")
    if y.shape != (X.shape[0],):
        raise ValueError(f"y 的形状应为 ({X.shape[0]},)，收到 {y.shape}")
    if not np.all((y == 0) | (y == 1)):
        raise ValueError("y 只能取 0 或 1（二分类标签）；多分类请用 softmax 回归")


# =============================================================================
# 前向、损失与手推梯度
# =============================================================================
def sigmoid(z: np.ndarray) -> np.ndarray:
    # 分两支写：z ≥ 0 时用 1/(1+e^{−z})，z < 0 时用 e^z/(1+e^z)，两支都只对非正数取 exp，不会溢出
    e = np.exp(-np.abs(z))
    return np.where(z >= 0, 1.0 / (1.0 + e), e / (1.0 + e))


def bce_with_logits(z: np.ndarray, y: np.ndarray) -> float:
    """L = mean[softplus(z) − y·z]，稳定版的二元交叉熵（见文件开头的推导）。"""
    return float(np.mean(np.logaddexp(0.0, z) - y * z))


def loss_and_grad(w: np.ndarray, b: float, X: np.ndarray, y: np.ndarray) -> tuple[float, np.ndarray, float]:
    """返回 (L, ∇_w L, ∂L/∂b)，梯度用推出来的 (1/n)Xᵀ(p − y)。"""
    z = X @ w + b  # (n,)
    dz = (sigmoid(z) - y) / len(y)  # ∂L/∂z_i = (p_i − y_i)/n
    return bce_with_logits(z, y), X.T @ dz, float(dz.sum())


def fit_gradient_descent(X: np.ndarray, y: np.ndarray, lr: float = LR, steps: int = STEPS):
    check_xy(X, y)
    w, b = np.zeros(X.shape[1]), 0.0
    losses = []
    for _ in range(steps):
        loss, gw, gb = loss_and_grad(w, b, X, y)
        losses.append(loss)
        w, b = w - lr * gw, b - lr * gb
    return w, b, losses


def fit_torch(X: np.ndarray, y: np.ndarray, lr: float = LR, steps: int = STEPS):
    """参照：nn.Linear + BCEWithLogitsLoss + SGD，同样全 0 初值，应与手写版本逐步一致。"""
    check_xy(X, y)
    model = nn.Linear(X.shape[1], 1, dtype=torch.float64)
    nn.init.zeros_(model.weight)
    nn.init.zeros_(model.bias)
    opt = torch.optim.SGD(model.parameters(), lr=lr)
    Xt, yt = torch.from_numpy(X), torch.from_numpy(y)
    losses = []
    for _ in range(steps):
        loss = F.binary_cross_entropy_with_logits(model(Xt).squeeze(1), yt)
        losses.append(loss.item())
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return model.weight.detach().numpy()[0], model.bias.item(), losses


def accuracy(w: np.ndarray, b: float, X: np.ndarray, y: np.ndarray) -> float:
    # p > 0.5 ⇔ z > 0：决策边界是直线 x·w + b = 0
    return float(np.mean(((X @ w + b) > 0) == (y == 1)))


# =============================================================================
# main
# =============================================================================
def plot(X, y, w, b, losses, losses_ref) -> plt.Figure:
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4.6))
    ax1.scatter(X[y == 0, 0], X[y == 0, 1], s=8, label="y=0")
    ax1.scatter(X[y == 1, 0], X[y == 1, 1], s=8, label="y=1")
    xs = np.linspace(X[:, 0].min(), X[:, 0].max(), 2)
    ax1.plot(xs, -(w[0] * xs + b) / w[1], "k-", label="decision boundary  p=0.5")
    ax1.set(title="logistic regression", xlabel="x1", ylabel="x2", ylim=(X[:, 1].min(), X[:, 1].max()))
    ax1.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.13), ncol=3)  # 放在图外：不遮住数据点
    # losses[i] 是做完 i 次更新后的 loss（losses[0] 是训练前 w = 0 时的 ln 2），所以横轴从 0 开始
    steps = np.arange(len(losses))
    ax2.plot(steps, losses, label="hand-derived gradient")
    ax2.plot(steps, losses_ref, "--", label="nn.Linear + BCEWithLogits + SGD")
    base = baselines(X, y)
    ax2.axhline(base["constant_loss"], color="tab:gray", ls="-.", lw=1, label="baseline: constant p = mean(y)")
    ax2.axhline(base["bayes_loss"], color="k", ls=":", lw=1, label="Bayes-optimal (true posterior)")
    ax2.set(title="BCE loss", xlabel="step (parameter updates done)", ylabel="BCE loss (nats)")
    ax2.legend(fontsize=8)
    fig.tight_layout()
    path = save_figure(fig, "logistic_regression.png", dpi=120)
    print(f"图已保存：{path}")
    return fig


def main() -> None:
    setup_seed()
    # 这里的矩阵都很小（最大 600 × 2）：多线程的同步开销比计算本身还大，机器忙时更明显，所以只用 1 个线程
    torch.set_num_threads(1)
    X, y = make_blobs(N_SAMPLES)
    print("== 逻辑回归：手推梯度 vs PyTorch ==")

    # 1) 单点检查：随机 (w, b) 处，手推梯度 = autograd 梯度；稳定版损失 = F.binary_cross_entropy_with_logits
    rng = np.random.default_rng(1)
    w0, b0 = rng.standard_normal(2) * 3, float(rng.standard_normal())
    loss, gw, gb = loss_and_grad(w0, b0, X, y)
    wt = torch.tensor(w0, requires_grad=True)
    bt = torch.tensor(b0, dtype=torch.float64, requires_grad=True)
    ref = F.binary_cross_entropy_with_logits(torch.from_numpy(X) @ wt + bt, torch.from_numpy(y))
    ref.backward()
    err = max(abs(loss - ref.item()), np.abs(gw - wt.grad.numpy()).max(), abs(gb - bt.grad.item()))
    print(f"随机点处 |L − L_torch|、|∇ − ∇_autograd| 的最大值 = {err:.2e}")
    assert err < 1e-12

    # 2) 训练：手写梯度下降与 nn.Linear + SGD 逐步一致
    with time_block("训练", verbose=False) as t:
        w, b, losses = fit_gradient_descent(X, y)
        w_ref, b_ref, losses_ref = fit_torch(X, y)
    diff = max(np.abs(w - w_ref).max(), abs(b - b_ref))
    print(f"训练 {STEPS} 步（{t.ms:.0f} ms）：w={np.round(w, 4)}, b={b:.4f}；与 PyTorch 的参数差 {diff:.2e}")
    base = baselines(X, y)
    print(f"最终 loss={losses[-1]:.4f}（初始 ln2={np.log(2):.4f}；最好的常数预测 H(ȳ)={base['constant_loss']:.4f}；"
          f"真实后验（贝叶斯最优）{base['bayes_loss']:.4f}；默认规模 n=600、1500 步换数据种子约 {REFERENCE_LOSS[0]:.2f}–{REFERENCE_LOSS[1]:.2f}）")
    print(f"训练集准确率 {accuracy(w, b, X, y):.1%}（瞎猜 50%；多数类 {base['majority_acc']:.1%}；"
          f"真实后验在这份数据上 {base['bayes_acc']:.1%}、总体 {base['bayes_acc_population']:.1%}；"
          f"默认规模换数据种子约 {REFERENCE_ACC[0]:.0%}–{REFERENCE_ACC[1]:.0%}）")
    assert diff < 1e-10
    plot(X, y, w, b, losses, losses_ref)


if __name__ == "__main__":
    lesson_args(__doc__)
    main()
