"""第 14 天 nn.Module 内部：参数、buffer、子模块与 state_dict。

nn.Module 的"魔法"全在 __setattr__ 里：给 self 赋值时按类型分到三个有序字典——
    self._parameters   nn.Parameter（要训练的张量，requires_grad=True，parameters() 返回它们）
    self._buffers      register_buffer 注册的张量（跟着模型走、要保存，但不训练：BatchNorm 的 running_mean）
    self._modules      子模块（nn.Module）
普通张量属性（self.t = torch.zeros(3)）哪个字典都不进：不会被 .to(device) 搬走、不进 state_dict——常见 bug。

1. named_parameters() / named_buffers() / named_modules() 递归遍历子模块，名字用 "." 拼接前缀
   （"encoder.0.weight"）；named_modules() 是前序遍历，根模块的名字是空串 ""；
   parameters() 对共享的参数去重。
2. state_dict() 的顺序：先自己的参数，再自己的**持久** buffer（register_buffer(..., persistent=False) 的不保存），
   再按注册顺序递归每个子模块。值是 detach 过的张量（与模型共享存储）。
   load_state_dict(sd, strict=True) 按名字逐个 copy_ 进去，名字多了或少了都报错；strict=False 时不报错，
   缺失/多余的键在返回值的 missing_keys / unexpected_keys 里（形状不符时两种模式都报错）。
3. model.to(dtype) 只转换**浮点**参数和 buffer：BatchNorm 的 num_batches_tracked（int64）保持不变。
4. requires_grad_(False) 冻结参数（微调时冻结主干）；按名字前缀冻结时注意 "1" 是 "10." 的前缀——
   要比较 "1." 而不是 "1"。
5. train() / eval() 只是设置每个子模块的 self.training 标志；Dropout 和 BatchNorm 依据它改变行为。
   BatchNorm 训练时用本 batch 的统计量归一化（方差除以 n），同时更新滑动平均
       running_mean ← (1 − momentum)·running_mean + momentum·batch_mean
       running_var  ← (1 − momentum)·running_var  + momentum·batch_var_unbiased（除以 n − 1！）

练习：ex1–ex7，多数题要求直接读写 _parameters / _buffers / _modules，不许用现成的遍历方法。运行：

    python archive/28days_challenges/day14_module_internals.py
"""

from __future__ import annotations

from collections import OrderedDict

import torch
import torch.nn as nn

from utils import exercises
from utils.lesson_cli import lesson_args


# =============================================================================
# 练习（函数体就是参考解答；想自己做，就把函数体换成 raise NotImplementedError 再运行本文件）
# =============================================================================
def ex1_count_parameters(model: nn.Module) -> int:
    """参数总个数（对照 sum(p.numel() for p in model.parameters())）。
    只许用 _parameters 和 _modules 递归（本题的模型里没有共享参数）。"""
    own = sum(p.numel() for p in model._parameters.values() if p is not None)
    return own + sum(ex1_count_parameters(child) for child in model._modules.values() if child is not None)


def ex2_state_dict(model: nn.Module, prefix: str = "") -> OrderedDict:
    """手写 state_dict（对照 model.state_dict()，键的顺序也要一样）：自己的参数 → 自己的持久 buffer → 子模块。
    非持久 buffer 的名字在 module._non_persistent_buffers_set 里。值用 .detach()。"""
    out = OrderedDict()
    for name, p in model._parameters.items():
        if p is not None:
            out[prefix + name] = p.detach()
    for name, b in model._buffers.items():
        if b is not None and name not in model._non_persistent_buffers_set:
            out[prefix + name] = b.detach()
    for name, child in model._modules.items():
        if child is not None:
            out.update(ex2_state_dict(child, prefix + name + "."))
    return out


def ex3_named_modules(model: nn.Module, prefix: str = "") -> list[str]:
    """所有子模块的名字，前序遍历，根是 ""（对照 [n for n, _ in model.named_modules()]）。只许用 _modules。"""
    names = [prefix]
    for name, child in model._modules.items():
        if child is not None:
            names += ex3_named_modules(child, f"{prefix}.{name}" if prefix else name)
    return names


def ex4_load_state_dict(model: nn.Module, state: dict) -> OrderedDict:
    """不用 load_state_dict，把 state 里的张量按名字原地拷进 model 的参数与 buffer，返回 model.state_dict()。
    提示：拷贝参数要在 torch.no_grad() 里做（对需要梯度的叶子原地修改会报错）。"""
    targets = dict(model.named_parameters())
    targets.update(model.named_buffers())
    with torch.no_grad():
        for name, value in state.items():
            targets[name].copy_(value)
    return model.state_dict()


def ex5_dtypes_after_to_double(model: nn.Module) -> dict[str, torch.dtype]:
    """不调用 .to：预测 model.to(torch.float64) 之后 state_dict 里每个张量的 dtype（只有浮点张量被转换）。"""
    return {name: torch.float64 if t.is_floating_point() else t.dtype for name, t in model.state_dict().items()}


def ex6_trainable_after_freeze(model: nn.Module, prefix: str) -> list[str]:
    """把子模块 prefix（如 "1"）下的所有参数冻结后，还需要梯度的参数名列表（按 named_parameters 的顺序）。
    只用名字判断，不要真的冻结；陷阱：prefix "1" 不应冻结 "10.weight"。"""
    return [name for name, _ in model.named_parameters() if not name.startswith(prefix + ".")]


def ex7_batchnorm_running_stats(bn: nn.BatchNorm1d, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """不调用 bn(x)：算出训练模式下对 (N, C) 的 x 做一次前向后的 (running_mean, running_var)。
    滑动平均用 bn.momentum；running_var 用**无偏**方差。"""
    m = bn.momentum
    mean = x.mean(0)
    var_unbiased = x.var(0, correction=1)
    return (1 - m) * bn.running_mean + m * mean, (1 - m) * bn.running_var + m * var_unbiased


# =============================================================================
# 参考实现与输入
# =============================================================================
class Block(nn.Module):
    """一个带各种"东西"的小模块：参数、持久 buffer、非持久 buffer、普通张量属性、嵌套子模块。"""

    def __init__(self, dim: int):
        super().__init__()
        self.proj = nn.Linear(dim, dim)
        self.norm = nn.BatchNorm1d(dim)
        self.scale = nn.Parameter(torch.ones(dim))
        self.register_buffer("step", torch.zeros((), dtype=torch.int64))
        self.register_buffer("cache", torch.zeros(dim), persistent=False)  # 不进 state_dict
        self.not_registered = torch.zeros(dim)  # 普通属性：不是参数也不是 buffer

    def forward(self, x):
        return self.norm(self.proj(x)) * self.scale


def _randint(g: torch.Generator, lo: int, hi: int) -> int:
    return int(torch.randint(lo, hi, (), generator=g))


def _model(g: torch.Generator) -> nn.Module:
    dim = _randint(g, 2, 5)
    layers = [Block(dim), nn.ReLU(), nn.Sequential(nn.Linear(dim, dim), Block(dim))]
    layers += [nn.Identity() for _ in range(9)] + [nn.Linear(dim, 2)]  # 让名字 "1" 与 "10"、"11"、"12" 同时出现
    model = nn.Sequential(*layers)
    with torch.no_grad():  # 用 g 填所有浮点张量：同一个种子 → 同一个模型
        for t in [*model.parameters(), *model.buffers()]:
            if t.is_floating_point():
                t.copy_(torch.randn(t.shape, generator=g))
    return model


def _model_and_state(g: torch.Generator):
    model = _model(g)
    state = {k: (torch.randn(v.shape, generator=g) * 3).to(v.dtype) for k, v in model.state_dict().items()}
    return model, state


def _ref_load(model: nn.Module, state: dict) -> OrderedDict:
    model.load_state_dict(state)
    return model.state_dict()


def _ref_freeze(model: nn.Module, prefix: str) -> list[str]:
    model.get_submodule(prefix).requires_grad_(False)
    return [name for name, p in model.named_parameters() if p.requires_grad]


def _ref_running_stats(bn: nn.BatchNorm1d, x: torch.Tensor):
    bn.train()
    bn(x)
    return bn.running_mean.clone(), bn.running_var.clone()


def _bn_inputs(g: torch.Generator):
    c = _randint(g, 1, 5)
    bn = nn.BatchNorm1d(c, momentum=float(torch.rand((), generator=g)), dtype=torch.float64)
    with torch.no_grad():
        bn.running_mean.copy_(torch.randn(c, generator=g))
        bn.running_var.copy_(torch.rand(c, generator=g) + 0.5)
    return bn, torch.randn(_randint(g, 2, 8), c, generator=g, dtype=torch.float64)


CHECKS = [
    ("ex1_count_parameters", lambda m: sum(p.numel() for p in m.parameters()), lambda g: (_model(g),)),
    ("ex2_state_dict", lambda m: m.state_dict(), lambda g: (_model(g),)),
    ("ex3_named_modules", lambda m: [name for name, _ in m.named_modules()], lambda g: (_model(g),)),
    ("ex4_load_state_dict", _ref_load, _model_and_state),
    (
        "ex5_dtypes_after_to_double",
        lambda m: {name: t.dtype for name, t in m.to(torch.float64).state_dict().items()},
        lambda g: (_model(g),),
    ),
    ("ex6_trainable_after_freeze", _ref_freeze, lambda g: (_model(g), ["0", "1", "2"][_randint(g, 0, 3)])),
    ("ex7_batchnorm_running_stats", _ref_running_stats, _bn_inputs),
]

PUZZLE_ALLOWED: dict[str, set[str]] = {}


def demo() -> None:
    block = Block(3)
    print(f"_parameters: {list(block._parameters)}  _buffers: {list(block._buffers)}  _modules: {list(block._modules)}")
    print(f"state_dict 键：{list(block.state_dict())}")
    print("（cache 是非持久 buffer，not_registered 是普通属性：都不在 state_dict 里）")
    print(f".to(float64) 之后 step 的 dtype 仍是 {block.to(torch.float64).step.dtype}")


# =============================================================================
# 自检：框架在 utils/exercises.py（28 天共用）——每道练习在几组随机输入上与 PyTorch 内置实现逐一对比
# =============================================================================
def run_checks(verbose: bool = True, seeds=None) -> tuple[int, int]:
    """逐题自检：每题打印一行 ✓/✗，最后打印 `N/M passed`；返回 (N, M)。"""
    return exercises.run_checks(globals(), verbose=verbose, seeds=seeds)


def main() -> None:
    exercises.run_day(globals())


if __name__ == "__main__":
    lesson_args(__doc__)
    main()
