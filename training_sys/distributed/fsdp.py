"""ZeRO-3 / FSDP：参数、梯度、优化器状态全部切片，每个 rank 只常驻 1/N；用到哪一层，临时把那一层拼完整。

运行：python training_sys/distributed/fsdp.py   （2 个 gloo 进程；SMOKE=1 几秒跑完）

一、显存账（ZeRO 论文 §3 的记号：Ψ 个参数，N 个数据并行 rank，fp32 + Adam）
    每个参数：fp32 权重 4 B + fp32 梯度 4 B + Adam 的 m、v 各 4 B = 16 B（混合精度再加一份 2 B 的 bf16/fp16 计算副本）。
    DDP（stage 0）：每个 rank 都存完整的一份                       → 16Ψ
    ZeRO-1：优化器状态切成 N 份                                    → 8Ψ + 8Ψ/N
    ZeRO-2：梯度也切                                               → 4Ψ + 12Ψ/N
    ZeRO-3 / FSDP：权重也切                                        → 16Ψ/N
  ZeRO-3 多付出的是"用的时候再拼"：前向到第 i 层时把第 i 层的参数 all-gather 成完整的，算完立刻释放；
  所以常驻的只有切片，外加任意时刻至多一两个单元（unit）的完整参数——这是 FSDP 省显存的全部秘密。

二、通信账（每步，Ψ 个参数，ring 算法下每个 rank 收发的字节数）
    DDP：梯度 all-reduce = reduce-scatter + all-gather ≈ 2Ψ
    FSDP：前向 all-gather 参数 Ψ + 反向再 all-gather 一次 Ψ（前向后已释放）+ 梯度 reduce-scatter Ψ = 3Ψ = 1.5 × DDP
  反向为什么还要 gather 一次？线性层的反向 dL/dx = dL/dy · W 需要完整的 W；前向后不释放就省不了显存。
  混合精度（param_dtype = bf16/fp16）时两次 all-gather 传的是半精度，字节数再减半；梯度仍在 fp32 里归约
  （reduce-scatter 的求和若用 fp16，N 个 rank 相加会溢出或丢尾数——与 torch FSDP 的 reduce_dtype=float32 相同）。

三、怎么实现（torch FSDP1 的 FlatParameter 思路，也是 picotron / DeepSpeed stage 3 的做法）
  1. 单元：每个 DecoderLayer 一个，其余参数（嵌入、最后的 norm、lm_head）归根模块一个；可以按模块类换策略（unit_classes）。
  2. 每个单元的参数按"≥2-D 矩阵 / 1-D 向量"分两组，每组展平成一个 fp32 缓冲，补零到 N 的倍数，rank r 只留第 r 段：
     这一段就是优化器看到的 nn.Parameter（fp32 master 权重），原来的参数从模块上摘掉。
     为什么分两组：训练约定只对 ≥2-D 的参数做 weight decay（weight_decay_param_groups 按 p.dim() 判断），
     矩阵组的切片保持 (1, n) 的 2-D 形状，向量组是 (n,)，于是同一个 build_optimizer 不改一行就分对了组。
  3. 前向前（forward pre-hook）：切片转成 param_dtype → all-gather 成完整缓冲 → 按偏移切成原形状的视图挂回模块；
     这一步是一个 autograd Function，它的反向就是 reduce-scatter：autograd 把各视图的梯度累加成完整缓冲的梯度，
     正好在本单元最后一次用到参数之后调用它——"单元的反向结束"这件事不用自己判断。
  4. 前向后（forward hook）：释放完整缓冲的存储（storage.resize_(0)；autograd 保存的视图还指着它，只是暂时没有内容），
     并在单元输出上挂一个梯度钩子：输出的梯度一到，说明本单元的反向要开始了，先把参数重新 gather 回同一块存储。
  5. 反向里 reduce-scatter：各 rank 的完整梯度（转 fp32）求和后切片，再除以 N（数据并行取平均），累加进切片的 .grad，释放完整缓冲。
  优化器（我们的 AdamW）只在切片上运行：m、v 也只有 1/N。checkpoint 仍然是完整的 HF 权重 + 单进程格式的 AdamW 状态
  （FSDPStrategy.full_state 先 gather 再交出去），所以单卡存的能用 FSDP 续训，反之亦然。

与 PyTorch 的对照：FSDP2 `torch.distributed.fsdp.fully_shard` 按参数切（DTensor，每个参数沿第 0 维切），
FSDP1 按单元展平（这里的做法）；两者的通信量相同。测试以单进程训练为准，逐项核对两者。
"""

from __future__ import annotations

import contextlib
import importlib
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor, nn

from training_sys.strategy import SingleDevice
from utils.io import is_smoke
from utils.lesson_cli import lesson_args
from utils.torch_playground import setup_seed

__all__ = ["FSDPStrategy", "FlatParam", "ShardedModel", "shard_model"]


def _resolve_param_dtype(param_dtype: torch.dtype | str | None) -> torch.dtype:
    from training_sys.optimization.mixed_precision import precision_dtype

    if param_dtype is None:
        return torch.float32
    try:
        dtype = precision_dtype(param_dtype) if isinstance(param_dtype, str) else param_dtype
    except ValueError as e:
        raise ValueError(f"param_dtype={param_dtype!r}：{e}") from None
    if dtype not in (torch.float32, torch.bfloat16, torch.float16):
        raise ValueError(f"param_dtype={param_dtype!r} 不支持：计算精度只能是 None / float32 / bfloat16 / float16")
    return dtype


@dataclass
class _Entry:
    """一个原始参数在扁平缓冲里的位置；共享的参数（tied embedding）只占一段，但挂回好几个 (模块, 属性名)。"""

    names: list[str]                      # 它在 state_dict 里的全部名字（共享时不止一个）
    owners: list[tuple[nn.Module, str]]
    shape: torch.Size
    offset: int
    index: int                            # 在 model.named_parameters() 里的次序：导出单进程格式的优化器状态要按它排

    @property
    def numel(self) -> int:
        return math.prod(self.shape)


class FlatParam:
    """一个单元里同一组（矩阵或向量）参数的扁平缓冲：常驻的是 shard（本 rank 的 fp32 切片），full 只在用的时候存在。"""

    def __init__(self, entries: list[_Entry], params: list[Tensor], matrix: bool, param_dtype: torch.dtype,
                 group: dist.ProcessGroup | None) -> None:
        self.entries, self.param_dtype, self.group = entries, param_dtype, group
        self.world, self.rank = dist.get_world_size(group), dist.get_rank(group)
        total = sum(e.numel for e in entries)
        self.shard_numel = -(-total // self.world)  # 补零到 N 的倍数：每个 rank 一样长，集合通信才能直接用
        self.padded_numel = self.shard_numel * self.world
        flat = torch.zeros(self.padded_numel, dtype=torch.float32, device=params[0].device)
        for e, p in zip(entries, params):
            flat[e.offset:e.offset + e.numel].copy_(p.detach().reshape(-1))
        lo = self.rank * self.shard_numel
        data = flat[lo:lo + self.shard_numel].clone()
        self.shard = nn.Parameter(data.view(1, -1) if matrix else data)
        self.full: Tensor | None = None     # 完整参数（param_dtype）；前向后存储被释放，反向前再填回
        self.gathered = False

    # ---- 通信 ----
    def _all_gather_into(self, out: Tensor, shard: Tensor) -> None:
        dist.all_gather_single(out, shard.reshape(-1).contiguous(), group=self.group)

    def gather(self) -> Tensor:
        """前向前：切片（转成 param_dtype，通信量随之减半）→ all-gather 成新分配的完整缓冲。"""
        full = torch.empty(self.padded_numel, dtype=self.param_dtype, device=self.shard.device)
        self._all_gather_into(full, self.shard.detach().to(self.param_dtype))
        self.full, self.gathered = full, True
        return full

    def regather(self) -> None:
        """反向前：把存储恢复原大小，重新 all-gather 进同一块内存——autograd 保存的那些视图因此又有了内容。

        写的是 full.data：它与 full 共用存储但不共用版本计数器，autograd 不会把这次写入当成"保存的张量被原地改了"。
        """
        if self.gathered or self.full is None:
            return
        self.full.untyped_storage().resize_(self.padded_numel * self.full.element_size())
        self._all_gather_into(self.full.data, self.shard.detach().to(self.param_dtype))
        self.gathered = True

    def free(self) -> None:
        if self.full is not None:
            self.full.untyped_storage().resize_(0)
        self.gathered = False

    def reduce_scatter(self, grad_full: Tensor) -> Tensor:
        """完整梯度（param_dtype）→ fp32 → 各 rank 求和并切片 → 除以 N（数据并行取平均）；返回切片形状的梯度。"""
        out = torch.empty(self.shard_numel, dtype=torch.float32, device=grad_full.device)
        dist.reduce_scatter_single(out, grad_full.float().contiguous(), group=self.group)
        return out.div_(self.world).view_as(self.shard)

    def gather_fp32(self, shard_like: Tensor) -> list[Tensor]:
        """任意一个切片形状的 fp32 张量（权重、Adam 的 m/v）→ 各原始参数的完整张量（checkpoint 用）。"""
        full = torch.empty(self.padded_numel, dtype=torch.float32, device=shard_like.device)
        self._all_gather_into(full, shard_like.float())
        return [full[e.offset:e.offset + e.numel].view(e.shape) for e in self.entries]

    def local_slice(self, values: Sequence[Tensor]) -> Tensor:
        """各原始参数的完整张量 → 本 rank 的切片（切片形状，fp32）。load 用，不通信：每个 rank 都读到了完整的一份。"""
        flat = torch.zeros(self.padded_numel, dtype=torch.float32, device=self.shard.device)
        for e, v in zip(self.entries, values):
            if tuple(v.shape) != tuple(e.shape):
                raise ValueError(f"{e.names[0]} 的形状 {tuple(v.shape)} 与模型的 {tuple(e.shape)} 不同")
            flat[e.offset:e.offset + e.numel].copy_(v.reshape(-1))
        lo = self.rank * self.shard_numel
        return flat[lo:lo + self.shard_numel].view_as(self.shard)

    def install_placeholder(self) -> None:
        """两步之间挂在模块上的"空"视图：形状、dtype、设备都对（模型读 lm_head.weight.dtype 之类仍然可以），存储大小为 0。

        先切视图再释放存储：对已释放的缓冲做切片会被 PyTorch 的越界检查拒绝。
        """
        t = torch.empty(self.padded_numel, dtype=self.param_dtype, device=self.shard.device)
        self.install_views(t)
        t.untyped_storage().resize_(0)

    def install_views(self, full: Tensor) -> None:
        """把完整缓冲按偏移切成原形状的视图，作为普通属性挂回模块（nn.Linear.forward 照常读 self.weight）。"""
        for e in self.entries:
            view = full[e.offset:e.offset + e.numel].view(e.shape)
            for module, attr in e.owners:
                setattr(module, attr, view)


class _GatherFlat(torch.autograd.Function):
    """前向 = all-gather，反向 = reduce-scatter：切片与完整参数之间的这一对通信，是 autograd 图里的一个节点。"""

    @staticmethod
    def forward(ctx, shard: Tensor, flat: FlatParam) -> Tensor:
        ctx.flat = flat
        return flat.gather()

    @staticmethod
    def backward(ctx, grad_full: Tensor) -> tuple[Tensor, None]:
        flat = ctx.flat
        grad = flat.reduce_scatter(grad_full)
        flat.free()  # 本单元的反向到此结束：完整参数不再需要
        return grad, None


@dataclass
class _Unit:
    name: str
    module: nn.Module
    flats: list[FlatParam] = field(default_factory=list)
    lazy: bool = False

    def pre_forward(self, module: nn.Module, args: Any) -> None:
        for flat in self.flats:
            flat.install_views(_GatherFlat.apply(flat.shard, flat))

    def post_forward(self, module: nn.Module, args: Any, output: Any) -> None:
        for flat in self.flats:
            flat.free()
        outs = output if isinstance(output, (tuple, list)) else (output,)
        for t in outs:
            if isinstance(t, Tensor) and t.requires_grad:
                t.register_hook(self.pre_backward)

    def pre_backward(self, grad: Tensor) -> None:
        for flat in self.flats:
            flat.regather()

    # 根单元的参数（嵌入、norm、lm_head）也会被绕过根模块 forward 的代码直接用到：generate 每个 token 调用的是
    # model.forward_hidden 与 model.lm_head，根模块的钩子不会触发。于是在这些子模块上再挂一对钩子：
    # 若参数此刻不在（不在根模块的前向里），临时 gather、用完即放——每个 token 多 gather 几次，只在生成时发生
    def lazy_pre_forward(self, module: nn.Module, args: Any) -> None:
        if all(f.gathered for f in self.flats):
            return
        if torch.is_grad_enabled():
            raise RuntimeError(f"{type(module).__name__} 在根模块的 forward 之外被调用且需要梯度：FSDP 无法为它归约梯度；"
                               "训练时请调用 model(...)，只有 torch.no_grad() 下（如 generate）才能直接调用子模块")
        for flat in self.flats:
            flat.install_views(flat.gather())
        self.lazy = True

    def lazy_post_forward(self, module: nn.Module, args: Any, output: Any) -> None:
        if self.lazy:
            for flat in self.flats:
                flat.free()
            self.lazy = False


def _default_unit_classes() -> tuple[type[nn.Module], ...]:
    return (importlib.import_module("model_lab.02_architectures.llama").DecoderLayer,)


class ShardedModel:
    """shard_model 的返回值：记着每个单元、每个扁平缓冲，提供 checkpoint 需要的 gather / 切片与显存统计。"""

    def __init__(self, model: nn.Module, units: list[_Unit]) -> None:
        self.model, self.units = model, units
        self.flats = [f for u in units for f in u.flats]
        self.flat_of = {id(f.shard): f for f in self.flats}

    def resident_bytes(self) -> dict[str, int]:
        """此刻真正占着内存的字节数：参数切片、它们的梯度、还没释放的完整参数缓冲（两步之间应为 0）。"""
        shards = sum(f.shard.numel() * f.shard.element_size() for f in self.flats)
        grads = sum(f.shard.grad.numel() * f.shard.grad.element_size() for f in self.flats if f.shard.grad is not None)
        full = sum(f.full.untyped_storage().nbytes() for f in self.flats if f.full is not None)
        return {"params": shards, "grads": grads, "gathered": full}

    def full_state_dict(self) -> dict[str, Tensor]:
        """完整的 fp32 权重，键是原来的（HF）名字；共享的参数在每个名字下各出现一次。所有 rank 都要调用。"""
        out: dict[str, Tensor] = {}
        for f in self.flats:
            for e, v in zip(f.entries, f.gather_fp32(f.shard.detach())):
                for n in e.names:
                    out[n] = v.clone()
        return out

    def load_full_state_dict(self, state: dict[str, Tensor], strict: bool = True) -> None:
        """完整权重 → 每个 rank 只留自己的切片。strict=False 时缺的参数保留现值（如只存了 embed 的 tied lm_head）。"""
        known = {n for f in self.flats for e in f.entries for n in e.names}
        missing = [n for f in self.flats for e in f.entries if not any(k in state for k in e.names) for n in e.names]
        unexpected = sorted(set(state) - known)
        if strict and (missing or unexpected):
            raise ValueError(f"加载完整权重：缺少 {missing[:5]}，多出 {unexpected[:5]}；检查 checkpoint 是否属于这个模型")
        for f in self.flats:
            current = f.gather_fp32(f.shard.detach()) if missing else [None] * len(f.entries)
            values = [next((state[k] for k in e.names if k in state), cur) for e, cur in zip(f.entries, current)]
            with torch.no_grad():
                f.shard.copy_(f.local_slice(values))


def shard_model(model: nn.Module, *, unit_classes: tuple[type[nn.Module], ...] | None = None,
                param_dtype: torch.dtype | str | None = None, group: dist.ProcessGroup | None = None) -> ShardedModel:
    """把 model 原地改成 ZeRO-3：每个单元的参数换成本 rank 的 fp32 扁平切片（注册在单元模块上），并挂好 gather / 释放钩子。

    unit_classes：哪些模块类各成一个单元（默认 Llama 的 DecoderLayer）；没被覆盖的参数归根模块。
    param_dtype：前向 / 反向的计算精度（None = fp32）；master 权重、梯度、优化器状态始终是 fp32。
    所有 rank 必须用同样的初始权重调用（各 rank 自己切走自己那段；建模型前 setup_seed 相同即可）。
    """
    compute_dtype = _resolve_param_dtype(param_dtype)
    if not dist.is_initialized():
        raise RuntimeError("shard_model 需要先建好进程组：torchrun 下调用 training_sys.distributed.init_from_env()，"
                           "课程 / 测试里用 training_sys.distributed.spawn(...) 启动")
    if any(isinstance(m, nn.Module) and hasattr(m, "_fsdp_unit") for m in model.modules()):
        raise ValueError("这个模型已经被 shard_model 切过了：每个模型只能切一次")
    classes = _default_unit_classes() if unit_classes is None else tuple(unit_classes)
    if not all(isinstance(c, type) and issubclass(c, nn.Module) for c in classes):
        raise TypeError(f"unit_classes={unit_classes!r} 应为 nn.Module 子类组成的 tuple，例如 (DecoderLayer,)")
    unit_names = [n for n, m in model.named_modules() if n and isinstance(m, classes)] + [""]
    modules = dict(model.named_modules(remove_duplicate=False))

    def unit_of(module_name: str) -> str:  # 最近的（最长前缀的）单元
        hits = [u for u in unit_names if u == "" or module_name == u or module_name.startswith(u + ".")]
        return max(hits, key=len)

    # 每个参数对象：它的所有名字与所属单元；共享参数（tied）的各个所有者必须在同一个单元里
    by_param: dict[int, dict[str, Any]] = {}
    for index, (name, p) in enumerate(model.named_parameters(remove_duplicate=False)):
        module_name, _, attr = name.rpartition(".")
        unit = unit_of(module_name)
        if p.dtype != torch.float32:
            raise ValueError(f"参数 {name} 是 {p.dtype}：FSDP 的 master 权重必须是 fp32；计算精度用 param_dtype 指定")
        info = by_param.setdefault(id(p), {"param": p, "names": [], "owners": [], "unit": unit, "index": index})
        if info["unit"] != unit:
            raise ValueError(f"共享参数 {info['names'][0]} 与 {name} 分属单元 {info['unit']!r} 与 {unit!r}："
                             "共享的参数必须在同一个单元里（把它们的共同祖先设为单元，或不要把其中一边单独成单元）")
        info["names"].append(name)
        info["owners"].append((modules[module_name], attr))
    units = []
    for uname in unit_names:
        unit = _Unit(uname, modules[uname])
        members = [i for i in by_param.values() if i["unit"] == uname]
        for matrix in (True, False):
            chosen = [i for i in members if (i["param"].dim() >= 2) == matrix]
            if not chosen:
                continue
            entries, offset = [], 0
            for i in chosen:
                entries.append(_Entry(i["names"], i["owners"], i["param"].shape, offset, i["index"]))
                offset += i["param"].numel()
            unit.flats.append(FlatParam(entries, [i["param"] for i in chosen], matrix, compute_dtype, group))
        units.append(unit)
    # 摘掉原参数、注册切片：此后 model.parameters() 只有切片，优化器建在它们上面
    for unit in units:
        for flat in unit.flats:
            for e in flat.entries:
                for module, attr in e.owners:
                    del module._parameters[attr]
            flat.install_placeholder()
        for k, flat in enumerate(unit.flats):
            unit.module.register_parameter(f"fsdp_shard_{k}", flat.shard)
        unit.module._fsdp_unit = unit
        unit.module.register_forward_pre_hook(unit.pre_forward)
        unit.module.register_forward_hook(unit.post_forward)
    root = units[-1]
    owners = {id(m): m for f in root.flats for e in f.entries for m, _ in e.owners if m is not model}
    for m in owners.values():
        m.register_forward_pre_hook(root.lazy_pre_forward)
        m.register_forward_hook(root.lazy_post_forward)
    return ShardedModel(model, units)


# ---------------------------------------------------------------------------
# 训练循环的钩子
# ---------------------------------------------------------------------------
class FSDPStrategy(SingleDevice):
    """ZeRO-3 / FSDP 的 TrainStrategy：prepare_model 切参数；每个 rank 都做评估（前向要大家一起 all-gather）。

    param_dtype：计算精度（None = fp32；"bfloat16" / "float16" 时 fp32 master + fp32 梯度归约）。
    梯度累积时每个 micro-batch 都 reduce-scatter（no_sync 不改）：torch FSDP 的 no_sync 要保留完整梯度，
    那恰恰是 ZeRO-3 想省掉的 4Ψ 字节。
    """

    def __init__(self, param_dtype: torch.dtype | str | None = None,
                 unit_classes: tuple[type[nn.Module], ...] | None = None, group: dist.ProcessGroup | None = None):
        self.param_dtype = _resolve_param_dtype(param_dtype)
        if not dist.is_initialized():
            raise RuntimeError("FSDPStrategy 需要先建好进程组（init_from_env() 或 spawn）")
        self.unit_classes, self.group = unit_classes, group
        self.data_parallel_size, self.data_parallel_rank = dist.get_world_size(group), dist.get_rank(group)
        self.sharded: ShardedModel | None = None

    @property
    def is_main_process(self) -> bool:
        return dist.get_rank() == 0

    @property
    def runs_evaluation(self) -> bool:
        return True

    def _require_sharded(self) -> ShardedModel:
        if self.sharded is None:
            raise RuntimeError("FSDPStrategy：先调用 prepare_model(model)（train() 会自动调用）")
        return self.sharded

    def prepare_model(self, model: nn.Module) -> nn.Module:
        self.sharded = shard_model(model, unit_classes=self.unit_classes, param_dtype=self.param_dtype,
                                   group=self.group)
        return model

    def prepare_optimizer(self, optimizer: torch.optim.Optimizer) -> torch.optim.Optimizer:
        from training_sys.optimization import Muon

        sharded = self._require_sharded()
        if isinstance(optimizer, Muon):
            raise TypeError("FSDPStrategy 不支持 Muon：Newton–Schulz 正交化要完整的矩阵，而每个 rank 只有扁平切片；"
                            "用 --optimizer adamw")
        foreign = [p for g in optimizer.param_groups for p in g["params"] if id(p) not in sharded.flat_of]
        if foreign:
            raise ValueError(f"优化器里有 {len(foreign)} 个不是 FSDP 切片的参数：优化器必须在 prepare_model 之后、"
                             "用 model.parameters() 建立")
        return optimizer

    def _device(self) -> torch.device:
        # NCCL 只归约 GPU 上的张量：计数、标志也放到参数所在的设备上
        return self._require_sharded().flats[0].shard.device

    def global_tokens(self, local_tokens: int) -> int:
        t = torch.tensor([local_tokens], dtype=torch.int64, device=self._device())
        dist.all_reduce(t, group=self.group)
        return int(t.item())

    def reduce_loss(self, loss: torch.Tensor) -> float:
        t = loss.detach().float().reshape(1).clone()
        dist.all_reduce(t, group=self.group)
        return t.item() / self.data_parallel_size

    def clip_grad_norm(self, model: nn.Module, max_norm: float) -> torch.Tensor:
        """‖g‖² = Σ_rank Σ 切片里的 g²（补零的位置梯度恒为 0，不影响）；all-reduce 后每个 rank 用同一个系数缩放切片。"""
        if max_norm < 0:
            raise ValueError(f"max_norm={max_norm} 不能是负数（LLM 预训练常用 1.0）")
        grads = [f.shard.grad for f in self._require_sharded().flats if f.shard.grad is not None]
        sq = torch.zeros(1, dtype=torch.float32, device=self._device())
        for g in grads:
            sq += g.float().pow(2).sum()
        dist.all_reduce(sq, group=self.group)
        total = sq.sqrt()[0]
        coef = torch.clamp(max_norm / (total + 1e-6), max=1.0)  # 与单进程 clip_grad_norm 相同的 ε
        for g in grads:
            g.mul_(coef)
        return total

    def stop_requested(self, local: bool) -> bool:
        t = torch.tensor([int(local)], device=self._device())
        dist.all_reduce(t, op=dist.ReduceOp.MAX, group=self.group)
        return bool(t.item())

    def _groups_in_single_process_order(self, optimizer: torch.optim.Optimizer) -> list[list[tuple[FlatParam, int]]]:
        """优化器的每个参数组 → 它覆盖的原始参数 [(扁平缓冲, 第几个 entry)]，按 model.named_parameters() 的次序。

        单进程的 weight_decay_param_groups 也是"每组内按 model.parameters() 的次序"，所以这样编出的下标
        与单进程优化器的 state_dict 一一对应。
        """
        sharded = self._require_sharded()
        out = []
        for g in optimizer.param_groups:
            items = [(sharded.flat_of[id(p)], k) for p in g["params"] for k in range(len(sharded.flat_of[id(p)].entries))]
            out.append(sorted(items, key=lambda fk: fk[0].entries[fk[1]].index))
        return out

    @contextlib.contextmanager
    def full_state(self, model: nn.Module, optimizer: torch.optim.Optimizer
                   ) -> Iterator[tuple[nn.Module, dict[str, Any]]]:
        """gather 出完整的 fp32 权重临时挂回模块（state_dict() 就是 HF 名字的完整权重），优化器状态换成单进程格式。"""
        sharded = self._require_sharded()
        groups = self._groups_in_single_process_order(optimizer)
        gathered: dict[tuple[int, str], list[Tensor]] = {}
        for f in sharded.flats:
            st = optimizer.state.get(f.shard, {})
            for key, v in st.items():
                if isinstance(v, Tensor) and v.shape == f.shard.shape:
                    gathered[(id(f), key)] = f.gather_fp32(v)
        state: dict[int, dict[str, Any]] = {}
        param_groups, index = [], 0
        for g, items in zip(optimizer.param_groups, groups):
            ids = []
            for f, k in items:
                st = optimizer.state.get(f.shard, {})
                if st:
                    state[index] = {key: (gathered[(id(f), key)][k].clone() if (id(f), key) in gathered else v.clone())
                                    for key, v in st.items()}
                ids.append(index)
                index += 1
            param_groups.append({**{k: v for k, v in g.items() if k != "params"}, "params": ids})
        weights = [(f, f.gather_fp32(f.shard.detach())) for f in sharded.flats]
        for unit in sharded.units:
            for k in range(len(unit.flats)):
                del unit.module._parameters[f"fsdp_shard_{k}"]
        try:
            for f, values in weights:
                for e, v in zip(f.entries, values):
                    p = nn.Parameter(v.clone(), requires_grad=False)
                    for module, attr in e.owners:
                        delattr(module, attr)
                        module.register_parameter(attr, p)
            yield model, {"state": state, "param_groups": param_groups}
        finally:
            for f in sharded.flats:
                for e in f.entries:
                    for module, attr in e.owners:
                        del module._parameters[attr]
                f.install_placeholder()
            for unit in sharded.units:
                for k, f in enumerate(unit.flats):
                    unit.module.register_parameter(f"fsdp_shard_{k}", f.shard)

    def load_full_state(self, model: nn.Module, optimizer: torch.optim.Optimizer,
                        model_state: dict[str, torch.Tensor], optimizer_state: dict[str, Any], strict: bool) -> None:
        """完整权重与单进程格式的优化器状态 → 本 rank 的切片（每个 rank 都读了完整的 checkpoint，不需要通信）。"""
        sharded = self._require_sharded()
        sharded.load_full_state_dict(model_state, strict=strict)
        groups = self._groups_in_single_process_order(optimizer)
        saved_groups = optimizer_state["param_groups"]
        if len(saved_groups) != len(groups) or any(len(s["params"]) != len(g) for s, g in zip(saved_groups, groups)):
            raise ValueError(f"优化器状态的参数组（{[len(s['params']) for s in saved_groups]} 个参数）与当前模型"
                             f"（{[len(g) for g in groups]}）对不上：checkpoint 不是这个模型 / 这种优化器分组存的")
        saved_state = optimizer_state["state"]
        per_flat: dict[int, dict[int, dict[str, Any]]] = {}  # id(flat) → entry 序号 → 单进程状态
        for s, items in zip(saved_groups, groups):
            for i, (f, k) in zip(s["params"], items):
                if i in saved_state:
                    per_flat.setdefault(id(f), {})[k] = saved_state[i]
        sharded_state, sharded_groups, index = {}, [], 0
        for s, g in zip(saved_groups, optimizer.param_groups):
            ids = []
            for p in g["params"]:
                f = sharded.flat_of[id(p)]
                entries = per_flat.get(id(f), {})
                if entries:
                    if len(entries) != len(f.entries):
                        raise ValueError("优化器状态只覆盖了一个单元的部分参数：这个 checkpoint 不是整模型一起训练出来的")
                    first = entries[0]
                    sharded_state[index] = {
                        key: (f.local_slice([entries[k][key] for k in range(len(f.entries))])
                              if isinstance(v, Tensor) and v.dim() > 0 else v.clone() if isinstance(v, Tensor) else v)
                        for key, v in first.items()}
                ids.append(index)
                index += 1
            sharded_groups.append({**{k: v for k, v in s.items() if k != "params"}, "params": ids})
        optimizer.load_state_dict({"state": sharded_state, "param_groups": sharded_groups})


# ---------------------------------------------------------------------------
# 演示：2 个 rank 的 FSDP 与单进程训练逐步对照
# ---------------------------------------------------------------------------
def _tiny_llama(tie: bool = True) -> nn.Module:
    from model_lab import Llama, LlamaConfig

    size = 32 if is_smoke() else 64
    cfg = LlamaConfig(vocab_size=96, hidden_size=size, intermediate_size=2 * size, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64, tie_word_embeddings=tie)
    return Llama(cfg)


def _demo(rank: int, world: int, steps: int) -> dict[str, Any]:
    from training_sys.optimization import AdamW
    from training_sys.pretrain import accumulate_step, rank_slice

    setup_seed(0)
    ref = _tiny_llama()
    model = _tiny_llama()
    model.load_state_dict(ref.state_dict())
    full_bytes = sum(p.numel() * p.element_size() for p in ref.parameters())
    strategy = FSDPStrategy()
    model = strategy.prepare_model(model)
    opt = strategy.prepare_optimizer(AdamW(model.parameters(), lr=1e-2))
    ref_opt = AdamW(ref.parameters(), lr=1e-2)
    gen = torch.Generator().manual_seed(1)
    losses = []
    for _ in range(steps):
        x = torch.randint(0, 96, (2 * world, 16), generator=gen)
        y = torch.randint(0, 96, (2 * world, 16), generator=gen)
        loss = strategy.reduce_loss(accumulate_step(model, [rank_slice((x, y), 2, rank)], strategy))
        opt.step()
        opt.zero_grad(set_to_none=True)
        # 单进程参照：同一个全局 batch，按 rank 的切法分成 micro-batch 累积——每一段的前向与各 rank 完全相同，
        # 梯度 ½g₀ + ½g₁ 与 FSDP 的 (g₀ + g₁)/2 逐位相等（乘 ½ 是精确的，两数相加与次序无关）
        ref_loss = accumulate_step(ref, [rank_slice((x, y), 2, r) for r in range(world)]).item()
        ref_opt.step()
        ref_opt.zero_grad(set_to_none=True)
        losses.append((loss, ref_loss))
    resident = strategy.sharded.resident_bytes()
    with strategy.full_state(model, opt) as (full_model, _):
        diff = max((a - b).abs().max().item() for a, b in zip(full_model.state_dict().values(),
                                                              ref.state_dict().values()))
    return {"losses": losses, "diff": diff, "resident": resident, "full_bytes": full_bytes}


def main() -> None:
    from training_sys.distributed import spawn

    steps = 3 if is_smoke() else 20
    out = spawn(_demo, 2, steps, timeout_s=300)[0]
    print(f"== FSDP（2 个 rank）对照单进程训练：{steps} 步 AdamW，tied embedding ==")
    for i, (ours, ref) in enumerate(out["losses"]):
        if i in (0, steps - 1):
            print(f"  第 {i + 1:2d} 步 loss：FSDP {ours:.6f}，单进程 {ref:.6f}")
    print(f"  （输入与目标都是随机 token：均匀分布的 ln 96 = {math.log(96):.4f} 就是能期望的最好 loss，"
          "这里核对的是两边相同，不是学会了什么）")
    print(f"  训练后完整权重的最大差：{out['diff']:.2e}（同样的前向分段、同样的加法次序：应逐位相同；断言 < 1e-6）")
    r = out["resident"]
    print(f"== 两步之间每个 rank 常驻的参数：{r['params']} B（完整模型 {out['full_bytes']} B，"
          f"比例 {r['params'] / out['full_bytes']:.3f} ≈ 1/2），未释放的完整缓冲 {r['gathered']} B ==")
    assert out["diff"] < 1e-6 and r["gathered"] == 0


if __name__ == "__main__":
    lesson_args(__doc__)
    main()
