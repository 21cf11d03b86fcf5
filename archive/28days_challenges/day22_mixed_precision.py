"""第 22 天 混合精度：fp16 / bf16 的位布局、舍入、autocast（CPU 上用 bf16）与 GradScaler。

浮点数 = 符号 1 位 + 指数 e 位 + 尾数 m 位（下面的数都由位布局算出，演示里用 torch.finfo 逐个打印核对）：
    float32   e=8  m=23   max ≈ 3.40e38，最小正规数 2⁻¹²⁶ ≈ 1.18e-38，eps = 2⁻²³ ≈ 1.19e-7
    bfloat16  e=8  m=7    范围与 fp32 几乎相同（max ≈ 3.39e38；截掉 fp32 的低 16 位就是 bf16），eps = 2⁻⁷ = 0.0078125
    float16   e=5  m=10   max = 65504，最小正规数 2⁻¹⁴ ≈ 6.10e-5，eps = 2⁻¹⁰ ≈ 9.77e-4
    max = (2 − 2⁻ᵐ)·2^(2^(e−1) − 1)，  最小正规数 tiny = 2^(2 − 2^(e−1))，  eps = 2⁻ᵐ
eps 是 1 与下一个可表示数的**间距**；就近舍入的相对误差最多是它的一半，叫单位舍入 u = eps/2
（fp32 的 u = 2⁻²⁴ ≈ 5.96e-8，bf16 的 u = 2⁻⁸ ≈ 3.9e-3，fp16 的 u = 2⁻¹¹ ≈ 4.9e-4）。
bf16 范围大、精度低：不会溢出，但小的更新会被"舍入掉"（1.0 + 0.001 在 bf16 里还是 1.0：0.001 < u = 0.0039）；
fp16 精度比 bf16 高 8 倍（eps 2⁻¹⁰ 对 2⁻⁷）、范围小：小梯度会下溢成 0（小于最小次正规数 2⁻²⁴ ≈ 5.96e-8 的
一半就变成 0），所以 fp16 训练需要 **loss scaling**。

1. fp32 → bf16 的舍入是"就近舍入、平局取偶"（round-to-nearest-even），在整数位上可以直接做：
       bits += 0x7FFF + (bits 的第 16 位)；  bits &= 0xFFFF0000
2. autocast：`with torch.autocast("cpu", dtype=torch.bfloat16):` 里，矩阵乘、卷积这类"吃得消低精度、
   又最耗时"的算子自动把输入转成 bf16；loss（cross_entropy、mse_loss）等对精度敏感的算子在 fp32 里算；
   其余算子不管，按普通类型提升（bf16 + fp32 → fp32）。CPU 与 CUDA 的清单不完全一样
   （CUDA 上 softmax、layer_norm、log_softmax 也在 fp32 里算）。参数本身始终是 fp32（"master weights"），
   梯度也是 fp32：转换算子的反向会把梯度转回 fp32。
3. GradScaler（fp16 必需，bf16 通常不用）：loss 乘上 scale 再 backward，让小梯度不下溢；
   step 前把梯度除以 scale；梯度里有 inf/nan 就**跳过这一步**，scale 减半；
   连续 growth_interval 步都正常，scale 翻倍（试探更大的 scale）。

练习：ex1–ex5；ex2 是谜题（只许用 .view 与整数位运算）。运行：

    python archive/28days_challenges/day22_mixed_precision.py
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from utils import exercises
from utils.io import is_smoke
from utils.lesson_cli import lesson_args

# =============================================================================
# 练习（函数体就是参考解答；想自己做，就把函数体换成 raise NotImplementedError 再运行本文件）
# =============================================================================
_LAYOUT = {torch.float32: (8, 23), torch.bfloat16: (8, 7), torch.float16: (5, 10)}  # (指数位数, 尾数位数)


def ex1_finfo(dtype: torch.dtype) -> tuple[float, float, float]:
    """由位布局算出 (max, tiny, eps)：最大有限值、最小正规数、1 与下一个可表示数之差（对照 torch.finfo）。"""
    e, m = _LAYOUT[dtype]
    bias = 2 ** (e - 1) - 1  # 指数偏移：fp32 是 127，fp16 是 15
    return (2 - 2.0**-m) * 2.0**bias, 2.0 ** (1 - bias), 2.0**-m


def ex2_round_to_bf16(x: torch.Tensor) -> torch.Tensor:
    """谜题：只用 .view 与整数运算，把 float32 张量舍入到 bf16 能表示的值（仍以 float32 返回），
    就近舍入、平局取偶（对照 x.to(torch.bfloat16).to(torch.float32)；输入里没有 nan）。"""
    bits = x.view(torch.int32)
    lsb = (bits >> 16) & 1  # 保留部分的最低位：平局时决定往哪边取偶
    rounded = (bits + 0x7FFF + lsb) & -65536  # -65536 就是 0xFFFF0000：清掉低 16 位
    return rounded.view(torch.float32)


def ex3_autocast_dtypes() -> dict[str, torch.dtype]:
    """预测：在 torch.autocast("cpu", dtype=torch.bfloat16) 里，下面每个表达式（输入都是 fp32）的结果 dtype
    （对照：真的在 autocast 里跑一遍，表达式见 _AUTOCAST_EXPRS）。"""
    return {
        "x @ w": torch.bfloat16,  # 矩阵乘：转 bf16
        "F.linear(x, w, b)": torch.bfloat16,
        "x + x": torch.float32,  # 逐元素运算：autocast 不管，fp32 进 fp32 出
        "(x @ w) + b": torch.float32,  # bf16 + fp32 → 类型提升成 fp32
        "softmax(x @ w)": torch.bfloat16,  # CPU 上不提升（CUDA 上会在 fp32 里算）
        "cross_entropy(x @ w, t)": torch.float32,  # loss 一律 fp32
        "mse_loss(x @ w, y)": torch.float32,
        "(x @ w).sum()": torch.bfloat16,
    }


def ex4_autocast_linear(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """不用 autocast，手动复现 autocast 里的 F.linear(x, w, b)：输入全转成 bf16 再算
    （对照 autocast 的输出，以及 w 的梯度——仍是 fp32）。"""
    return F.linear(x.to(torch.bfloat16), w.to(torch.bfloat16), b.to(torch.bfloat16))


def ex5_grad_scaler_sgd(p: torch.Tensor, grads: list[torch.Tensor], lr: float, init_scale: float,
                        growth_interval: int) -> tuple[torch.Tensor, float]:
    """模拟 GradScaler + SGD：第 t 步 backward 得到的梯度是 grads[t]·scale（grads 里可能有 inf）。
    返回 (最后的参数, 最后的 scale)（对照 torch.amp.GradScaler("cpu", …)，growth_factor=2、backoff_factor=0.5）。"""
    p = p.clone()
    scale, good_steps = init_scale, 0
    for g in grads:
        scaled = g * scale  # scaler.scale(loss).backward() 得到的梯度
        unscaled = scaled / scale  # unscale_：scale 是 2 的幂，除法是精确的
        if not torch.isfinite(unscaled).all():
            scale *= 0.5  # 溢出：跳过这一步，scale 减半
            good_steps = 0
            continue
        p = p - lr * unscaled
        good_steps += 1
        if good_steps == growth_interval:
            scale *= 2.0  # 连续 growth_interval 步正常：试探更大的 scale
            good_steps = 0
    return p, scale


# =============================================================================
# 参考实现与输入
# =============================================================================
def _randint(g: torch.Generator, lo: int, hi: int) -> int:
    return int(torch.randint(lo, hi, (), generator=g))


def _ref_finfo(dtype):
    info = torch.finfo(dtype)
    return info.max, info.tiny, info.eps


def _bf16_inputs(g: torch.Generator):
    scale = torch.exp(torch.randn(8, generator=g) * 10)  # 跨越很多个数量级
    x = torch.randn(8, generator=g) * scale
    ties = (x.view(torch.int32) & -65536 | 0x8000).view(torch.float32)  # 低 16 位恰好是一半：平局
    return (torch.cat([x, ties, torch.tensor([0.0, -0.0, 1.0, 3.0e38])]),)


_AUTOCAST_EXPRS = {
    "x @ w": lambda x, w, b, t, y: x @ w,
    "F.linear(x, w, b)": lambda x, w, b, t, y: F.linear(x, w.t(), b),
    "x + x": lambda x, w, b, t, y: x + x,
    "(x @ w) + b": lambda x, w, b, t, y: (x @ w) + b,
    "softmax(x @ w)": lambda x, w, b, t, y: torch.softmax(x @ w, -1),
    "cross_entropy(x @ w, t)": lambda x, w, b, t, y: F.cross_entropy(x @ w, t),
    "mse_loss(x @ w, y)": lambda x, w, b, t, y: F.mse_loss(x @ w, y),
    "(x @ w).sum()": lambda x, w, b, t, y: (x @ w).sum(),
}


def _ref_autocast_dtypes():
    args = torch.randn(3, 4), torch.randn(4, 5), torch.randn(5), torch.tensor([0, 1, 4]), torch.randn(3, 5)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        return {name: expr(*args).dtype for name, expr in _AUTOCAST_EXPRS.items()}


def _ref_autocast_linear(x, w, b):
    with torch.autocast("cpu", dtype=torch.bfloat16):
        return F.linear(x, w, b)


def _value_and_weight_grad(fn):
    def probe(x, w, b):
        w = w.detach().requires_grad_()
        y = fn(x, w, b)
        (grad,) = torch.autograd.grad(y.float().pow(2).sum(), w)
        return y.detach(), grad

    return probe


def _linear_inputs(g: torch.Generator):
    n, i, o = _randint(g, 1, 5), _randint(g, 1, 9), _randint(g, 1, 5)
    return torch.randn(n, i, generator=g), torch.randn(o, i, generator=g), torch.randn(o, generator=g)


def _ref_grad_scaler(p0, grads, lr, init_scale, growth_interval):
    p = p0.clone().requires_grad_()
    opt = torch.optim.SGD([p], lr=lr)
    scaler = torch.amp.GradScaler("cpu", init_scale=init_scale, growth_interval=growth_interval)
    for g in grads:
        opt.zero_grad()
        scaler.scale((p * g).sum()).backward()  # ∂/∂p (scale · Σ p·g) = scale · g
        scaler.step(opt)
        scaler.update()
    return p.detach(), scaler.get_scale()


def _scaler_inputs(g: torch.Generator):
    grads = []
    for _ in range(_randint(g, 1, 8)):
        grad = torch.randn(3, generator=g)
        if torch.rand((), generator=g) < 0.3:
            grad[_randint(g, 0, 3)] = float("inf")  # 这一步"溢出"了
        grads.append(grad)
    return torch.randn(3, generator=g), grads, 0.1, 2.0 ** _randint(g, 0, 17), _randint(g, 1, 4)


CHECKS = [
    ("ex1_finfo", _ref_finfo, lambda g: ((torch.float32, torch.bfloat16, torch.float16)[_randint(g, 0, 3)],)),
    ("ex2_round_to_bf16", lambda x: x.to(torch.bfloat16).to(torch.float32), _bf16_inputs),
    ("ex3_autocast_dtypes", _ref_autocast_dtypes, lambda g: ()),
    ("ex4_autocast_linear", _ref_autocast_linear, _linear_inputs, _value_and_weight_grad),
    ("ex5_grad_scaler_sgd", _ref_grad_scaler, _scaler_inputs),
]

PUZZLE_ALLOWED = {"ex2_round_to_bf16": {".view"}}


def relative_error(approx: torch.Tensor, exact: torch.Tensor) -> float:
    """‖approx − exact‖_F / ‖exact‖_F，在 float64 里算。"""
    return ((approx.double() - exact).norm() / exact.norm()).item()


def rounding_rms(eps: float) -> float:
    """把一个随机数就近舍入到间距为 eps（在 [1, 2) 里）的格子上，相对误差的均方根：eps / √(32 ln 2) ≈ 0.212·eps。

    推导：尾数 m ∈ [1, 2) 上的舍入误差 δ ~ U(−eps/2, eps/2)，E[δ²] = eps²/12；相对误差 δ/m，
    随机数的尾数近似服从 log-uniform（密度 1/(m ln 2)，Benford 定律），E[1/m²] = 3/(8 ln 2)；
    相乘得 eps²·3/(96 ln 2) = eps²/(32 ln 2)。
    """
    return eps / math.sqrt(32 * math.log(2))


def bf16_matmul_error_theory() -> float:
    """autocast(bf16) 矩阵乘的相对误差（Frobenius）的理论值：a、b 转 bf16 各舍入一次，fp32 累加后输出再舍入一次，
    三个独立的误差各贡献 rounding_rms(eps_bf16)，合起来 √3 倍（累加本身的 fp32 误差小 4 个数量级，忽略）。"""
    return math.sqrt(3) * rounding_rms(torch.finfo(torch.bfloat16).eps)


def demo() -> None:
    one = torch.tensor(1.0)
    for dtype in (torch.float32, torch.bfloat16, torch.float16):
        f = torch.finfo(dtype)
        print(f"{str(dtype):15s} max={f.max:.3g} tiny={f.tiny:.3g} eps={f.eps:.3g} u=eps/2={f.eps / 2:.3g}；"
              f"1 + 0.001 = {(one.to(dtype) + 0.001).item():.6f}；1e-8 → {torch.tensor(1e-8).to(dtype).item():.3g}")
    n = 64 if is_smoke() else 512
    a, b = torch.randn(n, n), torch.randn(n, n)
    exact = a.double() @ b.double()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        low = a @ b
    rel = relative_error(low, exact)
    rel_fp32 = relative_error(a @ b, exact)  # 基线：同样的矩阵乘全程 fp32
    f32 = torch.finfo(torch.float32)
    print(f"{n}×{n} 矩阵乘（float64 结果当真值）：autocast(bf16) 的结果 dtype {low.dtype}，相对误差 {rel:.2e}"
          f"（理论 √3·eps_bf16/√(32 ln 2) = {bf16_matmul_error_theory():.2e}：a、b、输出各舍入一次；"
          f"n = 64 与 512 各 10 个种子实测 2.85e-3–3.0e-3）")
    print(f"  基线：同样的矩阵乘全程 fp32，相对误差 {rel_fp32:.2e} = {rel_fp32 / (f32.eps / 2):.1f} u"
          f"（fp32 的 eps = 2⁻²³ = {f32.eps:.3g}，单位舍入 u = 2⁻²⁴ = {f32.eps / 2:.3g}；"
          f"只剩 {n} 项累加与输出的舍入，n 越大越多）")
    master = torch.tensor(1.0)
    pure = torch.tensor(1.0, dtype=torch.bfloat16)
    for _ in range(100):
        master += 1e-3
        pure += 1e-3
    print(f"100 次 += 1e-3：fp32 master weights → {master.item():.4f}（精确值 1.1），"
          f"纯 bf16 参数 → {pure.item():.4f}（1e-3 < bf16 在 1 附近的半个间距 2⁻⁸ ≈ 3.9e-3：更新全被舍入掉）")


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
