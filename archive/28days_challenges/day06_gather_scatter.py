"""第 6 天 gather 与 scatter：按下标"收集"与"分发"。

1. gather（收集）：out[i][j] = x[i][ index[i][j] ]（dim=1 时）。index 与 out 同形状，
   除了 dim 这一维，其它维的大小不能超过 x。典型用途：按标签取每行的 logit
       logits.gather(1, target[:, None]).squeeze(1)   # 交叉熵里取 log p(正确类)
   它等价于高级索引 x[arange(B)[:, None], index]。
2. scatter（分发）：out[i][ index[i][j] ] = src[i][j]，gather 的反方向。
   - scatter_ 遇到重复下标时，谁最后写入是未定义的；
   - scatter_add_ / index_add_ 把重复下标上的值**累加**（第 2 天 x[idx] += 1 的坑的正确解法）；
   - scatter_reduce(reduce="sum"/"amax"/"amin"/"mean", include_self=...) 做分段归约，
     是图神经网络消息聚合、MoE 按专家汇总 token 的基本操作。
   scatter_add_ 的 index 必须和 src 同形状：要把 (N,) 的段号用到 (N, D) 的 src 上，先 expand 成 (N, D)。
3. one_hot、bincount、逆置换都是 scatter 的特例；torch.argsort 一个排列得到它的逆置换。

练习：ex1–ex8；ex1、ex2、ex3 是谜题（只许用 torch.arange / torch.where 和索引）。运行：

    python archive/28days_challenges/day06_gather_scatter.py
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from utils import exercises
from utils.lesson_cli import lesson_args


# =============================================================================
# 练习（函数体就是参考解答；想自己做，就把函数体换成 raise NotImplementedError 再运行本文件）
# =============================================================================
def ex1_pick_per_row(x: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """谜题：(B, C) 的 x 每行取第 idx[b] 个元素，得 (B,)（对照 x.gather(1, idx[:, None]).squeeze(1)）。"""
    return x[torch.arange(x.shape[0]), idx]


def ex2_gather(x: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """谜题：用高级索引实现 torch.gather(x, 1, index)，x 与 index 都是二维。"""
    rows = torch.arange(index.shape[0])[:, None]  # (B, 1) 与 index (B, K) 广播
    return x[rows, index]


def ex3_one_hot(labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """谜题：int64 的 one-hot 编码，(N,) → (N, C)（对照 F.one_hot）。"""
    return torch.where(labels[:, None] == torch.arange(num_classes), 1, 0)


def ex4_bincount(x: torch.Tensor, n: int) -> torch.Tensor:
    """用 scatter_add_ 数每个非负整数出现的次数（对照 torch.bincount(x, minlength=n)）。
    结果长度是 max(n, x.max() + 1)：minlength 只是下限。"""
    counts = torch.zeros(max(n, int(x.max()) + 1), dtype=torch.int64)
    return counts.scatter_add_(0, x, torch.ones_like(x))  # 重复下标会累加，这正是计数


def ex5_segment_sum(src: torch.Tensor, segment: torch.Tensor, n: int) -> torch.Tensor:
    """(N, D) 的行按段号 segment (N,) 求和得 (n, D)，用 scatter_add_（对照 index_add_）。"""
    out = torch.zeros(n, src.shape[1], dtype=src.dtype)
    index = segment[:, None].expand_as(src)  # scatter_add_ 要求 index 与 src 同形状
    return out.scatter_add_(0, index, src)


def ex6_segment_max(src: torch.Tensor, segment: torch.Tensor, n: int) -> torch.Tensor:
    """一维 src 按段号求每段最大值（每段非空），用广播 + where + amax（对照 scatter_reduce "amax"）。"""
    in_segment = segment[:, None] == torch.arange(n)  # (N, n)
    return torch.where(in_segment, src[:, None], float("-inf")).amax(0)


def ex7_cross_entropy(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """逐样本交叉熵 −log softmax(logits)[target]，用 log_softmax + gather（对照 F.cross_entropy(reduction="none")）。"""
    logp = logits.log_softmax(-1)
    return -logp.gather(1, target[:, None]).squeeze(1)


def ex8_inverse_permutation(p: torch.Tensor) -> torch.Tensor:
    """p 是 0..n−1 的一个排列，求逆置换 q（q[p[i]] = i），用 scatter_（对照 torch.argsort(p)）。"""
    return torch.empty_like(p).scatter_(0, p, torch.arange(p.shape[0]))


# =============================================================================
# 参考实现与输入
# =============================================================================
def _randint(g: torch.Generator, lo: int, hi: int) -> int:
    return int(torch.randint(lo, hi, (), generator=g))


def _rows_and_labels(g: torch.Generator):
    b, c = _randint(g, 1, 6), _randint(g, 1, 6)
    return torch.randn(b, c, generator=g), torch.randint(0, c, (b,), generator=g)


def _gather_inputs(g: torch.Generator):
    b, c, k = _randint(g, 1, 5), _randint(g, 1, 5), _randint(g, 1, 7)
    return torch.randn(b, c, generator=g), torch.randint(0, c, (b, k), generator=g)


def _segments(g: torch.Generator, n: int, extra: int) -> torch.Tensor:
    """每个段至少出现一次的段号序列（打乱顺序）。"""
    seg = torch.cat([torch.arange(n), torch.randint(0, n, (extra,), generator=g)])
    return seg[torch.randperm(seg.shape[0], generator=g)]


def _segment_sum_inputs(g: torch.Generator):
    n = _randint(g, 1, 5)
    seg = _segments(g, n, _randint(g, 0, 6))
    return torch.randn(seg.shape[0], 3, generator=g, dtype=torch.float64), seg, n


def _segment_max_inputs(g: torch.Generator):
    n = _randint(g, 1, 5)
    seg = _segments(g, n, _randint(g, 0, 6))
    return torch.randn(seg.shape[0], generator=g), seg, n


CHECKS = [
    ("ex1_pick_per_row", lambda x, idx: x.gather(1, idx[:, None]).squeeze(1), _rows_and_labels),
    ("ex2_gather", lambda x, index: torch.gather(x, 1, index), _gather_inputs),
    (
        "ex3_one_hot",
        F.one_hot,
        lambda g: (torch.randint(0, 5, (_randint(g, 1, 8),), generator=g), 5 + _randint(g, 0, 3)),
    ),
    (
        "ex4_bincount",
        lambda x, n: torch.bincount(x, minlength=n),
        lambda g: (torch.randint(0, 6, (_randint(g, 1, 20),), generator=g), _randint(g, 0, 9)),
    ),
    (
        "ex5_segment_sum",
        lambda src, seg, n: torch.zeros(n, src.shape[1], dtype=src.dtype).index_add_(0, seg, src),
        _segment_sum_inputs,
    ),
    (
        "ex6_segment_max",
        lambda src, seg, n: torch.zeros(n).scatter_reduce(0, seg, src, reduce="amax", include_self=False),
        _segment_max_inputs,
    ),
    ("ex7_cross_entropy", lambda logits, t: F.cross_entropy(logits, t, reduction="none"), _rows_and_labels),
    ("ex8_inverse_permutation", torch.argsort, lambda g: (torch.randperm(_randint(g, 1, 10), generator=g),)),
]

PUZZLE_ALLOWED = {
    "ex1_pick_per_row": {"torch.arange"},
    "ex2_gather": {"torch.arange"},
    "ex3_one_hot": {"torch.arange", "torch.where"},
}


def demo() -> None:
    x = torch.tensor([[10, 11, 12], [20, 21, 22]])
    idx = torch.tensor([[2, 0], [1, 1]])
    print(f"gather(dim=1)：x={x.tolist()} index={idx.tolist()} → {x.gather(1, idx).tolist()}")
    y = torch.zeros(3)
    y.index_add_(0, torch.tensor([1, 1, 1]), torch.ones(3))
    print(f"index_add_ 累加重复下标：{y.tolist()}（对比第 2 天 y[[1,1,1]] += 1 只加一次）")


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
