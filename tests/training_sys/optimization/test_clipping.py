"""梯度裁剪对照 torch.nn.utils.clip_grad_norm_：返回的范数、裁剪后的梯度、非有限情形、坏输入。"""

from __future__ import annotations

import pytest
import torch

from training_sys.optimization.clipping import clip_grad_norm

SHAPES = [(33, 17), (17,), (4, 5, 6), ()]


def twin_params(scale: float, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    grads = [torch.randn(s, generator=gen) * scale for s in SHAPES]
    a = [torch.nn.Parameter(torch.zeros(s)) for s in SHAPES]
    b = [torch.nn.Parameter(torch.zeros(s)) for s in SHAPES]
    for pa, pb, g in zip(a, b, grads):
        pa.grad, pb.grad = g.clone(), g.clone()
    return a, b


@pytest.mark.parametrize("norm_type", [2.0, 1.0, 3.0, float("inf")])
@pytest.mark.parametrize("max_norm, scale", [(1.0, 5.0), (1e4, 1.0), (0.0, 1.0), (1.0, 1e-3)])
def test_matches_torch(norm_type, max_norm, scale):
    a, b = twin_params(scale)
    na = clip_grad_norm(a, max_norm, norm_type)
    nb = torch.nn.utils.clip_grad_norm_(b, max_norm, norm_type)
    torch.testing.assert_close(na, nb, rtol=1e-6, atol=0)
    for pa, pb in zip(a, b):
        torch.testing.assert_close(pa.grad, pb.grad, rtol=1e-6, atol=1e-8)
    if na > max_norm:  # 裁剪后总范数恰为 max_norm（差一个 1e-6 的 ε）
        per_param = torch.stack([torch.linalg.vector_norm(p.grad, norm_type) for p in a])
        after = torch.linalg.vector_norm(per_param, norm_type)
        assert after.item() == pytest.approx(max_norm, rel=1e-5, abs=1e-6)


@pytest.mark.parametrize("bad", [float("inf"), float("nan"), float("-inf")])
def test_nonfinite_matches_torch(bad):
    a, b = twin_params(1.0)
    a[0].grad[3, 4] = bad
    b[0].grad[3, 4] = bad
    na, nb = clip_grad_norm(a, 1.0), torch.nn.utils.clip_grad_norm_(b, 1.0)
    assert (na.isnan() and nb.isnan()) or na.item() == nb.item()
    for pa, pb in zip(a, b):
        torch.testing.assert_close(pa.grad, pb.grad, equal_nan=True)
    a[0].grad[3, 4] = bad
    b[0].grad[3, 4] = bad
    with pytest.raises(RuntimeError, match="非有限"):
        clip_grad_norm(a, 1.0, error_if_nonfinite=True)
    with pytest.raises(RuntimeError):
        torch.nn.utils.clip_grad_norm_(b, 1.0, error_if_nonfinite=True)


def test_params_without_grad_single_tensor_and_empty():
    p, q = torch.nn.Parameter(torch.ones(3)), torch.nn.Parameter(torch.ones(3))
    p.grad = torch.tensor([3.0, 4.0, 0.0])
    norm = clip_grad_norm([p, q], 1.0)
    assert norm.item() == pytest.approx(5.0) and q.grad is None
    torch.testing.assert_close(p.grad, torch.tensor([0.6, 0.8, 0.0]), rtol=1e-5, atol=0)
    assert clip_grad_norm(q, 1.0).item() == 0.0
    assert clip_grad_norm(iter([p]), 10.0).item() == pytest.approx(1.0, rel=1e-5)  # 生成器也可以


def test_negative_max_norm():
    p = torch.nn.Parameter(torch.ones(1))
    p.grad = torch.ones(1)
    with pytest.raises(ValueError, match="max_norm=-1.0"):
        clip_grad_norm([p], -1.0)
