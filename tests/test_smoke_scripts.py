"""冒烟测试：找出各阶段目录里每个可运行的脚本，以 SMOKE=1 从仓库根目录启动，断言退出码为 0。

"可运行的脚本" = 含有 `if __name__ == "__main__":` 的 .py 文件（`__init__.py` 与 `_` 开头的辅助模块除外）。
新脚本放进这些目录就自动加入，不需要登记。每个脚本必须在不带参数、SMOKE=1 时几秒内跑完。
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO_ROOT

STAGE_DIRS = ("archive", "data_pipeline", "model_lab", "training_sys", "inference_engine", "benchmarks")
MAIN_GUARD = re.compile(r"""^if\s+__name__\s*==\s*['"]__main__['"]\s*:""", re.MULTILINE)
TIMEOUT_S = 240


def discover_scripts(root: Path = REPO_ROOT) -> list[Path]:
    scripts = []
    for stage in STAGE_DIRS:
        base = root / stage
        if not base.is_dir():
            continue
        for path in sorted(base.rglob("*.py")):
            if path.name == "__init__.py" or (path.name.startswith("_") and path.name != "__main__.py"):
                continue
            if "__pycache__" in path.parts:
                continue
            if MAIN_GUARD.search(path.read_text(encoding="utf-8")):
                scripts.append(path)
    return scripts


def command_for(path: Path) -> list[str]:
    if path.name == "__main__.py":  # 包的入口：python -m package
        package = ".".join(path.parent.relative_to(REPO_ROOT).parts)
        return [sys.executable, "-m", package]
    return [sys.executable, str(path.relative_to(REPO_ROOT))]


SCRIPTS = discover_scripts()


def test_discovery_finds_scripts_with_odd_names():
    # 路径里有空格和撇号的脚本（archive/Let's_build_GPT）也必须被发现
    assert any("'" in str(p) for p in SCRIPTS), SCRIPTS


@pytest.mark.parametrize("path", SCRIPTS, ids=[str(p.relative_to(REPO_ROOT)) for p in SCRIPTS])
def test_script_runs_with_smoke(path: Path, tmp_path: Path):
    env = dict(os.environ)
    env.update(
        SMOKE="1",
        PYTHONPATH=str(REPO_ROOT),
        MPLBACKEND="Agg",
        LLM_CHECKPOINTS_DIR=str(tmp_path / "checkpoints"),
        TQDM_DISABLE="1",
        # pytest-xdist 已经在每个核上跑一个 worker：子进程再开多线程只会互相抢核、慢一个数量级
        OMP_NUM_THREADS="1",
    )
    proc = subprocess.run(
        command_for(path), cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=TIMEOUT_S
    )
    assert proc.returncode == 0, (
        f"{path.relative_to(REPO_ROOT)} exited with {proc.returncode}\n"
        f"--- stdout (tail) ---\n{proc.stdout[-3000:]}\n--- stderr (tail) ---\n{proc.stderr[-3000:]}"
    )
