"""刘二 13 讲的练习判分测试（utils/exercise_parts/liu2.py 登记的函数）：每个测试只考一个核心函数，
与 PyTorch / NumPy 的工业实现或测试里独立写出的计算对照，函数体是 NotImplementedError 时必然失败。"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from numpy.polynomial import polynomial as P
from torch.utils.data import DataLoader, RandomSampler

from tests.conftest import liu2_lecture as lecture


def _r(g: torch.Generator, *shape) -> torch.Tensor:
    return torch.randn(*shape, generator=g, dtype=torch.float64)


# ----------------------------------------------------------------------------- 01 概述
def test_l01_design_matrix_is_vandermonde_of_2x_minus_1():
    m = lecture(1)
    x = np.array([0.0, 0.25, 0.5, 0.9, 1.0])
    for d in (0, 1, 4):
        got = m.design_matrix(x, d)
        want = np.stack([(2 * x - 1) ** j for j in range(d + 1)], axis=1)
        assert got.shape == (5, d + 1)
        np.testing.assert_allclose(got, want, rtol=0, atol=1e-15)


def test_l01_fit_polynomial_matches_numpy_polyfit():
    m = lecture(1)
    x, y = m.make_data(12, seed=3)
    for d in (0, 1, 3, 6):
        np.testing.assert_allclose(m.fit_polynomial(x, y, d), P.polyfit(2 * x - 1, y, d), rtol=1e-7, atol=1e-8)


def test_l01_mse_of_polynomial_coefficients():
    m = lecture(1)
    x, y = m.make_data(30, seed=4)
    w = np.array([0.3, -1.2, 0.5, 2.0])
    want = np.mean((P.polyval(2 * x - 1, w) - y) ** 2)
    got = m.mse(w, x, y)
    assert isinstance(got, float) and got == pytest.approx(want, rel=1e-12)


def test_l01_degree_sweep_matches_polyfit_errors():
    m = lecture(1)
    x_tr, y_tr = m.make_data(12, seed=0)
    x_te, y_te = m.make_data(50, seed=1)
    train_err, test_err = m.degree_sweep(x_tr, y_tr, x_te, y_te, 7)
    assert len(train_err) == len(test_err) == 8
    for d in range(8):
        c = P.polyfit(2 * x_tr - 1, y_tr, d)
        assert train_err[d] == pytest.approx(np.mean((P.polyval(2 * x_tr - 1, c) - y_tr) ** 2), rel=1e-6, abs=1e-12)
        assert test_err[d] == pytest.approx(np.mean((P.polyval(2 * x_te - 1, c) - y_te) ** 2), rel=1e-6)


# ----------------------------------------------------------------------------- 02 线性模型
def test_l02_mse_with_and_without_bias():
    m = lecture(2)
    x, y = np.array([0.5, 1.0, 2.5, 4.0]), np.array([1.0, -2.0, 0.5, 3.0])
    assert m.mse(x, y, 1.5) == pytest.approx(np.mean((1.5 * x - y) ** 2))
    assert m.mse(x, y, -0.7, 2.0) == pytest.approx(np.mean((-0.7 * x + 2.0 - y) ** 2))


def test_l02_grid_search_w_returns_argmin_and_every_loss():
    m = lecture(2)
    x, y = np.array([1.0, 2.0, 4.0]), np.array([3.1, 5.9, 12.2])
    ws = np.arange(0.0, 5.0001, 0.25)
    w, losses = m.grid_search_w(x, y, ws)
    want = np.array([np.mean((x * v - y) ** 2) for v in ws])
    np.testing.assert_allclose(losses, want, rtol=1e-12)
    assert w == ws[np.argmin(want)]


def test_l02_grid_search_wb_equals_double_loop():
    m = lecture(2)
    x = np.array([0.5, 1.0, 2.5, 4.0])
    y = -1.5 * x + 0.7 + np.array([0.01, -0.02, 0.0, 0.03])
    ws, bs = np.arange(-3.0, 0.0001, 0.1), np.arange(-1.0, 2.0001, 0.1)
    w, b, surface = m.grid_search_wb(x, y, ws, bs)
    want = np.array([[np.mean((x * wi + bj - y) ** 2) for bj in bs] for wi in ws])
    assert surface.shape == (len(ws), len(bs))
    np.testing.assert_allclose(surface, want, rtol=1e-12)
    i, j = np.unravel_index(np.argmin(want), want.shape)
    assert (w, b) == (ws[i], bs[j])


def test_l02_closed_form_w_matches_lstsq():
    m = lecture(2)
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=9), rng.normal(size=9)
    want = np.linalg.lstsq(x[:, None], y, rcond=None)[0][0]
    assert m.closed_form_w(x, y) == pytest.approx(want, rel=1e-12)


# ----------------------------------------------------------------------------- 03 梯度下降
def test_l03_cost_is_mse():
    m = lecture(3)
    x, y = np.array([1.0, -2.0, 3.5]), np.array([0.5, 1.0, -4.0])
    assert m.cost(x, y, 0.8) == pytest.approx(np.mean((0.8 * x - y) ** 2))


def test_l03_gradient_matches_autograd():
    m = lecture(3)
    rng = np.random.default_rng(1)
    x, y = rng.normal(size=7), rng.normal(size=7)
    for w in (-2.3, 0.0, 0.4, 3.1):
        wt = torch.tensor(w, dtype=torch.float64, requires_grad=True)
        ((torch.from_numpy(x) * wt - torch.from_numpy(y)) ** 2).mean().backward()
        assert m.gradient(x, y, w) == pytest.approx(wt.grad.item(), abs=1e-12)


def _torch_sgd_history(x, y, w0, lr, epochs, per_sample: bool):
    """autograd 求梯度的参照轨迹：history[i] 是 i 个 epoch 之后的整批 cost（[0] 是训练前，共 epochs + 1 项）。
    （不用 torch.optim：第一次 step 会导入 torch._dynamo，要好几秒；w ← w − lr·grad 就是无动量的 SGD。）"""
    wt = torch.tensor(w0, dtype=torch.float64, requires_grad=True)
    xt, yt = torch.from_numpy(x), torch.from_numpy(y)
    batches = [(xt[i:i + 1], yt[i:i + 1]) for i in range(len(x))] if per_sample else [(xt, yt)]
    history = []
    for _ in range(epochs):
        history.append(((xt * wt - yt) ** 2).mean().item())
        for xb, yb in batches:
            grad, = torch.autograd.grad(((xb * wt - yb) ** 2).mean(), wt)
            with torch.no_grad():
                wt -= lr * grad
    history.append(((xt * wt - yt) ** 2).mean().item())
    return wt.item(), history


def test_l03_gradient_descent_equals_autograd_full_batch_steps():
    m = lecture(3)
    x, y = np.array([1.0, 2.0, 3.0]), np.array([2.5, 3.9, 6.4])
    w, history = m.gradient_descent(x, y, w=-1.0, lr=0.05, epochs=25)
    w_ref, h_ref = _torch_sgd_history(x, y, -1.0, 0.05, 25, per_sample=False)
    assert len(history) == 26
    np.testing.assert_allclose(history, h_ref, rtol=1e-12, atol=1e-14)
    assert w == pytest.approx(w_ref, abs=1e-12)


def test_l03_stochastic_gradient_descent_equals_autograd_per_sample_steps():
    m = lecture(3)
    x, y = np.array([1.0, 2.0, 3.0]), np.array([2.5, 3.9, 6.4])
    w, history = m.stochastic_gradient_descent(x, y, w=-1.0, lr=0.02, epochs=20)
    w_ref, h_ref = _torch_sgd_history(x, y, -1.0, 0.02, 20, per_sample=True)
    assert len(history) == 21
    np.testing.assert_allclose(history, h_ref, rtol=1e-12, atol=1e-14)
    assert w == pytest.approx(w_ref, abs=1e-12)


# ----------------------------------------------------------------------------- 04 反向传播
def test_l04_quadratic_forward_backward_matches_autograd():
    m = lecture(4)
    for x, y, w1, w2, b in [(2.0, 4.0, 1.0, 1.0, 1.0), (-1.5, 0.3, 0.2, -2.0, 0.7), (0.4, -3.0, -1.1, 0.5, 2.2)]:
        ws = [torch.tensor(v, dtype=torch.float64, requires_grad=True) for v in (w1, w2, b)]
        loss = (ws[0] * x**2 + ws[1] * x + ws[2] - y) ** 2
        loss.backward()
        out = m.quadratic_forward_backward(x, y, w1, w2, b)
        assert len(out) == 4
        assert out[0] == pytest.approx(loss.item(), rel=1e-12)
        assert out[1:] == pytest.approx([w.grad.item() for w in ws], rel=1e-12)


@pytest.mark.parametrize("n,d_in,hidden,d_out", [(1, 1, 1, 1), (5, 3, 4, 2), (16, 7, 9, 3)])
def test_l04_two_layer_manual_matches_autograd(n, d_in, hidden, d_out):
    m = lecture(4)
    g = torch.Generator().manual_seed(10 * n + d_out)
    x, y = _r(g, n, d_in), _r(g, n, d_out)
    params = [_r(g, hidden, d_in).requires_grad_(), _r(g, hidden).requires_grad_(),
              _r(g, d_out, hidden).requires_grad_(), _r(g, d_out).requires_grad_()]
    W1, b1, W2, b2 = params
    ref = F.mse_loss(F.linear(torch.sigmoid(F.linear(x, W1, b1)), W2, b2), y)
    grads = torch.autograd.grad(ref, params)
    out = m.two_layer_manual(x, y, *(p.detach() for p in params))
    assert len(out) == 5
    torch.testing.assert_close(out[0], ref.detach(), atol=1e-12, rtol=1e-12)
    for got, want in zip(out[1:], grads):
        torch.testing.assert_close(got, want, atol=1e-12, rtol=1e-12)


def test_l04_quadratic_epoch_map_equals_one_sgd_epoch():
    m = lecture(4)
    lr, xs = 0.02, [0.5, 1.5, -1.0, 2.0]
    theta_star = np.array([0.0, 2.0, 0.0])  # y = 2x：零损失解 (w1, w2, b) = (0, 2, 0)
    errors_before, errors_after = [], []
    rng = np.random.default_rng(0)
    for _ in range(3):
        theta = theta_star + rng.normal(size=3)
        errors_before.append(theta - theta_star)
        for x in xs:  # 按样本顺序的 SGD，loss = (φᵀθ − y)²
            phi = np.array([x * x, x, 1.0])
            theta = theta - lr * 2 * (phi @ theta - 2 * x) * phi
        errors_after.append(theta - theta_star)
    M = m.quadratic_epoch_map(lr, xs)
    assert M.shape == (3, 3)
    np.testing.assert_allclose(M @ np.array(errors_before).T, np.array(errors_after).T, atol=1e-12)


def test_l04_train_quadratic_equals_autograd_per_sample_sgd():
    m = lecture(4)
    history, params = m.train_quadratic(epochs=30, lr=0.01)
    theta = torch.ones(3, dtype=torch.float64, requires_grad=True)
    ref = []
    for _ in range(30):
        total = 0.0
        for x, y in zip(m.X_DATA.tolist(), m.Y_DATA.tolist()):
            loss = (theta[0] * x**2 + theta[1] * x + theta[2] - y) ** 2
            grad, = torch.autograd.grad(loss, theta)
            with torch.no_grad():
                theta -= 0.01 * grad
            total += loss.item()
        ref.append(total / 3)
    np.testing.assert_allclose(history, ref, rtol=1e-10)
    np.testing.assert_allclose(params, theta.detach().numpy(), rtol=1e-10)


# ----------------------------------------------------------------------------- 05 PyTorch 线性回归
def test_l05_mse_matches_mseloss_values_and_grads():
    m = lecture(5)
    g = torch.Generator().manual_seed(5)
    target = _r(g, 6, 1)
    for red in ("mean", "sum"):
        p1 = _r(g, 6, 1).requires_grad_()
        p2 = p1.detach().clone().requires_grad_()
        ours, ref = m.mse(p1, target, red), nn.MSELoss(reduction=red)(p2, target)
        torch.testing.assert_close(ours, ref)
        ours.backward()
        ref.backward()
        torch.testing.assert_close(p1.grad, p2.grad)


def test_l05_manual_sgd_step_equals_torch_sgd():
    m = lecture(5)
    a, b = m.LinearModel(), m.LinearModel()
    b.load_state_dict(a.state_dict())
    for model in (a, b):
        ((model(m.X_DATA) - m.Y_DATA) ** 2).sum().backward()
    m.manual_sgd_step(a, 0.01)
    torch.optim.SGD(b.parameters(), lr=0.01).step()
    for p, q in zip(a.parameters(), b.parameters()):
        assert p.is_leaf and p.requires_grad  # 原地更新，参数仍是叶子节点
        torch.testing.assert_close(p, q, atol=1e-7, rtol=0)


@pytest.mark.parametrize("name", ["SGD", "Adam", "LBFGS"])
def test_l05_train_loop_equals_reference_loop(name):
    m = lecture(5)
    model, history = m.train(name, epochs=20, seed=3)
    torch.manual_seed(3)
    ref = m.LinearModel()
    cls, kwargs = m.OPTIMIZERS[name]
    opt = cls(ref.parameters(), **kwargs)
    ref_history = []

    def closure():
        opt.zero_grad()
        loss = ((ref(m.X_DATA) - m.Y_DATA) ** 2).sum()
        loss.backward()
        return loss

    for _ in range(20):
        ref_history.append(opt.step(closure).item())
    with torch.no_grad():
        ref_history.append(((ref(m.X_DATA) - m.Y_DATA) ** 2).sum().item())
    assert len(history) == 21
    np.testing.assert_allclose(history, ref_history, rtol=1e-5, atol=1e-9)
    for p, q in zip(model.parameters(), ref.parameters()):
        torch.testing.assert_close(p, q)


# ----------------------------------------------------------------------------- 06 逻辑回归
def test_l06_sigmoid_matches_torch_without_overflow():
    m = lecture(6)
    z = torch.cat([torch.linspace(-700, 700, 301, dtype=torch.float64), torch.tensor([0.0, -1e-9, 30.0])])
    got = m.sigmoid(z)
    assert torch.isfinite(got).all()
    torch.testing.assert_close(got, torch.sigmoid(z), rtol=1e-12, atol=0)
    # float64 的 e^{−z} 在 z < −709.78 时溢出：朴素的 1 / (1 + e^{−z}) 得 1 / inf = 0，真值 e^z 却还能表示（次正规数）
    tail = torch.tensor([-710.0, -720.0, -735.0], dtype=torch.float64)
    got = m.sigmoid(tail)
    assert (got > 0).all()
    np.testing.assert_allclose(got.numpy(), [math.exp(v) for v in tail.tolist()], rtol=1e-3)
    z32 = torch.linspace(-120, 120, 41)
    torch.testing.assert_close(m.sigmoid(z32), torch.sigmoid(z32), rtol=1e-6, atol=1e-37)  # torch 把 float32 的次正规数冲成 0


def test_l06_bce_matches_bceloss_with_clamp_and_grads():
    m = lecture(6)
    p = torch.tensor([0.0, 1e-30, 0.2, 0.5, 0.9, 1.0, 1.0, 0.0, 0.3])
    y = torch.tensor([1.0, 1.0, 0.0, 1.0, 1.0, 0.0, 1.0, 0.0, 0.6])
    for red in ("mean", "sum"):
        torch.testing.assert_close(m.bce(p, y, red), nn.BCELoss(reduction=red)(p, y))
    g = torch.Generator().manual_seed(6)
    q = torch.rand(20, generator=g, dtype=torch.float64) * 0.98 + 0.01
    t = (torch.rand(20, generator=g, dtype=torch.float64) > 0.5).double()
    q1, q2 = q.clone().requires_grad_(), q.clone().requires_grad_()
    m.bce(q1, t).backward()
    F.binary_cross_entropy(q2, t).backward()
    torch.testing.assert_close(q1.grad, q2.grad)


def test_l06_bce_with_logits_is_stable_for_huge_logits():
    m = lecture(6)
    g = torch.Generator().manual_seed(7)
    z = torch.cat([_r(g, 40) * 40, torch.tensor([800.0, -800.0, 0.0], dtype=torch.float64)])
    y = (torch.rand(43, generator=g, dtype=torch.float64) > 0.5).double()
    z1, z2 = z.clone().requires_grad_(), z.clone().requires_grad_()
    ours, ref = m.bce_with_logits(z1, y), F.binary_cross_entropy_with_logits(z2, y)
    assert torch.isfinite(ours)
    torch.testing.assert_close(ours, ref)
    ours.backward()
    ref.backward()
    torch.testing.assert_close(z1.grad, z2.grad)


# ----------------------------------------------------------------------------- 07 多维输入
def _three_sigmoid_layers(model, x):
    for layer in (model.linear1, model.linear2, model.linear3):
        x = torch.sigmoid(F.linear(x, layer.weight, layer.bias))
    return x


def test_l07_multidim_model_forward_is_three_linear_sigmoid_layers():
    m = lecture(7)
    model = m.MultiDimModel(8)
    x = torch.randn(13, 8)
    out = model(x)
    assert out.shape == (13, 1)
    torch.testing.assert_close(out, _three_sigmoid_layers(model, x))


def test_l07_forward_per_sample_equals_batched_layers():
    m = lecture(7)
    model = m.MultiDimModel(5)
    x = torch.randn(9, 5)
    with torch.no_grad():
        out = m.forward_per_sample(model, x)
        ref = _three_sigmoid_layers(model, x)
    assert out.shape == (9, 1)
    torch.testing.assert_close(out, ref, atol=1e-6, rtol=1e-6)


def test_l07_split_and_standardize_uses_training_statistics_only():
    m = lecture(7)
    rng = np.random.default_rng(2)
    X = (rng.normal(size=(40, 3)) * [1.0, 5.0, 0.1] + [0.0, 10.0, -3.0]).astype(np.float32)
    y = np.arange(40, dtype=np.float32)  # 标签就是行号：从输出里认出每一行来自哪里
    X_tr, y_tr, X_te, y_te = m.split_and_standardize(X, y, seed=5)
    assert y_tr.shape == (30, 1) and y_te.shape == (10, 1) and X_tr.shape == (30, 3) and X_te.shape == (10, 3)
    tr, te = y_tr[:, 0].long().numpy(), y_te[:, 0].long().numpy()
    assert sorted(np.concatenate([tr, te]).tolist()) == list(range(40))
    mean, std = X[tr].mean(0), X[tr].std(0)
    np.testing.assert_allclose(X_tr.numpy(), (X[tr] - mean) / std, atol=1e-5)
    np.testing.assert_allclose(X_te.numpy(), (X[te] - mean) / std, atol=1e-5)


# ----------------------------------------------------------------------------- 08 Dataset / DataLoader
FEATURES = ["is_female", "age", "age_missing", "sibsp", "parch", "log_fare", "pclass_1", "pclass_2", "pclass_3",
            "embarked_S", "embarked_C", "embarked_Q"]


def _tiny_titanic() -> pd.DataFrame:
    return pd.DataFrame({"Survived": [0, 1, 1], "Pclass": [3, 1, 2], "Sex": ["male", "female", "female"],
                         "Age": [22.0, 38.0, np.nan], "SibSp": [1, 1, 0], "Parch": [0, 2, 0],
                         "Fare": [7.25, 71.2833, np.nan], "Embarked": ["S", "C", np.nan]})


def test_l08_titanic_features_columns_and_values():
    m = lecture(8)
    X, names = m.titanic_features(_tiny_titanic())
    assert names == FEATURES and X.dtype == np.float32 and X.shape == (3, 12)
    want = np.array([
        [0, 22 / 80, 0, 1, 0, math.log1p(7.25), 0, 0, 1, 1, 0, 0],
        [1, 38 / 80, 0, 1, 2, math.log1p(71.2833), 1, 0, 0, 0, 1, 0],
        [1, 30 / 80, 1, 0, 0, 0.0, 0, 1, 0, 1, 0, 0],  # 年龄填中位数 30、缺票价记 0、缺港口填 S
    ])
    np.testing.assert_allclose(X, want, rtol=1e-6)
    X2, _ = m.titanic_features(_tiny_titanic(), age_median=50.0)  # 给了训练集的中位数就用它
    assert X2[2, 1] == pytest.approx(50 / 80) and X2[0, 1] == pytest.approx(22 / 80)


def _dataset(m, n=53):
    g = torch.Generator().manual_seed(n)
    return m.TitanicDataset(torch.randn(n, 4, generator=g).numpy(), (torch.rand(n, generator=g) > 0.5).numpy())


def test_l08_simple_loader_len_equals_dataloader():
    m = lecture(8)
    ds = _dataset(m)
    for bs in (1, 7, 10, 53, 200):
        for drop in (False, True):
            assert len(m.SimpleDataLoader(ds, bs, drop_last=drop)) == len(DataLoader(ds, bs, drop_last=drop))


def _batches(loader):
    return [batch for batch in loader]  # 不用 list(loader)：它会先调 __len__


def _same_batches(a, b) -> bool:
    return len(a) == len(b) and all(len(x) == len(y) and all(torch.equal(u, v) for u, v in zip(x, y))
                                    for x, y in zip(a, b))


def test_l08_simple_loader_batches_equal_dataloader():
    m = lecture(8)
    ds = _dataset(m)
    for bs, drop in ((1, False), (10, False), (10, True), (200, False)):
        assert _same_batches(_batches(m.SimpleDataLoader(ds, bs, drop_last=drop)), _batches(DataLoader(ds, bs, drop_last=drop)))
    ours = m.SimpleDataLoader(ds, 16, shuffle=True, generator=torch.Generator().manual_seed(5))
    ref = DataLoader(ds, 16, sampler=RandomSampler(ds, generator=torch.Generator().manual_seed(5)))
    assert _same_batches(_batches(ours), _batches(ref))
    loader = m.SimpleDataLoader(ds, 16, shuffle=True, generator=torch.Generator().manual_seed(6))
    first, second = torch.cat([x for x, _ in _batches(loader)]), torch.cat([x for x, _ in _batches(loader)])
    assert not torch.equal(first, second)  # 每个 epoch 重新打乱
    assert sorted(map(tuple, first.tolist())) == sorted(map(tuple, ds.x.tolist()))  # 每个样本恰好一次


def test_l08_make_datasets_fills_age_with_the_training_median():
    m = lecture(8)
    df = m.synthetic_titanic(200, seed=4)
    train_set, test_set, names = m.make_datasets(df, seed=1)
    tr, te = m.split_frame(df, seed=1)
    assert names == FEATURES and len(train_set) == len(tr) and len(test_set) == len(te)
    assert torch.equal(test_set.y[:, 0], torch.tensor(te["Survived"].to_numpy(), dtype=torch.float32))
    age = test_set.x[:, names.index("age")].numpy()
    np.testing.assert_allclose(age, te["Age"].fillna(tr["Age"].median()).to_numpy() / 80, rtol=1e-6)
    assert tr["Age"].median() != te["Age"].median()  # 这份数据上两个中位数不同：用错了就能看出来


# ----------------------------------------------------------------------------- 09 softmax
def test_l09_softmax_matches_torch_for_huge_logits():
    m = lecture(9)
    g = torch.Generator().manual_seed(9)
    for z in (_r(g, 17, 10), _r(g, 17, 10) * 20 + 1000, _r(g, 4, 3) * 50 - 800):
        torch.testing.assert_close(m.softmax(z), torch.softmax(z, -1))
    z = _r(g, 5, 6)
    torch.testing.assert_close(m.softmax(z, dim=0), torch.softmax(z, 0))


def test_l09_log_softmax_matches_torch_for_huge_logits():
    m = lecture(9)
    g = torch.Generator().manual_seed(10)
    for z in (_r(g, 17, 10), _r(g, 17, 10) * 20 + 1000, _r(g, 4, 3) * 400):
        torch.testing.assert_close(m.log_softmax(z), torch.log_softmax(z, -1))
    z = _r(g, 5, 6)
    torch.testing.assert_close(m.log_softmax(z, dim=0), torch.log_softmax(z, 0))


def test_l09_nll_loss_matches_torch():
    m = lecture(9)
    g = torch.Generator().manual_seed(11)
    lp = torch.log_softmax(_r(g, 12, 7), -1)
    y = torch.randint(0, 7, (12,), generator=g)
    a, b = lp.clone().requires_grad_(), lp.clone().requires_grad_()
    ours, ref = m.nll_loss(a, y), F.nll_loss(b, y)
    torch.testing.assert_close(ours, ref)
    ours.backward()
    ref.backward()
    torch.testing.assert_close(a.grad, b.grad)


def test_l09_cross_entropy_matches_torch():
    m = lecture(9)
    g = torch.Generator().manual_seed(12)
    for scale in (1.0, 50.0):
        z = _r(g, 17, 10) * scale
        y = torch.randint(0, 10, (17,), generator=g)
        a, b = z.clone().requires_grad_(), z.clone().requires_grad_()
        ours, ref = m.cross_entropy(a, y), nn.CrossEntropyLoss()(b, y)
        torch.testing.assert_close(ours, ref)
        ours.backward()
        ref.backward()
        torch.testing.assert_close(a.grad, b.grad)


def test_l09_cross_entropy_grad_is_softmax_minus_onehot_over_n():
    m = lecture(9)
    g = torch.Generator().manual_seed(13)
    for scale in (1.0, 50.0):
        z = (_r(g, 17, 10) * scale).requires_grad_()
        y = torch.randint(0, 10, (17,), generator=g)
        F.cross_entropy(z, y).backward()
        torch.testing.assert_close(m.cross_entropy_grad(z.detach(), y), z.grad)


# ----------------------------------------------------------------------------- 10 基础 CNN
@pytest.mark.parametrize("h,k,s,p,d", [(28, 5, 1, 0, 1), (28, 3, 1, 1, 1), (32, 3, 2, 1, 1), (17, 4, 3, 2, 1),
                                       (20, 3, 1, 2, 2), (7, 7, 1, 0, 1), (9, 2, 2, 0, 1), (11, 3, 2, 0, 1)])
def test_l10_conv_output_size_matches_conv2d_and_maxpool(h, k, s, p, d):
    m = lecture(10)
    out = nn.Conv2d(1, 1, k, stride=s, padding=p, dilation=d)(torch.zeros(1, 1, h, h + 1))
    assert tuple(out.shape[-2:]) == (m.conv_output_size(h, k, s, p, d), m.conv_output_size(h + 1, k, s, p, d))
    pooled = nn.MaxPool2d(k, stride=s, padding=min(p, k // 2))(torch.zeros(1, 1, h, h))
    assert pooled.shape[-1] == m.conv_output_size(h, k, s, min(p, k // 2))


def test_l10_conv2d_unfold_matches_conv2d_values_and_grads():
    m = lecture(10)
    g = torch.Generator().manual_seed(14)
    for s, p, d, with_bias in ((1, 0, 1, True), (2, 1, 1, True), (1, 2, 2, False), (3, 0, 1, True)):
        x = _r(g, 2, 3, 10, 8).requires_grad_()
        w = _r(g, 5, 3, 3, 3).requires_grad_()
        b = _r(g, 5).requires_grad_() if with_bias else None
        ours, ref = m.conv2d_unfold(x, w, b, s, p, d), F.conv2d(x, w, b, stride=s, padding=p, dilation=d)
        assert ours.shape == ref.shape
        torch.testing.assert_close(ours, ref)
        inputs = (x, w, b) if with_bias else (x, w)
        up = _r(g, *ref.shape)
        for g1, g2 in zip(torch.autograd.grad(ours, inputs, up), torch.autograd.grad(ref, inputs, up)):
            torch.testing.assert_close(g1, g2)


def test_l10_basic_cnn_forward_is_conv_pool_relu_twice_then_linear():
    m = lecture(10)
    for size, k, p in ((28, 5, 0), (8, 3, 1)):
        net = m.BasicCNN(size, k, p)
        x = torch.randn(3, 1, size, size)
        h = F.relu(F.max_pool2d(net.conv1(x), 2))
        h = F.relu(F.max_pool2d(net.conv2(h), 2))
        out = net(x)
        assert out.shape == (3, 10)
        torch.testing.assert_close(out, net.fc(h.flatten(1)))


# ----------------------------------------------------------------------------- 11 高级 CNN
def test_l11_conv1x1_as_linear_matches_conv2d():
    m = lecture(11)
    conv = nn.Conv2d(5, 3, 1).double()
    x = torch.randn(2, 5, 4, 6, dtype=torch.float64)
    torch.testing.assert_close(m.conv1x1_as_linear(x, conv.weight, conv.bias), conv(x))


def test_l11_conv_mults_counts_multiplications_of_a_same_conv():
    m = lecture(11)
    assert m.conv_mults(28, 28, 192, 32, 5) == 120_422_400
    assert m.conv_mults(28, 28, 192, 16, 1) + m.conv_mults(28, 28, 16, 32, 5) == 12_443_648
    for h, w, c_in, c_out, k in ((7, 9, 3, 4, 3), (5, 5, 2, 6, 1), (6, 4, 1, 2, 5)):
        out = nn.Conv2d(c_in, c_out, k, padding=k // 2)(torch.zeros(1, c_in, h, w))
        assert m.conv_mults(h, w, c_in, c_out, k) == out.numel() * c_in * k * k  # 每个输出元素 c_in·k·k 次乘法


def test_l11_inception_forward_concatenates_four_branches():
    m = lecture(11)
    block = m.InceptionA(6)
    x = torch.randn(2, 6, 7, 5)
    b1 = block.branch1x1(x)
    b5 = block.branch5x5_2(block.branch5x5_1(x))
    b3 = block.branch3x3_3(block.branch3x3_2(block.branch3x3_1(x)))
    bp = block.branch_pool(F.avg_pool2d(x, 3, stride=1, padding=1))
    out = block(x)
    assert out.shape == (2, 88, 7, 5)
    torch.testing.assert_close(out, torch.cat([b1, b5, b3, bp], dim=1))


def test_l11_residual_block_adds_the_input_before_the_last_relu():
    m = lecture(11)
    block = m.ResidualBlock(4)
    x = torch.randn(3, 4, 6, 5)
    out = block(x)
    torch.testing.assert_close(out, F.relu(x + block.conv2(F.relu(block.conv1(x)))))
    nn.init.zeros_(block.conv2.weight)
    nn.init.zeros_(block.conv2.bias)
    torch.testing.assert_close(block(x), F.relu(x))  # F(x) = 0 时就是恒等（再过 ReLU）


# ----------------------------------------------------------------------------- 12 基础 RNN
def test_l12_rnn_cell_matches_nn_rnncell():
    m = lecture(12)
    cell = nn.RNNCell(4, 6).double()
    x, h = torch.randn(3, 4, dtype=torch.float64), torch.randn(3, 6, dtype=torch.float64)
    torch.testing.assert_close(m.rnn_cell(x, h, cell.weight_ih, cell.weight_hh, cell.bias_ih, cell.bias_hh), cell(x, h))


@pytest.mark.parametrize("layers", [1, 2, 3])
def test_l12_rnn_with_cells_matches_nn_rnn(layers):
    m = lecture(12)
    rnn = nn.RNN(4, 6, num_layers=layers).double()
    xs = torch.randn(5, 3, 4, dtype=torch.float64, requires_grad=True)
    h0 = torch.randn(layers, 3, 6, dtype=torch.float64)
    out, hn = m.rnn_with_cells(xs, h0, rnn)
    out_ref, hn_ref = rnn(xs, h0)
    assert out.shape == (5, 3, 6) and hn.shape == (layers, 3, 6)
    torch.testing.assert_close(out, out_ref)
    torch.testing.assert_close(hn, hn_ref)
    g1, = torch.autograd.grad(out.sum() + hn.sum(), xs)
    g2, = torch.autograd.grad(out_ref.sum() + hn_ref.sum(), xs)
    torch.testing.assert_close(g1, g2)


def test_l12_cell_model_forward_equals_nn_rnn_from_zero_state():
    m = lecture(12)
    model = m.CellModel(hidden_size=4)
    rnn = nn.RNN(4, 4)
    with torch.no_grad():
        for name in ("weight_ih", "weight_hh", "bias_ih", "bias_hh"):
            getattr(rnn, f"{name}_l0").copy_(getattr(model.cell, name))
    x = torch.randn(5, 2, 4)
    out = model(x)
    assert out.shape == (5, 2, 4)
    torch.testing.assert_close(out, rnn(x)[0])


# ----------------------------------------------------------------------------- 13 高级 RNN
def test_l13_name_to_codes_strips_accents_and_maps_non_ascii_to_question_mark():
    m = lecture(13)
    assert m.name_to_codes("Li") == [76, 105]
    assert m.name_to_codes("Ábel") == [ord(c) for c in "Abel"]
    assert m.name_to_codes("Müller-Łukasz") == [ord(c) for c in "Muller-?ukasz"]
    assert m.name_to_codes("O'Brien") == [ord(c) for c in "O'Brien"]


def test_l13_make_batch_pads_with_zeros_and_returns_lengths():
    m = lecture(13)
    batch, lengths = m.make_batch(["Li", "Nakamura", "Wu"])
    assert batch.dtype == torch.long and batch.shape == (3, 8)
    assert lengths.tolist() == [2, 8, 2]
    assert batch[1].tolist() == [ord(c) for c in "Nakamura"]
    assert batch[0].tolist() == [ord("L"), ord("i")] + [0] * 6
    batch, lengths = m.make_batch(["Ábel"])
    assert batch.tolist() == [[ord(c) for c in "Abel"]] and lengths.tolist() == [4]


def test_l13_gru_cell_matches_nn_grucell():
    m = lecture(13)
    cell = nn.GRUCell(5, 7).double()
    x, h = torch.randn(4, 5, dtype=torch.float64), torch.randn(4, 7, dtype=torch.float64)
    torch.testing.assert_close(m.gru_cell(x, h, cell.weight_ih, cell.weight_hh, cell.bias_ih, cell.bias_hh), cell(x, h))


@pytest.mark.parametrize("bidirectional", [True, False])
def test_l13_name_classifier_padded_batch_equals_each_name_alone(bidirectional):
    m = lecture(13)
    model = m.NameClassifier(5, hidden_size=8, bidirectional=bidirectional)
    names = ["Li", "Nakamura", "Wo", "Papadopoulos"]
    codes = [torch.tensor([[ord(c) for c in n]]) for n in names]
    lengths = torch.tensor([len(n) for n in names])
    batch = torch.zeros(4, int(lengths.max()), dtype=torch.long)
    for i, c in enumerate(codes):
        batch[i, : c.shape[1]] = c[0]
    with torch.no_grad():
        out = model(batch, lengths)
        ref = []
        for c in codes:  # 单独一个名字：没有补零，不需要 pack
            _, h = model.gru(model.embedding(c))
            ref.append(model.fc(torch.cat([h[-2], h[-1]], dim=1) if bidirectional else h[-1]))
    assert out.shape == (4, 5)
    torch.testing.assert_close(out, torch.cat(ref), atol=1e-5, rtol=1e-5)
