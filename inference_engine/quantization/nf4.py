"""NF4（NormalFloat4，QLoRA 的 4 位数据类型）：按正态分位数放 16 个码，分块 absmax，两个码一个字节，可选双重量化。

读法（自上而下）：1. 码本 nf4_codebook（从正态分位数推出来，与 bitsandbytes 发布的常数逐位相同）→
2. 分块 absmax 量化 / 反量化（通用：NF4 的 16 个码与双重量化的 256 个码共用）与打包 → 3. 双重量化 →
4. NF4Linear → 5. main()：码本对照、与 bitsandbytes 逐位对照、与 int4 RTN 比 SQNR、码的占用直方图。

## 1. 为什么"按分位数"放码

预训练权重近似零均值正态 N(0, σ²)，σ 因层、因块而异。先把每块除以它的最大绝对值 absmax，块里的值落在 [−1, 1]，
σ 的差别被除掉了，于是所有块能共用一张固定的码本。int4 的均匀网格在 [−1, 1] 上等间距放 16 个点：正态分布的
尾巴里几乎没有权重，那里的码很少被用到，0 附近的码却挤满了权重——4 位没用满。

分位数量化（quantile quantization）反过来：让 2^k 个区间在分布下**概率相等**，每个码被用到的次数相同，
码的熵达到上限 k 位——这是 QLoRA 说的"信息论意义上最优"：对正态数据，每个码承载的信息最多。
（注意它不是"均方误差最小"：那是 Lloyd–Max 量化器；等概率的码在尾部放得偏稀，但它与数据无关、只依赖分布形状，
而且实测 SQNR 已经超过同样元数据的 int4，见 main()。实际的占用也不是完全平的：码本的 ±1 对应 ±1.85σ，而 64 个正态数的
最大绝对值平均约 2.6σ，除以 absmax 后分布比码本假设的窄，中间的码用得多一些——熵约 3.88 位，对称 int4 约 3.59 位。）

## 2. 码本的推导（QLoRA 附录；bitsandbytes.functional.create_normal_map）

标准正态的分位函数 Φ⁻¹（probit，torch.special.ndtri）把概率 p 映射到 x：P(Z ≤ x) = p。
- 两端 Φ⁻¹(0) = −∞、Φ⁻¹(1) = +∞，不能直接取；n 个等概率区间里最外一个区间的"中心"在概率 1 − 1/(2n) 处。
  NF4 取 n = 15 与 n = 16 两种的平均作为最外一点的概率：offset = ½[(1 − 1/30) + (1 − 1/32)] = 0.96770833…，
  bitsandbytes 取 7 位 0.9677083（Φ⁻¹(offset) ≈ 1.848：码本覆盖到约 ±1.85σ，再外面的值由 absmax 兜住）。
- 要**精确的 0**：padding、被剪枝的权重、本来就是 0 的值必须量化成 0。对称地放 16 个点做不到（偶数个点不含 0），
  所以把两半分开做：正半边在 [0.5, offset] 上等距取 9 个概率、去掉 0.5（Φ⁻¹(0.5) = 0）→ 8 个正值；负半边取 8 个、
  去掉 0.5 → 7 个负值（取负号）；再加一个 0。共 7 + 1 + 8 = 16 个，非对称（正半边多一个码）。
- 最后除以最大值，归一化到 [−1, 1]：正负两端都是 ±Φ⁻¹(offset)，所以恰好是 −1 和 1。
按 bitsandbytes 的运算顺序（概率在 fp32 里 linspace、Φ⁻¹ 在 fp64 里算、转 fp32 后再归一化）得到的 16 个 fp32
与它发布的常数逐位相同；用不舍入的 offset 则差 < 4e-7（测试两样都查）。

## 3. 分块 absmax、打包

- 块大小 64：每 64 个权重一个 fp32 absmax，元数据 32/64 = 0.5 位/权重。块越小，一个离群值"连累"的权重越少。
  量化 = 把 w/absmax 映射到码本里最近的值：码本有序，最近邻 = 与相邻两码中点比较（bucketize），与 bitsandbytes 相同；
  w/absmax 用 w · (1/absmax) 算（乘倒数，与 bitsandbytes 逐位相同）。
- 两个 4 位码一个字节：偶数下标放高 4 位、奇数下标放低 4 位（bitsandbytes 的顺序，测试里解包它的字节核对）。

## 4. 双重量化（double quantization，QLoRA）

absmax 本身是 fp32，0.5 位/权重；65B 模型上这就是约 4 GB。QLoRA 把它们再量化一次：减去均值（absmax 全为正，
居中后才能用满有符号的 8 位码），每 256 个 absmax 一块，用 8 位"动态"码本（符号 + 十进制动态指数 + 线性小数，
Dettmers 2015：越靠近 0 越密）量化，每块再存一个 fp32 的二级 absmax。元数据变成 8/64 + 32/(64·256) ≈ 0.127 位/权重，
每个权重省 0.373 位。误差：8 位动态码相对误差约 1%，absmax 的误差直接乘到整块权重上，但与 4 位码本身的误差比很小。
bitsandbytes 的 CPU 版 8 位量化用近似的二分查找（csrc/common.cpp），约 0.2% 的 absmax 码选到次近的码；这里用精确的
最近邻，所以码逐位对照只对 4 位部分做，双重量化部分测"我们到码本的距离从不大于它的"。

## 5. 前向

这里把整块权重反量化成浮点、再 F.linear：读得懂、结果与 bitsandbytes 的 matmul_4bit 相同。真正的 4 位 kernel
（bitsandbytes 的 gemv_4bit、Marlin）在寄存器里边解码边乘，从显存只读 4.5（或 4.127）位/权重——省下的是带宽与显存；
QLoRA 的用法是把冻结的底座权重存成 NF4、在上面训练 LoRA 适配器。
"""

from __future__ import annotations

import math
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from utils.lesson_cli import lesson_args

__all__ = [
    "NF4Linear",
    "NF4_OFFSET",
    "code_entropy_bits",
    "dequantize_blockwise",
    "dynamic_map_8bit",
    "nf4_codebook",
    "pack_4bit",
    "quantize_blockwise",
    "unpack_4bit",
]

# ½[(1 − 1/(2·15)) + (1 − 1/(2·16))] = 0.96770833…，bitsandbytes 与 QLoRA 用它的 7 位舍入
NF4_OFFSET = 0.9677083


# ---------------------------------------------------------------------------------------------------
# 1. 码本
# ---------------------------------------------------------------------------------------------------


def nf4_codebook(offset: float = NF4_OFFSET) -> Tensor:
    """16 个有序的 fp32 值：7 个负值、精确的 0、8 个正值，归一化到 [−1, 1]（推导见模块文档第 2 节）。"""
    if not 0.5 < offset < 1.0:
        raise ValueError(f"offset={offset} 必须在 (0.5, 1) 里：它是最外一个码对应的累积概率（NF4 用 0.9677083）")
    # 概率在 fp32 里等距取（与 bitsandbytes 的 torch.linspace 默认 dtype 相同），Φ⁻¹ 在 fp64 里算
    positive = torch.special.ndtri(torch.linspace(offset, 0.5, 9)[:-1].double())  # 8 个：Φ⁻¹(offset) … > 0
    negative = -torch.special.ndtri(torch.linspace(offset, 0.5, 8)[:-1].double())  # 7 个
    values = torch.cat([negative, torch.zeros(1, dtype=torch.float64), positive]).float().sort().values
    return values / values.max()


def dynamic_map_8bit() -> Tensor:
    """双重量化用的 256 个有序 fp32 值（有符号的 8 位动态码，bitsandbytes.functional.create_dynamic_map 的默认参数）。

    第 i 段（i = 0..6）是 10^(i−6) 量级：把 [0.1, 1] 等分成 2^i 份、取每份的中点，正负各一份；
    越小的量级份数越少——相对精度大致恒定，像浮点数一样"靠近 0 越密"。7 段共 2·(1+2+…+64) = 254 个，再加 0 和 1。"""
    values = [0.0, 1.0]
    for i in range(7):
        edges = torch.linspace(0.1, 1, 2**i + 1, dtype=torch.float32)
        means = (edges[:-1] + edges[1:]) / 2.0
        magnitude = 10 ** (i - 6)  # 乘法在 fp32 里做（与 bitsandbytes 同样的舍入，码本逐位相同）
        values += (magnitude * means).tolist() + (-magnitude * means).tolist()
    return torch.tensor(sorted(values), dtype=torch.float32)


# ---------------------------------------------------------------------------------------------------
# 2. 分块 absmax 量化（16 码的 NF4 与 256 码的双重量化共用）与 4 位打包
# ---------------------------------------------------------------------------------------------------


def quantize_blockwise(x: Tensor, code: Tensor, block_size: int) -> tuple[Tensor, Tensor]:
    """x 拉平后每 block_size 个一块：absmax = max|x|（fp32），码 = 码本里离 x/absmax 最近的值的下标（uint8）。

    返回 (codes (numel,) uint8, absmax (⌈numel/block_size⌉,) fp32)。最后一块不满时补 0（不改变它的 absmax）。"""
    flat = x.reshape(-1).float()
    n = flat.numel()
    blocks = F.pad(flat, (0, (-n) % block_size)).reshape(-1, block_size)
    absmax = blocks.abs().amax(dim=1)
    # 全零的块 absmax = 0：clamp 到最小的正规数，0 · (1/tiny) = 0 → 码是 0 对应的那个值
    scaled = torch.clamp(blocks * (1.0 / absmax.clamp(min=1e-38))[:, None], -1, 1)
    midpoints = (code[:-1] + code[1:]) / 2  # 码本有序：最近邻 = 落在哪两个中点之间
    codes = torch.bucketize(scaled, midpoints.to(scaled.device)).to(torch.uint8)
    return codes.reshape(-1)[:n], absmax


def dequantize_blockwise(codes: Tensor, absmax: Tensor, code: Tensor, block_size: int) -> Tensor:
    """quantize_blockwise 的逆：code[codes] · absmax[块号]，fp32，形状 (numel,)。"""
    n = codes.numel()
    values = code.to(absmax.device)[codes.reshape(-1).long()]
    values = F.pad(values, (0, (-n) % block_size)).reshape(-1, block_size) * absmax[:, None]
    return values.reshape(-1)[:n]


def pack_4bit(codes: Tensor) -> Tensor:
    """(..., 2m) 个 0..15 的码 -> (..., m) 字节：偶数下标在高 4 位，奇数下标在低 4 位（bitsandbytes 的顺序）。"""
    if codes.shape[-1] % 2:
        raise ValueError(f"4 位打包需要最后一维是偶数，收到 {tuple(codes.shape)}")
    codes = codes.to(torch.uint8)
    return (codes[..., 0::2] << 4) | codes[..., 1::2]


def unpack_4bit(packed: Tensor) -> Tensor:
    """pack_4bit 的逆：(..., m) 字节 -> (..., 2m) 个码。"""
    return torch.stack([packed >> 4, packed & 0x0F], dim=-1).reshape(*packed.shape[:-1], -1)


# ---------------------------------------------------------------------------------------------------
# 3-4. 模块（双重量化在 from_float / _absmax 里）
# ---------------------------------------------------------------------------------------------------


def _check_block(name: str, value, even: bool) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 2 or (even and value % 2):
        raise ValueError(f"{name}={value!r} 必须是{'偶数的' if even else ''}正整数（NF4 常用 64，双重量化常用 256）")
    return value


_OPTIONS = ("block_size", "double_quant", "dq_block_size")


def _check_options(options: dict) -> dict:
    unknown = sorted(set(options) - set(_OPTIONS))
    if unknown:
        raise ValueError(f"NF4Linear 不认识选项 {unknown}：可用的是 {list(_OPTIONS)}")
    return options


class NF4Linear(nn.Module):
    """替换 nn.Linear 的 NF4 权重量化模块，y = x · Ŵᵀ + b，Ŵ = codebook[码] · absmax[块]。

    buffer：weight_packed uint8 (out, in/2)；不做双重量化时 absmax fp32 (块数,)；做时 absmax_codes uint8 (块数,)、
    absmax_scales fp32 (⌈块数/dq_block_size⌉,)、absmax_offset fp32 (1,)；bias fp32 (out,)（原层有偏置时）。"""

    scheme: ClassVar[str] = "nf4"

    def __init__(self, in_features: int, out_features: int, bias: bool, block_size: int = 64,
                 double_quant: bool = False, dq_block_size: int = 256):
        super().__init__()
        if in_features <= 0 or out_features <= 0:
            raise ValueError(f"in_features / out_features 必须为正，收到 {in_features} / {out_features}")
        self.block_size = _check_block("block_size", block_size, even=True)
        if in_features % block_size:
            fits = [b for b in (16, 32, 64, 128, 256) if in_features % b == 0]
            fix = (f"换一个能整除 {in_features} 的块大小：{'、'.join(map(str, fits))}" if fits else
                   f"{in_features} 不是 16 的倍数，没有常用的块大小能整除它：这一层请保留浮点或用 int8")
            raise ValueError(f"block_size={block_size} 不能整除 in_features={in_features}：每块必须落在同一行里；{fix}")
        if not isinstance(double_quant, bool):
            raise ValueError(f"double_quant 必须是 True / False，收到 {double_quant!r}")
        self.dq_block_size = _check_block("dq_block_size", dq_block_size, even=False)
        self.in_features, self.out_features, self.double_quant = in_features, out_features, double_quant
        n_blocks = in_features * out_features // block_size
        self.register_buffer("weight_packed", torch.zeros(out_features, in_features // 2, dtype=torch.uint8))
        if double_quant:
            self.register_buffer("absmax_codes", torch.zeros(n_blocks, dtype=torch.uint8))
            self.register_buffer("absmax_scales", torch.zeros(math.ceil(n_blocks / dq_block_size), dtype=torch.float32))
            self.register_buffer("absmax_offset", torch.zeros(1, dtype=torch.float32))
            self.register_buffer("dq_code", dynamic_map_8bit(), persistent=False)
        else:
            self.register_buffer("absmax", torch.zeros(n_blocks, dtype=torch.float32))
        self.register_buffer("bias", torch.zeros(out_features, dtype=torch.float32) if bias else None)
        self.register_buffer("codebook", nf4_codebook(), persistent=False)  # 常数，不进 state_dict

    @classmethod
    def from_float(cls, linear: nn.Module, *, calib_inputs: Tensor | None = None, **options) -> NF4Linear:
        """NF4 与数据无关：calib_inputs 被忽略（接口与其他方案一致，apply.py 可以统一调用）。"""
        if not isinstance(linear, nn.Linear):
            raise ValueError(f"NF4Linear 只能替换 nn.Linear，收到 {type(linear).__name__}；其他模块请保持浮点")
        module = cls(linear.in_features, linear.out_features, linear.bias is not None, **_check_options(options))
        with torch.no_grad():
            weight = linear.weight.detach().float()
            if not torch.isfinite(weight).all():
                raise ValueError("权重里有 NaN / inf，无法量化：先检查这个层的 checkpoint")
            codes, absmax = quantize_blockwise(weight, module.codebook, module.block_size)
            module.weight_packed.copy_(pack_4bit(codes.reshape(weight.shape)))
            if module.double_quant:
                offset = absmax.mean()  # absmax 全为正：减去均值再用有符号的 8 位码
                dq_codes, dq_scales = quantize_blockwise(absmax - offset, module.dq_code, module.dq_block_size)
                module.absmax_codes.copy_(dq_codes)
                module.absmax_scales.copy_(dq_scales)
                module.absmax_offset.fill_(offset.item())
            else:
                module.absmax.copy_(absmax)
            if linear.bias is not None:
                module.bias.copy_(linear.bias.detach().float())
        return module.to(linear.weight.device)

    @classmethod
    def empty(cls, in_features: int, out_features: int, bias: bool, **options) -> NF4Linear:
        return cls(in_features, out_features, bias, **_check_options(options))

    def options(self) -> dict:
        return {"block_size": self.block_size, "double_quant": self.double_quant, "dq_block_size": self.dq_block_size}

    def block_absmax(self) -> Tensor:
        """每块的 absmax（fp32）；双重量化时先还原：dq_code[码] · 二级 absmax + 均值。"""
        if not self.double_quant:
            return self.absmax
        return dequantize_blockwise(self.absmax_codes, self.absmax_scales, self.dq_code,
                                    self.dq_block_size) + self.absmax_offset

    def dequantize(self) -> Tensor:
        codes = unpack_4bit(self.weight_packed)  # (out, in)
        w = dequantize_blockwise(codes, self.block_absmax(), self.codebook, self.block_size)
        return w.reshape(self.out_features, self.in_features)

    def forward(self, x: Tensor) -> Tensor:
        if x.shape[-1] != self.in_features:
            raise ValueError(f"输入最后一维应为 in_features={self.in_features}，收到形状 {tuple(x.shape)}")
        bias = None if self.bias is None else self.bias.to(x.dtype)
        return F.linear(x, self.dequantize().to(x.dtype), bias)

    def bits_per_weight(self) -> float:
        """存储成本：4 位码 + 元数据（fp32 absmax，或 8 位码 + 二级 fp32 absmax + 一个均值）。"""
        meta_bits = sum(b.numel() * b.element_size() * 8 for name, b in self.named_buffers()
                        if name.startswith("absmax"))
        return 4 + meta_bits / (self.in_features * self.out_features)

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, block_size={self.block_size}, "
                f"double_quant={self.double_quant}")


# ---------------------------------------------------------------------------------------------------
# 5. 演示
# ---------------------------------------------------------------------------------------------------


def code_entropy_bits(codes: Tensor, n_codes: int) -> float:
    """码的经验熵 −Σ p log2 p（位）：16 个码被等概率使用时是 4 位——分位数量化追求的正是这个上限。"""
    p = torch.bincount(codes.reshape(-1).long(), minlength=n_codes).double()
    p = p[p > 0] / p.sum()
    return float(-(p * p.log2()).sum())


def occupancy_figure(nf4_codes: Tensor, int4_codes: Tensor):
    """两种 4 位码各自被用到的比例（柱状图，虚线是等概率的 1/16）。返回 Figure。"""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 3.6), sharey=True)
    for ax, (name, codes) in zip(axes, [("NF4 (quantile codes)", nf4_codes), ("int4 RTN, symmetric absmax", int4_codes)]):
        counts = torch.bincount(codes.reshape(-1).long(), minlength=16).double()
        ax.bar(range(16), (counts / counts.sum()).numpy())
        ax.axhline(1 / 16, color="gray", ls="--", lw=0.8, label="uniform use 1/16")
        ax.set(xlabel="4-bit code (0–15)", ylabel="fraction of weights (Gaussian, block 64)",
               title=f"{name}: entropy {code_entropy_bits(codes, 16):.2f} bits")
        ax.legend(fontsize=8, loc="upper left")
    fig.tight_layout()
    return fig


def _plot_occupancy(nf4_codes: Tensor, int4_codes: Tensor, path) -> None:
    from utils.io import save_figure

    save_figure(occupancy_figure(nf4_codes, int4_codes), path, dpi=110)


def main() -> None:
    from inference_engine.quantization.basics import dequantize, quantize, sqnr
    from utils.io import is_smoke, output_path
    from utils.torch_playground import setup_seed

    setup_seed(0)
    out_f, in_f = (256, 512) if is_smoke() else (2048, 4096)
    ok = True

    code = nf4_codebook()
    exact = nf4_codebook(0.5 * ((1 - 1 / 30) + (1 - 1 / 32)))
    print("NF4 码本（offset = 0.9677083）：", " ".join(f"{v:+.4f}" for v in code.tolist()))
    print(f"  用不舍入的 offset = 0.96770833… 算：与上面最大差 {(exact - code).abs().max().item():.1e}")
    try:
        import bitsandbytes.functional as bnbf

        same = torch.equal(code, bnbf.get_4bit_type("nf4", device="cpu"))
        ok &= same
        print(f"  与 bitsandbytes.functional.get_4bit_type('nf4') 逐位相同={same}")
    except ImportError:
        bnbf = None
        print("  （bitsandbytes 不可用，跳过对照）")

    linear = nn.Linear(in_f, out_f)
    with torch.no_grad():
        linear.weight.normal_(0, 0.02)
    w = linear.weight.detach()
    nf4 = NF4Linear.from_float(linear)
    nf4_dq = NF4Linear.from_float(linear, double_quant=True)
    if bnbf is not None:
        packed, state = bnbf.quantize_4bit(w, blocksize=64, quant_type="nf4")
        same = torch.equal(packed.reshape(-1), nf4.weight_packed.reshape(-1)) and torch.equal(state.absmax, nf4.absmax)
        same_w = torch.equal(bnbf.dequantize_4bit(packed, state), nf4.dequantize())
        ok &= same and same_w
        print(f"  {out_f}×{in_f} 的 N(0, 0.02²) 权重，块 64：打包字节与 absmax 与 bitsandbytes.quantize_4bit 逐位相同={same}，"
              f"反量化逐位相同={same_w}")

    print(f"\n{out_f}×{in_f} 正态权重上的 SQNR（dB）与存储成本（位/权重；NF4 的元数据按 bitsandbytes 存的 fp32，"
          "int4 按 tinygemm 存的 bf16 scale + bf16 零点）：")
    rows = [("NF4 块 64，fp32 absmax", sqnr(w, nf4.dequantize()), nf4.bits_per_weight()),
            ("NF4 块 64 + 双重量化", sqnr(w, nf4_dq.dequantize()), nf4_dq.bits_per_weight())]
    sym_codes = None
    for g in (64, 128):
        for symmetric in (True, False):
            codes, scale, zero = quantize(w, 4, symmetric=symmetric, group_size=g)
            meta = 16 / g if symmetric else 32 / g  # 按 tinygemm 的存法：bf16 scale（非对称再加一个 bf16 零点）
            kind = "对称 absmax" if symmetric else "非对称 min-max"
            rows.append((f"int4 RTN g{g} {kind}", sqnr(w, dequantize(codes, scale, zero)), 4 + meta))
            if symmetric and g == 64:
                sym_codes = codes.to(torch.int16) + 8  # −8..7 → 0..15，画占用图
    for name, db, bits in rows:
        print(f"  {db:6.2f} dB  {bits:.3f} 位  {name}")
    nf4_db, dq_db, int4_sym64 = rows[0][1], rows[1][1], rows[2][1]
    int4_asym128 = rows[5][1]
    ok &= nf4_db > int4_sym64 and dq_db > int4_asym128 and nf4_db - dq_db < 0.1
    print(f"  同样的分块（每 64 个一个 absmax）：NF4 比对称 int4 高 {nf4_db - int4_sym64:.2f} dB；"
          f"双重量化只损失 {nf4_db - dq_db:.3f} dB、省 {nf4.bits_per_weight() - nf4_dq.bits_per_weight():.3f} 位/权重，"
          f"\n  于是 NF4 + 双重量化用更少的位数（{nf4_dq.bits_per_weight():.3f} < 4.25）比非对称 int4 g128 高 "
          f"{dq_db - int4_asym128:.2f} dB；非对称 int4 g64 每组多一个零点（4.5 位），与 NF4 不相上下")

    nf4_codes = unpack_4bit(nf4.weight_packed)
    print(f"  码的熵：NF4 {code_entropy_bits(nf4_codes, 16):.3f} 位，对称 int4 {code_entropy_bits(sym_codes, 16):.3f} 位"
          "（上限 4 位：等概率地用满每个码）")
    path = output_path("figures", "nf4_code_occupancy.png")
    _plot_occupancy(nf4_codes, sym_codes, path)
    print(f"  图：{path}")
    if not ok:
        raise SystemExit("NF4 的结果不符合预期（见上面的数字）")


if __name__ == "__main__":
    lesson_args(__doc__)
    main()
