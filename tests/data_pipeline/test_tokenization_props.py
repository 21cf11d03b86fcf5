"""分词器的性质测试（hypothesis）：任意 Unicode 往返；流式编码 == 整体编码；与 tiktoken 逐 id 一致。"""

from __future__ import annotations

from functools import cache

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from data_pipeline.tokenization import GPT2_PATTERN, GPT4_PATTERN, Tokenizer, train_bpe_naive

SPECIALS = ["<|endoftext|>", "<|a|>", "<|a|><|b|>"]
# 容易踩到边界的字符：缩写的 ' 与字母、各种空白、数字串、特殊 token 的碎片、多字节字符
TRICKY = list("'sdmtlvre ll\n\r\t 0123<|>ab") + ["\u00a0", "\u3000", "\u2028", "é", "生", "🙂", "<|a|", "<|end"]

TRAIN_TEXT = (
    "It's the end of the world as we know it, and I'll feel fine. We've 12345 reasons!!\n\n"
    "  Indented\tline\r\n生存还是毁灭，这是一个问题。🙂🙂 café naïve <|endoftext|> they're here's\n"
) * 30


@cache
def make_tokenizer(pattern: str, with_specials: bool) -> Tokenizer:
    specials = SPECIALS if with_specials else []
    vocab, merges = train_bpe_naive(TRAIN_TEXT, 256 + len(specials) + 100, specials, pattern=pattern)
    return Tokenizer(vocab, merges, specials, pattern=pattern)


texts = st.lists(st.one_of(st.characters(codec="utf-8"), st.sampled_from(TRICKY)), max_size=80).map("".join)
texts_with_specials = st.lists(st.one_of(texts, st.sampled_from(SPECIALS)), max_size=8).map("".join)
patterns = st.sampled_from([GPT2_PATTERN, GPT4_PATTERN])
fast = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@fast
@given(text=texts, pattern=patterns)
def test_roundtrip_arbitrary_unicode(text, pattern):
    tok = make_tokenizer(pattern, with_specials=False)
    assert tok.decode(tok.encode(text)) == text


@fast
@given(text=texts_with_specials, pattern=patterns)
def test_roundtrip_with_special_tokens(text, pattern):
    tok = make_tokenizer(pattern, with_specials=True)
    ids = tok.encode(text)
    assert tok.decode(ids) == text
    # 每个完整出现的特殊 token 都编码成它自己的一个 id（最长的优先）
    assert ids.count(tok.special_ids["<|endoftext|>"]) == text.count("<|endoftext|>")


@fast
@given(text=texts_with_specials, cuts=st.lists(st.integers(0, 400), max_size=12), flush=st.integers(1, 40), pattern=patterns)
def test_encode_iterable_equals_encode(text, cuts, flush, pattern):
    tok = make_tokenizer(pattern, with_specials=True)
    bounds = sorted({min(c, len(text)) for c in cuts} | {0, len(text)})
    chunks = [text[a:b] for a, b in zip(bounds, bounds[1:])]
    assert list(tok.encode_iterable(iter(chunks), flush_chars=flush)) == tok.encode(text)


@pytest.mark.parametrize("pattern", [GPT2_PATTERN, GPT4_PATTERN])
def test_matches_tiktoken_on_arbitrary_text(pattern):
    tok = make_tokenizer(pattern, with_specials=False)
    enc = tok.to_tiktoken()

    @fast
    @given(text=texts)
    def check(text):
        assert tok.encode(text) == enc.encode_ordinary(text)

    check()
