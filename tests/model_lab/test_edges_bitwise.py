"""构件级的逐位对照：eager 注意力后端（bf16）、Llama 的 RMSNorm（bf16）、GPT-2 的 tanh-GELU（全值域）。

整模型对照用 1e-5 量级的容差，舍入顺序不同（先乘 γ 再转 dtype、先缩放 q 再做矩阵乘）或常数差一点点
（0.0447 vs 0.044715）的 bug 都在容差以内；这些构件与 HF 的写法运算顺序相同，所以可以要求逐位相等。
"""

from __future__ import annotations

import importlib
from types import SimpleNamespace

import pytest
import torch
from transformers.activations import NewGELUActivation
from transformers.models.llama.modeling_llama import LlamaRMSNorm, eager_attention_forward

from model_lab.attention_backends import eager_attention

llama = importlib.import_module("model_lab.02_architectures.llama")
gpt2 = importlib.import_module("model_lab.02_architectures.gpt2")


@pytest.mark.parametrize("padded", [False, True])
def test_eager_attention_bitwise_equals_hf_eager_in_bf16(padded):
    # head_dim = 12：scale = 12^-0.5 不是 2 的幂，"先把 q 乘 scale 再做矩阵乘"在 bf16 里会多一次不同的舍入
    g = torch.Generator().manual_seed(0)
    b, h, h_kv, t, d = 2, 4, 2, 9, 12
    q = (torch.randn(b, h, t, d, generator=g) * 3).bfloat16()
    k = (torch.randn(b, h_kv, t, d, generator=g) * 3).bfloat16()
    v = torch.randn(b, h_kv, t, d, generator=g).bfloat16()
    allowed = torch.ones(t, t, dtype=torch.bool).tril()[None, None].expand(b, 1, t, t).clone()
    if padded:
        allowed[0, :, :, :3] = False  # 第 0 行左侧 3 个 padding 的 key 谁也看不见
        allowed[0, :, :3, :] = True  # padding 的 query 行看全部（只比真实行；这样两边都不会出现全掩码的行）
    ours = eager_attention(q, k, v, is_causal=False, attn_mask=allowed, scale=d**-0.5)  # (B, H, T, D)
    # HF 用加性掩码：可以看 0，不能看 dtype 的最小值
    additive = torch.zeros(allowed.shape, dtype=torch.bfloat16).masked_fill(~allowed, torch.finfo(torch.bfloat16).min)
    module = SimpleNamespace(num_key_value_groups=h // h_kv, training=False)
    ref, _ = eager_attention_forward(module, q, k, v, additive, d**-0.5)  # (B, T, H, D)
    assert torch.equal(ours.transpose(1, 2), ref)


def test_llama_rmsnorm_bitwise_equals_hf_in_bf16():
    # 顺序：fp32 里归一化 → 转回 bf16 → 乘 γ（bf16 × bf16）；先乘 γ 再转 dtype 会差 1 ulp
    ours, ref = llama.RMSNorm(64, 1e-6), LlamaRMSNorm(64, eps=1e-6)
    with torch.no_grad():
        ours.weight.copy_(torch.randn(64, generator=torch.Generator().manual_seed(1)))
        ref.weight.copy_(ours.weight)
    ours, ref = ours.bfloat16(), ref.bfloat16()
    x = (torch.randn(4, 7, 64, generator=torch.Generator().manual_seed(2)) * 3).bfloat16()
    assert torch.equal(ours(x), ref(x))


def test_gpt2_tanh_gelu_bitwise_equals_hf_over_full_range():
    # 取 GPT-2 模型里真正用的那个激活函数（activation_function 默认 "gelu_new"）；
    # x³ 项的常数只在 |x| ~ 1..4 处影响结果（更大时 tanh 已饱和），所以扫过整个区间逐位比较
    model = gpt2.GPT2(gpt2.GPT2Config(vocab_size=50, n_positions=16, n_embd=16, n_layer=1, n_head=2))
    assert model.config.activation_function == "gelu_new"
    act = model.transformer.h[0].mlp.act
    x = torch.linspace(-8, 8, 20001)
    assert torch.equal(act(x), NewGELUActivation()(x))
