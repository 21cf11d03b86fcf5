"""第 7 天 掩码与 where：用布尔张量代替 if。

张量程序里没有逐元素的 if/else：条件变成布尔张量（mask），分支变成 torch.where(cond, a, b)
——两边都算出来，再按 cond 逐元素挑。三个参数可以互相广播。常见模式：

1. 比较运算得到 mask：x > 0、(x > lo) & (x < hi)（用 & | ~，不要用 and/or/not，
   后者会调用 bool(张量) 报 "Boolean value of Tensor with more than one value is ambiguous"）。
2. 因果掩码：arange(T)[:, None] >= arange(T)[None, :]，query i 只能看 key j ≤ i。
3. padding 掩码：arange(T)[None, :] < lengths[:, None]，变长序列补齐后标出哪些是真 token。
4. 注意力里屏蔽位置：scores.masked_fill(~mask, -inf) 再 softmax，被屏蔽处的概率正好是 0。
   陷阱：一整行都被屏蔽时 softmax 得到 nan（0/0）；要么保证每行至少有一个可见位置，要么事后把 nan 置 0。
5. where 的梯度陷阱：torch.where(x > 0, x.sqrt(), 0) 在 x < 0 处前向没问题，但 sqrt 的梯度是 nan，
   nan × 0 仍是 nan，会污染反向。先把输入"消毒"：x.clamp(min=ε).sqrt()，或 where 套两层。

练习：ex1–ex8；ex1、ex2、ex4、ex8 是谜题（只许用 torch.where / torch.arange 与比较、算术）。运行：

    python archive/28days_challenges/day07_masks_where.py
"""

from __future__ import annotations

import ast
import sys
import textwrap
from inspect import getsource
from pathlib import Path

import torch
from torch.nn.utils.rnn import pad_sequence

from utils.io import is_smoke
from utils.torch_playground import setup_seed, time_block


# =============================================================================
# 练习（函数体就是参考解答；想自己做，就把函数体换成 raise NotImplementedError 再运行本文件）
# =============================================================================
def ex1_relu(x: torch.Tensor) -> torch.Tensor:
    """谜题：ReLU（对照 torch.relu），只用 torch.where。"""
    return torch.where(x > 0, x, 0.0)


def ex2_causal_mask(t: int) -> torch.Tensor:
    """谜题：T×T 布尔因果掩码，True = 可见（j ≤ i），对照 torch.ones(T, T, dtype=bool).tril()。"""
    i = torch.arange(t)
    return i[:, None] >= i[None, :]


def ex3_mask_scores(scores: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """mask 为 False 的位置填 −inf（对照 scores.masked_fill(~mask, -inf)），用 torch.where。"""
    return torch.where(mask, scores, float("-inf"))


def ex4_clamp(x: torch.Tensor, lo: float, hi: float) -> torch.Tensor:
    """谜题：把 x 截断到 [lo, hi]（对照 torch.clamp），只用 torch.where。"""
    return torch.where(x < lo, lo, torch.where(x > hi, hi, x))


def ex5_padding_mask(lengths: torch.Tensor) -> torch.Tensor:
    """变长序列的 padding 掩码 (B, max_len)：第 b 行前 lengths[b] 个为 True（对照 pad_sequence 补齐的全 True 序列）。"""
    t = int(lengths.max())
    return torch.arange(t)[None, :] < lengths[:, None]


def ex6_masked_softmax(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """只在 mask 为 True 的位置上做最后一维的 softmax，其余位置概率为 0（每行至少一个 True）。
    不许用 softmax / masked_fill：减去可见位置的最大值，exp，被屏蔽处用 where 置 0，再除以和。"""
    x_max = torch.where(mask, x, float("-inf")).amax(-1, keepdim=True)
    e = torch.where(mask, (x - x_max).exp(), 0.0)
    return e / e.sum(-1, keepdim=True)


def ex7_nan_to_num(x: torch.Tensor) -> torch.Tensor:
    """nan → 0，+inf → 1e4，−inf → −1e4，其余不变（对照 torch.nan_to_num(x, 0.0, 1e4, -1e4)）。"""
    x = torch.where(torch.isnan(x), 0.0, x)
    x = torch.where(x == float("inf"), 1e4, x)
    return torch.where(x == float("-inf"), -1e4, x)


def ex8_sign(x: torch.Tensor) -> torch.Tensor:
    """谜题：符号函数，正 1、负 −1、零 0，dtype 与 x 相同（对照 torch.sign），只用 torch.where。"""
    zero = x * 0  # 与 x 同 dtype、同形状的 0：直接写 1.0 / -1.0 会得到默认的 float32
    return torch.where(x > 0, zero + 1, torch.where(x < 0, zero - 1, zero))


# =============================================================================
# 参考实现与输入
# =============================================================================
def _randint(g: torch.Generator, lo: int, hi: int) -> int:
    return int(torch.randint(lo, hi, (), generator=g))


def _scores_and_mask(g: torch.Generator):
    x = torch.randn(3, 5, generator=g)
    mask = torch.rand(3, 5, generator=g) < 0.6
    mask[:, _randint(g, 0, 5)] = True  # 每行至少一个可见位置
    return x, mask


def _with_specials(g: torch.Generator) -> tuple[torch.Tensor]:
    x = torch.randn(12, generator=g)
    specials = torch.tensor([float("nan"), float("inf"), float("-inf"), 0.0])
    pos = torch.randperm(12, generator=g)[:6]
    x[pos] = specials[torch.randint(0, 4, (6,), generator=g)]
    return (x,)


def _ref_padding_mask(lengths: torch.Tensor) -> torch.Tensor:
    return pad_sequence([torch.ones(int(n), dtype=torch.bool) for n in lengths], batch_first=True)


def _ref_masked_softmax(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    return torch.softmax(x.masked_fill(~mask, float("-inf")), dim=-1)


def _sign_inputs(g: torch.Generator):
    x = torch.randint(-2, 3, (10,), generator=g).to(torch.float64) * torch.rand(10, generator=g, dtype=torch.float64)
    return (x,)


CHECKS = [
    ("ex1_relu", torch.relu, lambda g: (torch.randn(4, 5, generator=g),)),
    ("ex2_causal_mask", lambda t: torch.ones(t, t, dtype=torch.bool).tril(), lambda g: (_randint(g, 1, 8),)),
    ("ex3_mask_scores", lambda s, m: s.masked_fill(~m, float("-inf")), _scores_and_mask),
    (
        "ex4_clamp",
        torch.clamp,
        lambda g: (torch.randn(10, generator=g) * 3, -float(torch.rand((), generator=g)),
                   float(torch.rand((), generator=g))),
    ),
    ("ex5_padding_mask", _ref_padding_mask, lambda g: (torch.randint(1, 7, (_randint(g, 1, 5),), generator=g),)),
    ("ex6_masked_softmax", _ref_masked_softmax, _scores_and_mask),
    ("ex7_nan_to_num", lambda x: torch.nan_to_num(x, nan=0.0, posinf=1e4, neginf=-1e4), _with_specials),
    ("ex8_sign", torch.sign, _sign_inputs),
]

PUZZLE_ALLOWED = {
    "ex1_relu": {"torch.where"},
    "ex2_causal_mask": {"torch.arange"},
    "ex4_clamp": {"torch.where"},
    "ex8_sign": {"torch.where"},
}


def demo() -> None:
    x = torch.tensor([-1.0, 4.0], requires_grad=True)
    torch.where(x > 0, x.sqrt(), 0.0).sum().backward()
    print(f"where 的梯度陷阱：where(x>0, sqrt(x), 0) 对 x={x.tolist()} 的梯度 = {x.grad.tolist()}")
    x.grad = None
    torch.where(x > 0, x.clamp(min=1e-12).sqrt(), 0.0).sum().backward()
    print(f"先 clamp 再 sqrt：梯度 = {x.grad.tolist()}")
    row = torch.full((1, 3), float("-inf"))
    print(f"整行被屏蔽时 softmax = {torch.softmax(row, -1).tolist()}")


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
