"""archive/Introductory learning/02_MLP/01_micrograd.py 的测试：随机表达式的值与梯度与 torch.autograd 一致、
梯度累加、深图不爆递归、MLP 梯度与 PyTorch 一致、训练降低 loss、错误输入的报错。"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.conftest import load_script

mg = load_script("archive/Introductory learning/02_MLP/01_micrograd.py")

# 每个运算同时适用于 Value 与 torch 标量张量（两者都有 .tanh() .exp() .log() .relu() 与运算符），
# 并保证定义域安全：log / 除法 / 负指数的输入都 ≥ 0.5，exp 的输入被 tanh 限制在 (−1, 1)。
UNARY = {
    "tanh": lambda a: a.tanh(),
    "relu": lambda a: a.relu(),
    "exp": lambda a: a.tanh().exp(),
    "log": lambda a: (a * a + 0.5).log(),
    "pow2": lambda a: a**2,
    "pow3": lambda a: a**3,
    "pow_neg": lambda a: (a * a + 0.5) ** -1.5,
    "sqrt": lambda a: (a * a + 0.5) ** 0.5,
    "neg": lambda a: -a,
    "rsub": lambda a: 2.0 - a,
    "rdiv": lambda a: 1.0 / (a * a + 0.5),
    "scale": lambda a: 3 * a + 1,
}
BINARY = {
    "add": lambda a, b: a + b,
    "sub": lambda a, b: a - b,
    "mul": lambda a, b: a * b,
    "div": lambda a, b: a / (b * b + 0.5),
}

op_strategy = st.one_of(
    st.tuples(st.sampled_from(sorted(UNARY)), st.integers(0, 100)),
    st.tuples(st.sampled_from(sorted(BINARY)), st.integers(0, 100), st.integers(0, 100)),
)


def run_program(leaves, program):
    """从叶子出发，每个指令从已有节点里挑输入（下标取模），结果追加进节点池；返回最后一个节点。"""
    pool = list(leaves)
    for instr in program:
        name = instr[0]
        if name in UNARY:
            pool.append(UNARY[name](pool[instr[1] % len(pool)]))
        else:
            pool.append(BINARY[name](pool[instr[1] % len(pool)], pool[instr[2] % len(pool)]))
    return pool[-1]


@settings(max_examples=80, deadline=None)
@given(
    xs=st.lists(st.floats(-2.0, 2.0, allow_nan=False), min_size=1, max_size=3),
    program=st.lists(op_strategy, min_size=1, max_size=12),
)
def test_random_expressions_match_torch_autograd(xs, program):
    leaves = [mg.Value(x) for x in xs]
    out = run_program(leaves, program)
    out.backward()
    tleaves = [torch.tensor(x, dtype=torch.float64, requires_grad=True) for x in xs]
    tout = run_program(tleaves, program)
    if tout.requires_grad:
        tout.backward()
    assert math.isclose(out.data, tout.item(), rel_tol=1e-10, abs_tol=1e-12)
    for v, t in zip(leaves, tleaves):
        ref = 0.0 if t.grad is None else t.grad.item()
        assert math.isclose(v.grad, ref, rel_tol=1e-9, abs_tol=1e-10), (v, ref)


def test_gradient_accumulates_when_a_node_is_reused():
    a = mg.Value(3.0)
    b = a * a + a  # db/da = 2a + 1 = 7：a 被用了三次，覆盖而不累加会得到 1 或 3
    b.backward()
    assert a.grad == 7.0
    c = mg.Value(-2.0)
    d = c + c
    e = d * d  # e = 4c²，de/dc = 8c = −16
    e.backward()
    assert c.grad == -16.0


def test_deep_graph_does_not_hit_recursion_limit():
    x = mg.Value(0.5)
    y = x
    for _ in range(5000):  # 远超 Python 默认 1000 层递归上限
        y = y * 1.0001
    y.backward()
    assert math.isclose(x.grad, 1.0001**5000, rel_tol=1e-9)


def test_relu_kink_matches_torch():
    v = mg.Value(0.0)
    v.relu().backward()
    t = torch.tensor(0.0, requires_grad=True)
    t.relu().backward()
    assert v.grad == t.grad.item() == 0.0


@pytest.mark.parametrize("sizes", [(4, 1), (5, 3, 1), (3, 4, 4, 1)])
def test_mlp_loss_and_gradients_match_pytorch(sizes):
    rng = np.random.default_rng(len(sizes))
    X = rng.standard_normal((12, 2))
    y = (rng.random(12) < 0.5).astype(np.float64)
    model = mg.MLP(2, list(sizes))
    params_t = mg.to_torch_mlp(model)
    loss = mg.bce_loss(model, X, y)
    loss.backward()
    loss_t = mg.torch_bce_loss(params_t, X, y)
    loss_t.backward()
    assert math.isclose(loss.data, loss_t.item(), rel_tol=1e-12)
    ours = np.array([p.grad for p in model.parameters()])
    ref = np.concatenate([torch.cat([W.grad, b.grad[:, None]], 1).reshape(-1) for W, b in params_t])
    np.testing.assert_allclose(ours, ref, rtol=1e-9, atol=1e-12)


def test_bce_is_stable_for_huge_logits():
    # softplus 的稳定写法：|z| = 800 时朴素的 log(1 + e^z) 会溢出
    model = mg.MLP(1, [1])
    model.layers[0].neurons[0].w[0].data = 1.0
    X = np.array([[800.0], [-800.0]])
    loss = mg.bce_loss(model, X, np.array([0.0, 1.0]))
    assert math.isclose(loss.data, 800.0, rel_tol=1e-12)


def test_training_reduces_loss():
    from sklearn.datasets import make_moons

    X, y = make_moons(16, noise=0.1, random_state=0)
    mg.random.seed(0)
    model = mg.MLP(2, [6, 1])
    losses = mg.train(model, X, y, steps=15)
    assert losses[-1] < 0.8 * losses[0]


def test_bad_input_errors():
    with pytest.raises(ValueError, match="log 的输入必须 > 0"):
        mg.Value(-1.0).log()
    with pytest.raises(TypeError, match="常数指数"):
        mg.Value(2.0) ** mg.Value(3.0)
    with pytest.raises(TypeError, match="只能与 Value"):
        mg.Value(1.0) + "1"
    with pytest.raises(ZeroDivisionError):
        mg.Value(0.0) ** -1
    with pytest.raises(ValueError, match="需要 3 个输入"):
        mg.Neuron(3)([mg.Value(1.0)])
