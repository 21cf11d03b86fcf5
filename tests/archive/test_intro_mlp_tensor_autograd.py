"""archive/Introductory learning/02_MLP/02_tensor_autograd.py 的测试：每个原语（含广播、matmul 的 batch/一维情形、
归约、变形、索引、softmax 家族、交叉熵）以及随机表达式的输出与梯度都与 torch.autograd 一致；
错误输入与 PyTorch 一样报错；IDX 解析器（在 tmp_path 里写的小文件）；digits 上的小规模训练。"""

from __future__ import annotations

import gzip
import struct

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import array_shapes, arrays, mutually_broadcastable_shapes

from tests.conftest import load_script

ta = load_script("archive/Introductory learning/02_MLP/02_tensor_autograd.py")
Tensor = ta.Tensor

FLOATS = st.floats(-2.0, 2.0, allow_nan=False, width=64)
SETTINGS = settings(max_examples=40, deadline=None)


def pair(a: np.ndarray):
    return Tensor(a.copy(), requires_grad=True), torch.tensor(a, dtype=torch.float64, requires_grad=True)


def backprop_both(out: Tensor, tout: torch.Tensor, seed: int = 0):
    """用同一个随机上游梯度 w 做反向（等价于 L = Σ out ⊙ w），这样梯度里每个元素都被检查到。"""
    w = np.random.default_rng(seed).standard_normal(out.shape)
    np.testing.assert_allclose(out.data, tout.detach().numpy(), rtol=1e-10, atol=1e-12)
    out.backward(w)
    tout.backward(torch.from_numpy(w))


def assert_grads(ours: list[Tensor], refs: list[torch.Tensor]):
    for o, r in zip(ours, refs):
        ref = np.zeros(o.shape) if r.grad is None else r.grad.numpy()
        got = np.zeros(o.shape) if o.grad is None else o.grad
        assert got.shape == o.shape  # 广播的反向必须把梯度缩回输入形状
        np.testing.assert_allclose(got, ref, rtol=1e-9, atol=1e-10)


# ----------------------------------------------------------------------------- 逐元素二元运算 + 广播
BINARY = {
    "add": lambda a, b: a + b,
    "sub": lambda a, b: a - b,
    "mul": lambda a, b: a * b,
    "div": lambda a, b: a / (b * b + 0.5),
}


@SETTINGS
@given(shapes=mutually_broadcastable_shapes(num_shapes=2, min_dims=0, max_dims=3, max_side=4),
       op=st.sampled_from(sorted(BINARY)), data=st.data())
def test_binary_ops_with_broadcasting(shapes, op, data):
    sa, sb = shapes.input_shapes
    a = data.draw(arrays(np.float64, sa, elements=FLOATS))
    b = data.draw(arrays(np.float64, sb, elements=FLOATS))
    (x, tx), (y, ty) = pair(a), pair(b)
    out, tout = BINARY[op](x, y), BINARY[op](tx, ty)
    assert out.shape == tuple(shapes.result_shape)
    backprop_both(out, tout)
    assert_grads([x, y], [tx, ty])


@SETTINGS
@given(shapes=mutually_broadcastable_shapes(signature=np.matmul.signature, max_dims=2, max_side=4), data=st.data())
def test_matmul_batched_and_vector_cases(shapes, data):
    sa, sb = shapes.input_shapes
    a = data.draw(arrays(np.float64, sa, elements=FLOATS))
    b = data.draw(arrays(np.float64, sb, elements=FLOATS))
    (x, tx), (y, ty) = pair(a), pair(b)
    backprop_both(x @ y, tx @ ty)
    assert_grads([x, y], [tx, ty])


# ----------------------------------------------------------------------------- 一元运算、归约、变形、索引
UNARY = {
    "exp": (lambda a: a.exp(), lambda t: t.exp()),
    "log": (lambda a: (a * a + 0.1).log(), lambda t: (t * t + 0.1).log()),
    "tanh": (lambda a: a.tanh(), lambda t: t.tanh()),
    "relu": (lambda a: a.relu(), lambda t: t.relu()),
    "pow": (lambda a: (a * a + 0.5) ** -0.5, lambda t: (t * t + 0.5) ** -0.5),
    "reshape": (lambda a: a.reshape(-1), lambda t: t.reshape(-1)),
    "T": (lambda a: a.T, lambda t: t.permute(tuple(reversed(range(t.ndim))))),
}


@SETTINGS
@given(a=arrays(np.float64, array_shapes(min_dims=0, max_dims=3, max_side=4), elements=FLOATS),
       op=st.sampled_from(sorted(UNARY)))
def test_unary_ops(a, op):
    (x, tx) = pair(a)
    ours, ref = UNARY[op]
    backprop_both(ours(x), ref(tx))
    assert_grads([x], [tx])


@SETTINGS
@given(a=arrays(np.float64, array_shapes(min_dims=1, max_dims=3, max_side=4), elements=FLOATS),
       data=st.data(), keepdims=st.booleans(), mean=st.booleans())
def test_sum_and_mean_over_axes(a, data, keepdims, mean):
    axes = data.draw(st.lists(st.integers(-a.ndim, a.ndim - 1), unique_by=lambda i: i % a.ndim, max_size=a.ndim))
    (x, tx) = pair(a)
    axis = tuple(axes) if axes else None
    dim = tuple(axes) if axes else tuple(range(a.ndim))
    out = x.mean(axis, keepdims) if mean else x.sum(axis, keepdims)
    tout = tx.mean(dim, keepdim=keepdims) if mean else tx.sum(dim, keepdim=keepdims)
    backprop_both(out, tout)
    assert_grads([x], [tx])


@SETTINGS
@given(a=arrays(np.float64, array_shapes(min_dims=1, max_dims=3, max_side=4), elements=FLOATS), data=st.data())
def test_transpose_with_permutation(a, data):
    perm = data.draw(st.permutations(range(a.ndim)))
    (x, tx) = pair(a)
    backprop_both(x.transpose(*perm), tx.permute(*perm))
    assert_grads([x], [tx])


@SETTINGS
@given(a=arrays(np.float64, array_shapes(min_dims=1, max_dims=3, max_side=5), elements=FLOATS), data=st.data())
def test_fancy_indexing_with_repeated_indices_accumulates(a, data):
    idx = np.array(data.draw(st.lists(st.integers(0, a.shape[0] - 1), min_size=1, max_size=8)))
    (x, tx) = pair(a)
    backprop_both(x[idx], tx[torch.from_numpy(idx)])
    assert_grads([x], [tx])
    (x, tx) = pair(a)
    backprop_both(x[1:, ...] if a.shape[0] > 1 else x[:1], tx[1:, ...] if a.shape[0] > 1 else tx[:1])
    assert_grads([x], [tx])


@SETTINGS
@given(a=arrays(np.float64, array_shapes(min_dims=1, max_dims=3, max_side=5),
                elements=st.floats(-30, 30, allow_nan=False)), data=st.data(), log=st.booleans())
def test_softmax_and_log_softmax(a, data, log):
    axis = data.draw(st.integers(-a.ndim, a.ndim - 1))
    (x, tx) = pair(a)
    out = x.log_softmax(axis) if log else x.softmax(axis)
    tout = tx.log_softmax(axis) if log else tx.softmax(axis)
    backprop_both(out, tout)
    assert_grads([x], [tx])


@SETTINGS
@given(n=st.integers(1, 6), c=st.integers(2, 7), data=st.data())
def test_cross_entropy_matches_pytorch(n, c, data):
    logits = data.draw(arrays(np.float64, (n, c), elements=st.floats(-10, 10, allow_nan=False)))
    targets = np.array(data.draw(st.lists(st.integers(0, c - 1), min_size=n, max_size=n)), dtype=np.int64)
    (x, tx) = pair(logits)
    loss = ta.cross_entropy(x, targets)
    tloss = F.cross_entropy(tx, torch.from_numpy(targets))
    assert abs(loss.item() - tloss.item()) < 1e-10
    loss.backward()
    tloss.backward()
    assert_grads([x], [tx])
    # 梯度 = (softmax − onehot)/N
    p = np.exp(logits - logits.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    np.testing.assert_allclose(x.grad, (p - np.eye(c)[targets]) / n, atol=1e-12)


# ----------------------------------------------------------------------------- 随机表达式（多个运算链起来、含广播）
CHAIN_UNARY = {
    "tanh": (lambda a: a.tanh(), lambda t: t.tanh()),
    "exp": (lambda a: a.tanh().exp(), lambda t: t.tanh().exp()),
    "log": (lambda a: (a * a + 0.5).log(), lambda t: (t * t + 0.5).log()),
    "relu": (lambda a: a.relu(), lambda t: t.relu()),
    "softmax": (lambda a: a.softmax(-1), lambda t: t.softmax(-1)),
    "log_softmax": (lambda a: a.log_softmax(-1), lambda t: t.log_softmax(-1)),
    "mean_keep": (lambda a: a.mean(-1, keepdims=True), lambda t: t.mean(-1, keepdim=True)),
    "sq": (lambda a: a**2, lambda t: t**2),
}


@settings(max_examples=60, deadline=None)
@given(shapes=mutually_broadcastable_shapes(num_shapes=3, min_dims=1, max_dims=3, max_side=3),
       program=st.lists(st.one_of(st.tuples(st.sampled_from(sorted(CHAIN_UNARY)), st.integers(0, 50)),
                                  st.tuples(st.sampled_from(sorted(BINARY)), st.integers(0, 50), st.integers(0, 50))),
                        min_size=1, max_size=10),
       data=st.data())
def test_random_expressions_match_torch_autograd(shapes, program, data):
    inputs = [data.draw(arrays(np.float64, s, elements=FLOATS)) for s in shapes.input_shapes]
    pairs = [pair(a) for a in inputs]
    pool, tpool = [p[0] for p in pairs], [p[1] for p in pairs]
    for instr in program:
        if instr[0] in CHAIN_UNARY:
            f, g = CHAIN_UNARY[instr[0]]
            i = instr[1] % len(pool)
            pool.append(f(pool[i]))
            tpool.append(g(tpool[i]))
        else:
            i, j = instr[1] % len(pool), instr[2] % len(pool)
            pool.append(BINARY[instr[0]](pool[i], pool[j]))
            tpool.append(BINARY[instr[0]](tpool[i], tpool[j]))
    out, tout = pool[-1].sum(), tpool[-1].sum()  # 标量输出：backward() 不带参数
    assert abs(out.item() - tout.item()) <= 1e-9 * max(1.0, abs(tout.item()))
    out.backward()
    tout.backward()
    assert_grads([p[0] for p in pairs], [p[1] for p in pairs])


def test_reflected_ops_with_numbers_and_ndarrays():
    a = np.array([[0.5, -1.5, 2.0]])
    (x, tx) = pair(a)
    c = np.array([[1.0], [2.0]])  # ndarray 在左边：靠 __array_priority__ 让 numpy 把运算交给 Tensor
    out = (c + x) * (2.0 - x) / (1.0 + x * x) + 3 * x - c
    tout = (torch.from_numpy(c) + tx) * (2.0 - tx) / (1.0 + tx * tx) + 3 * tx - torch.from_numpy(c)
    assert isinstance(out, Tensor) and out.shape == (2, 3)
    backprop_both(out, tout)
    assert_grads([x], [tx])


# ----------------------------------------------------------------------------- 梯度语义
def test_leaf_grads_accumulate_across_backward_calls_like_pytorch():
    (x, tx) = pair(np.array([1.0, -2.0, 3.0]))
    for _ in range(2):
        (x * x).sum().backward()
        (tx * tx).sum().backward()
    np.testing.assert_allclose(x.grad, tx.grad.numpy())
    np.testing.assert_allclose(x.grad, 4 * np.array([1.0, -2.0, 3.0]))


def test_no_graph_without_requires_grad_and_float32_is_kept():
    a = Tensor(np.ones((2, 2), dtype=np.float32))
    out = a * 2 + 1
    assert not out.requires_grad and out._backward is None
    assert out.data.dtype == np.float32


# ----------------------------------------------------------------------------- 错误输入
def test_errors_match_pytorch_behaviour():
    x = Tensor(np.ones((2, 3)), requires_grad=True)
    with pytest.raises(ValueError, match=r"\(2, 3\) 与 \(4,\) 无法广播"):
        x + Tensor(np.ones(4))
    with pytest.raises(RuntimeError):  # PyTorch 对同样的形状也报错
        torch.ones(2, 3) + torch.ones(4)
    with pytest.raises(ValueError, match="matmul"):
        x @ Tensor(np.ones((2, 3)))
    with pytest.raises(RuntimeError, match="only for scalar outputs"):
        (x * 2).backward()
    with pytest.raises(RuntimeError, match="only for scalar outputs"):
        (torch.ones(2, 3, requires_grad=True) * 2).backward()
    with pytest.raises(ValueError, match="grad 的形状"):
        (x * 2).backward(np.ones(3))
    with pytest.raises(RuntimeError, match="requires_grad=True"):
        Tensor(np.ones(3)).sum().backward()
    with pytest.raises(ValueError, match="reshape"):
        x.reshape(4, 2)
    with pytest.raises(IndexError, match="axis=2"):
        x.sum(axis=2)
    with pytest.raises(IndexError, match=r"\[0, 2\]"):
        ta.cross_entropy(x, np.array([0, 3]))
    with pytest.raises(TypeError, match="常数指数"):
        x ** x


# ----------------------------------------------------------------------------- IDX 解析器
def write_idx(path, arr: np.ndarray, code: int, gz: bool = False) -> None:
    dtype = ta.IDX_DTYPES[code]
    raw = bytes([0, 0, code, arr.ndim]) + struct.pack(f">{arr.ndim}I", *arr.shape) + arr.astype(dtype).tobytes()
    if gz:
        raw = gzip.compress(raw)
    path.write_bytes(raw)


@pytest.mark.parametrize("code", [0x08, 0x09, 0x0B, 0x0C, 0x0D, 0x0E])
@pytest.mark.parametrize("gz", [False, True])
def test_idx_roundtrip_all_types(tmp_path, code, gz):
    rng = np.random.default_rng(code)
    info = np.iinfo(ta.IDX_DTYPES[code]) if ta.IDX_DTYPES[code].kind in "iu" else None
    arr = (rng.integers(info.min, info.max, (3, 4, 5), endpoint=True) if info else rng.standard_normal((3, 4, 5)))
    arr = arr.astype(ta.IDX_DTYPES[code].newbyteorder("="))
    path = tmp_path / ("x-idx3-ubyte" + (".gz" if gz else ""))
    write_idx(path, arr, code, gz)
    got = ta.read_idx(path)
    assert got.shape == arr.shape and got.dtype.isnative
    np.testing.assert_array_equal(got, arr)


def test_idx_rejects_bad_files(tmp_path):
    with pytest.raises(ValueError, match="不是 IDX"):
        ta.parse_idx(b"<html>404</html>")
    with pytest.raises(ValueError, match="类型码"):
        ta.parse_idx(bytes([0, 0, 0x42, 1, 0, 0, 0, 0]))
    good = bytes([0, 0, 8, 2]) + struct.pack(">2I", 2, 3) + bytes(range(6))
    assert ta.parse_idx(good).tolist() == [[0, 1, 2], [3, 4, 5]]
    with pytest.raises(ValueError, match="截断"):
        ta.parse_idx(good[:-1])


def test_load_mnist_from_directory_and_missing_message(tmp_path):
    with pytest.raises(FileNotFoundError, match="train-images-idx3-ubyte") as err:
        ta.load_mnist(tmp_path)
    assert str(tmp_path) in str(err.value)
    rng = np.random.default_rng(0)
    for stem, n, gz in (("train", 6, True), ("t10k", 4, False)):
        write_idx(tmp_path / f"{stem}-images-idx3-ubyte{'.gz' if gz else ''}",
                  rng.integers(0, 256, (n, 28, 28)), 0x08, gz)
        write_idx(tmp_path / f"{stem}-labels-idx1-ubyte{'.gz' if gz else ''}", rng.integers(0, 10, n), 0x08, gz)
    Xtr, ytr, Xte, yte = ta.load_mnist(tmp_path)
    assert Xtr.shape == (6, 784) and Xte.shape == (4, 784) and ytr.shape == (6,) and yte.dtype == np.int64
    assert 0.0 <= Xtr.min() and Xtr.max() <= 1.0


# ----------------------------------------------------------------------------- 训练
def test_digits_training_matches_pytorch_and_learns():
    Xtr, ytr, Xte, yte = ta.digits_split()
    model = ta.MLP([64, 32, 10], seed=0)
    reference = ta.torch_mlp_from(model)
    losses = ta.train(model, Xtr[:320], ytr[:320], epochs=1, batch_size=32)
    losses_ref = ta.train_torch(reference, Xtr[:320], ytr[:320], epochs=1, batch_size=32)
    np.testing.assert_allclose(losses, losses_ref, rtol=1e-10)
    ta.train(model, Xtr, ytr, epochs=3)
    assert ta.accuracy(model, Xte, yte) >= 0.85  # 全量 30 个 epoch 的 main() 达到 ≥ 95%


def test_main_trains_on_mnist_files_found_under_data_dir(tmp_path, monkeypatch, capsys):
    # 端到端：data/mnist/ 下放着（极小的）IDX 文件时，--dataset mnist 走通读取 → 训练 → 与 PyTorch 对照 → 出图
    monkeypatch.setenv("LLM_DATA_DIR", str(tmp_path))
    root = tmp_path / "mnist"
    root.mkdir()
    rng = np.random.default_rng(1)
    for stem, n in (("train", 64), ("t10k", 16)):
        write_idx(root / f"{stem}-images-idx3-ubyte.gz", rng.integers(0, 256, (n, 28, 28)), 0x08, gz=True)
        write_idx(root / f"{stem}-labels-idx1-ubyte.gz", rng.integers(0, 10, n), 0x08, gz=True)
    result = ta.main(["--dataset", "mnist", "--epochs", "1", "--hidden", "16"])
    assert result["max_loss_diff"] < 1e-8 and 0.0 <= result["test_acc"] <= 1.0
    assert "(64, 784)" in capsys.readouterr().out
