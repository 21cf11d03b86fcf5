"""CUDA C 内核：用 torch.utils.cpp_extension.load_inline 即时编译，从朴素矩阵乘到一个简单的 FlashAttention 前向。

Triton 替我们管了线程：一个 program 处理一整块数据，块内的线程怎么分、共享内存怎么用由编译器决定。
这一课把这层揭开，直接写 CUDA C——每个线程算什么、warp 怎么一起行动、共享内存怎么排布，全由我们决定：

| 文件（inference_engine/kernels/cuda/） | 想法 |
|---|---|
| matmul_naive.cu    | 一个线程一个输出；threadIdx.x 对应列 → 合并访存；算术强度 ≈ 0.25 FLOP/字节，被带宽卡死 |
| matmul_tiled.cu    | TILE × TILE 子块搬进共享内存、__syncthreads；全局读取从 2·M·N·K 降到 2·M·N·K / TILE |
| softmax.cu         | 一个 block 一行；warp 内 __shfl_xor_sync 蝶形归约（先 max 再 sum），跨 warp 经共享内存 |
| rms_norm.cu        | 同一个骨架，一次平方和归约 |
| flash_attention.cu | 一个 block 一个 (batch·head, 16 行 query)；K/V 子块流过共享内存（K 行长 +1 消除 bank conflict）；online softmax 一行一个 warp |
| warp_reduce.cuh    | 上面三个共用的 warp / block 归约 |
| launchers.h        | 每个 .cu 导出的主机端启动函数（裸指针 + 尺寸，extern "C"） |
| binding.cpp        | 唯一 include <torch/extension.h> 的文件：检查张量、取当前 stream、调用启动函数 |

load_inline 做了什么：把 cpp_sources（binding.cpp）写成 main.cpp、把 cuda_sources（五个 .cu 首尾相接）写成 cuda.cu，
放进缓存目录（~/.cache/torch_extensions/<版本>/llm_cuda_kernels，或环境变量 TORCH_EXTENSIONS_DIR），生成 ninja 构建文件，
g++ 编 main.cpp、nvcc 编 cuda.cu、链接成 .so，再 import 成 Python 模块；`functions=` 列出的 C++ 函数由 pybind11 自动导出。
源码不变时第二次调用直接加载缓存的 .so（按源码内容的哈希判断是否要重编）。

三个阶段，能在哪台机器上证明：
1. **编译**：只要有 nvcc。`compile_sources_with_nvcc` 把每个 .cu 单独 `nvcc -c`（.cu 里没有 torch 头文件，正是为了这一步），
   ptxas -v 报告每个内核用了多少寄存器、共享内存、有没有溢出到 local memory。这台没有 GPU 的机器就能做。
2. **构建扩展**（load_inline）：还需要 CUDA 版的 torch（CPU 版的 torch 没有 c10_cuda 库，链接不了）和 ninja。
3. **运行**：还需要一块 NVIDIA GPU。在 GPU 上 main() 把每个内核与 PyTorch 参考对照，并测分块矩阵乘相对朴素版的加速比。
条件不满足时，包装函数抛出说明缺什么、该用什么替代（Triton 内核 / PyTorch 实现）的 CudaKernelsUnavailableError
（RuntimeError 的子类），而不是在 torch 深处崩溃。

只支持 fp32、连续张量：这一课讲的是线程、warp 与共享内存；bf16/fp16 与 Tensor Core 见 Triton 版本。
"""

from __future__ import annotations

import inspect
import math
import os
import re
import shutil
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import torch

from utils.lesson_cli import lesson_args

__all__ = [
    "BINDING_FUNCTIONS",
    "CUDA_DIR",
    "CUDA_SOURCES",
    "KERNEL_SYMBOLS",
    "CudaKernelsUnavailableError",
    "PtxasUsage",
    "build_unavailable_reason",
    "compile_sources_with_nvcc",
    "cuda_sources",
    "find_nvcc",
    "flash_attention_forward",
    "load_cuda_kernels",
    "matmul_naive",
    "matmul_tiled",
    "parse_ptxas_report",
    "rms_norm",
    "run_unavailable_reason",
    "softmax",
]

CUDA_DIR = Path(__file__).resolve().parent / "cuda"
# 一个想法一个 .cu；顺序就是 load_inline 里首尾相接的顺序
CUDA_SOURCES: tuple[str, ...] = ("matmul_naive", "matmul_tiled", "softmax", "rms_norm", "flash_attention")
# 每个 .cu 编译后必须出现的符号：__global__ 内核名与 extern "C" 启动函数名
KERNEL_SYMBOLS: dict[str, tuple[str, str]] = {
    "matmul_naive": ("matmul_naive_kernel", "launch_matmul_naive"),
    "matmul_tiled": ("matmul_tiled_kernel", "launch_matmul_tiled"),
    "softmax": ("softmax_row_kernel", "launch_softmax"),
    "rms_norm": ("rms_norm_kernel", "launch_rms_norm"),
    "flash_attention": ("flash_attention_forward_kernel", "launch_flash_attention_forward"),
}
# binding.cpp 里由 pybind11 导出给 Python 的函数
BINDING_FUNCTIONS: tuple[str, ...] = ("matmul_naive", "matmul_tiled", "softmax", "rms_norm", "flash_attention_forward")
EXTENSION_NAME = "llm_cuda_kernels"
FA_MAX_HEAD_DIM = 128  # 与 flash_attention.cu 的 FA_MAX_HEAD_DIM 相同：每个线程的 O 寄存器数组按它定长
MAX_GRID_Y = 65535  # CUDA grid 的 y 维上限：矩阵乘的行块数、FlashAttention 的 batch·heads
DEFAULT_ARCH = "sm_80"  # A100；CUDA 13 的 nvcc 最低支持 sm_75

FALLBACK_HINT = ("替代方案：Triton 内核（inference_engine/kernels/ 下的 softmax.py、rmsnorm.py、flash_attention.py，"
                 "模型里 kernels='triton' / attn_implementation='triton_flash'），或 PyTorch 实现"
                 "（kernels='torch'、attn_implementation='sdpa'）")


class CudaKernelsUnavailableError(RuntimeError):
    """这台机器上不能构建或运行 CUDA C 内核（缺 nvcc、CUDA 版 torch、ninja 或 GPU）。"""


# ---------------------------------------------------------------------------------------------------
# 1. 环境：nvcc 在哪，缺什么
# ---------------------------------------------------------------------------------------------------


def find_nvcc() -> str | None:
    """nvcc 的路径：PATH 上的，其次 $CUDA_HOME/bin、/usr/local/cuda/bin；找不到返回 None。"""
    found = shutil.which("nvcc")
    if found:
        return found
    for home in (os.environ.get("CUDA_HOME"), os.environ.get("CUDA_PATH"), "/usr/local/cuda"):
        if home and (Path(home) / "bin" / "nvcc").is_file():
            return str(Path(home) / "bin" / "nvcc")
    return None


def build_unavailable_reason() -> str | None:
    """load_inline 构建扩展还缺什么；什么都不缺返回 None。构建本身不需要 GPU。"""
    if torch.version.cuda is None:
        return (f"当前 torch {torch.__version__} 是 CPU 版，没有 CUDA 运行库（c10_cuda），CUDA 扩展链接不了"
                "（要构建：安装 CUDA 版 torch，如 `pip install torch` 的默认 Linux 轮子）")
    if find_nvcc() is None:
        return "找不到 nvcc（CUDA 编译器）：安装 CUDA toolkit，或设置 CUDA_HOME 指向它"
    from torch.utils.cpp_extension import is_ninja_available

    if not is_ninja_available():
        return "找不到 ninja（load_inline 用它驱动编译）：`pip install ninja`"
    return None


def run_unavailable_reason() -> str | None:
    """运行内核还缺什么（构建条件 + 一块可用的 NVIDIA GPU）；什么都不缺返回 None。"""
    reason = build_unavailable_reason()
    if reason is not None:
        return reason
    if not torch.cuda.is_available():
        return "这台机器没有可用的 NVIDIA GPU（torch.cuda.is_available() 为 False）"
    return None


# ---------------------------------------------------------------------------------------------------
# 2. 只用 nvcc 编译（不需要 torch 的 CUDA 版，也不需要 GPU）
# ---------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PtxasUsage:
    """ptxas -v 报告的一个内核的资源用量。寄存器与共享内存决定一个 SM 上能同时驻留多少 block（occupancy）；
    spill 不为 0 说明寄存器不够、变量被挪到了慢得多的 local memory（实为显存）。"""

    registers: int
    shared_bytes: int  # 静态共享内存；动态共享内存（flash_attention 的 extern __shared__）启动时才知道，不在这里
    stack_bytes: int
    spill_store_bytes: int
    spill_load_bytes: int


_PTXAS_ENTRY = re.compile(r"Compiling entry function '(\w+)'")
_PTXAS_FRAME = re.compile(r"(\d+) bytes stack frame, (\d+) bytes spill stores, (\d+) bytes spill loads")
_PTXAS_USED = re.compile(r"Used (\d+) registers")
_PTXAS_SMEM = re.compile(r"(\d+) bytes smem")


def parse_ptxas_report(text: str) -> dict[str, PtxasUsage]:
    """解析 `nvcc -Xptxas -v` 的输出：{内核的 C++ 修饰名（mangled name）: PtxasUsage}。

    每个内核一段："Compiling entry function '_Z…'" → "N bytes stack frame, N bytes spill stores, …" →
    "Used N registers, …[, N bytes smem], …"。
    """
    usage: dict[str, PtxasUsage] = {}
    current: str | None = None
    frame: tuple[int, int, int] | None = None
    for line in text.splitlines():
        if m := _PTXAS_ENTRY.search(line):
            current, frame = m.group(1), None
        elif current is not None and (m := _PTXAS_FRAME.search(line)):
            frame = (int(m.group(1)), int(m.group(2)), int(m.group(3)))
        elif current is not None and frame is not None and (m := _PTXAS_USED.search(line)):
            smem = _PTXAS_SMEM.search(line)
            usage[current] = PtxasUsage(registers=int(m.group(1)), shared_bytes=int(smem.group(1)) if smem else 0,
                                        stack_bytes=frame[0], spill_store_bytes=frame[1], spill_load_bytes=frame[2])
            current = None
    return usage


def compile_sources_with_nvcc(out_dir: str | os.PathLike, arch: str = DEFAULT_ARCH, *,
                              names: tuple[str, ...] | list[str] = CUDA_SOURCES) -> list[Path]:
    """把每个 .cu 单独 `nvcc -c` 成目标文件 out_dir/<name>.o，返回这些路径（顺序同 names）。

    不需要 torch 的 CUDA 版，也不需要 GPU：.cu 文件只依赖 CUDA 运行时的头文件。ptxas 的资源报告（-Xptxas -v）
    写在旁边的 <name>.ptxas.txt，用 parse_ptxas_report 解析。几个文件并行编译（每个 nvcc 是一个独立进程）。
    """
    if not re.fullmatch(r"sm_\d{2,3}[a-z]?", arch):
        raise ValueError(f"arch={arch!r} 不是 nvcc 的 GPU 架构名：形如 'sm_80'（A100）、'sm_90'（H100）")
    unknown = [n for n in names if n not in CUDA_SOURCES]
    if unknown:
        raise ValueError(f"没有这些 CUDA 源文件：{unknown}；可选 {list(CUDA_SOURCES)}")
    nvcc = find_nvcc()
    if nvcc is None:
        raise CudaKernelsUnavailableError("找不到 nvcc（CUDA 编译器）：安装 CUDA toolkit，或设置 CUDA_HOME 指向它")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)

    def compile_one(name: str) -> Path:
        obj = out / f"{name}.o"
        cmd = [nvcc, f"-arch={arch}", "-O3", "-I", str(CUDA_DIR), "-Xptxas", "-v",
               "-c", str(CUDA_DIR / f"{name}.cu"), "-o", str(obj)]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        (out / f"{name}.ptxas.txt").write_text(proc.stderr, encoding="utf-8")
        if proc.returncode != 0:
            raise RuntimeError(f"nvcc 编译 {name}.cu 失败（退出码 {proc.returncode}）：\n{' '.join(cmd)}\n{proc.stderr}")
        return obj

    with ThreadPoolExecutor(max_workers=max(1, min(len(names), os.cpu_count() or 1))) as pool:
        return list(pool.map(compile_one, names))


def cuda_sources() -> list[str]:
    """交给 load_inline 的 cuda_sources：五个 .cu 的文本，load_inline 把它们首尾相接成一个 cuda.cu。

    所以五个文件必须能放进同一个编译单元：头文件有 #pragma once，内核、常量、启动函数的名字互不相同
    （测试把这个拼接结果也用 nvcc 编一遍）。
    """
    return [(CUDA_DIR / f"{name}.cu").read_text(encoding="utf-8") for name in CUDA_SOURCES]


# ---------------------------------------------------------------------------------------------------
# 3. load_inline：构建（或从缓存加载）扩展模块
# ---------------------------------------------------------------------------------------------------

_MODULE = None


def load_cuda_kernels(verbose: bool = False):
    """即时编译 binding.cpp + 五个 .cu，返回扩展模块（有 BINDING_FUNCTIONS 里的函数）。同一进程只构建一次。

    需要 CUDA 版 torch、nvcc、ninja（不需要 GPU：没有 GPU 且没设 TORCH_CUDA_ARCH_LIST 时按 sm_80 编译）。
    缺了就抛 CudaKernelsUnavailableError，说明缺什么、用什么替代。
    """
    global _MODULE
    if _MODULE is not None:
        return _MODULE
    reason = build_unavailable_reason()
    if reason is not None:
        raise CudaKernelsUnavailableError(f"不能构建 CUDA C 内核：{reason}。{FALLBACK_HINT}")
    from torch.utils.cpp_extension import load_inline

    cuda_flags = ["-O3"]
    # 有 GPU 时 torch 按这块卡的架构编译；没有 GPU 又没指定 TORCH_CUDA_ARCH_LIST 时 torch 无从得知目标架构，
    # 这里显式给一个（torch 看到用户给了 -gencode 就不再自己加架构参数）
    if not torch.cuda.is_available() and not os.environ.get("TORCH_CUDA_ARCH_LIST"):
        sm = DEFAULT_ARCH.removeprefix("sm_")
        cuda_flags.append(f"-gencode=arch=compute_{sm},code=sm_{sm}")
    options = {}
    # binding.cpp 自己 include <torch/extension.h>；.cu 保持纯 CUDA，不让 load_inline 往里塞 torch 头文件
    # （no_implicit_headers 是较新的 torch 才有的参数；旧版本多 include 一次 torch 头文件，结果相同，只是编译慢些）
    if "no_implicit_headers" in inspect.signature(load_inline).parameters:
        options["no_implicit_headers"] = True
    try:
        _MODULE = load_inline(
            name=EXTENSION_NAME,
            cpp_sources=[(CUDA_DIR / "binding.cpp").read_text(encoding="utf-8")],
            cuda_sources=cuda_sources(),
            functions=list(BINDING_FUNCTIONS),
            extra_include_paths=[str(CUDA_DIR)],
            extra_cuda_cflags=cuda_flags,
            verbose=verbose,
            **options,
        )
    except (RuntimeError, OSError, subprocess.CalledProcessError) as err:
        raise CudaKernelsUnavailableError(f"构建 CUDA 扩展失败（verbose=True 可看完整的编译命令与输出）：{err}。"
                                          f"{FALLBACK_HINT}") from err
    return _MODULE


# ---------------------------------------------------------------------------------------------------
# 4. Python 包装：先查输入（哪台机器上都能报错），再查环境，最后查设备
# ---------------------------------------------------------------------------------------------------


def _check_input(name: str, t: object, ndim: int | None = None, min_ndim: int | None = None) -> torch.Tensor:
    if not isinstance(t, torch.Tensor):
        raise ValueError(f"{name} 必须是 torch.Tensor，收到 {type(t).__name__}")
    if ndim is not None and t.dim() != ndim:
        raise ValueError(f"{name} 必须是 {ndim} 维张量，收到形状 {tuple(t.shape)}")
    if min_ndim is not None and t.dim() < min_ndim:
        raise ValueError(f"{name} 至少要有 {min_ndim} 维，收到形状 {tuple(t.shape)}")
    if t.dtype != torch.float32:
        raise ValueError(f"{name} 的 dtype 是 {t.dtype}，CUDA C 内核只支持 float32（这一课不讲低精度）。"
                         f"bf16/fp16 请用 Triton 内核；{FALLBACK_HINT}")
    if not t.is_contiguous():
        raise ValueError(f"{name} 不是连续张量（stride={t.stride()}）：内核按行主序的裸指针寻址，请先调用 .contiguous()")
    return t


def _module_for(*tensors: torch.Tensor):
    """环境齐全、张量都在同一块 GPU 上时返回扩展模块；否则抛出说明原因与替代方案的错误。"""
    reason = run_unavailable_reason()
    if reason is not None:
        raise CudaKernelsUnavailableError(f"不能运行 CUDA C 内核：{reason}。{FALLBACK_HINT}")
    for t in tensors:
        if t.device.type != "cuda":
            raise ValueError(f"CUDA C 内核需要 GPU 上的张量，收到 {t.device} 上的：先 .cuda()。{FALLBACK_HINT}")
    if len({t.device for t in tensors}) > 1:
        raise ValueError(f"输入分散在不同的设备上：{sorted({str(t.device) for t in tensors})}，请放到同一块 GPU")
    return load_cuda_kernels()


def _check_matmul(a: torch.Tensor, b: torch.Tensor, rows_per_block: int) -> None:
    _check_input("a", a, ndim=2)
    _check_input("b", b, ndim=2)
    if a.shape[1] != b.shape[0]:
        raise ValueError(f"矩阵乘的内维对不上：a {tuple(a.shape)} 的列数 {a.shape[1]} ≠ b {tuple(b.shape)} 的行数 {b.shape[0]}")
    if a.shape[0] > MAX_GRID_Y * rows_per_block:
        raise ValueError(f"a 有 {a.shape[0]} 行，超过内核的 grid 上限（{MAX_GRID_Y} 个行块 × {rows_per_block} 行）：请分批计算")


def matmul_naive(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """C = a @ b，朴素内核（一个线程一个输出）。a (M, K)，b (K, N)，fp32、连续、同一块 GPU。"""
    _check_matmul(a, b, rows_per_block=16)  # matmul_naive.cu 的 NAIVE_BLOCK
    return _module_for(a, b).matmul_naive(a, b)


def matmul_tiled(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """C = a @ b，共享内存分块内核（TILE = 32）。约定同 matmul_naive。"""
    _check_matmul(a, b, rows_per_block=32)  # matmul_tiled.cu 的 TILE
    return _module_for(a, b).matmul_tiled(a, b)


def softmax(x: torch.Tensor) -> torch.Tensor:
    """沿最后一维的 softmax，x 任意形状 (..., N)，fp32、连续。"""
    _check_input("x", x, min_ndim=1)
    module = _module_for(x)
    # 展平成 (行数, N)；用 prod 而不是 -1，N = 0 时 view(-1, 0) 无法推断行数
    return module.softmax(x.view(math.prod(x.shape[:-1]), x.shape[-1])).view(x.shape)


def rms_norm(x: torch.Tensor, w: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """y = x / sqrt(mean(x², 最后一维) + eps) · w，与 torch.nn.RMSNorm(N, eps) 相同。x (..., N)，w (N,)。"""
    _check_input("x", x, min_ndim=1)
    _check_input("w", w, ndim=1)
    if w.shape[0] != x.shape[-1]:
        raise ValueError(f"w 的长度 {w.shape[0]} 必须等于 x 的最后一维 {x.shape[-1]}（x 形状 {tuple(x.shape)}）")
    if not (isinstance(eps, (int, float)) and eps >= 0):
        raise ValueError(f"eps={eps!r} 必须是非负的数")
    module = _module_for(x, w)
    return module.rms_norm(x.view(math.prod(x.shape[:-1]), x.shape[-1]), w, float(eps)).view(x.shape)


def flash_attention_forward(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, causal: bool = False,
                            scale: float | None = None) -> torch.Tensor:
    """O = softmax(scale · q kᵀ [+ 因果掩码]) v，与 F.scaled_dot_product_attention(q, k, v, is_causal=causal) 相同。

    q (B, H, T, D)，k/v (B, H, S, D)，fp32、连续，1 ≤ D ≤ 128，scale 默认 1/sqrt(D)。
    causal=True 时第 i 个 query 只看 key j ≤ i（左上角对齐，与 SDPA 的 is_causal 相同；T == S 时就是通常的因果注意力）。
    只有前向：这一课的 CUDA 版本不做反向（训练用 Triton 的 FlashAttention-2）。GQA 请先 repeat_kv。
    """
    for name, t in (("q", q), ("k", k), ("v", v)):
        _check_input(name, t, ndim=4)
    if k.shape != v.shape:
        raise ValueError(f"k 与 v 的形状必须相同，收到 {tuple(k.shape)} 与 {tuple(v.shape)}")
    if q.shape[:2] != k.shape[:2] or q.shape[3] != k.shape[3]:
        raise ValueError(f"q {tuple(q.shape)} 与 k {tuple(k.shape)} 的 batch、heads、head_dim 必须相同"
                         "（GQA 的 k/v 请先用 repeat_kv 复制到与 q 同样多的头）")
    batch, heads, seq_q, head_dim = q.shape
    if not 1 <= head_dim <= FA_MAX_HEAD_DIM:
        raise ValueError(f"head_dim={head_dim} 不受支持：这个内核支持 1..{FA_MAX_HEAD_DIM}"
                         f"（每个线程的输出寄存器数组按 {FA_MAX_HEAD_DIM} 定长）。{FALLBACK_HINT}")
    if k.shape[2] == 0:
        raise ValueError("k/v 至少要有一个 key（seq_k = 0 时 softmax 没有定义）")
    if batch * heads > MAX_GRID_Y:
        raise ValueError(f"batch·heads = {batch * heads} 超过 grid 的 y 维上限 {MAX_GRID_Y}：请分批调用")
    if scale is None:
        scale = head_dim ** -0.5
    module = _module_for(q, k, v)
    out = module.flash_attention_forward(q.view(batch * heads, seq_q, head_dim),
                                         k.view(batch * heads, k.shape[2], head_dim),
                                         v.view(batch * heads, k.shape[2], head_dim), float(scale), bool(causal))
    return out.view(batch, heads, seq_q, head_dim)


# ---------------------------------------------------------------------------------------------------
# 5. main()：这台机器能做到哪一步就做到哪一步
# ---------------------------------------------------------------------------------------------------


def _report_compile(names: tuple[str, ...]) -> None:
    import tempfile

    with tempfile.TemporaryDirectory(prefix="cuda-kernels-") as tmp:
        start = time.perf_counter()
        objects = compile_sources_with_nvcc(tmp, names=names)
        seconds = time.perf_counter() - start
        print(f"nvcc -c -arch={DEFAULT_ARCH}：{len(objects)} 个文件，{seconds:.1f} s（并行）")
        print(f"  {'文件':<18}{'内核':<34}{'寄存器':>6}{'静态smem':>10}{'spill':>7}{'目标文件':>10}")
        for name, obj in zip(names, objects, strict=True):
            usage = parse_ptxas_report((Path(tmp) / f"{name}.ptxas.txt").read_text(encoding="utf-8"))
            kernel = KERNEL_SYMBOLS[name][0]
            mangled = next(m for m in usage if kernel in m)
            u = usage[mangled]
            print(f"  {name + '.cu':<18}{kernel:<34}{u.registers:>6}{u.shared_bytes:>9}B"
                  f"{u.spill_store_bytes + u.spill_load_bytes:>6}B{obj.stat().st_size / 1024:>8.1f}KB")


def _max_err(ours: torch.Tensor, ref: torch.Tensor) -> float:
    return (ours.double() - ref.double()).abs().max().item()


def _report_gpu(smoke: bool) -> None:
    import torch.nn.functional as F

    from utils.torch_playground import benchmark

    dev = torch.device("cuda")
    a, b = torch.randn(129, 67, device=dev), torch.randn(67, 255, device=dev)
    ref = a.double() @ b.double()
    print(f"matmul_naive 129×67×255：最大误差 {_max_err(matmul_naive(a, b), ref):.2e}（对照 fp64）")
    print(f"matmul_tiled 129×67×255：最大误差 {_max_err(matmul_tiled(a, b), ref):.2e}")
    x = torch.randn(37, 1000, device=dev) * 4
    print(f"softmax (37, 1000)：最大误差 {_max_err(softmax(x), torch.softmax(x.double(), -1)):.2e}")
    w = torch.randn(1000, device=dev)
    norm = torch.nn.RMSNorm(1000, eps=1e-6).to(dev)
    with torch.no_grad():
        norm.weight.copy_(w)
        print(f"rms_norm (37, 1000)：最大误差 {_max_err(rms_norm(x, w, 1e-6), norm(x)):.2e}（对照 torch.nn.RMSNorm）")
    q, k, v = (torch.randn(2, 3, 200, 64, device=dev) for _ in range(3))
    for causal in (False, True):
        ref = F.scaled_dot_product_attention(q.double(), k.double(), v.double(), is_causal=causal)
        print(f"flash_attention_forward (2, 3, 200, 64) causal={causal}："
              f"最大误差 {_max_err(flash_attention_forward(q, k, v, causal=causal), ref):.2e}（对照 fp64 SDPA）")

    n = 512 if smoke else 2048
    a, b = torch.randn(n, n, device=dev), torch.randn(n, n, device=dev)
    times = {name: benchmark(lambda f=f: f(a, b), warmup=2, reps=5 if smoke else 20)
             for name, f in (("naive", matmul_naive), ("tiled", matmul_tiled), ("torch.matmul", torch.matmul))}
    tflops = {name: 2 * n**3 / (ms / 1000) / 1e12 for name, ms in times.items()}
    print(f"{n}³ fp32 矩阵乘：" + "，".join(f"{name} {ms:.3f} ms（{tflops[name]:.2f} TFLOP/s）"
                                            for name, ms in times.items()))
    print(f"分块相对朴素的加速比：{times['naive'] / times['tiled']:.2f}×；cuBLAS 相对分块：{times['tiled'] / times['torch.matmul']:.2f}×")


def main() -> None:
    from utils.io import is_smoke
    from utils.torch_playground import setup_seed

    setup_seed()
    smoke = is_smoke()
    nvcc = find_nvcc()
    build_reason = build_unavailable_reason()
    run_reason = run_unavailable_reason()
    print("CUDA C 内核：这台机器能做到哪一步")
    print(f"  1. nvcc 编译每个 .cu：{'可以（' + nvcc + '）' if nvcc else '不能：找不到 nvcc'}")
    print(f"  2. load_inline 构建扩展：{'可以' if build_reason is None else '不能：' + build_reason}")
    print(f"  3. 在 GPU 上运行并对照 PyTorch：{'可以' if run_reason is None else '不能：' + run_reason}")
    if nvcc:
        # SMOKE 下只编一个文件（nvcc 单个文件就要几秒）
        _report_compile(("matmul_tiled",) if smoke else CUDA_SOURCES)
    if run_reason is None:
        start = time.perf_counter()
        load_cuda_kernels()
        print(f"load_inline 构建 / 加载扩展：{time.perf_counter() - start:.1f} s")
        _report_gpu(smoke)
    else:
        print(f"没有运行内核（需要 GPU 与 CUDA 版 torch）。{FALLBACK_HINT}")


if __name__ == "__main__":
    lesson_args(__doc__)
    main()
