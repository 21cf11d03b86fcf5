"""archive/Introductory learning/03_Transformer/05_transformer_seq2seq.py：
编码器/解码器层 vs nn.TransformerEncoderLayer / nn.TransformerDecoderLayer（输出与梯度），以及序列反转任务。"""

from __future__ import annotations

import itertools

import pytest
import torch
import torch.nn as nn

from tests.conftest import load_script

s2s = load_script("archive/Introductory learning/03_Transformer/05_transformer_seq2seq.py")


@pytest.mark.parametrize("norm_first,batch_first,activation",
                         list(itertools.product([False, True], [False, True], ["relu", "gelu"])))
def test_layers_match_torch(norm_first, batch_first, activation):
    torch.manual_seed(0)
    assert s2s.compare_layers(norm_first, batch_first, activation) < 1e-5


@pytest.mark.parametrize("norm_first", [False, True])
def test_decoder_layer_with_all_masks_float_and_bool(norm_first):
    torch.manual_seed(1)
    E, B, T, S = 12, 2, 4, 6
    kw = dict(d_model=E, nhead=3, dim_feedforward=20, dropout=0.0, batch_first=True, norm_first=norm_first)
    ref, ours = nn.TransformerDecoderLayer(**kw), s2s.DecoderLayer(**kw)
    ours.load_state_dict(ref.state_dict())
    tgt, mem = torch.randn(B, T, E, requires_grad=True), torch.randn(B, S, E, requires_grad=True)
    tgt_kpm = torch.zeros(B, T)
    tgt_kpm[0, -1] = float("-inf")
    masks = dict(tgt_mask=nn.Transformer.generate_square_subsequent_mask(T), memory_mask=torch.randn(T, S),
                 tgt_key_padding_mask=tgt_kpm, memory_key_padding_mask=torch.zeros(B, S))
    out_r, out_o = ref(tgt, mem, **masks), ours(tgt, mem, **masks)
    torch.testing.assert_close(out_o, out_r, atol=1e-5, rtol=1e-5)
    g = torch.randn_like(out_r)
    for a, b in zip(torch.autograd.grad(out_o, (tgt, mem), g), torch.autograd.grad(out_r, (tgt, mem), g)):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


def test_dropout_is_active_in_train_mode_only():
    torch.manual_seed(2)
    layer = s2s.EncoderLayer(8, 2, 16, dropout=0.5, batch_first=True)
    x = torch.randn(2, 5, 8)
    assert not torch.allclose(layer(x), layer(x))
    layer.eval()
    torch.testing.assert_close(layer(x), layer(x))


def test_make_batch_builds_reversal_pairs():
    src, tgt_in, tgt_out = s2s.make_batch(64, 1, 6, torch.Generator().manual_seed(0))
    for s, ti, to in zip(src, tgt_in, tgt_out):
        L = int((s == s2s.EOS).nonzero())
        digits = s[:L]
        assert (digits >= s2s.N_SPECIAL).all() and (s[L + 1 :] == s2s.PAD).all()
        assert torch.equal(to[:L], digits.flip(0)) and to[L] == s2s.EOS
        assert ti[0] == s2s.BOS and torch.equal(ti[1 : L + 1], digits.flip(0))  # teacher forcing：右移一位


def test_causal_mask_blocks_future():
    m = s2s.causal_mask(3)
    assert m.tolist() == [[False, True, True], [False, False, True], [False, False, False]]


def test_decoder_output_does_not_depend_on_future_target_tokens():
    torch.manual_seed(3)
    model = s2s.Seq2SeqTransformer(s2s.Config(d_model=16, nhead=2, num_layers=1, dim_feedforward=32, max_len=6)).eval()
    src, tgt_in, _ = s2s.make_batch(2, 6, 6, torch.Generator().manual_seed(1))
    changed = tgt_in.clone()
    changed[:, 4:] = s2s.N_SPECIAL
    with torch.no_grad():
        torch.testing.assert_close(model(src, tgt_in)[:, :4], model(src, changed)[:, :4])


def test_small_model_learns_reversal():
    cfg = s2s.Config(d_model=32, nhead=4, num_layers=1, dim_feedforward=64, max_len=5, steps=1000, lr=5e-3,
                     warmup=30, batch_size=64)
    model, history = s2s.train(cfg, verbose=False)
    model.eval()
    acc = s2s.exact_match(model, 500, torch.Generator().manual_seed(99))
    # 长度 1..5 的随机数字串共约 11 万种，500 个新样本几乎都没在训练中出现过：靠背诵拿不到这个精度
    assert acc >= 0.9, acc
    assert history[-1][1] < 0.1 * history[0][1]


def test_bad_inputs_raise_clear_errors():
    layer = s2s.EncoderLayer(8, 2, 16, batch_first=True)
    with pytest.raises(ValueError, match="d_model=8"):
        layer(torch.randn(2, 5, 6))
    with pytest.raises(ValueError, match="src_key_padding_mask|key_padding_mask 形状"):
        layer(torch.randn(2, 5, 8), src_key_padding_mask=torch.zeros(2, 4, dtype=torch.bool))
    with pytest.raises(ValueError, match="attn_mask 形状"):
        layer(torch.randn(2, 5, 8), src_mask=torch.zeros(4, 4, dtype=torch.bool))
    with pytest.raises(ValueError, match="bool"):
        layer(torch.randn(2, 5, 8), src_mask=torch.zeros(5, 5, dtype=torch.long))
    with pytest.raises(ValueError, match="整行被禁止"):
        layer(torch.randn(2, 5, 8), src_key_padding_mask=torch.ones(2, 5, dtype=torch.bool))
    with pytest.raises(ValueError, match="整除"):
        s2s.EncoderLayer(10, 3)
    with pytest.raises(ValueError, match="activation"):
        s2s.EncoderLayer(8, 2, activation="tanh")
    dec = s2s.DecoderLayer(8, 2, batch_first=True)
    with pytest.raises(ValueError, match="batch"):
        dec(torch.randn(2, 3, 8), torch.randn(3, 4, 8))
    with pytest.raises(ValueError, match="min_len"):
        s2s.make_batch(4, 3, 2)
