"""评估的数学：bits/byte、两条基线、整个验证集的窗口评估，逐一对照手算的值。"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from training_sys.evaluation import bits_per_byte, evaluate, uniform_loss, unigram_log_probs, unigram_loss


class UnigramModel(torch.nn.Module):
    """不看上下文、永远输出同一个分布的"模型"：它的 loss 必须恰好等于 unigram 基线。"""

    def __init__(self, log_p: np.ndarray) -> None:
        super().__init__()
        self.log_p = torch.nn.Parameter(torch.tensor(log_p, dtype=torch.float64))

    def forward(self, x):
        return self.log_p.expand(*x.shape, -1)


class UniformModel(torch.nn.Module):
    """logits 全 0 = 均匀分布：交叉熵恰好 ln V。"""

    def __init__(self, vocab_size: int) -> None:
        super().__init__()
        self.vocab_size = vocab_size
        self.anchor = torch.nn.Parameter(torch.zeros(1))  # evaluate 从参数上读 device

    def forward(self, x):
        return torch.zeros(*x.shape, self.vocab_size)


def test_bits_per_byte_of_a_known_loss():
    # 3 ln2 nats/token = 3 bits/token；每 token 1.5 字节 → 2 bits/byte
    assert bits_per_byte(3 * math.log(2), 1.5) == pytest.approx(2.0)
    # 均匀分布在 256 个字节上（字符级、每 token 1 字节）：恰好 8 bits/byte
    assert bits_per_byte(uniform_loss(256), 1.0) == pytest.approx(8.0)


def test_uniform_loss_is_ln_v():
    assert uniform_loss(1) == 0.0
    assert uniform_loss(50) == pytest.approx(math.log(50))
    with pytest.raises(ValueError, match="vocab_size=0"):
        uniform_loss(0)


def test_unigram_entropy_of_a_known_distribution():
    # 训练集计数 [3, 1, 1]，加一平滑 → [4, 2, 2] / 8 = [1/2, 1/4, 1/4]
    train = np.array([0, 0, 0, 1, 2])
    np.testing.assert_allclose(np.exp(unigram_log_probs(train, 3)), [0.5, 0.25, 0.25])
    # 目标按同一分布出现（0 两次、1 一次、2 一次）：交叉熵 = 熵 = 1/2·1 + 1/4·2 + 1/4·2 = 1.5 bits
    loss = unigram_loss(train, np.array([0, 0, 1, 2]), 3)
    assert loss == pytest.approx(1.5 * math.log(2))
    assert bits_per_byte(loss, 1.0) == pytest.approx(1.5)
    # 训练集里没出现的 token：加一平滑给它 1/(N+V)，交叉熵有限
    assert unigram_loss(np.array([0, 0]), np.array([1]), 2) == pytest.approx(math.log(4))


def test_out_of_range_ids_are_a_clear_error():
    with pytest.raises(ValueError, match="越界的 token id"):
        unigram_log_probs(np.array([0, 5]), 3)
    with pytest.raises(ValueError, match="targets 为空"):
        unigram_loss(np.array([0]), np.array([], dtype=np.int64), 3)


def test_evaluate_unigram_model_equals_unigram_baseline():
    rng = np.random.default_rng(0)
    vocab = 50
    train = rng.zipf(1.5, 5000) % vocab
    val = rng.zipf(1.5, 1000) % vocab
    counts = np.bincount(train, minlength=vocab) + 1.0
    result = evaluate(UnigramModel(np.log(counts / counts.sum())), val, train, vocab, block_size=16,
                      max_tokens=10_000, decode_bytes=lambda ids: b"ab" * len(ids), batch_size=7)
    assert result["tokens"] == (len(val) - 1) // 16 * 16
    assert result["model_loss"] == pytest.approx(result["unigram_loss"], rel=1e-6)  # logits 在 fp32 里算
    assert result["uniform_loss"] == pytest.approx(math.log(vocab))
    assert result["model_bpb"] == pytest.approx(result["model_loss"] / math.log(2) / 2)


def test_evaluate_by_hand_on_tiny_windows():
    # 均匀 logits（全 0）：模型 loss 恰好 ln V；验证集 [0 1 2 3 0 1 2 3 0]，block 4、max_tokens 8 → 2 个窗口
    vocab = 4
    model = UniformModel(vocab)
    val = np.array([0, 1, 2, 3, 0, 1, 2, 3, 0])
    train = np.array([0, 0, 0, 0, 1, 1, 2, 3])  # 计数 [4, 2, 1, 1] + 1 → [5, 3, 2, 2] / 12
    seen = []

    def decode_bytes(ids):
        seen.append(list(ids))
        return b"xyz" * len(ids)  # 每 token 3 字节

    r = evaluate(model, val, train, vocab, block_size=4, max_tokens=8, decode_bytes=decode_bytes, batch_size=1)
    assert r["tokens"] == 8 and r["bytes_per_token"] == 3.0
    assert seen == [[1, 2, 3, 0, 1, 2, 3, 0]]  # 被预测的是右移一位的目标
    assert r["model_loss"] == pytest.approx(math.log(4)) and r["perplexity"] == pytest.approx(4.0)
    p = np.array([5, 3, 2, 2]) / 12
    expected = -np.mean(np.log(p[[1, 2, 3, 0, 1, 2, 3, 0]]))
    assert r["unigram_loss"] == pytest.approx(expected)
    assert r["unigram_bpb"] == pytest.approx(expected / math.log(2) / 3)
    assert r["model_bpb"] == pytest.approx(r["uniform_bpb"]) == pytest.approx(2 / 3)  # 2 bits/token ÷ 3 字节
    with pytest.raises(ValueError, match="不够一个 block_size=16 的窗口"):
        evaluate(model, val, train, vocab, block_size=16, max_tokens=100, decode_bytes=decode_bytes)
