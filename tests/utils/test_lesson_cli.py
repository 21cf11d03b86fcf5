"""utils.lesson_cli：--help 打印课程摘要与运行方式（退出 0），不认识的参数报错（退出 2），已有的 parser 参数照旧。"""

from __future__ import annotations

import argparse

import pytest

from tests.conftest import REPO_ROOT
from utils.lesson_cli import doc_summary, lesson_args, run_command

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
