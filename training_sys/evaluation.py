"""评估的数学：loss（nats/token）与 bits/byte 的换算、整个验证集上的评估、两条基线。预训练循环与端到端流水线共用这一份。

- bits/byte = nats/token ÷ ln 2 ÷ (字节数 / token 数)。nats/token 依赖分词器（词表越大，每个 token 装的字节越多，
  loss 自然越高），bits/byte 把它折算成"每个字节要几个 bit"，与分词器无关，可以和字符级模型、别的词表直接比较。
- 均匀分布基线：什么都没学的模型对 V 个 token 一视同仁，交叉熵恰好是 ln V。
- 一元（unigram）基线：只知道每个 token 在训练集里多频繁、完全不看上下文的模型，
  p(t) = (count(t) + 1) / (N + V)（加一平滑：验证集里出现、训练集里没见过的 token 概率也不为 0），
  交叉熵 = −mean log p(y)。模型比它低多少，就是"看上下文"学到了多少。
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import numpy as np
import torch

__all__ = ["bits_per_byte", "evaluate", "loss_baselines", "unigram_log_probs", "unigram_loss", "uniform_loss"]


def bits_per_byte(loss_nats: float, bytes_per_token: float) -> float:
    """nats/token → bits/byte：除以 ln 2 变成 bits/token，再除以每 token 的平均字节数。与分词器无关，可跨词表比较。"""
    return loss_nats / math.log(2) / bytes_per_token


def uniform_loss(vocab_size: int) -> float:
    """均匀分布 p = 1/V 的交叉熵（nats/token）：−log(1/V) = ln V。"""
    if vocab_size < 1:
        raise ValueError(f"vocab_size={vocab_size} 必须是正整数")
    return math.log(vocab_size)


def _check_ids(ids: np.ndarray, vocab_size: int, what: str) -> np.ndarray:
    ids = np.asarray(ids)
    if ids.size and (ids.min() < 0 or ids.max() >= vocab_size):
        raise ValueError(f"{what} 里有越界的 token id（范围 {ids.min()}..{ids.max()}，词表大小 {vocab_size}）："
                         "token 数据与词表不配套，检查 meta.json 的 vocab_size")
    return ids


def unigram_log_probs(train: np.ndarray, vocab_size: int) -> np.ndarray:
    """加一平滑的一元分布 log p(t) = log((count(t) + 1) / (N + V))，形状 (V,)，float64。"""
    train = _check_ids(train, vocab_size, "训练集")
    counts = np.bincount(train, minlength=vocab_size).astype(np.float64) + 1.0
    return np.log(counts / counts.sum())


def unigram_loss(train: np.ndarray, targets: np.ndarray, vocab_size: int) -> float:
    """一元基线在 targets 上的交叉熵（nats/token）：用 train 的频率估分布，−mean log p(y)。"""
    targets = _check_ids(targets, vocab_size, "目标 token")
    if targets.size == 0:
        raise ValueError("targets 为空：至少要有一个 token 才能算交叉熵")
    return float(-unigram_log_probs(train, vocab_size)[targets].mean())


def loss_baselines(train: np.ndarray, val: np.ndarray, vocab_size: int) -> dict[str, float]:
    """两条不用训练的基线在整个验证集上的交叉熵（nats/token）：均匀分布 ln V，与用训练集频率估出的 unigram。

    训练循环在开头打印它们、结尾把 val loss 放在它们旁边：比 unigram 低多少，才是模型从上下文里学到的。
    """
    return {"uniform": uniform_loss(vocab_size), "unigram": unigram_loss(train, val, vocab_size)}


@torch.no_grad()
def evaluate(model: torch.nn.Module, val: np.ndarray, train: np.ndarray, vocab_size: int, block_size: int,
             max_tokens: int, decode_bytes: Callable[[list[int]], bytes], batch_size: int = 32) -> dict[str, Any]:
    """验证集开头最多 max_tokens 个 token，切成不重叠的 block_size 窗口：模型与两条基线的 loss、bits/byte。

    不重叠窗口里每个 token 只被预测一次，所以这是整段验证集的精确交叉熵（不是 estimate_loss 那种随机
    batch 的估计）；代价是窗口开头的 token 上下文很短，比滑动窗口的结果略高。
    bits/byte 用的字节数是被预测的那些 token 解码后的 UTF-8 字节数，三行用同一个换算系数。
    """
    if block_size < 1 or batch_size < 1:
        raise ValueError(f"block_size={block_size}、batch_size={batch_size} 都必须是正整数")
    n_windows = min(max_tokens, len(val) - 1) // block_size
    if n_windows <= 0:
        raise ValueError(f"验证集只有 {len(val)} 个 token，不够一个 block_size={block_size} 的窗口：换更长的语料")
    n = n_windows * block_size
    x = torch.from_numpy(np.asarray(val[:n], dtype=np.int64)).view(n_windows, block_size)  # (W, T)
    y = torch.from_numpy(np.asarray(val[1:n + 1], dtype=np.int64)).view(n_windows, block_size)  # (W, T)
    targets = _check_ids(y.flatten().numpy(), vocab_size, "验证集")
    device = next(model.parameters()).device
    nll = 0.0
    for i in range(0, n_windows, batch_size):
        logits = model(x[i:i + batch_size].to(device)).float()  # (B, T, V)
        nll += torch.nn.functional.cross_entropy(logits.flatten(0, 1), y[i:i + batch_size].flatten().to(device),
                                                 reduction="sum").item()
    bytes_per_token = len(decode_bytes(targets.tolist())) / n
    model_loss = nll / n
    unigram = unigram_loss(train, targets, vocab_size)
    uniform = uniform_loss(vocab_size)
    return {"tokens": n, "bytes_per_token": bytes_per_token,
            "model_loss": model_loss, "model_bpb": bits_per_byte(model_loss, bytes_per_token),
            "unigram_loss": unigram, "unigram_bpb": bits_per_byte(unigram, bytes_per_token),
            "uniform_loss": uniform, "uniform_bpb": bits_per_byte(uniform, bytes_per_token),
            "perplexity": math.exp(model_loss), "unigram_perplexity": math.exp(unigram)}
