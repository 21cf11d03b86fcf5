"""清洗第 2 课：启发式质量过滤——Gopher 质量规则、Gopher 重复规则、C4 行/文档规则、FineWeb 规则。

    python data_pipeline/cleaning/filters.py          # SMOKE=1 时一两秒跑完

网页抓来的文本大半不是"文章"：导航栏、商品列表、报错页、SEO 堆词、代码、乱码。各家预训练语料用一组便宜的
统计规则把它们挡在外面，每条规则一个阈值，论文里给出的阈值就是这里的预设（preset）：

- Gopher 质量（Rae et al. 2021, DeepMind, 附录 A.1.1）：词数在 [50, 100000]；平均词长在 [3, 10]；
  "#" 与省略号各自与词数之比 ≤ 0.1；以项目符号开头的行 ≤ 90%、以省略号结尾的行 ≤ 30%；
  含字母的词 ≥ 80%；至少出现 2 个停用词（the, be, to, of, and, that, have, with）——真正的英文句子离不开它们。
- Gopher 重复（同论文表 A1）：重复行/段落的**个数**比例 ≤ 0.3、**字符**比例 ≤ 0.2；出现最多的 2/3/4-gram
  覆盖的字符比例 ≤ 0.20/0.18/0.16；重复出现的 5..10-gram 覆盖的字符比例 ≤ 0.15..0.10。堆词页与模板页靠它去掉。
- C4（Raffel et al. 2020, T5 论文 §2.2）：**逐行**过滤——只留以句末标点结尾、至少若干词、不含 "javascript"
  与 cookie/隐私政策字样、没有超长词的行；再按整页：含 "lorem ipsum" 或花括号 "{" 的整页丢掉，剩下不足若干句的整页丢掉。
  注意 C4 会**改写**文档（删掉不合格的行），所以过滤器的结果里可以带一份新文本（Decision.text）。
- FineWeb（Penedo et al. 2024）：以句末标点结尾的行 ≥ 12%；短行（≤ 30 字符）≤ 67%；重复行的字符比例 ≤ 1%；
  换行数/词数 ≤ 0.3（列表页）。

接口：每个过滤器是一个可调用对象 `f(text) -> Decision(keep, reason, text)`，阈值全在一个 frozen dataclass 里；
`apply_filters(text, filters)` 依次执行，第一个丢弃者给出理由，改写过的文本传给下一个过滤器。理由代码（reason）
与 datatrove 完全相同，方便对照统计。

与 datatrove 逐条对照（tests/data_pipeline/cleaning/test_filters.py）：同一个分词器下，在 500+ 篇文档上
保留/丢弃的决定**和理由**都相同，C4 改写后的文本也逐字符相同。分词器是对照的关键——datatrove 按语言加载
spaCy/NLTK 分词器（本仓库不装），但它接受一个 WordTokenizer 对象；`datatrove_tokenizer()` 把我们的
split_words 交给它。断句用 datatrove 自己的正则规则（WhitespaceTokenizer），我们的 split_sentences 逐条复现。

照搬的 datatrove 怪癖（对照时必须一致，也是读者该知道的"规则的真实样子"）：
- Gopher 质量：平均词长只对"非纯符号词"求，但 "#"/省略号之比的分母是**全部**词；停用词区分大小写（"The" 不算）；
  理由 "gopher_enough_stop_words" 实际意思是"停用词**不够**"；datatrove 的 max_non_alpha_words_ratio 实际是
  "含字母词的最小比例"，我们改名为 min_alpha_words_ratio。
- Gopher 重复：段落按 text.strip() 切，行却按未 strip 的 text 切（开头/结尾的换行产生空行，空行重复也算重复）；
  top n-gram 用空格连接、重复 n-gram 却用空串连接（("ab","c") 与 ("a","bc") 算同一个 5-gram）；
  top n-gram 即使只出现一次也计入（很短的文档因此被 top_2_gram 丢掉）；次数并列时取最先出现的那个。
- C4：词数与超长词按**删引用之前**的行计算，句末标点按删引用之后判断；一行若先因为没有句末标点被删，
  它里面的 "{" 或 "lorem ipsum" 就不会让整页被丢（规则按顺序短路）；句子数用断句器逐行数，一行至少算 1 句。
- FineWeb：判断句末标点用的是**未 strip** 的行，"结尾有空格的句子" 不算以标点结尾。
刻意不同之处（datatrove 在这些输入上抛 ZeroDivisionError 或用真假值判断阈值）：
- 阈值写 None 表示关闭；datatrove 用 `if threshold and ...`，阈值 0 也等于关闭，我们的 0 就是 0。
- 没有词的文档：Gopher 质量在关闭 min_doc_words 时 datatrove 会除以 0，我们丢弃为 "gopher_short_doc"；
  FineWeb 的 list_ratio 在分词器返回空列表时 datatrove 会除以 0，我们丢弃为 "list_ratio"。
"""

from __future__ import annotations

import random
import re
import statistics
import time
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, fields
from itertools import accumulate
from operator import itemgetter
from typing import Protocol, runtime_checkable

import regex

from data_pipeline.cleaning.normalize import PUNCTUATION_SET, TERMINAL_PUNCTUATION
from utils.io import is_smoke
from utils.lesson_cli import lesson_args

Tokenizer = Callable[[str], list[str]]


# ---------------------------------------------------------------------------
# 分词与断句（规则里的"词""句"都由它们定义）
# ---------------------------------------------------------------------------
# 词 = 连续的字母数字（可带 's 这样的撇号后缀），或者一串连续的符号。符号单独成词，和 spaCy/NLTK 一样：
# "#tag" → ["#", "tag"]，"wait..." → ["wait", "..."]。Gopher 规则要数"纯符号词"，所以符号不能丢。
WORD_RE = re.compile(r"\w+(?:['’]\w+)*|[^\w\s]+")


def split_words(text: str) -> list[str]:
    """本仓库的词切分：re.findall(WORD_RE)。空白不产生词。"""
    return WORD_RE.findall(text)


# datatrove WhitespaceTokenizer 的断句正则：最短的一段（"大写字母+点"如 "U." 不算句末）直到句末标点或换行，
# 后面可跟一个引号。\p{Lu} 需要第三方 regex 模块。
SENTENCE_RE = regex.compile(
    rf"(?:(?:\p{{Lu}}\.)|.)+?[{re.escape(''.join(sorted(TERMINAL_PUNCTUATION)))}\n]+[\"'”]?", regex.UNICODE
)


def split_sentences(text: str) -> list[str]:
    """断句（复现 datatrove WhitespaceTokenizer.sent_tokenize）：正则匹配的各段，strip 后去掉空段。"""
    return [s for s in (m.strip() for m in SENTENCE_RE.findall(text)) if s]


_TERMINAL_CLASS = "[" + re.escape("".join(sorted(TERMINAL_PUNCTUATION))) + "]"
_TERMINAL_SEARCH = re.compile(_TERMINAL_CLASS)
_TERMINAL_RUN = re.compile(_TERMINAL_CLASS + "+[\"'”]?")
_UPPER_RE = regex.compile(r"\p{Lu}")


def count_sentences(line: str) -> int:
    """len(split_sentences(line))，但不跑那条慢正则（它在每个位置做惰性匹配，每行约 0.1 ms）。

    对不含换行的一行，正则的行为可以直接描述：从 p 开始，第一个字符无条件属于句子；之后找第一个句末标点，
    但"大写字母+点"里的点（"U.S."）被跳过；找到后吃掉连续的句末标点和一个可选引号，就是一句。
    若到行尾都没有真正的句末标点，正则会回溯到**最后一个**被跳过的"大写+点"，把那个点当句末。
    用 C 实现的 re.search 跳到下一个句末标点，Python 只处理命中的位置。测试在全部莎士比亚行与随机串上核对相等。
    """
    if "\n" in line:
        return len(split_sentences(line))
    n, p, count = len(line), 0, 0
    while p < n:
        q, last_abbrev = p + 1, -1
        while (m := _TERMINAL_SEARCH.search(line, q)) is not None:
            q = m.start()
            if line[q] == "." and _UPPER_RE.match(line[q - 1]):
                last_abbrev, q = q, q + 1
                continue
            break
        else:
            if last_abbrev < 0:
                break  # p 之后没有任何句末标点：更靠后的起点也不会有匹配
            q = last_abbrev
        p = _TERMINAL_RUN.match(line, q).end()
        count += 1
    return count


def _sentence_pieces(text: str) -> list[str]:
    """把整段文本切成首尾相接的句子片段（复现 datatrove 的 split_into_sentences）。

    片段边界 = 前 k-1 个句子（strip 后）的结尾位置；最后一段延伸到文本末尾。没有句子或只有一句时就是 [text]。
    """
    ends = [m.start() + len(m.group().rstrip()) for m in SENTENCE_RE.finditer(text) if m.group().strip()]
    bounds = [0, *ends[:-1], len(text)]
    return [text[a:b] for a, b in zip(bounds, bounds[1:])]


def datatrove_tokenizer(words: Tokenizer = split_words):
    """给 datatrove 用的 WordTokenizer：词切分用 words（默认 split_words），断句用 datatrove 自己的正则规则。

    对照测试与基准用它保证两边"同一个分词器"。需要 datatrove（延迟导入，本模块的其余部分不依赖它）。
    """
    try:
        from datatrove.utils.word_tokenizers import WhitespaceTokenizer
    except ImportError as exc:
        raise ImportError("datatrove_tokenizer 需要 datatrove：pip install datatrove（requirements.txt 已列出）") from exc

    class SharedTokenizer(WhitespaceTokenizer):
        # WhitespaceTokenizer 的分词要 spaCy；断句（sent_tokenize/span_tokenize）是纯正则，原样继承
        def word_tokenize(self, text: str) -> list[str]:
            return words(text)

    return SharedTokenizer()


# ---------------------------------------------------------------------------
# 决定与组合
# ---------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class Decision:
    """一个过滤器对一篇文档的决定。

    keep：保留与否；reason：丢弃理由代码（与 datatrove 相同），保留时为 None；
    text：过滤器改写后的文本（C4 删掉了一些行），None 表示没有改动；
    by：作出决定的过滤器名字（不同过滤器可能用同一个理由代码，例如 "empty"）。
    """

    keep: bool
    reason: str | None = None
    text: str | None = None
    by: str | None = None


KEEP = Decision(True)


@runtime_checkable
class Filter(Protocol):
    """过滤器协议：有名字、列出全部理由代码、对一段文本给出 Decision。"""

    name: str
    reasons: tuple[str, ...]

    def __call__(self, text: str) -> Decision: ...


def apply_filters(text: str, filters: Iterable[Filter]) -> Decision:
    """依次执行过滤器：第一个丢弃者的决定就是结果；改写过的文本交给下一个过滤器，最后放进 Decision.text。"""
    if not isinstance(text, str):
        raise TypeError(f"apply_filters 需要 str 文本，收到 {type(text).__name__}")
    current = text
    for f in filters:
        decision = f(current)
        if not decision.keep:
            return decision
        if decision.text is not None:
            current = decision.text
    return KEEP if current is text else Decision(True, text=current)


def _check(config, bounds: dict[str, tuple[float, float]]) -> None:
    """阈值校验：None 表示关闭；否则必须是落在 [lo, hi] 里的数。"""
    for f in fields(config):
        value = getattr(config, f.name)
        if f.name not in bounds or value is None:
            continue
        lo, hi = bounds[f.name]
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not lo <= value <= hi:
            raise ValueError(
                f"{type(config).__name__}.{f.name}={value!r} 不合法：应为 [{lo}, {hi}] 内的数，或 None 关闭这条规则"
            )


_RATIO = (0.0, 1.0)
_COUNT = (0, float("inf"))


class _Words:
    """一格的分词缓存：流水线里几个过滤器先后处理同一段文本时只分一次词（datatrove 也用 lru_cache 做同样的事）。"""

    __slots__ = ("text", "tokenizer", "words")

    def __init__(self) -> None:
        self.text: str | None = None
        self.tokenizer: Tokenizer | None = None
        self.words: list[str] = []

    def __call__(self, tokenizer: Tokenizer, text: str) -> list[str]:
        if text is not self.text or tokenizer is not self.tokenizer:
            self.text, self.tokenizer, self.words = text, tokenizer, tokenizer(text)
        return self.words


_words = _Words()


# ---------------------------------------------------------------------------
# Gopher 质量规则
# ---------------------------------------------------------------------------
GOPHER_STOP_WORDS = frozenset({"the", "be", "to", "of", "and", "that", "have", "with"})
_PUNCT_CHARS = "".join(sorted(PUNCTUATION_SET))


@dataclass(frozen=True)
class GopherQualityConfig:
    """Gopher 质量规则的阈值（默认 = 论文 = datatrove 默认）。None 关闭对应的规则。"""

    min_doc_words: int | None = 50
    max_doc_words: int | None = 100_000
    min_avg_word_length: float | None = 3
    max_avg_word_length: float | None = 10
    max_symbol_word_ratio: float | None = 0.1
    max_bullet_lines_ratio: float | None = 0.9
    max_ellipsis_lines_ratio: float | None = 0.3
    min_alpha_words_ratio: float | None = 0.8
    min_stop_words: int | None = 2
    stop_words: frozenset[str] = GOPHER_STOP_WORDS

    def __post_init__(self) -> None:
        _check(self, {
            "min_doc_words": _COUNT, "max_doc_words": _COUNT, "min_avg_word_length": _COUNT,
            "max_avg_word_length": _COUNT, "max_symbol_word_ratio": _COUNT, "max_bullet_lines_ratio": _RATIO,
            "max_ellipsis_lines_ratio": _RATIO, "min_alpha_words_ratio": _RATIO, "min_stop_words": _COUNT,
        })  # fmt: skip
        object.__setattr__(self, "stop_words", frozenset(self.stop_words))


GOPHER_QUALITY = GopherQualityConfig()


class GopherQualityFilter:
    name = "gopher_quality"
    reasons = (
        "gopher_short_doc", "gopher_long_doc", "gopher_below_avg_threshold", "gopher_above_avg_threshold",
        "gopher_too_many_hashes", "gopher_too_many_ellipsis", "gopher_too_many_bullets",
        "gopher_too_many_end_ellipsis", "gopher_below_alpha_threshold", "gopher_enough_stop_words",
    )  # fmt: skip

    def __init__(self, config: GopherQualityConfig = GOPHER_QUALITY, tokenizer: Tokenizer = split_words) -> None:
        self.config, self.tokenizer = config, tokenizer
        self._drop = {reason: Decision(False, reason, by=self.name) for reason in self.reasons}

    def __call__(self, text: str) -> Decision:
        c, drop = self.config, self._drop
        words = _words(self.tokenizer, text)
        n_words = len(words)
        # "纯符号词" = 每个字符都在标点表里；strip 掉全部标点后为空串 ⇔ 纯符号（str.strip 在 C 里做，比逐字符 any 快）
        lengths = [len(w) for w in words if w.strip(_PUNCT_CHARS)]
        n_content = len(lengths)
        if n_words == 0 or (c.min_doc_words is not None and n_content < c.min_doc_words):
            return drop["gopher_short_doc"]
        if c.max_doc_words is not None and n_content > c.max_doc_words:
            return drop["gopher_long_doc"]
        if n_content:  # 全是符号词时 datatrove 的 np.mean([]) 是 nan，比较恒为假——等价于跳过
            avg = sum(lengths) / n_content
            if c.min_avg_word_length is not None and avg < c.min_avg_word_length:
                return drop["gopher_below_avg_threshold"]
            if c.max_avg_word_length is not None and avg > c.max_avg_word_length:
                return drop["gopher_above_avg_threshold"]
        if c.max_symbol_word_ratio is not None:
            if text.count("#") / n_words > c.max_symbol_word_ratio:
                return drop["gopher_too_many_hashes"]
            if (text.count("...") + text.count("…")) / n_words > c.max_symbol_word_ratio:
                return drop["gopher_too_many_ellipsis"]
        lines = text.splitlines()
        if c.max_bullet_lines_ratio is not None:
            bullets = sum(line.lstrip().startswith(("•", "-")) for line in lines)
            if bullets / len(lines) > c.max_bullet_lines_ratio:
                return drop["gopher_too_many_bullets"]
        if c.max_ellipsis_lines_ratio is not None:
            ellipsis = sum(line.rstrip().endswith(("...", "…")) for line in lines)
            if ellipsis / len(lines) > c.max_ellipsis_lines_ratio:
                return drop["gopher_too_many_end_ellipsis"]
        if c.min_alpha_words_ratio is not None:
            # 含字母的词：绝大多数词整个是字母（isalpha 一次 C 调用），只有其余的才逐字符看
            alpha = sum(1 for w in words if w.isalpha() or any(ch.isalpha() for ch in w))
            if alpha / n_words < c.min_alpha_words_ratio:
                return drop["gopher_below_alpha_threshold"]
        if c.min_stop_words is not None and len(c.stop_words.intersection(words)) < c.min_stop_words:
            return drop["gopher_enough_stop_words"]
        return KEEP


# ---------------------------------------------------------------------------
# Gopher 重复规则
# ---------------------------------------------------------------------------
@dataclass(frozen=True)
class GopherRepetitionConfig:
    """Gopher 重复规则的阈值（论文表 A1 = datatrove 默认）。top_n_grams / dup_n_grams 是 ((n, 比例), ...)。"""

    dup_line_frac: float | None = 0.3
    dup_para_frac: float | None = 0.3
    dup_line_char_frac: float | None = 0.2
    dup_para_char_frac: float | None = 0.2
    top_n_grams: tuple[tuple[int, float], ...] = ((2, 0.20), (3, 0.18), (4, 0.16))
    dup_n_grams: tuple[tuple[int, float], ...] = ((5, 0.15), (6, 0.14), (7, 0.13), (8, 0.12), (9, 0.11), (10, 0.10))

    def __post_init__(self) -> None:
        _check(self, {name: _RATIO for name in ("dup_line_frac", "dup_para_frac", "dup_line_char_frac",
                                                 "dup_para_char_frac")})  # fmt: skip
        for name in ("top_n_grams", "dup_n_grams"):
            pairs = tuple(tuple(p) for p in getattr(self, name))
            if not all(len(p) == 2 and isinstance(p[0], int) and p[0] >= 1 and 0 <= p[1] <= 1 for p in pairs):
                raise ValueError(f"GopherRepetitionConfig.{name}={pairs!r} 不合法：应为 ((n≥1, 比例∈[0,1]), ...)")
            object.__setattr__(self, name, pairs)


GOPHER_REPETITION = GopherRepetitionConfig()
_PARAGRAPH_RE = re.compile(r"\n{2,}")
_LINES_RE = re.compile(r"\n+")


def count_duplicates(items: Sequence[str]) -> tuple[int, int]:
    """(重复元素个数, 重复元素的字符总数)：第一次出现不算，之后每次出现都算。"""
    seen: set[str] = set()
    n_dup = dup_chars = 0
    for item in items:
        if item in seen:
            n_dup += 1
            dup_chars += len(item)
        else:
            seen.add(item)
    return n_dup, dup_chars


def _ngram_index(words: Sequence[str], sep: str) -> tuple[str, list[int]]:
    """joined = sep.join(words) 与前缀位置 P：第 i 个 n-gram 就是 joined[P[i] : P[i+n] - len(sep)]。

    一次切片得到 n-gram，不必对每个位置重新 join（datatrove 的写法）——n-gram 规则的主要开销就在这里。
    """
    step = len(sep)
    return sep.join(words), [0, *accumulate(len(w) + step for w in words)]


def _grams(joined: str, prefix: list[int], n: int, step: int) -> list[str]:
    if step:
        return [joined[a : b - step] for a, b in zip(prefix, prefix[n:])]
    return [joined[a:b] for a, b in zip(prefix, prefix[n:])]


def _top_chars(grams: list[str]) -> int:
    if not grams:
        return 0
    gram, count = max(Counter(grams).items(), key=itemgetter(1))  # max 取第一个最大值 = 插入顺序最早者
    return len(gram) * count


def _duplicated_chars(grams: list[str], n: int) -> int:
    if len(set(grams)) == len(grams):
        return 0  # 没有任何重复：扫描不会跳跃，结果必为 0——干净文档走这条捷径
    seen: set[str] = set()
    repeated, i = 0, 0
    while i < len(grams):
        gram = grams[i]
        if gram in seen:
            repeated += len(gram)
            i += n  # 跳过这个重复 n-gram 覆盖的词，不重复计数
        else:
            seen.add(gram)
            i += 1
    return repeated


def top_ngram_chars(words: Sequence[str], n: int) -> int:
    """出现最多的 n-gram（空格连接）的 长度 × 次数；并列时取最先出现者（Counter.most_common 的规则）。"""
    joined, prefix = _ngram_index(words, " ")
    return _top_chars(_grams(joined, prefix, n, 1))


def duplicated_ngram_chars(words: Sequence[str], n: int) -> int:
    """重复 n-gram（空串连接）覆盖的字符数：从左到右扫描，遇到见过的 n-gram 计入它的字符并跳过 n 个词。"""
    joined, prefix = _ngram_index(words, "")
    return _duplicated_chars(_grams(joined, prefix, n, 0), n)


class GopherRepetitionFilter:
    name = "gopher_repetition"

    def __init__(self, config: GopherRepetitionConfig = GOPHER_REPETITION, tokenizer: Tokenizer = split_words) -> None:
        self.config, self.tokenizer = config, tokenizer
        self.reasons = (
            "empty", "dup_para_frac", "dup_para_char_frac", "dup_line_frac", "dup_line_char_frac",
            *(f"top_{n}_gram" for n, _ in config.top_n_grams),
            *(f"duplicated_{n}_n_grams" for n, _ in config.dup_n_grams),
        )  # fmt: skip
        self._drop = {reason: Decision(False, reason, by=self.name) for reason in self.reasons}

    def __call__(self, text: str) -> Decision:
        c, drop = self.config, self._drop
        if not text:
            return drop["empty"]
        n_chars = len(text)
        paragraphs = _PARAGRAPH_RE.split(text.strip())
        n_dup, dup_chars = count_duplicates(paragraphs)
        if c.dup_para_frac is not None and n_dup / len(paragraphs) > c.dup_para_frac:
            return drop["dup_para_frac"]
        if c.dup_para_char_frac is not None and dup_chars / n_chars > c.dup_para_char_frac:
            return drop["dup_para_char_frac"]
        lines = _LINES_RE.split(text)
        n_dup, dup_chars = count_duplicates(lines)
        if c.dup_line_frac is not None and n_dup / len(lines) > c.dup_line_frac:
            return drop["dup_line_frac"]
        if c.dup_line_char_frac is not None and dup_chars / n_chars > c.dup_line_char_frac:
            return drop["dup_line_char_frac"]
        words = _words(self.tokenizer, text)
        joined, prefix = _ngram_index(words, " ")
        for n, frac in c.top_n_grams:
            if _top_chars(_grams(joined, prefix, n, 1)) / n_chars > frac:
                return drop[f"top_{n}_gram"]
        joined, prefix = _ngram_index(words, "")
        for n, frac in c.dup_n_grams:
            if _duplicated_chars(_grams(joined, prefix, n, 0), n) / n_chars > frac:
                return drop[f"duplicated_{n}_n_grams"]
        return KEEP


# ---------------------------------------------------------------------------
# C4 规则
# ---------------------------------------------------------------------------
CITATION_RE = re.compile(r"\[\d*]|\[edit]|\[citation needed]")  # 维基百科式引用 "[12]" "[edit]"
POLICY_SUBSTRINGS = ("terms of use", "privacy policy", "cookie policy", "uses cookies", "use of cookies", "use cookies")


@dataclass(frozen=True)
class C4QualityConfig:
    """C4 规则的开关与阈值。None 关闭对应的数值规则。

    split_paragraph=True 按行过滤（C4 的做法）；False 则按 split_sentences 断出的句子过滤、用空格重新拼接。
    """

    split_paragraph: bool = True
    remove_citations: bool = True
    filter_no_terminal_punct: bool = True
    end_punctuation: tuple[str, ...] = (".", "?", "!", '"', "'")
    min_num_sentences: int | None = 5
    min_words_per_line: int | None = 3
    max_word_length: int | None = 1000
    filter_lorem_ipsum: bool = True
    filter_javascript: bool = True
    filter_curly_bracket: bool = True
    filter_policy: bool = True

    def __post_init__(self) -> None:
        _check(self, {"min_num_sentences": _COUNT, "min_words_per_line": _COUNT, "max_word_length": _COUNT})
        object.__setattr__(self, "end_punctuation", tuple(self.end_punctuation))


# 三个预设：TFDS 的 c4_utils（C4 数据集真正用的代码：≥ 3 句、每行 ≥ 5 词、句末标点不含单引号）；
# datatrove 的默认值（≥ 5 句、每行 ≥ 3 词，多了单引号）；FineWeb 的用法（datatrove 默认但不要求行以句末标点结尾——
# 这条规则删掉的行太多，FineWeb 的消融实验里它伤害了效果）
C4_QUALITY = C4QualityConfig(end_punctuation=(".", "?", "!", '"'), min_num_sentences=3, min_words_per_line=5)
C4_DATATROVE = C4QualityConfig()
FINEWEB_C4 = C4QualityConfig(filter_no_terminal_punct=False)

C4_LINE_STATS = (
    "line-filter-too_long_word", "line-filter-no_terminal_punc", "line-filter-too_few_words",
    "line-filter-javascript", "line-filter-policy", "line-kept",
)  # fmt: skip


class C4QualityFilter:
    """C4 的行过滤 + 文档规则。保留时 Decision.text 是删掉不合格行之后的文本。

    line_stats：累计每条行规则删掉的行数（键同 datatrove 的统计名），流水线的统计表用它。
    """

    name = "c4_quality"
    reasons = ("lorem_ipsum", "curly_bracket", "too_few_sentences")

    def __init__(self, config: C4QualityConfig = C4_DATATROVE, sentences: Tokenizer = split_sentences) -> None:
        self.config, self.sentences = config, sentences
        # 默认断句器只需要句子"个数"：用等价的快速计数 count_sentences
        self._count = count_sentences if sentences is split_sentences else (lambda line: len(sentences(line)))
        self._drop = {reason: Decision(False, reason, by=self.name) for reason in self.reasons}
        self.line_stats = dict.fromkeys(C4_LINE_STATS, 0)

    def __call__(self, text: str) -> Decision:
        c, stats = self.config, self.line_stats
        if c.split_paragraph:
            lines = text.splitlines()  # 注意 splitlines 也在 \r、\x0b、\x0c、\x1c..\x1e、\x85、U+2028/2029 处断行
        elif self.sentences is split_sentences:
            lines = _sentence_pieces(text)
        else:
            lines = self.sentences(text)
        count_sentences = c.min_num_sentences is not None
        max_len, min_words = c.max_word_length, c.min_words_per_line
        num_sentences = 0
        kept: list[str] = []
        for line in lines:
            line = line.strip()
            words = line.split()  # C4 的"词"就是按空白切开的片段，与分词器无关
            if max_len is not None and any(len(w) > max_len for w in words):
                stats["line-filter-too_long_word"] += 1
                continue
            if c.remove_citations and "[" in line:
                line = CITATION_RE.sub("", line)
            if c.filter_no_terminal_punct and (not line.endswith(c.end_punctuation) or line.endswith("...")):
                stats["line-filter-no_terminal_punc"] += 1
                continue
            if min_words is not None and len(words) < min_words:
                stats["line-filter-too_few_words"] += 1
                continue
            lower = line.lower()
            if c.filter_lorem_ipsum and "lorem ipsum" in lower:
                return self._drop["lorem_ipsum"]
            if c.filter_javascript and "javascript" in lower:
                stats["line-filter-javascript"] += 1
                continue
            if c.filter_curly_bracket and "{" in line:
                return self._drop["curly_bracket"]
            if c.filter_policy and any(p in lower for p in POLICY_SUBSTRINGS):
                stats["line-filter-policy"] += 1
                continue
            if count_sentences:
                num_sentences += max(1, self._count(line)) if c.split_paragraph else 1
            kept.append(line)
            stats["line-kept"] += 1
        if count_sentences and num_sentences < c.min_num_sentences:
            return self._drop["too_few_sentences"]
        new_text = ("\n" if c.split_paragraph else " ").join(kept).strip()
        return KEEP if new_text == text else Decision(True, text=new_text, by=self.name)


# ---------------------------------------------------------------------------
# FineWeb 规则
# ---------------------------------------------------------------------------
@dataclass(frozen=True)
class FineWebQualityConfig:
    """FineWeb 自定义规则的阈值（论文 = datatrove 默认）。stop_chars=None 表示句末标点表 TERMINAL_PUNCTUATION。"""

    line_punct_thr: float | None = 0.12
    line_punct_exclude_zero: bool = False
    stop_chars: tuple[str, ...] | None = None
    short_line_thr: float | None = 0.67
    short_line_length: int = 30
    char_duplicates_ratio: float | None = 0.01
    new_line_ratio: float | None = 0.3

    def __post_init__(self) -> None:
        _check(self, {"line_punct_thr": _RATIO, "short_line_thr": _RATIO, "short_line_length": _COUNT,
                      "char_duplicates_ratio": _RATIO, "new_line_ratio": _COUNT})  # fmt: skip


FINEWEB_QUALITY = FineWebQualityConfig()


class FineWebQualityFilter:
    name = "fineweb_quality"
    reasons = ("empty", "line_punct_ratio", "short_line_ratio", "char_dup_ratio", "list_ratio")

    def __init__(self, config: FineWebQualityConfig = FINEWEB_QUALITY, tokenizer: Tokenizer = split_words) -> None:
        self.config, self.tokenizer = config, tokenizer
        stop = TERMINAL_PUNCTUATION if config.stop_chars is None else config.stop_chars
        self._stop_tuple = tuple(stop)
        # 句末标点都是单个字符时，"行以它结尾"就是查最后一个字符是否在集合里，比 endswith(160 元组) 快得多
        self._stop_set = frozenset(stop) if all(len(s) == 1 for s in stop) else None
        self._drop = {reason: Decision(False, reason, by=self.name) for reason in self.reasons}

    def __call__(self, text: str) -> Decision:
        c, drop = self.config, self._drop
        lines = [line for line in text.split("\n") if line.strip()]
        if not lines:
            return drop["empty"]
        n_lines = len(lines)
        if c.line_punct_thr is not None:
            if self._stop_set is not None:
                stop_set = self._stop_set
                ended = sum(1 for line in lines if line[-1] in stop_set)
            else:
                ended = sum(1 for line in lines if line.endswith(self._stop_tuple))
            ratio = ended / n_lines
            if ratio < c.line_punct_thr and not (ratio == 0 and c.line_punct_exclude_zero):
                return drop["line_punct_ratio"]
        if c.short_line_thr is not None:
            short = sum(1 for line in lines if len(line) <= c.short_line_length)
            if short / n_lines > c.short_line_thr:
                return drop["short_line_ratio"]
        if c.char_duplicates_ratio is not None:
            # 分母 = 去掉换行后的字符数
            if count_duplicates(lines)[1] / (len(text) - text.count("\n")) > c.char_duplicates_ratio:
                return drop["char_dup_ratio"]
        if c.new_line_ratio is not None:
            n_words = len(_words(self.tokenizer, text))
            if n_words == 0 or text.count("\n") / n_words > c.new_line_ratio:
                return drop["list_ratio"]
        return KEEP


def fineweb_filters(tokenizer: Tokenizer = split_words) -> list[Filter]:
    """FineWeb 的启发式过滤链（datatrove examples/fineweb.py 的顺序）：Gopher 重复 → Gopher 质量 → C4 → FineWeb。"""
    return [
        GopherRepetitionFilter(GOPHER_REPETITION, tokenizer),
        GopherQualityFilter(GOPHER_QUALITY, tokenizer),
        C4QualityFilter(FINEWEB_C4),
        FineWebQualityFilter(FINEWEB_QUALITY, tokenizer),
    ]


# ---------------------------------------------------------------------------
# 演示
# ---------------------------------------------------------------------------
def shakespeare_passages(text: str, n: int, seed: int = 0) -> list[str]:
    """从语料里切 n 段长短不一的片段（按台词段落边界切，1..40 段），确定性。"""
    speeches = text.split("\n\n")
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        start = rng.randrange(len(speeches))
        out.append("\n\n".join(speeches[start : start + rng.choice((1, 2, 4, 8, 16, 40))]).strip())
    return out


def crafted_documents() -> list[str]:
    """为每条规则量身定做的坏文档（每条规则至少触发一次），外加几个边界情形（空文档、奇怪的换行符、引用标记）。"""
    filler = " ".join(f"word{i}x" for i in range(800))
    prose = "The king and the queen have gone to the hall with that old knight. "
    docs = [
        "", "\n\n  \n", "Buy now!!!", "hello world",
        "The cat sat on the mat. " * 20_001,  # > 100000 词（带句号：datatrove 的断句正则在没有句末标点的长行上是平方复杂度）
        "I a to of be an it we so " * 10,  # 平均词长 < 3
        "internationalization telecommunications " * 40,  # 平均词长 > 10
        "#hashtag of the day and that " * 20,
        "and then the story goes on with that ... " * 20,
        "\n".join(f"• item number {i} of the list and that" for i in range(60)),
        "\n".join(f"the stories of those heroes continued forever and ever with {i}…" for i in range(20)),
        "12345 67890 13579 24680 the of and to be with " * 8,  # 含字母的词 < 80%
        "Lorem ipsum dolor sit amet consectetur adipiscing elit sed do eiusmod tempor.\n" * 6,
        "Para one is here.\n\nPara one is here.\n\nPara one is here.\n\nOther para.",
        "\n\n".join([prose * 8, prose * 8, *(f"Short {i}." for i in range(7))]),
        "Yes.\nNo.\nYes.\nNo.\nYes.",
        "\n".join([prose * 6, *(f"line {i} here." for i in range(6)), prose * 6]),
        "\n\nLeading and trailing newlines make empty lines.\n\n",
        prose * 3 + "\nfunction f() { return 1; } and that is the end.\n" + prose,
        prose + "\nLorem ipsum dolor sit amet, consectetur adipiscing elit.\n" + prose,
        "A line without the end\n{ braces in a line that gets dropped first\n" + (prose + "\n") * 6,
        "\n".join([
            prose, "Please enable JavaScript to view the comments.", "By using this site you agree to our terms of use.",
            "a" * 1001 + " is a very long word.", "Hi there.", "This is true.[1]", "Some words here [citation needed]",
            "It trails off...", "Two short. Sentences here! And a third? Yes.", "The U.S. army is big.", prose,
        ]),
        "Only two sentences. Are here!",
        "Sentence one here.\r\nSentence two here.\x0bSentence three here.\u2028Sentence four here.\x85Five is here.",
        "\n".join(f"Yes {i}." for i in range(40)),  # 短行
        "\n".join(f"Menu item {i}" for i in range(40)),  # 没有句末标点
        "\n".join([prose * 2, prose * 2, *(prose.replace("king", f"king{i}") * 2 for i in range(20))]),
        "\n".join(f"Supercalifragilistic{i} antidisestablishmentarianism." for i in range(40)),  # 换行/词数
        "\n".join(f"This sentence ends with a space {i}. " for i in range(20)),  # FineWeb 怪癖：行尾空格
        "Ｆｕｌｌｗｉｄｔｈ！ 한국어 문장입니다。 Ελληνικά κείμενο; ¿Qué tal? " * 20,
    ]
    # 重复短语 + 不重复的填充词：扫过短语长度 n 与文档长度，让 top n-gram 与重复 n-gram 的各个阈值依次被越过
    for n in range(2, 11):
        phrase = " ".join(f"ph{n}w{j}abcdef"[: 4 + 2 * (j % 3)] for j in range(n))
        for size in (300, 500, 700, 900, 1200, 1500, 1800, 2200, 2700, 3300, 4000, 4700, 5400):
            pieces, k = [], 0
            for i, word in enumerate(filler[:size].split()):
                pieces.append(word)
                if i % 12 == 5 and k < 10:
                    pieces.append(phrase)
                    k += 1
            docs.append(" ".join(pieces) + ".")
    return docs


def perturbed_documents(passages: Sequence[str], seed: int = 0) -> list[str]:
    """把莎士比亚片段随机"弄脏"：加项目符号、省略号、井号、重复行、去标点、javascript/隐私政策行、引用标记……"""
    rng = random.Random(seed)
    junk = ("Please enable javascript.", "Read our privacy policy today.", "Click here", "#trending #now", "[edit]",
            "lorem ipsum dolor sit amet.", "var x = {a: 1};", "...", "• Home", "- Contact us")  # fmt: skip
    out = []
    for passage in passages:
        lines = passage.split("\n")
        for i in range(len(lines)):
            r = rng.random()
            if r < 0.08:
                lines[i] = "- " + lines[i]
            elif r < 0.14:
                lines[i] = lines[i].rstrip(".,;:!?") + "..."
            elif r < 0.18:
                lines[i] = lines[i] + " [" + str(rng.randrange(30)) + "]"
            elif r < 0.24:
                lines[i] = re.sub(r"[^\w\s]", "", lines[i])
            elif r < 0.28:
                lines[i] = lines[i] + " " + rng.choice(junk)
        if rng.random() < 0.3:
            lines += rng.choices(lines, k=rng.randrange(1, 4))
        if rng.random() < 0.3:
            lines.insert(rng.randrange(len(lines) + 1), rng.choice(junk))
        out.append("\n".join(lines))
    return out


def evaluation_documents(n_passages: int = 400, seed: int = 0) -> list[str]:
    """对照与基准用的文档集：莎士比亚片段 + 弄脏的片段 + 为每条规则定做的坏文档。"""
    from data_pipeline.corpora import load_corpus

    passages = shakespeare_passages(load_corpus("shakespeare"), n_passages, seed)
    return passages + perturbed_documents(passages[: n_passages // 2], seed) + crafted_documents()


def main() -> None:
    docs = evaluation_documents(100 if is_smoke() else 1000)
    filters = fineweb_filters()
    reasons: Counter[str] = Counter()
    removed_chars = 0
    t0 = time.perf_counter()
    for doc in docs:
        decision = apply_filters(doc, filters)
        if decision.keep:
            removed_chars += len(doc) - len(decision.text if decision.text is not None else doc)
        else:
            reasons[f"{decision.by}:{decision.reason}"] += 1
    seconds = time.perf_counter() - t0
    kept = len(docs) - sum(reasons.values())
    print(f"FineWeb 过滤链（Gopher 重复 → Gopher 质量 → C4 → FineWeb）：{len(docs)} 篇"
          f"（莎士比亚片段、弄脏的片段、定做的坏文档），保留 {kept}，{len(docs) / seconds:,.0f} 篇/s")
    print(f"C4 行过滤从保留的文档里删掉 {removed_chars:,} 字符；行统计：",
          {k: v for k, v in filters[2].line_stats.items() if v})
    print("丢弃理由（过滤器:理由）：")
    for reason, count in reasons.most_common():
        print(f"  {reason:<45} {count}")
    lengths = [len(d) for d in docs]
    print(f"文档长度中位数 {statistics.median(lengths):,.0f} 字符。对照 datatrove 的速度见 benchmarks/data_cleaning_filters.py")


if __name__ == "__main__":
    lesson_args(__doc__)
    main()
