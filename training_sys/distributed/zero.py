"""ZeRO-1 与 ZeRO-2：把 AdamW 的状态（以及梯度）切成 world 份，每个数据并行 rank 只保管自己那一份。

运行：python training_sys/distributed/zero.py   （2 个 gloo 进程；SMOKE=1 几秒跑完）

一、数据并行里什么东西是冗余的
DDP 的每个 rank 都存着完整的参数 θ、完整的梯度 g、完整的 AdamW 状态 (m, v)，全体 rank 上这些东西逐位相同。
ψ 个 fp32 参数时每个 rank 要 4ψ（θ）+ 4ψ（g）+ 8ψ（m、v）字节；优化器状态占了一半（混合精度训练里还要加 fp32
主权重，状态占到 12ψ / 16ψ，ZeRO 论文 Rajbhandari et al. 2020 的记号 K = 12）。
AdamW 是逐坐标的：第 j 个坐标的更新只用到 θ_j、g_j、m_j、v_j 与几个标量（lr、β、步数），与别的坐标无关。
所以把 ψ 个坐标切成 world 段、第 r 段只由 rank r 更新，得到的结果与单进程逐位相同——只要最后把更新后的 θ 拼回来。

二、切法：扁平化 + 补齐
把所有参数按参数组的顺序展平、首尾相接成一条长 ψ 的向量，补零到 world 的倍数 ψ' = ⌈ψ/world⌉·world，
rank r 拥有 [r·S, (r+1)·S)，S = ψ'/world。一段可能横跨几个参数、一个参数也可能被切到两个 rank 上，
所以每个 rank 按"参数 ∩ 本段"得到若干个片（piece），对每个片调用 `adamw_update_`（与单进程同一个函数），
用那个参数所在组的 lr / weight_decay——参数组（衰减 / 不衰减）因此原样生效。补上的零不属于任何参数，从不更新。
torch 的 `ZeroRedundancyOptimizer` 按"整个参数"贪心地分给各 rank（不切开参数，各 rank 的份额只是大致相等）；
DeepSpeed 的 ZeRO-1/2 也是展平后等分（它按参数组各自展平、各自补齐），份额恰好是 1/world。

三、一步里的通信（ψ 个元素，每个 b 字节；环形算法下每个 rank 发送的字节数）
- DDP：all-reduce 梯度 = reduce-scatter + all-gather，2·(w−1)/w·ψ·b。
- ZeRO-1（本文件的 stage=1）：all-reduce 梯度（每个 rank 仍有完整的平均梯度）→ 更新自己的段 → all-gather 参数
  (w−1)/w·ψ·b。合计 3·(w−1)/w·ψ·b，是 DDP 的 1.5 倍；省下的是优化器状态：8ψ → 8ψ/w。
- ZeRO-2（stage=2）：每个 rank 只需要自己那一段的平均梯度，于是把 all-reduce 换成 reduce-scatter：
  rank r 收到 Σ_k g_k[r 段]，(w−1)/w·ψ·b；更新后 all-gather 参数 (w−1)/w·ψ·b。
  reduce-scatter + all-gather 恰好就是 all-reduce 拆成的两半（环形 all-reduce 本来就是这么实现的），
  所以 ZeRO-2 的通信量与 DDP 完全相同，只是两半之间插进了优化器更新；完整梯度 4ψ 换成一段 4ψ/w。
  每个 rank 的显存：4ψ + 4ψ/w + 8ψ/w（DDP 是 16ψ，w=8 时约 5.5ψ）。
这里在反向结束之后（clip 或 step 时）一次性归约；DeepSpeed 在反向过程中按桶做 reduce-scatter、边算边释放，
完整梯度从不同时存在——那是在同样的通信量上再做与计算重叠，道理相同，本课不展开。

四、与训练循环的接口（为什么是一个独立的 Optimizer，而不是包在 AdamW 外面）
`ZeroOptimizer(params_or_groups, stage, lr, betas, eps, weight_decay, ...)` 本身就是 `torch.optim.Optimizer`，
参数与 AdamW 相同：LambdaLR 之类的调度器只改 param_groups[i]["lr"]，照常工作；`from_optimizer(adamw, stage)`
从已经建好的 AdamW 拷出参数组与超参数（`ZeroStrategy.prepare_optimizer` 用它）。
不做成"包装一个 AdamW"的原因：被包装的 AdamW 会按完整参数建状态（正是要省掉的东西），还得把它的 state 换成切片、
再阻止它自己的 step——两个对象同时声称拥有同一组参数，比一个只知道切片的优化器更难讲清楚。
state_dict() 是集合操作：把各 rank 的片 all-gather 回单进程 AdamW 的格式（键、形状、参数编号都相同）；
load_state_dict() 只在本地切出自己的片——所以 ZeRO 的 checkpoint 能在单卡续训，单卡的也能用 ZeRO 续训。
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from training_sys.optimization._checks import check_betas, check_eps, check_lr, check_weight_decay
from training_sys.optimization.adamw import adamw_update_
from training_sys.strategy import SingleDevice
from utils.lesson_cli import lesson_args

__all__ = ["ZeroOptimizer", "ZeroStrategy", "held_bytes"]

# 单进程 AdamW 状态里与参数同形状的张量（step 是标量，单独处理）
_MOMENT_KEYS = ("exp_avg", "exp_avg_sq", "max_exp_avg_sq")


def held_bytes(tensors: Iterable[torch.Tensor | None]) -> int:
    """这些张量实际占用的存储字节数；共享同一块存储的视图只算一次（ZeRO-1 的 p.grad 都是同一块扁平缓冲的视图）。"""
    storages: dict[int, int] = {}
    for t in tensors:
        if t is not None:
            s = t.untyped_storage()
            storages[s.data_ptr()] = s.nbytes()
    return sum(storages.values())


@dataclass(frozen=True)
class _Piece:
    """本 rank 段内属于某个参数的一片：参数 index 的 [param_lo, param_lo+numel) ↔ 段内 [shard_lo, shard_lo+numel)。"""

    index: int
    group: int
    param_lo: int
    shard_lo: int
    numel: int


class ZeroOptimizer(torch.optim.Optimizer):
    """ZeRO-1（stage=1）/ ZeRO-2（stage=2）的 AdamW：每个 rank 只保管扁平参数向量第 rank 段的状态（与梯度）。

    用法与 AdamW 相同，但 step / clip_grad_norm_ / state_dict 是集合操作，所有 rank 要在同一处调用：
        opt = ZeroOptimizer(weight_decay_param_groups(model, 0.1), stage=2, lr=3e-4)
        loss.backward(); opt.clip_grad_norm_(1.0); opt.step(); opt.zero_grad()
    各 rank 的模型在开始时必须相同（ZeroStrategy.prepare_model 从 rank 0 广播），反向得到的是本 rank 数据上的梯度，
    梯度的平均由本优化器完成（不要再套 DDP）。group：数据并行的进程组（默认全体 rank）。
    """

    def __init__(self, params, stage: int = 1, lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.999),
                 eps: float = 1e-8, weight_decay: float = 1e-2, amsgrad: bool = False, *, maximize: bool = False,
                 group: dist.ProcessGroup | None = None):
        if stage not in (1, 2):
            raise ValueError(f"stage={stage!r}：这里只有 ZeRO-1（stage=1，切优化器状态）与 ZeRO-2（stage=2，再切梯度）；"
                             "ZeRO-3（连参数也切）见 FSDP")
        if not dist.is_initialized():
            raise RuntimeError("ZeroOptimizer 需要先建好进程组：用 training_sys.distributed.spawn 或 torchrun "
                               "（init_from_env）启动；单进程请直接用 AdamW")
        check_lr(lr)
        check_betas(betas)
        check_eps(eps)
        check_weight_decay(weight_decay)
        defaults = dict(lr=lr, betas=tuple(betas), eps=eps, weight_decay=weight_decay, amsgrad=amsgrad,
                        maximize=maximize)
        super().__init__(params, defaults)
        for g in self.param_groups:
            check_lr(g["lr"])
            check_betas(g["betas"])
            check_eps(g["eps"])
            check_weight_decay(g["weight_decay"])
        self.stage = stage
        self.group = group
        self.world = dist.get_world_size(group)
        self.rank = dist.get_rank(group)
        self.params = [p for g in self.param_groups for p in g["params"]]
        kinds = {(p.dtype, p.device) for p in self.params}
        if len(kinds) > 1:
            raise TypeError(f"ZeroOptimizer 把所有参数拼成一条扁平向量，要求同一 dtype 与设备，收到 {sorted(map(str, kinds))}；"
                            "先 model.to(dtype)，或按 dtype 分成几个 ZeroOptimizer")
        self.numel = sum(p.numel() for p in self.params)
        self.shard_size = math.ceil(self.numel / self.world)      # S；补齐后的总长 ψ' = S · world
        self.padded_numel = self.shard_size * self.world
        lo, hi = self.rank * self.shard_size, (self.rank + 1) * self.shard_size
        self.pieces: list[_Piece] = []
        self._offsets: list[int] = []
        offset, index = 0, 0
        for gi, g in enumerate(self.param_groups):
            for p in g["params"]:
                a, b = offset, offset + p.numel()
                self._offsets.append(a)
                if max(a, lo) < min(b, hi):
                    self.pieces.append(_Piece(index, gi, max(a, lo) - a, max(a, lo) - lo, min(b, hi) - max(a, lo)))
                offset, index = b, index + 1
        self._shard_grad: torch.Tensor | None = None  # 本段的平均梯度（长 S）；stage 1 时是完整梯度缓冲的视图
        self._full_grad: torch.Tensor | None = None   # 仅 stage 1：完整的平均梯度（长 ψ'），p.grad 都是它的视图
        self._had_grad: list[bool] = []

    @classmethod
    def from_optimizer(cls, optimizer: torch.optim.Optimizer, stage: int,
                       group: dist.ProcessGroup | None = None) -> ZeroOptimizer:
        """从建好的 AdamW（本仓库的或 torch.optim.AdamW）换成 ZeRO 版本：参数组与每组的超参数原样保留，已有的状态也切过来。"""
        from training_sys.optimization import AdamW

        if not isinstance(optimizer, (AdamW, torch.optim.AdamW)):
            raise TypeError(f"ZeRO 这里切的是 AdamW 的状态，收到 {type(optimizer).__name__}；"
                            "用 --optimizer adamw（Muon 的正交化要看到整个矩阵，不能逐坐标切分）")
        groups = [dict(g) for g in optimizer.param_groups]
        zero = cls(groups, stage=stage, group=group)
        if any(optimizer.state[p] for p in zero.params):
            zero.load_state_dict(optimizer.state_dict())
        return zero

    # ------------------------------------------------------------------ 梯度
    def _local_flat_grad(self) -> torch.Tensor:
        p0 = self.params[0]
        flat = torch.zeros(self.padded_numel, dtype=p0.dtype, device=p0.device)
        for p, off in zip(self.params, self._offsets):
            if p.grad is not None:
                flat[off:off + p.numel()].copy_(p.grad.reshape(-1))
        return flat

    @torch.no_grad()
    def reduce_gradients(self) -> None:
        """把各 rank 的本地梯度平均：stage 1 all-reduce（留完整梯度），stage 2 reduce-scatter（只留本段）。已归约过则什么也不做。"""
        if self._shard_grad is not None:
            return
        # 哪些参数这一步有梯度（冻结层、没用到的参数没有）：任何一个 rank 有就算有，各 rank 必须一致地决定更新谁
        had = torch.tensor([p.grad is not None for p in self.params], dtype=torch.uint8, device=self.params[0].device)
        dist.all_reduce(had, op=dist.ReduceOp.MAX, group=self.group)
        self._had_grad = had.bool().tolist()
        flat = self._local_flat_grad()
        if self.stage == 1:
            dist.all_reduce(flat, group=self.group)
            flat.div_(self.world)
            self._full_grad = flat
            for p, off, had_p in zip(self.params, self._offsets, self._had_grad):
                # p.grad 指向平均后的梯度（与 DDP 同步后一样），本地的那份随之释放
                p.grad = flat[off:off + p.numel()].view_as(p) if had_p else None
            self._shard_grad = flat[self.rank * self.shard_size:(self.rank + 1) * self.shard_size]
        else:
            shard = torch.empty(self.shard_size, dtype=flat.dtype, device=flat.device)
            dist.reduce_scatter_single(shard, flat, group=self.group)
            shard.div_(self.world)
            for p in self.params:  # 完整梯度不再需要：只留本段（ZeRO-2 省下的就是这 (w-1)/w 的梯度）
                p.grad = None
            self._shard_grad = shard

    @torch.no_grad()
    def clip_grad_norm_(self, max_norm: float) -> torch.Tensor:
        """按全局 2-范数裁剪（先归约梯度）：各 rank 求本段的平方和，all-reduce SUM 后开根号，所有 rank 用同一个系数。

        补齐的零对平方和没有贡献，每个坐标恰好属于一个 rank，所以 Σ_r ‖g[r 段]‖² = ‖g‖²，与不切分时相同。
        """
        max_norm = float(max_norm)
        if max_norm < 0:
            raise ValueError(f"max_norm={max_norm} 不能是负数（LLM 预训练常用 1.0）")
        self.reduce_gradients()
        sq = self._shard_grad.double().square().sum()  # 在 fp64 里累加平方和：各段求和的顺序与单进程不同
        dist.all_reduce(sq, group=self.group)
        total = sq.sqrt().to(self._shard_grad.dtype)
        coef = torch.clamp(max_norm / (total + 1e-6), max=1.0)
        # stage 1 缩放完整梯度（p.grad 因而与单进程裁剪后的相同）；stage 2 只有本段
        (self._full_grad if self.stage == 1 else self._shard_grad).mul_(coef)
        return total

    def zero_grad(self, set_to_none: bool = True) -> None:
        super().zero_grad(set_to_none=set_to_none)
        self._shard_grad = self._full_grad = None

    # ------------------------------------------------------------------ 更新
    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        self.reduce_gradients()
        p0 = self.params[0]
        shard = torch.zeros(self.shard_size, dtype=p0.dtype, device=p0.device)
        for pc in self.pieces:
            p = self.params[pc.index]
            shard[pc.shard_lo:pc.shard_lo + pc.numel].copy_(p.reshape(-1)[pc.param_lo:pc.param_lo + pc.numel])
        for pc in self.pieces:
            if not self._had_grad[pc.index]:  # 与 AdamW 相同：没有梯度的参数不更新，状态也不前进
                continue
            g = self.param_groups[pc.group]
            adamw_update_(shard[pc.shard_lo:pc.shard_lo + pc.numel],
                          self._shard_grad[pc.shard_lo:pc.shard_lo + pc.numel], self.state[self.params[pc.index]],
                          lr=g["lr"], betas=g["betas"], eps=g["eps"], weight_decay=g["weight_decay"],
                          amsgrad=g["amsgrad"], maximize=g["maximize"])
        full = torch.empty(self.padded_numel, dtype=shard.dtype, device=shard.device)
        dist.all_gather_single(full, shard, group=self.group)  # 每个 rank 拿回全部更新后的参数
        for p, off in zip(self.params, self._offsets):
            p.copy_(full[off:off + p.numel()].view_as(p))
        return loss

    # ------------------------------------------------------------------ 状态：单进程 AdamW 的格式
    def _gather(self, key: str) -> torch.Tensor:
        p0 = self.params[0]
        shard = torch.zeros(self.shard_size, dtype=p0.dtype, device=p0.device)
        for pc in self.pieces:
            st = self.state.get(self.params[pc.index])
            if st and key in st:
                shard[pc.shard_lo:pc.shard_lo + pc.numel].copy_(st[key])
        full = torch.empty(self.padded_numel, dtype=shard.dtype, device=shard.device)
        dist.all_gather_single(full, shard, group=self.group)
        return full

    @torch.no_grad()
    def state_dict(self) -> dict[str, Any]:
        """集合操作：各 rank 的片 all-gather 成单进程 AdamW 的 state_dict（参数编号按参数组顺序，形状与参数相同）。"""
        device = self.params[0].device
        steps = torch.full((len(self.params),), -1.0, dtype=torch.float64, device=device)
        for pc in self.pieces:
            st = self.state.get(self.params[pc.index])
            if st:
                steps[pc.index] = float(st["step"])
        # 一个参数的各片步数相同；不在本段里的参数由拥有它的 rank 报上来（-1 = 没有状态）
        dist.all_reduce(steps, op=dist.ReduceOp.MAX, group=self.group)
        keys = [k for k in _MOMENT_KEYS if k != "max_exp_avg_sq" or any(g["amsgrad"] for g in self.param_groups)]
        gathered = {k: self._gather(k) for k in keys}
        state: dict[int, dict[str, torch.Tensor]] = {}
        for i, (p, off) in enumerate(zip(self.params, self._offsets)):
            if steps[i] < 0:
                continue
            group = self.param_groups[self._group_of(i)]
            entry = {"step": torch.tensor(float(steps[i]))}
            for k in keys:
                if k != "max_exp_avg_sq" or group["amsgrad"]:
                    entry[k] = gathered[k][off:off + p.numel()].view_as(p).clone()
            state[i] = entry
        groups, start = [], 0
        for g in self.param_groups:
            groups.append({**{k: v for k, v in g.items() if k != "params"},
                           "params": list(range(start, start + len(g["params"])))})
            start += len(g["params"])
        return {"state": state, "param_groups": groups}

    def _group_of(self, index: int) -> int:
        start = 0
        for gi, g in enumerate(self.param_groups):
            start += len(g["params"])
            if index < start:
                return gi
        raise IndexError(index)

    @torch.no_grad()
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """从单进程 AdamW 格式的 state_dict 切出本 rank 的片（本地操作，不通信）；组的超参数（lr 等）也一并恢复。"""
        saved_groups = state_dict["param_groups"]
        if len(saved_groups) != len(self.param_groups):
            raise ValueError(f"state_dict 有 {len(saved_groups)} 个参数组，本优化器有 {len(self.param_groups)} 个："
                             "模型或参数分组与保存时不同")
        for i, (sg, g) in enumerate(zip(saved_groups, self.param_groups)):
            if len(sg["params"]) != len(g["params"]):
                raise ValueError(f"第 {i} 个参数组保存时有 {len(sg['params'])} 个参数，现在有 {len(g['params'])} 个："
                                 "模型结构与保存时不同")
        saved_ids = [pid for sg in saved_groups for pid in sg["params"]]
        for p, pid in zip(self.params, saved_ids):
            st = state_dict["state"].get(pid)
            for k in _MOMENT_KEYS:
                if st is not None and k in st and st[k].numel() != p.numel():
                    raise ValueError(f"参数 {pid} 的 {k} 有 {st[k].numel()} 个元素，参数有 {p.numel()} 个：形状与保存时不同")
        for sg, g in zip(saved_groups, self.param_groups):
            g.update({k: v for k, v in sg.items() if k != "params"})
        self.state.clear()
        for pc in self.pieces:
            p = self.params[pc.index]
            st = state_dict["state"].get(saved_ids[pc.index])
            if not st:
                continue
            entry = {"step": torch.tensor(float(st["step"]))}
            for k in _MOMENT_KEYS:
                if k in st:
                    src = st[k].reshape(-1)[pc.param_lo:pc.param_lo + pc.numel]
                    entry[k] = src.to(device=p.device, dtype=p.dtype).clone()
            self.state[p] = entry

    def memory_bytes(self) -> dict[str, int]:
        """本 rank 实际持有的字节数：参数（完整）、梯度（p.grad 与归约缓冲）、优化器状态（片）。"""
        grads = [p.grad for p in self.params] + [self._shard_grad, self._full_grad]
        return {"params": held_bytes(self.params), "grads": held_bytes(grads),
                "optimizer": held_bytes(t for st in self.state.values() for t in st.values())}


class ZeroStrategy(SingleDevice):
    """训练循环用的 ZeRO-1 / ZeRO-2 策略：train(cfg, strategy=ZeroStrategy(stage=2))，由 torchrun 或 spawn 启动。

    不包 DDP：梯度的平均由 ZeroOptimizer 在 clip / step 时完成（stage 1 all-reduce，stage 2 reduce-scatter）。
    所以它继承 SingleDevice 而不是 ddp.DDPStrategy：后者的 wrap_model 在反向里就把完整梯度 all-reduce 掉，
    ZeRO-2 要的却是 reduce-scatter（每个 rank 只收自己那段），再同步一次只会让通信翻倍。
    checkpoint 仍是完整的 HF 权重 + 单进程 AdamW 格式的优化器状态，任何策略都能续训。
    """

    def __init__(self, stage: int, group: dist.ProcessGroup | None = None):
        if stage not in (1, 2):
            raise ValueError(f"stage={stage!r}：ZeroStrategy 只支持 1（切优化器状态）或 2（再切梯度）")
        if not dist.is_initialized():
            raise RuntimeError("ZeroStrategy 需要先建好进程组：用 torchrun 启动并调用 init_from_env()，"
                               "或在 training_sys.distributed.spawn 的进程里构造")
        self.stage = stage
        self.group = group
        self.data_parallel_size = dist.get_world_size(group)
        self.data_parallel_rank = dist.get_rank(group)
        self.optimizer: ZeroOptimizer | None = None
        # 小张量（token 数、loss、停止标志）的集合通信放在哪：NCCL 只收 GPU 张量，gloo 收 CPU 张量
        self._device = (torch.device("cuda", torch.cuda.current_device()) if dist.get_backend(group) == "nccl"
                        else torch.device("cpu"))

    @property
    def is_main_process(self) -> bool:
        return dist.get_rank() == 0

    @torch.no_grad()
    def prepare_model(self, model: nn.Module) -> nn.Module:
        # 各 rank 必须从同一份权重出发：ZeRO 只同步梯度与更新，初始值不同会一直不同
        src = dist.get_global_rank(self.group, 0) if self.group is not None else 0
        for t in [*model.parameters(), *model.buffers()]:
            dist.broadcast(t, src=src, group=self.group)
        return model

    def prepare_optimizer(self, optimizer: torch.optim.Optimizer) -> torch.optim.Optimizer:
        self.optimizer = ZeroOptimizer.from_optimizer(optimizer, self.stage, group=self.group)
        return self.optimizer

    def _require_optimizer(self) -> ZeroOptimizer:
        if self.optimizer is None:
            raise RuntimeError("ZeroStrategy 还没有优化器：先调用 prepare_optimizer（train() 会自动调用）")
        return self.optimizer

    def global_tokens(self, local_tokens: int) -> int:
        t = torch.tensor(local_tokens, dtype=torch.int64, device=self._device)
        dist.all_reduce(t, group=self.group)
        return int(t.item())

    def reduce_loss(self, loss: torch.Tensor) -> float:
        t = loss.detach().float().reshape(1).to(self._device)
        dist.all_reduce(t, group=self.group)
        return t.item() / self.data_parallel_size

    def clip_grad_norm(self, model: nn.Module, max_norm: float) -> torch.Tensor:
        return self._require_optimizer().clip_grad_norm_(max_norm)

    def stop_requested(self, local: bool) -> bool:
        t = torch.tensor(int(bool(local)), device=self._device)
        dist.all_reduce(t, op=dist.ReduceOp.MAX, group=self.group)
        return bool(t.item())

    @contextlib.contextmanager
    def full_state(self, model: nn.Module, optimizer: torch.optim.Optimizer
                   ) -> Iterator[tuple[nn.Module, dict[str, Any]]]:
        # 参数在每个 rank 上都是完整的，只有优化器状态要 all-gather（每个 rank 都进入，都拿到完整的一份）
        yield model, optimizer.state_dict()

    def load_full_state(self, model: nn.Module, optimizer: torch.optim.Optimizer,
                        model_state: dict[str, torch.Tensor], optimizer_state: dict[str, Any], strict: bool) -> None:
        model.load_state_dict(model_state, strict=strict)
        optimizer.load_state_dict(optimizer_state)  # ZeroOptimizer：只切出本 rank 的片


# ---------------------------------------------------------------------------
# 演示：stage 0（DDP 式：完整状态）/ 1 / 2 各训练几步，对照单进程 AdamW，打印每个 rank 实际持有的字节数
# ---------------------------------------------------------------------------
def _tiny_llama(seed: int, smoke: bool) -> nn.Module:
    from model_lab import Llama, LlamaConfig
    from utils.torch_playground import setup_seed

    setup_seed(seed)
    hidden = 32 if smoke else 64
    return Llama(LlamaConfig(vocab_size=97, hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=2,
                             num_attention_heads=4, max_position_embeddings=64, attn_implementation="eager"))


def _batches(steps: int, batch: int, seq: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    gen = torch.Generator().manual_seed(0)
    out = []
    for _ in range(steps):
        tokens = torch.randint(0, 97, (batch, seq + 1), generator=gen)
        out.append((tokens[:, :-1], tokens[:, 1:]))
    return out


def _demo_rank(rank: int, world: int, steps: int, smoke: bool) -> dict[int, dict[str, Any]]:
    from training_sys.optimization import AdamW, weight_decay_param_groups

    data = _batches(steps, 2 * world, 16)
    out = {}
    for stage in (0, 1, 2):
        model = _tiny_llama(seed=rank, smoke=smoke)  # 故意用不同的种子：prepare_model 的广播让各 rank 一致
        strategy = ZeroStrategy(stage=max(stage, 1))
        strategy.prepare_model(model)
        optimizer = AdamW(weight_decay_param_groups(model, 0.1), lr=3e-3)
        if stage:
            optimizer = strategy.prepare_optimizer(optimizer)
        for x, y in data:
            b = x.size(0) // world
            _, loss = model(x[rank * b:(rank + 1) * b], y[rank * b:(rank + 1) * b])
            loss.backward()
            if stage == 0:  # DDP 的做法：每个 rank 都 all-reduce 出完整的平均梯度，再各自更新完整的状态
                for p in model.parameters():
                    dist.all_reduce(p.grad)
                    p.grad.div_(world)
                torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            else:
                strategy.clip_grad_norm(model, 1.0)
            optimizer.step()
            if stage == 0:
                mem = {"params": held_bytes(model.parameters()), "grads": held_bytes(p.grad for p in model.parameters()),
                       "optimizer": held_bytes(t for st in optimizer.state.values() for t in st.values())}
            else:
                mem = optimizer.memory_bytes()  # 在 zero_grad 之前量：这是一步里梯度最多的时刻
            optimizer.zero_grad(set_to_none=True)
        out[stage] = {"memory": mem, "params": {k: v.clone() for k, v in model.state_dict().items()}}
    return out


def _single_process_reference(world: int, steps: int, smoke: bool) -> dict[str, torch.Tensor]:
    from training_sys.optimization import AdamW, clip_grad_norm, weight_decay_param_groups

    model = _tiny_llama(seed=0, smoke=smoke)
    optimizer = AdamW(weight_decay_param_groups(model, 0.1), lr=3e-3)
    for x, y in _batches(steps, 2 * world, 16):
        _, loss = model(x, y)
        loss.backward()
        clip_grad_norm(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    return model.state_dict()


def expected_bytes(num_params: int, world: int, stage: int) -> dict[str, float]:
    """fp32 + AdamW 时每个 rank 持有的字节数（理论值，不算 AdamW 每个参数一个 4 字节的 step 标量与补齐的零）：

    stage 0（DDP）：参数 4ψ、梯度 4ψ、优化器 8ψ；stage 1：优化器 8ψ/w；stage 2：梯度也只有 4ψ/w。
    """
    if stage not in (0, 1, 2):
        raise ValueError(f"stage={stage}：这里只有 0（DDP 式）、1、2")
    psi = num_params
    return {"params": 4 * psi, "grads": 4 * psi / (world if stage == 2 else 1),
            "optimizer": 8 * psi / (world if stage >= 1 else 1)}


def main() -> None:
    from training_sys.distributed.launch import spawn
    from utils.io import is_smoke

    smoke, world = is_smoke(), 2
    steps = 3 if smoke else 20
    per_rank = spawn(_demo_rank, world, steps, smoke, timeout_s=300)
    ref = _single_process_reference(world, steps, smoke)
    n = sum(t.numel() for t in ref.values())
    print(f"== ZeRO：{world} 个 rank，tiny Llama {n:,} 个 fp32 参数，{steps} 步，对照单进程 AdamW（同一全局 batch）==")
    for stage in (0, 1, 2):
        diffs = [max((r[stage]["params"][k] - v).abs().max().item() for k, v in ref.items()) for r in per_rank]
        print(f"  stage {stage}：各 rank 参数与单进程的最大差 {max(diffs):.2e}"
              "（容差 1e-5：梯度按 rank 分开求和、次序不同，fp32 舍入被 AdamW 的归一化放大）")
        assert max(diffs) < 1e-5, f"stage {stage} 与单进程不一致"
    print("== 每个 rank 实际持有的字节数（一步里 zero_grad 之前）；理论值 ψ=参数个数：4ψ / 4ψ / 8ψ → 1/world ==")
    print(f"  {'stage':<6}{'rank':<6}{'params':>12}{'grads':>12}{'optimizer':>12}{'合计':>12}{'理论合计':>12}")
    for stage in (0, 1, 2):
        theory = sum(expected_bytes(n, world, stage).values())
        for rank, r in enumerate(per_rank):
            m = r[stage]["memory"]
            total = m["params"] + m["grads"] + m["optimizer"]
            print(f"  {stage:<6}{rank:<6}{m['params']:>12,}{m['grads']:>12,}{m['optimizer']:>12,}{total:>12,}"
                  f"{theory:>12,.0f}")
    print("  理论合计 = 16ψ / 8ψ + 8ψ/w / 4ψ + 12ψ/w；stage 1/2 实测多出的几十字节是 AdamW 每个参数一个 4 字节的 step 标量"
          "（ZeRO 每个 rank 只为自己段里的参数存）与补齐到 w 的倍数的零")
    extra = per_rank[0][0]["memory"]["grads"] - per_rank[0][0]["memory"]["params"]
    if extra > 0:  # 只在模型走了融合 QKV 的路径时出现（SMOKE 的 32 维模型会，默认的 64 维不会）
        print(f"  stage 0 的梯度比参数多 {extra:,} 字节：q/k/v 的梯度是融合 QKV 反向里大缓冲的视图，整块缓冲都被留着"
              "（held_bytes 数的是实际存储）")
    print("  stage 1 省掉 (w-1)/w 的优化器状态；stage 2 再省掉 (w-1)/w 的梯度，通信量与 DDP 相同"
          "（reduce-scatter + all-gather = 一次 all-reduce）")


if __name__ == "__main__":
    lesson_args(__doc__)
    main()
