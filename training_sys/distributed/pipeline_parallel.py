"""流水线并行（PP）：按层把 Llama 切成 p 段，每个 rank 一段，激活向后传、激活的梯度向前传——先 GPipe，再 1F1B。

运行：python training_sys/distributed/pipeline_parallel.py   （SMOKE=1 几秒跑完；起 2 个 gloo 进程）

1. 切分（`LlamaStage`）：L 层平分给 p 个阶段，阶段 s 拿第 [s·L/p, (s+1)·L/p) 层；阶段 0 另有 embed_tokens，
   最后一个阶段另有 model.norm、lm_head 与 loss。参数名保持 HF 的全名（model.layers.5.mlp.up_proj.weight），
   所以 p 个阶段的 state_dict 拼起来就是完整 checkpoint。RoPE 表没有参数、由位置算出，每个阶段自己算一份。

2. 通信：只在阶段边界上点对点。micro-batch 形状 (B, T)、隐藏维 C，每个边界每个 micro-batch 前向发一次激活
   (B, T, C)，反向发回一次同形状的梯度 ∂L/∂x。一步 m 个 micro-batch，每个边界双向共 2·m·B·T·C 个元素
   （fp32 乘 4 字节：B=8、T=2048、C=4096、m=32 时每个方向 8 GiB/步）——与层数、参数量无关；对比 DDP 每步 all-reduce 整个模型的梯度，PP 的通信小得多，适合跨机器。
   为什么正确：阶段 s 的输出 y_s = f_s(y_{s-1})；链式法则 ∂L/∂y_{s-1} = (∂y_s/∂y_{s-1})ᵀ·∂L/∂y_s，
   即 `y_s.backward(收到的梯度)` 之后输入缓冲区的 .grad——正是要发给前一阶段的东西；同时本段参数的 .grad
   累加进 (∂y_s/∂θ_s)ᵀ·∂L/∂y_s，与整模型一次反向时这些参数得到的梯度逐项相同。
   loss 与单进程的梯度累积（`training_sys.pretrain.accumulate_step`）同样按 token 加权：
   L = Σ_k (n_k / N)·L_k，n_k 是 micro-batch k 里 target ≠ -100 的 token 数，N = Σ_k n_k。

3. 死锁与配对的 isend / irecv：gloo 的 send 要等对端贴出 recv 才能完成（实测：两个 rank 都先 `dist.send`
   再 `dist.recv`，哪怕只发 1 个元素也会永远挂住）。1F1B 的稳态里相邻两段**同时**
   要给对方发东西：阶段 s 把 micro-batch i 的激活发给 s+1，阶段 s+1 把 micro-batch j 的梯度发给 s。
   若两边都先阻塞地 send、再 recv，就各自等对方先 recv——死锁。解法：把这一对操作一起贴出
   （`dist.isend` 与 `dist.irecv`，都不阻塞），再等两个都完成；对端同时贴出的正是与之配对的一对
   （"发激活 + 收梯度" ↔ "发梯度 + 收激活"）。激活与梯度用不同的 tag，所以即使贴出的先后不同也不会错配。
   为什么不用 `dist.batch_isend_irecv`：它在 gloo 上曾经挂死；逐个 isend / irecv 再 wait 语义相同、每一步都看得见。
   配对的另一半是调度本身：每个 rank 的收发序列必须与邻居的收发序列一一对应（下面两种调度都逐条核对过，
   `replay_timeline` 按记录的事件顺序回放，若有不可能满足的依赖就报错）。

4. GPipe（Huang et al. 2019）：先让 m 个 micro-batch 依次走完所有前向，再依次走完所有反向。
   气泡（bubble）：设每个阶段一个前向用时 t_f、一个反向 t_b。第一个 micro-batch 走到最后一段要 (p-1)·t_f，
   这段时间里后面的阶段空等；反向同理从最后一段退回第一段要 (p-1)·t_b。总时长
       T = (m + p - 1)·(t_f + t_b)，其中每个阶段真正计算 m·(t_f + t_b)，
   空闲比例 = 1 - m/(m + p - 1) = (p - 1)/(m + p - 1)。m ≫ p 时气泡才小——m 要大。
   代价是内存：阶段 s 要把 m 个 micro-batch 的前向激活都留到反向，活着的激活数 = m。

5. 1F1B（PipeDream-Flush / Megatron-LM 的非交错调度）：阶段 s 先做 w = min(p - s - 1, m) 个前向（预热），
   之后每做一个前向就立刻做一个反向（稳态），最后把剩下的 w 个反向做完（冷却）。
   气泡与 GPipe 相同（(p-1)/(m+p-1)：预热与冷却正好是 GPipe 两头的三角形），但一个 micro-batch 的反向一做完
   它的激活就释放：阶段 s 同时活着的激活最多 min(w + 1, m) = min(p - s, m) ≤ p 个，与 m 无关——于是可以把 m 开大来压气泡，
   而内存不涨。这就是真正用的版本。

6. 图（`plot_schedules`）：每个 rank 记录它实际执行的事件顺序（F/B, micro-batch），`replay_timeline` 按
   t_b = 2·t_f 的理想时长与跨阶段依赖（F 要等前一段的 F、B 要等后一段的 B）回放成时间轴——
   2 核共享的机器上墙钟时间噪声太大，回放的时间轴只反映调度本身；量出的气泡比例与上面的公式相同（测试核对）。

7. 接进训练循环（`PipelineStrategy`，`torchrun ... -m training_sys.pretrain --parallel pp [--pp-schedule gpipe]`）：
   每个 rank 仍建出完整的 Llama（同一个种子，权重相同），再按 rank 号取出自己那一段；训练循环的 `model` 与优化器都还是
   完整模型——别的段的参数永远拿不到梯度，AdamW / Muon 跳过 grad 为 None 的参数，所以每个 rank 实际只更新自己那段，
   而优化器 state_dict 的参数编号天然与单进程相同（checkpoint 的优化器状态直接拼起来就是单进程格式）。
   - 一步 = `forward_backward` 钩子：循环抽出的 grad_accum 个 micro-batch 就是流水线的 m 个 micro-batch，
     分母 N = 这一步全部 micro-batch 的有效 token 数（各 rank 看同一份数据，各自数得出），与 accumulate_step 相同。
   - loss：只有最后一段算得出；其余段返回 0，`reduce_loss` 用 all-reduce SUM 把它带给每个 rank（发散检查与日志一致）。
   - 裁剪：总范数² = Σ_段 ‖g_段‖²（每个参数只属于一段），各段求平方和后 all-reduce SUM，所有段用同一个系数。
   - 评估与样例：选"收齐"而不是"流水线前向"。评估前各段把自己的权重点对点发给 rank 0，装进 rank 0 的完整模型，
     由 rank 0 照单进程的方式评估和生成样例（生成一个 token 就要走一遍流水线，p 个 rank 大多在等）。代价是 rank 0
     要放得下整个模型——这里每个 rank 本来就建了完整模型；真正的大模型放不下时，评估也要走流水线（Megatron 的 forward_only）。
   - checkpoint：同样先收齐权重，优化器状态用 gather_object 收到 rank 0 再合并（各段的参数编号互不相交），
     于是仍是一个 HF 目录 + 单进程格式的优化器状态；续训时每个 rank 装入完整权重，优化器只留自己那段的状态。

与 PyTorch 的对照：`torch.distributed.pipelining` 的 `PipelineStage` + `ScheduleGPipe` / `Schedule1F1B`
包装同一个 `LlamaStage`，梯度相同（main 与测试都核对）。真正的框架还会：只在本 rank 上实例化自己那一段
（meta 设备上建模型再只加载本段权重），以及交错调度（每个 rank 多段、气泡再除以段数）、零气泡调度（把反向拆成
对输入的梯度与对权重的梯度）。这里整模型先建好再切，为的是和单进程逐位对照。
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor, nn

from model_lab import Llama
from model_lab.attention_backends import make_attention_mask
from training_sys.strategy import SingleDevice
from utils.io import is_smoke, output_path, save_figure
from utils.lesson_cli import lesson_args

__all__ = ["SCHEDULES", "LlamaStage", "PipelineStepResult", "PipelineStrategy", "bubble_fraction", "gpipe_step",
           "one_f_one_b_step", "plot_schedules", "replay_timeline"]

IGNORE_INDEX = -100
# 激活与梯度走同一对 rank，用不同的 tag 区分：两边贴出 isend / irecv 的先后不同也不会把激活当成梯度收下
ACTIVATION_TAG, GRADIENT_TAG = 0, 1


class LlamaStage(nn.Module):
    """一个 Llama 的第 stage 段（共 num_stages 段）：引用原模型的子模块，参数名仍是 HF 的全名。

    forward(x)：阶段 0 的 x 是 token id (B, T)，其余阶段是上一段的隐藏状态 (B, T, C)；
    返回本段的输出：中间阶段是隐藏状态 (B, T, C)，最后一段是 logits (B, T, V)。
    prev_rank / next_rank：相邻阶段的全局 rank（默认 stage ∓ 1，即进程组里只有流水线这一维）；用 ParallelMesh 时
    用 `LlamaStage.from_mesh`。
    """

    def __init__(self, model: Llama, stage: int, num_stages: int, *, prev_rank: int | None = None,
                 next_rank: int | None = None) -> None:
        super().__init__()
        if not isinstance(model, Llama):
            raise TypeError(f"LlamaStage 切分的是 model_lab 的 Llama，收到 {type(model).__name__}")
        for name, value in (("num_stages", num_stages), ("stage", stage)):
            if not isinstance(value, int) or isinstance(value, bool):
                raise TypeError(f"{name}={value!r} 必须是整数")
        if num_stages < 1:
            raise ValueError(f"num_stages={num_stages} 必须 ≥ 1")
        if not 0 <= stage < num_stages:
            raise ValueError(f"stage={stage} 超出范围 [0, {num_stages})")
        c = model.config
        n_layers = c.num_hidden_layers
        if num_stages > n_layers:
            raise ValueError(f"num_stages={num_stages} > num_hidden_layers={n_layers}：有的阶段会一层都没有（空阶段）；"
                             "减少流水线段数或加层数")
        if n_layers % num_stages:
            raise ValueError(f"num_hidden_layers={n_layers} 不能被 num_stages={num_stages} 整除：各阶段层数不等，"
                             "最慢的一段决定整条流水线的速度；选一个能整除层数的段数")
        if c.tie_word_embeddings and num_stages > 1:
            raise ValueError("tie_word_embeddings=True 时嵌入表在第一段、lm_head 在最后一段却是同一个矩阵，"
                             "需要在两段之间额外 all-reduce 它的梯度（Megatron 的 embedding group），这里不支持；"
                             "用 tie_word_embeddings=False 或 num_stages=1")
        per = n_layers // num_stages
        self.config, self.stage, self.num_stages = c, stage, num_stages
        self.layer_range = range(stage * per, (stage + 1) * per)
        self.is_first, self.is_last = stage == 0, stage == num_stages - 1
        self.prev_rank = None if self.is_first else (stage - 1 if prev_rank is None else prev_rank)
        self.next_rank = None if self.is_last else (stage + 1 if next_rank is None else next_rank)
        trunk = model.model
        self.model = nn.Module()  # 容器的属性名 = HF 的 "model." 前缀
        if self.is_first:
            self.model.embed_tokens = trunk.embed_tokens
        # 以全局层号为键：state_dict 里是 model.layers.{全局层号}.…，各段拼起来就是完整的 HF 权重
        self.model.layers = nn.ModuleDict({str(i): trunk.layers[i] for i in self.layer_range})
        self.model.rotary_emb = trunk.rotary_emb
        if self.is_last:
            self.model.norm = trunk.norm
            self.lm_head = model.lm_head

    @classmethod
    def from_mesh(cls, model: Llama, mesh) -> LlamaStage:
        """按 ParallelMesh 的 pp 坐标切分，相邻阶段的全局 rank 取自 mesh（pp 之外还有 dp / tp 维时 rank 不是 stage±1）。"""
        return cls(model, mesh.local_rank("pp"), mesh.size("pp"), prev_rank=mesh.prev_stage_rank,
                   next_rank=mesh.next_stage_rank)

    def forward(self, x: Tensor) -> Tensor:
        t = x.size(1)
        if self.is_first:
            x = self.model.embed_tokens(x)  # (B, T) → (B, T, C)
        position_ids = torch.arange(t, device=x.device)[None]  # (1, T)
        rope = self.model.rotary_emb(position_ids)
        mask = make_attention_mask(t, 0, None, x.device)  # 无前缀、无 padding：None，层内走 is_causal
        for layer in self.model.layers.values():
            x = layer(x, rope, None, mask, None)
        if self.is_last:
            return self.lm_head(self.model.norm(x))  # (B, T, V)
        return x  # (B, T, C)


@dataclass
class PipelineStepResult:
    """一步流水线的结果（每个 rank 一份）。

    loss：最后一段上是这一步 token 加权的平均 loss Σ_k (n_k/N)·L_k（0-d、已 detach），其余阶段 None
    （接进训练循环时由 reduce_loss 从最后一段广播）。
    max_live_activations：本段同时保存着、等待反向的前向输出最多有几个（GPipe = m，1F1B = min(p - stage, m)）。
    events：本段实际执行的顺序，[("F" 或 "B", micro-batch 序号), ...]。
    """

    loss: Tensor | None
    max_live_activations: int
    events: list[tuple[str, int]] = field(default_factory=list)


class _StepRunner:
    """一步里两种调度共用的部分：前向 / 反向一个 micro-batch、与邻居收发、记账（活着的激活、事件顺序）。"""

    def __init__(self, stage: LlamaStage, micro_batches: Sequence[tuple[Tensor, Tensor]],
                 token_denominator: float | None) -> None:
        if not isinstance(stage, LlamaStage):
            raise TypeError(f"流水线调度需要 LlamaStage，收到 {type(stage).__name__}；先用 LlamaStage(model, stage, p) 切分")
        if len(micro_batches) == 0:
            raise ValueError("micro_batches 为空：一步至少要有一个 (x, y)")
        shape = tuple(micro_batches[0][0].shape)
        for k, (x, y) in enumerate(micro_batches):
            if x.dim() != 2 or tuple(x.shape) != shape or tuple(y.shape) != shape:
                raise ValueError(f"micro-batch {k} 的形状 x {tuple(x.shape)}、y {tuple(y.shape)} 与第 0 个的 {shape} 不同："
                                 "接收方要按固定形状 (B, T, C) 预先分配缓冲区，所有 micro-batch 必须同形状")
        counts = torch.stack([(y != IGNORE_INDEX).sum() for _, y in micro_batches]).tolist()
        if token_denominator is None:
            token_denominator = sum(counts)
            if token_denominator == 0:
                raise ValueError(f"这一步所有 micro-batch 的 target 都是 {IGNORE_INDEX}：没有可学习的 token；检查数据的掩码")
        elif not token_denominator > 0:
            raise ValueError(f"token_denominator={token_denominator!r} 必须 > 0（全局有效 token 数 / 数据并行份数）")
        self.denom = token_denominator
        if stage.num_stages > 1 and not dist.is_initialized():
            raise RuntimeError("流水线调度需要先建好默认进程组：torchrun 下调用 training_sys.distributed.init_from_env()，"
                               "课程 / 测试里用 training_sys.distributed.spawn(...) 启动")
        self.stage, self.micro_batches, self.counts = stage, micro_batches, counts
        param = next(stage.parameters())
        self.buffer_shape = (*shape, stage.config.hidden_size)
        self.dtype, self.device = param.dtype, param.device
        self.saved: dict[int, tuple[Tensor | None, Tensor]] = {}  # micro-batch → (输入, 输出)，等反向
        self.max_live = 0
        self.events: list[tuple[str, int]] = []
        self.loss: Tensor | None = None

    # ---- 计算 ----
    def forward(self, k: int, received: Tensor | None) -> Tensor:
        x, y = self.micro_batches[k]
        if self.stage.is_first:
            inp = x.to(self.device)
        else:
            inp = received.requires_grad_()  # 反向后它的 .grad 就是要发回前一段的 ∂L/∂x
        out = self.stage(inp)
        if self.stage.is_last:
            out = self._weighted_loss(out, y.to(self.device), self.counts[k])
            self.loss = out.detach() if self.loss is None else self.loss + out.detach()
        self.saved[k] = (None if self.stage.is_first else inp, out)
        self.max_live = max(self.max_live, len(self.saved))
        self.events.append(("F", k))
        return out

    def _weighted_loss(self, logits: Tensor, y: Tensor, n: int) -> Tensor:
        # 与 accumulate_step 相同的归一化：micro-batch 的平均 loss 乘 n_k / N；没有有效 token 时贡献 0（0/0 = NaN 不能进梯度）
        if n == 0:
            return logits.float().sum() * 0.0
        loss = F.cross_entropy(logits.float().view(-1, logits.size(-1)), y.reshape(-1), ignore_index=IGNORE_INDEX)
        return loss if n == self.denom else loss * (n / self.denom)

    def backward(self, k: int, grad_out: Tensor | None) -> Tensor | None:
        inp, out = self.saved.pop(k)  # 出栈即释放：这个 micro-batch 的激活（整张计算图）不再被引用
        if self.stage.is_last:
            out.backward()
        else:
            out.backward(grad_out)
        self.events.append(("B", k))
        return None if inp is None else inp.grad

    # ---- 通信：每次都把这一轮要做的 isend / irecv 一起贴出，再逐个等完成 ----
    def _exchange(self, sends: Sequence[tuple[Tensor, int, int]], recvs: Sequence[tuple[int, int]]) -> list[Tensor]:
        buffers = [torch.empty(self.buffer_shape, dtype=self.dtype, device=self.device) for _ in recvs]
        works = [dist.isend(t.detach().contiguous(), peer, tag=tag) for t, peer, tag in sends]
        works += [dist.irecv(buf, peer, tag=tag) for buf, (peer, tag) in zip(buffers, recvs)]
        for w in works:
            w.wait()
        return buffers

    def recv_forward(self) -> Tensor | None:
        if self.stage.is_first:
            return None
        return self._exchange([], [(self.stage.prev_rank, ACTIVATION_TAG)])[0]

    def send_forward(self, out: Tensor) -> None:
        if not self.stage.is_last:
            self._exchange([(out, self.stage.next_rank, ACTIVATION_TAG)], [])

    def recv_backward(self) -> Tensor | None:
        if self.stage.is_last:
            return None
        return self._exchange([], [(self.stage.next_rank, GRADIENT_TAG)])[0]

    def send_backward(self, grad_in: Tensor | None) -> None:
        if not self.stage.is_first:
            self._exchange([(grad_in, self.stage.prev_rank, GRADIENT_TAG)], [])

    def send_forward_recv_backward(self, out: Tensor) -> Tensor | None:
        """稳态里的一半：发出刚算完的激活、同时收下一个要反向的梯度（对端此刻正在 send_backward_recv_forward）。"""
        if self.stage.is_last:
            return None
        return self._exchange([(out, self.stage.next_rank, ACTIVATION_TAG)], [(self.stage.next_rank, GRADIENT_TAG)])[0]

    def send_backward_recv_forward(self, grad_in: Tensor | None) -> Tensor | None:
        """稳态里的另一半：发回刚算完的输入梯度、同时收下一个 micro-batch 的激活。"""
        if self.stage.is_first:
            return None
        return self._exchange([(grad_in, self.stage.prev_rank, GRADIENT_TAG)],
                              [(self.stage.prev_rank, ACTIVATION_TAG)])[0]

    def result(self) -> PipelineStepResult:
        return PipelineStepResult(self.loss, self.max_live, self.events)


def gpipe_step(stage: LlamaStage, micro_batches: Sequence[tuple[Tensor, Tensor]], *,
               token_denominator: float | None = None) -> PipelineStepResult:
    """GPipe（全前向、再全反向）：一步的所有 micro-batch，梯度累加进本段参数的 .grad。所有流水线 rank 同时调用。

    micro_batches：[(x, y), ...]，每个 (B, T) 且同形状；每个 rank 传同一份（第一段只用 x，最后一段只用 y 与 token 数）。
    token_denominator：loss 的分母，默认这些 micro-batch 里的有效 token 数 N。与数据并行组合时传
    "全体数据并行 rank 的有效 token 数 / data_parallel_size"（与 accumulate_step 的 denom 相同），DP 对梯度求平均后恰好是 1/N。
    形状与 accumulate_step 相同（模型、一步的 micro-batch 列表 → 梯度累加进 .grad、返回 loss），
    所以训练循环经策略钩子 `PipelineStrategy.forward_backward` 直接调用它（--pp-schedule gpipe）。
    两个阶段都是单向的（前向只向后发、反向只向前发），逐个阻塞地收发就不会死锁。
    """
    run = _StepRunner(stage, micro_batches, token_denominator)
    m = len(micro_batches)
    for k in range(m):
        run.send_forward(run.forward(k, run.recv_forward()))
    for k in range(m):
        run.send_backward(run.backward(k, run.recv_backward()))
    return run.result()


def one_f_one_b_step(stage: LlamaStage, micro_batches: Sequence[tuple[Tensor, Tensor]], *,
                     token_denominator: float | None = None) -> PipelineStepResult:
    """1F1B：预热 w = min(p - stage - 1, m) 个前向，稳态一前一后，冷却 w 个反向。参数与返回值同 gpipe_step。

    相邻两段的收发一一对应（p = 2、m = 4 时）：
        阶段 0：发 a0 │ 发 a1 + 收 g0 │ 发 a2 + 收 g1 │ 发 a3 + 收 g2 │ 收 g3
        阶段 1：收 a0 │ 发 g0 + 收 a1 │ 发 g1 + 收 a2 │ 发 g2 + 收 a3 │ 发 g3
    "发 + 收"的两格是同时贴出的 isend / irecv（见模块说明第 3 点）。
    """
    run = _StepRunner(stage, micro_batches, token_denominator)
    m = len(micro_batches)
    warmup = min(stage.num_stages - stage.stage - 1, m)
    steady = m - warmup
    for k in range(warmup):
        run.send_forward(run.forward(k, run.recv_forward()))
    received = run.recv_forward() if steady else None
    for j in range(steady):
        out = run.forward(warmup + j, received)
        grad_out = run.send_forward_recv_backward(out)
        grad_in = run.backward(j, grad_out)  # 反向的是最早还没反向的 micro-batch j
        if j == steady - 1:
            run.send_backward(grad_in)
        else:
            received = run.send_backward_recv_forward(grad_in)
    for k in range(steady, m):
        run.send_backward(run.backward(k, run.recv_backward()))
    return run.result()


# ---------------------------------------------------------------------------------------------------
# 训练循环的策略：--parallel pp
# ---------------------------------------------------------------------------------------------------

SCHEDULES = {"1f1b": one_f_one_b_step, "gpipe": gpipe_step}


class PipelineStrategy(SingleDevice):
    """纯流水线并行的 TrainStrategy：world_size 个 rank = world_size 段，rank r 是第 r 段，各 rank 看同一份数据。

    schedule：1f1b（默认）或 gpipe。见模块说明第 7 点。
    """

    def __init__(self, schedule: str = "1f1b") -> None:
        if schedule not in SCHEDULES:
            raise ValueError(f"schedule={schedule!r} 未知；可选 {tuple(SCHEDULES)}")
        if not dist.is_initialized():
            raise RuntimeError("PipelineStrategy 需要先建好默认进程组：torchrun 下调用 training_sys.distributed.init_from_env()，"
                               "课程 / 测试里用 training_sys.distributed.spawn(...) 启动")
        self.schedule = schedule
        self.rank, self.world_size = dist.get_rank(), dist.get_world_size()
        self.stage: LlamaStage | None = None
        self.device = torch.device("cpu")
        self._stage_names: list[list[str]] = []

    @property
    def is_main_process(self) -> bool:
        return self.rank == 0

    def _stage(self) -> LlamaStage:
        if self.stage is None:
            raise RuntimeError("PipelineStrategy 还没有 prepare_model：先调用 prepare_model(model) 切分模型")
        return self.stage

    def prepare_model(self, model: nn.Module) -> nn.Module:
        """切出本 rank 的那一段；返回完整模型本身（优化器建在它上面，参数编号与单进程相同，见模块说明第 7 点）。"""
        if not isinstance(model, Llama):
            raise TypeError(f"--parallel pp 按层切分 model_lab 的 Llama，收到 {type(model).__name__}")
        try:
            self._stage_names = [[n for n, _ in LlamaStage(model, s, self.world_size).named_parameters()]
                                 for s in range(self.world_size)]
        except ValueError as e:
            raise ValueError(f"--parallel pp 有 {self.world_size} 个 rank（每个 rank 一段）：{e}") from None
        self.stage = LlamaStage(model, self.rank, self.world_size)
        self.device = next(model.parameters()).device
        from training_sys.distributed.ddp import broadcast_parameters

        broadcast_parameters(model)  # 各 rank 从 rank 0 的同一份初始权重出发（同一个种子本来就相同；外面传来的模型未必）
        return model

    def forward_backward(self, model: nn.Module, micro_batches: Sequence[tuple[Tensor, Tensor]], *,
                         autocast: Callable[[], contextlib.AbstractContextManager] = contextlib.nullcontext,
                         sync_model: nn.Module | None = None) -> Tensor:
        """一步 = 一次 1F1B / GPipe 调度（model 与 sync_model 不用：计算走本 rank 的 LlamaStage）。

        返回：最后一段是 token 加权的平均 loss，其余段是 0——reduce_loss 的 SUM 因而恰好是那个 loss。
        """
        with autocast():
            result = SCHEDULES[self.schedule](self._stage(), micro_batches)
        return result.loss if result.loss is not None else torch.zeros((), device=self.device)

    def reduce_loss(self, loss: Tensor) -> float:
        t = loss.detach().float().reshape(1).to(self.device)
        dist.all_reduce(t)
        return t.item()

    def stop_requested(self, local: bool) -> bool:
        t = torch.tensor([int(bool(local))], dtype=torch.int64, device=self.device)
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
        return bool(t.item())

    @torch.no_grad()
    def clip_grad_norm(self, model: nn.Module, max_norm: float) -> Tensor:
        """‖g‖² = Σ_段 ‖g_段‖²：本段的平方和 all-reduce SUM 后开根号，所有段按同一个系数缩放（与单进程的整体裁剪相同）。"""
        if max_norm < 0:
            raise ValueError(f"max_norm={max_norm} 不能是负数（LLM 预训练常用 1.0）")
        grads = [p.grad for p in self._stage().parameters() if p.grad is not None]
        sq = torch.zeros(1, device=self.device)
        for g in grads:
            sq += torch.linalg.vector_norm(g.float()) ** 2
        dist.all_reduce(sq)
        total = sq[0].sqrt()
        clip_coef = torch.clamp(max_norm / (total + 1e-6), max=1.0)
        for g in grads:
            g.mul_(clip_coef.to(g.dtype))
        return total

    def _gather_weights(self, model: nn.Module) -> None:
        """各段把自己的参数逐个发给 rank 0，直接收进 rank 0 完整模型里对应的参数（名字两边都知道，不用打包）。"""
        params = dict(model.named_parameters())
        for s in range(1, self.world_size):
            if self.rank not in (0, s):
                continue
            for name in self._stage_names[s]:
                if self.rank == 0:
                    dist.recv(params[name].data, src=s)
                else:
                    dist.send(params[name].data, dst=0)

    def _own_indices(self, optimizer: torch.optim.Optimizer) -> set[int]:
        """优化器 state_dict 里属于本段参数的编号（编号 = 各参数组的参数依次排开的序号，torch 的约定）。"""
        own = {id(p) for p in self._stage().parameters()}
        params = [p for group in optimizer.param_groups for p in group["params"]]
        return {i for i, p in enumerate(params) if id(p) in own}

    @contextlib.contextmanager
    def eval_models(self, model: nn.Module, fwd_model: nn.Module) -> Iterator[tuple[nn.Module, nn.Module]]:
        """评估前把各段收到 rank 0：rank 0 的完整模型此刻与单进程的相同，由它评估、生成样例（runs_evaluation 只有 rank 0）。"""
        self._gather_weights(model)
        yield model, model

    @contextlib.contextmanager
    def full_state(self, model: nn.Module, optimizer: torch.optim.Optimizer
                   ) -> Iterator[tuple[nn.Module, dict[str, Any]]]:
        """rank 0 产出完整权重的模型与合并后的单进程格式优化器状态；其余 rank 产出的是不完整的（它们不写文件）。"""
        self._gather_weights(model)
        state = optimizer.state_dict()
        own = self._own_indices(optimizer)
        mine = {i: st for i, st in state["state"].items() if i in own}
        parts: list[Any] | None = [None] * self.world_size if self.rank == 0 else None
        dist.gather_object(mine, parts, dst=0)
        if parts is not None:
            merged = {i: st for part in parts for i, st in part.items()}
            state = {"state": dict(sorted(merged.items())), "param_groups": state["param_groups"]}
        yield model, state

    def load_full_state(self, model: nn.Module, optimizer: torch.optim.Optimizer,
                        model_state: dict[str, Tensor], optimizer_state: dict[str, Any], strict: bool) -> None:
        """每个 rank 装入完整权重（完整模型在每个 rank 上都有）；优化器只留本段参数的状态——
        别的段的状态留着不但占内存，下次保存时还会和那一段的主人重复。"""
        model.load_state_dict(model_state, strict=strict)
        own = self._own_indices(optimizer)
        optimizer.load_state_dict({"state": {i: st for i, st in optimizer_state["state"].items() if i in own},
                                   "param_groups": optimizer_state["param_groups"]})


# ---------------------------------------------------------------------------------------------------
# 时间轴回放、气泡与图
# ---------------------------------------------------------------------------------------------------

Timeline = list[list[tuple[str, int, float, float]]]  # 每个阶段：[(F/B, micro-batch, 开始, 结束), ...]


def replay_timeline(events_per_stage: Sequence[Sequence[tuple[str, int]]], t_forward: float = 1.0,
                    t_backward: float = 2.0) -> Timeline:
    """按各阶段记录的执行顺序回放成时间轴：每个事件尽早开始，但要等本段上一个事件结束，以及跨段依赖——
    F(k) 等前一段的 F(k)，B(k) 等后一段的 B(k)（最后一段的 B(k) 等自己的 F(k)）。
    顺序里若有永远满足不了的依赖（真跑会死锁的调度），报 ValueError。
    """
    p = len(events_per_stage)
    end: dict[tuple[int, str, int], float] = {}
    clock, pos = [0.0] * p, [0] * p
    timeline: Timeline = [[] for _ in range(p)]
    while any(pos[s] < len(events_per_stage[s]) for s in range(p)):
        progressed = False
        for s in range(p):
            while pos[s] < len(events_per_stage[s]):
                kind, k = events_per_stage[s][pos[s]]
                if kind == "F":
                    dep = (s - 1, "F", k) if s > 0 else None
                elif kind == "B":
                    dep = (s + 1, "B", k) if s < p - 1 else (s, "F", k)
                else:
                    raise ValueError(f"未知的事件 {kind!r}：只有 'F'（前向）与 'B'（反向）")
                if dep is not None and dep not in end:
                    break
                start = max(clock[s], end[dep] if dep is not None else 0.0)
                clock[s] = end[(s, kind, k)] = start + (t_forward if kind == "F" else t_backward)
                timeline[s].append((kind, k, start, clock[s]))
                pos[s] += 1
                progressed = True
        if not progressed:
            stuck = {s: events_per_stage[s][pos[s]] for s in range(p) if pos[s] < len(events_per_stage[s])}
            raise ValueError(f"事件顺序里有无法满足的依赖（真跑会死锁）：各阶段卡在 {stuck}")
    return timeline


def bubble_fraction(timeline: Timeline) -> float:
    """空闲比例 = 1 - 各阶段计算时间之和 / (阶段数 × 总时长)。"""
    makespan = max(ev[3] for stage in timeline for ev in stage)
    busy = sum(ev[3] - ev[2] for stage in timeline for ev in stage)
    return 1.0 - busy / (len(timeline) * makespan)


def plot_schedules(timelines: dict[str, Timeline], path: Path, live: dict[str, list[int]] | None = None) -> Path:
    """每种调度一行子图：横轴时间、纵轴阶段，F（蓝）/ B（橙）块里写 micro-batch 号，空白处就是气泡。"""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(len(timelines), 1, figsize=(10, 1.2 + 1.0 * sum(len(t) for t in timelines.values())),
                             squeeze=False)
    colors = {"F": "#4C72B0", "B": "#DD8452"}
    for ax, (name, timeline) in zip(axes[:, 0], timelines.items()):
        p = len(timeline)
        for s, events in enumerate(timeline):
            for kind, k, start, stop in events:
                ax.broken_barh([(start, stop - start)], (s - 0.4, 0.8), facecolors=colors[kind], edgecolor="white")
                ax.text((start + stop) / 2, s, f"{kind}{k}", ha="center", va="center", color="white", fontsize=8)
        title = f"{name}: bubble = {bubble_fraction(timeline):.1%}"
        if live is not None:
            title += f", peak live activations per stage = {live[name]}"
        ax.set(yticks=range(p), yticklabels=[f"stage {s}" for s in range(p)], ylabel="pipeline stage (rank)",
               xlabel="replayed time (units of one forward t_f; t_b = 2 t_f)", title=title)
        ax.invert_yaxis()
    fig.tight_layout()
    return save_figure(fig, path, dpi=110)


# ---------------------------------------------------------------------------------------------------
# 演示：2 个进程、两种调度，与单进程梯度累积和 torch.distributed.pipelining 对照
# ---------------------------------------------------------------------------------------------------


def _grads(module: nn.Module) -> dict[str, object]:
    # 交回父进程的张量转成 numpy：torch 的张量经 multiprocessing 队列传的是共享内存句柄，子进程退出后父进程就取不到了
    return {name: p.grad.detach().numpy().copy() for name, p in module.named_parameters()}


def _torch_pipelining_grads(stage: LlamaStage, micro_batches, schedule: str) -> dict[str, object]:
    """同一个 LlamaStage 交给 torch.distributed.pipelining 跑一遍，返回本段的梯度。

    torch 的调度对每个 micro-batch 的 loss 分别反向、最后把梯度除以 m（scale_grads=True），即 (1/m)·Σ_k ∇L_k；
    各 micro-batch 有效 token 数相同时它等于 token 加权的 ∇(Σ_k n_k L_k / N)，所以对照用不含 -100 的数据。
    """
    from torch.distributed.pipelining import PipelineStage, Schedule1F1B, ScheduleGPipe

    stage.zero_grad(set_to_none=True)
    pipe = PipelineStage(stage, stage.stage, stage.num_stages, next(stage.parameters()).device)
    cls = {"gpipe": ScheduleGPipe, "1f1b": Schedule1F1B}[schedule]

    def loss_fn(logits: Tensor, y: Tensor) -> Tensor:
        return F.cross_entropy(logits.float().flatten(0, 1), y.flatten(), ignore_index=IGNORE_INDEX)

    sched = cls(pipe, n_microbatches=len(micro_batches), loss_fn=loss_fn)
    x = torch.cat([x for x, _ in micro_batches])
    y = torch.cat([y for _, y in micro_batches])
    if stage.is_first:
        sched.step(x)
    elif stage.is_last:
        sched.step(target=y)
    else:
        sched.step()
    return _grads(stage)


def _demo_worker(rank: int, world: int, config, micro_batches) -> dict:
    from training_sys.distributed.mesh import ParallelMesh
    from utils.torch_playground import setup_seed

    setup_seed(0)
    model = Llama(config)
    stage = LlamaStage.from_mesh(model, ParallelMesh(pp=world))
    out = {"rank": rank}
    for name, step in (("GPipe", gpipe_step), ("1F1B", one_f_one_b_step)):
        stage.zero_grad(set_to_none=True)
        res = step(stage, micro_batches)
        out[name] = {"loss": None if res.loss is None else res.loss.item(), "grads": _grads(stage),
                     "live": res.max_live_activations, "events": res.events}
    for schedule in ("gpipe", "1f1b"):
        out[f"torch_{schedule}"] = _torch_pipelining_grads(stage, micro_batches, schedule)
    return out


def main() -> None:
    from model_lab import LlamaConfig
    from training_sys.distributed.launch import spawn
    from training_sys.pretrain import accumulate_step
    from utils.torch_playground import setup_seed

    smoke = is_smoke()
    pp, m = 2, (4 if smoke else 8)
    b, t = (2, 16) if smoke else (4, 64)
    config = LlamaConfig(vocab_size=128 if smoke else 512, hidden_size=32 if smoke else 128,
                         intermediate_size=64 if smoke else 256, num_hidden_layers=4, num_attention_heads=4,
                         num_key_value_heads=2, max_position_embeddings=128)
    gen = torch.Generator().manual_seed(1)
    micro_batches = [(torch.randint(0, config.vocab_size, (b, t), generator=gen),
                      torch.randint(0, config.vocab_size, (b, t), generator=gen)) for _ in range(m)]
    per_rank = spawn(_demo_worker, pp, config, micro_batches, timeout_s=300)

    setup_seed(0)  # 单进程对照：同一份初始权重、同样的梯度累积
    reference = Llama(config)
    ref_loss = accumulate_step(reference, micro_batches).item()
    ref_grads = {name: p.grad for name, p in reference.named_parameters()}

    def max_diff(key: str) -> float:
        merged = {name: g for out in per_rank for name, g in (out[key]["grads"] if key in ("GPipe", "1F1B")
                                                              else out[key]).items()}
        if merged.keys() != ref_grads.keys():
            raise AssertionError(f"{key}：各段参数拼起来与完整模型的参数名不同")
        return max((torch.from_numpy(merged[n]) - g).abs().max().item() for n, g in ref_grads.items())

    print(f"流水线并行：Llama {config.num_hidden_layers} 层切成 {pp} 段，一步 {m} 个 micro-batch（每个 {b}×{t}），"
          f"每个边界每步收发 2·m·B·T·C = {2 * m * b * t * config.hidden_size:,} 个元素")
    print(f"（输入与目标都是随机 token、模型未训练：loss 应在均匀分布的 ln V = {math.log(config.vocab_size):.4f} 附近；"
          "梯度最大差的容差 1e-5，loss 差的容差 1e-5）")
    print(f"{'调度':<16}{'loss':>12}{'梯度最大差':>14}{'每段活着的激活峰值':>22}")
    timelines, live = {}, {}
    for name in ("GPipe", "1F1B"):
        loss = per_rank[-1][name]["loss"]
        diff = max_diff(name)
        live[name] = [out[name]["live"] for out in per_rank]
        print(f"{name:<16}{loss:>12.6f}{diff:>14.2e}{str(live[name]):>22}")
        assert abs(loss - ref_loss) < 1e-5 and diff < 1e-5, f"{name} 与单进程梯度累积不一致"
        timelines[name] = replay_timeline([out[name]["events"] for out in per_rank])
    for name in ("gpipe", "1f1b"):
        diff = max_diff(f"torch_{name}")
        print(f"{'torch ' + name:<16}{'':>12}{diff:>14.2e}")
        assert diff < 1e-5, f"torch.distributed.pipelining 的 {name} 与单进程不一致"
    print(f"单进程梯度累积 loss {ref_loss:.6f}")
    print(f"每段活着的激活峰值的预期：GPipe 是 m = {m}，1F1B 阶段 s 是 min(p − s, m) = {[min(pp - s, m) for s in range(pp)]}")
    assert live["GPipe"] == [m] * pp and live["1F1B"] == [min(pp - s, m) for s in range(pp)]
    formula = (pp - 1) / (m + pp - 1)
    for name, timeline in timelines.items():
        print(f"{name} 回放的气泡比例 {bubble_fraction(timeline):.3f}，公式 (p-1)/(m+p-1) = {formula:.3f}")
    path = plot_schedules(timelines, output_path("figures", "pipeline_parallel.png"), live)
    print(f"调度图：{path}")


if __name__ == "__main__":
    lesson_args(__doc__)
    main()
