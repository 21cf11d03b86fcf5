"""刘二《PyTorch 深度学习实践》13 讲（archive/liu2_lecture/lectureNN_*.py）：
每讲的手写部分与 PyTorch 参照一致（输出与梯度），学习结果有意义（缩小规模、放宽界限），
真实数据的读取函数在 tmp_path 里手写的小文件上解析正确、缺文件时报出清楚的错误。"""

from __future__ import annotations

import gzip
import struct

import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.data import DataLoader, RandomSampler

from tests.conftest import LIU2_DIR
from tests.conftest import liu2_lecture as lecture


def test_thirteen_lectures_in_course_order():
    names = sorted(p.stem for p in LIU2_DIR.glob("lecture*.py"))
    assert names == [
        "lecture01_overview",
        "lecture02_linear_model",
        "lecture03_gradient_descent",
        "lecture04_back_propagation",
        "lecture05_linear_regression_torch",
        "lecture06_logistic_regression",
        "lecture07_multiple_dimension_input",
        "lecture08_dataset_dataloader",
        "lecture09_softmax_classifier",
        "lecture10_basic_cnn",
        "lecture11_advanced_cnn",
        "lecture12_basic_rnn",
        "lecture13_advanced_rnn",
    ]
    assert len(lecture(1).LECTURES) == 13


# ----------------------------------------------------------------------------- 01 概述
def test_l01_lstsq_matches_torch_and_overfitting_appears():
    m = lecture(1)
    x_tr, y_tr = m.make_data(m.N_TRAIN, seed=0)
    x_te, y_te = m.make_data(300, seed=1)
    for d in (1, 3, 6):
        ref = torch.linalg.lstsq(torch.from_numpy(m.design_matrix(x_tr, d)), torch.from_numpy(y_tr)[:, None]).solution
        np.testing.assert_allclose(m.fit_polynomial(x_tr, y_tr, d), ref[:, 0].numpy(), atol=1e-8)
    train_err, test_err = m.degree_sweep(x_tr, y_tr, x_te, y_te, 11)
    assert all(b <= a + 1e-9 for a, b in zip(train_err, train_err[1:]))
    best = int(np.argmin(test_err))
    assert 0 < best < 11 and test_err[11] > 2 * test_err[best]
    with pytest.raises(ValueError, match="至少"):
        m.fit_polynomial(x_tr[:3], y_tr[:3], 5)


# ----------------------------------------------------------------------------- 02 线性模型
def test_l02_grid_search_finds_closed_form():
    m = lecture(2)
    w, losses = m.grid_search_w(m.X_DATA, m.Y_DATA, np.arange(0, 4.0001, 0.1))
    assert abs(w - 2.0) < 1e-9 and losses.min() < 1e-20
    x = np.array([0.5, 1.0, 2.5, 4.0])
    w2, b2, surface = m.grid_search_wb(x, -1.5 * x + 0.7, np.arange(-3, 0.0001, 0.05), np.arange(-1, 2.0001, 0.05))
    assert abs(w2 + 1.5) < 0.03 and abs(b2 - 0.7) < 0.03
    assert surface[3, 7] == pytest.approx(m.mse(x, -1.5 * x + 0.7, -3 + 3 * 0.05, -1 + 7 * 0.05))
    with pytest.raises(ValueError, match="形状"):
        m.mse(x, x[:2], 1.0)


# ----------------------------------------------------------------------------- 03 梯度下降
def test_l03_gradient_and_trajectory_match_torch():
    m = lecture(3)
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=7), rng.normal(size=7)
    for w in rng.normal(size=5) * 3:
        wt = torch.tensor(w, requires_grad=True)
        ((torch.from_numpy(x) * wt - torch.from_numpy(y)) ** 2).mean().backward()
        assert m.gradient(x, y, w) == pytest.approx(wt.grad.item(), abs=1e-12)
    w_gd, hist = m.gradient_descent(m.X_DATA, m.Y_DATA, epochs=40)
    w_ref, hist_ref = m.torch_gradient_descent(m.X_DATA, m.Y_DATA, epochs=40)
    np.testing.assert_allclose(hist, hist_ref, atol=1e-12)
    assert abs(w_gd - w_ref) < 1e-12
    w_sgd, _ = m.stochastic_gradient_descent(m.X_DATA, m.Y_DATA, epochs=40)
    assert abs(w_sgd - 2) < abs(w_gd - 2) < 0.5
    with pytest.raises(ValueError, match="发散"):
        m.gradient_descent(m.X_DATA, m.Y_DATA, lr=0.5)


# ----------------------------------------------------------------------------- 04 反向传播
@pytest.mark.parametrize("n,d_in,hidden,d_out", [(1, 1, 1, 1), (5, 3, 4, 2), (16, 7, 9, 3)])
def test_l04_manual_backprop_matches_autograd(n, d_in, hidden, d_out):
    m = lecture(4)
    g = torch.Generator().manual_seed(n + d_in)
    r = lambda *s: torch.randn(*s, generator=g, dtype=torch.float64)  # noqa: E731
    x, y, params = r(n, d_in), r(n, d_out), [r(hidden, d_in), r(hidden), r(d_out, hidden), r(d_out)]
    for ours, ref in zip(m.two_layer_manual(x, y, *params), m.two_layer_autograd(x, y, *params)):
        torch.testing.assert_close(ours, ref, atol=1e-12, rtol=1e-12)
    two, one = m.linear_layers_collapse(x, *params)
    torch.testing.assert_close(two, one, atol=1e-12, rtol=1e-12)
    with pytest.raises(ValueError, match="特征"):
        m.two_layer_manual(r(n, d_in + 1), y, *params)


def test_l04_quadratic_graph_gradients_and_training():
    m = lecture(4)
    for x, y, w1, w2, b in [(2.0, 4.0, 1.0, 1.0, 1.0), (-1.5, 0.3, 0.2, -2.0, 0.7)]:
        ws = [torch.tensor(v, dtype=torch.float64, requires_grad=True) for v in (w1, w2, b)]
        loss = (ws[0] * x**2 + ws[1] * x + ws[2] - y) ** 2
        loss.backward()
        out = m.quadratic_forward_backward(x, y, w1, w2, b)
        assert out[0] == pytest.approx(loss.item())
        assert out[1:] == pytest.approx([w.grad.item() for w in ws])
    history, _ = m.train_quadratic(epochs=300)  # 内部每一步都断言手推梯度 = autograd
    assert history[-1] < history[0] / 100


# ----------------------------------------------------------------------------- 05 PyTorch 线性回归
def test_l05_mse_and_sgd_step_match_torch():
    m = lecture(5)
    pred, target = torch.randn(6, 1), torch.randn(6, 1)
    for red in ("mean", "sum"):
        torch.testing.assert_close(m.mse(pred, target, red), nn.MSELoss(reduction=red)(pred, target))
    with pytest.raises(ValueError, match="reduction"):
        m.mse(pred, target, "max")
    a, b = m.LinearModel(), m.LinearModel()
    b.load_state_dict(a.state_dict())
    for model in (a, b):
        m.mse(model(m.X_DATA), m.Y_DATA, "sum").backward()
    m.manual_sgd_step(a, 0.01)
    torch.optim.SGD(b.parameters(), lr=0.01).step()
    for p, q in zip(a.parameters(), b.parameters()):
        torch.testing.assert_close(p, q, atol=1e-6, rtol=0)
    with pytest.raises(ValueError, match=r"\(N, 1\)"):
        a(torch.ones(3))


@pytest.mark.parametrize("name", ["SGD", "Adam", "LBFGS", "Rprop", "Adagrad"])
def test_l05_optimizers_fit_y_equals_2x(name):
    m = lecture(5)
    model, history = m.train(name, epochs=400)
    assert history[-1] < 1e-2 * history[0]
    assert model(torch.tensor([[4.0]])).item() == pytest.approx(8.0, abs=0.3)


# ----------------------------------------------------------------------------- 06 逻辑回归
def test_l06_bce_matches_bceloss_values_and_grads():
    m = lecture(6)
    p = torch.tensor([0.0, 1e-30, 0.2, 0.5, 0.9, 1.0, 1.0, 0.0, 0.3])
    y = torch.tensor([1.0, 1.0, 0.0, 1.0, 1.0, 0.0, 1.0, 0.0, 0.6])
    for red in ("mean", "sum"):
        torch.testing.assert_close(m.bce(p, y, red), nn.BCELoss(reduction=red)(p, y))
    q = torch.rand(20, dtype=torch.float64) * 0.98 + 0.01
    t = (torch.rand(20, dtype=torch.float64) > 0.5).double()
    q1, q2 = q.clone().requires_grad_(), q.clone().requires_grad_()
    m.bce(q1, t).backward()
    F.binary_cross_entropy(q2, t).backward()
    torch.testing.assert_close(q1.grad, q2.grad)
    z = torch.randn(30) * 40
    torch.testing.assert_close(m.bce_with_logits(z, t[:1].expand(30).float()),
                               F.binary_cross_entropy_with_logits(z, t[:1].expand(30).float()))
    torch.testing.assert_close(m.sigmoid(z), torch.sigmoid(z))
    with pytest.raises(ValueError, match="概率"):
        m.bce(torch.tensor([1.5]), torch.tensor([1.0]))


def test_l06_learns_boundary_between_2_and_3_hours():
    m = lecture(6)
    model, history = m.train(epochs=1500)
    w, b = model.linear.weight.item(), model.linear.bias.item()
    assert history[-1] < history[0] and 2.0 < -b / w < 3.0


# ----------------------------------------------------------------------------- 07 多维输入
def test_l07_diabetes_loader_parses_tiny_gz(tmp_path):
    m = lecture(7)
    path = tmp_path / "diabetes.csv.gz"
    with gzip.open(path, "wt") as f:
        f.write("-0.29,0.48,0.18,-0.29,0,0.0,-0.53,-0.03,0\n-0.88,-0.14,0.08,-0.41,0,-0.2,-0.76,-0.66,1\n")
    X, y = m.load_diabetes_csv(path)
    assert X.shape == (2, 8) and X.dtype == np.float32 and y.tolist() == [0.0, 1.0]
    assert X[1, 0] == pytest.approx(-0.88)
    with pytest.raises(FileNotFoundError, match="diabetes.csv.gz"):
        m.load_diabetes_csv(tmp_path / "missing.csv.gz")
    bad = tmp_path / "bad.csv"
    bad.write_text("1,2,3\n4,5,6\n")
    with pytest.raises(ValueError, match="0/1"):
        m.load_diabetes_csv(bad)


def test_l07_batched_equals_per_sample_and_learns():
    m = lecture(7)
    X, y = m.load_offline()
    X_tr, y_tr, X_te, y_te = m.split_and_standardize(X, y)
    model = m.MultiDimModel(X.shape[1])
    with torch.no_grad():
        torch.testing.assert_close(model(X_tr[:10]), m.forward_per_sample(model, X_tr[:10]))
    _, losses, test_acc = m.train(X_tr, y_tr, X_te, y_te, epochs=150)
    assert losses[-1] < losses[0] and test_acc[-1][1] > 0.9
    with pytest.raises(ValueError, match="输入应为"):
        model(torch.zeros(2, 5))


# ----------------------------------------------------------------------------- 08 Dataset / DataLoader
def test_l08_titanic_loader_and_features(tmp_path):
    m = lecture(8)
    csv = tmp_path / "train.csv"
    csv.write_text(
        "PassengerId,Survived,Pclass,Name,Sex,Age,SibSp,Parch,Ticket,Fare,Cabin,Embarked\n"
        '1,0,3,"Braund, Mr. Owen Harris",male,22,1,0,A/5 21171,7.25,,S\n'
        '2,1,1,"Cumings, Mrs. John",female,38,1,0,PC 17599,71.2833,C85,C\n'
        '3,1,3,"Heikkinen, Miss. Laina",female,,0,0,STON/O2. 3101282,7.925,,\n'
    )
    df = m.load_titanic_csv(csv)
    X, names = m.titanic_features(df)
    assert X.shape == (3, len(names)) and not np.isnan(X).any()
    col = {n: i for i, n in enumerate(names)}
    assert X[:, col["is_female"]].tolist() == [0, 1, 1]
    assert X[2, col["age_missing"]] == 1 and X[2, col["age"]] == pytest.approx(30 / 80)  # 中位数 (22+38)/2
    assert X[2, col["embarked_S"]] == 1  # 缺失的港口填 S
    onehot = [c for c in names if c.startswith("pclass_")]
    assert (X[:, [col[c] for c in onehot]].sum(1) == 1).all()
    with pytest.raises(FileNotFoundError, match="train.csv"):
        m.load_titanic_csv(tmp_path / "nope.csv")
    (tmp_path / "bad.csv").write_text("a,b\n1,2\n")
    with pytest.raises(ValueError, match="缺少列"):
        m.load_titanic_csv(tmp_path / "bad.csv")


def test_l08_simple_loader_matches_torch_dataloader():
    m = lecture(8)
    df = m.synthetic_titanic(101, seed=3)
    assert df.equals(m.synthetic_titanic(101, seed=3)) and df["Age"].isna().any()
    X, _ = m.titanic_features(df)
    ds = m.TitanicDataset(X, df["Survived"].to_numpy())
    for bs, drop in ((1, False), (10, False), (10, True), (200, False)):
        ours, ref = m.SimpleDataLoader(ds, bs, drop_last=drop), DataLoader(ds, bs, drop_last=drop)
        assert len(ours) == len(ref) and m.batches_equal(ours, ref)
    ours = m.SimpleDataLoader(ds, 16, shuffle=True, generator=torch.Generator().manual_seed(5))
    ref = DataLoader(ds, 16, sampler=RandomSampler(ds, generator=torch.Generator().manual_seed(5)))
    assert m.batches_equal(ours, ref)
    seen = torch.cat([x for x, _ in m.SimpleDataLoader(ds, 16, shuffle=True)])
    assert sorted(map(tuple, seen.tolist())) == sorted(map(tuple, ds.x.tolist()))  # 每个样本恰好一次
    with pytest.raises(ValueError, match="batch_size"):
        m.SimpleDataLoader(ds, 0)


def test_l08_titanic_training_beats_majority():
    m = lecture(8)
    train_set, test_set, _ = m.make_datasets(m.synthetic_titanic())
    _, history = m.train(train_set, test_set, epochs=8)
    majority = max(test_set.y.mean().item(), 1 - test_set.y.mean().item())
    assert history[-1][0] < history[0][0] and history[-1][1] > majority + 0.05


# ----------------------------------------------------------------------------- MNIST 读取（09、10、11 各自带一份）
def _write_idx(path, array: np.ndarray, compress: bool) -> None:
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(struct.pack(">i", d) for d in array.shape)
    data = header + array.astype(np.uint8).tobytes()
    path.write_bytes(gzip.compress(data) if compress else data)


@pytest.mark.parametrize("n", [9, 10, 11])
def test_mnist_idx_loader(n, tmp_path):
    m = lecture(n)
    rng = np.random.default_rng(n)
    arrays = [rng.integers(0, 256, (3, 28, 28)), rng.integers(0, 10, 3), rng.integers(0, 256, (2, 28, 28)),
              rng.integers(0, 10, 2)]
    for i, (stem, arr) in enumerate(zip(m.MNIST_FILES, arrays)):
        _write_idx(tmp_path / (stem + (".gz" if i % 2 else "")), arr, compress=bool(i % 2))
    loaded = m.load_mnist(tmp_path)
    for got, want in zip(loaded, arrays):
        assert got.dtype == np.uint8 and np.array_equal(got, want)
    (tmp_path / "bad").write_bytes(b"\x00\x00\x0d\x01\x00\x00\x00\x01\x00\x00\x00\x00")
    with pytest.raises(ValueError, match="IDX"):
        m.read_idx(tmp_path / "bad")
    trunc = tmp_path / "trunc"
    _write_idx(trunc, np.zeros((4, 2), np.uint8), compress=False)
    trunc.write_bytes(trunc.read_bytes()[:-3])
    with pytest.raises(ValueError, match="不完整"):
        m.read_idx(trunc)
    with pytest.raises(FileNotFoundError, match="data/mnist|IDX"):
        m.load_mnist(tmp_path / "empty")


# ----------------------------------------------------------------------------- 09 softmax
@pytest.mark.parametrize("scale", [1.0, 50.0])
def test_l09_softmax_nll_ce_match_torch(scale):
    m = lecture(9)
    g = torch.Generator().manual_seed(int(scale))
    z = torch.randn(17, 10, generator=g, dtype=torch.float64) * scale
    y = torch.randint(0, 10, (17,), generator=g)
    torch.testing.assert_close(m.softmax(z), torch.softmax(z, -1))
    torch.testing.assert_close(m.log_softmax(z), torch.log_softmax(z, -1))
    zl = z.clone().requires_grad_()
    ref = nn.CrossEntropyLoss()(zl, y)
    ref.backward()
    torch.testing.assert_close(m.cross_entropy(z, y), ref.detach())
    torch.testing.assert_close(m.cross_entropy_grad(z, y), zl.grad)
    ours = z.clone().requires_grad_()
    m.cross_entropy(ours, y).backward()
    torch.testing.assert_close(ours.grad, zl.grad)
    with pytest.raises(TypeError, match="类别下标"):
        m.nll_loss(torch.log_softmax(z, -1), F.one_hot(y, 10).double())
    with pytest.raises(ValueError, match="取值"):
        m.nll_loss(torch.log_softmax(z, -1), y + 10)


def test_l09_mlp_learns_digits():
    m = lecture(9)
    train_set, test_set, _ = m.load_data()
    history = m.train(m.SoftmaxMLP(64, (128, 64)), train_set, test_set, epochs=6)
    assert history[-1][0] < history[0][0] and history[-1][1] > 0.75  # 10 类，随机猜是 0.1


# ----------------------------------------------------------------------------- 10 基础 CNN
@pytest.mark.parametrize("h,k,s,p,d", [(28, 5, 1, 0, 1), (28, 3, 1, 1, 1), (32, 3, 2, 1, 1), (17, 4, 3, 2, 1),
                                       (20, 3, 1, 2, 2), (7, 7, 1, 0, 1), (9, 2, 2, 0, 1)])
def test_l10_output_size_formula(h, k, s, p, d):
    m = lecture(10)
    out = nn.Conv2d(1, 1, k, stride=s, padding=p, dilation=d)(torch.zeros(1, 1, h, h + 1))
    assert out.shape[-2:] == (m.conv_output_size(h, k, s, p, d), m.conv_output_size(h + 1, k, s, p, d))


def test_l10_unfold_conv_matches_conv2d_and_errors():
    m = lecture(10)
    for s, p, d in ((1, 0, 1), (2, 1, 1), (1, 2, 2), (3, 0, 1)):
        x = torch.randn(2, 3, 10, 8, dtype=torch.float64, requires_grad=True)
        w = torch.randn(5, 3, 3, 3, dtype=torch.float64, requires_grad=True)
        b = torch.randn(5, dtype=torch.float64, requires_grad=True)
        ours, ref = m.conv2d_unfold(x, w, b, s, p, d), F.conv2d(x, w, b, stride=s, padding=p, dilation=d)
        torch.testing.assert_close(ours, ref)
        up = torch.randn_like(ref)
        for g1, g2 in zip(torch.autograd.grad(ours, (x, w, b), up), torch.autograd.grad(ref, (x, w, b), up)):
            torch.testing.assert_close(g1, g2)
        small = (x[:1, :2, :6, :5].detach().requires_grad_(), w[:2, :2].detach().requires_grad_(), b[:2].detach().requires_grad_())
        assert torch.autograd.gradcheck(lambda x, w, b: m.conv2d_unfold(x, w, b, s, p, d), small)
    with pytest.raises(ValueError, match="通道"):
        m.conv2d_unfold(torch.randn(1, 2, 5, 5), torch.randn(4, 3, 3, 3))
    with pytest.raises(ValueError, match="小于卷积核"):
        m.conv_output_size(3, 5)
    assert m.BasicCNN(28, 5, 0).flat_features == 320 and m.BasicCNN(8, 3, 1).flat_features == 80
    assert m.BasicCNN(28)(torch.zeros(2, 1, 28, 28)).shape == (2, 10)


@pytest.mark.slow
def test_l10_cnn_learns_digits():
    m = lecture(10)
    train_set, test_set, _ = m.load_data()
    torch.manual_seed(0)
    history = m.train(m.BasicCNN(8, 3, 1), train_set, test_set, epochs=8)
    assert history[-1][1] > 0.9


# ----------------------------------------------------------------------------- 11 高级 CNN
def test_l11_blocks_shapes_identity_and_gradient_flow():
    m = lecture(11)
    conv = nn.Conv2d(5, 3, 1).double()
    x = torch.randn(2, 5, 4, 6, dtype=torch.float64)
    torch.testing.assert_close(m.conv1x1_as_linear(x, conv.weight, conv.bias), conv(x))
    assert m.conv_mults(28, 28, 192, 32, 5) == 120_422_400
    assert m.conv_mults(28, 28, 192, 16, 1) + m.conv_mults(28, 28, 16, 32, 5) == 12_443_648
    block = m.InceptionA(20)
    out = block(torch.randn(3, 20, 7, 7))
    assert out.shape == (3, 88, 7, 7)
    out.sum().backward()
    assert all(p.grad.abs().sum() > 0 for p in block.parameters())
    rb = m.ResidualBlock(3)
    nn.init.zeros_(rb.conv2.weight)
    nn.init.zeros_(rb.conv2.bias)
    xr = torch.randn(2, 3, 5, 5)
    torch.testing.assert_close(rb(xr), F.relu(xr))
    plain, res = m.input_grad_norms(depth=12, residual=False), m.input_grad_norms(depth=12, residual=True)
    assert plain[0] / plain[-1] < 1e-2 and res[0] / res[-1] > 0.1
    for cls, size, k, p, fc_in in ((m.InceptionNet, 28, 5, 0, 1408), (m.ResNet, 28, 5, 0, 512),
                                   (m.InceptionNet, 8, 3, 1, 352), (m.ResNet, 8, 3, 1, 128)):
        net = cls(size, k, p)
        assert net.fc.in_features == fc_in and net(torch.zeros(2, 1, size, size)).shape == (2, 10)
    with pytest.raises(ValueError, match="太小"):
        m.ResNet(8, 5, 0)


@pytest.mark.slow
def test_l11_resnet_learns_digits():
    m = lecture(11)
    train_set, test_set, _ = m.load_data()
    torch.manual_seed(0)
    accs = m.train(m.ResNet(8, 3, 1), train_set, test_set, epochs=5)
    assert accs[-1] > 0.85


# ----------------------------------------------------------------------------- 12 基础 RNN
@pytest.mark.parametrize("layers", [1, 2, 3])
def test_l12_cell_loop_equals_nn_rnn(layers):
    m = lecture(12)
    cell = nn.RNNCell(4, 6).double()
    x, h = torch.randn(3, 4, dtype=torch.float64), torch.randn(3, 6, dtype=torch.float64)
    torch.testing.assert_close(m.rnn_cell(x, h, cell.weight_ih, cell.weight_hh, cell.bias_ih, cell.bias_hh), cell(x, h))
    rnn = nn.RNN(4, 6, num_layers=layers).double()
    xs, h0 = torch.randn(5, 3, 4, dtype=torch.float64, requires_grad=True), torch.randn(layers, 3, 6, dtype=torch.float64)
    out, hn = m.rnn_with_cells(xs, h0, rnn)
    out_ref, hn_ref = rnn(xs, h0)
    torch.testing.assert_close(out, out_ref)
    torch.testing.assert_close(hn, hn_ref)
    g1, = torch.autograd.grad(out.sum(), xs)
    g2, = torch.autograd.grad(out_ref.sum(), xs)
    torch.testing.assert_close(g1, g2)


def test_l12_hello_to_ohlol():
    m = lecture(12)
    pred, history = m.train_hello("embedding", epochs=40)
    assert pred == "ohlol" and history[-1] < 0.1
    assert m.train_hello("cell", epochs=3)[1] == m.train_hello("rnn", epochs=3)[1]
    pred, _, _ = m.train_with_restarts("cell", restarts=4, epochs=100)
    assert pred == "ohlol"
    with pytest.raises(ValueError, match="字符表"):
        m.encode("hey")


# ----------------------------------------------------------------------------- 13 高级 RNN
def test_l13_gru_cell_matches_torch():
    m = lecture(13)
    cell = nn.GRUCell(5, 7).double()
    x, h = torch.randn(4, 5, dtype=torch.float64), torch.randn(4, 7, dtype=torch.float64)
    torch.testing.assert_close(m.gru_cell(x, h, cell.weight_ih, cell.weight_hh, cell.bias_ih, cell.bias_hh), cell(x, h))


def test_l13_names_file_parser(tmp_path):
    m = lecture(13)
    rows = [("Adsit", "Czech"), ("Ábel", "Spanish"), ("O'Brien", "Irish")]
    text = "".join(f"{n},{c}\n" for n, c in rows)
    (tmp_path / "names_train.csv.gz").write_bytes(gzip.compress(text.encode()))
    (tmp_path / "names_test.csv").write_text(text + "\n")
    assert m.read_names_file(tmp_path / "names_train.csv.gz") == rows
    assert m.read_names_file(tmp_path / "names_test.csv") == rows
    assert m.name_to_codes("Ábel") == [ord(c) for c in "Abel"]
    (tmp_path / "bad.csv").write_text("Adsit\n")
    with pytest.raises(ValueError, match="第 1 行"):
        m.read_names_file(tmp_path / "bad.csv")
    with pytest.raises(FileNotFoundError, match="names_train.csv.gz"):
        m.read_names_file(tmp_path / "missing.csv.gz")


def test_l13_generated_names_packing_and_learning():
    m = lecture(13)
    rows = m.generate_names(per_language=40, seed=1)
    assert rows == m.generate_names(per_language=40, seed=1)
    assert {c for _, c in rows} == set(m.SYLLABLE_PATTERNS) and len({n for n, _ in rows}) > 0.9 * len(rows)
    idx = np.random.default_rng(0).permutation(len(rows))
    train_rows, test_rows = [rows[i] for i in idx[60:]], [rows[i] for i in idx[:60]]
    model, classes, history = m.train(train_rows, test_rows, epochs=4)
    names = ["Li", "Nakamura", "Papadopoulos", "Wo"]
    with torch.no_grad():
        batched = model(*m.make_batch(names))
        single = torch.cat([model(*m.make_batch([n])) for n in names])
    torch.testing.assert_close(batched, single, atol=1e-5, rtol=1e-5)  # 补零不影响结果
    assert history[-1][0] < history[0][0] and history[-1][1] > 0.6  # 8 类，随机猜 0.125
