"""分块（tiled）矩阵乘 C = A·B 的 Triton 内核：按 GROUP_M 分组的 program 顺序复用 L2，autotune 选块大小，
fp32 累加，任意步长（转置视图不拷贝），外加 autograd 包装，可以直接当线性层用：triton_linear(x, W, b) = x·Wᵀ + b。

运行：python inference_engine/kernels/matmul.py   （没有 GPU 时在 Triton 解释器里只验证正确性；有 GPU 时测 TFLOP/s）

1. 为什么要分块：算术强度（roofline）
-----------------------------------
A 是 (M, K)、B 是 (K, N)。一共 2·M·N·K 次 FLOP（每个乘加算 2 次）。
- 朴素做法：每个输出元素 C_ij 自己读 A 的一行、B 的一列 —— 读 2K 个元素、做 2K 次 FLOP，
  算术强度 = 2K / (2K·b) = 1/b FLOP/字节（b = 每元素字节数，bf16 为 2 → 0.5 FLOP/B）。
- 分块：一个 program 负责 C 的一个 BM×BN 块，沿 K 每步取 A 的 BM×BK 小块和 B 的 BK×BN 小块：
      每步读 (BM + BN)·BK·b 字节，做 2·BM·BN·BK 次 FLOP
      算术强度 = 2·BM·BN·BK / ((BM + BN)·BK·b) = 2·BM·BN / ((BM + BN)·b)
  BM = BN = 128、bf16：2·128·128 / (256·2) = 64 FLOP/B；128×256：85 FLOP/B —— 比朴素做法高两个数量级。
- H200 的屋脊点：bf16 稠密峰值约 989 TFLOP/s，HBM3e 约 4.8 TB/s → 989e12 / 4.8e12 ≈ 206 FLOP/B。
  即使 128×256 的块（85 FLOP/B）也在屋脊点左边：如果每个块的数据都从 HBM 读，最多 4.8e12·85 ≈ 410 TFLOP/s，
  不到峰值一半。剩下的差距靠 L2 补：不同 program 读的是同一批 A 的行条、B 的列条，让它们在 L2 里命中
  （L2 带宽是 HBM 的几倍），这正是第 3 节 GROUP_M 的作用。
  全局账：不算缓存时，(M/BM)·(N/BN) 个 program 每个读 (BM + BN)·K 个元素，共 M·N·K·(1/BN + 1/BM) 个；
  4096³、128×128、bf16：4096³·(2/128)·2 B ≈ 2.1 GB，按 4.8 TB/s 要 0.45 ms，而计算只要 2·4096³ / 989e12 ≈ 0.14 ms；
  必须读的最少数据只有 A、B 各一次 2·4096²·2 B ≈ 67 MB —— 中间 30 倍的差距全靠 L2 与片上存储的复用。

2. 为什么块放在 SRAM / 寄存器里
------------------------------
- 累加器 acc（BM×BN 的 fp32）整个 K 循环都待在寄存器里，循环结束才写一次 C：C 只写 M·N 次，从不读回。
  寄存器预算：128×256 的 fp32 累加器 = 128 KiB，分给 8 个 warp（256 个线程）= 每线程 128 个寄存器
  （上限 255），所以大块配 num_warps=8。
- A、B 的小块经共享内存（SRAM）喂给 Tensor Core：num_stages 份缓冲做软件流水线——计算第 k 步时，
  第 k+1 … k+s−1 步的异步拷贝已在路上，访存延迟被计算盖住。每级缓冲 (BM + BN)·BK·b 字节：
  128×256×64 bf16 一级 48 KiB，3 级 144 KiB（H100/H200 每个 SM 最多 227 KiB）；fp32 时翻倍，放不下的配置
  autotune 会自动跳过（OutOfResources）。
- 小块在 SRAM 里被复用：A 的 BM×BK 小块参与 BN 列的乘加，B 的小块参与 BM 行 —— 这就是上面 BM·BN/(BM+BN) 的来源。

3. GROUP_M：program 顺序决定 L2 命中率（推导）
----------------------------------------------
GPU 同时只跑一"波"（wave）program：W ≈ SM 数 × 每个 SM 驻留的 program 数（H200 132 个 SM，大块时每 SM 1 个，W ≈ 132）。
记 n_m = ⌈M/BM⌉、n_n = ⌈N/BN⌉。A 的"行条"（BM×K）和 B 的"列条"（K×BN）各是一个复用单位。
- 行优先顺序（pid → (pid // n_n, pid % n_n)）：一波覆盖 ⌈W/n_n⌉ 行 × 全部 n_n 列，
  触及 ⌈W/n_n⌉ 条 A 行条 + min(W, n_n) 条 B 列条。
- 分组顺序（先在 GROUP_M = G 行内按列优先走，走完 G 行 × 全部列再换下一组）：一波覆盖 G 行 × ⌈W/G⌉ 列，
  触及 G 条 A 行条 + ⌈W/G⌉ 条 B 列条；G ≈ √W 时最少（≈ 2√W）。
  例：4096³、128×128（n_m = n_n = 32）、W = 132：行优先 5 + 32 = 37 条，G = 8：8 + 17 = 25 条（少 32%）；
      16384³（n_n = 128）：行优先 2 + 128 = 130 条，G = 8 仍是 25 条（少 81%）。每条 128×K bf16，K = 16384 时 4 MiB：
      130 条 = 520 MiB 远超 50 MiB 的 L2，25 条 = 100 MiB 也不全放得下，但一波在同一时刻只在 K 方向推进到
      相近的位置，同时活跃的只是每条里的几个 BK 切片——条数越少，这些切片越能留在 L2 里被同一波的其它 program 命中。
  main() 用内核真正使用的顺序（tile_order）数出这些条数，测试验证这个顺序是一一映射。

4. 数值
-------
- 累加一律 fp32（tl.dot 的 acc），输出转回输入的 dtype：与 cuBLAS 的 bf16/fp16 GEMM 相同。
- fp32 输入必须 tl.dot(..., input_precision="ieee")：默认的 tf32 把输入舍入到 10 位尾数（单位舍入 2⁻¹¹ ≈ 4.9e-4，
  fp32 是 2⁻²⁴ ≈ 6e-8），每个乘积就有 ~1e-3 的相对误差，结果与 torch.matmul（默认不开 TF32）差 1e-3 量级，
  远超 1e-5 的容差。代价：ieee 走 CUDA core 的 FMA，不用 Tensor Core（H100 上 fp32 约 67 TFLOP/s，TF32 约 495）。
  16 位输入时这个参数不起作用（Tensor Core 本来就是 bf16/fp16 乘、fp32 加）。
- 偏置在尾声（epilogue）里以 fp32 加到累加器上，再舍入一次：省一次 M×N 输出的读写（"epilogue 融合"）。

自上而下：autotune 配置 → 分组顺序（jit 辅助函数）→ 内核 → 启动器（检查形状/dtype/设备）→ autograd 包装
（dA = dC·Bᵀ，dB = Aᵀ·dC，同一个内核吃转置视图）→ matmul / triton_linear → benchmark_matmul → main()。
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

# 必须在定义任何 @triton.jit 之前导入：runtime 在没有 GPU 时打开 TRITON_INTERPRET
from inference_engine.kernels.runtime import FALLBACK_HINT, INTERPRET, KERNEL_DEVICE, check_tensor, tl, triton
from utils.io import is_smoke
from utils.lesson_cli import lesson_args
from utils.torch_playground import setup_seed

__all__ = ["MatmulFunction", "benchmark_matmul", "matmul", "panels_per_wave", "tile_order", "triton_linear"]


# ---------------------------------------------------------------------------------------------------
# 1. autotune 配置：(BLOCK_M, BLOCK_N, BLOCK_K, GROUP_M, num_warps, num_stages)
# ---------------------------------------------------------------------------------------------------

_GPU_CONFIGS = [
    (128, 256, 64, 8, 8, 3),   # 大块：强度 85 FLOP/B（bf16），累加器 128 寄存器/线程 → 8 warp
    (256, 128, 64, 8, 8, 3),
    (128, 128, 64, 8, 4, 4),
    (128, 128, 32, 8, 4, 4),
    (128, 64, 32, 8, 4, 4),
    (64, 128, 32, 8, 4, 4),
    (64, 64, 32, 8, 4, 4),     # 小矩阵（program 少于 SM 数时大块会让 SM 闲着）与 fp32（共享内存翻倍）的退路
    (32, 64, 32, 8, 2, 5),
]
# 解释器：一个小配置。解释器不测速，多个配置只会让每个都跑一遍；GROUP_M = 2 让 129 行（5 个行块）的测试
# 形状里既有满组也有不满的最后一组，分组公式的两条路径都被执行到。
_INTERPRET_CONFIG = (32, 32, 32, 2, 4, 1)


def _configs() -> list[triton.Config]:
    rows = [_INTERPRET_CONFIG] if INTERPRET else _GPU_CONFIGS
    return [triton.Config({"BLOCK_M": bm, "BLOCK_N": bn, "BLOCK_K": bk, "GROUP_M": g}, num_warps=w, num_stages=s)
            for bm, bn, bk, g, w, s in rows]


# ---------------------------------------------------------------------------------------------------
# 2. 分组的 program 顺序：pid → (pid_m, pid_n)
# ---------------------------------------------------------------------------------------------------


@triton.jit
def _grouped_tile(pid, num_pid_m, num_pid_n, GROUP_M: tl.constexpr):
    """一组 = GROUP_M 个行块 × 全部 num_pid_n 个列块；组内列优先：连续的 pid 先竖着走完本组的几行，再右移一列。

    这样连续的 W 个 pid（同一波）落在 GROUP_M 行 × W/GROUP_M 列的近似正方形里（推导见模块文档第 3 节）。
    pid 可以是标量（内核里）或向量（tile_order 里一次算一批），公式逐元素成立。
    """
    tiles_per_group = GROUP_M * num_pid_n
    group = pid // tiles_per_group
    first_m = group * GROUP_M
    rows_in_group = tl.minimum(num_pid_m - first_m, GROUP_M)  # 最后一组可能不满 GROUP_M 行
    local = pid % tiles_per_group
    pid_m = first_m + local % rows_in_group
    pid_n = local // rows_in_group
    return pid_m, pid_n


@triton.jit
def _tile_order_kernel(out_m_ptr, out_n_ptr, n_programs, num_pid_m, num_pid_n,
                       GROUP_M: tl.constexpr, BLOCK: tl.constexpr):
    pid = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    mask = pid < n_programs
    # 越界的 lane 夹到最后一个 pid：否则它们落进"行数 ≤ 0 的组"，公式里出现除以 0（虽然结果不写）
    pid_m, pid_n = _grouped_tile(tl.minimum(pid, n_programs - 1), num_pid_m, num_pid_n, GROUP_M)
    tl.store(out_m_ptr + pid, pid_m, mask=mask)
    tl.store(out_n_ptr + pid, pid_n, mask=mask)


def tile_order(num_pid_m: int, num_pid_n: int, group_m: int, n_programs: int | None = None) -> Tensor:
    """前 n_programs 个 pid（默认全部 num_pid_m·num_pid_n 个）各自负责的块坐标，形状 (n_programs, 2) 的 int32，
    每行 (pid_m, pid_n)。用的就是矩阵乘内核里的同一个 _grouped_tile；group_m = 1 即行优先顺序。"""
    total = num_pid_m * num_pid_n
    n_programs = total if n_programs is None else n_programs
    if min(num_pid_m, num_pid_n, group_m) < 1 or not 0 <= n_programs <= total:
        raise ValueError(f"需要 num_pid_m、num_pid_n、group_m ≥ 1 且 0 ≤ n_programs ≤ {total}，"
                         f"收到 ({num_pid_m}, {num_pid_n}, {group_m}, {n_programs})")
    out = torch.empty(2, n_programs, dtype=torch.int32, device=KERNEL_DEVICE)
    block = 1024
    if n_programs:
        _tile_order_kernel[(triton.cdiv(n_programs, block),)](out[0], out[1], n_programs, num_pid_m, num_pid_n,
                                                              GROUP_M=group_m, BLOCK=block)
    return out.t().cpu()


def panels_per_wave(num_pid_m: int, num_pid_n: int, group_m: int, wave: int) -> tuple[int, int]:
    """第一波 wave 个 program 一共触及几条 A 行条、几条 B 列条（按 tile_order 的真实顺序数出来）。"""
    coords = tile_order(num_pid_m, num_pid_n, group_m, min(wave, num_pid_m * num_pid_n))
    return int(coords[:, 0].unique().numel()), int(coords[:, 1].unique().numel())


# ---------------------------------------------------------------------------------------------------
# 3. 内核：grid = (n_m·n_n,)，一个 program 算 C 的一个 BLOCK_M×BLOCK_N 块
# ---------------------------------------------------------------------------------------------------


@triton.autotune(configs=_configs(), key=["M", "N", "K"])  # 张量 dtype 由 autotune 自动并入键
@triton.jit
def _matmul_kernel(a_ptr, b_ptr, c_ptr, bias_ptr, M, N, K,
                   stride_am, stride_ak, stride_bk, stride_bn, stride_cm, stride_cn, stride_bias,
                   HAS_BIAS: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
                   GROUP_M: tl.constexpr):
    pid = tl.program_id(0)
    pid_m, pid_n = _grouped_tile(pid, tl.cdiv(M, BLOCK_M), tl.cdiv(N, BLOCK_N), GROUP_M)

    # 块的起点用 int64 标量算：row0·stride_am 在大矩阵上会超过 2^31（例如 M = 65536 个 token、K = 8192）；
    # 块内偏移（≤ BLOCK·stride）留在 int32 里，省寄存器。之后的 += 是指针运算，本来就是 64 位。
    row0 = pid_m.to(tl.int64) * BLOCK_M
    col0 = pid_n.to(tl.int64) * BLOCK_N
    rm = tl.arange(0, BLOCK_M)
    rn = tl.arange(0, BLOCK_N)
    rk = tl.arange(0, BLOCK_K)
    # 任意步长：A[i, k] 在 a_ptr + i·stride_am + k·stride_ak。转置视图只是交换两个步长，不需要拷贝；
    # 步长为 1 的那一维被 Triton 特化成常数，得到向量化的访存。
    a_ptrs = a_ptr + row0 * stride_am + rm[:, None] * stride_am + rk[None, :] * stride_ak  # (BM, BK)
    b_ptrs = b_ptr + col0 * stride_bn + rk[:, None] * stride_bk + rn[None, :] * stride_bn  # (BK, BN)
    m_ok = rm < M - row0  # 边缘块：超出 M / N 的行列读 0、不写
    n_ok = rn < N - col0

    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)  # 整个 K 循环留在寄存器里
    for k in range(0, tl.cdiv(K, BLOCK_K)):
        k_left = K - k * BLOCK_K  # 最后一步可能不满 BLOCK_K：多出来的部分读 0，乘加后不改变结果
        a = tl.load(a_ptrs, mask=m_ok[:, None] & (rk[None, :] < k_left), other=0.0)
        b = tl.load(b_ptrs, mask=(rk[:, None] < k_left) & n_ok[None, :], other=0.0)
        # fp32：ieee（真 fp32 乘加，不用 TF32）；bf16/fp16：Tensor Core 16 位乘、fp32 累加，此参数不起作用
        acc = tl.dot(a, b, acc, input_precision="ieee")
        a_ptrs += BLOCK_K * stride_ak
        b_ptrs += BLOCK_K * stride_bk

    if HAS_BIAS:  # epilogue 融合：在 fp32 累加器上加偏置，只舍入一次，也省一次 M×N 的读写
        bias = tl.load(bias_ptr + (col0 + rn) * stride_bias, mask=n_ok, other=0.0)
        acc += bias.to(tl.float32)[None, :]
    c_ptrs = c_ptr + row0 * stride_cm + col0 * stride_cn + rm[:, None] * stride_cm + rn[None, :] * stride_cn
    tl.store(c_ptrs, acc.to(c_ptr.dtype.element_ty), mask=m_ok[:, None] & n_ok[None, :])


# ---------------------------------------------------------------------------------------------------
# 4. 启动器：检查输入，分配输出，算 grid
# ---------------------------------------------------------------------------------------------------


def _check_operands(a: Tensor, b: Tensor, bias: Tensor | None, *, a_name: str = "a", b_name: str = "b") -> None:
    # 不要求连续：内核按步长寻址，任何步长（转置、切片、甚至 expand 出来的步长 0）都能正确读
    check_tensor(a_name, a, contiguous=False)
    check_tensor(b_name, b, contiguous=False)
    if a.dim() < 2 or b.dim() != 2:
        raise ValueError(f"{a_name} 需要至少 2 维 (..., K)、{b_name} 需要 2 维 (K, N)，收到 {tuple(a.shape)} 与 "
                         f"{tuple(b.shape)}：向量请先 unsqueeze 成矩阵（例如 v.unsqueeze(0) 是 1×K）")
    if a.dtype != b.dtype:
        raise ValueError(f"{a_name} 是 {a.dtype}、{b_name} 是 {b.dtype}：矩阵乘两边必须同一 dtype，请先转换。"
                         f"{FALLBACK_HINT}")
    if a.shape[-1] != b.shape[0]:
        raise ValueError(f"内维不匹配：{a_name} {tuple(a.shape)} 的最后一维 K = {a.shape[-1]}，"
                         f"{b_name} {tuple(b.shape)} 的第一维 = {b.shape[0]}；(…, K) @ (K, N) 要求两者相等")
    if bias is not None:
        check_tensor("bias", bias, contiguous=False)
        if bias.dim() != 1 or bias.shape[0] != b.shape[1] or bias.dtype != a.dtype:
            raise ValueError(f"bias 应是长度 {b.shape[1]}、dtype {a.dtype} 的一维张量，"
                             f"收到形状 {tuple(bias.shape)}、{bias.dtype}")


def _launch(a: Tensor, b: Tensor, bias: Tensor | None = None) -> Tensor:
    """C = A·B (+ bias)，A (M, K)、B (K, N) 二维、步长任意；输出是新分配的连续 (M, N)，dtype 同输入。"""
    m, k = a.shape
    n = b.shape[1]
    c = torch.empty(m, n, dtype=a.dtype, device=a.device)
    if m == 0 or n == 0:
        return c
    # 没有偏置时 bias_ptr 传 c 占位：HAS_BIAS=False 时那条分支在编译期就被删掉，从不读它
    bias_arg = c if bias is None else bias
    _matmul_kernel[lambda meta: (triton.cdiv(m, meta["BLOCK_M"]) * triton.cdiv(n, meta["BLOCK_N"]),)](
        a, b, c, bias_arg, m, n, k, a.stride(0), a.stride(1), b.stride(0), b.stride(1), c.stride(0), c.stride(1),
        0 if bias is None else bias.stride(0), HAS_BIAS=bias is not None)
    return c


# ---------------------------------------------------------------------------------------------------
# 5. autograd 包装：C = A·B + bias  →  dA = dC·Bᵀ，dB = Aᵀ·dC，dbias = Σ_行 dC
# ---------------------------------------------------------------------------------------------------


class MatmulFunction(torch.autograd.Function):
    """二维 A (M, K)、B (K, N)、可选 bias (N,)。反向用同一个内核，只是喂转置视图（交换步长，零拷贝）。"""

    @staticmethod
    def forward(ctx, a: Tensor, b: Tensor, bias: Tensor | None) -> Tensor:
        ctx.save_for_backward(a, b)
        ctx.has_bias = bias is not None
        return _launch(a, b, bias)

    @staticmethod
    @torch.autograd.function.once_differentiable  # 手写的反向没有二阶导：明确报错而不是给出错误结果
    def backward(ctx, dc: Tensor) -> tuple[Tensor | None, Tensor | None, Tensor | None]:
        a, b = ctx.saved_tensors
        da = db = dbias = None
        # dc 可能非连续（甚至是 sum() 反向传来的步长 0 的 expand）：内核按步长读，不需要 .contiguous()
        if ctx.needs_input_grad[0]:
            da = _launch(dc, b.t())  # (M, N)·(N, K)
        if ctx.needs_input_grad[1]:
            # 让 dB 的内存布局与 B 相同（和 PyTorch 的 mm 反向一样）：B 若是权重的转置视图 Wᵀ（列优先），
            # 就算 (dCᵀ·A)ᵀ —— 其转置 (N, K) 是连续的，正好是 W 的布局，累加进 W.grad 时不必再拷贝一次
            db = _launch(dc.t(), a).t() if b.stride(0) == 1 and b.stride(1) != 1 else _launch(a.t(), dc)
        if ctx.has_bias and ctx.needs_input_grad[2]:
            dbias = dc.sum(0)
        return da, db, dbias


def matmul(a: Tensor, b: Tensor) -> Tensor:
    """Triton 分块矩阵乘：a (M, K) 或批量 (..., M, K)（前面的维度摊平成行），b (K, N) → (..., N)。

    fp32/fp16/bf16，两边同 dtype，fp32 累加、输出为输入的 dtype；任意步长（转置视图不拷贝）；可求导。
    位于 KERNEL_DEVICE（有 GPU 时为 cuda，解释器下为 cpu）。
    """
    _check_operands(a, b, None)  # 在进 autograd 之前检查：错误信息不被 autograd 的栈淹没
    lead = a.shape[:-1]
    # 批量输入摊平成 (B·M, K)：能成视图就不拷贝（连续张量总能），autograd 负责把梯度 reshape 回去
    out = MatmulFunction.apply(a.reshape(math.prod(lead), a.shape[-1]), b, None)
    return out.reshape(*lead, b.shape[1])


def triton_linear(x: Tensor, weight: Tensor, bias: Tensor | None = None) -> Tensor:
    """与 F.linear 相同：x (..., in) · weightᵀ + bias，weight (out, in)、bias (out,)。可求导（x、weight、bias）。

    weightᵀ 只是交换步长的视图，内核直接读，不拷贝；偏置在内核尾声里加。
    """
    check_tensor("weight", weight, contiguous=False)
    if weight.dim() != 2:
        raise ValueError(f"weight 应是二维 (out_features, in_features)，收到 {tuple(weight.shape)}")
    _check_operands(x, weight.t(), bias, a_name="x", b_name="weight.t()")
    out = MatmulFunction.apply(x.reshape(math.prod(x.shape[:-1]), x.shape[-1]), weight.t(), bias)
    return out.reshape(*x.shape[:-1], weight.shape[0])


# ---------------------------------------------------------------------------------------------------
# 6. GPU 基准：TFLOP/s 对比 cuBLAS（torch.matmul）
# ---------------------------------------------------------------------------------------------------


def benchmark_matmul(sizes: list[tuple[int, int, int]], dtype: torch.dtype = torch.bfloat16) -> list[dict]:
    """在 GPU 上测 (M, N, K) 各尺寸的 TFLOP/s（2·M·N·K / 时间）：本文件的内核 vs torch.matmul（cuBLAS）。

    每行一个 dict：size、dtype、ours_ms、ref_ms、ours_tflops、ref_tflops、ratio（ours / cuBLAS，目标 ≥ 0.8）、
    config（autotune 选中的配置）。只能在有 GPU 时调用。
    """
    if INTERPRET or not torch.cuda.is_available():
        raise RuntimeError("benchmark_matmul 需要 CUDA GPU：解释器模式下的耗时没有意义")
    rows = []
    for m, n, k in sizes:
        a = torch.randn(m, k, device="cuda", dtype=dtype)
        b = torch.randn(k, n, device="cuda", dtype=dtype)
        matmul(a, b)  # 第一次调用触发 autotune（逐个配置编译、计时），不计入测量
        timings = [triton.testing.do_bench(lambda fn=fn: fn(a, b), warmup=25, rep=100) for fn in (matmul, torch.matmul)]
        flops = 2.0 * m * n * k
        ours_tf, ref_tf = (flops / (ms * 1e-3) / 1e12 for ms in timings)
        rows.append({"size": (m, n, k), "dtype": str(dtype), "ours_ms": timings[0], "ref_ms": timings[1],
                     "ours_tflops": ours_tf, "ref_tflops": ref_tf, "ratio": ours_tf / ref_tf,
                     "config": str(_matmul_kernel.best_config)})
    return rows


# ---------------------------------------------------------------------------------------------------
# 7. 演示：对照 torch.matmul / F.linear，数一波触及的行条/列条，有 GPU 时测速
# ---------------------------------------------------------------------------------------------------


def _scaled_err(out: Tensor, ref: Tensor) -> float:
    """最大误差 / (1e-5·|ref| + 1e-5·rms(ref))：≤ 1 即在容差内。

    为什么绝对项取 1e-5·rms(ref)：点积的舍入误差正比于被加项的量级（≈ rms(C)），而不是结果本身——
    相互抵消到接近 0 的元素，纯相对误差没有意义；按输出的典型量级给同样的 1e-5 预算。"""
    tol = 1e-5 * ref.abs() + 1e-5 * ref.float().pow(2).mean().sqrt()
    return ((out - ref).abs() / tol).max().item()


def main() -> None:
    setup_seed()
    mode = "Triton 解释器（CPU，只验证正确性）" if INTERPRET else f"GPU：{torch.cuda.get_device_name()}"
    print(f"分块矩阵乘（Triton）vs torch.matmul —— {mode}")
    dev = KERNEL_DEVICE
    worst = 0.0
    # GPU 上 K 不超过 ~1000：fp32 点积的舍入误差 ≈ u·K 随 K 线性增长，而输出的量级 rms(C) = √K 只按 √K 增长，
    # 两种求和顺序之差相对 rms(C) 约 u·√K，K = 4096 时最大元素处已接近 1e-5 的预算
    shapes = [(129, 67, 255), (1, 1, 1)] if (is_smoke() or INTERPRET) else [(129, 67, 255), (1000, 1000, 1000),
                                                                            (333, 2048, 511)]
    for m, n, k in shapes:
        a, b = torch.randn(m, k, device=dev), torch.randn(k, n, device=dev)
        ref = torch.matmul(a, b)
        for name, out in (("A·B", matmul(a, b)), ("列优先布局", matmul(a.t().contiguous().t(), b.t().contiguous().t()))):
            s = _scaled_err(out, ref)
            worst = max(worst, s)
            print(f"  {m}×{n}×{k:<5} fp32 {name:<14} max|Δ| {(out - ref).abs().max().item():.1e}（容差的 {s:.2f} 倍）")

    # 线性层：输出与三个梯度对照 F.linear
    x = torch.randn(2, 5, 67, device=dev, requires_grad=True)
    w = torch.randn(33, 67, device=dev, requires_grad=True)
    bias = torch.randn(33, device=dev, requires_grad=True)
    g = torch.randn(2, 5, 33, device=dev)
    ours = [triton_linear(x, w, bias), *torch.autograd.grad(triton_linear(x, w, bias), (x, w, bias), g)]
    ref = [F.linear(x, w, bias), *torch.autograd.grad(F.linear(x, w, bias), (x, w, bias), g)]
    errs = [(o - r).abs().max().item() for o, r in zip(ours, ref)]
    print(f"  triton_linear vs F.linear（x (2, 5, 67)、W (33, 67)）max|Δ| y {errs[0]:.1e}  dx {errs[1]:.1e}  "
          f"dW {errs[2]:.1e}  db {errs[3]:.1e}")
    worst = max(worst, errs[0] / 1e-5, *(e / 1e-4 for e in errs[1:]))
    if worst > 1.0:
        raise SystemExit("矩阵乘与 PyTorch 参考不一致（超过 1e-5 / 1e-4 的容差）")
    print("全部在容差内（fp32：输出 1e-5，梯度 1e-4）。")

    print("一波 program（W = 132，H200 的 SM 数）触及的 A 行条 + B 列条（块 128×128，按内核的真实顺序数）：")
    for size in (4096, 16384):
        tiles = size // 128
        counts = {g_m: panels_per_wave(tiles, tiles, g_m, 132) for g_m in (1, 8, 12)}
        cells = "   ".join(f"GROUP_M={g_m:<2} {a_p:>3} + {b_p:>3} = {a_p + b_p:>3}" for g_m, (a_p, b_p) in counts.items())
        print(f"  {size}³（{tiles}×{tiles} 个块）：{cells}")
    print("  → G ≈ √W ≈ 11.5 时最少；行优先（GROUP_M=1）触及的列条数随 N 线性增长，分组后与 N 无关。")

    if INTERPRET:
        print("解释器逐个 program 用 numpy 模拟，速度没有意义；在 GPU 上运行本文件会打印 TFLOP/s 对比 cuBLAS。")
        return
    print("TFLOP/s（bf16）：ours vs torch.matmul（cuBLAS），目标 4096³ 时 ≥ 0.8×")
    sizes = [(1024, 1024, 1024)] if is_smoke() else [(1024, 1024, 1024), (4096, 4096, 4096), (8192, 8192, 8192),
                                                     (16384, 4096, 4096)]
    for row in benchmark_matmul(sizes, torch.bfloat16):
        print(f"  {row['size']}  ours {row['ours_tflops']:6.1f}  cuBLAS {row['ref_tflops']:6.1f}  "
              f"ratio {row['ratio']:.2f}  [{row['config']}]")


if __name__ == "__main__":
    lesson_args(__doc__)
    main()
