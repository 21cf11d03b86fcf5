"""attention.py 与 PyTorch SDPA、HF LlamaAttention 逐位对照：输出与全部梯度（fp32，1e-5）。"""

from __future__ import annotations

import importlib

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from transformers import LlamaConfig
from transformers.models.llama.modeling_llama import LlamaAttention, LlamaRotaryEmbedding
from transformers.models.llama.modeling_llama import repeat_kv as hf_repeat_kv

attention = importlib.import_module("model_lab.01_components.attention")

TOL = dict(atol=1e-5, rtol=1e-5)


def hf_llama(config):
    hf_config = LlamaConfig(
        hidden_size=config.hidden_size, num_attention_heads=config.num_attention_heads,
        num_key_value_heads=config.num_key_value_heads, head_dim=config.head_dim,
        attention_bias=config.attention_bias, attn_implementation="eager",
        rope_parameters={"rope_type": "default", "rope_theta": config.rope_theta},
    )
    return LlamaAttention(hf_config, layer_idx=0), LlamaRotaryEmbedding(hf_config)


def make_padding(b, t, pads):
    padding = torch.ones(b, t, dtype=torch.long)
    for i, n in enumerate(pads):
        padding[i, :n] = 0  # 左填充
    return padding


@pytest.mark.parametrize("nkv", [6, 2, 1], ids=["MHA", "GQA", "MQA"])
@pytest.mark.parametrize("pads", [None, (0, 3, 1)], ids=["causal", "causal+padding"])
@pytest.mark.parametrize("bias", [False, True])
def test_matches_hf_llama_attention_outputs_and_grads(nkv, pads, bias):
    torch.manual_seed(0)
    config = attention.AttentionConfig(hidden_size=48, num_attention_heads=6, num_key_value_heads=nkv,
                                       attention_bias=bias)
    ours = attention.Attention(config)
    ref, rotary = hf_llama(config)
    ref.load_state_dict(ours.state_dict())
    b, t = 3, 7  # 奇数长度
    x = torch.randn(b, t, config.hidden_size)
    padding = make_padding(b, t, pads) if pads else None
    position_ids = (padding.cumsum(-1) - 1).clamp_min(0) if pads else torch.arange(t).expand(b, t)
    mask = torch.ones(t, t, dtype=torch.bool).tril().expand(b, 1, t, t)
    if padding is not None:
        mask = mask & padding.bool()[:, None, None, :]
    additive = torch.zeros(mask.shape).masked_fill(~mask, torch.finfo(torch.float32).min)
    # 只让真实 token 的行进入 loss：全被掩掉的填充行两边约定不同（我们输出 0，HF 输出均匀平均）
    rows = padding.bool() if padding is not None else torch.ones(b, t, dtype=torch.bool)
    weight = torch.randn(b, t, config.hidden_size) * rows[..., None]

    x1, x2 = x.clone().requires_grad_(), x.clone().requires_grad_()
    y1 = ours(x1, position_ids, padding)
    y2, _ = ref(x2, position_embeddings=rotary(x2, position_ids), attention_mask=additive)
    torch.testing.assert_close(y1[rows], y2[rows], **TOL)
    (y1 * weight).sum().backward()
    (y2 * weight).sum().backward()
    torch.testing.assert_close(x1.grad, x2.grad, **TOL)
    ref_params = dict(ref.named_parameters())
    for name, p in ours.named_parameters():
        torch.testing.assert_close(p.grad, ref_params[name].grad, **TOL, msg=name)


@pytest.mark.parametrize("nh,nkv,tq,tk", [(4, 4, 5, 5), (4, 2, 3, 11), (6, 1, 1, 9)])
@pytest.mark.parametrize("mask_kind", ["causal", "bool", "float", "none"])
def test_core_matches_torch_sdpa(nh, nkv, tq, tk, mask_kind):
    torch.manual_seed(1)
    q = torch.randn(2, nh, tq, 16, requires_grad=True)
    k = torch.randn(2, nkv, tk, 16, requires_grad=True)
    v = torch.randn(2, nkv, tk, 16, requires_grad=True)
    kwargs = {}
    if mask_kind == "causal":
        kwargs["is_causal"] = tq == tk  # PyTorch 的 is_causal 是左上对齐，只在 Tq==Tk 时与我们相同
        if tq != tk:
            kwargs["attn_mask"] = torch.ones(tq, tk, dtype=torch.bool).tril(tk - tq)
    elif mask_kind == "bool":
        kwargs["attn_mask"] = torch.rand(2, 1, tq, tk) > 0.3
    elif mask_kind == "float":
        kwargs["attn_mask"] = torch.randn(2, nh, tq, tk)
    ours = attention.scaled_dot_product_attention(q, k, v, **kwargs)
    grads_ours = torch.autograd.grad((ours * ours.detach().cos()).sum(), (q, k, v))
    ref = F.scaled_dot_product_attention(q, k, v, enable_gqa=True, **kwargs)
    grads_ref = torch.autograd.grad((ref * ref.detach().cos()).sum(), (q, k, v))
    torch.testing.assert_close(ours, ref, **TOL)
    for g1, g2 in zip(grads_ours, grads_ref):
        torch.testing.assert_close(g1, g2, **TOL)


def test_fully_masked_rows_are_zero_like_sdpa_and_have_finite_grads():
    q = torch.randn(1, 2, 3, 8, requires_grad=True)
    k = torch.randn(1, 2, 3, 8, requires_grad=True)
    v = torch.randn(1, 2, 3, 8)
    mask = torch.tensor([[False] * 3, [True, False, False], [True, True, True]])
    out = attention.scaled_dot_product_attention(q, k, v, attn_mask=mask)
    assert torch.equal(out[..., 0, :], torch.zeros_like(out[..., 0, :]))
    torch.testing.assert_close(out, F.scaled_dot_product_attention(q, k, v, attn_mask=mask), **TOL)
    out.sum().backward()
    assert torch.isfinite(q.grad).all() and torch.isfinite(k.grad).all()


def test_safe_softmax_huge_logits():
    x = torch.tensor([[1e30, 1e30, -1e30], [3e38, 0.0, -3e38], [5000.0, 4999.0, 0.0]])
    p = attention.safe_softmax(x)
    assert torch.isfinite(p).all()
    torch.testing.assert_close(p[0], torch.tensor([0.5, 0.5, 0.0]))
    torch.testing.assert_close(p[1], torch.tensor([1.0, 0.0, 0.0]))
    torch.testing.assert_close(p[2], torch.softmax(torch.tensor([1.0, 0.0, -4999.0]), -1))
    naive = torch.exp(x) / torch.exp(x).sum(-1, keepdim=True)
    assert torch.isnan(naive).any()  # 不减最大值的写法确实会坏
    torch.testing.assert_close(attention.safe_softmax(torch.full((2, 3), float("-inf"))), torch.zeros(2, 3))


@pytest.mark.parametrize("n_rep", [1, 3])
def test_repeat_kv_matches_hf(n_rep):
    x = torch.randn(2, 2, 5, 4)
    torch.testing.assert_close(attention.repeat_kv(x, n_rep), hf_repeat_kv(x, n_rep), rtol=0, atol=0)
    torch.testing.assert_close(attention.repeat_kv(x, n_rep), x.repeat_interleave(n_rep, dim=1), rtol=0, atol=0)


@pytest.mark.parametrize("nkv", [4, 2, 1])
def test_kv_cache_decoding_equals_full_recompute(nkv):
    torch.manual_seed(2)
    config = attention.AttentionConfig(hidden_size=32, num_attention_heads=4, num_key_value_heads=nkv)
    attn = attention.Attention(config)
    b, t = 2, 9
    x = torch.randn(b, t, 32)
    padding = make_padding(b, t, (0, 2))
    position_ids = (padding.cumsum(-1) - 1).clamp_min(0)
    full = attn(x, position_ids, padding)
    cache = attention.KVCache()
    prefill = attn(x[:, :4], position_ids[:, :4], padding[:, :4], kv_cache=cache)  # 先整段 prefill 4 个
    steps = [attn(x[:, i : i + 1], position_ids[:, i : i + 1], padding[:, : i + 1], kv_cache=cache)
             for i in range(4, t)]
    inc = torch.cat([prefill, *steps], dim=1)
    torch.testing.assert_close(inc, full, **TOL)
    assert cache.k.shape == (b, nkv, t, 8)  # 缓存按 KV 头数存，不按 query 头数


@pytest.mark.parametrize("pads", [None, (0, 2)])
def test_sdpa_path_equals_manual_path(pads):
    torch.manual_seed(3)
    attn = attention.Attention(attention.AttentionConfig(hidden_size=32, num_attention_heads=4, num_key_value_heads=2))
    x = torch.randn(2, 6, 32)
    padding = make_padding(2, 6, pads) if pads else None
    torch.testing.assert_close(attn(x, padding_mask=padding), attn(x, padding_mask=padding, use_sdpa=True), **TOL)
    cache = attention.KVCache()  # SDPA 路径的增量解码（Tq < Tk，右下对齐的因果掩码）
    steps = [attn(x[:, :3], kv_cache=cache, use_sdpa=True)]
    steps += [attn(x[:, i : i + 1], kv_cache=cache, use_sdpa=True) for i in range(3, 6)]
    torch.testing.assert_close(torch.cat(steps, 1), attn(x), **TOL)


def test_kv_cache_table_llama3_8b():
    rows = {name.split()[0]: (per_layer, total) for name, per_layer, total in attention.kv_cache_table()}
    assert rows["MHA"] == (2 * 32 * 128 * 2, 2 * 32 * 128 * 2 * 32)
    assert rows["GQA"][0] * 4 == rows["MHA"][0]
    assert rows["MQA"][0] * 8 == rows["GQA"][0]
    assert rows["MLA"][0] == (512 + 64) * 2


def test_clear_errors():
    with pytest.raises(ValueError, match="not divisible by num_key_value_heads"):
        attention.AttentionConfig(hidden_size=48, num_attention_heads=6, num_key_value_heads=4)
    with pytest.raises(ValueError, match="not divisible by num_attention_heads"):
        attention.AttentionConfig(hidden_size=50, num_attention_heads=4)
    attn = attention.Attention(attention.AttentionConfig(hidden_size=32, num_attention_heads=4))
    with pytest.raises(ValueError, match="x 应为"):
        attn(torch.randn(2, 5, 16))
    with pytest.raises(ValueError, match="padding_mask 的形状"):
        attn(torch.randn(2, 5, 32), padding_mask=torch.ones(2, 4))
    q = torch.randn(1, 4, 3, 8)
    with pytest.raises(ValueError, match="attn_mask 的形状"):
        attention.scaled_dot_product_attention(q, q, q, attn_mask=torch.ones(3, 4, dtype=torch.bool))
    with pytest.raises(ValueError, match="不能被 KV 头数"):
        attention.scaled_dot_product_attention(q, q[:, :3], q[:, :3])
    with pytest.raises(ValueError, match="batch 或 head_dim"):
        attention.scaled_dot_product_attention(q, q[..., :4], q)


@settings(max_examples=25, deadline=None)
@given(
    b=st.integers(1, 2), nkv=st.integers(1, 3), groups=st.integers(1, 3), tq=st.integers(1, 6),
    extra=st.integers(0, 4), hs=st.sampled_from([2, 8]), seed=st.integers(0, 2**16),
)
def test_property_random_masks_match_sdpa(b, nkv, groups, tq, extra, hs, seed):
    # 任意形状、任意（可能整行全 False 的）bool 掩码：输出与 SDPA 相同且没有 NaN
    g = torch.Generator().manual_seed(seed)
    tk = tq + extra
    q = torch.randn(b, nkv * groups, tq, hs, generator=g)
    k, v = (torch.randn(b, nkv, tk, hs, generator=g) for _ in range(2))
    mask = torch.rand(b, 1, tq, tk, generator=g) > 0.5
    ours = attention.scaled_dot_product_attention(q, k, v, attn_mask=mask)
    assert torch.isfinite(ours).all()
    torch.testing.assert_close(ours, F.scaled_dot_product_attention(q, k, v, attn_mask=mask, enable_gqa=True), **TOL)
