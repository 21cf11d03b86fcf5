"""torch_playground：所有脚本共用的工程基础设施。

    from utils.torch_playground import DEVICE, get_device, setup_seed, time_block, inspect, benchmark

- get_device()   选设备：CUDA → Apple MPS → CPU，并打印硬件信息。
- setup_seed()   固定 random / numpy / torch 的随机种子，可选完全确定性模式。
- time_block()   计时上下文管理器（GPU 上会先同步，否则测到的只是"发射 kernel"的时间）。
- inspect()      打印张量的形状、dtype、设备、梯度信息、数值统计——调试时第一件事。
- benchmark()    基准测试：预热 + 多次重复取中位数，benchmarks/ 下所有脚本都用它。

导入本模块时会选好 DEVICE 并固定种子，这是学习者的脚本一直依赖的约定：
任何脚本 `from utils.torch_playground import DEVICE` 之后，结果就是可复现的。
"""

from __future__ import annotations

import os
import random
import statistics
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager

import numpy as np
import torch

DEFAULT_SEED = 277527


# ---------------------------------------------------------------------------
# 设备
# ---------------------------------------------------------------------------
def _mps_available() -> bool:
    backend = getattr(torch.backends, "mps", None)
    return bool(backend is not None and backend.is_available())


def get_device(verbose: bool = True) -> torch.device:
    """按 CUDA → MPS → CPU 的优先级选设备；verbose 时打印硬件与版本信息。

    在没有 GPU 的机器上不会报错，只是退回 CPU 并告诉你用了几个线程。
    """
    if torch.cuda.is_available():
        device = torch.device("cuda")
        if verbose:
            idx = torch.cuda.current_device()
            props = torch.cuda.get_device_properties(idx)
            print(
                f"[device] CUDA:{idx} {props.name} | 显存 {props.total_memory / 2**30:.1f} GiB | "
                f"compute capability {props.major}.{props.minor} | "
                f"torch {torch.__version__} | CUDA {torch.version.cuda} | GPU 数 {torch.cuda.device_count()}"
            )
    elif _mps_available():
        device = torch.device("mps")
        if verbose:
            print(f"[device] Apple MPS | torch {torch.__version__}")
    else:
        device = torch.device("cpu")
        if verbose:
            print(f"[device] CPU（没有可用的 GPU）| {torch.get_num_threads()} 个线程 | torch {torch.__version__}")
    return device


# ---------------------------------------------------------------------------
# 随机种子与确定性
# ---------------------------------------------------------------------------
def setup_seed(seed: int = DEFAULT_SEED, deterministic: bool = False) -> int:
    """固定所有随机源，返回所用的 seed。

    - random / numpy / torch（CPU 与所有 CUDA 设备）都要设：任何一个漏掉，
      数据打乱、dropout、初始化就会悄悄不一样。
    - cuDNN 的 benchmark 模式会按输入形状挑选最快的卷积算法，不同次运行可能挑到不同算法，
      因此确定性模式下关掉它。
    - deterministic=True 时启用 torch.use_deterministic_algorithms：遇到没有确定性实现的算子会直接报错，
      而不是默默给出不可复现的结果。cuBLAS 需要 CUBLAS_WORKSPACE_CONFIG 才能确定性地做矩阵乘。
    """
    if not isinstance(seed, int) or isinstance(seed, bool):
        raise TypeError(f"seed 必须是 int，收到 {type(seed).__name__}")
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    if torch.cuda.is_available():
        torch.cuda.manual_seed_all(seed)
    torch.backends.cudnn.deterministic = deterministic
    torch.backends.cudnn.benchmark = not deterministic
    if deterministic:
        # 必须在第一次 cuBLAS 调用之前设置；":4096:8" 是 NVIDIA 文档给出的取值之一
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    # 只在开关真的要变时才调用：torch.use_deterministic_algorithms 第一次调用会导入 dynamo / inductor，
    # 每个进程要多花 1 秒以上，而绝大多数脚本从来不开确定性模式
    if torch.are_deterministic_algorithms_enabled() != deterministic:
        torch.use_deterministic_algorithms(deterministic)
    return seed


# ---------------------------------------------------------------------------
# 计时
# ---------------------------------------------------------------------------
def _sync() -> None:
    # GPU 上的 kernel 是异步发射的：不同步的话，计时只测到了 Python 发射命令的时间
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.synchronize()


class Timer:
    """time_block 产出的对象：退出 with 之后 .ms / .seconds 可读。"""

    def __init__(self, label: str):
        self.label = label
        self.ms: float = float("nan")

    @property
    def seconds(self) -> float:
        return self.ms / 1000.0

    def __repr__(self) -> str:
        return f"Timer({self.label!r}, ms={self.ms:.3f})"


@contextmanager
def time_block(label: str, verbose: bool = True) -> Iterator[Timer]:
    """计时一个代码块：`with time_block("matmul") as t: ...`，之后 t.ms 是毫秒数。"""
    timer = Timer(label)
    _sync()
    start = time.perf_counter()
    try:
        yield timer
    finally:
        _sync()
        timer.ms = (time.perf_counter() - start) * 1000.0
        if verbose:
            print(f"{label}: {timer.ms:.3f} ms")


def benchmark(fn: Callable[[], object], warmup: int = 3, reps: int = 10) -> float:
    """返回 fn() 的中位耗时（毫秒）。

    先预热 warmup 次（触发 lazy 初始化、内存分配器、torch.compile 等），再测 reps 次取中位数：
    中位数对偶发的系统抖动（另一个进程抢 CPU）不敏感，比平均值更能代表"典型"耗时。
    """
    if reps < 1:
        raise ValueError(f"reps={reps} 必须 ≥ 1")
    if warmup < 0:
        raise ValueError(f"warmup={warmup} 不能是负数")
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(reps):
        _sync()
        start = time.perf_counter()
        fn()
        _sync()
        times.append((time.perf_counter() - start) * 1000.0)
    return statistics.median(times)


def benchmark_interleaved(fns: Sequence[Callable[[], object]], warmup: int = 3, reps: int = 10,
                          cpu_time: bool = False) -> list[float]:
    """把几个函数轮流各跑一次、重复 reps 轮，返回每个函数的中位耗时（毫秒），顺序与 fns 相同。

    比较"我们 vs 参考"时用它而不是分别调用两次 benchmark()：共享机器上别的进程时忙时闲，
    先测完一边再测另一边，负载的变化会全算到其中一边头上；轮流测（每轮还把顺序反过来，
    抵消"总是排第一"的缓存效应）让每一边经历同样的干扰，比值才可信。
    cpu_time=True 时量进程 CPU 时间（time.process_time）：单线程 torch 在被挤满的 CPU 上，
    墙钟时间大半是排队，CPU 时间才是真正干活的时间；它量不到 GPU 上的 kernel，GPU 上请用默认的墙钟。
    """
    if reps < 1:
        raise ValueError(f"reps={reps} 必须 ≥ 1")
    if warmup < 0:
        raise ValueError(f"warmup={warmup} 不能是负数")
    clock = time.process_time if cpu_time else time.perf_counter
    for _ in range(warmup):
        for fn in fns:
            fn()
    times: list[list[float]] = [[] for _ in fns]
    for rep in range(reps):
        order = list(range(len(fns)))
        if rep % 2:
            order.reverse()
        for i in order:
            _sync()
            start = clock()
            fns[i]()
            _sync()
            times[i].append((clock() - start) * 1000.0)
    return [statistics.median(t) for t in times]


# ---------------------------------------------------------------------------
# 张量检查
# ---------------------------------------------------------------------------
def inspect(tensor: torch.Tensor, name: str = "tensor", verbose: bool = True) -> str:
    """打印（并返回）一个张量的关键信息，调试形状 / dtype / 设备 / NaN 问题时先看它。"""
    if not isinstance(tensor, torch.Tensor):
        raise TypeError(
            f"inspect() 需要 torch.Tensor，收到 {type(tensor).__name__}；"
            f"先用 torch.as_tensor(x) 转换"
        )
    grad_fn = type(tensor.grad_fn).__name__ if tensor.grad_fn is not None else None
    lines = [
        f"[{name}] shape={tuple(tensor.shape)} dtype={tensor.dtype} device={tensor.device}",
        f"  requires_grad={tensor.requires_grad} grad_fn={grad_fn} is_leaf={tensor.is_leaf}",
        f"  contiguous={tensor.is_contiguous()} stride={tuple(tensor.stride())}",
    ]
    if tensor.numel() == 1:
        lines.append(f"  value={tensor.detach().item()!r}")
    if (tensor.is_floating_point() or tensor.is_complex()) and tensor.numel() > 0:
        t = tensor.detach()
        if t.is_complex():
            t = t.abs()
        t = t.float()
        finite = t[torch.isfinite(t)]
        n_nan = int(torch.isnan(t).sum())
        n_inf = int(torch.isinf(t).sum())
        if finite.numel() > 0:
            std = finite.std().item() if finite.numel() > 1 else 0.0
            lines.append(
                f"  min={finite.min().item():.6g} max={finite.max().item():.6g} "
                f"mean={finite.mean().item():.6g} std={std:.6g}（只统计有限值）"
            )
        lines.append(f"  nan={n_nan} inf={n_inf}")
    text = "\n".join(lines)
    if verbose:
        print(text)
    return text


# 导入时选好设备、固定种子（学习者的脚本依赖这个约定）
DEVICE = get_device(verbose=False)
setup_seed(DEFAULT_SEED)

__all__ = ["DEFAULT_SEED", "DEVICE", "Timer", "benchmark", "benchmark_interleaved", "get_device", "inspect", "setup_seed", "time_block"]
