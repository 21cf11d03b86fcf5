"""注意力后端注册表：所有模型（Llama、GPT-2……）按名字挑选注意力实现，更快的内核往这里注册，模型不 import 它们。

读法（自上而下）：
1. 掩码约定 —— 全仓库只有一种：bool，True = 可以看，形状可广播到 (B, H, T, S)。
2. 稠密后端 fn(q, k, v, *, is_causal, attn_mask, scale, dropout_p=0.0) -> (B, H, T, D)：
   eager_attention（手写，softmax 在 fp32 里）与 sdpa_attention（F.scaled_dot_product_attention）。
3. 注册表 ATTENTION_BACKENDS、register_attention_backend、get_attention_backend。
4. 打包（varlen）注意力：packed_attention —— 后端有自己的 varlen 实现就用它，否则退回"稠密后端 + 分块对角掩码"。
5. make_attention_mask：(B, T) 批量（可带 KV cache 前缀与 padding）的掩码，两种模型共用。

为什么是 bool 掩码而不是加性掩码（0 / finfo.min）：bool 与 dtype 无关，同一个掩码能喂给 fp32 的 upcast 路径和
bf16 的内核；SDPA 与 FlashAttention 的接口也都接受它。加性掩码必须与分数同 dtype，每换一种精度就要重建一次。

NaN 保护：softmax 的一行如果一个 key 都不许看，会得到 0/0 = NaN，并顺着反向传播污染所有梯度。
这种行只出现在"左侧 padding 的 padding 位置"上——它们的输出本来就没人用。构造掩码时把这种行改成"可以看全部 key"，
数值有限、输出照样被丢弃；后端因此可以假设每一行至少有一个 True，不必各自处理。

为什么 q/k/v 的布局是 (B, H, T, D)：与 SDPA、HF 的注意力接口相同；GQA 时 k/v 只有 H_kv 个头（未复制），
由后端决定复制（repeat_kv）还是原生支持分组（省内存）。打包路径里 q 是 (N, H, D)：没有批维，
N 个 token 首尾相接——FlashAttention 的 varlen 接口与 vLLM 的 paged attention 都用这个布局。
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import Tensor

if TYPE_CHECKING:
    from model_lab.kv_cache import AttnMetadata

__all__ = [
    "ATTENTION_BACKENDS",
    "AttentionBackend",
    "eager_attention",
    "get_attention_backend",
    "make_attention_mask",
    "packed_attention",
    "register_attention_backend",
    "repeat_kv",
    "sdpa_attention",
]

AttentionFn = Callable[..., Tensor]


# ---------------------------------------------------------------------------------------------------
# 1-2. 稠密后端：q (B, H, T, D)，k/v (B, H_kv, S, D) -> (B, H, T, D)
#      is_causal=True 只在 T == S（没有缓存的前缀）且无掩码时出现（左上角对齐，与 SDPA 相同）；
#      其余情形 is_causal=False，由 attn_mask（bool，True = 可以看）表达全部约束。
# ---------------------------------------------------------------------------------------------------


def repeat_kv(x: Tensor, n_rep: int) -> Tensor:
    """(B, H_kv, S, D) -> (B, H_kv*n_rep, S, D)：第 j 个 KV 头服务第 j*n_rep ... (j+1)*n_rep-1 个 Q 头（与 HF 相同）。"""
    if n_rep == 1:
        return x
    b, h_kv, s, d = x.shape
    return x[:, :, None].expand(b, h_kv, n_rep, s, d).reshape(b, h_kv * n_rep, s, d)


def eager_attention(q: Tensor, k: Tensor, v: Tensor, *, is_causal: bool, attn_mask: Tensor | None, scale: float,
                    dropout_p: float = 0.0) -> Tensor:
    """手写版：softmax(q kᵀ · scale, 被禁止处 -inf) v。softmax 在 fp32 里做，再转回 q 的 dtype（与 HF eager 相同），
    dropout 作用在概率上（与 HF 相同的位置与随机数消耗顺序，所以同一个种子下与 HF eager 逐位一致）。"""
    n_rep = q.size(1) // k.size(1)
    k, v = repeat_kv(k, n_rep), repeat_kv(v, n_rep)  # (B, H, S, D)
    scores = torch.matmul(q, k.transpose(-2, -1)) * scale  # (B, H, T, S)
    if is_causal:
        t, s = scores.shape[-2:]
        attn_mask = torch.ones(t, s, dtype=torch.bool, device=q.device).tril()
    if attn_mask is not None:
        scores = scores.masked_fill(~attn_mask, float("-inf"))
    probs = scores.softmax(dim=-1, dtype=torch.float32).to(q.dtype)
    if dropout_p > 0:
        probs = F.dropout(probs, p=dropout_p)
    return torch.matmul(probs, v)  # (B, H, T, D)


def sdpa_attention(q: Tensor, k: Tensor, v: Tensor, *, is_causal: bool, attn_mask: Tensor | None, scale: float,
                   dropout_p: float = 0.0) -> Tensor:
    """PyTorch 的融合注意力（CPU 上是 flash 式分块算法，GPU 上是 FlashAttention / memory-efficient 内核）。

    GQA：不带 mask 时用 enable_gqa（内核内部按组广播，省掉复制 KV 的内存）；带 mask 时不少内核不支持
    enable_gqa，就先把 KV 头复制到 H 个（与 HF 的选择相同）。
    """
    n_rep = q.size(1) // k.size(1)
    if n_rep > 1 and attn_mask is not None:
        k, v = repeat_kv(k, n_rep), repeat_kv(v, n_rep)
        n_rep = 1
    return F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, dropout_p=dropout_p, is_causal=is_causal,
                                          scale=scale, enable_gqa=n_rep > 1)


# ---------------------------------------------------------------------------------------------------
# 3. 注册表
# ---------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class AttentionBackend:
    """一个注册的注意力实现。

    fn：稠密接口 fn(q, k, v, *, is_causal, attn_mask, scale, dropout_p=0.0) -> (B, H, T, D)。
    packed：可选的 varlen 接口 packed(q, k, v, *, attn_metadata, scale, dropout_p=0.0) -> (N, H, D)，
      q 为 (N, H, D)；没有 KV cache 时 k/v 是这 N 个 token 自己的 (N, H_kv, D)，序列边界由 attn_metadata.cu_seqlens
      给出；有 PagedKVCache 时 k/v 是这一层的块池 (num_blocks, block_size, H_kv, D)，每条序列的上下文按
      attn_metadata.block_tables 的一行去读、长度是 attn_metadata.context_lens。
      以后的 Triton / FlashAttention varlen 内核实现这个接口；没有时 packed_attention 用 fn + 分块对角掩码代替。
    """

    name: str
    fn: AttentionFn
    packed: AttentionFn | None = None


ATTENTION_BACKENDS: dict[str, AttentionBackend] = {
    "eager": AttentionBackend("eager", eager_attention),
    "sdpa": AttentionBackend("sdpa", sdpa_attention),
}


def register_attention_backend(name: str, fn: AttentionFn, *, packed: AttentionFn | None = None) -> None:
    """注册一个注意力实现（例如 Triton FlashAttention）；之后 config.attn_implementation = name 即可使用。

    同名再注册会覆盖（方便在 notebook 里反复修改内核）。
    """
    if not isinstance(name, str) or not name:
        raise ValueError(f"注意力后端名 {name!r} 必须是非空字符串")
    if not callable(fn):
        raise ValueError(f"注意力后端 {name!r} 的 fn 必须是可调用对象，签名 "
                         "fn(q, k, v, *, is_causal, attn_mask, scale, dropout_p=0.0)")
    if packed is not None and not callable(packed):
        raise ValueError(f"注意力后端 {name!r} 的 packed 必须是可调用对象（签名 "
                         "packed(q, k, v, *, attn_metadata, scale, dropout_p=0.0)）或 None")
    ATTENTION_BACKENDS[name] = AttentionBackend(name, fn, packed)


def get_attention_backend(name: str) -> AttentionBackend:
    """按名字取后端；名字未注册时报错并列出已注册的名字。"""
    backend = ATTENTION_BACKENDS.get(name)
    if backend is None:
        raise ValueError(f"attn_implementation={name!r} 未注册；已注册的后端：{sorted(ATTENTION_BACKENDS)}"
                         "（拼写错误请改成其中之一；新的实现先用 register_attention_backend(name, fn) 注册）")
    return backend


# ---------------------------------------------------------------------------------------------------
# 4. 打包（varlen）注意力
# ---------------------------------------------------------------------------------------------------


def packed_attention(name: str, q: Tensor, k: Tensor, v: Tensor, *, attn_metadata: AttnMetadata, scale: float,
                     dropout_p: float = 0.0) -> Tensor:
    """q (N, H, D) 的打包批量 -> (N, H, D)：每个 token 只看自己那条序列里位置不晚于它的 key。

    k/v 的两种形态见 AttentionBackend.packed。后端没有 varlen 实现时的参考做法：
    把所有序列的上下文收集成一条 (S, H_kv, D)（S = Σ context_lens），配一个 (N, S) 的分块对角因果掩码，
    交给稠密 fn 当作 batch=1 算一次。结果与逐条序列计算相同，但注意力的计算量与内存是 O(N·S) 而不是 Σ Tᵢ·Sᵢ——
    正确性的参照，不是快路径（快路径是注册一个 packed 实现）。
    """
    backend = get_attention_backend(name)
    if backend.packed is not None:
        return backend.packed(q, k, v, attn_metadata=attn_metadata, scale=scale, dropout_p=dropout_p)
    if attn_metadata.block_tables is not None:  # 块池 (num_blocks, block_size, H_kv, D) -> 各序列上下文 (S, H_kv, D)
        slots = attn_metadata.context_slots(k.size(1))
        k, v = k.flatten(0, 1).index_select(0, slots), v.flatten(0, 1).index_select(0, slots)
    y = backend.fn(q.transpose(0, 1)[None], k.transpose(0, 1)[None], v.transpose(0, 1)[None], is_causal=False,
                   attn_mask=attn_metadata.dense_mask[None, None], scale=scale, dropout_p=dropout_p)  # (1, H, N, D)
    return y[0].transpose(0, 1)


# ---------------------------------------------------------------------------------------------------
# 5. (B, T) 批量的掩码
# ---------------------------------------------------------------------------------------------------


def make_attention_mask(t: int, past: int, attention_mask: Tensor | None, device: torch.device) -> Tensor | None:
    """(B, T) 批量的 bool 掩码 (B 或 1, 1, T, past + T)，True = 可以看；不需要掩码时返回 None。

    第 i 个新 query 的绝对位置是 past + i，可以看 key 0..past+i（右下对齐的因果掩码）；attention_mask（(B, past+T)
    的 0/1，0 = padding）为 0 的 key 谁也看不见。返回 None 的两种情形：
    ① 无前缀、无 padding：纯因果，调用方传 is_causal=True，内核可以跳过上三角，也省掉掩码张量；
    ② 无 padding、只有 1 个新 token：它本来就能看全部 key。这时不能写 is_causal=True——SDPA 的因果掩码是
       左上角对齐的，T=1 时只让 query 看见第 0 个 key。
    """
    s = past + t
    if attention_mask is None:
        if past == 0 or t == 1:
            return None
        pad = None
    else:
        pad = attention_mask.to(device=device, dtype=torch.bool)[:, None, None, :]  # (B, 1, 1, S)
    q_pos = torch.arange(past, s, device=device)[:, None]  # (T, 1)
    causal = torch.arange(s, device=device)[None, :] <= q_pos  # (T, S)
    mask = causal[None, None] if pad is None else causal[None, None] & pad  # (B|1, 1, T, S)
    # NaN 保护（见模块说明）：一个 key 都不能看的行（左 padding 的 padding 位置）改为看全部
    return mask | ~mask.any(dim=-1, keepdim=True)
