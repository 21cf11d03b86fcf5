"""采样与生成循环：从最后一个位置的 logits 里挑出下一个 token（temperature / top-k / top-p），以及自回归的 generate。

所有模型（Llama、GPT-2……）的 generate() 都只是检查完自己的输入后调用这里的 `generate`，
因此"怎么采样""怎么用 KV cache 逐 token 解码"各只有一份实现，并且逐条对齐 Hugging Face：

    HF generate(do_sample=True) 的处理顺序：TemperatureLogitsWarper -> TopKLogitsWarper -> TopPLogitsWarper
    -> softmax -> torch.multinomial

- temperature：logits / T。T<1 让分布更尖，T>1 更平；T=0 的极限是 argmax，所以这里把 0 定义为贪心解码。
- top-k：只保留分数最高的 k 个（与第 k 名并列的也保留，和 HF 一样用 `scores < 第k名` 判定要删的）。
- top-p（nucleus）：按概率从高到低累加，保留累计概率刚好 >= p 的最小集合，至少保留 1 个 token。

被过滤掉的位置填 -inf，softmax 后概率恰好为 0，multinomial 永远不会抽到它们。

generate 对模型的要求（两个模型都满足）：`make_kv_cache(batch_size, max_seq_len)` 返回 model_lab.kv_cache.KVCache；
`forward_hidden(input_ids, position_ids, kv_cache, attention_mask)` 是不做输入检查的主干前向，返回最后的隐状态
(B, T, C)（写完缓存后前进位置）；`lm_head` 把隐状态映射成 logits。
缓存从哪来可以换：`cache_factory(batch_size, max_seq_len)` 返回任何 KVCache 的子类（例如
inference_engine.quantization.kv_cache 的 int8 QuantizedKVCache），不传时就是 model.make_kv_cache。
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor, nn

from model_lab.kv_cache import KVCache

__all__ = ["apply_top_k", "apply_top_p", "check_max_new_tokens", "generate", "generation_position_ids",
           "make_generation_cache", "process_logits", "sample_next_token", "validate_sampling_args"]


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


def check_max_new_tokens(max_new_tokens: int) -> None:
    if not isinstance(max_new_tokens, int) or isinstance(max_new_tokens, bool) or max_new_tokens < 0:
        raise ValueError(f"max_new_tokens={max_new_tokens!r} 必须是 >= 0 的整数")


def generation_position_ids(attention_mask: Tensor | None, length: int, device: torch.device) -> Tensor:
    """(B 或 1, length) 的位置编号。有 attention_mask（左侧 padding）时与 HF generate 的规则相同：
    从每行第一个真实 token 记 0（cumsum - 1），padding 位置填 0（它们不被任何 query 看到，取值无关紧要）。"""
    if attention_mask is None:
        return torch.arange(length, device=device)[None]
    return (attention_mask.cumsum(-1) - 1).masked_fill(attention_mask == 0, 0)


def make_generation_cache(model: nn.Module, batch_size: int, max_seq_len: int,
                          cache_factory: Callable[[int, int], KVCache] | None = None) -> KVCache:
    """generate 用的稠密缓存：默认 model.make_kv_cache；给了 cache_factory 就用它造，并在解码开始前核对
    （类型、批大小、容量、是否为空、层数/KV 头数/head_dim 与模型一致），而不是在某一层的写入里报形状错误。"""
    if cache_factory is None:
        return model.make_kv_cache(batch_size, max_seq_len)
    cache = cache_factory(batch_size, max_seq_len)
    if not isinstance(cache, KVCache):
        raise ValueError(f"cache_factory 返回了 {type(cache).__name__}，应为 model_lab.KVCache（或它的子类）："
                         "generate 按 (B, T) 批量逐步解码，分页缓存属于推理引擎")
    ref = model.make_kv_cache(batch_size, 1)  # 只为读出模型要求的形状（1 个位置，几乎不占内存）
    bad = [f"{k}={getattr(cache, k)}（模型需要 {getattr(ref, k)}）"
           for k in ("num_layers", "batch_size", "num_kv_heads", "head_dim") if getattr(cache, k) != getattr(ref, k)]
    if cache.max_seq_len < max_seq_len:
        bad.append(f"max_seq_len={cache.max_seq_len}（需要 ≥ 输入 + max_new_tokens = {max_seq_len}）")
    if cache.seq_len != 0:
        bad.append(f"seq_len={cache.seq_len}（需要一个空缓存）")
    if bad:
        raise ValueError(f"cache_factory({batch_size}, {max_seq_len}) 返回的缓存不合用：{'；'.join(bad)}；"
                         "让它按传入的 (batch_size, max_seq_len) 与模型的配置新建一个空缓存")
    return cache


@torch.no_grad()
def generate(model: nn.Module, input_ids: Tensor, max_new_tokens: int, temperature: float = 1.0,
             top_k: int | None = None, top_p: float | None = None, *, generator: torch.Generator | None = None,
             eos_token_id: int | None = None, attention_mask: Tensor | None = None, use_cache: bool = True,
             pad_token_id: int | None = None, cache_factory: Callable[[int, int], KVCache] | None = None) -> Tensor:
    """自回归生成，返回 (B, T + 生成的长度)。模型的 generate 检查完自己的输入（id 范围、最大长度）后调用它。

    use_cache=True：先整段 prefill 写入 KV cache，之后每步只喂 1 个 token；False：每步重算整个序列（慢，用于对照）。
    每步只对最后一个位置做 lm_head：省掉 (T-1)·V·C 次乘加（大词表时很可观）。
    temperature=0 为贪心（与 HF 的 do_sample=False 相同）。
    eos_token_id：某行生成 eos 后，之后填 pad_token_id（没有则填 eos）；所有行都结束就提前停止。
    attention_mask：左侧 padding 的批量生成（(B, T) 的 0/1），位置编号见 generation_position_ids。
    cache_factory：(batch_size, max_seq_len) -> 空的 KVCache（子类也行，例如量化的 KV cache）；None = model.make_kv_cache。
    调用前请 model.eval()，否则 dropout 会让生成结果随机。
    """
    validate_sampling_args(temperature, top_k, top_p)
    check_max_new_tokens(max_new_tokens)
    if cache_factory is not None and not use_cache:
        raise ValueError("cache_factory 只在 use_cache=True 时有用：use_cache=False 每步重算整个序列、不用缓存；"
                         "去掉 cache_factory 或设 use_cache=True")
    b, t = input_ids.shape
    if attention_mask is not None and tuple(attention_mask.shape) != (b, t):
        raise ValueError(f"attention_mask 形状应为 (B, T) = {(b, t)}（1 = 真实 token，0 = 左侧 padding），"
                         f"收到 {tuple(attention_mask.shape)}")
    if max_new_tokens == 0:
        return input_ids
    pad_id = pad_token_id if pad_token_id is not None else eos_token_id
    mask = None if attention_mask is None else attention_mask.to(device=input_ids.device, dtype=torch.long)
    cache = make_generation_cache(model, b, t + max_new_tokens, cache_factory) if use_cache else None
    seq, new_ids = input_ids, input_ids
    finished = torch.zeros(b, dtype=torch.bool, device=input_ids.device)
    for _ in range(max_new_tokens):
        ids = new_ids if cache is not None else seq
        pos = generation_position_ids(mask, seq.size(1), input_ids.device)[:, -ids.size(1):]
        h = model.forward_hidden(ids, pos, cache, mask)  # (B, T 或 1, C)
        logits = model.lm_head(h[:, -1, :]).float()  # (B, V)
        next_id = sample_next_token(logits, temperature, top_k, top_p, generator)  # (B,)
        if eos_token_id is not None:
            next_id = torch.where(finished, torch.full_like(next_id, pad_id), next_id)
            finished |= next_id == eos_token_id
        new_ids = next_id[:, None]
        seq = torch.cat([seq, new_ids], dim=1)
        if mask is not None:
            mask = torch.cat([mask, mask.new_ones(b, 1)], dim=1)
        if eos_token_id is not None and bool(finished.all()):
            break
    return seq
