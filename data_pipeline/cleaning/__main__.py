"""命令行：流式清洗 JSONL / 纯文本语料，输出 JSONL 与每个步骤删了什么的统计表和柱状图。

    python -m data_pipeline.cleaning IN... --out DIR [--steps a,b,...] [--workers N] [--resume]
    python -m data_pipeline.cleaning corpus.txt --out checkpoints/clean --workers 2
    python -m data_pipeline.cleaning dump.jsonl --out checkpoints/clean --on-bad-json skip --on-bad-utf8 replace

输入：扩展名 .jsonl/.json 按 JSONL 读（每行一个带 "text" 字段的对象，其它字段原样保留），其余按纯文本读、
按空行切成文档（--format 可强制）。输出在 DIR：cleaned.jsonl、stats.json、stats.md（表）、stats.png（图）、
manifest.json 与 chunks/（续跑用的分块进度）。设计与每个选项的理由见 data_pipeline/cleaning/pipeline.py。
被杀掉之后加 --resume 再跑同样的命令：已完成的块直接复用，输出与一次跑完逐字节相同。
不带参数运行时打印帮助；SMOKE=1 且不带参数时在临时目录里清洗一份埋了坏文档的小语料并核对结果。
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

from data_pipeline.cleaning.pipeline import (
    FORMATS,
    ON_BAD_JSON,
    ON_BAD_UTF8,
    CleanConfig,
    InputError,
    available_steps,
    build_steps,
    clean,
    read_cleaned,
    stats_markdown,
)
from utils.io import is_smoke
from utils.lesson_cli import lesson_args


def build_parser() -> argparse.ArgumentParser:
    steps = available_steps()
    parser = argparse.ArgumentParser(prog="python -m data_pipeline.cleaning", description=__doc__.split("\n")[0],
                                     add_help=False)
    parser.add_argument("-h", "--help", action="help", help="显示这段帮助并退出")
    parser.add_argument("inputs", nargs="+", metavar="IN", help="输入文件（JSONL 或纯文本），按给出的顺序读")
    parser.add_argument("--out", required=True, help="输出目录：cleaned.jsonl、stats.json/.md/.png、chunks/")
    parser.add_argument("--steps", default=",".join(steps),
                        help="逗号分隔的步骤，按顺序执行，去重类（全局）步骤必须在最后（默认全部：%(default)s）。"
                             "空文档总是先被删掉")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1,
                        help="进程数（默认 CPU 核数，这台机器上是 %(default)s；输出与进程数无关）")
    parser.add_argument("--chunk-docs", type=int, default=1000,
                        help="每块的文档数：进程池的任务单位，也是续跑的粒度（默认 %(default)s）")
    parser.add_argument("--resume", action="store_true",
                        help="复用 DIR/chunks 里已完成的块（默认关：清空进度从头算）")
    parser.add_argument("--format", dest="fmt", choices=FORMATS, default="auto",
                        help="输入格式：auto 按扩展名（.jsonl/.json → JSONL，其余纯文本），或强制 jsonl / text（默认 auto）")
    parser.add_argument("--on-bad-utf8", choices=ON_BAD_UTF8, default="skip",
                        help="含非 UTF-8 字节的文档：skip 跳过整篇，replace 用 U+FFFD 修补；都计数（默认 %(default)s）")
    parser.add_argument("--on-bad-json", choices=ON_BAD_JSON, default="error",
                        help="JSONL 里不是 JSON 对象（或没有字符串 text 字段）的行：error 报错并给出文件:行，"
                             "skip 跳过并计数（默认 %(default)s）")
    parser.add_argument("--no-progress", dest="progress", action="store_false", help="不显示进度条（默认显示）")
    return parser


def run(args: argparse.Namespace) -> dict:
    names = [s for s in args.steps.split(",") if s.strip()] if args.steps else []
    cfg = CleanConfig(steps=build_steps([s.strip() for s in names]), workers=args.workers,
                      chunk_docs=args.chunk_docs, resume=args.resume, fmt=args.fmt, on_bad_utf8=args.on_bad_utf8,
                      on_bad_json=args.on_bad_json, progress=args.progress)
    stats = clean(args.inputs, args.out, cfg)
    print(stats_markdown(stats))
    reused = f"，复用 {stats['chunks_reused']} 块" if stats["chunks_reused"] else ""
    print(f"{stats['chunks']} 块{reused}，{stats['seconds']:.1f} s；写出 {Path(args.out) / 'cleaned.jsonl'}、"
          f"stats.json、stats.md、stats.png")
    for p in stats["read"]["problems"]:
        print(f"  输入问题：{p}", file=sys.stderr)
    return stats


DEMO_STEPS = ("normalize", "language", "pii", "exact_dedup", "near_dedup")


def demo_corpus(directory: Path) -> list[Path]:
    """一份小语料：莎士比亚的几段台词，外加埋进去的空文档、重复、邮箱、坏 UTF-8 与坏 JSON 行。"""
    from data_pipeline.corpora import load_corpus

    paras = [p for p in load_corpus("shakespeare")[:40_000].split("\n\n") if p.strip()]
    text = directory / "plays.txt"
    # 纯文本：按空行切文档；第 3 段重复一次（精确重复），中间夹一段非 UTF-8 字节
    raw = "\n\n".join(paras[:30] + [paras[2]]).encode() + b"\n\n\xff\xfe broken bytes\n\n" + paras[30].encode()
    text.write_bytes(raw + b"\n")
    jsonl = directory / "web.jsonl"
    lines = [json.dumps({"text": paras[31], "url": "https://example.org/a"}),
             json.dumps({"text": "   \n  ", "url": "https://example.org/empty"}),
             "{not json",
             json.dumps({"text": paras[32], "url": "https://example.org/b"}),
             json.dumps({"text": "Questions? Mail the Globe at box-office@globe.example.org", "url": "https://example.org/c"})]
    jsonl.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return [text, jsonl]


def demo(out: Path, tmp: Path) -> None:
    inputs = demo_corpus(tmp)
    parser = build_parser()
    # 莎士比亚的台词多数很短：面向网页的质量规则（gopher_*、c4_quality、fineweb_quality）会删掉大半，
    # 演示只用不改变文体的步骤（与 make run 的清洗阶段相同，外加语言识别）
    argv = [*map(str, inputs), "--out", str(out), "--on-bad-json", "skip", "--no-progress",
            "--steps", ",".join(DEMO_STEPS)]
    stats = run(parser.parse_args(argv))
    read = stats["read"]
    assert read["bad_utf8_skipped"] == 1 and read["bad_json_skipped"] == 1, read
    removed = {s["name"]: s["docs_removed"] for s in stats["steps"]}
    assert removed["empty"] == 1 and removed["exact_dedup"] == 1, removed
    assert next(s for s in stats["steps"] if s["name"] == "pii")["docs_modified"] == 1
    texts = [r["text"] for r in read_cleaned(out / "cleaned.jsonl")]
    assert texts and all(t.strip() for t in texts)
    print(f"演示通过：{read['docs']} 篇读入 → {len(texts)} 篇输出；坏 UTF-8、坏 JSON、空文档、精确重复、邮箱都按策略处理")


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if not argv:
        if is_smoke():
            with tempfile.TemporaryDirectory() as tmp:
                demo(Path(tmp) / "out", Path(tmp))
        else:
            build_parser().print_help()
            print("\n（不带参数时只打印帮助；SMOKE=1 且不带参数时在临时目录里跑一遍演示）")
        return
    args = lesson_args(__doc__, build_parser(), argv)
    try:
        run(args)
    except InputError as e:
        raise SystemExit(f"错误：{e}") from None


if __name__ == "__main__":
    main()
