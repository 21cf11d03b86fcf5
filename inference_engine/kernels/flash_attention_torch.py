"""FlashAttention-2 的算法本身：纯 PyTorch 的分块实现（torch.autograd.Function），CPU 上就能按真实尺寸运行。

这一课不写 Triton：先把算法在 PyTorch 里一行一行写清楚——在线 softmax、只存 logsumexp、反向靠重算——
下一课的 Triton 内核只是把这里的两层循环搬进 SRAM。

## 1. 朴素注意力贵在哪里

O = softmax(S) V，S = Q Kᵀ · scale，Q 为 (T, D)，K、V 为 (S, D)（下面把 key 的个数也记作 S，不致混淆时）。
朴素实现先把 (T, S) 的分数矩阵与概率矩阵整块写进内存；autograd 还要为反向留着 P（以及 S 的某种形式）。
T = S = 8192、fp32 时一个 (T, S) 矩阵就是 8192² · 4 B = 256 MiB——每个头、每个样本各一份；
而 Q、K、V、O 本身各只有 T · D · 4 B = 2 MiB（D = 64）。注意力的内存被 O(T·S) 的中间结果支配，
而且 GPU 上这些中间结果要在 HBM 里来回读写好几遍：算力在等带宽。

## 2. 在线 softmax（online softmax）：一次扫过 key，不必先看完整行

一行的 softmax 需要整行的最大值 m 与分母 l = Σ_j exp(s_j − m)。把 key 分块 j = 1, 2, …，扫到第 j 块时只知道前 j 块，
维护三样东西：当前最大值 m、当前分母 l、未归一化的输出累加器 acc = Σ exp(s − m) v。来了新的一块分数 s⁽ʲ⁾：

    m_new = max(m, rowmax(s⁽ʲ⁾))
    α     = exp(m − m_new)                       # 旧的量都是以 m 为基准算的，换到新基准要乘 α ≤ 1
    P̃     = exp(s⁽ʲ⁾ − m_new)
    l     = α · l + rowsum(P̃)
    acc   = α · acc + P̃ V⁽ʲ⁾

扫完所有块后 O = acc / l。为什么对：归纳地，每一步后 l = Σ_{已见} exp(s − m_new)、acc = Σ_{已见} exp(s − m_new) v，
乘 α 恰好把 exp(s − m) 变成 exp(s − m_new)。减去最大值保证 exp 的自变量 ≤ 0，不会溢出——这正是普通 softmax
减最大值的那个技巧，只是"最大值"在扫的过程中会变大，变了就把旧账按 α 折算一次。

## 3. 反向为什么只需要 logsumexp L = m + log l

softmax 的反向需要 P。P 是 O(T·S) 的，存它就前功尽弃；但 P_ij = exp(s_ij − m_i) / l_i = exp(s_ij − L_i)，
其中 L_i = m_i + log l_i 就是第 i 行的 logsumexp。所以前向每行只多存一个数 L_i（(B, H, T) 的 fp32），
反向时按块重算 s = q kᵀ · scale，立刻得到精确的 P = exp(s − L)，无需再做一遍在线 softmax。
此外反向还要 D_i = Σ_j P_ij dP_ij：由 dP = dO Vᵀ 得 D_i = Σ_j P_ij (dO_i · v_j) = dO_i · (Σ_j P_ij v_j) = dO_i · O_i，
即 D = rowsum(dO ∘ O)——只用到输出 O，不用到 P。于是前向保存的恰好是 q、k、v、O、L，再无其他（测试检查这一点）。

反向公式（FA2 论文 Algorithm 2，对每个 key 块、每个 query 块）：

    P  = exp(q kᵀ · scale − L)          dV += Pᵀ dO
    dP = dO Vᵀ                          dS  = P ∘ (dP − D)          # softmax 的雅可比：dS_ij = P_ij (dP_ij − Σ_k P_ik dP_ik)
    dQ += dS K · scale                  dK += dSᵀ Q · scale

外层循环 key 块、内层循环 query 块：dK、dV 在一个 key 块的整个内层循环里留在"片上"（这里是一个小张量）累加，
每个 key 块只写一次；dQ 则要被每个 key 块各加一次（Triton 里用原子加，或另起一个按 query 块并行的 kernel）。

## 4. 内存与 FLOPs

- 内存：保存的是 q、k、v、O（各 O(T·D)）与 L（O(T)），临时的只有 (block_q, block_k) 的小块——O(T·D) 而不是 O(T·S)。
  T = 8192、D = 64、block 64 时一块分数 64² · 4 B = 16 KiB，而朴素实现的一个 (T, S) 矩阵是 256 MiB。
- FLOPs（一个头，不算 softmax 本身）：前向 Q Kᵀ 与 P V 各 2·T·S·D，共 4·T·S·D。
  反向重算 Q Kᵀ（2·T·S·D）再加 dV、dP、dQ、dK 四个矩阵乘（各 2·T·S·D），共 10·T·S·D = 前向的 2.5 倍
  （不重算时是 8·T·S·D = 2 倍：重算多花 25% 的算力，换来 O(T·S) → O(T·D) 的内存，GPU 上还省下了 HBM 读写，净赚）。
  causal 时跳过对角线上方整块，FLOPs 约减半。

## 5. causal 的对齐方式：右下角对齐

query i（0 ≤ i < T）可以看 key j 当且仅当 j ≤ i + (S − T)。T == S 时就是普通的下三角（与 SDPA 的 is_causal 相同）；
T < S（例如带着 KV cache 前缀解码、分块 prefill）时最后一个 query 看到全部 S 个 key——这是生成时需要的语义
（FlashAttention-2 ≥ 2.1 也如此）。注意 SDPA 的 is_causal 在 T != S 时是左上角对齐（j ≤ i），两者不同，
所以测试在 T != S 时与显式掩码对照。T > S 时前 T − S 个 query 一个 key 都看不到：约定它们的输出为 0、梯度为 0
（与 flash-attn 相同），而不是 0/0 = NaN。

## 6. 对应到 Triton 内核

前向外层"对 query 块的循环"在 GPU 上是 grid：每个 program 负责 (batch, head, 一个 query 块)，彼此独立、并行执行；
内层"对 key 块的循环"是一个 program 里顺序执行的 for 循环。q 块、m、l、acc 常驻 SRAM / 寄存器，k、v 块逐个从 HBM
读进来；HBM 读写量从 O(T·S) 降到 O(T·D · S/block_q)。反向的 grid 按 key 块划分，dK、dV 留在 SRAM，dQ 原子加。
GQA：H 个 query 头分成 H_kv 组，第 h 个 query 头读第 h // (H/H_kv) 个 KV 头——这里把 q 视作 (B, H_kv, G, T, D)，
同一组的 G 个头共用一块 k、v，不复制 K/V（Triton 里就是 program 按 h // G 计算 K/V 的指针）。

运行：PYTHONPATH=. python inference_engine/kernels/flash_attention_torch.py   （SMOKE=1 几秒钟）
"""

from __future__ import annotations

import math
import time

import torch
import torch.nn.functional as F
from torch import Tensor

from utils.io import is_smoke
from utils.lesson_cli import lesson_args
from utils.torch_playground import setup_seed

__all__ = ["FlashAttentionTorch", "flash_attention_torch", "key_block_range", "query_block_start"]

SUPPORTED_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


# ---------------------------------------------------------------------------------------------------
# 1. causal 下哪些块需要算：整块在对角线上方的直接跳过
#    右下角对齐：query i 看 key j 当且仅当 j ≤ i + offset，offset = S − T。
# ---------------------------------------------------------------------------------------------------


def key_block_range(i0: int, i1: int, seq_k: int, *, causal: bool, offset: int) -> int:
    """query 块 [i0, i1) 需要扫的 key 的上界（不含）：非 causal 是全部 S 个；causal 时块里最后一个 query（i1 − 1）
    能看到的最大 key 是 i1 − 1 + offset，再往后的 key 块对整块 query 都不可见，一次都不用算。"""
    if not causal:
        return seq_k
    return max(0, min(seq_k, i1 + offset))


def query_block_start(j0: int, block_q: int, *, causal: bool, offset: int) -> int:
    """反向里 key 块 [j0, …) 需要的第一个 query 块的起点：causal 时 query i 看得到 key j0 要求 i ≥ j0 − offset，
    它所在的 query 块之前的块整块看不到这个 key 块（P 全为 0，对 dK、dV、dQ 都没有贡献）。"""
    if not causal:
        return 0
    first = max(0, j0 - offset)
    return first // block_q * block_q


def _causal_mask(i0: int, i1: int, j0: int, j1: int, offset: int, device: torch.device) -> Tensor | None:
    """(i1−i0, j1−j0) 的 bool 掩码，True = 可以看；整块都可见（块在对角线下方）时返回 None，省掉一次 masked_fill。"""
    if j1 - 1 <= i0 + offset:  # 块里最大的 key ≤ 最小 query 能看到的上界：全可见
        return None
    rows = torch.arange(i0, i1, device=device)[:, None]
    cols = torch.arange(j0, j1, device=device)[None, :]
    return cols <= rows + offset


# ---------------------------------------------------------------------------------------------------
# 2. 输入检查：形状、GQA 分组、dtype、设备、块大小
# ---------------------------------------------------------------------------------------------------


def _validate(q: object, k: object, v: object, causal: object, scale: object, block_q: object,
              block_k: object) -> float:
    hint = "（不需要分块实现时可以用 F.scaled_dot_product_attention，即 attn_implementation='sdpa'）"
    for name, t in (("q", q), ("k", k), ("v", v)):
        if not isinstance(t, torch.Tensor):
            raise ValueError(f"{name} 必须是 torch.Tensor，收到 {type(t).__name__}")
        if t.dim() != 4:
            raise ValueError(f"{name} 必须是 4 维 (B, H, T, D)，收到形状 {tuple(t.shape)}{hint}")
        if t.dtype not in SUPPORTED_DTYPES:
            raise ValueError(f"{name} 的 dtype {t.dtype} 不受支持；支持 {[str(d) for d in SUPPORTED_DTYPES]}")
    if not (q.dtype == k.dtype == v.dtype):
        raise ValueError(f"q/k/v 的 dtype 必须相同，收到 {q.dtype}、{k.dtype}、{v.dtype}：请先统一（例如都 .to(q.dtype)）")
    if not (q.device == k.device == v.device):
        raise ValueError(f"q/k/v 必须在同一设备上，收到 {q.device}、{k.device}、{v.device}")
    if k.shape != v.shape:
        raise ValueError(f"k 与 v 的形状必须相同 (B, H_kv, S, D)，收到 k {tuple(k.shape)}、v {tuple(v.shape)}")
    b, h, t, d = q.shape
    bk, h_kv, s, dk = k.shape
    if bk != b:
        raise ValueError(f"q 与 k/v 的 batch 维不同：q 是 {b}，k/v 是 {bk}")
    if dk != d:
        raise ValueError(f"q 与 k/v 的 head_dim 不同：q 是 {d}，k/v 是 {dk}；本实现要求 q、k、v 的最后一维相同")
    if h_kv < 1 or h % h_kv != 0:
        raise ValueError(f"query 头数 H={h} 必须是 KV 头数 H_kv={h_kv} 的整数倍（GQA：每 H/H_kv 个 query 头共用一个 KV 头）")
    if t < 1 or s < 1 or d < 1 or b < 1:
        raise ValueError(f"空张量：q {tuple(q.shape)}、k {tuple(k.shape)}；B、H、T、S、D 都必须 ≥ 1")
    if not isinstance(causal, bool):
        raise ValueError(f"causal 必须是 bool，收到 {causal!r}")
    for name, blk in (("block_q", block_q), ("block_k", block_k)):
        if isinstance(blk, bool) or not isinstance(blk, int) or blk < 1:
            raise ValueError(f"{name} 必须是正整数，收到 {blk!r}")
    if scale is None:
        return 1.0 / math.sqrt(d)
    if isinstance(scale, bool) or not isinstance(scale, (int, float)) or not math.isfinite(scale):
        raise ValueError(f"scale 必须是有限的实数（默认 1/√D），收到 {scale!r}")
    return float(scale)


# ---------------------------------------------------------------------------------------------------
# 3. 前向与反向
#    形状约定：q 视作 (B, H_kv, G, T, D)（G = H / H_kv，一组 query 头共用一个 KV 头，不复制 K/V），
#    k、v 为 (B, H_kv, S, D)。einsum 里 b=batch、h=KV 头、g=组内的 query 头、q=query 位置、k=key 位置、d=head_dim。
#    所有块在 acc_dtype（fp32；fp64 输入时 fp64，供 gradcheck）里计算：bf16/fp16 输入也在 fp32 里累加。
# ---------------------------------------------------------------------------------------------------


def _flash_forward(q: Tensor, k: Tensor, v: Tensor, causal: bool, scale: float, block_q: int,
                   block_k: int) -> tuple[Tensor, Tensor]:
    b, h, t, d = q.shape
    h_kv, s = k.size(1), k.size(2)
    acc_dtype = torch.promote_types(q.dtype, torch.float32)
    offset = s - t
    q5 = q.unflatten(1, (h_kv, h // h_kv))  # (B, H_kv, G, T, D)：拆一维永远是视图，不拷贝
    o = torch.empty(q5.shape, dtype=q.dtype, device=q.device)
    lse = torch.empty(q5.shape[:-1], dtype=acc_dtype, device=q.device)  # (B, H_kv, G, T)
    for i0 in range(0, t, block_q):  # GPU 上：这一层是 grid，每个 query 块一个 program
        i1 = min(i0 + block_q, t)
        qi = q5[..., i0:i1, :].to(acc_dtype)  # (B, H_kv, G, bq, D)，常驻"SRAM"
        m = torch.full(qi.shape[:-1], float("-inf"), dtype=acc_dtype, device=q.device)  # 行最大值
        l = torch.zeros_like(m)  # 行分母 Σ exp(s − m)
        acc = torch.zeros_like(qi)  # 未归一化的输出 Σ exp(s − m) v
        for j0 in range(0, key_block_range(i0, i1, s, causal=causal, offset=offset), block_k):
            j1 = min(j0 + block_k, s)
            kj, vj = k[:, :, j0:j1].to(acc_dtype), v[:, :, j0:j1].to(acc_dtype)  # (B, H_kv, bk, D)
            sc = torch.einsum("bhgqd,bhkd->bhgqk", qi, kj) * scale  # (B, H_kv, G, bq, bk)
            mask = _causal_mask(i0, i1, j0, j1, offset, q.device) if causal else None
            if mask is not None:
                sc = sc.masked_fill(~mask, float("-inf"))
            m_new = torch.maximum(m, sc.amax(dim=-1))
            # 一行到目前为止全被遮住时 m_new = −inf，exp(−inf − (−inf)) = NaN；用 0 作基准，exp(−inf − 0) = 0 正好
            m_base = torch.where(torch.isneginf(m_new), 0.0, m_new)
            alpha = torch.exp(m - m_base)  # 旧基准 → 新基准的折算系数
            p = torch.exp(sc - m_base[..., None])
            l = alpha * l + p.sum(dim=-1)
            acc = alpha[..., None] * acc + torch.einsum("bhgqk,bhkd->bhgqd", p, vj)
            m = m_new
        # l = 0 只出现在一个 key 都看不到的行（causal 且 T > S）：约定输出 0、L = −inf
        o[..., i0:i1, :] = torch.where(l[..., None] > 0, acc / l.clamp_min(torch.finfo(acc_dtype).tiny)[..., None], 0.0)
        lse[..., i0:i1] = m + torch.log(l)  # L = m + log l；空行 −inf + −inf = −inf
    return o.flatten(1, 2), lse.flatten(1, 2)  # (B, H, T, D)，(B, H, T)


def _flash_backward(do: Tensor, q: Tensor, k: Tensor, v: Tensor, o: Tensor, lse: Tensor, causal: bool, scale: float,
                    block_q: int, block_k: int) -> tuple[Tensor, Tensor, Tensor]:
    b, h, t, d = q.shape
    h_kv, s = k.size(1), k.size(2)
    g = h // h_kv
    acc_dtype = lse.dtype
    offset = s - t
    q5, do5 = q.unflatten(1, (h_kv, g)), do.unflatten(1, (h_kv, g))  # (B, H_kv, G, T, D)
    # D_i = dO_i · O_i = Σ_j P_ij dP_ij：softmax 雅可比里的那个行和，只用 O 就能算出来
    delta = (do5.to(acc_dtype) * o.unflatten(1, (h_kv, g)).to(acc_dtype)).sum(dim=-1)  # (B, H_kv, G, T)
    # 空行（L = −inf）换成 +inf：exp(s − inf) = 0，这些行的 P 与全部梯度都是 0，而不是 NaN
    lse5 = torch.where(torch.isneginf(lse), float("inf"), lse).unflatten(1, (h_kv, g))
    dq = torch.zeros(q5.shape, dtype=acc_dtype, device=q.device)
    dk = torch.empty(k.shape, dtype=acc_dtype, device=q.device)
    dv = torch.empty(v.shape, dtype=acc_dtype, device=q.device)
    for j0 in range(0, s, block_k):  # GPU 上：这一层是 grid，每个 key 块一个 program
        j1 = min(j0 + block_k, s)
        kj, vj = k[:, :, j0:j1].to(acc_dtype), v[:, :, j0:j1].to(acc_dtype)  # (B, H_kv, bk, D)
        dk_j = torch.zeros_like(kj)  # dK、dV 在整个内层循环里留在"SRAM"里累加，最后只写一次
        dv_j = torch.zeros_like(vj)
        for i0 in range(query_block_start(j0, block_q, causal=causal, offset=offset), t, block_q):
            i1 = min(i0 + block_q, t)
            qi = q5[..., i0:i1, :].to(acc_dtype)  # (B, H_kv, G, bq, D)
            doi = do5[..., i0:i1, :].to(acc_dtype)
            sc = torch.einsum("bhgqd,bhkd->bhgqk", qi, kj) * scale  # 重算分数：(B, H_kv, G, bq, bk)
            mask = _causal_mask(i0, i1, j0, j1, offset, q.device) if causal else None
            if mask is not None:
                sc = sc.masked_fill(~mask, float("-inf"))
            p = torch.exp(sc - lse5[..., i0:i1, None])  # 精确的概率，无需再做在线 softmax
            dv_j += torch.einsum("bhgqk,bhgqd->bhkd", p, doi)  # Pᵀ dO，组内 G 个头的贡献加到同一个 KV 头上
            dp = torch.einsum("bhgqd,bhkd->bhgqk", doi, vj)  # dO Vᵀ
            ds = p * (dp - delta[..., i0:i1, None])  # P ∘ (dP − D)
            dq[..., i0:i1, :] += torch.einsum("bhgqk,bhkd->bhgqd", ds, kj) * scale  # Triton 里这是原子加
            dk_j += torch.einsum("bhgqk,bhgqd->bhkd", ds, qi) * scale
        dk[:, :, j0:j1] = dk_j
        dv[:, :, j0:j1] = dv_j
    return dq.flatten(1, 2), dk, dv


# ---------------------------------------------------------------------------------------------------
# 4. autograd 包装：前向只存 q、k、v、O、L
# ---------------------------------------------------------------------------------------------------


class FlashAttentionTorch(torch.autograd.Function):
    """FlashAttention-2：前向分块 + 在线 softmax，保存 (q, k, v, O, L)，反向按块重算 P。"""

    @staticmethod
    def forward(ctx, q: Tensor, k: Tensor, v: Tensor, causal: bool, scale: float, block_q: int,
                block_k: int) -> Tensor:
        o, lse = _flash_forward(q, k, v, causal, scale, block_q, block_k)
        ctx.save_for_backward(q, k, v, o, lse)  # 恰好这五个：没有任何 (T, S) 的东西
        ctx.causal, ctx.scale, ctx.block_q, ctx.block_k = causal, scale, block_q, block_k
        return o

    @staticmethod
    def backward(ctx, do: Tensor):
        q, k, v, o, lse = ctx.saved_tensors
        dq, dk, dv = _flash_backward(do, q, k, v, o, lse, ctx.causal, ctx.scale, ctx.block_q, ctx.block_k)
        return dq.to(q.dtype), dk.to(k.dtype), dv.to(v.dtype), None, None, None, None


def flash_attention_torch(q: Tensor, k: Tensor, v: Tensor, *, causal: bool = False, scale: float | None = None,
                          block_q: int = 64, block_k: int = 64) -> Tensor:
    """softmax(q kᵀ · scale) v，FlashAttention-2 的分块算法（纯 PyTorch，可求导）。

    q: (B, H, T, D)；k、v: (B, H_kv, S, D)，H % H_kv == 0（GQA / MQA，不复制 K/V）。
    causal：右下角对齐，query i 看 key j ≤ i + (S − T)；T == S 时与 SDPA 的 is_causal 相同。
    scale 默认 1/√D。block_q、block_k 是分块大小（任意正整数，不必整除 T、S）。
    返回 (B, H, T, D)，dtype 与 q 相同；内部在 fp32 里累加（fp64 输入在 fp64 里）。
    """
    scale = _validate(q, k, v, causal, scale, block_q, block_k)
    return FlashAttentionTorch.apply(q, k, v, causal, scale, block_q, block_k)


# ---------------------------------------------------------------------------------------------------
# 5. 演示：与 SDPA（math 后端）对照输出与梯度，并比较保存给反向的字节数
# ---------------------------------------------------------------------------------------------------


def _sdpa_reference(q: Tensor, k: Tensor, v: Tensor, causal: bool) -> Tensor:
    from torch.nn.attention import SDPBackend, sdpa_kernel

    with sdpa_kernel(SDPBackend.MATH):
        return F.scaled_dot_product_attention(q, k, v, is_causal=causal, enable_gqa=q.size(1) != k.size(1))


def _compare(b: int, h: int, h_kv: int, t: int, d: int, causal: bool, block: int) -> dict[str, float]:
    q = torch.randn(b, h, t, d, requires_grad=True)
    k, v = (torch.randn(b, h_kv, t, d, requires_grad=True) for _ in range(2))
    do = torch.randn(b, h, t, d)
    start = time.perf_counter()
    out = flash_attention_torch(q, k, v, causal=causal, block_q=block, block_k=block)
    saved = sum(x.numel() * x.element_size() for x in out.grad_fn.saved_tensors)  # 反向释放它们之前数
    grads = torch.autograd.grad(out, (q, k, v), do)
    ours_ms = (time.perf_counter() - start) * 1e3
    ref = _sdpa_reference(q, k, v, causal)
    ref_grads = torch.autograd.grad(ref, (q, k, v), do)
    errs = [(out - ref).abs().max().item()] + [(a - r).abs().max().item() for a, r in zip(grads, ref_grads)]
    return {"out": errs[0], "dq": errs[1], "dk": errs[2], "dv": errs[3], "ms": ours_ms, "saved": saved,
            "naive": 2 * b * h * t * t * 4 + 4 * b * h * t * d * 4}


def main() -> None:
    setup_seed(0)
    smoke = is_smoke()
    b, h, t, d, block = (1, 2, 96, 16, 32) if smoke else (1, 4, 1024, 64, 128)
    _compare(1, 2, 1, 2 * block, d, True, block)  # 预热：第一次调用要初始化 einsum / BLAS，不算进计时
    print(f"FlashAttention-2（纯 PyTorch 分块）vs SDPA math 后端：B={b} H={h} T=S={t} D={d}，块 {block}×{block}，fp32")
    print(f"{'情形':<16}{'输出误差':>12}{'dq 误差':>12}{'dk 误差':>12}{'dv 误差':>12}{'前向+反向 ms':>14}")
    worst = 0.0
    results = {}
    for name, h_kv, causal in (("MHA", h, False), ("MHA causal", h, True), ("GQA causal", h // 2, True)):
        r = _compare(b, h, h_kv, t, d, causal, block)
        results[name] = r
        worst = max(worst, r["out"] / 1e-5, max(r["dq"], r["dk"], r["dv"]) / 1e-4)
        print(f"{name:<16}{r['out']:>12.2e}{r['dq']:>12.2e}{r['dk']:>12.2e}{r['dv']:>12.2e}{r['ms']:>14.1f}")
    if worst > 1.0:
        raise SystemExit(f"与 SDPA 不一致：误差超过容差（输出 1e-5、梯度 1e-4）的 {worst:.1f} 倍")
    r = results["MHA"]
    print(f"\n为反向保存的字节：{r['saved'] / 2**20:.2f} MiB（q、k、v、O 与 logsumexp）；"
          f"朴素实现保存 (T, S) 的分数与概率 + q、k、v、O 约 {r['naive'] / 2**20:.2f} MiB"
          f"（{r['naive'] / r['saved']:.1f} 倍，且随 T² 增长）。")
    flops = 4 * b * h * t * t * d
    print(f"前向 FLOPs 4·T·S·D·B·H = {flops / 1e9:.2f} GFLOP；反向重算后约 2.5 倍 = {2.5 * flops / 1e9:.2f} GFLOP。"
          "全部在容差内：输出 ≤ 1e-5，梯度 ≤ 1e-4。")


if __name__ == "__main__":
    lesson_args(__doc__)
    main()
