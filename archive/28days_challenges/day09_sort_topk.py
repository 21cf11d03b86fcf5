"""第 9 天 排序与 topk：sort / argsort / topk / kthvalue / unique。

1. torch.sort(x, dim=-1, descending=False) 返回 (values, indices)；argsort 只要 indices。
   stable=True 保证相等元素保持原来的相对顺序（多关键字排序：先按次关键字排，再按主关键字稳定排序）。
2. topk(k) 返回最大的 k 个（默认按从大到小排好）；largest=False 取最小的。k 远小于 n 时
   它只做部分选择（CPU 上 k·64 ≤ n 时用 std::partial_sort，约 O(n log k)；否则 nth_element + 排前 k 个），
   比完整排序的 O(n log n) 便宜得多：本机单线程 CPU 上 GPT-2 词表 n = 50257、k = 50 时
   topk 快几十倍（8 次实测 34–102 倍），演示里再量一次。采样时的 top-k / top-p（nucleus）过滤靠它们：
   先取第 k 大的值作阈值，低于阈值的 logit 置 −inf。
3. 秩（rank）与 argsort 的关系：argsort 给出"第 r 名是谁"，argsort(argsort(x)) 给出"每个元素排第几"。
   rank 也能用广播直接数出来：rank[i] = #{j : x[j] < x[i]}——O(n²)，但只用比较与求和。
4. torch.median 在元素个数为偶数时返回**较小**的那个中位数（不是两者平均）；kthvalue(k) 返回第 k 小（k 从 1 起）。
5. unique(sorted=True, return_counts=True) 的本质：排序后，值与前一个不同的位置是一段新值的开始。

练习：ex1–ex8；ex2、ex3 是谜题（只许用 torch.where / torch.arange / .sum 与比较、索引）。运行：

    python archive/28days_challenges/day09_sort_topk.py
"""

from __future__ import annotations

import torch

from utils import exercises
from utils.io import is_smoke
from utils.lesson_cli import lesson_args, timing_note
from utils.torch_playground import benchmark_interleaved


# =============================================================================
# 练习（函数体就是参考解答；想自己做，就把函数体换成 raise NotImplementedError 再运行本文件）
# =============================================================================
def ex1_topk_values(x: torch.Tensor, k: int) -> torch.Tensor:
    """最后一维最大的 k 个值，从大到小（对照 torch.topk(x, k).values），用 sort。"""
    return x.sort(dim=-1, descending=True).values[..., :k]


def ex2_rank(x: torch.Tensor) -> torch.Tensor:
    """谜题：一维 x（元素互不相同）每个元素的名次（最小的是 0），对照 argsort(argsort(x))。
    只用广播比较、torch.where 和 .sum。"""
    smaller = torch.where(x[None, :] < x[:, None], 1, 0)  # smaller[i, j] = 1 当 x[j] < x[i]
    return smaller.sum(1)


def ex3_sort(x: torch.Tensor) -> torch.Tensor:
    """谜题：一维 x（元素互不相同）从小到大排序（对照 torch.sort(x).values）。
    用 ex2_rank：名次为 r 的元素放到第 r 位——out[r] = Σ_i x[i]·[rank[i] == r]。"""
    rank = ex2_rank(x)
    return torch.where(rank[:, None] == torch.arange(x.shape[0]), x[:, None], 0.0).sum(0)


def ex4_topk_mask(x: torch.Tensor, k: int) -> torch.Tensor:
    """(B, V) 每行最大的 k 个位置为 True 的布尔掩码（元素互不相同），用 "≥ 第 k 大的值"。
    对照：用 topk 的 indices 做 scatter。"""
    kth = x.topk(k, dim=-1).values[..., -1:]  # (B, 1)：第 k 大的值，保留维度以便广播
    return x >= kth


def ex5_lower_median(x: torch.Tensor) -> torch.Tensor:
    """最后一维的中位数，偶数个时取较小的那个（对照 torch.median(x, dim=-1).values），用 sort。"""
    n = x.shape[-1]
    return x.sort(dim=-1).values[..., (n - 1) // 2]


def ex6_unique_counts(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """一维整数张量的 (去重后的有序值, 每个值出现次数)（对照 torch.unique(x, return_counts=True)）。
    不许用 unique：排序后找"与前一个不同"的位置。"""
    s = x.sort().values
    is_start = torch.ones_like(s, dtype=torch.bool)
    is_start[1:] = s[1:] != s[:-1]
    starts = is_start.nonzero().squeeze(1)  # 每段新值开始的下标
    ends = torch.cat([starts[1:], torch.tensor([s.shape[0]])])
    return s[starts], ends - starts


def ex7_kth_smallest(x: torch.Tensor, k: int) -> torch.Tensor:
    """最后一维第 k 小的值，k 从 1 开始（对照 torch.kthvalue(x, k).values），用 sort。"""
    return x.sort(dim=-1).values[..., k - 1]


def ex8_stable_argsort(x: torch.Tensor) -> torch.Tensor:
    """一维小整数张量的**稳定** argsort（对照 torch.argsort(x, stable=True)），只许用不稳定的 argsort：
    把原下标编进排序键——key = x·n + i 互不相同，按 key 排序就等于"先按 x、x 相等再按下标"。"""
    n = x.shape[0]
    return torch.argsort(x * n + torch.arange(n))


# =============================================================================
# 参考实现与输入
# =============================================================================
def _randint(g: torch.Generator, lo: int, hi: int) -> int:
    return int(torch.randint(lo, hi, (), generator=g))


def _distinct(g: torch.Generator, *shape: int) -> torch.Tensor:
    return torch.randn(*shape, generator=g)  # 连续分布：几乎不可能出现相等元素


def _ref_topk_mask(x: torch.Tensor, k: int) -> torch.Tensor:
    idx = torch.topk(x, k, dim=-1).indices
    return torch.zeros_like(x, dtype=torch.bool).scatter(-1, idx, True)


def _ref_unique(x: torch.Tensor):
    return tuple(torch.unique(x, sorted=True, return_counts=True))


def _matrix_and_k(g: torch.Generator):
    v = _randint(g, 1, 8)
    return _distinct(g, 3, v), _randint(g, 1, v + 1)


CHECKS = [
    ("ex1_topk_values", lambda x, k: torch.topk(x, k).values, _matrix_and_k),
    ("ex2_rank", lambda x: torch.argsort(torch.argsort(x)), lambda g: (_distinct(g, _randint(g, 1, 9)),)),
    ("ex3_sort", lambda x: torch.sort(x).values, lambda g: (_distinct(g, _randint(g, 1, 9)),)),
    ("ex4_topk_mask", _ref_topk_mask, _matrix_and_k),
    (
        "ex5_lower_median",
        lambda x: torch.median(x, dim=-1).values,
        lambda g: (_distinct(g, 3, _randint(g, 1, 8)),),
    ),
    ("ex6_unique_counts", _ref_unique, lambda g: (torch.randint(0, 5, (_randint(g, 1, 12),), generator=g),)),
    ("ex7_kth_smallest", lambda x, k: torch.kthvalue(x, k).values, _matrix_and_k),
    (
        "ex8_stable_argsort",
        lambda x: torch.argsort(x, stable=True),
        lambda g: (torch.randint(0, 3, (_randint(g, 1, 12),), generator=g),),  # 大量相等元素
    ),
]

PUZZLE_ALLOWED = {
    "ex2_rank": {"torch.where", ".sum"},
    "ex3_sort": {"ex2_rank", "torch.where", "torch.arange", ".sum"},
}


DEMO_REPS = 2 if is_smoke() else 10
VOCAB, TOP_K = 50257, 50  # GPT-2 的词表大小；采样时常用的 k


def demo() -> None:
    x = torch.tensor([3.0, 1.0, 2.0, 5.0])
    rank = torch.argsort(torch.argsort(x))
    print(f"x={x.tolist()} argsort={torch.argsort(x).tolist()} 名次 argsort(argsort)={rank.tolist()}")
    print(f"偶数个元素的 median = {torch.median(x).item()}（较小的中位数，不是 2.5）")
    logits = torch.tensor([2.0, 0.5, 1.0, -1.0])
    kth = logits.topk(2).values[-1]
    print(f"top-2 过滤：{torch.where(logits >= kth, logits, float('-inf')).tolist()}")
    vocab_logits = torch.randn(VOCAB)
    ms_topk, ms_sort = benchmark_interleaved(
        [lambda: vocab_logits.topk(TOP_K), lambda: vocab_logits.sort(descending=True)], warmup=1, reps=DEMO_REPS)
    print(f"n={VOCAB} 取前 {TOP_K}：topk {ms_topk:.3f} ms vs 完整 sort {ms_sort:.3f} ms（sort/topk = {ms_sort / ms_topk:.0f}×）")
    print(timing_note())


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
