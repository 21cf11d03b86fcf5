"""第 23 天 数值稳定性：log-sum-exp、log_softmax、softplus、方差的两遍算法、在线 softmax。

浮点数的两个敌人：**溢出**（e^1000 = inf）和**相消**（两个很接近的大数相减，有效数字全丢）。

1. log-sum-exp 技巧：对任意常数 m，
       log Σ eˣⁱ = m + log Σ e^(xᵢ − m)
   取 m = max(x)，指数都 ≤ 0：不上溢；最大那一项是 e⁰ = 1，和 ≥ 1：log 不会遇到 0。
   边界：整行都是 −inf（注意力整行被 mask）时 m = −inf，x − m = −inf − (−inf) = nan——要把 m 换成 0。
2. log_softmax(x) = x − logsumexp(x)；cross_entropy 内部就是它。先 softmax 再 log：float32 里 e⁻²⁰⁰ ≈ 1.4e-87
   比最小次正规数 2⁻¹⁴⁹ ≈ 1.4e-45 还小，下溢成 0，log 得 −inf（float64 能撑到 e⁻⁷⁴⁵ 左右）。
3. softplus(x) = log(1 + eˣ) = max(x, 0) + log1p(e^(−|x|))；log σ(x) = −softplus(−x)。
   log1p(y) 在 y 很小时比 log(1 + y) 准：1 + 1e-10 在 float32 里就是 1。
4. 方差：E[x²] − E[x]² 在均值远大于标准差时灾难性相消：float32 下 1e4 + N(0,1) 的 E[x²] ≈ 1e8，
   那里相邻两个 float32 相差 2^(26−23) = 8（1e8 在 2²⁶ 与 2²⁷ 之间），所以差值只能是 8 的整数倍——
   真值 1 根本表示不出来；n = 1e4 与 1e6 各 20 个种子实测从 −32 到 24，能算成负数。
   两遍算法：先求均值 μ，再求 mean((x − μ)²)；μ 本身有舍入误差 δ 时结果会多出 δ²，
   再减去 mean(x − μ)²（理论上是 0，实际正好是 δ²）就把它消掉（"修正的两遍算法"）。
5. 在线 softmax（FlashAttention 的核心）：一块一块地读 x，维护目前为止的最大值 m 和 Σ e^(x − m)：
       m_new = max(m, max(块))，  s ← s·e^(m − m_new) + Σ e^(块 − m_new)
   读完一遍就得到分母，不必把整行放进内存。

练习：ex1–ex7；ex1、ex7 是谜题。运行：

    python archive/28days_challenges/day23_numerical_stability.py
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
def ex1_logsumexp(x: torch.Tensor) -> torch.Tensor:
    """谜题（只许用 .amax、.exp、.sum、.log、.isinf、torch.where）：最后一维的 log-sum-exp，
    x 的值可达 ±1000，还可能有整行都是 −inf（对照 torch.logsumexp(x, -1)）。"""
    m = x.amax(-1, keepdim=True)
    m = torch.where(m.isinf(), 0.0, m)  # 整行 −inf（或含 +inf）时用 0 代替，避免 inf − inf = nan
    return (x - m).exp().sum(-1).log() + m[..., 0]


def ex2_log_softmax(x: torch.Tensor) -> torch.Tensor:
    """最后一维的 log_softmax = x − logsumexp(x)（对照 F.log_softmax，值与梯度）。"""
    m = x.amax(-1, keepdim=True).detach()  # m 只是平移常数：detach 不改变数学结果，反向也更干净
    return x - m - (x - m).exp().sum(-1, keepdim=True).log()


def ex3_softplus(x: torch.Tensor) -> torch.Tensor:
    """log(1 + eˣ) 的稳定写法（对照 F.softplus，值与梯度）。"""
    return x.clamp(min=0) + torch.log1p(torch.exp(-x.abs()))


def ex4_log_sigmoid(x: torch.Tensor) -> torch.Tensor:
    """log σ(x) = −softplus(−x)（对照 F.logsigmoid，值与梯度）。x = −100 时朴素的 log(sigmoid(x)) 是 −inf。"""
    return -ex3_softplus(-x)


def ex5_variance(x: torch.Tensor) -> torch.Tensor:
    """float32 下最后一维的总体方差（除以 n），数据 = 很大的均值 + 小波动
    （对照 x.var(-1, correction=0)）。用修正的两遍算法，不要用 E[x²] − E[x]²。"""
    d = x - x.mean(-1, keepdim=True)
    return (d * d).mean(-1) - d.mean(-1) ** 2  # 第二项抵消均值的舍入误差 δ 带来的 δ²


def ex6_online_softmax(x: torch.Tensor, block: int) -> torch.Tensor:
    """最后一维按 block 个一块地读，一遍求出 softmax 的最大值与分母，再算 softmax（对照 torch.softmax(x, -1)）。"""
    m = torch.full(x.shape[:-1] + (1,), float("-inf"), dtype=x.dtype)
    s = torch.zeros(x.shape[:-1] + (1,), dtype=x.dtype)
    for start in range(0, x.shape[-1], block):
        chunk = x[..., start : start + block]
        m_new = torch.maximum(m, chunk.amax(-1, keepdim=True))
        s = s * (m - m_new).exp() + (chunk - m_new).exp().sum(-1, keepdim=True)  # 旧的和换算到新的基准
        m = m_new
    return (x - m).exp() / s


def ex7_logaddexp(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """谜题（只许用 torch.where、.abs、.exp、.log1p）：log(eᵃ + eᵇ)，a、b 里有 ±inf 和 ±1000
    （对照 torch.logaddexp）。提示：max + log1p(e^(−|a − b|))；a == b 时 |a − b| 可能是 nan。"""
    m = torch.where(a > b, a, b)
    # a == b（包括两个都是 ±inf）：结果是 a + log 2，直接给出，避开 inf − inf
    return torch.where(a == b, a + 0.6931471805599453, m + (-(a - b).abs()).exp().log1p())


# =============================================================================
# 参考实现、输入与 probe
# =============================================================================
def _value_and_grad(fn):
    def probe(x, *rest):
        x = x.detach().requires_grad_()
        y = fn(x, *rest)
        upstream = torch.linspace(-1.0, 2.0, y.numel(), dtype=y.dtype).reshape(y.shape)
        (grad,) = torch.autograd.grad(y, x, upstream)
        return y.detach(), grad

    return probe


def _randint(g: torch.Generator, lo: int, hi: int) -> int:
    return int(torch.randint(lo, hi, (), generator=g))


def _randn(g: torch.Generator, *shape: int) -> torch.Tensor:
    return torch.randn(*shape, generator=g, dtype=torch.float64)


def _lse_inputs(g: torch.Generator):
    x = _randn(g, _randint(g, 2, 5), _randint(g, 1, 7)) * 500
    x = torch.where(torch.rand(x.shape, generator=g) < 0.3, float("-inf"), x)  # 被 mask 掉的位置
    x[0] = float("-inf")  # 整行被 mask
    return (x,)


def _variance_inputs(g: torch.Generator):
    offset = 10.0 ** _randint(g, 3, 5)
    return (offset + torch.randn(_randint(g, 1, 4), _randint(g, 100, 1000), generator=g),)  # float32


def _logaddexp_inputs(g: torch.Generator):
    specials = torch.tensor([float("-inf"), float("inf"), 1000.0, -1000.0, 0.0], dtype=torch.float64)
    a = torch.cat([_randn(g, 6) * 30, specials.repeat_interleave(5)])
    b = torch.cat([_randn(g, 6) * 30, specials.repeat(5)])  # 5×5 种特殊值的两两组合
    return a, b


CHECKS = [
    ("ex1_logsumexp", lambda x: torch.logsumexp(x, -1), _lse_inputs),
    ("ex2_log_softmax", lambda x: F.log_softmax(x, -1),
     lambda g: (_randn(g, _randint(g, 1, 4), _randint(g, 1, 7)) * 300,), _value_and_grad),
    ("ex3_softplus", F.softplus, lambda g: (_randn(g, 12) * 40,), _value_and_grad),
    ("ex4_log_sigmoid", F.logsigmoid, lambda g: (_randn(g, 12) * 40,), _value_and_grad),
    ("ex5_variance", lambda x: x.var(-1, correction=0), _variance_inputs),
    (
        "ex6_online_softmax",
        lambda x, block: torch.softmax(x, -1),
        lambda g: (_randn(g, _randint(g, 1, 4), _randint(g, 1, 20)) * 50, _randint(g, 1, 6)),
    ),
    ("ex7_logaddexp", torch.logaddexp, _logaddexp_inputs),
]

PUZZLE_ALLOWED = {
    "ex1_logsumexp": {".amax", ".exp", ".sum", ".log", ".isinf", "torch.where"},
    "ex7_logaddexp": {"torch.where", ".abs", ".exp", ".log1p"},
}


def float32_spacing(x: float) -> float:
    """x 附近相邻两个 float32 的间距（ulp）：2^⌊log₂|x|⌋ · eps。"""
    t = torch.tensor(abs(x), dtype=torch.float32)
    return (torch.nextafter(t, torch.tensor(float("inf"))) - t).item()


def demo() -> None:
    x = torch.tensor([1000.0, 999.0, -1000.0])
    exact = 1000 + math.log1p(math.exp(-1) + math.exp(-2000))  # 手算：提出 e¹⁰⁰⁰
    print(f"朴素 log Σ eˣ（x = {x.tolist()}）= {torch.log(torch.exp(x).sum()).item()}，"
          f"log-sum-exp 技巧 = {torch.logsumexp(x, 0).item():.6f}（真值 1000 + ln(1 + e⁻¹ + e⁻²⁰⁰⁰) = {exact:.6f}，"
          f"差在 float32 于 1000 处的间距 {float32_spacing(1000.0):.1e} 之内）")
    n = 10_000 if is_smoke() else 1_000_000
    data = 1e4 + torch.randn(n)  # float32
    naive = (data * data).mean() - data.mean() ** 2
    d = data - data.mean()
    two_pass = (d * d).mean() - d.mean() ** 2
    reference = data.double().var(correction=0).item()  # 同一批数据在 float64 里算：当真值
    print(f"float32 方差（{n} 个 1e4 + N(0,1)，float64 算出的真值 {reference:.4f}）：E[x²] − E[x]² = {naive.item():.4f}"
          f"（只能是 {float32_spacing(1e8):.0f} 的整数倍：1e8 附近 float32 的间距），"
          f"修正两遍 = {two_pass.item():.4f}，torch.var = {data.var(correction=0).item():.4f}")
    y = torch.tensor([-100.0])
    print(f"log σ(−100)：朴素 log(sigmoid) = {torch.log(torch.sigmoid(y)).item()}，F.logsigmoid = {F.logsigmoid(y).item()}")


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
