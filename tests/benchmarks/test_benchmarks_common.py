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
