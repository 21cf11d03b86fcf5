"""第 13 天 自定义 autograd.Function，并用 gradcheck 验证。

当某个运算 autograd 不会求导（调用了外部库/自写 kernel），或者自动求导太费内存/数值不稳时，
就自己写前向和反向：

    class Exp(torch.autograd.Function):
        @staticmethod
        def forward(ctx, x):
            y = x.exp()
            ctx.save_for_backward(y)      # 反向要用的张量存进 ctx（存输出还是输入，是内存与计算的取舍）
            return y

        @staticmethod
        def backward(ctx, grad_out):      # 收到 ∂L/∂y，返回 ∂L/∂x —— forward 有几个输入就返回几个
            (y,) = ctx.saved_tensors
            return grad_out * y

    y = Exp.apply(x)                      # 永远通过 .apply 调用，不要实例化

要点：
1. backward 的返回值个数 = forward 的输入个数；不需要梯度的输入（Python 数字、整数张量）返回 None。
   ctx.needs_input_grad[i] 告诉你第 i 个输入要不要梯度，不要的可以不算。
2. 非张量的东西（维度、常数）直接放在 ctx 的属性上：ctx.dim = dim。
3. torch.autograd.gradcheck(fn, inputs) 用**有限差分**检查你的 backward：
   对每个输入元素做 (f(x + ε) − f(x − ε)) / 2ε（默认 ε = 1e-6），与解析梯度比较（默认 atol=1e-5、rtol=1e-3）。
   必须用 float64 输入：f 的每次计算都带 ~ε_mach·|f| 的舍入误差，除以 2ε 后被放大成
   ~ε_mach·|f| / ε。float32 的 ε_mach（这里指单位舍入）= 2⁻²⁴ ≈ 6e-8（torch.finfo(float32).eps = 2⁻²³ ≈ 1.19e-7
   是它的两倍，即 1 与下一个 float32 的间距），于是误差 ≈ 6e-8 / 1e-6 ≈ 6e-2·|f|
   （再加上 x ± ε 本身在 float32 里也舍入：1 附近的间距是 1.2e-7，ε 只剩一两位有效数字）——
   实测 sigmoid 在 ε=1e-6 时（1000 个标准正态点）误差中位数约 1e-2、最大约 7e-2，比容差大三个数量级，
   根本分辨不出对错；float64 的 ε_mach = 2⁻⁵³ ≈ 1.1e-16，同样的算式给出 ~1e-10（实测中位数 ~2e-11、最大 ~1e-10）。
   输入 requires_grad=True，规模要小：每个输入元素要做 2 次前向，代价是 O(元素数) 次前向。
4. 数值稳定：softmax / logsumexp 的前向要先减去最大值；反向用前向存下的结果，不要重算 exp。

练习：ex1–ex7，每题是一个 autograd.Function（写好 forward 与 backward），加一个调用它的函数。
自检同时比较 输出、每个输入的梯度，并对你的实现跑 gradcheck。运行：

    python archive/28days_challenges/day13_custom_autograd_function.py
"""

from __future__ import annotations

import math
import warnings

import torch
import torch.nn.functional as F

from utils import exercises
from utils.lesson_cli import lesson_args


# =============================================================================
# 练习（类与函数体就是参考解答；想自己做，就把 backward 的函数体换成 raise NotImplementedError 再运行本文件）
# =============================================================================
class Exp(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        y = x.exp()
        ctx.save_for_backward(y)  # d/dx eˣ = eˣ：存输出，反向不必再算一次 exp
        return y

    @staticmethod
    def backward(ctx, grad_out):
        (y,) = ctx.saved_tensors
        return grad_out * y


def ex1_exp(x: torch.Tensor) -> torch.Tensor:
    """自定义 Exp：y = eˣ，∂y/∂x = y（对照 torch.exp）。"""
    return Exp.apply(x)


class Sigmoid(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        y = torch.sigmoid(x)
        ctx.save_for_backward(y)
        return y

    @staticmethod
    def backward(ctx, grad_out):
        (y,) = ctx.saved_tensors
        return grad_out * y * (1 - y)  # σ' = σ(1 − σ)


def ex2_sigmoid(x: torch.Tensor) -> torch.Tensor:
    """自定义 Sigmoid：σ'(x) = σ(x)(1 − σ(x))（对照 torch.sigmoid）。"""
    return Sigmoid.apply(x)


class Linear(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, bias):
        ctx.save_for_backward(x, weight)
        return x @ weight.t() + bias  # (N, in) @ (in, out) + (out,)

    @staticmethod
    def backward(ctx, grad_out):  # grad_out: (N, out)
        x, weight = ctx.saved_tensors
        grad_x = grad_out @ weight if ctx.needs_input_grad[0] else None  # (N, in)
        grad_w = grad_out.t() @ x if ctx.needs_input_grad[1] else None  # (out, in)
        grad_b = grad_out.sum(0) if ctx.needs_input_grad[2] else None  # bias 被广播到每一行：梯度沿 batch 求和
        return grad_x, grad_w, grad_b


def ex3_linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """自定义 Linear：y = x Wᵀ + b，三个输入都要梯度（对照 F.linear）。"""
    return Linear.apply(x, weight, bias)


class GeluTanh(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        ctx.save_for_backward(x)
        c = math.sqrt(2 / math.pi)
        return 0.5 * x * (1 + torch.tanh(c * (x + 0.044715 * x**3)))

    @staticmethod
    def backward(ctx, grad_out):
        (x,) = ctx.saved_tensors
        c = math.sqrt(2 / math.pi)
        t = torch.tanh(c * (x + 0.044715 * x**3))
        # y = ½x(1 + t)，t = tanh(u)，u = c(x + 0.044715x³)
        # y' = ½(1 + t) + ½x·(1 − t²)·c(1 + 3·0.044715x²)
        dy = 0.5 * (1 + t) + 0.5 * x * (1 - t**2) * c * (1 + 3 * 0.044715 * x**2)
        return grad_out * dy


def ex4_gelu_tanh(x: torch.Tensor) -> torch.Tensor:
    """自定义 GELU（tanh 近似，GPT-2 用的版本）：y = ½x(1 + tanh(√(2/π)(x + 0.044715x³)))
    （对照 F.gelu(x, approximate="tanh")）。"""
    return GeluTanh.apply(x)


class Softmax(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        e = (x - x.amax(-1, keepdim=True)).exp()  # 减最大值：数学上不变，避免 exp 溢出
        s = e / e.sum(-1, keepdim=True)
        ctx.save_for_backward(s)
        return s

    @staticmethod
    def backward(ctx, grad_out):
        (s,) = ctx.saved_tensors
        return s * (grad_out - (grad_out * s).sum(-1, keepdim=True))  # 雅可比 diag(s) − s sᵀ 乘上游梯度


def ex5_softmax(x: torch.Tensor) -> torch.Tensor:
    """自定义 Softmax（最后一维），反向不构造雅可比矩阵（对照 torch.softmax(x, -1)）。"""
    return Softmax.apply(x)


class MulConstant(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, c):
        ctx.c = c  # 非张量：放在 ctx 属性上，不用 save_for_backward
        return x * c

    @staticmethod
    def backward(ctx, grad_out):
        return grad_out * ctx.c, None  # 第二个输入 c 是 Python 数字：梯度位置返回 None


def ex6_mul_constant(x: torch.Tensor, c: float) -> torch.Tensor:
    """自定义 MulConstant：y = c·x，c 是 Python 数字（对照 x * c）。backward 要返回两个值。"""
    return MulConstant.apply(x, c)


class LogSumExp(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        m = x.amax(-1, keepdim=True)
        out = m.squeeze(-1) + (x - m).exp().sum(-1).log()  # log Σ eˣ = m + log Σ e^(x−m)
        ctx.save_for_backward(x, out)
        return out

    @staticmethod
    def backward(ctx, grad_out):
        x, out = ctx.saved_tensors
        return grad_out[..., None] * (x - out[..., None]).exp()  # ∂/∂x_i = e^(x_i − lse) = softmax(x)_i


def ex7_logsumexp(x: torch.Tensor) -> torch.Tensor:
    """自定义 LogSumExp（最后一维，数值稳定），梯度是 softmax（对照 torch.logsumexp(x, -1)）。"""
    return LogSumExp.apply(x)


# =============================================================================
# 参考实现、输入与 probe（输出 + 梯度 + gradcheck）
# =============================================================================
def _randint(g: torch.Generator, lo: int, hi: int) -> int:
    return int(torch.randint(lo, hi, (), generator=g))


def _randn(g: torch.Generator, *shape: int) -> torch.Tensor:
    return torch.randn(*shape, generator=g, dtype=torch.float64)  # gradcheck 需要 float64


def _value_grads_gradcheck(fn):
    """probe：返回 (输出, 对每个张量输入的梯度...)，并对 fn 跑 gradcheck（不通过就抛 GradcheckError）。"""

    def probe(*args):
        args = [a.detach().requires_grad_() if isinstance(a, torch.Tensor) else a for a in args]
        tensors = [a for a in args if isinstance(a, torch.Tensor)]
        y = fn(*args)
        upstream = torch.linspace(-1.0, 2.0, y.numel(), dtype=y.dtype).reshape(y.shape)  # 固定、非全 1 的上游梯度
        grads = torch.autograd.grad(y, tensors, upstream)
        # fast_mode：只沿一个随机方向比较有限差分与解析的方向导数，代价从 O(元素数) 次前向降到几次
        torch.autograd.gradcheck(fn, tuple(args), fast_mode=True)
        return (y.detach(), *grads)

    return probe


def _vec_inputs(g: torch.Generator):
    return (_randn(g, _randint(g, 1, 4), _randint(g, 1, 6)),)


def _linear_inputs(g: torch.Generator):
    n, d_in, d_out = _randint(g, 1, 4), _randint(g, 1, 4), _randint(g, 1, 4)
    return _randn(g, n, d_in), _randn(g, d_out, d_in), _randn(g, d_out)


CHECKS = [
    ("ex1_exp", torch.exp, _vec_inputs, _value_grads_gradcheck),
    ("ex2_sigmoid", torch.sigmoid, _vec_inputs, _value_grads_gradcheck),
    ("ex3_linear", F.linear, _linear_inputs, _value_grads_gradcheck),
    ("ex4_gelu_tanh", lambda x: F.gelu(x, approximate="tanh"), _vec_inputs, _value_grads_gradcheck),
    ("ex5_softmax", lambda x: torch.softmax(x, -1), _vec_inputs, _value_grads_gradcheck),
    (
        "ex6_mul_constant",
        lambda x, c: x * c,
        lambda g: (*_vec_inputs(g), float(torch.randn((), generator=g))),
        _value_grads_gradcheck,
    ),
    ("ex7_logsumexp", lambda x: torch.logsumexp(x, -1), _vec_inputs, _value_grads_gradcheck),
]

PUZZLE_ALLOWED: dict[str, set[str]] = {}


class _BuggySigmoid(Sigmoid):
    """演示用：反向公式写错（漏了 (1 − y)）的版本。"""

    @staticmethod
    def backward(ctx, grad_out):
        (y,) = ctx.saved_tensors
        return grad_out * y


def finite_difference_error(dtype: torch.dtype, eps: float = 1e-6, n: int = 1000) -> torch.Tensor:
    """sigmoid 的中心差分 (σ(x+ε) − σ(x−ε)) / 2ε 在 dtype 里算，与 float64 的解析导数 σ(1−σ) 比较，返回 n 个 |误差|。"""
    x = torch.randn(n, generator=torch.Generator().manual_seed(0), dtype=torch.float64).to(dtype)
    numeric = (torch.sigmoid(x + eps) - torch.sigmoid(x - eps)) / (2 * eps)
    s = torch.sigmoid(x.double())
    return (numeric.double() - s * (1 - s)).abs()


def demo() -> None:
    x = torch.randn(4, dtype=torch.float64, requires_grad=True)
    print(f"gradcheck(正确的 Sigmoid) = {torch.autograd.gradcheck(Sigmoid.apply, (x,))}")
    ok = torch.autograd.gradcheck(_BuggySigmoid.apply, (x,), raise_exception=False)
    print(f"gradcheck(反向漏了 (1−y) 的 Sigmoid) = {ok}")
    x32 = torch.randn(4, requires_grad=True)
    with warnings.catch_warnings():  # gradcheck 会警告"输入不是 float64"——这正是要演示的
        warnings.simplefilter("ignore")
        ok32 = torch.autograd.gradcheck(Sigmoid.apply, (x32,), raise_exception=False)
    print(f"float32 输入上 gradcheck(正确的 Sigmoid) = {ok32}：有限差分精度不够，所以必须用 float64")
    for dtype in (torch.float32, torch.float64):
        err = finite_difference_error(dtype)
        unit = torch.finfo(dtype).eps / 2
        print(f"  {str(dtype):13s} ε=1e-6 的中心差分误差：中位数 {err.median().item():.1e}，最大 {err.max().item():.1e}"
              f"（估计 ε_mach/ε = {unit:.1e}/1e-6 = {unit / 1e-6:.0e}）")


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
