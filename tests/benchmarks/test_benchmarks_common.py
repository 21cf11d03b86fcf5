"""benchmarks/_common.py：RESULTS.md 的分段更新。"""

from __future__ import annotations

import pytest

from tests.conftest import REPO_ROOT, load_script

common = load_script(REPO_ROOT / "benchmarks" / "_common.py", name="benchmarks_common")


def test_update_results_replaces_only_its_own_section(tmp_path, monkeypatch):
    monkeypatch.delenv("SMOKE", raising=False)
    md = tmp_path / "RESULTS.md"
    md.write_text("# Benchmark results\n\nintro\n")
    common.update_results("a", "| x | 1 |", path=md)
    common.update_results("b", "B1", path=md)
    common.update_results("a", "| x | 2 |", path=md)
    text = md.read_text()
    assert text.count("<!-- BEGIN a -->") == 1 and "| x | 2 |" in text and "| x | 1 |" not in text
    assert "B1" in text and text.startswith("# Benchmark results\n\nintro")
    assert text.index("BEGIN a") < text.index("BEGIN b")


def test_update_results_is_a_dry_run_under_smoke(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("SMOKE", "1")
    md = tmp_path / "RESULTS.md"
    common.update_results("a", "x", path=md)
    assert not md.exists() and "SMOKE" in capsys.readouterr().out


def test_update_results_rejects_bad_key(tmp_path):
    with pytest.raises(ValueError, match="key"):
        common.update_results("Bad Key", "x", path=tmp_path / "R.md")


def test_machine_info_names_versions():
    info = common.machine_info()
    assert "torch" in info and "Python" in info


# ---------------------------------------------------------------------------
# corpus_file：基准的数据来源（--corpus / --data），SMOKE 时不联网
# ---------------------------------------------------------------------------
@pytest.fixture
def data_dir(tmp_path, monkeypatch):
    """语料缓存指向临时目录；_fetch 默认"离线"（真联网的测试不存在）。返回 (缓存目录, 被调用的 URL 列表)。"""
    from data_pipeline import corpora

    monkeypatch.setenv("LLM_DATA_DIR", str(tmp_path / "data"))
    calls: list[str] = []

    def offline(url, timeout=None):
        calls.append(url)
        raise OSError("network is unreachable")

    monkeypatch.setattr(corpora, "_fetch", offline)
    return tmp_path / "data" / "corpora", calls


def test_corpus_file_prefers_an_explicit_data_file(tmp_path, data_dir):
    text = tmp_path / "input.txt"
    text.write_text("hello")
    assert common.corpus_file("tinyshakespeare", text) == text
    with pytest.raises(SystemExit, match="--data .*文件不存在"):
        common.corpus_file("tinyshakespeare", tmp_path / "missing.txt")
    assert data_dir[1] == []


def test_corpus_file_never_downloads_under_smoke(data_dir):
    assert common.corpus_file("tinyshakespeare", smoke=True) is None
    assert data_dir[1] == []


def test_corpus_file_uses_the_cache(data_dir):
    cache = data_dir[0] / "tinyshakespeare.txt"
    cache.parent.mkdir(parents=True)
    cache.write_text("First Citizen:\nBefore we proceed any further, hear me speak.\n")
    assert common.corpus_file("tinyshakespeare") == cache
    assert common.corpus_file("tinyshakespeare", smoke=True) == cache
    assert data_dir[1] == []


def test_corpus_file_offline_says_where_to_put_the_file(data_dir):
    with pytest.raises(SystemExit) as exc:
        common.corpus_file("tinyshakespeare")
    msg = str(exc.value.code)
    assert "手动解决" in msg and str(data_dir[0] / "tinyshakespeare.txt") in msg and "char-rnn" in msg
    assert len(data_dir[1]) == 1  # 试过一次下载


def test_corpus_file_downloads_when_online(data_dir, monkeypatch):
    from data_pipeline import corpora

    monkeypatch.setattr(corpora, "_fetch", lambda url, timeout=None: b"First Citizen:\nSpeak, speak.\n")
    path = common.corpus_file("tinyshakespeare")
    assert path == data_dir[0] / "tinyshakespeare.txt" and path.read_text().startswith("First Citizen")


def test_corpus_file_rejects_an_unknown_corpus(data_dir):
    with pytest.raises(SystemExit, match="tinyshakespeare"):
        common.corpus_file("tiny-shakespeare")
