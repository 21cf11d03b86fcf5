"""第 7 天 掩码与 where：用布尔张量代替 if。

张量程序里没有逐元素的 if/else：条件变成布尔张量（mask），分支变成 torch.where(cond, a, b)
——两边都算出来，再按 cond 逐元素挑。三个参数可以互相广播。常见模式：

1. 比较运算得到 mask：x > 0、(x > lo) & (x < hi)（用 & | ~，不要用 and/or/not，
   后者会调用 bool(张量) 报 "Boolean value of Tensor with more than one value is ambiguous"）。
2. 因果掩码：arange(T)[:, None] >= arange(T)[None, :]，query i 只能看 key j ≤ i。
3. padding 掩码：arange(T)[None, :] < lengths[:, None]，变长序列补齐后标出哪些是真 token。
4. 注意力里屏蔽位置：scores.masked_fill(~mask, -inf) 再 softmax，被屏蔽处的概率正好是 0。
   陷阱：一整行都被屏蔽时 softmax 得到 nan（0/0）；要么保证每行至少有一个可见位置，要么事后把 nan 置 0。
5. where 的梯度陷阱：torch.where(x > 0, x.sqrt(), 0) 在 x < 0 处前向没问题，但 sqrt 的梯度是 nan，
   nan × 0 仍是 nan，会污染反向。先把输入"消毒"：x.clamp(min=ε).sqrt()，或 where 套两层。

练习：ex1–ex8；ex1、ex2、ex4、ex8 是谜题（只许用 torch.where / torch.arange 与比较、算术）。运行：

    python archive/28days_challenges/day07_masks_where.py
"""

from __future__ import annotations

import torch
from torch.nn.utils.rnn import pad_sequence

from utils import exercises
from utils.lesson_cli import lesson_args


# =============================================================================
# 练习（函数体就是参考解答；想自己做，就把函数体换成 raise NotImplementedError 再运行本文件）
# =============================================================================
def ex1_relu(x: torch.Tensor) -> torch.Tensor:
    """谜题：ReLU（对照 torch.relu），只用 torch.where。"""
    return torch.where(x > 0, x, 0.0)


def ex2_causal_mask(t: int) -> torch.Tensor:
    """谜题：T×T 布尔因果掩码，True = 可见（j ≤ i），对照 torch.ones(T, T, dtype=bool).tril()。"""
    i = torch.arange(t)
    return i[:, None] >= i[None, :]


def ex3_mask_scores(scores: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """mask 为 False 的位置填 −inf（对照 scores.masked_fill(~mask, -inf)），用 torch.where。"""
    return torch.where(mask, scores, float("-inf"))


def ex4_clamp(x: torch.Tensor, lo: float, hi: float) -> torch.Tensor:
    """谜题：把 x 截断到 [lo, hi]（对照 torch.clamp），只用 torch.where。"""
    return torch.where(x < lo, lo, torch.where(x > hi, hi, x))


def ex5_padding_mask(lengths: torch.Tensor) -> torch.Tensor:
    """变长序列的 padding 掩码 (B, max_len)：第 b 行前 lengths[b] 个为 True（对照 pad_sequence 补齐的全 True 序列）。"""
    t = int(lengths.max())
    return torch.arange(t)[None, :] < lengths[:, None]


def ex6_masked_softmax(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """只在 mask 为 True 的位置上做最后一维的 softmax，其余位置概率为 0（每行至少一个 True）。
    不许用 softmax / masked_fill：减去可见位置的最大值，exp，被屏蔽处用 where 置 0，再除以和。"""
    x_max = torch.where(mask, x, float("-inf")).amax(-1, keepdim=True)
    e = torch.where(mask, (x - x_max).exp(), 0.0)
    return e / e.sum(-1, keepdim=True)


def ex7_nan_to_num(x: torch.Tensor) -> torch.Tensor:
    """nan → 0，+inf → 1e4，−inf → −1e4，其余不变（对照 torch.nan_to_num(x, 0.0, 1e4, -1e4)）。"""
    x = torch.where(torch.isnan(x), 0.0, x)
    x = torch.where(x == float("inf"), 1e4, x)
    return torch.where(x == float("-inf"), -1e4, x)


def ex8_sign(x: torch.Tensor) -> torch.Tensor:
    """谜题：符号函数，正 1、负 −1、零 0，dtype 与 x 相同（对照 torch.sign），只用 torch.where。"""
    zero = x * 0  # 与 x 同 dtype、同形状的 0：直接写 1.0 / -1.0 会得到默认的 float32
    return torch.where(x > 0, zero + 1, torch.where(x < 0, zero - 1, zero))


# =============================================================================
# 参考实现与输入
# =============================================================================
def _randint(g: torch.Generator, lo: int, hi: int) -> int:
    return int(torch.randint(lo, hi, (), generator=g))


def _scores_and_mask(g: torch.Generator):
    x = torch.randn(3, 5, generator=g)
    mask = torch.rand(3, 5, generator=g) < 0.6
    mask[:, _randint(g, 0, 5)] = True  # 每行至少一个可见位置
    return x, mask


def _with_specials(g: torch.Generator) -> tuple[torch.Tensor]:
    x = torch.randn(12, generator=g)
    specials = torch.tensor([float("nan"), float("inf"), float("-inf"), 0.0])
    pos = torch.randperm(12, generator=g)[:6]
    x[pos] = specials[torch.randint(0, 4, (6,), generator=g)]
    return (x,)


def _ref_padding_mask(lengths: torch.Tensor) -> torch.Tensor:
    return pad_sequence([torch.ones(int(n), dtype=torch.bool) for n in lengths], batch_first=True)


def _ref_masked_softmax(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    return torch.softmax(x.masked_fill(~mask, float("-inf")), dim=-1)


def _sign_inputs(g: torch.Generator):
    x = torch.randint(-2, 3, (10,), generator=g).to(torch.float64) * torch.rand(10, generator=g, dtype=torch.float64)
    return (x,)


CHECKS = [
    ("ex1_relu", torch.relu, lambda g: (torch.randn(4, 5, generator=g),)),
    ("ex2_causal_mask", lambda t: torch.ones(t, t, dtype=torch.bool).tril(), lambda g: (_randint(g, 1, 8),)),
    ("ex3_mask_scores", lambda s, m: s.masked_fill(~m, float("-inf")), _scores_and_mask),
    (
        "ex4_clamp",
        torch.clamp,
        lambda g: (torch.randn(10, generator=g) * 3, -float(torch.rand((), generator=g)),
                   float(torch.rand((), generator=g))),
    ),
    ("ex5_padding_mask", _ref_padding_mask, lambda g: (torch.randint(1, 7, (_randint(g, 1, 5),), generator=g),)),
    ("ex6_masked_softmax", _ref_masked_softmax, _scores_and_mask),
    ("ex7_nan_to_num", lambda x: torch.nan_to_num(x, nan=0.0, posinf=1e4, neginf=-1e4), _with_specials),
    ("ex8_sign", torch.sign, _sign_inputs),
]

PUZZLE_ALLOWED = {
    "ex1_relu": {"torch.where"},
    "ex2_causal_mask": {"torch.arange"},
    "ex4_clamp": {"torch.where"},
    "ex8_sign": {"torch.where"},
}


def demo() -> None:
    x = torch.tensor([-1.0, 4.0], requires_grad=True)
    torch.where(x > 0, x.sqrt(), 0.0).sum().backward()
    print(f"where 的梯度陷阱：where(x>0, sqrt(x), 0) 对 x={x.tolist()} 的梯度 = {x.grad.tolist()}")
    x.grad = None
    torch.where(x > 0, x.clamp(min=1e-12).sqrt(), 0.0).sum().backward()
    print(f"先 clamp 再 sqrt：梯度 = {x.grad.tolist()}")
    row = torch.full((1, 3), float("-inf"))
    print(f"整行被屏蔽时 softmax = {torch.softmax(row, -1).tolist()}")


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
