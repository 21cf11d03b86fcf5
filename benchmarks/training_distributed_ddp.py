"""数据并行：我们的分桶 DDP vs torch DistributedDataParallel，朴素版 vs 分桶版，以及 gloo all-reduce 的带宽。

2 个 gloo 进程、每个 rank 1 个线程（training_sys.distributed.spawn），所有数字取 rank 0 的测量：
1. 小 Llama 的一整步（前向 + 反向 + 梯度同步 + AdamW）：DataParallelBucketed / DistributedDataParallel，同样的 bucket_cap_mb，
   目标比值 ≤ 1.05。
2. 约 200 个小张量的模型（100 个 Linear(64, 64)：每层 weight + bias）：朴素版每个张量一次 all-reduce vs 分桶版，
   看"延迟主导"有多贵。
3. gloo all-reduce 1–64 MB：algbw = 字节数 / 时间；busbw = algbw · 2(N-1)/N（ring all-reduce 每个 rank 实际收发的量，
   与 nccl-tests 的定义相同），它才与链路带宽可比。

两边交替计时（utils.torch_playground.benchmark_interleaved）：两个 rank 以同样的顺序调用，集合通信始终配对。

运行：PYTHONPATH=. .venv/bin/python benchmarks/training_distributed_ddp.py   （SMOKE=1 几秒钟试跑，不写 RESULTS.md）
"""

from __future__ import annotations

import torch
from _common import machine_info, update_results
from torch import nn

from utils.io import is_smoke

SMOKE = is_smoke()
REPS, WARMUP = (2, 1) if SMOKE else (15, 3)
WORLD = 2


def _llama_step_ms(rank: int, cap_mb: float) -> tuple[float, float, int]:
    from model_lab import Llama, LlamaConfig
    from training_sys.distributed.ddp import DataParallelBucketed
    from training_sys.optimization import AdamW
    from utils.torch_playground import benchmark_interleaved, setup_seed

    d, layers, vocab, seq, batch = (32, 2, 64, 16, 2) if SMOKE else (128, 4, 512, 64, 4)

    def build():
        setup_seed(0)
        return Llama(LlamaConfig(vocab_size=vocab, hidden_size=d, intermediate_size=4 * d, num_hidden_layers=layers,
                                 num_attention_heads=4, max_position_embeddings=seq))

    g = torch.Generator().manual_seed(rank)
    x, y = torch.randint(0, vocab, (batch, seq), generator=g), torch.randint(0, vocab, (batch, seq), generator=g)
    ours_model, ref_model = build(), build()
    ours = DataParallelBucketed(ours_model, cap_mb)
    ref = nn.parallel.DistributedDataParallel(ref_model, bucket_cap_mb=cap_mb)
    opt_ours, opt_ref = AdamW(ours_model.parameters(), lr=1e-3), AdamW(ref_model.parameters(), lr=1e-3)

    def step(wrapped, opt):
        def run():
            wrapped(x, y)[1].backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
        return run

    ms_ours, ms_ref = benchmark_interleaved([step(ours, opt_ours), step(ref, opt_ref)], WARMUP, REPS)
    return ms_ours, ms_ref, sum(p.numel() for p in ours_model.parameters())


def _many_tensors_ms(rank: int) -> tuple[float, float, int, int]:
    from training_sys.distributed.ddp import DataParallelBucketed, DataParallelNaive
    from utils.torch_playground import benchmark_interleaved, setup_seed

    n_layers, width = (10, 16) if SMOKE else (100, 64)

    def build():
        setup_seed(0)
        return nn.Sequential(*[nn.Linear(width, width) for _ in range(n_layers)])

    x = torch.randn(8, width, generator=torch.Generator().manual_seed(rank))
    naive, bucketed = DataParallelNaive(build()), DataParallelBucketed(build(), 25.0)

    def run_naive():
        naive(x).square().mean().backward()
        naive.sync_gradients()
        naive.module.zero_grad(set_to_none=True)

    def run_bucketed():
        bucketed(x).square().mean().backward()
        bucketed.module.zero_grad(set_to_none=True)

    ms_naive, ms_bucketed = benchmark_interleaved([run_naive, run_bucketed], WARMUP, REPS)
    return ms_naive, ms_bucketed, 2 * n_layers, len(bucketed.buckets)


def _allreduce_gbps(sizes_mb: list[int]) -> list[tuple[int, float, float, float]]:
    import torch.distributed as dist

    from utils.torch_playground import benchmark_interleaved

    rows = []
    for mb in sizes_mb:
        t = torch.ones(mb * 1024 * 1024 // 4)
        (ms,) = benchmark_interleaved([lambda t=t: dist.all_reduce(t)], WARMUP, REPS)
        alg = mb * 1024 * 1024 / (ms / 1000) / 1e9
        rows.append((mb, ms, alg, alg * 2 * (WORLD - 1) / WORLD))
    return rows


def _worker(rank: int, world: int, cap_mb: float, sizes_mb: list[int]) -> dict:
    return {"llama": _llama_step_ms(rank, cap_mb), "many": _many_tensors_ms(rank), "allreduce": _allreduce_gbps(sizes_mb)}


def main() -> None:
    from training_sys.distributed import spawn

    info = machine_info()
    print(info)
    cap_mb = 25.0
    sizes_mb = [1, 4] if SMOKE else [1, 4, 16, 64]
    out = spawn(_worker, WORLD, cap_mb, sizes_mb, timeout_s=600)[0]
    ms_ours, ms_ref, n_params = out["llama"]
    ms_naive, ms_bucketed, n_tensors, n_buckets = out["many"]
    lines = [
        "### training_sys 数据并行：分桶 DDP vs torch DDP、朴素 vs 分桶、gloo all-reduce（2 进程，CPU）",
        "",
        f"{info}；2 个 gloo 进程、每个 rank 1 个线程，rank 0 的测量，交替计时各 {REPS} 次取中位数。",
        "",
        "| 测什么 | 我们 (ms) | 参考 (ms) | 比值 |",
        "|---|---:|---:|---:|",
        f"| 小 Llama（{n_params / 1e6:.2f}M 参数）一整步：DataParallelBucketed vs DistributedDataParallel"
        f"（bucket_cap_mb={cap_mb:g}） | {ms_ours:.2f} | {ms_ref:.2f} | {ms_ours / ms_ref:.2f} |",
        f"| {n_tensors} 个小张量的前向 + 反向 + 同步：分桶（{n_buckets} 个桶） vs 朴素（每个张量一次 all-reduce）"
        f" | {ms_bucketed:.2f} | {ms_naive:.2f} | {ms_bucketed / ms_naive:.2f} |",
        "",
        "| gloo all-reduce 大小 | 耗时 (ms) | algbw (GB/s) | busbw (GB/s) |",
        "|---:|---:|---:|---:|",
    ]
    lines += [f"| {mb} MB | {ms:.2f} | {alg:.2f} | {bus:.2f} |" for mb, ms, alg, bus in out["allreduce"]]
    md = "\n".join(lines)
    print(md)
    update_results("training_distributed_ddp", md)


if __name__ == "__main__":
    main()
