"""第 10 天 拼接与切分：cat / stack / split / chunk / tensor_split。

1. torch.cat(ts, dim)：沿**已有**的维拼接，其它维必须相等；torch.stack(ts, dim)：先给每个张量
   插入一个新维再拼，所以输入形状必须完全相同。stack(ts, d) ≡ cat([t.unsqueeze(d) for t in ts], d)。
   两者都会复制数据，而且每次都分配一块新内存（cat 从不"原地追加"）：循环里每步 acc = cat([acc, row])
   第 i 步要复制 i 行，n 步共 n(n+1)/2 行——O(n²)（n = 1000 时 500500 行）；先收集到 list 里最后 cat 一次只复制 n 行。
2. split(x, size)：每块 size 个，最后一块可能更小；split(x, [s1, s2, ...])：按给定大小切，和必须等于该维长度。
   chunk(x, n)：切成"最多" n 块，每块 ceil(L / n)——**可能少于 n 块**（L=6, n=4 → 2,2,2 只有 3 块）！
   tensor_split(x, n)：恰好 n 块，前 L mod n 块各多 1 个（L=6, n=4 → 2,2,1,1），行为与 numpy.array_split 相同。
   split / chunk / tensor_split 返回的都是**视图**，不复制。
3. unbind(x, d) 是 stack 的逆：返回沿 d 的所有切片。
4. 变长序列凑批：每条补齐到最长再 stack（pad_sequence），同时记下长度做 padding 掩码（第 7 天）。
5. RoPE 里的 rotate_half：把最后一维切成两半 (x1, x2)，拼成 (−x2, x1)——chunk + cat 的典型用法。

练习：ex1–ex8；ex2、ex5 是谜题（只许用 torch.arange / torch.where 和索引）。运行：

    python archive/28days_challenges/day10_cat_stack_split.py
"""

from __future__ import annotations

import torch
from torch.nn.utils.rnn import pad_sequence

from utils import exercises
from utils.lesson_cli import lesson_args


# =============================================================================
# 练习（函数体就是参考解答；想自己做，就把函数体换成 raise NotImplementedError 再运行本文件）
# =============================================================================
def ex1_stack_via_cat(tensors: list[torch.Tensor], dim: int) -> torch.Tensor:
    """用 cat + unsqueeze 实现 torch.stack(tensors, dim)（dim 可为负）。"""
    if dim < 0:
        dim += tensors[0].dim() + 1  # 新张量多一维：负数 dim 要按结果的维数换算
    return torch.cat([t.unsqueeze(dim) for t in tensors], dim)


def ex2_cat(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """谜题：拼接两个非空一维向量（对照 torch.cat([a, b])），只用 arange、where 和索引。
    提示：i < len(a) 取 a[i]，否则取 b[i − len(a)]；两边的下标都要先"钳"到合法范围，因为 where 两边都会算。"""
    n, m = a.shape[0], b.shape[0]
    i = torch.arange(n + m)
    from_a = a[torch.where(i < n, i, 0)]
    from_b = b[torch.where(i >= n, i - n, 0)]
    return torch.where(i < n, from_a, from_b)


def ex3_chunk_sizes(length: int, chunks: int) -> list[int]:
    """纯 Python：torch.chunk(torch.arange(length), chunks) 各块的长度（注意可能少于 chunks 块）。"""
    size = -(-length // chunks)  # ceil(length / chunks)
    return [min(size, length - start) for start in range(0, length, size)]


def ex4_split_by_sizes(x: torch.Tensor, sizes: list[int]) -> tuple[torch.Tensor, ...]:
    """沿第 0 维按 sizes 切块，用切片（对照 torch.split(x, sizes)）。"""
    out, start = [], 0
    for s in sizes:
        out.append(x[start : start + s])
        start += s
    return tuple(out)


def ex5_interleave(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """谜题：交错两个等长一维向量 [a0, b0, a1, b1, ...]（对照 torch.stack([a, b], 1).flatten()），只用 arange、where、索引。"""
    i = torch.arange(2 * a.shape[0])
    return torch.where(i % 2 == 0, a[i // 2], b[i // 2])


def ex6_rotate_half(x: torch.Tensor) -> torch.Tensor:
    """RoPE 的 rotate_half：最后一维切成两半 (x1, x2)，返回 cat(−x2, x1)。用 chunk + cat。"""
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat([-x2, x1], dim=-1)


def ex7_tensor_split(x: torch.Tensor, n: int) -> tuple[torch.Tensor, ...]:
    """沿第 0 维恰好切成 n 块，前 L mod n 块各多一个（对照 torch.tensor_split(x, n)），用 torch.split。"""
    q, r = divmod(x.shape[0], n)
    return torch.split(x, [q + 1] * r + [q] * (n - r))


def ex8_pad_and_stack(seqs: list[torch.Tensor], pad: float) -> torch.Tensor:
    """把若干一维变长序列补齐成 (B, max_len)，补的位置填 pad（对照 pad_sequence(batch_first=True)）。"""
    t = max(s.shape[0] for s in seqs)
    out = torch.full((len(seqs), t), pad, dtype=seqs[0].dtype)
    for row, s in enumerate(seqs):
        out[row, : s.shape[0]] = s
    return out


# =============================================================================
# 参考实现与输入
# =============================================================================
def _randint(g: torch.Generator, lo: int, hi: int) -> int:
    return int(torch.randint(lo, hi, (), generator=g))


def _stack_inputs(g: torch.Generator):
    shape = [_randint(g, 1, 4) for _ in range(_randint(g, 1, 3))]
    ts = [torch.randn(shape, generator=g) for _ in range(_randint(g, 1, 4))]
    return ts, _randint(g, -len(shape) - 1, len(shape) + 1)


def _split_inputs(g: torch.Generator):
    sizes = torch.randint(0, 4, (_randint(g, 1, 5),), generator=g).tolist()
    return torch.randn(sum(sizes), 2, generator=g), sizes


def _two_same_length(g: torch.Generator):
    n = _randint(g, 1, 6)
    return torch.randn(n, generator=g), torch.randn(n, generator=g)


def _ref_rotate_half(x: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


CHECKS = [
    ("ex1_stack_via_cat", torch.stack, _stack_inputs),
    (
        "ex2_cat",
        lambda a, b: torch.cat([a, b]),
        lambda g: (torch.randn(_randint(g, 1, 5), generator=g), torch.randn(_randint(g, 1, 5), generator=g)),
    ),
    (
        "ex3_chunk_sizes",
        lambda length, chunks: [t.numel() for t in torch.arange(length).chunk(chunks)],
        lambda g: (_randint(g, 1, 13), _randint(g, 1, 7)),
    ),
    ("ex4_split_by_sizes", lambda x, sizes: torch.split(x, sizes), _split_inputs),
    ("ex5_interleave", lambda a, b: torch.stack([a, b], dim=1).flatten(), _two_same_length),
    ("ex6_rotate_half", _ref_rotate_half, lambda g: (torch.randn(2, 3, 2 * _randint(g, 1, 4), generator=g),)),
    (
        "ex7_tensor_split",
        lambda x, n: torch.tensor_split(x, n),
        lambda g: (torch.randn(_randint(g, 0, 10), generator=g), _randint(g, 1, 5)),
    ),
    (
        "ex8_pad_and_stack",
        lambda seqs, pad: pad_sequence(seqs, batch_first=True, padding_value=pad),
        lambda g: ([torch.randn(_randint(g, 1, 6), generator=g) for _ in range(_randint(g, 1, 5))], -1.0),
    ),
]

PUZZLE_ALLOWED = {
    "ex2_cat": {"torch.arange", "torch.where"},
    "ex5_interleave": {"torch.arange", "torch.where"},
}


def rows_copied_by_repeated_cat(n: int) -> int:
    """循环里反复 acc = torch.cat([acc, row])，n 步一共往新分配的内存里写了多少行（每步的结果都是新张量）。"""
    acc, copied = torch.empty(0, 1), 0
    for _ in range(n):
        old_ptr = acc.data_ptr()
        acc = torch.cat([acc, torch.ones(1, 1)])
        assert acc.data_ptr() != old_ptr  # 新存储：旧的 acc 整个被复制了一遍
        copied += acc.shape[0]
    return copied


def demo() -> None:
    x = torch.arange(6)
    print(f"chunk(6, 4) → {[t.tolist() for t in x.chunk(4)]}（只有 3 块！）")
    print(f"tensor_split(6, 4) → {[t.tolist() for t in x.tensor_split(4)]}")
    a, b = torch.zeros(2, 3), torch.ones(2, 3)
    print(f"cat 形状 {tuple(torch.cat([a, b]).shape)}，stack 形状 {tuple(torch.stack([a, b]).shape)}")
    parts = x.split(2)
    print(f"split 返回视图：与 x 共享存储 = {parts[1].untyped_storage().data_ptr() == x.untyped_storage().data_ptr()}")
    n = 1000
    print(f"循环里反复 cat {n} 行：共复制 {rows_copied_by_repeated_cat(n)} 行 = n(n+1)/2（O(n²)）；"
          f"先收集进 list 最后 cat 一次：{torch.cat([torch.ones(1, 1)] * n).shape[0]} 行")


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
