"""练习目录的分册（见 utils/exercise_catalog.py 的说明）：EXERCISES = {仓库相对路径: (Exercise, …)}。"""

from __future__ import annotations

from utils.exercise_catalog import E, Exercise, _in  # noqa: F401

EXERCISES: dict[str, tuple[Exercise, ...]] = {}
