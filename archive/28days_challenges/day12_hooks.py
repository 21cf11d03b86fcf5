"""第 12 天 钩子（hooks）：不改模型代码，就能看到、改掉中间的激活和梯度。

1. 张量钩子 t.register_hook(fn)：反向传播算出 ∂L/∂t 时调用 fn(grad)；fn 返回新张量就**替换**这个梯度
   （返回 None 则不改）。用途：看中间激活的梯度、逐张量裁剪梯度。只看梯度也可以用 t.retain_grad()
   （非叶子张量默认不保留 .grad）。
2. 模块钩子（nn.Module）：
   - register_forward_pre_hook(fn(module, args))：forward 之前调用，返回新的 args 元组就替换输入；
   - register_forward_hook(fn(module, args, output))：forward 之后调用，返回值不是 None 就替换输出——
     抓激活（特征提取、可视化、激活统计）最常用；
   - register_full_backward_hook(fn(module, grad_input, grad_output))：该模块的梯度算完后调用，
     grad_output 是 ∂L/∂输出，grad_input 是 ∂L/∂输入（元组）。
3. 每个 register_* 都返回一个 handle，handle.remove() 卸掉钩子。忘了 remove 是经典 bug：
   钩子一直挂着、每次 forward 都往列表里追加，内存慢慢涨。
4. 钩子只是观察/修改数据流的"探针"，不该有依赖调用顺序之外的副作用。框架大量建在钩子之上：
   DDP 在每个参数的梯度累加上挂 autograd 钩子来触发 all-reduce，FSDP（fully_shard）用模块的 forward pre-hook /
   forward hook 在前向前后收集、释放分片参数（反向时靠张量钩子做同样的事），
   量化校准用 forward hook 挂 observer 统计激活范围；（非重入式）激活检查点用的是另一类钩子
   torch.autograd.graph.saved_tensors_hooks（拦截"为反向保存的张量"）。
5. 演示：用 forward hook 统计 ReLU 输出为 0 的比例。注意区分两件事——某个样本上输出 0 很正常
   （随机初始化时权重、偏置关于 0 对称，预激活正负各半，期望比例就是 50%）；一批里**每个**输入都输出 0
   的才像"死"神经元（若在整个数据集上都如此，它的梯度恒为 0，再也学不动）。

练习：ex1–ex7，每题都要用指定的钩子来实现；参考答案用不带钩子的显式计算。
自检还会数一数调用之后模块上剩下几个钩子：必须是 0。运行：

    python archive/28days_challenges/day12_hooks.py
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from utils import exercises
from utils.lesson_cli import lesson_args


# =============================================================================
# 练习（函数体就是参考解答；想自己做，就把函数体换成 raise NotImplementedError 再运行本文件）
# =============================================================================
def ex1_capture_activations(model: nn.Sequential, x: torch.Tensor) -> list[torch.Tensor]:
    """用 forward hook 抓下 model 里每个 nn.Linear 的输出（按执行顺序），返回列表；用完把钩子卸掉。"""
    outputs = []
    handles = [
        m.register_forward_hook(lambda module, args, out: outputs.append(out.detach()))
        for m in model.modules()
        if isinstance(m, nn.Linear)
    ]
    try:
        model(x)
    finally:  # 即使 forward 抛异常也要卸钩子，否则它们会一直挂在模型上
        for h in handles:
            h.remove()
    return outputs


def ex2_hidden_grad(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """h = x Wᵀ，L = Σ tanh(h)。用 h.register_hook 抓到 ∂L/∂h 并返回（W 需要梯度，h 不是叶子）。"""
    w = weight.detach().requires_grad_()
    h = x @ w.t()
    captured = []
    h.register_hook(captured.append)  # append 返回 None：只看不改
    torch.tanh(h).sum().backward()
    return captured[0]


def ex3_clip_grad_hook(x: torch.Tensor, c: float) -> torch.Tensor:
    """给叶子 x 挂张量钩子，把流到它的梯度截断到 [−c, c]；对 L = Σ x³ 做 backward，返回 x.grad。"""
    leaf = x.detach().requires_grad_()
    leaf.register_hook(lambda grad: grad.clamp(-c, c))  # 返回新张量 = 替换梯度
    (leaf**3).sum().backward()
    return leaf.grad


def ex4_scale_input_pre_hook(layer: nn.Linear, x: torch.Tensor, s: float) -> torch.Tensor:
    """用 forward pre-hook 把 layer 的输入乘以 s，返回 layer(x)；返回前卸掉钩子。"""
    handle = layer.register_forward_pre_hook(lambda module, args: (args[0] * s,))
    try:
        return layer(x)
    finally:
        handle.remove()


def ex5_relu_output_hook(layer: nn.Linear, x: torch.Tensor) -> torch.Tensor:
    """用 forward hook 把 layer 的输出换成 relu(输出)，返回 layer(x)；返回前卸掉钩子。"""
    handle = layer.register_forward_hook(lambda module, args, out: F.relu(out))
    try:
        return layer(x)
    finally:
        handle.remove()


def ex6_module_grads(layer: nn.Linear, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """用 register_full_backward_hook，对 L = Σ layer(x)² 反向，返回 (grad_output[0], grad_input[0])。
    x 要 requires_grad，grad_input 里才有 ∂L/∂x。"""
    leaf = x.detach().requires_grad_()
    seen = {}

    def hook(module, grad_input, grad_output):
        seen["out"], seen["in"] = grad_output[0], grad_input[0]

    handle = layer.register_full_backward_hook(hook)
    try:
        (layer(leaf) ** 2).sum().backward()
    finally:
        handle.remove()
    return seen["out"], seen["in"]


def ex7_removed_hook(layer: nn.Linear, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """挂一个"输出 + 1"的 forward hook，返回 (挂着钩子时的 layer(x), handle.remove() 之后的 layer(x))。"""
    handle = layer.register_forward_hook(lambda module, args, out: out + 1)
    with_hook = layer(x)
    handle.remove()
    return with_hook, layer(x)


# =============================================================================
# 参考实现（不用钩子）与输入
# =============================================================================
def _randint(g: torch.Generator, lo: int, hi: int) -> int:
    return int(torch.randint(lo, hi, (), generator=g))


def _randn(g: torch.Generator, *shape: int) -> torch.Tensor:
    return torch.randn(*shape, generator=g, dtype=torch.float64)


def _linear(g: torch.Generator, d_in: int, d_out: int) -> nn.Linear:
    layer = nn.Linear(d_in, d_out, dtype=torch.float64)
    with torch.no_grad():  # 用 g 重新填参数：同一个种子 → 同一个模型
        layer.weight.copy_(_randn(g, d_out, d_in))
        layer.bias.copy_(_randn(g, d_out))
    return layer


def _mlp_inputs(g: torch.Generator):
    model = nn.Sequential(_linear(g, 4, 8), nn.GELU(), nn.Sequential(_linear(g, 8, 8), nn.Tanh()), _linear(g, 8, 3))
    return model, _randn(g, 2, 4)


def _ref_activations(model: nn.Sequential, x: torch.Tensor) -> list[torch.Tensor]:
    outputs = []
    layers = [m for m in model.modules() if not isinstance(m, nn.Sequential)]  # 按执行顺序的叶子模块
    for layer in layers:
        x = layer(x)
        if isinstance(layer, nn.Linear):
            outputs.append(x.detach())
    return outputs


def _ref_hidden_grad(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    h = (x @ weight.t()).requires_grad_()
    return torch.autograd.grad(torch.tanh(h).sum(), h)[0]


def _ref_module_grads(layer: nn.Linear, x: torch.Tensor):
    leaf = x.detach().requires_grad_()
    y = layer(leaf)
    return torch.autograd.grad((y**2).sum(), y)[0], torch.autograd.grad((layer(leaf) ** 2).sum(), leaf)[0]


def _and_hooks_left(fn):
    """probe：除了输出，还比较"调用之后模块上还挂着几个钩子"（参考答案是 0）——检查你有没有 remove。"""

    def probe(module: nn.Module, *args):
        out = fn(module, *args)
        left = sum(
            len(m._forward_hooks) + len(m._forward_pre_hooks) + len(m._backward_hooks) for m in module.modules()
        )
        return out, left

    return probe


def _layer_and_x(g: torch.Generator):
    d_in, d_out = _randint(g, 1, 6), _randint(g, 1, 6)
    return _linear(g, d_in, d_out), _randn(g, _randint(g, 1, 6), d_in)


CHECKS = [
    ("ex1_capture_activations", _ref_activations, _mlp_inputs, _and_hooks_left),
    ("ex2_hidden_grad", _ref_hidden_grad, lambda g: (_randn(g, 3, 4), _randn(g, 5, 4))),
    (
        "ex3_clip_grad_hook",
        lambda x, c: (3 * x**2).clamp(-c, c),
        lambda g: (_randn(g, 6), float(torch.rand((), generator=g)) * 3),
    ),
    (
        "ex4_scale_input_pre_hook",
        lambda layer, x, s: layer(x * s),
        lambda g: (*_layer_and_x(g), float(torch.randn((), generator=g))),
        _and_hooks_left,
    ),
    ("ex5_relu_output_hook", lambda layer, x: F.relu(layer(x)), _layer_and_x, _and_hooks_left),
    ("ex6_module_grads", _ref_module_grads, _layer_and_x, _and_hooks_left),
    ("ex7_removed_hook", lambda layer, x: (layer(x) + 1, layer(x)), _layer_and_x, _and_hooks_left),
]

PUZZLE_ALLOWED: dict[str, set[str]] = {}


def demo_model() -> nn.Sequential:
    return nn.Sequential(nn.Linear(4, 16), nn.ReLU(), nn.Linear(16, 16), nn.ReLU(), nn.Linear(16, 2))


def relu_zero_stats(model: nn.Module, x: torch.Tensor) -> dict[str, tuple[float, int, int]]:
    """用 forward hook 抓每个 nn.ReLU 的输出，返回 {层名: (输出为 0 的比例, 死神经元个数, 神经元个数)}；
    死神经元 = 这一批里对**每个**输入都输出 0 的单元。钩子用完即卸。"""
    stats = {}

    def record(name: str, out: torch.Tensor) -> None:
        zero = out.detach() == 0  # (N, 宽度)
        stats[name] = (zero.float().mean().item(), int(zero.all(0).sum()), zero.shape[-1])

    handles = [
        m.register_forward_hook(lambda mod, args, out, name=name: record(name, out))
        for name, m in model.named_modules() if isinstance(m, nn.ReLU)
    ]
    try:
        model(x)
    finally:
        for h in handles:
            h.remove()
    return stats


# demo_model() 后接 torch.randn(64, 4)，种子 0–199 各跑一次量出的 5%–95% 分位：
# {层名: (输出为 0 的比例下限, 上限, 死神经元个数上限)}；tests/archive/test_results_28days_early.py 会重新量一遍
ZERO_FRACTION_RANGE = {"1": (0.40, 0.58, 0), "3": (0.36, 0.64, 3)}


def demo() -> None:
    model = demo_model()
    for name, (zero_frac, dead, width) in relu_zero_stats(model, torch.randn(64, 4)).items():
        lo, hi, dead_hi = ZERO_FRACTION_RANGE[name]
        usual = f"0–{dead_hi}" if dead_hi else "0"
        print(f"ReLU 层 {name}：输出为 0 的比例 {zero_frac:.0%}（对称初始化的基线 50%；200 个随机种子的 90% 区间 "
              f"{lo:.0%}–{hi:.0%}），64 个输入上全为 0 的死神经元 {dead}/{width}（初始化时通常 {usual} 个）")
    print(f"卸掉之后剩余的 forward hook 数：{sum(len(m._forward_hooks) for m in model.modules())}")


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
