"""课程脚本的共同约定：命令行（--help、拒绝不认识的参数）与课程里打印的计时比值旁边那一行注记。

每节课都回答 --help，遇到不认识的参数立刻报错（退出码 2），而不是把整节课跑一遍。

没有参数的课程，在 main guard 里先调它再调 main()：

    if __name__ == "__main__":
        lesson_args(__doc__)
        main()

已经有 argparse 的脚本把自己的 parser 交进来，参数照旧，--help 里多出课程摘要与运行方式：

    args = lesson_args(__doc__, parser, argv)

为什么放在 main guard / main(argv) 里，而不是模块顶层：测试用 `tests.conftest.load_script` 按路径导入课程、
直接调用里面的函数，那时 sys.argv 是 pytest 的参数；只有"作为脚本运行"时才该解析命令行。

SMOKE=1 与它无关：规模仍由环境变量决定（utils.io.is_smoke），--help 里只是告诉学习者有这个开关。

课程里顺手打印的"我们 vs 参考"耗时比只是示意：用 utils.torch_playground.benchmark_interleaved 轮流计时，
再在旁边打印 timing_note("benchmarks/xxx.py")，告诉学习者这个数会抖、权威数字在哪。
"""

from __future__ import annotations

import argparse
import os
import shlex
import sys
from collections.abc import Sequence
from pathlib import Path

from utils.io import REPO_ROOT

# 双引号里 shell 仍会解释这几个字符；路径里出现它们就退回 shlex.quote 的单引号写法
_DOUBLE_QUOTE_UNSAFE = set('"$`\\!')


def doc_summary(doc: str | None) -> str:
    """文档字符串的第一段（到第一个空行为止），去掉公共缩进。没有文档字符串时返回空串。"""
    if not doc:
        return ""
    lines = doc.strip("\n").splitlines()
    paragraph: list[str] = []
    for line in lines:
        if not line.strip():
            break
        paragraph.append(line.strip())
    return "\n".join(paragraph)


def run_command(script: str | os.PathLike | None = None) -> str:
    """从仓库根目录运行这个脚本的命令：`python 路径`，包入口（__main__.py）写成 `python -m 包名`。

    路径里有空格或撇号（archive/Let's_build_GPT）时用双引号括起来，与 README 的写法一致。
    """
    path = Path(script if script is not None else sys.argv[0]).resolve()
    try:
        rel = path.relative_to(REPO_ROOT)
    except ValueError:
        rel = path
    if rel.name == "__main__.py" and not rel.is_absolute():
        return "python -m " + ".".join(rel.parent.parts)
    text = rel.as_posix()
    if shlex.quote(text) == text:
        return f"python {text}"
    if _DOUBLE_QUOTE_UNSAFE.isdisjoint(text):
        return f'python "{text}"'
    return f"python {shlex.quote(text)}"


def timing_note(benchmark: str | None = None) -> str:
    """课程里计时比值下面的一行注记：单次运行的比值会随机器负载波动，权威数字在 benchmarks/。

    benchmark：对应的基准脚本（相对仓库根目录，例如 "benchmarks/model_lab_components.py"）；没有对应脚本时不传。
    为什么要这一行：共享的 2 核机器上，同一节课两次运行打印的比值可以从 0.9 跳到 10 以上——交替计时
    （benchmark_interleaved）让两边承受同样的干扰，但几次重复的中位数仍然只是一个样本；基准脚本重复得多、
    固定线程数、记下机器负载，它写进 benchmarks/RESULTS.md 的才是可以引用的数字。
    """
    if benchmark is not None and not (REPO_ROOT / benchmark).is_file():
        raise ValueError(f"基准脚本 {benchmark} 不存在；写相对仓库根目录的路径，例如 benchmarks/model_lab_components.py")
    where = f"{benchmark}（结果在 benchmarks/RESULTS.md）" if benchmark else "benchmarks/RESULTS.md"
    return f"  注：这只是本次运行的一个样本，机器负载会让耗时比明显波动（一次与下一次可差几倍）；权威数字见 {where}"


def _epilog(command: str, takes_options: bool) -> str:
    lines = [
        "运行方式（在仓库根目录）：",
        f"  {command}",
        f"  SMOKE=1 {command}    # 缩小规模，几秒钟跑完（冒烟测试用的就是它）",
    ]
    if not takes_options:
        lines += ["", "这节课没有命令行参数；完整的讲解在源文件开头的文档字符串里。"]
    return "\n".join(lines)


def _takes_options(parser: argparse.ArgumentParser) -> bool:
    """parser 除了 -h/--help 之外还有没有别的参数。"""
    return any(not isinstance(action, argparse._HelpAction) for action in parser._actions)


def lesson_args(doc: str | None = None, parser: argparse.ArgumentParser | None = None,
                argv: Sequence[str] | None = None) -> argparse.Namespace:
    """解析课程脚本的命令行；--help 打印 doc 的第一段与运行方式后退出 0，不认识的参数报错退出 2。

    doc：课程的模块文档字符串（传 `__doc__`）。parser：脚本自己的 ArgumentParser（没有就新建一个只认 --help 的）；
    它已有的 description / epilog 保留，缺的才补上。argv：要解析的参数，默认 sys.argv[1:]。
    返回解析结果（没有自己参数的课程得到一个空的 Namespace）。
    """
    command = run_command()
    if parser is None:
        parser = argparse.ArgumentParser(prog=command, formatter_class=argparse.RawDescriptionHelpFormatter)
    elif not isinstance(parser, argparse.ArgumentParser):
        raise TypeError(f"parser 必须是 argparse.ArgumentParser，收到 {type(parser).__name__}；没有自己的参数就不要传")
    elif parser.prog == os.path.basename(sys.argv[0]):  # argparse 的默认 prog 只有文件名：换成完整的运行命令
        parser.prog = command
    if not issubclass(parser.formatter_class, argparse.RawDescriptionHelpFormatter):
        # 保留原来的格式（例如 ArgumentDefaultsHelpFormatter 的"默认值"），只是不再把说明与结尾的换行揉成一段
        parser.formatter_class = type("LessonHelpFormatter",
                                      (argparse.RawDescriptionHelpFormatter, parser.formatter_class), {})
    if parser.prog.startswith("python "):  # 脚本自己写好的运行命令（例如 python -m training_sys.pretrain）优先
        command = parser.prog
    if not parser.description:
        parser.description = doc_summary(doc) or None
    takes_options = _takes_options(parser)
    if not parser.epilog:
        parser.epilog = _epilog(command, takes_options)

    args, unknown = parser.parse_known_args(argv)
    if unknown:
        if takes_options:
            hint = f"`{command} --help` 列出它认识的参数"
        else:
            hint = f"这节课不接受命令行参数：直接 `{command}`，或 `SMOKE=1 {command}` 几秒跑完"
        parser.print_usage(sys.stderr)
        parser.exit(2, f"{parser.prog}: 错误：不认识的参数 {' '.join(unknown)}\n  {hint}\n")
    return args


__all__ = ["doc_summary", "lesson_args", "run_command", "timing_note"]
