"""张量并行（Megatron-LM）：把每一层的矩阵切到 tp 个 rank 上，一起算同一个 batch——再加序列并行。

运行：python training_sys/distributed/tensor_parallel.py   （2 个 gloo 进程；SMOKE=1 几秒跑完）

数据并行里每个 rank 都存一份完整模型；模型大到一张卡放不下时，就得把**每个矩阵**切开。
Megatron-LM（Shoeybi et al. 2019）的切法只用两种线性层和一对"共轭"的通信算子：

1. 列并行 ColumnParallelLinear：Y = X·Aᵀ，A (out, in) 按**输出行**切成 A_r，rank r 算 Y_r = X·A_rᵀ（Y 的第 r 段列）。
   X 必须是完整的（每个 rank 一份相同的 X），不需要通信；需要完整的 Y 时再沿最后一维 all-gather。
2. 行并行 RowParallelLinear：Z = Y·Bᵀ，B (out, in) 按**输入列**切成 B_r，恰好接上列并行的输出 Y_r：
   Z = Σ_r Y_r·B_rᵀ——每个 rank 算一个部分和，all-reduce(SUM) 之后人人都有完整的 Z。
   bias 在 all-reduce **之后**加一次：每个 rank 都加的话就被加了 tp 次。
3. 两者串起来：MLP 的 down(act(gate(x)) * up(x))。gate、up 按同样的行切（列并行），act 与逐元素乘只作用于
   本 rank 的那几列，不需要通信；down 行并行，最后一次 all-reduce。为什么第一层不按输入切？那样 gate(x) 在激活之前
   就是部分和，而 act(a + b) ≠ act(a) + act(b)，激活之前就得通信一次。所以一个 MLP 前向只有 **1 次** all-reduce。
4. 注意力按**整头**切：各头互不相关，q/k/v 列并行（rank r 拿第 r 段头），o_proj 行并行（输入列就是各头的输出拼接）。
   GQA 里 q 头 j 用 kv 头 j // g（g = H / H_kv），rank r 的 q 头 [r·H/tp, (r+1)·H/tp) 用的恰好是 kv 头
   [r·H_kv/tp, (r+1)·H_kv/tp)——前提是 H_kv % tp == 0（否则一个 kv 头要被两个 rank 共享，这里直接报错）。
   Llama 的 Attention 在 project_qkv 里把 q/k 的特征按头交错（RoPE 用）；交错发生在每个头内部，按整头切的
   q_proj / k_proj 仍是 HF 布局里连续的一段行，checkpoint 因而始终是 HF 布局，切分只是取 chunk。

共轭的 f 与 g（为什么反向是另一种通信）：
- f = copy_to_tensor_parallel_region：前向恒等（X 本来就每个 rank 一份）；反向 all-reduce。因为 X 被 tp 个 rank 的
  不同分支使用，L 对 X 的梯度是各分支之和：∂L/∂X = Σ_r ∂L/∂X|_{分支 r}，每个 rank 只算了自己那一项。
- g = reduce_from_tensor_parallel_region：前向 all-reduce（把部分和加起来）；反向恒等。输出 Z 每个 rank 一份完整的，
  之后的计算在每个 rank 上重复，每个 rank 都已拿到完整的 ∂L/∂Z，而 ∂Z/∂(部分和_r) = I。
  一个 Transformer 层：前向 2 次 g（注意力、MLP 各一次），反向 2 次 f——每层每步 4 次 all-reduce，
  每次 B·T·C 个元素；ring all-reduce 每个 rank 收发 2·(tp-1)/tp 倍。这是最重的通信，所以 tp 放在网格最里层（同一台机器）。

词表并行：
- VocabParallelEmbedding：嵌入表按词表行切，rank r 管 [r·V/tp, (r+1)·V/tp)。不在本段的 token 查第 0 行再置 0，
  all-reduce 之后每个 token 恰好拿到拥有它的那个 rank 查出的向量（其余 rank 贡献 0，加法是精确的）。
- 词表并行的交叉熵：lm_head 列并行，每个 rank 只有 (N, V/tp) 的 logits。ℓ = log Σ_v exp(z_v − m) − (z_t − m)，
  需要的全局量只有三个 N 维向量：m = max_v z_v（all-reduce MAX），z_t（拥有目标的那个 rank 取出，其余为 0，SUM），
  Σ exp（SUM；后两个拼成一次 all-reduce）。通信 3·N 个数，而 gather 完整 logits 要 N·V 个——V = 128k 时差四万倍。
  反向 ∂ℓ/∂z_v = softmax_v − [v = t]，每个 rank 用自己那段 softmax 就能算，不需要通信。

序列并行（Korthikanti et al. 2022）：RMSNorm、残差相加这些逐 token 的操作在 TP 里是每个 rank 重复算、重复存的，
激活显存不随 tp 下降。把层与层之间的激活沿**序列**切开（rank r 存第 r 段 token）：
- 列并行之前 all-gather 序列（拿到完整的 T 个 token 才能做注意力）；反向是 reduce-scatter。
- 行并行之后把 all-reduce 换成 reduce-scatter：每个 rank 只要自己那段 token 的和；反向是 all-gather。
all-reduce = reduce-scatter + all-gather，所以通信量与 TP 完全相同，而 norm 的计算与激活显存都除以 tp。
代价：norm 的权重 γ 是复制的，但每个 rank 只看到 1/tp 的 token，它的梯度是部分和——这里把 γ 也过一次 f
（前向恒等、反向 all-reduce），梯度在反向里就加齐了（Megatron 在步末单独 all-reduce 这些梯度，效果相同）。

dp × tp（`TensorParallelStrategy(tp_size=k)`）：world 个 rank 排成 (world/k) × k 的网格（mesh.py，tp 在最里层，
同一台机器上），模型在每个 tp 组里切分，同一个 tp 坐标的 rank（一个 dp 组）持有同一片切片、看不同的数据。
为什么梯度只需在 dp 组里平均：tp 组内的 f / g 已经让每个 rank 的切片梯度 = 完整梯度的那一片（对本组那份数据）；
把全局 batch 的 loss 写成 L = (1/dp) Σ_d L_d，∇L 的第 r 片 = (1/dp) Σ_d (∇L_d 的第 r 片)——正是 tp 坐标为 r 的那一列
rank 之间的 all-reduce 平均。token 归一化照旧（accumulate_step）：分母 = 全体 dp 组的有效 token 数 / dp，
global_tokens 只在 dp 组里求和（tp 组内的 rank 数的是同一批 token，在 world 上求和会重复计 tp 次）。
通信：每层 4 次 tp all-reduce（激活，B·T·C）+ 每步一次 dp all-reduce（梯度，参数量 / tp）——前者频繁而小，
放在最快的链路上；后者每步一次，可以跨机器。

与 PyTorch 的对照：DTensor 的 `parallelize_module(mlp, mesh, {"gate_proj": ColwiseParallel(), ...,
"down_proj": RowwiseParallel()})` 是同一套切法（测试逐元素核对）；序列并行对应 `SequenceParallel` 与
`PrepareModuleInput`。`TensorParallelStrategy` 把这些接进 training_sys.pretrain.train 的钩子；
checkpoint 始终是完整的 HF 权重（full_state 先 all-gather），任何策略都能接着训练。
"""

from __future__ import annotations

import contextlib
import importlib
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor, nn

from model_lab import Llama
from training_sys.distributed.ddp import bucket_assignment
from training_sys.distributed.launch import spawn
from training_sys.distributed.mesh import ParallelMesh
from training_sys.strategy import SingleDevice
from utils.io import is_smoke
from utils.lesson_cli import lesson_args

__all__ = ["ColumnParallelLinear", "ParallelAttention", "ParallelMLP", "RowParallelLinear", "SequenceParallelRMSNorm",
           "TensorParallelLlama", "TensorParallelStrategy", "VocabParallelEmbedding", "all_reduce_gradients",
           "apply_tensor_parallel",
           "communication_log", "copy_to_tensor_parallel_region", "gather_from_sequence_parallel_region",
           "gather_from_tensor_parallel_region", "reduce_from_tensor_parallel_region",
           "reduce_scatter_to_sequence_parallel_region", "scatter_to_tensor_parallel_region", "tensor_parallel_dims",
           "vocab_parallel_cross_entropy"]

_llama = importlib.import_module("model_lab.02_architectures.llama")
SEQ_DIM = 1  # 激活是 (B, T, C)：序列并行沿 T 切
IGNORE_INDEX = -100

# ---------------------------------------------------------------------------------------------------
# 1. 通信原语与共轭的 autograd 算子
# ---------------------------------------------------------------------------------------------------

_COMM_LOG: list[tuple[str, int]] | None = None


@contextlib.contextmanager
def communication_log() -> Iterator[list[tuple[str, int]]]:
    """记录期间本 rank 发起的每次集合通信：[(种类, 完整张量的元素个数), ...]。课程与测试用它数"一个 MLP 几次 all-reduce"。
    种类：all_reduce / all_gather / reduce_scatter（tp 组里的激活与切片），grad_all_reduce（dp 组里的梯度同步，每桶一次）。"""
    global _COMM_LOG
    previous, _COMM_LOG = _COMM_LOG, []
    try:
        yield _COMM_LOG
    finally:
        _COMM_LOG = previous


def _record(kind: str, t: Tensor, parts: int = 1) -> None:
    """记下完整张量的元素数（all-gather 的输入只是其中 1/parts）：ring 算法下每个 rank 收发的数据量，
    all-reduce 是 2·(tp-1)/tp 倍，reduce-scatter 与 all-gather 各是 (tp-1)/tp 倍。"""
    if _COMM_LOG is not None:
        _COMM_LOG.append((kind, t.numel() * parts))


def _all_reduce(t: Tensor, group: dist.ProcessGroup, op: dist.ReduceOp = dist.ReduceOp.SUM) -> Tensor:
    """原地 all-reduce 并返回 t（调用方保证 t 是自己的新张量）。"""
    _record("all_reduce", t)
    dist.all_reduce(t, op=op, group=group)
    return t


def _all_gather(t: Tensor, dim: int, group: dist.ProcessGroup) -> Tensor:
    """各 rank 的 t 沿 dim 按 rank 顺序拼起来。"""
    world = dist.get_world_size(group)
    if world == 1:
        return t
    t = t.contiguous()
    parts = [torch.empty_like(t) for _ in range(world)]
    _record("all_gather", t, world)
    dist.all_gather(parts, t, group=group)
    return torch.cat(parts, dim=dim)


def _split(t: Tensor, dim: int, group: dist.ProcessGroup) -> Tensor:
    """沿 dim 均分成 world 段，取本 rank 那一段（不通信）。"""
    world = dist.get_world_size(group)
    if t.size(dim) % world:
        raise ValueError(f"第 {dim} 维长 {t.size(dim)}，不能被张量并行的 {world} 个 rank 均分")
    return t.chunk(world, dim)[dist.get_rank(group)].contiguous()


def _reduce_scatter(t: Tensor, dim: int, group: dist.ProcessGroup) -> Tensor:
    """先按元素求和、再沿 dim 切开，本 rank 只拿自己那一段：通信量是 all-reduce 的一半。"""
    world = dist.get_world_size(group)
    if world == 1:
        return t
    if t.size(dim) % world:
        raise ValueError(f"第 {dim} 维长 {t.size(dim)}，不能被张量并行的 {world} 个 rank 均分")
    parts = [c.contiguous() for c in t.chunk(world, dim)]
    out = torch.empty_like(parts[0])
    _record("reduce_scatter", t)
    dist.reduce_scatter(out, parts, group=group)
    return out


class _CopyToTP(torch.autograd.Function):
    """f：前向恒等，反向 all-reduce。"""

    @staticmethod
    def forward(ctx, x: Tensor, group: dist.ProcessGroup) -> Tensor:
        ctx.group = group
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor, None]:
        return _all_reduce(grad.contiguous().clone(), ctx.group), None


class _ReduceFromTP(torch.autograd.Function):
    """g：前向 all-reduce，反向恒等。"""

    @staticmethod
    def forward(ctx, x: Tensor, group: dist.ProcessGroup) -> Tensor:
        return _all_reduce(x.contiguous().clone(), group)

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor, None]:
        return grad, None


class _GatherFromTP(torch.autograd.Function):
    """前向沿最后一维 all-gather；反向取回本 rank 那一段（其余段的梯度属于别的 rank）。"""

    @staticmethod
    def forward(ctx, x: Tensor, group: dist.ProcessGroup) -> Tensor:
        ctx.group = group
        return _all_gather(x, -1, group)

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor, None]:
        return _split(grad, -1, ctx.group), None


class _ScatterToTP(torch.autograd.Function):
    """前向沿最后一维取本 rank 那一段；反向 all-gather（每段的梯度在各自的 rank 上）。"""

    @staticmethod
    def forward(ctx, x: Tensor, group: dist.ProcessGroup) -> Tensor:
        ctx.group = group
        return _split(x, -1, group)

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor, None]:
        return _all_gather(grad, -1, ctx.group), None


class _GatherFromSP(torch.autograd.Function):
    """序列并行 → 张量并行：前向沿序列 all-gather；反向 reduce-scatter。

    为什么反向是 reduce-scatter：完整序列 X 被 tp 个 rank 的不同头 / 不同列使用，每个 rank 算出的 ∂L/∂X 都是部分和；
    本 rank 只存自己那段 token，所以只需要"求和之后的第 r 段"。
    """

    @staticmethod
    def forward(ctx, x: Tensor, group: dist.ProcessGroup) -> Tensor:
        ctx.group = group
        return _all_gather(x, SEQ_DIM, group)

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor, None]:
        return _reduce_scatter(grad, SEQ_DIM, ctx.group), None


class _ReduceScatterToSP(torch.autograd.Function):
    """张量并行 → 序列并行：前向 reduce-scatter（部分和加齐、只留自己那段 token）；反向 all-gather。"""

    @staticmethod
    def forward(ctx, x: Tensor, group: dist.ProcessGroup) -> Tensor:
        ctx.group = group
        return _reduce_scatter(x, SEQ_DIM, group)

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor, None]:
        return _all_gather(grad, SEQ_DIM, ctx.group), None


def copy_to_tensor_parallel_region(x: Tensor, group: dist.ProcessGroup) -> Tensor:
    """f：前向恒等、反向 all-reduce。放在列并行的输入处。"""
    return _CopyToTP.apply(x, group)


def reduce_from_tensor_parallel_region(x: Tensor, group: dist.ProcessGroup) -> Tensor:
    """g：前向 all-reduce、反向恒等。放在行并行的输出处。"""
    return _ReduceFromTP.apply(x, group)


def gather_from_tensor_parallel_region(x: Tensor, group: dist.ProcessGroup) -> Tensor:
    """沿最后一维 all-gather（反向：切回本 rank 那段）。"""
    return _GatherFromTP.apply(x, group)


def scatter_to_tensor_parallel_region(x: Tensor, group: dist.ProcessGroup) -> Tensor:
    """沿最后一维取本 rank 那段（反向：all-gather）。"""
    return _ScatterToTP.apply(x, group)


def gather_from_sequence_parallel_region(x: Tensor, group: dist.ProcessGroup) -> Tensor:
    """(B, T/tp, C) → (B, T, C)：沿序列 all-gather（反向 reduce-scatter）。"""
    return _GatherFromSP.apply(x, group)


def reduce_scatter_to_sequence_parallel_region(x: Tensor, group: dist.ProcessGroup) -> Tensor:
    """(B, T, C) 的部分和 → (B, T/tp, C) 的完整和：沿序列 reduce-scatter（反向 all-gather）。"""
    return _ReduceScatterToSP.apply(x, group)


def _enter_parallel_region(x: Tensor, group: dist.ProcessGroup, sequence_parallel: bool) -> Tensor:
    """进入列并行之前：TP 用 f；序列并行先把 token 拼齐。"""
    if sequence_parallel:
        return gather_from_sequence_parallel_region(x, group)
    return copy_to_tensor_parallel_region(x, group)


# ---------------------------------------------------------------------------------------------------
# 2. 并行层：都由一个完整的层构造（取本 rank 的那片权重），所以切分前后计算的是同一个函数
# ---------------------------------------------------------------------------------------------------


def _group_info(group: dist.ProcessGroup) -> tuple[int, int]:
    return dist.get_world_size(group), dist.get_rank(group)


def _shard_parameter(p: Tensor, dim: int, group: dist.ProcessGroup) -> nn.Parameter:
    world, rank = _group_info(group)
    if p.size(dim) % world:
        raise ValueError(f"形状 {tuple(p.shape)} 的第 {dim} 维不能被张量并行的 {world} 个 rank 均分")
    return nn.Parameter(p.detach().chunk(world, dim)[rank].clone(), requires_grad=p.requires_grad)


class ColumnParallelLinear(nn.Module):
    """列并行：weight 按输出行切，本 rank 算输出的第 r 段。

    communicate_input=False：输入处的 f（或序列并行的 all-gather）已由调用者做过——注意力的 q/k/v、MLP 的
    gate/up 共用同一个输入，只需要一次。gather_output=True：输出再沿最后一维 all-gather 成完整的 out_features。
    """

    sharded_dims = {"weight": 0, "bias": 0}

    def __init__(self, linear: nn.Linear, group: dist.ProcessGroup, *, gather_output: bool = False,
                 communicate_input: bool = True, sequence_parallel: bool = False) -> None:
        super().__init__()
        self.group, self.gather_output = group, gather_output
        self.communicate_input, self.sequence_parallel = communicate_input, sequence_parallel
        self.in_features, self.out_features = linear.in_features, linear.out_features
        self.weight = _shard_parameter(linear.weight, 0, group)  # (out/tp, in)
        self.bias = _shard_parameter(linear.bias, 0, group) if linear.bias is not None else None

    @property
    def is_plain_linear(self) -> bool:
        """不通信时 forward 就是 F.linear(x, weight, bias)：Llama 的 project_qkv 可以把它的切片拼进一次 GEMM。"""
        return not self.communicate_input and not self.gather_output

    def forward(self, x: Tensor) -> Tensor:
        if self.communicate_input:
            x = _enter_parallel_region(x, self.group, self.sequence_parallel)
        y = F.linear(x, self.weight, self.bias)  # (..., out/tp)
        return gather_from_tensor_parallel_region(y, self.group) if self.gather_output else y

    def extra_repr(self) -> str:
        return (f"in={self.in_features}, out={self.out_features} (本 rank {self.weight.size(0)}), "
                f"bias={self.bias is not None}, gather_output={self.gather_output}, "
                f"sequence_parallel={self.sequence_parallel}")


class RowParallelLinear(nn.Module):
    """行并行：weight 按输入列切，各 rank 的部分和 all-reduce（序列并行时 reduce-scatter），bias 在求和之后加一次。

    input_is_parallel=False：输入是完整的，先沿最后一维取本 rank 那段（单独使用这一层时）。
    """

    sharded_dims = {"weight": 1}

    def __init__(self, linear: nn.Linear, group: dist.ProcessGroup, *, input_is_parallel: bool = True,
                 sequence_parallel: bool = False) -> None:
        super().__init__()
        self.group, self.input_is_parallel, self.sequence_parallel = group, input_is_parallel, sequence_parallel
        self.in_features, self.out_features = linear.in_features, linear.out_features
        self.weight = _shard_parameter(linear.weight, 1, group)  # (out, in/tp)
        self.bias = linear.bias  # 复制的：每个 rank 一份完整的

    def forward(self, x: Tensor) -> Tensor:
        if not self.input_is_parallel:
            x = scatter_to_tensor_parallel_region(x, self.group)
        partial = F.linear(x, self.weight)  # Y_r·B_rᵀ：部分和
        if self.sequence_parallel:
            y = reduce_scatter_to_sequence_parallel_region(partial, self.group)
            # 每个 rank 只给自己那段 token 加 bias，bias 的梯度是部分和：过一次 f 在反向里加齐
            return y if self.bias is None else y + copy_to_tensor_parallel_region(self.bias, self.group)
        y = reduce_from_tensor_parallel_region(partial, self.group)
        return y if self.bias is None else y + self.bias

    def extra_repr(self) -> str:
        return (f"in={self.in_features} (本 rank {self.weight.size(1)}), out={self.out_features}, "
                f"bias={self.bias is not None}, sequence_parallel={self.sequence_parallel}")


class VocabParallelEmbedding(nn.Module):
    """嵌入表按词表行切；不归本 rank 的 token 查出 0，all-reduce（序列并行：reduce-scatter）之后人人拿到完整结果。"""

    sharded_dims = {"weight": 0}

    def __init__(self, embedding: nn.Embedding, group: dist.ProcessGroup, *, sequence_parallel: bool = False) -> None:
        super().__init__()
        world, rank = _group_info(group)
        self.group, self.sequence_parallel = group, sequence_parallel
        self.num_embeddings, self.embedding_dim = embedding.num_embeddings, embedding.embedding_dim
        self.weight = _shard_parameter(embedding.weight, 0, group)  # (V/tp, C)
        self.vocab_start = rank * self.weight.size(0)

    def forward(self, input_ids: Tensor) -> Tensor:
        local = input_ids - self.vocab_start
        outside = (local < 0) | (local >= self.weight.size(0))
        # 越界的 id 先换成 0 再查（否则 F.embedding 会报错），查出来的向量再置 0：它的梯度也因此是 0
        out = F.embedding(local.masked_fill(outside, 0), self.weight).masked_fill(outside[..., None], 0.0)
        if self.sequence_parallel:
            return reduce_scatter_to_sequence_parallel_region(out, self.group)
        return reduce_from_tensor_parallel_region(out, self.group)

    def extra_repr(self) -> str:
        return (f"{self.num_embeddings}, {self.embedding_dim}，本 rank 管 "
                f"[{self.vocab_start}, {self.vocab_start + self.weight.size(0)})")


class _VocabParallelCrossEntropy(torch.autograd.Function):
    """逐 token 的交叉熵，logits 只有本 rank 的词表段；前向 2 次 all-reduce（N 个 max；N 个目标 logit 与 N 个 Σexp），
    反向不通信。返回 (N,) 的逐 token loss（ignore_index 的位置为 0）。"""

    @staticmethod
    def forward(ctx, logits: Tensor, targets: Tensor, group: dist.ProcessGroup, ignore_index: int) -> Tensor:
        v_local = logits.size(-1)
        vocab_start = dist.get_rank(group) * v_local
        # 减去全局最大值防止 exp 溢出；ℓ 与减去的常数无关，所以 m 不需要梯度
        m = _all_reduce(logits.max(dim=-1).values, group, dist.ReduceOp.MAX)  # (N,)
        shifted = logits - m[:, None]
        local_t = targets - vocab_start
        owned = (local_t >= 0) & (local_t < v_local)  # 目标词在本 rank 的词表段里（-100 在任何 rank 上都不在）
        safe_t = local_t.masked_fill(~owned, 0)
        target_logit = shifted.gather(1, safe_t[:, None]).squeeze(1).masked_fill(~owned, 0.0)
        exp = shifted.exp()
        sums = _all_reduce(torch.stack((target_logit, exp.sum(dim=-1))), group)  # 两个量拼成一次通信
        valid = targets != ignore_index
        loss = (sums[1].log() - sums[0]).masked_fill(~valid, 0.0)  # ℓ = log Σ exp(z − m) − (z_t − m)
        exp.div_(sums[1][:, None])  # 本段的 softmax，留给反向
        ctx.save_for_backward(exp, safe_t, owned, valid)
        return loss

    @staticmethod
    def backward(ctx, grad_loss: Tensor) -> tuple[Tensor, None, None, None]:
        softmax, safe_t, owned, valid = ctx.saved_tensors
        grad = softmax.clone()
        rows = torch.arange(grad.size(0), device=grad.device)
        grad[rows, safe_t] -= owned.to(grad.dtype)  # ∂ℓ/∂z_v = softmax_v − [v = t]
        return grad * (grad_loss * valid)[:, None], None, None, None


def vocab_parallel_cross_entropy(logits: Tensor, targets: Tensor, group: dist.ProcessGroup,
                                 ignore_index: int = IGNORE_INDEX) -> Tensor:
    """logits (..., V/tp) 是本 rank 的词表段，targets (...) 是完整词表里的 id；返回与
    F.cross_entropy(完整 logits, targets, ignore_index) 相同的平均 loss（在 fp32 里算），从不拼出完整 logits。"""
    if logits.shape[:-1] != targets.shape:
        raise ValueError(f"logits {tuple(logits.shape)} 去掉最后一维应与 targets {tuple(targets.shape)} 同形")
    per_token = _VocabParallelCrossEntropy.apply(logits.float().reshape(-1, logits.size(-1)), targets.reshape(-1),
                                                 group, ignore_index)
    return per_token.sum() / (targets != ignore_index).sum()  # 全是 ignore_index 时 0/0 = NaN，与 F.cross_entropy 相同


class SequenceParallelRMSNorm(_llama.RMSNorm):
    """序列并行下的 RMSNorm：只对本 rank 那段 token 归一化；γ 过一次 f，让它的梯度在反向里加齐（见模块说明）。"""

    def __init__(self, norm: nn.Module, group: dist.ProcessGroup) -> None:
        nn.Module.__init__(self)
        self.weight, self.eps, self.group = norm.weight, norm.eps, group  # 同一个 Parameter：γ 仍是复制的

    def forward(self, x: Tensor) -> Tensor:
        dtype = x.dtype
        x = x.float()
        x = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps)
        return copy_to_tensor_parallel_region(self.weight, self.group) * x.to(dtype)


class ParallelAttention(_llama.Attention):
    """按整头切的 GQA 注意力：本 rank 有 H/tp 个 q 头、H_kv/tp 个 kv 头；q/k/v 列并行，o_proj 行并行。

    前向完全复用 Llama 的 Attention.forward（n_head / n_kv_head 换成本 rank 的头数），只在入口做一次 f
    （序列并行：all-gather 序列）；q/k/v 不通信（is_plain_linear），project_qkv 的"拼权重"路径直接读
    q_proj.weight，读到的正是本 rank 的切片。
    """

    def __init__(self, attn: nn.Module, group: dist.ProcessGroup, *, sequence_parallel: bool = False) -> None:
        nn.Module.__init__(self)
        world, _ = _group_info(group)
        self.config, self.layer_idx, self.head_dim, self.scale = attn.config, attn.layer_idx, attn.head_dim, attn.scale
        self.n_head, self.n_kv_head = attn.n_head // world, attn.n_kv_head // world
        self.group, self.sequence_parallel = group, sequence_parallel
        for name in ("q_proj", "k_proj", "v_proj"):  # 注册顺序与原模块相同：优化器里参数的编号因而与单进程一致
            setattr(self, name, ColumnParallelLinear(getattr(attn, name), group, communicate_input=False))
        self.o_proj = RowParallelLinear(attn.o_proj, group, sequence_parallel=sequence_parallel)

    def forward(self, x: Tensor, rope: Tensor, kv_cache: Any, attn_mask: Tensor | None,
                attn_metadata: Any) -> Tensor:
        if kv_cache is not None:
            raise ValueError("张量并行的注意力不支持 KV cache（每个 rank 只有一部分 kv 头）；"
                             "生成请先用 TensorParallelLlama.full_model() 拿到完整模型")
        x = _enter_parallel_region(x, self.group, self.sequence_parallel)
        return super().forward(x, rope, None, attn_mask, attn_metadata)

    def extra_repr(self) -> str:
        return super().extra_repr() + f"（本 rank），sequence_parallel={self.sequence_parallel}"


class ParallelMLP(_llama.MLP):
    """并行 SwiGLU：gate/up 列并行（同一个输入，一次 f），down 行并行——前向只有 down 之后的 1 次 all-reduce。"""

    def __init__(self, mlp: nn.Module, group: dist.ProcessGroup, *, sequence_parallel: bool = False) -> None:
        nn.Module.__init__(self)
        self.config, self.group, self.sequence_parallel = mlp.config, group, sequence_parallel
        self.gate_proj = ColumnParallelLinear(mlp.gate_proj, group, communicate_input=False)
        self.up_proj = ColumnParallelLinear(mlp.up_proj, group, communicate_input=False)
        self.down_proj = RowParallelLinear(mlp.down_proj, group, sequence_parallel=sequence_parallel)
        self.act_fn = mlp.act_fn

    def forward(self, x: Tensor) -> Tensor:
        return super().forward(_enter_parallel_region(x, self.group, self.sequence_parallel))


# ---------------------------------------------------------------------------------------------------
# 3. 整个 Llama：原地转换
# ---------------------------------------------------------------------------------------------------


def _resolve_group(mesh_or_group: ParallelMesh | dist.ProcessGroup | None) -> dist.ProcessGroup:
    if not dist.is_initialized():
        raise RuntimeError("张量并行需要先建好进程组：torchrun 下调用 training_sys.distributed.init_from_env()，"
                           "课程 / 测试里用 training_sys.distributed.spawn(...) 启动")
    if mesh_or_group is None:
        return dist.group.WORLD
    if isinstance(mesh_or_group, ParallelMesh):
        return mesh_or_group.group("tp")
    if isinstance(mesh_or_group, dist.ProcessGroup):
        return mesh_or_group
    raise TypeError(f"mesh_or_group 应为 ParallelMesh、ProcessGroup 或 None（整个 world），"
                    f"收到 {type(mesh_or_group).__name__}")


def tensor_parallel_dims(model: nn.Module) -> dict[str, int]:
    """{参数名: 切分的维度}：被切开的参数；不在里面的参数在每个 rank 上都是完整的一份（复制的）。"""
    dims = {}
    for prefix, module in model.named_modules(remove_duplicate=False):
        for name, dim in getattr(module, "sharded_dims", {}).items():
            if getattr(module, name, None) is not None:
                dims[f"{prefix}.{name}" if prefix else name] = dim
    return dims


def _dims_by_id(model: nn.Module) -> dict[int, int]:
    params = dict(model.named_parameters(remove_duplicate=False))
    return {id(params[name]): dim for name, dim in tensor_parallel_dims(model).items()}


def _pad_sequence(pad: int, input_ids: Tensor, targets: Tensor | None, attention_mask: Tensor | None,
                  position_ids: Tensor | None) -> tuple[Tensor, Tensor | None, Tensor | None, Tensor | None]:
    """(B, T) 批量在右侧补 pad 个位置：token 0、target = ignore_index、attention_mask = 0、位置编号接着往后数。"""
    input_ids = F.pad(input_ids, (0, pad))
    if targets is not None:
        targets = F.pad(targets, (0, pad), value=IGNORE_INDEX)
    if attention_mask is not None:
        attention_mask = F.pad(attention_mask, (0, pad), value=0)
    if position_ids is not None:
        tail = position_ids[..., -1:] + torch.arange(1, pad + 1, device=position_ids.device)
        position_ids = torch.cat((position_ids, tail), dim=-1)
    return input_ids, targets, attention_mask, position_ids


class TensorParallelLlama(Llama):
    """apply_tensor_parallel 之后的 Llama（同一个对象换了类）：参数是本 rank 的切片，权重名仍是 HF 的。

    forward 的契约不变，只有两处不同：给 targets 时返回的 logits 是本 rank 的词表段 (B, T, V/tp)
    （loss 用词表并行的交叉熵算，从不拼出完整 logits）；不给 targets 时返回 all-gather 后的完整 logits。
    序列并行时长度不是 tp 的倍数的序列在右侧补齐（见 forward）。不支持 KV cache。
    所有 rank 必须同时调用 forward（里面有集合通信）。
    """

    tp_group: dist.ProcessGroup
    sequence_parallel: bool

    def forward(self, input_ids: Tensor, targets: Tensor | None = None, *, position_ids: Tensor | None = None,
                attention_mask: Tensor | None = None, kv_cache: Any = None, attn_metadata: Any = None,
                logits_positions: Tensor | None = None) -> Tensor | tuple[Tensor, Tensor]:
        if kv_cache is not None:
            raise ValueError("张量并行的 Llama 不支持 KV cache（每个 rank 只有一部分 kv 头）；"
                             "生成请所有 rank 先调用 full_model() 拿到完整模型，再在它上面 generate")
        self._check_input_ids(input_ids)
        if targets is not None:
            if logits_positions is not None:
                raise ValueError("logits_positions 只用于推理（只算部分位置的 logits），不能同时给 targets")
            if targets.shape != input_ids.shape:
                raise ValueError(f"targets 的形状 {tuple(targets.shape)} 应与 input_ids {tuple(input_ids.shape)} 相同")
        t, tp = input_ids.size(1), dist.get_world_size(self.tp_group)
        pad = -t % tp if self.sequence_parallel else 0
        if self.sequence_parallel:
            if attn_metadata is not None or logits_positions is not None:
                raise ValueError("序列并行只支持 (B, T) 批量：打包批量与 logits_positions 请关掉 sequence_parallel")
            if pad:
                # 序列要均分到 tp 个 rank：右侧补齐到 tp 的倍数。因果注意力里前面的 token 看不到后面的补齐位，
                # 补齐位的 target 是 ignore_index，所以真实位置的 logits 与 loss 不变（采样时 T 逐个增长，必须支持）
                input_ids, targets, attention_mask, position_ids = _pad_sequence(
                    pad, input_ids, targets, attention_mask, position_ids)
        logits = super().forward(input_ids, position_ids=position_ids, attention_mask=attention_mask,
                                 attn_metadata=attn_metadata, logits_positions=logits_positions)  # (..., V/tp)
        loss = None if targets is None else vocab_parallel_cross_entropy(logits, targets, self.tp_group)
        logits = logits[:, :t] if pad else logits
        if loss is None:
            return gather_from_tensor_parallel_region(logits, self.tp_group)
        return logits, loss

    def generate(self, *args: Any, **kwargs: Any) -> Tensor:
        raise ValueError("张量并行的 Llama 不能直接 generate（lm_head 只产出本 rank 的词表段，也没有 KV cache）："
                         "所有 rank 先调用 full_model() 拿到完整模型，再在它上面 generate")

    @torch.no_grad()
    def full_state_dict(self) -> dict[str, Tensor]:
        """all-gather 每个切片，返回完整的 HF 权重（所有 rank 都要调用；每个 rank 都拿到一份）。"""
        dims = tensor_parallel_dims(self)
        gathered: dict[int, Tensor] = {}  # 共享的权重（lm_head 与嵌入）只 gather 一次
        out = {}
        for name, t in self.state_dict().items():
            if name in dims:
                key = t.data_ptr()
                if key not in gathered:
                    gathered[key] = _all_gather(t, dims[name], self.tp_group)
                t = gathered[key]
            out[name] = t
        return out

    def full_model(self) -> Llama:
        """完整的普通 Llama（同一 config、同一 dtype 与设备），所有 rank 都要调用。先在 meta 上建再填数：
        不消耗随机数，也不会先分配一份随机初始化的权重。"""
        state = self.full_state_dict()
        weight = self.lm_head.weight
        with torch.device("meta"):
            full = Llama(self.config).to(weight.dtype)
        full = full.to_empty(device=weight.device)  # to_empty 保留共享权重；RotaryEmbedding._apply 会重算 inv_freq
        full.load_state_dict(state)
        return full

    def save_pretrained(self, save_dir: str | os.PathLike) -> Path:
        """所有 rank 都调用（要 all-gather）；组内 0 号写出完整的 HF 目录（切片从不落盘），返回目录。"""
        full = self.full_model()
        if dist.get_rank(self.tp_group) == 0:
            full.save_pretrained(save_dir)
        return Path(save_dir)


def apply_tensor_parallel(model: Llama, mesh_or_group: ParallelMesh | dist.ProcessGroup | None = None, *,
                          sequence_parallel: bool = False) -> TensorParallelLlama:
    """把 model_lab 的 Llama 原地转换成张量并行（每个 rank 都要调用），返回同一个对象（类换成 TensorParallelLlama）。

    mesh_or_group：ParallelMesh（用它的 tp 组）、一个进程组，或 None（整个 world）。先把组内 0 号的权重广播给其他 rank，
    再各自取自己那一片：转换后的模型与 0 号原来的模型计算同一个函数。参数的注册顺序不变，所以优化器里参数的编号
    （state_dict 的键）与单进程相同。
    """
    if isinstance(model, TensorParallelLlama):
        raise ValueError("这个模型已经是张量并行的了：apply_tensor_parallel 只能调用一次")
    if not isinstance(model, Llama):
        raise TypeError(f"apply_tensor_parallel 只支持 model_lab 的 Llama，收到 {type(model).__name__}")
    group = _resolve_group(mesh_or_group)
    tp = dist.get_world_size(group)
    c = model.config
    for name, value in (("num_attention_heads", c.num_attention_heads), ("num_key_value_heads", c.num_key_value_heads),
                        ("intermediate_size", c.intermediate_size), ("vocab_size", c.vocab_size)):
        if value % tp:
            raise ValueError(f"{name}={value} is not divisible by tp={tp}：张量并行把它均分到 {tp} 个 rank"
                             + ("（按整头切，GQA 的 q 头与 kv 头要一致地切开）" if "heads" in name else "")
                             + f"；换一个能整除 {value} 的 tp，或调整模型的 {name}")
    src = dist.get_global_rank(group, 0)
    with torch.no_grad():
        for p in model.parameters():
            dist.broadcast(p.data, src=src, group=group)
    backbone = model.model
    for layer in backbone.layers:
        layer.self_attn = ParallelAttention(layer.self_attn, group, sequence_parallel=sequence_parallel)
        layer.mlp = ParallelMLP(layer.mlp, group, sequence_parallel=sequence_parallel)
        if sequence_parallel:
            layer.input_layernorm = SequenceParallelRMSNorm(layer.input_layernorm, group)
            layer.post_attention_layernorm = SequenceParallelRMSNorm(layer.post_attention_layernorm, group)
    backbone.embed_tokens = VocabParallelEmbedding(backbone.embed_tokens, group, sequence_parallel=sequence_parallel)
    if sequence_parallel:
        backbone.norm = SequenceParallelRMSNorm(backbone.norm, group)
    model.lm_head = ColumnParallelLinear(model.lm_head, group, sequence_parallel=sequence_parallel)
    if c.tie_word_embeddings:  # 两者都按词表行切出同一段：继续共享同一个切片
        model.lm_head.weight = backbone.embed_tokens.weight
    model.__class__ = TensorParallelLlama
    model.tp_group, model.sequence_parallel = group, sequence_parallel
    return model


# ---------------------------------------------------------------------------------------------------
# 4. 训练策略
# ---------------------------------------------------------------------------------------------------


def _divisors(n: int) -> list[int]:
    return [d for d in range(1, n + 1) if n % d == 0]


def all_reduce_gradients(params: list[nn.Parameter], group: dist.ProcessGroup, bucket_cap_mb: float = 25.0) -> int:
    """数据并行组内把梯度求平均（先除以 dp 再 SUM，与 DDP 相同）：按 bucket_cap_mb 分桶，每桶拼成一块连续缓冲区、
    一次异步 all-reduce，全部发出后再逐个等待写回。没有梯度的参数按 0 参与（各 rank 的桶必须一一对应）。返回桶数。

    params 的顺序在各 dp rank 上必须相同：同一个 tp 坐标的 rank 持有同一片切片，形状一致，桶才能逐元素配对。
    """
    world = dist.get_world_size(group)
    for p in params:
        if p.grad is None:
            p.grad = torch.zeros_like(p)
    buckets = bucket_assignment(params, int(bucket_cap_mb * 1024 * 1024))
    pending = []
    for idx in buckets:
        members = [params[i] for i in idx]
        flat = torch.cat([p.grad.reshape(-1) for p in members]).div_(world)
        _record("grad_all_reduce", flat)  # 与激活的 all_reduce 分开记：课程里数"每步梯度同步多少元素"
        pending.append((members, flat, dist.all_reduce(flat, group=group, async_op=True)))
    for members, flat, work in pending:
        work.wait()
        torch._foreach_copy_([p.grad for p in members],
                             [v.view_as(p) for v, p in zip(flat.split([p.numel() for p in members]), members)])
    return len(buckets)


class TensorParallelStrategy(SingleDevice):
    """张量并行（可再套一层数据并行：dp × tp）的 TrainStrategy。

    - tp_size=None、mesh_or_group=None：整个 world 是一个 tp 组（纯张量并行，data_parallel_size = 1）。
    - tp_size=k：world 排成 dp × tp = (world / k) × k 的网格（ParallelMesh，tp 在最里层：rank = dp_i·k + tp_i）。
      模型在 tp 组里切分；同一个 dp 组的 rank 持有同一片切片，反向之后在 dp 组里把梯度求平均（分桶 all-reduce）。
      每个 dp 组看全局 batch 的第 dp_i 份（data_parallel_rank = dp_i），同一个 tp 组的 rank 看同一份。
    - mesh_or_group：一个 ParallelMesh（用它的 dp 与 tp 组，pp = cp = 1），或一个包含全部 rank 的 tp 进程组。

    mesh / 进程组在 prepare_model 里才建（dist.new_group 是集合操作，所有 rank 在同一处调用），
    而 data_parallel_size / data_parallel_rank 在构造时就按网格算好：训练循环在切模型之前就要知道每个 rank 取哪份数据。
    """

    def __init__(self, mesh_or_group: ParallelMesh | dist.ProcessGroup | None = None, *, tp_size: int | None = None,
                 sequence_parallel: bool = False, bucket_cap_mb: float = 25.0) -> None:
        if not isinstance(bucket_cap_mb, (int, float)) or isinstance(bucket_cap_mb, bool) or not bucket_cap_mb > 0:
            raise ValueError(f"bucket_cap_mb={bucket_cap_mb!r} 必须是正数（单位 MB）")
        self.mesh_or_group, self.tp_size = mesh_or_group, tp_size
        self.sequence_parallel, self.bucket_cap_mb = sequence_parallel, bucket_cap_mb
        self.group: dist.ProcessGroup | None = None  # tp 组
        self.dp_group: dist.ProcessGroup | None = None  # dp = 1 时为 None：没有梯度要同步
        self.mesh: ParallelMesh | None = None
        self.device = torch.device("cpu")
        self._params: list[nn.Parameter] = []
        self.data_parallel_size, self.data_parallel_rank = 1, 0
        if tp_size is not None:
            if mesh_or_group is not None:
                raise ValueError("tp_size 与 mesh_or_group 只能给一个：tp_size 让策略自己建 dp × tp 网格，"
                                 "mesh_or_group 用现成的网格或进程组")
            if not isinstance(tp_size, int) or isinstance(tp_size, bool) or tp_size < 1:
                raise ValueError(f"tp_size={tp_size!r} 必须是正整数（张量并行组的大小，常取一台机器上的 GPU 数）")
            if not dist.is_initialized():
                raise RuntimeError("TensorParallelStrategy(tp_size=...) 需要先建好进程组才知道 world 有多大："
                                   "torchrun 下调用 training_sys.distributed.init_from_env()，课程 / 测试里用 spawn(...) 启动")
            world = dist.get_world_size()
            if world % tp_size:
                raise ValueError(f"world_size={world} is not divisible by tp_size={tp_size}：dp × tp 网格要求 "
                                 f"world = dp·tp；换一个能整除 {world} 的 tp_size（例如 {_divisors(world)}），或改进程数")
            self.data_parallel_size, self.data_parallel_rank = world // tp_size, dist.get_rank() // tp_size
        elif isinstance(mesh_or_group, ParallelMesh):
            if mesh_or_group.pp != 1 or mesh_or_group.cp != 1:
                raise ValueError(f"TensorParallelStrategy 只处理 dp × tp；网格里 pp={mesh_or_group.pp}、"
                                 f"cp={mesh_or_group.cp} 需要流水线 / 上下文并行的调度，请给 pp = cp = 1 的网格")
            self.data_parallel_size, self.data_parallel_rank = mesh_or_group.dp, mesh_or_group.local_rank("dp")

    @property
    def is_main_process(self) -> bool:
        return dist.get_rank() == 0

    @property
    def runs_evaluation(self) -> bool:
        return True  # 前向要 tp 组的所有 rank 一起算（各 dp 组算的是同一批评估数据，只有主进程记录）

    def _group(self) -> dist.ProcessGroup:
        if self.group is None:
            raise RuntimeError("TensorParallelStrategy 还没有 prepare_model：先调用 prepare_model(model) 切分模型")
        return self.group

    def _build_groups(self) -> None:
        """建 tp 组与 dp 组（所有 rank 同时调用）。"""
        world = dist.get_world_size() if dist.is_initialized() else None
        if self.tp_size is not None and self.tp_size != world:
            self.mesh = ParallelMesh(dp=self.data_parallel_size, tp=self.tp_size)
        elif isinstance(self.mesh_or_group, ParallelMesh):
            self.mesh = self.mesh_or_group
        if self.mesh is not None:
            self.group = self.mesh.group("tp")
            self.dp_group = self.mesh.group("dp") if self.mesh.dp > 1 else None
            return
        group = _resolve_group(self.mesh_or_group)
        if dist.get_world_size(group) != dist.get_world_size():
            raise ValueError(f"给的 tp 进程组只有 {dist.get_world_size(group)} 个 rank，而 world 有 {dist.get_world_size()} 个："
                             "策略不知道其余的 rank 怎样做数据并行；用 TensorParallelStrategy(tp_size=k) 让它建 dp × tp 网格，"
                             "或传一个 ParallelMesh(dp=..., tp=...)")
        self.group = group

    def prepare_model(self, model: nn.Module) -> nn.Module:
        self._build_groups()
        self.device = next(model.parameters()).device  # NCCL 只能传 GPU 上的张量：标志位放在模型所在的设备上
        model = apply_tensor_parallel(model, self.group, sequence_parallel=self.sequence_parallel)
        # parameters() 对共享权重去重、顺序由模块结构决定：各 dp rank 的列表一一对应（同一 tp 坐标 → 同一片切片）
        self._params = [p for p in model.parameters() if p.requires_grad]
        if self.dp_group is not None:
            # apply_tensor_parallel 只在 tp 组内广播了 tp 组 0 号的权重；各 dp 组的 0 号可能不同（例如种子不同），
            # 再在 dp 组内广播切片：所有 rank 都从全局 rank 0 的那份模型出发
            src = dist.get_global_rank(self.dp_group, 0)
            with torch.no_grad():
                for p in model.parameters():
                    dist.broadcast(p.data, src=src, group=self.dp_group)
        return model

    def prepare_optimizer(self, optimizer: torch.optim.Optimizer) -> torch.optim.Optimizer:
        """逐元素的优化器（AdamW、SGD、Lion）在切片上更新与在完整矩阵上更新是同一回事；Muon 不是：
        它把每个矩阵整体正交化（Newton–Schulz），对切片正交化 ≠ 对完整矩阵正交化。这里直接拒绝，而不是悄悄训成另一个东西。"""
        from training_sys.optimization import Muon

        if isinstance(optimizer, Muon):
            raise ValueError("张量并行不支持 Muon：它对整个矩阵做正交化，各 rank 只有切片，结果与单卡不同；"
                             "请用 --optimizer adamw（逐元素的更新在切片上与在完整矩阵上相同）")
        return optimizer

    @contextlib.contextmanager
    def _sync_after(self) -> Iterator[None]:
        yield  # 上下文里是最后一个 micro-batch 的前向与反向；正常结束（没有异常）才同步
        all_reduce_gradients(self._params, self.dp_group, self.bucket_cap_mb)

    def no_sync(self, model: nn.Module, last_micro_batch: bool) -> contextlib.AbstractContextManager:
        """dp > 1 时：最后一个 micro-batch 反向之后在 dp 组里平均梯度；前 K-1 个只在本地累加（与 DDP 的 no_sync 相同）。
        这里不与反向重叠（DDP 的钩子式分桶见 ddp.py）：tp 的通信已经穿插在每一层的反向里，dp 的同步放在最后、一次分桶发出。"""
        if self.dp_group is None or not last_micro_batch:
            return contextlib.nullcontext()
        return self._sync_after()

    def global_tokens(self, local_tokens: int) -> int:
        """全体 dp 组的有效 token 数：只在 dp 组里求和——同一个 tp 组的 rank 看的是同一份数据，在 world 上求和会重复计 tp 次。"""
        if self.dp_group is None:
            return local_tokens
        t = torch.tensor([local_tokens], dtype=torch.int64, device=self.device)
        dist.all_reduce(t, group=self.dp_group)
        return int(t.item())

    def reduce_loss(self, loss: torch.Tensor) -> float:
        """各 dp 组的 loss 已按"全局 token 数 / dp"归一化：在 dp 组里求平均就是全体 token 的平均 loss（tp 组内的 loss 本就相同）。"""
        if self.dp_group is None:
            return loss.item()
        t = loss.detach().float().reshape(1).to(self.device)
        dist.all_reduce(t, group=self.dp_group)
        return t.item() / self.data_parallel_size

    def stop_requested(self, local: bool) -> bool:
        flag = torch.tensor([float(local)], device=self.device)
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)  # 整个 world：任何一个 rank 想停，所有 dp 组、tp 组一起停
        return bool(flag.item())

    @torch.no_grad()
    def clip_grad_norm(self, model: nn.Module, max_norm: float) -> torch.Tensor:
        """‖g‖² = Σ_切片参数 ‖g_r‖²（各 rank 只有一片：all-reduce SUM）+ Σ_复制参数 ‖g‖²（每个 rank 都有完整的一份，
        只算一次，不能再加 tp 遍）。所有 rank 得到同一个范数、用同一个系数缩放。
        dp × tp 时梯度已在 dp 组里平均过（各 dp 组相同），只需在 tp 组里求和。"""
        if max_norm < 0:
            raise ValueError(f"max_norm={max_norm} 不能是负数（LLM 预训练常用 1.0）")
        dims = _dims_by_id(model)
        grads = [(p.grad, id(p) in dims) for p in model.parameters() if p.grad is not None]
        if not grads:
            return torch.tensor(0.0)
        device = grads[0][0].device
        sq = torch.zeros(2, device=device)  # [切片参数, 复制参数] 的平方和
        for g, sharded in grads:
            sq[0 if sharded else 1] += torch.linalg.vector_norm(g.float()) ** 2
        sharded_sq = _all_reduce(sq[:1].clone(), self._group())
        total = (sharded_sq[0] + sq[1]).sqrt()
        clip_coef = torch.clamp(max_norm / (total + 1e-6), max=1.0)
        for g, _ in grads:
            g.mul_(clip_coef.to(g.dtype))
        return total

    def _optimizer_tensors(self, model: nn.Module, optimizer: torch.optim.Optimizer,
                           state: dict[str, Any], convert) -> dict[str, Any]:
        """optimizer.state_dict() 的每个状态张量按它所属参数的切分维度做 convert(张量, 参数, 维度)。

        state_dict 的参数编号 = 把各参数组的参数依次排开的序号（torch 的约定），与单进程的编号相同。"""
        dims = _dims_by_id(model)
        params = [p for group in optimizer.param_groups for p in group["params"]]
        out_state = {}
        for idx, st in state["state"].items():
            p = params[idx]
            dim = dims.get(id(p))
            out_state[idx] = {k: convert(v, p, dim) if dim is not None and torch.is_tensor(v) and v.dim() > 0 else v
                              for k, v in st.items()}
        return {"state": out_state, "param_groups": state["param_groups"]}

    @contextlib.contextmanager
    def full_state(self, model: nn.Module, optimizer: torch.optim.Optimizer
                   ) -> Iterator[tuple[nn.Module, dict[str, Any]]]:
        """完整的 HF 权重（all-gather 出一个普通 Llama）与单进程格式的优化器状态（每个切片状态也 all-gather）。"""
        group = self._group()
        full_opt = self._optimizer_tensors(model, optimizer, optimizer.state_dict(),
                                           lambda v, p, dim: _all_gather(v, dim, group))
        yield model.full_model(), full_opt

    def load_full_state(self, model: nn.Module, optimizer: torch.optim.Optimizer,
                        model_state: dict[str, torch.Tensor], optimizer_state: dict[str, Any], strict: bool) -> None:
        """full_state 的逆：完整权重与优化器状态各取本 rank 那一片，再照常 load_state_dict。"""
        group = self._group()
        dims = tensor_parallel_dims(model)
        local = {k: _split(v, dims[k], group) if k in dims else v for k, v in model_state.items()}
        model.load_state_dict(local, strict=strict)
        optimizer.load_state_dict(self._optimizer_tensors(model, optimizer, optimizer_state,
                                                          lambda v, p, dim: _split(v, dim, group)))


# ---------------------------------------------------------------------------------------------------
# 5. 演示：2 个 rank 上的张量并行 / 序列并行 Llama 与单进程对照
# ---------------------------------------------------------------------------------------------------


def _demo_config(smoke: bool):
    return _llama.LlamaConfig(vocab_size=64 if smoke else 512, hidden_size=32 if smoke else 128,
                              intermediate_size=64 if smoke else 352, num_hidden_layers=2 if smoke else 4,
                              num_attention_heads=4 if smoke else 8, num_key_value_heads=2 if smoke else 4,
                              max_position_embeddings=128)


def _demo_worker(rank: int, world: int, smoke: bool) -> dict[str, Any]:
    from training_sys.optimization import AdamW
    from utils.torch_playground import setup_seed

    setup_seed(0)
    config = _demo_config(smoke)
    b, t, steps = (2, 16, 3) if smoke else (4, 64, 10)
    ids = torch.randint(0, config.vocab_size, (steps, b, t))
    targets = torch.randint(0, config.vocab_size, (steps, b, t))
    ref = Llama(config)
    init = {k: v.clone() for k, v in ref.state_dict().items()}
    with torch.no_grad():
        ref_logits, ref_loss = ref(ids[0], targets[0])
    # eps 取 1e-6 而不是默认的 1e-8：Adam 的第一步约是 lr·g/(|g| + eps)，|g| ~ 1e-8 的元素上，
    # 求和顺序不同带来的 1e-9 级舍入差会变成 lr 量级的更新差——那是 Adam 放大了噪声，不是张量并行算错了
    ref_opt = AdamW(ref.parameters(), lr=1e-3, eps=1e-6)
    for step in range(steps):  # 单进程的参照：同样的数据、同样的 AdamW 步
        ref(ids[step], targets[step])[1].backward()
        ref_opt.step()
        ref_opt.zero_grad()
    report: dict[str, Any] = {"full_params": ref.num_parameters(), "tokens": b * t, "hidden": config.hidden_size,
                              "vocab": config.vocab_size}
    for sp in (False, True):
        model = Llama(config)
        model.load_state_dict(init)
        strategy = TensorParallelStrategy(sequence_parallel=sp)
        model = strategy.prepare_model(model)
        opt = AdamW(model.parameters(), lr=1e-3, eps=1e-6)
        with torch.no_grad(), communication_log() as log:
            logits, loss = model(ids[0], targets[0])
            full_logits = gather_from_tensor_parallel_region(logits, strategy.group)
        comm: dict[str, list[int]] = {}
        for kind, n in log[:-1]:  # 最后一次是上面为了对照而做的 gather，不属于前向
            comm.setdefault(kind, []).append(n)
        diffs = {"logits": (full_logits - ref_logits).abs().max().item(), "loss": abs(loss.item() - ref_loss.item())}
        for step in range(steps):
            model(ids[step], targets[step])[1].backward()
            opt.step()
            opt.zero_grad()
        with strategy.full_state(model, opt) as (full, _):
            after = full.state_dict()
        diffs["weights"] = max((after[k] - v).abs().max().item() for k, v in ref.state_dict().items())
        report["sp" if sp else "tp"] = {"diffs": diffs, "comm": comm}
        report["local_params"] = sum(p.numel() for p in model.parameters())
    return report


def _dp_tp_batches(smoke: bool, dp: int, vocab: int) -> list[list[tuple[Tensor, Tensor]]]:
    """每步 2 个 micro-batch 的全局 batch（dp·b 条）；第 1 个 dp 组那份的前几个 target 是 -100（有效 token 数不等）。"""
    b, t, steps = (2, 16, 2) if smoke else (4, 64, 5)
    gen = torch.Generator().manual_seed(3)
    out = []
    for _ in range(steps):
        micro = []
        for _ in range(2):
            x, y = torch.randint(0, vocab, (dp * b, t), generator=gen), torch.randint(0, vocab, (dp * b, t), generator=gen)
            y[b:, : t // 4] = IGNORE_INDEX
            micro.append((x, y))
        out.append(micro)
    return out


def _dp_tp_train(strategy: SingleDevice | None, config, batches, dp: int) -> tuple[dict[str, Tensor], list[float]]:
    """strategy=None：单进程在全局 batch 上训练；否则每个 rank 只取自己 dp 组那份。返回 (完整权重, 每步 loss)。"""
    from training_sys.optimization import AdamW
    from training_sys.pretrain import accumulate_step, rank_slice
    from utils.torch_playground import setup_seed

    setup_seed(0)
    model = Llama(config)
    single = strategy is None
    strategy = SingleDevice() if single else strategy
    model = strategy.prepare_model(model)
    opt = AdamW(model.parameters(), lr=1e-3, eps=1e-6)
    losses = []
    for micro in batches:
        if not single:
            micro = [rank_slice(mb, mb[0].size(0) // dp, strategy.data_parallel_rank) for mb in micro]
        losses.append(strategy.reduce_loss(accumulate_step(model, micro, strategy)))
        opt.step()
        opt.zero_grad(set_to_none=True)
    with strategy.full_state(model, opt) as (full, _):
        return {k: v.clone() for k, v in full.state_dict().items()}, losses


def _dp_tp_demo_worker(rank: int, world: int, smoke: bool) -> dict[str, Any]:
    strategy = TensorParallelStrategy(tp_size=2)
    config = _demo_config(smoke)
    with communication_log() as log:
        weights, losses = _dp_tp_train(strategy, config, _dp_tp_batches(smoke, strategy.data_parallel_size,
                                                                         config.vocab_size), strategy.data_parallel_size)
    grad_sync = [n for kind, n in log if kind == "grad_all_reduce"]
    return {"weights": weights if rank == 0 else None, "losses": losses, "dp": strategy.data_parallel_size,
            "tp_ranks": dist.get_process_group_ranks(strategy.group),
            "dp_ranks": dist.get_process_group_ranks(strategy.dp_group),
            "local_params": sum(p.numel() for p in strategy._params),
            "grad_sync_elements": sum(grad_sync) // len(losses)}


def main() -> None:
    smoke = is_smoke()
    out = spawn(_demo_worker, 2, smoke, timeout_s=300)[0]
    n, c = out["tokens"], out["hidden"]
    print(f"张量并行 tp=2：每个 rank {out['local_params']:,} 个参数（完整模型 {out['full_params']:,}）；"
          f"一个 batch {n} 个 token，hidden {c}")
    layers = _demo_config(smoke).num_hidden_layers
    act_kib = n * c * 4 / 1024  # 一次激活通信：N·C 个 fp32
    # 预期的次数：嵌入 1 次（词表并行）+ 每层 2 次（注意力、MLP 各一次行并行）+ 交叉熵 2 次（max；目标 logit 与 Σexp 合一次）；
    # 序列并行：每次行并行与嵌入之后是 reduce-scatter（1 + 2L），每次列并行与 lm_head 之前是 all-gather（2L + 1）
    expected = {"tp": f"all_reduce {1 + 2 * layers + 2} 次（1 + 2L + 2，L = {layers}）、"
                      f"{(1 + 2 * layers) * act_kib + 3 * n * 4 / 1024:.1f} KiB",
                "sp": f"reduce_scatter {1 + 2 * layers} 次、all_gather {2 * layers + 1} 次（各 {(1 + 2 * layers) * act_kib:.1f} KiB）、"
                      "all_reduce 2 次"}
    for name, title in (("tp", "张量并行"), ("sp", "张量 + 序列并行")):
        d, comm = out[name]["diffs"], out[name]["comm"]
        print(f"[{title}] 与单进程：logits 最大差 {d['logits']:.1e}，loss 差 {d['loss']:.1e}，"
              f"几步 AdamW 之后权重最大差 {d['weights']:.1e}（容差 1e-4 / 1e-5 / 1e-4：部分和的求和次序不同，只差 fp32 舍入）")
        print("    一次前向本 rank 发起的集合通信：" + "；".join(
            f"{kind} ×{len(ns)}（共 {sum(ns) * 4 / 1024:.1f} KiB）" for kind, ns in comm.items())
            + f"——预期 {expected[name]}")
        assert d["logits"] < 1e-4 and d["loss"] < 1e-5 and d["weights"] < 1e-4
    print(f"交叉熵只 all-reduce 3·N = {3 * n} 个数（max、目标 logit、Σexp），gather 完整 logits 要 N·V = {n * out['vocab']} 个；"
          "序列并行把 all-reduce 换成 reduce-scatter + all-gather，字节数相同，norm 的激活只存 1/tp。")

    # dp × tp = 2 × 2：4 个进程，与单进程在全局 batch 上训练对照。SMOKE=1 时跳过：4 个进程在 2 核机器上要一分钟，
    # 而同样的对照就是 tests/training_sys/distributed/test_tensor_parallel.py 的 dp × tp 测试
    if smoke:
        print("dp × tp = 2 × 2 的 4 进程演示在 SMOKE=1 下跳过（完整运行或测试里有）")
        return
    per_rank = spawn(_dp_tp_demo_worker, 4, smoke, timeout_s=300)
    config = _demo_config(smoke)
    dp = per_rank[0]["dp"]
    ref_weights, ref_losses = _dp_tp_train(None, config, _dp_tp_batches(smoke, dp, config.vocab_size), dp)
    weight_diff = max((per_rank[0]["weights"][k] - v).abs().max().item() for k, v in ref_weights.items())
    loss_diff = max(abs(a - b) for r in per_rank for a, b in zip(r["losses"], ref_losses))
    print(f"dp × tp = {dp} × 2（4 个进程）：tp 组 {[r['tp_ranks'] for r in per_rank[::2]]}，"
          f"dp 组 {[r['dp_ranks'] for r in per_rank[:2]]}；每步 loss 与单进程全局 batch 的最大差 {loss_diff:.1e}，"
          f"{len(ref_losses)} 步 AdamW 之后权重最大差 {weight_diff:.1e}（容差 1e-5 / 1e-4）")
    print(f"    每步 dp 梯度同步 all-reduce {per_rank[0]['grad_sync_elements']:,} 个元素 = 本 rank 的参数量"
          f"（{per_rank[0]['local_params']:,}，完整模型的 1/tp）；激活的 tp 通信在每一层里")
    assert loss_diff < 1e-5 and weight_diff < 1e-4 and per_rank[0]['grad_sync_elements'] == per_rank[0]['local_params']


if __name__ == "__main__":
    lesson_args(__doc__)
    main()
