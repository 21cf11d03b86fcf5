"""一个入口跑完所有内核的 GPU 基准（`make bench-gpu`），把表写进 RESULTS.md 的 kernels_gpu 段。

在一张 H100 级的 GPU 上 8 分钟以内跑完（大头是 Triton 的 autotune 编译）。比较的对象与目标（docs 里的 issue 17）：
- FlashAttention-2（Triton）前向、前向+反向 TFLOP/s vs `sdpa_kernel(FLASH_ATTENTION)`：目标 ≥ 0.8×；
- 矩阵乘（Triton）vs cuBLAS（torch.matmul），4096³ bf16：目标 ≥ 0.8×；
- 分页注意力解码的有效带宽 vs "按页表 gather + SDPA"；
- RMSNorm / RoPE / SwiGLU / 交叉熵（loss + 梯度）的 GB/s vs `torch.compile` 编译的同一个 PyTorch 参考——
  逐元素 / 逐行的内核是访存受限的，好坏就看搬了多少字节、跑到了多少带宽；
- CUDA C（load_inline）的分块矩阵乘相对朴素版的加速比（需要 nvcc 与 CUDA 版 torch）。

没有 GPU 时只打印一句说明、退出码 0（SMOKE=1 的冒烟测试也这样）：这些数字必须在真 GPU 上测，
解释器下的时间没有意义。在 GPU 机器上 SMOKE=1 会把尺寸缩小、不写 RESULTS.md。

运行：make bench-gpu    或    PYTHONPATH=. python benchmarks/kernels_gpu.py
"""

from __future__ import annotations

import time
from collections.abc import Callable

import torch
from _common import machine_info, update_results

from utils.io import is_smoke

SMOKE = is_smoke()


def _bandwidth_rows() -> list[str]:
    """访存受限的内核：GB/s = 必须读写的字节数 / 时间（分子两边相同），对照 torch.compile 的参考。"""
    import triton.testing

    from inference_engine.kernels import cross_entropy, rmsnorm, rope, swiglu

    dev, dt = torch.device("cuda"), torch.bfloat16
    n_tok, hidden, heads, d, inter, vocab = (2048, 1024, 8, 64, 2816, 8192) if SMOKE else (16384, 4096, 32, 128,
                                                                                          11008, 32000)
    rows = []

    def measure(name: str, ours: Callable, ref: Callable, nbytes: int) -> None:
        compiled = torch.compile(ref)
        compiled()  # 编译一次再计时
        t_ours = triton.testing.do_bench(ours)
        t_ref = triton.testing.do_bench(compiled)
        gbps = lambda ms: nbytes / (ms * 1e-3) / 1e9  # noqa: E731
        rows.append(f"| {name} | {t_ours:.3f} | {t_ref:.3f} | {gbps(t_ours):.0f} | {gbps(t_ref):.0f} | "
                    f"{t_ref / t_ours:.2f} |")

    x = torch.randn(n_tok, hidden, device=dev, dtype=dt)
    w = torch.randn(hidden, device=dev, dtype=dt)
    measure(f"RMSNorm 前向 ({n_tok}, {hidden}) bf16", lambda: rmsnorm.rms_norm(x, w, 1e-6),
            lambda: rmsnorm._reference(x, w, 1e-6), 2 * x.numel() * 2)
    q = torch.randn(n_tok // 4, 4, heads, d, device=dev, dtype=dt).view(1, n_tok, heads, d)
    angles = torch.arange(n_tok, device=dev)[:, None].float() * torch.rand(d // 2, device=dev)
    table = torch.stack((angles.cos(), angles.sin()), -1)[None, :, None]
    measure(f"RoPE 前向 (1, {n_tok}, {heads}, {d}) bf16", lambda: rope.apply_rope(q, table),
            lambda: rope._reference(q, table), 2 * q.numel() * 2 + table.numel() * 4)
    g, u = (torch.randn(n_tok, inter, device=dev, dtype=dt) for _ in range(2))
    measure(f"SwiGLU 前向 ({n_tok}, {inter}) bf16", lambda: swiglu.swiglu(g, u),
            lambda: torch.nn.functional.silu(g) * u, 3 * g.numel() * 2)
    n_ce = n_tok // 4
    logits = torch.randn(n_ce, vocab, device=dev, dtype=dt)
    targets = torch.randint(0, vocab, (n_ce,), device=dev)

    def ce_ref():
        lg = logits.detach().requires_grad_()
        torch.nn.functional.cross_entropy(lg.float(), targets).backward()

    measure(f"交叉熵 loss + 梯度 ({n_ce}, {vocab}) bf16",
            lambda: cross_entropy.cross_entropy_forward(logits, targets, grad=torch.empty_like(logits)),
            ce_ref, 2 * logits.numel() * 2)
    return rows


def _cuda_c_rows() -> list[str]:
    from inference_engine.kernels import cuda_kernels

    reason = cuda_kernels.build_unavailable_reason() or cuda_kernels.run_unavailable_reason()
    if reason:
        return [f"| CUDA C 分块 vs 朴素矩阵乘 | 跳过：{reason} | | | | |"]
    import triton.testing

    n = 1024 if SMOKE else 4096
    a, b = (torch.randn(n, n, device="cuda") for _ in range(2))
    t_naive = triton.testing.do_bench(lambda: cuda_kernels.matmul_naive(a, b))
    t_tiled = triton.testing.do_bench(lambda: cuda_kernels.matmul_tiled(a, b))
    t_cublas = triton.testing.do_bench(lambda: a @ b)
    tf = lambda ms: 2 * n**3 / (ms * 1e-3) / 1e12  # noqa: E731
    return [f"| CUDA C {n}³ fp32：朴素 / 分块 / cuBLAS | {t_naive:.2f} / {t_tiled:.2f} / {t_cublas:.2f} ms | "
            f"{tf(t_naive):.1f} / {tf(t_tiled):.1f} / {tf(t_cublas):.1f} TFLOP/s | 分块 ÷ 朴素 {t_naive / t_tiled:.2f}× | | |"]


def main() -> None:
    if not torch.cuda.is_available():
        print("kernels_gpu：这台机器没有 CUDA GPU——内核的 GPU 基准需要真 GPU（解释器下的时间没有意义），"
              "跳过。正确性已由 tests/inference_engine/kernels/ 在 TRITON_INTERPRET=1 下证明。")
        return
    from inference_engine.kernels.flash_attention import benchmark_flash_attention
    from inference_engine.kernels.matmul import benchmark_matmul
    from inference_engine.kernels.paged_attention import benchmark_paged_attention

    start = time.time()
    lines = [f"### inference_engine 内核：GPU 基准（make bench-gpu）\n\n{machine_info()}\n"]

    size = 1024 if SMOKE else 4096
    lines += ["| 矩阵乘 (M, N, K) | dtype | ours ms | cuBLAS ms | ours TFLOP/s | cuBLAS TFLOP/s | ours / cuBLAS |",
              "|---|---|---:|---:|---:|---:|---:|"]
    for r in benchmark_matmul([(size, size, size)], torch.bfloat16):
        lines.append(f"| {r['size']} | {r['dtype']} | {r['ours_ms']:.3f} | {r['ref_ms']:.3f} | {r['ours_tflops']:.0f} | "
                     f"{r['ref_tflops']:.0f} | {r['ratio']:.2f} |")
    print(f"matmul 完成（{time.time() - start:.0f} s）")

    shape = (2, 8, 1024, 64) if SMOKE else (4, 16, 4096, 64)
    lines += ["", "| FlashAttention-2 (B, H, T, D) | causal | 模式 | ours ms | SDPA-flash ms | ours TFLOP/s | "
              "SDPA TFLOP/s | ours / SDPA |", "|---|---|---|---:|---:|---:|---:|---:|"]
    for causal in (True, False):
        for r in benchmark_flash_attention([shape], dtype=torch.bfloat16, causal=causal):
            lines.append(f"| {r['shape']} | {r['causal']} | {r['mode']} | {r['ours_ms']:.3f} | {r['ref_ms']:.3f} | "
                         f"{r['ours_tflops']:.0f} | {r['ref_tflops']:.0f} | {r['ratio']:.2f} |")
    print(f"flash attention 完成（{time.time() - start:.0f} s）")

    lines += ["", "| 分页注意力解码 batch | 上下文 | K/V MB | ours ms | gather+SDPA ms | ours GB/s | 参考 GB/s | 加速比 |",
              "|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in benchmark_paged_attention((1, 8) if SMOKE else (1, 8, 32, 128), 1024 if SMOKE else 4096):
        lines.append(f"| {r['batch']} | {r['context_len']} | {r['kv_bytes'] / 1e6:.0f} | {r['ours_ms']:.3f} | "
                     f"{r['reference_ms']:.3f} | {r['ours_gbps']:.0f} | {r['reference_gbps']:.0f} | {r['speedup']:.2f} |")
    print(f"paged attention 完成（{time.time() - start:.0f} s）")

    lines += ["", "| 访存受限的内核 | ours ms | torch.compile ms | ours GB/s | compile GB/s | compile / ours |",
              "|---|---:|---:|---:|---:|---:|", *_bandwidth_rows(), *_cuda_c_rows()]
    lines.append(f"\n总耗时 {time.time() - start:.0f} s。")
    text = "\n".join(lines)
    print(text)
    update_results("kernels_gpu", text)


if __name__ == "__main__":
    main()
