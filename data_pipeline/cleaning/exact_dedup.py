"""精确去重：整篇文档的哈希、行级去重、以及用后缀数组 + LCP 做的"精确子串去重"（Lee et al. 2022）。

    python data_pipeline/cleaning/exact_dedup.py            # 后缀数组对照 pydivsufsort，再在莎士比亚上去重
    from data_pipeline.cleaning.exact_dedup import dedup_documents, dedup_lines, dedup_substrings
    keep = dedup_documents(docs)                       # 保留的下标（每组相同文档留第一篇）
    docs, n_lines = dedup_lines(docs)                  # 删掉在前面出现过的行
    docs, n_bytes = dedup_substrings(docs, 100)        # 删掉在前面出现过的、≥ 100 字节的片段

三个粒度，各抓一类重复：

1. 整篇文档：同一网页被抓了两次、镜像站。对每篇算一个 64 位哈希，哈希相同的留第一篇。
   为什么是 blake2b 而不是 Python 的 hash()：hash(str) 每个进程加了随机盐（PYTHONHASHSEED），
   多进程流水线里两个 worker 对同一段文字算出的值不同——去重悄悄失效。blake2b 是 hashlib 里最快的
   密码学哈希之一，输出确定；取 8 字节（64 位）：N 篇文档里出现一次碰撞的概率约 N²/2⁶⁵，
   一亿篇也只有约 3×10⁻⁴。"先规范化再哈希"（小写、去标点……）交给调用者传一个 normalize 函数。
2. 行：网页模板、导航栏、"Cookie 声明"这种在成千上万篇文档里一模一样的行（CCNet 的做法）。
   陷阱：在莎士比亚上它会删掉几乎所有说话人行（"HAMLET:" 出现上千次）——行级去重只适合
   模板化的网页文本，main() 里把这个副作用量出来给你看。
3. 子串：两篇不同的文档里夹着同一段 ≥ L 字节的文字（转载的段落、许可证、法律声明）。
   Lee et al. 2022《Deduplicating Training Data Makes Language Models Better》的做法：
   把全部文档拼成一个串，建后缀数组，相邻后缀的最长公共前缀 ≥ L 就说明这段文字出现了不止一次。

后缀数组（suffix array）：串 x 的全部后缀 x[i:] 按字典序排好后，它们起点的列表 SA。
朴素做法 sorted(range(n), key=lambda i: x[i:]) 要 O(n² log n)（每次比较可能比到 n 个字节）。
前缀倍增（prefix doubling，Manber–Myers 的思路）：
    rank_h[i] = 后缀 i 的前 h 个符号在所有"长度 h 的前缀"里的名次（相同前缀名次相同）。
    前 2h 个符号 = 前 h 个 + 从 i+h 开始的 h 个，所以按二元组 (rank_h[i], rank_h[i+h]) 排序就得到 rank_2h
    （i+h 越界记 −1：短的后缀排在以它为前缀的长后缀之前）。
    log₂(n) 轮之后所有前缀互不相同，排序完成。每轮一次 numpy argsort。
两个加速：第一轮直接把前 7 个字节打包成一个 int64（每字节 +1，0 表示"串已结束"，257 进制，
257⁷ < 2⁶³），一次排序就到 h = 7；之后每轮只重排"还没分开的组"（组大小 > 1），
单元素组的位置已经是最终位置（Larsson–Sadakane 的思路）。名次用"组首在 SA 中的下标"，
这样只改动一部分后缀的名次，其余后缀的名次依然正确。

LCP 数组：lcp[k] = SA[k] 与 SA[k+1] 两个后缀的最长公共前缀长度（最后一项为 0，与 pydivsufsort.kasai 同约定）。
Kasai 算法 O(n)：按文本顺序 i = 0, 1, ... 计算 i 与它在 SA 中下一个后缀的 LCP，关键不等式
    lcp(i+1) ≥ lcp(i) − 1     （去掉首字符，公共前缀至多短 1，且那个后继仍排在 i+1 之后）
所以指针 h 总共只后退 n 次，总比较次数 ≤ 2n。但它是逐字节的 Python 循环（约 4 s/MB）。
numpy 版 lcp_array 换个思路：所有相邻对同时比较，每次比 8 个字节（把 x[i:i+8] 打包成 uint64，
异或后数前导零字节），仍相等的对才进入下一轮——轮数 = 最大 LCP / 8；只关心"≥ L 与否"时传 cap=L，
轮数 ≤ L/8，与语料里的重复多长无关。

子串去重的规则（"保留第一次出现"）：位置 p 起的 ≥ L 字节若在拼接串里更早的位置出现过，就删掉它。
把所有后缀按前 L 个字节分组（SA 中相邻且 LCP ≥ L 的连成一段，段内两两 LCP ≥ L，段间 < L），
每组里起点最小的是第一次出现，其余起点 p 各删 [p, p+L)。这与"删 [p, p + m(p))，m(p) = p 与更早
任一后缀的最长公共前缀"删掉的字节完全相同：若 m(p) = M ≥ L，则 p+1, ..., p+M−L 也都与更早的位置
共享 ≥ L 字节，它们各自的 [q, q+L) 恰好铺满 [p, p+M)。
文档之间用字节 0xFF 分隔：合法 UTF-8 里永远不出现 0xFF，匹配若跨过分隔符就在分隔符处截断
（LCP 与"到下一个分隔符的距离"取最小），效果等同于每篇用一个独一无二的分隔符。
删除的区间按字节算，最后收缩到 UTF-8 字符边界（一个字符的字节全被删才删这个字符），输出仍是合法文本。
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence

import numpy as np

from utils.lesson_cli import lesson_args

SEPARATOR = 0xFF  # 文档分隔字节：合法 UTF-8 中不会出现
_PACK = 7  # 第一轮打包的字节数：257^7 < 2^63


# ---------------------------------------------------------------------------
# 1. 整篇文档与行
# ---------------------------------------------------------------------------
def doc_hash(text: str, normalize: Callable[[str], str] | None = None) -> int:
    """文本（可先 normalize）的 64 位 blake2b 哈希，跨进程、跨机器确定。"""
    if normalize is not None:
        text = normalize(text)
    return int.from_bytes(hashlib.blake2b(text.encode("utf-8"), digest_size=8).digest(), "little")


def dedup_documents(docs: Sequence[str], normalize: Callable[[str], str] | None = None) -> list[int]:
    """整篇去重：返回保留的文档下标（升序）；哈希相同的一组只留第一篇。"""
    seen: set[int] = set()
    keep = []
    for i, doc in enumerate(docs):
        h = doc_hash(doc, normalize)
        if h not in seen:
            seen.add(h)
            keep.append(i)
    return keep


def dedup_lines(docs: Sequence[str], normalize: Callable[[str], str] | None = None) -> tuple[list[str], int]:
    """行级去重：跨整个语料，删掉在前面（本篇或更早的文档）出现过的行。返回 (新文档列表, 删掉的行数)。

    空行（规范化后为空白）从不算重复——它们是排版，不是内容。行以 "\\n" 切分，删除后其余行原样拼回。
    """
    seen: set[int] = set()
    out, removed = [], 0
    for doc in docs:
        kept = []
        for line in doc.split("\n"):
            key = normalize(line) if normalize is not None else line
            if not key.strip():
                kept.append(line)
                continue
            h = doc_hash(key)
            if h in seen:
                removed += 1
                continue
            seen.add(h)
            kept.append(line)
        out.append("\n".join(kept))
    return out, removed


# ---------------------------------------------------------------------------
# 2. 后缀数组：朴素版与前缀倍增版
# ---------------------------------------------------------------------------
def _as_uint8(data) -> np.ndarray:
    if isinstance(data, (bytes, bytearray, memoryview)):
        return np.frombuffer(data, dtype=np.uint8)
    if isinstance(data, np.ndarray) and data.dtype == np.uint8 and data.ndim == 1:
        return data
    raise ValueError(
        f"后缀数组的输入必须是 bytes 或一维 uint8 数组，收到 {type(data).__name__}"
        f"{'（dtype ' + str(data.dtype) + '）' if isinstance(data, np.ndarray) else ''}；"
        f"文本请先 .encode('utf-8')"
    )


def suffix_array_naive(data: bytes) -> np.ndarray:
    """朴素后缀数组：直接按后缀本身排序，O(n² log n)，只用于小输入上对照。"""
    x = bytes(_as_uint8(data))
    return np.array(sorted(range(len(x)), key=lambda i: x[i:]), dtype=np.int64)


def suffix_array(data) -> np.ndarray:
    """前缀倍增构造后缀数组（int64，长度 n）。输入：bytes 或一维 uint8 数组。"""
    x = _as_uint8(data)
    n = len(x)
    if n == 0:
        return np.zeros(0, dtype=np.int64)
    # 第一轮：前 7 个字节打包成一个 257 进制整数（字节 +1，越界为 0 → 更短的后缀更小）
    padded = np.zeros(n + _PACK, dtype=np.int64)
    padded[:n] = x.astype(np.int64) + 1
    key = np.zeros(n, dtype=np.int64)
    for j in range(_PACK):
        key = key * 257 + padded[j : j + n]
    sa = np.argsort(key)
    sorted_key = key[sa]
    # is_head[k]：SA 位置 k 是一个"前缀相同的组"的组首
    is_head = np.ones(n, dtype=bool)
    is_head[1:] = sorted_key[1:] != sorted_key[:-1]
    rank = np.empty(n, dtype=np.int64)  # rank[i] = 后缀 i 所在组的组首在 SA 中的下标
    rank[sa] = np.maximum.accumulate(np.where(is_head, np.arange(n), 0))
    h = _PACK
    while True:
        # 组大小 > 1 的 SA 位置：自己不是组首，或者下一个位置不是新组首
        next_is_head = np.ones(n, dtype=bool)
        next_is_head[:-1] = is_head[1:]
        active = np.flatnonzero(~(is_head & next_is_head))  # 升序；同一组占连续一段
        if active.size == 0:
            return sa
        suffixes = sa[active]
        r1 = rank[suffixes]  # 前 h 个符号的名次（= 组首下标）
        tail = suffixes + h
        r2 = np.where(tail < n, rank[np.minimum(tail, n - 1)], -1)  # 接下来 h 个符号的名次
        pair_key = r1 * (n + 1) + (r2 + 1)  # (r1, r2) 的字典序 = 这个整数的大小
        order = np.argsort(pair_key)
        suffixes, pair_key = suffixes[order], pair_key[order]
        # 按 r1 排序后每组仍落在原来那段 SA 位置上（r1 就是组首下标），组内按 r2 细分
        sa[active] = suffixes
        head = np.ones(active.size, dtype=bool)
        head[1:] = pair_key[1:] != pair_key[:-1]
        is_head[active] = head
        # 先算完全部 r2 再写新名次：本轮所有比较都基于同一版 rank_h
        rank[suffixes] = np.maximum.accumulate(np.where(head, active, 0))
        h *= 2


# ---------------------------------------------------------------------------
# 3. LCP：Kasai（O(n)，Python 循环）与逐 8 字节向量化比较
# ---------------------------------------------------------------------------
def lcp_kasai(data, sa: np.ndarray) -> np.ndarray:
    """Kasai 算法：lcp[k] = LCP(SA[k], SA[k+1])，lcp[n-1] = 0。O(n)，但逐字节 Python 循环。"""
    x = bytes(_as_uint8(data))
    n = len(x)
    order = np.asarray(sa).tolist()
    if sorted(order) != list(range(n)):
        raise ValueError(f"sa 不是 0..{n - 1} 的一个排列：请传入 suffix_array(data) 的结果")
    rank = [0] * n
    for k, i in enumerate(order):
        rank[i] = k
    lcp = [0] * n
    h = 0
    for i in range(n):  # 按文本顺序：后缀 i 的 LCP ≥ 后缀 i−1 的 LCP − 1，h 从上一轮继承
        k = rank[i]
        if k == n - 1:
            h = 0
            continue
        j = order[k + 1]
        while i + h < n and j + h < n and x[i + h] == x[j + h]:
            h += 1
        lcp[k] = h
        if h:
            h -= 1
    return np.array(lcp, dtype=np.int64)


def _words8(x: np.ndarray) -> np.ndarray:
    """w[i] = x[i:i+8] 按大端打包成 uint64（越界补 0）：比较 w 就是一次比 8 个字节，且保持字典序。"""
    n = len(x)
    padded = np.zeros(n + 8, dtype=np.uint64)
    padded[:n] = x
    w = np.zeros(n, dtype=np.uint64)
    for j in range(8):
        w = (w << np.uint64(8)) | padded[j : j + n]
    return w


def _bit_length(d: np.ndarray) -> np.ndarray:
    """uint64 的有效位数：把最高位的 1 向右抹满，再数 1 的个数（不经过 float，避免 2⁵³ 以上的舍入）。"""
    for s in (1, 2, 4, 8, 16, 32):
        d = d | (d >> np.uint64(s))
    return np.bitwise_count(d).astype(np.int64)


def lcp_array(data, sa: np.ndarray, cap: int | None = None) -> np.ndarray:
    """与 lcp_kasai 相同的 LCP 数组，numpy 向量化：所有相邻对一起比，每轮 8 个字节。

    cap 给定时返回 min(LCP, cap)，轮数 ≤ cap/8（子串去重只需要知道 LCP ≥ L 与否）。
    """
    x = _as_uint8(data)
    n = len(x)
    sa = np.asarray(sa, dtype=np.int64)
    if sa.shape != (n,):
        raise ValueError(f"sa 的长度 {sa.shape} 与数据长度 {n} 不符：请传入 suffix_array(data) 的结果")
    if cap is not None and cap < 0:
        raise ValueError(f"cap={cap} 必须 ≥ 0")
    lcp = np.zeros(n, dtype=np.int64)
    if n < 2:
        return lcp
    w = _words8(x)
    a, b = sa[:-1], sa[1:]
    bound = np.minimum(n - a, n - b)  # 较短后缀的长度：补的 0 不能算作相等
    if cap is not None:
        bound = np.minimum(bound, cap)
    matched = np.zeros(n - 1, dtype=np.int64)
    active = np.flatnonzero(bound > 0)
    while active.size:
        off = matched[active]
        diff = w[a[active] + off] ^ w[b[active] + off]
        same = (64 - _bit_length(diff)) // 8  # 前导相等的字节数，0..8
        matched[active] = off + same
        done = (same < 8) | (matched[active] >= bound[active])
        active = active[~done]
    lcp[:-1] = np.minimum(matched, bound)
    return lcp


# ---------------------------------------------------------------------------
# 4. 精确子串去重
# ---------------------------------------------------------------------------
def _check_min_length(min_length: int) -> None:
    if not isinstance(min_length, (int, np.integer)) or isinstance(min_length, bool) or min_length < 1:
        raise ValueError(f"min_length={min_length!r} 必须是 ≥ 1 的整数（Lee et al. 用 50 个 token；按字节常取 100 左右）")


def _concat(docs: Sequence[bytes]) -> tuple[np.ndarray, np.ndarray]:
    """拼成 doc0 0xFF doc1 0xFF ...；返回 (字节数组, 每篇在拼接串中的起点)。"""
    for i, d in enumerate(docs):
        if not isinstance(d, (bytes, bytearray)):
            raise ValueError(f"docs[{i}] 是 {type(d).__name__}，这里要 bytes：文本请用 dedup_substrings 或先 .encode('utf-8')")
        if SEPARATOR in d:
            raise ValueError(f"docs[{i}] 含字节 0xFF（它被用作文档分隔符，合法 UTF-8 中不会出现）：请先把文档解码/修复成合法 UTF-8")
    lengths = np.array([len(d) for d in docs], dtype=np.int64)
    starts = np.concatenate(([0], np.cumsum(lengths + 1)[:-1])).astype(np.int64)
    data = np.frombuffer(b"".join(bytes(d) + bytes([SEPARATOR]) for d in docs), dtype=np.uint8)
    return data, starts


def repeated_mask(docs: Sequence[bytes], min_length: int) -> tuple[np.ndarray, np.ndarray]:
    """拼接串上的布尔掩码：True = 这个字节属于"更早出现过的 ≥ min_length 字节的片段"。返回 (掩码, 各篇起点)。"""
    _check_min_length(min_length)
    data, starts = _concat(docs)
    n = len(data)
    if n == 0:
        return np.zeros(0, dtype=bool), starts
    sa = suffix_array(data)
    lcp = lcp_array(data, sa, cap=min_length)
    # 匹配不能跨过分隔符：LCP 截到"离下一个 0xFF 的距离"
    seps = np.flatnonzero(data == SEPARATOR)
    to_sep = seps[np.searchsorted(seps, np.arange(n))] - np.arange(n)
    a, b = sa[:-1], sa[1:]
    joined = np.minimum(lcp[:-1], np.minimum(to_sep[a], to_sep[b])) >= min_length
    # 组：SA 中相邻且 LCP ≥ L 的连成一段；每组起点最小者是第一次出现
    group = np.concatenate(([0], np.cumsum(~joined)))
    group_starts = np.flatnonzero(np.concatenate(([True], ~joined)))
    first = np.minimum.reduceat(sa, group_starts)
    later = sa[sa != first[group]]
    # 每个"后来出现"的起点删 [p, p+L)：差分数组 +1/−1 再前缀和
    cover = np.zeros(n + 1, dtype=np.int64)
    np.add.at(cover, later, 1)
    np.add.at(cover, later + min_length, -1)
    return np.cumsum(cover[:-1]) > 0, starts


def _spans(mask: np.ndarray) -> list[tuple[int, int]]:
    """布尔掩码中 True 的连续段 [(start, end), ...]。"""
    edges = np.diff(np.concatenate(([0], mask.astype(np.int8), [0])))
    return list(zip(np.flatnonzero(edges == 1).tolist(), np.flatnonzero(edges == -1).tolist()))


def repeated_spans(docs: Sequence[bytes], min_length: int) -> list[list[tuple[int, int]]]:
    """每篇文档里要删的字节区间（文档内偏移，合并后升序）：在更早位置出现过的、≥ min_length 字节的片段。"""
    mask, starts = repeated_mask(docs, min_length)
    return [_spans(mask[s : s + len(d)]) for s, d in zip(starts.tolist(), docs)]


def dedup_substrings(docs: Sequence[str], min_length: int = 100) -> tuple[list[str], int]:
    """精确子串去重：删掉每个在前面（本篇更早处或更早的文档）出现过的 ≥ min_length 字节片段。

    返回 (新文档列表, 删掉的字节数)。区间收缩到 UTF-8 字符边界：一个字符只有全部字节都落在重复片段里才删。
    """
    for i, d in enumerate(docs):
        if not isinstance(d, str):
            raise ValueError(f"docs[{i}] 是 {type(d).__name__}，dedup_substrings 要 str；bytes 请用 repeated_spans")
    encoded = [d.encode("utf-8") for d in docs]
    mask, starts = repeated_mask(encoded, min_length)
    if mask.size == 0:
        return list(docs), 0
    data = np.frombuffer(b"".join(e + bytes([SEPARATOR]) for e in encoded), dtype=np.uint8)
    # 字符 = 一个首字节（不是 10xxxxxx）加其后的延续字节；字符的所有字节都被标记才删
    lead = np.flatnonzero((data & 0xC0) != 0x80)
    char_removed = np.minimum.reduceat(mask, lead)
    keep = ~np.repeat(char_removed, np.diff(np.append(lead, len(data))))
    out = [data[s : s + len(e)][keep[s : s + len(e)]].tobytes().decode("utf-8") for s, e in zip(starts.tolist(), encoded)]
    removed = sum(len(e) for e in encoded) - sum(len(o.encode("utf-8")) for o in out)
    return out, removed


# ---------------------------------------------------------------------------
# 演示
# ---------------------------------------------------------------------------
def main() -> None:
    import time

    from data_pipeline.corpora import load_corpus
    from utils.io import is_smoke
    from utils.torch_playground import setup_seed

    setup_seed(0)
    smoke = is_smoke()
    text = load_corpus("shakespeare")
    raw = text.encode("utf-8")

    # 1) 后缀数组：朴素 vs 前缀倍增 vs pydivsufsort；LCP：Kasai vs 向量化
    small = raw[:2_000]
    assert np.array_equal(suffix_array(small), suffix_array_naive(small)), "前缀倍增必须与朴素排序相同"
    big = raw[: 200_000 if smoke else len(raw)]
    t0 = time.perf_counter()
    sa = suffix_array(big)
    sa_s = time.perf_counter() - t0
    line = f"后缀数组 {len(big) / 1e6:.2f} MB：前缀倍增 {sa_s:.2f} s"
    try:
        from pydivsufsort import divsufsort, kasai
    except ImportError:
        divsufsort = kasai = None
    if divsufsort is not None:
        t0 = time.perf_counter()
        ref = divsufsort(big)
        ref_s = time.perf_counter() - t0
        assert np.array_equal(sa, ref), "后缀数组必须与 pydivsufsort 相同"
        line += f"，pydivsufsort（C）{ref_s:.2f} s，逐项相同"
    print(line)
    k_part = big[: 100_000 if smoke else 1_000_000]
    k_sa = suffix_array(k_part)
    t0 = time.perf_counter()
    lcp_k = lcp_kasai(k_part, k_sa)
    kasai_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    lcp_v = lcp_array(k_part, k_sa)
    vec_s = time.perf_counter() - t0
    assert np.array_equal(lcp_k, lcp_v), "两种 LCP 必须相同"
    if kasai is not None:
        assert np.array_equal(lcp_v, kasai(k_part, k_sa)), "LCP 必须与 pydivsufsort.kasai 相同"
    print(f"LCP {len(k_part) / 1e6:.2f} MB：Kasai（Python 循环）{kasai_s:.2f} s，逐 8 字节向量化 {vec_s:.2f} s，"
          f"最长重复 {lcp_v.max()} 字节")
    lcp_all = lcp_array(big, sa)
    k = int(np.argmax(lcp_all))
    print(f"全文最长的重复片段（{lcp_all[k]} 字节）：{big[sa[k] : sa[k] + lcp_all[k]].decode('utf-8', 'replace')!r}")

    # 2) 以"一段台词"为文档：整篇去重与行级去重
    speeches = [s for s in text.split("\n\n") if s.strip()][: 3_000 if smoke else None]
    keep = dedup_documents(speeches)
    lowered = dedup_documents(speeches, normalize=lambda s: " ".join(s.lower().split()))
    print(f"{len(speeches):,} 段台词：完全相同的重复 {len(speeches) - len(keep):,} 段，"
          f"小写 + 合并空白后 {len(speeches) - len(lowered):,} 段")
    deduped, n_lines = dedup_lines(speeches)
    n_total = sum(s.count("\n") + 1 for s in speeches)
    speakers = [s.split("\n", 1)[0] for s in speeches]
    print(f"行级去重删掉 {n_lines:,} / {n_total:,} 行，其中 {len(speakers) - len(set(speakers)):,} 行是重复的说话人行"
          f"（{len(speakers):,} 段台词只有 {len(set(speakers)):,} 个不同的说话人）：它适合网页模板，不适合剧本")

    # 3) 子串去重：往一部分台词里插入同一段"版权声明"，只有第一次出现被保留
    notice = ("This text is provided by the Example Archive under license; redistribution of this notice "
              "is permitted provided that it is kept intact. ")
    rng = np.random.default_rng(0)
    docs = speeches[:400]
    hit = set(rng.choice(len(docs), size=40, replace=False).tolist())
    docs = [d + "\n" + notice if i in hit else d for i, d in enumerate(docs)]
    t0 = time.perf_counter()
    out, removed = dedup_substrings(docs, min_length=100)
    sub_s = time.perf_counter() - t0
    still = sum(notice in d for d in out)
    total = sum(len(d.encode("utf-8")) for d in docs)
    print(f"子串去重 L=100：{len(docs)} 篇 {total / 1e3:.0f} KB，插入声明 {len(hit)} 次 → 删掉 {removed:,} 字节，"
          f"完整保留声明的文档 {still} 篇（应为 1），用时 {sub_s:.2f} s")
    assert still == 1


if __name__ == "__main__":
    lesson_args(__doc__)
    main()
