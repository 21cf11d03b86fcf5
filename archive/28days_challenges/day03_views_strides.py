"""第 3 天 视图、步长与 contiguous：同一块内存，不同的"看法"。

张量 = 一维的存储（storage） + (形状 shape, 步长 stride, 起始偏移 storage_offset)。
元素 x[i0, i1, ..., ik] 在存储里的位置是

    storage_offset + i0·stride[0] + i1·stride[1] + ... + ik·stride[k]

1. 行优先连续（contiguous）张量的步长：最后一维是 1，往前每一维是后面所有维大小之积。
   形状 (2, 3, 4) → 步长 (12, 4, 1)。
2. 视图操作只改 (shape, stride, offset)，不搬数据：转置 t()/transpose/permute 交换步长，
   切片改 offset 和 shape，expand 把要广播的维步长设成 0，diagonal 的步长是各维步长之和，
   步长为 1 的 unfold（滑动窗口）让窗口维和滑动维共用同一个步长。as_strided 让你直接指定这三样（危险但强大）。
3. view() 要求新形状能用原步长表达；转置后的张量不连续，x.t().view(-1) 会报
   "view size is not compatible with input tensor's size and stride"（见 utils/debug_checklist.md §1.4）。
   解决：x.t().reshape(-1)（必要时自动复制）或 x.t().contiguous().view(-1)（显式复制）。
4. is_contiguous() 判断时跳过大小为 1 的维（它的步长是多少都无所谓），元素数为 0 的张量总是连续。

练习：ex1–ex8；ex2、ex4、ex7、ex8 是谜题（只许用 as_strided / stride / size / storage_offset，
不许用 transpose、unfold、expand、diagonal 这些现成的视图函数）。运行：

    python archive/28days_challenges/day03_views_strides.py
"""

from __future__ import annotations

import torch

from utils import exercises
from utils.lesson_cli import lesson_args


# =============================================================================
# 练习（函数体就是参考解答；想自己做，就把函数体换成 raise NotImplementedError 再运行本文件）
# =============================================================================
def ex1_contiguous_strides(shape: tuple[int, ...]) -> tuple[int, ...]:
    """纯 Python：给定形状，算出行优先连续张量的步长（对照 torch.empty(shape).stride()）。"""
    strides = []
    step = 1
    for size in reversed(shape):
        strides.append(step)
        step *= max(size, 1)  # 大小为 0 的维：PyTorch 按 1 计算前面维的步长
    return tuple(reversed(strides))


def ex2_transpose(x: torch.Tensor) -> torch.Tensor:
    """谜题：用 as_strided 写二维转置（对照 x.t()）：形状和步长都交换。"""
    return x.as_strided((x.size(1), x.size(0)), (x.stride(1), x.stride(0)), x.storage_offset())


def ex3_is_contiguous(shape: tuple[int, ...], stride: tuple[int, ...]) -> bool:
    """纯 Python：这组 (shape, stride) 是不是行优先连续的（对照 torch.empty_strided(...).is_contiguous()）。"""
    if 0 in shape:
        return True
    expected = 1
    for size, st in zip(reversed(shape), reversed(stride)):
        if size == 1:
            continue  # 大小为 1 的维只有一个下标，步长不影响任何元素的位置
        if st != expected:
            return False
        expected *= size
    return True


def ex4_sliding_windows(x: torch.Tensor, w: int) -> torch.Tensor:
    """谜题：一维 x 的所有长度为 w 的滑动窗口，形状 (n − w + 1, w)，用 as_strided 零拷贝实现（对照 x.unfold(0, w, 1)）。"""
    s = x.stride(0)
    return x.as_strided((x.size(0) - w + 1, w), (s, s), x.storage_offset())


def ex5_flatten_transposed(x: torch.Tensor) -> torch.Tensor:
    """把二维 x 转置后展平成一维（对照 torch.flatten(x.t())）。x.t().view(-1) 会报错，想想为什么。"""
    return x.t().contiguous().view(-1)


def ex6_offset_of_subview(x: torch.Tensor, i: int, j: int) -> int:
    """纯算术：二维 x 的子视图 x[i:, j:] 的 storage_offset 是多少（对照 x[i:, j:].storage_offset()）。"""
    return x.storage_offset() + i * x.stride(0) + j * x.stride(1)


def ex7_expand_rows(v: torch.Tensor, n: int) -> torch.Tensor:
    """谜题：把一维 v 零拷贝地"复制"成 n 行，形状 (n, len(v))（对照 v.expand(n, -1)）：第 0 维步长为 0。"""
    return v.as_strided((n, v.size(0)), (0, v.stride(0)), v.storage_offset())


def ex8_diagonal(a: torch.Tensor) -> torch.Tensor:
    """谜题：方阵对角线的零拷贝视图（对照 torch.diagonal）：走一步对角线 = 行步长 + 列步长。"""
    return a.as_strided((a.size(0),), (a.stride(0) + a.stride(1),), a.storage_offset())


# =============================================================================
# 参考实现与输入
# =============================================================================
def _randint(g: torch.Generator, lo: int, hi: int) -> int:
    return int(torch.randint(lo, hi, (), generator=g))


def _matrix(g: torch.Generator, square: bool = False) -> torch.Tensor:
    """一个"不那么普通"的矩阵：有时是转置视图、有时是切片（offset ≠ 0），让步长不总是 (C, 1)。"""
    r = _randint(g, 1, 5)
    c = r if square else _randint(g, 1, 5)
    base = torch.randn(r + 1, c + 2, generator=g)[1:, 2:]  # offset ≠ 0、行步长 ≠ 列数
    return base.t() if _randint(g, 0, 2) else base


def _strided_layout(g: torch.Generator):
    shape = tuple(_randint(g, 0, 4) if _randint(g, 0, 6) == 0 else _randint(g, 1, 4) for _ in range(_randint(g, 1, 4)))
    stride = list(torch.empty(shape).stride())
    if _randint(g, 0, 2):  # 一半的情况打乱步长，得到不连续的布局
        stride = [stride[k] for k in torch.randperm(len(stride), generator=g).tolist()]
    return shape, tuple(stride)


def _shape(g: torch.Generator) -> tuple[int, ...]:
    return tuple(_randint(g, 0, 5) for _ in range(_randint(g, 1, 4)))


CHECKS = [
    ("ex1_contiguous_strides", lambda shape: torch.empty(shape).stride(), lambda g: (_shape(g),)),
    ("ex2_transpose", lambda x: x.t(), lambda g: (_matrix(g),)),
    (
        "ex3_is_contiguous",
        lambda shape, stride: torch.empty_strided(shape, stride).is_contiguous(),
        _strided_layout,
    ),
    (
        "ex4_sliding_windows",
        lambda x, w: x.unfold(0, w, 1),
        lambda g: (torch.randn(9, generator=g)[_randint(g, 0, 2) :: _randint(g, 1, 3)], _randint(g, 1, 4)),
    ),
    ("ex5_flatten_transposed", lambda x: torch.flatten(x.t()), lambda g: (_matrix(g),)),
    (
        "ex6_offset_of_subview",
        lambda x, i, j: x[i:, j:].storage_offset(),
        lambda g: (_matrix(g), _randint(g, 0, 2), _randint(g, 0, 2)),
    ),
    (
        "ex7_expand_rows",
        lambda v, n: v.expand(n, -1),
        lambda g: (torch.randn(8, generator=g)[1 :: _randint(g, 1, 3)], _randint(g, 1, 5)),
    ),
    ("ex8_diagonal", torch.diagonal, lambda g: (_matrix(g, square=True),)),
]

PUZZLE_ALLOWED = {
    name: {".as_strided", ".stride", ".size", ".storage_offset"}
    for name in ("ex2_transpose", "ex4_sliding_windows", "ex7_expand_rows", "ex8_diagonal")
}


def demo() -> None:
    x = torch.arange(24).reshape(2, 3, 4)
    print(f"x: shape={tuple(x.shape)} stride={x.stride()}")
    p = x.permute(2, 0, 1)
    print(f"x.permute(2, 0, 1): shape={tuple(p.shape)} stride={p.stride()} contiguous={p.is_contiguous()}")
    e = torch.arange(3).expand(4, 3)
    print(f"expand(4, 3): stride={e.stride()}（第 0 维步长 0，没有复制任何数据）")
    try:
        x.transpose(0, 2).view(-1)
    except RuntimeError as err:
        print(f"转置后 view(-1) 报错：{str(err).splitlines()[0][:70]}…")
    print(f"reshape 能用：{x.transpose(0, 2).reshape(-1)[:6].tolist()}…（必要时复制）")


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
