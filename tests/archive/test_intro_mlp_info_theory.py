"""archive/Introductory learning/02_MLP/05_information_theory.py 的测试：H、交叉熵、KL 与 PyTorch 一致（含 0 概率），
Gibbs 不等式 KL ≥ 0（等号当且仅当 p = q）、H(p) ≤ log K、H(p,q) = H(p) + KL，softmax + CE 的梯度 = q − y。"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from torch.distributions import Categorical, kl_divergence

from tests.conftest import load_script

it = load_script("archive/Introductory learning/02_MLP/05_information_theory.py")

dist_params = st.tuples(st.integers(2, 12), st.integers(0, 10_000))


def two_distributions(k: int, seed: int, sparse: bool = False):
    g = torch.Generator().manual_seed(seed)
    return it.random_distributions(4, k, g, sparse=sparse), it.random_distributions(4, k, g)


@settings(max_examples=50, deadline=None)
@given(params=dist_params, sparse=st.booleans())
def test_matches_pytorch_references(params, sparse):
    p, q = two_distributions(*params, sparse=sparse)
    torch.testing.assert_close(it.entropy(p), Categorical(probs=p).entropy(), rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(it.kl_div(p, q), kl_divergence(Categorical(probs=p), Categorical(probs=q)),
                               rtol=1e-9, atol=1e-12)
    torch.testing.assert_close(it.cross_entropy(p, q), F.cross_entropy(q.log(), p, reduction="none"),
                               rtol=1e-10, atol=1e-12)


@settings(max_examples=50, deadline=None)
@given(params=dist_params, eps=st.floats(0.0, 1.0))
def test_gibbs_inequality_and_identities(params, eps):
    k, seed = params
    p, q = two_distributions(k, seed, sparse=True)
    q = (1 - eps) * p + eps * q  # eps → 0 时 q → p，检查 KL 在 p 附近也不为负
    kl = it.kl_div(p, q)
    assert (kl >= -1e-15).all()
    torch.testing.assert_close(it.cross_entropy(p, q), it.entropy(p) + kl, rtol=1e-10, atol=1e-12)
    assert (it.entropy(p) <= math.log(k) + 1e-12).all()
    assert it.kl_div(p, p).abs().max() < 1e-15
    if eps > 1e-3:  # q ≠ p 时严格大于 0
        assert (kl > 0).all()


def test_zero_probability_conventions():
    p = torch.tensor([0.5, 0.5, 0.0], dtype=torch.float64)
    q = torch.tensor([0.25, 0.25, 0.5], dtype=torch.float64)
    assert math.isclose(it.entropy(p).item(), math.log(2))  # 0·log 0 = 0，不是 nan
    assert math.isclose(it.kl_div(p, q).item(), math.log(2))
    assert it.kl_div(q, p).item() == math.inf  # q 认为可能、p 认为不可能
    assert math.isclose(it.entropy(torch.full((8,), 1 / 8, dtype=torch.float64)).item(), math.log(8))


@settings(max_examples=40, deadline=None)
@given(params=dist_params, hard=st.booleans(), scale=st.floats(0.1, 20.0))
def test_softmax_cross_entropy_gradient_is_q_minus_y(params, hard, scale):
    k, seed = params
    g = torch.Generator().manual_seed(seed)
    z = (torch.randn(5, k, generator=g, dtype=torch.float64) * scale).requires_grad_()
    y = F.one_hot(torch.randint(k, (5,), generator=g), k).double() if hard else it.random_distributions(5, k, g)
    F.cross_entropy(z, y, reduction="sum").backward()
    torch.testing.assert_close(z.grad, it.softmax_cross_entropy_grad(z.detach(), y), rtol=1e-10, atol=1e-12)


def test_bad_input():
    with pytest.raises(ValueError, match="负数"):
        it.entropy(torch.tensor([1.2, -0.2]))
    with pytest.raises(ValueError, match="和应为 1"):
        it.entropy(torch.tensor([0.2, 0.2]))
    with pytest.raises(ValueError, match="形状必须相同"):
        it.kl_div(torch.tensor([0.5, 0.5]), torch.tensor([0.2, 0.3, 0.5]))
    with pytest.raises(ValueError, match="标量"):
        it.entropy(torch.tensor(1.0))
