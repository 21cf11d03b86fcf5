"""第 11 天 自动微分基础：计算图、backward、梯度累加、detach。

1. requires_grad=True 的叶子张量参与运算时，PyTorch 记录一张计算图：每个结果的 grad_fn 记着
   "我是怎么算出来的"。y.backward() 从 y 出发按链式法则反向走这张图，把 ∂y/∂x 累加进叶子的 x.grad。
2. backward() 只能直接用于标量；非标量输出 y 要传"上游梯度" g：y.backward(g) 计算的是
   向量-雅可比积 gᵀ·(∂y/∂x)，这正是反向模式自动微分的基本运算（比显式的雅可比矩阵便宜得多）。
   torch.autograd.grad(y, x, g) 做同样的事，但把梯度**返回**而不写进 .grad，适合写练习和做检查。
3. 梯度是**累加**的：两次 backward 不清零，x.grad 就是两次之和。所以训练循环里每步都要
   optimizer.zero_grad()（或 x.grad = None）。梯度累加（大 batch 拆成小 batch）正是利用这一点。
4. 计算图默认在 backward 后释放；要对同一张图反向两次需 retain_graph=True。
5. x.detach() 得到共享数据、但切断梯度的张量：y = x · x.detach() 的梯度是 x（不是 2x）。
   with torch.no_grad() 里的运算不建图（推理、参数更新时用）。
6. 常用的手推梯度（g 是上游梯度）：
       y = x²            ∂L/∂x = 2x·g
       y = σ(x)          ∂L/∂x = σ(x)(1 − σ(x))·g
       y = softmax(x)    ∂L/∂x = s ⊙ (g − Σ(g ⊙ s))      （沿 softmax 的那一维求和）
       y = x Wᵀ + b      ∂L/∂x = g W，∂L/∂W = gᵀ x，∂L/∂b = Σ_batch g
       L = mean((p − t)²) ∂L/∂p = 2(p − t)/N
今天的练习反过来做：**手推**解析梯度，自检拿它和 autograd 的结果比。

    python archive/28days_challenges/day11_autograd_basics.py
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from utils import exercises
from utils.lesson_cli import lesson_args


# =============================================================================
# 练习（函数体就是参考解答；想自己做，就把函数体换成 raise NotImplementedError 再运行本文件）
# 除 ex5 外都不许用 autograd：写出解析梯度的公式。
# =============================================================================
def ex1_square_sum_grad(x: torch.Tensor) -> torch.Tensor:
    """L = Σ x²，返回 ∂L/∂x。"""
    return 2 * x


def ex2_sigmoid_grad(x: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    """y = σ(x)，上游梯度 g = ∂L/∂y，返回 ∂L/∂x。"""
    s = torch.sigmoid(x)
    return s * (1 - s) * g


def ex3_softmax_grad(x: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    """y = softmax(x, dim=-1)，上游梯度 g，返回 ∂L/∂x = s ⊙ (g − Σ_j g_j s_j)。"""
    s = torch.softmax(x, dim=-1)
    return s * (g - (g * s).sum(-1, keepdim=True))


def ex4_linear_grads(x, weight, bias, g) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """y = x Wᵀ + b（x: (N, in)，W: (out, in)），上游梯度 g: (N, out)，返回 (∂L/∂x, ∂L/∂W, ∂L/∂b)。"""
    return g @ weight, g.t() @ x, g.sum(0)


def ex5_grad_after_two_backwards(x: torch.Tensor) -> torch.Tensor:
    """对 L = Σ x³ 调用两次 backward（中间不清零）后 x.grad 是多少？用 autograd 真的做一遍：
    x 要先 detach().requires_grad_() 变成叶子；第一次 backward 需要 retain_graph=True。"""
    leaf = x.detach().requires_grad_()
    loss = (leaf**3).sum()
    loss.backward(retain_graph=True)
    loss.backward()
    return leaf.grad


def ex6_detach_grad(x: torch.Tensor) -> torch.Tensor:
    """L = Σ x · x.detach()（detach 的那一份被当作常数），返回 ∂L/∂x。"""
    return x.clone()


def ex7_mse_grad(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """L = F.mse_loss(pred, target)（对所有元素求平均），返回 ∂L/∂pred。"""
    return 2 * (pred - target) / pred.numel()


def ex8_tanh_jacobian(x: torch.Tensor) -> torch.Tensor:
    """逐元素 y = tanh(x)（x 一维，长度 n），返回 n×n 的雅可比矩阵 ∂y_i/∂x_j（对角阵，对角线 1 − tanh²）。"""
    return torch.diag(1 - torch.tanh(x) ** 2)


# =============================================================================
# 参考实现（全部用 autograd）与输入
# =============================================================================
def _randint(g: torch.Generator, lo: int, hi: int) -> int:
    return int(torch.randint(lo, hi, (), generator=g))


def _randn(g: torch.Generator, *shape: int) -> torch.Tensor:
    return torch.randn(*shape, generator=g, dtype=torch.float64)


def _autograd(fn, *inputs, upstream=None):
    """用 autograd 求 fn(*inputs) 对每个输入的梯度（upstream 为上游梯度，None 表示输出是标量）。"""
    leaves = [t.detach().requires_grad_() for t in inputs]
    grads = torch.autograd.grad(fn(*leaves), leaves, upstream)
    return grads[0] if len(grads) == 1 else grads


def _x_and_upstream(g: torch.Generator):
    shape = (_randint(g, 1, 4), _randint(g, 1, 6))
    return _randn(g, *shape), _randn(g, *shape)


def _linear_inputs(g: torch.Generator):
    n, d_in, d_out = _randint(g, 1, 5), _randint(g, 1, 5), _randint(g, 1, 5)
    return _randn(g, n, d_in), _randn(g, d_out, d_in), _randn(g, d_out), _randn(g, n, d_out)


def _ref_grad_twice(x: torch.Tensor) -> torch.Tensor:
    return 2 * _autograd(lambda t: (t**3).sum(), x)


CHECKS = [
    ("ex1_square_sum_grad", lambda x: _autograd(lambda t: (t**2).sum(), x), lambda g: (_randn(g, 3, 4),)),
    ("ex2_sigmoid_grad", lambda x, up: _autograd(torch.sigmoid, x, upstream=up), _x_and_upstream),
    (
        "ex3_softmax_grad",
        lambda x, up: _autograd(lambda t: torch.softmax(t, dim=-1), x, upstream=up),
        _x_and_upstream,
    ),
    (
        "ex4_linear_grads",
        lambda x, w, b, up: _autograd(F.linear, x, w, b, upstream=up),
        _linear_inputs,
    ),
    ("ex5_grad_after_two_backwards", _ref_grad_twice, lambda g: (_randn(g, 5),)),
    ("ex6_detach_grad", lambda x: _autograd(lambda t: (t * t.detach()).sum(), x), lambda g: (_randn(g, 4),)),
    (
        "ex7_mse_grad",
        lambda p, t: _autograd(lambda q: F.mse_loss(q, t), p),
        lambda g: (_randn(g, 3, 4), _randn(g, 3, 4)),
    ),
    (
        "ex8_tanh_jacobian",
        lambda x: torch.autograd.functional.jacobian(torch.tanh, x),
        lambda g: (_randn(g, _randint(g, 1, 6)),),
    ),
]

PUZZLE_ALLOWED: dict[str, set[str]] = {}


def demo() -> None:
    x = torch.tensor([1.0, 2.0, 3.0], requires_grad=True)
    y = (x**2).sum()
    parents = [type(f).__name__ for f, _ in y.grad_fn.next_functions]
    print(f"y = Σx² 的 grad_fn = {type(y.grad_fn).__name__}，上一步 {parents}")
    y.backward()
    print(f"第一次 backward 后 x.grad = {x.grad.tolist()}")
    (x**2).sum().backward()
    print(f"不清零再 backward 一次：x.grad = {x.grad.tolist()}（累加了）")
    try:
        (x * 2).backward()
    except RuntimeError as err:
        print(f"非标量直接 backward：{err}")


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
