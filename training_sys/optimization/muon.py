"""Muon（MomentUm Orthogonalized by Newton–Schulz，Keller Jordan 2024）：把 2-D 权重的动量"正交化"后再更新。

运行：python training_sys/optimization/muon.py   （或 python -m training_sys.optimization.muon；SMOKE=1 几秒跑完）

想法
----
对一个权重矩阵 W（形状 A×B），设动量 M = U S Vᵀ（SVD）。Muon 的更新方向是 O = U Vᵀ：保留奇异向量，
把所有奇异值换成 1。为什么？
- 在谱范数约束下的最速下降：argmin_{‖ΔW‖₂ ≤ 1} ⟨M, ΔW⟩ = −U Vᵀ。谱范数衡量的是"对任意输入向量最多放大多少"，
  正是线性层输出变化的自然尺度。
- 实测 Transformer 里梯度/动量矩阵的"稳定秩"很低：几个方向的奇异值占绝对主导。正交化把稀有方向放大到
  与主导方向同样的步长，相当于逐方向的预条件（Shampoo 在无累积时的极限也是 U Vᵀ）。
SVD 在 GPU 上又慢又难并行，所以用 Newton–Schulz 迭代只靠矩阵乘法近似 U Vᵀ。

Newton–Schulz 迭代的推导
------------------------
1) 奇次矩阵多项式只作用在奇异值上：设 X = U S Vᵀ，则 X Xᵀ = U S² Uᵀ，于是
       p(X) = a·X + b·(X Xᵀ)X + c·(X Xᵀ)² X = U·(a S + b S³ + c S⁵)·Vᵀ
   奇异向量不变，每个奇异值独立地走标量迭代 s ← φ(s) = a s + b s³ + c s⁵。
   目标：对所有 s ∈ (0, 1]，φ 迭代几次后都接近 1。先除以 Frobenius 范数（‖X‖_F ≥ ‖X‖₂）保证 s ≤ 1。
2) 经典三次迭代（Newton–Schulz / Björck）：极分解的 Newton 迭代 X ← ½(X + X⁻ᵀ) 需要求逆；
   把 (XᵀX)⁻¹ 在 I 附近做一阶展开 (XᵀX)⁻¹ ≈ 2I − XᵀX，得到 X ← ½ X (3I − XᵀX)，即
       φ(s) = 1.5 s − 0.5 s³，   φ(1) = 1，φ'(1) = 0（在 1 附近二次收敛）
   缺点：φ'(0) = 1.5，很小的奇异值每步只放大 1.5 倍：s = 1e-3 要 16 步才超过 0.5。
3) Keller 的五次多项式 (a, b, c) = (3.4445, −4.7750, 2.0315)：把 φ'(0) = a 尽量做大，让小奇异值几步就长上来，
   代价是不再精确收敛到 1：φ(1) = a + b + c ≈ 0.70；归一化后 ≥ 3e-3 的奇异值迭代 5 次后落在 [0.68, 1.20] 里振荡
   （更小的 5 步还没长上来：1e-3 → 0.47；用 scalar_iteration 在细网格上数出来的，测试核对），
   即输出是 U S' Vᵀ、S' ≈ 1 而非严格的 U Vᵀ——实验表明这对训练毫无损害，却能用 5 步、bf16 完成。
   main() 画出两种 φ 迭代 5 次后的曲线，以及一个低稳定秩矩阵正交化前后的奇异值。
4) 实现细节：A > B 时先转置，使 Gram 矩阵 X Xᵀ 是较小的 min(A,B)² 方阵；
   B = bA + cA² 与 X ← aX + BX 各是一次 addmm（一次乘加，少一次舍入）。

优化器：动量 M ← μM + (1-μ)G；Nesterov 时用 (1-μ)G + μM 正交化；θ ← θ(1 − lr·λ) − lr'·O，
lr' = lr·sqrt(max(1, A/B))（"original"，Keller）或 lr·0.2·sqrt(max(A, B))（"match_rms_adamw"，Moonshot，
让更新的 RMS 与 AdamW 相当，从而可以直接沿用 AdamW 的 lr 与 λ）。与 torch.optim.Muon 的约定相同。
Muon 只适合隐藏层的 2-D 权重：embedding（查表、每行只在出现时有梯度）、lm_head（输出分布需要逐坐标自适应）、
norm 的 γ 与 bias（1-D）交给 AdamW——本文件的 Muon 在同一个优化器里用参数组同时做两者（use_muon=False 的组走 AdamW）。
"""

from __future__ import annotations

import math

import torch
from torch import nn

from training_sys.optimization._checks import check_betas, check_eps, check_lr, check_momentum, check_weight_decay
from training_sys.optimization.adamw import adamw_update_
from utils.io import is_smoke, save_figure
from utils.lesson_cli import lesson_args
from utils.torch_playground import setup_seed

NS_COEFFICIENTS = (3.4445, -4.7750, 2.0315)   # Keller Jordan 的五次多项式系数
CUBIC_COEFFICIENTS = (1.5, -0.5, 0.0)         # 经典 Newton–Schulz：φ(s) = 1.5s − 0.5s³
ADJUST_LR_FNS = ("original", "match_rms_adamw")


def zeropower_via_newton_schulz(g: torch.Tensor, steps: int = 5,
                                coefficients: tuple[float, float, float] = NS_COEFFICIENTS, eps: float = 1e-7,
                                dtype: torch.dtype = torch.bfloat16) -> torch.Tensor:
    """用 Newton–Schulz 迭代近似 G = U S Vᵀ 的"零次幂" U Vᵀ（输出 dtype 为 dtype，形状与 G 相同）。"""
    if g.dim() != 2:
        raise ValueError(f"Newton–Schulz 只作用于 2-D 矩阵，收到形状 {tuple(g.shape)}")
    a, b, c = coefficients
    x = g.to(dtype)
    transposed = g.size(0) > g.size(1)
    if transposed:
        x = x.T                                        # (min, max)：Gram 矩阵取较小的那一边
    x = x / x.norm().clamp(min=eps)                    # ‖X‖₂ ≤ ‖X‖_F = 1，所有奇异值落进 [0, 1]
    for _ in range(steps):
        gram = x @ x.T                                 # X Xᵀ = U S² Uᵀ，(min, min)
        poly = torch.addmm(gram, gram, gram, beta=b, alpha=c)  # b·XXᵀ + c·(XXᵀ)²
        x = torch.addmm(x, poly, x, beta=a)            # a·X + (b·XXᵀ + c·(XXᵀ)²)·X
    return x.T if transposed else x


def adjusted_lr(lr: float, shape: torch.Size, adjust_lr_fn: str | None) -> float:
    rows, cols = shape[0], shape[1]
    if adjust_lr_fn is None or adjust_lr_fn == "original":
        return lr * math.sqrt(max(1.0, rows / cols))   # 高瘦矩阵 U Vᵀ 的 RMS 更小，放大补偿
    return lr * 0.2 * math.sqrt(max(rows, cols))       # RMS(U Vᵀ)≈1/sqrt(max)；0.2 ≈ AdamW 更新的典型 RMS


class Muon(torch.optim.Optimizer):
    """Muon（2-D 隐藏层权重）+ AdamW（use_muon=False 的参数组），一个优化器管全部参数。

    参数组的键：
    - 所有组：lr、weight_decay、use_muon（默认 True）。
    - Muon 组：momentum、nesterov、ns_steps、ns_coefficients、eps（正交化前归一化用的 ε）、adjust_lr_fn、ns_dtype。
    - AdamW 组：betas、eps（Adam 分母的 ε；build_muon_param_groups 会设成 1e-8）。
    只用 2-D 参数、默认超参数时与 torch.optim.Muon 逐步相同；一般用法见 build_muon_param_groups。
    """

    def __init__(self, params, lr: float = 1e-3, weight_decay: float = 0.1, momentum: float = 0.95,
                 nesterov: bool = True, ns_coefficients: tuple[float, float, float] = NS_COEFFICIENTS,
                 eps: float = 1e-7, ns_steps: int = 5, adjust_lr_fn: str | None = None,
                 betas: tuple[float, float] = (0.9, 0.95), ns_dtype: torch.dtype = torch.bfloat16):
        defaults = dict(lr=lr, weight_decay=weight_decay, momentum=momentum, nesterov=nesterov,
                        ns_coefficients=tuple(ns_coefficients), eps=eps, ns_steps=ns_steps,
                        adjust_lr_fn=adjust_lr_fn, betas=tuple(betas), ns_dtype=ns_dtype, use_muon=True)
        super().__init__(params, defaults)
        for i, group in enumerate(self.param_groups):
            check_lr(group["lr"])
            check_weight_decay(group["weight_decay"])
            check_eps(group["eps"])
            if group["use_muon"]:
                check_momentum(group["momentum"], upper_open=True)
                if group["adjust_lr_fn"] not in (None, *ADJUST_LR_FNS):
                    raise ValueError(f"adjust_lr_fn={group['adjust_lr_fn']!r} 未知；可选 None、{ADJUST_LR_FNS}")
                if not isinstance(group["ns_steps"], int) or group["ns_steps"] < 1:
                    raise ValueError(f"ns_steps={group['ns_steps']!r} 必须是正整数（常用 5）")
                for p in group["params"]:
                    if p.dim() != 2:
                        raise ValueError(
                            f"参数组 {i} 用 Muon，但其中有形状为 {tuple(p.shape)} 的 {p.dim()}-D 参数：Muon 只能更新 2-D "
                            f"权重矩阵。把 embedding、lm_head、norm、bias 放进 use_muon=False 的组（走 AdamW），"
                            f"或直接用 build_muon_param_groups(model)")
            else:
                check_betas(group["betas"])

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            lr, wd = group["lr"], group["weight_decay"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                if not group["use_muon"]:
                    adamw_update_(p, p.grad, self.state[p], lr=lr, betas=group["betas"], eps=group["eps"],
                                  weight_decay=wd)
                    continue
                state = self.state[p]
                if "momentum_buffer" not in state:
                    state["momentum_buffer"] = torch.zeros_like(p)
                buf, mu = state["momentum_buffer"], group["momentum"]
                buf.lerp_(p.grad, 1 - mu)                                  # M ← μM + (1-μ)G
                update = p.grad.lerp(buf, mu) if group["nesterov"] else buf  # Nesterov：(1-μ)G + μM
                update = zeropower_via_newton_schulz(update, group["ns_steps"], group["ns_coefficients"],
                                                     group["eps"], group["ns_dtype"])
                p.mul_(1 - lr * wd)                                        # 解耦衰减（用未调整的 lr）
                p.add_(update, alpha=-adjusted_lr(lr, p.shape, group["adjust_lr_fn"]))
        return loss


def build_muon_param_groups(model: nn.Module, *, lr: float = 0.02, weight_decay: float = 0.0,
                            momentum: float = 0.95, adjust_lr_fn: str | None = None, adamw_lr: float = 3e-4,
                            adamw_betas: tuple[float, float] = (0.9, 0.95), adamw_eps: float = 1e-8,
                            adamw_weight_decay: float = 0.0,
                            adamw_name_patterns: tuple[str, ...] = ("lm_head", "embed", "wte", "wpe")) -> list[dict]:
    """把模型参数分成 Muon 组与 AdamW 组：Muon(build_muon_param_groups(model)) 即可训练整个模型。

    走 AdamW 的：非 2-D 参数（norm 的 γ、bias）、nn.Embedding 的权重、名字含 adamw_name_patterns 任一子串的参数
    （lm_head 与嵌入；与嵌入共享的 lm_head 只出现一次）。其余 2-D 权重（q/k/v/o_proj、MLP）走 Muon。
    """
    embedding_params = {id(m.weight) for m in model.modules() if isinstance(m, nn.Embedding)}
    muon, adamw = [], []
    for name, p in model.named_parameters():  # named_parameters 默认去重：绑定的权重只出现一次
        if not p.requires_grad:
            continue
        to_adamw = p.dim() != 2 or id(p) in embedding_params or any(s in name for s in adamw_name_patterns)
        (adamw if to_adamw else muon).append(p)
    groups = []
    if muon:
        groups.append(dict(params=muon, use_muon=True, lr=lr, weight_decay=weight_decay, momentum=momentum,
                           adjust_lr_fn=adjust_lr_fn))
    if adamw:
        groups.append(dict(params=adamw, use_muon=False, lr=adamw_lr, betas=tuple(adamw_betas), eps=adamw_eps,
                           weight_decay=adamw_weight_decay))
    return groups


# ---------------------------------------------------------------------------
# 演示与检查
# ---------------------------------------------------------------------------
def low_stable_rank_matrix(rows: int, cols: int, seed: int = 0) -> torch.Tensor:
    """奇异值按幂律衰减（1, 1/2, 1/3, …）的矩阵：像动量矩阵一样，少数方向占主导。"""
    gen = torch.Generator().manual_seed(seed)
    u, _ = torch.linalg.qr(torch.randn(rows, rows, generator=gen))
    v, _ = torch.linalg.qr(torch.randn(cols, cols, generator=gen))
    k = min(rows, cols)
    s = 1.0 / torch.arange(1, k + 1, dtype=torch.float32)
    return u[:, :k] @ torch.diag(s) @ v[:, :k].T


def scalar_iteration(s: torch.Tensor, coefficients: tuple[float, float, float], steps: int) -> torch.Tensor:
    a, b, c = coefficients
    for _ in range(steps):
        s = a * s + b * s**3 + c * s**5   # φ(s)：矩阵迭代在每个奇异值上的作用
    return s


def newton_schulz_figure(g: torch.Tensor, o: torch.Tensor):
    """左：两种 φ 迭代 5 次后的曲线；右：G 与 NS5(G) 的奇异值（降序）。返回 Figure。"""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4))
    s = torch.linspace(0, 1, 500)
    ax1.plot(s, scalar_iteration(s, CUBIC_COEFFICIENTS, 5), label="cubic (1.5, -0.5), 5 steps")
    ax1.plot(s, scalar_iteration(s, NS_COEFFICIENTS, 5), label="quintic (3.4445, -4.775, 2.0315), 5 steps")
    ax1.axhline(1.0, color="gray", lw=0.8, ls="--")
    ax1.set(xlabel="input singular value s (after /‖G‖_F)", ylabel="output singular value φ⁵(s)",
            title="Newton–Schulz on singular values")
    ax1.legend(fontsize=8)
    ax2.semilogy(torch.linalg.svdvals(g / g.norm()), label="G / ‖G‖_F (momentum-like)")
    ax2.semilogy(torch.linalg.svdvals(o.float()), label="NS5(G), bf16")
    ax2.set(xlabel="singular value index (descending)", ylabel="singular value (log scale)",
            title="singular values before / after")
    ax2.legend(fontsize=8)
    fig.tight_layout()
    return fig


def plot_newton_schulz(g: torch.Tensor, o: torch.Tensor) -> str:
    return str(save_figure(newton_schulz_figure(g, o), "muon_newton_schulz.png", dpi=120))


def main() -> None:
    setup_seed()
    rows, cols = (64, 32) if is_smoke() else (512, 256)
    g = low_stable_rank_matrix(rows, cols)
    o = zeropower_via_newton_schulz(g)
    sv = torch.linalg.svdvals(o.float())
    print(f"== Newton–Schulz 正交化（{rows}×{cols}，奇异值 1, 1/2, …, 1/{cols}）==")
    print(f"  输入奇异值（归一化后）范围 [{(1 / cols) / g.norm().item():.2e}, {1 / g.norm().item():.2e}]")
    # 预期：每个归一化后的奇异值各自走标量迭代 φ⁵（fp64）；bf16 的矩阵乘只在第 3 位小数上有出入
    predicted = scalar_iteration(torch.linalg.svdvals(g.double() / g.double().norm()), NS_COEFFICIENTS, 5)
    print(f"  五次迭代 5 步（bf16）后奇异值范围 [{sv.min().item():.3f}, {sv.max().item():.3f}]"
          f"（目标 U Vᵀ 的奇异值全是 1；标量迭代 φ⁵ 的预期 [{predicted.min().item():.3f}, {predicted.max().item():.3f}]）")
    assert 0.5 < sv.min() and sv.max() < 1.5
    u, _, vh = torch.linalg.svd(g.double(), full_matrices=False)
    exact = u @ vh                                     # 精确的极分解因子 U Vᵀ（fp64 SVD）
    cubic = zeropower_via_newton_schulz(g.double(), steps=40, coefficients=CUBIC_COEFFICIENTS, dtype=torch.float64)
    print(f"  经典三次迭代 40 步（fp64）与 SVD 的 U Vᵀ 最大差 {(cubic - exact).abs().max().item():.2e}（容差 1e-10）")
    assert torch.allclose(cubic, exact, atol=1e-10)
    print(f"  图：{plot_newton_schulz(g, o)}")

    steps = 10 if is_smoke() else 100
    print(f"== Muon 对照 torch.optim.Muon：{steps} 步，3 种形状，weight_decay=0.1 ==")
    shapes = [(32, 16), (16, 48), (24, 24)]
    ours_p = [nn.Parameter(torch.randn(s)) for s in shapes]
    ref_p = [nn.Parameter(p.detach().clone()) for p in ours_p]
    ours, ref = Muon(ours_p, lr=0.02), torch.optim.Muon(ref_p, lr=0.02)
    for _ in range(steps):
        grads = [torch.randn(s) for s in shapes]
        for params, opt in ((ours_p, ours), (ref_p, ref)):
            for p, gr in zip(params, grads):
                p.grad = gr.clone()
            opt.step()
    diff = max((a - b).abs().max().item() for a, b in zip(ours_p, ref_p))
    print(f"  参数最大差 {diff:.2e}（容差 1e-6；运算次序与 torch.optim.Muon 相同，实际应逐位相同 = 0）")
    assert diff < 1e-6


if __name__ == "__main__":
    lesson_args(__doc__)
    main()
