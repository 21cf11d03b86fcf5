"""第 20 天 性能分析：数 FLOPs、算算术强度、用 dispatch mode 和 torch.profiler 看模型调用了哪些算子。

"慢"之前先问两件事：这个计算要多少次浮点运算（FLOPs）？要搬多少字节？
1. 矩阵乘 (m, k) @ (k, n)：每个输出元素 k 次乘 + k 次加，共 2·m·k·n FLOPs。
   Linear 的 bias 加法只有 m·n 次，和 2mkn 比可以忽略（FlopCounterMode 也不算它）。
2. 反向传播：y = x Wᵀ 的反向要算 ∂L/∂x = g W 和 ∂L/∂W = gᵀ x，各一次同样大小的矩阵乘，
   所以"训练一步 ≈ 3 × 前向"（6·N·D 法则：N 个参数、D 个 token）。
   但第一层的输入是数据，不需要 ∂L/∂x：那一层的反向只有 1 次矩阵乘。
3. 注意力：QKᵀ 与 PV 各 2·T²·d（每个头），共 4·B·H·T²·d——随序列长度**平方**增长。
   朴素实现里因果掩码并不省计算（算完再盖住），FlashAttention 才跳过被盖住的块。
4. 算术强度 = FLOPs / 搬运字节。低于硬件的"FLOPs 峰值 / 带宽"就是内存受限（逐元素运算、小矩阵），
   高于它才是计算受限（大矩阵乘）。这就是为什么要把逐元素运算融合进一个 kernel（第 21 天 torch.compile）。
5. 工具：
   - torch.utils.flop_counter.FlopCounterMode：按形状公式统计每个 aten 算子的 FLOPs；
   - TorchDispatchMode：拦截每一次 aten 调用（FlopCounterMode 就是这么写的），可以自己写计数器；
   - torch.profiler.profile：记录每个算子的调用次数与耗时，key_averages().table() 打印排行榜；
     它也会记录 aten::linear 这种"外层"算子（内部再调 aten::addmm），所以总时间有嵌套。
   计时永远要：预热、同步（GPU）、取多次的中位数（utils.torch_playground.benchmark）。

练习：ex1–ex6，答案都与 FlopCounterMode / torch.profiler 比较。运行：

    python archive/28days_challenges/day20_profiling.py
"""

from __future__ import annotations

from collections import Counter

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.profiler import ProfilerActivity, profile
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.flop_counter import FlopCounterMode

from utils import exercises
from utils.io import is_smoke
from utils.lesson_cli import lesson_args, timing_note
from utils.torch_playground import benchmark_interleaved


# =============================================================================
# 练习（函数体就是参考解答；想自己做，就把函数体换成 raise NotImplementedError 再运行本文件）
# =============================================================================
def ex1_bmm_flops(b: int, m: int, k: int, n: int) -> int:
    """(b, m, k) @ (b, k, n) 的 FLOPs（对照 FlopCounterMode）。"""
    return 2 * b * m * k * n  # 每个输出元素 k 次乘法 + k 次加法


def ex2_linear_flops(batch_shape: tuple[int, ...], in_features: int, out_features: int) -> int:
    """F.linear 作用在形状 (*batch_shape, in_features) 的输入上（带 bias）的 FLOPs（对照 FlopCounterMode）。
    提示：前面的维度都被摊平成"行数"；bias 的加法不计。"""
    rows = 1
    for size in batch_shape:
        rows *= size
    return 2 * rows * in_features * out_features


def ex3_mlp_train_flops(batch: int, sizes: list[int]) -> int:
    """Linear(sizes[0]→sizes[1]) → ReLU → Linear(sizes[1]→sizes[2]) → … 的一次前向 + 反向的 FLOPs
    （输入是数据，不需要梯度；对照 FlopCounterMode）。"""
    total = 0
    for i, (d_in, d_out) in enumerate(zip(sizes, sizes[1:])):
        fwd = 2 * batch * d_in * d_out
        # 反向：∂W 一次矩阵乘；∂x 再一次——第一层的 x 是数据，不需要
        total += fwd + (fwd if i == 0 else 2 * fwd)
    return total


def ex4_attention_flops(b: int, h: int, t: int, d: int) -> int:
    """朴素注意力 softmax(Q Kᵀ / √d) V（Q、K、V 都是 (b, h, t, d)）的矩阵乘 FLOPs（对照 FlopCounterMode）。"""
    return 2 * (2 * b * h * t * t * d)  # Q Kᵀ：(t, d)@(d, t)；P V：(t, t)@(t, d)


class OpCounter(TorchDispatchMode):
    """拦截每一次 aten 调用并计数（FlopCounterMode、各种"自动混合精度调试器"都是这个套路）。"""

    def __init__(self):
        super().__init__()
        self.counts = Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.counts[func.overloadpacket.__name__] += 1  # aten.addmm.default → "addmm"
        return func(*args, **(kwargs or {}))


def ex5_count_aten_calls(model: nn.Module, x: torch.Tensor, op: str) -> int:
    """model(x) 一次前向里 aten 算子 op（如 "addmm"）被调用了几次。写好上面的 OpCounter
    （对照 torch.profiler 的 key_averages() 里 "aten::<op>" 的 count）。"""
    with OpCounter() as counter:
        model(x)
    return counter.counts[op]


def ex6_matmul_intensity(m: int, k: int, n: int, dtype: torch.dtype) -> float:
    """(m, k) @ (k, n) 的算术强度：FLOPs / (读 A + 读 B + 写 C 的字节数)
    （对照：FlopCounterMode 的 FLOPs 除以三个张量的 nbytes）。"""
    elem = torch.empty((), dtype=dtype).element_size()
    return 2 * m * k * n / ((m * k + k * n + m * n) * elem)


# =============================================================================
# 参考实现与输入
# =============================================================================
def _flops(fn) -> int:
    with FlopCounterMode(display=False) as counter:
        fn()
    return counter.get_total_flops()


def _randint(g: torch.Generator, lo: int, hi: int) -> int:
    return int(torch.randint(lo, hi, (), generator=g))


def _ref_mlp_train(batch, sizes):
    layers = []
    for d_in, d_out in zip(sizes, sizes[1:]):
        layers += [nn.Linear(d_in, d_out), nn.ReLU()]
    model = nn.Sequential(*layers)
    x = torch.randn(batch, sizes[0])
    return _flops(lambda: model(x).sum().backward())


def _ref_attention(b, h, t, d):
    q, k, v = torch.randn(3, b, h, t, d).unbind(0)
    return _flops(lambda: torch.softmax(q @ k.transpose(-1, -2) / d**0.5, -1) @ v)


def _count_inputs(g: torch.Generator):
    layers = []
    for _ in range(_randint(g, 1, 4)):
        layers += [nn.Linear(3, 3), nn.GELU()] if _randint(g, 0, 2) else [nn.Linear(3, 3)]
    op = ["addmm", "gelu"][_randint(g, 0, 2)]
    return nn.Sequential(*layers), torch.randn(_randint(g, 1, 4), 3, generator=g), op


def _ref_count(model, x, op):
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        model(x)
    return sum(e.count for e in prof.key_averages() if e.key == f"aten::{op}")


def _ref_intensity(m, k, n, dtype):
    a, b = torch.randn(m, k).to(dtype), torch.randn(k, n).to(dtype)
    flops = _flops(lambda: a @ b)
    return flops / (a.nbytes + b.nbytes + (a @ b).nbytes)


CHECKS = [
    (
        "ex1_bmm_flops",
        lambda b, m, k, n: _flops(lambda: torch.bmm(torch.randn(b, m, k), torch.randn(b, k, n))),
        lambda g: tuple(_randint(g, 1, 6) for _ in range(4)),
    ),
    (
        "ex2_linear_flops",
        lambda shape, i, o: _flops(lambda: F.linear(torch.randn(*shape, i), torch.randn(o, i), torch.randn(o))),
        lambda g: (tuple(_randint(g, 1, 4) for _ in range(_randint(g, 1, 4))), _randint(g, 1, 6), _randint(g, 1, 6)),
    ),
    ("ex3_mlp_train_flops", _ref_mlp_train,
     lambda g: (_randint(g, 1, 5), [_randint(g, 1, 6) for _ in range(_randint(g, 2, 5))])),
    ("ex4_attention_flops", _ref_attention, lambda g: tuple(_randint(g, 1, 5) for _ in range(4))),
    ("ex5_count_aten_calls", _ref_count, _count_inputs),
    (
        "ex6_matmul_intensity",
        _ref_intensity,
        lambda g: (*(_randint(g, 1, 64) for _ in range(3)), [torch.float32, torch.bfloat16][_randint(g, 0, 2)]),
    ),
]

PUZZLE_ALLOWED: dict[str, set[str]] = {}


def demo() -> None:
    width, batch = (64, 32) if is_smoke() else (256, 128)
    model = nn.Sequential(nn.Linear(width, 4 * width), nn.GELU(), nn.Linear(4 * width, width))
    x = torch.randn(batch, width)

    def step():
        model.zero_grad(set_to_none=True)
        model(x).pow(2).mean().backward()

    flops, fwd_flops = _flops(step), _flops(lambda: model(x))
    # 这台机器的两个"天花板"：一个大矩阵乘能跑多少 GFLOP/s（算力），一次大拷贝能搬多少 GB/s（带宽）。
    # 拷贝 64 MiB：比 CPU 缓存大得多，量到的才是内存带宽（SMOKE 也不缩小，几 MiB 的拷贝只会量到缓存的速度）
    n_gemm, n_copy = (256 if is_smoke() else 512), 1 << 24
    # 本仓库的 2 核共享机器上实测"一步训练 / 单个大矩阵乘"的比例：默认配置 4 次 56%–90%；SMOKE（64 宽）约 9%：
    # 矩阵太小，每个算子的固定开销（调度、分配、autograd 记账）占了大头
    expected = "SMOKE 的小 MLP 本机实测约 9%" if is_smoke() else "默认配置本机 4 次实测 56%–90%"
    a, b = torch.randn(n_gemm, n_gemm), torch.randn(n_gemm, n_gemm)
    src, dst = torch.randn(n_copy), torch.empty(n_copy)
    ms, gemm_ms, copy_ms = benchmark_interleaved([step, lambda: a @ b, lambda: dst.copy_(src)], warmup=2, reps=5)
    achieved, peak = flops / ms / 1e6, 2 * n_gemm**3 / gemm_ms / 1e6  # GFLOP/s
    bandwidth = 2 * src.nbytes / copy_ms / 1e6  # GB/s：读 src + 写 dst
    print(f"MLP {width}→{4 * width}→{width}，batch {batch}：一步训练 {flops / 1e6:.1f} MFLOPs"
          f"（前向 {fwd_flops / 1e6:.1f} 的 {flops / fwd_flops:.2f} 倍：第一层不需要 ∂x，所以不到 3 倍）")
    print(f"  中位 {ms:.2f} ms → {achieved:.2f} GFLOP/s；本机上限参考：单个 {n_gemm}×{n_gemm} 矩阵乘 {peak:.1f} GFLOP/s"
          f"（这一步达到它的 {achieved / peak:.0%}；{expected}），{src.nbytes >> 20} MiB 拷贝 {bandwidth:.1f} GB/s")
    print(timing_note())
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        step()
    print("torch.profiler（按 CPU 总时间排序的前 6 个算子）：")
    print(prof.key_averages().table(sort_by="cpu_time_total", row_limit=6, max_name_column_width=30))
    ridge = peak / bandwidth  # FLOPs/字节：算术强度高于它才是计算受限
    print(f"  本机的分界点 ≈ {peak:.1f} GFLOP/s ÷ {bandwidth:.1f} GB/s = {ridge:.1f} FLOPs/字节（随负载波动）：")
    for n in (16, 256, 4096):
        intensity = 2 * n**3 / (3 * n * n * 4)  # = n / 6
        bound = "内存受限" if intensity < ridge else "计算受限"
        print(f"  (n, n) @ (n, n) fp32 的算术强度 n={n:5d}：{intensity:7.1f} FLOPs/字节"
              f"（2n³ FLOPs / 3n² 个 4 字节元素 = n/6）→ {bound}")


# =============================================================================
# 自检：框架在 utils/exercises.py（28 天共用）——每道练习在几组随机输入上与 PyTorch 内置实现逐一对比
# =============================================================================
def run_checks(verbose: bool = True, seeds=None) -> tuple[int, int]:
    """逐题自检：每题打印一行 ✓/✗，最后打印 `N/M passed`；返回 (N, M)。"""
    return exercises.run_checks(globals(), verbose=verbose, seeds=seeds)


def main() -> None:
    exercises.run_day(globals())


if __name__ == "__main__":
    lesson_args(__doc__)
    main()
