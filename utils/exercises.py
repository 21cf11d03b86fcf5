"""练习自检框架：archive/28days_challenges 的每一天都用它检查自己的练习。

每个练习文件定义：
- 若干练习函数 `exN_<名字>`（函数体就是参考解答；学习者可以把它换成自己的写法，或换成
  `raise NotImplementedError` 再运行，检验自己的解答）；
- `CHECKS`：列表，每项是 `(练习函数名, 参考实现, 造输入的函数[, probe])`。
  `make_inputs(g)` 用随机数生成器 g 造一组参数（元组）；`reference(*参数)` 用 PyTorch 内置函数算出标准答案；
  probe（可选）把"函数"包装成"要比较的东西"，例如同时返回输出与梯度；
- `PUZZLE_ALLOWED`：谜题名 → 允许调用的函数集合（Tensor-Puzzles 的规矩：只许广播、arange、where……）。

练习函数在运行时按名字从文件的全局命名空间里现查：学习者或测试替换了模块里的函数，自检立刻生效。
"""

from __future__ import annotations

import ast
import sys
import textwrap
from collections.abc import Callable
from inspect import getsource
from pathlib import Path

import torch

from utils.io import is_smoke
from utils.torch_playground import setup_seed, time_block

BASE_ALLOWED = frozenset({"len", "range", "int", "float"})  # 谜题里总可以用的 Python 内置函数


def default_seeds() -> tuple[int, ...]:
    """SMOKE=1 时只用一组随机输入，否则三组。"""
    return (0,) if is_smoke() else (0, 1, 2)


def called_names(fn: Callable) -> set[str]:
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


def check_exercise(namespace: dict, name: str, reference, make_inputs, probe=None, *,
                   puzzle_allowed: dict | None = None, seeds=None) -> None:
    """一道练习不通过就抛异常（AssertionError 的信息说明哪里不对）。"""
    exercise = namespace[name]  # 运行时现查
    allowed = (puzzle_allowed or {}).get(name)
    if allowed is not None:
        # 练习模式挖空的桩（raise NotImplementedError(提示)）不算违规：让它抛出来，学习者看到的是提示
        extra = called_names(exercise) - allowed - BASE_ALLOWED - {"NotImplementedError"}
        if extra:
            shown = sorted(allowed) or "（什么函数都不许调，只用广播、算术与索引）"
            raise AssertionError(f"谜题只允许调用 {shown}，却调用了 {sorted(extra)}")
    wrap = probe or (lambda fn: fn)
    for seed in seeds or default_seeds():
        # 两份独立生成的相同输入：练习即使原地改了输入，也影响不到参考答案
        expected = wrap(reference)(*make_inputs(torch.Generator().manual_seed(seed)))
        actual = wrap(exercise)(*make_inputs(torch.Generator().manual_seed(seed)))
        assert_same(actual, expected, f"{name}（seed={seed}）")


def run_checks(namespace: dict, verbose: bool = True, seeds=None) -> tuple[int, int]:
    """按 namespace 里的 CHECKS / PUZZLE_ALLOWED 逐题自检，每题一行 ✓/✗，最后 `N/M passed`；返回 (N, M)。"""
    checks = namespace["CHECKS"]
    puzzle_allowed = namespace.get("PUZZLE_ALLOWED", {})
    passed = 0
    for name, reference, make_inputs, *probe in checks:
        try:
            check_exercise(namespace, name, reference, make_inputs, *probe,
                           puzzle_allowed=puzzle_allowed, seeds=seeds)
        except Exception as err:  # 学习者的半成品可能抛出任何异常：记为 ✗，打印原因的前几行
            if verbose:
                reason = "\n      ".join(str(err).strip().splitlines()[:4]) or "（还没有实现？）"
                print(f"  ✗ {name}: {type(err).__name__}: {reason}")
        else:
            passed += 1
            if verbose:
                print(f"  ✓ {name}")
    if verbose:
        print(f"{passed}/{len(checks)} passed")
    return passed, len(checks)


def run_day(namespace: dict) -> None:
    """一天练习的 main()：标题、演示（namespace 里的 demo()）、自检；有练习没通过就以退出码 1 结束。"""
    setup_seed()
    print(f"== {Path(namespace['__file__']).stem}：{namespace['__doc__'].strip().splitlines()[0]} ==")
    namespace["demo"]()
    print("-- 自检 --")
    with time_block("自检", verbose=False) as timer:
        passed, total = namespace["run_checks"]()
    print(f"自检用时 {timer.ms:.0f} ms")
    if passed < total:
        sys.exit(1)  # 非零退出码：让 shell / CI 知道还有练习没通过


# =============================================================================
# 练习模式的命令行：python -m utils.exercises new|check|status PATH（实现在 utils/exercise_workspace.py）
# =============================================================================
def main(argv: list[str] | None = None) -> int:
    from utils.exercise_workspace import main as workspace_main

    return workspace_main(argv)


if __name__ == "__main__":
    sys.exit(main())
