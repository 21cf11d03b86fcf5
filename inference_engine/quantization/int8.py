"""int8 只量化权重（weight-only）：每个输出通道一个 scale 的对称 int8，激活保持浮点。

1. 最小化的是什么。RTN 逐元素最小化 |w − ŵ|：给定 s，round(w/s) 就是网格上离 w 最近的点，每个元素误差 ≤ s/2。
   s 只剩下一个自由度，取 s_j = max_k |W_jk| / 127.5（basics.py 的对称取法）：网格恰好盖住这一行，没有截断误差，
   此时每个元素的舍入误差近似独立、均匀分布在 [−s/2, s/2]，方差 s²/12。
2. 为什么按输出通道（行）分 scale。y_j = Σ_k x_k W_jk ≈ Σ_k x_k s_j q_jk = s_j · Σ_k x_k q_jk：
   每行一个 s_j 可以提到求和号外面，矩阵乘直接用整数码 q 算、最后每个输出乘一次 s_j——不用先把整个权重反量化。
   按输入通道（列）分 scale 就提不出来（每一项的 s_k 不同），所以 int8 权重量化几乎都是 per-output-channel。
   输出误差 e_j = Σ_k x_k (W_jk − ŵ_jk)，方差 ≈ ‖x‖² · s_j² / 12，所以 SQNR ≈ 10·log10(12 · 127.5² · σ_w² / amax²)。
   高斯权重一行 K 个元素时 amax ≈ 3.0σ_w（K = 256）到 3.8σ_w（K = 4096），SQNR ≈ 43 到 41 dB；nn.Linear 默认的
   均匀初始化 U(−a, a) 没有尾巴，amax ≈ a = √3·σ_w，SQNR = 10·log10(4 · 127.5²) ≈ 48.1 dB（main() 量的就是它）。
   8 位已经好到几乎"免费"，难的是 4 位（int4.py）。
3. 为什么只量化权重就能变快。解码（M = 1，一次一个 token）时 y = x Wᵀ 是矩阵-向量乘：每个权重读一次、
   做一次乘加，算术强度 ≈ 2 FLOP / (每个权重的字节数)，远低于 CPU/GPU 的 FLOP:byte 比，完全被内存带宽卡住。
   权重从 fp32 的 4 字节变成 1 字节，要搬的字节少 4 倍（比 bf16 少 2 倍），时间也就按比例缩短——前提是内核
   直接读 int8、在寄存器里转成浮点，不在内存里物化反量化后的权重。
4. `torch._weight_int8pack_mm(x, q, s)` 就是这样的 CPU 内核：y = (x · qᵀ) ⊙ s，q 是 (N, K) int8，s 是 (N,)，
   s 必须与 x 同 dtype。**什么时候它划算**（AMD EPYC、AVX512-BF16、1 线程、4096×4096 实测，
   benchmarks/quantization_matmul.py 有完整的表）：
   - 激活是 bf16 且行数小（M = 1：1.9 ms，fp32 F.linear 4.8 ms、bf16 F.linear 4.6 ms——RESULTS.md 12-03 的表；更早的一次测量是 1.5 / 4.3 / 3.6）：内核有 AVX512 的 bf16 特化，
     读 1 字节/权重，是带宽瓶颈下的正解；
   - 行数变大（prefill、大 batch）：问题从带宽瓶颈变成算力瓶颈，内核的 GEMV 式循环每多一行就多读一遍权重
     （M = 32：18.6 ms），而参考路径"把码转成 bf16 + oneDNN GEMM"几乎不随 M 变（33 ms）；M = 64 两者持平；
   - 激活是 fp32 或 fp16：内核走通用的逐元素循环，M = 1 就要 15–21 ms、每多一行再加这么多——比直接用 fp32 权重
     慢 3 倍以上，只在 M ≤ 2（fp32）/ M = 1（fp16）时比参考路径（每次把 1600 万个码转成浮点，33–40 ms）快。
   另有一个坑：bf16 的 AVX512 路径按 16 个输入通道一块读 K，不处理尾巴——torch 2.13 上 K = 24 给出错误结果、
   K = 200 且 M ≥ 2 直接段错误。所以只在 in_features % 16 == 0 时用内核（所有 dtype 一律如此，真实模型的 K 都满足）。
   所以 KERNEL_MAX_ROWS 按激活 dtype 给出用内核的最大行数；其余情形走参考路径：F.linear(x, q.to(x.dtype)) · s——
   先矩阵乘再乘 s（第 2 点），与 torchao 的 Int8Tensor 在 weight-only 时的算法相同，任何设备、任何 dtype 都对。
   想在 CPU 上真正变快：模型用 bf16 跑解码。

数值与 torchao 的 `Int8WeightOnlyConfig`（PerRow）逐位相同：码与 scale 由 basics.quantize(w, 8, symmetric=True, axis=0)
给出（s = amax/127.5、fp32 eps 下限、乘倒数再 round-half-even，见 basics.py）。
"""

from __future__ import annotations

import math
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from inference_engine.quantization.basics import dequantize as dequantize_codes
from inference_engine.quantization.basics import quantize, rtn_noise_sqnr, sqnr
from utils.io import is_smoke
from utils.lesson_cli import lesson_args, timing_note

__all__ = ["KERNEL_MAX_ROWS", "Int8WeightOnlyLinear", "linear_int8_kernel", "linear_int8_reference",
           "quantize_int8_weight"]

# CPU 内核的适用范围：激活 dtype -> 用内核的最大行数（展平后的 token 数）。4096×4096、1 线程实测的交叉点
# （见模块说明第 4 点）：bf16 在 M = 64 与参考路径持平；fp32 在 M ≈ 3、fp16 在 M ≈ 2 就输给参考路径
KERNEL_MAX_ROWS = {torch.bfloat16: 32, torch.float32: 2, torch.float16: 1}
# 内核的 bf16 路径按 16 个输入通道一块处理、没有尾巴：K 不是 16 的倍数时结果错或段错误（见模块说明第 4 点）
KERNEL_K_MULTIPLE = 16


def quantize_int8_weight(weight: Tensor) -> tuple[Tensor, Tensor]:
    """(N, K) 浮点权重 -> (码 (N, K) int8, scale (N,) fp32)：对称、每个输出通道一个 scale。"""
    if not isinstance(weight, Tensor) or weight.dim() != 2:
        raise ValueError(f"权重必须是 (out_features, in_features) 的二维张量，收到 {getattr(weight, 'shape', type(weight))}")
    codes, scale, _ = quantize(weight.detach(), 8, symmetric=True, axis=0)
    return codes, scale.reshape(-1)


def linear_int8_kernel(x: Tensor, qweight: Tensor, scales: Tensor, bias: Tensor | None = None) -> Tensor:
    """CPU 内核：y = (x · qᵀ) ⊙ s (+ b)，x 是 (M, K)。s 转成 x 的 dtype（内核要求两者相同）。"""
    y = torch._weight_int8pack_mm(x.contiguous(), qweight, scales.to(x.dtype))
    return y if bias is None else y + bias.to(y.dtype)


def linear_int8_reference(x: Tensor, qweight: Tensor, scales: Tensor, bias: Tensor | None = None) -> Tensor:
    """参考路径：先用码做矩阵乘、再每个输出通道乘 s（s 提到求和号外，见模块说明第 2 点），任何设备与 dtype。"""
    y = F.linear(x, qweight.to(x.dtype)) * scales.to(x.dtype)
    return y if bias is None else y + bias.to(y.dtype)


def _has_int8_kernel() -> bool:
    return hasattr(torch, "_weight_int8pack_mm")


def _check_options(options: dict) -> None:
    if options:
        raise ValueError(f"int8 方案没有可调的选项，收到 {sorted(options)}：去掉它们（分组量化请用 scheme='int4'）")


class Int8WeightOnlyLinear(nn.Module):
    """替换 nn.Linear：buffers qweight (out, in) int8、scales (out,) fp32、bias（可无）。forward 的输出 dtype 同 x。"""

    scheme: ClassVar[str] = "int8"

    def __init__(self, in_features: int, out_features: int, bias: bool = True, *, device=None):
        super().__init__()
        if min(in_features, out_features) < 1:
            raise ValueError(f"in_features={in_features}、out_features={out_features} 都必须是正整数")
        self.in_features, self.out_features = in_features, out_features
        self.register_buffer("qweight", torch.zeros(out_features, in_features, dtype=torch.int8, device=device))
        self.register_buffer("scales", torch.zeros(out_features, dtype=torch.float32, device=device))
        self.register_buffer("bias", torch.zeros(out_features, device=device) if bias else None)

    @classmethod
    def from_float(cls, linear: nn.Module, *, calib_inputs: Tensor | None = None, **options) -> Int8WeightOnlyLinear:
        """量化一个 nn.Linear（RTN 不需要校准数据，calib_inputs 被忽略）。"""
        if not isinstance(linear, nn.Linear):
            raise ValueError(f"只能量化 nn.Linear，收到 {type(linear).__name__}：其他模块类型请保留浮点")
        _check_options(options)
        layer = cls(linear.in_features, linear.out_features, linear.bias is not None, device=linear.weight.device)
        layer.qweight, layer.scales = quantize_int8_weight(linear.weight)
        if linear.bias is not None:
            layer.bias = linear.bias.detach().clone()
        return layer

    @classmethod
    def empty(cls, in_features: int, out_features: int, bias: bool, **options) -> Int8WeightOnlyLinear:
        """形状正确、内容为 0 的层：load_state_dict 之前的空壳。"""
        _check_options(options)
        return cls(in_features, out_features, bias)

    def options(self) -> dict:
        return {}

    def dequantize(self) -> Tensor:
        """它代表的 (out, in) fp32 权重 ŵ = s_j · q_jk。"""
        return dequantize_codes(self.qweight, self.scales[:, None], torch.zeros_like(self.scales[:, None], dtype=torch.int32))

    def use_kernel(self, x2d: Tensor) -> bool:
        """这次 forward 用不用 CPU 内核：CPU、行数 ≤ KERNEL_MAX_ROWS[x 的 dtype]、K 是 16 的倍数（见模块说明第 4 点）。"""
        return (_has_int8_kernel() and x2d.device.type == "cpu" and self.qweight.device.type == "cpu"
                and x2d.shape[0] <= KERNEL_MAX_ROWS.get(x2d.dtype, 0) and self.in_features % KERNEL_K_MULTIPLE == 0)

    def forward(self, x: Tensor) -> Tensor:
        if not isinstance(x, Tensor) or not x.is_floating_point() or x.dim() == 0 or x.shape[-1] != self.in_features:
            raise ValueError(f"输入必须是最后一维为 in_features={self.in_features} 的浮点张量，"
                             f"收到 {getattr(x, 'shape', type(x))} {getattr(x, 'dtype', '')}")
        if x.device != self.qweight.device:
            raise ValueError(f"输入在 {x.device}、量化权重在 {self.qweight.device}：先把层 .to(x.device)")
        x2d = x.reshape(-1, self.in_features)  # (M, K)，M = 展平的 token 数
        fn = linear_int8_kernel if self.use_kernel(x2d) else linear_int8_reference
        return fn(x2d, self.qweight, self.scales, self.bias).reshape(*x.shape[:-1], self.out_features)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}"


# ---------------------------------------------------------------------------------------------------
# 演示：量化一个 Linear，与 fp32 和 torchao 对照，再看一眼 M = 1 的速度
# ---------------------------------------------------------------------------------------------------


def main() -> None:
    from utils.torch_playground import benchmark_interleaved, setup_seed

    setup_seed(0)
    n, k = (64, 256) if is_smoke() else (4096, 4096)
    linear = nn.Linear(k, n)
    layer = Int8WeightOnlyLinear.from_float(linear)
    x = torch.randn(8, k)
    with torch.no_grad():
        y_ref = linear(x)
        y = layer(x)
    print(f"Linear {k}→{n}：权重 {linear.weight.numel() * 4 / 2**20:.2f} MiB (fp32) → "
          f"{(layer.qweight.numel() + layer.scales.numel() * 4) / 2**20:.2f} MiB (int8 + scales)")
    print(f"权重 SQNR {sqnr(linear.weight, layer.dequantize()):.2f} dB，输出 SQNR（fp32 激活）{sqnr(y_ref, y):.2f} dB"
          f"（预期：只由步长算的 {rtn_noise_sqnr(linear.weight.detach(), layer.scales[:, None]):.2f} dB；"
          f"nn.Linear 的均匀初始化理论上 10·log10(4·127.5²) = {10 * math.log10(4 * 127.5**2):.2f} dB）")
    try:
        from torchao.quantization import Int8WeightOnlyConfig, quantize_
    except ImportError:
        print("torchao 不可用：跳过逐位对照")
    else:
        ao = nn.Linear(k, n)
        ao.load_state_dict(linear.state_dict())
        quantize_(ao, Int8WeightOnlyConfig())
        same = torch.equal(ao.weight.qdata, layer.qweight) and torch.equal(ao.weight.scale.flatten(), layer.scales)
        with torch.no_grad():
            rel = ((ao(x) - y).abs().max() / ao(x).abs().max()).item()
        print(f"与 torchao Int8WeightOnlyConfig：码与 scale 逐位相同 = {same}，输出相对差 {rel:.1e}")
    with torch.no_grad():
        xb = x[:1].bfloat16()
        y_bf16 = layer(xb)
        print(f"bf16 激活（M = 1，{'CPU 内核' if layer.use_kernel(xb) else '参考路径'}）输出 SQNR {sqnr(y_ref[:1], y_bf16):.2f} dB")
        if _has_int8_kernel():
            # 1 个线程计时：在被别的进程占满的 2 核机器上，2 线程的内核每次调用都要等另一个线程被调度（实测 +16 ms）
            threads = torch.get_num_threads()
            torch.set_num_threads(1)
            w_bf16 = linear.weight.detach().bfloat16()
            t_fp32, t_bf16, t_kernel = benchmark_interleaved(
                [lambda: F.linear(x[:1], linear.weight), lambda: F.linear(xb, w_bf16),
                 lambda: linear_int8_kernel(xb, layer.qweight, layer.scales)],
                warmup=2, reps=3 if is_smoke() else 15)
            torch.set_num_threads(threads)
            print(f"M = 1（1 线程）：fp32 F.linear {t_fp32:.3f} ms，bf16 F.linear {t_bf16:.3f} ms，"
                  f"int8 内核 {t_kernel:.3f} ms（{t_fp32 / t_kernel:.2f}× vs fp32；完整对比见 benchmarks/quantization_matmul.py）")
            print(timing_note("benchmarks/quantization_matmul.py"))


if __name__ == "__main__":
    lesson_args(__doc__)
    main()
