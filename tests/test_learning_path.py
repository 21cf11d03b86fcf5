"""docs/LEARNING_PATH.md：每个相对链接都指向仓库里真实存在的文件或目录；第一阶段的每个课程脚本都被排进了主线或支线。"""

from __future__ import annotations

import re
from urllib.parse import unquote

from tests.conftest import REPO_ROOT

DOC = REPO_ROOT / "docs" / "LEARNING_PATH.md"
LINK = re.compile(r"\]\(([^)#\s]+)(?:#[^)]*)?\)")


def test_every_relative_link_exists():
    text = DOC.read_text(encoding="utf-8")
    links = [unquote(m) for m in LINK.findall(text) if not m.startswith(("http://", "https://"))]
    assert len(links) > 60  # 路线里每一站都链接到文件
    missing = [link for link in links if not (DOC.parent / link).exists()]
    assert not missing, f"LEARNING_PATH.md 里的链接指向不存在的路径：{missing}"


def test_every_stage_one_lesson_is_placed_on_the_path():
    """新加的课程脚本要在路线里有位置（主线的一站，或支线的一条）：按文件名或它所在的目录被提到。"""
    text = unquote(DOC.read_text(encoding="utf-8"))
    lessons = sorted(p for p in (REPO_ROOT / "archive").rglob("*.py") if p.name != "__init__.py")
    assert len(lessons) >= 56
    day = re.compile(r"day(\d\d)[–-]day(\d\d)")
    covered_days = {d for a, b in day.findall(text) for d in range(int(a), int(b) + 1)}
    covered_days |= {int(d) for d in re.findall(r"day(\d\d)(?![–-]day)", text)}
    unplaced = []
    for path in lessons:
        rel = path.relative_to(REPO_ROOT).as_posix()
        m = re.match(r"day(\d\d)_", path.name)
        if m:
            if int(m.group(1)) not in covered_days:
                unplaced.append(rel)
        elif rel not in text and f"{path.parent.relative_to(REPO_ROOT).as_posix()}/" not in text:
            unplaced.append(rel)
    assert not unplaced, f"这些课程脚本不在 LEARNING_PATH.md 的主线或支线里：{unplaced}"
