"""第二课：融合的按行 softmax —— 一行读一次、写一次；行太长放不进一个块时，用 online softmax 分块扫。

为什么要"融合"：数一数逐算子的 PyTorch 搬了多少数据
------------------------------------------------
softmax(x)_i = exp(x_i − m) / Σ_j exp(x_j − m)，m = max_j x_j（减去行最大值：exp 的参数 ≤ 0，不会上溢；
结果不变，因为分子分母同乘了 exp(−m)）。对 M×N 的矩阵逐算子地写：

    m   = x.max(dim=1)          读 MN，写 M
    z   = x − m[:, None]        读 MN + M，写 MN
    num = z.exp()               读 MN，写 MN
    den = num.sum(dim=1)        读 MN，写 M
    out = num / den[:, None]    读 MN + M，写 MN
                                合计 ≈ 读 5MN、写 3MN = 8MN 个元素

每个算子都是一个独立的 GPU kernel，中间结果 z、num 都要写回 HBM 再读出来。而 softmax 的算术强度极低
（每个元素几次加减乘和一次 exp），和向量加法一样是访存受限的：时间 ∝ 搬的字节数。融合成一个内核后，
一个 program 把一整行读进寄存器（SRAM），在片上求 max、exp、sum、除法，只写出结果：读 MN + 写 MN = 2MN，
理论上比逐算子快 8MN / 2MN = 4 倍。fp32、M = 4096、N = 4096 时：逐算子搬 8·4·16.8M ≈ 537 MB，融合版 134 MB，
H100（≈ 3.35 TB/s）上分别约 160 µs 与 40 µs。（torch.softmax 本身已经是一个融合内核，所以我们的目标是追平它、
并远快于上面 5 个算子的写法——main() 在 GPU 上三者都测。）

一行放不进一个块：online softmax
------------------------------
单遍融合要求整行同时在寄存器里（BLOCK = 行长向上取 2 的幂）。行很长（词表 128k 的 logits）时寄存器放不下，
就把行切成长 BLOCK 的块顺序扫描，维护"到目前为止"的最大值 m 与以 m 为基准的分母 d：

    m_new = max(m, max(x_blk))
    d     = d · exp(m − m_new) + Σ exp(x_blk − m_new)      # 旧的和换到新基准上：乘 exp(m − m_new)
    m     = m_new

扫完一遍得到整行的 m 与 d，第二遍再读一次 x，写出 exp(x − m) / d。访存是读 2MN + 写 MN（第二遍常常命中 L2），
仍远少于逐算子的 8MN。同一个递推就是 FlashAttention 的核心（那里每块还要顺带更新输出的加权和）。

-inf 的处理：注意力里被掩掉的分数是 -inf。若一行到目前为止全是 -inf，m = -inf，x − m = -inf − (-inf) = NaN。
所以做减法前把 -inf 的基准换成 0（exp(-inf − 0) = 0，贡献为 0）；整行都是 -inf 时 d = 0，结果 0/0 = NaN，
与 torch.softmax 相同——不悄悄给出一个"看起来对"的数。

运行：python inference_engine/kernels/softmax.py（没有 GPU 时走 Triton 解释器，只验证正确性）。只做前向。
"""

from __future__ import annotations

import torch
from torch import Tensor

# 必须在定义任何 @triton.jit 之前导入：runtime 在没有 GPU 时打开 TRITON_INTERPRET
from inference_engine.kernels.runtime import INTERPRET, KERNEL_DEVICE, check_tensor, tl, triton
from utils.io import is_smoke
from utils.lesson_cli import lesson_args, timing_note
from utils.torch_playground import benchmark_interleaved, setup_seed

__all__ = ["MAX_FUSED_BLOCK", "softmax", "softmax_fused_kernel", "softmax_online_kernel"]

# 单遍融合允许的最大块长（元素）：8192 个 fp32 = 32 KB，分给 16 个 warp（512 线程）每线程 16 个寄存器，刚好；
# 行再长就走 online 的分块循环，每块长 MAX_FUSED_BLOCK
MAX_FUSED_BLOCK = 8192
# 一个 program 处理的元素数目标（ROWS·BLOCK）：行短时一个 program 处理多行，免得启动成千上万个只干一点活的 program
TILE_ELEMENTS = 4096


@triton.jit
def softmax_fused_kernel(x_ptr, out_ptr, n_rows, n_cols, ROWS: tl.constexpr, BLOCK: tl.constexpr):
    """一个 program 处理 ROWS 行，每行整行（BLOCK ≥ n_cols）在寄存器里：读一次、写一次。"""
    pid = tl.program_id(0)
    rows = pid * ROWS + tl.arange(0, ROWS)  # (ROWS,)
    cols = tl.arange(0, BLOCK)  # (BLOCK,)
    col_mask = cols[None, :] < n_cols  # (1, BLOCK)
    # 最后一个 program 的行可能越界：读的时候把行号夹到最后一行（重复算一遍有效行，不产生 0/0），写的时候再屏蔽
    in_rows = tl.minimum(rows, n_rows - 1)
    # 行偏移用 int64：M·N 超过 2^31 个元素时 int32 会溢出，读到别处的内存
    offs_in = in_rows[:, None].to(tl.int64) * n_cols + cols[None, :]
    offs = rows[:, None].to(tl.int64) * n_cols + cols[None, :]
    # 越界的列填 -inf：对 max 没有影响，exp(-inf) = 0 对 sum 也没有影响
    x = tl.load(x_ptr + offs_in, mask=col_mask, other=float("-inf")).to(tl.float32)
    m = tl.max(x, axis=1)  # (ROWS,) 行最大值
    m = tl.where(m == float("-inf"), 0.0, m)  # 整行 -inf：基准换成 0，避免 -inf − (-inf) = NaN
    num = tl.exp(x - m[:, None])  # ≤ 1，不会上溢
    den = tl.sum(num, axis=1)  # (ROWS,)
    out = num / den[:, None]
    tl.store(out_ptr + offs, out.to(out_ptr.dtype.element_ty), mask=(rows[:, None] < n_rows) & col_mask)


@triton.jit
def softmax_online_kernel(x_ptr, out_ptr, n_cols, BLOCK: tl.constexpr):
    """一个 program 处理一整行，行长任意：第一遍 online 地求 (m, d)，第二遍写出 exp(x − m) / d。"""
    row = tl.program_id(0).to(tl.int64)
    x_row = x_ptr + row * n_cols
    out_row = out_ptr + row * n_cols
    m = float("-inf")  # 到目前为止的最大值
    d = 0.0  # 到目前为止的 Σ exp(x − m)
    for start in range(0, n_cols, BLOCK):
        cols = start + tl.arange(0, BLOCK)
        x = tl.load(x_row + cols, mask=cols < n_cols, other=float("-inf")).to(tl.float32)
        m_new = tl.maximum(m, tl.max(x, axis=0))
        m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)  # 到目前为止全是 -inf 时基准取 0
        d = d * tl.exp(m - m_safe) + tl.sum(tl.exp(x - m_safe), axis=0)  # 旧和换基准 + 本块的贡献
        m = m_new
    m = tl.where(m == float("-inf"), 0.0, m)
    for start in range(0, n_cols, BLOCK):
        cols = start + tl.arange(0, BLOCK)
        mask = cols < n_cols
        x = tl.load(x_row + cols, mask=mask, other=float("-inf")).to(tl.float32)
        out = tl.exp(x - m) / d
        tl.store(out_row + cols, out.to(out_ptr.dtype.element_ty), mask=mask)


def _num_warps(elements: int) -> int:
    """一个 program 要处理的元素越多，给它越多 warp（每线程的寄存器数保持在几十个以内）。"""
    return 4 if elements <= 2048 else 8 if elements <= 8192 else 16


def softmax(x: Tensor, *, max_block: int = MAX_FUSED_BLOCK) -> Tensor:
    """沿最后一维的 softmax，输出与 x 同形状同 dtype（在 fp32 里算）。x 须连续；N 维输入按行展平成 (M, N)。

    行长 ≤ max_block 时走单遍融合内核，否则走 online 分块内核（块长 max_block）。max_block 必须是 2 的幂；
    测试里把它调小，就能在小矩阵上检验 online 路径。
    """
    check_tensor("x", x)
    if x.dim() == 0:
        raise ValueError("x 是标量（0 维）：softmax 需要至少一维，沿最后一维归一化")
    if max_block < 1 or max_block & (max_block - 1):
        raise ValueError(f"max_block={max_block} 必须是正的 2 的幂（tl.arange 的长度要求）")
    out = torch.empty_like(x)
    n_cols = x.shape[-1]
    if x.numel() == 0:
        return out
    n_rows = x.numel() // n_cols
    block = triton.next_power_of_2(n_cols)
    if block <= max_block:
        rows = max(1, min(TILE_ELEMENTS // block, triton.next_power_of_2(n_rows)))
        grid = (triton.cdiv(n_rows, rows),)
        softmax_fused_kernel[grid](x, out, n_rows, n_cols, ROWS=rows, BLOCK=block,
                                   num_warps=_num_warps(rows * block))
    else:
        softmax_online_kernel[(n_rows,)](x, out, n_cols, BLOCK=max_block, num_warps=_num_warps(max_block))
    return out


def naive_softmax(x: Tensor) -> Tensor:
    """逐算子的写法（docstring 里数过：读 5MN、写 3MN），只用于 GPU 上的带宽对比。"""
    m = x.max(dim=-1, keepdim=True).values
    num = (x - m).exp()
    return num / num.sum(dim=-1, keepdim=True)


def main() -> None:
    setup_seed()
    mode = "Triton 解释器（CPU，只验证正确性）" if INTERPRET else f"GPU：{torch.cuda.get_device_name()}"
    print(f"融合 softmax —— {mode}（容差 1e-6：概率 ≤ 1，fp32 在 [0.5, 1) 上的 ulp 是 2^-24 ≈ 6e-8，"
          "exp 与除法的舍入只差几个 ulp）")
    small = is_smoke() or INTERPRET
    # (形状, max_block)：max_block 小于行长时走 online 路径
    cases = [((5, 100), MAX_FUSED_BLOCK), ((3, 4, 33), MAX_FUSED_BLOCK), ((4, 300), 64)] if small else \
        [((1823, 781), MAX_FUSED_BLOCK), ((64, 32_000), MAX_FUSED_BLOCK), ((16, 131_072), MAX_FUSED_BLOCK)]
    for shape, max_block in cases:
        x = torch.randn(shape, device=KERNEL_DEVICE) * 5
        x[..., ::7] = float("-inf")  # 像注意力里被掩掉的分数
        err = (softmax(x, max_block=max_block) - torch.softmax(x, dim=-1)).abs().max().item()
        path = "融合单遍" if triton.next_power_of_2(shape[-1]) <= max_block else f"online（块长 {max_block}）"
        print(f"  {shape!s:>16}  {path:<16}  fp32 max|ours - torch.softmax| = {err:.1e}（容差 1e-6）")
        if not err <= 1e-6:
            raise SystemExit(f"softmax 与 torch 不一致：{shape}")
    if INTERPRET:
        print("解释器逐个 program 用 numpy 模拟，速度没有意义；在 GPU 上运行本文件会打印 GB/s 对比。")
        return
    print("有效带宽（GB/s = 读一次 + 写一次 = 2·4·M·N 字节 / 时间；逐算子版实际搬了约 4 倍于此）：")
    for m_rows, n_cols in [(4096, 1024), (4096, 4096), (1024, 32_000), (128, 131_072)]:
        x = torch.randn(m_rows, n_cols, device=KERNEL_DEVICE)
        times = benchmark_interleaved([lambda: softmax(x), lambda: torch.softmax(x, dim=-1), lambda: naive_softmax(x)],
                                      warmup=5, reps=20)
        gbps = [2 * x.element_size() * x.numel() / (ms * 1e-3) / 1e9 for ms in times]
        print(f"  {m_rows:>5}×{n_cols:<7}  Triton {gbps[0]:7.1f}   torch.softmax {gbps[1]:7.1f}   "
              f"逐算子 {gbps[2]:7.1f} GB/s")
        print(timing_note("benchmarks/kernels_gpu.py"))


if __name__ == "__main__":
    lesson_args(__doc__)
    main()
