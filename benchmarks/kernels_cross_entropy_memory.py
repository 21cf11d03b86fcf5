"""融合的分块 lm_head + 交叉熵 vs 物化 logits 的 F.cross_entropy：词表 32000 时前向 + 反向的峰值内存，以及耗时。

比较三种实现（同样的 hidden (N, C)、lm_head 权重 W (V, C)、targets，fp32，每 8 个 token 忽略一个）：
- PyTorch：F.cross_entropy(hidden @ Wᵀ, targets)——(N, V) 的 logits 整块物化，log_softmax 为反向保存一份 (N, V)，
  反向再分配 ∂log_softmax 与 ∂logits 两个 (N, V)；
- 我们的 cross_entropy(hidden @ Wᵀ, targets)：logits 照样物化，但 Triton 内核一遍扫描同时写出 loss 与梯度，
  不存 log_softmax，反向只把存下的梯度乘上游梯度；
- 我们的 linear_cross_entropy(hidden, W, targets)：按 chunk 行一块算 logits，就地变成梯度，马上乘回 ∂hidden、∂W，
  完整的 logits 从不出现（inference_engine/kernels/cross_entropy.py）。

**测的是什么**：每种实现在一个全新的子进程里跑（峰值是"历史最高"，同一进程里前一种实现的几百 MiB 会留在记录里）。
子进程先用小尺寸把同一实现预热一遍（BLAS、Triton 解释器的惰性初始化不算进峰值），建好输入，把内核记录的峰值常驻内存
清零（Linux：向 /proc/self/clear_refs 写 5），记下此刻的常驻内存 RSS₀，跑一次前向 + 反向；
峰值 RSS（getrusage 的 ru_maxrss）− RSS₀ 就是这一次前向 + 反向额外用到的最大物理内存：所有中间张量、为反向保存的张量、
梯度（包括 ∂hidden 与 ∂W 本身），以及分配器的碎片。RSS 什么都算，不依赖 PyTorch 分配器的统计（CPU 上没有现成的峰值统计）。

耗时：1 个 torch 线程，前向 + 反向重复 reps 次取中位数，同时记进程 CPU 时间。**注意**：没有 GPU 时 Triton 内核跑在
解释器里（numpy 逐个 program 模拟，每行一个 program），所以这里的时间比值衡量的是解释器的开销，不是内核的速度；
GPU 上的 GB/s 对比等 GPU 基准。

运行：PYTHONPATH=. .venv/bin/python benchmarks/kernels_cross_entropy_memory.py   （SMOKE=1 几秒钟试跑，不写 RESULTS.md）
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

from _common import REPO_ROOT, machine_info, peak_rss_bytes, reset_peak_rss, rss_bytes, update_results

from utils.io import is_smoke

SMOKE = is_smoke()
WARMUP = 16  # 预热用的 token 数
METHODS = {
    "torch": "PyTorch：F.cross_entropy(hidden @ Wᵀ)",
    "triton_ce": "我们：cross_entropy(hidden @ Wᵀ)（一遍扫描，logits 仍物化）",
    "linear_ce": "我们：linear_cross_entropy（分块，不物化）",
}


# ---------------------------------------------------------------------------------------------------
# 子进程：只跑一种实现
# ---------------------------------------------------------------------------------------------------


def _loss_fn(method: str, chunk: int | None):
    import torch.nn.functional as F

    from inference_engine.kernels.cross_entropy import cross_entropy, linear_cross_entropy

    if method == "torch":
        return lambda h, w, t: F.cross_entropy(h @ w.T, t, ignore_index=-100)
    if method == "triton_ce":
        return lambda h, w, t: cross_entropy(h @ w.T, t, ignore_index=-100)
    return lambda h, w, t: linear_cross_entropy(h, w, t, ignore_index=-100, chunk_size=chunk)


def worker(method: str, n: int, c: int, vocab: int, chunk: int | None, reps: int) -> dict[str, float]:
    import torch

    from utils.torch_playground import setup_seed

    torch.set_num_threads(1)
    setup_seed(0)
    fn = _loss_fn(method, chunk)
    hidden = torch.randn(n, c, requires_grad=True)
    weight = (torch.randn(vocab, c) / c**0.5).requires_grad_(True)
    targets = torch.randint(0, vocab, (n,))
    targets[::8] = -100

    fn(hidden[:WARMUP].detach().requires_grad_(True), weight, targets[:WARMUP]).backward()  # 预热：惰性初始化不算进峰值
    weight.grad = None
    gc.collect()
    exact = reset_peak_rss()
    rss0 = rss_bytes()
    walls, cpus = [], []
    for rep in range(reps):
        hidden.grad = weight.grad = None
        start_wall, start_cpu = time.perf_counter(), time.process_time()
        loss = fn(hidden, weight, targets)
        loss.backward()
        walls.append(time.perf_counter() - start_wall)
        cpus.append(time.process_time() - start_cpu)
        if rep == 0:
            peak = peak_rss_bytes() - rss0  # 只取第一次：之后的重复可能复用分配器里没还给系统的内存
    grad_norms = (hidden.grad.norm().item(), weight.grad.norm().item())
    return {"peak": max(peak, 0), "wall": statistics.median(walls), "cpu": statistics.median(cpus), "exact": exact,
            "loss": loss.item(), "grad_hidden_norm": grad_norms[0], "grad_weight_norm": grad_norms[1]}


def _spawn(method: str, n: int, c: int, vocab: int, chunk: int | None, reps: int) -> dict[str, float]:
    cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", method, "--tokens", str(n), "--hidden", str(c),
           "--vocab", str(vocab), "--reps", str(reps)]
    if chunk is not None:
        cmd += ["--chunk", str(chunk)]
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=900)
    if proc.returncode != 0:
        raise RuntimeError(f"子进程 {method} 失败（退出码 {proc.returncode}）：\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


# ---------------------------------------------------------------------------------------------------
# 主进程：逐个起子进程，汇总成表
# ---------------------------------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--tokens", type=int, default=64 if SMOKE else 2048, help="N = B·T，token 数（默认 2048）")
    parser.add_argument("--hidden", type=int, default=32 if SMOKE else 256, help="C，隐藏维（默认 256）")
    parser.add_argument("--vocab", type=int, default=2000 if SMOKE else 32000, help="V，词表大小（默认 32000）")
    parser.add_argument("--chunk", type=int, default=None, help="linear_cross_entropy 的 chunk_size（默认 default_chunk_size）")
    parser.add_argument("--reps", type=int, default=1 if SMOKE else 3, help="前向 + 反向重复几次取中位数（默认 3）")
    parser.add_argument("--worker", choices=tuple(METHODS), help="内部使用：子进程只跑这一种实现")
    args = parser.parse_args()
    if min(args.tokens, args.hidden, args.vocab, args.reps) < 1 or (args.chunk is not None and args.chunk < 1):
        raise SystemExit("--tokens、--hidden、--vocab、--reps、--chunk 都必须是正整数")
    if args.tokens < WARMUP:
        raise SystemExit(f"--tokens 至少 {WARMUP}（子进程先用前 {WARMUP} 个 token 预热）")
    if args.worker:
        print(json.dumps(worker(args.worker, args.tokens, args.hidden, args.vocab, args.chunk, args.reps)))
        return

    from inference_engine.kernels.cross_entropy import default_chunk_size
    from inference_engine.kernels.runtime import INTERPRET

    n, c, vocab = args.tokens, args.hidden, args.vocab
    chunk = args.chunk or default_chunk_size(n, c, vocab)
    info = machine_info()
    print(f"N={n} C={c} V={vocab} fp32，chunk={chunk}；每种实现一个新子进程、1 个 torch 线程，前向 + 反向 {args.reps} 次取中位数")
    rows = {m: _spawn(m, n, c, vocab, chunk, args.reps) for m in METHODS}
    ref = rows["torch"]
    for m, r in rows.items():  # 三种实现算的是同一个东西：loss 与梯度范数对得上，比内存才有意义
        if abs(r["loss"] - ref["loss"]) > 1e-4 or abs(r["grad_weight_norm"] - ref["grad_weight_norm"]) > 1e-4 * (
                1 + ref["grad_weight_norm"]):
            raise AssertionError(f"{m} 的结果与 PyTorch 不一致：{r} vs {ref}")

    logits_bytes = n * vocab * 4
    lines = [info, "",
             f"lm_head + 交叉熵的前向 + 反向，N={n} 个 token、C={c}、V={vocab}、fp32，每 8 个 token 忽略一个。"
             f"峰值内存 = 新子进程里清零峰值 RSS 后跑一次前向 + 反向的峰值 RSS − 起跑时 RSS（/proc/self/clear_refs + getrusage），"
             f"包括 ∂hidden 与 ∂W 本身（∂W = V·C·4 B = {vocab * c * 4 / 2**20:.1f} MiB）。"
             f"一个 (N, V) fp32 的 logits = {logits_bytes / 2**20:.1f} MiB；linear_cross_entropy 的一块 logits = "
             f"{chunk} × V × 4 B = {chunk * vocab * 4 / 2**20:.1f} MiB。时间为 {args.reps} 次中位数，1 个 torch 线程。", "",
             "| 实现 | 峰值内存 (MiB) | ÷ PyTorch | 峰值 ÷ 一个 (N, V) logits | 墙钟 (s) | CPU (s) | 墙钟 ÷ PyTorch | CPU ÷ PyTorch |",
             "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for m, r in rows.items():
        lines.append(f"| {METHODS[m]} | {r['peak'] / 2**20:.1f} | {r['peak'] / ref['peak']:.3f} | "
                     f"{r['peak'] / logits_bytes:.2f} | {r['wall']:.3g} | {r['cpu']:.3g} | {r['wall'] / ref['wall']:.2f} | "
                     f"{r['cpu'] / ref['cpu']:.2f} |")
    ratio = rows["linear_ce"]["peak"] / ref["peak"]
    notes = [f"分块的 linear_cross_entropy 的峰值内存是 PyTorch 的 {ratio:.3f} 倍；"
             f"PyTorch 的峰值约为 {ref['peak'] / logits_bytes:.1f} 个 (N, V) logits（logits、为反向保存的 log_softmax、"
             "反向里的两个梯度缓冲），分块实现只剩一块 logits 加上 ∂hidden 与 ∂W。"]
    if INTERPRET:
        notes.append("这台机器没有 GPU：Triton 内核跑在解释器里（numpy 逐行模拟），时间比值衡量的是解释器开销，"
                     "不代表 GPU 上的速度；GPU 数字等第一台有 GPU 的机器。")
    if not all(r["exact"] for r in rows.values()):
        notes.append("（这台机器不能清零峰值 RSS：峰值为进程历史最高 RSS − 起跑时 RSS，可能偏高。）")
    lines += ["", "".join(notes)]
    md = "\n".join(lines)
    print(md)
    update_results("kernels_cross_entropy_memory", md)


if __name__ == "__main__":
    main()
