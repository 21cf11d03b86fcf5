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
所以大张量上与手写的 matmul 一样快（最后调用的是同一个 bmm，演示里两者结果逐位相同）；小张量上它多出约 10 µs
解析下标、排维度的固定开销（本机单线程 CPU 实测：(2,4,64,32) 的注意力分数 einsum/matmul ≈ 1.1–1.3，
(4,8,256,64) 时 ≈ 0.97–1.00，即测量噪声以内）——演示里两种尺寸各量一次。
反过来也要会：没有 einsum 时，"广播相乘再沿公共维求和"就是 einsum 的定义。

练习：ex1–ex8；ex1–ex6、ex8 是谜题（只许用 torch.einsum），ex7 只许用广播与 .sum。运行：

    python archive/28days_challenges/day08_einsum.py
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from utils import exercises
from utils.io import is_smoke
from utils.lesson_cli import lesson_args, timing_note
from utils.torch_playground import benchmark_interleaved


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
# 小尺寸看固定开销，大尺寸看计算本身；SMOKE 只量小的
DEMO_SHAPES = ((2, 4, 64, 32),) if is_smoke() else ((2, 4, 64, 32), (4, 8, 256, 64))


def demo() -> None:
    for shape in DEMO_SHAPES:
        q, k = torch.randn(shape), torch.randn(shape)
        s1, s2 = torch.einsum("bhqd,bhkd->bhqk", q, k), q @ k.transpose(-2, -1)
        ms_einsum, ms_matmul = benchmark_interleaved(
            [lambda: torch.einsum("bhqd,bhkd->bhqk", q, k), lambda: q @ k.transpose(-2, -1)],
            warmup=1, reps=DEMO_REPS)
        print(f"注意力分数 {shape}：einsum {ms_einsum:.3f} ms vs matmul {ms_matmul:.3f} ms"
              f"（einsum/matmul = {ms_einsum / ms_matmul:.2f}，einsum − matmul = {1000 * (ms_einsum - ms_matmul):+.0f} µs），"
              f"最大差 {(s1 - s2).abs().max().item():.1e}")
    print(timing_note())
    print(f"einsum 'ii->' 迹：{torch.einsum('ii->', torch.eye(3)).item()}")


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
