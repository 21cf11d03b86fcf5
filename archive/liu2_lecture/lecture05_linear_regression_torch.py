"""刘二《PyTorch 深度学习实践》第 05 讲 用 PyTorch 实现线性回归：nn.Module + 损失 + 优化器。

PyTorch 训练的四步套路（之后每一讲都是它）：
1. 准备数据（x_data、y_data 都是 (N, 1)：第 0 维是样本，第 1 维是特征）；
2. 用 nn.Module 定义模型（nn.Linear(1, 1) 算 ŷ = x wᵀ + b）；
3. 构造损失（nn.MSELoss）和优化器（torch.optim.SGD(model.parameters(), lr)）；
4. 训练循环：前向 → loss → optimizer.zero_grad() → loss.backward() → optimizer.step()。

课上用 MSELoss(size_average=False)，即 reduction="sum"：梯度是 mean 的 N 倍，等效学习率也大 N 倍。
本讲先手写 MSE（两种 reduction）与一步 SGD 更新，和 nn.MSELoss / torch.optim.SGD 对照；
课后作业是换各种优化器（Adagrad、Adam、Adamax、ASGD、LBFGS、RMSprop、Rprop、SGD）比较损失曲线。
LBFGS 要多次重算 loss，所以 step 要传一个 closure（一次 step 最多 20 次内迭代，所以它的"一步"远不止一次更新）。

多好算好：不看 x、只预测 ȳ = 4 的 sum-MSE = Σ(y − ȳ)² = 8；种子 0 的随机初始化约 44。数据无噪声，最优解 loss = 0，
但 float32 下预测值只能落在 y 附近的可表示数上，loss 的舍入尺度约 Σ(ulp(y_i)/2)² ≈ 1.3e-13，再往下就是噪声。
默认 1000 步：8 个优化器的最终 loss 在 1e-12（Adam、Rprop）到 1e-6（SGD ≈ 3e-7、ASGD ≈ 4e-7、RMSprop ≈ 7e-7，
它在 lr 固定时会在最优点附近振荡）之间；SMOKE 100 步：4e-10（LBFGS）到 1.3（RMSprop）。

    python archive/liu2_lecture/lecture05_linear_regression_torch.py

图：checkpoints/figures/liu2_lecture05_optimizers.png（各优化器的损失曲线）。
"""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import torch
import torch.nn as nn

from utils.io import is_smoke, save_figure
from utils.lesson_cli import lesson_args
from utils.torch_playground import setup_seed

SMOKE = is_smoke()
X_DATA = torch.tensor([[1.0], [2.0], [3.0]])
Y_DATA = torch.tensor([[2.0], [4.0], [6.0]])
EPOCHS = 100 if SMOKE else 1000

# 每个优化器一个能在这个小问题上收敛的学习率（自适应方法的 lr 就是每步大致的步长，不能照搬 SGD 的）
OPTIMIZERS: dict[str, tuple[type[torch.optim.Optimizer], dict]] = {
    "SGD": (torch.optim.SGD, {"lr": 0.01}),
    "Adagrad": (torch.optim.Adagrad, {"lr": 0.5}),
    "Adam": (torch.optim.Adam, {"lr": 0.05}),
    "Adamax": (torch.optim.Adamax, {"lr": 0.2}),
    "ASGD": (torch.optim.ASGD, {"lr": 0.01}),
    "LBFGS": (torch.optim.LBFGS, {"lr": 0.1}),
    "RMSprop": (torch.optim.RMSprop, {"lr": 0.01}),
    "Rprop": (torch.optim.Rprop, {"lr": 0.01}),
}


class LinearModel(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.linear = nn.Linear(1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim != 2 or x.shape[1] != 1:
            raise ValueError(f"x 的形状应为 (N, 1)，收到 {tuple(x.shape)}；一维数据请先 x.unsqueeze(1)")
        return self.linear(x)  # (N, 1)


def mse(pred: torch.Tensor, target: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
    sq = (pred - target) ** 2
    if reduction == "mean":
        return sq.mean()
    if reduction == "sum":
        return sq.sum()
    raise ValueError(f"reduction={reduction!r} 不支持，只能是 'mean' 或 'sum'")


def manual_sgd_step(model: nn.Module, lr: float) -> None:
    """θ ← θ − lr·∇θ，就是 torch.optim.SGD（无动量、无权重衰减）做的事。"""
    with torch.no_grad():
        for p in model.parameters():
            p -= lr * p.grad


def train(name: str, epochs: int = EPOCHS, seed: int = 0) -> tuple[LinearModel, list[float]]:
    """用 OPTIMIZERS[name] 整批训练 epochs 步。返回 (model, history)：history 有 epochs + 1 项，
    history[i] 是 i 步之后的 sum-MSE（history[0] 是训练前，最后一项是训练完的）。"""
    if name not in OPTIMIZERS:
        raise ValueError(f"未知优化器 {name!r}，可选：{sorted(OPTIMIZERS)}")
    torch.manual_seed(seed)
    model = LinearModel()
    cls, kwargs = OPTIMIZERS[name]
    opt = cls(model.parameters(), **kwargs)
    criterion = nn.MSELoss(reduction="sum")  # 课上的 size_average=False
    history = []

    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss = criterion(model(X_DATA), Y_DATA)
        loss.backward()
        return loss

    for _ in range(epochs):
        # step(closure) 返回的是本步更新**之前**的 loss；所有优化器都接受 closure，LBFGS 必须要
        history.append(opt.step(closure).item())
    with torch.no_grad():
        history.append(criterion(model(X_DATA), Y_DATA).item())
    return model, history


def baselines(y: torch.Tensor = Y_DATA) -> dict[str, float]:
    """sum-MSE 的参照：只预测均值 ȳ（= N·var(y)），以及 float32 的舍入尺度 Σ(ulp(y_i)/2)²。"""
    y64 = y.double()
    half_ulp = np.spacing(y.float().numpy()).astype(np.float64) / 2  # float32 在 y_i 处相邻两数间距的一半
    return {"mean": float(((y64 - y64.mean()) ** 2).sum()), "float32": float(np.sum(half_ulp**2))}


def plot(histories: dict[str, list[float]], base: dict[str, float] | None = None):
    fig, ax = plt.subplots(figsize=(8.5, 4.5))
    for name, h in histories.items():
        ax.semilogy(np.arange(len(h)), h, label=name)  # h[i] 是 i 步之后的 loss：0 是训练前，横轴从 0 开始
    if base is not None:
        ax.axhline(base["mean"], color="k", ls="--", lw=0.8, label="predict mean of y")
        ax.axhline(base["float32"], color="k", ls=":", lw=0.8, label="float32 rounding scale")
    # 纵轴不截断：Rprop、Adam 会掉到 1e-12 以下（float32 舍入噪声），截掉就看不见了
    ax.set(title="nn.Linear(1,1) on y=2x: loss per optimizer", xlabel="optimizer step (full batch, 0 = before training)",
           ylabel="sum of squared errors")
    ax.legend(fontsize=8, loc="center left", bbox_to_anchor=(1.01, 0.5))  # 图例放在图外，不挡曲线
    fig.tight_layout()
    path = save_figure(fig, "liu2_lecture05_optimizers.png", dpi=120)
    print(f"图已保存：{path}")
    return fig


def main() -> None:
    setup_seed()
    print("== 第 05 讲 用 PyTorch 实现线性回归 ==")
    model = LinearModel()
    pred = model(X_DATA)
    for reduction in ("mean", "sum"):
        err = (mse(pred, Y_DATA, reduction) - nn.MSELoss(reduction=reduction)(pred, Y_DATA)).abs().item()
        assert err < 1e-6
    print("手写 MSE（mean / sum）= nn.MSELoss")

    # 一步手写 SGD 更新 = torch.optim.SGD 的一步
    ref = LinearModel()
    ref.load_state_dict(model.state_dict())
    for m in (model, ref):
        mse(m(X_DATA), Y_DATA, "sum").backward()
    manual_sgd_step(model, 0.01)
    torch.optim.SGD(ref.parameters(), lr=0.01).step()
    err = max((a - b).abs().max().item() for a, b in zip(model.parameters(), ref.parameters()))
    print(f"手写的一步 SGD 更新 vs torch.optim.SGD：参数最大差 {err:.1e}")
    assert err < 1e-6

    histories = {}
    print(f"{'优化器':<9} {'w':>8} {'b':>8} {'最终 loss':>11}  ŷ(4)")
    for name in OPTIMIZERS:
        model, histories[name] = train(name)
        w, b = model.linear.weight.item(), model.linear.bias.item()
        y4 = model(torch.tensor([[4.0]])).item()
        print(f"{name:<9} {w:>8.4f} {b:>8.4f} {histories[name][-1]:>11.2e}  {y4:.4f}")
        # 学习结论：每个优化器都让损失下降；完整训练时都拟合到 w≈2、b≈0，ŷ(4)≈8
        assert histories[name][-1] < histories[name][0]
        if not SMOKE:
            assert abs(w - 2) < 0.05 and abs(b) < 0.1, name
    base = baselines()
    finals = [h[-1] for h in histories.values()]
    print(f"最终 loss {min(finals):.1e} – {max(finals):.1e}（对照：只预测均值 ȳ {base['mean']:.3f}；"
          f"初始化 {next(iter(histories.values()))[0]:.2f}；float32 舍入尺度 {base['float32']:.1e}；"
          f"默认 1000 步约 1e-12 – 1e-6，SMOKE 100 步约 4e-10 – 1.3）")
    plot(histories, base)


if __name__ == "__main__":
    lesson_args(__doc__)
    main()
