"""采样：从最后一个位置的 logits 里挑出下一个 token（temperature / top-k / top-p）。

所有模型（Llama、GPT-2……）的 generate() 共用这里的 `sample_next_token`，
因此"怎么采样"只有一份实现，并且逐条对齐 Hugging Face 的 logits warper：

    HF generate(do_sample=True) 的处理顺序：TemperatureLogitsWarper -> TopKLogitsWarper -> TopPLogitsWarper
    -> softmax -> torch.multinomial

- temperature：logits / T。T<1 让分布更尖，T>1 更平；T=0 的极限是 argmax，所以这里把 0 定义为贪心解码。
- top-k：只保留分数最高的 k 个（与第 k 名并列的也保留，和 HF 一样用 `scores < 第k名` 判定要删的）。
- top-p（nucleus）：按概率从高到低累加，保留累计概率刚好 >= p 的最小集合，至少保留 1 个 token。

被过滤掉的位置填 -inf，softmax 后概率恰好为 0，multinomial 永远不会抽到它们。
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["apply_top_k", "apply_top_p", "process_logits", "sample_next_token", "validate_sampling_args"]


def validate_sampling_args(temperature: float, top_k: int | None, top_p: float | None) -> None:
    """参数不合法时给出说明怎么改的 ValueError（而不是在 softmax/multinomial 里报 NaN 之类的错）。"""
    if not isinstance(temperature, (int, float)) or isinstance(temperature, bool) or temperature < 0:
        raise ValueError(f"temperature={temperature!r} 不合法：必须是 >= 0 的数（0 表示贪心解码，1.0 表示不缩放）")
    if top_k is not None and (not isinstance(top_k, int) or isinstance(top_k, bool) or top_k < 1):
        raise ValueError(f"top_k={top_k!r} 不合法：必须是 >= 1 的整数，或者传 None 表示不做 top-k 过滤")
    if top_p is not None and (not isinstance(top_p, (int, float)) or isinstance(top_p, bool) or not 0 < top_p <= 1):
        raise ValueError(f"top_p={top_p!r} 不合法：必须在 (0, 1] 区间内，或者传 None 表示不做 top-p 过滤")


def apply_top_k(logits: Tensor, top_k: int) -> Tensor:
    """(B, V) -> (B, V)：分数低于第 k 名的位置填 -inf（并列第 k 名全部保留，与 HF 相同）。"""
    k = min(top_k, logits.size(-1))  # k 超过词表大小时等于不过滤
    kth_value = torch.topk(logits, k, dim=-1).values[..., -1:]  # (B, 1)
    return logits.masked_fill(logits < kth_value, float("-inf"))


def apply_top_p(logits: Tensor, top_p: float) -> Tensor:
    """(B, V) -> (B, V)：nucleus 过滤，保留累计概率 >= top_p 的最小集合，其余填 -inf。

    为什么升序排序：升序累加时，要删掉的恰好是"累计概率 <= 1 - p"的那一段低概率尾巴，
    剩下的高概率头部的总质量 >= p；而且最大的那个 token 排在最后，它所在位置的累计值是 1，
    只要 p > 0 就永远不会被删——"至少保留一个 token"自然成立（我们仍显式保留一次，防止浮点误差）。
    与 HF TopPLogitsWarper 用同一个判定式，平局与舍入行为也一致。
    """
    sorted_logits, sorted_idx = torch.sort(logits, dim=-1, descending=False)  # (B, V) 升序
    cum_probs = sorted_logits.softmax(dim=-1).cumsum(dim=-1)  # (B, V)
    remove_sorted = cum_probs <= (1 - top_p)
    remove_sorted[..., -1] = False  # 概率最大的那个永远保留
    # 把"排序后的位置要删"散射回原始词表位置：remove[b, sorted_idx[b, j]] = remove_sorted[b, j]
    remove = remove_sorted.scatter(-1, sorted_idx, remove_sorted)
    return logits.masked_fill(remove, float("-inf"))


def process_logits(
    logits: Tensor, temperature: float = 1.0, top_k: int | None = None, top_p: float | None = None
) -> Tensor:
    """temperature -> top-k -> top-p，返回处理后的 logits（B, V），顺序与 HF generate 相同。

    temperature 必须 > 0（0 的贪心情形由 sample_next_token 处理，这里除以 0 没有意义）。
    与 HF generate 一样：temperature == 1、top_p == 1 时对应的步骤是恒等变换，直接跳过。
    """
    validate_sampling_args(temperature, top_k, top_p)
    if temperature == 0:
        raise ValueError("process_logits 需要 temperature > 0；temperature=0（贪心）请直接对 logits 取 argmax")
    if temperature != 1.0:
        logits = logits / temperature
    if top_k is not None:
        logits = apply_top_k(logits, top_k)
    if top_p is not None and top_p < 1.0:
        logits = apply_top_p(logits, top_p)
    return logits


@torch.no_grad()
def sample_next_token(
    logits: Tensor,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    generator: torch.Generator | None = None,
) -> Tensor:
    """从 (B, V) 的 logits 为每一行采样一个 token，返回 (B,) long。

    temperature=0：贪心（argmax），此时 top_k / top_p 不影响结果（最大值永远在保留集合里）。
    generator：传入 torch.Generator 可复现采样；同一个 generator 状态下与 HF 的
    `softmax -> torch.multinomial(probs, 1)` 抽到同一个 token。
    """
    validate_sampling_args(temperature, top_k, top_p)
    if logits.dim() != 2:
        raise ValueError(f"logits 应为 (B, V) 二维张量，实际形状 {tuple(logits.shape)}；通常传 logits[:, -1, :]")
    if temperature == 0:
        return logits.argmax(dim=-1)
    # bf16/fp16 的 logits 先转成 fp32 再 softmax：低精度下累计概率的舍入会改变 top-p 的截断位置
    logits = process_logits(logits.float(), temperature, top_k, top_p)
    probs = logits.softmax(dim=-1)  # (B, V)
    return torch.multinomial(probs, num_samples=1, generator=generator).squeeze(-1)  # (B,)
