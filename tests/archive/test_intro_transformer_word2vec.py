"""archive/Introductory learning/03_Transformer/03_word2vec.py：SGNS 的手推梯度、噪声分布、样本对与训练效果。"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tests.conftest import load_script

w2v = load_script("archive/Introductory learning/03_Transformer/03_word2vec.py")


@pytest.mark.parametrize("B,K,D", [(1, 1, 3), (7, 5, 10), (32, 15, 4)])
def test_hand_written_gradients_match_autograd(B, K, D):
    torch.manual_seed(B + K + D)
    v = (torch.randn(B, D, dtype=torch.float64) * 2).requires_grad_()
    u = (torch.randn(B, D, dtype=torch.float64) * 2).requires_grad_()
    un = (torch.randn(B, K, D, dtype=torch.float64) * 2).requires_grad_()
    loss, *hand = w2v.sgns_loss_and_grads(v, u, un)
    # 损失本身与定义式一致：−log σ(u_o·v_c) − Σ_k log σ(−u_k·v_c)
    direct = -(torch.sigmoid((u * v).sum(-1)).log() + torch.sigmoid(-torch.einsum("bkd,bd->bk", un, v)).log().sum(-1))
    torch.testing.assert_close(loss, direct.mean())
    for h, a in zip(hand, torch.autograd.grad(loss, (v, u, un))):
        torch.testing.assert_close(h, a, atol=1e-12, rtol=1e-10)


def test_loss_is_stable_for_extreme_scores():
    v = torch.full((2, 4), 30.0)
    u = -torch.ones(2, 4)  # u·v = −120：σ 下溢到 0，朴素的 log σ 会得到 inf
    loss, *_ = w2v.sgns_loss_and_grads(v, u, torch.zeros(2, 3, 4))
    assert torch.isfinite(loss) and loss.item() == pytest.approx(120 + 3 * np.log(2), rel=1e-5)


def test_noise_distribution_is_unigram_to_the_three_quarters():
    counts = np.array([100.0, 10.0, 1.0])
    p = w2v.noise_distribution(counts)
    assert p.sum().item() == pytest.approx(1.0)
    expected = counts**0.75 / (counts**0.75).sum()
    np.testing.assert_allclose(p.numpy(), expected, rtol=1e-6)
    # 0.75 次方把分布压扁：最高频词的份额低于其频率，最低频词的份额高于其频率
    assert p[0] < counts[0] / counts.sum() and p[2] > counts[2] / counts.sum()
    np.testing.assert_allclose(w2v.noise_distribution(counts, power=1.0).numpy(), counts / counts.sum(), rtol=1e-6)
    with pytest.raises(ValueError, match="非负"):
        w2v.noise_distribution([-1.0, 2.0])


def test_skipgram_pairs_respect_the_window():
    ids = np.arange(50)
    rng = np.random.default_rng(0)
    centers, contexts = w2v.skipgram_pairs(ids, 1, rng)
    expected = {(i, i + 1) for i in range(49)} | {(i + 1, i) for i in range(49)}
    assert set(zip(centers.tolist(), contexts.tolist())) == expected  # 半径 1：恰好所有相邻对
    centers, contexts = w2v.skipgram_pairs(ids, 4, rng)
    dist = np.abs(centers - contexts)
    assert dist.min() >= 1 and dist.max() <= 4
    # 随机半径 r ~ U{1..4}：距离 d 的对出现的概率 ∝ P(r >= d)，近的词对更多
    per_d = [np.sum(dist == d) for d in range(1, 5)]
    assert per_d[0] > per_d[1] > per_d[2] > per_d[3]


def test_subsampling_drops_frequent_words_more():
    rng = np.random.default_rng(0)
    counts = np.array([9000.0, 100.0])
    ids = np.array([0] * 9000 + [1] * 100)
    kept = w2v.subsample(ids, counts, 0.02, rng)
    keep_rate = [np.sum(kept == w) / np.sum(ids == w) for w in (0, 1)]
    assert keep_rate[1] == 1.0  # 频率 0.011 < t → sqrt(t/f) > 1，全部保留
    assert keep_rate[0] == pytest.approx(np.sqrt(0.02 / 0.989), abs=0.02)


def test_training_puts_words_with_shared_contexts_together():
    # 人造语料：x 与 y 总出现在 a* 词中间，p 与 q 总出现在 b* 词中间 → x 的最近邻应是 y，p 的是 q
    rng = np.random.default_rng(0)
    words = ["x", "y", "p", "q"] + [f"a{i}" for i in range(6)] + [f"b{i}" for i in range(6)]
    index = {w: i for i, w in enumerate(words)}
    seq = []
    for _ in range(3000):
        group = rng.integers(2)
        center = ["x", "y"][rng.integers(2)] if group == 0 else ["p", "q"][rng.integers(2)]
        ctx = [f"{'ab'[group]}{i}" for i in rng.integers(6, size=4)]
        seq += ctx[:2] + [center] + ctx[2:]
    ids = np.array([index[w] for w in seq])
    counts = np.bincount(ids, minlength=len(words)).astype(np.float64)
    model, losses = w2v.train_word2vec(ids, counts, dim=16, epochs=3, lr=0.05, window=2, batch=256,
                                       subsample_t=None)
    assert losses[-1] < losses[0]
    assert words[w2v.nearest_neighbours(model.V, index["x"], 1)[0][0]] == "y"
    assert words[w2v.nearest_neighbours(model.V, index["p"], 1)[0][0]] == "q"


def test_pca_matches_sklearn_up_to_sign():
    from sklearn.decomposition import PCA

    torch.manual_seed(0)
    x = torch.randn(30, 8, dtype=torch.float64) @ torch.randn(8, 8, dtype=torch.float64)
    ours = w2v.pca_2d(x).numpy()
    ref = PCA(n_components=2).fit_transform(x.numpy())
    np.testing.assert_allclose(np.abs(ours), np.abs(ref), atol=1e-8)


def test_bad_inputs_raise_clear_errors():
    with pytest.raises(ValueError, match="形状"):
        w2v.sgns_loss_and_grads(torch.zeros(2, 3), torch.zeros(2, 4), torch.zeros(2, 5, 3))
    with pytest.raises(ValueError, match="太小"):
        w2v.build_vocab(["a", "b"], 1)


def test_tokenize_keeps_contractions():
    assert w2v.tokenize("Thou'rt MAD, good Kate!") == ["thou'rt", "mad", "good", "kate"]
