"""刘二《PyTorch 深度学习实践》第 06 讲 逻辑回归：分类问题输出概率，sigmoid + 二元交叉熵（BCE）。

课上的例子：学习 x 小时，考试是否通过（y ∈ {0, 1}）。x = 1, 2, 3 → y = 0, 0, 1。
线性模型的输出 z = xw + b 在 (−∞, ∞)，用 logistic 函数 σ(z) = 1 / (1 + e^{−z}) 压到 (0, 1)，
解释成 P(y = 1 | x)。损失不再是 MSE，而是两个伯努利分布之间的交叉熵：
    BCE = −(1/N) Σ [ y log p + (1 − y) log(1 − p) ]
它是负对数似然：p 越接近真实标签，loss 越接近 0；预测 p = 0 而 y = 1 时 log 0 = −∞。
nn.BCELoss 的做法是把 log 截断到 ≥ −100（所以 loss 最多是 100），本讲手写的 bce() 也这么做，
并在 p 取 0、1 这样的边界值时与 nn.BCELoss 对照。

实践中更稳的是 BCEWithLogitsLoss：直接吃 z，用 log σ(z) = −softplus(−z) 避开 log(0)。
学完后的模型：P(pass | x) = 0.5 的地方就是决策边界 x = −b/w，应落在 2 和 3 小时之间。

多好算好（训练用 reduction="sum"，3 个样本的 BCE 之和）：
- 瞎猜 p = 0.5：3·ln 2 = 2.079；只猜训练集的通过率 p = 1/3（不看 x 的最好常数）：3·H(1/3) = 1.910；
  多数类（全判不通过）的准确率 2/3。
- 三个点线性可分：把 w 放大，loss 可以任意接近 0，但永远到不了 0，所以 loss 随 epoch 一直慢慢降（大约 ∝ 1/t），
  边界则慢慢移向最大间隔的 2.5 小时（梯度下降在可分数据上的隐式偏好，Soudry 等 2018）。
- 默认 5000 个 epoch（lr 0.05）：loss ≈ 0.11（种子 0–4 都在 0.113–0.114），边界 ≈ 2.47；
  SMOKE 300 个 epoch：loss ≈ 0.82–0.89，边界 ≈ 2.41。

    python archive/liu2_lecture/lecture06_logistic_regression.py

图：checkpoints/figures/liu2_lecture06_logistic_regression.png（通过概率 vs 学习小时数）。
"""

from __future__ import annotations

import math

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import torch
import torch.nn as nn
import torch.nn.functional as F

from utils.io import is_smoke, save_figure
from utils.lesson_cli import lesson_args
from utils.torch_playground import setup_seed

SMOKE = is_smoke()
X_DATA = torch.tensor([[1.0], [2.0], [3.0]])
Y_DATA = torch.tensor([[0.0], [0.0], [1.0]])
EPOCHS = 300 if SMOKE else 5000
LR = 0.05
LOG_CLAMP = -100.0  # 与 nn.BCELoss 相同的截断


def sigmoid(z: torch.Tensor) -> torch.Tensor:
    # 分支写法：只对非正数取 exp，z 很大或很小都不会溢出
    e = torch.exp(-z.abs())
    return torch.where(z >= 0, 1 / (1 + e), e / (1 + e))


def bce(p: torch.Tensor, y: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
    """−[y log p + (1 − y) log(1 − p)]，log 截断到 ≥ −100（与 nn.BCELoss 相同）。"""
    if p.shape != y.shape:
        raise ValueError(f"预测 p 的形状 {tuple(p.shape)} 与标签 y 的形状 {tuple(y.shape)} 不一致")
    if ((p < 0) | (p > 1)).any():
        raise ValueError("BCE 的输入必须是 [0, 1] 里的概率；若手里是 logit，先过 sigmoid 或改用 bce_with_logits")
    loss = -(y * torch.log(p).clamp(min=LOG_CLAMP) + (1 - y) * torch.log1p(-p).clamp(min=LOG_CLAMP))
    if reduction == "mean":
        return loss.mean()
    if reduction == "sum":
        return loss.sum()
    raise ValueError(f"reduction={reduction!r} 不支持，只能是 'mean' 或 'sum'")


def bce_with_logits(z: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """mean[softplus(z) − y·z]：把 log σ(z) = −softplus(−z) 代进 BCE 合并而来，z 再大也不溢出。"""
    return (F.softplus(z) - y * z).mean()


class LogisticRegressionModel(nn.Module):
    def __init__(self, in_features: int = 1) -> None:
        super().__init__()
        self.linear = nn.Linear(in_features, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.linear(x))  # (N, 1)，P(y = 1 | x)


def train(epochs: int = EPOCHS, lr: float = LR, seed: int = 0) -> tuple[LogisticRegressionModel, list[float]]:
    """整批 SGD。返回 (model, history)：history 有 epochs + 1 项，history[i] 是 i 步之后的 BCE 之和（[0] 是训练前）。"""
    torch.manual_seed(seed)
    model = LogisticRegressionModel()
    criterion = nn.BCELoss(reduction="sum")  # 课上的 size_average=False
    opt = torch.optim.SGD(model.parameters(), lr=lr)
    history = []
    for _ in range(epochs):
        loss = criterion(model(X_DATA), Y_DATA)
        history.append(loss.item())
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        history.append(criterion(model(X_DATA), Y_DATA).item())
    return model, history


def baselines(y: torch.Tensor = Y_DATA) -> dict[str, float]:
    """不看 x 的参照（BCE 按样本求和，与训练的 reduction="sum" 一致）：
    chance = 永远输出 0.5；prior = 永远输出训练集的通过率（BCE 最小的常数）；majority = 全判多数类的准确率。"""
    y = y.double().flatten()
    n, rate = len(y), y.mean().item()
    entropy = -(rate * math.log(rate) + (1 - rate) * math.log(1 - rate)) if 0 < rate < 1 else 0.0
    return {"chance": n * math.log(2), "prior": n * entropy, "rate": rate, "majority": max(rate, 1 - rate)}


def plot(model: LogisticRegressionModel, boundary: float, base_rate: float | None = None):
    hours = torch.linspace(0, 10, 200)[:, None]
    with torch.no_grad():
        prob = model(hours)[:, 0]
    fig, ax = plt.subplots(figsize=(8, 4))
    ax.plot(hours[:, 0], prob, label="model sigmoid(x*w + b)")
    ax.scatter(X_DATA[:, 0], Y_DATA[:, 0], c="k", zorder=3, label="data")
    ax.axhline(0.5, color="r", ls="--", lw=0.8, label="p = 0.5")
    ax.axvline(boundary, color="g", ls=":", label=f"boundary x={boundary:.2f}")
    if base_rate is not None:
        ax.axhline(base_rate, color="tab:gray", ls="--", lw=0.8, label=f"base rate {base_rate:.2f} (ignores x)")
    ax.set(title="logistic regression", xlabel="hours of study (h)", ylabel="P(pass | hours)")
    ax.legend(fontsize=8, loc="center left", bbox_to_anchor=(1.01, 0.5))  # 图例放在图外，不挡曲线与数据点
    fig.tight_layout()
    path = save_figure(fig, "liu2_lecture06_logistic_regression.png", dpi=120)
    print(f"图已保存：{path}")
    return fig


def main() -> None:
    setup_seed()
    print("== 第 06 讲 逻辑回归 ==")
    z = torch.linspace(-120, 120, 41)
    assert torch.allclose(sigmoid(z), torch.sigmoid(z), atol=1e-7, rtol=0)
    p = torch.tensor([0.0, 1e-30, 0.2, 0.5, 0.9, 1.0, 1.0, 0.0])
    y = torch.tensor([1.0, 1.0, 0.0, 1.0, 1.0, 0.0, 1.0, 0.0])
    for reduction in ("mean", "sum"):
        ours, ref = bce(p, y, reduction), nn.BCELoss(reduction=reduction)(p, y)
        assert torch.allclose(ours, ref, rtol=1e-6), (ours, ref)
    zz = torch.randn(50) * 30
    yy = (torch.rand(50) > 0.5).float()
    assert torch.allclose(bce_with_logits(zz, yy), F.binary_cross_entropy_with_logits(zz, yy), rtol=1e-6)
    print("sigmoid = torch.sigmoid；手写 BCE（含 p=0/1 的截断）= nn.BCELoss；手写 BCE-with-logits = F 的版本")

    model, history = train()
    w, b = model.linear.weight.item(), model.linear.bias.item()
    boundary = -b / w
    with torch.no_grad():
        prob = model(X_DATA)[:, 0]
    base = baselines()
    train_acc = ((prob > 0.5).float() == Y_DATA[:, 0]).float().mean().item()
    print(f"训练 {EPOCHS} 个 epoch：BCE 之和 {history[0]:.3f} → {history[-1]:.3f}（瞎猜 p=0.5：{base['chance']:.3f}，"
          f"只猜通过率 p={base['rate']:.3f}：{base['prior']:.3f}；可分数据 loss 只会趋于 0；"
          f"默认 5000 epoch 约 0.11，SMOKE 300 epoch 约 0.8–0.9），w={w:.3f} b={b:.3f}")
    print(f"P(pass | 1,2,3 小时) = {[round(v, 3) for v in prob.tolist()]}，训练准确率 {train_acc:.3f}"
          f"（多数类 {base['majority']:.3f}），决策边界 x = {boundary:.2f} 小时"
          f"（2–3 之间都能全分对；越训越靠近最大间隔的 2.5，默认约 2.47）")
    # 学习结论：三个训练点全部分对，边界落在 2 与 3 小时之间
    assert history[-1] < history[0]
    assert ((prob > 0.5).float() == Y_DATA[:, 0]).all()
    assert 2.0 < boundary < 3.0
    plot(model, boundary, base["rate"])


if __name__ == "__main__":
    lesson_args(__doc__)
    main()
