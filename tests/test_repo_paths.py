"""仓库里的文件不指向仓库外的路径：克隆下来的仓库旁边没有 ../shared/，照着抄的命令会直接找不到文件。

数据一律走语料注册表 data_pipeline.corpora（`--corpus tinyshakespeare`：缓存在 data/corpora/，没有就下载，
离线时报错写明文件放到哪里）或项目内置的离线语料。
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

from tests.conftest import REPO_ROOT

# "../shared/…"，以及代码里拼出来的同一个位置：REPO_ROOT.parent / "shared"
OUTSIDE = re.compile(r"""\.\./shared\b|\.parent\s*/\s*["']shared["']""")
# 仍然提到它、由别人更新的文件（改好后从这里删掉，否则下面的测试提醒这一条已经过时）：
EXEMPT: dict[str, str] = {}


def tracked_files() -> list[str]:
    try:
        out = subprocess.run(["git", "ls-files", "-z"], cwd=REPO_ROOT, capture_output=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):  # 不是 git 检出（例如解压的源码包）：退回遍历目录
        skip = {".git", ".venv", "data", "checkpoints", "workspace", "__pycache__"}
        return sorted(str(p.relative_to(REPO_ROOT)) for p in REPO_ROOT.rglob("*")
                      if p.is_file() and not skip.intersection(p.relative_to(REPO_ROOT).parts))
    return [name for name in out.decode().split("\0") if name]


def mentions(name: str) -> list[str]:
    path = REPO_ROOT / name
    try:
        text = path.read_text(encoding="utf-8")
    except (UnicodeDecodeError, FileNotFoundError, IsADirectoryError):  # 二进制文件；已删除但未提交的文件
        return []
    return [f"{name}:{text.count(chr(10), 0, m.start()) + 1}: {m.group(0)}" for m in OUTSIDE.finditer(text)]


def test_no_file_points_outside_the_repository():
    this = str(Path(__file__).resolve().relative_to(REPO_ROOT))  # 本文件要写出这个模式才能查它
    hits = [hit for name in tracked_files() if name not in EXEMPT and name != this for hit in mentions(name)]
    assert not hits, ("这些文件引用了仓库外的路径（克隆里不存在）；改用 --corpus tinyshakespeare "
                      "（data_pipeline.corpora）或内置语料：\n" + "\n".join(hits))


def test_exemptions_are_still_needed():
    stale = [name for name in EXEMPT if not mentions(name)]
    assert not stale, f"{stale} 已经不再提到仓库外的路径：把它们从 EXEMPT 里删掉"


def test_pattern_catches_both_spellings():
    assert OUTSIDE.search("--data ../shared/data/tinyshakespeare.txt")
    assert OUTSIDE.search('DEFAULT_DATA = REPO_ROOT.parent / "shared" / "data"')
    assert not OUTSIDE.search("shared = view.untyped_storage()") and not OUTSIDE.search("-shared -fPIC")
