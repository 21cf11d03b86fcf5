"""28 天 PyTorch 基础挑战：每一天（archive/28days_challenges/day*.py，按 glob 自动发现）都要满足：

- 结构统一：CHECKS 有 5–10 道练习，每道练习是模块里带中文 docstring 的函数，PUZZLE_ALLOWED 只列 CHECKS 里的题；
- 参考解答全部通过自检：run_checks() 返回 (M, M)；
- 自检真的能失败（变异测试）：把任意一道练习换成"结果被扰动"或"还没写"的版本，这道题被判 ✗；
- 谜题的函数白名单真的生效：谜题改成直接调用参考实现（不在白名单里）就判为不通过；
- main() 全部通过时正常返回，有练习不通过时以非零码退出。
"""

from __future__ import annotations

import re

import pytest
import torch

from tests.conftest import REPO_ROOT, load_script
from utils import exercises

DAYS_DIR = REPO_ROOT / "archive" / "28days_challenges"
DAY_FILES = sorted(DAYS_DIR.glob("day*.py"))
DAY_NAME = re.compile(r"day(\d\d)_[a-z0-9_]+\.py")


# 课程大纲：README 的路线图逐天列出这些文件；缺一天、改名或多出一天都应该让测试失败
COURSE = [
    "day01_tensor_basics",
    "day02_indexing_slicing",
    "day03_views_strides",
    "day04_broadcasting",
    "day05_reductions",
    "day06_gather_scatter",
    "day07_masks_where",
    "day08_einsum",
    "day09_sort_topk",
    "day10_cat_stack_split",
    "day11_autograd_basics",
    "day12_hooks",
    "day13_custom_autograd_function",
    "day14_module_internals",
    "day15_dataset_dataloader",
    "day16_initialization",
    "day17_optimizers",
    "day18_loss_functions",
    "day19_memory_and_devices",
    "day20_profiling",
    "day21_torch_compile",
    "day22_mixed_precision",
    "day23_numerical_stability",
    "day24_debugging",
    "day25_attention_from_primitives",
    "day26_training_loop",
    "day27_puzzles",
    "day28_mini_transformer_block",
]


def test_course_has_exactly_the_28_days_of_the_syllabus():
    assert [p.stem for p in DAY_FILES] == COURSE


@pytest.fixture(params=DAY_FILES, ids=[p.stem for p in DAY_FILES])
def day(request):
    return load_script(request.param)


def perturb(x):
    """把一个输出改成"错的"：数值 +1、布尔取反、字符串加后缀、序列/字典改第一个元素。"""
    if isinstance(x, torch.Tensor):
        if x.numel() == 0:
            return torch.zeros(1, dtype=x.dtype)
        if x.dtype == torch.bool:
            return ~x
        if x.is_floating_point():
            return torch.where(torch.isfinite(x), x + 1, torch.zeros_like(x))
        return x + 1
    if isinstance(x, bool):
        return not x
    if isinstance(x, (int, float)):
        return x + 1
    if isinstance(x, str):
        return x + "_wrong"
    if isinstance(x, torch.dtype):
        return torch.float16 if x != torch.float16 else torch.float32
    if isinstance(x, dict):
        first = next(iter(x))
        return {**x, first: perturb(x[first])}
    if isinstance(x, (list, tuple)):
        items = [perturb(x[0]), *x[1:]] if len(x) else [0]
        return type(x)(items) if not hasattr(x, "_fields") else type(x)(*items)
    raise TypeError(f"perturb 不认识的输出类型 {type(x).__name__}")


def test_days_are_numbered_consecutively():
    assert len(DAY_FILES) >= 14, DAY_FILES
    numbers = []
    for path in DAY_FILES:
        match = DAY_NAME.fullmatch(path.name)
        assert match, f"{path.name} 不符合 dayNN_<topic>.py 的命名"
        numbers.append(int(match.group(1)))
    assert numbers == list(range(1, len(numbers) + 1)), numbers


def test_structure(day):
    assert re.search(r"[\u4e00-\u9fff]", day.__doc__ or ""), "模块 docstring 应该是中文课文"
    names = [entry[0] for entry in day.CHECKS]
    assert 5 <= len(names) <= 10, names
    assert len(set(names)) == len(names), f"CHECKS 里有重名的练习：{names}"
    for entry in day.CHECKS:
        assert len(entry) in (3, 4), entry
        name = entry[0]
        assert name.startswith("ex"), name
        fn = getattr(day, name)
        assert callable(fn) and re.search(r"[\u4e00-\u9fff]", fn.__doc__ or ""), f"{name} 需要中文 docstring"
    assert set(day.PUZZLE_ALLOWED) <= set(names), set(day.PUZZLE_ALLOWED) - set(names)


def test_reference_solutions_pass(day, capsys):
    passed, total = day.run_checks(verbose=True)
    out = capsys.readouterr().out
    assert (passed, total) == (total, len(day.CHECKS)), out
    assert f"{total}/{total} passed" in out
    assert out.count("✓") == total and "✗" not in out


def test_wrong_or_blank_solution_is_caught(day, monkeypatch, capsys):
    # 白名单检查另有测试；这里关掉它，专门证明"数值比较"本身能抓住错误
    monkeypatch.setattr(day, "PUZZLE_ALLOWED", {})
    capsys.readouterr()
    total = len(day.CHECKS)
    for entry in day.CHECKS:
        name = entry[0]
        original = getattr(day, name)

        def wrong(*args, _original=original, **kwargs):
            return perturb(_original(*args, **kwargs))

        def blank(*args, **kwargs):
            raise NotImplementedError

        for mutant in (wrong, blank):
            monkeypatch.setattr(day, name, mutant)
            passed, _ = day.run_checks(verbose=True, seeds=(0,))
            out = capsys.readouterr().out
            # 谜题可以调用前面的谜题（day09 的 ex3_sort 用 ex2_rank），所以依赖它的题也可能一起失败
            assert f"✗ {name}:" in out and passed <= total - 1, (name, mutant.__name__, out)
            assert f"{passed}/{total} passed" in out
        monkeypatch.setattr(day, name, original)


def test_puzzle_whitelist_is_enforced(day, monkeypatch, capsys):
    if not day.PUZZLE_ALLOWED:
        pytest.skip(f"{day.__name__} 没有谜题")
    total = len(day.CHECKS)
    references = {entry[0]: entry[1] for entry in day.CHECKS}
    for name in day.PUZZLE_ALLOWED:

        def cheat(*args, _reference=references[name]):
            return _reference(*args)  # 结果正确，但调用了白名单之外的函数

        monkeypatch.setattr(day, name, cheat)
        assert day.run_checks(verbose=True, seeds=(0,)) == (total - 1, total), name
        assert "谜题只允许调用" in capsys.readouterr().out
        monkeypatch.undo()


def test_some_days_have_puzzles():
    modules = [load_script(p) for p in DAY_FILES]
    # 谜题（Tensor-Puzzles 风格）集中在前几天的张量操作上；课程整体至少要有 5 天带谜题
    assert sum(bool(m.PUZZLE_ALLOWED) for m in modules) >= 5


def test_called_names_sees_torch_functions_and_methods():
    def sample(x):
        return torch.where(x > 0, x.sum(), len(x)) + torch.nn.functional.relu(x)

    assert exercises.called_names(sample) == {"torch.where", ".sum", "len", ".relu"}


def test_main_exit_code(day, monkeypatch, capsys):
    day.main()  # 全部通过：正常返回
    assert f"{len(day.CHECKS)}/{len(day.CHECKS)} passed" in capsys.readouterr().out

    def blank(*args, **kwargs):
        raise NotImplementedError

    monkeypatch.setattr(day, day.CHECKS[0][0], blank)
    with pytest.raises(SystemExit) as exc:
        day.main()
    assert exc.value.code not in (0, None)


def _load_day(number: int):
    (path,) = [p for p in DAY_FILES if p.name.startswith(f"day{number:02d}_")]
    return load_script(path)


def test_day12_catches_a_hook_that_is_not_removed(monkeypatch):
    day = _load_day(12)

    def leaky(layer, x):
        layer.register_forward_hook(lambda module, args, out: torch.relu(out))  # 忘了 remove
        return layer(x)

    monkeypatch.setattr(day, "ex5_relu_output_hook", leaky)
    total = len(day.CHECKS)
    assert day.run_checks(verbose=False) == (total - 1, total)


def test_day13_catches_a_wrong_backward(monkeypatch, capsys):
    day = _load_day(13)

    def wrong_backward(ctx, grad_out):
        (y,) = ctx.saved_tensors
        return grad_out * y  # 漏了 (1 − y)

    monkeypatch.setattr(day.Sigmoid, "backward", staticmethod(wrong_backward))
    total = len(day.CHECKS)
    assert day.run_checks(verbose=True) == (total - 1, total)
    assert "✗ ex2_sigmoid" in capsys.readouterr().out
