"""第 2 天 索引与切片：基本索引返回视图，高级索引返回副本。

PyTorch 的索引规则基本照搬 numpy：

1. 基本索引（整数、切片 a:b:c、None、...）只改"怎么看这块内存"，返回**视图**（共享存储，零拷贝）：
   x[1]、x[:, 2:5]、x[..., 0]、x[:, None]。改视图就是改原张量。
   注意：PyTorch 不支持负步长切片 x[::-1]，要反转用 torch.flip 或者用 arange 造倒序下标。
2. 高级索引（用整数张量或布尔张量做下标）返回**副本**：
   - x[idx]：按 idx 挑行；x[rows, cols]：rows 与 cols 先广播成同一形状，再逐对取 x[rows[k], cols[k]]。
   - x[mask]：布尔掩码（与 x 同形状时）返回一维的被选元素（元素个数由数据决定，所以是副本）；
     mask 只覆盖前几维时按行挑选，(R, C)[mask (R,)] → (被选行数, C)。
   - 但出现在赋值左边时（x[mask] = 0、x[idx] += 1）是原地写入。
     小心 x[idx] += 1 遇到重复下标只加一次；要累加用 index_add_ / scatter_add_（第 6 天）。
3. 多维张量按行优先（row-major）展平：(R, C) 矩阵里 (r, c) 的线性下标是 r·C + c，torch.take 按它取元素。
4. `...`（Ellipsis）代表"中间所有维"，写出与维数无关的代码：x[..., 0] 对任何维数都取最后一维的第 0 个。

练习：ex1–ex8；ex2、ex4 是谜题（只许用 torch.arange 造下标，其余靠索引）。运行：

    python archive/28days_challenges/day02_indexing_slicing.py
"""

from __future__ import annotations

import torch

from utils import exercises
from utils.lesson_cli import lesson_args


# =============================================================================
# 练习（函数体就是参考解答；想自己做，就把函数体换成 raise NotImplementedError 再运行本文件）
# =============================================================================
def ex1_last_k(x: torch.Tensor, k: int) -> torch.Tensor:
    """取最后一维的最后 k 个元素（对照 torch.narrow）。陷阱：k == 0 时 x[..., -0:] 取的是全部。"""
    return x[..., x.shape[-1] - k :]


def ex2_reverse(x: torch.Tensor) -> torch.Tensor:
    """谜题：只用 torch.arange 造倒序下标，把一维张量反转（对照 torch.flip）。PyTorch 不支持 x[::-1]。"""
    n = x.shape[0]
    return x[torch.arange(n - 1, -1, -1)]


def ex3_every_other(x: torch.Tensor) -> torch.Tensor:
    """取最后一维下标为偶数的元素（对照 index_select），用切片写：结果是视图，不复制。"""
    return x[..., ::2]


def ex4_diagonal(a: torch.Tensor) -> torch.Tensor:
    """谜题：只用 torch.arange 和高级索引取方阵的对角线（对照 torch.diagonal）。"""
    i = torch.arange(a.shape[0])
    return a[i, i]  # 两个下标张量逐对配合：(0,0), (1,1), ...


def ex5_take_rows(x: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """按 idx（可重复、乱序）挑出 x 的行（对照 index_select(0, idx)）。"""
    return x[idx]


def ex6_zero_negatives(x: torch.Tensor) -> torch.Tensor:
    """返回一个负数被置 0 的新张量，不修改 x（对照 torch.relu）。用布尔掩码赋值。"""
    y = x.clone()  # 掩码赋值是原地写入：不 clone 就改坏了调用者的 x
    y[y < 0] = 0
    return y


def ex7_pick_pairs(x: torch.Tensor, rows: torch.Tensor, cols: torch.Tensor) -> torch.Tensor:
    """取出 x[rows[k], cols[k]]（k 遍历所有对），对照按线性下标取值的 torch.take。"""
    return x[rows, cols]


def ex8_first_of_last_dim(x: torch.Tensor) -> torch.Tensor:
    """对任意维数的 x，取最后一维的第 0 个元素（对照 x.select(-1, 0)）。"""
    return x[..., 0]


# =============================================================================
# 参考实现与输入
# =============================================================================
def _randint(g: torch.Generator, lo: int, hi: int) -> int:
    return int(torch.randint(lo, hi, (), generator=g))


def _rand_nd(g: torch.Generator) -> torch.Tensor:
    shape = [_randint(g, 1, 5) for _ in range(_randint(g, 1, 4))]
    return torch.randn(shape, generator=g)


def _pairs_inputs(g: torch.Generator):
    r, c, k = _randint(g, 1, 5), _randint(g, 1, 5), _randint(g, 1, 8)
    x = torch.randn(r, c, generator=g)
    return x, torch.randint(0, r, (k,), generator=g), torch.randint(0, c, (k,), generator=g)


CHECKS = [
    (
        "ex1_last_k",
        lambda x, k: torch.narrow(x, -1, x.shape[-1] - k, k),
        lambda g: (torch.randn(3, 6, generator=g), _randint(g, 0, 7)),
    ),
    ("ex2_reverse", lambda x: torch.flip(x, dims=[0]), lambda g: (torch.randn(_randint(g, 1, 9), generator=g),)),
    (
        "ex3_every_other",
        lambda x: x.index_select(-1, torch.arange(0, x.shape[-1], 2)),
        lambda g: (_rand_nd(g),),
    ),
    ("ex4_diagonal", torch.diagonal, lambda g: (torch.randn(*(2 * [_randint(g, 1, 6)]), generator=g),)),
    (
        "ex5_take_rows",
        lambda x, idx: x.index_select(0, idx),
        lambda g: (torch.randn(5, 3, generator=g), torch.randint(0, 5, (7,), generator=g)),
    ),
    ("ex6_zero_negatives", torch.relu, lambda g: (_rand_nd(g),)),
    ("ex7_pick_pairs", lambda x, rows, cols: torch.take(x, rows * x.shape[1] + cols), _pairs_inputs),
    ("ex8_first_of_last_dim", lambda x: x.select(-1, 0), lambda g: (_rand_nd(g),)),
]

PUZZLE_ALLOWED = {
    "ex2_reverse": {"torch.arange"},
    "ex4_diagonal": {"torch.arange"},
}


def demo() -> None:
    x = torch.arange(12).reshape(3, 4)
    view = x[:, 1:3]
    view[0, 0] = 100
    shared = view.untyped_storage().data_ptr() == x.untyped_storage().data_ptr()
    print(f"切片是视图：改 x[:, 1:3][0, 0] 之后 x[0] = {x[0].tolist()}，与 x 共享存储 = {shared}")
    picked = x[torch.tensor([0, 0])]
    picked[0, 0] = -1
    print(f"高级索引是副本：改 x[[0, 0]] 的结果不影响 x[0, 0] = {int(x[0, 0])}")
    y = torch.zeros(3)
    y[torch.tensor([1, 1, 1])] += 1
    print(f"重复下标 y[[1,1,1]] += 1 只加一次：{y.tolist()}")


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
