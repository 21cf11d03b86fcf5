"""把 Triton 内核登记成 PyTorch 的自定义算子（torch.library.custom_op），让它们能与 torch.compile 组合。

为什么不直接用各文件里的 torch.autograd.Function：
- torch.compile（dynamo）遇到 autograd.Function 会试着**追踪进它的 forward**，里面是 Triton 的启动器——Python 的
  形状计算、`.tolist()` 的检查、解释器模式下的 numpy 模拟——要么 graph break，要么干脆追踪失败。
- 自定义算子对编译器是一个**不透明**的节点：它只需要知道"输出长什么样"（register_fake：只看形状/dtype，不真的算），
  以及"怎么求导"（register_autograd：反向也是一个自定义算子）。于是 inductor 可以把算子前后的逐元素运算融合掉，
  而我们的内核原样被调用。这也是 vLLM、FlashAttention 官方包、torchao 暴露内核的方式。

每个算子的三件套：
1. 实现：`@torch.library.custom_op("llm_hardcore::name", mutates_args=())` 修饰的函数，调各内核文件里的启动器；
2. fake：`@name.register_fake`，用 `torch.empty` 按规则造出输出的形状与 dtype（编译时用，不碰数据）；
3. 反向：`name.register_autograd(backward, setup_context=...)`，前向需要给反向留的中间量（rstd、logsumexp）
   作为算子的额外输出返回——自定义算子没有 ctx.save_for_backward 之外的地方藏东西。
输入检查在公开函数里、进算子之前做：fake 模式下没有数据可查（`.tolist()` 会失败），检查也不该被编译进图。

`torch.library.opcheck`（tests/inference_engine/kernels/test_ops.py）逐项验证：模式（schema）写对了、fake 与真实
输出的形状/dtype/步长一致、autograd 的登记正确、能过 AOT 编译——这比"跑一次 compile 看看"严格得多。
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from inference_engine.kernels import flash_attention as _fa
from inference_engine.kernels import paged_attention as _paged
from inference_engine.kernels import rmsnorm as _rms
from inference_engine.kernels import rope as _rope
from inference_engine.kernels import swiglu as _swiglu
from inference_engine.kernels.runtime import check_tensor  # noqa: F401  （先导入 runtime：设好解释器开关）

__all__ = ["apply_rope", "flash_attention", "flash_attention_varlen", "paged_attention", "rms_norm", "swiglu"]

NAMESPACE = "llm_hardcore"


# ---------------------------------------------------------------------------------------------------
# RMSNorm：前向多输出每行的 rstd（fp32），反向用它
# ---------------------------------------------------------------------------------------------------


@torch.library.custom_op(f"{NAMESPACE}::rms_norm_fwd", mutates_args=())
def _rms_norm_fwd(x: Tensor, weight: Tensor, eps: float) -> tuple[Tensor, Tensor]:
    return _rms._rms_norm_fwd(x, weight, eps)


@_rms_norm_fwd.register_fake
def _(x, weight, eps):
    rows = x.numel() // x.shape[-1] if x.shape[-1] else 0
    return x.new_empty(x.shape, dtype=torch.result_type(weight, x)), x.new_empty(rows, dtype=torch.float32)


@torch.library.custom_op(f"{NAMESPACE}::rms_norm_bwd", mutates_args=())
def _rms_norm_bwd(dy: Tensor, x: Tensor, weight: Tensor, rstd: Tensor) -> tuple[Tensor, Tensor]:
    return _rms._rms_norm_bwd(dy.contiguous(), x, weight, rstd)


@_rms_norm_bwd.register_fake
def _(dy, x, weight, rstd):
    return torch.empty_like(x), torch.empty_like(weight)


def _rms_setup(ctx, inputs, output):
    x, weight, _ = inputs
    ctx.save_for_backward(x, weight, output[1])


def _rms_backward(ctx, dy, _drstd):
    x, weight, rstd = ctx.saved_tensors
    dx, dw = _rms_norm_bwd(dy, x, weight, rstd)
    return dx, dw, None


_rms_norm_fwd.register_autograd(_rms_backward, setup_context=_rms_setup)


def rms_norm(x: Tensor, weight: Tensor, eps: float = 1e-6) -> Tensor:
    """与 kernels.rmsnorm.rms_norm 相同的语义与检查，但以自定义算子 llm_hardcore::rms_norm_fwd 出现在图里。"""
    _rms._check_inputs(x, weight, eps)
    return _rms_norm_fwd(x, weight, float(eps))[0]


# ---------------------------------------------------------------------------------------------------
# RoPE：旋转是正交变换，反向就是转 −θ——同一个内核（sign = −1），只需要旋转表
# ---------------------------------------------------------------------------------------------------


@torch.library.custom_op(f"{NAMESPACE}::rope", mutates_args=())
def _rope_op(x: Tensor, rope: Tensor, sign: int) -> Tensor:
    return _rope._launch(x, rope, sign)


@_rope_op.register_fake
def _(x, rope, sign):
    return x.new_empty(x.shape)  # 输出总是连续的（输入可以是非连续视图）


def _rope_setup(ctx, inputs, output):
    ctx.save_for_backward(inputs[1])
    ctx.sign = inputs[2]


def _rope_backward(ctx, dy):
    (rope,) = ctx.saved_tensors
    return _rope_op(dy if dy.stride(-1) == 1 else dy.contiguous(), rope, -ctx.sign), None, None


_rope_op.register_autograd(_rope_backward, setup_context=_rope_setup)


def apply_rope(x: Tensor, rope: Tensor) -> Tensor:
    """与 kernels.rope.apply_rope 相同（x (B, T, H, D) 相邻配对，可为非连续视图），自定义算子版本。"""
    _rope._check_inputs(x, rope)
    return _rope_op(x, rope, 1)


# ---------------------------------------------------------------------------------------------------
# SwiGLU：前向只存 gate、up（反向里重算 silu）
# ---------------------------------------------------------------------------------------------------


@torch.library.custom_op(f"{NAMESPACE}::swiglu_fwd", mutates_args=())
def _swiglu_fwd(gate: Tensor, up: Tensor) -> Tensor:
    return _swiglu.swiglu_forward(gate, up)


@_swiglu_fwd.register_fake
def _(gate, up):
    return torch.empty_like(gate)


@torch.library.custom_op(f"{NAMESPACE}::swiglu_bwd", mutates_args=())
def _swiglu_bwd(dout: Tensor, gate: Tensor, up: Tensor) -> tuple[Tensor, Tensor]:
    return _swiglu.swiglu_backward(dout.contiguous(), gate, up)


@_swiglu_bwd.register_fake
def _(dout, gate, up):
    return torch.empty_like(gate), torch.empty_like(up)


def _swiglu_setup(ctx, inputs, output):
    ctx.save_for_backward(*inputs)


def _swiglu_backward(ctx, dout):
    gate, up = ctx.saved_tensors
    return _swiglu_bwd(dout, gate, up)


_swiglu_fwd.register_autograd(_swiglu_backward, setup_context=_swiglu_setup)


def swiglu(gate: Tensor, up: Tensor) -> Tensor:
    """silu(gate) * up，以自定义算子 llm_hardcore::swiglu_fwd 出现在图里。"""
    _swiglu._check_pair(gate, up)
    return _swiglu_fwd(gate, up)


# ---------------------------------------------------------------------------------------------------
# FlashAttention-2：前向多输出 logsumexp（fp32），反向靠它重算概率。稠密与 varlen 共用同一对算子，
# cu_seqlens 为 None 表示稠密布局 (B, H, T, D)。
# ---------------------------------------------------------------------------------------------------


@torch.library.custom_op(f"{NAMESPACE}::flash_attn_fwd", mutates_args=())
def _flash_fwd(q: Tensor, k: Tensor, v: Tensor, cu_q: Tensor | None, cu_k: Tensor | None, batch: int, max_q: int,
               max_k: int, causal: bool, scale: float) -> tuple[Tensor, Tensor]:
    return _fa._forward(q, k, v, cu_q, cu_k, batch, max_q, max_k, causal, scale)


@_flash_fwd.register_fake
def _(q, k, v, cu_q, cu_k, batch, max_q, max_k, causal, scale):
    lse_shape = (q.size(1), q.size(0)) if cu_q is not None else q.shape[:3]  # varlen: (H, N)；稠密: (B, H, T)
    return torch.empty_like(q), q.new_empty(lse_shape, dtype=torch.float32)


@torch.library.custom_op(f"{NAMESPACE}::flash_attn_bwd", mutates_args=())
def _flash_bwd(do: Tensor, q: Tensor, k: Tensor, v: Tensor, o: Tensor, lse: Tensor, cu_q: Tensor | None,
               cu_k: Tensor | None, batch: int, max_q: int, max_k: int, causal: bool,
               scale: float) -> tuple[Tensor, Tensor, Tensor]:
    return _fa._backward(do.contiguous(), q, k, v, o, lse, cu_q, cu_k, batch, max_q, max_k, causal, scale)


@_flash_bwd.register_fake
def _(do, q, k, v, o, lse, cu_q, cu_k, batch, max_q, max_k, causal, scale):
    return torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)


def _flash_setup(ctx, inputs, output):
    q, k, v, cu_q, cu_k, batch, max_q, max_k, causal, scale = inputs
    ctx.save_for_backward(q, k, v, output[0], output[1], cu_q, cu_k)
    ctx.meta = (batch, max_q, max_k, causal, scale)


def _flash_backward(ctx, do, _dlse):
    q, k, v, o, lse, cu_q, cu_k = ctx.saved_tensors
    dq, dk, dv = _flash_bwd(do, q, k, v, o, lse, cu_q, cu_k, *ctx.meta)
    return dq, dk, dv, None, None, None, None, None, None, None


_flash_fwd.register_autograd(_flash_backward, setup_context=_flash_setup)


def flash_attention(q: Tensor, k: Tensor, v: Tensor, *, causal: bool = False, scale: float | None = None) -> Tensor:
    """与 kernels.flash_attention.flash_attention 相同（q (B, H, T, D)，k/v (B, H_kv, S, D)），自定义算子版本。"""
    _, _, head_dim = _fa._check_qkv(q, k, v, ndim=4, head_axis=1)
    if k.size(0) != q.size(0):
        raise ValueError(f"q 的 batch={q.size(0)} 与 k/v 的 batch={k.size(0)} 不同")
    if q.size(2) == 0 or k.size(2) == 0:
        raise ValueError(f"序列长度不能为 0（T={q.size(2)}, S={k.size(2)}）：空序列的 softmax 没有定义")
    scale = 1.0 / math.sqrt(head_dim) if scale is None else float(scale)
    return _flash_fwd(q, k, v, None, None, q.size(0), q.size(2), k.size(2), bool(causal), scale)[0]


def flash_attention_varlen(q: Tensor, k: Tensor, v: Tensor, *, cu_seqlens_q: Tensor, cu_seqlens_k: Tensor,
                           max_seqlen_q: int, max_seqlen_k: int, causal: bool = True,
                           scale: float | None = None, validate: bool = True) -> Tensor:
    """与 kernels.flash_attention.flash_attention_varlen 相同（q (N, H, D)），自定义算子版本。

    validate=False 跳过 cu_seqlens 的数值检查（那要把它读回主机，GPU 上每层一次同步）：只在调用方已经检查过时用——
    模型的打包路径传 AttnMetadata，它在构造时检查过一次，各层不必重复。
    """
    _, _, head_dim = _fa._check_qkv(q, k, v, ndim=3, head_axis=1)
    if validate:
        batch = _fa._check_cu_seqlens("cu_seqlens_q", cu_seqlens_q, None, q.size(0), max_seqlen_q)
        _fa._check_cu_seqlens("cu_seqlens_k", cu_seqlens_k, batch, k.size(0), max_seqlen_k)
    else:
        batch = cu_seqlens_q.numel() - 1
    scale = 1.0 / math.sqrt(head_dim) if scale is None else float(scale)
    return _flash_fwd(q, k, v, cu_seqlens_q, cu_seqlens_k, batch, int(max_seqlen_q), int(max_seqlen_k),
                      bool(causal), scale)[0]


# ---------------------------------------------------------------------------------------------------
# 分页注意力：只有前向（推理服务）
# ---------------------------------------------------------------------------------------------------


@torch.library.custom_op(f"{NAMESPACE}::paged_attention", mutates_args=())
def _paged_attention(q: Tensor, k_cache: Tensor, v_cache: Tensor, cu_seqlens_q: Tensor, context_lens: Tensor,
                     block_tables: Tensor, scale: float, max_seqlen_q: int) -> Tensor:
    return _paged.paged_attention(q, k_cache, v_cache, cu_seqlens_q=cu_seqlens_q, context_lens=context_lens,
                                  block_tables=block_tables, scale=scale, max_seqlen_q=max_seqlen_q)


@_paged_attention.register_fake
def _(q, k_cache, v_cache, cu_seqlens_q, context_lens, block_tables, scale, max_seqlen_q):
    return torch.empty_like(q)


def paged_attention(q: Tensor, k_cache: Tensor, v_cache: Tensor, *, cu_seqlens_q: Tensor, context_lens: Tensor,
                    block_tables: Tensor, scale: float | None = None, max_seqlen_q: int | None = None) -> Tensor:
    """与 kernels.paged_attention.paged_attention 相同（检查在内核文件的启动器里），自定义算子版本；只有前向。"""
    if torch.is_grad_enabled() and (q.requires_grad or k_cache.requires_grad or v_cache.requires_grad):
        raise ValueError("paged_attention 只有前向（推理服务用）：请在 torch.no_grad() 下调用；"
                         "训练请用不带 KV cache 的打包前向（flash_attention_varlen）")
    scale = 1.0 / math.sqrt(q.size(-1)) if scale is None else float(scale)
    max_q = int((cu_seqlens_q[1:] - cu_seqlens_q[:-1]).max()) if max_seqlen_q is None else int(max_seqlen_q)
    return _paged_attention(q, k_cache, v_cache, cu_seqlens_q, context_lens, block_tables, scale, max_q)
