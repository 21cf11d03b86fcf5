"""第 27 天 谜题日：只用 torch.arange、torch.where、广播、索引和 @，重新发明 10 个 PyTorch 函数。

这是 Tensor-Puzzles 式的练习：每题都有一个 PyTorch 内置函数作标准答案，而你只能用
    torch.arange(n)            0, 1, …, n−1
    torch.where(cond, a, b)    逐元素三选一
    广播                        (n, 1) 与 (m,) → (n, m)
    索引 a[idx]、切片、算术、比较、矩阵乘 @，以及 len / .shape
还可以调用**前面已经做好的谜题**（ex2_sum 可以用 ex1_ones）。自检会读你的源码，调用了别的函数就判为不通过。

几个常用招式：
- 二维"网格"：i = torch.arange(n)[:, None]，j = torch.arange(m)；i == j 是单位阵，j >= i 是上三角。
- 求和 = 乘一个全 1 向量：a @ ones(n)；前缀和 = 乘一个上三角矩阵：a @ triu。
- 计数 = 比较出一个 0/1 矩阵，再求和：bincount(a)[k] = Σᵢ [aᵢ == k]。
- 重排 = 用算出来的下标去索引：roll 的下标是 (i − shift) mod n，flip 的下标是 n − 1 − i。
这些招式正是注意力掩码、one-hot、scatter 在底层的样子：把循环变成广播出来的矩阵。

练习：ex1–ex10，全部是谜题（整数张量进、整数张量出）。运行：

    python archive/28days_challenges/day27_puzzles.py
"""

from __future__ import annotations

import torch

from utils import exercises
from utils.lesson_cli import lesson_args


# =============================================================================
# 练习（函数体就是参考解答；想自己做，就把函数体换成 raise NotImplementedError 再运行本文件）
# =============================================================================
def ex1_ones(n: int) -> torch.Tensor:
    """长度 n 的全 1 int64 向量（对照 torch.ones(n, dtype=torch.int64)）。"""
    return torch.where(torch.arange(n) >= 0, 1, 0)


def ex2_sum(a: torch.Tensor) -> torch.Tensor:
    """一维 int64 向量的和，0 维张量（对照 torch.sum(a)）。"""
    return a @ ex1_ones(len(a))  # 点积：Σ aᵢ·1


def ex3_triu(n: int, k: int) -> torch.Tensor:
    """n×n 的 int64 上三角全 1 矩阵，第 k 条对角线及其以上为 1（对照 torch.ones(n, n).triu(k)）。"""
    return torch.where(torch.arange(n)[None, :] - torch.arange(n)[:, None] >= k, 1, 0)  # 列号 − 行号 ≥ k


def ex4_cumsum(a: torch.Tensor) -> torch.Tensor:
    """前缀和（对照 torch.cumsum(a, 0)）。out[j] = Σ_{i≤j} a[i] = (a @ U)[j]，U 是上三角全 1 阵。"""
    return a @ ex3_triu(len(a), 0)


def ex5_roll(a: torch.Tensor, shift: int) -> torch.Tensor:
    """循环右移 shift 位（shift 可以是负数或大于长度；对照 torch.roll(a, shift)）。"""
    return a[(torch.arange(len(a)) - shift) % len(a)]  # 新位置 i 的元素来自旧位置 i − shift


def ex6_flip(a: torch.Tensor) -> torch.Tensor:
    """倒序（对照 torch.flip(a, (0,))）。"""
    return a[len(a) - 1 - torch.arange(len(a))]


def ex7_sequence_mask(values: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """(B, T) 的 values，每行只保留前 lengths[b] 个，其余置 0（对照 values * 由 cumsum 得到的 0/1 掩码）。"""
    return torch.where(torch.arange(values.shape[1])[None, :] < lengths[:, None], values, 0)


def ex8_bincount(a: torch.Tensor, n: int) -> torch.Tensor:
    """a 里 0..n−1 每个值出现的次数（a 的值都 < n；对照 torch.bincount(a, minlength=n)）。"""
    hits = torch.where(a[:, None] == torch.arange(n)[None, :], 1, 0)  # (len(a), n) 的 one-hot
    return ex1_ones(len(a)) @ hits  # 按列求和


def ex9_scatter_add(values: torch.Tensor, index: torch.Tensor, n: int) -> torch.Tensor:
    """out[index[i]] += values[i]，out 长度 n、初值 0（对照 torch.zeros(n).scatter_add_(0, index, values)）。"""
    route = torch.where(torch.arange(n)[:, None] == index[None, :], 1, 0)  # (n, len)：第 i 个值送往哪一格
    return route @ values


def ex10_bucketize(v: torch.Tensor, boundaries: torch.Tensor) -> torch.Tensor:
    """v 的每个元素落在哪个桶：boundaries 里严格小于它的个数（boundaries 升序；对照 torch.bucketize(v, boundaries)）。"""
    return torch.where(v[:, None] > boundaries[None, :], 1, 0) @ ex1_ones(len(boundaries))


# =============================================================================
# 参考实现与输入
# =============================================================================
def _randint(g: torch.Generator, lo: int, hi: int) -> int:
    return int(torch.randint(lo, hi, (), generator=g))


def _vector(g: torch.Generator, lo: int = -9, hi: int = 10, min_len: int = 1) -> torch.Tensor:
    return torch.randint(lo, hi, (_randint(g, min_len, 9),), generator=g)


def _mask_inputs(g: torch.Generator):
    B, T = _randint(g, 1, 5), _randint(g, 1, 7)
    return torch.randint(1, 9, (B, T), generator=g), torch.randint(0, T + 1, (B,), generator=g)


def _bincount_inputs(g: torch.Generator):
    n = _randint(g, 1, 6)
    return torch.randint(0, n, (_randint(g, 1, 12),), generator=g), n


def _scatter_inputs(g: torch.Generator):
    n = _randint(g, 1, 6)
    k = _randint(g, 1, 9)
    return torch.randint(-9, 10, (k,), generator=g), torch.randint(0, n, (k,), generator=g), n


def _bucket_inputs(g: torch.Generator):
    boundaries = torch.randint(-5, 6, (_randint(g, 1, 6),), generator=g).sort().values
    return torch.randint(-7, 8, (_randint(g, 1, 9),), generator=g), boundaries


CHECKS = [
    ("ex1_ones", lambda n: torch.ones(n, dtype=torch.int64), lambda g: (_randint(g, 1, 9),)),
    ("ex2_sum", torch.sum, lambda g: (_vector(g),)),
    ("ex3_triu", lambda n, k: torch.ones(n, n, dtype=torch.int64).triu(k),
     lambda g: (_randint(g, 1, 7), _randint(g, -3, 4))),
    ("ex4_cumsum", lambda a: torch.cumsum(a, 0), lambda g: (_vector(g),)),
    ("ex5_roll", torch.roll, lambda g: (_vector(g), _randint(g, -12, 13))),
    ("ex6_flip", lambda a: torch.flip(a, (0,)), lambda g: (_vector(g),)),
    ("ex7_sequence_mask", lambda v, lengths: v * (torch.ones_like(v).cumsum(1) <= lengths[:, None]), _mask_inputs),
    ("ex8_bincount", lambda a, n: torch.bincount(a, minlength=n),
     _bincount_inputs),
    ("ex9_scatter_add", lambda values, index, n: torch.zeros(n, dtype=values.dtype).scatter_add_(0, index, values),
     _scatter_inputs),
    ("ex10_bucketize", torch.bucketize, _bucket_inputs),
]

# 每道谜题可以用 arange / where，以及它前面的所有谜题
_NAMES = [entry[0] for entry in CHECKS]
PUZZLE_ALLOWED = {name: {"torch.arange", "torch.where", *_NAMES[:i]} for i, name in enumerate(_NAMES)}


def demo() -> None:
    n = 5
    i, j = torch.arange(n)[:, None], torch.arange(n)
    print("广播出来的网格 j − i（上三角 = j − i ≥ 0，对角线 = j − i == 0）：")
    for row in (j - i).tolist():
        print("   " + " ".join(f"{v:3d}" for v in row))
    a = torch.tensor([3, 1, 4, 1, 5])
    upper = torch.where(j - i >= 0, 1, 0)
    print(f"a = {a.tolist()}，a @ 上三角 = {(a @ upper).tolist()}（就是 cumsum）")


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
