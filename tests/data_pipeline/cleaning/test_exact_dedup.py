"""精确去重（data_pipeline/cleaning/exact_dedup.py）。

参考：后缀数组与 LCP 对照 pydivsufsort 的 divsufsort / kasai（随机串与莎士比亚）以及朴素排序；
重复片段对照逐位置暴力搜索（每个起点与所有更早起点比最长公共前缀）；文档哈希跨进程不变。
"""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from data_pipeline.cleaning.exact_dedup import (
    dedup_documents,
    dedup_lines,
    dedup_substrings,
    doc_hash,
    lcp_array,
    lcp_kasai,
    repeated_spans,
    suffix_array,
    suffix_array_naive,
)
from data_pipeline.corpora import load_corpus

pydivsufsort = pytest.importorskip("pydivsufsort")


def random_bytes(rng: np.random.Generator, n: int, alphabet: int) -> bytes:
    return rng.integers(0, alphabet, n).astype(np.uint8).tobytes()


@pytest.fixture(scope="module")
def shakespeare() -> bytes:
    return load_corpus("shakespeare").encode("utf-8")


# ---------------------------------------------------------------------------
# 后缀数组与 LCP
# ---------------------------------------------------------------------------
def test_suffix_array_and_lcp_equal_pydivsufsort_on_random_bytes():
    rng = np.random.default_rng(0)
    cases = [b"a", b"banana", b"\x00" * 50, b"ab" * 40 + b"a", bytes(range(256)) * 3]
    for _ in range(150):  # 小字母表 → 大量长重复，正好考验倍增与"短后缀在前"的规则
        cases.append(random_bytes(rng, int(rng.integers(1, 400)), int(rng.integers(1, 5))))
    for _ in range(20):
        cases.append(random_bytes(rng, int(rng.integers(1, 3000)), 256))
    for data in cases:
        sa = suffix_array(data)
        ref = pydivsufsort.divsufsort(data)
        assert np.array_equal(sa, ref), data[:40]
        ref_lcp = pydivsufsort.kasai(data, ref)
        assert np.array_equal(lcp_array(data, sa), ref_lcp)
        assert np.array_equal(lcp_kasai(data, sa), ref_lcp)


def test_suffix_array_and_lcp_equal_pydivsufsort_on_shakespeare(shakespeare):
    data = shakespeare[:1_000_000]
    sa = suffix_array(data)
    ref = pydivsufsort.divsufsort(data)
    assert np.array_equal(sa, ref)
    ref_lcp = pydivsufsort.kasai(data, ref)
    assert np.array_equal(lcp_array(data, sa), ref_lcp)
    assert ref_lcp.max() >= 100  # 真有长重复：逐 8 字节比较走了多轮
    small = data[:100_000]  # Kasai 是 Python 循环，取一小段
    assert np.array_equal(lcp_kasai(small, suffix_array(small)), pydivsufsort.kasai(small, pydivsufsort.divsufsort(small)))


@settings(max_examples=80, deadline=None)
@given(st.binary(min_size=1, max_size=120))
def test_suffix_array_equals_naive_sort(data):
    assert np.array_equal(suffix_array(data), suffix_array_naive(data))


def test_lcp_cap_is_min_of_lcp_and_cap(shakespeare):
    data = shakespeare[:200_000]
    sa = suffix_array(data)
    full = lcp_array(data, sa)
    for cap in (0, 1, 7, 8, 9, 50):
        assert np.array_equal(lcp_array(data, sa, cap=cap), np.minimum(full, cap))


def test_uint8_array_input_and_empty():
    data = np.frombuffer(b"mississippi", dtype=np.uint8)
    assert np.array_equal(suffix_array(data), pydivsufsort.divsufsort(b"mississippi"))
    assert suffix_array(b"").shape == (0,)
    assert lcp_array(b"", suffix_array(b"")).shape == (0,)


# ---------------------------------------------------------------------------
# 重复片段：对照暴力搜索
# ---------------------------------------------------------------------------
def brute_force_spans(docs: list[bytes], min_length: int) -> list[list[tuple[int, int]]]:
    """逐个起点 (d, s)：与所有更早的起点（更早的文档或本篇更早的位置）比最长公共前缀 m，m ≥ L 就删 [s, s+m)。"""
    out = []
    for d, doc in enumerate(docs):
        removed = np.zeros(len(doc), dtype=bool)
        for s in range(len(doc)):
            best = 0
            for e in range(d + 1):
                other = docs[e]
                for t in range(len(other) if e < d else s):
                    m = 0
                    while s + m < len(doc) and t + m < len(other) and doc[s + m] == other[t + m]:
                        m += 1
                    best = max(best, m)
            if best >= min_length:
                removed[s : s + best] = True
        edges = np.diff(np.concatenate(([0], removed.astype(np.int8), [0])))
        out.append(list(zip(np.flatnonzero(edges == 1).tolist(), np.flatnonzero(edges == -1).tolist())))
    return out


@settings(max_examples=60, deadline=None)
@given(
    st.lists(st.binary(min_size=0, max_size=30).map(lambda b: bytes(c % 3 + 97 for c in b)), min_size=1, max_size=5),
    st.integers(min_value=1, max_value=6),
)
def test_repeated_spans_equal_brute_force(docs, min_length):
    assert repeated_spans(docs, min_length) == brute_force_spans(docs, min_length)


def test_repeated_spans_random_corpus_equal_brute_force():
    rng = np.random.default_rng(1)
    for _ in range(10):
        docs = [random_bytes(rng, int(rng.integers(0, 60)), 2) for _ in range(int(rng.integers(1, 5)))]
        for min_length in (3, 5, 8):
            assert repeated_spans(docs, min_length) == brute_force_spans(docs, min_length)


def test_matches_do_not_cross_document_boundaries():
    # "abc|def" 与 "abcdef"：拼接串里 abc 0xFF def 与 abcdef 只共享 "abc"，不能当成 6 字节的重复
    assert repeated_spans([b"abc", b"def", b"abcdef"], 4) == [[], [], []]
    assert repeated_spans([b"abc", b"def", b"abcdef"], 3) == [[], [], [(0, 6)]]


# ---------------------------------------------------------------------------
# 子串去重（str 层）
# ---------------------------------------------------------------------------
def test_dedup_substrings_keeps_first_occurrence():
    notice = "Copyright notice: redistribution is permitted provided that this paragraph is kept intact."
    docs = ["Alpha begins here. " + notice, "Beta is different. " + notice + " Beta ends.", "Gamma has none."]
    out, removed = dedup_substrings(docs, min_length=50)
    assert out[0] == docs[0]
    # 删掉的是 ". " + 声明：句号与空格在第一篇里也紧挨着声明出现过，它们属于同一段重复
    assert out[1] == "Beta is different Beta ends."
    assert out[2] == docs[2]
    assert removed == sum(len(d.encode()) for d in docs) - sum(len(o.encode()) for o in out) > 0


def test_dedup_substrings_snaps_to_utf8_characters():
    # "席" = E5 B8 AD，"中" = E4 B8 AD：重复的字节片段从"中"的第 2 个字节开始——这个字符不能被删一半
    shared = "莎士比亚的十四行诗在这里又出现了一次，后来的那次要被删掉。"
    docs = ["席" + shared, "中" + shared]
    assert repeated_spans([d.encode() for d in docs], 20)[1] == [(1, len(docs[1].encode()))]
    out, _ = dedup_substrings(docs, min_length=20)
    assert out[0] == docs[0]
    assert out[1] == "中"
    rng = np.random.default_rng(2)
    alphabet = list("ab中文é🙂")
    for _ in range(30):
        docs = ["".join(rng.choice(alphabet, int(rng.integers(0, 40)))) for _ in range(4)]
        out, removed = dedup_substrings(docs, min_length=6)  # 能解码就说明没有半个字符
        assert all(isinstance(o, str) for o in out) and removed >= 0


def test_repeated_spans_on_shakespeare_occur_earlier(shakespeare):
    # 大输入上无法暴力对照，改查性质：被删区间里每个长 L 的窗口都在拼接串的更早位置出现过
    speeches = [s.encode("utf-8") for s in shakespeare[:300_000].decode("utf-8").split("\n\n") if s.strip()]
    min_length = 50
    spans = repeated_spans(speeches, min_length)
    joined = b"\xff".join(speeches)
    starts = np.concatenate(([0], np.cumsum([len(s) + 1 for s in speeches])[:-1]))
    n_checked = 0
    for doc, doc_spans, base in zip(speeches, spans, starts.tolist()):
        for s, e in doc_spans:
            assert e - s >= min_length
            for p in range(s, e - min_length + 1):
                assert joined.find(doc[p : p + min_length]) < base + p
                n_checked += 1
    assert n_checked > 0
    out, removed = dedup_substrings([s.decode("utf-8") for s in speeches], min_length)
    assert removed == sum(e - s for doc_spans in spans for s, e in doc_spans)  # 纯 ASCII：无需收缩到字符边界
    assert out[0] == speeches[0].decode("utf-8")


# ---------------------------------------------------------------------------
# 整篇与行
# ---------------------------------------------------------------------------
def test_dedup_documents_and_normalize():
    docs = ["Hello world", "hello   WORLD", "Hello world", "other"]
    assert dedup_documents(docs) == [0, 1, 3]
    assert dedup_documents(docs, normalize=lambda s: " ".join(s.lower().split())) == [0, 3]


def test_doc_hash_is_stable_across_processes():
    # Python 的 hash(str) 每个进程加盐；blake2b 不会——多进程流水线里这是去重正确的前提
    code = "from data_pipeline.cleaning.exact_dedup import doc_hash; print(doc_hash('To be, or not to be'))"
    values = set()
    for salt in ("1", "2"):
        env = {**os.environ, "PYTHONHASHSEED": salt}
        values.add(subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True).stdout)
    assert values == {f"{doc_hash('To be, or not to be')}\n"}


def test_dedup_lines_removes_repeated_lines_keeps_blank_lines():
    docs = ["nav: home | about\nFirst article text.\n\nfooter (c) site", "nav: home | about\nSecond text.\n\nfooter (c) site"]
    out, removed = dedup_lines(docs)
    assert out == [docs[0], "Second text.\n"]
    assert removed == 2
    out, removed = dedup_lines(["A line", "a LINE"], normalize=str.lower)
    assert out == ["A line", ""] and removed == 1


# ---------------------------------------------------------------------------
# 错误输入
# ---------------------------------------------------------------------------
def test_bad_input_raises_clear_errors():
    with pytest.raises(ValueError, match="bytes"):
        suffix_array("not bytes")
    with pytest.raises(ValueError, match="uint8"):
        suffix_array(np.arange(5))
    with pytest.raises(ValueError, match="min_length"):
        repeated_spans([b"abc"], 0)
    with pytest.raises(ValueError, match="0xFF"):
        repeated_spans([b"ab\xffcd"], 2)
    with pytest.raises(ValueError, match="str"):
        dedup_substrings([b"bytes"], 5)
    with pytest.raises(ValueError, match="长度"):
        lcp_array(b"abc", np.array([0, 1]))
    with pytest.raises(ValueError, match="排列"):
        lcp_kasai(b"abc", np.array([0, 0, 1]))


# ---------------------------------------------------------------------------
# 练习模式用的单独对照（utils/exercise_parts/cleaning.py）：后缀数组与 LCP 各自对照 pydivsufsort，互不依赖
# ---------------------------------------------------------------------------
def repetitive_cases() -> list[bytes]:
    """长重复（倍增要走好几轮）、短后缀排在前面、全部 256 个字节值、真实文本。"""
    rng = np.random.default_rng(3)
    cases = [b"a", b"banana", b"\x00" * 300, b"\xff" * 70 + b"\x00", b"ab" * 150 + b"a", b"abcabcabd" * 30,
             bytes(range(256)) * 2, load_corpus("shakespeare")[:20_000].encode("utf-8")]
    cases += [random_bytes(rng, int(rng.integers(1, 500)), int(rng.integers(1, 4))) for _ in range(40)]
    return cases


def test_suffix_array_alone_equals_pydivsufsort():
    for data in repetitive_cases():
        sa = suffix_array(data)
        assert sa.dtype == np.int64 and np.array_equal(sa, pydivsufsort.divsufsort(data)), data[:40]
    assert np.array_equal(suffix_array(np.frombuffer(b"mississippi", dtype=np.uint8)), [10, 7, 4, 1, 0, 9, 8, 6, 3, 5, 2])
    assert suffix_array(b"").shape == (0,)


def test_lcp_kasai_equals_pydivsufsort_kasai_on_its_suffix_array():
    for data in repetitive_cases():
        sa = pydivsufsort.divsufsort(data)  # 参考的后缀数组：LCP 的对照不依赖我们的 suffix_array
        assert np.array_equal(lcp_kasai(data, sa), pydivsufsort.kasai(data, sa)), data[:40]


def test_lcp_array_equals_pydivsufsort_kasai_on_its_suffix_array():
    for data in repetitive_cases():
        sa = pydivsufsort.divsufsort(data)
        ref = pydivsufsort.kasai(data, sa)
        assert np.array_equal(lcp_array(data, sa), ref), data[:40]
        for cap in (0, 1, 8, 20):
            assert np.array_equal(lcp_array(data, sa, cap=cap), np.minimum(ref, cap))
    assert lcp_array(b"", np.zeros(0, dtype=np.int64)).shape == (0,)
    assert lcp_array(b"x", np.zeros(1, dtype=np.int64)).tolist() == [0]
