"""SwiGLU 课（model_lab/01_components/swiglu.py）对照 transformers 的 LlamaMLP 与 NemotronMLP。"""

from __future__ import annotations

import importlib

import pytest
import torch
from transformers import LlamaConfig, NemotronConfig
from transformers.models.llama.modeling_llama import LlamaMLP
from transformers.models.nemotron.modeling_nemotron import NemotronMLP

swiglu = importlib.import_module("model_lab.01_components.swiglu")

SHAPES = [(1, 1, 16), (2, 7, 48), (3, 13, 40), (5, 24)]  # 含奇数长度、2 维输入


def run_and_grads(module, x, grad):
    y = module(x)
    params = dict(module.named_parameters())
    grads = torch.autograd.grad((y * grad).sum(), [x, *params.values()])
    return y, dict(zip(["x", *params], grads))


@pytest.mark.parametrize("bias", [False, True])
@pytest.mark.parametrize("act", ["silu", "gelu", "gelu_pytorch_tanh"])
@pytest.mark.parametrize("shape", SHAPES)
def test_gated_mlp_equals_llama_mlp_outputs_and_gradients(shape, act, bias):
    d = shape[-1]
    h = swiglu.llama_intermediate_size(d, multiple_of=8)
    config = LlamaConfig(hidden_size=d, num_attention_heads=1, intermediate_size=h, hidden_act=act, mlp_bias=bias)
    ref = LlamaMLP(config)
    ours = swiglu.GatedMLP(d, h, act, bias=bias)
    ours.load_state_dict(ref.state_dict())  # 同名权重：加载成功本身就检查了命名与形状
    x = torch.randn(shape, requires_grad=True)
    grad = torch.randn(shape)
    y, g = run_and_grads(ours, x, grad)
    y_ref, g_ref = run_and_grads(ref, x, grad)
    torch.testing.assert_close(y, y_ref, rtol=1e-6, atol=1e-6)
    assert g.keys() == g_ref.keys()
    for name in g:
        torch.testing.assert_close(g[name], g_ref[name], rtol=1e-6, atol=1e-6, msg=name)


def test_gated_mlp_bf16_equals_llama_mlp_bf16():
    d, h = 64, 176
    ref = LlamaMLP(LlamaConfig(hidden_size=d, num_attention_heads=1, intermediate_size=h)).to(torch.bfloat16)
    ours = swiglu.GatedMLP(d, h).to(torch.bfloat16)
    ours.load_state_dict(ref.state_dict())
    x = torch.randn(2, 9, d).to(torch.bfloat16)
    torch.testing.assert_close(ours(x), ref(x), rtol=0, atol=0)


@pytest.mark.parametrize("shape", SHAPES)
def test_relu2_mlp_equals_nemotron_mlp(shape):
    d = shape[-1]
    ref = NemotronMLP(NemotronConfig(hidden_size=d, num_attention_heads=1, intermediate_size=4 * d, hidden_act="relu2"))
    ours = swiglu.ReLU2MLP(d)
    ours.load_state_dict(ref.state_dict())
    x = torch.randn(shape, requires_grad=True)
    grad = torch.randn(shape)
    y, g = run_and_grads(ours, x, grad)
    y_ref, g_ref = run_and_grads(ref, x, grad)
    torch.testing.assert_close(y, y_ref, rtol=1e-6, atol=1e-6)
    for name in g:
        torch.testing.assert_close(g[name], g_ref[name], rtol=1e-6, atol=1e-6, msg=name)


@pytest.mark.parametrize("d, multiple_of, ffn_dim_multiplier, expected", [
    (4096, 256, None, 11008),  # LLaMA-7B / Llama-2-7B
    (5120, 256, None, 13824),  # LLaMA-13B
    (6656, 256, None, 17920),  # LLaMA-33B
    (8192, 4096, 1.3, 28672),  # Llama-2-70B
    (4096, 1024, 1.3, 14336),  # Llama-3-8B
    (8192, 1024, 1.3, 28672),  # Llama-3-70B
])
def test_intermediate_size_matches_published_llama_configs(d, multiple_of, ffn_dim_multiplier, expected):
    assert swiglu.llama_intermediate_size(d, multiple_of, ffn_dim_multiplier) == expected


@pytest.mark.parametrize("d", [1, 7, 96, 1000, 4097])
@pytest.mark.parametrize("multiple_of", [1, 32, 256])
def test_intermediate_size_is_smallest_multiple_covering_8_thirds(d, multiple_of):
    h = swiglu.llama_intermediate_size(d, multiple_of)
    base = int(8 * d / 3)
    assert h % multiple_of == 0 and base <= h < base + multiple_of


def test_swiglu_has_same_params_as_4d_ffn_when_8_thirds_is_exact():
    d = 96  # 8/3·96 = 256，取整不改变它
    gated = swiglu.GatedMLP(d, swiglu.llama_intermediate_size(d, multiple_of=64))
    assert sum(p.numel() for p in gated.parameters()) == 8 * d * d
    assert sum(p.numel() for p in swiglu.ReLU2MLP(d).parameters()) == 8 * d * d


def test_default_intermediate_size_is_llama_rounding():
    assert swiglu.GatedMLP(4096).intermediate_size == 11008


def test_bad_inputs_raise_clear_errors():
    with pytest.raises(ValueError, match="hidden_size=32"):
        swiglu.GatedMLP(32, 64)(torch.randn(2, 3, 31))
    with pytest.raises(ValueError, match="hidden_size=32"):
        swiglu.ReLU2MLP(32)(torch.randn(2, 33))
    with pytest.raises(ValueError, match="silu, gelu, gelu_pytorch_tanh"):
        swiglu.GatedMLP(32, 64, hidden_act="swish")
    with pytest.raises(ValueError, match="multiple_of=0"):
        swiglu.llama_intermediate_size(32, multiple_of=0)
    with pytest.raises(ValueError, match="intermediate_size=-4"):
        swiglu.GatedMLP(32, -4)
