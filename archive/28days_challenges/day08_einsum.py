"""第 8 天 einsum：用下标记号写任意张量缩并。

torch.einsum("输入下标,输入下标->输出下标", a, b)。读法只有两条：
1. 每个字母是一个维；同一个字母在不同输入里出现 → 这些维逐元素对齐（大小必须相等）；
2. 出现在输入里、**没有**出现在输出里的字母 → 沿它求和。
于是：
    "ij,jk->ik"        矩阵乘（j 被求和）            "bij,bjk->bik"  批量矩阵乘
    "i,j->ij"          外积（没有求和）              "ii->"          迹（对角线求和）
    "ii->i"            取对角线                      "ij->ji"        转置
    "bhqd,bhkd->bhqk"  注意力分数 Q·Kᵀ（d 被求和）
    "bi,oij,bj->bo"    双线性层 y_o = xᵀ W_o x'
省略号 "...ij,...jk->...ik" 表示前面任意多个批维。

为什么要学它：一行 einsum 就是一个公式，不用在脑子里排 transpose/reshape/bmm 的顺序；
torch.einsum 内部会把它改写成 permute + bmm（多个输入时两两缩并，装了 opt_einsum 就按它算出的顺序），
速度与手写的 matmul 相当。反过来也要会：没有 einsum 时，"广播相乘再沿公共维求和"就是 einsum 的定义。

练习：ex1–ex8；ex1–ex6、ex8 是谜题（只许用 torch.einsum），ex7 只许用广播与 .sum。运行：

    python archive/28days_challenges/day08_einsum.py
"""

from __future__ import annotations

import ast
import sys
import textwrap
from inspect import getsource
from pathlib import Path

import torch
import torch.nn.functional as F

from utils.io import is_smoke
from utils.torch_playground import setup_seed, time_block


# =============================================================================
# 练习（函数体就是参考解答；想自己做，就把函数体换成 raise NotImplementedError 再运行本文件）
# =============================================================================
def ex1_matmul(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """谜题：(n, k) @ (k, m)，只用 einsum（对照 a @ b）。"""
    return torch.einsum("ik,km->im", a, b)


def ex2_bmm(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """谜题：批量矩阵乘 (B, n, k) × (B, k, m)，只用 einsum（对照 torch.bmm）。"""
    return torch.einsum("bik,bkm->bim", a, b)


def ex3_trace(a: torch.Tensor) -> torch.Tensor:
    """谜题：方阵的迹，只用 einsum（对照 torch.trace）。"""
    return torch.einsum("ii->", a)


def ex4_outer(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """谜题：外积，只用 einsum（对照 torch.outer）。"""
    return torch.einsum("i,j->ij", a, b)


def ex5_attention_scores(q: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
    """谜题：(B, H, Tq, D) 与 (B, H, Tk, D) 的注意力分数 (B, H, Tq, Tk)，只用 einsum（对照 q @ k.transpose(-2, -1)）。"""
    return torch.einsum("bhqd,bhkd->bhqk", q, k)


def ex6_bilinear(x1: torch.Tensor, x2: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """谜题：双线性层 y[b, o] = Σ_ij x1[b, i]·W[o, i, j]·x2[b, j] + bias[o]（对照 F.bilinear），只用 einsum 和加法。"""
    return torch.einsum("bi,oij,bj->bo", x1, weight, x2) + bias


def ex7_matmul_broadcast(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """谜题：不用 einsum 和 @，用广播 + .sum 写矩阵乘（对照 a @ b）：(n, k, 1) * (1, k, m) 再沿 k 求和。"""
    return (a[:, :, None] * b[None, :, :]).sum(1)


def ex8_batch_diagonal(a: torch.Tensor) -> torch.Tensor:
    """谜题：(B, n, n) 每个方阵的对角线 (B, n)，只用 einsum（对照 torch.diagonal(a, dim1=-2, dim2=-1)）。"""
    return torch.einsum("...ii->...i", a)


# =============================================================================
# 参考实现与输入
# =============================================================================
def _randint(g: torch.Generator, lo: int, hi: int) -> int:
    return int(torch.randint(lo, hi, (), generator=g))


def _randn(g: torch.Generator, *shape: int) -> torch.Tensor:
    # float64：不同的求和顺序（einsum / bmm / 广播求和）在 float32 下会差 1e-6 量级，这里只想比较"算的是不是同一个东西"
    return torch.randn(*shape, generator=g, dtype=torch.float64)


def _matmul_inputs(g: torch.Generator):
    n, k, m = _randint(g, 1, 6), _randint(g, 1, 6), _randint(g, 1, 6)
    return _randn(g, n, k), _randn(g, k, m)


def _bmm_inputs(g: torch.Generator):
    b, n, k, m = _randint(g, 1, 4), _randint(g, 1, 5), _randint(g, 1, 5), _randint(g, 1, 5)
    return _randn(g, b, n, k), _randn(g, b, k, m)


def _attention_inputs(g: torch.Generator):
    b, h, tq, tk, d = 2, _randint(g, 1, 4), _randint(g, 1, 6), _randint(g, 1, 6), 4
    return _randn(g, b, h, tq, d), _randn(g, b, h, tk, d)


def _bilinear_inputs(g: torch.Generator):
    b, i, j, o = _randint(g, 1, 5), _randint(g, 1, 4), _randint(g, 1, 4), _randint(g, 1, 4)
    return _randn(g, b, i), _randn(g, b, j), _randn(g, o, i, j), _randn(g, o)


CHECKS = [
    ("ex1_matmul", lambda a, b: a @ b, _matmul_inputs),
    ("ex2_bmm", torch.bmm, _bmm_inputs),
    ("ex3_trace", torch.trace, lambda g: (_randn(g, *(2 * [_randint(g, 1, 6)])),)),
    ("ex4_outer", torch.outer, lambda g: (_randn(g, _randint(g, 1, 6)), _randn(g, _randint(g, 1, 6)))),
    ("ex5_attention_scores", lambda q, k: q @ k.transpose(-2, -1), _attention_inputs),
    ("ex6_bilinear", F.bilinear, _bilinear_inputs),
    ("ex7_matmul_broadcast", lambda a, b: a @ b, _matmul_inputs),
    (
        "ex8_batch_diagonal",
        lambda a: torch.diagonal(a, dim1=-2, dim2=-1),
        lambda g: (_randn(g, _randint(g, 1, 4), *(2 * [_randint(g, 1, 5)])),),
    ),
]

PUZZLE_ALLOWED = {
    **{name: {"torch.einsum"} for name in (
        "ex1_matmul", "ex2_bmm", "ex3_trace", "ex4_outer", "ex5_attention_scores", "ex6_bilinear", "ex8_batch_diagonal"
    )},
    "ex7_matmul_broadcast": {".sum"},
}


DEMO_REPS = 2 if is_smoke() else 20


def demo() -> None:
    q = torch.randn(2, 4, 64, 32)
    k = torch.randn(2, 4, 64, 32)
    with time_block("einsum", verbose=False) as t1:
        for _ in range(DEMO_REPS):
            s1 = torch.einsum("bhqd,bhkd->bhqk", q, k)
    with time_block("matmul", verbose=False) as t2:
        for _ in range(DEMO_REPS):
            s2 = q @ k.transpose(-2, -1)
    print(f"注意力分数 (2,4,64,32)：einsum {t1.ms / DEMO_REPS:.3f} ms vs matmul {t2.ms / DEMO_REPS:.3f} ms，"
          f"最大差 {(s1 - s2).abs().max().item():.1e}")
    print(f"einsum 'ii->' 迹：{torch.einsum('ii->', torch.eye(3)).item()}")


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
