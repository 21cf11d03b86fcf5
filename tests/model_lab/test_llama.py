"""model_lab/02_architectures/llama.py 与 transformers.LlamaForCausalLM 的等价性：logits、loss、全部梯度、生成、KV cache。"""

from __future__ import annotations

import importlib

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from model_lab import (
    ATTENTION_BACKENDS,
    Llama,
    LlamaConfig,
    build_llama_hf_reference,
    eager_attention,
    register_attention_backend,
)

llama = importlib.import_module("model_lab.02_architectures.llama")  # 模块私有的 RoPE 辅助函数

BASE = dict(vocab_size=97, hidden_size=48, intermediate_size=80, num_hidden_layers=2, max_position_embeddings=96)

CONFIGS = {
    "mha_untied": dict(num_attention_heads=4, num_key_value_heads=4),
    "gqa_tied_linear": dict(num_attention_heads=6, num_key_value_heads=2, tie_word_embeddings=True,
                            rope_scaling={"rope_type": "linear", "factor": 2.0}),
    "gqa_llama3_bias": dict(num_attention_heads=4, num_key_value_heads=2, attention_bias=True, mlp_bias=True,
                            rope_theta=500000.0,
                            rope_scaling={"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                                          "high_freq_factor": 4.0, "original_max_position_embeddings": 32}),
    "mqa_yarn": dict(num_attention_heads=4, num_key_value_heads=1,
                     rope_scaling={"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 24}),
    "gqa_dynamic_headdim": dict(num_attention_heads=4, num_key_value_heads=2, head_dim=16,
                                rope_scaling={"type": "dynamic", "factor": 2.0}),
    "eager_tied": dict(num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=True,
                       attn_implementation="eager"),
}


def make_pair(name: str, seed: int = 0, **overrides):
    torch.manual_seed(seed)
    cfg = LlamaConfig(**{**BASE, **CONFIGS[name], **overrides})
    model = Llama(cfg).eval()
    # 随机扰动 RMSNorm 权重与偏置：初始化时它们是 1/0，测不出"乘错位置"或"漏加偏置"之类的错
    with torch.no_grad():
        for n, p in model.named_parameters():
            if "norm" in n or n.endswith("bias"):
                p.add_(torch.randn_like(p) * 0.1)
    return model, build_llama_hf_reference(model)


@pytest.mark.parametrize("name", list(CONFIGS))
def test_logits_match_hf(name):
    model, hf = make_pair(name)
    for t in (1, 13, 32):  # 奇数长度、单 token
        ids = torch.randint(0, 97, (3, t), generator=torch.Generator().manual_seed(t))
        with torch.no_grad():
            ours, ref = model(ids), hf(ids).logits
        assert ours.shape == (3, t, 97)
        torch.testing.assert_close(ours, ref, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name", list(CONFIGS))
def test_loss_and_all_gradients_match_hf(name):
    model, hf = make_pair(name)
    model.train()
    hf.train()
    labels = torch.randint(0, 97, (2, 11), generator=torch.Generator().manual_seed(2))
    labels[0, 4] = -100  # HF 的 labels 里 -100 同样被忽略
    ids = labels.clamp(min=0)
    targets = F.pad(labels[:, 1:], (0, 1), value=-100)  # HF 在内部左移：等价的 targets
    _, loss = model(ids, targets)
    ref = hf(ids, labels=labels)
    torch.testing.assert_close(loss, ref.loss, rtol=1e-6, atol=1e-6)
    loss.backward()
    ref.loss.backward()
    hf_params = dict(hf.named_parameters())
    ours = dict(model.named_parameters())
    assert set(ours) == set(hf_params)  # 同样的权重名（共享权重也同样去重）
    for n, p in ours.items():
        assert p.grad is not None, n
        torch.testing.assert_close(p.grad, hf_params[n].grad, rtol=1e-4, atol=1e-6, msg=n)


@pytest.mark.parametrize("name", ["mha_untied", "gqa_tied_linear", "mqa_yarn", "eager_tied"])
def test_greedy_generate_matches_hf(name):
    model, hf = make_pair(name, seed=3)
    prompt = torch.randint(0, 97, (2, 5), generator=torch.Generator().manual_seed(4))
    ours = model.generate(prompt, 32, temperature=0)
    ref = hf.generate(prompt, max_new_tokens=32, do_sample=False, eos_token_id=None, pad_token_id=0)
    assert ours.shape == (2, 37)
    assert torch.equal(ours, ref)


def test_sampling_generate_matches_hf_with_same_seed():
    model, hf = make_pair("gqa_llama3_bias", seed=5)
    prompt = torch.randint(0, 97, (2, 4), generator=torch.Generator().manual_seed(6))
    torch.manual_seed(123)
    ours = model.generate(prompt, 20, temperature=0.9, top_k=20, top_p=0.9)
    torch.manual_seed(123)
    ref = hf.generate(prompt, max_new_tokens=20, do_sample=True, temperature=0.9, top_k=20, top_p=0.9,
                      eos_token_id=None, pad_token_id=0)
    assert torch.equal(ours, ref)


def test_left_padded_batch_generate_matches_hf():
    model, hf = make_pair("gqa_tied_linear", seed=7)
    prompt = torch.randint(1, 97, (2, 6), generator=torch.Generator().manual_seed(8))
    mask = torch.ones_like(prompt)
    prompt[0, :2], mask[0, :2] = 0, 0  # 第 0 行左侧 2 个 padding
    ours = model.generate(prompt, 12, temperature=0, attention_mask=mask)
    ref = hf.generate(prompt, attention_mask=mask, max_new_tokens=12, do_sample=False, eos_token_id=None,
                      pad_token_id=0)
    assert torch.equal(ours, ref)


@pytest.mark.parametrize("name", ["mha_untied", "mqa_yarn", "eager_tied", "gqa_dynamic_headdim"])
def test_kv_cache_decoding_equals_full_recompute(name):
    model, _ = make_pair(name, seed=9)
    ids = torch.randint(0, 97, (2, 19), generator=torch.Generator().manual_seed(10))
    with torch.no_grad():
        full = model(ids)
        cache = model.make_kv_cache(batch_size=2, max_seq_len=19)
        pieces = [model(ids[:, :7], kv_cache=cache)]  # prefill
        for i in range(7, 12):  # 逐 token 解码
            pieces.append(model(ids[:, i:i + 1], kv_cache=cache))
        pieces.append(model(ids[:, 12:], kv_cache=cache))  # 带前缀的多 token 块（右下对齐的因果掩码）
    assert cache.seq_len == 19
    torch.testing.assert_close(torch.cat(pieces, dim=1), full, rtol=1e-5, atol=1e-5)


def test_generate_with_and_without_cache_agree():
    model, _ = make_pair("gqa_llama3_bias", seed=11)
    prompt = torch.randint(0, 97, (3, 4), generator=torch.Generator().manual_seed(12))
    a = model.generate(prompt, 16, temperature=1.0, top_p=0.95, generator=torch.Generator().manual_seed(0))
    b = model.generate(prompt, 16, temperature=1.0, top_p=0.95, generator=torch.Generator().manual_seed(0),
                       use_cache=False)
    assert torch.equal(a, b)


def test_dynamic_rope_beyond_max_positions_matches_hf():
    model, hf = make_pair("gqa_dynamic_headdim", seed=13, max_position_embeddings=16)
    ids = torch.randint(0, 97, (1, 29), generator=torch.Generator().manual_seed(14))
    with torch.no_grad():
        torch.testing.assert_close(model(ids), hf(ids).logits, rtol=1e-5, atol=1e-5)


def test_eos_stops_and_pads():
    model, _ = make_pair("mha_untied", seed=15)
    prompt = torch.randint(0, 97, (2, 3), generator=torch.Generator().manual_seed(16))
    greedy = model.generate(prompt, 10, temperature=0)
    eos = int(greedy[0, 5])  # 第 0 行第 3 个生成的 token 当 eos
    out = model.generate(prompt, 10, temperature=0, eos_token_id=eos)
    row0 = out[0, 3:].tolist()
    first = row0.index(eos)
    assert all(tok == eos for tok in row0[first:])  # eos 之后只有填充（pad_token_id 为 None 时填 eos）


def test_attention_backends_agree_and_registry_is_used():
    calls = []

    def counting_backend(q, k, v, *, is_causal, attn_mask, scale, dropout_p=0.0):
        calls.append((q.shape, k.shape, is_causal, attn_mask is None))
        return eager_attention(q, k, v, is_causal=is_causal, attn_mask=attn_mask, scale=scale, dropout_p=dropout_p)

    register_attention_backend("test_counting", counting_backend)
    try:
        model, _ = make_pair("mqa_yarn", seed=17)
        ids = torch.randint(0, 97, (2, 9))
        with torch.no_grad():
            ref = model(ids)
            model.config.attn_implementation = "test_counting"
            torch.testing.assert_close(model(ids), ref, rtol=1e-5, atol=1e-5)
    finally:
        del ATTENTION_BACKENDS["test_counting"]
    # 后端拿到的是未复制的 KV 头：q (B, 4, T, D)，k (B, 1, S, D)
    assert calls[0][0][1] == 4 and calls[0][1][1] == 1 and calls[0][2] is True


def test_mlp_activation_is_a_swappable_module():
    """MLP 的激活是子模块属性 act_fn（与 HF 的 LlamaMLP 相同）：换成手写的 SiLU，输出不变且确实被调用。"""
    model, _ = make_pair("mha_untied", seed=19)
    ids = torch.randint(0, 97, (2, 7))
    with torch.no_grad():
        ref = model(ids)
    calls = []

    class HandSiLU(torch.nn.Module):
        def forward(self, x):
            calls.append(x.shape)
            return x * torch.sigmoid(x)

    assert isinstance(model.model.layers[0].mlp.act_fn, torch.nn.SiLU)
    for layer in model.model.layers:
        layer.mlp.act_fn = HandSiLU()
    with torch.no_grad():
        torch.testing.assert_close(model(ids), ref, rtol=1e-5, atol=1e-6)
    assert len(calls) == len(model.model.layers)


def test_counters_match_hf_and_formula():
    model, hf = make_pair("gqa_tied_linear")
    assert model.num_parameters() == hf.num_parameters()
    assert model.num_parameters(exclude_embeddings=True) == model.num_parameters() - 97 * 48
    c = model.config
    n_matmul = sum(m.weight.numel() for m in model.modules() if isinstance(m, torch.nn.Linear))
    assert model.flops_per_token(10, backward=False) == 2 * n_matmul + 4 * c.num_hidden_layers * 6 * 8 * 10
    assert model.flops_per_token(10) == 3 * model.flops_per_token(10, backward=False)


def test_scaled_init():
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=512, hidden_size=256, intermediate_size=512, num_hidden_layers=8,
                      num_attention_heads=4, max_position_embeddings=64)
    model = Llama(cfg)
    assert hasattr(model, "reset_parameters")  # 与 GPT-2 同名的初始化方法
    layer = model.model.layers[3]
    assert abs(layer.self_attn.q_proj.weight.std().item() - 0.02) < 1e-3
    assert abs(layer.self_attn.o_proj.weight.std().item() - 0.02 / 4) < 3e-4  # 0.02 / sqrt(2*8)
    assert abs(layer.mlp.down_proj.weight.std().item() - 0.02 / 4) < 3e-4
    assert torch.equal(layer.input_layernorm.weight, torch.ones(256))


def test_bf16_forward_close_to_hf():
    model, hf = make_pair("gqa_llama3_bias")
    model, hf = model.bfloat16(), hf.bfloat16()
    ids = torch.randint(0, 97, (2, 12))
    with torch.no_grad():
        ours, ref = model(ids), hf(ids).logits
    assert ours.dtype == torch.bfloat16
    torch.testing.assert_close(ours.float(), ref.float(), rtol=2e-2, atol=2e-2)


def test_rope_frequencies_stay_fp32_under_dtype_casts():
    model, _ = make_pair("gqa_llama3_bias")
    ref = model.model.rotary_emb.inv_freq.clone()
    model.to(torch.bfloat16)
    assert model.lm_head.weight.dtype == torch.bfloat16
    assert model.model.rotary_emb.inv_freq.dtype == torch.float32
    torch.testing.assert_close(model.model.rotary_emb.inv_freq, ref, rtol=0, atol=0)
    model.half().float()
    torch.testing.assert_close(model.model.rotary_emb.inv_freq, ref, rtol=0, atol=0)


def _hf_rope(q: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    from transformers.models.llama.modeling_llama import apply_rotary_pos_emb

    return apply_rotary_pos_emb(q, q, cos, sin)[0]


def _rope_inputs(dtype: torch.dtype, b: int = 2, t: int = 5, h: int = 3, d: int = 8):
    """x (B, T, H, D)，角度 (1, T, D/2)，以及 HF 约定的 cos/sin 表 (1, T, D)（同一组角度重复两遍）。"""
    torch.manual_seed(1)
    angles = torch.arange(t)[None, :, None].float() * torch.rand(d // 2) * 3
    cos, sin = torch.cat((angles, angles), -1).cos(), torch.cat((angles, angles), -1).sin()
    return torch.randn(b, t, h, d).to(dtype), angles, cos, sin


def _deinterleave(y: torch.Tensor) -> torch.Tensor:
    """交错顺序 (0, D/2, 1, D/2+1, …) 还原成 HF 的前后两半（独立于模型里的 interleave_halves 写出）。"""
    d = y.size(-1)
    return y.unflatten(-1, (d // 2, 2)).transpose(-1, -2).flatten(-2)


def test_interleaved_complex_rope_equals_hf_rotate_half():
    """q/k 的权重行交错 + 复数乘法 = HF 的 rotate_half 写法（差一个按头的置换），因而注意力分数完全相同。"""
    _, angles, cos, sin = _rope_inputs(torch.float32, t=7)
    torch.manual_seed(0)
    b, t, h, d, c = 2, 7, 3, 8, 24
    x, wq, wk = torch.randn(b, t, c), torch.randn(h * d, c), torch.randn(h * d, c)
    heads = lambda y: y.view(b, t, h, d).transpose(1, 2)  # noqa: E731
    q_hf, k_hf = _hf_rope(heads(x @ wq.T), cos, sin), _hf_rope(heads(x @ wk.T), cos, sin)  # (B, H, T, D)
    rope = llama.rope_table(angles)
    rows = lambda w: llama.interleave_halves(w.unflatten(0, (h, d)), dim=1).flatten(0, 1)  # noqa: E731
    q = llama.apply_rope((x @ rows(wq).T).view(b, t, h, d), rope).transpose(1, 2)
    k = llama.apply_rope((x @ rows(wk).T).view(b, t, h, d), rope).transpose(1, 2)
    torch.testing.assert_close(_deinterleave(q), q_hf)
    torch.testing.assert_close(q @ k.transpose(-1, -2), q_hf @ k_hf.transpose(-1, -2))


def test_rope_compiled_branch_equals_complex_branch(monkeypatch):
    """torch.compile 时走的实数写法与 eager 的复数乘法数值相同（输出与梯度）。"""
    x, angles, _, _ = _rope_inputs(torch.float32)
    x.requires_grad_()
    rope, g = llama.rope_table(angles), torch.randn_like(x)
    eager = llama.apply_rope(x, rope)
    (gx_eager,) = torch.autograd.grad(eager, x, g)
    monkeypatch.setattr(torch.compiler, "is_compiling", lambda: True)
    real = llama.apply_rope(x, rope)
    (gx_real,) = torch.autograd.grad(real, x, g)
    torch.testing.assert_close(real, eager)
    torch.testing.assert_close(gx_real, gx_eager)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_low_precision_rope_is_bitwise_hf(dtype):
    """bf16/fp16 下在 x 的 dtype 里旋转，与 HF 的 rotate_half 写法逐位相同（贪心生成因此与 HF 一致）。"""
    x, angles, cos, sin = _rope_inputs(dtype)  # x: HF 的顺序，每个头 [前半 | 后半]
    ref = _hf_rope(x.transpose(1, 2), cos.to(dtype), sin.to(dtype)).transpose(1, 2)
    ours = llama.apply_rope(llama.interleave_halves(x, dim=-1), llama.rope_table(angles))
    assert ours.dtype == dtype
    assert torch.equal(_deinterleave(ours), ref)


def test_training_forward_compiles_without_graph_breaks():
    """torch.compile 能把整个训练前向（含 loss）捕获成一张图：输入检查里读回 Python 的部分在编译时跳过。"""
    import torch._dynamo

    model, _ = make_pair("gqa_llama3_bias")
    ids = torch.randint(0, 97, (2, 9))
    torch._dynamo.reset()
    explanation = torch._dynamo.explain(model)(ids, ids)
    torch._dynamo.reset()
    assert explanation.graph_break_count == 0, explanation.break_reasons
    assert explanation.graph_count == 1


@pytest.mark.parametrize("name", ["mha_untied", "gqa_llama3_bias", "mqa_yarn"])
def test_qkv_fused_weights_equal_separate_projections(name):
    """project_qkv 的两种算法（交错权重、一次 GEMM / 三次 GEMM、交错输出）输出与梯度相同；默认按 B·T 与 C 的大小选。"""
    model, _ = make_pair(name, seed=11)
    attn = model.model.layers[0].self_attn
    x = torch.randn(3, 5, BASE["hidden_size"])
    results = []
    for fuse in (True, False):
        attn.zero_grad()
        qk, v = attn.project_qkv(x, fuse_weights=fuse)
        assert qk.shape == (3, 5, attn.n_head + attn.n_kv_head, attn.head_dim)
        assert v.shape == (3, 5, attn.n_kv_head, attn.head_dim)
        (qk.square().sum() + v.sin().sum()).backward()
        results.append((qk, v, [p.grad.clone() for p in attn.parameters() if p.grad is not None]))
    (qk_a, v_a, g_a), (qk_b, v_b, g_b) = results
    torch.testing.assert_close(qk_a, qk_b)
    torch.testing.assert_close(v_a, v_b)
    assert len(g_a) == len(g_b) > 0
    for a, b in zip(g_a, g_b):
        torch.testing.assert_close(a, b)


def test_qkv_fusion_only_for_plain_linears_without_hooks():
    """拼 q/k/v 权重只对普通 nn.Linear 成立：挂了 hook 的投影照样被调用，换成别的模块（如量化层）的投影也能跑。"""
    model, _ = make_pair("gqa_llama3_bias", seed=3)
    attn = model.model.layers[0].self_attn
    x = torch.randn(2, 40, BASE["hidden_size"])  # B·T ≥ C：默认会拼
    ref_qk, ref_v = attn.project_qkv(x, fuse_weights=False)

    seen = []
    handle = attn.k_proj.register_forward_hook(lambda m, inp, out: seen.append(out.shape))
    qk, v = attn.project_qkv(x, fuse_weights=True)
    handle.remove()
    assert seen == [(2, 40, attn.n_kv_head * attn.head_dim)]  # 拼接路径会跳过 k_proj.forward，hook 就静默失效
    torch.testing.assert_close(qk, ref_qk)

    class Wrapped(nn.Module):  # 没有 .weight 的"量化层"替身：只暴露 forward
        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def forward(self, t):
            return self.inner(t)

    grads = []
    handle = attn.v_proj.register_full_backward_hook(lambda m, gin, gout: grads.append(gout[0].shape))
    qk, v = attn.project_qkv(x.detach().requires_grad_(), fuse_weights=True)
    (qk.sum() + v.sum()).backward()
    handle.remove()
    assert grads == [(2, 40, attn.n_kv_head * attn.head_dim)]  # 反向 hook 同样要求走分开的投影

    llama = importlib.import_module("model_lab.02_architectures.llama")
    assert llama._fusable_linear(attn.k_proj)

    class Plain(Wrapped):  # 声明自己就是 F.linear(x, weight, bias)（张量并行不通信的列并行层）：可以拼
        is_plain_linear = True

        @property
        def weight(self):
            return self.inner.weight

        @property
        def bias(self):
            return self.inner.bias

    assert llama._fusable_linear(Plain(attn.k_proj)) and not llama._fusable_linear(Wrapped(attn.k_proj))
    attn.q_proj = Wrapped(attn.q_proj)
    qk, v = attn.project_qkv(x)
    torch.testing.assert_close(qk, ref_qk)
    torch.testing.assert_close(v, ref_v)
