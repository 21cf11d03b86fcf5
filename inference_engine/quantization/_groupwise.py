"""GPTQ 与 AWQ 共用的小零件：按组（group-wise）非对称 RTN 量化、nibble 打包、校准数据检查、一个"先反量化再 matmul"的层。

为什么单独放在这里：GPTQ 与 AWQ 最后存下来的东西一模一样——每个输出行、每 group_size 个输入列一组的
整数码 q ∈ [0, 2^b − 1]、一个 scale 与一个整数零点 z，表示 w ≈ scale · (q − z)。两者的区别只在"码是怎么选出来的"：
RTN 逐元素取最近；GPTQ 按列取最近、再把误差推给还没量化的列；AWQ 先把权重按列缩放、再取最近。
所以网格、打包与 forward 共用一份，差别全部留在 gptq.py / awq.py 里。

网格（与 GPTQ / AWQ 参考实现的整数零点约定相同）：
    lo = min(min(w_g), 0)，hi = max(max(w_g), 0)      # 把 0 包进区间：0 一定能被精确表示（死列、padding 保持为 0）
    scale = (hi − lo) / (2^b − 1)，z = round(−lo / scale) ∈ [0, 2^b − 1]
    q = clamp(round(w / scale) + z, 0, 2^b − 1)，ŵ = scale · (q − z)
区间里每个值的误差 |w − ŵ| ≤ scale / 2；全零的一组取 scale = 1、z = 0（码全是 0，反量化仍是 0）。
与 tinygemm（torchao int4）的"浮点零点"约定只差一次换算：scale·(q − z) = scale·(q − 2^(b−1)) + scale·(2^(b−1) − z)，
即 tinygemm 的 zero = scale·(2^(b−1) − z)，所以这里存下的码也能交给 int4 的 CPU kernel。

参数一律在 float64 里算：GPTQ 在 float64 里逐列量化，RTN 也用同一个函数、同一个 dtype，
"H = I 时 GPTQ 逐位等于 RTN"才能成立（float32 与 float64 算出的 scale 差一个舍入，落在取整边界上的码就会不同）。

打包：bits ≤ 4 时两个码放一个字节，偶数列在高 4 位、奇数列在低 4 位（与 torchao 给 tinygemm 打包的顺序相同：
byte = q[2k] << 4 | q[2k+1]）；3 位也按 4 位存（真正的 3 位打包要把 32 个码塞进 3 个 int32，跨字节的位运算与这里的
教学目的无关）；8 位一码一字节。
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = [
    "SUPPORTED_BITS",
    "GroupwiseQuantLinear",
    "calibration_batches",
    "check_token_count",
    "dequantize_groupwise",
    "group_qparams",
    "pack_codes",
    "quantize_with_qparams",
    "resolve_group_size",
    "rtn_groupwise",
    "unpack_codes",
]

SUPPORTED_BITS = (3, 4, 8)


# ---------------------------------------------------------------------------------------------------
# 选项检查
# ---------------------------------------------------------------------------------------------------


def resolve_group_size(in_features: int, bits: int, group_size: int | None) -> int:
    """检查 bits 与 group_size，返回实际的组大小（None / -1 = 整行一组，即 per-output-channel）。"""
    if isinstance(bits, bool) or not isinstance(bits, int) or bits not in SUPPORTED_BITS:
        raise ValueError(f"bits={bits!r} 不支持：GPTQ / AWQ 这里只做 {SUPPORTED_BITS} 位的整数网格，请改用其中之一")
    if group_size is None or group_size == -1:
        group_size = in_features
    if isinstance(group_size, bool) or not isinstance(group_size, int) or group_size <= 0:
        raise ValueError(f"group_size={group_size!r} 必须是正整数（或 None 表示整行一组）")
    if in_features % group_size != 0:
        divisors = [g for g in (32, 64, 128) if in_features % g == 0]
        hint = f"改用 {divisors}" if divisors else "改用能整除它的组大小"
        raise ValueError(f"group_size={group_size} 不整除 in_features={in_features}：每组必须是完整的 group_size 列，"
                         f"请{hint}，或 group_size=None（整行一组）")
    if bits <= 4 and in_features % 2 != 0:
        raise ValueError(f"in_features={in_features} 是奇数：{bits} 位码两个一字节打包，需要偶数列；请改用 bits=8")
    return group_size


# ---------------------------------------------------------------------------------------------------
# 网格：参数、取整、反量化（全部在调用者给的 dtype 里算，GPTQ 与 RTN 都传 float64）
# ---------------------------------------------------------------------------------------------------


def group_qparams(w: Tensor, bits: int) -> tuple[Tensor, Tensor]:
    """沿最后一维求一组的 (scale, zero)：w (..., k) -> 两个 (...,)。零点是整数值（以浮点存）。"""
    maxq = 2**bits - 1
    zeros_like = torch.zeros((), dtype=w.dtype, device=w.device)
    lo = torch.minimum(w.amin(dim=-1), zeros_like)
    hi = torch.maximum(w.amax(dim=-1), zeros_like)
    span = hi - lo
    # 全零的一组：span = 0，取 scale = 1（lo = 0 ⇒ z = 0，码全为 0，反量化仍是精确的 0）
    scale = torch.where(span > 0, span / maxq, torch.ones_like(span))
    zero = torch.round(-lo / scale)
    return scale, zero


def quantize_with_qparams(w: Tensor, scale: Tensor, zero: Tensor, bits: int) -> Tensor:
    """q = clamp(round(w / scale) + z, 0, 2^b − 1)（整数值的浮点张量；scale、zero 需可广播到 w）。"""
    return torch.clamp(torch.round(w / scale) + zero, 0, 2**bits - 1)


def rtn_groupwise(w: Tensor, bits: int, group_size: int | None) -> tuple[Tensor, Tensor, Tensor]:
    """逐组 round-to-nearest：w (O, I) -> codes (O, I) uint8、scales (O, G)、zeros (O, G)（后两者 float64）。

    这就是"没有校准数据时的 int4"：GPTQ 在 H = I 时退化成它，AWQ 在 α = 0 时退化成它。
    """
    out_features, in_features = w.shape
    gs = resolve_group_size(in_features, bits, group_size)
    wg = w.detach().to(torch.float64).reshape(out_features, in_features // gs, gs)
    scale, zero = group_qparams(wg, bits)                                    # (O, G)
    codes = quantize_with_qparams(wg, scale[..., None], zero[..., None], bits)  # (O, G, gs)
    return codes.reshape(out_features, in_features).to(torch.uint8), scale, zero


def dequantize_groupwise(codes: Tensor, scales: Tensor, zeros: Tensor, group_size: int,
                         dtype: torch.dtype = torch.float32) -> Tensor:
    """ŵ = scale · (q − z)：codes (O, I)、scales / zeros (O, G) -> (O, I)，在 dtype 里算。"""
    out_features, in_features = codes.shape
    q = codes.to(dtype).reshape(out_features, in_features // group_size, group_size)
    w = scales.to(dtype)[..., None] * (q - zeros.to(dtype)[..., None])
    return w.reshape(out_features, in_features)


# ---------------------------------------------------------------------------------------------------
# 打包：两个 4 位码一字节（偶数列在高 4 位）
# ---------------------------------------------------------------------------------------------------


def pack_codes(codes: Tensor, bits: int) -> Tensor:
    """codes (O, I) uint8 -> bits ≤ 4 时 (O, I/2)（byte = q[2k] << 4 | q[2k+1]），8 位时原样。"""
    if bits > 4:
        return codes.to(torch.uint8).contiguous()
    codes = codes.to(torch.uint8)
    return ((codes[:, 0::2] << 4) | codes[:, 1::2]).contiguous()


def unpack_codes(packed: Tensor, bits: int) -> Tensor:
    """pack_codes 的逆：(O, I/2) uint8 -> (O, I) uint8。"""
    if bits > 4:
        return packed
    high, low = packed >> 4, packed & 0x0F
    return torch.stack([high, low], dim=-1).reshape(packed.shape[0], -1)


# ---------------------------------------------------------------------------------------------------
# 校准数据
# ---------------------------------------------------------------------------------------------------


def calibration_batches(calib_inputs: Tensor | Iterable[Tensor] | None, in_features: int, who: str,
                        device: torch.device) -> list[Tensor]:
    """把校准激活整理成若干 (n_i, in_features) 的 2-D 张量（留在原 dtype，搬到 device），并逐批检查。

    接受一个张量 (..., in_features)，或一串这样的张量（每个 batch 一个：GPTQ 逐批累加 Hessian，不必先拼起来）。
    """
    if calib_inputs is None:
        raise ValueError(f"{who} 需要校准激活 calib_inputs：这一层在真实数据上看到的输入，形状 (N, {in_features})；"
                         "用几百到几千个 token 跑一遍原模型、在这一层的输入上挂 forward hook 收集")
    batches = [calib_inputs] if isinstance(calib_inputs, Tensor) else list(calib_inputs)
    if not batches:
        raise ValueError(f"{who} 收到空的 calib_inputs：至少给一批 (N, {in_features}) 的激活")
    out = []
    for i, x in enumerate(batches):
        if not isinstance(x, Tensor) or not x.is_floating_point():
            kind = x.dtype if isinstance(x, Tensor) else type(x).__name__
            raise ValueError(f"{who} 的 calib_inputs 第 {i} 批是 {kind}：需要浮点张量 (N, {in_features})")
        if x.dim() == 0 or x.shape[-1] != in_features:
            raise ValueError(f"{who} 的 calib_inputs 第 {i} 批形状 {tuple(x.shape)} 的最后一维不是 in_features={in_features}："
                             "传进来的应该是这一层的输入激活（不是输出、不是权重）")
        x = x.detach().reshape(-1, in_features).to(device)
        if not torch.isfinite(x).all():
            raise ValueError(f"{who} 的 calib_inputs 第 {i} 批含 NaN / Inf：先修好产生这些激活的模型或数据，"
                             "Hessian / 激活统计里混进一个非有限值，整层的量化参数都会变成 NaN")
        out.append(x)
    return out


def check_token_count(n_tokens: int, min_tokens: int, who: str, why: str) -> None:
    if n_tokens < min_tokens:
        raise ValueError(f"{who} 的校准数据只有 {n_tokens} 个 token，少于所需的 {min_tokens}（{why}）："
                         "多给一些校准序列，或显式传 min_tokens= 降低要求")


# ---------------------------------------------------------------------------------------------------
# 层：存码、scale、零点；forward = 反量化 + F.linear（可读的路径，不走专用 kernel）
# ---------------------------------------------------------------------------------------------------


class GroupwiseQuantLinear(nn.Module):
    """逐组整数码的线性层的公共部分；子类（GPTQLinear、AWQLinear）只负责在 from_float 里把码选出来。

    buffers：qweight (O, I/2 或 I) uint8、scales (O, G) float32、zeros (O, G) float32（整数值）、bias (O,) float32 或 None。
    """

    scheme: ClassVar[str] = ""

    def __init__(self, in_features: int, out_features: int, bias: bool, *, bits: int = 4,
                 group_size: int | None = 128) -> None:
        super().__init__()
        self.in_features, self.out_features = int(in_features), int(out_features)
        self.bits = bits
        self.group_size = resolve_group_size(self.in_features, bits, group_size)
        n_groups = self.in_features // self.group_size
        packed_cols = self.in_features // 2 if bits <= 4 else self.in_features
        self.register_buffer("qweight", torch.zeros(self.out_features, packed_cols, dtype=torch.uint8))
        self.register_buffer("scales", torch.zeros(self.out_features, n_groups, dtype=torch.float32))
        self.register_buffer("zeros", torch.zeros(self.out_features, n_groups, dtype=torch.float32))
        self.register_buffer("bias", torch.zeros(self.out_features, dtype=torch.float32) if bias else None)

    @classmethod
    def empty(cls, in_features: int, out_features: int, bias: bool, **options: Any):
        """形状正确、内容为零的层：load_state_dict 之前先用它占位。"""
        return cls(in_features, out_features, bias, **options)

    def options(self) -> dict:
        return {"bits": self.bits, "group_size": self.group_size}

    @staticmethod
    def _check_linear(linear: nn.Module, who: str) -> None:
        if not isinstance(linear, nn.Linear):
            raise ValueError(f"{who}.from_float 只接受 nn.Linear，收到 {type(linear).__name__}："
                             "嵌入、归一化层与已经量化过的层不能再量化")

    def _store(self, codes: Tensor, scales: Tensor, zeros: Tensor, bias: Tensor | None) -> None:
        """把 (O, I) 的码与 (O, G) 的参数写进 buffers（打包、转 float32）。"""
        self.qweight.copy_(pack_codes(codes, self.bits))
        self.scales.copy_(scales.to(torch.float32))
        self.zeros.copy_(zeros.to(torch.float32))
        if bias is not None:
            self.bias.copy_(bias.detach().to(torch.float32))

    def codes(self) -> Tensor:
        """解包后的整数码 (O, I) uint8。"""
        return unpack_codes(self.qweight, self.bits)

    def dequantize(self) -> Tensor:
        """这一层代表的 (out, in) 浮点权重。"""
        return dequantize_groupwise(self.codes(), self.scales, self.zeros, self.group_size)

    def forward(self, x: Tensor) -> Tensor:
        w = self.dequantize().to(x.dtype)
        bias = None if self.bias is None else self.bias.to(x.dtype)
        return F.linear(x, w, bias)

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, bits={self.bits}, "
                f"group_size={self.group_size}, bias={self.bias is not None}")
