"""积木课（model_lab/01_components/basics.py）对照 PyTorch：Linear、Embedding、SiLU、softmax 的输出与梯度，
初始化的分布，坏输入的报错，以及换进 Llama 后与换之前、与 transformers 的 logits / 梯度 / 生成都一致。"""

from __future__ import annotations

import copy
import importlib
import math

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from model_lab import Llama, LlamaConfig, build_llama_hf_reference

basics = importlib.import_module("model_lab.01_components.basics")

DTYPES = [torch.float32, torch.float64]


def grads_of(out: torch.Tensor, grad: torch.Tensor, inputs) -> tuple[torch.Tensor, ...]:
    return torch.autograd.grad((out * grad).sum(), list(inputs))


# ---------------------------------------------------------------------------------------------------
# Linear
# ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("shape", [(3, 7), (7,), (1, 2, 3, 7)])
def test_default_init_is_bitwise_nn_linear_and_bounded_by_inv_sqrt_in(shape, bias):
    torch.manual_seed(5)
    ref = nn.Linear(7, 11, bias=bias)
    torch.manual_seed(5)
    ours = basics.Linear(7, 11, bias=bias)
    assert ours.weight.shape == (11, 7)
    torch.testing.assert_close(ours.weight, ref.weight, rtol=0, atol=0)
    if bias:
        torch.testing.assert_close(ours.bias, ref.bias, rtol=0, atol=0)
        assert ours.bias.abs().max() <= 1 / math.sqrt(7)
    else:
        assert ours.bias is None
    assert ours.weight.abs().max() <= 1 / math.sqrt(7)


def test_kaiming_uniform_gives_one_third_of_the_input_variance():
    w = basics.Linear(1024, 1024, bias=False).weight.detach()
    assert 1024 * w.var().item() == pytest.approx(1 / 3, rel=0.02)  # U(−β, β)：Var = β²/3，β² = 1/in


@pytest.mark.parametrize("std", [0.02, 0.5])
def test_trunc_normal_is_bitwise_torch_and_truncated_at_two_sigma(std):
    w = torch.empty(257, 129)
    torch.manual_seed(9)
    basics.trunc_normal_init_(w, std)
    ref = torch.empty(257, 129)
    torch.manual_seed(9)
    nn.init.trunc_normal_(ref, mean=0.0, std=std, a=-2 * std, b=2 * std)
    torch.testing.assert_close(w, ref, rtol=0, atol=0)
    assert w.abs().max() <= 2 * std


def truncated_std_by_quadrature(c: float) -> float:
    """数值积分：∫z²φ(z)dz / ∫φ(z)dz 在 [−c, c] 上（与闭式解独立的另一条路）。"""
    z = torch.linspace(-c, c, 200_001, dtype=torch.float64)
    pdf = torch.exp(-z**2 / 2)
    return math.sqrt((torch.trapezoid(z**2 * pdf, z) / torch.trapezoid(pdf, z)).item())


def test_trunc_normal_std_factor_equals_quadrature_and_sample():
    factor = basics.trunc_normal_std_factor(2.0)
    assert factor == pytest.approx(truncated_std_by_quadrature(2.0), rel=1e-9)
    assert basics.trunc_normal_std_factor(1.0) == pytest.approx(truncated_std_by_quadrature(1.0), rel=1e-9)
    w = torch.empty(1_000_000)
    basics.trunc_normal_init_(w, 0.1)
    assert w.std().item() == pytest.approx(0.1 * factor, rel=0.005)  # 标准误约 0.07%


def test_trunc_normal_linear_defaults_to_inv_sqrt_in_and_zero_bias():
    lin = basics.Linear(400, 300, init="trunc_normal")
    bound = 2 / math.sqrt(400)
    assert lin.weight.abs().max() <= bound and lin.weight.abs().max() > 0.9 * bound
    assert not lin.bias.any()
    lin = basics.Linear(400, 300, init="trunc_normal", std=0.02)
    assert lin.weight.abs().max() <= 0.04


def test_activation_std_through_depth_follows_the_variance_ratio():
    depth = 6
    kaiming = basics.activation_std_by_depth("kaiming_uniform", 256, depth, batch=1024)
    trunc = basics.activation_std_by_depth("trunc_normal", 256, depth, batch=1024)
    assert kaiming[-1] / kaiming[0] == pytest.approx((1 / 3) ** (depth / 2), rel=0.15)
    assert trunc[-1] / trunc[0] == pytest.approx(basics.trunc_normal_std_factor() ** depth, rel=0.15)
    exact_std = 1 / (basics.trunc_normal_std_factor() * math.sqrt(256))  # 补偿截断：恰好保方差
    exact = basics.activation_std_by_depth("trunc_normal", 256, depth, std=exact_std, batch=1024)
    assert exact[-1] / exact[0] == pytest.approx(1.0, rel=0.15)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("shape", [(5, 16), (16,), (2, 3, 9, 16)])
def test_linear_equals_nn_linear_outputs_and_gradients(shape, bias, dtype):
    ref = nn.Linear(16, 24, bias=bias, dtype=dtype)
    ours = basics.Linear(16, 24, bias=bias, dtype=dtype)
    ours.load_state_dict(ref.state_dict())
    x = torch.randn(shape, dtype=dtype, requires_grad=True)
    grad = torch.randn(*shape[:-1], 24, dtype=dtype)
    y, y_ref = ours(x), ref(x)
    torch.testing.assert_close(y, y_ref)
    names = ["x"] + [n for n, _ in ours.named_parameters()]
    got = grads_of(y, grad, [x, *ours.parameters()])
    want = grads_of(y_ref, grad, [x, *ref.parameters()])
    for name, a, b in zip(names, got, want):
        torch.testing.assert_close(a, b, msg=name)


@pytest.mark.parametrize("bias", [True, False])
def test_hand_written_linear_backward_passes_gradcheck_and_equals_autograd(bias):
    x = torch.randn(2, 3, 5, dtype=torch.float64, requires_grad=True)
    w = torch.randn(4, 5, dtype=torch.float64, requires_grad=True)
    b = torch.randn(4, dtype=torch.float64, requires_grad=True) if bias else None
    inputs = (x, w, b)
    assert torch.autograd.gradcheck(basics.LinearFunction.apply, inputs)
    leaves = [t for t in inputs if t is not None]
    grad = torch.randn(2, 3, 4, dtype=torch.float64)
    got = grads_of(basics.LinearFunction.apply(*inputs), grad, leaves)
    want = grads_of(F.linear(*inputs), grad, leaves)
    for a, b_ in zip(got, want):
        torch.testing.assert_close(a, b_)


def test_linear_state_dict_interchanges_with_nn_linear_both_ways():
    ours, ref = basics.Linear(6, 4), nn.Linear(6, 4)
    assert ours.state_dict().keys() == ref.state_dict().keys()
    ref.load_state_dict(ours.state_dict())
    x = torch.randn(3, 6)
    torch.testing.assert_close(ref(x), ours(x))
    ours2 = basics.Linear(6, 4)
    ours2.load_state_dict(nn.Linear(6, 4).state_dict())  # strict：名字、形状都必须对上


def test_linear_bad_input_and_arguments_raise_clear_errors():
    lin = basics.Linear(8, 4)
    with pytest.raises(ValueError, match="最后一维是 8"):
        lin(torch.randn(2, 7))
    with pytest.raises(ValueError, match="最后一维是 8"):
        lin(torch.tensor(1.0))
    with pytest.raises(TypeError, match="torch.Tensor"):
        lin([1.0] * 8)
    with pytest.raises(ValueError, match="init="):
        basics.Linear(8, 4, init="xavier")
    with pytest.raises(ValueError, match="std="):
        basics.Linear(8, 4, std=0.02)  # kaiming_uniform 不收 std
    with pytest.raises(ValueError, match="std="):
        basics.Linear(8, 4, init="trunc_normal", std=0.0)
    with pytest.raises(ValueError, match="正整数"):
        basics.Linear(0, 4)


# ---------------------------------------------------------------------------------------------------
# Embedding
# ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("id_dtype", [torch.int64, torch.int32])
@pytest.mark.parametrize("padding_idx", [None, 0, 3, -1])
def test_embedding_equals_nn_embedding_outputs_and_gradients(padding_idx, id_dtype, dtype):
    ref = nn.Embedding(20, 8, padding_idx=padding_idx, dtype=dtype)
    ours = basics.Embedding(20, 8, padding_idx=padding_idx, dtype=dtype)
    assert ours.padding_idx == ref.padding_idx  # 负数按 nn.Embedding 的规则换算
    ours.load_state_dict(ref.state_dict())
    ids = torch.randint(0, 20, (3, 11))
    ids[0, :5] = 7  # 重复 id：梯度要累加
    ids[1, :3] = 3
    ids[2, -2:] = 19
    ids = ids.to(id_dtype)
    grad = torch.randn(3, 11, 8, dtype=dtype)
    y, y_ref = ours(ids), ref(ids)
    torch.testing.assert_close(y, y_ref, rtol=0, atol=0)
    (g,) = grads_of(y, grad, [ours.weight])
    (g_ref,) = grads_of(y_ref, grad, [ref.weight])
    torch.testing.assert_close(g, g_ref)
    torch.testing.assert_close(g[7], grad[ids == 7].sum(0))  # scatter-add：出现几次就累加几次
    if padding_idx is not None:
        assert not g[ours.padding_idx].any()
    unused = sorted(set(range(20)) - set(ids.flatten().tolist()))
    assert not g[unused].any()  # 没出现的行梯度为 0


@pytest.mark.parametrize("padding_idx", [None, 2])
def test_embedding_init_is_standard_normal_with_zero_padding_row(padding_idx):
    emb = basics.Embedding(4000, 64, padding_idx=padding_idx)
    w = emb.weight.detach()
    assert w.mean().item() == pytest.approx(0.0, abs=0.01)
    assert w.std().item() == pytest.approx(1.0, rel=0.01)
    if padding_idx is not None:
        assert not w[padding_idx].any()


def test_embedding_state_dict_interchanges_with_nn_embedding():
    ours, ref = basics.Embedding(10, 4, padding_idx=1), nn.Embedding(10, 4, padding_idx=1)
    assert ours.state_dict().keys() == ref.state_dict().keys()
    ref.load_state_dict(ours.state_dict())
    ids = torch.tensor([[0, 1, 9]])
    torch.testing.assert_close(ref(ids), ours(ids))


def test_embedding_bad_input_raises_clear_errors():
    emb = basics.Embedding(10, 4)
    with pytest.raises(ValueError, match="int64/int32"):
        emb(torch.tensor([1.0, 2.0]))
    with pytest.raises(ValueError, match="int64/int32"):
        emb(torch.tensor([True, False]))
    with pytest.raises(ValueError, match="int64/int32"):
        emb([1, 2])
    with pytest.raises(ValueError, match=r"id 10 超出范围 \[0, 10\)"):
        emb(torch.tensor([[3, 10]]))
    with pytest.raises(ValueError, match=r"id -1 超出范围"):
        emb(torch.tensor([-1, 2]))
    with pytest.raises(ValueError, match="padding_idx=10"):
        basics.Embedding(10, 4, padding_idx=10)
    with pytest.raises(ValueError, match="max_norm"):
        basics.Embedding.from_torch(nn.Embedding(10, 4, max_norm=1.0))


# ---------------------------------------------------------------------------------------------------
# SiLU
# ---------------------------------------------------------------------------------------------------

EXTREMES = [1e4, -1e4, 88.0, -88.0, 89.0, -89.0, 1e30, -1e30, 0.0, -0.0, 1e-30]


@pytest.mark.parametrize("dtype", DTYPES)
def test_silu_equals_torch_outputs_and_gradients_including_extremes(dtype):
    x = torch.cat([torch.randn(2000, dtype=dtype) * 8, torch.tensor(EXTREMES, dtype=dtype)]).requires_grad_()
    y, y_ref = basics.SiLU()(x), nn.SiLU()(x)
    assert torch.isfinite(y).all()
    torch.testing.assert_close(y, y_ref)
    (g,) = torch.autograd.grad(y.sum(), x)
    (g_ref,) = torch.autograd.grad(y_ref.sum(), x)
    assert torch.isfinite(g).all()
    torch.testing.assert_close(g, g_ref)


def test_silu_hand_derivative_passes_gradcheck_and_bf16_is_bitwise_torch():
    x = torch.randn(30, dtype=torch.float64, requires_grad=True) * 5
    assert torch.autograd.gradcheck(basics.SiLUFunction.apply, (x.detach().requires_grad_(),))
    xb = (torch.randn(4096) * 6).to(torch.bfloat16)
    torch.testing.assert_close(basics.silu(xb), F.silu(xb), rtol=0, atol=0)


def test_safe_sigmoid_is_finite_where_the_naive_gradient_is_nan():
    x = torch.tensor([-1e4, -100.0, 0.0, 100.0, 1e4], requires_grad=True)
    torch.testing.assert_close(basics.sigmoid(x), torch.sigmoid(x))
    (g_naive,) = torch.autograd.grad(basics.sigmoid_naive(x).sum(), x)
    assert g_naive[0].isnan()  # 0 · inf
    (g,) = torch.autograd.grad(basics.sigmoid(x).sum(), x)
    torch.testing.assert_close(g, torch.sigmoid(x) * (1 - torch.sigmoid(x)))


def test_silu_rejects_integer_input():
    with pytest.raises(TypeError, match="浮点"):
        basics.silu(torch.arange(3))


# ---------------------------------------------------------------------------------------------------
# softmax / logsumexp / log_softmax
# ---------------------------------------------------------------------------------------------------


def scores(dtype: torch.dtype) -> torch.Tensor:
    x = torch.randn(4, 6, 9, dtype=dtype) * 4
    x[0, 0, 0], x[1, 2, 3], x[2, 1, :] = 1e4, -1e4, 5e3  # 单个巨大值、单个极小值、整行都很大
    return x


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("dim", [0, 1, -1])
@pytest.mark.parametrize("name", ["softmax", "log_softmax"])
def test_softmax_and_log_softmax_equal_torch_outputs_and_gradients(name, dim, dtype):
    ours_fn, ref_fn = getattr(basics, name), getattr(torch, name)
    x = scores(dtype).requires_grad_()
    grad = torch.randn(4, 6, 9, dtype=dtype)
    y, y_ref = ours_fn(x, dim), ref_fn(x, dim)
    assert torch.isfinite(y).all()
    torch.testing.assert_close(y, y_ref)
    (g,) = grads_of(y, grad, [x])
    (g_ref,) = grads_of(y_ref, grad, [x])
    assert torch.isfinite(g).all()
    torch.testing.assert_close(g, g_ref)


@pytest.mark.parametrize("keepdim", [False, True])
@pytest.mark.parametrize("dim", [0, -1])
def test_logsumexp_equals_torch_and_its_gradient_is_softmax(dim, keepdim):
    x = scores(torch.float64).requires_grad_()
    y = basics.logsumexp(x, dim, keepdim)
    torch.testing.assert_close(y, torch.logsumexp(x, dim, keepdim))
    (g,) = torch.autograd.grad(y.sum(), x)
    torch.testing.assert_close(g, torch.softmax(x.detach(), dim))
    inf_rows = torch.tensor([[-math.inf, -math.inf], [math.inf, 0.0]])
    torch.testing.assert_close(basics.logsumexp(inf_rows), torch.logsumexp(inf_rows, -1))  # −inf、inf，不是 NaN


def test_hand_written_softmax_backward_passes_gradcheck():
    x = torch.randn(3, 5, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda t: basics.SoftmaxFunction.apply(t, -1), (x,))
    assert torch.autograd.gradcheck(lambda t: basics.SoftmaxFunction.apply(t, 0), (x,))


def test_softmax_bf16_is_bitwise_torch_and_log_softmax_bf16_is_at_least_as_accurate():
    x = (torch.randn(16, 300) * 3).to(torch.bfloat16)
    torch.testing.assert_close(basics.softmax(x), torch.softmax(x, -1), rtol=0, atol=0)
    # bf16 的 log_softmax：我们在 fp32 里算完只舍入一次；PyTorch 的 CPU 内核中间多舍入几次，差 1~2 个 ulp
    ours, ref = basics.log_softmax(x), torch.log_softmax(x, -1)
    torch.testing.assert_close(ours, ref, rtol=2**-6, atol=0)
    truth = torch.log_softmax(x.double(), -1)
    assert (ours.double() - truth).abs().max() <= (ref.double() - truth).abs().max()


def test_naive_softmax_overflows_where_the_safe_one_does_not():
    x = torch.tensor([[1e4, 0.0, -1.0], [-1e4, -1e4 - 1, -1e4 - 2]])
    assert softmax_has_nan(basics.softmax_naive(x)) == [True, True]  # inf/inf 与 0/0
    assert softmax_has_nan(basics.softmax(x)) == [False, False]
    torch.testing.assert_close(basics.softmax(x), torch.softmax(x, -1))


def softmax_has_nan(y: torch.Tensor) -> list[bool]:
    return y.isnan().any(-1).tolist()


@settings(max_examples=40, deadline=None)
@given(shift=st.floats(-1e4, 1e4), scale=st.floats(0.01, 100.0), n=st.integers(1, 12))
def test_softmax_is_shift_invariant_and_sums_to_one(shift, scale, n):
    x = torch.linspace(-1, 1, n, dtype=torch.float64) * scale
    y = basics.softmax(x + shift)
    torch.testing.assert_close(y, basics.softmax(x), rtol=1e-6, atol=1e-9)
    assert y.sum().item() == pytest.approx(1.0, abs=1e-12)
    torch.testing.assert_close(basics.log_softmax(x + shift), torch.log(basics.softmax(x)), rtol=1e-6, atol=1e-9)


def test_softmax_bad_input_raises_clear_errors():
    with pytest.raises(TypeError, match="浮点"):
        basics.softmax(torch.arange(4))
    with pytest.raises(ValueError, match="dim=2"):
        basics.softmax(torch.randn(3, 4), dim=2)
    with pytest.raises(ValueError, match="dim=-3"):
        basics.log_softmax(torch.randn(3, 4), dim=-3)


# ---------------------------------------------------------------------------------------------------
# swap_in_basics：换进 Llama
# ---------------------------------------------------------------------------------------------------

LLAMA_BASE = dict(vocab_size=97, hidden_size=48, intermediate_size=80, num_hidden_layers=2,
                  max_position_embeddings=96, num_attention_heads=4, num_key_value_heads=2)
LLAMA_CONFIGS = {
    "tied": dict(tie_word_embeddings=True),
    "untied_bias": dict(attention_bias=True, mlp_bias=True),
}


def make_llama(name: str):
    torch.manual_seed(0)
    model = Llama(LlamaConfig(**{**LLAMA_BASE, **LLAMA_CONFIGS[name]})).eval()
    with torch.no_grad():  # 初始化时 norm 是 1、偏置是 0：扰动后才测得出漏加或错位
        for n, p in model.named_parameters():
            if "norm" in n or n.endswith("bias"):
                p.add_(torch.randn_like(p) * 0.1)
    return model


def loss_and_grads(model, ids, labels, hf: bool = False):
    model.zero_grad()
    if hf:
        loss = model(ids, labels=labels).loss
    else:
        _, loss = model(ids, F.pad(labels[:, 1:], (0, 1), value=-100))  # HF 在内部左移 labels
    loss.backward()
    return loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters()}


@pytest.mark.parametrize("name", list(LLAMA_CONFIGS))
def test_swapped_llama_equals_itself_and_hf_logits_gradients_and_generation(name):
    model = make_llama(name)
    hf = build_llama_hf_reference(model)
    ids = torch.randint(0, 97, (2, 13), generator=torch.Generator().manual_seed(1))
    prompt = ids[:, :4]
    with torch.no_grad():
        logits_before = model(ids)
    loss_before, grads_before = loss_and_grads(model, ids, ids)
    gen_before = model.generate(prompt, 10, temperature=0)
    params_before = {n: id(p) for n, p in model.named_parameters()}

    counts = basics.swap_in_basics(model)
    n_linear = 7 * LLAMA_BASE["num_hidden_layers"] + 1
    assert counts["Linear"] == n_linear and counts["Embedding"] == 1
    assert not any(type(m) in (nn.Linear, nn.Embedding) for m in model.modules())
    assert isinstance(model.model.embed_tokens, basics.Embedding) and isinstance(model.lm_head, basics.Linear)
    assert {n: id(p) for n, p in model.named_parameters()} == params_before  # 同一批 Parameter，没有拷贝
    if model.config.tie_word_embeddings:
        assert model.lm_head.weight is model.model.embed_tokens.weight

    with torch.no_grad():
        logits_after, logits_hf = model(ids), hf(ids).logits
    torch.testing.assert_close(logits_after, logits_before, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(logits_after, logits_hf, rtol=1e-5, atol=1e-5)
    loss_after, grads_after = loss_and_grads(model, ids, ids)
    loss_hf, grads_hf = loss_and_grads(hf, ids, ids, hf=True)
    torch.testing.assert_close(loss_after, loss_before, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(loss_after, loss_hf, rtol=1e-6, atol=1e-6)
    assert grads_after.keys() == grads_before.keys() == grads_hf.keys()
    for n in grads_after:
        torch.testing.assert_close(grads_after[n], grads_before[n], rtol=1e-5, atol=1e-6, msg=n)
        torch.testing.assert_close(grads_after[n], grads_hf[n], rtol=1e-4, atol=1e-6, msg=n)
    gen_after = model.generate(prompt, 10, temperature=0)
    gen_hf = hf.generate(prompt, max_new_tokens=10, do_sample=False, eos_token_id=None, pad_token_id=0)
    torch.testing.assert_close(gen_after, gen_before, rtol=0, atol=0)
    torch.testing.assert_close(gen_after, gen_hf, rtol=0, atol=0)


def test_swapped_llama_mlp_activation_is_ours():
    model = make_llama("tied")
    x = torch.randn(2, 5, LLAMA_BASE["hidden_size"])
    mlp = model.model.layers[0].mlp
    with torch.no_grad():
        before = mlp(x)
    counts = basics.swap_in_basics(model)
    assert counts["SiLU"] == LLAMA_BASE["num_hidden_layers"]
    for layer in model.model.layers:
        assert isinstance(layer.mlp.act_fn, basics.SiLU)
    with torch.no_grad():
        torch.testing.assert_close(mlp(x), before, rtol=1e-6, atol=1e-6)


def test_swap_keeps_shared_modules_shared_and_leaves_subclasses_alone():
    class QuantLinear(nn.Linear):  # 子类可能有别的语义：不换
        pass

    shared = nn.Linear(4, 4)
    model = nn.Sequential(shared, nn.SiLU(), shared, QuantLinear(4, 3), nn.Embedding(5, 4))
    x = torch.randn(2, 4)
    expected = model[:4](x)
    counts = basics.swap_in_basics(model)
    assert counts == {"Linear": 1, "Embedding": 1, "SiLU": 1}
    assert model[0] is model[2] and isinstance(model[0], basics.Linear)
    assert type(model[3]) is QuantLinear and isinstance(model[1], basics.SiLU)
    torch.testing.assert_close(model[:4](x), expected)
    assert basics.swap_in_basics(copy.deepcopy(model)) == {"Linear": 0, "Embedding": 0, "SiLU": 0}
    with pytest.raises(ValueError, match="没有父模块"):
        basics.swap_in_basics(nn.Linear(3, 3))
