"""初始化（Xavier / Kaiming）与归一化（BatchNorm / LayerNorm）：从方差传播推出公式，从零实现，与 PyTorch 逐元素对照。

一、初始化：让每层输出的方差既不爆炸也不消失
    一层 y_j = Σ_{i=1}^{n_in} w_ji x_i，w 与 x 独立、w 零均值，则
        Var(y_j) = Σ_i Var(w_ji x_i) = n_in · Var(w) · E[x²]
    （独立零均值乘积：Var(wx) = E[w²]E[x²] = Var(w)E[x²]。）
    - tanh 在 0 附近近似恒等，E[x²] ≈ Var(x)。前向要求 n_in Var(w) = 1，反向（梯度 x̄ = Wᵀ ȳ）要求
      n_out Var(w) = 1，两者折中取调和平均：Var(w) = 2/(n_in + n_out)            —— Xavier / Glorot (2010)
    - relu 把一半的输入置 0：若 z 关于 0 对称，E[relu(z)²] = ½ Var(z)。于是 Var(z_{l+1}) = n_in Var(w) · ½ Var(z_l)，
      要求 Var(w) = 2/n_in（只看前向：mode="fan_in"）                           —— Kaiming / He (2015)
    一般写成 std = gain / √fan，gain(tanh) = 5/3、gain(relu) = √2、gain(leaky_relu, a) = √(2/(1+a²))。
    均匀分布 U(−a, a) 的方差是 a²/3，所以同样的方差用均匀分布时 a = √3 · std。
    方差差一点点会怎样？每层乘一个因子 c，L 层后就是 c^L：c = 0.5 的 20 层网络信号缩小约一百万倍（0.5²⁰ ≈ 9.5e-7）。
    下面的图演示这件事，并把实测与"均场理论"（宽度 → ∞ 时逐层的方差递推，见 mean_field_stds）放在一起。

二、BatchNorm（训练时按 batch 统计，推理时用滑动平均）
    对每个通道 c，在所有"非通道"维度（N，以及 (N,C,L) 输入的 L）上：
        μ = mean(x)，σ² = mean((x − μ)²)（有偏方差），x̂ = (x − μ)/√(σ² + ε)，y = γ x̂ + β
    running_mean ← (1 − m)·running_mean + m·μ
    running_var  ← (1 − m)·running_var  + m·σ²·n/(n − 1)   ← PyTorch 的细节：滑动平均用的是 **无偏** 方差
    推理时用 running 统计量：输出只依赖单个样本，与 batch 里的其他样本无关。
    反向（m 个被归约的元素，g = ∂ℒ/∂y）：∂ℒ/∂β = Σg，∂ℒ/∂γ = Σ g x̂，ĝ = γ g，
        ∂ℒ/∂x = (1/(m σ)) · (m ĝ − Σ ĝ − x̂ · Σ(ĝ ⊙ x̂))
    推导：x̂ 通过三条路依赖 x_i（直接、经 μ、经 σ）。∂μ/∂x_i = 1/m，∂σ/∂x_i = x̂_i/m，
        ∂x̂_j/∂x_i = (δ_ij − 1/m)/σ − x̂_j x̂_i/(m σ)，与 ĝ_j 相乘求和即得上式。
    两个 Σ 项的意义：把梯度中"整体平移"和"沿 x̂ 方向缩放"的分量减掉——归一化的输出对这两种变化不敏感。

三、LayerNorm（对每个样本自己的最后几维做归一化）
    与 BatchNorm 公式相同，只是统计量在 normalized_shape 对应的最后几维上算，每个样本（每个 token）各算各的；
    不依赖 batch，所以训练/推理行为一致、没有 running 统计量——这正是 Transformer 用它的原因。

多少算好（30 层、宽 512 的网络，最后一层激活的标准差；括号里是 10 个种子的实测范围）：
    N(0, 0.01) + tanh  理论 4.1e-20   实测 3.9e-20–4.2e-20  （每层 ×√(512·10⁻⁴) ≈ 0.23，信号消失）
    N(0, 1) + tanh     理论 0.982     实测 0.982            （tanh 饱和在 ±1，梯度消失）
    xavier + tanh      理论 0.131     实测 0.126–0.131       （tanh 在 0 附近才是恒等，深层缓慢衰减）
    xavier + relu      理论 2.5e-5    实测 1.5e-5–2.9e-5    （relu 每层丢一半能量：std ×1/√2，30 层 2⁻¹⁵）
    kaiming + relu     理论 0.826     实测 0.503–0.960      （方差保持；有限宽度的涨落逐层相乘，种子间差得多）
    N(0,0.01)+relu+BN  理论 0.584     实测 0.591–0.602      （BN 把每层的 z 拉回方差 1，与初始化无关；但深层 z 的
                                                            尾巴变重，第 30 层峰度约 6（高斯是 3），实测略高于理论）
    理论值 √(1 − 1/π) ≈ 0.826 与 √((1 − 1/π)/2) ≈ 0.584 的来历见 mean_field_stds。

    python "archive/Introductory learning/02_MLP/04_init_and_norm.py"

图：checkpoints/figures/init_activation_std.png（不同初始化下各层激活的标准差）。
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import torch
import torch.nn as nn

from utils.io import is_smoke, save_figure
from utils.lesson_cli import lesson_args
from utils.torch_playground import setup_seed, time_block

SMOKE = is_smoke()
DEPTH = 8 if SMOKE else 30
WIDTH = 64 if SMOKE else 512
# 默认配置（30 层、宽 512、批 512）最后一层激活标准差，10 个种子（seed 0..9）的实测范围
REFERENCE_LAST_STD = {
    "N(0, 0.01) + tanh": (3.90e-20, 4.25e-20),
    "N(0, 1) + tanh": (0.982, 0.982),
    "xavier + tanh": (0.1255, 0.1314),
    "xavier + relu": (1.54e-5, 2.93e-5),
    "kaiming + relu": (0.503, 0.960),
    "N(0, 0.01) + relu + BatchNorm": (0.591, 0.602),
}


# =============================================================================
# 一、初始化
# =============================================================================
def fan_in_and_fan_out(shape: Sequence[int]) -> tuple[int, int]:
    """nn.Linear 的 weight 是 (out, in)；卷积核 (out, in, k1, k2, …) 每个输出还要乘上感受野大小 k1·k2·…。"""
    if len(shape) < 2:
        raise ValueError(f"fan_in / fan_out 至少需要 2 维的权重，收到形状 {tuple(shape)}（偏置请用别的初始化，例如全 0）")
    receptive = math.prod(shape[2:])
    return shape[1] * receptive, shape[0] * receptive


def gain(nonlinearity: str, negative_slope: float = 0.01) -> float:
    """保持二阶矩的增益：relu 丢一半能量所以 √2；tanh 的 5/3 是经验值（补偿 tanh 在 ±1 附近的压缩）。"""
    table = {"linear": 1.0, "sigmoid": 1.0, "tanh": 5.0 / 3, "relu": math.sqrt(2.0),
             "leaky_relu": math.sqrt(2.0 / (1 + negative_slope**2))}
    if nonlinearity not in table:
        raise ValueError(f"nonlinearity={nonlinearity!r} 不支持；可选 {sorted(table)}")
    return table[nonlinearity]


def xavier_uniform(shape: Sequence[int], gain_: float = 1.0, generator: torch.Generator | None = None) -> torch.Tensor:
    fan_in, fan_out = fan_in_and_fan_out(shape)
    std = gain_ * math.sqrt(2.0 / (fan_in + fan_out))
    a = math.sqrt(3.0) * std  # U(−a, a) 的方差是 a²/3
    return torch.empty(shape).uniform_(-a, a, generator=generator)


def xavier_normal(shape: Sequence[int], gain_: float = 1.0, generator: torch.Generator | None = None) -> torch.Tensor:
    fan_in, fan_out = fan_in_and_fan_out(shape)
    return torch.empty(shape).normal_(0.0, gain_ * math.sqrt(2.0 / (fan_in + fan_out)), generator=generator)


def kaiming_std(shape: Sequence[int], mode: str, nonlinearity: str, negative_slope: float) -> float:
    if mode not in ("fan_in", "fan_out"):
        raise ValueError(f"mode={mode!r} 只能是 'fan_in'（保前向方差）或 'fan_out'（保反向梯度方差）")
    fan_in, fan_out = fan_in_and_fan_out(shape)
    return gain(nonlinearity, negative_slope) / math.sqrt(fan_in if mode == "fan_in" else fan_out)


def kaiming_uniform(shape: Sequence[int], mode: str = "fan_in", nonlinearity: str = "relu", negative_slope: float = 0.0,
                    generator: torch.Generator | None = None) -> torch.Tensor:
    bound = math.sqrt(3.0) * kaiming_std(shape, mode, nonlinearity, negative_slope)
    return torch.empty(shape).uniform_(-bound, bound, generator=generator)


def kaiming_normal(shape: Sequence[int], mode: str = "fan_in", nonlinearity: str = "relu", negative_slope: float = 0.0,
                   generator: torch.Generator | None = None) -> torch.Tensor:
    return torch.empty(shape).normal_(0.0, kaiming_std(shape, mode, nonlinearity, negative_slope), generator=generator)


# =============================================================================
# 二、BatchNorm1d
# =============================================================================
def batchnorm_backward(g: torch.Tensor, x_hat: torch.Tensor, inv_std: torch.Tensor, gamma: torch.Tensor | None,
                       dims: tuple[int, ...]):
    """手推的 BatchNorm 反向（公式见文件开头）。x_hat/g 同形，inv_std/gamma 已 reshape 成可广播的形状。

    返回 (∂ℒ/∂x, ∂ℒ/∂γ, ∂ℒ/∂β)；gamma 为 None（affine=False）时后两个为 None。
    """
    m = math.prod(g.shape[d] for d in dims)
    g_hat = g * gamma if gamma is not None else g
    dx = inv_std / m * (m * g_hat - g_hat.sum(dims, keepdim=True) - x_hat * (g_hat * x_hat).sum(dims, keepdim=True))
    if gamma is None:
        return dx, None, None
    return dx, (g * x_hat).sum(dims), g.sum(dims)


class BatchNorm1d(nn.Module):
    """从零实现的 BatchNorm1d，接口与 nn.BatchNorm1d 相同：输入 (N, C) 或 (N, C, L)。"""

    def __init__(self, num_features: int, eps: float = 1e-5, momentum: float | None = 0.1, affine: bool = True):
        super().__init__()
        self.num_features, self.eps, self.momentum = num_features, eps, momentum
        self.weight = nn.Parameter(torch.ones(num_features)) if affine else None
        self.bias = nn.Parameter(torch.zeros(num_features)) if affine else None
        # buffer：随 state_dict 保存、随 .to() 移动，但不是参数，优化器不会更新它
        self.register_buffer("running_mean", torch.zeros(num_features))
        self.register_buffer("running_var", torch.ones(num_features))
        self.register_buffer("num_batches_tracked", torch.tensor(0, dtype=torch.long))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim not in (2, 3) or x.shape[1] != self.num_features:
            raise ValueError(
                f"BatchNorm1d(num_features={self.num_features}) 需要形状 (N, {self.num_features}) 或 "
                f"(N, {self.num_features}, L) 的输入，收到 {tuple(x.shape)}"
            )
        dims = (0,) if x.ndim == 2 else (0, 2)  # 除通道维以外的所有维度
        shape = (1, -1) if x.ndim == 2 else (1, -1, 1)  # 把 (C,) 的统计量 reshape 成可广播的形状
        if self.training:
            n = math.prod(x.shape[d] for d in dims)
            if n <= 1:
                raise ValueError(
                    f"训练模式下每个通道至少要有 2 个值才能估计方差，收到输入 {tuple(x.shape)}"
                    f"（Expected more than 1 value per channel when training）；增大 batch 或先 model.eval()"
                )
            mean = x.mean(dims)
            var = x.var(dims, unbiased=False)  # 归一化用有偏方差
            with torch.no_grad():
                self.num_batches_tracked += 1
                # momentum=None 时是累计平均：第 k 个 batch 的权重 1/k
                m = 1.0 / self.num_batches_tracked.item() if self.momentum is None else self.momentum
                self.running_mean.mul_(1 - m).add_(m * mean)
                self.running_var.mul_(1 - m).add_(m * var * n / (n - 1))  # 滑动平均用无偏方差
        else:
            mean, var = self.running_mean, self.running_var
        x_hat = (x - mean.reshape(shape)) / torch.sqrt(var.reshape(shape) + self.eps)
        if self.weight is None:
            return x_hat
        return x_hat * self.weight.reshape(shape) + self.bias.reshape(shape)


def bn_manual_backward_error(x: torch.Tensor, seed: int = 0) -> float:
    """用手推公式算 BatchNorm（训练模式）的三个梯度，与 autograd 比较，返回最大绝对差。"""
    g = torch.Generator().manual_seed(seed)
    C = x.shape[1]
    dims, shape = ((0,), (1, -1)) if x.ndim == 2 else ((0, 2), (1, -1, 1))
    gamma = torch.randn(C, generator=g, dtype=x.dtype).requires_grad_()
    beta = torch.randn(C, generator=g, dtype=x.dtype).requires_grad_()
    x = x.clone().requires_grad_()
    mean = x.mean(dims, keepdim=True)
    inv_std = 1.0 / torch.sqrt(x.var(dims, unbiased=False, keepdim=True) + 1e-5)
    x_hat = (x - mean) * inv_std
    y = x_hat * gamma.reshape(shape) + beta.reshape(shape)
    upstream = torch.randn(y.shape, generator=g, dtype=x.dtype)
    y.backward(upstream)
    dx, dgamma, dbeta = batchnorm_backward(upstream, x_hat.detach(), inv_std.detach(), gamma.detach().reshape(shape), dims)
    return max((dx - x.grad).abs().max().item(), (dgamma - gamma.grad).abs().max().item(),
               (dbeta - beta.grad).abs().max().item())


# =============================================================================
# 三、LayerNorm
# =============================================================================
class LayerNorm(nn.Module):
    """从零实现的 LayerNorm，接口与 nn.LayerNorm 相同：在最后 len(normalized_shape) 维上归一化。"""

    def __init__(self, normalized_shape: int | Sequence[int], eps: float = 1e-5, elementwise_affine: bool = True,
                 bias: bool = True):
        super().__init__()
        self.normalized_shape = (normalized_shape,) if isinstance(normalized_shape, int) else tuple(normalized_shape)
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(self.normalized_shape)) if elementwise_affine else None
        self.bias = nn.Parameter(torch.zeros(self.normalized_shape)) if elementwise_affine and bias else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        k = len(self.normalized_shape)
        if tuple(x.shape[-k:]) != self.normalized_shape:
            raise ValueError(
                f"LayerNorm(normalized_shape={self.normalized_shape}) 要求输入的最后 {k} 维等于它，"
                f"收到形状 {tuple(x.shape)}"
            )
        dims = tuple(range(-k, 0))
        mean = x.mean(dims, keepdim=True)
        var = x.var(dims, unbiased=False, keepdim=True)
        y = (x - mean) / torch.sqrt(var + self.eps)
        if self.weight is not None:
            y = y * self.weight
        if self.bias is not None:
            y = y + self.bias
        return y


# =============================================================================
# 实验：不同初始化下深层网络的激活标准差
# =============================================================================
DEPTH_CONFIGS = [("N(0, 0.01)", "tanh", False), ("N(0, 1)", "tanh", False), ("xavier", "tanh", False),
                 ("xavier", "relu", False), ("kaiming", "relu", False), ("N(0, 0.01)", "relu", True)]


def activation_stds(init: str, act: str, depth: int = DEPTH, width: int = WIDTH, batchnorm: bool = False,
                    seed: int = 0) -> list[float]:
    """把 N(0,1) 输入送过 depth 层 (Linear → [BN] → act)，返回每层激活的标准差。"""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(512 if not SMOKE else 128, width, generator=g)
    phi = torch.tanh if act == "tanh" else torch.relu
    stds = []
    with torch.no_grad():
        for _ in range(depth):
            shape = (width, width)
            if init == "N(0, 0.01)":
                W = torch.empty(shape).normal_(0, 0.01, generator=g)
            elif init == "N(0, 1)":
                W = torch.empty(shape).normal_(0, 1.0, generator=g)
            elif init == "xavier":
                W = xavier_normal(shape, generator=g)
            else:
                W = kaiming_normal(shape, nonlinearity=act, generator=g)
            z = x @ W.T
            if batchnorm:
                z = (z - z.mean(0)) / torch.sqrt(z.var(0, unbiased=False) + 1e-5)
            x = phi(z)
            stds.append(x.std().item())
    return stds


INIT_VARIANCE = {  # n · Var(w)：一层把 E[x²] 放大的倍数（n 是宽度 = fan_in）
    "N(0, 0.01)": lambda n, act: n * 0.01**2,
    "N(0, 1)": lambda n, act: n * 1.0,
    "xavier": lambda n, act: n * 2.0 / (n + n),  # 方阵 fan_in = fan_out = n，gain 1
    "kaiming": lambda n, act: gain(act) ** 2,  # Var(w) = gain²/fan_in
}
_U = torch.linspace(-12.0, 12.0, 24_001, dtype=torch.float64)  # 标准正态的密网格：tanh 饱和时近似阶跃，也积得准
_U_WEIGHTS = torch.exp(-_U**2 / 2) / torch.exp(-_U**2 / 2).sum()


def mean_field_stds(init: str, act: str, depth: int = DEPTH, width: int = WIDTH, batchnorm: bool = False) -> list[float]:
    """"均场理论"：宽度 → ∞ 时，每个预激活 z = Σ_i w_i x_i 是大量独立项之和，按中心极限定理是高斯，
    于是只需追踪一个数 q_l = E[x_l²]：

        z_{l+1} ~ N(0, n·Var(w)·q_l)（文件开头的方差公式）；有 BatchNorm 时 z 被归一成 N(0, 1)；
        q_{l+1} = E[φ(z)²]，激活的标准差 = √(E[φ(z)²] − E[φ(z)]²)。

    输入 x₀ ~ N(0, 1)，q₀ = 1。relu 有闭式：z ~ N(0, v) 时 E[relu(z)²] = v/2、E[relu(z)] = √(v/2π)，
    所以 std = √(v/2 · (1 − 1/π))——kaiming（v = 2q，q 保持 1）每层都是 √(1 − 1/π) ≈ 0.826，BN（v = 1）是 0.584；
    tanh 没有闭式，用密网格上的数值积分。返回每层激活 std 的预测（与 activation_stds 对应）。
    """
    if init not in INIT_VARIANCE or act not in ("tanh", "relu"):
        raise ValueError(f"init 只能是 {sorted(INIT_VARIANCE)}，act 只能是 'tanh' / 'relu'，收到 {init!r}, {act!r}")
    phi = torch.tanh if act == "tanh" else torch.relu
    gain_per_layer = INIT_VARIANCE[init](width, act)
    q, stds = 1.0, []
    for _ in range(depth):
        v = 1.0 if batchnorm else gain_per_layer * q
        h = phi(math.sqrt(v) * _U)
        q = float(_U_WEIGHTS @ h**2)
        mean = float(_U_WEIGHTS @ h)
        stds.append(math.sqrt(max(q - mean**2, 0.0)))
    return stds


def run_depth_experiment(configs, depth: int = DEPTH, width: int = WIDTH, seed: int = 0) -> tuple[plt.Figure, list[str]]:
    """每个配置：实测各层激活的 std（点）与均场理论（同色细线，点落在线上就是理论对了）。返回 (图, 打印的行)。"""
    fig, ax = plt.subplots(figsize=(9, 4.5))
    lines = []
    for init, act, use_bn in configs:
        label = f"{init} + {act}" + (" + BatchNorm" if use_bn else "")
        with time_block(init, verbose=False) as t:
            stds = activation_stds(init, act, depth, width, batchnorm=use_bn, seed=seed)
        theory = mean_field_stds(init, act, depth, width, batchnorm=use_bn)
        lo, hi = (f"{v:.3g}" for v in REFERENCE_LAST_STD[label])
        measured = lo if lo == hi else f"{lo}–{hi}"
        lines.append(f"    {label:30s} {stds[-1]:.3e}（均场理论 {theory[-1]:.3g}；默认配置 30 层宽 512、10 个种子 "
                     f"{measured}）（{t.ms:.0f} ms）")
        layers = range(1, depth + 1)  # stds[i] 是第 i + 1 层（经过 i + 1 个 Linear → act）之后测的：横轴从 1 开始
        (dots,) = ax.plot(layers, stds, "o", ms=3.5, label=label)
        ax.plot(layers, theory, "-", lw=1, color=dots.get_color())
    ax.plot([], [], "k-", lw=1, label="lines: mean-field theory")
    ax.set(title="activation std per layer", xlabel="layer", ylabel="std of activations", yscale="log")
    ax.legend(fontsize=8, loc="center left", bbox_to_anchor=(1.01, 0.5))  # 放在图外：不挡住任何一条曲线
    fig.tight_layout()
    return fig, lines


def main() -> None:
    setup_seed()
    print("== 初始化与归一化 ==")
    # 1) 初始化与 torch.nn.init 对照：同一个 generator 种子 ⇒ 同样的随机数 ⇒ 同样的权重
    checks = []
    for shape in ((64, 32), (16, 8, 3, 3)):
        for name, ours, ref in (
            ("xavier_uniform", lambda g: xavier_uniform(shape, gain("tanh"), g),
             lambda t, g: nn.init.xavier_uniform_(t, gain=nn.init.calculate_gain("tanh"), generator=g)),
            ("xavier_normal", lambda g: xavier_normal(shape, 1.0, g), lambda t, g: nn.init.xavier_normal_(t, generator=g)),
            ("kaiming_uniform", lambda g: kaiming_uniform(shape, "fan_in", "leaky_relu", 0.2, g),
             lambda t, g: nn.init.kaiming_uniform_(t, a=0.2, mode="fan_in", nonlinearity="leaky_relu", generator=g)),
            ("kaiming_normal", lambda g: kaiming_normal(shape, "fan_out", "relu", 0.0, g),
             lambda t, g: nn.init.kaiming_normal_(t, mode="fan_out", nonlinearity="relu", generator=g)),
        ):
            w = ours(torch.Generator().manual_seed(0))
            w_ref = ref(torch.empty(shape), torch.Generator().manual_seed(0))
            checks.append((name, shape, (w - w_ref).abs().max().item()))
    worst = max(c[2] for c in checks)
    print(f"  初始化：{len(checks)} 组（xavier/kaiming × uniform/normal × Linear/Conv 形状）与 nn.init 的最大差 {worst:.1e}")
    assert worst < 1e-6

    # 2) BatchNorm / LayerNorm 与 PyTorch 对照：训练模式（含梯度与 running 统计量）和推理模式
    g = torch.Generator().manual_seed(0)
    bn, bn_ref = BatchNorm1d(6), nn.BatchNorm1d(6)
    with torch.no_grad():
        for p, q in ((bn.weight, bn_ref.weight), (bn.bias, bn_ref.bias)):
            p.copy_(torch.randn(6, generator=g))
            q.copy_(p)
    errs = []
    for step in range(3):
        x = torch.randn(8, 6, 5, generator=g) * 3 + 1
        xa, xb = x.clone().requires_grad_(), x.clone().requires_grad_()
        ya, yb = bn(xa), bn_ref(xb)
        w = torch.randn(ya.shape, generator=g)
        (ya * w).sum().backward()
        (yb * w).sum().backward()
        errs += [(ya - yb).abs().max(), (xa.grad - xb.grad).abs().max(), (bn.weight.grad - bn_ref.weight.grad).abs().max(),
                 (bn.running_mean - bn_ref.running_mean).abs().max(), (bn.running_var - bn_ref.running_var).abs().max()]
    bn.eval(), bn_ref.eval()
    x = torch.randn(4, 6, 5, generator=g)
    errs.append((bn(x) - bn_ref(x)).abs().max())
    print(f"  BatchNorm1d：训练 3 步 + 推理，输出/输入梯度/γ 梯度/running 统计量与 nn.BatchNorm1d 的最大差 {max(errs):.1e}")
    assert max(errs) < 1e-5
    err = bn_manual_backward_error(torch.randn(10, 6, 3, generator=g, dtype=torch.float64), seed=1)
    print(f"  手推的 BatchNorm 反向公式与 autograd 的最大差（float64）{err:.1e}")
    assert err < 1e-10

    ln, ln_ref = LayerNorm((5, 7)), nn.LayerNorm((5, 7))
    with torch.no_grad():
        ln.weight.copy_(torch.randn(5, 7, generator=g))
        ln_ref.weight.copy_(ln.weight)
    errs = []
    for mode in ("train", "eval"):
        ln.train(mode == "train"), ln_ref.train(mode == "train")
        x = torch.randn(3, 4, 5, 7, generator=g) * 2 + 5
        xa, xb = x.clone().requires_grad_(), x.clone().requires_grad_()
        ya, yb = ln(xa), ln_ref(xb)
        ya.pow(2).sum().backward()
        yb.pow(2).sum().backward()
        errs += [(ya - yb).abs().max(), (xa.grad - xb.grad).abs().max()]
    print(f"  LayerNorm：训练/推理模式下输出与梯度与 nn.LayerNorm 的最大差 {max(errs):.1e}")
    assert max(errs) < 1e-5

    # 3) 激活标准差随深度的变化
    print(f"  {DEPTH} 层、宽 {WIDTH} 的网络，最后一层激活的标准差：")
    fig, lines = run_depth_experiment(DEPTH_CONFIGS)
    print("\n".join(lines))
    path = save_figure(fig, "init_activation_std.png", dpi=110)
    print(f"图已保存：{path}")


if __name__ == "__main__":
    lesson_args(__doc__)
    main()
