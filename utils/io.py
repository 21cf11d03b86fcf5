"""路径、SMOKE 开关与原子写入：所有阶段共用的小工具。

- REPO_ROOT / DATA_DIR / CHECKPOINTS_DIR：数据缓存与运行产物的位置（两者的内容都不进 git）。
  环境变量 LLM_DATA_DIR / LLM_CHECKPOINTS_DIR 可以改到别处（测试里用临时目录）。
- is_smoke()：环境变量 SMOKE=1 时，每个脚本把规模缩小到几秒钟能跑完（冒烟测试用它）。
- atomic_write / atomic_path：先写临时文件再 rename。rename 在同一文件系统上是原子的，
  所以进程在任何时刻崩溃，目标文件要么是旧的完整版本，要么是新的完整版本，绝不会是写了一半的。
- save_figure：把 matplotlib 图原子地存进 checkpoints/figures/（或给定路径）并关掉它，返回路径。
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]


def data_dir() -> Path:
    """数据缓存目录（默认 <repo>/data，可用 LLM_DATA_DIR 覆盖）。"""
    return Path(os.environ.get("LLM_DATA_DIR", REPO_ROOT / "data"))


def checkpoints_dir() -> Path:
    """运行产物目录（默认 <repo>/checkpoints，可用 LLM_CHECKPOINTS_DIR 覆盖）。"""
    return Path(os.environ.get("LLM_CHECKPOINTS_DIR", REPO_ROOT / "checkpoints"))


def output_path(*parts: str) -> Path:
    """checkpoints/ 下的一个输出文件路径，父目录自动创建。例：output_path("figures", "rope.png")。"""
    path = checkpoints_dir().joinpath(*parts)
    path.parent.mkdir(parents=True, exist_ok=True)
    return path


def is_smoke() -> bool:
    """SMOKE=1（或任何非空、非 0 的值）时返回 True。"""
    return os.environ.get("SMOKE", "").strip() not in ("", "0", "false", "False")


@contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """给出一个同目录下的临时路径；with 块正常结束才 rename 成 path，出异常则删掉临时文件。

    用法：`with atomic_path("model.safetensors") as tmp: save_file(tensors, tmp)`
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        yield tmp
        # mkstemp 建的文件权限是 0600；改成普通文件的默认权限（受 umask 约束），否则缓存别人读不了
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def atomic_write(path: str | os.PathLike, data: str | bytes, encoding: str = "utf-8") -> Path:
    """原子地把 str 或 bytes 写进 path，返回 path。"""
    path = Path(path)
    with atomic_path(path) as tmp:
        if isinstance(data, str):
            tmp.write_text(data, encoding=encoding)
        else:
            tmp.write_bytes(data)
    return path


def save_figure(fig, name: str | os.PathLike, *, dpi: int = 120, **savefig_kwargs) -> Path:
    """原子地保存一张 matplotlib 图并关闭它（释放内存），返回保存的路径。

    name 是不带目录的字符串文件名（如 "rope.png"）时存到 output_path("figures", name)；Path 对象与带目录的
    字符串原样使用（Path("stats.png") 就是当前目录下的 stats.png）。
    格式取自后缀（临时文件的后缀是 .tmp，所以显式传 format，否则 matplotlib 会按 .tmp 猜格式而报错）。
    """
    import matplotlib.pyplot as plt  # 延迟导入：utils.io 被处处导入，不该为此付 matplotlib 的导入时间

    bare = isinstance(name, str) and "/" not in name and os.sep not in name
    path = output_path("figures", name) if bare else Path(name)
    fmt = path.suffix.lstrip(".").lower()
    try:
        if not fmt:
            raise ValueError(f"图的文件名 {str(name)!r} 没有后缀：写成 'xxx.png'（或 .pdf/.svg）让格式明确")
        with atomic_path(path) as tmp:
            fig.savefig(tmp, dpi=dpi, format=fmt, **savefig_kwargs)
    finally:
        plt.close(fig)
    return path


__all__ = ["REPO_ROOT", "atomic_path", "atomic_write", "checkpoints_dir", "data_dir", "is_smoke", "output_path",
           "save_figure"]
