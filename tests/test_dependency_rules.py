"""依赖方向（docs/ARCHITECTURE.md §3）由测试守住：逐个文件解析 import 语句（含 importlib.import_module 的字符串），
谁也不能往上、往旁边 import。箭头一旦画错，这里会指出是哪个文件的哪一行。"""

from __future__ import annotations

import ast

import pytest

from tests.conftest import REPO_ROOT

PROJECT = ("utils", "data_pipeline", "model_lab", "training_sys", "inference_engine")
# 每一层允许 import 的项目内包（自己总是允许的）
ALLOWED = {
    "utils": set(),
    "data_pipeline": {"utils"},
    "model_lab": {"utils"},
    "inference_engine": {"model_lab", "utils"},
    "training_sys": {"inference_engine", "model_lab", "data_pipeline", "utils"},
}
# archive/ 的课程只用 utils，外加唯一的例外：data_pipeline.corpora（课程的数据）
ARCHIVE_ALLOWED = ("utils", "data_pipeline.corpora")


def imported_modules(path) -> list[tuple[int, str]]:
    """(行号, 模块名)：import / from-import（绝对导入）与 importlib.import_module("…") 的字面量。"""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            out.append((node.lineno, node.module))
        elif (isinstance(node, ast.Call) and getattr(node.func, "attr", getattr(node.func, "id", None)) == "import_module"
              and node.args and isinstance(node.args[0], ast.Constant) and isinstance(node.args[0].value, str)):
            out.append((node.lineno, node.args[0].value))
    return out


def files_of(top: str):
    return sorted(p for p in (REPO_ROOT / top).rglob("*.py") if p.is_file())


@pytest.mark.parametrize("layer", sorted(ALLOWED))
def test_layer_imports_only_what_it_may(layer):
    violations = []
    for path in files_of(layer):
        for lineno, module in imported_modules(path):
            top = module.split(".")[0]
            if top in PROJECT and top != layer and top not in ALLOWED[layer]:
                violations.append(f"{path.relative_to(REPO_ROOT)}:{lineno} imports {module}")
    assert not violations, (f"{layer}/ 只能 import {sorted(ALLOWED[layer]) or '项目外的包'}（docs/ARCHITECTURE.md §3）：\n"
                            + "\n".join(violations))


def test_kernels_depend_only_on_utils():
    """inference_engine/kernels/ 是最底层的积木：只 import utils 与自己；它注册进模型，而不是 import 模型。"""
    violations = []
    for path in sorted((REPO_ROOT / "inference_engine" / "kernels").rglob("*.py")):
        for lineno, module in imported_modules(path):
            if module.split(".")[0] in PROJECT and not module.startswith(("utils", "inference_engine.kernels")):
                violations.append(f"{path.relative_to(REPO_ROOT)}:{lineno} imports {module}")
    assert not violations, "inference_engine/kernels/ 只 import utils 与 inference_engine.kernels：\n" + "\n".join(violations)


def test_archive_lessons_are_self_contained():
    violations = []
    for path in files_of("archive"):
        for lineno, module in imported_modules(path):
            if module.split(".")[0] in PROJECT and not module.startswith(ARCHIVE_ALLOWED):
                violations.append(f"{path.relative_to(REPO_ROOT)}:{lineno} imports {module}")
    assert not violations, "archive/ 的课程只 import utils 与 data_pipeline.corpora：\n" + "\n".join(violations)


def test_the_checker_sees_every_kind_of_import(tmp_path):
    """检查器本身：三种写法都要被认出来，否则上面的测试形同虚设。"""
    src = tmp_path / "x.py"
    src.write_text("import training_sys.pretrain\nfrom model_lab import Llama\n"
                   "import importlib\nm = importlib.import_module('inference_engine.kernels')\nfrom . import y\n")
    assert [m for _, m in imported_modules(src)] == ["training_sys.pretrain", "model_lab", "importlib",
                                                     "inference_engine.kernels"]
