"""RMSNorm 的 Triton 前向与反向：一行读一次写一次；dw 跨 program 的归约用"每个 program 一份部分和 + 第二次归约"。

语义（与 model_lab/02_architectures/llama.py 的 RMSNorm 模块逐项相同）
--------------------------------------------------------------------
    r   = rsqrt(mean(x.float()²) + eps)          # 每行一个数，fp32
    x̂   = (x.float() · r).to(x.dtype)            # 先在 fp32 里归一化，再转回 x 的 dtype（HF 的顺序）
    y   = weight · x̂                              # 输出 dtype = torch.result_type(weight, x)
bf16 的 x 配 fp32 的 weight 时 y 是 fp32——和模块一样，不是想当然的 bf16。内核里一律在 fp32 里算，
只在 x̂ 处按 x 的 dtype 舍入一次（与模块相同的那次舍入），最后按输出 dtype 存。

反向推导（D = 行长，g = ∂L/∂y，一行内）
------------------------------------
x̂_i = x_i·r，r = (Σ_k x_k² / D + eps)^(−1/2)，∂r/∂x_j = −r³·x_j / D。令 ĝ_i = g_i·w_i（对 x̂ 的梯度）：
    ∂L/∂x_j = Σ_i ĝ_i·∂x̂_i/∂x_j = r·ĝ_j + Σ_i ĝ_i x_i·(−r³ x_j / D)
            = r · (ĝ_j − x̂_j · mean_i(ĝ_i · x̂_i))
    ∂L/∂w_j = Σ_{所有行} g_j · x̂_j                          # 跨行的归约
（.to(dtype) 在 autograd 里的梯度就是把梯度转回原 dtype，所以公式里把 x̂ 当成未舍入的值；w 的梯度乘的是
前向真正用过的、舍入后的 x̂，与 PyTorch 的 autograd 相同。）
反向只需要 x 和每行的 r（M 个 fp32）：x̂ 在反向里重算（一次乘法），不存 M×D 的 x̂ 或 y——省下的显存正是
融合内核相对逐算子 autograd 的另一半好处（PyTorch 的逐算子图要为 pow、mean、rsqrt、mul 各存中间结果）。

dw 的归约为什么分两步
--------------------
dx 每行独立，一个 program 处理若干行即可；dw_j 却要对全部 M 行求和，而行分散在各个 program 里。三种做法：
1. 每行写一份 g·x̂（M×D 的缓冲区）再求和：多读写 2·M·D 个数，等于把反向的访存翻倍；
2. 所有 program 对同一个 dw 做 tl.atomic_add：D 个地址上成千上万次原子加，互相排队，而且浮点加法顺序
   每次不同 → 结果不确定（不可复现）；
3. （本文件）启动 P 个 program（GPU 上约 4×SM 数，远小于 M），每个 program 按步长 P 处理多行，把自己那些行的
   g·x̂ 累加在寄存器里，最后只写一行部分和 → 得到 (P, D) 的 fp32 缓冲；再启动第二个小内核把 P 行加起来。
   额外访存只有 2·P·D 个 fp32（H100 上 P = 132 个 SM × 4 = 528；M = 16k 行时只占反向访存的百分之几），
   加法顺序固定 → 结果确定。
这就是 Triton 教程 layer-norm 与 Liger-Kernel 的 RMSNorm 的思路（Apex 的 CUDA 实现也是两段式归约）。

访存（M 行、D 列、元素 b 字节）：前向读 x 写 y = 2·M·D·b（+ 4M 的 r）；反向读 x、g 写 dx = 3·M·D·b。
算术强度每元素几个 FLOP，和 softmax 一样是访存受限的，衡量指标是 GB/s。

运行：python inference_engine/kernels/rmsnorm.py（没有 GPU 时走 Triton 解释器，只验证正确性）。
"""

from __future__ import annotations

import torch
from torch import Tensor

# 必须在定义任何 @triton.jit 之前导入：runtime 在没有 GPU 时打开 TRITON_INTERPRET
from inference_engine.kernels.runtime import FALLBACK_HINT, INTERPRET, KERNEL_DEVICE, check_tensor, tl, triton
from utils.io import is_smoke
from utils.lesson_cli import lesson_args, timing_note
from utils.torch_playground import benchmark_interleaved, setup_seed

__all__ = ["RMSNormFunction", "rms_norm", "rms_norm_bwd_kernel", "rms_norm_fwd_kernel", "dw_reduce_kernel"]

TILE_ELEMENTS = 4096  # 一个 program 一次处理的元素数目标（ROWS·BLOCK）：D 小时一次处理多行


@triton.jit
def rms_norm_fwd_kernel(x_ptr, w_ptr, y_ptr, rstd_ptr, n_rows, n_cols, eps,
                        ROWS: tl.constexpr, BLOCK: tl.constexpr):
    """一个 program 处理 ROWS 行（每行整行 BLOCK ≥ D 在寄存器里），写出 y 与每行的 r。"""
    pid = tl.program_id(0)
    rows = pid * ROWS + tl.arange(0, ROWS)  # (ROWS,)
    cols = tl.arange(0, BLOCK)  # (BLOCK,)
    row_mask = rows < n_rows
    col_mask = cols < n_cols
    # 越界的行读最后一行（算了也不写），免得对全零行算 rsqrt(eps) 在 eps = 0 时出现 inf
    in_rows = tl.minimum(rows, n_rows - 1).to(tl.int64)  # int64：M·D 可能超过 2^31
    x = tl.load(x_ptr + in_rows[:, None] * n_cols + cols[None, :], mask=col_mask[None, :], other=0.0)
    xf = x.to(tl.float32)
    rstd = tl.rsqrt(tl.sum(xf * xf, axis=1) / n_cols + eps)  # (ROWS,)：越界列是 0，不影响平方和；除以真实的 D
    x_hat = (xf * rstd[:, None]).to(x.dtype).to(tl.float32)  # 与模块相同：在 x 的 dtype 里舍入一次
    w = tl.load(w_ptr + cols, mask=col_mask, other=0.0).to(tl.float32)
    y = w[None, :] * x_hat
    out_offs = rows[:, None].to(tl.int64) * n_cols + cols[None, :]
    tl.store(y_ptr + out_offs, y.to(y_ptr.dtype.element_ty), mask=row_mask[:, None] & col_mask[None, :])
    tl.store(rstd_ptr + rows, rstd, mask=row_mask)


@triton.jit
def rms_norm_bwd_kernel(dy_ptr, x_ptr, w_ptr, rstd_ptr, dx_ptr, dw_partial_ptr, n_rows, n_cols,
                        ROWS: tl.constexpr, BLOCK: tl.constexpr):
    """P 个 program，第 pid 个处理行块 pid, pid + P, pid + 2P, …：写 dx，并把本 program 的 Σ g·x̂ 写进部分和第 pid 行。"""
    pid = tl.program_id(0)
    n_progs = tl.num_programs(0)
    cols = tl.arange(0, BLOCK)
    col_mask = cols < n_cols
    w = tl.load(w_ptr + cols, mask=col_mask, other=0.0).to(tl.float32)  # 每个 program 只读一次权重
    dw_acc = tl.zeros((BLOCK,), dtype=tl.float32)  # 本 program 负责的所有行的 Σ g·x̂，一直留在寄存器里
    for start in range(pid * ROWS, n_rows, n_progs * ROWS):
        rows = start + tl.arange(0, ROWS)
        row_mask = rows < n_rows
        mask = row_mask[:, None] & col_mask[None, :]
        offs = rows[:, None].to(tl.int64) * n_cols + cols[None, :]
        x = tl.load(x_ptr + offs, mask=mask, other=0.0)
        dy = tl.load(dy_ptr + offs, mask=mask, other=0.0).to(tl.float32)
        rstd = tl.load(rstd_ptr + rows, mask=row_mask, other=0.0)  # 越界行 r = 0 → 它们对 dw 的贡献为 0
        x_hat = x.to(tl.float32) * rstd[:, None]  # 重算 x̂（不存它）
        dw_acc += tl.sum(dy * x_hat.to(x.dtype).to(tl.float32), axis=0)  # 前向乘 w 的是舍入后的 x̂
        g_hat = dy * w[None, :]  # ∂L/∂x̂
        c = tl.sum(g_hat * x_hat, axis=1) / n_cols  # (ROWS,)：mean(ĝ·x̂)
        dx = rstd[:, None] * (g_hat - x_hat * c[:, None])  # r·(ĝ − x̂·mean(ĝ·x̂))
        tl.store(dx_ptr + offs, dx.to(dx_ptr.dtype.element_ty), mask=mask)
    tl.store(dw_partial_ptr + pid * n_cols + cols, dw_acc, mask=col_mask)


@triton.jit
def dw_reduce_kernel(partial_ptr, dw_ptr, n_partials, n_cols, BLOCK_P: tl.constexpr, BLOCK_N: tl.constexpr):
    """第二次归约：(P, D) 的部分和按列求和 → dw (D,)。每个 program 负责 BLOCK_N 列，顺序扫 P 行（顺序固定 → 确定性）。"""
    pid = tl.program_id(0)
    cols = pid * BLOCK_N + tl.arange(0, BLOCK_N)
    col_mask = cols < n_cols
    acc = tl.zeros((BLOCK_N,), dtype=tl.float32)
    for start in range(0, n_partials, BLOCK_P):
        p = start + tl.arange(0, BLOCK_P)
        mask = (p[:, None] < n_partials) & col_mask[None, :]
        acc += tl.sum(tl.load(partial_ptr + p[:, None] * n_cols + cols[None, :], mask=mask, other=0.0), axis=0)
    tl.store(dw_ptr + cols, acc.to(dw_ptr.dtype.element_ty), mask=col_mask)


def _launch_params(n_rows: int, n_cols: int) -> tuple[int, int, int]:
    """(BLOCK, ROWS, num_warps)：BLOCK 是一整行向上取 2 的幂；D 小时一个 program 处理多行。"""
    block = triton.next_power_of_2(n_cols)
    rows = max(1, min(TILE_ELEMENTS // block, triton.next_power_of_2(n_rows)))
    elements = rows * block
    return block, rows, 4 if elements <= 2048 else 8 if elements <= 8192 else 16


def _check_inputs(x: Tensor, weight: Tensor, eps: float) -> None:
    check_tensor("x", x)
    check_tensor("weight", weight, ndim=1)
    if x.dim() == 0:
        raise ValueError("x 是标量（0 维）：RMSNorm 沿最后一维归一化，x 的形状应为 (..., D)")
    if x.shape[-1] != weight.numel():
        raise ValueError(f"x 的最后一维 D={x.shape[-1]} 与 weight 的长度 {weight.numel()} 不同：weight 应为 (D,)")
    max_cols = 65536 // x.element_size()  # 一行要整行放进一个 program 的寄存器（64 KB）
    if x.shape[-1] > max_cols:
        raise ValueError(f"D={x.shape[-1]} 超过内核支持的最大行长 {max_cols}（{x.dtype}）：整行要放进一个 program。{FALLBACK_HINT}")
    if not (isinstance(eps, (int, float)) and 0 <= eps < float("inf")):
        raise ValueError(f"eps={eps!r} 必须是有限的非负实数")


def _rms_norm_fwd(x: Tensor, weight: Tensor, eps: float) -> tuple[Tensor, Tensor]:
    n_cols = x.shape[-1]
    n_rows = x.numel() // n_cols if n_cols else 0
    y = torch.empty(x.shape, dtype=torch.result_type(weight, x), device=x.device)
    rstd = torch.empty(n_rows, dtype=torch.float32, device=x.device)
    if x.numel() == 0:
        return y, rstd
    block, rows, num_warps = _launch_params(n_rows, n_cols)
    rms_norm_fwd_kernel[(triton.cdiv(n_rows, rows),)](x, weight, y, rstd, n_rows, n_cols, float(eps),
                                                      ROWS=rows, BLOCK=block, num_warps=num_warps)
    return y, rstd


def _num_bwd_programs(n_row_blocks: int, device: torch.device) -> int:
    """反向的 program 数 P：GPU 上每个 SM 约 4 个（足以隐藏访存延迟），解释器下 4 个（少 = 快）；不超过行块数。"""
    per_device = 4 if INTERPRET else 4 * torch.cuda.get_device_properties(device).multi_processor_count
    return max(1, min(per_device, n_row_blocks))


def _rms_norm_bwd(dy: Tensor, x: Tensor, weight: Tensor, rstd: Tensor) -> tuple[Tensor, Tensor]:
    n_cols = x.shape[-1]
    n_rows = rstd.numel()
    dx = torch.empty_like(x)
    if x.numel() == 0:
        return dx, torch.zeros_like(weight)
    block, rows, num_warps = _launch_params(n_rows, n_cols)
    n_progs = _num_bwd_programs(triton.cdiv(n_rows, rows), x.device)
    dw_partial = torch.empty(n_progs, n_cols, dtype=torch.float32, device=x.device)  # (P, D) 部分和
    rms_norm_bwd_kernel[(n_progs,)](dy, x, weight, rstd, dx, dw_partial, n_rows, n_cols,
                                    ROWS=rows, BLOCK=block, num_warps=num_warps)
    dw = torch.empty_like(weight)
    block_n = min(triton.next_power_of_2(n_cols), 256)
    block_p = min(triton.next_power_of_2(n_progs), 32)
    dw_reduce_kernel[(triton.cdiv(n_cols, block_n),)](dw_partial, dw, n_progs, n_cols, BLOCK_P=block_p, BLOCK_N=block_n)
    return dx, dw


class RMSNormFunction(torch.autograd.Function):
    """autograd 包装：前向存 x 与每行的 r（以及参数 weight），反向一次算出 dx 与 dw。"""

    @staticmethod
    def forward(ctx, x: Tensor, weight: Tensor, eps: float) -> Tensor:
        y, rstd = _rms_norm_fwd(x, weight, eps)
        ctx.save_for_backward(x, weight, rstd)
        return y

    @staticmethod
    def backward(ctx, dy: Tensor) -> tuple[Tensor, Tensor, None]:
        x, weight, rstd = ctx.saved_tensors
        # 上游梯度的布局由 autograd 决定（可能是 expand 出来的步长 0 视图）：内核按连续寻址，拷贝不可避免
        dx, dw = _rms_norm_bwd(dy.contiguous(), x, weight, rstd)
        return dx, dw, None


def rms_norm(x: Tensor, weight: Tensor, eps: float = 1e-6) -> Tensor:
    """y = weight · (x.float() · rsqrt(mean(x.float()²) + eps)).to(x.dtype)，x 形状 (..., D) 且连续，weight (D,)。

    输出 dtype = torch.result_type(weight, x)；可求导（对 x 和 weight）。与 llama.py 的 RMSNorm 模块语义相同。
    """
    _check_inputs(x, weight, eps)
    return RMSNormFunction.apply(x, weight, eps)


def _reference(x: Tensor, weight: Tensor, eps: float) -> Tensor:
    """几行 PyTorch 的参考实现（与模型的 RMSNorm 模块同一公式；内核文件不 import model_lab）。"""
    xf = x.float()
    return weight * (xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps)).to(x.dtype)


def main() -> None:
    setup_seed()
    mode = "Triton 解释器（CPU，只验证正确性）" if INTERPRET else f"GPU：{torch.cuda.get_device_name()}"
    print(f"RMSNorm 前向 + 反向 —— {mode}")
    small = is_smoke() or INTERPRET
    shapes = [(4, 7, 96), (37, 100)] if small else [(8, 512, 1024), (4096, 4000), (16, 64, 8192)]
    eps = 1e-6
    for shape in shapes:
        x = torch.randn(shape, device=KERNEL_DEVICE, requires_grad=True)
        w = (1 + 0.1 * torch.randn(shape[-1], device=KERNEL_DEVICE)).requires_grad_()
        g = torch.randn(shape, device=KERNEL_DEVICE)
        y = rms_norm(x, w, eps)
        dx, dw = torch.autograd.grad(y, (x, w), g)
        y_ref = _reference(x, w, eps)
        dx_ref, dw_ref = torch.autograd.grad(y_ref, (x, w), g)
        errs = [(a - b).abs().max().item() for a, b in ((y, y_ref), (dx, dx_ref), (dw, dw_ref))]
        # dw 是 M 行的和，绝对误差随 M 增长：按 |dw| 的量级看相对误差
        errs[2] /= max(1.0, dw_ref.abs().max().item())
        print(f"  {shape!s:>16}  fp32  max err  y {errs[0]:.1e}  dx {errs[1]:.1e}  dw(相对) {errs[2]:.1e}"
              "（容差 1e-5 / 1e-4 / 1e-4）")
        if not (errs[0] <= 1e-5 and errs[1] <= 1e-4 and errs[2] <= 1e-4):
            raise SystemExit(f"RMSNorm 与参考实现不一致：{shape}")
    x = torch.randn(3, 64, device=KERNEL_DEVICE).bfloat16()
    w = torch.ones(64, device=KERNEL_DEVICE)
    print(f"  bf16 的 x 配 fp32 的 weight → 输出 {rms_norm(x, w).dtype}（与模块相同：result_type(weight, x)）")
    if INTERPRET:
        print("解释器逐个 program 用 numpy 模拟，速度没有意义；在 GPU 上运行本文件会打印 GB/s 对比。")
        return
    print("有效带宽（前向 2·M·D·b 字节，前向 + 反向 5·M·D·b 字节；bf16）：")
    for m_rows, d in [(16_384, 1024), (8192, 4096), (2048, 8192)]:
        x = torch.randn(m_rows, d, device=KERNEL_DEVICE, dtype=torch.bfloat16, requires_grad=True)
        w = torch.ones(d, device=KERNEL_DEVICE, dtype=torch.bfloat16, requires_grad=True)
        g = torch.randn_like(x)
        with torch.no_grad():
            fwd = benchmark_interleaved([lambda: rms_norm(x, w), lambda: _reference(x, w, 1e-6)], warmup=5, reps=20)
        both = benchmark_interleaved([lambda: torch.autograd.grad(rms_norm(x, w), (x, w), g),
                                      lambda: torch.autograd.grad(_reference(x, w, 1e-6), (x, w), g)],
                                     warmup=5, reps=20)
        nbytes = m_rows * d * x.element_size()
        print(f"  {m_rows:>6}×{d:<5}  前向 Triton {2 * nbytes / fwd[0] / 1e6:7.1f} / torch {2 * nbytes / fwd[1] / 1e6:7.1f} GB/s"
              f"   前向+反向 Triton {5 * nbytes / both[0] / 1e6:7.1f} / torch {5 * nbytes / both[1] / 1e6:7.1f} GB/s")
        print(timing_note("benchmarks/kernels_gpu.py"))


if __name__ == "__main__":
    lesson_args(__doc__)
    main()
