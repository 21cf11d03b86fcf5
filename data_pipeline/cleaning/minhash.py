"""近似去重：shingle → MinHash 签名 → LSH 分桶 → 核对真实 Jaccard → 并查集聚类，每簇留一篇。

    python data_pipeline/cleaning/minhash.py        # 对照 datasketch，再在"莎士比亚 + 扰动副本"上量召回与误报
    from data_pipeline.cleaning.minhash import near_dedup
    result = near_dedup(docs, threshold=0.7)        # result.keep：保留的下标；result.clusters：重复簇

问题：两篇文档改了几个词（转载时加了一句话、换了标点）就不再逐字相同，精确去重抓不到。
衡量"几乎相同"用 Jaccard 相似度 J(A, B) = |A ∩ B| / |A ∪ B|，A、B 是两篇文档的 shingle 集合。

1. Shingle：文档 → 集合。词 n-gram（默认 n = 5 个词，用空格连接后 UTF-8 编码；datatrove 的默认也是 5 个词）
   或字符 n-gram。删掉一个词会毁掉含它的 n 个 shingle，所以 n 越大 J 对编辑越敏感。
   不足 n 个词的文档整篇算一个 shingle（否则它的集合为空，无法比较）；空文档的集合为空，不参与近似去重。
   datasketch 自己不做 shingle：MinHash.update(b) 把传进来的每个 bytes 当成集合里的一个元素整体哈希
   （直接传整篇文档的 bytes 就是"只有一个元素的集合"，传 str 会因 sha1 不收 str 而报错）。
   所以对照时把我们的 shingle 原样喂给 datasketch——两边比的是同一个集合。
2. MinHash：对集合的元素做 k 个随机置换 π_1..π_k，签名 sig_j = min_{x∈A} π_j(x)。
   关键性质 P[min π(A) = min π(B)] = J(A, B)（A ∪ B 中最小的那个元素落在交集里的概率），
   所以 k 个位置里相等的比例是 J 的无偏估计，标准差 σ = √(J(1−J)/k)。
   我们逐位复刻 datasketch 2.0 默认的 "affine32" 方案：
       h(x)   = SHA1(x) 的前 4 字节按小端读成 uint32           （datasketch.hashfunc.sha1_hash32）
       h'     = fmix32(h)                                       （MurmurHash3 的收尾混合：一个固定的双射）
       π_j(x) = (a_j · h' + b_j) mod 2³²，a_j 为奇数              （uint32 乘法自然回绕就是 mod 2³²）
       a_j = 2·randint(0, 2³¹) + 1，b_j = randint(0, 2³²)，都来自 np.random.RandomState(seed)，先 k 个 a 再 k 个 b
   为什么选它：它是 datasketch.MinHash(num_perm, seed) 的默认方案；a 为奇数时 π 是 [0, 2³²) 上的双射，
   不引入新的碰撞；全程 uint32，内存与算力都是 legacy 的一半，向量化也最快。
   也支持旧的 "legacy"（datasketch < 2.0 唯一的方案，issue 里点名的那个）：
       π_j(x) = ((a_j · h + b_j) mod 2⁶⁴ mod p) & (2³² − 1)，p = 2⁶¹ − 1（梅森素数），a_j ∈ [1, p)，b_j ∈ [0, p)
   注意中间那个 mod 2⁶⁴：a < 2⁶¹、h < 2³²，乘积最多 93 位，datasketch 在 numpy uint64 里算，先溢出回绕，
   再 mod p——它并不是教科书上的 (a·h + b) mod p。要逐位相等就得照抄这次回绕。
   参数逐个生成：对每个 j 依次取 a_j、b_j（与 affine32 的"先全部 a 再全部 b"顺序不同）。
   快在哪：datasketch 每篇文档一次 Python 调用、每个 shingle 一次 struct.unpack；我们把一批文档的 shingle
   拼在一起，SHA1 摘要 b"".join 后用 np.frombuffer 一次读出，(k, S) 的置换矩阵一次算完，
   再用 np.minimum.reduceat 按文档分段取最小。
3. LSH 分桶：签名切成 b 段、每段 r 行；某一段完全相同的两篇进同一个桶，成为候选对。
   相似度为 s 的一对成为候选的概率 P(s) = 1 − (1 − s^r)^b，一条 S 形曲线。
   给定阈值 t，选 (b, r) 使 "误报面积 ∫₀ᵗ P(s) ds" 与 "漏报面积 ∫ₜ¹ (1 − P(s)) ds" 的加权和最小（b·r ≤ k）。
   datasketch 用 scipy.integrate.quad 逐个 (b, r) 积分；被积函数是 s 的 r·b ≤ k 次多项式，
   而 m 点 Gauss–Legendre 求积对 2m − 1 次以内的多项式精确，所以 m = k/2 + 1 个节点就给出精确值（只剩浮点舍入），
   一次 numpy 运算算完整张 (b, r) 网格。平局取最先出现的 (b 小、再 r 小)，与 datasketch 的循环一致。
   一个容易忽略的事实：阈值 t 落在 S 形曲线的中段。k = 128、t = 0.9 时 (b, r) = (5, 25)，J = 0.9 的一对
   只有 31% 成为候选！所以默认 t = 0.7（(14, 9)，与 datatrove 的 14 桶 × 8 行相近）：J ≥ 0.9 几乎全中，
   J = 0.5 的候选概率 2.7%，再由第 4 步核对真实 Jaccard 去掉。
4. 核对 + 并查集：候选对按真实 shingle 集合算 J，≥ t 才合并（已在同一簇的对不必再算：结果不变）。
   并查集把"A≈B、B≈C"连成一簇（传递闭包），每簇保留下标最小的那篇（与精确去重"留第一篇"一致）。
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from itertools import chain

import numpy as np

from utils.lesson_cli import lesson_args

SCHEMES = ("affine32", "legacy")
MERSENNE_PRIME = (1 << 61) - 1
MAX_HASH32 = (1 << 32) - 1
_BATCH_ELEMENTS = 1 << 23  # 一批 (shingle 数 × num_perm) 的上限：uint32 时约 32 MB


# ---------------------------------------------------------------------------
# 1. Shingle 与 Jaccard
# ---------------------------------------------------------------------------
def shingles(text: str, n: int = 5, unit: str = "word") -> set[bytes]:
    """文档的 shingle 集合（UTF-8 bytes）。unit="word"：按空白切词后的 n 个连续词，用一个空格连接；
    unit="char"：n 个连续字符。不足 n 个单位时整篇算一个 shingle；空文档返回空集合。"""
    if not isinstance(n, int) or isinstance(n, bool) or n < 1:
        raise ValueError(f"n={n!r} 必须是 ≥ 1 的整数（词 shingle 常用 5，字符 shingle 常用 5~9）")
    if not isinstance(text, str):
        raise ValueError(f"text 必须是 str，收到 {type(text).__name__}；bytes 请先 .decode('utf-8')")
    if unit == "word":
        words = text.split()
        if len(words) <= n:
            return {" ".join(words).encode("utf-8")} if words else set()
        return {" ".join(words[i : i + n]).encode("utf-8") for i in range(len(words) - n + 1)}
    if unit == "char":
        if len(text) <= n:
            return {text.encode("utf-8")} if text else set()
        return {text[i : i + n].encode("utf-8") for i in range(len(text) - n + 1)}
    raise ValueError(f"unit={unit!r} 不认识：只能是 'word'（词 n-gram）或 'char'（字符 n-gram）")


def jaccard(a: set, b: set) -> float:
    """真实 Jaccard 相似度 |A∩B| / |A∪B|；两个空集合定义为 0（没有内容，谈不上重复）。"""
    union = len(a | b)
    return len(a & b) / union if union else 0.0


def estimate_jaccard(sig_a: np.ndarray, sig_b: np.ndarray) -> float:
    """MinHash 估计：两个签名里相等位置的比例（与 datasketch MinHash.jaccard 相同）。"""
    if sig_a.shape != sig_b.shape:
        raise ValueError(f"两个签名长度不同：{sig_a.shape} vs {sig_b.shape}；必须来自同一个 MinHasher")
    return float(np.count_nonzero(sig_a == sig_b)) / sig_a.size


# ---------------------------------------------------------------------------
# 2. MinHash 签名
# ---------------------------------------------------------------------------
def sha1_hash32(items: Sequence[bytes]) -> np.ndarray:
    """每个元素 SHA1 摘要的前 4 字节（小端 uint32），与 datasketch.hashfunc.sha1_hash32 逐个相同。

    20 字节的摘要拼在一起读成 uint32 数组，每 5 个取第 1 个：省掉每个元素一次 struct.unpack。
    """
    sha1 = hashlib.sha1
    try:
        digests = b"".join([sha1(x).digest() for x in items])
    except TypeError:
        bad = next(x for x in items if not isinstance(x, (bytes, bytearray, memoryview)))
        raise ValueError(f"shingle 必须是 bytes，收到 {type(bad).__name__}：{bad!r}；请用 shingles() 或先 .encode('utf-8')") from None
    return np.frombuffer(digests, dtype="<u4")[::5]


def fmix32(h: np.ndarray) -> np.ndarray:
    """MurmurHash3 的 32 位收尾混合：固定的雪崩双射，让结构化的输入哈希也均匀散开（datasketch affine32 先做这一步）。"""
    h = h.astype(np.uint32)
    h ^= h >> np.uint32(16)
    h *= np.uint32(0x85EBCA6B)
    h ^= h >> np.uint32(13)
    h *= np.uint32(0xC2B2AE35)
    h ^= h >> np.uint32(16)
    return h


class MinHasher:
    """k = num_perm 个置换；signatures() 给一批 shingle 集合算签名，与 datasketch.MinHash(num_perm, seed, scheme) 逐位相同。"""

    def __init__(self, num_perm: int = 128, seed: int = 1, scheme: str = "affine32") -> None:
        if not isinstance(num_perm, int) or isinstance(num_perm, bool) or num_perm < 1:
            raise ValueError(f"num_perm={num_perm!r} 必须是 ≥ 1 的整数（常用 128 或 256）")
        if scheme not in SCHEMES:
            raise ValueError(f"scheme={scheme!r} 不认识：只能是 {SCHEMES}（datasketch 2.0 的默认是 'affine32'）")
        self.num_perm, self.seed, self.scheme = num_perm, seed, scheme
        gen = np.random.RandomState(seed)
        if scheme == "affine32":
            # 先一次取 k 个 a（奇数），再一次取 k 个 b——RandomState 的调用顺序决定了数值，必须一致
            self.a = gen.randint(0, 1 << 31, num_perm, dtype=np.uint32) * np.uint32(2) + np.uint32(1)
            self.b = gen.randint(0, 1 << 32, num_perm, dtype=np.uint32)
            self.empty = np.uint32(MAX_HASH32)
        else:
            # legacy：逐个 j 交替取 a_j ∈ [1, p)、b_j ∈ [0, p)
            params = [
                (gen.randint(1, MERSENNE_PRIME, dtype=np.uint64), gen.randint(0, MERSENNE_PRIME, dtype=np.uint64))
                for _ in range(num_perm)
            ]
            self.a = np.array([p[0] for p in params], dtype=np.uint64)
            self.b = np.array([p[1] for p in params], dtype=np.uint64)
            self.empty = np.uint64(MAX_HASH32)

    def permute(self, hashes: np.ndarray) -> np.ndarray:
        """(S,) 个元素哈希 → (k, S) 个置换后的值。

        布局是 (k, S) 而不是 (S, k)：每个置换占一整行，广播的内层循环沿长的那一维跑，
        随后按文档分段取最小（reduceat 沿 axis=1）也是连续内存——实测比 (S, k) 布局快约 4 倍。
        """
        a, b = self.a[:, None], self.b[:, None]
        if self.scheme == "affine32":
            return a * fmix32(hashes)[None, :] + b  # uint32 回绕 = mod 2³²
        phv = (a * hashes.astype(np.uint64)[None, :] + b) % np.uint64(MERSENNE_PRIME)  # uint64 先回绕（mod 2⁶⁴），再 mod p
        return phv & np.uint64(MAX_HASH32)

    def signatures(self, shingle_sets: Sequence[Iterable[bytes]]) -> np.ndarray:
        """(N, k) 签名矩阵（affine32 为 uint32，legacy 为 uint64，与 datasketch 的 hashvalues 同 dtype）。

        空集合的签名全是 2³² − 1（datasketch 的初始值）。按 shingle 总数分批，每批内存 ≤ 约 _BATCH_ELEMENTS 个值。
        """
        sets = [s if isinstance(s, (set, frozenset, list, tuple)) else list(s) for s in shingle_sets]
        lengths = np.array([len(s) for s in sets], dtype=np.int64)
        out = np.full((len(sets), self.num_perm), self.empty, dtype=self.empty.dtype)
        ends = np.cumsum(lengths)
        per_batch = max(1, _BATCH_ELEMENTS // self.num_perm)
        i = 0
        while i < len(sets):
            base = ends[i - 1] if i else 0
            j = max(i + 1, int(np.searchsorted(ends, base + per_batch, side="right")))
            docs = np.flatnonzero(lengths[i:j]) + i  # 空集合跳过：reduceat 对空段会返回下一段的值
            if docs.size:
                hashes = sha1_hash32(list(chain.from_iterable(sets[k] for k in docs.tolist())))
                offsets = np.concatenate(([0], np.cumsum(lengths[docs])[:-1]))
                out[docs] = np.minimum.reduceat(self.permute(hashes), offsets, axis=1).T
            i = j
        return out

    def signature(self, shingle_set: Iterable[bytes]) -> np.ndarray:
        """单个集合的签名（k,）。"""
        return self.signatures([shingle_set])[0]


# ---------------------------------------------------------------------------
# 3. LSH：选 (b, r)，分桶出候选对
# ---------------------------------------------------------------------------
def candidate_probability(s: np.ndarray | float, bands: int, rows: int) -> np.ndarray:
    """相似度 s 的一对成为候选的概率 P(s) = 1 − (1 − s^r)^b。"""
    return 1.0 - (1.0 - np.asarray(s, dtype=np.float64) ** rows) ** bands


def lsh_error_areas(threshold: float, num_perm: int) -> tuple[list[tuple[int, int]], np.ndarray, np.ndarray]:
    """全部 (b, r)（b·r ≤ num_perm，datasketch 的遍历顺序）及其误报面积 ∫₀ᵗ P(s)ds、漏报面积 ∫ₜ¹ (1−P(s))ds。"""
    if not 0.0 < threshold < 1.0:
        raise ValueError(f"threshold={threshold} 必须在 (0, 1) 之间（Jaccard 阈值，常用 0.7~0.85）")
    if not isinstance(num_perm, int) or num_perm < 2:
        raise ValueError(f"num_perm={num_perm!r} 必须是 ≥ 2 的整数：至少要能分成 2 段")
    grid = [(b, r) for b in range(1, num_perm + 1) for r in range(1, num_perm // b + 1)]
    b = np.array([g[0] for g in grid], dtype=np.float64)[:, None]
    r = np.array([g[1] for g in grid], dtype=np.float64)[:, None]
    # 被积函数是 ≤ num_perm 次多项式：m = num_perm//2 + 1 点 Gauss–Legendre 精确（2m − 1 ≥ num_perm）
    nodes, w = np.polynomial.legendre.leggauss(num_perm // 2 + 1)
    s_fp, w_fp = threshold / 2 * (nodes + 1), threshold / 2 * w  # [−1, 1] → [0, t]
    s_fn, w_fn = threshold + (1 - threshold) / 2 * (nodes + 1), (1 - threshold) / 2 * w  # → [t, 1]
    false_pos = ((1.0 - (1.0 - s_fp**r) ** b) * w_fp).sum(axis=1)
    false_neg = (((1.0 - s_fn**r) ** b) * w_fn).sum(axis=1)
    return grid, false_pos, false_neg


def optimal_bands(threshold: float, num_perm: int, weights: tuple[float, float] = (0.5, 0.5)) -> tuple[int, int]:
    """使 w_fp·误报面积 + w_fn·漏报面积 最小的 (b, r)，b·r ≤ num_perm。与 datasketch 的 _optimal_param 相同。"""
    w_fp, w_fn = weights
    if w_fp < 0 or w_fn < 0 or abs(w_fp + w_fn - 1.0) > 1e-12:
        raise ValueError(f"weights={weights} 必须是两个非负数且和为 1：(误报权重, 漏报权重)")
    grid, false_pos, false_neg = lsh_error_areas(threshold, num_perm)
    return grid[int(np.argmin(w_fp * false_pos + w_fn * false_neg))]  # argmin 取第一个最小值：平局规则相同


def _pairs_within_groups(members: np.ndarray, group: np.ndarray) -> np.ndarray:
    """members 按 group 排好（组内升序），返回所有组内两两组合 (i, j)。第 d 轮配对组内相距 d 的元素。"""
    starts = np.flatnonzero(np.concatenate(([True], group[1:] != group[:-1])))
    sizes = np.diff(np.append(starts, len(group)))
    size_of = np.repeat(sizes, sizes)
    pos = np.arange(len(group)) - np.repeat(starts, sizes)
    out = []
    idx = np.arange(len(group))
    for d in range(1, int(sizes.max(initial=1))):
        idx = idx[size_of[idx] > d]  # 只留还有"相距 d 的伙伴"可能的组：总工作量 ∝ 候选对数
        sel = idx[pos[idx] + d < size_of[idx]]
        out.append(np.stack([members[sel], members[sel + d]], axis=1))
    return np.concatenate(out) if out else np.zeros((0, 2), dtype=np.int64)


def lsh_candidate_pairs(signatures: np.ndarray, bands: int, rows: int) -> np.ndarray:
    """LSH 候选对：某一段 r 个签名值完全相同的文档两两成对。返回 (P, 2) int64，每行 i < j，按行升序、无重复。

    与 datasketch.MinHashLSH(params=(b, r))（只用签名的前 b·r 个值）插入全部文档、逐个 query 得到的对相同。
    """
    if signatures.ndim != 2:
        raise ValueError(f"signatures 必须是 (N, num_perm) 矩阵，收到形状 {signatures.shape}")
    n, k = signatures.shape
    if bands < 1 or rows < 1 or bands * rows > k:
        raise ValueError(f"(bands, rows)=({bands}, {rows})：需要 b, r ≥ 1 且 b·r ≤ num_perm={k}；可用 optimal_bands 选")
    found = []
    for band in range(bands):
        block = np.ascontiguousarray(signatures[:, band * rows : (band + 1) * rows])
        keys = block.view(np.dtype((np.void, block.dtype.itemsize * rows))).ravel()  # 每行 r 个值当作一个字节串键
        _, bucket, counts = np.unique(keys, return_inverse=True, return_counts=True)
        members = np.flatnonzero(counts[bucket] > 1)
        order = np.argsort(bucket[members], kind="stable")  # 稳定排序：组内仍按文档下标升序
        found.append(_pairs_within_groups(members[order], bucket[members][order]))
    pairs = np.concatenate(found) if found else np.zeros((0, 2), dtype=np.int64)
    codes = np.unique(pairs[:, 0].astype(np.int64) * n + pairs[:, 1])  # 多个段可能给出同一对
    return np.stack([codes // n, codes % n], axis=1) if codes.size else np.zeros((0, 2), dtype=np.int64)


# ---------------------------------------------------------------------------
# 4. 核对 + 并查集 + 整个近似去重
# ---------------------------------------------------------------------------
class UnionFind:
    """并查集：按大小合并 + 路径减半，每次操作近乎 O(1)。"""

    def __init__(self, n: int) -> None:
        self.parent = list(range(n))
        self.size = [1] * n

    def find(self, x: int) -> int:
        parent = self.parent
        while parent[x] != x:
            parent[x] = parent[parent[x]]  # 路径减半：每一步让 x 指向祖父
            x = parent[x]
        return x

    def union(self, x: int, y: int) -> bool:
        """合并 x、y 所在的组；本来就在一组时返回 False。"""
        rx, ry = self.find(x), self.find(y)
        if rx == ry:
            return False
        if self.size[rx] < self.size[ry]:  # 小树挂到大树下：树高 O(log n)
            rx, ry = ry, rx
        self.parent[ry] = rx
        self.size[rx] += self.size[ry]
        return True

    def groups(self) -> list[list[int]]:
        """全部组（每组升序，组按最小元素升序）：每组第一个就是"留下的那篇"。"""
        by_root: dict[int, list[int]] = {}
        for x in range(len(self.parent)):
            by_root.setdefault(self.find(x), []).append(x)
        return sorted(by_root.values())


@dataclass
class NearDedupResult:
    keep: list[int]  # 保留的文档下标（升序）：每簇最小下标 + 所有不在任何簇里的文档
    clusters: list[list[int]]  # 大小 ≥ 2 的重复簇（升序）
    bands: int
    rows: int
    n_candidates: int  # LSH 候选对数
    n_verified: int  # 核对后 J ≥ threshold 而合并的对数（已在同一簇的对不再核对）
    signatures: np.ndarray = field(repr=False)


def near_dedup(
    docs: Sequence[str],
    threshold: float = 0.7,
    num_perm: int = 128,
    n: int = 5,
    unit: str = "word",
    seed: int = 1,
    scheme: str = "affine32",
    verify: bool = True,
    chunk: int = 4096,
) -> NearDedupResult:
    """MinHash + LSH 近似去重。verify=False 时候选对直接合并（datatrove 的做法：更快，但会带进 LSH 的误报）。

    shingle 按 chunk 篇一批算完签名就丢掉，核对时只为候选文档重新算 shingle：内存 ∝ N·k，而不是全部 shingle。
    """
    hasher = MinHasher(num_perm, seed, scheme)
    bands, rows = optimal_bands(threshold, num_perm)
    sigs = np.empty((len(docs), num_perm), dtype=hasher.empty.dtype)
    empty = np.zeros(len(docs), dtype=bool)
    for start in range(0, len(docs), chunk):
        sets = [shingles(d, n, unit) for d in docs[start : start + chunk]]
        empty[start : start + len(sets)] = [not s for s in sets]
        sigs[start : start + len(sets)] = hasher.signatures(sets)
    pairs = lsh_candidate_pairs(sigs, bands, rows)
    pairs = pairs[~(empty[pairs[:, 0]] | empty[pairs[:, 1]])]  # 空文档签名全相同，不算重复
    uf = UnionFind(len(docs))
    cache: dict[int, set[bytes]] = {}
    verified = 0
    for i, j in pairs.tolist():
        if uf.find(i) == uf.find(j):
            continue
        if verify:
            a = cache.get(i)
            if a is None:
                a = cache[i] = shingles(docs[i], n, unit)
            b = cache.get(j)
            if b is None:
                b = cache[j] = shingles(docs[j], n, unit)
            if jaccard(a, b) < threshold:
                continue
        uf.union(i, j)
        verified += 1
    groups = uf.groups()
    keep = sorted(g[0] for g in groups)
    clusters = [g for g in groups if len(g) > 1]
    return NearDedupResult(keep, clusters, bands, rows, len(pairs), verified, sigs)


# ---------------------------------------------------------------------------
# 5. 合成语料：段落 + 受控扰动的副本
# ---------------------------------------------------------------------------
def perturb(text: str, rate: float, rng: np.random.Generator) -> str:
    """每个词以概率 rate 被编辑：一半删掉，一半与后一个词交换位置。rate = 0 返回原文（按空白重新连接）。"""
    if not 0.0 <= rate <= 1.0:
        raise ValueError(f"rate={rate} 必须在 [0, 1] 之间")
    words = text.split()
    edit = rng.random(len(words)) < rate
    delete = rng.random(len(words)) < 0.5
    out: list[str] = []
    i = 0
    while i < len(words):
        if edit[i] and delete[i]:
            i += 1
        elif edit[i] and i + 1 < len(words):
            out += [words[i + 1], words[i]]
            i += 2
        else:
            out.append(words[i])
            i += 1
    return " ".join(out)


def near_duplicate_corpus(
    passages: Sequence[str], rates: Sequence[float], copies_per_passage: int, rng: np.random.Generator
) -> tuple[list[str], list[tuple[int, int]]]:
    """每段原文后面跟 copies_per_passage 个扰动副本（扰动率从 rates 里随机取）。

    返回 (文档列表, [(原文下标, 副本下标), ...])：已知来源的对，用来量召回与误报。
    """
    docs: list[str] = []
    pairs: list[tuple[int, int]] = []
    for p in passages:
        origin = len(docs)
        docs.append(" ".join(p.split()))
        for _ in range(copies_per_passage):
            pairs.append((origin, len(docs)))
            docs.append(perturb(p, float(rng.choice(rates)), rng))
    return docs, pairs


def shakespeare_passages(text: str, count: int, words: int, rng: np.random.Generator) -> list[str]:
    """从语料里取 count 段互不重叠的、各 words 个词的段落（起点随机）。"""
    tokens = text.split()
    slots = len(tokens) // words
    if count > slots:
        raise ValueError(f"语料只有 {len(tokens):,} 个词，取不出 {count} 段 × {words} 词；请减小 count 或 words")
    picks = np.sort(rng.choice(slots, size=count, replace=False))
    return [" ".join(tokens[s * words : (s + 1) * words]) for s in picks.tolist()]


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
    rng = np.random.default_rng(0)
    text = load_corpus("shakespeare")

    # 1) 签名与 datasketch 逐位相同、(b, r) 相同
    passages = shakespeare_passages(text, 60 if smoke else 400, 80, rng)
    sets = [shingles(p) for p in passages]
    hasher = MinHasher(128, seed=1)
    t0 = time.perf_counter()
    sigs = hasher.signatures(sets)
    ours_s = time.perf_counter() - t0
    try:
        from datasketch import MinHash
        from datasketch.lsh import _optimal_param
    except ImportError:
        MinHash = None
    if MinHash is not None:
        t0 = time.perf_counter()
        ref = []
        for s in sets:
            m = MinHash(128, seed=1)
            m.update_batch(s)
            ref.append(m.hashvalues)
        ref_s = time.perf_counter() - t0
        assert np.array_equal(sigs, np.array(ref)), "签名必须与 datasketch 逐位相同"
        print(f"{len(sets)} 篇 × 128 个置换：签名与 datasketch 逐位相同；ours {ours_s * 1e3:.0f} ms，"
              f"datasketch {ref_s * 1e3:.0f} ms（{ref_s / ours_s:.1f}×）")
        for t in (0.5, 0.7, 0.9):
            assert optimal_bands(t, 128) == _optimal_param(t, 128, 0.5, 0.5)
    for t in (0.5, 0.7, 0.8, 0.9):
        b, r = optimal_bands(t, 128)
        p9, p5 = candidate_probability([0.9, 0.5], b, r)
        print(f"阈值 {t}：(b, r) = ({b}, {r})，J=0.9 的一对成为候选的概率 {p9:.3f}，J=0.5 的 {p5:.4f}")

    # 2) 合成语料：原文 + 扰动副本，量召回与误报
    rates = [0.0, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.3, 0.5]
    docs, known = near_duplicate_corpus(passages, rates, 3, rng)
    t0 = time.perf_counter()
    result = near_dedup(docs, threshold=0.7)
    dedup_s = time.perf_counter() - t0
    root = np.arange(len(docs))
    for c in result.clusters:
        root[c] = c[0]
    true_j = np.array([jaccard(shingles(docs[i]), shingles(docs[j])) for i, j in known])
    same = np.array([root[i] == root[j] for i, j in known])
    high, low = true_j >= 0.9, true_j <= 0.5
    print(f"{len(docs)} 篇（{len(passages)} 段原文 + 扰动副本）：(b, r) = ({result.bands}, {result.rows})，"
          f"候选对 {result.n_candidates}，核对后合并 {result.n_verified}，剩 {len(result.keep)} 篇，用时 {dedup_s:.2f} s")
    print(f"  J ≥ 0.9 的 {high.sum()} 对：召回 {same[high].mean():.3f}；J ≤ 0.5 的 {low.sum()} 对：误报 {same[low].mean():.3f}")

    # 3) 估计误差：签名相等比例 vs 真实 J
    est = np.array([estimate_jaccard(result.signatures[i], result.signatures[j]) for i, j in known])
    sigma = np.sqrt(true_j * (1 - true_j) / 128)
    print(f"  MinHash 估计与真实 J 的差在 3σ 以内的比例：{np.mean(np.abs(est - true_j) <= 3 * sigma + 1e-12):.3f}")


if __name__ == "__main__":
    lesson_args(__doc__)
    main()
