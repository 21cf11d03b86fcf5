"""手推反向传播：用矩阵微积分推出 MLP 每一层的梯度，只用矩阵乘法实现，并与 torch.autograd 逐元素对照。

网络（L 层，批大小 B，第 l 层把 d_{l−1} 维变成 d_l 维）：
    H₀ = X                               (B, d₀)
    Z_l = H_{l−1} W_l + b_l              (B, d_l)      W_l (d_{l−1}, d_l)，b_l 广播到每一行
    H_l = φ(Z_l)          l < L          φ = tanh 或 relu，逐元素
    P = softmax(Z_L)，  ℒ = −(1/B) Σ_i log P[i, y_i]

记号：对任意中间量 A，Ā = ∂ℒ/∂A，与 A 同形。推导的工具是"微分 + 迹"：
标量 ℒ 的微分可以写成 dℒ = Σ_ij Ā_ij dA_ij = tr(Āᵀ dA)，反过来，只要把 dℒ 整理成 tr(Mᵀ dA) 的形式，就有 Ā = M。

1. 输出层（softmax + 交叉熵，推导见 05_information_theory.py）：
       Z̄_L = (P − Y)/B，Y 是 one-hot 标签。
2. 仿射层 Z = H W + b：dZ = dH·W + H·dW + 1·dbᵀ（1 是 B 维全 1 列向量），于是
       dℒ = tr(Z̄ᵀ dZ) = tr(Z̄ᵀ dH W) + tr(Z̄ᵀ H dW) + tr(Z̄ᵀ 1 dbᵀ)
   用迹的循环性 tr(ABC) = tr(CAB)：
       tr(Z̄ᵀ dH W) = tr(W Z̄ᵀ dH) = tr((Z̄ Wᵀ)ᵀ dH)   ⇒  H̄ = Z̄ Wᵀ          (B, d_{l−1})
       tr(Z̄ᵀ H dW) = tr((Hᵀ Z̄)ᵀ dW)                 ⇒  W̄ = Hᵀ Z̄          (d_{l−1}, d_l)
       tr(Z̄ᵀ 1 dbᵀ) = dbᵀ Z̄ᵀ 1 = (Z̄ᵀ1)ᵀ db          ⇒  b̄ = Z̄ᵀ 1 = Σ_rows Z̄ (d_l,)
   形状自检永远成立：梯度与变量同形，这是排查手推错误的第一把尺子。
   b̄ 是按行求和——这就是 02_tensor_autograd.py 里"广播的反向 = 求和"的矩阵版本。
3. 逐元素激活 H = φ(Z)：dH = φ'(Z) ⊙ dZ，tr(H̄ᵀ(φ'(Z) ⊙ dZ)) = tr((H̄ ⊙ φ'(Z))ᵀ dZ)
       ⇒  Z̄ = H̄ ⊙ φ'(Z)，tanh' = 1 − H²（用前向存下的 H，不必重算），relu' = 1[Z > 0]。

反向只需要前向存下的 H_{l−1}、Z_l（或 H_l）：这就是训练比推理多占显存的原因（activation memory）。

多少算好（digits 上最后 20 步小批次 loss 的平均）：瞎猜 ln 10 ≈ 2.303；同样的 SGD（lr 0.2、批 64、1000 步）训练的
线性 softmax 回归（去掉隐藏层，本脚本现场训练）0.185；64→64→10 的 tanh MLP 默认配置 0.067，换 6 个种子 0.062–0.083。

    python "archive/Introductory learning/02_MLP/03_manual_backprop.py"

图：checkpoints/figures/manual_backprop.png（手推梯度训练与 autograd 训练的 loss 曲线重合）。
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import torch
import torch.nn.functional as F
from sklearn.datasets import load_digits

from utils.io import is_smoke, save_figure
from utils.lesson_cli import lesson_args
from utils.torch_playground import setup_seed, time_block

SMOKE = is_smoke()
ACTIVATIONS = ("tanh", "relu")
Params = list[tuple[torch.Tensor, torch.Tensor]]
STEPS = 20 if SMOKE else 1000
LR = 0.2
TAIL = 20  # 报告最后 TAIL 步小批次 loss 的平均：单个批次的 loss 噪声太大
# 默认配置（1000 步、lr 0.2、批 64）最后 20 步的平均 loss：实测 0.067；换 6 个初始化/抽样种子 0.062–0.083
REFERENCE_LOSS = (0.06, 0.09)


def init_params(sizes: Sequence[int], seed: int = 0, dtype=torch.float64) -> Params:
    """W_l ~ U(−1/√d_{l−1}, 1/√d_{l−1})（nn.Linear 的默认分布），b_l 同分布。"""
    if len(sizes) < 2:
        raise ValueError(f"sizes 至少要有输入和输出两个数，收到 {list(sizes)}")
    g = torch.Generator().manual_seed(seed)
    params = []
    for d_in, d_out in zip(sizes[:-1], sizes[1:]):
        bound = d_in**-0.5
        W = (torch.rand(d_in, d_out, generator=g, dtype=dtype) * 2 - 1) * bound
        b = (torch.rand(d_out, generator=g, dtype=dtype) * 2 - 1) * bound
        params.append((W, b))
    return params


def _check(params: Params, X: torch.Tensor, y: torch.Tensor, act: str) -> None:
    if act not in ACTIVATIONS:
        raise ValueError(f"act={act!r} 不支持；可选 {ACTIVATIONS}")
    if X.ndim != 2 or X.shape[1] != params[0][0].shape[0]:
        raise ValueError(f"X 的形状应为 (B, {params[0][0].shape[0]})，收到 {tuple(X.shape)}")
    n_classes = params[-1][0].shape[1]
    if y.shape != (X.shape[0],) or y.dtype != torch.int64 or y.min() < 0 or y.max() >= n_classes:
        raise ValueError(f"y 应为形状 ({X.shape[0]},) 的 int64 类别下标，取值 0..{n_classes - 1}")


# =============================================================================
# 前向（存下反向要用的量）与手推的反向
# =============================================================================
def forward(params: Params, X: torch.Tensor, act: str = "tanh") -> tuple[torch.Tensor, list[torch.Tensor]]:
    """返回 logits Z_L 与缓存 [H₀, H₁, …, H_{L−1}]（relu 还需要 Z，但 1[Z>0] = 1[H>0]，存 H 就够了）。"""
    phi = torch.tanh if act == "tanh" else torch.relu
    H, cache = X, []
    for l, (W, b) in enumerate(params):
        cache.append(H)
        Z = H @ W + b  # (B, d_l)
        H = phi(Z) if l < len(params) - 1 else Z
    return H, cache


def softmax_cross_entropy(logits: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """返回 (ℒ, P)。log P = Z − logsumexp(Z)，减最大值防止 exp 溢出。"""
    shifted = logits - logits.max(dim=1, keepdim=True).values
    logP = shifted - shifted.exp().sum(dim=1, keepdim=True).log()
    loss = -logP[torch.arange(len(y)), y].mean()
    return loss, logP.exp()


def backward(params: Params, cache: list[torch.Tensor], P: torch.Tensor, y: torch.Tensor, act: str = "tanh") -> Params:
    """手推梯度，返回每层的 (W̄, b̄)。每行公式的推导见文件开头。"""
    B = P.shape[0]
    Y = F.one_hot(y, P.shape[1]).to(P.dtype)
    Zbar = (P - Y) / B  # (B, d_L)：softmax + 交叉熵的梯度
    grads: Params = []
    for l in reversed(range(len(params))):
        W, _ = params[l]
        H_prev = cache[l]  # (B, d_{l−1})
        grads.append((H_prev.T @ Zbar, Zbar.sum(dim=0)))  # W̄ = Hᵀ Z̄，b̄ = Σ_rows Z̄
        if l == 0:
            break  # 不需要对输入 X 的梯度
        Hbar = Zbar @ W.T  # (B, d_{l−1})：H̄ = Z̄ Wᵀ
        # H_prev = φ(Z_{l−1})；Z̄_{l−1} = H̄ ⊙ φ'(Z_{l−1})
        Zbar = Hbar * (1 - H_prev**2) if act == "tanh" else Hbar * (H_prev > 0)
    return grads[::-1]


def manual_loss_and_grads(params: Params, X: torch.Tensor, y: torch.Tensor, act: str = "tanh"):
    _check(params, X, y, act)
    logits, cache = forward(params, X, act)
    loss, P = softmax_cross_entropy(logits, y)
    return loss, backward(params, cache, P, y, act)


def autograd_loss_and_grads(params: Params, X: torch.Tensor, y: torch.Tensor, act: str = "tanh"):
    """参照：同样的网络用 nn.functional 写，梯度交给 torch.autograd。"""
    _check(params, X, y, act)
    leaves = [(W.clone().requires_grad_(), b.clone().requires_grad_()) for W, b in params]
    h = X
    for l, (W, b) in enumerate(leaves):
        h = F.linear(h, W.T, b)
        if l < len(leaves) - 1:
            h = torch.tanh(h) if act == "tanh" else F.relu(h)
    loss = F.cross_entropy(h, y)
    loss.backward()
    return loss.detach(), [(W.grad, b.grad) for W, b in leaves]


# =============================================================================
# 用手推梯度训练
# =============================================================================
def train(params: Params, X: torch.Tensor, y: torch.Tensor, steps: int, lr: float, act: str,
          use_autograd: bool, batch_size: int = 64, seed: int = 0) -> list[float]:
    params = [(W.clone(), b.clone()) for W, b in params]
    g = torch.Generator().manual_seed(seed)
    step_fn = autograd_loss_and_grads if use_autograd else manual_loss_and_grads
    losses = []
    for _ in range(steps):
        idx = torch.randint(len(X), (batch_size,), generator=g)
        loss, grads = step_fn(params, X[idx], y[idx], act)
        params = [(W - lr * gW, b - lr * gb) for (W, b), (gW, gb) in zip(params, grads)]
        losses.append(loss.item())
    return losses


def max_grad_diff(params: Params, X: torch.Tensor, y: torch.Tensor, act: str) -> float:
    loss, ours = manual_loss_and_grads(params, X, y, act)
    loss_ref, ref = autograd_loss_and_grads(params, X, y, act)
    diffs = [abs(loss - loss_ref).item()]
    for (gW, gb), (rW, rb) in zip(ours, ref):
        diffs += [(gW - rW).abs().max().item(), (gb - rb).abs().max().item()]
    return max(diffs)


def tail_loss(losses: list[float], tail: int = TAIL) -> float:
    return float(np.mean(losses[-tail:]))


def linear_baseline_losses(X: torch.Tensor, y: torch.Tensor, steps: int = STEPS, lr: float = LR, seed: int = 0) -> list[float]:
    """基线：同样的训练配方（SGD、同样的学习率/批大小/步数/抽样种子），但没有隐藏层——线性 softmax 回归 [d₀, C]。

    它的梯度就是上面公式的第 1、2 条（只有一层仿射），同一个 train() 就能训练。MLP 的 loss 要比它低，
    才说明隐藏层 + 非线性学到了线性模型学不到的东西。
    """
    n_classes = int(y.max()) + 1
    return train(init_params([X.shape[1], n_classes], seed=seed, dtype=X.dtype), X, y, steps, lr, "tanh",
                 use_autograd=False, seed=seed)


def plot(losses: list[float], losses_ref: list[float], losses_linear: list[float]) -> plt.Figure:
    fig, ax = plt.subplots(figsize=(6, 4.8))
    # losses[i] 是第 i 次更新之前、在第 i 个小批次上算的 loss（losses[0] 是训练前的值），所以横轴从 0 开始
    steps = np.arange(len(losses))
    ax.plot(steps, losses, lw=1, label="hand-derived backprop")
    ax.plot(steps, losses_ref, "--", lw=1, label="torch.autograd")
    ax.plot(steps, losses_linear, lw=1, color="tab:gray", alpha=0.7, label="baseline: linear softmax (no hidden layer)")
    ax.axhline(math.log(10), color="k", ls=":", lw=1, label="chance: ln 10")
    ax.set(title="MLP 64-64-10 (tanh) on digits", xlabel="step (SGD updates done)",
           ylabel="cross-entropy on the mini-batch (nats)", yscale="log")
    ax.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.18), ncol=2)  # 放在图外：曲线占满了整个图
    fig.tight_layout()
    path = save_figure(fig, "manual_backprop.png", dpi=110)
    print(f"图已保存：{path}")
    return fig


def main() -> None:
    setup_seed()
    # 这里的矩阵都很小（一个批次 64 × 64 乘 64 × 64）：多线程的同步开销比计算本身还大，机器忙时更明显，所以只用 1 个线程
    torch.set_num_threads(1)
    print("== 手推反向传播 vs torch.autograd ==")
    g = torch.Generator().manual_seed(1)
    for sizes in ([5, 3], [10, 16, 4], [8, 32, 32, 16, 6]):
        for act in ACTIVATIONS:
            params = init_params(sizes, seed=len(sizes))
            X = torch.randn(7, sizes[0], generator=g, dtype=torch.float64)
            y = torch.randint(sizes[-1], (7,), generator=g)
            err = max_grad_diff(params, X, y, act)
            print(f"  MLP {sizes!s:18s} {act:4s}: max|手推 − autograd| = {err:.1e}")
            assert err < 1e-12

    d = load_digits()
    X = torch.from_numpy(d.data / 16.0)
    y = torch.from_numpy(d.target).long()
    params = init_params([64, 64, 10], seed=0)
    with time_block("manual", verbose=False) as t:
        losses = train(params, X, y, STEPS, lr=LR, act="tanh", use_autograd=False)
    losses_ref = train(params, X, y, STEPS, lr=LR, act="tanh", use_autograd=True)
    losses_linear = linear_baseline_losses(X, y, STEPS, LR)
    diff = float(np.abs(np.array(losses) - np.array(losses_ref)).max())
    print(f"digits 上训练 {STEPS} 步（{t.ms / 1000:.1f} s）：与 autograd 训练的逐步 loss 最大差 {diff:.1e}")
    print(f"  loss {losses[0]:.3f} → {tail_loss(losses):.3f}（最后 {TAIL} 步平均；瞎猜 ln10 = {math.log(10):.3f}，"
          f"同样训练的线性 softmax 回归 {tail_loss(losses_linear):.3f}；"
          f"默认配置约 {REFERENCE_LOSS[0]:.2f}–{REFERENCE_LOSS[1]:.2f}）")
    assert diff < 1e-9
    plot(losses, losses_ref, losses_linear)


if __name__ == "__main__":
    lesson_args(__doc__)
    main()
