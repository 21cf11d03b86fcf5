"""data_pipeline.tokenization：快速训练器 == 朴素参考；Tokenizer == tiktoken == Hugging Face；坏输入；命令行。"""

from __future__ import annotations

import itertools
import json
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from data_pipeline.tokenization import GPT2_PATTERN, GPT4_PATTERN, Tokenizer, train_bpe, train_bpe_naive
from data_pipeline.tokenization.fast_train import _count_chunk, chunk_boundaries, count_pretokens_parallel
from data_pipeline.tokenization.regex_bpe import pretoken_counts

EOT = "<|endoftext|>"

MIXED = (
    "Hello world!! I'm here, isn't it? They'll say we've 12345 apples... 3.14159\n\n"
    "   indented\tline\r\nwindows line\n生存还是毁灭，这是一个问题。🙂🙂 café naïve\n"
    f"{EOT}second doc: it's the the the end{EOT}{EOT}third\u00a0doc\u3000with odd spaces  \n"
)


def shakespeare_text() -> str:
    from data_pipeline.corpora import load_corpus

    return load_corpus("shakespeare")


@pytest.fixture(scope="module")
def slice_text() -> str:
    return shakespeare_text()[:40_000]


def write(tmp_path: Path, text: str, name: str = "corpus.txt") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


# ---------------------------------------------------------------------------
# 快速训练器 == 朴素参考
# ---------------------------------------------------------------------------
CORPORA = {
    "shakespeare_slice": lambda s: s,
    "with_specials": lambda s: s.replace("\n\n", f"\n\n{EOT}", 80),
    "mixed_unicode": lambda s: MIXED * 20 + s[:8000],
    "ties": lambda s: "ab cd ef gh ab cd ef gh ba dc fe hg " * 7 + "x y z",
}


@pytest.mark.parametrize("corpus", sorted(CORPORA))
@pytest.mark.parametrize("n_merges", [1, 40, 250])
def test_fast_trainer_equals_naive(tmp_path, slice_text, corpus, n_merges):
    text = CORPORA[corpus](slice_text)
    specials = [EOT]
    vocab_size = 256 + len(specials) + n_merges
    if corpus == "ties":
        vocab_size = 256 + 1 + min(n_merges, 19)  # 这个小语料一共只能合并 19 次
    ref_vocab, ref_merges = train_bpe_naive(text, vocab_size, specials)
    vocab, merges = train_bpe(write(tmp_path, text), vocab_size, specials, progress=False)
    assert merges == ref_merges
    assert vocab == ref_vocab
    assert len(vocab) == vocab_size and sorted(vocab) == list(range(vocab_size))
    assert vocab[256] == EOT.encode()


@pytest.mark.parametrize("specials", [[], [EOT, "<|pad|>"]])
def test_fast_trainer_equals_naive_gpt4_pattern(tmp_path, slice_text, specials):
    text = slice_text[:20_000] + MIXED * 5
    vocab_size = 256 + len(specials) + 200
    ref = train_bpe_naive(text, vocab_size, specials, pattern=GPT4_PATTERN)
    ours = train_bpe(write(tmp_path, text), vocab_size, specials, pattern=GPT4_PATTERN, progress=False)
    assert ours == ref


def test_tie_break_merges_lexicographically_greater_pair(tmp_path):
    # 三个 pair 各出现一次：(a,b) (' ',c) (c,d)；按 bytes 元组比较 (b'c', b'd') 最大
    for trainer in ("naive", "fast"):
        text = "ab cd"
        if trainer == "naive":
            _, merges = train_bpe_naive(text, 257)
        else:
            _, merges = train_bpe(write(tmp_path, text), 257, progress=False)
        assert merges == [(b"c", b"d")]
    # 前缀关系：(b'a', b'b') 与 (b'a', b'bc') 平局时后者更大
    _, merges = train_bpe_naive("ab abc abc ab", 256 + 3)
    _, fast = train_bpe(write(tmp_path, "ab abc abc ab"), 256 + 3, progress=False)
    assert fast == merges


def test_special_tokens_are_never_merged(tmp_path):
    text = f"ab{EOT}ab{EOT}ab{EOT}<|end" * 30
    vocab, merges = train_bpe(write(tmp_path, text), 256 + 1 + 5, [EOT], progress=False)  # 正好用尽所有 pair
    learned = [vocab[i] for i in range(257, len(vocab))]
    # 正文里的 "<|end"（不完整的特殊 token）可以被合并，但合并绝不会跨过完整的特殊 token
    assert not any(EOT.encode() in t for t in learned)
    assert not any(t.startswith(b"b<") or t.endswith(b">a") for t in learned)


def test_parallel_pretokenization_equals_serial(tmp_path):
    text = shakespeare_text()[:1_300_000]
    text = text.replace("\n\n", f"\n\n{EOT}", 500)
    path = write(tmp_path, text)
    assert count_pretokens_parallel(path, [EOT], num_processes=2) == pretoken_counts(text, [EOT])


@pytest.mark.parametrize("pattern", [GPT2_PATTERN, GPT4_PATTERN])
@pytest.mark.parametrize("specials", [[EOT], ["<|a|>", "<|a|><|b|>", "|><|"], []])
def test_chunks_cut_only_at_safe_points(tmp_path, pattern, specials):
    # 很多块 + 互相重叠的特殊 token + 各种空白：逐块统计之和必须等于整体统计
    pieces = ["word.\nNext", "<|a|><|b|>", "<|a|>x", f"y{EOT}z", "  \n\n  ", "it's\n'll", "\r\nA\nB", "数字\n123"]
    rng = np.random.default_rng(0)
    text = "".join(pieces[i] for i in rng.integers(0, len(pieces), 3000))
    path = write(tmp_path, text)
    bounds = chunk_boundaries(path, 200, specials, pattern)
    assert bounds[0] == 0 and bounds[-1] == path.stat().st_size and len(bounds) > 20
    total = Counter()
    for start, end in zip(bounds, bounds[1:]):
        total.update(_count_chunk((str(path), start, end, specials, pattern)))
    assert total == pretoken_counts(text, specials, pattern)


# ---------------------------------------------------------------------------
# 坏输入
# ---------------------------------------------------------------------------
def test_bad_vocab_size(tmp_path):
    path = write(tmp_path, "hello")
    with pytest.raises(ValueError, match="vocab_size=257"):
        train_bpe(path, 257, [EOT, "<|pad|>"], progress=False)
    with pytest.raises(TypeError, match="vocab_size"):
        train_bpe(path, 300.0, progress=False)
    with pytest.raises(ValueError, match="只够合并"):
        train_bpe(path, 1000, progress=False)
    with pytest.raises(ValueError, match="只够合并"):
        train_bpe_naive("hello", 1000)


def test_empty_and_missing_corpus(tmp_path):
    with pytest.raises(ValueError, match="空"):
        train_bpe(write(tmp_path, ""), 300, progress=False)
    with pytest.raises(FileNotFoundError, match="不存在"):
        train_bpe(tmp_path / "nope.txt", 300, progress=False)


def test_non_utf8_corpus_names_byte_offset(tmp_path):
    path = tmp_path / "latin1.txt"
    path.write_bytes(b"hello world\n" * 3 + "café".encode("latin-1"))
    with pytest.raises(ValueError, match="字节偏移 39"):
        train_bpe(path, 300, progress=False)


def test_bad_special_tokens(tmp_path):
    path = write(tmp_path, "hello hello")
    with pytest.raises(ValueError, match="空字符串"):
        train_bpe(path, 300, [""], progress=False)
    with pytest.raises(ValueError, match="重复"):
        train_bpe(path, 300, [EOT, EOT], progress=False)
    with pytest.raises(TypeError, match="列表"):
        train_bpe(path, 300, EOT, progress=False)
    with pytest.raises(ValueError, match="重复"):
        Tokenizer({i: bytes([i]) for i in range(256)}, [], ["<a>", "<a>"])


def test_decode_unknown_id_and_invalid_utf8(tokenizer):
    with pytest.raises(TypeError, match="需要 str"):
        tokenizer.encode(b"bytes")
    with pytest.raises(ValueError, match="id 999999 不在词表里"):
        tokenizer.decode([1, 999999])
    assert tokenizer.decode([0xE7, 0x94]) == "\ufffd"  # 一个汉字的前两个字节
    assert tokenizer.decode(tokenizer.encode("生") + [0xE7]) == "生\ufffd"


def test_special_token_with_same_bytes_as_ordinary_token(tmp_path):
    # 特殊 token "\n" 与字节 10 的字节相同：各自拿到不同的 id，encode_ordinary 里的换行仍是字节 10
    text = "ab ab ab\nab\n" * 20
    vocab, merges = train_bpe(write(tmp_path, text), 256 + 1 + 2, ["\n"], progress=False)
    assert merges == [(b"a", b"b"), (b" ", b"ab")]
    tok = Tokenizer(vocab, merges, ["\n"])
    assert tok.special_ids == {"\n": 256}
    assert tok.encode("x\nab ab") == [ord("x"), 256, 257, 258]
    assert tok.encode_ordinary("x\n") == [ord("x"), 10]
    # 外部给的 vocab 里特殊 token 与合并结果同字节、又没有单独的 id：追加一个新 id
    tok = Tokenizer(vocab, merges, ["ab"])
    assert tok.special_ids == {"ab": 259} and tok.encode("ab") == [259] and tok.encode_ordinary("ab") == [257]


def test_inconsistent_vocab_and_merges():
    vocab = {i: bytes([i]) for i in range(256)}
    with pytest.raises(ValueError, match="不配套"):
        Tokenizer(vocab, [(b"a", b"b")])
    with pytest.raises(ValueError, match="单字节"):
        Tokenizer({i: bytes([i]) for i in range(255)}, [])


# ---------------------------------------------------------------------------
# Tokenizer == tiktoken == Hugging Face（小切片，快）
# ---------------------------------------------------------------------------
@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory, slice_text) -> Tokenizer:
    path = tmp_path_factory.mktemp("tok") / "train.txt"
    path.write_text(slice_text + MIXED * 10, encoding="utf-8")
    vocab, merges = train_bpe(path, 256 + 3 + 500, [EOT, "<|a|>", "<|a|><|b|>"], progress=False)
    return Tokenizer(vocab, merges, [EOT, "<|a|>", "<|a|><|b|>"])


def test_encode_matches_tiktoken_and_hf(tokenizer, slice_text, tmp_path):
    text = slice_text[-20_000:] + MIXED + "<|a|> x<|a|><|a|>x<|a|"
    ids = tokenizer.encode(text)
    assert ids == tokenizer.to_tiktoken().encode(text, allowed_special="all")
    from tokenizers import Tokenizer as HFTokenizer

    hf = HFTokenizer.from_file(str(tokenizer.save_hf(tmp_path / "tokenizer.json")))
    assert hf.encode(text).ids == ids
    # 互相重叠的特殊 token：tiktoken 按内部 HashMap 的顺序挑（未定义），HF 与我们都取最长的
    text += "<|a|><|b|> <|a|><|a|><|b|><|a|>"
    ids = tokenizer.encode(text)
    assert hf.encode(text).ids == ids
    assert hf.decode(ids, skip_special_tokens=False) == text
    assert tokenizer.decode(ids) == text


def test_overlapping_special_tokens_longest_wins(tokenizer):
    a, ab = tokenizer.special_ids["<|a|>"], tokenizer.special_ids["<|a|><|b|>"]
    assert tokenizer.encode("<|a|><|b|>") == [ab]
    assert tokenizer.encode("<|a|><|a|><|b|>") == [a, ab]
    assert tokenizer.encode("<|a|><|b") == [a] + tokenizer.encode_ordinary("<|b")
    ordinary = tokenizer.encode_ordinary(EOT)  # 不识别特殊 token 时按普通字节编码
    assert tokenizer.special_ids[EOT] not in ordinary and tokenizer.decode(ordinary) == EOT


def test_gpt4_pattern_tokenizer_matches_tiktoken_and_hf(tmp_path, slice_text):
    path = write(tmp_path, slice_text + MIXED * 5)
    vocab, merges = train_bpe(path, 256 + 1 + 300, [EOT], pattern=GPT4_PATTERN, progress=False)
    tok = Tokenizer(vocab, merges, [EOT], pattern=GPT4_PATTERN)
    text = slice_text[:10_000] + MIXED + " 1234567 x\r\n\r\n  y"
    ids = tok.encode(text)
    assert ids == tok.to_tiktoken().encode(text, allowed_special="all")
    from tokenizers import Tokenizer as HFTokenizer

    assert HFTokenizer.from_file(str(tok.save_hf(tmp_path / "tokenizer.json"))).encode(text).ids == ids


def test_transformers_loads_exported_tokenizer_json(tokenizer, tmp_path):
    from transformers import PreTrainedTokenizerFast

    path = tokenizer.save_hf(tmp_path / "tokenizer.json")
    fast = PreTrainedTokenizerFast(tokenizer_file=str(path))
    text = MIXED + "<|a|><|b|>"
    assert fast.encode(text, add_special_tokens=False) == tokenizer.encode(text)
    assert fast.convert_tokens_to_ids(EOT) == tokenizer.special_ids[EOT]


def test_save_load_roundtrip(tokenizer, tmp_path):
    path = tokenizer.save(tmp_path / "sub" / "bpe.json")
    assert [p.name for p in path.parent.iterdir()] == ["bpe.json"]  # 没有残留的临时文件
    loaded = Tokenizer.load(path)
    assert loaded.vocab == tokenizer.vocab and loaded.merges == tokenizer.merges
    assert loaded.special_ids == tokenizer.special_ids and loaded.pattern == tokenizer.pattern
    assert loaded.encode(MIXED) == tokenizer.encode(MIXED)
    data = json.loads(path.read_text(encoding="utf-8"))
    assert data["format"] == "llm-hardcore-bpe" and data["version"] == 1
    (tmp_path / "other.json").write_text(json.dumps({"model": {}}), encoding="utf-8")
    with pytest.raises(ValueError, match="不是 llm-hardcore-bpe"):
        Tokenizer.load(tmp_path / "other.json")


def test_encode_iterable_over_file_handle(tokenizer, tmp_path, slice_text):
    text = (slice_text + MIXED) * 3
    path = write(tmp_path, text)
    with open(path, encoding="utf-8", newline="") as f:
        streamed = list(tokenizer.encode_iterable(f, flush_chars=1000))
    assert streamed == tokenizer.encode(text)


def test_encode_iterable_is_lazy(tokenizer):
    consumed = []

    def lines():
        for k in range(10_000):
            consumed.append(k)
            yield f"line {k}: to be or not to be\n"

    first = list(itertools.islice(tokenizer.encode_iterable(lines(), flush_chars=1000), 20))
    assert first == tokenizer.encode("".join(f"line {k}: to be or not to be\n" for k in range(5)))[:20]
    assert len(consumed) < 100  # 只读了开头几十行，没有把整个流读进内存


# ---------------------------------------------------------------------------
# 命令行
# ---------------------------------------------------------------------------
def test_cli_train_and_encode(tmp_path, slice_text, capsys):
    from data_pipeline.tokenization.__main__ import main

    src = write(tmp_path, slice_text[:20_000] + "\n终。\n")
    out = tmp_path / "out"
    main(["train", "--input", str(src), "--vocab-size", "400", "--out", str(out), "--processes", "1"])
    main(["encode", "--input", str(src), "--tokenizer", str(out), "--out", str(out)])
    meta = json.loads((out / "meta.json").read_text(encoding="utf-8"))
    assert meta["dtype"] == "uint16" and meta["vocab_size"] == 400
    train = np.fromfile(out / "train.bin", dtype=np.uint16)
    val = np.fromfile(out / "val.bin", dtype=np.uint16)
    assert (len(train), len(val)) == (meta["train_tokens"], meta["val_tokens"])
    tok = Tokenizer.load(out / "bpe.json")
    assert tok.decode(train.tolist()) + tok.decode(val.tolist()) == src.read_text(encoding="utf-8")
    assert 0.05 < len(val) / (len(train) + len(val)) < 0.2
    from tokenizers import Tokenizer as HFTokenizer

    assert HFTokenizer.from_file(str(out / "tokenizer.json")).encode(slice_text[:500]).ids == tok.encode(slice_text[:500])
    with pytest.raises(SystemExit, match="找不到分词器"):
        main(["encode", "--input", str(src), "--tokenizer", str(tmp_path / "none"), "--out", str(out)])


def test_cli_encode_failure_leaves_no_half_written_files(tmp_path, tokenizer):
    from data_pipeline.tokenization.__main__ import main

    tokenizer.save(tmp_path / "tok" / "bpe.json")
    src = tmp_path / "bad.txt"
    src.write_bytes(b"good line\n" * 200 + b"bad \xff byte\n" * 5)  # 非法字节落在验证集那一段
    out = tmp_path / "out"
    with pytest.raises(ValueError, match="UTF-8"):
        main(["encode", "--input", str(src), "--tokenizer", str(tmp_path / "tok"), "--out", str(out)])
    assert sorted(p.name for p in out.iterdir()) == ["train.bin"]  # 完整的 train.bin；没有 val.bin、meta.json 与临时文件


def test_cli_uses_uint32_above_65535(tmp_path):
    from data_pipeline.tokenization.__main__ import main

    vocab = {i: bytes([i]) for i in range(256)}
    vocab[70_000] = EOT.encode()
    Tokenizer(vocab, [], [EOT]).save(tmp_path / "bpe.json")
    src = write(tmp_path, "a\nb\n" * 50 + EOT)
    main(["encode", "--input", str(src), "--tokenizer", str(tmp_path), "--out", str(tmp_path)])
    meta = json.loads((tmp_path / "meta.json").read_text(encoding="utf-8"))
    assert meta["dtype"] == "uint32"
    assert np.fromfile(tmp_path / "val.bin", dtype=np.uint32)[-1] == 70_000


# ---------------------------------------------------------------------------
# 整个 shakespeare 语料：与 tiktoken、HF 逐 id 一致（训练一次，模块内共享）
# ---------------------------------------------------------------------------
@pytest.fixture(scope="module")
def corpus_tokenizer():
    from data_pipeline.corpora import corpus_path

    path = corpus_path("shakespeare")
    vocab, merges = train_bpe(path, 1024, [EOT], progress=False)
    return Tokenizer(vocab, merges, [EOT]), path.read_text(encoding="utf-8")


@pytest.mark.slow
def test_whole_corpus_matches_tiktoken(corpus_tokenizer):
    tok, text = corpus_tokenizer
    ids = tok.encode(text)
    assert ids == tok.to_tiktoken().encode(text, allowed_special="all")
    assert tok.decode(ids) == text


@pytest.mark.slow
def test_whole_corpus_matches_hf_tokenizer_json(corpus_tokenizer, tmp_path):
    from tokenizers import Tokenizer as HFTokenizer

    tok, text = corpus_tokenizer
    hf = HFTokenizer.from_file(str(tok.save_hf(tmp_path / "tokenizer.json")))
    assert hf.encode(text).ids == tok.encode(text)


# ---------------------------------------------------------------------------
# 练习模式用的单独检查（utils/exercise_parts/cleaning.py）：快速训练器堆里的"逆序键"
# ---------------------------------------------------------------------------
def test_desc_key_reverses_bytes_order_including_prefixes():
    from data_pipeline.tokenization.fast_train import _desc_key

    rng = np.random.default_rng(0)
    tokens = [b"", b"a", b"ab", b"abc", b"b", b"\x00", b"\x00\x00", b"\xff", b"\xff\xff", b"a\xff", b"a\x00"]
    tokens += [rng.integers(0, 4, int(rng.integers(1, 5))).astype(np.uint8).tobytes() for _ in range(200)]
    for a, b in itertools.product(tokens, repeat=2):
        assert (_desc_key(a) < _desc_key(b)) == (a > b), (a, b)  # 字典序更大的键更小：最小堆先弹出它
        assert (_desc_key(a) == _desc_key(b)) == (a == b), (a, b)
    # 两个键拼成的元组比较 = pair 按 (第一个 token, 第二个 token) 比较后取反
    pairs = [(b"a", b"b"), (b"a", b"bc"), (b"ab", b"c"), (b"a", b"z"), (b"c", b"a"), (b"c", b"ab")]
    assert sorted(pairs, key=lambda p: (_desc_key(p[0]), _desc_key(p[1]))) == sorted(pairs, reverse=True)
