"""分页注意力（paged attention）：KV cache 按块存放、经每条序列的 block table 寻址——vLLM 的布局，一个 Triton 内核
同时覆盖解码（每条序列 1 个新 token）与分块预填充（chunked prefill，每条序列若干个新 token）。只有前向（推理服务用）。

为什么要分页
------------
稠密 KV cache 按"批大小 × 最长可能长度"预留：B 条序列、每条预留 S_max 个位置。可实际长度参差不齐、又在不断增长，
大部分预留的显存是空的（内部碎片），而且一条序列想变长时后面未必有连续空间（外部碎片）。vLLM（Kwon et al. 2023）
借用了操作系统的虚拟内存：
- 物理上，每层一个**块池** k_cache / v_cache：(num_blocks, block_size, H_kv, D)，块是固定大小的"物理页"；
- 逻辑上，第 b 条序列的第 p 个位置在它的第 p // block_size 个逻辑块的第 p % block_size 行；
- **block table 就是页表**：block_tables[b, j] = 第 b 条序列第 j 个逻辑块所在的物理块号。
于是任何空闲块都能分给任何序列（没有外部碎片），每条序列最多浪费最后一块里没写满的 block_size − 1 行
（内部碎片从 S_max − 实际长度 降到 < block_size），同一个池里能同时装下多得多的序列——批越大，解码吞吐越高。
页表还带来前缀共享：两条序列的 block table 指向同一批物理块，就共用了同一段 system prompt 的 K/V（写时复制）。

内核看到的布局（与 model_lab.PagedKVCache、AttnMetadata 一致）：
- q：(N, H, D) 打包的新 token，第 b 条序列占 cu_seqlens_q[b] : cu_seqlens_q[b+1] 这 Lq 行；
- k_cache / v_cache：(num_blocks, block_size, H_kv, D)，最后一维连续；新 token 的 k/v 已由调用方按 slot_mapping 写入；
- context_lens[b] = Lk：缓存里第 b 条序列的 token 数，**含**这次的新 token；
- block_tables：(B, max_blocks) int32，只有前 ⌈Lk / block_size⌉ 列有意义，其余列随意（内核不读它们）。
第 b 条序列的第 i 个新 token 的绝对位置是 Lk − Lq + i，它能看见缓存位置 j ≤ i + Lk − Lq（右下角对齐的因果掩码）。

算法：FlashAttention 式的在线 softmax，只是 K/V 不再连续
----------------------------------------------------
一个 program 负责（序列 b，KV 头 h_kv，一块 query）。它沿上下文一块一块往前走：对每个位置 n 先查页表
page = block_tables[b, n // block_size]，再读 k_cache[page, n % block_size, h_kv, :]——这是与连续 K/V 的唯一区别，
多一次（很小、几乎总命中缓存的）页表读取。之后与 FlashAttention-2 相同：
    s = q kᵀ · scale，m' = max(m, rowmax(s))，l' = l·e^{m−m'} + Σ e^{s−m'}，acc' = acc·e^{m−m'} + e^{s−m'} v，
    最后 out = acc / l。
指数用 exp2：把 log2(e) 乘进 scale（e^x = 2^{x·log2 e}），GPU 上 exp2 是一条硬件指令。分数、m、l、acc 都在 fp32 里，
bf16 / fp16 输入只在 tl.dot 的两个操作数上保持低精度（Tensor Core 的乘、fp32 的累加）。
一次迭代读 BLOCK_N 个位置；BLOCK_N 与 block_size 无关——每一行各自查页表，所以 block_size = 4、5、16、128 都对，
block_size 是 2 的幂且整除 BLOCK_N 时一块 tile 恰好是几整页，每页内的行在显存里等距排列（步长 H_kv·D），
每行 D 个元素连续（bf16、D=128 时 256 B），GPU 上照样是合并访存。
块池很大时 page · stride 会超过 int32（10 万块 × 16 × 8 头 × 128 = 1.6e9 个元素，离 2³¹ 不远），所以先转 int64 再乘。

解码的算术强度：为什么它受限于带宽，GQA 分组为什么重要
----------------------------------------------------
解码时每条序列每个头只有 1 个 query。上下文长 L、head_dim D：
    计算 = q kᵀ 的 2·L·D + p v 的 2·L·D = 4·L·D FLOP（每个 query 头）
    访存 = K 与 V 各 L·D 个元素 = 2·L·D·2 B（bf16，每个 KV 头）
若每个 query 头各读一遍它的 KV 头，强度 = 4LD / 4LD = 1 FLOP/B；H100 的拐点约 989e12 / 3.35e12 ≈ 295 FLOP/B，
差了两个数量级——时间完全由"把 K/V 从 HBM 读一遍"决定，Tensor Core 几乎闲着。
GQA（H 个 query 头共用 H_kv 个 KV 头，G = H / H_kv）：本内核把同一个 KV 头的 G 个 query 头放进**同一个 program**
（tile 的行 = BLOCK_M 个 token × G 个头），每个 K/V 字节只从 HBM 读一次就服务 G 个头，强度升到 G FLOP/B，
在带宽受限区里就是 G 倍的速度（Llama-3-8B 的 G = 4，70B 的 G = 8）。若按 query 头各开一个 program，
同一份 K/V 要读 G 遍（能否在 L2 里命中全凭运气）。分组还顺便填满了 tile：GPU 上 tl.dot 的一条 mma 指令一次算
16 行，解码的 query 本来只有 1 行，G 个头把它填成 G 行，补零的浪费少了（tile 的行数取 max(16, BLOCK_M · G)）。
规模感：Llama-3-8B（32 层、H_kv=8、D=128、bf16）每个 token 的 KV 是 2·32·8·128·2 B = 128 KiB，
上下文 4096 的一条序列每步解码要读 512 MiB；H200（约 4.8 TB/s）上至少 0.11 ms——所以衡量解码内核用
"有效带宽 GB/s = K/V 字节数 / 时间"，目标是接近 HBM 峰值。

block_size 的取舍：小块浪费少（平均浪费 block_size / 2 行）、共享前缀的粒度细，但页表更长、每页内连续的数据更少；
大块反之。vLLM 默认 16：对 D = 128 的 bf16，一页一个 KV 头是 16 × 256 B = 4 KiB，访存已足够"成块"。

没做的事（下一步）：B·H_kv 很小而上下文很长时（例如单条序列 128k），只有 B·H_kv 个 program，GPU 的 100 多个 SM
大部分闲着——flash-decoding 把上下文再切成几段并行、最后按 logsumexp 合并（split-K）。反向传播：推理服务不需要，
所以这里只有前向；需要梯度时调用会直接报错，而不是悄悄返回没有 grad_fn 的结果。

运行：python inference_engine/kernels/paged_attention.py（没有 GPU 时走 Triton 解释器，只验证正确性；
有 GPU 时再打印解码带宽与"gather + SDPA"参考的对比）。
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

# 必须在定义任何 @triton.jit 之前导入：runtime 在没有 GPU 时打开 TRITON_INTERPRET
from inference_engine.kernels.runtime import FALLBACK_HINT, INTERPRET, KERNEL_DEVICE, check_tensor, tl, triton
from utils.io import is_smoke
from utils.lesson_cli import lesson_args
from utils.torch_playground import setup_seed

__all__ = ["MAX_HEAD_DIM", "benchmark_paged_attention", "paged_attention", "paged_attention_decode",
           "paged_attention_reference"]

MAX_HEAD_DIM = 256  # acc (行数 × D) 的 fp32 累加器与 K/V tile 要放进寄存器 / 共享内存；更大的 head_dim 放不下
BLOCK_N = 64  # 每次迭代读的上下文位置数（与 block_size 无关：每一行各自查页表）
MAX_ROWS = 64  # 一个 program 的 query 行数上限（BLOCK_M 个 token × G 个头）：acc 是 64 × D 的 fp32
LOG2_E = 1.4426950408889634


@triton.jit
def _paged_attention_kernel(
    q_ptr, k_ptr, v_ptr, o_ptr, cu_q_ptr, ctx_ptr, bt_ptr,
    stride_qn, stride_qh,  # q 与 out：(N, H, D)，最后一维步长 1
    stride_kb, stride_ks, stride_kh,  # k/v 块池：(num_blocks, block_size, H_kv, D)，最后一维步长 1
    stride_bt,  # block_tables 的行步长
    qk_scale,  # scale · log2(e)：分数直接以 2 为底，softmax 用 exp2
    head_dim, block_size,
    GROUP: tl.constexpr,  # G = H / H_kv：一个 KV 头服务的 query 头数
    GROUP_P: tl.constexpr,  # G 向上取到 2 的幂（多出的头用 mask 屏蔽）
    BLOCK_M: tl.constexpr,  # 一个 program 的 query token 数（解码时为 1）
    BLOCK_ROWS: tl.constexpr,  # tile 的行数 = max(16, BLOCK_M · GROUP_P)
    BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
    UPCAST: tl.constexpr,  # 只在解释器 + bf16 时为真：解释器把 bf16 当 16 位整数存放，直接对它做 tl.dot 得到垃圾
):
    pid_m, b, kvh = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    q_start = tl.load(cu_q_ptr + b)
    q_len = tl.load(cu_q_ptr + b + 1) - q_start  # Lq
    ctx_len = tl.load(ctx_ptr + b)  # Lk（含新 token）

    # tile 的第 r 行 = 这块里的第 r // GROUP_P 个 token 的第 r % GROUP_P 个头：同一个 KV 头的 G 个 query 头共用一次 K/V 读取
    rows = tl.arange(0, BLOCK_ROWS)
    tok = pid_m * BLOCK_M + rows // GROUP_P  # (ROWS,) 序列内第几个新 token
    grp = rows % GROUP_P
    row_ok = (rows < BLOCK_M * GROUP_P) & (tok < q_len) & (grp < GROUP)
    head = kvh * GROUP + grp  # 与 repeat_kv 相同：KV 头 j 服务 query 头 j·G … j·G + G − 1
    d = tl.arange(0, BLOCK_D)
    d_ok = d < head_dim  # head_dim 不是 2 的幂时（例如 12、80、96）多出的列读 0，对点积没有贡献
    q_off = (q_start + tok).to(tl.int64) * stride_qn + head * stride_qh  # (ROWS,)
    q = tl.load(q_ptr + q_off[:, None] + d[None, :], mask=row_ok[:, None] & d_ok[None, :], other=0.0)
    if UPCAST:
        q = q.to(tl.float32)

    # 右下对齐的因果掩码：第 i 个新 token 在位置 Lk − Lq + i，能看见 j ≤ i + Lk − Lq
    limit = tok + ctx_len - q_len  # (ROWS,)
    # 这块里最后一个 token 之后的位置谁也看不见：循环只走到那里（解码时就是整个上下文）
    last_tok = tl.minimum(pid_m * BLOCK_M + BLOCK_M, q_len) - 1
    end_n = tl.minimum(ctx_len, last_tok + ctx_len - q_len + 1)
    end_n = tl.where(pid_m * BLOCK_M < q_len, end_n, 0)  # 这条序列的 query 比 grid 少：这个 program 无事可做

    # m 的初值取有限的极小值而不是 −inf：被屏蔽的行（padding 的头 / token）整行是 −inf，
    # 若 m 也是 −inf，e^{s−m} = e^{−inf+inf} = NaN。有效行的第一块总含位置 0，m 立刻变成真实的最大值
    m_i = tl.full([BLOCK_ROWS], -1.0e30, dtype=tl.float32)
    l_i = tl.zeros([BLOCK_ROWS], dtype=tl.float32)
    acc = tl.zeros([BLOCK_ROWS, BLOCK_D], dtype=tl.float32)
    for start_n in range(0, end_n, BLOCK_N):
        n = start_n + tl.arange(0, BLOCK_N)  # (BLOCK_N,) 逻辑位置
        n_ok = n < ctx_len
        # 查页表：逻辑块 n // block_size -> 物理块号；越过上下文的位置不读页表（那几列可能是任意值）
        page = tl.load(bt_ptr + b * stride_bt + n // block_size, mask=n_ok, other=0)
        kv_off = page.to(tl.int64) * stride_kb + (n % block_size) * stride_ks + kvh * stride_kh  # (BLOCK_N,)
        kv_mask = n_ok[:, None] & d_ok[None, :]
        k = tl.load(k_ptr + kv_off[:, None] + d[None, :], mask=kv_mask, other=0.0)  # (BLOCK_N, D)
        if UPCAST:
            k = k.to(tl.float32)
        s = tl.dot(q, tl.trans(k), input_precision="ieee") * qk_scale  # (ROWS, BLOCK_N)，以 2 为底的分数
        s = tl.where((n[None, :] <= limit[:, None]) & n_ok[None, :], s, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(s, 1))
        alpha = tl.exp2(m_i - m_new)  # 旧的 acc、l 按新的最大值重新缩放
        p = tl.exp2(s - m_new[:, None])
        l_i = l_i * alpha + tl.sum(p, 1)
        v = tl.load(v_ptr + kv_off[:, None] + d[None, :], mask=kv_mask, other=0.0)
        if UPCAST:
            v = v.to(tl.float32)
        # p 转成 v 的 dtype 再乘：bf16 时走 Tensor Core（与 FlashAttention 相同），累加仍在 fp32
        acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v, input_precision="ieee")
        m_i = m_new

    l_i = tl.where(l_i > 0, l_i, 1.0)  # 只有被屏蔽的行 l = 0；它们不写回，这里只是不让 0/0 出现
    out = acc / l_i[:, None]
    tl.store(o_ptr + q_off[:, None] + d[None, :], out.to(o_ptr.dtype.element_ty),
             mask=row_ok[:, None] & d_ok[None, :])


def _check_metadata(n_tokens: int, num_blocks: int, block_size: int, cu_seqlens_q: Tensor, context_lens: Tensor,
                    block_tables: Tensor, max_seqlen_q: int | None) -> int:
    """元数据与块池是否自洽；返回最长的 Lq。

    这些检查要看张量的值，GPU 上意味着一次同步——所以把所有量放进一个小张量、只 .tolist() 一次。
    不检查的后果都是静默的错误结果：页表太短时内核会读到下一行的块号，块号越界时读到池外的内存。
    """
    new = cu_seqlens_q[1:] - cu_seqlens_q[:-1]  # (B,) Lq
    need = (context_lens + block_size - 1) // block_size  # (B,) 每条序列需要的块数
    used = torch.arange(block_tables.size(1), device=block_tables.device)[None, :] < need[:, None]
    bad_ids = ((block_tables < 0) | (block_tables >= num_blocks)) & used  # 只查用得到的列
    first, last, min_new, max_new, min_past, max_need, n_bad = torch.stack([
        cu_seqlens_q[0], cu_seqlens_q[-1], new.min(), new.max(), (context_lens - new).min(), need.max(),
        bad_ids.sum().to(torch.int32)]).tolist()
    if first != 0 or last != n_tokens:
        raise ValueError(f"cu_seqlens_q 应从 0 开始、以 N = q.size(0) = {n_tokens} 结束，收到首项 {first}、末项 {last}")
    if min_new < 1:
        raise ValueError(f"cu_seqlens_q={cu_seqlens_q.tolist()} 必须严格递增：每条序列至少 1 个新 token")
    if min_past < 0:
        raise ValueError(f"context_lens={context_lens.tolist()} 小于各序列的新 token 数 {new.tolist()}："
                         "context_lens 是缓存里的 token 数，包含这次已写入的新 token")
    if max_need > block_tables.size(1):
        b = int(torch.argmax(need))
        raise ValueError(f"block_tables 太短：第 {b} 条序列的上下文长 {int(context_lens[b])}，block_size={block_size} 时"
                         f"需要 {max_need} 个块，block_tables 只有 {block_tables.size(1)} 列；"
                         "请按最长的上下文分配 block_tables（PagedKVCache.prepare 会自动做）")
    if n_bad:
        b, j = (int(i) for i in bad_ids.nonzero()[0])
        raise ValueError(f"block_tables[{b}, {j}] = {int(block_tables[b, j])} 不是合法的物理块号 [0, {num_blocks})："
                         "页表指向块池之外，内核会读到池外的内存")
    if max_seqlen_q is not None and max_seqlen_q < max_new:
        raise ValueError(f"max_seqlen_q={max_seqlen_q} 小于实际最长的新 token 数 {max_new}：多出的 query 不会被计算；"
                         "传 attn_metadata.max_seqlen_q 或不传")
    return max_new


def paged_attention(q: Tensor, k_cache: Tensor, v_cache: Tensor, *, cu_seqlens_q: Tensor, context_lens: Tensor,
                    block_tables: Tensor, scale: float | None = None, max_seqlen_q: int | None = None) -> Tensor:
    """分页 KV cache 上的因果注意力（只有前向）：q (N, H, D) 打包的新 token -> (N, H, D)，dtype 与 q 相同。

    k_cache / v_cache：(num_blocks, block_size, H_kv, D)，与 q 同 dtype（fp32 / fp16 / bf16）、连续；
    cu_seqlens_q：(B+1,) int32；context_lens：(B,) int32，含新 token；block_tables：(B, max_blocks) int32。
    scale 默认 1/√D。max_seqlen_q 可选（FlashAttention varlen 接口的同名参数），给了就核对它不小于真实值。
    Lq = 1 的解码与 Lq > 1 的分块预填充走同一个内核：grid = (⌈max Lq / BLOCK_M⌉, B, H_kv)。
    """
    check_tensor("q", q, ndim=3)
    check_tensor("k_cache", k_cache, ndim=4)
    check_tensor("v_cache", v_cache, ndim=4)
    check_tensor("cu_seqlens_q", cu_seqlens_q, ndim=1, dtypes=(torch.int32,))
    check_tensor("context_lens", context_lens, ndim=1, dtypes=(torch.int32,))
    check_tensor("block_tables", block_tables, ndim=2, dtypes=(torch.int32,))
    n_tokens, n_heads, head_dim = q.shape
    num_blocks, block_size, n_kv_heads, kv_dim = k_cache.shape
    if k_cache.shape != v_cache.shape:
        raise ValueError(f"k_cache {tuple(k_cache.shape)} 与 v_cache {tuple(v_cache.shape)} 形状不同："
                         "两者都应是 (num_blocks, block_size, H_kv, D)")
    if not q.dtype == k_cache.dtype == v_cache.dtype:
        raise ValueError(f"q / k_cache / v_cache 的 dtype 必须相同，收到 {q.dtype} / {k_cache.dtype} / {v_cache.dtype}："
                         f"请把 q 转成缓存的 dtype（或按模型的 dtype 分配缓存）。{FALLBACK_HINT}")
    if kv_dim != head_dim:
        raise ValueError(f"q 的 head_dim={head_dim} 与块池的 head_dim={kv_dim} 不同")
    if head_dim > MAX_HEAD_DIM:
        raise ValueError(f"head_dim={head_dim} 不受支持：分页注意力内核支持 head_dim ≤ {MAX_HEAD_DIM}"
                         f"（fp32 累加器与 K/V tile 要放进片上存储）。{FALLBACK_HINT}")
    if n_heads % n_kv_heads:
        raise ValueError(f"q 的头数 {n_heads} 不能被 KV 头数 {n_kv_heads} 整除：GQA 要求每个 KV 头服务同样多的 query 头")
    batch = context_lens.numel()
    if batch < 1 or cu_seqlens_q.numel() != batch + 1 or block_tables.size(0) != batch or block_tables.size(1) < 1:
        raise ValueError(f"元数据的序列数对不上：context_lens 有 {batch} 项，cu_seqlens_q 应有 B+1 = {batch + 1} 项"
                         f"（收到 {cu_seqlens_q.numel()}），block_tables 应为 ({batch}, max_blocks ≥ 1)"
                         f"（收到 {tuple(block_tables.shape)}）")
    if torch.is_grad_enabled() and (q.requires_grad or k_cache.requires_grad or v_cache.requires_grad):
        raise ValueError("paged_attention 只有前向（推理服务用），不能反向：推理时请在 torch.no_grad() 下调用；"
                         f"需要梯度请用 PyTorch 实现。{FALLBACK_HINT}")
    max_q = _check_metadata(n_tokens, num_blocks, block_size, cu_seqlens_q, context_lens, block_tables, max_seqlen_q)

    group = n_heads // n_kv_heads
    group_p = triton.next_power_of_2(group)
    block_m = max(1, min(triton.next_power_of_2(max_q), MAX_ROWS // group_p))  # 解码：max_q = 1 -> BLOCK_M = 1
    scale = 1.0 / math.sqrt(head_dim) if scale is None else float(scale)
    out = torch.empty_like(q)
    grid = (triton.cdiv(max_q, block_m), batch, n_kv_heads)
    _paged_attention_kernel[grid](
        q, k_cache, v_cache, out, cu_seqlens_q, context_lens, block_tables,
        q.stride(0), q.stride(1), k_cache.stride(0), k_cache.stride(1), k_cache.stride(2), block_tables.stride(0),
        scale * LOG2_E, head_dim, block_size,
        GROUP=group, GROUP_P=group_p, BLOCK_M=block_m, BLOCK_ROWS=max(16, block_m * group_p),
        BLOCK_N=BLOCK_N, BLOCK_D=max(16, triton.next_power_of_2(head_dim)),
        UPCAST=INTERPRET and q.dtype == torch.bfloat16,
    )
    return out


def paged_attention_decode(q: Tensor, k_cache: Tensor, v_cache: Tensor, *, context_lens: Tensor,
                           block_tables: Tensor, scale: float | None = None) -> Tensor:
    """解码的便捷入口：q (B, H, D)，每条序列恰好 1 个新 token（已写进缓存）-> (B, H, D)。

    就是 cu_seqlens_q = [0, 1, …, B] 的 paged_attention：同一个内核，BLOCK_M = 1，每个 program 是（序列，KV 头），
    tile 的行是这个 KV 头的 G 个 query 头。
    """
    check_tensor("q", q, ndim=3)
    if not isinstance(context_lens, Tensor) or context_lens.dim() != 1 or context_lens.numel() != q.size(0):
        raise ValueError(f"解码时 q 的第 0 维是序列数 B = {q.size(0)}（每条序列 1 个新 token），context_lens 应为 ({q.size(0)},)，"
                         f"收到 {tuple(getattr(context_lens, 'shape', ()))}；一条序列有多个新 token 时请用 paged_attention")
    cu = torch.arange(q.size(0) + 1, dtype=torch.int32, device=q.device)
    return paged_attention(q, k_cache, v_cache, cu_seqlens_q=cu, context_lens=context_lens,
                           block_tables=block_tables, scale=scale, max_seqlen_q=1)


# ---------------------------------------------------------------------------------------------------
# 参考实现：先按页表把每条序列的上下文收集成连续的 K/V，再交给 SDPA（右下对齐的因果掩码）
# ---------------------------------------------------------------------------------------------------


def paged_attention_reference(q: Tensor, k_cache: Tensor, v_cache: Tensor, *, cu_seqlens_q: Tensor,
                              context_lens: Tensor, block_tables: Tensor, scale: float | None = None) -> Tensor:
    """gather-then-attend：逐条序列把 Lk 个位置经页表收集成 (Lk, H_kv, D)，再用 F.scaled_dot_product_attention。

    收集这一步要把 K/V 读一遍、写一份连续的副本、SDPA 再读一遍——正是分页内核省掉的那两趟访存。
    """
    block_size = k_cache.size(1)
    cu, ctx = cu_seqlens_q.tolist(), context_lens.tolist()
    out = torch.empty_like(q)
    for b, lk in enumerate(ctx):
        pos = torch.arange(lk, device=q.device)
        slots = block_tables[b, pos // block_size].long() * block_size + pos % block_size  # (Lk,) 摊平后的槽号
        k = k_cache.flatten(0, 1)[slots].transpose(0, 1)  # (H_kv, Lk, D)
        v = v_cache.flatten(0, 1)[slots].transpose(0, 1)
        qb = q[cu[b]:cu[b + 1]].transpose(0, 1)  # (H, Lq, D)
        lq = qb.size(1)
        mask = torch.ones(lq, lk, dtype=torch.bool, device=q.device).tril(lk - lq)  # 第 i 个 query 在位置 lk − lq + i
        y = F.scaled_dot_product_attention(qb, k, v, attn_mask=mask, scale=scale, enable_gqa=k.size(0) != qb.size(0))
        out[cu[b]:cu[b + 1]] = y.transpose(0, 1)
    return out


# ---------------------------------------------------------------------------------------------------
# 演示与测速
# ---------------------------------------------------------------------------------------------------


def _random_paged_batch(q_lens: list[int], ctx_lens: list[int], *, n_heads: int, n_kv_heads: int, head_dim: int,
                        block_size: int, dtype: torch.dtype = torch.float32, device: torch.device = KERNEL_DEVICE,
                        spare_blocks: int = 3) -> dict:
    """一个随机的分页批量：物理块随机打乱（序列的块在池里不连续），页表多出的列填越界的块号（内核不该读它们）。"""
    need = [-(-lk // block_size) for lk in ctx_lens]
    num_blocks = sum(need) + spare_blocks
    perm = torch.randperm(num_blocks, device=device).to(torch.int32)
    width = max(need) + 1
    tables = torch.full((len(ctx_lens), width), num_blocks + 7, dtype=torch.int32, device=device)
    start = 0
    for b, nb in enumerate(need):
        tables[b, :nb] = perm[start:start + nb]
        start += nb
    shape = (num_blocks, block_size, n_kv_heads, head_dim)
    return dict(q=torch.randn(sum(q_lens), n_heads, head_dim, device=device).to(dtype),
                k_cache=torch.randn(shape, device=device).to(dtype), v_cache=torch.randn(shape, device=device).to(dtype),
                cu_seqlens_q=torch.tensor([0, *q_lens], device=device).cumsum(0).to(torch.int32),
                context_lens=torch.tensor(ctx_lens, dtype=torch.int32, device=device), block_tables=tables)


def benchmark_paged_attention(batch_sizes: tuple[int, ...] = (1, 8, 32, 128), context_len: int = 4096, *,
                              n_heads: int = 32, n_kv_heads: int = 8, head_dim: int = 128, block_size: int = 16,
                              dtype: torch.dtype = torch.bfloat16) -> list[dict]:
    """解码（每条序列 1 个新 token）的带宽：本内核 vs "按页表 gather 成稠密 K/V + SDPA"，只在 GPU 上有意义。

    有效带宽 = 必须读的 K/V 字节数 / 时间，两边用同一个分子（gather 实际搬了约 3 倍的字节，那正是它慢的原因）。
    每行返回 dict：batch、context_len、kv_bytes、ours_ms、reference_ms、ours_gbps、reference_gbps、speedup。
    """
    if INTERPRET:
        raise RuntimeError("benchmark_paged_attention 需要 CUDA GPU：Triton 解释器逐 program 模拟，计时没有意义")
    rows = []
    for batch in batch_sizes:
        data = _random_paged_batch([1] * batch, [context_len] * batch, n_heads=n_heads, n_kv_heads=n_kv_heads,
                                   head_dim=head_dim, block_size=block_size, dtype=dtype, spare_blocks=0)
        q, k_cache, v_cache, tables = data["q"], data["k_cache"], data["v_cache"], data["block_tables"]
        nb = -(-context_len // block_size)

        def ours():
            return paged_attention_decode(q, k_cache, v_cache, context_lens=data["context_lens"], block_tables=tables)

        def reference():  # 所有序列一样长：一次 gather 成 (B, H_kv, L, D)，一次 SDPA
            k = k_cache[tables[:, :nb].long()].flatten(1, 2)[:, :context_len].transpose(1, 2)
            v = v_cache[tables[:, :nb].long()].flatten(1, 2)[:, :context_len].transpose(1, 2)
            return F.scaled_dot_product_attention(q[:, :, None], k, v, enable_gqa=n_heads != n_kv_heads)[:, :, 0]

        torch.testing.assert_close(ours(), reference(), rtol=2e-2, atol=2e-2)
        ours_ms = triton.testing.do_bench(ours)
        ref_ms = triton.testing.do_bench(reference)
        kv_bytes = 2 * batch * context_len * n_kv_heads * head_dim * k_cache.element_size()
        rows.append(dict(batch=batch, context_len=context_len, kv_bytes=kv_bytes, ours_ms=ours_ms, reference_ms=ref_ms,
                         ours_gbps=kv_bytes / ours_ms / 1e6, reference_gbps=kv_bytes / ref_ms / 1e6,
                         speedup=ref_ms / ours_ms))
    return rows


def main() -> None:
    setup_seed()
    mode = "Triton 解释器（CPU，只验证正确性）" if INTERPRET else f"GPU：{torch.cuda.get_device_name()}"
    print(f"分页注意力（块池 + block table，vLLM 布局）—— {mode}")
    cases = [  # (说明, 每条序列的新 token 数, 上下文长度, H, H_kv, D, block_size)
        ("解码 GQA", [1, 1, 1], [1, 7, 33], 4, 2, 16, 16),
        ("分块预填充 GQA", [3, 1, 5], [10, 1, 21], 4, 2, 64, 16),
        ("小块 + 非 2 的幂", [2, 1], [9, 14], 6, 2, 12, 5),
    ]
    if not is_smoke():
        cases.append(("长上下文解码 MQA", [1, 1], [150, 97], 8, 1, 64, 16))
    for name, q_lens, ctx_lens, h, h_kv, d, bs in cases:
        data = _random_paged_batch(q_lens, ctx_lens, n_heads=h, n_kv_heads=h_kv, head_dim=d, block_size=bs)
        ours = paged_attention(**data)
        ref = paged_attention_reference(**data)
        err = (ours - ref).abs().max().item()
        print(f"  {name:<14} Lq={q_lens} Lk={ctx_lens} H={h} H_kv={h_kv} D={d} block_size={bs}："
              f"max|ours − gather+SDPA| = {err:.1e}（容差 1e-5）")
        if err > 1e-5:
            raise SystemExit(f"分页注意力与 gather+SDPA 参考不一致（{name}）")
    if INTERPRET:
        print("解释器逐个 program 用 numpy 模拟，速度没有意义；在 GPU 上运行本文件会打印解码带宽对比。")
        return
    sizes, context_len = ((1, 8), 1024) if is_smoke() else ((1, 8, 32, 128), 4096)
    print(f"解码带宽（有效 GB/s = K/V 字节数 / 时间；bf16，H=32，H_kv=8，D=128，block_size=16，上下文 {context_len}）：")
    for row in benchmark_paged_attention(sizes, context_len):
        print(f"  B={row['batch']:>4}  ours {row['ours_gbps']:8.1f} GB/s ({row['ours_ms']:.3f} ms)   "
              f"gather+SDPA {row['reference_gbps']:8.1f} GB/s ({row['reference_ms']:.3f} ms)   "
              f"×{row['speedup']:.2f}")


if __name__ == "__main__":
    lesson_args(__doc__)
    main()
