"""入门课练习的判分测试（utils/exercise_parts/intro.py 登记的函数）：张量自动微分引擎、字符级 LSTM、
seq2seq Transformer、Kaggle 式实验。每个测试只考一个核心函数，与 PyTorch / scikit-learn 的实现或测试里独立写出的
计算对照，函数体是 NotImplementedError 时必然失败。"""

from __future__ import annotations

import itertools
import sys

import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from tests.conftest import load_script

INTRO = "archive/Introductory learning"


def tensor_autograd():
    return load_script(f"{INTRO}/02_MLP/02_tensor_autograd.py")


def char_lstm():
    return load_script(f"{INTRO}/03_Transformer/02_char_lstm_lm.py")


def seq2seq():
    return load_script(f"{INTRO}/03_Transformer/05_transformer_seq2seq.py")


def kaggle():
    return load_script("archive/kaggle/breast_cancer_competition.py")


# ----------------------------------------------------------------------------- 02_tensor_autograd
# (输入形状, 广播后的形状)：前导维、中间的 1、末尾的 1、标量、不需要缩回
UNBROADCAST_CASES = [((3, 1), (3, 4)), ((4,), (3, 4)), ((), (2, 3)), ((1,), (5,)), ((2, 1, 3), (4, 2, 5, 3)),
                     ((1, 1), (2, 3, 4)), ((2, 3), (2, 3)), ((1, 4, 1), (1, 4, 6))]


@pytest.mark.parametrize("shape,big", UNBROADCAST_CASES)
def test_autograd_unbroadcast_matches_torch_expand_backward(shape, big):
    ta = tensor_autograd()
    rng = np.random.default_rng(len(big))
    g = rng.standard_normal(big)
    x = torch.zeros(shape, dtype=torch.float64, requires_grad=True)
    x.expand(big).backward(torch.from_numpy(g))  # expand 的反向就是把梯度加回被广播的维度
    got = ta._unbroadcast(g, shape)
    assert got.shape == shape
    np.testing.assert_allclose(got, x.grad.numpy(), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("log", [False, True], ids=["softmax", "log_softmax"])
def test_autograd_softmax_family_matches_torch(log):
    ta = tensor_autograd()
    rng = np.random.default_rng(7)
    for shape, axis in (((5,), -1), ((3, 4), 1), ((3, 4), 0), ((2, 3, 4), -2)):
        a = rng.standard_normal(shape) * 30  # 大 logits：不减最大值会溢出
        x = ta.Tensor(a.copy(), requires_grad=True)
        tx = torch.tensor(a, requires_grad=True)
        out = x.log_softmax(axis) if log else x.softmax(axis)
        tout = tx.log_softmax(axis) if log else tx.softmax(axis)
        np.testing.assert_allclose(out.data, tout.detach().numpy(), rtol=1e-10, atol=1e-12)
        w = rng.standard_normal(shape)
        out.backward(w)
        tout.backward(torch.from_numpy(w))
        np.testing.assert_allclose(x.grad, tx.grad.numpy(), rtol=1e-9, atol=1e-10)


def test_autograd_backward_on_a_deep_chain_and_a_diamond():
    ta = tensor_autograd()
    # 只用不是练习的算子（+、**、exp、tanh）和显式的上游梯度：这个测试只考 backward 本身
    # 几千层深的链：递归的 DFS 会撞上 Python 的递归上限
    depth = max(3000, sys.getrecursionlimit() + 500)
    x = ta.Tensor(np.array([0.5, -1.0]), requires_grad=True)
    y = x
    for _ in range(depth):
        y = y + 0.001
    (y**2).backward(np.ones(2))
    np.testing.assert_allclose(x.grad, 2 * (np.array([0.5, -1.0]) + 0.001 * depth), rtol=1e-9)
    # 菱形：a 经长度不同的几条路径汇到 out，a 的 _backward 必须等所有路径的梯度都到齐才调用
    v = np.array([[0.3, -0.7, 1.1], [0.2, 0.9, -1.3]])
    w = np.array([[1.0, -2.0, 0.5], [0.3, 0.7, -1.1]])
    x, tx = ta.Tensor(v.copy(), requires_grad=True), torch.tensor(v, requires_grad=True)
    a, t_a = x.tanh(), tx.tanh()
    out = a.exp() + ((a**2).exp() + 1.0) ** 0.5 + a**3
    tout = t_a.exp() + ((t_a**2).exp() + 1.0) ** 0.5 + t_a**3
    np.testing.assert_allclose(out.data, tout.detach().numpy(), rtol=1e-12)
    for _ in range(2):  # 同一张图反向两次：中间节点的梯度每次从 0 开始，叶子的梯度累加（与 PyTorch 相同）
        out.backward(w)
        tout.backward(torch.from_numpy(w), retain_graph=True)
        np.testing.assert_allclose(x.grad, tx.grad.numpy(), rtol=1e-12)
    with pytest.raises(RuntimeError):  # 非标量输出不给 grad：与 PyTorch 一样报错
        out.backward()


def test_autograd_mul_with_broadcasting_matches_torch():
    ta = tensor_autograd()
    rng = np.random.default_rng(11)
    ops = {"mul": lambda a, b: a * b, "div": lambda a, b: a / (b * b + 0.5), "neg_sub": lambda a, b: -a - b * 2.0}
    for (sa, sb), (name, op) in itertools.product(UNBROADCAST_CASES, ops.items()):
        a, b = rng.standard_normal(sa), rng.standard_normal(sb)
        x, tx = ta.Tensor(a.copy(), requires_grad=True), torch.tensor(a, requires_grad=True)
        y, ty = ta.Tensor(b.copy(), requires_grad=True), torch.tensor(b, requires_grad=True)
        out, tout = op(x, y), op(tx, ty)
        assert out.shape == tuple(tout.shape), name
        np.testing.assert_allclose(out.data, tout.detach().numpy(), rtol=1e-12, atol=1e-14)
        g = rng.standard_normal(out.shape)
        out.backward(g)
        tout.backward(torch.from_numpy(g))
        for ours, ref in ((x, tx), (y, ty)):
            assert ours.grad.shape == ours.shape, name  # 梯度缩回输入自己的形状
            np.testing.assert_allclose(ours.grad, ref.grad.numpy(), rtol=1e-10, atol=1e-12)
    with pytest.raises(ValueError, match="无法广播"):
        ta.Tensor(np.ones((2, 3))) * ta.Tensor(np.ones(4))


# ----------------------------------------------------------------------------- 02_char_lstm_lm
def _tiny_lm(lm, vocab_size=7, seed=0, layers=2):
    torch.manual_seed(seed)
    cfg = lm.Config(hidden_size=12, num_layers=layers, embed_dim=5, batch_size=3, bptt=4)
    return lm.CharLSTM(vocab_size, cfg).double(), cfg


def test_char_lstm_forward_is_embed_lstm_head_and_carries_state():
    lm = char_lstm()
    model, _ = _tiny_lm(lm)
    idx = torch.randint(7, (3, 9), generator=torch.Generator().manual_seed(1))
    logits, (h, c) = model(idx)
    out, (h_ref, c_ref) = model.lstm(model.embed(idx))
    torch.testing.assert_close(logits, model.head(out))
    torch.testing.assert_close((h, c), (h_ref, c_ref))
    assert logits.shape == (3, 9, 7) and h.shape == (2, 3, 12)
    # 分两段读、状态传下去 = 一口气读完
    first, state = model(idx[:, :4])
    second, _ = model(idx[:, 4:], state)
    torch.testing.assert_close(torch.cat([first, second], 1), logits)


def test_char_lstm_train_step_shifts_targets_clips_and_updates():
    lm = char_lstm()
    model, _ = _tiny_lm(lm, layers=1)
    ref, _ = _tiny_lm(lm, layers=1)
    streams = torch.randint(7, (3, 15), generator=torch.Generator().manual_seed(2))
    state = (torch.randn(1, 3, 12, dtype=torch.float64), torch.randn(1, 3, 12, dtype=torch.float64))
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    loss, new_state = lm.train_step(model, opt, streams, 4, 5, state, 0.1)
    # 独立的一步：输入 streams[:, 4:9]，目标右移一位 streams[:, 5:10]，裁剪到 0.1，SGD
    out, st = ref.lstm(ref.embed(streams[:, 4:9]), state)
    want = F.cross_entropy(ref.head(out).reshape(-1, 7), streams[:, 5:10].reshape(-1))
    want.backward()
    torch.nn.utils.clip_grad_norm_(ref.parameters(), 0.1)
    with torch.no_grad():
        for p in ref.parameters():
            p -= 0.5 * p.grad
    assert isinstance(loss, float) and loss == pytest.approx(want.item(), rel=1e-10)
    for p, q in zip(model.parameters(), ref.parameters()):
        torch.testing.assert_close(p, q)
    for s, r in zip(new_state, st):
        torch.testing.assert_close(s, r.detach())
        assert not s.requires_grad and s.grad_fn is None


@pytest.mark.parametrize("bptt", [1, 4, 7, 30])
def test_char_lstm_evaluate_equals_one_pass_over_each_stream(bptt):
    lm = char_lstm()
    model, _ = _tiny_lm(lm)
    streams = torch.randint(7, (3, 23), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():  # 状态跨块传递时，分块读完与一次读完整条流（不截断）完全一样
        out, _ = model.lstm(model.embed(streams[:, :-1]))
        logits = model.head(out)
    want = F.cross_entropy(logits.reshape(-1, 7), streams[:, 1:].reshape(-1)).item()
    assert lm.evaluate(model, streams, bptt) == pytest.approx(want, rel=1e-10)
    assert model.training  # 评估完恢复训练模式
    if bptt < 11:  # max_blocks：只读前 max_blocks 块，平均只在读到的目标上取
        k = 2 * bptt
        part = F.cross_entropy(logits[:, :k].reshape(-1, 7), streams[:, 1 : k + 1].reshape(-1)).item()
        assert lm.evaluate(model, streams, bptt, max_blocks=2) == pytest.approx(part, rel=1e-10)


@pytest.mark.parametrize("temperature", [0.5, 1.0, 2.0])
def test_char_lstm_sample_matches_recomputing_the_whole_prefix(temperature):
    lm = char_lstm()
    vocab = lm.CharVocab("abcdefg")
    model, _ = _tiny_lm(lm, seed=4)
    got = lm.sample(model, vocab, "bad", 25, temperature, torch.Generator().manual_seed(5))
    # 独立的采样：每步把整个前缀重新喂给 LSTM（不复用状态），同一个随机数生成器
    g = torch.Generator().manual_seed(5)
    ids = vocab.encode("bad").tolist()
    with torch.no_grad():
        for _ in range(25):
            out, _ = model.lstm(model.embed(torch.tensor([ids])))
            probs = F.softmax(model.head(out)[:, -1] / temperature, dim=-1)
            ids.append(int(torch.multinomial(probs, 1, generator=g)))
    assert got == vocab.decode(ids)
    assert model.training


# ----------------------------------------------------------------------------- 05_transformer_seq2seq
def _copy_mha(ours, E, nhead):
    ref = nn.MultiheadAttention(E, nhead, batch_first=True).double()
    ours.double().load_state_dict(ref.state_dict())
    return ref


def test_seq2seq_multihead_attention_matches_nn_with_masks_and_weights():
    s2s = seq2seq()
    torch.manual_seed(0)
    E, h, B, L, S = 12, 3, 2, 4, 6
    ours = s2s.MultiheadAttention(E, h)
    ref = _copy_mha(ours, E, h)
    q, kv = torch.randn(B, L, E, dtype=torch.float64), torch.randn(B, S, E, dtype=torch.float64)
    kpm = torch.zeros(B, S, dtype=torch.bool)
    kpm[1, -2:] = True
    bool_mask = torch.zeros(L, S, dtype=torch.bool)
    bool_mask[0, 3:] = True
    float_mask = torch.randn(L, S, dtype=torch.float64)
    float_kpm = torch.zeros(B, S, dtype=torch.float64).masked_fill(kpm, float("-inf"))
    for am, pm in ((None, None), (bool_mask, None), (None, kpm), (float_mask, float_kpm), (bool_mask, kpm)):
        out, w = ours(q, kv, am, pm, need_weights=True)
        out_r, w_r = ref(q, kv, kv, key_padding_mask=pm, attn_mask=am, average_attn_weights=False)
        torch.testing.assert_close(out, out_r)
        torch.testing.assert_close(w, w_r)  # (B, h, L, S)：每个头的权重
        torch.testing.assert_close(ours(q, kv, am, pm), out_r)  # need_weights=False 只返回输出


@pytest.mark.parametrize("norm_first,batch_first,activation",
                         list(itertools.product([False, True], [False, True], ["relu", "gelu"])))
def test_seq2seq_encoder_layer_matches_nn_outputs_and_grads(norm_first, batch_first, activation):
    s2s = seq2seq()
    torch.manual_seed(1)
    E, B, S = 8, 3, 5
    kw = dict(d_model=E, nhead=2, dim_feedforward=16, dropout=0.0, activation=activation,
              batch_first=batch_first, norm_first=norm_first)
    ref, ours = nn.TransformerEncoderLayer(**kw).double(), s2s.EncoderLayer(**kw).double()
    ours.load_state_dict(ref.state_dict())
    x = torch.randn((B, S, E) if batch_first else (S, B, E), dtype=torch.float64, requires_grad=True)
    kpm = torch.zeros(B, S, dtype=torch.bool)
    kpm[0, -2:] = True
    causal = torch.ones(S, S, dtype=torch.bool).triu(1)
    masks = dict(src_mask=causal if activation == "relu" else None, src_key_padding_mask=kpm)
    out_r, out_o = ref(x, **masks), ours(x, **masks)
    torch.testing.assert_close(out_o, out_r)
    g = torch.randn_like(out_r)
    names = [n for n, _ in ref.named_parameters()]
    params = dict(ours.named_parameters())
    grads_r = torch.autograd.grad(out_r, [x, *ref.parameters()], g)
    grads_o = torch.autograd.grad(out_o, [x, *(params[n] for n in names)], g)
    for a, b in zip(grads_o, grads_r):
        torch.testing.assert_close(a, b)


def test_seq2seq_greedy_decode_matches_recomputing_each_step():
    s2s = seq2seq()
    torch.manual_seed(2)
    cfg = s2s.Config(d_model=16, nhead=2, num_layers=1, dim_feedforward=32, max_len=6)
    model = s2s.Seq2SeqTransformer(cfg).eval()
    E, P = s2s.EOS, s2s.PAD
    src = torch.tensor([[5, 9, 3, 12, 7, E, P], [4, E, P, P, P, P, P], [12, 11, 10, 9, 8, 7, E], [6, 6, E, P, P, P, P]])
    with torch.no_grad():
        model.lm_head.bias[s2s.EOS] = -1e4  # 先让模型永远不输出 EOS：一直生成到 max_new 步
        got = model.greedy_decode(src, 5)
        out = torch.full((4, 1), s2s.BOS)
        for _ in range(5):  # 独立的贪心：每步把整个前缀重新过一遍完整的模型
            out = torch.cat([out, model(src, out)[:, -1].argmax(-1, keepdim=True)], 1)
        assert torch.equal(got, out[:, 1:])  # 不含开头的 BOS
        model.lm_head.bias[s2s.EOS] = 1e4  # 再让 EOS 永远最大：第一步全部输出 EOS 就该停
        assert model.greedy_decode(src, 5).tolist() == [[s2s.EOS]] * 4


# ----------------------------------------------------------------------------- kaggle/breast_cancer_competition
def _noisy_tabular(n=150, d=5, seed=0):
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, d)) * rng.uniform(0.5, 20, size=d) + rng.normal(0, 5, size=d)
    y = ((X[:, 0] - X[:, 0].mean()) / X[:, 0].std() + rng.normal(0, 1.0, size=n) > 0.3).astype(int)
    return X, y


def test_kaggle_cross_validate_matches_sklearn_with_a_fresh_model_per_fold():
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold
    from sklearn.model_selection import cross_validate as sk_cross_validate
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    comp = kaggle()
    X, y = _noisy_tabular()
    folds = list(StratifiedKFold(4, shuffle=True, random_state=0).split(X, y))
    made = []

    def factory():
        made.append(make_pipeline(StandardScaler(), LogisticRegression(C=0.5)))
        return made[-1]

    res = comp.cross_validate(factory, X, y, folds, "lr")
    want = sk_cross_validate(make_pipeline(StandardScaler(), LogisticRegression(C=0.5)), X, y, cv=folds,
                             scoring=("roc_auc", "accuracy", "neg_log_loss"))
    assert res.name == "lr" and len(made) == 4 and len({id(m) for m in made}) == 4  # 每折一个新模型
    np.testing.assert_allclose(res.auc, want["test_roc_auc"], rtol=1e-12)
    np.testing.assert_allclose(res.acc, want["test_accuracy"], rtol=1e-12)
    np.testing.assert_allclose(res.logloss, -want["test_neg_log_loss"], rtol=1e-9)


def test_kaggle_torch_mlp_fit_is_full_batch_adamw_on_standardized_features():
    comp = kaggle()
    X, y = _noisy_tabular(n=90, d=4, seed=1)
    clf = comp.TorchMLPClassifier(epochs=12, lr=1e-2, weight_decay=0.05, seed=3)
    assert clf.fit(X, y) is clf
    # 独立的训练：标准化参数只来自训练数据（总体标准差），同一个种子初始化，全批量 BCE-with-logits + AdamW
    mean, std = X.mean(0), X.std(0)
    torch.manual_seed(3)
    net = comp.TabularMLP(4)
    xt, yt = torch.tensor((X - mean) / std, dtype=torch.float32), torch.tensor(y, dtype=torch.float32)
    opt = torch.optim.AdamW(net.parameters(), lr=1e-2, weight_decay=0.05)
    for _ in range(12):
        loss = F.binary_cross_entropy_with_logits(net(xt), yt)
        opt.zero_grad()
        loss.backward()
        opt.step()
    np.testing.assert_allclose(clf.scaler.mean_, mean, rtol=1e-12)
    np.testing.assert_allclose(clf.scaler.scale_, std, rtol=1e-12)
    for p, q in zip(clf.model.parameters(), net.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-6)


def test_kaggle_torch_mlp_predict_proba_uses_the_train_scaler_in_eval_mode():
    from sklearn.preprocessing import StandardScaler

    comp = kaggle()
    X, _ = _noisy_tabular(n=60, d=4, seed=2)
    X_new = X[:20] * 1.5 + 3  # 新数据：只 transform，不重新拟合标准化
    clf = comp.TorchMLPClassifier()
    clf.scaler = StandardScaler().fit(X)
    torch.manual_seed(0)
    clf.model = comp.TabularMLP(4, dropout=0.5)  # 处在训练模式：predict_proba 必须先切到 eval（关掉 dropout）
    proba = clf.predict_proba(X_new)
    with torch.no_grad():
        net = clf.model.eval()
        p = torch.sigmoid(net(torch.tensor((X_new - X.mean(0)) / X.std(0), dtype=torch.float32))).numpy()
    assert isinstance(proba, np.ndarray) and proba.shape == (20, 2)
    np.testing.assert_allclose(proba[:, 1], p, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(proba[:, 0], 1 - p, rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(clf.predict_proba(X_new), proba)  # 确定性：没有 dropout
