"""第一课：Triton 向量加法 out = x + y —— program id、BLOCK、mask 三个概念，以及为什么它是"访存受限"的。

Triton 的编程模型（与 CUDA 的区别）
-----------------------------------
CUDA 让你写"一个线程做什么"；Triton 让你写"一个 program 做什么"，一个 program 一次处理一整块（BLOCK 个）元素，
块内如何分给 32 个线程一组的 warp、如何向量化加载，由编译器决定。启动时给一个 grid：

    grid = (cdiv(n, BLOCK),)          # 一共 ⌈n / BLOCK⌉ 个 program，并行执行、顺序不定
    pid  = tl.program_id(0)           # 我是第几个 program
    offs = pid * BLOCK + arange(0, BLOCK)   # 我负责的 BLOCK 个下标（一个向量，不是一个数）
    mask = offs < n                   # 最后一块可能越界：n 不是 BLOCK 的倍数时，越界的位置不读也不写

BLOCK 必须是 2 的幂（tl.arange 的要求，也是硬件向量宽度的要求），所以任意长度的 n 都靠 mask 处理尾巴——
忘了 mask，最后一个 program 就会读写数组之外的内存：GPU 上是越界访问或悄悄写坏相邻张量，比崩溃更糟。

Roofline：为什么向量加法只看带宽
--------------------------------
fp32 下每个元素：读 x（4 B）、读 y（4 B）、写 out（4 B）= 12 B 的访存，只做 1 次加法（1 FLOP）。
    总访存 = 3·4·n 字节，总计算 = n FLOP，算术强度 I = n / (12 n) ≈ 0.083 FLOP/B。
H100 SXM：HBM3 带宽约 3.35 TB/s，fp32（非 Tensor Core）峰值约 67 TFLOP/s，拐点 67e12 / 3.35e12 ≈ 20 FLOP/B。
I = 0.083 ≪ 20，所以时间完全由搬数据决定：t ≈ 12 n / 带宽。n = 2^24（1600 万）时搬 201 MB，
理想 ≈ 60 µs；实测能到峰值带宽的 80–90%（≈ 2.7–3.0 TB/s）就是好内核，此时算力只用了不到 0.5%。
（H200 的 HBM3e 约 4.8 TB/s，同样的内核按比例更快；A100 约 2.0 TB/s。）
衡量这类内核的指标因此是"有效带宽" GB/s = 12 n / t，而不是 FLOP/s。torch 的 x + y 本身已是一次读两次写的
最优形态，所以这里的目标是追平它；后面的 softmax、RMSNorm 才开始靠"融合"少搬数据，真正胜过逐算子的 PyTorch。

运行：python inference_engine/kernels/vector_add.py（没有 GPU 时自动走 Triton 解释器，只验证正确性，不测速）。
"""

from __future__ import annotations

import torch
from torch import Tensor

# 必须在定义任何 @triton.jit 之前导入：runtime 在没有 GPU 时打开 TRITON_INTERPRET
from inference_engine.kernels.runtime import INTERPRET, KERNEL_DEVICE, check_tensor, tl, triton
from utils.io import is_smoke
from utils.lesson_cli import lesson_args, timing_note
from utils.torch_playground import benchmark_interleaved, setup_seed

__all__ = ["add", "add_kernel"]

BLOCK_SIZE = 1024  # 每个 program 处理的元素数：2 的幂；GPU 上 1024 个 fp32 = 4 KB，足够让每个线程做向量化的 16 B 加载


@triton.jit
def add_kernel(x_ptr, y_ptr, out_ptr, n_elements, BLOCK: tl.constexpr):
    pid = tl.program_id(axis=0)  # 一维 grid 里的第几个 program
    offs = pid * BLOCK + tl.arange(0, BLOCK)  # (BLOCK,) 个全局下标
    mask = offs < n_elements  # 尾块越界的位置为 False：不读（返回 other=0）也不写
    # 在 fp32 里加、存回时舍入一次：GPU 上 bf16/fp16 的结果与 torch 逐位相同（torch 的低精度加法也是升到 fp32 算再舍入）。
    # 另一个理由：Triton 解释器把 bf16 当 16 位整数存放，直接对 bf16 做算术会得到垃圾——先 .to(fp32) 两边都对
    # （解释器存回 bf16 时是截断而不是就近舍入，所以解释器下 bf16 与 torch 可差 1 ulp，见 main()）。
    x = tl.load(x_ptr + offs, mask=mask).to(tl.float32)
    y = tl.load(y_ptr + offs, mask=mask).to(tl.float32)
    tl.store(out_ptr + offs, (x + y).to(out_ptr.dtype.element_ty), mask=mask)


def add(x: Tensor, y: Tensor) -> Tensor:
    """out = x + y（同形状、同 dtype、连续）。启动器负责检查输入、分配输出、算 grid。"""
    check_tensor("x", x)
    check_tensor("y", y)
    if x.shape != y.shape:
        raise ValueError(f"x 的形状 {tuple(x.shape)} 与 y 的形状 {tuple(y.shape)} 不同：内核不做广播，"
                         "请先 expand(...).contiguous() 成相同形状")
    if x.dtype != y.dtype:
        raise ValueError(f"x 的 dtype {x.dtype} 与 y 的 dtype {y.dtype} 不同：内核不做类型提升，请先把两者转成同一 dtype")
    out = torch.empty_like(x)
    n = x.numel()
    if n == 0:
        return out
    grid = (triton.cdiv(n, BLOCK_SIZE),)  # ⌈n / BLOCK⌉ 个 program；尾块由 mask 处理
    add_kernel[grid](x, y, out, n, BLOCK=BLOCK_SIZE)
    return out


def main() -> None:
    setup_seed()
    mode = "Triton 解释器（CPU，只验证正确性）" if INTERPRET else f"GPU：{torch.cuda.get_device_name()}"
    print(f"向量加法 out = x + y —— {mode}（要求与 torch 逐位相同 = 0；解释器里的 bf16 例外，允许 1 ulp）")
    # 长度故意取非 BLOCK 倍数：最后一个 program 只有一部分下标有效，mask 必须起作用
    sizes = [1, 1000, 4097] if (is_smoke() or INTERPRET) else [1000, 98_433, 1 << 20, 1 << 24]
    for n in sizes:
        for dtype in (torch.float32, torch.float16, torch.bfloat16):
            x = torch.randn(n, device=KERNEL_DEVICE).to(dtype)
            y = torch.randn(n, device=KERNEL_DEVICE).to(dtype)
            ours, ref = add(x, y).float(), (x + y).float()  # 参考就是 PyTorch 的 x + y
            err = (ours - ref).abs().max().item()
            # 同一次 fp32 加法、同一次舍入：应当逐位相同。唯一的例外是解释器里的 bf16——它把 fp32→bf16 做成截断
            # （向零舍入），GPU 上是就近舍入，所以解释器下允许差 1 个 bf16 ulp（≤ 2⁻⁷·|值|）
            ulp_ok = INTERPRET and dtype == torch.bfloat16
            ok = bool(((ours - ref).abs() <= ref.abs() * 2**-7).all()) if ulp_ok else err == 0.0
            print(f"  n={n:>9,}  {str(dtype):>14}  max|ours - torch| = {err:.1e}"
                  + ("（解释器截断舍入，≤ 1 ulp）" if ulp_ok else ""))
            if not ok:
                raise SystemExit(f"向量加法与 torch 不一致（n={n}, {dtype}）")
    if INTERPRET:
        print("解释器逐个 program 用 numpy 模拟，速度没有意义；在 GPU 上运行本文件会打印 GB/s 对比。")
        return
    print("有效带宽（GB/s = 3·元素字节数·n / 时间）：")
    for n in sizes[1:]:
        x = torch.randn(n, device=KERNEL_DEVICE)
        y = torch.randn(n, device=KERNEL_DEVICE)
        ours_ms, torch_ms = benchmark_interleaved([lambda: add(x, y), lambda: x + y], warmup=5, reps=20)
        gbps = lambda ms: 3 * x.element_size() * n / (ms * 1e-3) / 1e9  # noqa: E731
        print(f"  n={n:>11,}  Triton {gbps(ours_ms):7.1f} GB/s   torch {gbps(torch_ms):7.1f} GB/s")
        print(timing_note("benchmarks/kernels_gpu.py"))


if __name__ == "__main__":
    lesson_args(__doc__)
    main()
