"""第 24 天 调试：把 utils/debug_checklist.md 里的坑一个个复现出来，再修好。

调试清单（utils/debug_checklist.md）按"症状 → 最小复现 → 修复"整理了训练脚本最常见的错误。
今天每道练习对应清单里的一条：demo() 先用最小输入**复现**它（打印报错原文的第一行，
或者"不报错但算错"时打印错在哪），练习是**修好**的版本，自检把它与另一条正确的内置路径对比。

调试的通用流程（清单 §0）：
1. 读最后一行报错，往上找第一处自己代码里的栈帧；
2. 用 utils.torch_playground.inspect(t) 打印现场每个张量的形状、dtype、设备、是否连续、NaN 个数；
3. 缩到最小复现：维度取 2、3、4 这种**互不相等**的小数字——形状相等时很多错误不报错，只会悄悄算错；
4. 先让模型过拟合一个 batch：loss 降不到接近 0，问题在模型或 loss，不在数据。

| 练习 | 清单 | 坑 |
|---|---|---|
| ex1 | §1.1 | (B, H, W, C) 的图片直接喂 Conv2d（要通道在前） |
| ex2 | §1.2 | 语言模型的 (B, T, V) logits 没摊平就做 cross_entropy |
| ex3 | §1.3 | (N, 1) 的预测与 (N,) 的标签广播成 (N, N)，loss 不报错但算错 |
| ex4 | §1.4 | transpose 之后直接 .view() |
| ex5 | §2   | 整数输入喂 Linear、int32 标签喂 cross_entropy |
| ex6 | §4.1 | 忘了 zero_grad：梯度越积越多 |
| ex7 | §4.3 | 评估时忘了 eval()：BatchNorm 的 running 统计量被验证集改写，Dropout 还在随机丢 |
| ex8 | §5.2 | 零向量归一化：0 / 0 = nan |

练习：ex1–ex8。运行：

    python archive/28days_challenges/day24_debugging.py
"""

from __future__ import annotations

import warnings

import torch
import torch.nn as nn
import torch.nn.functional as F

from utils import exercises
from utils.lesson_cli import lesson_args


# =============================================================================
# 练习（函数体就是参考解答；想自己做，就把函数体换成 raise NotImplementedError 再运行本文件）
# =============================================================================
def ex1_conv_channels_last(images: torch.Tensor, conv: nn.Conv2d) -> torch.Tensor:
    """§1.1：images 是 numpy/PIL 排布的 (B, H, W, C)。用 conv 卷积，并把结果也换回 (B, H', W', C_out)
    （对照：F.conv2d 作用在 movedim 之后的输入上）。"""
    out = conv(images.permute(0, 3, 1, 2))  # (B, C, H, W)：Conv2d 要通道在第 1 维
    return out.permute(0, 2, 3, 1)  # (B, H', W', C_out)


def ex2_lm_loss(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """§1.2：(B, T, V) 的 logits 与 (B, T) 的标签的平均交叉熵——两个都要摊平
    （对照：F.cross_entropy 的 (N, C, d1) 形式，类别放在第 1 维）。"""
    B, T, V = logits.shape
    return F.cross_entropy(logits.view(B * T, V), targets.view(B * T))


def ex3_regression_loss(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """§1.3：模型输出 (N, 1)、标签 (N,)。算正确的 MSE（不要让它们广播成 (N, N)）。"""
    return F.mse_loss(pred.squeeze(-1), target)


def ex4_merge_heads(y: torch.Tensor) -> torch.Tensor:
    """§1.4：多头注意力的输出 (B, nh, T, hs) 拼回 (B, T, nh·hs)。直接 .transpose(1, 2).view(...) 会报错。"""
    B, nh, T, hs = y.shape
    return y.transpose(1, 2).contiguous().view(B, T, nh * hs)  # transpose 只改 stride：先拷成连续内存


def ex5_fix_dtypes(layer: nn.Linear, x: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """§2：x 是 int64（从 torch.tensor([[1, 2, 3]]) 来的），targets 是 int32。修好 dtype，
    返回 cross_entropy(layer(x), targets)。"""
    return F.cross_entropy(layer(x.to(layer.weight.dtype)), targets.long())


def ex6_train_sgd(model: nn.Module, x: torch.Tensor, y: torch.Tensor, lr: float, steps: int) -> list[torch.Tensor]:
    """§4.1：不用 torch.optim，手写 steps 步 SGD（loss = MSE(model(x), y)），返回训练后的参数列表
    （对照 torch.optim.SGD 的训练循环）。每步都要清梯度：backward 是"加"到 .grad 上的。"""
    for _ in range(steps):
        for p in model.parameters():
            p.grad = None  # 等价于 optimizer.zero_grad(set_to_none=True)
        F.mse_loss(model(x), y).backward()
        with torch.no_grad():  # 更新参数不应被记录进计算图
            for p in model.parameters():
                p -= lr * p.grad
    return [p.detach() for p in model.parameters()]


def ex7_evaluate(model: nn.Sequential, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, bool]:
    """§4.3：model = Linear → BatchNorm1d → Dropout，当前处于训练模式。正确地评估 model(x)，
    返回 (输出, 评估后 BatchNorm 的 running_mean, 评估后 model.training)——评估完要切回训练模式。"""
    model.eval()  # eval() 管行为（BN 用 running 统计量、Dropout 关掉）
    with torch.no_grad():  # no_grad() 管梯度：两个都要
        out = model(x)
    model.train()
    return out, model[1].running_mean.clone(), model.training


def ex8_safe_normalize(v: torch.Tensor) -> torch.Tensor:
    """§5.2：把最后一维归一化成单位向量；全零的行要得到 0 而不是 nan（对照 F.normalize(v, dim=-1)）。"""
    return v / v.norm(dim=-1, keepdim=True).clamp_min(1e-12)


# =============================================================================
# 参考实现、输入与 probe
# =============================================================================
def _randint(g: torch.Generator, lo: int, hi: int) -> int:
    return int(torch.randint(lo, hi, (), generator=g))


def _randn(g: torch.Generator, *shape: int) -> torch.Tensor:
    return torch.randn(*shape, generator=g)


def _value_and_grad(fn):
    def probe(x, *rest):
        x = x.detach().requires_grad_()
        loss = fn(x, *rest)
        (grad,) = torch.autograd.grad(loss, x)
        return loss.detach(), grad

    return probe


def _fill(module: nn.Module, g: torch.Generator) -> nn.Module:
    with torch.no_grad():  # 用 g 填参数：同一个种子 → 同一个模型
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.5)
    return module


def _conv_inputs(g: torch.Generator):
    c_in, c_out = _randint(g, 1, 4), _randint(g, 1, 4)
    images = _randn(g, _randint(g, 1, 3), _randint(g, 3, 6), _randint(g, 3, 6), c_in)
    return images, _fill(nn.Conv2d(c_in, c_out, kernel_size=_randint(g, 1, 4)), g)


def _lm_inputs(g: torch.Generator):
    B, T, V = _randint(g, 1, 4), _randint(g, 1, 5), _randint(g, 2, 7)
    return _randn(g, B, T, V), torch.randint(0, V, (B, T), generator=g)


def _regression_inputs(g: torch.Generator):
    n = _randint(g, 2, 6)
    return _randn(g, n, 1), _randn(g, n)


def _dtype_inputs(g: torch.Generator):
    layer = _fill(nn.Linear(3, 4), g)
    n = _randint(g, 1, 5)
    return layer, torch.randint(-3, 4, (n, 3), generator=g), torch.randint(0, 4, (n,), generator=g, dtype=torch.int32)


def _train_inputs(g: torch.Generator):
    model = _fill(nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 2)), g)
    return model, _randn(g, 6, 3), _randn(g, 6, 2), 0.1, _randint(g, 2, 5)


def _ref_train(model, x, y, lr, steps):
    opt = torch.optim.SGD(model.parameters(), lr=lr)
    for _ in range(steps):
        opt.zero_grad()
        F.mse_loss(model(x), y).backward()
        opt.step()
    return [p.detach() for p in model.parameters()]


def _eval_inputs(g: torch.Generator):
    model = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4), nn.Dropout(0.5))
    _fill(model, g)
    with torch.no_grad():
        model[1].running_mean.copy_(_randn(g, 4))
        model[1].running_var.copy_(torch.rand(4, generator=g) + 0.5)
    return model.train(), _randn(g, _randint(g, 1, 6), 3)  # batch 可能只有 1 个样本：训练模式下 BN 会报错


def _ref_evaluate(model, x):
    lin, bn = model[0], model[1]
    out = F.batch_norm(F.linear(x, lin.weight, lin.bias), bn.running_mean, bn.running_var, bn.weight, bn.bias,
                       training=False, eps=bn.eps)  # 评估：用 running 统计量，Dropout 是恒等映射
    return out.detach(), bn.running_mean.clone(), True


def _normalize_inputs(g: torch.Generator):
    v = _randn(g, _randint(g, 2, 5), _randint(g, 1, 5))
    v[0] = 0.0  # 零向量
    return (v,)


CHECKS = [
    ("ex1_conv_channels_last",
     lambda images, conv: F.conv2d(images.movedim(-1, 1), conv.weight, conv.bias).movedim(1, -1), _conv_inputs),
    ("ex2_lm_loss", lambda logits, t: F.cross_entropy(logits.transpose(1, 2), t), _lm_inputs, _value_and_grad),
    ("ex3_regression_loss", lambda pred, t: ((pred[:, 0] - t) ** 2).mean(), _regression_inputs, _value_and_grad),
    ("ex4_merge_heads", lambda y: y.permute(0, 2, 1, 3).flatten(2),
     lambda g: (_randn(g, *[_randint(g, 1, 5) for _ in range(4)]),)),
    ("ex5_fix_dtypes", lambda layer, x, t: F.nll_loss(F.log_softmax(F.linear(x.float(), layer.weight, layer.bias), -1),
                                                      t.to(torch.int64)), _dtype_inputs),
    ("ex6_train_sgd", _ref_train, _train_inputs),
    ("ex7_evaluate", _ref_evaluate, _eval_inputs),
    ("ex8_safe_normalize", lambda v: F.normalize(v, dim=-1), _normalize_inputs),
]

PUZZLE_ALLOWED: dict[str, set[str]] = {}


def _symptom(fn) -> str:
    """运行一个有坑的写法，返回它的症状：异常的第一行、警告的第一行，或者"没报错"。"""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            result = fn()
        except Exception as err:
            return f"{type(err).__name__}: {str(err).splitlines()[0][:110]}"
    if caught:
        return f"{caught[0].category.__name__}: {str(caught[0].message)[:110]}"
    return f"没有报错，结果 = {result}"


def demo() -> None:
    def forgot_zero_grad():
        layer = nn.Linear(3, 1)
        x = torch.randn(8, 3)
        norms = []
        for _ in range(3):
            layer(x).pow(2).mean().backward()
            norms.append(round(layer.weight.grad.norm().item(), 3))
        return f"三步之后的梯度范数 {norms}（1×、2×、3×：在累加）"

    pred, target = torch.randn(4, 1), torch.randn(4)
    pitfalls = [
        ("§1.1", lambda: nn.Conv2d(3, 16, 3)(torch.randn(8, 32, 32, 3))),
        ("§1.2", lambda: F.cross_entropy(torch.randn(2, 5, 7), torch.randint(0, 7, (2, 5)))),
        ("§1.3", lambda: f"形状 {tuple((pred - target).shape)} 的 loss：{F.mse_loss(pred, target):.3f}"),
        ("§1.4", lambda: torch.randn(2, 4, 3, 8).transpose(1, 2).view(2, 3, 32)),
        ("§2.1", lambda: nn.Linear(3, 2)(torch.tensor([[1, 2, 3]]))),
        ("§2.2", lambda: F.cross_entropy(torch.randn(2, 3), torch.tensor([0, 2], dtype=torch.int32))),
        ("§3", lambda: nn.Linear(3, 2)(torch.randn(1, 3, device="meta"))),
        ("§4.1", forgot_zero_grad),
        ("§4.3", lambda: nn.BatchNorm1d(4)(torch.randn(1, 4))),
        ("§5.2", lambda: torch.zeros(3) / torch.zeros(3).norm()),
    ]
    for section, fn in pitfalls:
        print(f"  {section:5s} {_symptom(fn)}")


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
