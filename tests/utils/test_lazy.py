"""utils.lazy.lazy_exports：按需导入、缓存、报错信息、dir()，以及三个门面包确实是懒的。"""

from __future__ import annotations

import importlib
import subprocess
import sys
import textwrap
import uuid

import pytest

from tests.conftest import REPO_ROOT
from utils.lazy import lazy_exports


@pytest.fixture
def make_package(tmp_path, monkeypatch):
    """在临时目录里造一个用 lazy_exports 的包；返回包名。测试结束时从 sys.modules 里清掉它。"""
    created: list[str] = []

    def make(init_body: str, submodules: dict[str, str]) -> str:
        name = f"lazy_pkg_{uuid.uuid4().hex[:8]}"
        pkg = tmp_path / name
        pkg.mkdir()
        (pkg / "__init__.py").write_text(textwrap.dedent(init_body).format(pkg=name))
        for sub, body in submodules.items():
            (pkg / f"{sub}.py").write_text(textwrap.dedent(body))
        created.append(name)
        return name

    monkeypatch.syspath_prepend(str(tmp_path))
    yield make
    for mod in [m for m in sys.modules if any(m == c or m.startswith(c + ".") for c in created)]:
        del sys.modules[mod]


RELATIVE_INIT = """
    from utils.lazy import lazy_exports

    _EXPORTS = {{"heavy_value": "heavy", "Helper": "heavy", "other": "light"}}
    __all__ = sorted(_EXPORTS)
    __getattr__, __dir__ = lazy_exports(globals(), _EXPORTS, relative=True)
"""
SUBMODULES = {
    "heavy": """
        import itertools
        LOADS = itertools.count(1)   # 每执行一次模块体加 1：看导入了几次
        LOADED = next(LOADS)
        heavy_value = 42
        class Helper:
            pass
    """,
    "light": "other = 'light'\n",
}


def test_target_module_is_imported_only_on_first_access(make_package):
    name = make_package(RELATIVE_INIT, SUBMODULES)
    pkg = importlib.import_module(name)
    assert f"{name}.heavy" not in sys.modules and f"{name}.light" not in sys.modules  # 导入包不加载子模块
    assert pkg.heavy_value == 42
    assert f"{name}.heavy" in sys.modules and f"{name}.light" not in sys.modules  # 只加载了被访问的那个


def test_value_is_cached_in_module_dict(make_package):
    name = make_package(RELATIVE_INIT, SUBMODULES)
    pkg = importlib.import_module(name)
    assert "Helper" not in vars(pkg)
    helper = pkg.Helper
    assert vars(pkg)["Helper"] is helper  # 写回模块字典：第二次访问不再经过 __getattr__
    assert pkg.Helper is helper and pkg.heavy_value == 42
    assert sys.modules[f"{name}.heavy"].LOADED == 1  # 同一模块的两个名字只导入一次
    from_import = {}
    exec(f"from {name} import Helper, other", from_import)  # from-import 同样走 __getattr__
    assert from_import["Helper"] is helper and from_import["other"] == "light"


def test_absolute_module_names(make_package):
    name = make_package(
        """
        from utils.lazy import lazy_exports

        _EXPORTS = {{"heavy_value": "{pkg}.heavy"}}
        __getattr__, __dir__ = lazy_exports(globals(), _EXPORTS)
        """,
        SUBMODULES,
    )
    assert importlib.import_module(name).heavy_value == 42


def test_unknown_name_lists_available_names_and_suggests_closest(make_package):
    name = make_package(RELATIVE_INIT, SUBMODULES)
    pkg = importlib.import_module(name)
    with pytest.raises(AttributeError) as info:
        pkg.Helpr
    message = str(info.value)
    assert f"module {name!r} has no attribute 'Helpr'" in message
    assert "'Helper'？" in message  # 拼写提示
    assert "Helper, heavy_value, other" in message  # 全部可用名字，排好序
    with pytest.raises(AttributeError, match="可用的名字") as info:
        pkg.zzz
    assert "是不是" not in str(info.value)  # 没有相近的名字就不瞎猜
    assert not hasattr(pkg, "__wrapped__")  # hasattr 依赖 AttributeError：inspect / pickle 的探测不能炸


def test_export_table_pointing_at_wrong_module_names_the_table(make_package):
    name = make_package(
        """
        from utils.lazy import lazy_exports

        __getattr__, __dir__ = lazy_exports(globals(), {{"missing": "light"}}, relative=True)
        """,
        SUBMODULES,
    )
    pkg = importlib.import_module(name)
    with pytest.raises(AttributeError, match=rf"'missing' 定义在 {name}\.light，但该模块里没有这个名字"):
        pkg.missing


def test_dir_lists_exports_and_real_globals(make_package):
    name = make_package(RELATIVE_INIT, SUBMODULES)
    pkg = importlib.import_module(name)
    listing = dir(pkg)
    assert listing == sorted(listing)
    assert {"Helper", "heavy_value", "other", "__all__", "lazy_exports"} <= set(listing)
    assert f"{name}.heavy" not in sys.modules  # dir() 本身不触发导入
    pkg.other
    assert dir(pkg).count("other") == 1  # 缓存后既在字典里又在导出表里，只列一次


def test_exports_are_copied_at_creation():
    namespace = {"__name__": "some_pkg"}
    exports = {"x": "json"}
    getattr_, _ = lazy_exports(namespace, exports)
    exports["y"] = "json"  # 之后改调用方的字典不影响已建好的门面
    with pytest.raises(AttributeError, match="'y'"):
        getattr_("y")


@pytest.mark.parametrize(
    ("module_globals", "exports", "error"),
    [
        ({}, {"x": "json"}, "globals()"),
        ({"__name__": "p"}, [("x", "json")], "字典"),
        ({"__name__": "p"}, {"not a name": "json"}, "不是合法的 Python 名字"),
        ({"__name__": "p"}, {"x": ""}, "非空的模块名"),
        ({"__name__": "p"}, {"x": None}, "非空的模块名"),
    ],
)
def test_bad_arguments_raise_type_error(module_globals, exports, error):
    with pytest.raises(TypeError, match=error):
        lazy_exports(module_globals, exports)


def test_the_three_facades_import_no_submodule():
    # 新进程：本进程里别的测试早已导入了这些子模块
    code = textwrap.dedent(
        """
        import sys
        import data_pipeline.tokenization as tok, model_lab, training_sys.optimization as opt
        for pkg, relative in ((tok, True), (model_lab, False), (opt, True)):
            assert pkg.__getattr__.__module__ == "utils.lazy", pkg.__name__
            assert sorted(dir(pkg)) == dir(pkg) and set(pkg.__all__) <= set(dir(pkg))
            for module in set(pkg._EXPORTS.values()):
                full = f"{pkg.__name__}.{module}" if relative else module
                assert full not in sys.modules, full
        print("ok")
        """
    )
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True, text=True, timeout=120, check=False
    )
    assert result.returncode == 0 and result.stdout.strip() == "ok", result.stderr
