"""utils.lesson_cli：--help 打印课程摘要与运行方式（退出 0），不认识的参数报错（退出 2），已有的 parser 参数照旧。"""

from __future__ import annotations

import argparse
import ast
import os
import runpy
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO_ROOT
from tests.test_smoke_scripts import command_for, discover_scripts
from utils import lesson_cli
from utils.lesson_cli import doc_summary, lesson_args, run_command, timing_note

DOC = """第 4 天 广播：不复制数据，让形状不同的张量逐元素运算。
第二行仍属于摘要。

这一段是详细讲解，不该出现在 --help 里。
"""
SCRIPT = REPO_ROOT / "archive" / "28days_challenges" / "day04_broadcasting.py"


@pytest.fixture
def as_script(monkeypatch):
    """模拟 `python SCRIPT ...`：sys.argv[0] 是脚本路径。"""
    monkeypatch.setattr("sys.argv", [str(SCRIPT)])


def test_doc_summary_is_first_paragraph():
    assert doc_summary(DOC) == "第 4 天 广播：不复制数据，让形状不同的张量逐元素运算。\n第二行仍属于摘要。"
    assert doc_summary("\n    缩进的摘要。\n\n    正文") == "缩进的摘要。"
    assert doc_summary(None) == "" and doc_summary("") == ""


def test_run_command_quotes_like_the_readme():
    assert run_command(SCRIPT) == "python archive/28days_challenges/day04_broadcasting.py"
    odd = REPO_ROOT / "archive" / "Let's_build_GPT" / "let's_build_gpt.py"
    assert run_command(odd) == "python \"archive/Let's_build_GPT/let's_build_gpt.py\""
    spaced = REPO_ROOT / "archive" / "Introductory learning" / "x.py"
    assert run_command(spaced) == 'python "archive/Introductory learning/x.py"'
    assert run_command(REPO_ROOT / "data_pipeline" / "tokenization" / "__main__.py") == "python -m data_pipeline.tokenization"


def test_help_prints_summary_and_how_to_run(as_script, capsys):
    with pytest.raises(SystemExit) as exc:
        lesson_args(DOC, argv=["--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    assert "usage: python archive/28days_challenges/day04_broadcasting.py [-h]" in out
    assert "第 4 天 广播" in out and "第二行仍属于摘要" in out
    assert "详细讲解" not in out
    assert "SMOKE=1 python archive/28days_challenges/day04_broadcasting.py" in out
    assert "没有命令行参数" in out


def test_no_arguments_returns_empty_namespace(as_script):
    assert vars(lesson_args(DOC, argv=[])) == {}


@pytest.mark.parametrize("argv", [["--definitely-not-a-flag"], ["--lr", "3e-4"], ["positional"]])
def test_unknown_arguments_exit_2_with_a_clear_message(as_script, capsys, argv):
    with pytest.raises(SystemExit) as exc:
        lesson_args(DOC, argv=argv)
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert f"不认识的参数 {' '.join(argv)}" in err
    assert "这节课不接受命令行参数" in err and "SMOKE=1 python archive/28days_challenges/day04_broadcasting.py" in err


def test_existing_parser_keeps_its_flags_description_and_defaults(as_script, capsys):
    parser = argparse.ArgumentParser(description="自己的说明", formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--lr", type=float, default=1e-3, help="学习率")
    args = lesson_args(DOC, parser, argv=["--lr", "0.5"])
    assert args.lr == 0.5
    assert lesson_args(DOC, parser, argv=[]).lr == 1e-3
    with pytest.raises(SystemExit) as exc:
        lesson_args(DOC, parser, argv=["--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    assert "自己的说明" in out and "第 4 天" not in out  # 已有的 description 不被覆盖
    assert "(default: 0.001)" in out  # ArgumentDefaultsHelpFormatter 仍然生效
    assert "SMOKE=1 python archive/28days_challenges/day04_broadcasting.py" in out
    assert "没有命令行参数" not in out


def test_existing_parser_without_description_gets_the_summary(as_script, capsys):
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=3)
    with pytest.raises(SystemExit):
        lesson_args(DOC, parser, argv=["-h"])
    out = capsys.readouterr().out
    assert "第 4 天 广播" in out and "--steps" in out
    assert "usage: python archive/28days_challenges/day04_broadcasting.py" in out  # 默认 prog（文件名）换成运行命令


def test_existing_parser_rejects_unknown_and_bad_values(as_script, capsys):
    parser = argparse.ArgumentParser(prog="python -m training_sys.pretrain")
    parser.add_argument("--steps", type=int, default=3)
    with pytest.raises(SystemExit) as exc:
        lesson_args(DOC, parser, argv=["--steps", "2", "--stpes", "5"])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "不认识的参数 --stpes 5" in err and "python -m training_sys.pretrain --help" in err  # 自定义 prog 保留
    with pytest.raises(SystemExit) as exc:
        lesson_args(DOC, parser, argv=["--steps", "many"])
    assert exc.value.code == 2


def test_rejects_a_non_parser(as_script):
    with pytest.raises(TypeError, match="ArgumentParser"):
        lesson_args(DOC, parser={"lr": 1e-3})


# ---------------------------------------------------------------------------
# 每个课程脚本：--help 退出 0 并打印说明，不认识的参数退出 2
# ---------------------------------------------------------------------------
# 为什么在进程内用 runpy 以 __main__ 的身份执行，而不是每个脚本起两个子进程：~90 个脚本 × 2 次 × 每次 2–4 s 的
# `import torch`（transformers 更久），在 2 核机器上要好几分钟；进程内 torch 只导入一次，整组不到半分钟。
# 走的是同一条路径：main guard（或 main(argv) 里）调 lesson_args，它读 sys.argv，解析失败/--help 时 SystemExit。
# 真正的子进程行为（退出码、打印到终端）由下面 test_real_processes 抽几个有代表性的脚本验证。
LESSON_DIRS = ("archive", "data_pipeline", "model_lab", "training_sys", "inference_engine")  # benchmarks/ 不是课程
LESSONS = [p for p in discover_scripts() if p.relative_to(REPO_ROOT).parts[0] in LESSON_DIRS]


def _run_as_main(path: Path, argv: list[str], monkeypatch) -> tuple[int | str | None, int]:
    """以 `python PATH ARGV...` 的方式在进程内执行脚本，返回 (退出码, lesson_args 被调用的次数)。"""
    source = path.read_text(encoding="utf-8")
    # 没调用 lesson_args 的脚本会把整节课跑一遍：先静态地挡住
    assert "lesson_args(" in source, (
        f"{path.relative_to(REPO_ROOT)} 没有调用 utils.lesson_cli.lesson_args：每个有 main guard 的课程都要回答 --help、"
        f"拒绝不认识的参数。没有自己参数的脚本在 main guard 里先写 `lesson_args(__doc__)` 再 `main()`；"
        f"有 argparse 的把 parser.parse_args(argv) 换成 `lesson_args(__doc__, parser, argv)`")
    calls = []

    def spy(*args, **kwargs):
        calls.append(args)
        return real(*args, **kwargs)

    real = lesson_cli.lesson_args
    monkeypatch.setattr(lesson_cli, "lesson_args", spy)  # 脚本执行 `from utils.lesson_cli import lesson_args` 时拿到 spy
    monkeypatch.setattr("sys.argv", [str(path), *argv])
    monkeypatch.setenv("SMOKE", "1")  # 万一解析没拦住，也只跑几秒
    with pytest.raises(SystemExit) as exc:
        if path.name == "__main__.py":
            package = ".".join(path.parent.relative_to(REPO_ROOT).parts)
            # 别的测试可能已经 import 过 package.__main__：留在 sys.modules 里时 runpy 会警告"行为不可预料"
            monkeypatch.delitem(sys.modules, f"{package}.__main__", raising=False)
            runpy.run_module(package, run_name="__main__")
        else:
            runpy.run_path(str(path), run_name="__main__")
    return exc.value.code, len(calls)


@pytest.mark.parametrize("path", LESSONS, ids=[str(p.relative_to(REPO_ROOT)) for p in LESSONS])
def test_every_lesson_answers_help_and_rejects_unknown_flags(path, monkeypatch, capsys):
    code, calls = _run_as_main(path, ["--help"], monkeypatch)
    out = capsys.readouterr().out
    assert code == 0 and calls == 1, (code, calls)
    assert "usage:" in out and "SMOKE=1 python" in out
    assert len(out.splitlines()) >= 6, out  # 摘要 + 选项 + 运行方式，而不是只有一行 usage

    code, calls = _run_as_main(path, ["--definitely-not-a-flag"], monkeypatch)
    err = capsys.readouterr().err
    assert code == 2 and calls == 1, (code, calls)
    # 有必填参数的 CLI（python -m data_pipeline.cleaning IN --out OUT）：argparse 先报"缺必填参数"，同样退出 2
    assert "不认识的参数 --definitely-not-a-flag" in err or "the following arguments are required" in err, err


def test_lessons_cover_every_stage_one_track():
    tracks = {p.relative_to(REPO_ROOT).parts[1] for p in LESSONS if p.relative_to(REPO_ROOT).parts[0] == "archive"}
    assert {"28days_challenges", "liu2_lecture", "Introductory learning", "kaggle", "Let's_build_GPT"} <= tracks


REAL = [
    REPO_ROOT / "archive" / "Introductory learning" / "02_MLP" / "02_tensor_autograd.py",  # 路径带空格、自己有 argparse
    REPO_ROOT / "data_pipeline" / "tokenization" / "__main__.py",  # python -m 包入口
]


def test_real_processes():
    """真正的子进程（并行启动）：--help 退出 0、打印运行方式；不认识的参数退出 2，课程没有开跑。"""
    env = dict(os.environ, PYTHONPATH=str(REPO_ROOT), OMP_NUM_THREADS="1")
    env.pop("SMOKE", None)  # 不带 SMOKE：如果解析没拦住，课程会跑上几分钟，子进程超时就暴露出来
    procs = [(path, flag, subprocess.Popen([*command_for(path), flag], cwd=REPO_ROOT, env=env, text=True,
                                           stdout=subprocess.PIPE, stderr=subprocess.PIPE))
             for path in REAL for flag in ("--help", "--definitely-not-a-flag")]
    for path, flag, proc in procs:
        out, err = proc.communicate(timeout=120)
        if flag == "--help":
            assert proc.returncode == 0, err
            assert f"SMOKE=1 {run_command(path)}" in out
        else:
            assert proc.returncode == 2, (out, err)
            assert "不认识的参数 --definitely-not-a-flag" in err and out == ""


def test_timing_note_points_at_the_benchmark():
    note = timing_note("benchmarks/model_lab_components.py")
    assert "benchmarks/model_lab_components.py" in note and "benchmarks/RESULTS.md" in note and "\n" not in note
    assert "benchmarks/RESULTS.md" in timing_note()
    with pytest.raises(ValueError, match="不存在"):
        timing_note("benchmarks/no_such_benchmark.py")


def _calls(path: Path, name: str) -> int:
    """文件里以 name(...) 或 x.name(...) 形式调用 name 的次数。"""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    return sum(isinstance(node, ast.Call) and getattr(node.func, "id", getattr(node.func, "attr", None)) == name
               for node in ast.walk(tree))


@pytest.mark.parametrize("path", LESSONS, ids=[str(p.relative_to(REPO_ROOT)) for p in LESSONS])
def test_speed_comparisons_are_interleaved_and_annotated(path):
    """课程里的"我们 vs 参考"耗时：轮流计时（benchmark_interleaved），旁边打印 timing_note。

    两次单独的 benchmark() 先测完一边再测另一边，机器负载的变化全算到一边头上（同一节课两次运行的比值曾在
    0.86 与 13.87 之间跳）；一个文件里至多一次 benchmark()（单独报吞吐），比较一律交替。
    """
    rel = path.relative_to(REPO_ROOT)
    assert _calls(path, "benchmark") <= 1, f"{rel}：用 benchmark_interleaved 一起测要比较的几个函数"
    if _calls(path, "benchmark_interleaved"):
        assert _calls(path, "timing_note"), f"{rel}：耗时比旁边 print(timing_note('benchmarks/…'))"
