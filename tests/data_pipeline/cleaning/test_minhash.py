"""近似去重（data_pipeline/cleaning/minhash.py）。

参考：datasketch 2.0——MinHash(num_perm, seed, scheme) 的 hashvalues 逐位相同（1,000 篇，k = 64/128/256，
affine32 与 legacy 两种方案）；_optimal_param 选出的 (b, r) 相同；MinHashLSH(params=(b, r)) 的候选对相同。
统计：200 对已知 J 的集合，估计值落在 3σ = 3√(J(1−J)/k) 内的比例 ≥ 99%。
端到端：莎士比亚段落 + 受控扰动的副本，J ≥ 0.9 的召回 ≥ 0.95，J ≤ 0.5 的误报 ≤ 1%。
"""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from data_pipeline.cleaning.minhash import (
    MinHasher,
    UnionFind,
    candidate_probability,
    estimate_jaccard,
    jaccard,
    lsh_candidate_pairs,
    lsh_error_areas,
    near_dedup,
    near_duplicate_corpus,
    optimal_bands,
    perturb,
    sha1_hash32,
    shakespeare_passages,
    shingles,
)
from data_pipeline.corpora import load_corpus

datasketch = pytest.importorskip("datasketch")
from datasketch import MinHash, MinHashLSH  # noqa: E402
from datasketch.hashfunc import sha1_hash32 as ds_sha1_hash32  # noqa: E402
from datasketch.lsh import _false_negative_probability, _false_positive_probability, _optimal_param  # noqa: E402


@pytest.fixture(scope="module")
def text() -> str:
    return load_corpus("shakespeare")


@pytest.fixture(scope="module")
def thousand_sets(text) -> list[set[bytes]]:
    """1,000 篇：长短不一的莎士比亚段落（3~200 个词，含不足 5 个词的）、几篇字符 shingle、一篇空文档。"""
    rng = np.random.default_rng(0)
    words = text.split()
    sets = []
    for k in range(1000):
        start = int(rng.integers(0, len(words) - 200))
        doc = " ".join(words[start : start + int(rng.integers(3, 200))])
        sets.append(shingles(doc, 5, "char" if k % 50 == 0 else "word"))
    sets[7] = set()
    return sets


def datasketch_signatures(sets, num_perm: int, seed: int, scheme: str) -> np.ndarray:
    out = []
    for s in sets:
        m = MinHash(num_perm, seed=seed, scheme=scheme)
        m.update_batch(list(s))
        out.append(m.hashvalues)
    return np.array(out)


# ---------------------------------------------------------------------------
# 签名逐位相同
# ---------------------------------------------------------------------------
@pytest.mark.parametrize("num_perm", [64, 128, 256])
def test_signatures_bit_equal_datasketch_affine32(thousand_sets, num_perm):
    ours = MinHasher(num_perm, seed=1).signatures(thousand_sets)
    ref = datasketch_signatures(thousand_sets, num_perm, 1, "affine32")
    assert ours.dtype == ref.dtype == np.uint32
    assert np.array_equal(ours, ref)
    # datasketch 的默认构造就是这个方案
    m = MinHash(num_perm)
    m.update_batch(list(thousand_sets[3]))
    assert np.array_equal(MinHasher(num_perm).signature(thousand_sets[3]), m.hashvalues)


@pytest.mark.parametrize("num_perm", [64, 128, 256])
def test_signatures_bit_equal_datasketch_legacy(thousand_sets, num_perm):
    sets = thousand_sets[:300]  # datasketch 的 legacy 慢（uint64 取模），取前 300 篇（含空文档与字符 shingle）
    ours = MinHasher(num_perm, seed=42, scheme="legacy").signatures(sets)
    ref = datasketch_signatures(sets, num_perm, 42, "legacy")
    assert ours.dtype == ref.dtype == np.uint64
    assert np.array_equal(ours, ref)


def test_signatures_independent_of_batching(thousand_sets, monkeypatch):
    import data_pipeline.cleaning.minhash as mh

    whole = MinHasher(128, seed=3).signatures(thousand_sets)
    monkeypatch.setattr(mh, "_BATCH_ELEMENTS", 128 * 37)  # 每批约 37 个 shingle：大量分批、单篇超出一批
    assert np.array_equal(MinHasher(128, seed=3).signatures(thousand_sets), whole)


def test_sha1_hash32_equals_datasketch_hashfunc():
    items = [b"", b"a", "莎士比亚".encode(), bytes(range(256))]
    assert sha1_hash32(items).tolist() == [ds_sha1_hash32(x) for x in items]


def test_shingles():
    assert shingles("a b c d e f", 5) == {b"a b c d e", b"b c d e f"}
    assert shingles("  to   be\nor ", 5) == {b"to be or"}  # 不足 n 个词：整篇一个
    assert shingles("", 5) == set() and shingles("   ", 5, "char") == {b"   "}
    assert shingles("abcdef", 3, "char") == {b"abc", b"bcd", b"cde", b"def"}
    assert shingles("a a a a a a a", 2) == {b"a a"}  # 集合：重复的 n-gram 只算一次


# ---------------------------------------------------------------------------
# Jaccard 估计：3σ
# ---------------------------------------------------------------------------
@pytest.mark.parametrize("num_perm", [128, 256])
def test_jaccard_estimates_within_3_sigma(num_perm):
    rng = np.random.default_rng(0)
    hasher = MinHasher(num_perm, seed=7)
    within, cases = 0, 200
    next_id = 0
    for _ in range(cases):
        union = int(rng.integers(100, 1500))
        inter = int(rng.integers(1, union))  # 0 < J < 1
        only_a = int(rng.integers(0, union - inter + 1))
        ids = [f"elem-{next_id + i}".encode() for i in range(union)]
        next_id += union
        a = set(ids[: inter + only_a])
        b = set(ids[:inter]) | set(ids[inter + only_a :])
        j = inter / union
        assert jaccard(a, b) == pytest.approx(j)
        sig = hasher.signatures([a, b])
        est = estimate_jaccard(sig[0], sig[1])
        within += abs(est - j) <= 3 * np.sqrt(j * (1 - j) / num_perm)
    assert within / cases >= 0.99, within


# ---------------------------------------------------------------------------
# LSH：(b, r) 与候选对
# ---------------------------------------------------------------------------
@pytest.mark.parametrize("num_perm", [64, 128, 256])
def test_optimal_bands_equal_datasketch(num_perm):
    all_weights = [(0.5, 0.5), (0.3, 0.7), (0.7, 0.3)] if num_perm <= 128 else [(0.5, 0.5)]  # 参考算 256 较慢
    for t in np.round(np.arange(0.5, 0.91, 0.05), 2):
        for weights in all_weights:
            assert optimal_bands(float(t), num_perm, weights) == _optimal_param(float(t), num_perm, *weights), (t, weights)


@pytest.mark.parametrize("threshold", [0.5, 0.8])
def test_error_areas_equal_scipy_quad(threshold):
    # Gauss–Legendre 对 ≤ k 次多项式精确：每个 (b, r) 的面积与 datasketch 用 scipy.integrate.quad 算的相差只在舍入级
    grid, false_pos, false_neg = lsh_error_areas(threshold, 64)
    ref_fp = np.array([_false_positive_probability(threshold, b, r) for b, r in grid])
    ref_fn = np.array([_false_negative_probability(threshold, b, r) for b, r in grid])
    assert np.abs(false_pos - ref_fp).max() < 1e-12
    assert np.abs(false_neg - ref_fn).max() < 1e-12


def test_candidate_probability_s_curve():
    b, r = optimal_bands(0.9, 128)
    assert (b, r) == (5, 25)
    assert candidate_probability(0.9, b, r) < 0.35  # 阈值处只有约 31%：阈值落在 S 形曲线中段
    p = candidate_probability(np.linspace(0, 1, 11), 14, 9)
    assert np.all(np.diff(p) > 0) and p[0] == 0 and p[-1] == 1


def datasketch_pairs(sigs: np.ndarray, num_perm: int, b: int, r: int) -> set[tuple[int, int]]:
    lsh = MinHashLSH(num_perm=num_perm, params=(b, r))
    minhashes = []
    for i, row in enumerate(sigs):
        m = MinHash(num_perm, seed=1, hashvalues=row, scheme="affine32")
        lsh.insert(i, m)
        minhashes.append(m)
    return {(min(i, j), max(i, j)) for i, m in enumerate(minhashes) for j in lsh.query(m) if i != j}


@pytest.mark.parametrize(("num_perm", "threshold"), [(64, 0.5), (128, 0.7), (256, 0.8)])
def test_candidate_pairs_equal_datasketch_lsh(text, num_perm, threshold):
    rng = np.random.default_rng(1)
    passages = shakespeare_passages(text, 120, 60, rng)
    docs, _ = near_duplicate_corpus(passages, [0.0, 0.02, 0.05, 0.1, 0.3], 3, rng)
    docs += docs[:20]  # 完全相同的文档：所有段都相同，大桶
    sigs = MinHasher(num_perm, seed=1).signatures([shingles(d) for d in docs])
    b, r = optimal_bands(threshold, num_perm)
    ours = lsh_candidate_pairs(sigs, b, r)
    assert np.all(ours[:, 0] < ours[:, 1]) and len(np.unique(ours, axis=0)) == len(ours)
    ref = datasketch_pairs(sigs, num_perm, b, r)
    assert len(ref) > 100
    assert set(map(tuple, ours.tolist())) == ref


def test_candidate_pairs_large_bucket():
    sigs = np.zeros((30, 16), dtype=np.uint32)  # 30 篇完全相同：C(30, 2) 对
    sigs[25:, :] = np.arange(16) + 1  # 另一组 5 篇
    pairs = set(map(tuple, lsh_candidate_pairs(sigs, 4, 4).tolist()))
    assert pairs == set(itertools.combinations(range(25), 2)) | set(itertools.combinations(range(25, 30), 2))


# ---------------------------------------------------------------------------
# 并查集与端到端
# ---------------------------------------------------------------------------
def test_union_find_groups():
    uf = UnionFind(7)
    for x, y in [(5, 3), (3, 1), (6, 4)]:
        assert uf.union(x, y)
    assert not uf.union(1, 5)
    assert uf.groups() == [[0], [1, 3, 5], [2], [4, 6]]


def test_near_dedup_recall_and_false_positives(text):
    rng = np.random.default_rng(0)
    passages = shakespeare_passages(text, 400, 100, rng)
    rates = [0.0, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.15, 0.2, 0.3, 0.5]
    docs, known = near_duplicate_corpus(passages, rates, 3, rng)
    result = near_dedup(docs, threshold=0.7)
    root = np.arange(len(docs))
    for cluster in result.clusters:
        root[cluster] = cluster[0]
    true_j = np.array([jaccard(shingles(docs[i]), shingles(docs[j])) for i, j in known])
    same = np.array([root[i] == root[j] for i, j in known])
    high, low = true_j >= 0.9, true_j <= 0.5
    assert high.sum() >= 200 and low.sum() >= 200  # 两边都有足够多的对
    assert same[high].mean() >= 0.95
    assert same[low].mean() <= 0.01
    # 不同原文之间（随机抽 2,000 对，J 近似 0）不应被合并
    a, b = rng.integers(0, len(passages), (2, 2000)) * 4
    distinct = a != b
    assert np.mean(root[a[distinct]] == root[b[distinct]]) <= 0.01
    # 每簇留下标最小的一篇
    assert result.keep == sorted(set(root.tolist()))
    assert all(c[0] in result.keep and not set(c[1:]) & set(result.keep) for c in result.clusters)


def test_near_dedup_verification_removes_lsh_false_positives(text):
    rng = np.random.default_rng(5)
    passages = shakespeare_passages(text, 200, 80, rng)
    docs, known = near_duplicate_corpus(passages, [0.05, 0.1, 0.2], 2, rng)
    verified = near_dedup(docs, threshold=0.5)
    unverified = near_dedup(docs, threshold=0.5, verify=False)
    assert len(unverified.keep) <= len(verified.keep)
    for cluster in verified.clusters:  # 核对过的簇：每篇都至少与簇里另一篇真实 J ≥ 阈值
        sets = [shingles(docs[i]) for i in cluster]
        for k, s in enumerate(sets):
            assert max(jaccard(s, t) for m, t in enumerate(sets) if m != k) >= 0.5


def test_near_dedup_empty_and_short_docs():
    docs = ["", "", "to be or not to be that is the question", "to be or not to be that is the question", "   "]
    result = near_dedup(docs, threshold=0.8)
    assert result.clusters == [[2, 3]]  # 空文档的签名全相同，但不算重复
    assert result.keep == [0, 1, 2, 4]


def test_perturb_rates():
    rng = np.random.default_rng(0)
    base = " ".join(f"w{i}" for i in range(1000))
    assert perturb(base, 0.0, rng) == base
    assert len(perturb(base, 0.2, rng).split()) < 1000
    assert jaccard(shingles(base), shingles(perturb(base, 0.01, rng))) > jaccard(shingles(base), shingles(perturb(base, 0.1, rng)))


# ---------------------------------------------------------------------------
# 错误输入
# ---------------------------------------------------------------------------
def test_bad_input_raises_clear_errors():
    with pytest.raises(ValueError, match="scheme"):
        MinHasher(128, scheme="affine64")
    with pytest.raises(ValueError, match="num_perm"):
        MinHasher(0)
    with pytest.raises(ValueError, match="bytes"):
        MinHasher(16).signatures([["not bytes"]])
    with pytest.raises(ValueError, match="unit"):
        shingles("text", 5, "token")
    with pytest.raises(ValueError, match="n="):
        shingles("text", 0)
    with pytest.raises(ValueError, match="threshold"):
        optimal_bands(1.0, 128)
    with pytest.raises(ValueError, match="weights"):
        optimal_bands(0.8, 128, (0.6, 0.6))
    with pytest.raises(ValueError, match="b·r"):
        lsh_candidate_pairs(np.zeros((3, 16), dtype=np.uint32), 5, 4)
    with pytest.raises(ValueError, match="长度"):
        estimate_jaccard(np.zeros(3), np.zeros(4))


# ---------------------------------------------------------------------------
# 练习模式用的单独对照（utils/exercise_parts/cleaning.py）：置换本身，不经过 signatures
# ---------------------------------------------------------------------------
@pytest.mark.parametrize("scheme", ["affine32", "legacy"])
def test_permute_equals_datasketch_one_element_signatures(scheme):
    """只有一个元素的集合：datasketch 的签名就是这个元素在 k 个置换下的值（最小值只取一个）。"""
    items = [b"", b"a", "莎士比亚".encode(), bytes(range(256)), *(f"to be or not {i}".encode() for i in range(40))]
    hasher = MinHasher(64, seed=5, scheme=scheme)
    permuted = hasher.permute(sha1_hash32(items))
    assert permuted.shape == (64, len(items)) and permuted.dtype == (np.uint32 if scheme == "affine32" else np.uint64)
    for j, item in enumerate(items):
        m = MinHash(64, seed=5, scheme=scheme)
        m.update(item)
        assert np.array_equal(permuted[:, j], m.hashvalues), item
