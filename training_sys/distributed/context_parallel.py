"""上下文并行（context parallelism, CP）：把一条长序列切给 cp 个 rank，用 ring attention 算出与整条序列完全相同的注意力。

为什么要切序列：长上下文时，激活显存随 T 线性增长（注意力分数若不用 flash 更是 T²），一张卡放不下一条序列。
MLP、RMSNorm、投影都是逐 token 的，切开后各算各的、不用通信；唯一需要"看到别人的 token"的是注意力：
每个 query 要和整条序列（因果时是它之前）的 key / value 打交道。ring attention 的办法是让 K/V 在 rank 之间转圈。

1. 在线 softmax 的合并（这一切能成立的原因）
   一行 query 对一组 key 的注意力：o = Σ_j softmax(s)_j · v_j，s_j = q·k_j · scale。把 key 分成两块 A、B，
   各自算出块内归一化的结果与对数配分函数：
       lse_A = log Σ_{j∈A} exp(s_j)，  o_A = Σ_{j∈A} exp(s_j − lse_A) · v_j      （B 同理）
   整体的配分函数 Z = Z_A + Z_B，即 lse = log(exp(lse_A) + exp(lse_B)) = logaddexp(lse_A, lse_B)；而
       o = Σ_{j∈A∪B} exp(s_j − lse) v_j = exp(lse_A − lse) · o_A + exp(lse_B − lse) · o_B
   两个权重 exp(lse_A − lse) + exp(lse_B − lse) = 1，是两块各自"占的概率质量"。logaddexp 内部先减去最大值
   （running max），所以不会上溢；这正是 flash attention 在一张卡内逐块扫 key 时用的同一个公式，只是这里的"块"在别的 rank 上。
   初值 lse = −∞、o = 0 时第一块的权重 exp(lse_B − lse_B) = 1，公式不用特判。

2. 环：每步传一块 K/V
   rank r 一直持有自己那段 q；第 s 步手里是 rank (r − s) mod cp 的 K/V 块：算完这一块、合并进 (o, lse)，
   同时把这块 K/V 用一对 isend / irecv 传给 rank r+1、从 rank r−1 收下一块（先发起通信再计算，通信藏在计算后面）。
   cp 步后每个 q 都见过了整条序列的 K/V。每步每个 rank 发出 2·B·H_kv·T_local·D 个元素，
   前向共 cp−1 步：总量与一次 all-gather K/V 相同，但任何时刻只多占一块 K/V 的显存，而不是整条序列的。

3. 因果掩码跨块
   把序列切成 2·cp 个等长小块（块长 c = T / (2·cp)），每个 rank 拿两块。q 的块 a 与 K/V 的块 b：
   b > a 全在未来 → 整块跳过，不算；b < a 全在过去 → 整块可见，不要掩码；b = a 对角块 → 块内因果掩码。
   按全局位置 pos_k ≤ pos_q 造掩码，两种切法共用同一段代码。

4. 负载均衡：为什么要 zigzag
   朴素的连续切分让 rank r 拿第 r 段（两个相邻小块 2r、2r+1）。因果时 rank r 只能看见 rank 0..r 的 K/V：
   cp 步里它有 r+1 步要算（r 个满块 + 1 个对角块），其余步空等。于是 rank 0 只算 1 块、rank cp−1 算 cp 块，
   工作量差 cp 倍；而环是同步的，每一步都要等最慢的 rank，整体就按 rank cp−1 的速度走，其他卡大半时间闲着。
   （按真正有用的分数个数算，对角块只有一半有用，差距是 (cp − ½) / ½ = 2cp − 1 倍，更糟。）
   zigzag（PyTorch 叫 head-tail）让 rank r 拿小块 r 与 2cp−1−r：一个靠前、一个靠后，"前面的少看、后面的多看"互相抵消。
   对 K/V 来自 rank src 的一步：
       src = r：对角那一步，两块 q 对两块 K/V，带掩码（2c × 2c）；
       src < r：src 的两块里只有靠前的 src 号小块在两块 q 的过去 → 整个 q 对半块 K/V（2c × c），无掩码；
       src > r：只有靠后的 q 小块 2cp−1−r 看得见 src 的两块 → 半块 q 对整块 K/V（c × 2c），无掩码。
   每个 rank 都是 4c² + (cp−1)·2c²：完全相等。`planned_work` 列出这张表，测试数实际算了多少块来核对。

5. 反向：用保存的 lse 重算，dK/dV 跟着 K/V 转一圈回到主人
   只存 q、k、v、o 和每行的 lse（不存 T×T 的概率），反向时重算 p_ij = exp(s_ij − lse_i)——用的是**全局** lse，
   所以每块算出的 p 就是整条序列 softmax 的那一部分，各块的梯度直接相加即可：
       dv_j = Σ_i p_ij dO_i，  dp_ij = dO_i·v_j，  ds_ij = p_ij (dp_ij − δ_i)，δ_i = Σ_j p_ij dp_ij = dO_i·o_i，
       dq_i = scale · Σ_j ds_ij k_j，  dk_j = scale · Σ_i ds_ij q_i
   δ_i 只要本地的 dO 和 o 就能算（这就是保存 o 的原因）。dq 留在本地累加；dK/dV 属于 K/V 的主人：
   让一个 dK/dV 累加器跟着它的 K/V 块一起转，每经过一个 rank 加上那个 rank 的贡献，转满 cp 次正好回到主人手里。
   反向通信：K/V 转 cp−1 次（可与计算重叠），dK/dV 转 cp 次（fp32 累加，等计算完才能发）。

6. GQA：k/v 只有 H_kv < H 个头时，环上传的是没有展开的 K/V（通信量省 H/H_kv 倍），到本地算块时才按
   repeat_interleave 展开（HF 的约定：第 j 个 kv 头服务 q 头 j·g .. (j+1)·g−1），dK/dV 再按组求和收回。

7. 接进训练循环（`ContextParallelStrategy`，`torchrun ... -m training_sys.pretrain --parallel cp`）
   每个 rank 抽同一个全局 batch，各取每条序列的 zigzag 两块（`split_sequence`，dim=1），position_ids = 这两块的真实位置
   （RoPE 要的是 token 在整条序列里的位置，不是本地下标）。模型的注意力在训练步内换成注册表里的 "ring" 后端
   （`ring_attention_backend(group)`：一个带着 CP 通信组的闭包，`model_lab.register_attention_backend` 注册；
   模型不 import 它），其余的层逐 token 计算，本地算就对。
   - loss 归一化：每个 rank 只有 n_r 个 target，分母是整组的 N = Σ_r n_r（`global_tokens` 在 CP 组里 all-reduce），
     rank r 的 loss = Σ_{t∈r} ℓ_t / N，整组加起来正是整条序列的平均 loss（`reduce_loss` 用 SUM，不是平均）。
   - 梯度：各 rank 的权重是同一份（像 DDP 一样的副本）。rank r 的参数梯度 = 经过本 rank 激活的那部分贡献——
     其中也包括别的 rank 的 loss 通过 ring attention 的 dK/dV 传回来的部分——所以整条序列的梯度是各 rank 梯度之**和**：
     反向之后在 CP 组里 all-reduce SUM（不除以 cp：除以 cp 的话等于把 loss 缩小了 cp 倍）。
   - 评估与样例：权重是副本，rank 0 直接在整条序列上用原来的注意力（sdpa）评估、生成，与单进程相同；
     训练步之外 attn_implementation 恢复原值。真正的长上下文（整条序列放不进一张卡）要连评估也走 ring。

与 PyTorch 对照：`torch.distributed.tensor.experimental.context_parallel` 也是 ring attention，但它只接管 CUDA 的
flash / efficient / cuDNN 注意力算子，CPU 上用不了；它的 `_HeadTailLoadBalancer` 就是这里的 zigzag 切法（测试逐个位置核对），
数值则以整条序列上的 `F.scaled_dot_product_attention`（单进程的真值）为准：输出与 dq/dk/dv 在 fp32 下误差 < 1e-5。
运行：`python training_sys/distributed/context_parallel.py`（2 个 gloo 进程；SMOKE=1 几秒）。
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn
from torch.autograd.function import once_differentiable

from training_sys.distributed.launch import DistributedError, spawn
from training_sys.strategy import SingleDevice
from utils.io import is_smoke
from utils.lesson_cli import lesson_args
from utils.torch_playground import setup_seed

__all__ = ["LAYOUTS", "RING_BACKEND", "ContextParallelStrategy", "RingWork", "chunk_ids", "merge_sequence",
           "planned_work", "ring_attention", "ring_attention_backend", "split_sequence"]

LAYOUTS = ("zigzag", "contiguous")


def _check_layout(layout: str) -> None:
    if layout not in LAYOUTS:
        raise ValueError(f"layout={layout!r} 不认识：可选 {LAYOUTS}（zigzag 因果时各 rank 工作量相同，contiguous 是朴素的连续切分）")


def _check_cp(cp: int, rank: int | None = None) -> None:
    if not isinstance(cp, int) or isinstance(cp, bool) or cp < 1:
        raise ValueError(f"cp={cp!r} 必须是正整数")
    if rank is not None and not 0 <= rank < cp:
        raise ValueError(f"rank={rank} 不在 [0, cp={cp}) 里")


def chunk_ids(rank: int, cp: int, layout: str = "zigzag") -> tuple[int, int]:
    """序列切成 2·cp 个小块后，rank 持有的两块的编号（按本地顺序）。zigzag：(r, 2cp−1−r)；contiguous：(2r, 2r+1)。"""
    _check_layout(layout)
    _check_cp(cp, rank)
    return (rank, 2 * cp - 1 - rank) if layout == "zigzag" else (2 * rank, 2 * rank + 1)


def split_sequence(x: torch.Tensor, cp: int, rank: int, layout: str = "zigzag", dim: int = 2) -> torch.Tensor:
    """从整条序列（第 dim 维长 T）取出 rank 的那一段：两个长 T/(2cp) 的小块按 `chunk_ids` 拼起来。

    位置编码也要这样切：`split_sequence(torch.arange(T), cp, rank, layout, dim=0)` 就是本地 token 的全局位置（RoPE 要用它）。
    """
    a, b = chunk_ids(rank, cp, layout)
    seq_len = x.shape[dim]
    if seq_len % (2 * cp):
        raise ValueError(f"序列长度 T={seq_len} 不能被 2·cp={2 * cp} 整除：两种切法都把序列切成 2·cp 个等长小块、每个 rank 拿两块；"
                         f"把 T pad 到 {2 * cp} 的倍数")
    chunks = x.chunk(2 * cp, dim=dim)
    return torch.cat([chunks[a], chunks[b]], dim=dim)


def merge_sequence(parts: list[torch.Tensor], layout: str = "zigzag", dim: int = 2) -> torch.Tensor:
    """`split_sequence` 的逆：parts[r] 是 rank r 的那一段，拼回整条序列。"""
    cp = len(parts)
    _check_cp(cp)
    chunks: list[torch.Tensor] = [parts[0]] * (2 * cp)
    for r, part in enumerate(parts):
        if part.shape[dim] % 2:
            raise ValueError(f"parts[{r}] 在第 {dim} 维长 {part.shape[dim]}，不是偶数：每个 rank 的一段由两个等长小块组成")
        first, second = part.chunk(2, dim=dim)
        a, b = chunk_ids(r, cp, layout)
        chunks[a], chunks[b] = first, second
    return torch.cat(chunks, dim=dim)


@dataclass
class RingWork:
    """一个 rank 实际算了多少：块数（一次 q 行 × K/V 列的矩阵乘算一块）与分数个数（每个 batch·head 的 q·k 点积数）。"""

    forward_blocks: int = 0
    forward_scores: int = 0
    backward_blocks: int = 0
    backward_scores: int = 0


def _block_plan(q_ids: tuple[int, int], kv_ids: tuple[int, int], causal: bool) -> tuple[range, range, bool] | None:
    """q 的两个小块对 K/V 的两个小块：要算哪些行（小块号）、哪些列、要不要掩码；全在未来则返回 None（跳过）。"""
    if not causal:
        return range(2), range(2), False
    visible = [[kv <= q for kv in kv_ids] for q in q_ids]
    rows = [i for i in range(2) if any(visible[i])]
    cols = [j for j in range(2) if any(visible[i][j] for i in range(2))]
    if not rows:
        return None
    # 选中的矩形里只要有一对不是"整块在过去"（在未来，或是对角块），就得按位置造掩码
    needs_mask = any(kv_ids[j] >= q_ids[i] for i in rows for j in cols)
    return range(rows[0], rows[-1] + 1), range(cols[0], cols[-1] + 1), needs_mask


def planned_work(cp: int, layout: str = "zigzag", causal: bool = True) -> list[int]:
    """每个 rank 前向要算的 c×c 小块个数（c = T/(2cp)）：连续切分时 rank r 是 4(r+1)，zigzag 时人人都是 2cp+2。"""
    _check_cp(cp)
    work = []
    for rank in range(cp):
        q_ids = chunk_ids(rank, cp, layout)
        total = 0
        for src in range(cp):
            plan = _block_plan(q_ids, chunk_ids(src, cp, layout), causal)
            if plan is not None:
                total += len(plan[0]) * len(plan[1])
        work.append(total)
    return work


def _positions(ids: tuple[int, int], sel: range, c: int, device: torch.device) -> torch.Tensor:
    return torch.cat([torch.arange(ids[i] * c, (ids[i] + 1) * c, device=device) for i in sel])


def _expand(x: torch.Tensor, groups: int) -> torch.Tensor:
    return x.repeat_interleave(groups, dim=1) if groups > 1 else x


def _reduce(dx: torch.Tensor, groups: int) -> torch.Tensor:
    return dx.unflatten(1, (-1, groups)).sum(2) if groups > 1 else dx


class _Ring:
    """环上的邻居：向 rank+1 发、从 rank−1 收（组内编号换成全局 rank 号，isend/irecv 要的是全局号）。"""

    def __init__(self, group: dist.ProcessGroup) -> None:
        self.group = group
        self.size, self.rank = dist.get_world_size(group), dist.get_rank(group)
        ranks = dist.get_process_group_ranks(group)
        self.next, self.prev = ranks[(self.rank + 1) % self.size], ranks[(self.rank - 1) % self.size]

    def shift(self, t: torch.Tensor) -> tuple[torch.Tensor, list]:
        """发起一次"发给下一个、收上一个"，立刻返回（接收缓冲, 请求）：调用方先去算，用到前再 wait。"""
        buf = torch.empty_like(t)
        # 成对的 isend/irecv；不用 batch_isend_irecv（它在 gloo 上会挂住）。isend 不阻塞，所以人人先发后收也不会死锁
        reqs = [dist.isend(t, self.next, group=self.group), dist.irecv(buf, self.prev, group=self.group)]
        return buf, reqs


def _wait(reqs: list) -> None:
    for req in reqs:
        req.wait()


class _RingAttention(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k, v, group, causal, scale, layout, work):
        ring = _Ring(group)
        groups, c = q.shape[1] // k.shape[1], q.shape[2] // 2
        q_ids = chunk_ids(ring.rank, ring.size, layout)
        qf = q.float()
        out = torch.zeros_like(qf)                                       # (B, H, T_local, D)，fp32 累加
        lse = torch.full(q.shape[:3], -math.inf, dtype=torch.float32, device=q.device)  # (B, H, T_local)
        kv = torch.stack([k, v])                                         # (2, B, H_kv, T_local, D)：一条消息传两个
        for step in range(ring.size):
            if step < ring.size - 1:
                next_kv, reqs = ring.shift(kv)                           # 先发起通信，再算这一块：通信藏在计算后面
            src = (ring.rank - step) % ring.size
            kv_ids = chunk_ids(src, ring.size, layout)
            plan = _block_plan(q_ids, kv_ids, causal)
            if plan is not None:
                rows, cols = plan[:2]
                r, s = slice(rows[0] * c, rows.stop * c), slice(cols[0] * c, cols.stop * c)
                kb, vb = (_expand(t[:, :, s].float(), groups) for t in kv)
                scores = qf[:, :, r] @ kb.transpose(-1, -2) * scale      # (B, H, rows·c, cols·c)
                if plan[2]:
                    mask = _positions(kv_ids, cols, c, q.device)[None, :] <= _positions(q_ids, rows, c, q.device)[:, None]
                    scores = scores.masked_fill(~mask, -math.inf)
                blk_lse = torch.logsumexp(scores, dim=-1)                # 块内的 log 配分函数
                blk_out = torch.exp(scores - blk_lse[..., None]) @ vb    # 块内归一化的输出
                new_lse = torch.logaddexp(lse[:, :, r], blk_lse)
                # o = e^{lse_old − lse} · o_old + e^{lse_blk − lse} · o_blk（见模块文档第 1 节）
                out[:, :, r] = (torch.exp(lse[:, :, r] - new_lse)[..., None] * out[:, :, r]
                                + torch.exp(blk_lse - new_lse)[..., None] * blk_out)
                lse[:, :, r] = new_lse
                if work is not None:
                    work.forward_blocks += 1
                    work.forward_scores += scores.shape[-2] * scores.shape[-1]
            if step < ring.size - 1:
                _wait(reqs)
                kv = next_kv
        ctx.save_for_backward(q, k, v, out, lse)
        ctx.ring, ctx.causal, ctx.scale, ctx.layout, ctx.work = ring, causal, scale, layout, work
        return out.to(q.dtype)

    @staticmethod
    @once_differentiable  # 反向里是手写的梯度公式，不再建图：二阶导要报错，而不是悄悄给出错的结果
    def backward(ctx, dout):
        q, k, v, out, lse = ctx.saved_tensors
        ring, causal, scale, work = ctx.ring, ctx.causal, ctx.scale, ctx.work
        groups, c = q.shape[1] // k.shape[1], q.shape[2] // 2
        q_ids = chunk_ids(ring.rank, ring.size, ctx.layout)
        qf, do = q.float(), dout.float()
        delta = (do * out).sum(-1)                                       # δ_i = dO_i · o_i
        dq = torch.zeros_like(qf)
        kv = torch.stack([k, v])
        dkv = torch.zeros(kv.shape, dtype=torch.float32, device=q.device)  # 跟着 kv 转的 dK/dV 累加器，起初属于自己的块
        for step in range(ring.size):
            if step < ring.size - 1:
                next_kv, reqs = ring.shift(kv)
            kv_ids = chunk_ids((ring.rank - step) % ring.size, ring.size, ctx.layout)
            plan = _block_plan(q_ids, kv_ids, causal)
            if plan is not None:
                rows, cols = plan[:2]
                r, s = slice(rows[0] * c, rows.stop * c), slice(cols[0] * c, cols.stop * c)
                kb, vb = (_expand(t[:, :, s].float(), groups) for t in kv)
                scores = qf[:, :, r] @ kb.transpose(-1, -2) * scale
                p = torch.exp(scores - lse[:, :, r, None])               # 全局 lse：p 就是整行 softmax 的这一段
                if plan[2]:
                    mask = _positions(kv_ids, cols, c, q.device)[None, :] <= _positions(q_ids, rows, c, q.device)[:, None]
                    p = p.masked_fill(~mask, 0.0)
                dp = do[:, :, r] @ vb.transpose(-1, -2)
                ds = p * (dp - delta[:, :, r, None])
                dq[:, :, r] += ds @ kb * scale
                dkv[0][:, :, s] += _reduce(ds.transpose(-1, -2) @ qf[:, :, r] * scale, groups)
                dkv[1][:, :, s] += _reduce(p.transpose(-1, -2) @ do[:, :, r], groups)
                if work is not None:
                    work.backward_blocks += 1
                    work.backward_scores += scores.shape[-2] * scores.shape[-1]
            if ring.size > 1:
                # 加完自己的贡献才能发：第 cp 次传递把累加器送回 K/V 的主人
                dkv, dkv_reqs = ring.shift(dkv)
                _wait(dkv_reqs)
            if step < ring.size - 1:
                _wait(reqs)
                kv = next_kv
        return dq.to(q.dtype), dkv[0].to(k.dtype), dkv[1].to(v.dtype), None, None, None, None, None


def ring_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, group: dist.ProcessGroup | None = None,
                   causal: bool = True, scale: float | None = None, *, layout: str = "zigzag",
                   work: RingWork | None = None) -> torch.Tensor:
    """上下文并行的注意力：q (B, H, T_local, D)、k/v (B, H_kv, T_local, D) 是本 rank 按 `split_sequence(layout)` 切出的一段。

    返回本段的输出 (B, H, T_local, D)，等于整条序列上的注意力再切出这一段；可反向（dq/dk/dv 等于整条序列注意力的梯度）。
    group 是 CP 通信组（None = 默认进程组），layout 必须与切分时一致；传入 work 则累计本 rank 实际算的块数。
    """
    for name, t in (("q", q), ("k", k), ("v", v)):
        if not isinstance(t, torch.Tensor) or t.dim() != 4:
            raise ValueError(f"{name} 必须是 (B, H, T_local, D) 的 4 维张量，得到 "
                             f"{tuple(t.shape) if isinstance(t, torch.Tensor) else type(t).__name__}")
    if not (q.is_floating_point() and k.dtype == q.dtype and v.dtype == q.dtype):
        raise TypeError(f"q/k/v 必须是同一种浮点类型，得到 {q.dtype}/{k.dtype}/{v.dtype}")
    if k.shape != v.shape:
        raise ValueError(f"k {tuple(k.shape)} 与 v {tuple(v.shape)} 形状必须相同")
    (b, h, t_local, d), (bk, hk, tk, dk) = q.shape, k.shape
    if (b, t_local, d) != (bk, tk, dk):
        raise ValueError(f"q {tuple(q.shape)} 与 k {tuple(k.shape)} 的 batch、本地序列长、head_dim 必须一致")
    if h % hk:
        raise ValueError(f"q 的头数 {h} 不能被 k/v 的头数 {hk} 整除：GQA 要求每个 kv 头服务整数个 q 头")
    if t_local % 2:
        raise ValueError(f"本地序列长 T_local={t_local} 不是偶数：序列要切成 2·cp 个小块、每个 rank 拿两块，"
                         "先用 split_sequence 切（它要求 T 被 2·cp 整除）")
    _check_layout(layout)
    if work is not None and not isinstance(work, RingWork):
        raise TypeError(f"work 必须是 RingWork 或 None，得到 {type(work).__name__}")
    if not dist.is_initialized():
        raise RuntimeError("ring_attention 需要先建好进程组：课程 / 测试用 training_sys.distributed.spawn，训练用 torchrun + init_from_env")
    group = group if group is not None else dist.group.WORLD
    scale = 1.0 / math.sqrt(d) if scale is None else float(scale)
    return _RingAttention.apply(q, k, v, group, causal, scale, layout, work)


# ----------------------------------------------------------------------------------------------------------------
# 训练循环的策略：--parallel cp

RING_BACKEND = "ring"  # 注册表里的名字：训练步内模型的 attn_implementation 换成它


def ring_attention_backend(group: dist.ProcessGroup | None = None, layout: str = "zigzag") -> Callable[..., torch.Tensor]:
    """把 ring_attention 包成注意力后端的稠密接口 fn(q, k, v, *, is_causal, attn_mask, scale, dropout_p)；CP 组由闭包带进去。

    模型在没有 KV cache、没有 padding 时调用它，is_causal=True（T_local > 1）；ring attention 的因果按**全局位置**判断，
    不用掩码张量。带 attn_mask（padding / KV cache 前缀）或 dropout 的调用不属于上下文并行的训练，直接报错而不是算错。
    """
    _check_layout(layout)

    def ring_backend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, is_causal: bool,
                     attn_mask: torch.Tensor | None, scale: float, dropout_p: float = 0.0) -> torch.Tensor:
        if attn_mask is not None:
            raise ValueError("ring 注意力后端不接受 attn_mask（padding 或 KV cache 前缀）：上下文并行只用于没有 padding 的训练步；"
                             "评估与生成请用 attn_implementation=\"sdpa\"")
        if dropout_p:
            raise ValueError(f"ring 注意力后端不支持 dropout（dropout_p={dropout_p}）：各 rank 的随机掩码无法与单进程对齐")
        return ring_attention(q, k, v, group, causal=is_causal, scale=scale, layout=layout)

    return ring_backend


class ContextParallelStrategy(SingleDevice):
    """纯上下文并行的 TrainStrategy：world_size 个 rank 组成一个 CP 组，各持一份完整权重，每条序列切给全组（见模块说明第 7 点）。"""

    def __init__(self, layout: str = "zigzag") -> None:
        _check_layout(layout)
        if not dist.is_initialized():
            raise DistributedError("ContextParallelStrategy 需要先建好默认进程组：torchrun 下调用 "
                                   "training_sys.distributed.init_from_env()，课程 / 测试里用 training_sys.distributed.spawn(...) 启动")
        self.layout = layout
        self.group = dist.group.WORLD
        self.rank, self.cp = dist.get_rank(), dist.get_world_size()
        self.device = torch.device("cpu")
        self._config = None
        self._params: list[nn.Parameter] = []

    @property
    def is_main_process(self) -> bool:
        return self.rank == 0

    def prepare_model(self, model: nn.Module) -> nn.Module:
        """广播 rank 0 的初始权重（各 rank 是副本），把 ring 后端注册进模型的注意力注册表。"""
        from model_lab import register_attention_backend
        from training_sys.distributed.ddp import broadcast_parameters

        config = getattr(model, "config", None)
        if not isinstance(getattr(config, "attn_implementation", None), str):
            raise TypeError(f"--parallel cp 要换掉模型的注意力：模型需要 config.attn_implementation（model_lab 的 Llama / GPT2），"
                            f"{type(model).__name__} 没有")
        broadcast_parameters(model)
        register_attention_backend(RING_BACKEND, ring_attention_backend(self.group, self.layout))
        self._config, self._params = config, [p for p in model.parameters() if p.requires_grad]
        self.device = next(model.parameters()).device
        return model

    def local_batch(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """整条序列的 (x, y)（B, T）→ 本 rank 的 (x, y, position_ids)：每条序列的 zigzag 两块与它们的真实位置。"""
        t = x.size(1)
        if t % (2 * self.cp):
            raise ValueError(f"--parallel cp：序列长度 block_size={t} 不能被 2·cp = {2 * self.cp} 整除"
                             f"（每条序列切成 2·cp 个等长小块，每个 rank 拿两块）；把 --block-size 改成 {2 * self.cp} 的倍数")
        positions = split_sequence(torch.arange(t, device=x.device), self.cp, self.rank, self.layout, dim=0)
        return (split_sequence(x, self.cp, self.rank, self.layout, dim=1),
                split_sequence(y, self.cp, self.rank, self.layout, dim=1), positions)

    def forward_backward(self, model: nn.Module, micro_batches: Sequence[tuple[torch.Tensor, torch.Tensor]], *,
                         autocast: Callable[[], contextlib.AbstractContextManager] = contextlib.nullcontext,
                         sync_model: nn.Module | None = None) -> torch.Tensor:
        """切序列 → 训练步内换上 ring 注意力 → 同一个 accumulate_step（global_tokens 在组内求和）→ 梯度在组内求和。"""
        from training_sys.pretrain import accumulate_step

        if self._config is None:
            raise RuntimeError("ContextParallelStrategy 还没有 prepare_model：先调用 prepare_model(model)")
        local = [self.local_batch(x, y) for x, y in micro_batches]
        positions = local[0][2]  # 每个 micro-batch 的 T 相同，位置也相同

        def forward(x: torch.Tensor, y: torch.Tensor):
            return model(x, y, position_ids=positions)

        original = self._config.attn_implementation
        self._config.attn_implementation = RING_BACKEND
        try:
            loss = accumulate_step(forward, [(x, y) for x, y, _ in local], self, autocast, sync_model=sync_model)
        finally:
            self._config.attn_implementation = original  # 评估、生成、保存都用原来的注意力
        self._sum_gradients()
        return loss

    @torch.no_grad()
    def _sum_gradients(self) -> None:
        """各 rank 的梯度拼成一块 all-reduce SUM 再拆回去：一次通信，而不是每个参数一次（见 ddp.py 的延迟分析）。"""
        grads = [p.grad for p in self._params if p.grad is not None]
        if self.cp == 1 or not grads:
            return
        flat = torch.cat([g.reshape(-1) for g in grads])
        dist.all_reduce(flat, group=self.group)
        offset = 0
        for g in grads:
            g.copy_(flat[offset:offset + g.numel()].view_as(g))
            offset += g.numel()

    def global_tokens(self, local_tokens: int) -> int:
        t = torch.tensor([local_tokens], dtype=torch.int64, device=self.device)
        dist.all_reduce(t, group=self.group)
        return int(t.item())

    def reduce_loss(self, loss: torch.Tensor) -> float:
        t = loss.detach().float().reshape(1).to(self.device)
        dist.all_reduce(t, group=self.group)  # SUM：每个 rank 的 loss 已经除以整组的 N
        return t.item()

    def stop_requested(self, local: bool) -> bool:
        t = torch.tensor([int(bool(local))], dtype=torch.int64, device=self.device)
        dist.all_reduce(t, op=dist.ReduceOp.MAX, group=self.group)
        return bool(t.item())


# ----------------------------------------------------------------------------------------------------------------
# 课程脚本：2 个 gloo 进程，与整条序列上的 SDPA 对照，并列出连续切分与 zigzag 的每 rank 工作量


def _demo_rank(rank: int, world: int, sizes: dict[str, int]) -> list[dict]:
    setup_seed(0)  # 每个 rank 造同一组整条序列，自己算真值
    b, h, hk, t, d = (sizes[n] for n in ("B", "H", "H_kv", "T", "D"))
    q, k, v, dout = (torch.randn(b, hh, t, d) for hh in (h, hk, hk, h))
    rows = []
    for layout in LAYOUTS:
        for causal in (True, False):
            qf, kf, vf = (x.clone().requires_grad_() for x in (q, k, v))
            ref = F.scaled_dot_product_attention(qf, kf, vf, is_causal=causal, enable_gqa=True)
            ref.backward(dout)
            ql, kl, vl = (split_sequence(x, world, rank, layout).requires_grad_() for x in (q, k, v))
            work = RingWork()
            out = ring_attention(ql, kl, vl, causal=causal, layout=layout, work=work)
            out.backward(split_sequence(dout, world, rank, layout))
            err = max((a - split_sequence(r, world, rank, layout)).abs().max().item()
                      for a, r in ((out, ref), (ql.grad, qf.grad), (kl.grad, kf.grad), (vl.grad, vf.grad)))
            rows.append({"layout": layout, "causal": causal, "err": err, "work": work})
    return rows


def main() -> None:
    sizes = {"B": 1, "H": 4, "H_kv": 2, "T": 64, "D": 16} if is_smoke() else {"B": 2, "H": 8, "H_kv": 2, "T": 1024, "D": 64}
    cp = 2
    per_rank = spawn(_demo_rank, cp, sizes, timeout_s=120)
    print(f"ring attention，cp={cp}，B={sizes['B']} H={sizes['H']} H_kv={sizes['H_kv']} T={sizes['T']} D={sizes['D']}（fp32）")
    print("与整条序列上的 F.scaled_dot_product_attention 对照（输出与 dq/dk/dv 的最大误差，取各 rank 最大；"
          "容差 1e-5：分块合并只改变 fp32 的求和次序）：")
    for i, row in enumerate(per_rank[0]):
        err = max(ranks[i]["err"] for ranks in per_rank)
        print(f"  {row['layout']:<10} causal={row['causal']!s:<5} 最大误差 {err:.2e}  {'OK' if err < 1e-5 else '不一致！'}")
    kv_bytes = 2 * sizes["B"] * sizes["H_kv"] * (sizes["T"] // cp) * sizes["D"] * 4
    print(f"通信：每步每个 rank 发一块 K/V = {kv_bytes / 1024:.0f} KiB（H_kv={sizes['H_kv']}，比展开成 H 个头省 "
          f"{sizes['H'] // sizes['H_kv']} 倍）；前向 cp−1 = {cp - 1} 步，反向 K/V {cp - 1} 步 + dK/dV（fp32）{cp} 步")
    c2 = (sizes["T"] // (2 * cp)) ** 2
    print("因果时每个 rank 实测算了多少（前向；单位：c×c 小块，c = T/(2cp)）：")
    for i, row in enumerate(per_rank[0]):
        if row["causal"]:
            works = [ranks[i]["work"].forward_scores // c2 for ranks in per_rank]
            plan = planned_work(cp, row["layout"])
            print(f"  {row['layout']:<10} " + "  ".join(f"rank {r}: {w}" for r, w in enumerate(works))
                  + f"（按计划 {plan}）")
    print("按计划推算更大的 cp（连续切分 rank r 是 4(r+1)，最慢比最快多 cp 倍；zigzag 人人 2cp+2）：")
    for n in (4, 8):
        for layout in ("contiguous", "zigzag"):
            w = planned_work(n, layout)
            print(f"  cp={n} {layout:<10} {w}  最慢/最快 = {max(w) / min(w):.1f}")
    if any(ranks[i]["err"] >= 1e-5 for ranks in per_rank for i in range(len(ranks))):
        raise SystemExit("ring attention 与整条序列的注意力不一致")


if __name__ == "__main__":
    lesson_args(__doc__)
    main()
