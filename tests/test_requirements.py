"""requirements.txt 的下限：每一行都有 `>=` 下限，下限本身是一个能被钉住的版本，当前环境装的版本满足它们。

下限是真的跑过测试的版本：`make test-min` 把每个 `>=` 换成 `==`（torch 例外，用 TORCH_SPEC），装进单独的
`.venv-min` 再跑快速测试。所以这里要求下限是"能原样写成 `==` 的单个正式版本"；它是否真的发布过
（曾经的 `regex>=2023.0` 就不存在，换成 `==` 装不上）只有 make test-min 联网安装时才查得出。
"""

from __future__ import annotations

import importlib.metadata
import re

import pytest
from packaging.requirements import Requirement
from packaging.version import Version

from tests.conftest import REPO_ROOT

REQUIREMENTS = REPO_ROOT / "requirements.txt"


def requirement_lines() -> list[str]:
    """requirements.txt 里去掉注释与空行后的每一行（`make test-min` 的 sed 也是逐行替换）。"""
    lines = []
    for raw in REQUIREMENTS.read_text(encoding="utf-8").splitlines():
        line = raw.split("#", 1)[0].strip()
        if line:
            lines.append(line)
    return lines


def lower_bound(req: Requirement) -> Version:
    """唯一的 `>=` 下限；没有或不止一个时报错（报错信息说明怎么改）。"""
    bounds = [s for s in req.specifier if s.operator == ">="]
    if len(bounds) != 1:
        raise ValueError(f"{req.name}：需要恰好一个 `>=` 下限（现在是 {str(req.specifier)!r}），"
                         "写成 `name>=X.Y` 并让 X.Y 是 make test-min 跑过的版本")
    return Version(bounds[0].version)


def test_requirements_file_is_not_empty():
    assert len(requirement_lines()) >= 10, "requirements.txt 读出来几乎是空的：解析写错了？"


@pytest.mark.parametrize("line", requirement_lines())
def test_every_requirement_has_a_pinnable_lower_bound(line):
    req = Requirement(line)
    floor = lower_bound(req)
    assert not floor.is_prerelease and not floor.is_devrelease and floor.local is None, (
        f"{req.name} 的下限 {floor} 应当是正式发布的版本")
    # make test-min 做的正是这个替换：`>=` → `==`，环境标记（`; sys_platform == ...`）原样保留
    pinned = Requirement(re.sub(r">=", "==", line, count=1))
    assert pinned.name == req.name and str(pinned.marker) == str(req.marker)
    assert [s.operator for s in pinned.specifier] == ["=="] and pinned.specifier.contains(str(floor))


@pytest.mark.parametrize("line", requirement_lines())
def test_installed_versions_satisfy_requirements(line):
    req = Requirement(line)
    if req.marker is not None and not req.marker.evaluate():
        pytest.skip(f"{req.name}：环境标记 {req.marker} 在这台机器上不成立")
    try:
        installed = importlib.metadata.version(req.name)
    except importlib.metadata.PackageNotFoundError:
        pytest.fail(f"{req.name} 没有安装：运行 make install（或 pip install -r requirements.txt）")
    # prereleases=True：torch 的 "2.13.0+cpu" 这类本地版本、夜间版也按版本号比较
    assert req.specifier.contains(installed, prereleases=True), (
        f"{req.name} {installed} 不满足 {req.specifier}：运行 make install 升级，或确认下限写对了")
