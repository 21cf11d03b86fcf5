"""线性回归 + 均方误差（MSE）：同一个问题的四种解法，答案必须一样。

模型 ŷ = X w + b，损失 L(w, b) = (1/n) Σ_i (x_i·w + b − y_i)²。把偏置并进权重（给 X 拼一列 1，
记 X̃ = [X, 1]，θ = [w; b]），L(θ) = (1/n)‖X̃θ − y‖²，这是 θ 的凸二次函数，全局最小值唯一（X̃ 列满秩时）。

    1. 正规方程（normal equations）：令梯度为 0 直接解线性方程组，一步到位；
    2. 手写梯度下降：自己推梯度公式，θ ← θ − lr·∇L；
    3. autograd：只写前向，梯度交给 torch.autograd，更新仍然手写；
    4. nn.Linear + torch.optim.SGD：工业界的写法。

2、3、4 从同一个初值（全 0）、用同一个学习率走同样的步数，它们是"同一条轨迹"的三种写法，
每一步的参数都应相同（float64 下只差舍入误差，实测 ≤ 1e-15）；走到收敛后它们又都应等于 1 的解析解。

多少算好（训练集 MSE）：不看特征、只预测 y 的均值，MSE = var(y)（本脚本现场算）；数据里有标准差 σ = 0.3 的噪声，
谁也预测不了，最小二乘在训练集上的 MSE 的期望是 σ²(n − d − 1)/n ≈ 0.089（n = 500）——拟合好了应落在它附近，
而不是 0。默认配置（n = 500）实测 d=1 为 0.0990、d=5 为 0.0863；换 100 个数据种子，95% 落在 0.078–0.100（全部在 0.077–0.102）。

    python "archive/Introductory learning/01_Linear_Models/01_linear_regression.py"

图：checkpoints/figures/linear_regression.png（左：一维数据与四种拟合直线；右：损失曲线）。
"""

from __future__ import annotations

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
N_SAMPLES = 64 if SMOKE else 500
STEPS = 300 if SMOKE else 1000
LR = 0.1
NOISE = 0.3  # 数据噪声的标准差 σ：训练集 MSE 的下限由它决定
# 默认配置（n = 500）的训练集 MSE：d=1 实测 0.0990、d=5 实测 0.0863；换 100 个数据种子，95% 落在 0.078–0.100（全部在 0.077–0.102）
REFERENCE_MSE = (0.08, 0.10)


# =============================================================================
# 数据
# =============================================================================
def make_data(n: int, d: int, noise: float = NOISE, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray, float]:
    """y = X w_true + b_true + 噪声。特征取标准正态：各维尺度相同，梯度下降的条件数才不会太差。"""
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((n, d))
    w_true = rng.uniform(-2, 2, size=d)
    b_true = float(rng.uniform(-1, 1))
    y = X @ w_true + b_true + noise * rng.standard_normal(n)
    return X, y, w_true, b_true


def check_xy(X: np.ndarray, y: np.ndarray) -> None:
    """形状不对时给出能看懂的报错，而不是矩阵乘法深处的 "shapes not aligned"。"""
    if X.ndim != 2:
        raise ValueError(f"X 的形状应为 (n, d)，收到 {X.shape}；一维特征请写成 X.reshape(-1, 1)")
    if y.ndim != 1 or y.shape[0] != X.shape[0]:
        raise ValueError(f"y 的形状应为 (n,) = ({X.shape[0]},)，收到 {y.shape}；多输出请逐个拟合或把 y 展平")


def add_bias_column(X: np.ndarray) -> np.ndarray:
    """X̃ = [X, 1]：把偏置 b 当成"永远乘 1 的那个权重"，公式里就不用单独处理 b。"""
    return np.concatenate([X, np.ones((X.shape[0], 1), dtype=X.dtype)], axis=1)


def mse(theta: np.ndarray, X: np.ndarray, y: np.ndarray) -> float:
    """L(θ) = (1/n)‖X̃θ − y‖²（θ 的最后一个分量是偏置）。"""
    r = add_bias_column(X) @ theta - y
    return float(r @ r / len(y))


# =============================================================================
# 1. 正规方程
# =============================================================================
# 推导：L(θ) = (1/n)(X̃θ − y)ᵀ(X̃θ − y)
#   = (1/n)(θᵀX̃ᵀX̃θ − 2yᵀX̃θ + yᵀy)
#   ∇L = (2/n)(X̃ᵀX̃θ − X̃ᵀy)                       （用到 ∇_θ θᵀAθ = 2Aθ，A 对称）
# 令 ∇L = 0 得正规方程 X̃ᵀX̃ θ = X̃ᵀ y。L 的 Hessian 是 (2/n)X̃ᵀX̃ ⪰ 0，所以驻点就是全局最小点。
# 实现上用 solve 解方程，而不是先求逆再乘：k×k 的矩阵（k = d + 1），LU 分解后解方程约 (2/3)k³ 次浮点运算，
# 求逆约 2k³，是前者的 3 倍，数值误差也更大。
# （X̃ᵀX̃ 的条件数是 X̃ 的平方；特征严重共线时应改用 QR/SVD，即 np.linalg.lstsq。）
def fit_normal_equation(X: np.ndarray, y: np.ndarray) -> np.ndarray:
    check_xy(X, y)
    Xb = add_bias_column(X)
    return np.linalg.solve(Xb.T @ Xb, Xb.T @ y)


# =============================================================================
# 2. 手写梯度下降
# =============================================================================
# 梯度就是上面那一行：∇L = (2/n) X̃ᵀ(X̃θ − y) = (2/n) X̃ᵀ r，r 是残差。
# 为什么会收敛：沿梯度走一小步 Δθ = −lr·∇L，一阶展开 L(θ+Δθ) ≈ L(θ) − lr‖∇L‖² < L(θ)。
# 对二次函数，lr < 2/λ_max(Hessian) 时每一步都在缩小误差；特征标准化后 λ_max ≈ 2（默认数据 d=1 为 2.01、
# d=5 为 2.27，上限 lr < 0.88），lr=0.1 很安全：约 50 步 loss 就与最优值只差 1e-6（相对）。
def fit_gradient_descent(
    X: np.ndarray, y: np.ndarray, lr: float = LR, steps: int = STEPS
) -> tuple[np.ndarray, list[float]]:
    check_xy(X, y)
    Xb = add_bias_column(X)
    n = len(y)
    theta = np.zeros(Xb.shape[1])
    losses = []
    for _ in range(steps):
        r = Xb @ theta - y  # (n,)
        losses.append(float(r @ r / n))
        theta = theta - lr * (2.0 / n) * (Xb.T @ r)
    return theta, losses


# =============================================================================
# 3. autograd：只写前向
# =============================================================================
# loss.backward() 算出的 theta.grad 应与上面的 (2/n)X̃ᵀr 一模一样。更新要放在 torch.no_grad() 里：
# 否则"更新"这一步本身也会被记进计算图；更新后要把 grad 清零，因为 backward 是累加到 .grad 上的。
def fit_autograd(X: np.ndarray, y: np.ndarray, lr: float = LR, steps: int = STEPS) -> tuple[np.ndarray, list[float]]:
    check_xy(X, y)
    Xb = torch.from_numpy(add_bias_column(X))
    yt = torch.from_numpy(y)
    theta = torch.zeros(Xb.shape[1], dtype=Xb.dtype, requires_grad=True)
    losses = []
    for _ in range(steps):
        loss = ((Xb @ theta - yt) ** 2).mean()
        losses.append(loss.item())
        loss.backward()
        with torch.no_grad():
            theta -= lr * theta.grad
        theta.grad = None
    return theta.detach().numpy(), losses


# =============================================================================
# 4. nn.Linear + optimizer：工业界的写法
# =============================================================================
# nn.Linear 默认用 Kaiming-uniform 随机初始化；为了与前两种走同一条轨迹，这里把权重和偏置置 0。
# 它的 weight 形状是 (out, in) = (1, d)，前向是 x @ Wᵀ + b。
def fit_nn_linear(X: np.ndarray, y: np.ndarray, lr: float = LR, steps: int = STEPS) -> tuple[np.ndarray, list[float]]:
    check_xy(X, y)
    Xt = torch.from_numpy(X)
    yt = torch.from_numpy(y).unsqueeze(1)  # (n, 1)，与模型输出同形，避免 (n,1) − (n,) 广播成 (n,n) 的经典错误
    model = nn.Linear(X.shape[1], 1, dtype=Xt.dtype)
    nn.init.zeros_(model.weight)
    nn.init.zeros_(model.bias)
    opt = torch.optim.SGD(model.parameters(), lr=lr)
    losses = []
    for _ in range(steps):
        loss = F.mse_loss(model(Xt), yt)
        losses.append(loss.item())
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    theta = torch.cat([model.weight.detach().reshape(-1), model.bias.detach()])
    return theta.numpy(), losses


# =============================================================================
# main：四种解法对比 + 图
# =============================================================================
def solve_all(X: np.ndarray, y: np.ndarray, lr: float = LR, steps: int = STEPS) -> dict[str, tuple[np.ndarray, list[float]]]:
    """返回 {方法名: (θ, 损失曲线)}；正规方程没有迭代过程，损失曲线只有一个点。"""
    theta_ne = fit_normal_equation(X, y)
    return {
        "normal equations": (theta_ne, [mse(theta_ne, X, y)]),
        "hand-written GD": fit_gradient_descent(X, y, lr, steps),
        "autograd": fit_autograd(X, y, lr, steps),
        "nn.Linear + SGD": fit_nn_linear(X, y, lr, steps),
    }


def mse_baselines(X: np.ndarray, y: np.ndarray, noise: float = NOISE) -> dict[str, float]:
    """训练集 MSE 的两把尺子：

    - "mean"：不看特征、永远预测 y 的均值，MSE 就是 y 的（有偏）方差 var(y)——任何有用的模型都该比它低；
    - "noise_floor"：噪声 ε ~ N(0, σ²) 谁也预测不了。最小二乘的残差是 ε 在 X̃ 列空间的正交补上的投影，
      那个子空间有 n − p 维（p = d + 1 个参数），所以 E[训练集 MSE] = σ²(n − p)/n：略低于 σ²，不会是 0。
    """
    check_xy(X, y)
    n, d = X.shape
    return {"mean": float(np.var(y)), "noise_floor": noise**2 * (n - d - 1) / n}


def plot(X: np.ndarray, y: np.ndarray, results: dict) -> plt.Figure:
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4))
    ax1.scatter(X[:, 0], y, s=8, alpha=0.5, color="gray", label="data")
    grid = np.linspace(X[:, 0].min(), X[:, 0].max(), 2)
    for (name, (theta, _)), style in zip(results.items(), ["-", "--", ":", "-."]):
        ax1.plot(grid, theta[0] * grid + theta[1], style, lw=2, label=f"{name}: w={theta[0]:.3f}, b={theta[1]:.3f}")
    ax1.set(title="linear regression fit (1-D)", xlabel="x", ylabel="y")
    ax1.legend(fontsize=7)
    # losses[i] 是做完 i 次更新后的 MSE（losses[0] 是训练前 θ = 0 时的值），所以横轴从 0 开始。
    # 三条迭代曲线完全重合（同一条轨迹），用不同的线型和粗细叠画，才看得出三条都在。
    for (name, (_, losses)), (style, lw) in zip(list(results.items())[1:], [("-", 4), ("--", 2.5), (":", 1.5)]):
        ax2.plot(np.arange(len(losses)), losses, style, lw=lw, label=name)
    ax2.axhline(np.var(y), color="tab:gray", ls="-.", lw=1, label="baseline: predict mean, var(y)")
    ax2.axhline(results["normal equations"][1][0], color="k", ls="--", lw=1, label="optimum (normal eq.)")
    ax2.set(title="MSE during training", xlabel="step (parameter updates done)", ylabel="MSE", yscale="log")
    ax2.legend(fontsize=7)
    fig.tight_layout()
    path = save_figure(fig, "linear_regression.png", dpi=120)
    print(f"图已保存：{path}")
    return fig


def main() -> None:
    setup_seed()
    # 这里的矩阵都很小（最大 500 × 6）：多线程的同步开销比计算本身还大，机器忙时更明显，所以只用 1 个线程
    torch.set_num_threads(1)
    print("== 线性回归：四种解法 ==")
    for d in (1, 5):
        X, y, w_true, b_true = make_data(N_SAMPLES, d, seed=d)
        with time_block(f"d={d} 四种解法", verbose=False) as t:
            results = solve_all(X, y)
        ref = results["normal equations"][0]
        print(f"d={d}: 真实 w={np.round(w_true, 3)}, b={b_true:.3f}；正规方程 θ={np.round(ref, 3)}（{t.ms:.0f} ms）")
        for name, (theta, losses) in results.items():
            print(f"  {name:17s} loss={losses[-1]:.6f}  max|θ − θ_normal| = {np.abs(theta - ref).max():.2e}")
        base = mse_baselines(X, y)
        print(f"  训练集 MSE {results['normal equations'][1][0]:.4f}（只预测均值 var(y) {base['mean']:.4f}；"
              f"噪声下限 σ²(n−d−1)/n {base['noise_floor']:.4f}；默认配置 n=500 约 {REFERENCE_MSE[0]:.2f}–{REFERENCE_MSE[1]:.2f}）")
        gd, ag, nl = (results[k][0] for k in ("hand-written GD", "autograd", "nn.Linear + SGD"))
        # 三种迭代解法走的是同一条轨迹：差别只来自浮点运算顺序
        assert np.allclose(gd, ag, atol=1e-10) and np.allclose(gd, nl, atol=1e-10), "三种迭代解法的轨迹不一致"
        assert np.allclose(gd, ref, atol=1e-4), "梯度下降没有收敛到正规方程的解"
        if d == 1:
            plot(X, y, results)
    print("结论：三种迭代写法逐步一致（≤1e-10），并收敛到正规方程的解析解（≤1e-4）。")


if __name__ == "__main__":
    lesson_args(__doc__)
    main()
