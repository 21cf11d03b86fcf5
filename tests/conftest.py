"""测试公共设施：仓库根路径、按文件路径加载脚本（archive/ 的目录名带空格和撇号）、输出目录隔离。"""

from __future__ import annotations

import importlib.util
import os
import sys
import tempfile
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]

# 测试产生的图片与 checkpoint 写进临时目录，不覆盖学习者 checkpoints/ 里的真实结果
os.environ.setdefault("LLM_CHECKPOINTS_DIR", tempfile.mkdtemp(prefix="llm-test-ckpt-"))
os.environ.setdefault("MPLBACKEND", "Agg")

# pytest-xdist 的每个 worker 只用 1 个线程：2 核机器上 2 个 worker 各开 2 个线程只会互相抢核
if os.environ.get("PYTEST_XDIST_WORKER"):
    import torch

    torch.set_num_threads(1)


def load_script(path: str | os.PathLike, name: str | None = None):
    """按文件路径导入一个脚本（不执行它的 main()），返回模块对象。"""
    path = Path(path)
    if not path.is_absolute():
        path = REPO_ROOT / path
    if not path.exists():
        raise FileNotFoundError(path)
    name = name or "script_" + "".join(c if c.isalnum() else "_" for c in str(path.relative_to(REPO_ROOT)))
    if name in sys.modules:
        return sys.modules[name]
    from utils.exercise_workspace import swapped_path

    path = swapped_path(path)  # 练习模式（python -m utils.exercises check）：换成学习者工作区里的副本
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclass 等需要在执行期间能找到自己的模块
    try:
        spec.loader.exec_module(module)
    except BaseException:
        del sys.modules[name]
        raise
    return module


LIU2_DIR = REPO_ROOT / "archive" / "liu2_lecture"


def liu2_lecture(n: int):
    """刘二第 n 讲（archive/liu2_lecture/lectureNN_*.py）作为模块。"""
    (path,) = LIU2_DIR.glob(f"lecture{n:02d}_*.py")
    return load_script(path)


def horizontal_lines(ax) -> list[float]:
    """坐标轴里水平线（axhline 画的基线）的 y 值：图的测试用它确认基线画上了。"""
    return [line.get_ydata()[0] for line in ax.get_lines()
            if len(line.get_ydata()) == 2 and len(set(line.get_ydata())) == 1]


@pytest.fixture(autouse=True)
def _fixed_seed():
    """每个测试开始前固定全部随机种子：结果不依赖 pytest-xdist 把测试分给哪个 worker、以什么顺序运行。"""
    from utils.torch_playground import setup_seed

    setup_seed()


@pytest.fixture
def script_loader():
    return load_script


def cuda_available() -> bool:
    import torch

    return torch.cuda.is_available()


requires_cuda = pytest.mark.skipif(not cuda_available(), reason="needs an NVIDIA GPU")
