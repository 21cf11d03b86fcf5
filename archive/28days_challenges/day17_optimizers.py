"""第 17 天 优化器：SGD、Momentum、Adam、AdamW、学习率调度与梯度裁剪，一步一步手算。

优化器只做一件事：拿到 p.grad，按规则更新 p（在 torch.no_grad() 下原地改）。规则（g = 梯度，t 从 1 数）：

- SGD：               p ← p − lr·g
- SGD + momentum μ：  b ← μ·b + g（第一步 b = g），p ← p − lr·b；nesterov 时用 g + μ·b 代替 b
- weight_decay λ（SGD/Adam 里的 L2 正则）：先 g ← g + λ·p，再走上面的规则
- Adam：  m ← β₁m + (1−β₁)g，  v ← β₂v + (1−β₂)g²
          m̂ = m / (1 − β₁ᵗ)，  v̂ = v / (1 − β₂ᵗ)    （偏差修正：m、v 从 0 起步，前几步偏小）
          p ← p − lr · m̂ / (√v̂ + ε)
- AdamW： 权重衰减与梯度**解耦**：p ← p·(1 − lr·λ)，然后做不带 weight_decay 的 Adam。
          Adam 的 L2 正则会被 √v̂ 除掉（梯度大的参数衰减得少），AdamW 对所有参数按同一比例衰减——
          这是 LLM 训练都用 AdamW 的原因。
- 余弦退火：lr_t = η_min + (lr₀ − η_min)·(1 + cos(π·t/T)) / 2
- 梯度裁剪：total = ‖所有梯度拼成一个向量‖₂；total > max_norm 时每个梯度乘 max_norm / (total + 1e-6)。
  返回的是裁剪**前**的范数（训练日志里看它判断训练是否稳定）。

优化器状态也占内存：Adam 每个参数要存 m 和 v，是参数本身的两倍（第 19 天会算账）。

练习：ex1–ex6，全部用 float64 手算，与 torch.optim 逐步对比；ex5 是谜题（只许用 torch.arange 与 torch.cos）。运行：

    python archive/28days_challenges/day17_optimizers.py
"""

from __future__ import annotations

import math

import torch

from utils import exercises
from utils.io import is_smoke
from utils.lesson_cli import lesson_args


# =============================================================================
# 练习（函数体就是参考解答；想自己做，就把函数体换成 raise NotImplementedError 再运行本文件）
# =============================================================================
def ex1_sgd(p: torch.Tensor, grads: list[torch.Tensor], lr: float, weight_decay: float) -> torch.Tensor:
    """按顺序用 grads 里的每个梯度做一步 SGD（带 L2 weight_decay），返回最后的参数（对照 torch.optim.SGD）。"""
    p = p.clone()
    for g in grads:
        g = g + weight_decay * p  # L2 正则 ½λ‖p‖² 的梯度是 λp
        p = p - lr * g
    return p


def ex2_sgd_momentum(p: torch.Tensor, grads: list[torch.Tensor], lr: float, momentum: float,
                     nesterov: bool) -> torch.Tensor:
    """SGD + momentum（dampening=0，可选 nesterov），返回最后的参数（对照 torch.optim.SGD）。"""
    p = p.clone()
    buf = None
    for g in grads:
        buf = g.clone() if buf is None else momentum * buf + g  # 第一步直接用 g，不是 μ·0 + g 的"冷启动"
        step = g + momentum * buf if nesterov else buf  # nesterov：往"惯性将要到达的地方"多看一步
        p = p - lr * step
    return p


def ex3_adam(p: torch.Tensor, grads: list[torch.Tensor], lr: float, betas: tuple[float, float], eps: float,
             weight_decay: float) -> torch.Tensor:
    """Adam（weight_decay 是加到梯度上的 L2 正则），返回最后的参数（对照 torch.optim.Adam）。"""
    p = p.clone()
    m = torch.zeros_like(p)
    v = torch.zeros_like(p)
    b1, b2 = betas
    for t, g in enumerate(grads, start=1):
        g = g + weight_decay * p
        m = b1 * m + (1 - b1) * g
        v = b2 * v + (1 - b2) * g * g
        m_hat = m / (1 - b1**t)
        v_hat = v / (1 - b2**t)
        p = p - lr * m_hat / (v_hat.sqrt() + eps)  # ε 加在开方之后：与 PyTorch 一致
    return p


def ex4_adamw(p: torch.Tensor, grads: list[torch.Tensor], lr: float, betas: tuple[float, float], eps: float,
              weight_decay: float) -> torch.Tensor:
    """AdamW：先 p ← p·(1 − lr·λ)，再做不带 weight_decay 的 Adam 更新（对照 torch.optim.AdamW）。"""
    p = p.clone()
    m = torch.zeros_like(p)
    v = torch.zeros_like(p)
    b1, b2 = betas
    for t, g in enumerate(grads, start=1):
        p = p * (1 - lr * weight_decay)  # 解耦的权重衰减：不经过 m、v，也就不会被 √v̂ 缩放
        m = b1 * m + (1 - b1) * g
        v = b2 * v + (1 - b2) * g * g
        p = p - lr * (m / (1 - b1**t)) / ((v / (1 - b2**t)).sqrt() + eps)
    return p


def ex5_cosine_lrs(base_lr: float, t_max: int, eta_min: float, steps: int) -> torch.Tensor:
    """谜题：只用 torch.arange 与 torch.cos，算第 0..steps−1 步的余弦退火学习率（float64 张量）
    （对照 CosineAnnealingLR 每步之前的 get_last_lr()）。"""
    t = torch.arange(steps, dtype=torch.float64)
    return eta_min + (base_lr - eta_min) * (1 + torch.cos(math.pi * t / t_max)) / 2


def ex6_clip_grad_norm(grads: list[torch.Tensor], max_norm: float) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """全局 L2 范数裁剪：返回 (裁剪前的总范数, 裁剪后的梯度列表)（对照 torch.nn.utils.clip_grad_norm_）。"""
    total = torch.stack([g.norm() for g in grads]).norm()  # ‖[g₁, g₂, …]‖ = √(Σ‖gᵢ‖²)
    coef = (max_norm / (total + 1e-6)).clamp(max=1.0)  # 范数没超过 max_norm 时 coef = 1，不放大
    return total, [g * coef for g in grads]


# =============================================================================
# 参考实现与输入
# =============================================================================
def _run_optimizer(make_opt, p0: torch.Tensor, grads: list[torch.Tensor]) -> torch.Tensor:
    p = p0.clone().requires_grad_()
    opt = make_opt([p])
    for g in grads:
        p.grad = g.clone()
        opt.step()
    return p.detach()


def _ref_cosine(base_lr, t_max, eta_min, steps):
    p = torch.zeros(1, requires_grad=True)
    opt = torch.optim.SGD([p], lr=base_lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=t_max, eta_min=eta_min)
    lrs = []
    for _ in range(steps):
        lrs.append(sched.get_last_lr()[0])
        opt.step()
        sched.step()
    return torch.tensor(lrs, dtype=torch.float64)


def _ref_clip(grads, max_norm):
    params = [torch.zeros_like(g, requires_grad=True) for g in grads]
    for p, g in zip(params, grads):
        p.grad = g.clone()
    total = torch.nn.utils.clip_grad_norm_(params, max_norm)
    return total, [p.grad for p in params]


def _rand(g: torch.Generator) -> float:
    return float(torch.rand((), generator=g))


def _param_and_grads(g: torch.Generator):
    shape = tuple(int(s) for s in torch.randint(1, 5, (2,), generator=g))
    steps = int(torch.randint(1, 6, (), generator=g))
    return torch.randn(shape, generator=g, dtype=torch.float64), [
        torch.randn(shape, generator=g, dtype=torch.float64) for _ in range(steps)
    ]


def _adam_inputs(g: torch.Generator):
    betas = (0.8 + 0.15 * _rand(g), 0.9 + 0.099 * _rand(g))
    return (*_param_and_grads(g), 0.1 * _rand(g) + 1e-3, betas, 1e-8, 0.1 * _rand(g))


CHECKS = [
    (
        "ex1_sgd",
        lambda p, gs, lr, wd: _run_optimizer(lambda ps: torch.optim.SGD(ps, lr=lr, weight_decay=wd), p, gs),
        lambda g: (*_param_and_grads(g), _rand(g), 0.1 * _rand(g)),
    ),
    (
        "ex2_sgd_momentum",
        lambda p, gs, lr, mu, nest: _run_optimizer(
            lambda ps: torch.optim.SGD(ps, lr=lr, momentum=mu, nesterov=nest), p, gs),
        lambda g: (*_param_and_grads(g), _rand(g), 0.5 + 0.49 * _rand(g), bool(torch.randint(2, (), generator=g))),
    ),
    (
        "ex3_adam",
        lambda p, gs, lr, betas, eps, wd: _run_optimizer(
            lambda ps: torch.optim.Adam(ps, lr=lr, betas=betas, eps=eps, weight_decay=wd), p, gs),
        _adam_inputs,
    ),
    (
        "ex4_adamw",
        lambda p, gs, lr, betas, eps, wd: _run_optimizer(
            lambda ps: torch.optim.AdamW(ps, lr=lr, betas=betas, eps=eps, weight_decay=wd), p, gs),
        _adam_inputs,
    ),
    (
        "ex5_cosine_lrs",
        _ref_cosine,
        lambda g: (_rand(g) + 0.1, int(torch.randint(2, 12, (), generator=g)), 0.01 * _rand(g),
                   int(torch.randint(1, 12, (), generator=g))),
    ),
    (
        "ex6_clip_grad_norm",
        _ref_clip,
        lambda g: ([torch.randn(int(torch.randint(1, 5, (), generator=g)), generator=g, dtype=torch.float64)
                    for _ in range(3)], 3 * _rand(g) + 0.1),
    ),
]

PUZZLE_ALLOWED = {"ex5_cosine_lrs": {"torch.arange", "torch.cos"}}


def demo() -> None:
    # 一个"梯度尺度相差 1000 倍"的二次函数：SGD 的 lr 必须 < 2/1000 才不发散（迁就最陡的方向），
    # 于是平缓方向 p₁ 几乎不动；Adam 按坐标归一化步长，两个方向走得一样快
    scales = torch.tensor([1000.0, 1.0])
    steps = 20 if is_smoke() else 200
    f0 = 0.5 * float(scales.sum())
    print(f"f(p) = ½(1000·p₀² + p₁²)，起点 p = [1, 1]（f = {f0}），最优 p = [0, 0]（f = 0）：")
    # 理论值：梯度下降在 ½h·p² 上每步 p ← (1 − lr·h)·p，T 步后 p = (1 − lr·h)^T；
    # 动量 μ 让慢方向的等效学习率变成 lr/(1 − μ)（动量要约 1/(1 − μ) = 10 步才攒满，所以实测略大于这个近似）
    theory = {
        "SGD lr=1.9e-3": f"理论 ((1 − 1.9)^{steps}, (1 − 1.9e-3)^{steps}) = "
                         f"({(1 - 1.9e-3 * 1000) ** steps:.1e}, {(1 - 1.9e-3) ** steps:.4f})",
        "SGD+momentum": f"慢方向 p₁ ≈ (1 − lr/(1 − μ))^{steps} = {(1 - 1e-4 / (1 - 0.9)) ** steps:.4f}",
        "Adam lr=0.1": "步长 ≈ lr·m̂/√v̂ 与梯度尺度无关：p₀、p₁ 的轨迹只差 ε 带来的 ~1e-7",
    }
    for name, make_opt in [
        ("SGD lr=1.9e-3", lambda ps: torch.optim.SGD(ps, lr=1.9e-3)),
        ("SGD+momentum", lambda ps: torch.optim.SGD(ps, lr=1e-4, momentum=0.9)),
        ("Adam lr=0.1", lambda ps: torch.optim.Adam(ps, lr=0.1)),
    ]:
        p = torch.tensor([1.0, 1.0], requires_grad=True)
        opt = make_opt([p])
        for _ in range(steps):
            opt.zero_grad()
            loss = 0.5 * (scales * p**2).sum()
            loss.backward()
            opt.step()
        f = 0.5 * float((scales * p.detach() ** 2).sum())
        print(f"  {steps} 步 {name:14s}：p = {[round(v, 4) for v in p.tolist()]}，f = {f:.3g}（{theory[name]}）")
    p = torch.ones(3, requires_grad=True)
    adam = torch.optim.Adam([p])
    p.grad = torch.ones(3)
    adam.step()
    print(f"Adam 每个参数的状态：{ {k: tuple(v.shape) for k, v in adam.state[p].items()} }（m、v 与参数同形状）")


# =============================================================================
# 自检：框架在 utils/exercises.py（28 天共用）——每道练习在几组随机输入上与 PyTorch 内置实现逐一对比
# =============================================================================
def run_checks(verbose: bool = True, seeds=None) -> tuple[int, int]:
    """逐题自检：每题打印一行 ✓/✗，最后打印 `N/M passed`；返回 (N, M)。"""
    return exercises.run_checks(globals(), verbose=verbose, seeds=seeds)


def main() -> None:
    exercises.run_day(globals())


if __name__ == "__main__":
    lesson_args(__doc__)
    main()
