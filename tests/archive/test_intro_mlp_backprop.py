"""archive/Introductory learning/02_MLP/03_manual_backprop.py 的测试：手推的矩阵形式反向传播与 torch.autograd
在随机网络（不同深度、宽度、激活、批大小）上逐元素一致，用它训练与 autograd 训练逐步一致，错误输入报错。"""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.conftest import load_script

bp = load_script("archive/Introductory learning/02_MLP/03_manual_backprop.py")


@settings(max_examples=40, deadline=None)
@given(sizes=st.lists(st.integers(1, 12), min_size=2, max_size=5).filter(lambda s: s[-1] >= 2),
       batch=st.integers(1, 9), act=st.sampled_from(bp.ACTIVATIONS), seed=st.integers(0, 1000))
def test_manual_gradients_match_autograd(sizes, batch, act, seed):
    g = torch.Generator().manual_seed(seed)
    params = bp.init_params(sizes, seed=seed)
    X = torch.randn(batch, sizes[0], generator=g, dtype=torch.float64) * 2
    y = torch.randint(sizes[-1], (batch,), generator=g)
    loss, grads = bp.manual_loss_and_grads(params, X, y, act)
    loss_ref, grads_ref = bp.autograd_loss_and_grads(params, X, y, act)
    torch.testing.assert_close(loss, loss_ref, rtol=1e-12, atol=1e-12)
    for (gW, gb), (rW, rb), (W, b) in zip(grads, grads_ref, params):
        assert gW.shape == W.shape and gb.shape == b.shape  # 梯度与变量同形
        torch.testing.assert_close(gW, rW, rtol=1e-10, atol=1e-12)
        torch.testing.assert_close(gb, rb, rtol=1e-10, atol=1e-12)


def test_training_with_manual_gradients_follows_autograd():
    g = torch.Generator().manual_seed(0)
    X = torch.randn(200, 6, generator=g, dtype=torch.float64)
    y = (X[:, 0] > 0).long() + (X[:, 1] > 0).long()  # 3 类
    params = bp.init_params([6, 16, 3], seed=0)
    losses = bp.train(params, X, y, steps=60, lr=0.3, act="relu", use_autograd=False)
    losses_ref = bp.train(params, X, y, steps=60, lr=0.3, act="relu", use_autograd=True)
    assert max(abs(a - b) for a, b in zip(losses, losses_ref)) < 1e-10
    assert sum(losses[-10:]) / 10 < 0.7 * losses[0]


def test_bad_input():
    params = bp.init_params([4, 3])
    X = torch.zeros(2, 4, dtype=torch.float64)
    with pytest.raises(ValueError, match="act='gelu'"):
        bp.manual_loss_and_grads(params, X, torch.tensor([0, 1]), "gelu")
    with pytest.raises(ValueError, match=r"\(B, 4\)"):
        bp.manual_loss_and_grads(params, torch.zeros(2, 5, dtype=torch.float64), torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="0..2"):
        bp.manual_loss_and_grads(params, X, torch.tensor([0, 3]))
    with pytest.raises(ValueError, match="至少"):
        bp.init_params([4])
