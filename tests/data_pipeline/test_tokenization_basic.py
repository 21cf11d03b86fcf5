"""第 1 课（data_pipeline/tokenization/basic.py）：无预分词的字节级 BPE。

参考：把整段文本当成一个预 token（正则 `(?s).+`）时，朴素参考训练器 train_bpe_naive 看到的序列与 basic 完全相同，
所以两者的合并序列必须逐条相等；编码再解码必须还原原文。
"""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from data_pipeline.tokenization import train_bpe_naive
from data_pipeline.tokenization.basic import BasicTokenizer

WHOLE_TEXT = r"(?s).+"  # 一个预 token 覆盖全部文本：等于"不做预分词"

CORPORA = [
    "aaabdaaabac abracadabra banana bandana " * 5,
    "low lower lowest newer wider new " * 8,
    "你好，世界！hello 世界 " * 6 + "emoji 🙂🙂 ok",
]


@pytest.mark.parametrize("text", CORPORA)
@pytest.mark.parametrize("n_merges", [1, 5, 20])
def test_basic_merges_equal_naive_reference_without_pretokenization(text, n_merges):
    basic = BasicTokenizer()
    basic.train(text, 256 + n_merges)
    vocab, merges = train_bpe_naive(text, 256 + n_merges, pattern=WHOLE_TEXT)
    ours = [(basic.vocab[a], basic.vocab[b]) for a, b in basic.merges]
    assert ours == merges
    assert basic.vocab == vocab


@settings(max_examples=60, deadline=None)
@given(st.text(min_size=0, max_size=60))
def test_basic_encode_decode_round_trip(text):
    basic = BasicTokenizer()
    basic.train(CORPORA[2], 256 + 20)
    ids = basic.encode(text)
    assert basic.decode(ids) == text
    assert all(0 <= i < 276 for i in ids)


def test_basic_rejects_bad_vocab_sizes():
    with pytest.raises(ValueError, match="256"):
        BasicTokenizer().train("abc", 100)
    with pytest.raises(ValueError, match="vocab_size"):
        BasicTokenizer().train("ab", 300)
