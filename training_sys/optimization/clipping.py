"""按全局范数裁剪梯度：与 torch.nn.utils.clip_grad_norm_ 相同（返回值、非有限情形都一样）。

运行：python training_sys/optimization/clipping.py   （或 python -m training_sys.optimization.clipping；SMOKE=1 几秒跑完）

把所有参数的梯度拼成一个长向量 g，总范数 ‖g‖ = (Σ_i ‖g_i‖^p)^{1/p}（p=2 时就是各参数范数的平方和开根号，
p=inf 时是各参数最大绝对值的最大值）。若 ‖g‖ > max_norm，所有梯度乘同一个系数 max_norm / ‖g‖：
    g ← g · min(1, max_norm / (‖g‖ + 1e-6))
- "全局"而不是逐参数：同乘一个系数，方向不变，只缩短步长；逐参数裁剪会改变更新方向。
- 为什么需要：loss 曲面上偶尔有"悬崖"（例如注意力 logit 突然变大），一个异常 batch 的梯度可以比平时大几个数量级，
  一步就把权重推到很远的地方。裁剪限制单步的最大移动，LLM 预训练几乎都用 max_norm=1.0。
- 返回裁剪前的总范数：训练日志里最有用的健康指标之一（持续上升常常是发散的前兆）。
- 非有限：某个梯度是 inf/NaN 时总范数也是 inf/NaN。error_if_nonfinite=True 时抛错；否则照乘——
  inf 时系数为 0（有限的梯度变成 0，inf·0 变成 NaN），NaN 时全部变 NaN。这与 PyTorch 的行为一致；
  fp16 训练时由 loss scaler 先检测 inf 并跳过这一步（见 mixed_precision.py），而不是依赖裁剪。
- 系数是张量、始终相乘（乘 1 也乘）：避免 `if norm > max_norm` 这种需要把 GPU 上的数同步回 CPU 的分支。
"""

from __future__ import annotations

from collections.abc import Iterable

import torch

from utils.io import is_smoke
from utils.lesson_cli import lesson_args, timing_note
from utils.torch_playground import benchmark_interleaved, setup_seed


def clip_grad_norm(parameters: torch.Tensor | Iterable[torch.Tensor], max_norm: float, norm_type: float = 2.0,
                   error_if_nonfinite: bool = False) -> torch.Tensor:
    """原地把梯度裁剪到总范数 ≤ max_norm，返回裁剪前的总范数（0-d 张量）。"""
    if isinstance(parameters, torch.Tensor):
        parameters = [parameters]
    grads = [p.grad for p in parameters if p.grad is not None]
    max_norm, norm_type = float(max_norm), float(norm_type)
    if max_norm < 0:
        raise ValueError(f"max_norm={max_norm} 不能是负数（LLM 预训练常用 1.0）")
    if len(grads) == 0:
        return torch.tensor(0.0)
    # 先求每个参数的范数，再对这些范数求范数：(Σ_i ‖g_i‖^p)^{1/p} 恰好等于拼接后长向量的 p-范数
    norms = [torch.linalg.vector_norm(g, norm_type) for g in grads]
    device = grads[0].device
    total_norm = torch.linalg.vector_norm(torch.stack([n.to(device) for n in norms]), norm_type)
    if error_if_nonfinite and (total_norm.isnan() or total_norm.isinf()):
        raise RuntimeError(
            f"梯度的总 {norm_type}-范数是 {total_norm.item()}（非有限），无法裁剪。检查 loss 是否已经 NaN；"
            f"fp16 训练请用 DynamicLossScaler 跳过这一步；或设 error_if_nonfinite=False 让它照常相乘")
    clip_coef = torch.clamp(max_norm / (total_norm + 1e-6), max=1.0)  # min(1, max_norm/(‖g‖+ε))
    for g in grads:
        g.mul_(clip_coef.to(g.device))
    return total_norm


def expected_gaussian_norm(n: int, sigma: float, norm_type: float) -> float:
    """n 个独立 N(0, σ²) 组成的向量的 p-范数的典型值（n 大时相对涨落很小），用来判断打印的总范数对不对：

    p = 2：σ·√n（Σ g² ≈ n·σ²）；p = 1：σ·n·√(2/π)（E|g| = σ√(2/π)）；
    p = ∞：最大绝对值的中位数 σ·Φ⁻¹(1 − (1 − 2^(−1/n))/2)——P(max|g| ≤ m) = (1 − 2Q(m/σ))^n = ½ 解出来的 m。
    """
    if norm_type == 2.0:
        return sigma * n**0.5
    if norm_type == 1.0:
        return sigma * n * (2 / torch.pi) ** 0.5
    if norm_type == float("inf"):
        tail = (1 - 0.5 ** (1 / n)) / 2                                   # 单侧尾概率 Q(m/σ)
        return sigma * torch.special.ndtri(torch.tensor(1 - tail, dtype=torch.float64)).item()
    raise ValueError(f"norm_type={norm_type}：这里只给 1、2、inf 的典型值")


def main() -> None:
    setup_seed()
    shapes = [(64, 32), (32,), (128, 64), (10,)] if is_smoke() else [(1024, 1024), (1024,), (4096, 1024), (4096,)]
    n_total = sum(torch.Size(sh).numel() for sh in shapes)
    print(f"== clip_grad_norm 对照 torch.nn.utils.clip_grad_norm_（{n_total:,} 个 N(0, 3²) 的梯度元素；"
          "容差：范数 rtol 1e-6、梯度 1e-6）==")
    print("  总范数的预期：p=2 ≈ 3√n = {:.3f}，p=1 ≈ 3n√(2/π) = {:.0f}，p=inf ≈ {:.2f}（n 个高斯最大绝对值的中位数）".format(
        *(expected_gaussian_norm(n_total, 3.0, p) for p in (2.0, 1.0, float("inf")))))
    for norm_type in (2.0, 1.0, float("inf")):
        for max_norm in (1.0, 1e6):
            grads = [torch.randn(s) * 3 for s in shapes]
            a = [torch.nn.Parameter(torch.zeros(s)) for s in shapes]
            b = [torch.nn.Parameter(torch.zeros(s)) for s in shapes]
            for pa, pb, g in zip(a, b, grads):
                pa.grad, pb.grad = g.clone(), g.clone()
            na = clip_grad_norm(a, max_norm, norm_type)
            nb = torch.nn.utils.clip_grad_norm_(b, max_norm, norm_type)
            gdiff = max((pa.grad - pb.grad).abs().max().item() for pa, pb in zip(a, b))
            print(f"  p={norm_type:<4} max_norm={max_norm:<9g} 总范数 {na.item():10.3f} vs {nb.item():10.3f}  "
                  f"梯度差 {gdiff:.1e}")
            assert torch.allclose(na, nb, rtol=1e-6) and gdiff < 1e-6

    print("== 非有限梯度：一个 inf ==")
    for clip in (clip_grad_norm, torch.nn.utils.clip_grad_norm_):
        p = [torch.nn.Parameter(torch.zeros(3)), torch.nn.Parameter(torch.zeros(2))]
        p[0].grad, p[1].grad = torch.tensor([1.0, float("inf"), 2.0]), torch.tensor([3.0, 4.0])
        norm = clip(p, 1.0)
        print(f"  {clip.__module__:28} 范数 {norm.item()}，裁剪后 {p[0].grad.tolist()} {p[1].grad.tolist()}")

    params = [torch.nn.Parameter(torch.zeros(s)) for s in shapes]
    for p in params:
        p.grad = torch.randn_like(p)
    ms, ms_ref = benchmark_interleaved([lambda: clip_grad_norm(params, 1.0),
                                        lambda: torch.nn.utils.clip_grad_norm_(params, 1.0)], warmup=2, reps=5)
    print(f"== 耗时：ours {ms:.2f} ms，torch {ms_ref:.2f} ms ==")
    print(timing_note("benchmarks/training_optimizers.py"))


if __name__ == "__main__":
    lesson_args(__doc__)
    main()
