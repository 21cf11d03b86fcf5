"""第 5 天 归约：sum / mean / var / max / norm，以及 dim 与 keepdim。

归约沿指定维把张量"压扁"：x.sum(dim=1) 把 (B, T, C) 变成 (B, C)。要点：

1. dim 可以是负数（-1 = 最后一维），也可以是元组一次归约多维：x.amax(dim=(0, 2))。
2. keepdim=True 保留被归约的维（长度变成 1），结果能直接与原张量广播：
       x / x.sum(-1, keepdim=True)      每行归一化，(B, T) / (B, 1)
   忘了 keepdim 时 (B, T) / (B,) 会按右对齐广播成 (B, T) / (1, B)——形状刚好相等时不报错，悄悄算错。
3. 方差有两种：总体方差除以 n（correction=0），样本（无偏）方差除以 n − 1（correction=1）。
   torch.var / torch.std 默认 correction=1；BatchNorm / LayerNorm 归一化用的是除以 n 的版本。
4. max(dim) 返回 (values, indices) 两个张量；amax 只返回值、可以多维；argmax 遇到并列取**第一个**。
5. 整数（bool、uint8、int8/16/32）求和会提升到 int64：100 个 int8 的 100 求和得 10000，不会在 int8 的
   [−128, 127] 里回绕；但 int64 本身满了（> 2⁶³ − 1 ≈ 9.2e18）照样回绕，不报错。
   mean 只接受浮点（整数张量要先 .float()，或传 dtype=torch.float32）。
6. 屏蔽一部分元素求平均：sum(x·mask) / sum(mask)，或把被屏蔽的设成 nan 再 torch.nanmean。

练习：ex1–ex8；ex3、ex4 是谜题（ex3 只许 arange/where/@；ex4 允许 max/min/arange/where）。运行：

    python archive/28days_challenges/day05_reductions.py
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from utils import exercises
from utils.lesson_cli import lesson_args


# =============================================================================
# 练习（函数体就是参考解答；想自己做，就把函数体换成 raise NotImplementedError 再运行本文件）
# =============================================================================
def ex1_mean(x: torch.Tensor, dim: int) -> torch.Tensor:
    """沿 dim 求平均，只用 sum 和形状（对照 x.mean(dim)）。"""
    return x.sum(dim) / x.shape[dim]


def ex2_var(x: torch.Tensor, dim: int) -> torch.Tensor:
    """沿 dim 的无偏方差 Σ(x − x̄)² / (n − 1)（对照 torch.var(x, dim)）。"""
    mean = x.mean(dim, keepdim=True)  # keepdim：才能与 x 广播相减
    return ((x - mean) ** 2).sum(dim) / (x.shape[dim] - 1)


def ex3_cumsum(a: torch.Tensor) -> torch.Tensor:
    """谜题：一维前缀和 out[i] = a[0] + … + a[i]（对照 torch.cumsum(a, 0)）。提示：下三角全 1 矩阵 @ a。"""
    i = torch.arange(a.shape[0])
    lower = torch.where(i[:, None] >= i, 1.0, 0.0)  # L[i, j] = 1 当 j ≤ i
    return lower @ a


def ex4_argmax(x: torch.Tensor) -> torch.Tensor:
    """谜题：沿最后一维的 argmax，并列时取第一个（对照 torch.argmax(x, -1)）。
    允许：.max/.min（只取 .values）、torch.arange、torch.where。"""
    n = x.shape[-1]
    is_max = x == x.max(-1, keepdim=True).values
    # 不是最大值的位置填 n（比任何下标都大），再取最小下标 = 第一个最大值的位置
    return torch.where(is_max, torch.arange(n), n).min(-1).values


def ex5_vector_norm(x: torch.Tensor, p: float) -> torch.Tensor:
    """最后一维的 p 范数 (Σ|x|^p)^(1/p)（对照 torch.linalg.vector_norm(x, ord=p, dim=-1)）。"""
    return (x.abs() ** p).sum(-1) ** (1.0 / p)


def ex6_masked_mean(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """只对 mask 为 True 的元素沿最后一维求平均（每行至少一个 True），对照 nanmean。"""
    m = mask.to(x.dtype)
    return (x * m).sum(-1) / m.sum(-1)


def ex7_normalize_rows(x: torch.Tensor) -> torch.Tensor:
    """正数矩阵每行除以该行之和（对照 F.normalize(x, p=1, dim=-1)）。记得 keepdim。"""
    return x / x.sum(-1, keepdim=True)


def ex8_amax_multi(x: torch.Tensor) -> torch.Tensor:
    """三维 x 沿第 0 维和第 2 维的最大值（对照 torch.amax(x, dim=(0, 2))），只用单维的 .max。"""
    return x.max(2).values.max(0).values  # 先归约后面的维，前面维的编号不变


# =============================================================================
# 参考实现与输入
# =============================================================================
def _randint(g: torch.Generator, lo: int, hi: int) -> int:
    return int(torch.randint(lo, hi, (), generator=g))


def _x_and_dim(g: torch.Generator):
    x = torch.randn(*[_randint(g, 2, 5) for _ in range(3)], generator=g, dtype=torch.float64)
    return x, _randint(g, -3, 3)


def _masked(g: torch.Generator):
    x = torch.randn(4, 6, generator=g, dtype=torch.float64)
    mask = torch.rand(4, 6, generator=g) < 0.5
    mask[:, 0] = True  # 每行至少一个有效元素
    return x, mask


CHECKS = [
    ("ex1_mean", lambda x, dim: x.mean(dim), _x_and_dim),
    ("ex2_var", lambda x, dim: torch.var(x, dim), _x_and_dim),
    ("ex3_cumsum", lambda a: torch.cumsum(a, 0), lambda g: (torch.randn(_randint(g, 1, 10), generator=g),)),
    (
        "ex4_argmax",
        lambda x: torch.argmax(x, -1),
        lambda g: (torch.randint(0, 3, (4, _randint(g, 1, 7)), generator=g),),  # 小整数：保证有并列
    ),
    (
        "ex5_vector_norm",
        lambda x, p: torch.linalg.vector_norm(x, ord=p, dim=-1),
        lambda g: (torch.randn(3, 5, generator=g, dtype=torch.float64), [1.0, 2.0, 3.0, 0.5][_randint(g, 0, 4)]),
    ),
    ("ex6_masked_mean", lambda x, mask: torch.nanmean(torch.where(mask, x, float("nan")), dim=-1), _masked),
    (
        "ex7_normalize_rows",
        lambda x: F.normalize(x, p=1.0, dim=-1),
        lambda g: (torch.rand(3, 5, generator=g, dtype=torch.float64) + 0.1,),
    ),
    ("ex8_amax_multi", lambda x: torch.amax(x, dim=(0, 2)), lambda g: (torch.randn(3, 4, 5, generator=g),)),
]

PUZZLE_ALLOWED = {
    "ex3_cumsum": {"torch.arange", "torch.where"},
    "ex4_argmax": {".max", ".min", "torch.arange", "torch.where"},
}


def demo() -> None:
    x = torch.tensor([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0], [7.0, 8.0, 9.0]])
    print(f"正确：x / x.sum(-1, keepdim=True) 每行和 = {(x / x.sum(-1, keepdim=True)).sum(-1).tolist()}")
    print(f"忘了 keepdim（方阵不报错！）每行和 = {[round(v, 3) for v in (x / x.sum(-1)).sum(-1).tolist()]}")
    v = torch.tensor([1.0, 2.0, 3.0, 4.0])
    print(f"var 默认无偏 {v.var().item():.4f}，correction=0 时 {v.var(correction=0).item():.4f}")
    hundreds = torch.full((100,), 100, dtype=torch.int8)
    total, wrapped = hundreds.sum(), hundreds.sum(dtype=torch.int8)
    print(f"int8 求和自动提升：100 个 100 之和 = {total.item()}（{total.dtype}）；"
          f"强制 sum(dtype=torch.int8) 则回绕成 {wrapped.item()}（= 10000 mod 256）")


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
