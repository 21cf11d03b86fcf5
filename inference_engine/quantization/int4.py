"""int4 只量化权重：分组（group 32/64/128）的非对称 4 位码，tinygemm 约定，两个码压进一个字节。

1. 为什么要分组。4 位只有 16 个格点，步长是 int8 的 17 倍：一整行（几千个输入通道）共用一个 scale 时，
   行里的一个离群值就把步长撑大、其余权重全挤在中间几个格点上（basics.py 的直方图）。沿输入维每 g 个权重一组、
   每组自己的 (s, z)，离群值只连累自己那一组；代价是每组多存 2 个 bf16：每个权重多 32/g 位（g = 128 时 4.25 位/权重）。
2. tinygemm 约定（torchao `get_groupwise_affine_qparams` / `groupwise_affine_quantize_tensor`，
   以及 CPU/GPU 内核 `_weight_int4pack_mm*` 用的格式）：每组
       s = max(x_max − x_min, ·) / 15（下限 1e-6），  z = x_min + 8·s，
       q = clamp(round((w − (z − 8·s)) / s), 0, 15)，  ŵ = (q − 8)·s + z。
   它最小化的仍是逐元素的舍入误差，选 (s, z) 让 16 个格点恰好铺满 [x_min, x_max]：最小值落在码 0、最大值落在码 15，
   没有截断误差，每个元素误差 ≤ s/2。与 basics.py 的"整数零点"非对称量化相比有两点不同：
   - 零点 z 是浮点数、不舍入：网格紧贴 [x_min, x_max]，不必为了"0 能被精确表示"把网格平移半格，也不必把 0 包进范围
     （权重里没有 padding 那种必须精确为 0 的值）；全正或全负的组步长因此更小。
   - z 存的是**码 8（网格中点）对应的值**而不是码 0 的：内核把码当成 q − 8 ∈ [−8, 7] 的有符号数，
     ŵ = (q − 8)·s + z 是一次乘加（fma），z 的数值也落在组的中间、bf16 存它的相对误差小。
   s、z 先在权重的 dtype 里算、再转成 qparams 的 dtype（默认 bf16，与 torchao 相同），**量化码用转换后的 s、z 算**：
   这样码与存下来的 (s, z) 自洽，反量化不会因为 s 被舍入过而整体偏移。
3. 两个码一个字节（qweight：(N, K/2) uint8）：**低 4 位放偶数列 k = 2i，高 4 位放奇数列 k = 2i + 1**。
   按内存顺序读字节、每个字节先低后高，得到的正好是 0, 1, 2, … 列——与小端序"低位在前"一致，解包只需
   `stack([b & 0xF, b >> 4], -1).reshape(N, K)`。（torchao 在 CUDA 上用的是偶数列放高 4 位；
   CPU 内核的布局又不同：(N/64, K, 32) 字节，第 n 行和第 n+32 行共用一个字节——见下一点。）
   这个可移植的布局是 state_dict 里存的、随处可读的"真相"；内核要的布局由它转换而来。
4. CPU 内核 `torch._weight_int4pack_mm_for_cpu(x, packed, g, scales_and_zeros)`：packed 来自
   `torch._convert_weight_to_int4pack_for_cpu(codes_int32 (N, K), 1)`（第二个参数 innerKTiles 在 CPU 上不用），
   scales_and_zeros 是 (K/g, N, 2) 的 [s, z]，dtype 必须与 x 相同；要求 N % 16 == 0、g ∈ {32, 64, 128, 256}。
   它在寄存器里解包、算 (q − 8)·s + z、乘加，每个权重只从内存读半个字节：M = 1 的解码是带宽瓶颈，
   4096×4096 上 bf16 激活 1.1 ms，fp32 F.linear 4.8 ms（benchmarks/quantization_matmul.py，RESULTS.md 12-03）。
   与 int8 内核一样，只有 bf16 激活走 AVX512 的快路径（fp32 / fp16 激活走通用循环，M = 1 就要 30–47 ms、
   每多一行再加这么多）。它要比的是可读路径（每次调用解包并反量化整个权重，4096×4096 约 200 ms，几乎不随 M 变）：
   bf16 到 M = 512 还是内核快（216 vs 275 ms），fp32 / fp16 到 M = 4 为止——KERNEL_MAX_ROWS 记的就是这些交叉点。
   内核布局在第一次用时从 qweight 转换、缓存在层上（运行时多占 N·K/2 字节；torchao 的 Int4OpaqueTensor
   只存内核布局，省这份内存，但存下的文件换一台机器、换一种 CPU 指令集就未必能读）。
   其余情形走可读路径：解包 → 反量化成 x 的 dtype → F.linear。每次调用都物化整个浮点权重，慢，但任何设备都对。

码、s、z 与 torchao 的参数函数逐位相同（测试对照），输出与 `_weight_int4pack_mm_for_cpu` 一致。
"""

from __future__ import annotations

from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from inference_engine.quantization.basics import rtn_noise_sqnr, sqnr
from utils.io import is_smoke
from utils.lesson_cli import lesson_args, timing_note

__all__ = ["GROUP_SIZES", "KERNEL_MAX_ROWS", "Int4WeightOnlyLinear", "int4_dequantize", "int4_qparams",
           "int4_quantize", "linear_int4_kernel", "linear_int4_reference", "pack_int4", "pack_scales_and_zeros",
           "to_kernel_layout", "unpack_int4"]

GROUP_SIZES = (32, 64, 128, 256)  # CPU / GPU tinygemm 内核支持的组大小
QMIN, QMAX, MID = 0, 15, 8  # 4 位无符号码；MID = (QMAX + QMIN + 1) / 2，内核里的"零"
SCALE_EPS = 1e-6  # torchao get_groupwise_affine_qparams 的默认下限：全相同的一组不会除以 0
QPARAM_DTYPES = {"bfloat16": torch.bfloat16, "float32": torch.float32}
# CPU 内核的适用范围：激活 dtype -> 用内核的最大行数（4096×4096、1 线程实测的交叉点，见模块说明第 4 点）
KERNEL_MAX_ROWS = {torch.bfloat16: 512, torch.float32: 4, torch.float16: 4}


def _check_weight(weight: Tensor, group_size: int) -> None:
    if not isinstance(weight, Tensor) or weight.dim() != 2 or not weight.is_floating_point():
        raise ValueError(f"权重必须是 (out_features, in_features) 的二维浮点张量，收到 {getattr(weight, 'shape', type(weight))}")
    if group_size not in GROUP_SIZES:
        raise ValueError(f"group_size={group_size!r} 不支持：int4 用 {GROUP_SIZES} 之一（tinygemm 内核只认这几种）")
    if weight.shape[1] % group_size:
        raise ValueError(f"group_size={group_size} 不能整除 in_features={weight.shape[1]}：换一个能整除它的组大小"
                         f"（{[g for g in GROUP_SIZES if weight.shape[1] % g == 0] or '没有可用的，这一层请保留浮点或用 int8'}）")
    if not bool(torch.isfinite(weight).all()):
        raise ValueError("权重里有 NaN 或 inf：量化不了，先找出产生它们的地方")


def int4_qparams(weight: Tensor, group_size: int, dtype: torch.dtype = torch.bfloat16) -> tuple[Tensor, Tensor]:
    """每组的 (s, z)，形状都是 (N, K/g)、dtype 为 dtype：s = (max − min)/15，z = min + 8·s（在权重的 dtype 里算）。"""
    _check_weight(weight, group_size)
    n, k = weight.shape
    w = weight.detach().reshape(n, k // group_size, group_size)  # (N, K/g, g)
    w_min, w_max = w.amin(dim=-1), w.amax(dim=-1)
    scale = torch.clamp((w_max - w_min) / float(QMAX - QMIN), min=SCALE_EPS)
    zero = w_min + scale * float(MID)  # 用还没舍入到 dtype 的 s（与 torchao 相同）
    return scale.to(dtype), zero.to(dtype)


def int4_quantize(weight: Tensor, scales: Tensor, zeros: Tensor, group_size: int) -> Tensor:
    """q = clamp(round((w − (z − 8·s)) / s), 0, 15)，返回 (N, K) uint8（每个元素一个码，未打包）。"""
    _check_weight(weight, group_size)
    n, k = weight.shape
    if scales.shape != (n, k // group_size) or zeros.shape != scales.shape:
        raise ValueError(f"scales {tuple(scales.shape)} / zeros {tuple(zeros.shape)} 应是 ({n}, {k // group_size})")
    s, z = scales[..., None], zeros[..., None]  # (N, K/g, 1)
    w_min = z - s * float(MID)  # 码 0 代表的值，在 qparams 的 dtype 里算（与 torchao 相同）
    q = torch.clamp(torch.round((weight.detach().reshape(n, k // group_size, group_size) - w_min) / s), QMIN, QMAX)
    return q.reshape(n, k).to(torch.uint8)


def int4_dequantize(codes: Tensor, scales: Tensor, zeros: Tensor, group_size: int,
                    dtype: torch.dtype = torch.float32) -> Tensor:
    """ŵ = (q − 8)·s + z，在 fp32 里算、最后舍入一次到 dtype。codes 是未打包的 (N, K)。"""
    n, k = codes.shape
    q = codes.to(torch.float32).reshape(n, k // group_size, group_size) - MID
    w = q * scales.to(torch.float32)[..., None] + zeros.to(torch.float32)[..., None]
    return w.reshape(n, k).to(dtype)


def pack_int4(codes: Tensor) -> Tensor:
    """(N, K) 的 4 位码 -> (N, K/2) uint8：低 4 位是偶数列、高 4 位是奇数列。"""
    if codes.dim() != 2 or codes.shape[1] % 2:
        raise ValueError(f"要打包的码必须是列数为偶数的二维张量，收到 {tuple(codes.shape)}")
    if int(codes.min()) < QMIN or int(codes.max()) > QMAX:
        raise ValueError(f"4 位码必须在 [{QMIN}, {QMAX}] 内，收到 [{int(codes.min())}, {int(codes.max())}]")
    c = codes.to(torch.uint8)
    return c[:, 0::2] | (c[:, 1::2] << 4)


def unpack_int4(packed: Tensor) -> Tensor:
    """(N, K/2) uint8 -> (N, K) uint8：每个字节先低 4 位（偶数列）、后高 4 位（奇数列）。"""
    if packed.dtype != torch.uint8 or packed.dim() != 2:
        raise ValueError(f"打包的码必须是二维 uint8，收到 {packed.dtype} {tuple(packed.shape)}")
    return torch.stack([packed & 0xF, packed >> 4], dim=-1).reshape(packed.shape[0], -1)


def pack_scales_and_zeros(scales: Tensor, zeros: Tensor) -> Tensor:
    """(N, K/g) 的 s、z -> 内核要的 (K/g, N, 2)：[..., 0] 是 s，[..., 1] 是 z。"""
    return torch.stack([scales, zeros], dim=-1).transpose(0, 1).contiguous()


def to_kernel_layout(codes: Tensor) -> Tensor:
    """未打包的 (N, K) 码 -> CPU 内核的打包布局（由 torch 决定，随 CPU 指令集可能不同，所以不存盘）。"""
    return torch.ops.aten._convert_weight_to_int4pack_for_cpu(codes.to(torch.int32).contiguous(), 1)


def linear_int4_kernel(x: Tensor, kernel_weight: Tensor, scales_and_zeros: Tensor, group_size: int,
                       bias: Tensor | None = None) -> Tensor:
    """CPU 内核：x (M, K) -> (M, N)。scales_and_zeros 转成 x 的 dtype（内核要求相同）。"""
    y = torch.ops.aten._weight_int4pack_mm_for_cpu(x.contiguous(), kernel_weight, group_size,
                                                   scales_and_zeros.to(x.dtype))
    return y if bias is None else y + bias.to(y.dtype)


def linear_int4_reference(x: Tensor, qweight: Tensor, scales: Tensor, zeros: Tensor, group_size: int,
                          bias: Tensor | None = None) -> Tensor:
    """可读路径：解包 → 反量化成 x 的 dtype → F.linear。任何设备、任何浮点 dtype。"""
    w = int4_dequantize(unpack_int4(qweight), scales, zeros, group_size, dtype=x.dtype)  # (N, K)
    return F.linear(x, w, None if bias is None else bias.to(x.dtype))


def _has_int4_kernel() -> bool:
    return hasattr(torch.ops.aten, "_weight_int4pack_mm_for_cpu") and hasattr(
        torch.ops.aten, "_convert_weight_to_int4pack_for_cpu")


def _parse_options(options: dict) -> tuple[int, str]:
    unknown = set(options) - {"group_size", "scale_dtype"}
    if unknown:
        raise ValueError(f"int4 方案不认识选项 {sorted(unknown)}：可用的是 group_size（{GROUP_SIZES}）与 scale_dtype"
                         f"（{tuple(QPARAM_DTYPES)}）")
    group_size = options.get("group_size", 128)
    scale_dtype = options.get("scale_dtype", "bfloat16")
    if group_size not in GROUP_SIZES:
        raise ValueError(f"group_size={group_size!r} 不支持：int4 用 {GROUP_SIZES} 之一")
    if scale_dtype not in QPARAM_DTYPES:
        raise ValueError(f"scale_dtype={scale_dtype!r} 不支持：用 {tuple(QPARAM_DTYPES)} 之一")
    return group_size, scale_dtype


class Int4WeightOnlyLinear(nn.Module):
    """替换 nn.Linear：buffers qweight (out, in/2) uint8、scales 与 zeros (out, in/g)、bias（可无）。输出 dtype 同 x。"""

    scheme: ClassVar[str] = "int4"

    def __init__(self, in_features: int, out_features: int, bias: bool = True, *, group_size: int = 128,
                 scale_dtype: str = "bfloat16", device=None):
        super().__init__()
        group_size, scale_dtype = _parse_options({"group_size": group_size, "scale_dtype": scale_dtype})
        if min(in_features, out_features) < 1:
            raise ValueError(f"in_features={in_features}、out_features={out_features} 都必须是正整数")
        if in_features % group_size:
            raise ValueError(f"group_size={group_size} 不能整除 in_features={in_features}：换一个能整除它的组大小"
                             f"（{[g for g in GROUP_SIZES if in_features % g == 0] or '没有可用的，这一层请保留浮点或用 int8'}）")
        self.in_features, self.out_features = in_features, out_features
        self.group_size, self.scale_dtype = group_size, scale_dtype
        n_groups, dtype = in_features // group_size, QPARAM_DTYPES[scale_dtype]
        self.register_buffer("qweight", torch.zeros(out_features, in_features // 2, dtype=torch.uint8, device=device))
        self.register_buffer("scales", torch.zeros(out_features, n_groups, dtype=dtype, device=device))
        self.register_buffer("zeros", torch.zeros(out_features, n_groups, dtype=dtype, device=device))
        self.register_buffer("bias", torch.zeros(out_features, device=device) if bias else None)
        self._kernel_cache: tuple | None = None

    @classmethod
    def from_float(cls, linear: nn.Module, *, calib_inputs: Tensor | None = None, **options) -> Int4WeightOnlyLinear:
        """RTN 量化一个 nn.Linear（不需要校准数据，calib_inputs 被忽略）。选项：group_size、scale_dtype。"""
        if not isinstance(linear, nn.Linear):
            raise ValueError(f"只能量化 nn.Linear，收到 {type(linear).__name__}：其他模块类型请保留浮点")
        group_size, scale_dtype = _parse_options(options)
        layer = cls(linear.in_features, linear.out_features, linear.bias is not None, group_size=group_size,
                    scale_dtype=scale_dtype, device=linear.weight.device)
        scales, zeros = int4_qparams(linear.weight, group_size, QPARAM_DTYPES[scale_dtype])
        layer.qweight = pack_int4(int4_quantize(linear.weight, scales, zeros, group_size))
        layer.scales, layer.zeros = scales, zeros
        if linear.bias is not None:
            layer.bias = linear.bias.detach().clone()
        return layer

    @classmethod
    def empty(cls, in_features: int, out_features: int, bias: bool, **options) -> Int4WeightOnlyLinear:
        group_size, scale_dtype = _parse_options(options)
        return cls(in_features, out_features, bias, group_size=group_size, scale_dtype=scale_dtype)

    def options(self) -> dict:
        return {"group_size": self.group_size, "scale_dtype": self.scale_dtype}

    def dequantize(self) -> Tensor:
        """它代表的 (out, in) fp32 权重 ŵ = (q − 8)·s + z。"""
        return int4_dequantize(unpack_int4(self.qweight), self.scales, self.zeros, self.group_size)

    def use_kernel(self, x2d: Tensor) -> bool:
        """这次 forward 用不用 CPU 内核：CPU、行数 ≤ KERNEL_MAX_ROWS[x 的 dtype]、N 是 16 的倍数（内核的要求）。"""
        return (_has_int4_kernel() and x2d.device.type == "cpu" and self.qweight.device.type == "cpu"
                and x2d.shape[0] <= KERNEL_MAX_ROWS.get(x2d.dtype, 0) and self.out_features % 16 == 0)

    def kernel_weight(self, dtype: torch.dtype) -> tuple[Tensor, Tensor]:
        """内核布局的权重与 (K/g, N, 2) 的 scales_and_zeros，按需转换并缓存。

        缓存以 buffer 的存储地址与版本号为键：load_state_dict（就地 copy_）、.to()（新张量）之后自动重新转换。
        """
        key = tuple((t.data_ptr(), t._version) for t in (self.qweight, self.scales, self.zeros)) + (dtype,)
        if self._kernel_cache is None or self._kernel_cache[0] != key:
            packed = to_kernel_layout(unpack_int4(self.qweight))
            self._kernel_cache = (key, packed, pack_scales_and_zeros(self.scales, self.zeros).to(dtype))
        return self._kernel_cache[1], self._kernel_cache[2]

    def forward(self, x: Tensor) -> Tensor:
        if not isinstance(x, Tensor) or not x.is_floating_point() or x.dim() == 0 or x.shape[-1] != self.in_features:
            raise ValueError(f"输入必须是最后一维为 in_features={self.in_features} 的浮点张量，"
                             f"收到 {getattr(x, 'shape', type(x))} {getattr(x, 'dtype', '')}")
        if x.device != self.qweight.device:
            raise ValueError(f"输入在 {x.device}、量化权重在 {self.qweight.device}：先把层 .to(x.device)")
        x2d = x.reshape(-1, self.in_features)  # (M, K)
        if self.use_kernel(x2d):
            packed, scales_and_zeros = self.kernel_weight(x2d.dtype)
            y = linear_int4_kernel(x2d, packed, scales_and_zeros, self.group_size, self.bias)
        else:
            y = linear_int4_reference(x2d, self.qweight, self.scales, self.zeros, self.group_size, self.bias)
        return y.reshape(*x.shape[:-1], self.out_features)

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}, "
                f"group_size={self.group_size}, scale_dtype={self.scale_dtype}")


# ---------------------------------------------------------------------------------------------------
# 演示：组大小对 SQNR 与每权重位数的影响；可读路径 vs CPU 内核
# ---------------------------------------------------------------------------------------------------


def main() -> None:
    from utils.torch_playground import benchmark_interleaved, setup_seed

    setup_seed(0)
    n, k = (64, 256) if is_smoke() else (4096, 4096)
    linear = nn.Linear(k, n)
    with torch.no_grad():
        linear.weight.normal_(0, 0.02)
    x = torch.randn(4, k)
    with torch.no_grad():
        y_ref = linear(x)
    print(f"Linear {k}→{n}，N(0, 0.02²) 权重，int4 RTN（tinygemm 约定，bf16 的 s、z）：")
    print(f"{'group':>6}{'位/权重':>10}{'权重 SQNR':>12}{'输出 SQNR':>12}{'预测':>10}")
    for g in (32, 64, 128):
        layer = Int4WeightOnlyLinear.from_float(linear, group_size=g)
        with torch.no_grad():
            y = layer(x)
        bits = 4 + 2 * 16 / g
        predicted = rtn_noise_sqnr(linear.weight.detach(), layer.scales.float())
        print(f"{g:>6}{bits:>10.3f}{sqnr(linear.weight, layer.dequantize()):>11.2f} {sqnr(y_ref, y):>11.2f}"
              f"{predicted:>10.2f}")
    print("（预测 = basics.rtn_noise_sqnr：误差在 [−s/2, s/2] 上均匀、只由各组步长 s = (max − min)/15 算出。"
          "组越小，组内的 max − min 越接近 σ 的小倍数（32 个高斯约 4.1σ、128 个约 5.2σ），SQNR 越高，但每权重的位数越多；"
          "默认配置 4096×4096 的权重 SQNR 实测 g32/g64/g128 = 22.1/20.9/20.0 dB）")
    if not _has_int4_kernel():
        print("这个 torch 没有 _weight_int4pack_mm_for_cpu：只能走可读路径")
        return
    xb = x[:1].bfloat16()
    with torch.no_grad():
        packed, sz = layer.kernel_weight(torch.float32)
        y_kernel = linear_int4_kernel(x, packed, sz, layer.group_size, layer.bias)
        y_readable = linear_int4_reference(x, layer.qweight, layer.scales, layer.zeros, layer.group_size, layer.bias)
        print(f"fp32：内核 vs 可读路径 max|Δ| = {(y_kernel - y_readable).abs().max().item():.2e}"
              f"（输出尺度 {y_readable.abs().max().item():.2f}）")
        threads = torch.get_num_threads()
        torch.set_num_threads(1)  # 1 线程计时（见 int8.py main 的说明）
        packed_b, sz_b = layer.kernel_weight(torch.bfloat16)
        t_fp32, t_readable, t_kernel = benchmark_interleaved(
            [lambda: F.linear(x[:1], linear.weight),
             lambda: linear_int4_reference(xb, layer.qweight, layer.scales, layer.zeros, layer.group_size),
             lambda: linear_int4_kernel(xb, packed_b, sz_b, layer.group_size)],
            warmup=2, reps=3 if is_smoke() else 10)
        torch.set_num_threads(threads)
    print(f"M = 1（1 线程）：fp32 F.linear {t_fp32:.3f} ms，int4 可读路径（bf16）{t_readable:.3f} ms，"
          f"int4 内核（bf16）{t_kernel:.3f} ms（{t_fp32 / t_kernel:.2f}× vs fp32）")
    print(timing_note("benchmarks/quantization_matmul.py"))


if __name__ == "__main__":
    lesson_args(__doc__)
    main()
