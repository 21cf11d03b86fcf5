"""量化矩阵乘在 CPU 上的速度：fp32 F.linear vs bf16 F.linear vs int8（`_weight_int8pack_mm`）vs int4（`_weight_int4pack_mm_for_cpu`）。

场景是解码：M = 1（一次一个 token）与 M = 16（小 batch），权重取 Llama-7B 的形状（out × in）：4096×4096（q/k/v/o_proj）、
11008×4096（gate/up_proj）、4096×11008（down_proj）。fp32 权重 64–172 MiB，远大于 L3（本机 32 MiB），
所以每次调用都要从内存把整个权重读一遍：M 小时 y = x Wᵀ 的算术强度只有 2·M FLOP / 每权重字节数，完全被带宽卡住，
时间 ≈ 权重字节数 / 内存带宽。int8 每权重 1 字节、int4 半字节（+ 每组 128 个权重 4 字节的 bf16 s、z），
理想加速比就是 4× 与 ~7.5×（vs fp32）。目标：int8 ≥ 1.5×、int4 ≥ 2×。

量化内核的激活用 bf16：这两个 CPU 内核只有 bf16 激活走 AVX512 的快路径（inference_engine/quantization/int8.py、
int4.py 的说明）；fp32 激活走通用循环，第二张表单独列出 M = 1 的数字，说明为什么模型要用 bf16 解码才能吃到量化的好处。

**测的是什么**：每个 (形状, M, 线程数) 把几种实现轮流各跑一次、重复 reps 轮取中位数（utils.torch_playground.benchmark_interleaved，
先预热）。1 线程时量进程 CPU 时间（共享机器上墙钟大半是排队）；2 线程时只能量墙钟（CPU 时间会把两个线程加起来），
在被别的进程占满的机器上 2 线程的数字偏慢且抖动大——机器行里记下了测量时的负载。加速比 = fp32 时间 / 该实现时间。
每种量化实现先与"反量化后的权重 + fp32 矩阵乘"对照一次，确认算的是同一个东西。

运行：PYTHONPATH=. .venv/bin/python benchmarks/quantization_matmul.py   （SMOKE=1 几秒钟试跑，不写 RESULTS.md）
"""

from __future__ import annotations

import os
import subprocess

import torch
import torch.nn.functional as F
from _common import machine_info, update_results

from inference_engine.quantization.int4 import (
    int4_dequantize,
    int4_qparams,
    int4_quantize,
    linear_int4_kernel,
    pack_scales_and_zeros,
    to_kernel_layout,
)
from inference_engine.quantization.int8 import linear_int8_kernel, quantize_int8_weight
from utils.io import is_smoke
from utils.torch_playground import benchmark_interleaved, setup_seed

SMOKE = is_smoke()
SHAPES = [(256, 512)] if SMOKE else [(4096, 4096), (11008, 4096), (4096, 11008)]  # (out N, in K)
ROWS = (1, 16)
THREADS = (1,) if SMOKE or (os.cpu_count() or 1) < 2 else (1, 2)
REPS, WARMUP = (3, 1) if SMOKE else (15, 3)
GROUP = 128
GOALS = {"int8": 1.5, "int4": 2.0}


def cpu_flags_line() -> str:
    """`lscpu | grep avx512_bf16` 的结论与 L3 大小，以及测量时的负载。"""
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, timeout=10).stdout
    except (OSError, subprocess.SubprocessError):
        return "lscpu 不可用"
    bf16 = "有" if "avx512_bf16" in out else "无"
    l3 = next((line.split(":", 1)[1].strip() for line in out.splitlines() if line.startswith("L3 cache")), "?")
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    return f"`lscpu | grep avx512_bf16`：{bf16} · L3 {l3} · 1 分钟负载 {load:.1f}"


def build(n: int, k: int) -> dict:
    """一份权重的各种存法：fp32、bf16、int8 码 + scale、int4 内核布局 + scales_and_zeros，以及对照用的反量化权重。"""
    w = torch.randn(n, k) * 0.02
    q8, s8 = quantize_int8_weight(w)
    scales, zeros = int4_qparams(w, GROUP, torch.bfloat16)
    codes4 = int4_quantize(w, scales, zeros, GROUP)
    sz = pack_scales_and_zeros(scales, zeros)
    return {"w": w, "w_bf16": w.bfloat16(), "q8": q8, "s8": s8, "s8_bf16": s8.bfloat16(),
            "p4": to_kernel_layout(codes4), "sz_bf16": sz, "sz_fp32": sz.float(),
            "w8_hat": q8.float() * s8[:, None], "w4_hat": int4_dequantize(codes4, scales, zeros, GROUP)}


def check(ws: dict, x: torch.Tensor) -> None:
    """量化内核与"反量化权重 + fp32 矩阵乘"一致（bf16 的舍入之内），否则这份基准测的不是同一个东西。"""
    xb = x.bfloat16()
    for name, y, ref in [("int8", linear_int8_kernel(xb, ws["q8"], ws["s8"]), F.linear(xb.float(), ws["w8_hat"])),
                         ("int4", linear_int4_kernel(xb, ws["p4"], ws["sz_bf16"], GROUP), F.linear(xb.float(), ws["w4_hat"]))]:
        err = ((y.float() - ref).abs().max() / ref.abs().max()).item()
        if err > 2e-2:
            raise RuntimeError(f"{name} 内核与反量化参照差 {err:.1e}（相对）：内核或打包有错")


def weight_mib(n: int, k: int) -> dict[str, float]:
    return {"fp32": n * k * 4 / 2**20, "bf16": n * k * 2 / 2**20, "int8": (n * k + n * 4) / 2**20,
            "int4": (n * k / 2 + n * (k // GROUP) * 4) / 2**20}


def bench_shape(n: int, k: int) -> tuple[list[tuple], tuple]:
    """一个权重形状：各 M、各线程数下的四种实现，以及 fp32 激活下的两个内核（M = 1、1 线程）。"""
    ws = build(n, k)
    check(ws, torch.randn(4, k))
    rows = []
    for m in ROWS:
        x = torch.randn(m, k)
        xb = x.bfloat16()
        fns = [lambda: F.linear(x, ws["w"]), lambda: F.linear(xb, ws["w_bf16"]),
               lambda: linear_int8_kernel(xb, ws["q8"], ws["s8_bf16"]),
               lambda: linear_int4_kernel(xb, ws["p4"], ws["sz_bf16"], GROUP)]
        for t in THREADS:
            torch.set_num_threads(t)
            ms = benchmark_interleaved(fns, WARMUP, REPS, cpu_time=(t == 1))
            rows.append((n, k, m, t, *ms))
            print(f"{n}×{k} M={m} {t} 线程：fp32 {ms[0]:.2f} ms · bf16 {ms[1]:.2f} · int8 {ms[2]:.2f} "
                  f"({ms[0] / ms[2]:.2f}×) · int4 {ms[3]:.2f} ({ms[0] / ms[3]:.2f}×)")
    # fp32 激活下的两个内核：只测 M = 1、1 线程（通用循环每多一行就多一份时间）
    torch.set_num_threads(1)
    x1 = torch.randn(1, k)
    ms = benchmark_interleaved([lambda: F.linear(x1, ws["w"]), lambda: linear_int8_kernel(x1, ws["q8"], ws["s8"]),
                                lambda: linear_int4_kernel(x1, ws["p4"], ws["sz_fp32"], GROUP)],
                               WARMUP, max(2, REPS // 3), cpu_time=True)
    return rows, (n, k, *ms)


def main() -> None:
    setup_seed(0)
    threads_before = torch.get_num_threads()
    rows, fp32_act_rows = [], []
    for n, k in SHAPES:
        shape_rows, fp32_act = bench_shape(n, k)
        rows += shape_rows
        fp32_act_rows.append(fp32_act)
    torch.set_num_threads(threads_before)

    mib = {shape: weight_mib(*shape) for shape in SHAPES}
    lines = [
        "### 量化矩阵乘：CPU 解码速度（`benchmarks/quantization_matmul.py`）",
        "",
        f"机器：{machine_info()} · {cpu_flags_line()}",
        "",
        "y = x Wᵀ，W 为 out×in（Llama-7B 的投影形状），x 为 M 行。量化内核的激活是 bf16，int4 分组 128（bf16 的 s、z）。"
        f"每格是 {REPS} 轮交替重复的中位数（毫秒；1 线程 = 进程 CPU 时间，2 线程 = 墙钟），括号里是相对 fp32 F.linear 的加速比。"
        f"目标：int8 ≥ {GOALS['int8']}×、int4 ≥ {GOALS['int4']}×。",
        "",
        "| W (out×in) | 权重 MiB fp32 / bf16 / int8 / int4 | M | 线程 | fp32 | bf16 | int8 `_weight_int8pack_mm` | "
        "int4 `_weight_int4pack_mm_for_cpu` | 达标 |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for n, k, m, t, f32, b16, i8, i4 in rows:
        sizes = " / ".join(f"{v:.1f}" for v in mib[(n, k)].values())
        ok8, ok4 = f32 / i8 >= GOALS["int8"], f32 / i4 >= GOALS["int4"]
        verdict = f"int8 {'✅' if ok8 else '❌'} · int4 {'✅' if ok4 else '❌'}"
        lines.append(f"| {n}×{k} | {sizes} | {m} | {t} | {f32:.2f} | {b16:.2f} ({f32 / b16:.2f}×) | "
                     f"{i8:.2f} ({f32 / i8:.2f}×) | {i4:.2f} ({f32 / i4:.2f}×) | {verdict} |")
    lines += [
        "",
        "fp32 激活（M = 1、1 线程）：这两个内核的 fp32 路径是不向量化的通用循环，比直接用 fp32 权重还慢——"
        "所以量化模型要用 bf16 解码，Int8/Int4WeightOnlyLinear 也只在 bf16（或极少行数）时调用内核。",
        "",
        "| W (out×in) | fp32 F.linear | int8 内核（fp32 激活） | int4 内核（fp32 激活） |",
        "|---|---|---|---|",
    ]
    for n, k, f32, i8, i4 in fp32_act_rows:
        lines.append(f"| {n}×{k} | {f32:.2f} | {i8:.2f} ({f32 / i8:.2f}×) | {i4:.2f} ({f32 / i4:.2f}×) |")
    md = "\n".join(lines)
    print(md)
    update_results("quantization_matmul", md)


if __name__ == "__main__":
    main()
