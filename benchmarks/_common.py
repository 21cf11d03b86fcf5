"""benchmarks/ 的公共部分：机器信息，以及把一张结果表写进 RESULTS.md 里属于自己的那一段。

RESULTS.md 里每个基准占一段，用 `<!-- BEGIN key -->` / `<!-- END key -->` 包起来；
update_results(key, markdown) 只替换自己那一段（没有就追加在末尾），其他段原样保留。
写入是原子的（临时文件 + rename），并用文件锁防止两个基准同时写。SMOKE=1 时只打印、不写文件。
"""

from __future__ import annotations

import datetime as _dt
import fcntl
import os
import platform
import re
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]

from utils.io import atomic_write, is_smoke  # noqa: E402

RESULTS_MD = REPO_ROOT / "benchmarks" / "RESULTS.md"


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine_info() -> str:
    """一行机器描述：日期、CPU / GPU、核数、Python 与库版本。"""
    import torch

    if torch.cuda.is_available():
        hw = f"GPU {torch.cuda.get_device_name(0)}"
    else:
        hw = f"CPU {cpu_name()}, {os.cpu_count()} cores, {torch.get_num_threads()} torch threads"
    return f"{_dt.date.today().isoformat()} · {hw} · Python {platform.python_version()} · torch {torch.__version__}"


def update_results(key: str, markdown: str, path: Path = RESULTS_MD) -> None:
    """把 markdown 写进 RESULTS.md 中 key 那一段。"""
    if not re.fullmatch(r"[a-z0-9_\-]+", key):
        raise ValueError(f"key={key!r}：只能用小写字母、数字、下划线和连字符")
    block = f"<!-- BEGIN {key} -->\n{markdown.strip()}\n<!-- END {key} -->"
    if is_smoke():
        print(f"[SMOKE] 不写 RESULTS.md；本应写入的段落：\n{block}")
        return
    lock_path = path.with_name(".RESULTS.md.lock")
    with open(lock_path, "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        text = path.read_text(encoding="utf-8") if path.exists() else "# Benchmark results\n"
        pattern = re.compile(rf"<!-- BEGIN {re.escape(key)} -->.*?<!-- END {re.escape(key)} -->", re.DOTALL)
        if pattern.search(text):
            text = pattern.sub(lambda _: block, text)
        else:
            text = text.rstrip("\n") + "\n\n" + block + "\n"
        atomic_write(path, text)
    shown = path.relative_to(REPO_ROOT) if path.is_relative_to(REPO_ROOT) else path
    print(f"已更新 {shown} 的 [{key}] 段")


def corpus_file(corpus: str, data: str | os.PathLike | None = None, smoke: bool = False) -> Path | None:
    """基准读的文本文件：给了 data（--data）就用它；否则用语料注册表 data_pipeline.corpora 里的 corpus（--corpus）。

    语料缓存在 data/corpora/（git 不跟踪）：缓存里没有就构建（shakespeare，离线）或下载（tinyshakespeare 等）；
    离线又没有缓存时，报错消息写明文件从哪来、手动放到哪——原样打印后退出，不是一串 urllib 的 traceback。
    SMOKE 时绝不联网（测试离线）：需要下载的语料不在缓存里就返回 None，调用方改用内置的 shakespeare 语料。
    """
    from data_pipeline.corpora import CORPORA, CorpusUnavailableError, cache_file, corpus_path

    if data is not None:
        path = Path(data)
        if not path.is_file():
            raise SystemExit(f"--data {path}：文件不存在；去掉 --data 改用 --corpus（默认 tinyshakespeare，自动下载）")
        return path
    if corpus not in CORPORA:
        raise SystemExit(f"未知语料 {corpus!r}；已注册的语料有：{', '.join(sorted(CORPORA))}")
    if smoke and CORPORA[corpus].url is not None and not cache_file(corpus).is_file():
        return None
    try:
        return corpus_path(corpus)
    except CorpusUnavailableError as exc:
        raise SystemExit(str(exc)) from None


def rss_bytes() -> int:
    """当前常驻内存（/proc/self/statm 的第二个字段是常驻页数）。内存基准在子进程里用它量"开跑前"的基线。"""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def reset_peak_rss() -> bool:
    """把内核记录的峰值常驻内存清零（Linux ≥ 4.0）；之后 ru_maxrss 从当前 RSS 重新开始记。做不到时返回 False。"""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def peak_rss_bytes() -> int:
    """进程（自上次 reset_peak_rss 起）的峰值常驻内存。"""
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux 上单位是 KiB
