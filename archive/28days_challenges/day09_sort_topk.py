"""第 9 天 排序与 topk：sort / argsort / topk / kthvalue / unique。

1. torch.sort(x, dim=-1, descending=False) 返回 (values, indices)；argsort 只要 indices。
   stable=True 保证相等元素保持原来的相对顺序（多关键字排序：先按次关键字排，再按主关键字稳定排序）。
2. topk(k) 返回最大的 k 个（默认按从大到小排好）；largest=False 取最小的。k 远小于 n 时
   它只做部分选择，通常比完整排序便宜。采样时的 top-k / top-p（nucleus）过滤靠它们：
   先取第 k 大的值作阈值，低于阈值的 logit 置 −inf。
3. 秩（rank）与 argsort 的关系：argsort 给出"第 r 名是谁"，argsort(argsort(x)) 给出"每个元素排第几"。
   rank 也能用广播直接数出来：rank[i] = #{j : x[j] < x[i]}——O(n²)，但只用比较与求和。
4. torch.median 在元素个数为偶数时返回**较小**的那个中位数（不是两者平均）；kthvalue(k) 返回第 k 小（k 从 1 起）。
5. unique(sorted=True, return_counts=True) 的本质：排序后，值与前一个不同的位置是一段新值的开始。

练习：ex1–ex8；ex2、ex3 是谜题（只许用 torch.where / torch.arange / .sum 与比较、索引）。运行：

    python archive/28days_challenges/day09_sort_topk.py
"""

from __future__ import annotations

import ast
import sys
import textwrap
from inspect import getsource
from pathlib import Path

import torch

from utils.io import is_smoke
from utils.torch_playground import setup_seed, time_block


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


def demo() -> None:
    x = torch.tensor([3.0, 1.0, 2.0, 5.0])
    rank = torch.argsort(torch.argsort(x))
    print(f"x={x.tolist()} argsort={torch.argsort(x).tolist()} 名次 argsort(argsort)={rank.tolist()}")
    print(f"偶数个元素的 median = {torch.median(x).item()}（较小的中位数，不是 2.5）")
    logits = torch.tensor([2.0, 0.5, 1.0, -1.0])
    kth = logits.topk(2).values[-1]
    print(f"top-2 过滤：{torch.where(logits >= kth, logits, float('-inf')).tolist()}")


# =============================================================================
# 自检（28 天共用同一段代码）：每道练习在几组随机输入上与 PyTorch 内置实现逐一对比
# =============================================================================
# CHECKS 的每一项是 (练习函数名, 参考实现, 造输入的函数[, probe])：
#   make_inputs(g) 用随机数生成器 g 造一组参数（元组）；reference(*参数) 用 PyTorch 内置函数算出标准答案；
#   probe（可选）把"函数"包装成"要比较的东西"，例如同时返回输出与梯度。
# 练习函数按名字在运行时查找：把某道题的函数体换成 `raise NotImplementedError` 再运行，就能检验自己的解答。
SEEDS = (0,) if is_smoke() else (0, 1, 2)
BASE_ALLOWED = frozenset({"len", "range", "int", "float"})  # 谜题里总可以用的 Python 内置函数


def called_names(fn) -> set[str]:
    """fn 源码里调用到的名字：torch.where(...) → "torch.where"，x.sum() → ".sum"，ex1_ones() → "ex1_ones"。"""
    names = set()
    for node in ast.walk(ast.parse(textwrap.dedent(getsource(fn)))):
        if not isinstance(node, ast.Call):
            continue
        func = node.func
        if isinstance(func, ast.Name):
            names.add(func.id)
        elif isinstance(func, ast.Attribute) and isinstance(func.value, ast.Name) and func.value.id == "torch":
            names.add(f"torch.{func.attr}")
        elif isinstance(func, ast.Attribute):
            names.add(f".{func.attr}")
        else:
            names.add("<表达式调用>")
    return names


def assert_same(actual, expected, path: str = "输出") -> None:
    """递归比较：张量与数字用 torch.testing.assert_close（值、形状、dtype 都要一致），字符串/dtype 要相等。"""
    if isinstance(expected, (str, torch.dtype, torch.device)):
        if actual != expected:
            raise AssertionError(f"{path}：得到 {actual!r}，期望 {expected!r}")
    elif isinstance(expected, dict):
        if not isinstance(actual, dict) or list(actual) != list(expected):
            got = list(actual) if isinstance(actual, dict) else type(actual).__name__
            raise AssertionError(f"{path} 的键（含顺序）：得到 {got}，期望 {list(expected)}")
        for key in expected:
            assert_same(actual[key], expected[key], f"{path}[{key!r}]")
    elif isinstance(expected, (list, tuple)):
        if not isinstance(actual, (list, tuple)) or len(actual) != len(expected):
            got = f"长度 {len(actual)}" if isinstance(actual, (list, tuple)) else type(actual).__name__
            raise AssertionError(f"{path}：得到 {got}，期望长度为 {len(expected)} 的序列")
        for i, (a, e) in enumerate(zip(actual, expected)):
            assert_same(a, e, f"{path}[{i}]")
    else:
        torch.testing.assert_close(actual, expected, msg=lambda m: f"{path}：{m}")


def check_exercise(name: str, reference, make_inputs, probe=None, seeds=SEEDS) -> None:
    """一道练习不通过就抛异常（AssertionError 的信息说明哪里不对）。"""
    exercise = globals()[name]  # 运行时现查：学习者（或测试）替换了模块里的函数，这里立刻生效
    if name in PUZZLE_ALLOWED:
        extra = called_names(exercise) - PUZZLE_ALLOWED[name] - BASE_ALLOWED
        if extra:
            allowed = sorted(PUZZLE_ALLOWED[name]) or "（什么函数都不许调，只用广播、算术与索引）"
            raise AssertionError(f"谜题只允许调用 {allowed}，却调用了 {sorted(extra)}")
    wrap = probe or (lambda fn: fn)
    for seed in seeds:
        # 两份独立生成的相同输入：练习即使原地改了输入，也影响不到参考答案
        expected = wrap(reference)(*make_inputs(torch.Generator().manual_seed(seed)))
        actual = wrap(exercise)(*make_inputs(torch.Generator().manual_seed(seed)))
        assert_same(actual, expected, f"{name}（seed={seed}）")


def run_checks(verbose: bool = True, seeds=SEEDS) -> tuple[int, int]:
    """逐题自检，每题打印一行 ✓/✗，最后打印 `N/M passed`；返回 (N, M)。"""
    passed = 0
    for name, reference, make_inputs, *probe in CHECKS:
        try:
            check_exercise(name, reference, make_inputs, *probe, seeds=seeds)
        except Exception as err:  # 学习者的半成品可能抛出任何异常：记为 ✗，打印原因的前几行
            if verbose:
                reason = "\n      ".join(str(err).strip().splitlines()[:4]) or "（还没有实现？）"
                print(f"  ✗ {name}: {type(err).__name__}: {reason}")
        else:
            passed += 1
            if verbose:
                print(f"  ✓ {name}")
    if verbose:
        print(f"{passed}/{len(CHECKS)} passed")
    return passed, len(CHECKS)


def main() -> None:
    setup_seed()
    print(f"== {Path(__file__).stem}：{__doc__.strip().splitlines()[0]} ==")
    demo()
    print("-- 自检 --")
    with time_block("自检", verbose=False) as timer:
        passed, total = run_checks()
    print(f"自检用时 {timer.ms:.0f} ms")
    if passed < total:
        sys.exit(1)  # 非零退出码：让 shell / CI 知道还有练习没通过


if __name__ == "__main__":
    main()
