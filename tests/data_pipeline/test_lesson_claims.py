"""data_pipeline 各课打印的"多少算好"与文档字符串里的数字：

- 分词器的压缩率（字节/token）落在两个基线之间：不合并的 1.00 与"每个预 token 一个 token"的上限
  （max_bytes_per_token，与暴力数预 token 对照）；词表大到每个预 token 都合成一个 token 时正好到达上限；
  tokenizer / regex_bpe 两课的打印行带着这两个基线。
- BPE 合并次数曲线的双对数斜率（merge_counts_slope）与它的图（横轴从第 1 次合并开始）。
- 语料的字符级基线（均匀 ln V、unigram 熵，与 scipy 的熵对照）。
- 清洗课文档里的 LSH 数字：阈值 0.7 → (b, r) = (14, 9)，J=0.9 的候选概率 99.9%、J=0.5 的 2.7%；
  阈值 0.8 → (9, 13)，J=0.9 只有 92.9%；阈值 0.9 → (5, 25)，J=0.9 只有 31%。
"""

from __future__ import annotations

import math
import re
from collections import Counter

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import pytest
import regex
from scipy.stats import entropy

from data_pipeline.corpora import char_baselines, load_corpus
from data_pipeline.tokenization import Tokenizer, train_bpe_naive
from data_pipeline.tokenization.fast_train import merge_counts_figure, merge_counts_slope
from data_pipeline.tokenization.regex_bpe import GPT2_PATTERN, GPT4_PATTERN, max_bytes_per_token

EOT = "<|endoftext|>"


def _brute_force_ceiling(text: str, special: str | None, pattern: str) -> float:
    """原版 pattern（不用 compile_pattern 的等价快写法），按字面切开特殊 token，逐段数预 token。"""
    segments = text.split(special) if special else [text]
    n = sum(len(regex.findall(pattern, seg)) for seg in segments) + (len(segments) - 1)
    return len(text.encode("utf-8")) / n


@pytest.mark.parametrize("pattern", [GPT2_PATTERN, GPT4_PATTERN], ids=["gpt2", "gpt4"])
def test_max_bytes_per_token_equals_brute_force_count(pattern):
    text = load_corpus("shakespeare")[:30_000].replace("\n\n", f"\n\n{EOT}", 20) + " 生存还是毁灭 🙂 12345"
    assert max_bytes_per_token(text, [EOT], pattern) == pytest.approx(_brute_force_ceiling(text, EOT, pattern))
    plain = text.replace(EOT, "")
    assert max_bytes_per_token(plain, [], pattern) == pytest.approx(_brute_force_ceiling(plain, None, pattern))
    with pytest.raises(ValueError, match="空"):
        max_bytes_per_token("", [], pattern)


def test_bpe_compression_lies_between_byte_level_and_the_pretoken_ceiling_and_reaches_it():
    text = ("the cat sat on the mat. " * 3 + "a dog, a log; the fog!\n") * 2 + EOT + "the end"
    ceiling = max_bytes_per_token(text, [EOT])
    n_bytes = len(text.encode("utf-8"))
    ratios = []
    for vocab_size in range(257, 400):
        try:
            vocab, merges = train_bpe_naive(text, vocab_size, [EOT])
        except ValueError:  # 再没有 pair 可合并：上一个词表已把每个预 token 合成一个 token
            break
        ratios.append(n_bytes / len(Tokenizer(vocab, merges, [EOT]).encode(text)))
    assert ratios[0] == pytest.approx(n_bytes / (n_bytes - len(EOT) + 1))  # 不合并：每字节一个，特殊 token 一个
    assert all(1.0 <= r <= ceiling + 1e-12 for r in ratios)
    assert ratios == sorted(ratios)  # 每多一次合并，token 只会更少
    assert ratios[-1] == pytest.approx(ceiling)  # 合并到底：恰好是上限


def _line_with(out: str, needle: str) -> str:
    lines = [line for line in out.splitlines() if needle in line]
    assert len(lines) == 1, out
    return lines[0]


def test_tokenizer_lesson_prints_bytes_per_token_with_both_baselines(monkeypatch, capsys):
    from data_pipeline.tokenization import tokenizer as lesson

    monkeypatch.setenv("SMOKE", "1")
    lesson.main()
    line = _line_with(capsys.readouterr().out, "字节/token")
    measured = float(re.search(r"：([\d.]+) 字节/token", line).group(1))
    ceiling = _brute_force_ceiling(load_corpus("shakespeare")[:100_000], None, GPT2_PATTERN)  # SMOKE 的切片
    assert "不合并 = 1.00" in line and f"上限 {ceiling:.2f}" in line
    assert 1.0 < measured < ceiling
    assert "默认配置（全文、vocab 4096）3.10" in line  # 实测的默认配置的值，写在旁边


def test_regex_bpe_lesson_prints_bytes_per_token_with_both_baselines(monkeypatch, capsys):
    from data_pipeline.tokenization import regex_bpe as lesson

    monkeypatch.setenv("SMOKE", "1")
    lesson.main()
    line = _line_with(capsys.readouterr().out, "字节/token")
    text = load_corpus("shakespeare")[:20_000].replace("\n\n", f"\n\n{EOT}", 50)
    ceiling = _brute_force_ceiling(text, EOT, GPT2_PATTERN)
    measured = float(re.search(r"([\d.]+) 字节/token", line).group(1))
    assert "不合并 = 1.00" in line and f"上限 {ceiling:.2f}" in line
    assert 1.0 < measured < ceiling


def test_merge_counts_slope_recovers_a_power_law_and_its_figure_starts_at_step_1():
    steps = np.arange(1, 2001)
    counts = (1e6 * steps**-1.3).tolist()
    assert merge_counts_slope(counts) == pytest.approx(-1.3, abs=1e-9)
    assert merge_counts_slope([8, 4, 2]) == pytest.approx(np.polyfit(np.log([1, 2, 3]), np.log([8, 4, 2]), 1)[0])
    with pytest.raises(ValueError, match="至少要 2 次"):
        merge_counts_slope([5])
    fig = merge_counts_figure([100, 40, 20, 9], "x.txt")
    try:
        (ax,) = fig.axes
        assert ax.get_xlabel() and ax.get_ylabel()
        assert ax.get_xscale() == ax.get_yscale() == "log"
        assert list(ax.get_lines()[0].get_xdata()) == [1, 2, 3, 4]
    finally:
        plt.close(fig)


def test_char_baselines_equal_uniform_and_scipy_entropy():
    text = load_corpus("shakespeare")[:50_000]
    counts = Counter(text)
    base = char_baselines(text)
    assert base["vocab"] == len(counts)
    assert base["uniform"] == pytest.approx(math.log(len(counts)))
    assert base["unigram"] == pytest.approx(entropy(list(counts.values())))  # scipy：自然对数
    assert base["unigram"] < base["uniform"]
    assert char_baselines("abab") == pytest.approx({"vocab": 2, "uniform": math.log(2), "unigram": math.log(2)})
    with pytest.raises(ValueError, match="空"):
        char_baselines("")


@pytest.mark.parametrize("threshold,bands_rows,p_at_09,p_at_05", [
    (0.7, (14, 9), 0.999, 0.027),  # pipeline 的 lsh_threshold 与 minhash 的默认阈值
    (0.8, (9, 13), 0.929, None),  # pipeline 的核对阈值：只拿它选 (b, r) 会漏掉 7% 的 J=0.9 对
    (0.9, (5, 25), 0.311, None),  # minhash.py 文档："只有 31% 成为候选"
])
def test_lsh_band_numbers_quoted_in_the_cleaning_docstrings(threshold, bands_rows, p_at_09, p_at_05):
    from data_pipeline.cleaning.minhash import optimal_bands

    b, r = optimal_bands(threshold, 128)
    assert (b, r) == bands_rows
    assert 1 - (1 - 0.9**r) ** b == pytest.approx(p_at_09, abs=5e-4)
    if p_at_05 is not None:
        assert 1 - (1 - 0.5**r) ** b == pytest.approx(p_at_05, abs=5e-4)
