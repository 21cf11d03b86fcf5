"""FlashAttention-2 的 Triton 实现：前向 + 反向，因果与非因果，GQA，变长（varlen 打包批量）。

问题：标准注意力 O = softmax(S) V，S = scale · Q Kᵀ，要把 (T, S) 的分数矩阵写进 HBM 再读回来（softmax 一次、
乘 V 一次、反向再存一份概率 P）。T = S = 4096、32 个头时一层就是 32·4096² · 4 B = 2 GB 的分数——
访存 O(T·S)，而 Q、K、V、O 本身只有 O(T·D)。FlashAttention 的做法：分块计算，分数只活在片上（寄存器 / SRAM），
HBM 只读 Q、K、V、写 O 和每行一个 logsumexp，访存降到 O(T·D)（K/V 每个 query 块读一遍：O(T·S·D / BLOCK_M)，
BLOCK_M = 128 时比 T·S 的分数矩阵小得多）。

在线 softmax（online softmax）
------------------------------
一行 query 逐块看 key，块 j 的分数 s_j（向量）。维护三个量：到目前为止的最大值 m、分母 l = Σ exp(s − m)、
未归一化的输出 acc = Σ exp(s − m) v。来了新块：

    m_new = max(m, max(s_j))
    α     = exp(m − m_new)                       # 旧的累加量要按新的最大值重新缩放
    p     = exp(s_j − m_new)
    l     = α · l + Σ p
    acc   = α · acc + p V_j
    m     = m_new

最后 O = acc / l。减去最大值保证 exp 不溢出，α 的修正让结果与一次性 softmax 在数学上完全相同。
内核里用 exp2 代替 exp（GPU 的 ex2 指令更快）：把 scale · log2(e) 预先乘进分数，exp(x) = 2^(x·log2 e)。

FA1 → FA2：哪个循环在外面
--------------------------
FA1 的外层循环是 K/V 块、内层是 Q 块：每处理一个 K/V 块，都要把每个 Q 块的 O、m、l 从 HBM 读出来、更新、写回去。
FA2 把两层对调：**外层（= grid 的并行维）是 Q 块，内层循环扫 K/V 块**。一个 program 拥有一个 Q 块的
acc、m、l，全程放在寄存器里，最后只写一次 O——没有 O 的反复读写；不同 Q 块之间没有依赖，天然并行
（grid = (⌈T / BLOCK_M⌉, B·H)，序列维也能铺满 GPU，不只靠 batch·heads）。另外 FA2 把 1/l 的归一化推迟到
最后一次做，循环里只做 α 缩放，减少非矩阵乘的 FLOP（Tensor Core 做 matmul 比做 exp/除法快一个数量级）。

为什么反向只需要 logsumexp
--------------------------
前向保存 O 和每行 lse = m + log l（= log Σ exp(s)）。反向时重新计算分数 S = scale · Q Kᵀ（重算比存 O(T·S) 的 P 便宜：
matmul 很快，而 HBM 很慢），然后 P = exp(S − lse) 一步就得到**已归一化**的概率——不需要再做一遍在线 softmax，
也不需要 m 和 l 分开存。梯度（dO 已知）：

    dV = Pᵀ dO
    dP = dO Vᵀ
    dS = P ∘ (dP − Δ)，   Δ_i = Σ_j P_ij dP_ij = Σ_d dO_id O_id = rowsum(dO ∘ O)   （softmax 的雅可比）
    dQ = scale · dS K，    dK = scale · dSᵀ Q

Δ 用 rowsum(dO ∘ O) 算，只需 O(T·D) 的读取，由一个预处理内核先算好。然后：
- dK/dV 内核：grid = (⌈S / BLOCK_N⌉, B·H_kv)，每个 program 拥有一个 K/V 块，内层循环扫 Q 块（与前向相反：
  dK、dV 对 query 求和，所以 key 在外面、累加量留在寄存器里）；
- dQ 内核：grid = (⌈T / BLOCK_M⌉, B·H)，每个 program 拥有一个 Q 块，内层扫 K/V 块（dQ 对 key 求和）。
两个内核各自重算一遍 P（多算一次 QKᵀ），换来**没有原子加**：每个输出块只有一个 program 写，结果确定、可复现。
GQA（H 个 query 头共享 H_kv 个 KV 头，每组 G = H / H_kv 个）：dK/dV 要对一组的 G 个 query 头求和——
dK/dV 内核的 program 在内部循环这 G 个头，累加到同一组寄存器里，同样不需要原子加；前向和 dQ 内核的 program 读
第 h // G 个 KV 头，K/V 在内存里从不复制。

因果掩码与块跳过
----------------
因果采用**右下角对齐**：query i 可以看 key j ≤ i + (S − T)。T == S 时就是普通的下三角（与 SDPA 的 is_causal 相同）；
T < S 时是"T 个新 token 接在长度 S − T 的上下文后面"（分块 prefill / KV cache）的正确语义。
对一个 Q 块 [m0, m0 + BLOCK_M)，key 块分三类：
- 完全可见（j < m0 + diag + 1，diag = S − T）：不需要掩码，走无掩码循环（省掉 BLOCK_M×BLOCK_N 次比较与 where）；
- 对角块（部分可见，或越过序列末尾的最后一块）：带掩码的循环；
- 完全不可见（j > m0 + BLOCK_M − 1 + diag）：根本不循环——因果时约一半的块被跳过，FLOP 减半。
T > S 时前 T − S 个 query 一个 key 都看不到：输出定义为 0，lse 记为 +inf（反向里 P = exp(S − lse) = 0）。

变长（varlen）
--------------
打包布局 q (N, H, D)：B 条序列首尾相接，第 b 条的 query 是行 cu_seqlens_q[b] : cu_seqlens_q[b+1]，key 是
cu_seqlens_k[b] : cu_seqlens_k[b+1]，每条序列各自右下对齐。稠密与变长共用同一组内核：内核按
"基址 + b·stride_b + h·stride_h + (start + t)·stride_t" 寻址；稠密时 start = 0、长度 = T/S，
变长时 stride_b = 0、start 和长度从 cu_seqlens 读。grid 的第 0 维按最长序列开，短序列多出来的 program 直接返回。

支持的 head_dim：16、32、64、128（2 的幂，tl.arange 的要求，一个 program 整行放进寄存器）；其它值报错，
回退用 attn_implementation="sdpa"。fp32 的 tl.dot 用 input_precision="ieee"（不走 TF32），GPU 上也能达到 1e-5。

运行：python inference_engine/kernels/flash_attention.py（没有 GPU 时走 Triton 解释器，只验证正确性）。
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

# 必须在定义任何 @triton.jit 之前导入：runtime 在没有 GPU 时打开 TRITON_INTERPRET
from inference_engine.kernels.runtime import INTERPRET, KERNEL_DEVICE, check_tensor, tl, triton
from utils.io import is_smoke
from utils.lesson_cli import lesson_args
from utils.torch_playground import setup_seed

__all__ = [
    "SUPPORTED_HEAD_DIMS",
    "benchmark_flash_attention",
    "flash_attention",
    "flash_attention_varlen",
]

SUPPORTED_HEAD_DIMS = (16, 32, 64, 128)
LOG2E = 1.4426950408889634  # log2(e)：exp(x) = exp2(x · log2 e)
FALLBACK = '改用 attn_implementation="sdpa"（PyTorch 的 scaled_dot_product_attention）'


def _configs(gpu: list[tuple[int, int, int, int]], interp: tuple[int, int]) -> list[triton.Config]:
    """autotune 的候选配置 (BLOCK_M, BLOCK_N, num_warps, num_stages)。解释器下只留一个小配置：解释器不测速，
    多个配置只会让每个都跑一遍。GPU 上资源不够的配置（共享内存超限）会被 autotune 自动跳过。"""
    if INTERPRET:
        return [triton.Config({"BLOCK_M": interp[0], "BLOCK_N": interp[1]})]
    return [triton.Config({"BLOCK_M": m, "BLOCK_N": n}, num_warps=w, num_stages=s) for m, n, w, s in gpu]


# 调优键：head_dim、因果、变长（张量的 dtype 由 autotune 自动加入键）；不含序列长度，
# 否则模型每遇到一个新长度就重新调优一次
_TUNE_KEY = ["HEAD_DIM", "CAUSAL", "VARLEN"]


# ---------------------------------------------------------------------------------------------------
# 1. 前向：grid = (⌈max_T / BLOCK_M⌉, B·H)，一个 program = 一个 (batch, head, Q 块)
# ---------------------------------------------------------------------------------------------------


@triton.jit
def _seq_bounds(CU, b, dense_len, VARLEN: tl.constexpr):
    """第 b 条序列在打包维上的起点与长度：变长时从 cu_seqlens 读，稠密时起点 0、长度固定。"""
    if VARLEN:
        start = tl.load(CU + b)
        length = tl.load(CU + b + 1) - start
    else:
        start = 0
        length = dense_len
    return start, length


@triton.jit
def _fwd_inner(acc, l_i, m_i, q, k_base, v_base, stride_kt, offs_m, lo, hi, seqlen_k, diag, qk_scale,
               MASKED: tl.constexpr, CAUSAL: tl.constexpr, HEAD_DIM: tl.constexpr, BLOCK_N: tl.constexpr,
               DOT_PRECISION: tl.constexpr):
    """扫 key 块 [lo, hi)，在线 softmax 更新 (acc, l, m)。MASKED=False 的调用只给完全可见的块，省掉掩码。"""
    offs_d = tl.arange(0, HEAD_DIM)
    for start_n in range(lo, hi, BLOCK_N):
        offs_n = start_n + tl.arange(0, BLOCK_N)
        kv_ok = offs_n[:, None] < seqlen_k
        k = tl.load(k_base + offs_n[:, None] * stride_kt + offs_d[None, :], mask=kv_ok, other=0.0)  # (BN, D)
        # 分数乘上 scale·log2(e)：之后全用 exp2，单位是 "以 2 为底"
        s = tl.dot(q, tl.trans(k), input_precision=DOT_PRECISION) * qk_scale  # (BM, BN)
        if MASKED:
            visible = offs_n[None, :] < seqlen_k
            if CAUSAL:
                visible = visible & (offs_n[None, :] <= offs_m[:, None] + diag)  # 右下对齐：j ≤ i + (S − T)
            s = tl.where(visible, s, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(s, 1))
        alpha = tl.exp2(m_i - m_new)  # 旧累加量的重缩放因子
        p = tl.exp2(s - m_new[:, None])  # (BM, BN)，被掩的位置 exp2(-inf) = 0
        l_i = l_i * alpha + tl.sum(p, 1)
        v = tl.load(v_base + offs_n[:, None] * stride_kt + offs_d[None, :], mask=kv_ok, other=0.0)  # (BN, D)
        # P 转成 V 的 dtype 再进 Tensor Core（bf16/fp16 时与 FA2 相同的做法；fp32 时不变），累加在 fp32 里
        acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v, input_precision=DOT_PRECISION)
        m_i = m_new
    return acc, l_i, m_i


@triton.autotune(configs=_configs([(128, 64, 4, 3), (128, 64, 8, 3), (128, 32, 4, 3), (64, 64, 4, 3),
                                   (64, 32, 4, 2)], interp=(64, 32)), key=_TUNE_KEY)
@triton.jit
def _flash_fwd_kernel(Q, K, V, O, LSE, CU_Q, CU_K, qk_scale,
                      stride_qb, stride_qh, stride_qt, stride_kb, stride_kh, stride_kt,
                      stride_lb, stride_lh, seqlen_q_dense, seqlen_k_dense, num_heads, group,
                      CAUSAL: tl.constexpr, VARLEN: tl.constexpr, HEAD_DIM: tl.constexpr, DOT_PRECISION: tl.constexpr,
                      BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    pid_m = tl.program_id(0)
    pid_bh = tl.program_id(1)
    b = pid_bh // num_heads
    h = pid_bh % num_heads
    h_kv = h // group  # GQA：第 h 个 query 头读第 h // G 个 KV 头，K/V 不复制
    q_start, seqlen_q = _seq_bounds(CU_Q, b, seqlen_q_dense, VARLEN)
    k_start, seqlen_k = _seq_bounds(CU_K, b, seqlen_k_dense, VARLEN)
    m0 = pid_m * BLOCK_M
    if m0 >= seqlen_q:  # 变长时按最长序列开 grid，这条序列没有这么多 Q 块
        return

    offs_m = m0 + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, HEAD_DIM)
    q_rows = b * stride_qb + h * stride_qh + (q_start + offs_m[:, None]) * stride_qt + offs_d[None, :]
    row_ok = offs_m < seqlen_q
    q = tl.load(Q + q_rows, mask=row_ok[:, None], other=0.0)  # (BM, D)，整个循环里留在寄存器
    k_base = K + b * stride_kb + h_kv * stride_kh + k_start * stride_kt
    v_base = V + b * stride_kb + h_kv * stride_kh + k_start * stride_kt

    # m 从一个有限的极小值出发而不是 -inf：一行的 key 全被掩时 max 仍是它，α = exp2(0) = 1、p = 0，不产生 NaN
    m_i = tl.full([BLOCK_M], -1.0e30, dtype=tl.float32)
    l_i = tl.zeros([BLOCK_M], dtype=tl.float32)
    acc = tl.zeros([BLOCK_M, HEAD_DIM], dtype=tl.float32)

    if CAUSAL:
        diag = seqlen_k - seqlen_q
        # 块里最靠上的行 m0 能看到 key < m0 + diag + 1：这之前的整块对全部行可见，不需要掩码
        full_hi = tl.maximum(tl.minimum(seqlen_k, m0 + diag + 1), 0) // BLOCK_N * BLOCK_N
        # 最靠下的行 m0 + BM − 1 能看到 key < m0 + BM + diag：之后的块全被掩，直接跳过（因果省一半 FLOP）
        masked_hi = tl.minimum(seqlen_k, m0 + BLOCK_M + diag)
    else:
        diag = 0
        full_hi = seqlen_k // BLOCK_N * BLOCK_N  # 最后一个不满的 key 块要掩掉越界的列
        masked_hi = seqlen_k
    acc, l_i, m_i = _fwd_inner(acc, l_i, m_i, q, k_base, v_base, stride_kt, offs_m, 0, full_hi, seqlen_k, diag,
                               qk_scale, False, CAUSAL, HEAD_DIM, BLOCK_N, DOT_PRECISION)
    acc, l_i, m_i = _fwd_inner(acc, l_i, m_i, q, k_base, v_base, stride_kt, offs_m, full_hi, masked_hi, seqlen_k,
                               diag, qk_scale, True, CAUSAL, HEAD_DIM, BLOCK_N, DOT_PRECISION)

    empty = l_i == 0.0  # 一个 key 都看不到的行（只在因果且 T > S 时出现）：输出 0，lse = +inf
    o = acc / tl.where(empty, 1.0, l_i)[:, None]  # FA2：归一化推迟到最后只做一次
    # lse 存自然对数：lse = (m + log2 l) / log2(e)，m 与 log2 l 都是以 2 为底的单位
    lse = tl.where(empty, float("inf"), (m_i + tl.log2(tl.where(empty, 1.0, l_i))) / 1.4426950408889634)
    tl.store(O + q_rows, o.to(O.dtype.element_ty), mask=row_ok[:, None])
    tl.store(LSE + b * stride_lb + h * stride_lh + q_start + offs_m, lse, mask=row_ok)


# ---------------------------------------------------------------------------------------------------
# 2. 反向：预处理 Δ = rowsum(dO ∘ O)；dK/dV 内核（key 块在外）；dQ 内核（query 块在外）
# ---------------------------------------------------------------------------------------------------


@triton.jit
def _bwd_preprocess_kernel(O, DO, DELTA, CU_Q, stride_qb, stride_qh, stride_qt, stride_lb, stride_lh,
                           seqlen_q_dense, num_heads, VARLEN: tl.constexpr, HEAD_DIM: tl.constexpr,
                           BLOCK_M: tl.constexpr):
    pid_m = tl.program_id(0)
    pid_bh = tl.program_id(1)
    b = pid_bh // num_heads
    h = pid_bh % num_heads
    q_start, seqlen_q = _seq_bounds(CU_Q, b, seqlen_q_dense, VARLEN)
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, HEAD_DIM)
    row_ok = offs_m < seqlen_q
    rows = b * stride_qb + h * stride_qh + (q_start + offs_m[:, None]) * stride_qt + offs_d[None, :]
    o = tl.load(O + rows, mask=row_ok[:, None], other=0.0).to(tl.float32)
    do = tl.load(DO + rows, mask=row_ok[:, None], other=0.0).to(tl.float32)
    tl.store(DELTA + b * stride_lb + h * stride_lh + q_start + offs_m, tl.sum(o * do, 1), mask=row_ok)


@triton.jit
def _bwd_dkdv_inner(dk, dv, k, v, q_base, do_base, lse_base, delta_base, stride_qt, offs_n, lo, hi, seqlen_q, diag,
                    qk_scale, MASKED: tl.constexpr, HEAD_DIM: tl.constexpr, BLOCK_M: tl.constexpr,
                    DOT_PRECISION: tl.constexpr):
    """一个 K/V 块扫 query 块 [lo, hi)。算转置的 Pᵀ (BN, BM)，这样 dV += Pᵀ dO、dK += dSᵀ Q 不再需要转置。

    越过序列末尾的 query 行读成 0（q = dO = 0、Δ = 0、lse = 0）：Pᵀ 有限，dV 加 Pᵀ·0、dS = P·(0 − 0) = 0，
    贡献为 0，所以无掩码循环也可以包含最后一个不满的 Q 块。
    """
    offs_d = tl.arange(0, HEAD_DIM)
    for start_m in range(lo, hi, BLOCK_M):
        offs_m = start_m + tl.arange(0, BLOCK_M)
        row_ok = offs_m < seqlen_q
        q = tl.load(q_base + offs_m[:, None] * stride_qt + offs_d[None, :], mask=row_ok[:, None], other=0.0)
        do = tl.load(do_base + offs_m[:, None] * stride_qt + offs_d[None, :], mask=row_ok[:, None], other=0.0)
        lse2 = tl.load(lse_base + offs_m, mask=row_ok, other=0.0) * 1.4426950408889634  # 换成以 2 为底
        delta = tl.load(delta_base + offs_m, mask=row_ok, other=0.0)
        s_t = tl.dot(k, tl.trans(q), input_precision=DOT_PRECISION) * qk_scale  # (BN, BM) = (scale·K Qᵀ)·log2 e
        p_t = tl.exp2(s_t - lse2[None, :])  # 已归一化的概率：P = exp(S − lse)
        if MASKED:  # 用 where 而不是乘法：被掩位置的 exp2 可能溢出成 inf，inf·0 = NaN
            p_t = tl.where(offs_n[:, None] <= offs_m[None, :] + diag, p_t, 0.0)
        dv += tl.dot(p_t.to(do.dtype), do, input_precision=DOT_PRECISION)  # dV = Pᵀ dO
        dp_t = tl.dot(v, tl.trans(do), input_precision=DOT_PRECISION)  # dPᵀ = V dOᵀ
        ds_t = p_t * (dp_t - delta[None, :])  # dSᵀ = Pᵀ ∘ (dPᵀ − Δ)
        dk += tl.dot(ds_t.to(q.dtype), q, input_precision=DOT_PRECISION)  # dK = dSᵀ Q（scale 最后乘）
    return dk, dv


@triton.autotune(configs=_configs([(32, 128, 4, 3), (64, 128, 8, 3), (32, 64, 4, 3), (64, 64, 4, 2),
                                   (32, 32, 4, 1)], interp=(32, 64)), key=_TUNE_KEY)
@triton.jit
def _flash_bwd_dkdv_kernel(Q, K, V, DO, DK, DV, LSE, DELTA, CU_Q, CU_K, qk_scale, scale,
                           stride_qb, stride_qh, stride_qt, stride_kb, stride_kh, stride_kt,
                           stride_lb, stride_lh, seqlen_q_dense, seqlen_k_dense, num_kv_heads,
                           GROUP: tl.constexpr, CAUSAL: tl.constexpr, VARLEN: tl.constexpr,
                           HEAD_DIM: tl.constexpr, DOT_PRECISION: tl.constexpr,
                           BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    pid_n = tl.program_id(0)
    pid_bh = tl.program_id(1)
    b = pid_bh // num_kv_heads
    h_kv = pid_bh % num_kv_heads
    q_start, seqlen_q = _seq_bounds(CU_Q, b, seqlen_q_dense, VARLEN)
    k_start, seqlen_k = _seq_bounds(CU_K, b, seqlen_k_dense, VARLEN)
    n0 = pid_n * BLOCK_N
    if n0 >= seqlen_k:
        return

    offs_n = n0 + tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, HEAD_DIM)
    col_ok = offs_n < seqlen_k
    kv_rows = b * stride_kb + h_kv * stride_kh + (k_start + offs_n[:, None]) * stride_kt + offs_d[None, :]
    # 越界的 key 行读成 0：它们的 dK/dV 不会写回，也不影响别的 key（dK/dV 的每一行只依赖自己那一列 P）
    k = tl.load(K + kv_rows, mask=col_ok[:, None], other=0.0)  # (BN, D)
    v = tl.load(V + kv_rows, mask=col_ok[:, None], other=0.0)
    dk = tl.zeros([BLOCK_N, HEAD_DIM], dtype=tl.float32)
    dv = tl.zeros([BLOCK_N, HEAD_DIM], dtype=tl.float32)

    if CAUSAL:
        diag = seqlen_k - seqlen_q
        # key n0 只被 i ≥ n0 − diag 的 query 看到：更早的 Q 块整块跳过
        lo = tl.maximum(n0 - diag, 0) // BLOCK_M * BLOCK_M
        # i ≥ n0 + BN − 1 − diag 的行能看到本块全部 key：从这里（向上取整到 Q 块边界）起不需要掩码
        full_lo = tl.cdiv(tl.maximum(n0 + BLOCK_N - 1 - diag, 0), BLOCK_M) * BLOCK_M
    else:
        diag = 0
        lo = 0
        full_lo = 0
    masked_hi = tl.minimum(full_lo, seqlen_q)

    # GQA：这个 KV 头服务的 G 个 query 头在 program 内依次累加——dK/dV 对组内的头求和，不需要原子加
    for g in range(GROUP):
        h = h_kv * GROUP + g
        q_off = b * stride_qb + h * stride_qh + q_start * stride_qt
        l_off = b * stride_lb + h * stride_lh + q_start
        dk, dv = _bwd_dkdv_inner(dk, dv, k, v, Q + q_off, DO + q_off, LSE + l_off, DELTA + l_off, stride_qt,
                                 offs_n, lo, masked_hi, seqlen_q, diag, qk_scale, True, HEAD_DIM, BLOCK_M,
                                 DOT_PRECISION)
        dk, dv = _bwd_dkdv_inner(dk, dv, k, v, Q + q_off, DO + q_off, LSE + l_off, DELTA + l_off, stride_qt,
                                 offs_n, full_lo, seqlen_q, seqlen_q, diag, qk_scale, False, HEAD_DIM, BLOCK_M,
                                 DOT_PRECISION)
    tl.store(DK + kv_rows, (dk * scale).to(DK.dtype.element_ty), mask=col_ok[:, None])
    tl.store(DV + kv_rows, dv.to(DV.dtype.element_ty), mask=col_ok[:, None])


@triton.jit
def _bwd_dq_inner(dq, q, do, lse2, delta, k_base, v_base, stride_kt, offs_m, lo, hi, seqlen_k, diag, qk_scale,
                  MASKED: tl.constexpr, CAUSAL: tl.constexpr, HEAD_DIM: tl.constexpr, BLOCK_N: tl.constexpr,
                  DOT_PRECISION: tl.constexpr):
    """一个 Q 块扫 key 块 [lo, hi)：与前向相同的块划分，P 由 lse 直接得到，不再做在线 softmax。"""
    offs_d = tl.arange(0, HEAD_DIM)
    for start_n in range(lo, hi, BLOCK_N):
        offs_n = start_n + tl.arange(0, BLOCK_N)
        kv_ok = offs_n[:, None] < seqlen_k
        k = tl.load(k_base + offs_n[:, None] * stride_kt + offs_d[None, :], mask=kv_ok, other=0.0)
        v = tl.load(v_base + offs_n[:, None] * stride_kt + offs_d[None, :], mask=kv_ok, other=0.0)
        s = tl.dot(q, tl.trans(k), input_precision=DOT_PRECISION) * qk_scale  # (BM, BN)
        p = tl.exp2(s - lse2[:, None])
        if MASKED:
            visible = offs_n[None, :] < seqlen_k
            if CAUSAL:
                visible = visible & (offs_n[None, :] <= offs_m[:, None] + diag)
            p = tl.where(visible, p, 0.0)
        dp = tl.dot(do, tl.trans(v), input_precision=DOT_PRECISION)  # dP = dO Vᵀ
        ds = p * (dp - delta[:, None])
        dq += tl.dot(ds.to(k.dtype), k, input_precision=DOT_PRECISION)  # dQ = dS K（scale 最后乘）
    return dq


@triton.autotune(configs=_configs([(128, 32, 4, 3), (128, 64, 8, 3), (64, 64, 4, 3), (64, 32, 4, 2),
                                   (32, 32, 4, 1)], interp=(64, 32)), key=_TUNE_KEY)
@triton.jit
def _flash_bwd_dq_kernel(Q, K, V, DO, DQ, LSE, DELTA, CU_Q, CU_K, qk_scale, scale,
                         stride_qb, stride_qh, stride_qt, stride_kb, stride_kh, stride_kt,
                         stride_lb, stride_lh, seqlen_q_dense, seqlen_k_dense, num_heads, group,
                         CAUSAL: tl.constexpr, VARLEN: tl.constexpr, HEAD_DIM: tl.constexpr,
                         DOT_PRECISION: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    pid_m = tl.program_id(0)
    pid_bh = tl.program_id(1)
    b = pid_bh // num_heads
    h = pid_bh % num_heads
    h_kv = h // group
    q_start, seqlen_q = _seq_bounds(CU_Q, b, seqlen_q_dense, VARLEN)
    k_start, seqlen_k = _seq_bounds(CU_K, b, seqlen_k_dense, VARLEN)
    m0 = pid_m * BLOCK_M
    if m0 >= seqlen_q:
        return

    offs_m = m0 + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, HEAD_DIM)
    row_ok = offs_m < seqlen_q
    q_rows = b * stride_qb + h * stride_qh + (q_start + offs_m[:, None]) * stride_qt + offs_d[None, :]
    q = tl.load(Q + q_rows, mask=row_ok[:, None], other=0.0)
    do = tl.load(DO + q_rows, mask=row_ok[:, None], other=0.0)
    l_off = b * stride_lb + h * stride_lh + q_start + offs_m
    lse2 = tl.load(LSE + l_off, mask=row_ok, other=0.0) * 1.4426950408889634
    delta = tl.load(DELTA + l_off, mask=row_ok, other=0.0)
    k_base = K + b * stride_kb + h_kv * stride_kh + k_start * stride_kt
    v_base = V + b * stride_kb + h_kv * stride_kh + k_start * stride_kt
    dq = tl.zeros([BLOCK_M, HEAD_DIM], dtype=tl.float32)

    if CAUSAL:  # 与前向完全相同的块划分
        diag = seqlen_k - seqlen_q
        full_hi = tl.maximum(tl.minimum(seqlen_k, m0 + diag + 1), 0) // BLOCK_N * BLOCK_N
        masked_hi = tl.minimum(seqlen_k, m0 + BLOCK_M + diag)
    else:
        diag = 0
        full_hi = seqlen_k // BLOCK_N * BLOCK_N
        masked_hi = seqlen_k
    dq = _bwd_dq_inner(dq, q, do, lse2, delta, k_base, v_base, stride_kt, offs_m, 0, full_hi, seqlen_k, diag,
                       qk_scale, False, CAUSAL, HEAD_DIM, BLOCK_N, DOT_PRECISION)
    dq = _bwd_dq_inner(dq, q, do, lse2, delta, k_base, v_base, stride_kt, offs_m, full_hi, masked_hi, seqlen_k,
                       diag, qk_scale, True, CAUSAL, HEAD_DIM, BLOCK_N, DOT_PRECISION)
    tl.store(DQ + q_rows, (dq * scale).to(DQ.dtype.element_ty), mask=row_ok[:, None])


# ---------------------------------------------------------------------------------------------------
# 3. 启动器：稠密 (B, H, T, D) 与变长 (N, H, D) 统一成 "(stride_b, stride_h, stride_t) + 可选 cu_seqlens"
# ---------------------------------------------------------------------------------------------------


def _seq_strides(t: Tensor, varlen: bool) -> tuple[int, int, int]:
    """(stride_b, stride_h, stride_t)：稠密 (B, H, T, D) 直接取；变长 (N, H, D) 没有批维，stride_b = 0。"""
    return (0, t.stride(1), t.stride(0)) if varlen else (t.stride(0), t.stride(1), t.stride(2))


def _lse_strides(lse: Tensor, varlen: bool) -> tuple[int, int]:
    """lse / Δ 的 (stride_b, stride_h)：稠密时形状 (B, H, T)，变长时 (H, N)；token 维步长都是 1。"""
    return (0, lse.stride(0)) if varlen else (lse.stride(0), lse.stride(1))


def _dot_precision(dtype: torch.dtype) -> str:
    # fp32：ieee（真 fp32 乘加，不走 TF32 的 10 位尾数），才能在 GPU 上达到 1e-5；16 位输入时这个参数不起作用
    return "ieee" if dtype == torch.float32 else "tf32"


def _forward(q: Tensor, k: Tensor, v: Tensor, cu_q: Tensor | None, cu_k: Tensor | None, batch: int,
             max_q: int, max_k: int, causal: bool, scale: float) -> tuple[Tensor, Tensor]:
    varlen = cu_q is not None
    num_heads, num_kv_heads, head_dim = q.size(-2 if varlen else 1), k.size(-2 if varlen else 1), q.size(-1)
    o = torch.empty_like(q)
    lse = torch.empty((num_heads, q.size(0)) if varlen else q.shape[:3], dtype=torch.float32, device=q.device)
    grid = lambda meta: (triton.cdiv(max_q, meta["BLOCK_M"]), batch * num_heads)  # noqa: E731
    _flash_fwd_kernel[grid](
        q, k, v, o, lse, cu_q, cu_k, scale * LOG2E,
        *_seq_strides(q, varlen), *_seq_strides(k, varlen), *_lse_strides(lse, varlen),
        max_q, max_k, num_heads, num_heads // num_kv_heads,
        CAUSAL=causal, VARLEN=varlen, HEAD_DIM=head_dim, DOT_PRECISION=_dot_precision(q.dtype))
    return o, lse


def _backward(do: Tensor, q: Tensor, k: Tensor, v: Tensor, o: Tensor, lse: Tensor, cu_q: Tensor | None,
              cu_k: Tensor | None, batch: int, max_q: int, max_k: int, causal: bool,
              scale: float) -> tuple[Tensor, Tensor, Tensor]:
    varlen = cu_q is not None
    num_heads, num_kv_heads, head_dim = q.size(-2 if varlen else 1), k.size(-2 if varlen else 1), q.size(-1)
    group = num_heads // num_kv_heads
    # q、o、dO、dQ 同形状同步长，k、v、dK、dV 同形状同步长：每组只传一套步长
    q_strides, kv_strides, l_strides = _seq_strides(q, varlen), _seq_strides(k, varlen), _lse_strides(lse, varlen)
    delta = torch.empty_like(lse)
    pre_block = 32 if INTERPRET else 64
    _bwd_preprocess_kernel[(triton.cdiv(max_q, pre_block), batch * num_heads)](
        o, do, delta, cu_q, *q_strides, *l_strides, max_q, num_heads,
        VARLEN=varlen, HEAD_DIM=head_dim, BLOCK_M=pre_block)
    dq, dk, dv = torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)
    precision = _dot_precision(q.dtype)
    _flash_bwd_dkdv_kernel[lambda meta: (triton.cdiv(max_k, meta["BLOCK_N"]), batch * num_kv_heads)](
        q, k, v, do, dk, dv, lse, delta, cu_q, cu_k, scale * LOG2E, scale,
        *q_strides, *kv_strides, *l_strides, max_q, max_k, num_kv_heads,
        GROUP=group, CAUSAL=causal, VARLEN=varlen, HEAD_DIM=head_dim, DOT_PRECISION=precision)
    _flash_bwd_dq_kernel[lambda meta: (triton.cdiv(max_q, meta["BLOCK_M"]), batch * num_heads)](
        q, k, v, do, dq, lse, delta, cu_q, cu_k, scale * LOG2E, scale,
        *q_strides, *kv_strides, *l_strides, max_q, max_k, num_heads, group,
        CAUSAL=causal, VARLEN=varlen, HEAD_DIM=head_dim, DOT_PRECISION=precision)
    return dq, dk, dv


class _FlashAttentionFn(torch.autograd.Function):
    """前向存 (q, k, v, o, lse)——不存 O(T·S) 的概率矩阵；反向用 lse 重算 P。cu_q 为 None 表示稠密布局。"""

    @staticmethod
    def forward(ctx, q, k, v, cu_q, cu_k, batch, max_q, max_k, causal, scale):
        o, lse = _forward(q, k, v, cu_q, cu_k, batch, max_q, max_k, causal, scale)
        ctx.save_for_backward(q, k, v, o, lse, cu_q, cu_k)
        ctx.meta = (batch, max_q, max_k, causal, scale)
        return o

    @staticmethod
    def backward(ctx, do):
        q, k, v, o, lse, cu_q, cu_k = ctx.saved_tensors
        dq, dk, dv = _backward(do.contiguous(), q, k, v, o, lse, cu_q, cu_k, *ctx.meta)
        return dq, dk, dv, None, None, None, None, None, None, None


# ---------------------------------------------------------------------------------------------------
# 4. 公开接口：检查输入，再交给 autograd 包装
# ---------------------------------------------------------------------------------------------------


def _check_qkv(q: Tensor, k: Tensor, v: Tensor, ndim: int, head_axis: int) -> tuple[int, int, int]:
    """q/k/v 的共同检查，返回 (H, H_kv, D)。"""
    for name, t in (("q", q), ("k", k), ("v", v)):
        check_tensor(name, t, ndim=ndim)
    if k.dtype != q.dtype or v.dtype != q.dtype:
        raise ValueError(f"q/k/v 的 dtype 必须相同，收到 {q.dtype}/{k.dtype}/{v.dtype}：请先转成同一 dtype")
    if k.shape != v.shape:
        raise ValueError(f"k 的形状 {tuple(k.shape)} 与 v 的形状 {tuple(v.shape)} 不同")
    head_dim = q.size(-1)
    if k.size(-1) != head_dim:
        raise ValueError(f"q 的 head_dim={head_dim} 与 k/v 的 head_dim={k.size(-1)} 不同")
    if head_dim not in SUPPORTED_HEAD_DIMS:
        raise ValueError(f"head_dim={head_dim} 不受 Triton FlashAttention 支持（只支持 {SUPPORTED_HEAD_DIMS}："
                         f"一个 program 把整行放进寄存器，tl.arange 要求 2 的幂）；{FALLBACK}")
    num_heads, num_kv_heads = q.size(head_axis), k.size(head_axis)
    if num_kv_heads == 0 or num_heads % num_kv_heads != 0:
        raise ValueError(f"GQA 要求 query 头数 H={num_heads} 是 KV 头数 H_kv={num_kv_heads} 的整数倍")
    return num_heads, num_kv_heads, head_dim


def flash_attention(q: Tensor, k: Tensor, v: Tensor, *, causal: bool = False, scale: float | None = None) -> Tensor:
    """O = softmax(scale · Q Kᵀ [+ 因果掩码]) V，Triton FlashAttention-2，可求导。

    q (B, H, T, D)，k/v (B, H_kv, S, D)（H 是 H_kv 的整数倍，GQA 不复制 K/V），返回 (B, H, T, D)，dtype 同 q。
    causal：query i 看 key j ≤ i + (S − T)（右下对齐；T == S 时等于 SDPA 的 is_causal）。scale 默认 1/√D。
    """
    _, num_kv_heads, head_dim = _check_qkv(q, k, v, ndim=4, head_axis=1)
    batch, _, seqlen_q, _ = q.shape
    if k.size(0) != batch:
        raise ValueError(f"q 的 batch={batch} 与 k/v 的 batch={k.size(0)} 不同")
    if seqlen_q == 0 or k.size(2) == 0:
        raise ValueError(f"序列长度不能为 0（T={seqlen_q}, S={k.size(2)}）：空序列的 softmax 没有定义")
    scale = 1.0 / math.sqrt(head_dim) if scale is None else float(scale)
    return _FlashAttentionFn.apply(q, k, v, None, None, batch, seqlen_q, k.size(2), bool(causal), scale)


def _check_cu_seqlens(name: str, cu: Tensor, batch: int | None, total: int, max_seqlen: int) -> int:
    """cu_seqlens 的检查：int32、一维、连续、与数据同设备、从 0 开始单调不减、末项等于总行数、最长不超过 max_seqlen。

    数值检查需要把 (B+1) 个整数读回主机（GPU 上一次同步）：max_seqlen 给小了内核会漏算行，那是静默的错误结果。
    """
    check_tensor(name, cu, ndim=1, dtypes=(torch.int32,))
    if cu.numel() < 2 or (batch is not None and cu.numel() != batch + 1):
        expect = "至少 2 项 [0, ..., N]" if batch is None else f"B+1 = {batch + 1} 项（与 cu_seqlens_q 相同）"
        raise ValueError(f"{name} 的长度 {cu.numel()} 不对：应为 {expect}")
    values = cu.tolist()
    lens = [b - a for a, b in zip(values[:-1], values[1:])]
    if values[0] != 0 or min(lens) < 0 or values[-1] != total:
        raise ValueError(f"{name}={values} 不合法：必须从 0 开始、单调不减、末项等于打包的总行数 {total}")
    if max(lens) > max_seqlen:
        raise ValueError(f"{name} 里最长的序列有 {max(lens)} 行，超过了 max_seqlen={max_seqlen}：内核按 max_seqlen 开 grid，"
                         "会漏算后面的行；请传入真实的最大长度")
    return cu.numel() - 1


def flash_attention_varlen(q: Tensor, k: Tensor, v: Tensor, *, cu_seqlens_q: Tensor, cu_seqlens_k: Tensor,
                           max_seqlen_q: int, max_seqlen_k: int, causal: bool = True,
                           scale: float | None = None) -> Tensor:
    """打包批量的 FlashAttention-2：q (N, H, D)，k/v (N_k, H_kv, D)，返回 (N, H, D)，可求导。

    第 b 条序列的 query 是行 cu_seqlens_q[b]:cu_seqlens_q[b+1]，key 是行 cu_seqlens_k[b]:cu_seqlens_k[b+1]，
    序列之间互不可见。causal 在每条序列内右下对齐：Lq 个 query、Lk 个 key 时 query i 看 key j ≤ i + Lk − Lq
    （新 token 接在更长的上下文之后）。cu_seqlens 是 int32 的 (B+1,)。
    """
    _, _, head_dim = _check_qkv(q, k, v, ndim=3, head_axis=1)
    batch = _check_cu_seqlens("cu_seqlens_q", cu_seqlens_q, None, q.size(0), max_seqlen_q)
    _check_cu_seqlens("cu_seqlens_k", cu_seqlens_k, batch, k.size(0), max_seqlen_k)
    if max_seqlen_q < 1 or max_seqlen_k < 1:
        raise ValueError(f"max_seqlen_q={max_seqlen_q}、max_seqlen_k={max_seqlen_k} 必须 ≥ 1")
    scale = 1.0 / math.sqrt(head_dim) if scale is None else float(scale)
    return _FlashAttentionFn.apply(q, k, v, cu_seqlens_q, cu_seqlens_k, batch, int(max_seqlen_q),
                                   int(max_seqlen_k), bool(causal), scale)


# ---------------------------------------------------------------------------------------------------
# 5. GPU 基准：TFLOP/s 对比 PyTorch 的 FlashAttention 后端
# ---------------------------------------------------------------------------------------------------


def _attention_flops(batch: int, heads: int, seqlen: int, head_dim: int, causal: bool, mode: str) -> float:
    """前向两个 matmul（QKᵀ、PV）各 2·T·S·D FLOP；因果只算一半；反向 5 个 matmul ≈ 前向的 2.5 倍。"""
    fwd = 4.0 * batch * heads * seqlen * seqlen * head_dim * (0.5 if causal else 1.0)
    return fwd if mode == "fwd" else 3.5 * fwd


def benchmark_flash_attention(shapes: list[tuple[int, int, int, int]] | None = None, *,
                              dtype: torch.dtype = torch.bfloat16, causal: bool = True) -> list[dict]:
    """在 GPU 上测 TFLOP/s：本文件的内核 vs `sdpa_kernel(SDPBackend.FLASH_ATTENTION)`，前向与前向+反向。

    shapes 是 (B, H, T, D) 的列表（默认 (4, 16, 4096, 64)）。每行一个 dict：shape、dtype、causal、mode、
    ours_ms、ref_ms、ours_tflops、ref_tflops、ratio（ours / ref，目标 ≥ 0.8）。只能在有 GPU 时调用。
    """
    if INTERPRET or not torch.cuda.is_available():
        raise RuntimeError("benchmark_flash_attention 需要 CUDA GPU：解释器模式下的耗时没有意义")
    from torch.nn.attention import SDPBackend, sdpa_kernel

    shapes = shapes or [(4, 16, 4096, 64)]
    rows = []
    for batch, heads, seqlen, head_dim in shapes:
        q, k, v = (torch.randn(batch, heads, seqlen, head_dim, device="cuda", dtype=dtype, requires_grad=True)
                   for _ in range(3))
        do = torch.randn_like(q)

        def ours():
            return flash_attention(q, k, v, causal=causal)

        def ref():
            with sdpa_kernel(SDPBackend.FLASH_ATTENTION):
                return F.scaled_dot_product_attention(q, k, v, is_causal=causal)

        for mode in ("fwd", "fwd+bwd"):
            timings = []
            for fn in (ours, ref):
                bench = fn if mode == "fwd" else (lambda fn=fn: fn().backward(do))
                # grad_to_none：每次反向前清掉 .grad，免得把"累加进旧梯度"的那次加法也计入耗时
                timings.append(triton.testing.do_bench(bench, warmup=25, rep=100, grad_to_none=[q, k, v]))
            flops = _attention_flops(batch, heads, seqlen, head_dim, causal, mode)
            ours_tf, ref_tf = (flops / (ms * 1e-3) / 1e12 for ms in timings)
            rows.append({"shape": (batch, heads, seqlen, head_dim), "dtype": str(dtype), "causal": causal,
                         "mode": mode, "ours_ms": timings[0], "ref_ms": timings[1], "ours_tflops": ours_tf,
                         "ref_tflops": ref_tf, "ratio": ours_tf / ref_tf})
    return rows


# ---------------------------------------------------------------------------------------------------
# 6. 演示：与 SDPA 对照前向与梯度，有 GPU 时再测速
# ---------------------------------------------------------------------------------------------------


def _grads(fn, q: Tensor, k: Tensor, v: Tensor, do: Tensor) -> tuple[Tensor, ...]:
    """fn 的输出与 (dq, dk, dv)（对 Σ out·do 求导）。"""
    q, k, v = (t.detach().clone().requires_grad_(True) for t in (q, k, v))
    out = fn(q, k, v)
    out.backward(do)
    return out.detach(), q.grad, k.grad, v.grad


def main() -> None:
    setup_seed()
    mode = "Triton 解释器（CPU，只验证正确性）" if INTERPRET else f"GPU：{torch.cuda.get_device_name()}"
    print(f"FlashAttention-2（Triton）前向 + 反向 vs F.scaled_dot_product_attention —— {mode}")
    small = is_smoke() or INTERPRET
    cases = ([(1, 2, 2, 64, 64, 32, False), (1, 2, 2, 64, 64, 32, True), (1, 4, 2, 50, 50, 16, True),
              (1, 2, 1, 16, 40, 32, True)] if small else
             [(2, 8, 8, 1024, 1024, 64, True), (2, 8, 2, 1000, 1000, 128, False), (2, 8, 4, 256, 1024, 64, True)])
    dev = KERNEL_DEVICE
    worst = 0.0
    for batch, heads, kv_heads, t, s, d, causal in cases:
        q = torch.randn(batch, heads, t, d, device=dev)
        k, v = (torch.randn(batch, kv_heads, s, d, device=dev) for _ in range(2))
        do = torch.randn_like(q)
        # 参考：右下对齐的因果用显式 bool 掩码（T ≠ S 时 SDPA 的 is_causal 是左上对齐的，不能直接用）
        mask = torch.ones(t, s, dtype=torch.bool, device=dev).tril(s - t) if causal else None
        ours = _grads(lambda q, k, v, c=causal: flash_attention(q, k, v, causal=c), q, k, v, do)
        ref = _grads(lambda q, k, v, m=mask: F.scaled_dot_product_attention(
            q, k, v, attn_mask=m, enable_gqa=heads != kv_heads), q, k, v, do)
        errs = [(a - b).abs().max().item() for a, b in zip(ours, ref)]
        worst = max(worst, errs[0] / 1e-5, *(e / 1e-4 for e in errs[1:]))
        print(f"  (B={batch}, H={heads}, H_kv={kv_heads}, T={t}, S={s}, D={d}) causal={causal!s:5}  "
              f"max|Δ| out {errs[0]:.1e}  dq {errs[1]:.1e}  dk {errs[2]:.1e}  dv {errs[3]:.1e}")

    # 变长：3 条序列，上下文比新 token 长（分块 prefill 的情形），逐条序列用 SDPA 对照
    lens_q, lens_k = [5, 17, 1], [9, 17, 30]
    cu_q = torch.tensor([0, *torch.tensor(lens_q).cumsum(0).tolist()], dtype=torch.int32, device=dev)
    cu_k = torch.tensor([0, *torch.tensor(lens_k).cumsum(0).tolist()], dtype=torch.int32, device=dev)
    q = torch.randn(sum(lens_q), 4, 32, device=dev)
    k, v = (torch.randn(sum(lens_k), 2, 32, device=dev) for _ in range(2))
    out = flash_attention_varlen(q, k, v, cu_seqlens_q=cu_q, cu_seqlens_k=cu_k, max_seqlen_q=max(lens_q),
                                 max_seqlen_k=max(lens_k), causal=True)
    ref = torch.cat([F.scaled_dot_product_attention(
        q[a:b].transpose(0, 1), k[c:e].transpose(0, 1), v[c:e].transpose(0, 1), enable_gqa=True,
        attn_mask=torch.ones(b - a, e - c, dtype=torch.bool, device=dev).tril(e - c - (b - a))).transpose(0, 1)
        for a, b, c, e in zip(cu_q[:-1].tolist(), cu_q[1:].tolist(), cu_k[:-1].tolist(), cu_k[1:].tolist())])
    err = (out - ref).abs().max().item()
    worst = max(worst, err / 1e-5)
    print(f"  varlen：query 长度 {lens_q}，上下文长度 {lens_k}  max|Δ| out {err:.1e}")
    if worst > 1.0:
        raise SystemExit("FlashAttention 与 SDPA 不一致（超过 1e-5 / 1e-4 的容差）")
    print("全部在容差内（fp32：输出 1e-5，梯度 1e-4）。")
    if INTERPRET:
        print("解释器逐个 program 用 numpy 模拟，速度没有意义；在 GPU 上运行本文件会打印 TFLOP/s 对比。")
        return
    print("TFLOP/s（bf16，因果）：ours vs sdpa_kernel(FLASH_ATTENTION)")
    shapes = [(1, 4, 512, 64)] if is_smoke() else [(4, 16, 4096, 64), (4, 16, 4096, 128), (16, 16, 1024, 64)]
    for row in benchmark_flash_attention(shapes):
        print(f"  {row['shape']} {row['mode']:>8}  ours {row['ours_tflops']:6.1f}  "
              f"sdpa-flash {row['ref_tflops']:6.1f}  ratio {row['ratio']:.2f}")


if __name__ == "__main__":
    lesson_args(__doc__)
    main()
