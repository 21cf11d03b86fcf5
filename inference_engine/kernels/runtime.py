"""所有 Triton 内核共用的运行环境：没有 GPU 时打开 Triton 解释器，以及启动器共用的输入检查。

为什么要有这个文件、而且每个内核文件都要**先**导入它：`@triton.jit` 在装饰的那一刻读环境变量
TRITON_INTERPRET——为 1 就把函数包成解释器版本（在 CPU 上用 numpy 逐个 program 模拟执行，慢但语义相同），
否则编译成 GPU 代码。所以这个变量必须在任何内核被定义之前设好。这里的规则：

- 有 CUDA GPU：不动它，内核编译成真正的 GPU 代码；
- 没有 GPU 且用户没设：设成 1，于是 `python inference_engine/kernels/rmsnorm.py` 在笔记本 CPU 上也能跑、能对照；
- 用户自己设了（0 或 1）：尊重用户。

解释器下张量留在 CPU 上（Triton 解释器直接读写 CPU 内存）；GPU 上张量在 cuda 上。KERNEL_DEVICE 就是内核
期望输入所在的设备，启动器用 check_tensor 检查，不在就报错，而不是悄悄算错或在 Triton 深处崩溃。
"""

from __future__ import annotations

import os

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

import triton  # （必须在上面设好环境变量之后）
import triton.language as tl

__all__ = ["INTERPRET", "KERNEL_DEVICE", "check_tensor", "tl", "triton"]

INTERPRET: bool = os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


def _repair_interpreter() -> int:
    """triton.language 早于本文件被导入（环境变量那时还没设）时，把它的标准库函数换成解释器版本；返回换了几个。

    为什么会发生：PyTorch 自己的一些算子（torch._native 里的 Triton 实现）在第一次用到时会 import triton——
    比如同一个进程里先跑过一次普通训练。那时 TRITON_INTERPRET 还没设，`triton.language.standard` 里
    `@jit` 修饰的 tl.sum、tl.max、tl.cdiv……就成了要编译给 GPU 的 JITFunction；解释器执行我们的内核、遇到
    它们时会报"Cannot call @triton.jit'd outside of the scope of a kernel"。内核在运行时才按名字去 tl 模块里
    查这些函数，所以把模块属性换成 InterpretedFunction 就够了（与一开始就设好环境变量时 @jit 给出的对象相同）。
    """
    import sys

    from triton.runtime.interpreter import InterpretedFunction
    from triton.runtime.jit import JITFunction

    replaced = 0
    for name, module in list(sys.modules.items()):
        if module is None or not (name == "triton.language" or name.startswith("triton.language.")):
            continue
        for attr, value in list(vars(module).items()):
            if isinstance(value, JITFunction):
                setattr(module, attr, InterpretedFunction(value.fn))
                replaced += 1
    return replaced


if INTERPRET:
    _repair_interpreter()
# 解释器模式下内核读写 CPU 内存；否则读写当前 GPU
KERNEL_DEVICE: torch.device = torch.device("cpu") if INTERPRET else torch.device("cuda")

FALLBACK_HINT = "（不想用 Triton 内核时改用 PyTorch 实现：attn_implementation='sdpa'、kernels='torch'）"


def check_tensor(name: str, t: object, *, ndim: int | None = None,
                 dtypes: tuple[torch.dtype, ...] = (torch.float32, torch.float16, torch.bfloat16),
                 contiguous: bool = True) -> torch.Tensor:
    """启动器入口的检查：类型、维数、dtype、设备、连续性。错了就抛 ValueError，说清楚哪里错、怎么办。

    为什么内核要求连续：内核按"行首指针 + 列偏移"寻址，假设最后一维步长为 1（有的还假设整行紧挨着）；
    非连续张量会读到错位的数据——静默的错误结果，比崩溃更糟。调用方应当自己 .contiguous()，
    这样拷贝的代价是看得见的。
    """
    if not isinstance(t, torch.Tensor):
        raise ValueError(f"{name} 必须是 torch.Tensor，收到 {type(t).__name__}")
    if ndim is not None and t.dim() != ndim:
        raise ValueError(f"{name} 必须是 {ndim} 维张量，收到形状 {tuple(t.shape)}")
    if t.dtype not in dtypes:
        raise ValueError(f"{name} 的 dtype {t.dtype} 不受支持；支持 {[str(d) for d in dtypes]}。{FALLBACK_HINT}")
    if t.device.type != KERNEL_DEVICE.type:
        where = "Triton 解释器（没有 GPU，TRITON_INTERPRET=1）只能读写 CPU 张量" if INTERPRET else "Triton 内核需要 CUDA 张量"
        raise ValueError(f"{name} 在 {t.device} 上，但{where}：请把它移到 {KERNEL_DEVICE}。{FALLBACK_HINT}")
    if contiguous and not t.is_contiguous():
        raise ValueError(f"{name} 不是连续张量（stride={t.stride()}）：内核按行首指针 + 列偏移寻址，"
                         f"请先调用 .contiguous()。{FALLBACK_HINT}")
    return t
