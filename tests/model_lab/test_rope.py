"""RoPE 课（model_lab/01_components/rope.py）对照 transformers 的 LlamaRotaryEmbedding / rope init 函数，
以及 Meta 原版的复数乘法写法。"""

from __future__ import annotations

import importlib

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from transformers import LlamaConfig
from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS
from transformers.models.llama.modeling_llama import LlamaRotaryEmbedding, apply_rotary_pos_emb

rope = importlib.import_module("model_lab.01_components.rope")

MAX_POS = 256
CONFIGS = [
    {"rope_type": "default", "rope_theta": 10000.0},
    {"rope_type": "default", "rope_theta": 500000.0},
    {"rope_type": "linear", "rope_theta": 10000.0, "factor": 4.0},
    {"rope_type": "linear", "rope_theta": 1e6, "factor": 2.5},
    {"rope_type": "dynamic", "rope_theta": 10000.0, "factor": 2.0},
    {"rope_type": "dynamic", "rope_theta": 500000.0, "factor": 8.0},
    {"rope_type": "yarn", "rope_theta": 10000.0, "factor": 4.0, "original_max_position_embeddings": 64},
    {"rope_type": "yarn", "rope_theta": 10000.0, "factor": 8.0, "original_max_position_embeddings": 128,
     "beta_fast": 16, "beta_slow": 2, "truncate": False},
    {"rope_type": "yarn", "rope_theta": 10000.0, "factor": 40.0, "original_max_position_embeddings": 64,
     "mscale": 1.0, "mscale_all_dim": 0.707},  # DeepSeek-V2/V3 的写法
    {"rope_type": "yarn", "rope_theta": 10000.0, "factor": 2.0, "original_max_position_embeddings": 32,
     "attention_factor": 1.25},
    {"rope_type": "llama3", "rope_theta": 500000.0, "factor": 8.0, "low_freq_factor": 1.0,
     "high_freq_factor": 4.0, "original_max_position_embeddings": 64},
    {"rope_type": "llama3", "rope_theta": 10000.0, "factor": 32.0, "low_freq_factor": 1.0,
     "high_freq_factor": 4.0, "original_max_position_embeddings": 128},
]
IDS = [f"{c['rope_type']}-{i}" for i, c in enumerate(CONFIGS)]


def hf_config(head_dim: int, params: dict) -> LlamaConfig:
    return LlamaConfig(hidden_size=head_dim * 4, num_attention_heads=4, max_position_embeddings=MAX_POS,
                       rope_parameters=dict(params))


@pytest.mark.parametrize("head_dim", [8, 64, 128])
@pytest.mark.parametrize("params", CONFIGS, ids=IDS)
def test_inv_freq_and_attention_scaling_equal_hf_init_functions(params, head_dim):
    config = hf_config(head_dim, params)
    if params["rope_type"] == "default":
        ref_inv_freq, ref_scaling = LlamaRotaryEmbedding.compute_default_rope_parameters(config)
    else:
        ref_inv_freq, ref_scaling = ROPE_INIT_FUNCTIONS[params["rope_type"]](config, "cpu")
    inv_freq, scaling = rope.compute_inv_freq(head_dim, params, MAX_POS)
    torch.testing.assert_close(inv_freq, ref_inv_freq, rtol=1e-6, atol=0)
    assert scaling == pytest.approx(ref_scaling, rel=1e-12)


@pytest.mark.parametrize("seq_len", [100, 300, 1000])
def test_dynamic_ntk_follows_sequence_length_like_hf(seq_len):
    params = CONFIGS[4]
    ref_inv_freq, _ = ROPE_INIT_FUNCTIONS["dynamic"](hf_config(64, params), "cpu", seq_len=seq_len)
    inv_freq, _ = rope.compute_inv_freq(64, params, MAX_POS, seq_len=seq_len)
    torch.testing.assert_close(inv_freq, ref_inv_freq, rtol=1e-6, atol=0)
    # 不超过 max_position_embeddings 时与未缩放的 RoPE 完全一样
    assert (seq_len > MAX_POS) != torch.equal(inv_freq, rope.default_inv_freq(64, 10000.0))


@pytest.mark.parametrize("shape", [(1, 1, 1, 8), (2, 3, 17, 64), (3, 2, 301, 32)])  # (B, nh, T, D)，含奇数长度
@pytest.mark.parametrize("params", CONFIGS, ids=IDS)
def test_cos_sin_and_rotated_qk_equal_hf_with_gradients(params, shape):
    B, nh, T, D = shape
    ref = LlamaRotaryEmbedding(hf_config(D, params))
    ours = rope.RotaryEmbedding(D, params, MAX_POS)
    q = torch.randn(shape, dtype=torch.float32, requires_grad=True)
    k = torch.randn(shape, dtype=torch.float32, requires_grad=True)
    # 非连续、带偏移的位置（如 KV cache 解码或打包序列）
    pos = torch.stack([torch.arange(T) + 7 * b for b in range(B)])
    cos, sin = ours(q, pos)
    cos_ref, sin_ref = ref(q, pos)
    # dynamic 且超过 max_position_embeddings 时，HF 用 fp32 张量算新的 base（seq_len 是张量），
    # 我们用 Python float（fp64）算完再舍入一次：base 差 1 个 fp32 ulp，位置 300 处角度差 ~1e-6
    tol = 1e-5 if params["rope_type"] == "dynamic" and int(pos.max()) >= MAX_POS else 1e-6
    torch.testing.assert_close(cos, cos_ref, rtol=tol, atol=tol)
    torch.testing.assert_close(sin, sin_ref, rtol=tol, atol=tol)

    q_out, k_out = rope.apply_rope(q, cos, sin), rope.apply_rope(k, cos, sin)
    grad = torch.randn(shape)
    gq, gk = torch.autograd.grad(((q_out + 2 * k_out) * grad).sum(), (q, k))
    q_ref, k_ref = apply_rotary_pos_emb(q, k, cos_ref, sin_ref)
    gq_ref, gk_ref = torch.autograd.grad(((q_ref + 2 * k_ref) * grad).sum(), (q, k))
    for a, b in [(q_out, q_ref), (k_out, k_ref), (gq, gq_ref), (gk, gk_ref)]:
        torch.testing.assert_close(a, b, rtol=tol, atol=tol)


def test_bf16_path_equals_hf_in_bf16():
    params = CONFIGS[6]
    q = torch.randn(2, 4, 33, 64).to(torch.bfloat16)
    pos = torch.arange(33).expand(2, 33)
    cos, sin = rope.RotaryEmbedding(64, params, MAX_POS)(q, pos)
    cos_ref, sin_ref = LlamaRotaryEmbedding(hf_config(64, params))(q, pos)
    assert cos.dtype == torch.bfloat16
    torch.testing.assert_close(cos, cos_ref, rtol=0, atol=0)
    torch.testing.assert_close(rope.apply_rope(q, cos, sin), apply_rotary_pos_emb(q, q, cos_ref, sin_ref)[0],
                               rtol=0, atol=0)


# Meta 原版 llama/model.py 的写法（复数乘法，x 形状 (B, T, nh, D)），作为 interleaved 布局的参考
def meta_precompute_freqs_cis(dim: int, end: int, theta: float = 10000.0) -> torch.Tensor:
    freqs = 1.0 / (theta ** (torch.arange(0, dim, 2)[: (dim // 2)].float() / dim))
    t = torch.arange(end, device=freqs.device, dtype=torch.float32)
    freqs = torch.outer(t, freqs)
    return torch.polar(torch.ones_like(freqs), freqs)  # complex64 (T, D/2)


def meta_apply_rotary_emb(x: torch.Tensor, freqs_cis: torch.Tensor) -> torch.Tensor:
    x_ = torch.view_as_complex(x.float().reshape(*x.shape[:-1], -1, 2))
    freqs_cis = freqs_cis.view(1, x_.shape[1], 1, x_.shape[-1])
    return torch.view_as_real(x_ * freqs_cis).flatten(3).type_as(x)


@pytest.mark.parametrize("shape", [(1, 1, 5, 8), (2, 4, 31, 64)])
def test_interleaved_layout_equals_meta_complex_form(shape):
    B, nh, T, D = shape
    x = torch.randn(shape, dtype=torch.float32, requires_grad=True)
    cos, sin = rope.RotaryEmbedding(D)(x, torch.arange(T).expand(B, T))
    ours = rope.apply_rope_interleaved(x, cos, sin)
    ref = meta_apply_rotary_emb(x.transpose(1, 2), meta_precompute_freqs_cis(D, T)).transpose(1, 2)
    torch.testing.assert_close(ours, ref, rtol=1e-6, atol=1e-6)
    grad = torch.randn(shape)
    (g,) = torch.autograd.grad((ours * grad).sum(), x)
    (g_ref,) = torch.autograd.grad((ref * grad).sum(), x)
    torch.testing.assert_close(g, g_ref, rtol=1e-6, atol=1e-6)


def test_weight_permutation_maps_meta_layout_to_hf_layout():
    n_heads, D, hidden, T = 4, 16, 64, 11
    w_meta = torch.randn(n_heads * D, hidden)
    x = torch.randn(1, T, hidden)
    pos = torch.arange(T).expand(1, T)
    cos, sin = rope.RotaryEmbedding(D)(x, pos)

    def heads(y):  # (1, T, nh·D) -> (1, nh, T, D)
        return y.view(1, T, n_heads, D).transpose(1, 2)

    q_meta = rope.apply_rope_interleaved(heads(x @ w_meta.T), cos, sin)
    q_hf = rope.apply_rope(heads(x @ rope.permute_qk_weight(w_meta, n_heads).T), cos, sin)
    perm = rope.interleaved_to_half_perm(D)
    torch.testing.assert_close(q_hf, q_meta[..., perm], rtol=1e-6, atol=1e-6)
    # 置换同时作用于 q、k，注意力分数不变：两种布局的模型完全等价
    torch.testing.assert_close(q_hf @ q_hf.transpose(-1, -2), q_meta @ q_meta.transpose(-1, -2),
                               rtol=1e-5, atol=1e-5)
    assert torch.equal(rope.permute_qk_weight(w_meta, n_heads).view(n_heads, D, hidden),
                       w_meta.view(n_heads, D, hidden)[:, perm])


def _score(q: torch.Tensor, k: torch.Tensor, m: int, n: int, inv_freq: torch.Tensor) -> float:
    D = q.shape[-1]
    ang = torch.tensor([[m], [n]], dtype=torch.float64) * inv_freq
    cos, sin = torch.cat((ang, ang), -1).cos().view(2, 1, D), torch.cat((ang, ang), -1).sin().view(2, 1, D)
    rq = rope.apply_rope(q.view(1, 1, 1, D), cos[:1], sin[:1])
    rk = rope.apply_rope(k.view(1, 1, 1, D), cos[1:], sin[1:])
    return float((rq * rk).sum())


@settings(max_examples=60, deadline=None)
@given(m=st.integers(0, 100_000), n=st.integers(0, 100_000), shift=st.integers(-50_000, 50_000),
       half_dim=st.integers(1, 32), seed=st.integers(0, 2**16))
def test_score_depends_only_on_relative_position(m, n, shift, half_dim, seed):
    D = 2 * half_dim
    gen = torch.Generator().manual_seed(seed)
    q, k = torch.randn(D, generator=gen, dtype=torch.float64), torch.randn(D, generator=gen, dtype=torch.float64)
    inv_freq = rope.default_inv_freq(D, 10000.0).double()
    shift = max(shift, -min(m, n))  # 位置保持非负
    # fp64 下角度 m·θ 的舍入误差约 m·1e-16，位置 1e5 时 q·k 的误差 ~1e-9 量级
    assert _score(q, k, m, n, inv_freq) == pytest.approx(_score(q, k, m + shift, n + shift, inv_freq),
                                                        abs=1e-8 * float(q.norm() * k.norm()))


def test_rope_preserves_norm():
    x = torch.randn(2, 3, 40, 32, dtype=torch.float64)
    ang = torch.arange(40, dtype=torch.float64)[:, None] * rope.default_inv_freq(32, 10000.0).double()
    emb = torch.cat((ang, ang), -1)[None]
    out = rope.apply_rope(x, emb.cos(), emb.sin())
    torch.testing.assert_close(out.norm(dim=-1), x.norm(dim=-1))


def test_bad_inputs_raise_clear_errors():
    with pytest.raises(ValueError, match="head_dim=7"):
        rope.RotaryEmbedding(7)
    with pytest.raises(ValueError, match="default, linear, dynamic, yarn, llama3"):
        rope.compute_inv_freq(64, {"rope_type": "ntk-by-parts"})
    with pytest.raises(ValueError, match="'factor'"):
        rope.compute_inv_freq(64, {"rope_type": "linear"})
    with pytest.raises(ValueError, match="'low_freq_factor'"):
        rope.compute_inv_freq(64, {"rope_type": "llama3", "factor": 8.0, "high_freq_factor": 4.0})
    with pytest.raises(ValueError, match="factor=0.5"):
        rope.compute_inv_freq(64, {"rope_type": "yarn", "factor": 0.5})
    cos = sin = torch.zeros(1, 5, 16)
    with pytest.raises(ValueError, match="形状不匹配"):
        rope.apply_rope(torch.zeros(1, 2, 5, 8), cos, sin)
    with pytest.raises(ValueError, match="head_dim=15"):
        rope.apply_rope(torch.zeros(1, 2, 5, 15), cos, sin)
    with pytest.raises(ValueError, match="n_heads=3"):
        rope.permute_qk_weight(torch.zeros(32, 8), 3)
