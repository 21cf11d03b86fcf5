"""把 inference_engine/kernels 的 Triton 内核注册成模型的后端：`import inference_engine.backends` 之后

    Llama(LlamaConfig(..., attn_implementation="triton_flash", kernels="triton"))

的注意力、RMSNorm、RoPE、SwiGLU、lm_head + 交叉熵都跑在手写内核上（训练循环里是 `--kernels triton`）。

为什么注册放在这里、不放在 kernels/ 里：kernels/ 是最底层的积木，只依赖 utils（docs/ARCHITECTURE.md §3）——
一个内核文件应当能被任何项目拿去用，不该知道 Llama 长什么样。把"哪个内核接到模型的哪个接口上"这件事
（接口适配、掩码的识别、退回 SDPA 的规则）写在 inference_engine 这一层，它本来就允许 import model_lab。

注意力后端 "triton_flash" 的两条路：
- 稠密 fn(q, k, v, *, is_causal, attn_mask, scale, dropout_p)：没有掩码 → FlashAttention-2 内核（is_causal 原样传）；
  有掩码时先认一认它：若正是"右下对齐的因果掩码"（带 KV cache 前缀、没有 padding 的预填充）或全为 True
  （没有 padding 的单 token 解码），内核本来就支持，照样走内核；其余任意掩码（左侧 padding 的批量生成）
  FlashAttention 内核不表达，交给 sdpa_attention——结果正确，只是那一步不用手写内核。dropout_p > 0 报错：
  内核没有实现注意力 dropout（Llama 也不用它）。
- 打包 packed(q, k, v, *, attn_metadata, scale)：没有分页缓存（训练、整段预填充）→ flash_attention_varlen，
  每条序列内因果；有 PagedKVCache（解码、分块预填充）→ 分页注意力内核，按 block table 读上下文。

内核后端 "triton"：rms_norm、apply_rope、swiglu 用 kernels/ops.py 的自定义算子版本（能与 torch.compile 组合），
linear_cross_entropy 用 kernels/cross_entropy.py 的分块融合版本（训练时不物化 logits）。
"""

from __future__ import annotations

import torch
from torch import Tensor

from inference_engine.kernels import ops
from inference_engine.kernels.cross_entropy import linear_cross_entropy
from model_lab.attention_backends import register_attention_backend, sdpa_attention
from model_lab.kernel_backends import register_kernel_backend
from model_lab.kv_cache import AttnMetadata

__all__ = ["TRITON_ATTENTION", "TRITON_KERNELS", "register_triton_backends", "triton_flash_attention",
           "triton_flash_packed"]

TRITON_ATTENTION = "triton_flash"
TRITON_KERNELS = "triton"


def _mask_kind(attn_mask: Tensor, t: int, s: int) -> str:
    """"causal"（右下对齐的因果）、"full"（全 True）或 "other"。掩码是 (B 或 1, 1, T, S) 的 bool。

    比较本身是 O(B·T·S) 个 bool，比注意力的 O(B·H·T·S·D) 小得多；换来的是带前缀的预填充也能走内核。
    """
    if attn_mask.dtype != torch.bool or attn_mask.dim() != 4 or attn_mask.shape[-2:] != (t, s):
        return "other"
    if bool(attn_mask.all()):
        return "full"
    causal = torch.ones(t, s, dtype=torch.bool, device=attn_mask.device).tril(diagonal=s - t)
    return "causal" if torch.equal(attn_mask, causal.expand_as(attn_mask)) else "other"


def triton_flash_attention(q: Tensor, k: Tensor, v: Tensor, *, is_causal: bool, attn_mask: Tensor | None,
                           scale: float, dropout_p: float = 0.0) -> Tensor:
    """稠密注意力后端：q (B, H, T, D)，k/v (B, H_kv, S, D) -> (B, H, T, D)（规则见模块说明）。"""
    if dropout_p > 0:
        raise ValueError(f"attn_implementation='triton_flash' 不支持注意力 dropout（dropout_p={dropout_p}）："
                         "请把 dropout 设为 0，或改用 attn_implementation='sdpa'")
    causal = is_causal
    if attn_mask is not None:
        kind = _mask_kind(attn_mask, q.size(2), k.size(2))
        if kind == "other":  # padding 等任意掩码：内核不表达，交给 SDPA（结果正确）
            return sdpa_attention(q, k, v, is_causal=False, attn_mask=attn_mask, scale=scale)
        causal = kind == "causal"
    return ops.flash_attention(q.contiguous(), k.contiguous(), v.contiguous(), causal=causal, scale=scale)


def triton_flash_packed(q: Tensor, k: Tensor, v: Tensor, *, attn_metadata: AttnMetadata, scale: float,
                        dropout_p: float = 0.0) -> Tensor:
    """打包注意力后端：q (N, H, D)；k/v 是 (N, H_kv, D)（无缓存）或块池 (num_blocks, block_size, H_kv, D)。"""
    if dropout_p > 0:
        raise ValueError(f"attn_implementation='triton_flash' 不支持注意力 dropout（dropout_p={dropout_p}）")
    md = attn_metadata
    if md.block_tables is None:
        # AttnMetadata 构造时已检查过 cu_seqlens：各层不再把它读回主机（validate=False）
        return ops.flash_attention_varlen(q.contiguous(), k.contiguous(), v.contiguous(), cu_seqlens_q=md.cu_seqlens,
                                          cu_seqlens_k=md.cu_seqlens, max_seqlen_q=md.max_seqlen_q,
                                          max_seqlen_k=md.max_seqlen_k, causal=True, scale=scale, validate=False)
    return ops.paged_attention(q.contiguous(), k, v, cu_seqlens_q=md.cu_seqlens, context_lens=md.context_lens,
                               block_tables=md.block_tables, scale=scale, max_seqlen_q=md.max_seqlen_q)


def register_triton_backends() -> None:
    """注册注意力后端 "triton_flash" 与内核后端 "triton"（导入本模块时自动调用一次；重复调用无害）。"""
    register_attention_backend(TRITON_ATTENTION, triton_flash_attention, packed=triton_flash_packed)
    register_kernel_backend(TRITON_KERNELS, rms_norm=ops.rms_norm, apply_rope=ops.apply_rope, swiglu=ops.swiglu,
                            linear_cross_entropy=linear_cross_entropy)


register_triton_backends()
