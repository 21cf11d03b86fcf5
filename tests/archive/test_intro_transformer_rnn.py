"""archive/Introductory learning/03_Transformer：01 RNN/LSTM/GRU 从零实现、02 字符级 LSTM 语言模型。"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn as nn

from tests.conftest import load_script

rnn = load_script("archive/Introductory learning/03_Transformer/01_rnn_lstm_gru.py")
lm = load_script("archive/Introductory learning/03_Transformer/02_char_lstm_lm.py")

MODES = ("rnn_tanh", "rnn_relu", "lstm", "gru")


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("num_layers,batch_first,bias", [(1, False, True), (2, True, True), (3, True, False)])
def test_scratch_rnn_matches_torch_outputs_and_grads(mode, num_layers, batch_first, bias):
    torch.manual_seed(0)
    out_err, grad_err = rnn.compare_with_torch(mode, num_layers, batch_first, bias, T=6, B=2, I=4, H=5)
    assert out_err < 1e-5
    assert grad_err < 1e-5


@pytest.mark.parametrize("mode", MODES)
def test_default_zero_state_and_state_dict_names(mode):
    torch.manual_seed(1)
    ref = rnn.torch_reference(mode, 3, 4, num_layers=2)
    ours = rnn.ScratchRNN(mode, 3, 4, num_layers=2)
    assert set(ours.state_dict()) == set(ref.state_dict())
    assert all(ours.state_dict()[k].shape == v.shape for k, v in ref.state_dict().items())
    ours.load_state_dict(ref.state_dict())
    x = torch.randn(5, 2, 3)
    out_r, st_r = ref(x)  # 不传初始状态：两边都从零状态开始
    out_o, st_o = ours(x)
    torch.testing.assert_close(out_o, out_r, atol=1e-6, rtol=1e-5)
    st_r = st_r if isinstance(st_r, tuple) else (st_r,)
    st_o = st_o if isinstance(st_o, tuple) else (st_o,)
    for a, b in zip(st_o, st_r):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-5)


def test_cells_match_torch_cells():
    torch.manual_seed(2)
    x, h, c = torch.randn(3, 4), torch.randn(3, 6), torch.randn(3, 6)
    for cell_cls, fn in ((nn.RNNCell, rnn.rnn_cell), (nn.GRUCell, rnn.gru_cell)):
        cell = cell_cls(4, 6)
        torch.testing.assert_close(fn(x, h, cell.weight_ih, cell.weight_hh, cell.bias_ih, cell.bias_hh), cell(x, h))
    cell = nn.LSTMCell(4, 6)
    ours = rnn.lstm_cell(x, (h, c), cell.weight_ih, cell.weight_hh, cell.bias_ih, cell.bias_hh)
    for a, b in zip(ours, cell(x, (h, c))):
        torch.testing.assert_close(a, b)


@pytest.mark.parametrize("max_norm", [0.5, 1e6])
def test_clip_grad_norm_matches_torch(max_norm):
    torch.manual_seed(3)
    grads = [torch.randn(4, 5) * 3, torch.randn(7)]
    ours = [nn.Parameter(torch.zeros_like(g)) for g in grads]
    ref = [nn.Parameter(torch.zeros_like(g)) for g in grads]
    for p, q, g in zip(ours, ref, grads):
        p.grad, q.grad = g.clone(), g.clone()
    total_o = rnn.clip_grad_norm(ours, max_norm)
    total_r = torch.nn.utils.clip_grad_norm_(ref, max_norm)
    torch.testing.assert_close(total_o, total_r)
    for p, q in zip(ours, ref):
        torch.testing.assert_close(p.grad, q.grad)
    if max_norm < total_r:  # 裁剪后总范数等于阈值（方向不变）
        new = torch.linalg.vector_norm(torch.stack([p.grad.norm() for p in ours]))
        assert new == pytest.approx(max_norm, rel=1e-5)


def test_positive_forget_bias_keeps_gradient_flowing():
    torch.manual_seed(4)
    vanilla = rnn.gradient_flow("rnn_tanh", 30)
    lstm_fb = rnn.gradient_flow("lstm", 30, forget_bias=3.0)
    # ‖∂L/∂x_1‖ / ‖∂L/∂x_T‖：普通 RNN 几何级数衰减，遗忘门偏置为正的 LSTM 衰减很慢
    assert (lstm_fb[0] / lstm_fb[-1]) > 1e3 * (vanilla[0] / vanilla[-1])


def test_bad_inputs_raise_clear_errors():
    m = rnn.ScratchRNN("lstm", 3, 4, num_layers=2)
    with pytest.raises(ValueError, match="3 维"):
        m(torch.randn(5, 3))
    with pytest.raises(ValueError, match="input_size=3"):
        m(torch.randn(5, 2, 7))
    with pytest.raises(ValueError, match="元组"):
        m(torch.randn(5, 2, 3), torch.zeros(2, 2, 4))
    with pytest.raises(ValueError, match="num_layers, B, hidden_size"):
        m(torch.randn(5, 2, 3), (torch.zeros(1, 2, 4), torch.zeros(1, 2, 4)))
    with pytest.raises(ValueError, match="mode="):
        rnn.ScratchRNN("transformer", 3, 4)
    with pytest.raises(ValueError, match="max_norm"):
        rnn.clip_grad_norm([], 0.0)


# ----------------------------------------------------------------------------- 02 char LSTM LM
def test_batchify_makes_contiguous_streams():
    data = torch.arange(23)
    streams = lm.batchify(data, 4)
    assert streams.shape == (4, 5)
    assert torch.equal(streams[1], torch.arange(5, 10))  # 每行是语料里连续的一段
    with pytest.raises(ValueError, match="batch_size"):
        lm.batchify(torch.arange(3), 4)


def test_truncated_bptt_state_is_detached_and_carried():
    torch.manual_seed(5)
    cfg = lm.Config(hidden_size=8, num_layers=1, embed_dim=4, batch_size=2, bptt=5)
    model = lm.CharLSTM(10, cfg)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    streams = torch.randint(10, (2, 20))
    _, state = lm.train_step(model, opt, streams, 0, 5, None, 1.0)
    assert all(s.grad_fn is None and not s.requires_grad for s in state)
    # 第二块接着上一块的状态跑，backward 不会穿回第一块（否则会报 "backward through the graph a second time"）
    loss, state2 = lm.train_step(model, opt, streams, 5, 5, state, 1.0)
    assert math.isfinite(loss) and not torch.equal(state2[0], state[0])


def test_char_lstm_learns_context_beyond_unigram():
    torch.manual_seed(6)
    text = "the quick brown fox jumps over the lazy dog. " * 60
    cfg = lm.Config(hidden_size=32, num_layers=1, embed_dim=16, batch_size=4, bptt=20, steps=150, lr=1e-2,
                    eval_every=150, max_chars=None)
    model, vocab, history = lm.train(text, cfg, verbose=False)
    base = lm.unigram_entropy(vocab.encode(text), len(vocab))
    # 这段文本是确定性重复的：学会上下文的模型应远低于只看字符频率的 unigram 熵
    assert history[-1][2] < base - 1.5
    out = lm.sample(model, vocab, "the ", 30, temperature=0.5, generator=torch.Generator().manual_seed(0))
    assert out.startswith("the ") and len(out) == 34 and set(out) <= set(vocab.chars)


def test_vocab_rejects_unknown_characters():
    vocab = lm.CharVocab("abc")
    assert vocab.decode(vocab.encode("cab")) == "cab"
    with pytest.raises(ValueError, match="不在词表"):
        vocab.encode("abz")
