"""mla.py 与 HF DeepseekV3Attention 逐位对照（输出与全部梯度，fp32），以及吸收形式 == 朴素形式。"""

from __future__ import annotations

import importlib

import pytest
import torch
from transformers import DeepseekV3Config
from transformers.models.deepseek_v3.modeling_deepseek_v3 import DeepseekV3Attention, DeepseekV3RotaryEmbedding

mla = importlib.import_module("model_lab.01_components.mla")

TOL = dict(atol=1e-5, rtol=1e-5)

CONFIGS = {
    "q_lora+interleave": dict(),
    "no_q_lora+half_rope": dict(q_lora_rank=None, rope_interleave=False),
    "bias+v_ne_nope": dict(attention_bias=True, v_head_dim=12, qk_nope_head_dim=20, num_attention_heads=3),
}


def hf_deepseek(config):
    hf_config = DeepseekV3Config(
        hidden_size=config.hidden_size, num_attention_heads=config.num_attention_heads,
        num_key_value_heads=config.num_attention_heads, q_lora_rank=config.q_lora_rank,
        kv_lora_rank=config.kv_lora_rank, qk_nope_head_dim=config.qk_nope_head_dim,
        qk_rope_head_dim=config.qk_rope_head_dim, v_head_dim=config.v_head_dim,
        rope_interleave=config.rope_interleave, attention_bias=config.attention_bias,
        rope_parameters={"rope_type": "default", "rope_theta": config.rope_theta}, attn_implementation="eager",
    )
    return DeepseekV3Attention(hf_config, layer_idx=0), DeepseekV3RotaryEmbedding(hf_config)


def inputs(b=3, t=7, pads=(0, 3, 1), hidden=64, seed=0):
    torch.manual_seed(seed)
    x = torch.randn(b, t, hidden)
    padding = torch.ones(b, t, dtype=torch.long)
    for i, n in enumerate(pads):
        padding[i, :n] = 0
    position_ids = (padding.cumsum(-1) - 1).clamp_min(0)
    return x, padding, position_ids


@pytest.mark.parametrize("overrides", CONFIGS.values(), ids=CONFIGS.keys())
@pytest.mark.parametrize("with_padding", [False, True])
def test_matches_hf_deepseek_v3_attention_outputs_and_grads(overrides, with_padding):
    config = mla.MLAConfig(**overrides)
    torch.manual_seed(1)
    ours = mla.MultiHeadLatentAttention(config)
    with torch.no_grad():  # 让 RMSNorm 的权重不是全 1，梯度对照才有意义
        for p in ours.parameters():
            if p.dim() == 1:
                p.add_(0.1 * torch.randn_like(p))
    ref, rotary = hf_deepseek(config)
    ref.load_state_dict(ours.state_dict())
    x, padding, position_ids = inputs(pads=(0, 3, 1) if with_padding else (0, 0, 0))
    t = x.shape[1]
    mask = torch.ones(t, t, dtype=torch.bool).tril() & padding.bool()[:, None, None, :]
    additive = torch.zeros(mask.shape).masked_fill(~mask, torch.finfo(torch.float32).min)
    x1, x2 = x.clone().requires_grad_(), x.clone().requires_grad_()
    y1 = ours(x1, position_ids, padding if with_padding else None)
    y2, _ = ref(x2, position_embeddings=rotary(x2, position_ids), attention_mask=additive)
    torch.testing.assert_close(y1, y2, **TOL)  # 用 finfo.min 掩码，连全掩的填充行也相同
    # 全掩的填充行：HF 把 finfo.min 加到打分上，梯度仍会流过这些行的均匀 softmax；我们用 masked_fill，
    # 梯度为 0。填充行的输出本来就被丢弃，所以 loss 只看真实 token 的行。
    w = torch.randn_like(y1) * padding[..., None]
    (y1 * w).sum().backward()
    (y2 * w).sum().backward()
    torch.testing.assert_close(x1.grad, x2.grad, **TOL)
    ref_params = dict(ref.named_parameters())
    assert set(ref_params) == {n for n, _ in ours.named_parameters()}
    for name, p in ours.named_parameters():
        torch.testing.assert_close(p.grad, ref_params[name].grad, **TOL, msg=name)


@pytest.mark.parametrize("overrides", CONFIGS.values(), ids=CONFIGS.keys())
def test_absorbed_equals_naive_outputs_and_grads(overrides):
    config = mla.MLAConfig(**overrides)
    torch.manual_seed(2)
    model = mla.MultiHeadLatentAttention(config)
    x, padding, position_ids = inputs(seed=3)
    outs, grads = [], []
    for absorb in (False, True):
        model.zero_grad()
        xi = x.clone().requires_grad_()
        y = model(xi, position_ids, padding, absorb=absorb)
        (y * torch.arange(y.numel()).reshape(y.shape).sin()).sum().backward()
        outs.append(y)
        grads.append([xi.grad] + [p.grad.clone() for p in model.parameters()])
    torch.testing.assert_close(outs[0], outs[1], **TOL)
    for g1, g2 in zip(*grads):
        torch.testing.assert_close(g1, g2, **TOL)


@pytest.mark.parametrize("absorb", [False, True])
def test_latent_cache_decoding_equals_full(absorb):
    config = mla.MLAConfig()
    torch.manual_seed(4)
    model = mla.MultiHeadLatentAttention(config)
    x, padding, position_ids = inputs(b=2, t=9, pads=(0, 2), seed=5)
    full = model(x, position_ids, padding)
    cache = mla.LatentCache()
    prefill = model(x[:, :3], position_ids[:, :3], padding[:, :3], cache, absorb=absorb)
    steps = [model(x[:, i : i + 1], position_ids[:, i : i + 1], padding[:, : i + 1], cache, absorb=absorb)
             for i in range(3, 9)]
    # 只比较真实 token：全掩的填充行是"对 Tk 个 key 均匀平均"，Tk 在增量解码时不同，本来就无意义
    real = padding.bool()
    torch.testing.assert_close(torch.cat([prefill, *steps], 1)[real], full[real], **TOL)
    # 缓存只有 d_c + d_rope 个数每 token，与头数无关
    assert cache.c_kv.shape == (2, 9, config.kv_lora_rank)
    assert cache.k_rope.shape == (2, 1, 9, config.qk_rope_head_dim)


def test_rope_interleave_is_a_permutation_of_half_layout():
    # 交错布局 = 先把 (偶, 奇) 维重排成 (前半, 后半) 再做 rotate_half 式 RoPE
    torch.manual_seed(6)
    x = torch.randn(2, 3, 5, 8)
    cos, sin = mla.rope_cos_sin(torch.arange(5).expand(2, 5), 8, 10000.0)
    permuted = torch.cat([x[..., 0::2], x[..., 1::2]], dim=-1)
    torch.testing.assert_close(mla.apply_rope(x, cos, sin, True), mla.apply_rope(permuted, cos, sin, False))


def test_kv_cache_sizes_deepseek_v3():
    assert mla.kv_cache_bytes_per_token("MLA") == (512 + 64) * 2
    assert mla.kv_cache_bytes_per_token("GQA") == 2 * 8 * 128 * 2
    assert mla.kv_cache_bytes_per_token("MHA") == 128 * (192 + 128) * 2
    sizes = {k: mla.kv_cache_bytes_per_token(k) for k in ("MHA", "GQA", "MQA", "MLA")}
    assert sizes["MQA"] < sizes["MLA"] < sizes["GQA"] < sizes["MHA"]


def test_clear_errors():
    with pytest.raises(ValueError, match="qk_rope_head_dim=7"):
        mla.MLAConfig(qk_rope_head_dim=7)
    with pytest.raises(ValueError, match="q_lora_rank=0"):
        mla.MLAConfig(q_lora_rank=0)
    with pytest.raises(ValueError, match="kind='XYZ'"):
        mla.kv_cache_bytes_per_token("XYZ")
    model = mla.MultiHeadLatentAttention(mla.MLAConfig())
    with pytest.raises(ValueError, match="x 应为"):
        model(torch.randn(1, 4, 32))
    with pytest.raises(ValueError, match="padding_mask 的形状"):
        model(torch.randn(1, 4, 64), padding_mask=torch.ones(1, 5))
