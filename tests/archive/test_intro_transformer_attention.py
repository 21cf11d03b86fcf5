"""archive/Introductory learning/03_Transformer/04_attention_mechanisms.py：与 F.scaled_dot_product_attention、
nn.MultiheadAttention 的输出与梯度对照；mask；加性注意力；正弦位置编码的性质。"""

from __future__ import annotations

import itertools

import pytest
import torch
import torch.nn as nn
from torch.nn import functional as F

from tests.conftest import load_script

att = load_script("archive/Introductory learning/03_Transformer/04_attention_mechanisms.py")


def assert_grads_close(out_a, out_b, inputs_a, inputs_b, atol=1e-5):
    torch.testing.assert_close(out_a, out_b, atol=atol, rtol=1e-5)
    g = torch.randn_like(out_b)
    for a, b in zip(torch.autograd.grad(out_a, inputs_a, g), torch.autograd.grad(out_b, inputs_b, g)):
        torch.testing.assert_close(a, b, atol=atol, rtol=1e-5)


@pytest.mark.parametrize("mask_kind", ["none", "causal", "bool", "float"])
@pytest.mark.parametrize("Tq,Tk,d", [(5, 5, 8), (3, 7, 16), (1, 4, 4)])
def test_sdpa_matches_torch(mask_kind, Tq, Tk, d):
    torch.manual_seed(Tq * 100 + Tk * 10 + d)
    q = torch.randn(2, 3, Tq, d, requires_grad=True)
    k = torch.randn(2, 3, Tk, d, requires_grad=True)
    v = torch.randn(2, 3, Tk, 6, requires_grad=True)
    mask = None
    if mask_kind == "bool":
        mask = torch.rand(2, 1, Tq, Tk) > 0.4
        mask[..., 0] = True
    elif mask_kind == "float":
        mask = torch.randn(Tq, Tk)
    causal = mask_kind == "causal"
    ours = att.scaled_dot_product_attention(q, k, v, mask, is_causal=causal)
    ref = F.scaled_dot_product_attention(q, k, v, mask, is_causal=causal)
    assert_grads_close(ours, ref, (q, k, v), (q, k, v))


def test_plain_dot_product_is_unscaled():
    torch.manual_seed(0)
    q, k, v = torch.randn(4, 8), torch.randn(6, 8), torch.randn(6, 3)
    out, w = att.dot_product_attention(q, k, v)
    torch.testing.assert_close(w, (q @ k.T).softmax(-1))
    torch.testing.assert_close(out, F.scaled_dot_product_attention(q[None], k[None], v[None], scale=1.0)[0])


CONFIGS = list(itertools.product([False, True], ["none", "bool", "float", "bool3d"], [True, False], [True, False]))


@pytest.mark.parametrize("batch_first,attn_mask_kind,use_kpm,bias", CONFIGS)
def test_multihead_attention_matches_nn(batch_first, attn_mask_kind, use_kpm, bias):
    torch.manual_seed(1)
    E, h, B, L, S = 24, 4, 3, 5, 7
    ref = nn.MultiheadAttention(E, h, bias=bias, batch_first=batch_first)
    ours = att.MultiHeadAttention(E, h, bias=bias, batch_first=batch_first)
    ours.load_state_dict(ref.state_dict())
    shape = (lambda n: (B, n, E)) if batch_first else (lambda n: (n, B, E))
    q = torch.randn(shape(L), requires_grad=True)
    kv = torch.randn(shape(S), requires_grad=True)
    am = {"none": None, "bool": torch.rand(L, S) > 0.6, "float": torch.randn(L, S),
          "bool3d": torch.rand(B * h, L, S) > 0.6}[attn_mask_kind]
    if am is not None and am.dtype == torch.bool:
        am[..., 0] = False  # nn 约定 True = 禁止；保证每行至少有一个允许的键
    kpm = None
    if use_kpm:
        kpm = torch.zeros(B, S, dtype=torch.bool)
        kpm[1, -3:] = True
        if am is not None and am.is_floating_point():  # 两个 mask 类型相同（混用在 torch 里已弃用）
            kpm = torch.zeros(B, S).masked_fill(kpm, float("-inf"))
    o_r, w_r = ref(q, kv, kv, key_padding_mask=kpm, attn_mask=am)
    o_o, w_o = ours(q, kv, kv, key_padding_mask=kpm, attn_mask=am)
    torch.testing.assert_close(w_o, w_r, atol=1e-6, rtol=1e-5)
    params_r = dict(ref.named_parameters())
    names = [n for n, _ in ours.named_parameters()]
    assert_grads_close(o_o, o_r, [q, kv, *ours.parameters()], [q, kv, *(params_r[n] for n in names)])


def test_multihead_per_head_weights_and_no_weights():
    torch.manual_seed(2)
    ref, ours = nn.MultiheadAttention(16, 2), att.MultiHeadAttention(16, 2)
    ours.load_state_dict(ref.state_dict())
    x = torch.randn(4, 2, 16)
    _, w_r = ref(x, x, x, average_attn_weights=False)
    _, w_o = ours(x, x, x, average_attn_weights=False)
    assert w_o.shape == (2, 2, 4, 4)
    torch.testing.assert_close(w_o, w_r)
    assert ours(x, x, x, need_weights=False)[1] is None


def test_attention_without_positions_is_permutation_equivariant():
    # 打乱键值对的顺序，输出不变：注意力本身不知道顺序，所以需要位置编码
    torch.manual_seed(3)
    q, k, v = torch.randn(1, 3, 8), torch.randn(1, 6, 8), torch.randn(1, 6, 4)
    perm = torch.randperm(6)
    torch.testing.assert_close(att.scaled_dot_product_attention(q, k, v),
                               att.scaled_dot_product_attention(q, k[:, perm], v[:, perm]))


def naive_additive(module, q, k, v, mask):
    """双重循环版本：逐对 (i, j) 计算 wᵀ tanh(W_q q_i + W_k k_j)。"""
    B, Tq, _ = q.shape
    Tk = k.size(1)
    scores = torch.empty(B, Tq, Tk)
    for b in range(B):
        for i in range(Tq):
            for j in range(Tk):
                s = module.w(torch.tanh(module.W_q(q[b, i]) + module.W_k(k[b, j])))
                scores[b, i, j] = s if mask[b, 0, j] else float("-inf")
    w = scores.softmax(-1)
    return w @ v, w


def test_additive_attention_matches_naive_loop_and_masks_padding():
    torch.manual_seed(4)
    module = att.AdditiveAttention(5, 7, 9)
    q, k, v = torch.randn(2, 3, 5), torch.randn(2, 4, 7), torch.randn(2, 4, 6)
    mask = att.padding_mask(torch.tensor([4, 2]), 4)[:, None, :]
    out, w = module(q, k, v, mask)
    ref_out, ref_w = naive_additive(module, q, k, v, mask)
    torch.testing.assert_close(out, ref_out)
    torch.testing.assert_close(w, ref_w)
    assert torch.all(w[1, :, 2:] == 0)
    torch.testing.assert_close(w.sum(-1), torch.ones(2, 3))


def test_masks():
    assert torch.equal(att.causal_mask(3), torch.tensor([[1, 0, 0], [1, 1, 0], [1, 1, 1]], dtype=torch.bool))
    assert torch.equal(att.padding_mask(torch.tensor([1, 3]), 3), torch.tensor([[1, 0, 0], [1, 1, 1]], dtype=torch.bool))
    with pytest.raises(ValueError, match="lengths"):
        att.padding_mask(torch.tensor([0, 2]), 3)


def test_sinusoidal_encoding_values_and_relative_position_properties():
    pe = att.sinusoidal_positional_encoding(50, 16).double()
    assert torch.equal(pe[0, 0::2], torch.zeros(8)) and torch.equal(pe[0, 1::2], torch.ones(8))
    torch.testing.assert_close(pe[3, 2], torch.tensor(3 * 10000 ** (-2 / 16), dtype=torch.float64).sin(),
                               atol=1e-6, rtol=1e-6)
    for k in (1, 7, 20):
        torch.testing.assert_close(pe[:-k] @ att.relative_rotation(k, 16).T, pe[k:], atol=1e-5, rtol=1e-5)
    gram = pe @ pe.T
    for k in range(50):
        diag = gram.diagonal(k)
        torch.testing.assert_close(diag, diag[0].expand_as(diag), atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="偶数"):
        att.sinusoidal_positional_encoding(4, 7)


def test_bad_inputs_raise_clear_errors():
    q = torch.randn(2, 3, 8)
    with pytest.raises(ValueError, match="最后一维"):
        att.scaled_dot_product_attention(q, torch.randn(2, 4, 6), torch.randn(2, 4, 6))
    with pytest.raises(ValueError, match="每个键必须对应一个值"):
        att.scaled_dot_product_attention(q, torch.randn(2, 4, 8), torch.randn(2, 5, 8))
    with pytest.raises(ValueError, match="整行"):
        att.scaled_dot_product_attention(q, q, q, torch.zeros(3, 3, dtype=torch.bool))
    with pytest.raises(ValueError, match="无法广播"):
        att.scaled_dot_product_attention(q, q, q, torch.ones(4, 4, dtype=torch.bool))
    with pytest.raises(ValueError, match="is_causal"):
        att.scaled_dot_product_attention(q, q, q, torch.ones(3, 3, dtype=torch.bool), is_causal=True)
    with pytest.raises(ValueError, match="整除"):
        att.MultiHeadAttention(10, 3)
    mha = att.MultiHeadAttention(8, 2)
    x = torch.randn(3, 2, 8)
    with pytest.raises(ValueError, match="key_padding_mask 形状"):
        mha(x, x, x, key_padding_mask=torch.zeros(3, 3, dtype=torch.bool))
    with pytest.raises(ValueError, match="整行被禁止"):
        mha(x, x, x, key_padding_mask=torch.ones(2, 3, dtype=torch.bool))
    with pytest.raises(ValueError, match="embed_dim=8"):
        mha(torch.randn(3, 2, 6), x, x)
