"""archive/Introductory learning/02_MLP/04_init_and_norm.py 的测试：初始化与 torch.nn.init 一致、方差符合推导；
BatchNorm1d / LayerNorm 在训练与推理模式下的输出、梯度、running 统计量与 PyTorch 一致；手推 BN 反向；错误输入。"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn as nn

from tests.conftest import load_script

ni = load_script("archive/Introductory learning/02_MLP/04_init_and_norm.py")

SHAPES = [(64, 32), (7, 300), (16, 8, 3, 3), (5, 4, 7)]


@pytest.mark.parametrize("shape", SHAPES)
def test_fans_match_pytorch(shape):
    assert ni.fan_in_and_fan_out(shape) == nn.init._calculate_fan_in_and_fan_out(torch.empty(shape))


@pytest.mark.parametrize("name", ["linear", "sigmoid", "tanh", "relu", "leaky_relu"])
def test_gain_matches_pytorch(name):
    assert math.isclose(ni.gain(name, 0.3), nn.init.calculate_gain(name, 0.3), rel_tol=1e-12)


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("mode", ["fan_in", "fan_out"])
def test_initializers_match_nn_init(shape, mode):
    def gen():
        return torch.Generator().manual_seed(7)

    pairs = [
        (ni.xavier_uniform(shape, 1.3, gen()), nn.init.xavier_uniform_(torch.empty(shape), 1.3, generator=gen())),
        (ni.xavier_normal(shape, 0.7, gen()), nn.init.xavier_normal_(torch.empty(shape), 0.7, generator=gen())),
        (ni.kaiming_uniform(shape, mode, "leaky_relu", 0.1, gen()),
         nn.init.kaiming_uniform_(torch.empty(shape), 0.1, mode, "leaky_relu", generator=gen())),
        (ni.kaiming_normal(shape, mode, "relu", 0.0, gen()),
         nn.init.kaiming_normal_(torch.empty(shape), 0.0, mode, "relu", generator=gen())),
    ]
    for ours, ref in pairs:
        torch.testing.assert_close(ours, ref, rtol=1e-6, atol=1e-7)


def test_init_variance_follows_derivation():
    # Var(w) = 2/(n_in+n_out)（Xavier）与 2/n_in（Kaiming），大样本下经验方差相对误差 < 3%
    g = torch.Generator().manual_seed(0)
    w = ni.xavier_uniform((400, 600), generator=g)
    assert abs(w.var().item() / (2 / 1000) - 1) < 0.03
    w = ni.kaiming_normal((400, 600), generator=g)
    assert abs(w.var().item() / (2 / 600) - 1) < 0.03


def test_kaiming_keeps_relu_signal_while_small_init_vanishes():
    kaiming = ni.activation_stds("kaiming", "relu", depth=20, width=128)
    small = ni.activation_stds("N(0, 0.01)", "relu", depth=20, width=128)
    rescued = ni.activation_stds("N(0, 0.01)", "relu", depth=20, width=128, batchnorm=True)
    assert 0.3 < kaiming[-1] < 3.0 and small[-1] < 1e-10 and 0.3 < rescued[-1] < 3.0


def _copy_affine(ours: nn.Module, ref: nn.Module, g: torch.Generator) -> None:
    with torch.no_grad():
        for p, q in ((ours.weight, ref.weight), (ours.bias, ref.bias)):
            if p is not None:
                p.copy_(torch.randn(p.shape, generator=g, dtype=p.dtype))
                q.copy_(p)


@pytest.mark.parametrize("input_shape", [(8, 5), (4, 5, 6), (2, 5)])
@pytest.mark.parametrize("momentum", [0.1, 0.5, None])
@pytest.mark.parametrize("affine", [True, False])
def test_batchnorm_matches_pytorch_train_and_eval(input_shape, momentum, affine):
    g = torch.Generator().manual_seed(0)
    ours = ni.BatchNorm1d(5, eps=1e-4, momentum=momentum, affine=affine).double()
    ref = nn.BatchNorm1d(5, eps=1e-4, momentum=momentum, affine=affine).double()
    if affine:
        _copy_affine(ours, ref, g)
    for _ in range(3):
        x = torch.randn(input_shape, generator=g, dtype=torch.float64) * 3 + 2
        xa, xb = x.clone().requires_grad_(), x.clone().requires_grad_()
        ya, yb = ours(xa), ref(xb)
        torch.testing.assert_close(ya, yb, rtol=1e-10, atol=1e-10)
        w = torch.randn(ya.shape, generator=g, dtype=torch.float64)
        (ya * w).sum().backward()
        (yb * w).sum().backward()
        torch.testing.assert_close(xa.grad, xb.grad, rtol=1e-9, atol=1e-10)
        if affine:
            torch.testing.assert_close(ours.weight.grad, ref.weight.grad, rtol=1e-9, atol=1e-10)
            torch.testing.assert_close(ours.bias.grad, ref.bias.grad, rtol=1e-9, atol=1e-10)
        torch.testing.assert_close(ours.running_mean, ref.running_mean, rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(ours.running_var, ref.running_var, rtol=1e-12, atol=1e-12)
    assert ours.num_batches_tracked.item() == ref.num_batches_tracked.item() == 3
    ours.eval(), ref.eval()
    x = torch.randn((1, *input_shape[1:]), generator=g, dtype=torch.float64)  # 推理时 batch=1 也可以
    torch.testing.assert_close(ours(x), ref(x), rtol=1e-10, atol=1e-10)
    assert set(ours.state_dict()) == set(ref.state_dict())


@pytest.mark.parametrize("shape", [(10, 4), (6, 3, 5)])
def test_manual_batchnorm_backward(shape):
    x = torch.randn(shape, generator=torch.Generator().manual_seed(1), dtype=torch.float64) * 4 - 1
    assert ni.bn_manual_backward_error(x, seed=2) < 1e-10


@pytest.mark.parametrize("normalized_shape,input_shape", [(6, (4, 6)), ((3, 6), (2, 4, 3, 6)), (6, (2, 3, 6))])
@pytest.mark.parametrize("affine,bias", [(True, True), (True, False), (False, False)])
@pytest.mark.parametrize("training", [True, False])
def test_layernorm_matches_pytorch(normalized_shape, input_shape, affine, bias, training):
    g = torch.Generator().manual_seed(0)
    ours = ni.LayerNorm(normalized_shape, eps=1e-6, elementwise_affine=affine, bias=bias).double().train(training)
    ref = nn.LayerNorm(normalized_shape, eps=1e-6, elementwise_affine=affine, bias=bias).double().train(training)
    if affine:
        _copy_affine(ours, ref, g)
    x = torch.randn(input_shape, generator=g, dtype=torch.float64) * 5 + 3
    xa, xb = x.clone().requires_grad_(), x.clone().requires_grad_()
    ya, yb = ours(xa), ref(xb)
    torch.testing.assert_close(ya, yb, rtol=1e-10, atol=1e-10)
    w = torch.randn(ya.shape, generator=g, dtype=torch.float64)
    (ya * w).sum().backward()
    (yb * w).sum().backward()
    torch.testing.assert_close(xa.grad, xb.grad, rtol=1e-9, atol=1e-10)
    if affine:
        torch.testing.assert_close(ours.weight.grad, ref.weight.grad, rtol=1e-9, atol=1e-10)


def test_bad_input():
    with pytest.raises(ValueError, match="至少需要 2 维"):
        ni.fan_in_and_fan_out((5,))
    with pytest.raises(ValueError, match="mode="):
        ni.kaiming_normal((3, 3), mode="fan_avg")
    with pytest.raises(ValueError, match="nonlinearity='gelu'"):
        ni.gain("gelu")
    bn = ni.BatchNorm1d(4)
    with pytest.raises(ValueError, match=r"\(N, 4\)"):
        bn(torch.zeros(3, 5))
    with pytest.raises(ValueError, match="more than 1 value per channel"):
        bn(torch.zeros(1, 4))
    with pytest.raises(ValueError):  # PyTorch 同样拒绝
        nn.BatchNorm1d(4)(torch.zeros(1, 4))
    with pytest.raises(ValueError, match="最后 1 维"):
        ni.LayerNorm(6)(torch.zeros(2, 5))
