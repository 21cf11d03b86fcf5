"""信息论入门：熵、交叉熵、KL 散度，KL ≥ 0 的证明，以及"softmax + 交叉熵的梯度是 p − y"。

一、定义（离散分布 p、q，取自然对数，单位 nat；换成 log₂ 单位就是 bit）
    熵        H(p)    = −Σ_i p_i log p_i            ：按 p 最优编码时，每个符号平均需要的码长
    交叉熵    H(p, q) = −Σ_i p_i log q_i            ：数据来自 p，却按 q 设计编码时的平均码长
    KL 散度   KL(p‖q) = Σ_i p_i log(p_i / q_i) = H(p, q) − H(p)   ：用错分布多付出的码长
    约定 0·log 0 = 0（极限 t log t → 0）；若某处 p_i > 0 而 q_i = 0，则 KL = +∞（q 认为不可能的事发生了）。
    训练语言模型时 p 是数据（one-hot 的下一个 token），H(p) 是与参数无关的常数，
    所以"最小化交叉熵" ≡ "最小化 KL(p_data‖q_model)" ≡ 最大似然。perplexity = exp(交叉熵)。

二、Gibbs 不等式：KL(p‖q) ≥ 0，当且仅当 p = q 时取等号
    Jensen 不等式：log 是严格凹函数，对概率权重 w_i 有 Σ w_i log t_i ≤ log Σ w_i t_i，
    等号当且仅当所有 t_i（w_i > 0 的那些）相等。取 w = p、t_i = q_i / p_i（只对 p_i > 0 的 i 求和，记为 S）：
        −KL(p‖q) = Σ_{i∈S} p_i log(q_i / p_i) ≤ log Σ_{i∈S} p_i · q_i/p_i = log Σ_{i∈S} q_i ≤ log 1 = 0。
    取等号需要两处都相等：q_i/p_i 在 S 上是常数 c，且 Σ_{i∈S} q_i = 1 ⇒ c = 1 ⇒ q = p。
    推论：H(p, q) ≥ H(p)（交叉熵不低于熵）；取 q 为均匀分布得 H(p) ≤ log K（均匀分布的熵最大）。
    注意 KL 不对称：KL(p‖q) ≠ KL(q‖p)，它不是距离（下面的图画出了这一点）。

三、softmax + 交叉熵的梯度
    logits z ∈ R^K，q = softmax(z)，q_j = e^{z_j} / Σ_k e^{z_k}，目标分布 y（one-hot 或软标签，Σ y_i = 1）。
        L = −Σ_i y_i log q_i = −Σ_i y_i (z_i − logsumexp(z)) = −Σ_i y_i z_i + logsumexp(z) · Σ_i y_i
          = −y·z + logsumexp(z)                                       （用到 Σ y_i = 1）
        ∂ logsumexp(z) / ∂z_j = e^{z_j} / Σ_k e^{z_k} = q_j
        ⇒ ∂L/∂z = q − y
    没有 Jacobian 矩阵、没有除以 q 的风险：softmax 的 Jacobian diag(q) − q qᵀ 与 log 的导数 1/q 恰好抵消。
    这也说明交叉熵的梯度有界（|q − y| ≤ 1），而且预测越错梯度越大。若 y 不归一化（Σ y ≠ 1），
    梯度变成 (Σ y) q − y——这就是"标签必须是概率分布"的原因。

多少算好：这里打印的"最大差"是与 PyTorch 的逐元素对照，尺子是 float64 的机器精度 ε = 2⁻⁵² ≈ 2.2e-16——
10 项的求和加上 log 的舍入，几个 ε 到几十个 ε（1e-15 量级）都是正常的，默认配置实测 7e-15；到 1e-8 就是公式错了。
KL 不对称的程度没有"正确值"，对称的话它应是 0：默认配置里 |KL(q‖q′) − KL(q′‖q)| 的中位数 1.3 nat。

    python "archive/Introductory learning/02_MLP/05_information_theory.py"

图：checkpoints/figures/information_theory.png（二元熵；KL 的不对称性）。
"""

from __future__ import annotations

import math

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import torch
import torch.nn.functional as F
from torch.distributions import Categorical, kl_divergence

from utils.io import is_smoke, save_figure
from utils.lesson_cli import lesson_args
from utils.torch_playground import setup_seed, time_block

SMOKE = is_smoke()
N_CHECKS = 200 if SMOKE else 20_000


def check_distribution(p: torch.Tensor, name: str = "p", atol: float = 1e-6) -> None:
    """最后一维是概率分布：非负、和为 1。否则报出具体哪里不对。"""
    if p.ndim == 0:
        raise ValueError(f"{name} 必须至少是一维的概率向量，收到标量")
    if (p < 0).any():
        raise ValueError(f"{name} 有负数（最小值 {p.min().item():.3g}）：概率必须 ≥ 0；如果这是 logits，请先 softmax")
    sums = p.sum(-1)
    if not torch.allclose(sums, torch.ones_like(sums), atol=atol):
        raise ValueError(f"{name} 最后一维的和应为 1，实际 {sums.flatten()[:4].tolist()}…；请先归一化 p / p.sum(-1, keepdim=True)")


def _xlogy(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """x·log y，并按约定在 x = 0 处取 0（即使 y = 0）：直接算会得到 0·(−∞) = nan。"""
    return torch.where(x == 0, torch.zeros_like(x), x * torch.log(y))


def entropy(p: torch.Tensor) -> torch.Tensor:
    """H(p) = −Σ p log p，沿最后一维。"""
    check_distribution(p)
    return -_xlogy(p, p).sum(-1)


def cross_entropy(p: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """H(p, q) = −Σ p log q；p_i > 0 而 q_i = 0 时为 +∞。"""
    check_distribution(p, "p")
    check_distribution(q, "q")
    if p.shape != q.shape:
        raise ValueError(f"p 与 q 的形状必须相同，收到 {tuple(p.shape)} 与 {tuple(q.shape)}")
    return -_xlogy(p, q).sum(-1)


def kl_div(p: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """KL(p‖q) = Σ p log(p/q) = H(p, q) − H(p)。直接按定义逐项算（而不是两个大数相减），小 KL 时更准。"""
    check_distribution(p, "p")
    check_distribution(q, "q")
    if p.shape != q.shape:
        raise ValueError(f"p 与 q 的形状必须相同，收到 {tuple(p.shape)} 与 {tuple(q.shape)}")
    return (_xlogy(p, p) - _xlogy(p, q)).sum(-1)


def softmax_cross_entropy_grad(z: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """∂/∂z [−Σ y log softmax(z)] = softmax(z) − y（y 为概率分布）。"""
    check_distribution(y, "y")
    return torch.softmax(z, dim=-1) - y


def random_distributions(n: int, k: int, generator: torch.Generator, sparse: bool = False) -> torch.Tensor:
    """softmax(温度 × 高斯)：温度在 [0.1, 5] 里随机，既有接近均匀的分布也有很尖的分布；
    sparse=True 时随机把一些概率置 0（检验 0·log 0 = 0 的约定），每行至少保留一个非零。"""
    temperature = torch.rand(n, 1, generator=generator, dtype=torch.float64) * 4.9 + 0.1
    p = torch.softmax(torch.randn(n, k, generator=generator, dtype=torch.float64) * temperature, dim=-1)
    if sparse:
        keep = torch.rand(n, k, generator=generator) > 0.3
        keep[:, 0] = True
        p = p * keep
    return p / p.sum(-1, keepdim=True)


def plot() -> plt.Figure:
    """二元熵 H(Bern(t))，以及 KL(Bern(t)‖Bern(0.3)) 与 KL(Bern(0.3)‖Bern(t)) 的不对称。"""
    t = torch.linspace(1e-4, 1 - 1e-4, 400, dtype=torch.float64)
    bern = torch.stack([t, 1 - t], -1)
    ref = torch.tensor([0.3, 0.7], dtype=torch.float64).expand_as(bern)
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 4))
    ax1.plot(t, entropy(bern) / math.log(2))
    ax1.set(title="binary entropy H(t): max 1 bit at t=0.5", xlabel="t = P(x=1)", ylabel="entropy (bits)")
    ax2.plot(t, kl_div(bern, ref), label="KL(Bern(t) ‖ Bern(0.3))")
    ax2.plot(t, kl_div(ref, bern), label="KL(Bern(0.3) ‖ Bern(t))")
    ax2.set(title="KL is not symmetric (both 0 only at t=0.3)", xlabel="t = P(x=1)", ylabel="KL divergence (nats)",
            ylim=(0, 3))
    ax2.legend(loc="upper center")
    fig.tight_layout()
    path = save_figure(fig, "information_theory.png", dpi=110)
    print(f"图已保存：{path}")
    return fig


def main() -> None:
    setup_seed()
    print("== 信息论：熵、交叉熵、KL ==")
    gen = torch.Generator().manual_seed(0)
    k = 10
    p = random_distributions(N_CHECKS, k, gen, sparse=True)
    q = random_distributions(N_CHECKS, k, gen)

    # 1) 与 PyTorch 的实现对照
    with time_block("ours", verbose=False) as t:
        ours = (entropy(p), kl_div(p, q), cross_entropy(p, q))
    ref_h = Categorical(probs=p).entropy()
    ref_kl = kl_divergence(Categorical(probs=p), Categorical(probs=q))
    ref_kl2 = F.kl_div(q.log(), p, reduction="none").sum(-1)  # F.kl_div(input=log q, target=p)：参数顺序是反的，易错
    ref_ce = F.cross_entropy(q.log(), p, reduction="none")  # 软标签交叉熵（PyTorch ≥ 1.10）
    errs = [(ours[0] - ref_h).abs().max(), (ours[1] - ref_kl).abs().max(),
            (ours[1] - ref_kl2).abs().max(), (ours[2] - ref_ce).abs().max()]
    eps = torch.finfo(torch.float64).eps
    print(f"  {N_CHECKS} 对随机分布（含 0 概率，{t.ms:.1f} ms）：H、KL、交叉熵与 torch.distributions / F.kl_div / "
          f"F.cross_entropy 的最大差 {max(errs).item():.1e}（float64 的 ε = {eps:.1e}，1e-15 量级是舍入；默认配置约 7e-15）")
    assert max(errs) < 1e-10

    # 2) Gibbs 不等式的数值检查
    kl = kl_div(p, q)
    identity = (cross_entropy(p, q) - entropy(p) - kl).abs().max()
    print(f"  KL(p‖q) 的最小值 {kl.min().item():.3e} ≥ 0；KL(p‖p) 的最大值 {kl_div(p, p).abs().max().item():.1e}；"
          f"|H(p,q) − H(p) − KL| ≤ {identity.item():.1e}")
    q2 = random_distributions(N_CHECKS, k, gen)
    asym = (kl_div(q, q2) - kl_div(q2, q)).abs()
    print(f"  H(p) 的最大值 {entropy(p).max().item():.4f} ≤ log K = {torch.log(torch.tensor(float(k))).item():.4f}；"
          f"KL 不对称：|KL(q‖q′) − KL(q′‖q)| 的中位数 {asym.median().item():.3f} nat（对称的话是 0）")
    assert kl.min() >= 0 and identity < 1e-10

    # 3) softmax + 交叉熵的梯度 = q − y（硬标签与软标签）
    z = torch.randn(64, k, generator=gen, dtype=torch.float64, requires_grad=True)
    y_soft = random_distributions(64, k, gen)
    y_hard = F.one_hot(torch.randint(k, (64,), generator=gen), k).double()
    errs = []
    for y in (y_soft, y_hard):
        z.grad = None
        F.cross_entropy(z, y, reduction="sum").backward()
        errs.append((z.grad - softmax_cross_entropy_grad(z.detach(), y)).abs().max())
    print(f"  ∂CE/∂z 与 softmax(z) − y 的最大差（软标签 / one-hot）：{errs[0].item():.1e} / {errs[1].item():.1e}")
    assert max(errs) < 1e-12

    plot()


if __name__ == "__main__":
    lesson_args(__doc__)
    main()
