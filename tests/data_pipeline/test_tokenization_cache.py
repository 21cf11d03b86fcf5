"""Tokenizer 编码缓存与冷启动快路径：缓存容量溢出、分多次调用、字节 id 不等于字节值时，结果都与 tiktoken 逐 id 相同。"""

from __future__ import annotations

import pytest

from data_pipeline.tokenization import Tokenizer, train_bpe
from data_pipeline.tokenization import tokenizer as tokenizer_module

EOT = "<|endoftext|>"
MIXED = "Hello world!! I'm here, isn't it? 12345 apples\n\n  生存还是毁灭 🙂 café naïve\n"


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    from data_pipeline.corpora import load_corpus

    text = load_corpus("shakespeare")[:30_000] + MIXED * 5
    path = tmp_path_factory.mktemp("bpe") / "corpus.txt"
    path.write_text(text, encoding="utf-8")
    vocab, merges = train_bpe(path, 600, [EOT], progress=False)
    return vocab, merges, text


def test_small_cache_over_many_calls_matches_tiktoken(trained, monkeypatch):
    vocab, merges, text = trained
    monkeypatch.setattr(tokenizer_module, "CACHE_MAX_ENTRIES", 50)
    tok = Tokenizer(vocab, merges, [EOT])
    enc = tok.to_tiktoken()
    # 同一段文本里不同预 token 远多于 50 个：走"新预 token 多于容量、不进缓存"的分支
    assert tok.encode(text) == enc.encode(text, allowed_special="all")
    assert len(tok._cache) <= 50
    # 分成小段反复调用：缓存部分命中、部分未命中，并不断清空
    for start in range(0, 6000, 137):
        part = text[start : start + 211] + EOT + MIXED[: start % 40]
        assert tok.encode(part) == enc.encode(part, allowed_special="all")
        assert len(tok._cache) <= 50
    stream = text[:5000] + EOT + text[5000:9000]
    assert list(tok.encode_iterable([stream[i : i + 97] for i in range(0, len(stream), 97)], flush_chars=500)) == (
        enc.encode(stream, allowed_special="all")
    )


def test_byte_ids_not_equal_to_byte_values(trained):
    vocab, merges, text = trained
    # 把单字节 token 的 id 轮换一位：字节 b 的 id 变成 (b + 1) % 256，合并出的 token 不变
    rotated = {((i + 1) % 256 if i < 256 else i): b for i, b in vocab.items()}
    plain, shifted = Tokenizer(vocab, merges, [EOT]), Tokenizer(rotated, merges, [EOT])
    assert plain._byte_id_is_byte and not shifted._byte_id_is_byte
    expected = [(i + 1) % 256 if i < 256 else i for i in plain.encode(text)]
    assert shifted.encode(text) == expected
    assert shifted.decode(expected) == text
