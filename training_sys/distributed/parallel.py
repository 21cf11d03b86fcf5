"""`--parallel` 的工厂：把一个名字变成训练循环用的 TrainStrategy，并保证所有 rank 用的是同一份配置。

    torchrun --standalone --nproc_per_node 2 -m training_sys.pretrain --parallel ddp      # 单机 2 进程
    torchrun --nnodes 2 --node-rank K --rdzv-backend c10d --rdzv-endpoint HOST:PORT \\
             --nproc_per_node N -m training_sys.pretrain --parallel ddp                   # 多机

每种并行的类放在自己的文件里（ddp.py、zero.py、fsdp.py、tensor_parallel.py、pipeline_parallel.py、context_parallel.py），这里只在用到时才 import：
`--parallel none` 的单卡训练不必加载任何分布式代码，某个文件缺了也只影响用它的那个名字，并给出清楚的报错。

为什么要核对配置：torchrun 在每个进程里各自解析一遍命令行。多机时每台机器各敲一遍命令，一处不同
（比如一台机器上 --lr 写错、或配置文件版本不一样），各 rank 就在训练不同的东西——数据并行的梯度平均仍然照常进行，
不会报错，只会悄悄训坏；形状不同时则挂死在某次 all-reduce 里。所以开训前由 rank 0 广播自己的配置，
每个 rank 逐字段比较，再把"谁不一样、哪些字段"汇总给所有 rank，一起报同一个错（而不是一部分 rank 报错、其余的永远等下去）。
"""

from __future__ import annotations

import importlib
import importlib.util
from collections.abc import Mapping
from typing import Any

import torch.distributed as dist

from training_sys.distributed.launch import DistributedError, init_from_env
from training_sys.strategy import SingleDevice, TrainStrategy

__all__ = ["PARALLEL_CHOICES", "PP_SCHEDULES", "build_strategy", "check_same_config"]

# 名字 → (模块, 类名, 构造参数)
_STRATEGIES: dict[str, tuple[str, str, dict[str, Any]]] = {
    "ddp": ("training_sys.distributed.ddp", "DDPStrategy", {}),
    "zero1": ("training_sys.distributed.zero", "ZeroStrategy", {"stage": 1}),
    "zero2": ("training_sys.distributed.zero", "ZeroStrategy", {"stage": 2}),
    "fsdp": ("training_sys.distributed.fsdp", "FSDPStrategy", {}),
    "tp": ("training_sys.distributed.tensor_parallel", "TensorParallelStrategy", {}),
    "pp": ("training_sys.distributed.pipeline_parallel", "PipelineStrategy", {}),
    "cp": ("training_sys.distributed.context_parallel", "ContextParallelStrategy", {}),
}
PARALLEL_CHOICES = ("none", *_STRATEGIES)
PP_SCHEDULES = ("1f1b", "gpipe")
# 名字 → {TrainConfig 的字段: 构造参数名}：只把与这种并行有关的配置交给它；值为 None（没给）的字段不传，用类的默认值
_OPTIONS: dict[str, dict[str, str]] = {
    "tp": {"tp_size": "tp_size"},
    "pp": {"pp_schedule": "schedule"},
}


def build_strategy(name: str, config: Mapping[str, Any] | None = None) -> TrainStrategy:
    """none → SingleDevice()；其余名字：先按需 import 对应的类，再用 torchrun 的环境变量建进程组，最后构造策略。

    config：TrainConfig.to_dict()（或其中几项）；与这种并行有关的字段（tp 的 tp_size、pp 的 pp_schedule）作为构造参数传给策略。
    不是由 torchrun 启动 → DistributedError（带 torchrun 的用法）；对应的文件或类不存在 → DistributedError 指名缺了什么。
    """
    if name not in PARALLEL_CHOICES:
        raise ValueError(f"parallel={name!r} 未知；可选 {PARALLEL_CHOICES}")
    if name == "none":
        return SingleDevice()
    module_name, class_name, kwargs = _STRATEGIES[name]
    config = config or {}
    kwargs = {**kwargs, **{arg: config[key] for key, arg in _OPTIONS.get(name, {}).items()
                           if config.get(key) is not None}}
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as e:
        if e.name != module_name:  # 模块在，但它自己 import 的东西缺了：原样抛出，别把真正的原因藏起来
            raise
        raise DistributedError(f"--parallel {name} 需要 {module_name}（类 {class_name}），这个模块还不存在；"
                               f"可用的：{_available()}") from None
    cls = getattr(module, class_name, None)
    if cls is None:
        raise DistributedError(f"--parallel {name} 需要 {module_name}.{class_name}，但模块里没有这个类")
    init_from_env()
    return cls(**kwargs)


def _available() -> list[str]:
    names = ["none"]
    for name, (module_name, _, _) in _STRATEGIES.items():
        if importlib.util.find_spec(module_name) is not None:
            names.append(name)
    return names


def check_same_config(config: dict[str, Any], what: str = "TrainConfig") -> None:
    """所有 rank 调用：config 必须与 rank 0 的逐字段相同，否则每个 rank 都抛同一个 ValueError（列出哪些 rank、哪些字段）。"""
    if not dist.is_initialized() or dist.get_world_size() == 1:
        return
    reference = [config if dist.get_rank() == 0 else None]
    dist.broadcast_object_list(reference, src=0)
    keys = sorted(set(config) | set(reference[0]))
    mine = [f"{k}: rank 0={reference[0].get(k)!r} 本 rank={config.get(k)!r}"
            for k in keys if config.get(k) != reference[0].get(k)]
    everyone: list = [None] * dist.get_world_size()
    dist.all_gather_object(everyone, mine)  # 每个 rank 都知道全部差异：一起报错，没有谁留在下一次通信里干等
    bad = {r: diffs for r, diffs in enumerate(everyone) if diffs}
    if bad:
        details = "；".join(f"rank {r}（{', '.join(d)}）" for r, d in bad.items())
        raise ValueError(f"各 rank 的 {what} 不一致：{details}。每个 rank（每台机器）必须用完全相同的命令行与配置文件启动")
