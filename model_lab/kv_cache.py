"""KV cache 与打包批量的元数据：所有模型共用一种缓存协议。

读法（自上而下）：
1. KVCache —— 稠密缓存，预分配 (L, B, H_kv, S_max, D)，generate 用它。模型每层调 update(layer_idx, k, v)
   写入新位置并拿回整段历史，所有层写完后调一次 advance(n)。
2. AttnMetadata —— 打包（packed / varlen）批量的描述：N 个新 token 首尾相接成 input_ids (1, N)，
   cu_seqlens 给出每条序列的起止，context_lens 是每条序列连同新 token 在内的上下文长度，
   有分页缓存时再加 slot_mapping（每个新 token 写到哪个槽）与 block_tables（每条序列的上下文在哪些块里）。
   这正是 FlashAttention varlen 与 vLLM 的接口所需的全部信息。pack_sequences 把几条序列打包成这种批量。
3. PagedKVCache —— vLLM 的布局：每层一个块池 (num_blocks, block_size, H_kv, D)。新 k/v 按 slot_mapping 写入，
   每条序列的上下文按它那一行 block_tables 读出。prepare() 是一个最小的块分配器（按序列 id 记长度、
   从空闲表里取块）；真正的调度与块管理器属于推理引擎。

为什么预分配而不是每步 torch.cat：cat 每步都要把整段历史复制一遍（O(t²) 的内存流量）。
为什么要分页：稠密缓存按"最长可能长度 × 批大小"预留显存，大部分是空的；分页缓存按块（例如 16 个 token）
按需分配，不同长度的序列共用一个池，浪费只剩每条序列最后一块没填满的部分。vLLM 论文（Kwon et al. 2023）
图 2 的实测：按最长长度预留的系统只有 20.4%~38.2% 的 KV cache 显存存着真实 token，vLLM 为 96.3%。

缓存与模型不匹配（层数、头数、head_dim、dtype、设备）、元数据与 input_ids / position_ids 对不上，都在前向一开始
就报清楚的错（check_compatible、AttnMetadata.check_inputs），而不是在某一层的 index_put 里报形状错误。
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence
from dataclasses import dataclass, field
from functools import cached_property

import torch
from torch import Tensor

__all__ = ["AttnMetadata", "KVCache", "PagedKVCache", "check_cache", "check_logits_positions", "pack_sequences",
           "resolve_positions"]


def _check_against_model(what: str, got: dict, want: dict) -> None:
    """got/want：{"num_layers": …, "num_kv_heads": …, "head_dim": …, "dtype": …, "device": …} 中模型给出的那些键。"""
    bad = [f"{k}={got[k]}（模型需要 {want[k]}）" for k in want if got[k] != want[k]]
    if bad:
        raise ValueError(f"{what} 与模型不匹配：{'；'.join(bad)}；请用 model.make_kv_cache(...) 按模型的配置、"
                         "dtype 与设备分配缓存（或把模型/缓存移到同一 dtype 与设备上）")


# ---------------------------------------------------------------------------------------------------
# 1. 稠密 KV cache
# ---------------------------------------------------------------------------------------------------


class KVCache:
    """每层的 K/V 缓冲区 (L, B, H_kv, S_max, D)。`seq_len` 是已经写入的 token 数，也就是下一个 token 的位置。"""

    def __init__(self, num_layers: int, batch_size: int, num_kv_heads: int, max_seq_len: int, head_dim: int, *,
                 device: torch.device | str | None = None, dtype: torch.dtype = torch.float32) -> None:
        for name, value in (("num_layers", num_layers), ("batch_size", batch_size), ("num_kv_heads", num_kv_heads),
                            ("max_seq_len", max_seq_len), ("head_dim", head_dim)):
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"KVCache 的 {name}={value!r} 不合法：必须是正整数")
        shape = (num_layers, batch_size, num_kv_heads, max_seq_len, head_dim)
        self.k = torch.zeros(shape, device=device, dtype=dtype)
        self.v = torch.zeros(shape, device=device, dtype=dtype)
        self.num_layers, self.batch_size, self.num_kv_heads = num_layers, batch_size, num_kv_heads
        self.max_seq_len, self.head_dim = max_seq_len, head_dim
        self.seq_len = 0

    def check_compatible(self, *, num_layers: int, num_kv_heads: int, head_dim: int, dtype: torch.dtype,
                         device: torch.device, batch_size: int, new_tokens: int) -> None:
        """前向开始前由模型调用：形状、dtype、设备、批大小与剩余容量都对得上才往下算。"""
        got = dict(num_layers=self.num_layers, num_kv_heads=self.num_kv_heads, head_dim=self.head_dim,
                   dtype=self.k.dtype, device=self.k.device)
        _check_against_model("KVCache", got, dict(num_layers=num_layers, num_kv_heads=num_kv_heads,
                                                  head_dim=head_dim, dtype=dtype, device=device))
        if batch_size != self.batch_size:
            raise ValueError(f"kv_cache 的 batch_size={self.batch_size} 与 input_ids 的 B={batch_size} 不一致；"
                             "每个批量用自己的 make_kv_cache(batch_size, max_seq_len)")
        if self.seq_len + new_tokens > self.max_seq_len:
            raise ValueError(f"kv_cache 容量 {self.max_seq_len}（max_seq_len={self.max_seq_len}）不够：已有 {self.seq_len}，再写 {new_tokens}；"
                             "用 make_kv_cache(batch_size, max_seq_len) 分配更大的缓存（max_seq_len 要更大）")

    def update(self, layer_idx: int, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
        """写入新的 k/v (B, H_kv, T, D)，返回这一层到目前为止的全部 K/V：(B, H_kv, seq_len+T, D)。"""
        start, end = self.seq_len, self.seq_len + k.size(2)
        self.k[layer_idx, :, :, start:end] = k
        self.v[layer_idx, :, :, start:end] = v
        return self.k[layer_idx, :, :, :end], self.v[layer_idx, :, :, :end]

    def advance(self, n: int) -> None:
        """所有层都写完之后由模型调用一次：位置前进 n。"""
        self.seq_len += n

    def reset(self) -> None:
        self.seq_len = 0


# ---------------------------------------------------------------------------------------------------
# 2. 打包批量的元数据
# ---------------------------------------------------------------------------------------------------


def _int_vector(name: str, x: Tensor, length: int | None, dtype: torch.dtype) -> Tensor:
    if not isinstance(x, Tensor) or x.dim() != 1 or x.dtype.is_floating_point or x.dtype == torch.bool:
        desc = f"{tuple(x.shape)} {x.dtype}" if isinstance(x, Tensor) else type(x).__name__
        raise ValueError(f"AttnMetadata.{name} 应为一维整数张量，收到 {desc}")
    if length is not None and x.numel() != length:
        raise ValueError(f"AttnMetadata.{name} 的长度是 {x.numel()}，应为 {length}")
    return x.to(dtype)


@dataclass
class AttnMetadata:
    """打包批量（B 条序列、共 N 个新 token，input_ids 形状 (1, N)）的注意力元数据。

    cu_seqlens：(B+1,) int32，cu_seqlens[b]..cu_seqlens[b+1] 是第 b 条序列的新 token 在扁平批量里的区间（首项 0）。
    context_lens：(B,) int32，第 b 条序列的上下文长度，含本次的新 token（= 缓存里已有的 + 新的）。
        没有缓存时必须等于新 token 数。新 token 的位置是 context_len - new_len .. context_len - 1。
    slot_mapping：(N,) int64，有 PagedKVCache 时第 i 个新 token 的 k/v 写到块池的第几个槽（块号 * block_size + 偏移）。
    block_tables：(B, max_blocks) int32，有 PagedKVCache 时第 b 条序列的第 j 个块是块池里的哪一块（多余的列随意填）。
    构造时做一次一致性检查，并把 num_tokens / max_seqlen_q / max_seqlen_k 读成 Python 整数
    （varlen 内核要它们；只读一次，不在每层同步）。
    """

    cu_seqlens: Tensor
    context_lens: Tensor
    slot_mapping: Tensor | None = None
    block_tables: Tensor | None = None
    num_tokens: int = field(init=False)
    max_seqlen_q: int = field(init=False)
    max_seqlen_k: int = field(init=False)

    def __post_init__(self) -> None:
        self.cu_seqlens = _int_vector("cu_seqlens", self.cu_seqlens, None, torch.int32)
        b = self.cu_seqlens.numel() - 1
        if b < 1:
            raise ValueError("AttnMetadata.cu_seqlens 至少要有两项 [0, N]：一个打包批量至少含一条序列")
        self.context_lens = _int_vector("context_lens", self.context_lens, b, torch.int32)
        cu, ctx = self.cu_seqlens.tolist(), self.context_lens.tolist()
        new_lens = [hi - lo for lo, hi in zip(cu, cu[1:])]
        if cu[0] != 0 or min(new_lens) < 1:
            raise ValueError(f"AttnMetadata.cu_seqlens={cu} 不合法：必须从 0 开始、严格递增（每条序列至少 1 个新 token）")
        if any(c < n for c, n in zip(ctx, new_lens)):
            raise ValueError(f"AttnMetadata.context_lens={ctx} 小于各序列的新 token 数 {new_lens}："
                             "context_lens 包含本次的新 token")
        self.num_tokens, self.max_seqlen_q, self.max_seqlen_k = cu[-1], max(new_lens), max(ctx)
        if (self.slot_mapping is None) != (self.block_tables is None):
            raise ValueError("AttnMetadata 的 slot_mapping 与 block_tables 要么都给（用 PagedKVCache），要么都不给")
        if self.slot_mapping is not None:
            self.slot_mapping = _int_vector("slot_mapping", self.slot_mapping, self.num_tokens, torch.int64)
            if not isinstance(self.block_tables, Tensor) or self.block_tables.dim() != 2 \
                    or self.block_tables.size(0) != b or self.block_tables.dtype.is_floating_point:
                raise ValueError(f"AttnMetadata.block_tables 应为 ({b}, max_blocks) 的整数张量，"
                                 f"收到 {getattr(self.block_tables, 'shape', self.block_tables)}")
            self.block_tables = self.block_tables.to(torch.int32)
        elif ctx != new_lens:
            raise ValueError(f"没有分页缓存时 context_lens（{ctx}）必须等于每条序列的新 token 数（{new_lens}）："
                             "有历史上下文的序列要配 PagedKVCache 与 slot_mapping / block_tables")

    @classmethod
    def from_lengths(cls, lengths: Sequence[int], device: torch.device | str | None = None) -> AttnMetadata:
        """没有缓存的打包批量（训练、SFT、整段预填充）：每条序列的全部 token 都是新的。"""
        lengths = [int(n) for n in lengths]
        cu = torch.tensor([0, *lengths], device=device).cumsum(0)
        return cls(cu_seqlens=cu, context_lens=torch.tensor(lengths, device=device))

    # ---- 由元数据推出的量（第一次用到时算，之后各层共用） ----
    @cached_property
    def new_lens(self) -> Tensor:
        return (self.cu_seqlens[1:] - self.cu_seqlens[:-1]).long()  # (B,)

    @cached_property
    def seq_idx(self) -> Tensor:
        """(N,) 每个新 token 属于第几条序列。"""
        return torch.repeat_interleave(torch.arange(self.new_lens.numel(), device=self.cu_seqlens.device),
                                       self.new_lens, output_size=self.num_tokens)

    @cached_property
    def position_ids(self) -> Tensor:
        """(1, N) 每个新 token 在自己序列里的位置：context_len - new_len + i。"""
        start = (self.context_lens.long() - self.new_lens)[self.seq_idx]  # (N,)
        offset = torch.arange(self.num_tokens, device=self.cu_seqlens.device) - self.cu_seqlens.long()[self.seq_idx]
        return (start + offset)[None]

    @cached_property
    def last_token_indices(self) -> Tensor:
        """(B,) 每条序列最后一个新 token 在扁平批量里的下标：当作 logits_positions 传给模型，只为它们算 lm_head。"""
        return self.cu_seqlens[1:].long() - 1

    @cached_property
    def dense_mask(self) -> Tensor:
        """(N, S) bool 的分块对角因果掩码，S = Σ context_lens（没有缓存时 S = N）：
        query 与 key 属于同一条序列，且 key 的位置不晚于 query 的位置。每个 query 至少能看见它自己，不需要 NaN 保护。"""
        ctx = self.context_lens.long()
        dev = ctx.device
        key_seq = torch.repeat_interleave(torch.arange(ctx.numel(), device=dev), ctx)  # (S,)
        key_start = torch.cumsum(ctx, 0) - ctx  # (B,) 每条序列的上下文在 S 里的起点
        key_pos = torch.arange(key_seq.numel(), device=dev) - key_start[key_seq]  # (S,)
        q_pos = self.position_ids[0]  # (N,)
        return (self.seq_idx[:, None] == key_seq[None, :]) & (key_pos[None, :] <= q_pos[:, None])

    def context_slots(self, block_size: int) -> Tensor:
        """(S,) 每条序列的上下文依次在块池（摊平成 num_blocks * block_size 个槽）里的槽号，与 dense_mask 的列对应。"""
        cached = self.__dict__.setdefault("_context_slots", {})
        if block_size not in cached:
            ctx = self.context_lens.long()
            dev = ctx.device
            seq = torch.repeat_interleave(torch.arange(ctx.numel(), device=dev), ctx)  # (S,)
            pos = torch.arange(seq.numel(), device=dev) - (torch.cumsum(ctx, 0) - ctx)[seq]  # (S,)
            blocks = self.block_tables.long()[seq, pos // block_size]
            cached[block_size] = blocks * block_size + pos % block_size
        return cached[block_size]

    def check_inputs(self, input_ids: Tensor, position_ids: Tensor | None) -> Tensor:
        """检查 input_ids (1, N) 与可选的 position_ids (1, N) 是否与元数据一致，返回要用的 position_ids (1, N)。"""
        if input_ids.size(0) != 1 or input_ids.size(1) != self.num_tokens:
            raise ValueError(f"打包批量的 input_ids 应为 (1, N) = (1, {self.num_tokens})（N = cu_seqlens[-1]），"
                             f"收到 {tuple(input_ids.shape)}；把各序列首尾相接成一行（pack_sequences）")
        if input_ids.device != self.cu_seqlens.device:
            raise ValueError(f"attn_metadata 在 {self.cu_seqlens.device} 上，input_ids 在 {input_ids.device} 上；"
                             "把元数据建在模型所在的设备上")
        if position_ids is None:
            return self.position_ids
        if position_ids.dim() == 1:
            position_ids = position_ids[None]
        if tuple(position_ids.shape) != (1, self.num_tokens):
            raise ValueError(f"打包批量的 position_ids 应为 (1, {self.num_tokens})，收到 {tuple(position_ids.shape)}")
        if not torch.compiler.is_compiling() and not torch.equal(position_ids.to(self.position_ids), self.position_ids):
            bad = int((position_ids.to(self.position_ids) != self.position_ids).nonzero()[0, 1])
            raise ValueError(f"position_ids 与 attn_metadata 不一致：第 {bad} 个 token 的位置是 "
                             f"{int(position_ids[0, bad])}，按 cu_seqlens / context_lens 应为 "
                             f"{int(self.position_ids[0, bad])}（每条序列从 context_len - new_len 数起）；"
                             "不传 position_ids 就会由元数据推出")
        return position_ids


def pack_sequences(seqs: Sequence[Tensor], device: torch.device | str | None = None
                   ) -> tuple[Tensor, Tensor, AttnMetadata]:
    """几条一维 token 序列 -> (input_ids (1, N), position_ids (1, N), AttnMetadata)，序列首尾相接、互不可见。"""
    if not seqs or any(not isinstance(s, Tensor) or s.dim() != 1 or s.numel() == 0 for s in seqs):
        raise ValueError("pack_sequences 需要非空的一维 token 张量列表（每条至少 1 个 token）")
    device = seqs[0].device if device is None else device
    meta = AttnMetadata.from_lengths([s.numel() for s in seqs], device=device)
    return torch.cat(list(seqs)).to(device)[None], meta.position_ids, meta


# ---------------------------------------------------------------------------------------------------
# 3. 分页 KV cache
# ---------------------------------------------------------------------------------------------------


class PagedKVCache:
    """vLLM 布局的分页缓存：k/v 为 (L, num_blocks, block_size, H_kv, D)，每层一个块池。

    prepare(seq_ids, new_lens) 为每条序列的新 token 分配槽位并返回 AttnMetadata；之后用这份元数据跑一次前向，
    模型每层调 update(layer_idx, k, v, slot_mapping) 写入新 k/v。free(seq_id) 把结束的序列的块还回空闲表。
    """

    def __init__(self, num_layers: int, num_blocks: int, block_size: int, num_kv_heads: int, head_dim: int, *,
                 device: torch.device | str | None = None, dtype: torch.dtype = torch.float32) -> None:
        for name, value in (("num_layers", num_layers), ("num_blocks", num_blocks), ("block_size", block_size),
                            ("num_kv_heads", num_kv_heads), ("head_dim", head_dim)):
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"PagedKVCache 的 {name}={value!r} 不合法：必须是正整数")
        shape = (num_layers, num_blocks, block_size, num_kv_heads, head_dim)
        self.k = torch.zeros(shape, device=device, dtype=dtype)
        self.v = torch.zeros(shape, device=device, dtype=dtype)
        self.num_layers, self.num_blocks, self.block_size = num_layers, num_blocks, block_size
        self.num_kv_heads, self.head_dim = num_kv_heads, head_dim
        self._free = list(range(num_blocks - 1, -1, -1))  # 栈：先分配小号块（便于读测试与调试）
        self._blocks: dict[Hashable, list[int]] = {}
        self._lens: dict[Hashable, int] = {}

    @property
    def num_free_blocks(self) -> int:
        return len(self._free)

    def seq_len(self, seq_id: Hashable) -> int:
        """这条序列已经分配了槽位的 token 数（prepare 过的都算）。"""
        return self._lens.get(seq_id, 0)

    def prepare(self, seq_ids: Sequence[Hashable], new_lens: Sequence[int]) -> AttnMetadata:
        """为 seq_ids 里每条序列接下来的 new_lens[b] 个 token 分配槽位（不够就从空闲表取新块），返回这一步的元数据。

        分配是原子的：块不够时什么也不改、直接报错。返回之后这些 token 就算"已写入"，必须用这份元数据跑完前向。
        """
        if len(seq_ids) != len(new_lens) or not seq_ids:
            raise ValueError(f"seq_ids（{len(seq_ids)} 个）与 new_lens（{len(new_lens)} 个）必须一样多且非空")
        if len(set(seq_ids)) != len(seq_ids):
            raise ValueError(f"seq_ids={list(seq_ids)} 有重复：同一条序列在一个批量里只能出现一次")
        if any(not isinstance(n, int) or n < 1 for n in new_lens):
            raise ValueError(f"new_lens={list(new_lens)} 不合法：每条序列至少 1 个新 token")
        bs = self.block_size
        old = [self.seq_len(s) for s in seq_ids]
        need = [-(-(o + n) // bs) - len(self._blocks.get(s, [])) for s, o, n in zip(seq_ids, old, new_lens)]
        if sum(need) > len(self._free):
            raise ValueError(f"PagedKVCache 的块不够：这一步需要 {sum(need)} 个新块，只剩 {len(self._free)} 个空闲；"
                             "调大 num_blocks，或对已结束的序列调用 free(seq_id)")
        slots = []
        for s, o, n, k in zip(seq_ids, old, new_lens, need):
            blocks = self._blocks.setdefault(s, [])
            blocks.extend(self._free.pop() for _ in range(k))
            slots.extend(blocks[j // bs] * bs + j % bs for j in range(o, o + n))
            self._lens[s] = o + n
        width = max(len(self._blocks[s]) for s in seq_ids)
        tables = [self._blocks[s] + [0] * (width - len(self._blocks[s])) for s in seq_ids]
        dev = self.k.device
        return AttnMetadata(cu_seqlens=torch.tensor([0, *new_lens], device=dev).cumsum(0),
                            context_lens=torch.tensor([o + n for o, n in zip(old, new_lens)], device=dev),
                            slot_mapping=torch.tensor(slots, device=dev), block_tables=torch.tensor(tables, device=dev))

    def free(self, seq_id: Hashable) -> None:
        """序列结束：把它的块还回空闲表。"""
        if seq_id not in self._blocks:
            raise ValueError(f"序列 {seq_id!r} 不在缓存里（没有 prepare 过，或已经 free 过）")
        self._free.extend(reversed(self._blocks.pop(seq_id)))
        del self._lens[seq_id]

    def check_compatible(self, *, num_layers: int, num_kv_heads: int, head_dim: int, dtype: torch.dtype,
                         device: torch.device, attn_metadata: AttnMetadata | None) -> None:
        """前向开始前由模型调用：缓存与模型匹配，且元数据带着分页所需的 slot_mapping / block_tables。"""
        got = dict(num_layers=self.num_layers, num_kv_heads=self.num_kv_heads, head_dim=self.head_dim,
                   dtype=self.k.dtype, device=self.k.device)
        _check_against_model("PagedKVCache", got, dict(num_layers=num_layers, num_kv_heads=num_kv_heads,
                                                       head_dim=head_dim, dtype=dtype, device=device))
        if attn_metadata is None or attn_metadata.slot_mapping is None:
            raise ValueError("PagedKVCache 只用于打包批量：请同时传入 attn_metadata（带 slot_mapping 与 block_tables，"
                             "用 cache.prepare(seq_ids, new_lens) 生成）")
        if attn_metadata.block_tables.size(1) * self.block_size < attn_metadata.max_seqlen_k:
            raise ValueError(f"block_tables 只有 {attn_metadata.block_tables.size(1)} 列 × block_size {self.block_size}，"
                             f"放不下最长的上下文 {attn_metadata.max_seqlen_k}")

    def update(self, layer_idx: int, k: Tensor, v: Tensor, slot_mapping: Tensor) -> tuple[Tensor, Tensor]:
        """新 k/v (N, H_kv, D) 写到各自的槽，返回这一层的块池 (num_blocks, block_size, H_kv, D)。"""
        k_pool, v_pool = self.k[layer_idx], self.v[layer_idx]
        k_pool.view(-1, self.num_kv_heads, self.head_dim)[slot_mapping] = k
        v_pool.view(-1, self.num_kv_heads, self.head_dim)[slot_mapping] = v
        return k_pool, v_pool


def check_cache(kv_cache: KVCache | PagedKVCache | None, attn_metadata: AttnMetadata | None, *, batch_size: int,
                new_tokens: int, num_layers: int, num_kv_heads: int, head_dim: int, dtype: torch.dtype,
                device: torch.device) -> None:
    """模型前向的第一步：缓存的种类与批量的种类配套（KVCache ↔ (B, T) 批量，PagedKVCache ↔ 打包批量），
    且缓存的形状、dtype、设备与模型一致。"""
    if kv_cache is None:
        return
    dims = dict(num_layers=num_layers, num_kv_heads=num_kv_heads, head_dim=head_dim, dtype=dtype, device=device)
    if isinstance(kv_cache, KVCache):
        if attn_metadata is not None:
            raise ValueError("打包批量（attn_metadata）要配 PagedKVCache；KVCache 是给 (B, T) 批量逐步解码用的")
        kv_cache.check_compatible(**dims, batch_size=batch_size, new_tokens=new_tokens)
    elif isinstance(kv_cache, PagedKVCache):
        kv_cache.check_compatible(**dims, attn_metadata=attn_metadata)
    else:
        raise TypeError(f"kv_cache 应为 model_lab.KVCache 或 PagedKVCache，收到 {type(kv_cache).__name__}")


def resolve_positions(input_ids: Tensor, position_ids: Tensor | None, attention_mask: Tensor | None,
                      kv_cache: KVCache | PagedKVCache | None, attn_metadata: AttnMetadata | None
                      ) -> tuple[Tensor, int, str]:
    """模型 forward 的第二步（check_cache 之后）：两种批量的位置编号，返回 (position_ids, 要核对的序列长度, 它的说明)。

    打包批量：position_ids 由元数据推出（给了就必须一致），不接受 attention_mask，长度 = 最长的上下文。
    (B, T) 批量：位置默认接在稠密缓存的前缀之后（start..start+T-1），attention_mask 必须是 (B, 前缀+T)。
    长度交给模型自己核对（Llama 的 max_position_embeddings、GPT-2 的 n_positions 规则不同）。
    """
    if attn_metadata is not None:
        if attention_mask is not None:
            raise ValueError("打包批量不用 attention_mask：序列边界与可见范围由 attn_metadata 给出")
        return attn_metadata.check_inputs(input_ids, position_ids), attn_metadata.max_seqlen_k, "打包批量里最长的上下文"
    b, t = input_ids.shape
    start = kv_cache.seq_len if kv_cache is not None else 0  # check_cache 已保证这里只可能是 KVCache
    if attention_mask is not None and tuple(attention_mask.shape) != (b, start + t):
        raise ValueError(f"attention_mask 形状应为 (B, 前缀+T) = ({b}, {start + t})（1 = 真实 token，0 = padding），"
                         f"实际 {tuple(attention_mask.shape)}")
    if position_ids is None:
        position_ids = torch.arange(start, start + t, device=input_ids.device)[None]  # (1, T)
    elif position_ids.dim() == 1:
        position_ids = position_ids[None]
    return position_ids, start + t, (f"前缀 {start} + " if start else "") + f"输入 {t}"


def check_logits_positions(positions: Tensor, num_tokens: int, targets: Tensor | None) -> Tensor:
    """模型 forward 的 logits_positions：(K,) 的扁平下标（摊平成 B·T 之后），只在这些位置算 lm_head。"""
    if targets is not None:
        raise ValueError("logits_positions 与 targets 不能同时给：损失需要全部位置的 logits"
                         "（不计损失的位置把 targets 设为 -100）")
    if not isinstance(positions, Tensor) or positions.dim() != 1 or positions.dtype not in (torch.int64, torch.int32):
        raise ValueError("logits_positions 应为一维整数张量（摊平成 B·T 之后的下标），例如 attn_metadata.last_token_indices")
    if not torch.compiler.is_compiling() and positions.numel() and not (
            0 <= int(positions.min()) and int(positions.max()) < num_tokens):
        raise ValueError(f"logits_positions 超出范围 [0, {num_tokens})（B·T = {num_tokens}）")
    return positions
