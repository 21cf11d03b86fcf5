"""AdamW 在 ε 起作用的区间里对照 torch.optim.AdamW：梯度 ~1e-6（ε 占分母的 1%）与 ~1e-9（ε 占主导）。

梯度是 1 量级时 sqrt(v̂) ≈ 1，ε = 1e-8 对更新量的影响小于 fp32 的舍入，ε 放错位置
（放进根号里 sqrt(v̂ + ε)、或加在偏差修正之前 (sqrt(v) + ε)/sqrt(1−β2^t)）都测不出来。
把梯度缩到 ε 附近，每一种放法给出的步长都差出百分之几到几个数量级。
"""

from __future__ import annotations

import pytest
import torch

from training_sys.optimization import AdamW

SHAPES = [(7,), (5, 3), (2, 3, 4)]


def run(make_opt, grad_scale: float, steps: int = 30) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """直接给定梯度（不经过 loss），返回 (最终参数, 各参数的累计位移)。"""
    gen = torch.Generator().manual_seed(0)
    params = [torch.nn.Parameter(torch.randn(s, generator=gen)) for s in SHAPES]
    start = [p.detach().clone() for p in params]
    opt = make_opt(params)
    for step in range(steps):
        for p in params:
            # 梯度带一个固定的方向再加噪声，尺度随步数变化：v 的滑动平均与偏差修正都被用到
            p.grad = grad_scale * (1 + step % 3) * (torch.randn(p.shape, generator=gen) + 0.5)
        opt.step()
    return [p.detach() for p in params], [p.detach() - s for p, s in zip(params, start)]


@pytest.mark.parametrize("foreach", [False, True])
@pytest.mark.parametrize("amsgrad", [False, True])
@pytest.mark.parametrize("grad_scale", [1e-6, 1e-9])
def test_adamw_matches_torch_when_eps_matters(foreach, amsgrad, grad_scale):
    kw = dict(lr=1e-2, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.1, amsgrad=amsgrad, foreach=foreach)
    ours, ours_delta = run(lambda p: AdamW(p, **kw), grad_scale)
    ref, ref_delta = run(lambda p: torch.optim.AdamW(p, **kw), grad_scale)
    for a, b in zip(ours, ref):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-7)
    # 比位移而不是参数本身：参数 ~1、位移 ~1e-2，相对误差 1e-5 的容差只给舍入留余地
    for a, b in zip(ours_delta, ref_delta):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-9)


def test_eps_regime_really_changes_the_step():
    """对照：同样的梯度，ε 从 1e-8 换成 1e-7，位移的变化远大于上面的容差——说明这组梯度确实处在 ε 起作用的区间。"""
    for grad_scale, min_change in ((1e-6, 1e-2), (1e-9, 0.5)):
        _, base = run(lambda p: AdamW(p, lr=1e-2, eps=1e-8), grad_scale)
        _, other = run(lambda p: AdamW(p, lr=1e-2, eps=1e-7), grad_scale)
        rel = max(((a - b).abs().max() / a.abs().max()).item() for a, b in zip(base, other))
        assert rel > min_change, (grad_scale, rel)
