"""第 4 天 广播：不复制数据，让形状不同的张量逐元素运算。

广播规则（与 numpy 相同），把两个形状**右对齐**逐维比较：
1. 维数少的那个在左边补 1：(3,) 对 (2, 3) 看成 (1, 3) 对 (2, 3)；
2. 每一维要么相等，要么其中一个是 1（大小为 1 的那一边沿这一维"复制"）；否则报错，例如 (2, 3) + (2, 4)：
   "The size of tensor a (3) must match the size of tensor b (4) at non-singleton dimension 1"；
3. 结果的每一维取两者的较大值。
"复制"并不真的发生：expand 出来的维步长为 0（第 3 天）。

最常用的一招：用 None（= unsqueeze）插入长度 1 的维，把"两两组合"变成逐元素运算：
    a[:, None] * b[None, :]        外积，(n,1) × (1,m) → (n,m)
    x[:, None, :] - y[None, :, :]  所有点对之差，(N,1,D) − (1,M,D) → (N,M,D)
    i[:, None] == i[None, :]       单位矩阵的掩码

今天的谜题沿用 Sasha Rush 的 Tensor-Puzzles 的规矩：只许用 torch.arange、torch.where、
广播、算术/比较运算、索引、@，以及前面已经写好的谜题函数——不许调用其它 torch 函数或张量方法。
（ones、sum、triu、diag、stack……都能这样从零拼出来。）

    python archive/28days_challenges/day04_broadcasting.py
"""

from __future__ import annotations

import torch

from utils import exercises
from utils.lesson_cli import lesson_args


# =============================================================================
# 练习（函数体就是参考解答；想自己做，就把函数体换成 raise NotImplementedError 再运行本文件）
# =============================================================================
def ex1_ones(n: int) -> torch.Tensor:
    """谜题：长度 n 的 int64 全 1 向量（对照 torch.ones(n, dtype=torch.int64)）。"""
    return torch.where(torch.arange(n) >= 0, 1, 0)


def ex2_sum(a: torch.Tensor) -> torch.Tensor:
    """谜题：一维浮点向量的和，0 维张量（对照 a.sum()）。提示：与全 1 向量做点积；a * 0 + 1 就是同 dtype 的全 1。"""
    return a @ (a * 0 + 1)


def ex3_outer(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """谜题：外积 out[i, j] = a[i]·b[j]（对照 torch.outer）。"""
    return a[:, None] * b[None, :]


def ex4_triu_mask(n: int) -> torch.Tensor:
    """谜题：n×n 的布尔上三角掩码（含对角线），对照 torch.ones(n, n, dtype=bool).triu()。"""
    i = torch.arange(n)
    return i[:, None] <= i[None, :]  # 行号 ≤ 列号


def ex5_diag(v: torch.Tensor) -> torch.Tensor:
    """谜题：以 v 为对角线的方阵（对照 torch.diag(v)）。"""
    i = torch.arange(v.shape[0])
    return torch.where(i[:, None] == i, v, 0)  # v 的形状 (n,) 沿第 0 维广播：第 i 行第 i 列取 v[i]


def ex6_vstack(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """谜题：把两个等长一维向量叠成 2×n（对照 torch.stack([a, b])）。"""
    return torch.where(torch.arange(2)[:, None] == 0, a, b)


def ex7_pairwise_distance(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """(N, D) 与 (M, D) 两组点之间的欧氏距离矩阵 (N, M)（对照 torch.cdist）。这题可以用 .sum 和 .sqrt。"""
    diff = x[:, None, :] - y[None, :, :]  # (N, M, D)
    return (diff**2).sum(-1).sqrt()


def ex8_broadcast_shape(s1: tuple[int, ...], s2: tuple[int, ...]) -> tuple[int, ...]:
    """纯 Python：按广播规则算结果形状，不兼容时抛 ValueError（对照 torch.broadcast_shapes）。"""
    n = max(len(s1), len(s2))
    a = (1,) * (n - len(s1)) + tuple(s1)  # 右对齐：左边补 1
    b = (1,) * (n - len(s2)) + tuple(s2)
    out = []
    for x, y in zip(a, b):
        if x != y and 1 not in (x, y):
            raise ValueError(f"形状 {s1} 与 {s2} 不能广播：对应维 {x} 和 {y} 既不相等也不是 1")
        out.append(y if x == 1 else x)
    return tuple(out)


# =============================================================================
# 参考实现与输入
# =============================================================================
def _randint(g: torch.Generator, lo: int, hi: int) -> int:
    return int(torch.randint(lo, hi, (), generator=g))


def _vec(g: torch.Generator, n: int | None = None, dtype=torch.float64) -> torch.Tensor:
    return torch.randn(n if n is not None else _randint(g, 1, 8), generator=g, dtype=dtype)


def _broadcastable_shapes(g: torch.Generator):
    full = [_randint(g, 1, 5) for _ in range(_randint(g, 1, 5))]
    # 把若干维改成 1、砍掉左边若干维，得到两个可广播的形状；另一半情况则不动，形状相同
    s1 = [1 if _randint(g, 0, 3) == 0 else s for s in full][_randint(g, 0, len(full)) :]
    s2 = [1 if _randint(g, 0, 3) == 0 else s for s in full]
    return tuple(s1), tuple(s2)


def _ref_broadcast_shape(s1, s2):
    return tuple(torch.broadcast_shapes(s1, s2))


def _two_vecs(g: torch.Generator):
    n = _randint(g, 1, 7)
    return _vec(g, n), _vec(g, n)


CHECKS = [
    ("ex1_ones", lambda n: torch.ones(n, dtype=torch.int64), lambda g: (_randint(g, 1, 9),)),
    ("ex2_sum", lambda a: a.sum(), lambda g: (_vec(g),)),
    ("ex3_outer", torch.outer, lambda g: (_vec(g), _vec(g))),
    ("ex4_triu_mask", lambda n: torch.ones(n, n, dtype=torch.bool).triu(), lambda g: (_randint(g, 1, 7),)),
    ("ex5_diag", torch.diag, lambda g: (_vec(g, dtype=torch.float32),)),
    ("ex6_vstack", lambda a, b: torch.stack([a, b]), _two_vecs),
    (
        "ex7_pairwise_distance",
        torch.cdist,
        lambda g: (torch.randn(_randint(g, 1, 6), 3, generator=g, dtype=torch.float64),
                   torch.randn(_randint(g, 1, 6), 3, generator=g, dtype=torch.float64)),
    ),
    ("ex8_broadcast_shape", _ref_broadcast_shape, _broadcastable_shapes),
]

PUZZLE_ALLOWED = {
    "ex1_ones": {"torch.arange", "torch.where"},
    "ex2_sum": set(),
    "ex3_outer": set(),
    "ex4_triu_mask": {"torch.arange"},
    "ex5_diag": {"torch.arange", "torch.where"},
    "ex6_vstack": {"torch.arange", "torch.where"},
}


def demo() -> None:
    a, b = torch.arange(3), torch.arange(4)
    print(f"(3,1) + (4,) → {tuple((a[:, None] + b).shape)}；(3,) + (4,) → ", end="")
    try:
        a + b
    except RuntimeError as err:
        print(f"报错：{err}")
    print(f"broadcast_shapes((5, 1, 3), (4, 1)) = {tuple(torch.broadcast_shapes((5, 1, 3), (4, 1)))}")
    try:  # 练习模式里 ex8 是还没写的桩：演示照常跑完，留给自检报告 ✗
        print(f"ex8 手写版本给出 {ex8_broadcast_shape((5, 1, 3), (4, 1))}")
    except NotImplementedError:
        print("ex8 手写版本还没写（见下面的自检）")


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
