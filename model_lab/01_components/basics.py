"""积木课：从零写 Linear、Embedding、SiLU 与数值安全的 softmax / log_softmax，并换进 Llama 里用。

运行：python model_lab/01_components/basics.py   （或 python -m model_lab.01_components.basics；SMOKE=1 几秒跑完）

后面每个模型都由这几块搭成；这里不调 nn.Linear / F.linear / nn.Embedding / F.silu / torch.softmax，
只用 matmul、索引、exp、log、求和，然后逐一证明与 PyTorch 的输出和梯度相等。

Linear：y = x Wᵀ + b
--------------------
W 的形状是 (out, in)，与 nn.Linear 相同（state_dict 可互换）。反向（手推，见 LinearFunction）：
    dL/dx = g W,    dL/dW = Σ_batch gᵀ x,    dL/db = Σ_batch g          （g = dL/dy）
初始化决定每层输出的方差。y_j = Σ_i W_ji x_i，W 与 x 独立且均值为 0 时：
    Var(y) = in · Var(W) · Var(x)
- nn.Linear 的默认：kaiming_uniform_(a=√5)。gain = √(2/(1+a²)) = √(1/3)，bound = √3 · gain/√in = 1/√in，
  即 W、b ~ U(−1/√in, 1/√in)。均匀分布 U(−β, β) 的方差是 β²/3，所以 Var(y) = Var(x)/3：
  每过一层方差缩小到 1/3。这是从 Lua Torch 沿用下来的老约定（pytorch#57109），不是为保方差设计的；
  后面接 norm 的网络不在乎，纯线性堆叠会越来越小（见 main 里的图）。
- GPT / Llama 的做法：截断正态 N(0, σ²)，截在 ±2σ。σ = 1/√in 时 Var(W)·in ≈ 1，方差基本保持；
  GPT-2 / Llama 的 initializer_range 直接取常数 0.02（d = 768 时 1/√768 ≈ 0.036，同一量级，
  再配合残差投影除以 √(2L)，见 02_architectures/llama.py 的初始化）。
  为什么要截断：几百万个权重里，正态分布的尾部必然抽到 4σ、5σ 的值（P(|z|>4) ≈ 6e-5，
  一个 4096×4096 的矩阵里约 1000 个）。这些大权重造成离群激活——训练初期 loss 尖峰，低精度下更容易溢出。
  截断把 |W| 限制在 2σ 以内；代价是实际标准差变小为 ≈ 0.88σ（trunc_normal_std_factor 给出精确值）。

Embedding：查表
---------------
forward 是 weight[ids]：把 id 当行号取出 (…, d)。反向是它的转置——scatter-add：
    dL/dW[r] = Σ_{位置 p: ids[p] = r} g[p]
同一个 token 出现多次，梯度要累加（不是覆盖），所以是 index_add 而不是赋值；没出现的行梯度为 0
（nn.Embedding(sparse=True) 正是利用这一点返回稀疏梯度）。padding_idx 那一行不参与训练：
反向时把它的梯度清零，初始化时也置 0。初始化 N(0, 1)，与 nn.Embedding 相同。

SiLU：x · σ(x)
--------------
σ(x) = 1/(1+e^{−x}) 在 x → −∞ 时 e^{−x} 溢出成 inf：前向 1/inf = 0 还算幸运，反向却是 0·inf = NaN；
换成 e^x/(1+e^x) 又在 x → +∞ 时 inf/inf = NaN。安全写法只对 −|x| 求指数（z = e^{−|x|} ∈ (0, 1]，不可能溢出）：
    σ(x) = 1/(1+z)  (x ≥ 0),    σ(x) = z/(1+z)  (x < 0)
导数：σ' = σ(1−σ)，所以  SiLU'(x) = σ(x) + x·σ(x)(1−σ(x)) = σ(x)·(1 + x·(1−σ(x)))。

softmax 与 log_softmax
----------------------
softmax(x)_i = e^{x_i} / Σ_j e^{x_j}。fp32 的 e^x 在 x > 88.7 时溢出为 inf，inf/inf = NaN；
x 全都很负时 e^x 下溢为 0，0/0 = NaN。减去行最大值 m 后结果不变（分子分母同乘 e^{−m}），
而 x − m ≤ 0 保证不溢出、且最大的那项恰为 e^0 = 1，分母 ≥ 1 不会是 0。
反向（Jacobian 是 diag(y) − y yᵀ）：dL/dx = y ⊙ (g − Σ_j g_j y_j)，只需保存输出 y。
log_softmax = x − logsumexp(x)，logsumexp(x) = m + log Σ e^{x−m}：直接对 softmax 取 log 会在 y 下溢为 0 时得到 −inf，
而 x − logsumexp 对大负数仍是精确的有限值（交叉熵就靠它）。
m 可以 detach：函数对平移不变，对 m 的偏导数学上恰为 0，不让 autograd 经过 amax 反传既省事又少一份舍入噪声。
"""

from __future__ import annotations

import math

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import torch
from torch import nn

from utils.io import is_smoke, output_path, save_figure
from utils.lesson_cli import lesson_args
from utils.torch_playground import setup_seed

INIT_SCHEMES = ("kaiming_uniform", "trunc_normal")


def _opmath(x: torch.Tensor) -> torch.Tensor:
    """半精度升到 fp32 计算（PyTorch 的 silu/softmax 内核也在 fp32 里算），fp32/fp64 保持原样。"""
    return x.float() if x.dtype in (torch.float16, torch.bfloat16) else x


# ---------------------------------------------------------------------------------------------------
# 1. Linear
# ---------------------------------------------------------------------------------------------------


def kaiming_uniform_init_(weight: torch.Tensor, bias: torch.Tensor | None = None) -> None:
    """nn.Linear 的默认初始化，原地写入：W、b ~ U(−1/√in, 1/√in)。

    按 kaiming_uniform_(a=√5) 的原式计算 bound（数学上等于 1/√in；照原式算是为了同一随机种子下与
    nn.Linear 逐位相等——√5 平方后是 5.000000000000001，化简后的 1/√in 可能差最后一位）。
    """
    fan_in = weight.shape[1]
    a = math.sqrt(5)
    gain = math.sqrt(2.0 / (1 + a**2))  # leaky_relu 的 gain：√(2/(1+a²)) = √(1/3)
    bound = math.sqrt(3.0) * gain / math.sqrt(fan_in)  # U(−β, β) 的标准差是 β/√3
    with torch.no_grad():
        weight.uniform_(-bound, bound)
        if bias is not None:
            bias_bound = 1 / math.sqrt(fan_in)
            bias.uniform_(-bias_bound, bias_bound)


def trunc_normal_init_(weight: torch.Tensor, std: float, cutoff: float = 2.0) -> None:
    """截断正态 N(0, std²)，截在 ±cutoff·std，原地写入；与 nn.init.trunc_normal_(a=−2σ, b=2σ) 逐位相等。

    拒绝采样：先整体抽正态，再把落在区间外的位置重抽，直到没有越界的。±2σ 内的概率是 95.4%，
    每轮只剩 4.6% 要重抽，几轮就结束。每轮整块重抽（只取越界位置的值），随机数的消耗与 PyTorch 相同。
    """
    if std <= 0 or cutoff <= 0:
        raise ValueError(f"std={std}、cutoff={cutoff} 都必须是正数")
    if weight.is_meta:
        return
    with torch.no_grad():
        # 界限先转成张量的 dtype：bf16 里 2σ 会被舍入，判断越界要用舍入后的界
        hi = weight.new_tensor(cutoff * std, device="cpu").item()
        result = weight.normal_(0.0, std)
        while True:
            outside = (result < -hi) | (result > hi)
            if not outside.any():
                break
            result = torch.where(outside, torch.empty_like(result).normal_(0.0, std), result)
        weight.copy_(result)


def trunc_normal_std_factor(cutoff: float = 2.0) -> float:
    """N(0, 1) 截在 ±c 后的标准差：√(1 − 2cφ(c)/(2Φ(c) − 1))；c = 2 时 ≈ 0.880。"""
    phi = math.exp(-cutoff**2 / 2) / math.sqrt(2 * math.pi)
    mass = math.erf(cutoff / math.sqrt(2))  # 2Φ(c) − 1
    return math.sqrt(1 - 2 * cutoff * phi / mass)


def _check_last_dim(x: torch.Tensor, expected: int, name: str) -> None:
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} 的输入应为 torch.Tensor，收到 {type(x).__name__}")
    if x.dim() == 0 or x.shape[-1] != expected:
        raise ValueError(f"{name} 期望输入的最后一维是 {expected}，收到形状 {tuple(x.shape)}；"
                         f"请检查上一层的输出维度与 in_features 是否一致")


class LinearFunction(torch.autograd.Function):
    """y = x Wᵀ + b，反向手写（Linear 本身用 autograd；这个类给出推导并用 gradcheck 验证）。

    x (…, in) 展平成 X (N, in)，g = dL/dy 展平成 G (N, out)：
        dX = G W            (N, out)·(out, in)
        dW = Gᵀ X           (out, N)·(N, in)  —— 对批内所有位置求和就藏在这个矩阵乘里
        db = Σ_N G
    """

    @staticmethod
    def forward(ctx, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        ctx.save_for_backward(x, weight)
        ctx.has_bias = bias is not None
        y = x.matmul(weight.t())
        return y + bias if bias is not None else y

    @staticmethod
    def backward(ctx, grad_out: torch.Tensor):
        x, weight = ctx.saved_tensors
        g = grad_out.reshape(-1, grad_out.shape[-1])  # (N, out)
        grad_x = grad_out.matmul(weight) if ctx.needs_input_grad[0] else None
        grad_w = g.t().matmul(x.reshape(-1, x.shape[-1])) if ctx.needs_input_grad[1] else None
        grad_b = g.sum(0) if ctx.has_bias and ctx.needs_input_grad[2] else None
        return grad_x, grad_w, grad_b


class Linear(nn.Module):
    """y = x Wᵀ + b，W: (out_features, in_features)。参数名 weight / bias 与 nn.Linear 相同，state_dict 互通。

    init="kaiming_uniform"（默认，同 nn.Linear，同一随机种子下逐位相等）或 "trunc_normal"
    （std 默认 1/√in_features，截在 ±2σ，偏置置 0）。device="meta" 时只建形状不分配内存（swap_in_basics 用）。
    前向用 matmul 写，反向交给 autograd。不带偏置时与 F.linear 逐位相等（同一个 GEMM）；带偏置时 F.linear 走
    addmm，把 b 并进 GEMM 的累加里，这里先算出 x Wᵀ 再加 b，舍入的位置不同：fp32 下最后一位可能不同
    （相对误差 ~1e-7，in=512 时实测 4.8e-7 的绝对差），bf16 下差一个 bf16 ulp（Llama 不用偏置，不受影响）。
    """

    def __init__(self, in_features: int, out_features: int, bias: bool = True, *, init: str = "kaiming_uniform",
                 std: float | None = None, device: torch.device | str | None = None,
                 dtype: torch.dtype | None = None) -> None:
        super().__init__()
        if in_features <= 0 or out_features <= 0:
            raise ValueError(f"in_features={in_features}、out_features={out_features} 都必须是正整数")
        if init not in INIT_SCHEMES:
            raise ValueError(f"未知的 init={init!r}；可选：{', '.join(INIT_SCHEMES)}")
        if std is not None and init != "trunc_normal":
            raise ValueError(f"std={std} 只用于 init='trunc_normal'（kaiming_uniform 的尺度由 in_features 决定）")
        if std is not None and std <= 0:
            raise ValueError(f"std={std} 必须是正数（不传则取 1/√in_features）")
        self.in_features, self.out_features = in_features, out_features
        self.init, self.std = init, std
        factory = {"device": device, "dtype": dtype}
        self.weight = nn.Parameter(torch.empty(out_features, in_features, **factory))
        self.bias = nn.Parameter(torch.empty(out_features, **factory)) if bias else None
        self.reset_parameters()

    def reset_parameters(self) -> None:
        if self.init == "kaiming_uniform":
            kaiming_uniform_init_(self.weight, self.bias)
            return
        trunc_normal_init_(self.weight, self.std if self.std is not None else 1 / math.sqrt(self.in_features))
        if self.bias is not None:
            with torch.no_grad():
                self.bias.zero_()

    @classmethod
    def from_torch(cls, module: nn.Linear) -> Linear:
        """包装一个 nn.Linear：共享它的 Parameter 对象（不拷贝），所以共享权重依旧共享、优化器状态依旧对得上。"""
        ours = cls(module.in_features, module.out_features, bias=module.bias is not None, device="meta")
        ours.weight = module.weight
        if module.bias is not None:
            ours.bias = module.bias
        return ours

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        _check_last_dim(x, self.in_features, "Linear")
        y = x.matmul(self.weight.t())  # (…, in) · (in, out) → (…, out)
        return y + self.bias if self.bias is not None else y

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, " \
               f"bias={self.bias is not None}, init={self.init!r}"


# ---------------------------------------------------------------------------------------------------
# 2. Embedding
# ---------------------------------------------------------------------------------------------------


class EmbeddingFunction(torch.autograd.Function):
    """weight[ids]，反向是 scatter-add：dW = zeros.index_add(0, ids, g)，padding_idx 行清零。"""

    @staticmethod
    def forward(ctx, ids: torch.Tensor, weight: torch.Tensor, padding_idx: int | None) -> torch.Tensor:
        ctx.save_for_backward(ids)
        ctx.num_embeddings, ctx.padding_idx = weight.shape[0], padding_idx
        return weight.index_select(0, ids.reshape(-1)).view(*ids.shape, weight.shape[1])  # (…, d)

    @staticmethod
    def backward(ctx, grad_out: torch.Tensor):
        (ids,) = ctx.saved_tensors
        d = grad_out.shape[-1]
        # 同一 id 出现几次就累加几次；GPU 上 index_add 用原子加，累加顺序不定，结果不逐位可复现
        grad_w = grad_out.new_zeros(ctx.num_embeddings, d).index_add_(0, ids.reshape(-1), grad_out.reshape(-1, d))
        if ctx.padding_idx is not None:
            grad_w[ctx.padding_idx] = 0
        return None, grad_w, None


class Embedding(nn.Module):
    """查表：ids (…) → weight[ids] (…, embedding_dim)。参数名 weight 与 nn.Embedding 相同；初始化 N(0, 1)。

    padding_idx（可为负，按 Python 习惯从末尾数）那一行初始化为 0，且永远没有梯度。
    """

    def __init__(self, num_embeddings: int, embedding_dim: int, padding_idx: int | None = None, *,
                 device: torch.device | str | None = None, dtype: torch.dtype | None = None) -> None:
        super().__init__()
        if num_embeddings <= 0 or embedding_dim <= 0:
            raise ValueError(f"num_embeddings={num_embeddings}、embedding_dim={embedding_dim} 都必须是正整数")
        if padding_idx is not None:
            if not -num_embeddings <= padding_idx < num_embeddings:
                raise ValueError(f"padding_idx={padding_idx} 超出范围 [-{num_embeddings}, {num_embeddings})")
            padding_idx %= num_embeddings
        self.num_embeddings, self.embedding_dim, self.padding_idx = num_embeddings, embedding_dim, padding_idx
        self.weight = nn.Parameter(torch.empty(num_embeddings, embedding_dim, device=device, dtype=dtype))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        with torch.no_grad():
            self.weight.normal_(0.0, 1.0)  # 与 nn.Embedding 相同：后面通常跟 norm 或乘 √d，尺度不敏感
            if self.padding_idx is not None:
                self.weight[self.padding_idx] = 0

    @classmethod
    def from_torch(cls, module: nn.Embedding) -> Embedding:
        """包装一个 nn.Embedding，共享它的 weight（不拷贝）。max_norm / scale_grad_by_freq / sparse 不支持。"""
        unsupported = {k: getattr(module, k) for k in ("max_norm", "scale_grad_by_freq", "sparse")}
        if unsupported != {"max_norm": None, "scale_grad_by_freq": False, "sparse": False}:
            raise ValueError(f"Embedding 只实现了普通查表；这个 nn.Embedding 设置了 {unsupported}，请保留原模块")
        ours = cls(module.num_embeddings, module.embedding_dim, module.padding_idx, device="meta")
        ours.weight = module.weight
        return ours

    def _check_ids(self, ids: torch.Tensor) -> None:
        if not isinstance(ids, torch.Tensor) or ids.dtype not in (torch.int64, torch.int32):
            got = ids.dtype if isinstance(ids, torch.Tensor) else type(ids).__name__
            raise ValueError(f"Embedding 的输入应为 int64/int32 的 token id 张量，收到 {got}；"
                             "浮点数请先 .long()，文本请先分词")
        if ids.numel() == 0 or torch.compiler.is_compiling():
            return  # 范围检查要把值读回 Python（.item()），编译时会打断图，跳过
        lo, hi = int(ids.min()), int(ids.max())
        if lo < 0 or hi >= self.num_embeddings:
            raise ValueError(f"id {lo if lo < 0 else hi} 超出范围 [0, {self.num_embeddings})；"
                             "检查分词器的词表大小与 num_embeddings 是否一致")

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        self._check_ids(ids)
        return EmbeddingFunction.apply(ids, self.weight, self.padding_idx)

    def extra_repr(self) -> str:
        pad = f", padding_idx={self.padding_idx}" if self.padding_idx is not None else ""
        return f"{self.num_embeddings}, {self.embedding_dim}{pad}"


# ---------------------------------------------------------------------------------------------------
# 3. SiLU
# ---------------------------------------------------------------------------------------------------


def sigmoid_naive(x: torch.Tensor) -> torch.Tensor:
    """反面教材：1/(1+e^{−x})。x ≪ 0 时 e^{−x} = inf，前向得 0，反向得 0·inf = NaN。"""
    return 1 / (1 + torch.exp(-x))


def sigmoid(x: torch.Tensor) -> torch.Tensor:
    """数值安全的 σ(x)：只对 −|x| 求指数，z = e^{−|x|} ∈ (0, 1]，任何有限 x 都不会溢出。

    |x| 用 where 写而不用 x.abs()：abs 在 0 处的次梯度是 0，autograd 会得出 σ'(0) = 0（应为 1/4）。
    """
    z = torch.exp(-torch.where(x >= 0, x, -x))
    return torch.where(x >= 0, 1 / (1 + z), z / (1 + z))


class SiLUFunction(torch.autograd.Function):
    """SiLU(x) = x·σ(x)；反向 dL/dx = g · σ(x)(1 + x(1 − σ(x)))。半精度在 fp32 里算再转回。"""

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(x)
        x32 = _opmath(x)
        return (x32 * sigmoid(x32)).to(x.dtype)

    @staticmethod
    def backward(ctx, grad_out: torch.Tensor):
        (x,) = ctx.saved_tensors
        x32 = _opmath(x)
        s = sigmoid(x32)
        return (_opmath(grad_out) * s * (1 + x32 * (1 - s))).to(x.dtype)


def silu(x: torch.Tensor) -> torch.Tensor:
    if not isinstance(x, torch.Tensor) or not x.is_floating_point():
        got = x.dtype if isinstance(x, torch.Tensor) else type(x).__name__
        raise TypeError(f"silu 需要浮点张量，收到 {got}")
    return SiLUFunction.apply(x)


class SiLU(nn.Module):
    """x·σ(x)，与 nn.SiLU / F.silu 相等（输出与梯度）。"""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return silu(x)


# ---------------------------------------------------------------------------------------------------
# 4. softmax / logsumexp / log_softmax
# ---------------------------------------------------------------------------------------------------


def _check_dim(x: torch.Tensor, dim: int, name: str) -> None:
    if not isinstance(x, torch.Tensor) or not x.is_floating_point():
        got = x.dtype if isinstance(x, torch.Tensor) else type(x).__name__
        raise TypeError(f"{name} 需要浮点张量，收到 {got}")
    if not -max(x.dim(), 1) <= dim < max(x.dim(), 1):
        raise ValueError(f"{name}：dim={dim} 超出 {x.dim()} 维张量 {tuple(x.shape)} 的范围")


def _row_max(x: torch.Tensor, dim: int) -> torch.Tensor:
    """沿 dim 的最大值（keepdim，不参与求导）；整行都是 ±inf 时换成 0，避免 inf − inf = NaN 混进 logsumexp。"""
    m = x.detach().amax(dim, keepdim=True)
    return torch.where(torch.isfinite(m), m, torch.zeros_like(m))


def softmax_naive(x: torch.Tensor, dim: int = -1) -> torch.Tensor:
    """反面教材：不减最大值。fp32 下 x > 88.7 即 e^x = inf，inf/inf = NaN。"""
    e = torch.exp(x)
    return e / e.sum(dim, keepdim=True)


class SoftmaxFunction(torch.autograd.Function):
    """y = e^{x−m} / Σ e^{x−m}；反向 dL/dx = y ⊙ (g − Σ g⊙y)，只保存 y（与 PyTorch 的内核一样）。"""

    @staticmethod
    def forward(ctx, x: torch.Tensor, dim: int) -> torch.Tensor:
        x32 = _opmath(x)
        e = torch.exp(x32 - _row_max(x32, dim))  # 每项 ≤ 1，最大的一项恰为 1：不溢出，分母 ≥ 1
        y = (e / e.sum(dim, keepdim=True)).to(x.dtype)
        ctx.save_for_backward(y)
        ctx.dim = dim
        return y

    @staticmethod
    def backward(ctx, grad_out: torch.Tensor):
        (y,) = ctx.saved_tensors
        y32, g = _opmath(y), _opmath(grad_out)
        return (y32 * (g - (g * y32).sum(ctx.dim, keepdim=True))).to(y.dtype), None


def softmax(x: torch.Tensor, dim: int = -1) -> torch.Tensor:
    """数值安全的 softmax（减行最大值），与 torch.softmax 的输出和梯度相等。"""
    _check_dim(x, dim, "softmax")
    return SoftmaxFunction.apply(x, dim)


def logsumexp(x: torch.Tensor, dim: int = -1, keepdim: bool = False) -> torch.Tensor:
    """log Σ e^x = m + log Σ e^{x−m}，与 torch.logsumexp 相等；梯度由 autograd 得到，恰为 softmax(x)。"""
    _check_dim(x, dim, "logsumexp")
    x32 = _opmath(x)
    m = _row_max(x32, dim)  # detach 过：对平移不变，∂/∂m = 0
    out = m + torch.log(torch.exp(x32 - m).sum(dim, keepdim=True))
    return (out if keepdim else out.squeeze(dim)).to(x.dtype)


def log_softmax(x: torch.Tensor, dim: int = -1) -> torch.Tensor:
    """x − logsumexp(x)，与 torch.log_softmax 相等；即使 softmax 下溢为 0，这里仍是有限的精确值。

    先减最大值再相减：(x − m) − log Σ e^{x−m}。照字面算 x − (m + log Σ …) 时两项都和 x 一样大，
    x ≈ 5000 的 fp32 里一个 ulp 就是 5e-4，相减后只剩两三位有效数字；x − m 是小数，减法几乎精确。
    """
    _check_dim(x, dim, "log_softmax")
    x32 = _opmath(x)
    shifted = x32 - _row_max(x32, dim)
    # logsumexp(x − m)：x − m 的最大值已是 0，直接 log Σ e^{x−m}，不必再走一遍求最大值
    return (shifted - torch.log(torch.exp(shifted).sum(dim, keepdim=True))).to(x.dtype)


# ---------------------------------------------------------------------------------------------------
# 5. 换进模型：swap_in_basics
# ---------------------------------------------------------------------------------------------------


def swap_in_basics(model: nn.Module) -> dict[str, int]:
    """把 model 里所有 nn.Linear / nn.Embedding / nn.SiLU 原地换成本文件的实现，返回各换了几个。

    新模块共享原模块的 Parameter 对象（不拷贝）：共享的权重（如 tie_word_embeddings 的 lm_head 与 embed_tokens）
    依旧是同一个张量，已建好的优化器也依旧指向它们；同一个子模块挂在多处时，换成同一个新模块。
    只换类型恰好是 nn.Linear / nn.Embedding / nn.SiLU 的模块：子类（量化层、LoRA 之类）的行为可能不同，原样保留。
    激活函数须是子模块（如 Llama MLP 的 act_fn = nn.SiLU()）才换得到；forward 里直接调 F.silu 的写法换不到。
    注意：换完后 isinstance(m, nn.Linear) 不再成立，按类型挑模块的代码（Llama 的 flops_per_token、
    reset_parameters，Muon 挑出嵌入矩阵）会漏掉它们：本函数用于对照与教学，训练前不要换。
    """
    converters = {nn.Linear: Linear.from_torch, nn.Embedding: Embedding.from_torch, nn.SiLU: lambda _: SiLU()}
    if type(model) in converters:
        raise ValueError(f"swap_in_basics 原地替换子模块，传入的 {type(model).__name__} 本身没有父模块可挂；"
                         "请直接构造 Linear / Embedding / SiLU，或传入包含它的模型")
    replaced: dict[int, nn.Module] = {}
    counts = {"Linear": 0, "Embedding": 0, "SiLU": 0}
    for parent in list(model.modules()):
        for name, child in list(parent._modules.items()):  # named_children() 会跳过重复挂载的同一模块
            convert = converters.get(type(child))
            if convert is None:
                continue
            if id(child) not in replaced:
                replaced[id(child)] = convert(child)
                counts[type(replaced[id(child)]).__name__] += 1
            setattr(parent, name, replaced[id(child)])
    return counts


# ---------------------------------------------------------------------------------------------------
# 6. 演示与对照
# ---------------------------------------------------------------------------------------------------


def activation_std_by_depth(init: str, width: int, depth: int, std: float | None = None,
                            batch: int = 512) -> list[float]:
    """单位方差的输入穿过 depth 个无偏置 Linear（无激活）后每层输出的标准差：看初始化是否保方差。"""
    x = torch.randn(batch, width)
    stds = [x.std().item()]
    with torch.no_grad():
        for _ in range(depth):
            x = Linear(width, width, bias=False, init=init, std=std)(x)
            stds.append(x.std().item())
    return stds


def variance_ratio(init: str, width: int, std: float | None = None) -> float:
    """每过一层 Var(y)/Var(x) = in·Var(W) 的理论值：kaiming_uniform 是 1/3；trunc_normal 是 in·std²·c²
    （c = trunc_normal_std_factor() ≈ 0.880，截断让实际标准差只剩 c·std；std 默认 1/√in）。
    depth 层之后激活的标准差 = 输入的标准差 × variance_ratio^{depth/2}。"""
    if init == "kaiming_uniform":
        return 1 / 3
    if init != "trunc_normal":
        raise ValueError(f"未知的 init={init!r}；可选：{', '.join(INIT_SCHEMES)}")
    s = std if std is not None else 1 / math.sqrt(width)
    return width * s**2 * trunc_normal_std_factor() ** 2


def init_schemes(width: int) -> list[tuple[str, str, float | None]]:
    """(图例, init, std)：nn.Linear 的默认、1/√in 截断正态、GPT-2 的 0.02、以及补偿截断后恰好保方差的版本。"""
    exact = 1 / (trunc_normal_std_factor() * math.sqrt(width))
    return [("kaiming_uniform (nn.Linear)", "kaiming_uniform", None),
            ("trunc_normal std=1/sqrt(in)", "trunc_normal", None),
            ("trunc_normal std=0.02", "trunc_normal", 0.02),
            ("trunc_normal std=1/(0.88 sqrt(in))", "trunc_normal", exact)]


def init_figure(width: int, depth: int):
    """左：各初始化的权重直方图；右：激活标准差随深度的变化（对数轴；实线实测，虚线是 variance_ratio 的理论值）。

    右图横轴第 0 个点是输入本身（还没过任何层），第 ℓ 个点是第 ℓ 层的输出。返回 Figure。
    """
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4))
    layers = list(range(depth + 1))
    for label, init, std in init_schemes(width):
        w = Linear(width, width, bias=False, init=init, std=std).weight.detach().flatten() * math.sqrt(width)
        ax1.hist(w.numpy(), bins=80, histtype="step", density=True, label=label)
        (line,) = ax2.plot(layers, activation_std_by_depth(init, width, depth, std), marker="o", ms=3, label=label)
        ratio = variance_ratio(init, width, std)
        ax2.plot(layers, [ratio ** (ell / 2) for ell in layers], ls="--", lw=1, color=line.get_color())
    ax1.set(title=f"weight * sqrt(in), in={width}", xlabel="weight value * sqrt(in)", ylabel="density")
    ax2.set(title="activation std through a linear stack (dashed: theory)", xlabel="layer (0 = input)",
            ylabel="activation std (log scale)", yscale="log")
    ax1.set_ylim(top=ax1.get_ylim()[1] * 1.5)  # 给图例留出空白：它不压住最高的那个峰
    for ax in (ax1, ax2):
        ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def plot_inits(path, width: int, depth: int):
    """画 init_figure 并原子地存到 path，返回 path。"""
    return save_figure(init_figure(width, depth), path, dpi=120)


def _max_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    return (a - b).abs().max().item()


def check_linear(b: int, t: int, d_in: int, d_out: int) -> None:
    print(f"== Linear 对照 nn.Linear（x: ({b}, {t}, {d_in}) → {d_out}）==")
    setup_seed(1)
    ref = nn.Linear(d_in, d_out)
    setup_seed(1)
    ours = Linear(d_in, d_out)
    same_init = torch.equal(ours.weight, ref.weight) and torch.equal(ours.bias, ref.bias)
    print(f"  同一种子下初始化与 nn.Linear 逐位相等：{same_init}；bound = {ours.weight.abs().max().item():.4f}"
          f" ≤ 1/√in = {1 / math.sqrt(d_in):.4f}")
    assert same_init
    x = torch.randn(b, t, d_in, requires_grad=True)
    grad = torch.randn(b, t, d_out)
    y, y_ref = ours(x), ref(x)
    got = torch.autograd.grad((y * grad).sum(), (x, ours.weight, ours.bias))
    want = torch.autograd.grad((y_ref * grad).sum(), (x, ref.weight, ref.bias))
    hand = torch.autograd.grad((LinearFunction.apply(x, ours.weight, ours.bias) * grad).sum(),
                               (x, ours.weight, ours.bias))
    errs = [_max_diff(y, y_ref)] + [_max_diff(a, b) for a, b in zip(got, want)]
    hand_err = max(_max_diff(a, b) for a, b in zip(hand, want))
    print(f"  输出差 {errs[0]:.1e}（期望 ≲ 1e-6：nn.Linear 的 addmm 把偏置并进 GEMM，我们先乘后加，"
          f"舍入位置不同；不带偏置时是 0）")
    print(f"  dx 差 {errs[1]:.1e}  dW 差 {errs[2]:.1e}  db 差 {errs[3]:.1e}  手推反向差 {hand_err:.1e}"
          f"（期望 0：反向是同样的矩阵乘）")
    assert max(errs) < 1e-4 and hand_err < 1e-4
    xs = torch.randn(3, 4, dtype=torch.float64, requires_grad=True)
    ws = torch.randn(5, 4, dtype=torch.float64, requires_grad=True)
    bs = torch.randn(5, dtype=torch.float64, requires_grad=True)
    ok = torch.autograd.gradcheck(LinearFunction.apply, (xs, ws, bs))
    print(f"  LinearFunction 通过 gradcheck（fp64 有限差分）：{ok}")


def check_inits(width: int, depth: int) -> None:
    factor = trunc_normal_std_factor(2.0)
    print(f"== 初始化：每层的方差比 Var(y)/Var(x) = in·Var(W)（in={width}）==")
    print(f"  kaiming_uniform(a=√5)：1/3 = 0.333；trunc_normal(1/√in)：{factor**2:.3f}（截断后 std 只剩 {factor:.3f}σ）；"
          f"trunc_normal(0.02)：{variance_ratio('trunc_normal', width, 0.02):.3f}；std 除以 {factor:.3f} 补偿截断：1.000")
    print(f"  输入 std = 1；第 {depth} 层的理论值 = 方差比^({depth}/2)；实测与它只差随机权重带来的几个百分点"
          f"（in 越大越准：默认配置 in=512 时 ≤ 1%，SMOKE 的 in=64 约 8%）：")
    for label, init, std in init_schemes(width):
        stds = activation_std_by_depth(init, width, depth, std)
        theory = variance_ratio(init, width, std) ** (depth / 2)
        print(f"  {label:36s} 第 {depth} 层的激活 std = {stds[-1]:.3g}（理论 {theory:.3g}）")
    print(f"  图：{plot_inits(output_path('figures', 'basics_init.png'), width, depth)}")


def check_embedding(vocab: int, d: int) -> None:
    print(f"== Embedding 对照 nn.Embedding（vocab={vocab}, d={d}, padding_idx=0）==")
    ref = nn.Embedding(vocab, d, padding_idx=0)
    ours = Embedding(vocab, d, padding_idx=0)
    ours.load_state_dict(ref.state_dict())
    ids = torch.randint(0, vocab, (4, 16))
    ids[:, -3:] = 0  # padding
    ids[0, :4] = 5  # 同一 token 出现多次：梯度要累加
    grad = torch.randn(4, 16, d)
    (g,) = torch.autograd.grad((ours(ids) * grad).sum(), ours.weight)
    (g_ref,) = torch.autograd.grad((ref(ids) * grad).sum(), ref.weight)
    print(f"  输出差 {_max_diff(ours(ids), ref(ids)):.1e}  dW 差 {_max_diff(g, g_ref):.1e}"
          f"  padding 行梯度 |·|max = {g[0].abs().max().item():.1e}"
          f"  id=5 的梯度 = 它出现的 {(ids == 5).sum().item()} 个位置之和：{torch.allclose(g[5], grad[ids == 5].sum(0))}")
    assert torch.equal(ours(ids), ref(ids)) and torch.allclose(g, g_ref) and not g[0].any()


def check_silu_softmax() -> None:
    print("== SiLU / softmax 对照 PyTorch（含 ±1e4 的极端输入）==")
    x = torch.cat([torch.randn(1000) * 6, torch.tensor([1e4, -1e4, 88.0, -88.0, 0.0])]).requires_grad_()
    y, y_ref = silu(x), torch.nn.functional.silu(x)
    (g,) = torch.autograd.grad(y.sum(), x)
    (g_ref,) = torch.autograd.grad(y_ref.sum(), x)
    (g_naive,) = torch.autograd.grad((x * sigmoid_naive(x)).sum(), x)
    print(f"  silu 输出差 {_max_diff(y, y_ref):.1e}  梯度差 {_max_diff(g, g_ref):.1e}（期望 ≲ 1e-6：|x| 到 ~20，"
          f"exp 与除法的写法和 PyTorch 内核不同，差几个 fp32 ulp）；naive σ 在 x=-1e4 处的梯度：{g_naive[-4].item()}")
    assert torch.isfinite(g).all() and g_naive.isnan().any()
    assert torch.allclose(y, y_ref, rtol=1e-6, atol=1e-6) and torch.allclose(g, g_ref, rtol=1e-6, atol=1e-6)

    s = torch.randn(8, 50) * 3
    s[0, 0], s[1, 1] = 1e4, -1e4
    s.requires_grad_()
    grad = torch.randn(8, 50)
    for name, ours_fn, ref_fn in [("softmax", softmax, torch.softmax), ("log_softmax", log_softmax, torch.log_softmax)]:
        out, ref = ours_fn(s, -1), ref_fn(s, -1)
        (gs,) = torch.autograd.grad((out * grad).sum(), s)
        (gs_ref,) = torch.autograd.grad((ref * grad).sum(), s)
        print(f"  {name:11s} 输出差 {_max_diff(out, ref):.1e}  梯度差 {_max_diff(gs, gs_ref):.1e}"
              f"（期望 ≲ 1e-6：fp32 下只差归约顺序与 exp 的实现）")
        assert torch.allclose(out, ref, atol=1e-5) and torch.allclose(gs, gs_ref, atol=1e-5)
    naive = softmax_naive(s.detach(), -1)
    print(f"  不减最大值：含 1e4 的那一行变成 {naive[0, :3].tolist()}…（NaN 行数 {naive.isnan().any(-1).sum().item()}）")
    assert naive[0].isnan().any()


def check_llama_swap(smoke: bool) -> None:
    from model_lab import Llama, LlamaConfig, build_llama_hf_reference  # 只在演示里用：组件本身不依赖模型

    cfg = LlamaConfig(vocab_size=97, hidden_size=48 if smoke else 128, intermediate_size=96 if smoke else 352,
                      num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
                      tie_word_embeddings=True)
    setup_seed(0)
    model = Llama(cfg).eval()
    hf = build_llama_hf_reference(model)
    ids = torch.randint(0, cfg.vocab_size, (2, 24))
    with torch.no_grad():
        before, ref = model(ids), hf(ids).logits
    prompt = ids[:, :5]
    gen_before = model.generate(prompt, 12, temperature=0)
    counts = swap_in_basics(model)
    print(f"== 换进 Llama（hidden={cfg.hidden_size}，tie_word_embeddings=True）：替换了 {counts} ==")
    tied = model.lm_head.weight is model.model.embed_tokens.weight
    with torch.no_grad():
        after = model(ids)
    gen_after = model.generate(prompt, 12, temperature=0)
    print(f"  logits 差：与换之前 {_max_diff(after, before):.1e}，与 HF {_max_diff(after, ref):.1e}；"
          f"共享权重仍共享：{tied}；greedy 生成不变：{torch.equal(gen_after, gen_before)}")
    assert tied and torch.allclose(after, ref, atol=1e-5) and torch.equal(gen_after, gen_before)


def main() -> None:
    setup_seed()
    smoke = is_smoke()
    b, t, d_in, d_out = (2, 7, 32, 48) if smoke else (4, 128, 512, 1024)
    check_linear(b, t, d_in, d_out)
    width, depth = (64, 6) if smoke else (512, 12)
    check_inits(width, depth)
    check_embedding(*((50, 16) if smoke else (1000, 128)))
    check_silu_softmax()
    check_llama_swap(smoke)


if __name__ == "__main__":
    lesson_args(__doc__)
    main()
