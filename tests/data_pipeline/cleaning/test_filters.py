"""质量过滤器：与 datatrove 的 Gopher 质量/重复、C4、FineWeb 过滤器逐篇对照（决定、理由、C4 改写后的文本、行统计），
每条规则至少触发一次，照搬/刻意不同的 datatrove 怪癖各有一个例子。"""

from __future__ import annotations

import inspect
import warnings
from collections import Counter

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from data_pipeline.cleaning import filters as F

datatrove_filters = pytest.importorskip("datatrove.pipeline.filters")
from datatrove.data import Document  # noqa: E402
from datatrove.pipeline.filters.gopher_repetition_filter import (  # noqa: E402
    find_all_duplicate,
    find_top_duplicate,
    get_n_grams,
)
from datatrove.utils.text import split_into_sentences, split_into_words  # noqa: E402

TOK = F.datatrove_tokenizer()


@pytest.fixture(scope="module")
def docs() -> list[str]:
    docs = F.evaluation_documents(400)
    assert len(docs) >= 500
    return docs


def reference_decision(ref, text: str) -> tuple[bool, str | None, str]:
    doc = Document(text=text, id="0")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # np.mean([]) 的 RuntimeWarning
        result = ref.filter(doc)
    keep, reason = (result, None) if isinstance(result, bool) else result
    return keep, reason, doc.text


PAIRS = {
    "gopher_quality": (lambda: F.GopherQualityFilter(), lambda: datatrove_filters.GopherQualityFilter(language=TOK)),
    "gopher_repetition": (
        lambda: F.GopherRepetitionFilter(),
        lambda: datatrove_filters.GopherRepetitionFilter(language=TOK),
    ),
    "c4_datatrove": (lambda: F.C4QualityFilter(F.C4_DATATROVE), lambda: datatrove_filters.C4QualityFilter(language=TOK)),
    "fineweb_quality": (lambda: F.FineWebQualityFilter(), lambda: datatrove_filters.FineWebQualityFilter(language=TOK)),
}


@pytest.mark.parametrize("name", list(PAIRS))
def test_same_decision_reason_and_text_as_datatrove(name, docs):
    make_ours, make_ref = PAIRS[name]
    ours, ref = make_ours(), make_ref()
    mismatches = []
    for i, text in enumerate(docs):
        decision = ours(text)
        keep, reason, ref_text = reference_decision(ref, text)
        our_text = decision.text if decision.text is not None else text
        if (decision.keep, decision.reason) != (keep, reason) or (keep and our_text != ref_text):
            mismatches.append((i, decision, keep, reason))
    assert not mismatches, f"{len(mismatches)}/{len(docs)} 篇不一致，例如 {mismatches[:3]}"
    # 每条规则（理由代码）至少触发一次，也有被保留的文档
    fired = Counter(ours(text).reason for text in docs)
    assert set(ours.reasons) <= set(fired), f"没有触发的理由：{set(ours.reasons) - set(fired)}"
    assert fired[None] > 0


@pytest.mark.parametrize(
    ("config", "kwargs"),
    [(F.FINEWEB_C4, {"filter_no_terminal_punct": False}), (F.C4QualityConfig(split_paragraph=False), {"split_paragraph": False})],
    ids=["fineweb_c4", "sentence_mode"],
)
def test_c4_variants_match_datatrove(config, kwargs, docs):
    ours, ref = F.C4QualityFilter(config), datatrove_filters.C4QualityFilter(language=TOK, **kwargs)
    subset = docs[::3]  # 按句切分时两边都要跑整篇的断句正则，取三分之一控制时间
    for text in subset:
        decision = ours(text)
        keep, reason, ref_text = reference_decision(ref, text)
        assert (decision.keep, decision.reason) == (keep, reason), text[:200]
        if keep:
            assert (decision.text if decision.text is not None else text) == ref_text


def test_c4_line_statistics_match_datatrove(docs):
    ours, ref = F.C4QualityFilter(), datatrove_filters.C4QualityFilter(language=TOK)
    for text in docs:
        ours(text)
        reference_decision(ref, text)
    for key, count in ours.line_stats.items():
        assert ref.stats[key].total == count, key
    assert ours.line_stats["line-filter-javascript"] > 0 and ours.line_stats["line-filter-policy"] > 0
    assert ours.line_stats["line-filter-too_long_word"] > 0 and ours.line_stats["line-filter-no_terminal_punc"] > 0


def test_fineweb_chain_matches_datatrove_pipeline(docs):
    """apply_filters 的组合语义 = datatrove 流水线：按顺序过滤，C4 改写后的文本交给下一个过滤器。"""
    ours = F.fineweb_filters()
    refs = [
        datatrove_filters.GopherRepetitionFilter(language=TOK),
        datatrove_filters.GopherQualityFilter(language=TOK),
        datatrove_filters.C4QualityFilter(language=TOK, filter_no_terminal_punct=False),
        datatrove_filters.FineWebQualityFilter(language=TOK),
    ]
    for text in docs[::2]:
        decision = F.apply_filters(text, ours)
        current, expected = text, (True, None, None)
        for our_filter, ref in zip(ours, refs):
            keep, reason, current = reference_decision(ref, current)
            if not keep:
                expected = (False, reason, our_filter.name)
                break
        assert (decision.keep, decision.reason, decision.by) == expected
        if decision.keep:
            assert (decision.text if decision.text is not None else text) == current


def test_tokenizer_adapter_and_sentence_splitting_are_datatrove_s(docs):
    for text in docs[:300]:
        assert split_into_words(text, TOK) == F.split_words(text)
        assert F._sentence_pieces(text) == split_into_sentences(text, TOK)
    lines = [line.strip() for text in docs for line in text.splitlines()][:20_000]
    assert [F.count_sentences(line) for line in lines] == [len(F.split_sentences(line)) for line in lines]


@settings(max_examples=300, deadline=None)
@given(st.text(alphabet="aAUS. !?'\"”।\n", max_size=40))
def test_count_sentences_and_pieces_match_the_regex(text):
    assert F.count_sentences(text) == len(F.split_sentences(text))
    assert F._sentence_pieces(text) == split_into_sentences(text, TOK)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.sampled_from(["a", "b", "ab", "c", "bc", "abc", "the", "x"]), max_size=60), st.integers(2, 10))
def test_ngram_helpers_match_datatrove(words, n):
    # 小词表让 "".join 碰撞（("ab","c") 与 ("a","bc")）经常发生——datatrove 的怪癖必须照搬
    grams = get_n_grams(words, n)
    assert F.top_ngram_chars(words, n) == (find_top_duplicate(grams) if grams else 0)
    assert F.duplicated_ngram_chars(words, n) == find_all_duplicate(words, n)


def test_presets_are_the_papers_and_datatrove_defaults():
    def defaults(cls) -> dict:
        return {k: p.default for k, p in inspect.signature(cls.__init__).parameters.items() if p.default is not p.empty}

    gq = defaults(datatrove_filters.GopherQualityFilter)
    assert F.GOPHER_QUALITY.min_doc_words == gq["min_doc_words"] == 50
    assert F.GOPHER_QUALITY.min_alpha_words_ratio == gq["max_non_alpha_words_ratio"] == 0.8
    assert F.GOPHER_QUALITY.stop_words == F.GOPHER_STOP_WORDS
    gr = defaults(datatrove_filters.GopherRepetitionFilter)
    assert F.GOPHER_REPETITION.top_n_grams == gr["top_n_grams"]
    assert F.GOPHER_REPETITION.dup_n_grams == gr["dup_n_grams"]
    fw = defaults(datatrove_filters.FineWebQualityFilter)
    assert (F.FINEWEB_QUALITY.line_punct_thr, F.FINEWEB_QUALITY.short_line_thr) == (fw["line_punct_thr"], 0.67)
    assert (F.FINEWEB_QUALITY.char_duplicates_ratio, F.FINEWEB_QUALITY.new_line_ratio) == (0.01, 0.3)
    c4 = defaults(datatrove_filters.C4QualityFilter)
    assert (F.C4_DATATROVE.min_num_sentences, F.C4_DATATROVE.min_words_per_line) == (c4["min_num_sentences"], 3)
    # TFDS c4_utils：≥ 3 句、每行 ≥ 5 词、句末标点 . ? ! "
    assert (F.C4_QUALITY.min_num_sentences, F.C4_QUALITY.min_words_per_line) == (3, 5)
    assert F.C4_QUALITY.end_punctuation == (".", "?", "!", '"')


def test_bad_thresholds_raise_and_none_disables():
    with pytest.raises(ValueError, match="min_alpha_words_ratio"):
        F.GopherQualityConfig(min_alpha_words_ratio=1.5)
    with pytest.raises(ValueError, match="top_n_grams"):
        F.GopherRepetitionConfig(top_n_grams=((0, 0.2),))
    with pytest.raises(ValueError, match="min_num_sentences"):
        F.C4QualityConfig(min_num_sentences=-1)
    lorem = "Lorem ipsum dolor sit amet consectetur adipiscing elit sed do eiusmod tempor.\n" * 6
    assert F.GopherQualityFilter()(lorem).reason == "gopher_enough_stop_words"
    assert F.GopherQualityFilter(F.GopherQualityConfig(min_stop_words=None))(lorem).keep
    assert not F.C4QualityFilter()(lorem).keep
    assert F.C4QualityFilter(F.C4QualityConfig(filter_lorem_ipsum=False, min_num_sentences=None))(lorem).keep


def test_datatrove_quirks_we_match():
    # 停用词区分大小写
    text = " ".join(["The", "Be"] + [f"word{i}" for i in range(60)])
    assert F.GopherQualityFilter()(text).reason == "gopher_enough_stop_words"
    # 只出现一次的 2-gram 也算 "top"：极短文档被 top_2_gram 丢掉
    assert F.GopherRepetitionFilter()("hello world").reason == "top_2_gram"
    # 没有句末标点、先被删掉的行里的 "{" 不会让整页被丢
    prose = "The king and the queen have gone to the hall with that old knight.\n"
    kept = F.C4QualityFilter()("{ braces in a line without an end\n" + prose * 6)
    assert kept.keep and "{" not in kept.text
    # FineWeb 用未 strip 的行判断句末标点：行尾空格让句号"不算数"
    spaced = "\n".join(f"This sentence ends with a space number {i}. " for i in range(10))
    assert F.FineWebQualityFilter()(spaced).reason == "line_punct_ratio"
    assert F.FineWebQualityFilter()(spaced.replace(". ", ".")).keep
    # 重复 n-gram 用空串连接：("ab","c",...) 与 ("a","bc",...) 是同一个 n-gram
    assert F.duplicated_ngram_chars(["ab", "c", "d", "e", "f", "a", "bc", "d", "e", "f"], 5) == 6


def test_deliberate_deviations_from_datatrove():
    """datatrove 在这些输入上除以零；我们给出丢弃决定。"""
    config = F.GopherQualityConfig(min_doc_words=None)
    assert F.GopherQualityFilter(config)("").reason == "gopher_short_doc"
    with pytest.raises(ZeroDivisionError), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        datatrove_filters.GopherQualityFilter(min_doc_words=None, language=TOK).filter(Document(text="", id="0"))
    no_words = F.FineWebQualityFilter(tokenizer=lambda text: [])
    assert no_words("A line that ends with a period.").reason == "list_ratio"


def test_apply_filters_protocol_and_errors():
    filters = F.fineweb_filters()
    assert all(isinstance(f, F.Filter) for f in filters)
    assert F.apply_filters("", filters) == F.Decision(False, "empty", by="gopher_repetition")
    with pytest.raises(TypeError, match="str"):
        F.apply_filters(b"bytes", filters)
    # C4 改写了文本、后面的过滤器都通过：最终文本放在 Decision.text
    sentences = [
        "The king and the queen have gone to the great hall with that old knight.",
        "Their horses waited outside in the cold rain of the northern morning.",
        "A servant brought bread and wine to the tired travellers at the gate.",
        "Nobody in the castle knew that the letter had been opened in secret.",
        "When the bells rang at noon, the whole town gathered in the square.",
        "She said that she would rather die than marry the duke of the west.",
        "The old steward kept his silence, though he had seen everything.",
    ]
    text = "\n".join(sentences) + "\nMenu\n"
    decision = F.apply_filters(text, filters)
    assert decision.keep and decision.text == "\n".join(sentences)


# ---------------------------------------------------------------------------
# 练习模式用的单独对照（utils/exercise_parts/cleaning.py）：重复行/段落的计数
# ---------------------------------------------------------------------------
@settings(max_examples=200, deadline=None)
@given(st.lists(st.sampled_from(["", "a", "ab", "the king", "the king ", "\u00e9", "x" * 30]), max_size=40))
def test_count_duplicates_equals_datatrove(items):
    from datatrove.pipeline.filters.gopher_repetition_filter import find_duplicates

    assert F.count_duplicates(items) == find_duplicates(items)
    # 第一次出现不算：三行相同 = 2 个重复、2 份字符
    assert F.count_duplicates(["ab", "cd", "ab", "ab"]) == (2, 4)
