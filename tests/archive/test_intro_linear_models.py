"""archive/Introductory learning/01_Linear_Models/ 的测试：线性回归四种解法给出同一答案（并与 sklearn 一致），
逻辑回归的手推梯度与 autograd 一致、训练轨迹与 nn.Linear + SGD 一致，以及错误输入的报错。"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from sklearn.linear_model import LinearRegression

from tests.conftest import load_script

lin = load_script("archive/Introductory learning/01_Linear_Models/01_linear_regression.py")
log = load_script("archive/Introductory learning/01_Linear_Models/02_logistic_regression.py")


@pytest.mark.parametrize("d", [1, 3, 8])
def test_four_solvers_agree_and_match_sklearn(d):
    X, y, _, _ = lin.make_data(200, d, seed=d)
    results = lin.solve_all(X, y, lr=0.1, steps=600)
    ref = LinearRegression().fit(X, y)
    theta_sk = np.append(ref.coef_, ref.intercept_)
    np.testing.assert_allclose(results["normal equations"][0], theta_sk, atol=1e-10)
    gd = results["hand-written GD"][0]
    for name in ("autograd", "nn.Linear + SGD"):
        np.testing.assert_allclose(results[name][0], gd, atol=1e-12)  # 同一条轨迹
        np.testing.assert_allclose(results[name][1], results["hand-written GD"][1], rtol=1e-12)
    np.testing.assert_allclose(gd, theta_sk, atol=1e-6)  # 收敛到解析解
    assert lin.mse(gd, X, y) <= lin.mse(gd + 1e-3, X, y)


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 10_000), n=st.integers(5, 40), d=st.integers(1, 4))
def test_gradient_formula_matches_autograd(seed, n, d):
    rng = np.random.default_rng(seed)
    X, y, theta = rng.standard_normal((n, d)), rng.standard_normal(n), rng.standard_normal(d + 1)
    Xb = lin.add_bias_column(X)
    grad = (2.0 / n) * Xb.T @ (Xb @ theta - y)  # 课文里的 ∇L
    t = torch.tensor(theta, requires_grad=True)
    F.mse_loss(torch.from_numpy(Xb) @ t, torch.from_numpy(y)).backward()
    np.testing.assert_allclose(grad, t.grad.numpy(), rtol=1e-10, atol=1e-12)


def test_linear_regression_bad_shapes():
    X, y, _, _ = lin.make_data(10, 2)
    with pytest.raises(ValueError, match=r"reshape\(-1, 1\)"):
        lin.fit_normal_equation(X[:, 0], y)
    with pytest.raises(ValueError, match=r"\(10,\)"):
        lin.fit_gradient_descent(X, y[:5])


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 10_000), scale=st.floats(0.1, 30.0))
def test_logistic_loss_and_gradient_match_autograd(seed, scale):
    rng = np.random.default_rng(seed)
    X, y = log.make_blobs(30, seed=seed)
    w, b = rng.standard_normal(2) * scale, float(rng.standard_normal() * scale)
    loss, gw, gb = log.loss_and_grad(w, b, X, y)
    wt = torch.tensor(w, requires_grad=True)
    bt = torch.tensor(b, dtype=torch.float64, requires_grad=True)
    ref = F.binary_cross_entropy_with_logits(torch.from_numpy(X) @ wt + bt, torch.from_numpy(y))
    ref.backward()
    assert abs(loss - ref.item()) <= 1e-12 * max(1.0, ref.item())
    np.testing.assert_allclose(gw, wt.grad.numpy(), rtol=1e-10, atol=1e-13)
    assert abs(gb - bt.grad.item()) < 1e-12


def test_sigmoid_and_bce_are_stable_for_extreme_logits():
    z = np.array([-1000.0, -50.0, 0.0, 50.0, 1000.0])
    s = log.sigmoid(z)
    assert np.all(np.isfinite(s)) and s[0] == 0.0 and s[-1] == 1.0 and s[2] == 0.5
    np.testing.assert_allclose(log.bce_with_logits(z, np.array([1.0, 1, 1, 0, 0])),
                               F.binary_cross_entropy_with_logits(torch.from_numpy(z), torch.tensor([1.0, 1, 1, 0, 0],
                                                                                                     dtype=torch.float64)).item(),
                               rtol=1e-12)


def test_logistic_training_matches_pytorch_and_separates_blobs():
    X, y = log.make_blobs(200, seed=3)
    w, b, losses = log.fit_gradient_descent(X, y, lr=0.5, steps=200)
    w_ref, b_ref, losses_ref = log.fit_torch(X, y, lr=0.5, steps=200)
    np.testing.assert_allclose(w, w_ref, atol=1e-12)
    np.testing.assert_allclose(losses, losses_ref, rtol=1e-12)
    assert losses[-1] < 0.5 * np.log(2) and log.accuracy(w, b, X, y) > 0.8


def test_logistic_bad_labels():
    X, _ = log.make_blobs(10)
    with pytest.raises(ValueError, match="0 或 1"):
        log.fit_gradient_descent(X, np.full(10, 2.0))
