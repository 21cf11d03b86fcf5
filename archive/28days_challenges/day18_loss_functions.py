"""第 18 天 损失函数：MSE、交叉熵（标签平滑、ignore_index）、BCE-with-logits、KL 散度、Huber。

损失函数把"预测离答案多远"压成一个标量，backward 从它出发。今天从基本运算手写它们，并对照 F.*：

1. MSE：mean((pred − y)²)。pred 与 y 的形状必须**完全一致**，否则广播悄悄算错（调试清单 §1.3）。
2. 交叉熵吃的是 logits（未归一化），不是概率：
       CE_i = −log softmax(z_i)[y_i] = logsumexp(z_i) − z_i[y_i]
   先 softmax 再 log 会下溢出 −inf；logsumexp 的写法永远有限（第 23 天细讲）。
3. 标签平滑 ε：目标分布从 one-hot 变成 (1 − ε)·one-hot + ε/C 的均匀分布，
       loss_i = (1 − ε)·CE_i + ε · mean_c(−log p_ic)
   防止模型把 logit 推向无穷大、过度自信。
4. ignore_index（默认 −100）：padding 位置不算 loss，平均时分母是**有效**位置的个数，不是总个数。
5. BCE-with-logits：ℓ = −[y log σ(x) + (1 − y) log(1 − σ(x))]，稳定写法
       ℓ = max(x, 0) − x·y + log(1 + e^(−|x|))
   x = 100 时 σ(x) 在 float32 里就是 1.0，log(1 − 1) = −inf；稳定写法里的指数永远 ≤ 0，不会溢出。
6. KL(p ‖ q) = Σ p (log p − log q)，约定 0·log 0 = 0（torch.xlogy）。F.kl_div(input, target) 的
   input 是 **log q**、target 是 p（参数顺序与数学记号相反，常见坑）；reduction="batchmean" 才是数学上的 KL，
   "mean" 会多除一个类别数。
7. Huber（δ）：|r| ≤ δ 时 ½r²，否则 δ(|r| − ½δ)——小误差像 MSE，大误差像 L1，对离群点不敏感。

自检同时比较损失值与它对第一个输入的梯度。练习：ex1–ex7；ex1、ex2、ex4、ex7 是谜题。运行：

    python archive/28days_challenges/day18_loss_functions.py
"""

from __future__ import annotations

import math
import warnings

import torch
import torch.nn.functional as F

from utils import exercises
from utils.lesson_cli import lesson_args


# =============================================================================
# 练习（函数体就是参考解答；想自己做，就把函数体换成 raise NotImplementedError 再运行本文件）
# =============================================================================
def ex1_mse(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """谜题（只许用算术与 .mean）：均方误差（对照 F.mse_loss）。"""
    return ((pred - target) ** 2).mean()


def ex2_cross_entropy(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """谜题（只许用 torch.logsumexp、torch.arange、.mean）：(N, C) logits 与 (N,) 类别下标的平均交叉熵
    （对照 F.cross_entropy）。"""
    picked = logits[torch.arange(len(targets)), targets]  # 每行取出正确类别的 logit：(N,)
    return (torch.logsumexp(logits, dim=-1) - picked).mean()


def ex3_label_smoothing(logits: torch.Tensor, targets: torch.Tensor, eps: float) -> torch.Tensor:
    """带标签平滑 ε 的交叉熵（对照 F.cross_entropy(..., label_smoothing=eps)）。"""
    logp = F.log_softmax(logits, dim=-1)  # (N, C)
    nll = -logp.gather(-1, targets[:, None]).squeeze(-1)  # (N,)
    smooth = -logp.mean(dim=-1)  # 均匀分布那一份：−(1/C) Σ_c log p_c
    return ((1 - eps) * nll + eps * smooth).mean()


def ex4_cross_entropy_ignore(logits: torch.Tensor, targets: torch.Tensor, ignore_index: int) -> torch.Tensor:
    """谜题（只许用 torch.logsumexp、torch.arange、torch.where、.sum）：跳过 targets == ignore_index 的位置，
    按**有效**位置个数求平均（对照 F.cross_entropy(..., ignore_index=...)）。"""
    valid = targets != ignore_index
    safe = torch.where(valid, targets, 0)  # ignore_index 可能是 −100：先换成合法下标再去索引
    ce = torch.logsumexp(logits, dim=-1) - logits[torch.arange(len(targets)), safe]
    return torch.where(valid, ce, 0.0).sum() / valid.sum()


def ex5_bce_with_logits(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """数值稳定的 BCE：mean(max(x, 0) − x·y + log1p(e^(−|x|)))（对照 F.binary_cross_entropy_with_logits）。
    输入里有 |x| 上百的 logit，朴素的 log(sigmoid(x)) 会得到 −inf。"""
    return (x.clamp(min=0) - x * y + torch.log1p(torch.exp(-x.abs()))).mean()


def ex6_kl_div_batchmean(log_q: torch.Tensor, p: torch.Tensor) -> torch.Tensor:
    """KL(p ‖ q) 按 batch 求平均：Σ p(log p − log q) / N，p 里有 0（0·log 0 = 0）
    （对照 F.kl_div(log_q, p, reduction="batchmean")）。"""
    return (torch.xlogy(p, p) - p * log_q).sum() / log_q.shape[0]


def ex7_huber(pred: torch.Tensor, target: torch.Tensor, delta: float) -> torch.Tensor:
    """谜题（只许用 torch.where、.abs、.mean）：Huber 损失（对照 F.huber_loss(..., delta=delta)）。"""
    r = (pred - target).abs()
    return torch.where(r <= delta, 0.5 * r**2, delta * (r - 0.5 * delta)).mean()


# =============================================================================
# 参考实现、输入与 probe（损失值 + 对第一个输入的梯度）
# =============================================================================
def _value_and_grad(fn):
    def probe(x, *rest):
        x = x.detach().requires_grad_()
        loss = fn(x, *rest)
        (grad,) = torch.autograd.grad(loss, x)
        return loss.detach(), grad

    return probe


def _randint(g: torch.Generator, lo: int, hi: int) -> int:
    return int(torch.randint(lo, hi, (), generator=g))


def _randn(g: torch.Generator, *shape: int) -> torch.Tensor:
    return torch.randn(*shape, generator=g, dtype=torch.float64)


def _classification(g: torch.Generator):
    n, c = _randint(g, 1, 7), _randint(g, 2, 6)
    return _randn(g, n, c) * 3, torch.randint(0, c, (n,), generator=g)


def _ignore_inputs(g: torch.Generator):
    n, c = _randint(g, 2, 8), _randint(g, 2, 6)
    logits, targets = _randn(g, n, c) * 3, torch.randint(0, c, (n,), generator=g)
    drop = torch.rand(n, generator=g) < 0.4
    drop[0], drop[-1] = False, True  # 至少一个有效位置（否则 0/0 = nan），至少一个被忽略（否则测不出分母写错）
    return logits, torch.where(drop, -100, targets), -100


def _regression(g: torch.Generator):
    shape = (_randint(g, 1, 5), _randint(g, 1, 5))
    return _randn(g, *shape), _randn(g, *shape)


def _bce_inputs(g: torch.Generator):
    n = _randint(g, 1, 9)
    return _randn(g, n) * 60, torch.rand(n, generator=g, dtype=torch.float64)  # logit 常常上百：考验稳定性


def _kl_inputs(g: torch.Generator):
    n, c = _randint(g, 1, 5), _randint(g, 2, 6)
    p = torch.rand(n, c, generator=g, dtype=torch.float64) * (torch.rand(n, c, generator=g) > 0.3)
    p[:, 0] += 0.1  # 每行至少有一个正概率
    return torch.log_softmax(_randn(g, n, c), -1), p / p.sum(-1, keepdim=True)


CHECKS = [
    ("ex1_mse", F.mse_loss, _regression, _value_and_grad),
    ("ex2_cross_entropy", F.cross_entropy, _classification, _value_and_grad),
    (
        "ex3_label_smoothing",
        lambda z, t, eps: F.cross_entropy(z, t, label_smoothing=eps),
        lambda g: (*_classification(g), float(torch.rand((), generator=g)) * 0.5),
        _value_and_grad,
    ),
    ("ex4_cross_entropy_ignore", lambda z, t, ii: F.cross_entropy(z, t, ignore_index=ii), _ignore_inputs,
     _value_and_grad),
    (
        "ex5_bce_with_logits",
        F.binary_cross_entropy_with_logits,
        _bce_inputs,
        _value_and_grad,
    ),
    ("ex6_kl_div_batchmean", lambda lq, p: F.kl_div(lq, p, reduction="batchmean"), _kl_inputs, _value_and_grad),
    (
        "ex7_huber",
        lambda a, b, d: F.huber_loss(a, b, delta=d),
        lambda g: (*_regression(g), float(torch.rand((), generator=g)) * 2 + 0.1),
        _value_and_grad,
    ),
]

PUZZLE_ALLOWED = {
    "ex1_mse": {".mean"},
    "ex2_cross_entropy": {"torch.logsumexp", "torch.arange", ".mean"},
    "ex4_cross_entropy_ignore": {"torch.logsumexp", "torch.arange", "torch.where", ".sum"},
    "ex7_huber": {"torch.where", ".abs", ".mean"},
}


def demo() -> None:
    x = torch.tensor([100.0, -100.0])
    y = torch.tensor([0.0, 1.0])
    naive = -(y * torch.log(torch.sigmoid(x)) + (1 - y) * torch.log(1 - torch.sigmoid(x))).mean()
    print(f"BCE 朴素写法（float32，logit ±100）= {naive.item()}，稳定写法 = {F.binary_cross_entropy_with_logits(x, y).item()}"
          f"（精确值：两个样本都答错 100 个 logit，各是 100 + log1p(e⁻¹⁰⁰) = 100 + 3.7e-44）")
    logits = torch.tensor([[2.0, 0.5, -1.0]])
    logp = torch.log_softmax(logits.double(), -1)[0]  # 手算的对照：float64 的 log_softmax
    n_cls = logits.shape[-1]
    for eps in (0.0, 0.1):
        by_hand = (1 - eps) * -logp[0] - eps * logp.mean()  # (1 − ε)·CE + ε·mean_c(−log p_c)
        print(f"label_smoothing={eps}：CE = {F.cross_entropy(logits, torch.tensor([0]), label_smoothing=eps).item():.4f}"
              f"（手算 {by_hand.item():.4f}；均匀瞎猜 ln {n_cls} = {math.log(n_cls):.4f}）")
    log_q, p = torch.log_softmax(torch.randn(4, 10), -1), torch.softmax(torch.randn(4, 10), -1)
    with warnings.catch_warnings():  # 'mean' 会警告"含义与数学定义不同"——这正是要演示的
        warnings.simplefilter("ignore")
        kl_mean = F.kl_div(log_q, p, reduction="mean").item()
    kl_batchmean = F.kl_div(log_q, p, reduction="batchmean").item()
    print(f"kl_div reduction='mean' = {kl_mean:.4f}，'batchmean' = {kl_batchmean:.4f}"
          f"（比值 {kl_batchmean / kl_mean:.2f} = 类别数 {p.shape[-1]}：'mean' 除以 N·C，'batchmean' 只除以 N）")


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
