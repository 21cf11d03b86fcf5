"""RoPE 的 Triton 前向与反向，布局与 Llama 内部相同：x (B, T, H, D) 相邻两维配对，表 (B 或 1, T, 1, D/2, 2)。

布局（见 model_lab/02_architectures/llama.py 的 rope_table / interleave_halves / apply_rope）
--------------------------------------------------------------------------------------
模型把 q/k 每个头的第 i 与第 i + D/2 维交错成相邻的一对，于是第 j 对 (x_{2j}, x_{2j+1}) 就是复数 x_{2j} + i·x_{2j+1}，
位置 t 上旋转角度 θ_{t,j}：

    (x₀ + i·x₁)·(cos θ + i·sin θ) = (x₀ cos θ − x₁ sin θ) + i·(x₁ cos θ + x₀ sin θ)

表 rope[b, t, 0, j] = (cos θ_{t,j}, sin θ_{t,j})·scaling，fp32，所有头共用（第 3 维是 1）；位置对所有序列相同时
第 0 维是 1，在 batch 上广播。打包批量（varlen）时 x 是 (1, N, H, D)、表是 (1, N, 1, D/2, 2)——同一个内核。
内核在 fp32 里算，输出 x 的 dtype、连续的 (B, T, H, D)。

反向：旋转是正交变换，y = s·R(θ)·x ⇒ ∂L/∂x = s·R(θ)ᵀ·∂L/∂y = s·R(−θ)·∂L/∂y，即把 sin 取负再转一次——
同一个内核，SIGN = −1。而且反向根本不需要 x（变换是线性的），autograd 只需保存那张表，不存任何激活。

步长是一课：为什么内核接受非连续的 x
----------------------------------
模型里 q、k 来自一次融合投影：qkv 是 (B, T, H + 2·H_kv, D) 的连续张量，q/k 是它在头维上切出来的视图，
步长是 ((H + 2H_kv)·T·D, (H + 2H_kv)·D, D, 1)——不是连续的。若内核要求连续，调用方得先 .contiguous() 拷一遍，
凭空多出"读一遍 + 写一遍"，等于把 RoPE 的访存翻倍。所以启动器把 B、T、H 三维的步长作为参数传进内核，
地址 = 基址 + b·s_b + t·s_t + h·s_h + 2j（+1），内核对任何 B/T/H 步长都对。只要求最后一维步长为 1
（一对坐标紧挨着，向量化加载才成立）；不满足就报错，不悄悄拷贝。

访存与并行
----------
一个 program 负责一个 token (b, t)：表的那一行 (D/2 个 cos、sin) 只读一次，在寄存器里复用给全部 H 个头
（头多时按 BLOCK_H 个头一组循环）。读 x、写 y 各 B·T·H·D 个元素，表只有 B·T·D 个 fp32（H 倍地摊薄）：
bf16、H = 40、D = 128 时每 token 读写 2·40·128·2 = 20 KB、表 0.5 KB——和前几课一样访存受限，指标是 GB/s。
x₀ 与 x₁ 用两次步长为 2 的加载取出，它们落在同样的 cache line 上，从 HBM 搬的字节数与一次连续加载相同。

运行：python inference_engine/kernels/rope.py（没有 GPU 时走 Triton 解释器，只验证正确性）。
"""

from __future__ import annotations

import torch
from torch import Tensor

# 必须在定义任何 @triton.jit 之前导入：runtime 在没有 GPU 时打开 TRITON_INTERPRET
from inference_engine.kernels.runtime import FALLBACK_HINT, INTERPRET, KERNEL_DEVICE, check_tensor, tl, triton
from utils.io import is_smoke
from utils.lesson_cli import lesson_args, timing_note
from utils.torch_playground import benchmark_interleaved, setup_seed

__all__ = ["RoPEFunction", "apply_rope", "rope_kernel"]

TILE_ELEMENTS = 4096  # 一次循环处理的 (头, 对) 数目标 BLOCK_H·BLOCK_P：头多、D 大时分组循环，寄存器用量有界


@triton.jit
def rope_kernel(x_ptr, rope_ptr, out_ptr, T, H, HALF,
                stride_xb, stride_xt, stride_xh, stride_ob, stride_ot, stride_oh, stride_rb, stride_rt,
                SIGN: tl.constexpr, BLOCK_H: tl.constexpr, BLOCK_P: tl.constexpr):
    """一个 program 处理一个 token (b, t) 的全部 H 个头：y = x·(cos θ + i·SIGN·sin θ)，SIGN = −1 就是反向。"""
    pid = tl.program_id(0).to(tl.int64)  # 步长相乘可能超过 2^31：全部用 int64 算地址
    b = pid // T
    t = pid % T
    pairs = tl.arange(0, BLOCK_P)  # 第 j 对
    p_mask = pairs < HALF
    # 表的这一行读一次，给所有头复用；表的 batch 步长为 0 时（第 0 维是 1）所有序列读同一行
    r_row = rope_ptr + b * stride_rb + t * stride_rt + 2 * pairs
    cos = tl.load(r_row, mask=p_mask, other=0.0)
    sin = tl.load(r_row + 1, mask=p_mask, other=0.0) * SIGN
    x_tok = x_ptr + b * stride_xb + t * stride_xt
    out_tok = out_ptr + b * stride_ob + t * stride_ot
    for h0 in range(0, H, BLOCK_H):
        heads = (h0 + tl.arange(0, BLOCK_H)).to(tl.int64)  # h·s_h 也可能很大（转置布局里 s_h = T·D）
        mask = (heads[:, None] < H) & p_mask[None, :]  # (BLOCK_H, BLOCK_P)
        x_offs = heads[:, None] * stride_xh + 2 * pairs[None, :]  # 每对的实部；虚部在 +1（最后一维步长 1）
        x0 = tl.load(x_tok + x_offs, mask=mask, other=0.0).to(tl.float32)
        x1 = tl.load(x_tok + x_offs + 1, mask=mask, other=0.0).to(tl.float32)
        y0 = x0 * cos[None, :] - x1 * sin[None, :]  # Re[(x₀ + i x₁)(cos + i sin)]
        y1 = x1 * cos[None, :] + x0 * sin[None, :]  # Im[…]
        o_offs = heads[:, None] * stride_oh + 2 * pairs[None, :]
        tl.store(out_tok + o_offs, y0.to(out_ptr.dtype.element_ty), mask=mask)
        tl.store(out_tok + o_offs + 1, y1.to(out_ptr.dtype.element_ty), mask=mask)


def _check_inputs(x: Tensor, rope: Tensor) -> None:
    check_tensor("x", x, ndim=4, contiguous=False)
    b, t, _, d = x.shape
    if x.stride(-1) != 1:
        raise ValueError(f"x 的最后一维步长是 {x.stride(-1)}，内核要求 1（一对坐标紧挨着）：请先 .contiguous()。{FALLBACK_HINT}")
    if d % 2:
        raise ValueError(f"head_dim D={d} 是奇数：RoPE 把相邻两维配成一对，D 必须是偶数")
    check_tensor("rope", rope, ndim=5, dtypes=(torch.float32,), contiguous=False)
    want = f"(B 或 1, T, 1, D/2, 2) = ({b} 或 1, {t}, 1, {d // 2}, 2)"
    if rope.shape[0] not in (1, b) or tuple(rope.shape[1:]) != (t, 1, d // 2, 2):
        raise ValueError(f"rope 的形状 {tuple(rope.shape)} 与 x {tuple(x.shape)} 不匹配：应为 {want}（llama.rope_table 的输出）")
    if rope.stride(-1) != 1 or rope.stride(-2) != 2:
        raise ValueError(f"rope 最后两维的步长 {rope.stride()[-2:]} 应为 (2, 1)（每个 (cos, sin) 紧挨着）：请先 .contiguous()")
    if rope.requires_grad and torch.is_grad_enabled():
        raise ValueError("rope 表 requires_grad=True：内核只对 x 求导（表由位置算出，是常量），请传 rope.detach()")


def _launch(x: Tensor, rope: Tensor, sign: int) -> Tensor:
    b, t, h, d = x.shape
    out = torch.empty((b, t, h, d), dtype=x.dtype, device=x.device)  # 连续的输出
    if out.numel() == 0:
        return out
    half = d // 2
    block_p = triton.next_power_of_2(half)
    block_h = max(1, min(triton.next_power_of_2(h), TILE_ELEMENTS // block_p))
    stride_rb = rope.stride(0) if rope.shape[0] == b and b > 1 else 0  # 第 0 维是 1：在 batch 上广播
    rope_kernel[(b * t,)](x, rope, out, t, h, half,
                          x.stride(0), x.stride(1), x.stride(2), out.stride(0), out.stride(1), out.stride(2),
                          stride_rb, rope.stride(1),
                          SIGN=sign, BLOCK_H=block_h, BLOCK_P=block_p, num_warps=4 if block_h * block_p <= 2048 else 8)
    return out


class RoPEFunction(torch.autograd.Function):
    """autograd 包装：只保存表；反向把上游梯度转 −θ（同一个内核，SIGN = −1）。"""

    @staticmethod
    def forward(ctx, x: Tensor, rope: Tensor) -> Tensor:
        ctx.save_for_backward(rope)
        return _launch(x, rope, 1)

    @staticmethod
    def backward(ctx, dy: Tensor) -> tuple[Tensor, None]:
        (rope,) = ctx.saved_tensors
        if dy.stride(-1) != 1:  # 上游梯度的布局由 autograd 决定；B/T/H 的任意步长内核都接受，只有最后一维需要 1
            dy = dy.contiguous()
        return _launch(dy, rope, -1), None


def apply_rope(x: Tensor, rope: Tensor) -> Tensor:
    """x (B, T, H, D)（相邻配对，B/T/H 步长任意、最后一维步长 1）按表 rope (B 或 1, T, 1, D/2, 2) 旋转。

    与 llama.apply_rope 语义相同；在 fp32 里算，输出 x 的 dtype、连续的 (B, T, H, D)。可对 x 求导。
    """
    _check_inputs(x, rope)
    return RoPEFunction.apply(x, rope)


def _reference(x: Tensor, rope: Tensor) -> Tensor:
    """几行 PyTorch 的参考：把每对看成复数乘 e^{iθ}（内核文件不 import model_lab；模型的 apply_rope 在测试里对照）。"""
    pairs = torch.view_as_complex(x.float().unflatten(-1, (-1, 2)).contiguous())  # (B, T, H, D/2)
    return torch.view_as_real(pairs * torch.view_as_complex(rope)).flatten(-2).to(x.dtype)


def _table(batch: int, t: int, d: int, theta: float = 10_000.0) -> Tensor:
    """(batch, t, 1, d/2, 2) 的 (cos, sin) 表：第 b 个序列从位置 3b 开始（batch > 1 时每个序列的位置不同）。"""
    inv_freq = theta ** (-torch.arange(0, d, 2, dtype=torch.float32) / d)  # (D/2,)
    pos = torch.arange(t, dtype=torch.float32) + 3 * torch.arange(batch, dtype=torch.float32)[:, None]  # (batch, T)
    angles = pos[..., None] * inv_freq  # (batch, T, D/2)
    return torch.stack((angles.cos(), angles.sin()), dim=-1).unsqueeze(2).to(KERNEL_DEVICE)


def main() -> None:
    setup_seed()
    mode = "Triton 解释器（CPU，只验证正确性）" if INTERPRET else f"GPU：{torch.cuda.get_device_name()}"
    print(f"RoPE 前向 + 反向（相邻配对，Llama 内部布局）—— {mode}（与模型同一个乘加顺序：解释器里实测误差为 0）")
    b, t, h, d = (2, 7, 3, 16) if (is_smoke() or INTERPRET) else (4, 512, 40, 128)
    big = torch.randn(b, t, h + 2, d, device=KERNEL_DEVICE)
    cases = [
        ("连续 x，逐序列的表", torch.randn(b, t, h, d, device=KERNEL_DEVICE), _table(b, t, d)),
        ("x 是融合投影的切片（非连续）", big[:, :, 1:h + 1], _table(b, t, d)),
        ("表在 batch 上广播", torch.randn(b, t, h, d, device=KERNEL_DEVICE), _table(1, t, d)),
        ("打包批量 (1, N, H, D)", torch.randn(1, b * t, h, d, device=KERNEL_DEVICE), _table(1, b * t, d)),
    ]
    for name, x, rope in cases:
        x = x.detach().requires_grad_()
        g = torch.randn(x.shape, device=KERNEL_DEVICE)
        y = apply_rope(x, rope)
        (dx,) = torch.autograd.grad(y, x, g)
        y_ref = _reference(x, rope)
        (dx_ref,) = torch.autograd.grad(y_ref, x, g)
        e_fwd, e_bwd = (y - y_ref).abs().max().item(), (dx - dx_ref).abs().max().item()
        print(f"  {name:<22} {tuple(x.shape)!s:>16}  fp32 max err  y {e_fwd:.1e}  dx {e_bwd:.1e}（容差 1e-5 / 1e-4）")
        if not (e_fwd <= 1e-5 and e_bwd <= 1e-4):
            raise SystemExit(f"RoPE 与参考实现不一致：{name}")
    if INTERPRET:
        print("解释器逐个 program 用 numpy 模拟，速度没有意义；在 GPU 上运行本文件会打印 GB/s 对比。")
        return
    print("有效带宽（GB/s = 读 x + 写 y = 2·B·T·H·D·b 字节 / 时间；x 是融合 qkv 里 q、k 的非连续切片，bf16）：")
    for b, t, h, h_kv in [(8, 1024, 32, 8), (1, 8192, 32, 8), (4, 2048, 64, 8)]:
        qkv = torch.randn(b, t, h + 2 * h_kv, d, device=KERNEL_DEVICE, dtype=torch.bfloat16)
        x, rope = qkv[:, :, :h + h_kv], _table(1, t, d)
        times = benchmark_interleaved([lambda: apply_rope(x, rope), lambda: _reference(x, rope)], warmup=5, reps=20)
        nbytes = 2 * x.numel() * x.element_size()
        print(f"  B={b} T={t} H+H_kv={h + h_kv} D={d}  Triton {nbytes / times[0] / 1e6:7.1f}   "
              f"torch（复数乘法）{nbytes / times[1] / 1e6:7.1f} GB/s")
        print(timing_note("benchmarks/kernels_gpu.py"))


if __name__ == "__main__":
    lesson_args(__doc__)
    main()
