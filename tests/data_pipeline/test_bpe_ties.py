"""BPE 训练的平局规则：在真的有平局（含"前缀平局"）的小语料上，逐条对照手算的 merges。

仓库宣称的规则（basic.py、regex_bpe.py、fast_train.py 的文档）：次数相同的 pair 里，合并
(vocab[a], vocab[b]) 按 bytes 元组比较更大的那个（Python 的 bytes 比较：逐字节比，真前缀更小，b"a" < b"ab"）。
以前的"平局"测试只拿快速训练器对照本仓库的朴素训练器，而那份"前缀平局"语料里其实没有平局；
这里的期望值都是手算的（推导写在每个语料旁边），不依赖本仓库的任何训练器。

与 HF tokenizers 的 BpeTrainer 的关系：没有平局时任何正确的 BPE 训练器给出同样的 merges，
所以在平局之前逐条等于 BpeTrainer；平局时 BpeTrainer 取较小的 pair，本仓库取较大的——第二个测试把两点都钉住。
"""

from __future__ import annotations

import json
import random
from collections import Counter

import pytest
from tokenizers import Tokenizer as HFTokenizer
from tokenizers import models, pre_tokenizers, trainers

from data_pipeline.tokenization import Tokenizer, train_bpe, train_bpe_naive
from data_pipeline.tokenization.basic import BasicTokenizer
from data_pipeline.tokenization.tokenizer import bytes_to_unicode

# 语料 → 手算的 merges（GPT-2 预分词：字母连成一个预 token，前面的一个空格归它；"\n" 单独成一个预 token，没有 pair）
TIE_CORPORA = {
    # 预 token "ab"、" ba"：(a,b)=(' ',b)=(b,a)=1 三者平局，b"b" 最大 → (b,a)；
    # 剩下 (a,b)=(' ',ba)=1 平局，b"a" > b" " → (a,b)；最后只剩 (' ',ba)
    "three_way_tie": ("ab ba", [(b"b", b"a"), (b"a", b"b"), (b" ", b"ba")]),
    # 预 token abc×2、ab×1、az×2：(a,b)=3 唯一最多 → (a,b)；之后 (ab,c)=2 与 (a,z)=2 平局。
    # 第一个元素 b"a" 是 b"ab" 的真前缀，b"ab" 更大 → (ab,c)。
    # （把前缀当成更大、或把两段字节拼起来比较 "az" > "abc"，都会错选 (a,z)）
    "prefix_tie_first": ("abc\nabc\nab\naz\naz", [(b"a", b"b"), (b"ab", b"c"), (b"a", b"z")]),
    # 预 token ab×3、cab×2、ca×2：(a,b)=5 > (c,a)=4 → (a,b)；cab 变成 [c,ab]，于是 (c,ab)=2 与 (c,a)=2 平局。
    # 第一个元素相同，第二个元素 b"a" 是 b"ab" 的真前缀 → (c,ab)；最后 (c,a)
    "prefix_tie_second": ("ab\nab\nab\ncab\ncab\nca\nca", [(b"a", b"b"), (b"c", b"ab"), (b"c", b"a")]),
}


@pytest.mark.parametrize("name", sorted(TIE_CORPORA))
def test_trainers_follow_the_tie_rule_on_hand_derived_corpora(tmp_path, name):
    text, expected = TIE_CORPORA[name]
    path = tmp_path / "corpus.txt"
    path.write_text(text, encoding="utf-8")
    vocab_size = 256 + len(expected)
    fast_vocab, fast = train_bpe(path, vocab_size, progress=False)
    naive_vocab, naive = train_bpe_naive(text, vocab_size)
    assert fast == expected
    assert naive == expected
    assert fast_vocab == naive_vocab and [fast_vocab[256 + i] for i in range(len(expected))] == [
        a + b for a, b in expected
    ]
    # 再多要一次合并：语料里已经没有 pair 了，两个训练器都要清楚地报错，而不是编造一个 token
    with pytest.raises(ValueError, match="vocab_size"):
        train_bpe(path, vocab_size + 1, progress=False)
    with pytest.raises(ValueError, match="vocab_size"):
        train_bpe_naive(text, vocab_size + 1)


def test_basic_tokenizer_tie_rule_without_pretokenization():
    # 整段字节 a b c a b：(a,b)=2 唯一最多 → (a,b)，序列变成 [ab, c, ab]；
    # (ab,c)=1 与 (c,ab)=1 平局，b"c" > b"ab" → (c,ab)；最后 [ab, cab] → (ab,cab)
    tok = BasicTokenizer()
    tok.train("abcab", 256 + 3)
    assert [(tok.vocab[a], tok.vocab[b]) for a, b in tok.merges] == [(b"a", b"b"), (b"c", b"ab"), (b"ab", b"cab")]


def _synthetic_text(n_words: int = 900) -> str:
    """由几个音节随机拼成的"英文"：频率分布足够平，前几十次合并里就会出现平局。"""
    rng = random.Random(0)
    syllables = ["th", "e", "an", "d", "o", "f", "in", "er", "re", "s", "at", "on", "l", "ing"]
    words = ["".join(rng.choice(syllables) for _ in range(rng.randint(1, 3))) for _ in range(n_words)]
    return " ".join(words) + "\n"


def _hf_bpe_merges(text: str, n_merges: int) -> list[tuple[bytes, bytes]]:
    unicode_to_byte = {c: b for b, c in bytes_to_unicode().items()}
    hf = HFTokenizer(models.BPE())
    hf.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    trainer = trainers.BpeTrainer(vocab_size=256 + n_merges, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  show_progress=False, special_tokens=[])
    hf.train_from_iterator([text], trainer)
    raw = json.loads(hf.to_str())["model"]["merges"]  # 公开 API 不直接给出 merges：从序列化的模型里读
    pairs = [m if isinstance(m, list) else m.split(" ") for m in raw]
    return [tuple(bytes(unicode_to_byte[c] for c in s) for s in p) for p in pairs]


def test_merges_equal_hf_bpe_trainer_until_a_tie_and_take_the_greater_pair_at_ties(tmp_path):
    text = _synthetic_text()
    n = 60
    path = tmp_path / "corpus.txt"
    path.write_text(text, encoding="utf-8")
    _, ours = train_bpe(path, 256 + n, progress=False)
    hf = _hf_bpe_merges(text, n)
    # 独立重放：用 HF 的预分词切词，每一步重新数 pair，找出次数最多的那一组（可能不止一个）
    unicode_to_byte = {c: b for b, c in bytes_to_unicode().items()}
    words = Counter(bytes(unicode_to_byte[c] for c in w)
                    for w, _ in pre_tokenizers.ByteLevel(add_prefix_space=False).pre_tokenize_str(text))
    seqs = {w: [bytes([c]) for c in w] for w in words}
    n_ties = 0
    agree_with_hf = True
    for i, merge in enumerate(ours):
        counts = Counter()
        for w, seq in seqs.items():
            for pair in zip(seq, seq[1:]):
                counts[pair] += words[w]
        top = max(counts.values())
        tied = sorted(p for p, c in counts.items() if c == top)
        assert merge == tied[-1], (i, tied)  # 平局时取 bytes 元组最大的那个
        if agree_with_hf:
            if len(tied) == 1:
                assert hf[i] == merge, i  # 没有平局：与 BpeTrainer 逐条相同
            else:
                n_ties += 1
                assert hf[i] in tied  # BpeTrainer 也从同一组里挑，只是规则不同
                agree_with_hf = hf[i] == merge
        for w, seq in seqs.items():  # 把这次合并施加到每个词上（从左到右、不重叠）
            out, j = [], 0
            while j < len(seq):
                if j + 1 < len(seq) and (seq[j], seq[j + 1]) == merge:
                    out.append(seq[j] + seq[j + 1])
                    j += 2
                else:
                    out.append(seq[j])
                    j += 1
            seqs[w] = out
    assert n_ties >= 1 and not agree_with_hf  # 这份语料确实走到了平局，并且在那里两种规则分道扬镳


@pytest.mark.parametrize("name", sorted(TIE_CORPORA))
def test_tokenizer_from_tie_corpora_encodes_like_tiktoken(tmp_path, name):
    text, expected = TIE_CORPORA[name]
    vocab, merges = train_bpe_naive(text, 256 + len(expected))
    tok = Tokenizer(vocab, merges)
    probe = text + " abcaz cabab ba ab"
    assert tok.encode(probe) == tok.to_tiktoken().encode(probe)
    assert tok.decode(tok.encode(probe)) == probe
