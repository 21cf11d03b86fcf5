"""按需导入的包"门面"：PEP 562 的模块级 __getattr__ / __dir__，三个包共用一份实现。

为什么要懒：`model_lab/__init__.py` 这样的门面若在导入时就加载全部子模块，`import model_lab` 会顺带导入
torch、transformers 等几秒钟的东西；更糟的是 `python -m training_sys.optimization.adamw` 运行一课时，
包的 __init__ 先把 adamw 当普通模块导入一遍，runpy 随后再执行一遍，并警告"模块已在 sys.modules 中"。
PEP 562 让模块也能定义 __getattr__：只有在模块字典里找不到某个名字时才调用它，于是第一次访问 `model_lab.Llama`
才去导入 llama.py，取到值后写回模块字典（缓存），之后的访问根本不再经过 __getattr__。

用法（写在包的 __init__.py 里）：

    from utils.lazy import lazy_exports

    _EXPORTS = {"Llama": "model_lab.02_architectures.llama"}       # 公开名字 -> 定义它的模块
    __all__ = sorted(_EXPORTS)
    __getattr__, __dir__ = lazy_exports(globals(), _EXPORTS)

    # 模块名相对本包时：{"AdamW": "adamw"} 表示 f"{__name__}.adamw"
    __getattr__, __dir__ = lazy_exports(globals(), _EXPORTS, relative=True)
"""

from __future__ import annotations

import difflib
import importlib
from collections.abc import Callable, Mapping, MutableMapping
from typing import Any


def lazy_exports(
    module_globals: MutableMapping[str, Any], exports: Mapping[str, str], *, relative: bool = False
) -> tuple[Callable[[str], Any], Callable[[], list[str]]]:
    """返回 (__getattr__, __dir__)，实现"公开名字 -> 模块"映射 exports 的按需导入。

    module_globals：包自己的 globals()；取到的值写回这里做缓存，__name__ 用于报错信息与相对导入。
    exports：公开名字 -> 定义它的模块的完整名字；relative=True 时是本包下的子模块名（"adamw"）。
    访问不在 exports 里的名字时抛 AttributeError，列出全部可用的名字，并提示拼写最接近的那个。
    """
    if not isinstance(module_globals, MutableMapping) or not isinstance(module_globals.get("__name__"), str):
        raise TypeError("lazy_exports 的第一个参数应是包自己的 globals()（一个带 __name__ 的字典）")
    if not isinstance(exports, Mapping):
        raise TypeError(f"exports 应是 {{公开名字: 模块名}} 的字典，收到的是 {type(exports).__name__}")
    for name, module_name in exports.items():
        if not (isinstance(name, str) and name.isidentifier()):
            raise TypeError(f"exports 的键 {name!r} 不是合法的 Python 名字")
        if not (isinstance(module_name, str) and module_name):
            raise TypeError(f"exports[{name!r}] 应是非空的模块名字符串，收到的是 {module_name!r}")
    package = module_globals["__name__"]
    # 复制一份：之后调用方再改自己的字典，不会让 __getattr__ 与 __all__ 说法不一
    targets = {name: f"{package}.{module}" if relative else module for name, module in exports.items()}

    def __getattr__(name: str) -> Any:
        module_name = targets.get(name)
        if module_name is None:
            hint = difflib.get_close_matches(name, targets, n=1)
            suggestion = f"（是不是想写 {hint[0]!r}？）" if hint else ""
            raise AttributeError(
                f"module {package!r} has no attribute {name!r}{suggestion}; 可用的名字：{', '.join(sorted(targets))}"
            )
        module = importlib.import_module(module_name)
        try:
            value = getattr(module, name)
        except AttributeError:
            # 否则 `from pkg import X` 只会说 "cannot import name"，看不出是门面的映射写错了
            raise AttributeError(
                f"{package} 的导出表说 {name!r} 定义在 {module_name}，但该模块里没有这个名字：请修正导出表"
            ) from None
        module_globals[name] = value  # 缓存：之后的访问直接命中模块字典，不再经过 __getattr__
        return value

    def __dir__() -> list[str]:
        return sorted(set(module_globals) | set(targets))

    return __getattr__, __dir__
