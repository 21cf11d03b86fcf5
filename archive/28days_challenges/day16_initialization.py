"""第 16 天 参数初始化：fan_in / fan_out、gain、Xavier 与 Kaiming，以及 nn.Linear 的默认初始化。

初始化的目标：让每一层的输出方差既不爆炸也不消失。y = W x，x 的每个分量方差为 1、W 的元素方差为 σ² 时，
    Var(y_i) = fan_in · σ²      （fan_in = 每个输出看到的输入个数）
所以 σ² = 1 / fan_in 能让前向方差保持不变；反向时梯度方差对应 fan_out。

1. fan 的算法：权重形状 (out, in, *kernel)，receptive = ∏kernel；fan_in = in·receptive，fan_out = out·receptive。
2. gain 补偿激活函数对方差的缩放：ReLU 砍掉一半 → gain = √2；tanh → 5/3；线性 / sigmoid → 1；
   leaky_relu(斜率 a) → √(2 / (1 + a²))；SELU → 3/4。
3. Xavier（Glorot）：兼顾前向与反向，σ = gain·√(2 / (fan_in + fan_out))；
   均匀分布 U(−a, a) 的方差是 a²/3，所以 a = √3·σ。
4. Kaiming（He）：只看一个方向（默认 fan_in），σ = gain / √fan。ReLU 网络用它。
5. nn.Linear 的默认初始化是 kaiming_uniform_(a=√5)：gain = √(2/6)，bound = √3·gain/√fan_in = 1/√fan_in；
   bias ~ U(−1/√fan_in, 1/√fan_in)。它的 std = 1/√(3·fan_in)，比 Kaiming-ReLU 的 √2/√fan_in 小 √6 ≈ 2.45 倍——
   这是历史遗留（沿用 Lua Torch），所以大模型都自己重新初始化：GPT-2 全部 std = 0.02，写回残差流的投影
   （注意力输出、MLP 第二层）再除以 √(2·n_layer)；HF transformers 的 Llama 全部 std = 0.02（initializer_range），
   不做残差缩放；本仓库 model_lab 的 Llama（reset_parameters）沿用 GPT-2 的残差缩放。
6. 深层 ReLU 网络里方差怎么传（演示里的"理论值"就是它）：x 的分量方差为 1，第一层预激活 z ~ N(0, fan_in·σ²)；
   ReLU 输出 y 满足 E[y²] = Var(z)/2，于是下一层 Var(z) = fan_in·σ²·Var(z)/2——每层乘 fan_in·σ²/2。
   σ² = 2/fan_in（Kaiming）时这个因子恰好是 1；而 ReLU 输出本身的标准差是 √((1 − 1/π)/2)·std(z) ≈ 0.584·std(z)
   （E[y] = std(z)/√(2π) 不为 0）。
7. 所有 nn.init.* 都接受 generator=，不动全局随机状态；它们在 torch.no_grad() 下原地写入。

练习：ex1–ex6；ex6 是谜题（只许用 torch.arange 与 torch.where）。运行：

    python archive/28days_challenges/day16_initialization.py
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
from torch.nn import init

from utils import exercises
from utils.io import is_smoke
from utils.lesson_cli import lesson_args


# =============================================================================
# 练习（函数体就是参考解答；想自己做，就把函数体换成 raise NotImplementedError 再运行本文件）
# =============================================================================
def ex1_fan_in_out(shape: tuple[int, ...]) -> tuple[int, int]:
    """权重形状 (out, in, *kernel) 的 (fan_in, fan_out)（对照 init._calculate_fan_in_and_fan_out）。"""
    if len(shape) < 2:
        raise ValueError(f"fan 只对至少二维的权重有定义，收到形状 {shape}")
    receptive = math.prod(shape[2:])  # 卷积核的面积；Linear 没有 kernel 维，乘积为 1
    return shape[1] * receptive, shape[0] * receptive


def ex2_gain(nonlinearity: str, param: float | None) -> float:
    """激活函数的推荐 gain（对照 init.calculate_gain）。leaky_relu 的 param 是负半轴斜率，None 时取 0.01。"""
    if nonlinearity in ("linear", "conv1d", "conv2d", "sigmoid"):
        return 1  # PyTorch 这里返回 int 1（不是 1.0）：线性映射不改变方差
    if nonlinearity == "tanh":
        return 5.0 / 3
    if nonlinearity == "relu":
        return math.sqrt(2.0)
    if nonlinearity == "leaky_relu":
        slope = 0.01 if param is None else param
        return math.sqrt(2.0 / (1 + slope**2))
    if nonlinearity == "selu":
        return 3.0 / 4
    raise ValueError(f"不认识的激活函数 {nonlinearity!r}")


def ex3_xavier_uniform(shape: tuple[int, ...], gain: float, seed: int) -> torch.Tensor:
    """用 Generator().manual_seed(seed) 生成 Xavier 均匀初始化的权重
    （对照 init.xavier_uniform_(torch.empty(shape), gain, generator=g)）。"""
    fan_in, fan_out = ex1_fan_in_out(shape)
    std = gain * math.sqrt(2.0 / (fan_in + fan_out))
    a = math.sqrt(3.0) * std  # U(−a, a) 的方差 = a²/3 = std²
    return torch.empty(shape).uniform_(-a, a, generator=torch.Generator().manual_seed(seed))


def ex4_kaiming_normal_relu(shape: tuple[int, ...], seed: int) -> torch.Tensor:
    """Kaiming 正态初始化（ReLU，mode="fan_in"），随机数来自 Generator().manual_seed(seed)
    （对照 init.kaiming_normal_(..., nonlinearity="relu", generator=g)）。"""
    fan_in, _ = ex1_fan_in_out(shape)
    std = math.sqrt(2.0) / math.sqrt(fan_in)
    return torch.empty(shape).normal_(0.0, std, generator=torch.Generator().manual_seed(seed))


def ex5_linear_default_init(in_features: int, out_features: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """复现 `torch.manual_seed(seed); nn.Linear(in, out)` 的 (weight, bias)，但用独立的 Generator。
    顺序：先 weight 再 bias，二者都是 U(−1/√fan_in, 1/√fan_in)。"""
    g = torch.Generator().manual_seed(seed)
    bound = 1.0 / math.sqrt(in_features)  # kaiming_uniform_(a=√5) 化简后的结果
    weight = torch.empty(out_features, in_features).uniform_(-bound, bound, generator=g)
    bias = torch.empty(out_features).uniform_(-bound, bound, generator=g)
    return weight, bias


def ex6_eye_init(rows: int, cols: int) -> torch.Tensor:
    """谜题：只用 torch.arange、torch.where 与广播，造 (rows, cols) 的"单位"初始化（对照 init.eye_）。
    非方阵时只有 i == j 的位置是 1：恒等映射初始化让深层网络一开始就是"直通"的。"""
    return torch.where(torch.arange(rows)[:, None] == torch.arange(cols), 1.0, 0.0)


# =============================================================================
# 参考实现与输入
# =============================================================================
def _randint(g: torch.Generator, lo: int, hi: int) -> int:
    return int(torch.randint(lo, hi, (), generator=g))


def _weight_shape(g: torch.Generator) -> tuple[int, ...]:
    ndim = _randint(g, 2, 5)  # Linear (2 维)、Conv1d (3 维)、Conv2d (4 维)
    return tuple(_randint(g, 1, 7) for _ in range(ndim))


def _gain_inputs(g: torch.Generator):
    name = ["linear", "conv2d", "sigmoid", "tanh", "relu", "leaky_relu", "selu"][_randint(g, 0, 7)]
    param = None if name != "leaky_relu" or _randint(g, 0, 2) else float(torch.rand((), generator=g))
    return name, param


def _ref_xavier(shape, gain, seed):
    return init.xavier_uniform_(torch.empty(shape), gain, generator=torch.Generator().manual_seed(seed))


def _ref_kaiming(shape, seed):
    return init.kaiming_normal_(torch.empty(shape), nonlinearity="relu", generator=torch.Generator().manual_seed(seed))


def _ref_linear(in_features, out_features, seed):
    with torch.random.fork_rng():  # 只在 with 里改全局种子
        torch.manual_seed(seed)
        layer = nn.Linear(in_features, out_features)
    return layer.weight.detach(), layer.bias.detach()


CHECKS = [
    ("ex1_fan_in_out", lambda s: init._calculate_fan_in_and_fan_out(torch.empty(s)), lambda g: (_weight_shape(g),)),
    ("ex2_gain", init.calculate_gain, _gain_inputs),
    (
        "ex3_xavier_uniform",
        _ref_xavier,
        lambda g: (_weight_shape(g), float(torch.rand((), generator=g)) + 0.5, _randint(g, 0, 10_000)),
    ),
    ("ex4_kaiming_normal_relu", _ref_kaiming, lambda g: (_weight_shape(g), _randint(g, 0, 10_000))),
    ("ex5_linear_default_init", _ref_linear, lambda g: (_randint(g, 1, 9), _randint(g, 1, 9), _randint(g, 0, 10_000))),
    ("ex6_eye_init", lambda r, c: init.eye_(torch.empty(r, c)), lambda g: (_randint(g, 1, 6), _randint(g, 1, 6))),
]

PUZZLE_ALLOWED = {"ex6_eye_init": {"torch.arange", "torch.where"}}


def _activation_std(depth: int, width: int, std_fn, act) -> list[float]:
    """随机输入穿过 depth 层 Linear + 激活，返回每层输出的标准差。"""
    x = torch.randn(512, width)
    stds = []
    for _ in range(depth):
        w = torch.randn(width, width) * std_fn(width)
        x = act(x @ w.t())
        stds.append(float(x.std()))
    return stds


RELU_STD_RATIO = math.sqrt((1 - 1 / math.pi) / 2)  # std(ReLU(z)) / std(z)，z ~ N(0, s²)：≈ 0.5838


def relu_mlp_std_theory(layer: int, width: int, weight_std: float) -> float:
    """无偏置的 ReLU MLP（输入分量方差 1、权重 ~ N(0, weight_std²)）第 layer 层（从 1 数）输出的理论标准差。

    预激活方差 Var(z_l) = (width·σ²)^l / 2^(l−1)（第一层的输入没有经过 ReLU，所以是 l − 1 个 ½），
    ReLU 输出的标准差 = √((1 − 1/π)/2)·√Var(z_l)。宽度有限时每层的实测值围绕它有百分之几的随机偏差，
    层层相乘会累积（64 宽、6 层时可差 30%）；宽度越大越准。
    """
    if layer < 1:
        raise ValueError(f"layer 从 1 数，收到 {layer}")
    log_var = layer * math.log(width * weight_std**2) - (layer - 1) * math.log(2.0)  # 取对数：(256)^20 也不溢出
    return RELU_STD_RATIO * math.exp(log_var / 2)


def demo() -> None:
    depth, width = (6, 64) if is_smoke() else (20, 256)
    relu = torch.relu
    for label, std_fn in [
        ("std = 1（太大）", lambda n: 1.0),
        ("std = 0.01（太小）", lambda n: 0.01),
        ("Kaiming √(2/fan_in)", lambda n: math.sqrt(2.0 / n)),
    ]:
        stds = _activation_std(depth, width, std_fn, relu)
        first, last = (relu_mlp_std_theory(layer, width, std_fn(width)) for layer in (1, depth))
        print(f"{depth} 层 ReLU MLP，{label:22s} 各层输出 std：第 1 层 {stds[0]:.3g} → 第 {depth} 层 {stds[-1]:.3g}"
              f"（理论 {first:.3g} → {last:.3g}）")
    layer = nn.Linear(width, width)
    print(f"nn.Linear({width}, {width}) 默认 weight std = {float(layer.weight.detach().std()):.4f}"
          f"（理论 1/√(3·fan_in) = {1 / math.sqrt(3 * width):.4f}；Kaiming-ReLU 是 √(2/fan_in) = "
          f"{math.sqrt(2 / width):.4f}，大 √6 ≈ {math.sqrt(6):.2f} 倍）")


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
