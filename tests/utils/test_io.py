"""utils.io：save_figure 原子地保存并关闭图。"""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")
from pathlib import Path

import matplotlib.pyplot as plt
import pytest

from utils.io import checkpoints_dir, save_figure


def _fig():
    fig, ax = plt.subplots()
    ax.plot([0, 1], [1, 0])
    return fig


def test_bare_name_goes_under_checkpoints_figures_and_the_figure_is_closed():
    fig = _fig()
    path = save_figure(fig, "unit_test_plot.png", dpi=50)
    assert path == checkpoints_dir() / "figures" / "unit_test_plot.png"
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not plt.fignum_exists(fig.number)
    assert not list(path.parent.glob(".unit_test_plot.png.*"))  # 没有留下临时文件


def test_explicit_path_and_format_from_suffix(tmp_path, monkeypatch):
    path = save_figure(_fig(), tmp_path / "sub" / "plot.svg")
    assert path == tmp_path / "sub" / "plot.svg" and path.read_text().lstrip().startswith("<?xml")
    monkeypatch.chdir(tmp_path)  # Path 对象即使没有目录部分也是"当前目录下"，不会被挪进 figures/
    assert save_figure(_fig(), Path("here.png"), dpi=20) == Path("here.png") and (tmp_path / "here.png").exists()


def test_failed_save_leaves_no_file_and_still_closes(tmp_path):
    fig = _fig()
    with pytest.raises(ValueError, match="没有后缀"):
        save_figure(fig, tmp_path / "plot")
    assert not plt.fignum_exists(fig.number)
    fig = _fig()
    with pytest.raises(ValueError):
        save_figure(fig, tmp_path / "plot.nosuchformat")
    assert not plt.fignum_exists(fig.number) and list(tmp_path.iterdir()) == []
