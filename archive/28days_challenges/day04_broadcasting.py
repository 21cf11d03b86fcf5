"""第 4 天 广播：不复制数据，让形状不同的张量逐元素运算。

广播规则（与 numpy 相同），把两个形状**右对齐**逐维比较：
1. 维数少的那个在左边补 1：(3,) 对 (2, 3) 看成 (1, 3) 对 (2, 3)；
2. 每一维要么相等，要么其中一个是 1（大小为 1 的那一边沿这一维"复制"）；否则报错
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
    print(f"ex8 手写版本给出 {ex8_broadcast_shape((5, 1, 3), (4, 1))}")


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
