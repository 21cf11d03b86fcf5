"""第 3 课：快速 BPE 训练器 train_bpe——并行预分词 + 增量更新的 pair 计数 + 惰性删除的堆。

    python data_pipeline/tokenization/fast_train.py                 # 训练并与朴素参考逐条对比
    from data_pipeline.tokenization import train_bpe
    vocab, merges = train_bpe("data/corpora/shakespeare.txt", 8192, ["<|endoftext|>"])

朴素训练器慢在哪？每次合并都把全部 pair 重新数一遍：代价 = 合并次数 × 语料长度。
快速训练器的三个想法：

1. 去重：只对每个"不同的"预 token 保存一份 token 序列和它的出现次数 f。
   478 万字节的 Shakespeare（GPT-2 pattern）有 128 万个预 token，不同的只有 3.4 万个。
2. 增量更新：合并 (a, b) → n 只改变"含有 (a, b) 的那些预 token"里的 pair。维护一个索引
   pair → {含有它的预 token 编号}，只处理这些词；每处 x a b y → x n y 只动左右邻居：
   (x,a)、(b,y) 各减 f，(x,n)、(n,y) 各加 f。其余几万个词完全不碰。
   为什么这样算出的计数与重新全量统计完全相同：pair 总计数 = Σ_词 f × (该词里这个 pair 的次数)，
   是各词贡献之和；没被碰到的词序列没变，贡献也没变；被碰到的词，邻居增减恰好等于
   "撤销旧序列的全部贡献、再加上新序列的全部贡献"（不相邻的 pair 两边相消）。
   所以每一步之后的计数与朴素算法逐项相等，选出的 pair（含平局规则）也就相同——merges 一模一样。
3. 惰性删除的堆：要每步取出"次数最大、平局时 bytes 字典序最大"的 pair。堆里存 (−次数, 逆序键, pair)，
   计数变化时不去堆里找旧条目，而是弹出时核对：记录的次数 ≠ 当前次数就是过期条目。
   关键观察：一次合并只会让"不含新 token 的 pair"的次数减少，增加的只有含新 token 的新 pair。
   所以过期条目的记录值总是偏大——弹出时用当前次数重新压回去即可；堆顶若未过期，它就是真正的最大值。

预分词在多个进程里并行：文件按字节切块，切点挪到特殊 token 的起点（或"非空白 + 换行 + 非空白"的
换行之后——两种 pattern 的预 token 都不会跨过这样的位置），每个进程只读自己那一块，
返回 {预 token: 次数}。内存只与块大小和不同预 token 的数量有关，与文件大小无关。
"""

from __future__ import annotations

import heapq
import os
import sys
from collections import Counter
from collections.abc import Iterable
from multiprocessing import get_context
from pathlib import Path

import regex

from data_pipeline.tokenization.regex_bpe import (
    GPT2_PATTERN,
    GPT4_PATTERN,
    check_special_tokens,
    check_vocab_size,
    initial_vocab,
    pretoken_counts,
)
from utils.lesson_cli import lesson_args, timing_note

MAX_CHUNK_BYTES = 32 << 20  # 每块最多 32 MB：再大的文件也只是块数多，单个进程的内存不变
SMALL_FILE_BYTES = 1 << 20  # 每个预分词进程至少分到的字节数
_WINDOW = 1 << 16
# "可见 ASCII + \n + 可见 ASCII"：GPT-2 / GPT-4 pattern 的任何预 token 都不会跨过这个 \n 之后的位置，
# 而且从这里重新开始匹配与从文件开头一路匹配过来切分相同（两种 pattern 都没有向后看的断言）。
_SAFE_NEWLINE = regex.compile(rb"[\x21-\x7e]\n(?=[\x21-\x7e])")


# ---------------------------------------------------------------------------
# 1. 切块：在特殊 token 或安全的换行处切开文件
# ---------------------------------------------------------------------------
def _crosses_special(window: bytes, pos: int, specials: list[bytes]) -> bool:
    """window 里是否有某个特殊 token 的出现横跨 pos（起点在 pos 之前、终点在 pos 之后）。"""
    for s in specials:
        hit = window.find(s, max(0, pos - len(s) + 1))
        if -1 < hit < pos:
            return True
    return False


def _next_boundary(f, start: int, size: int, specials: list[bytes], newline_ok: bool) -> int:
    """start 之后第一个安全切点（找不到就是文件末尾）。"""
    overlap = max((len(s) for s in specials), default=1)
    pos = start
    while pos < size:
        f.seek(max(0, pos - overlap))
        base = f.tell()
        window = f.read(_WINDOW + 2 * overlap)
        candidates = []
        for s in specials:
            hit = window.find(s, pos - base)
            if hit != -1:
                candidates.append(hit)
        if newline_ok:
            m = _SAFE_NEWLINE.search(window, pos - base)
            if m is not None:
                candidates.append(m.start() + 2)
        at_eof = base + len(window) >= size
        for cand in sorted(candidates):
            # 候选点之后还要留出 overlap 字节，才能确定没有特殊 token 横跨它
            if (cand + overlap <= len(window) or at_eof) and not _crosses_special(window, cand, specials):
                return base + cand
        if at_eof:
            break
        pos = base + len(window) - overlap
    return size


def chunk_boundaries(path: Path, n_chunks: int, special_tokens: list[str], pattern: str) -> list[int]:
    """把文件切成约 n_chunks 块的字节边界 [0, ..., size]；边界都是安全切点，可能少于 n_chunks 块。"""
    size = path.stat().st_size
    specials = [s.encode("utf-8") for s in special_tokens]
    # 安全换行规则只对已知的两个 pattern 成立；特殊 token 自身含换行时也可能被它切断
    newline_ok = pattern in (GPT2_PATTERN, GPT4_PATTERN) and not any(b"\n" in s for s in specials)
    bounds = [0]
    with open(path, "rb") as f:
        for k in range(1, n_chunks):
            target = max(size * k // n_chunks, bounds[-1] + 1)
            if target >= size:
                break
            b = _next_boundary(f, target, size, specials, newline_ok)
            if b >= size:
                break
            if b > bounds[-1]:
                bounds.append(b)
    bounds.append(size)
    return bounds


def _count_chunk(args: tuple[str, int, int, list[str], str]) -> Counter:
    """工作进程：读 [start, end) 这一块，解码（非法 UTF-8 报出字节偏移），返回预 token 计数。"""
    path, start, end, special_tokens, pattern = args
    with open(path, "rb") as f:
        f.seek(start)
        data = f.read(end - start)
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise ValueError(
            f"{path} 不是合法的 UTF-8：字节偏移 {start + e.start} 处的 {data[e.start:e.end]!r} 无法解码（{e.reason}）；"
            f"请先把文件转成 UTF-8，例如 iconv -f <原编码> -t utf-8"
        ) from None
    return pretoken_counts(text, special_tokens, pattern)


def count_pretokens_parallel(
    path: str | os.PathLike, special_tokens: list[str], pattern: str = GPT2_PATTERN, num_processes: int | None = None
) -> Counter:
    """整个文件的 {预 token 字符串: 次数}，多进程按块并行统计后相加（计数可加，所以与串行结果相同）。"""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"语料文件不存在：{path}")
    size = path.stat().st_size
    if size == 0:
        raise ValueError(f"语料文件 {path} 是空的：没有任何文本可以训练 BPE")
    if num_processes is None:  # 默认：CPU 核数，但每个进程至少分到约 1 MB（进程启动比小文件的预分词还贵）
        num_processes = min(os.cpu_count() or 1, max(1, size // SMALL_FILE_BYTES))
    # 块数至少是进程数，且每块不超过 MAX_CHUNK_BYTES
    n_chunks = max(num_processes, -(-size // MAX_CHUNK_BYTES))
    bounds = chunk_boundaries(path, n_chunks, special_tokens, pattern)
    jobs = [(str(path), s, e, special_tokens, pattern) for s, e in zip(bounds, bounds[1:])]
    total: Counter = Counter()
    if num_processes == 1 or len(jobs) == 1:
        for job in jobs:
            total.update(_count_chunk(job))
        return total
    with get_context("fork" if sys.platform == "linux" else "spawn").Pool(min(num_processes, len(jobs))) as pool:
        for counts in pool.imap_unordered(_count_chunk, jobs):
            total.update(counts)
    return total


# ---------------------------------------------------------------------------
# 2. 合并循环：pair → 词 的索引 + 惰性删除的堆
# ---------------------------------------------------------------------------
def _desc_key(token: bytes) -> tuple[int, ...]:
    """bytes 的"逆序键"：a < b（bytes 字典序）⇔ key(a) > key(b)。

    heapq 是最小堆，而平局要取字典序"更大"的 pair。把每个字节 c 换成 255−c 就把逐字节的比较反过来；
    末尾再加一个 256（比任何 255−c 都大），于是"a 是 b 的真前缀（a < b）"也反过来变成 key(a) > key(b)。
    """
    return tuple(255 - c for c in token) + (256,)


def _index_add(index: dict[tuple[int, int], set[int]], pair: tuple[int, int], wi: int) -> None:
    words = index.get(pair)
    if words is None:
        index[pair] = {wi}
    else:
        words.add(wi)


def merge_pretokens(
    word_counts: dict[bytes, int],
    vocab: dict[int, bytes],
    vocab_size: int,
    progress: bool = False,
    merge_counts: list[int] | None = None,
) -> list[tuple[bytes, bytes]]:
    """在去重后的预 token 上做 BPE 合并，直到词表达到 vocab_size。原地扩充 vocab，返回 merges。

    merge_counts 给一个列表时，依次追加每次被合并的 pair 的出现次数（画图用）。
    """
    words = [list(w) for w in word_counts]  # bytes → 单字节 id 的列表（id i 就是字节 i）
    freqs = list(word_counts.values())
    pair_counts: dict[tuple[int, int], int] = {}
    pair_words: dict[tuple[int, int], set[int]] = {}
    for wi, w in enumerate(words):
        f = freqs[wi]
        for pair in zip(w, w[1:]):
            pair_counts[pair] = pair_counts.get(pair, 0) + f
            pair_words.setdefault(pair, set()).add(wi)
    keys = [_desc_key(vocab[i]) for i in range(len(vocab))]  # id → 逆序键（特殊 token 的键不会被用到）
    heap = [(-c, keys[a], keys[b], a, b) for (a, b), c in pair_counts.items()]
    heapq.heapify(heap)

    n_merges = vocab_size - len(vocab)
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=n_merges, desc="BPE merges", unit="merge", mininterval=0.5)
    merges: list[tuple[bytes, bytes]] = []
    for _ in range(n_merges):
        # 取堆顶；过期条目（记录的次数比当前大）用当前次数压回去
        while heap:
            neg, _, _, a, b = heap[0]
            current = pair_counts.get((a, b), 0)
            if current == -neg:
                break
            heapq.heappop(heap)
            if current > 0:
                heapq.heappush(heap, (-current, keys[a], keys[b], a, b))
        else:
            raise ValueError(
                f"语料只够合并 {len(merges)} 次（再没有相邻 pair 了），达不到 vocab_size={vocab_size}；请减小 vocab_size"
            )
        heapq.heappop(heap)
        if merge_counts is not None:
            merge_counts.append(current)
        new_id = len(vocab)
        vocab[new_id] = vocab[a] + vocab[b]
        keys.append(_desc_key(vocab[new_id]))
        merges.append((vocab[a], vocab[b]))

        touched: set[tuple[int, int]] = set()  # 含新 token 的 pair：合并后才知道最终次数，最后统一入堆
        for wi in pair_words.pop((a, b)):
            w = words[wi]
            f = freqs[wi]
            # 原地合并，只改动每处 (a, b) 左右两个邻居 pair 的计数：
            #   x a b y → x n y：  (x,a) −f, (x,n) +f, (b,y) −f, (n,y) +f   （(a,b) 本身最后整体删除）
            # 连续出现 "a b a b" 时，第一处先加上 (n,a)、第二处又把左邻 (n,a) 减掉，净效果恰好是 (n,n) +f。
            # 索引是"惰性"的：词里的 (a, b) 可能已被更早的合并吃掉，那样循环什么都不做。
            i = 0
            while i < len(w) - 1:
                if w[i] == a and w[i + 1] == b:
                    if i > 0:
                        left = w[i - 1]
                        pair_counts[(left, a)] -= f
                        pair = (left, new_id)
                        pair_counts[pair] = pair_counts.get(pair, 0) + f
                        touched.add(pair)
                        _index_add(pair_words, pair, wi)
                    if i + 2 < len(w):
                        right = w[i + 2]
                        pair_counts[(b, right)] -= f
                        pair = (new_id, right)
                        pair_counts[pair] = pair_counts.get(pair, 0) + f
                        touched.add(pair)
                        _index_add(pair_words, pair, wi)
                    w[i] = new_id
                    del w[i + 1]
                i += 1
        del pair_counts[(a, b)]
        for pair in touched:
            count = pair_counts[pair]
            if count > 0:
                heapq.heappush(heap, (-count, keys[pair[0]], keys[pair[1]], pair[0], pair[1]))
        if bar is not None:
            bar.update(1)
    if bar is not None:
        bar.close()
    return merges


def merge_counts_slope(merge_counts: list[int]) -> float:
    """log(被合并的 pair 的次数) 对 log(合并步数) 的最小二乘斜率：幂律 count ∝ step^slope 的指数。"""
    import numpy as np

    if len(merge_counts) < 2:
        raise ValueError(f"至少要 2 次合并才能拟合斜率，收到 {len(merge_counts)} 次")
    steps = np.log(np.arange(1, len(merge_counts) + 1))
    return float(np.polyfit(steps, np.log(np.asarray(merge_counts, dtype=np.float64)), 1)[0])


def merge_counts_figure(merge_counts: list[int], name: str):
    """每一步被合并的 pair 出现了多少次（双对数轴，第 1 次合并画在 x = 1），返回 Figure。"""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    slope = merge_counts_slope(merge_counts)
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.loglog(range(1, len(merge_counts) + 1), merge_counts, label=f"BPE (fitted slope {slope:.2f})")
    ax.set_xlabel("merge step (1 = first merge)")
    ax.set_ylabel("occurrences of the merged pair")
    ax.set_title(f"BPE on {name}: pair counts fall like a power law")
    ax.legend()
    fig.tight_layout()
    return fig


def train_bpe(
    input_path: str | os.PathLike,
    vocab_size: int,
    special_tokens: Iterable[str] | None = None,
    pattern: str = GPT2_PATTERN,
    num_processes: int | None = None,
    progress: bool = True,
) -> tuple[dict[int, bytes], list[tuple[bytes, bytes]]]:
    """在文本文件上训练字节级 BPE。

    返回 (vocab, merges)：vocab 恰有 vocab_size 项——id 0..255 是单字节，接着是特殊 token
    （按给定顺序），然后是依次合并出的 token；merges 是有序的 [(bytes, bytes), ...]。
    平局时合并 (vocab[a], vocab[b]) 字典序更大的 pair，与 regex_bpe.train_bpe_naive 逐条相同。
    """
    special_tokens = check_special_tokens(special_tokens)
    check_vocab_size(vocab_size, len(special_tokens))
    counts = count_pretokens_parallel(input_path, special_tokens, pattern, num_processes)
    word_counts = {w.encode("utf-8"): c for w, c in counts.items()}
    vocab = initial_vocab(special_tokens)
    merges = merge_pretokens(word_counts, vocab, vocab_size, progress=progress)
    return vocab, merges


def main() -> None:
    import tempfile
    import time

    from data_pipeline.corpora import corpus_path
    from data_pipeline.tokenization.regex_bpe import train_bpe_naive
    from utils.io import is_smoke, output_path, save_figure

    smoke = is_smoke()
    corpus = corpus_path("shakespeare")
    text = corpus.read_text(encoding="utf-8")
    with tempfile.TemporaryDirectory() as tmp:
        # 1) 与朴素参考逐条对比（小切片，朴素算法太慢）
        small = text[: 20_000 if smoke else 200_000]
        small_vocab = 256 + 1 + (60 if smoke else 400)
        small_path = Path(tmp) / "small.txt"
        small_path.write_text(small, encoding="utf-8")
        t0 = time.perf_counter()
        _, ref = train_bpe_naive(small, small_vocab, ["<|endoftext|>"])
        naive_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        _, ours = train_bpe(small_path, small_vocab, ["<|endoftext|>"], progress=False)
        fast_s = time.perf_counter() - t0
        assert ours == ref, "快速训练器的 merges 必须与朴素参考逐条相同"
        print(f"{len(small):,} 字符、{len(ours)} 次合并：朴素 {naive_s:.2f} s，快速 {fast_s:.3f} s，merges 完全一致")
        print(timing_note("benchmarks/tokenization_bpe.py"))

        # 2) 整个语料（SMOKE 时 200 KB、vocab 1024）：分别计时两个阶段，记下每次合并的 pair 出现了多少次
        path = corpus
        if smoke:
            path = Path(tmp) / "smoke.txt"
            path.write_text(text[:200_000], encoding="utf-8")
        vocab_size = 1024 if smoke else 8192
        t0 = time.perf_counter()
        counts = count_pretokens_parallel(path, ["<|endoftext|>"])
        pretok_s = time.perf_counter() - t0
        vocab = initial_vocab(["<|endoftext|>"])
        merge_counts: list[int] = []
        t0 = time.perf_counter()
        merge_pretokens({w.encode("utf-8"): c for w, c in counts.items()}, vocab, vocab_size, True, merge_counts)
        merge_s = time.perf_counter() - t0
        print(f"{path.name} {path.stat().st_size / 1e6:.2f} MB → vocab {vocab_size}：并行预分词 {pretok_s:.2f} s"
              f"（{sum(counts.values()):,} 个预 token，不同的 {len(counts):,} 个），合并 {merge_s:.2f} s")
    print("最后 5 个新 token：", [vocab[i] for i in range(vocab_size - 5, vocab_size)])
    print(f"被合并的 pair 的次数：第 1 次 {merge_counts[0]:,}，最后一次 {merge_counts[-1]:,}；双对数斜率 "
          f"{merge_counts_slope(merge_counts):.2f}（对照：Zipf 定律的词频斜率是 −1；"
          f"默认配置全文 vocab 8192 为 −1.30，SMOKE 的 200 KB、vocab 1024 为 −1.06）")

    fig = merge_counts_figure(merge_counts, path.name)
    fig_path = save_figure(fig, output_path("tokenization", "bpe_merge_counts.png"), dpi=120)
    print(f"图：{fig_path}（后期的合并只涉及很少的词，这正是增量更新比全量重数快的原因）")


if __name__ == "__main__":
    lesson_args(__doc__)
    main()
