"""量化的 KV cache（int8）：K 按通道、V 按 token 量化，最近的 R 个 token 保持全精度（KIVI，Liu et al. 2024）。

为什么要量化 KV cache
--------------------
解码时每个 token 的 K/V 要一直存到序列结束。每个 token 的缓存字节数（所有层、所有 KV 头，K 与 V 两份）：

    fp 缓存：2 · L · H_kv · D · b（b = 每个元素的字节数，fp32 为 4，bf16 为 2）

Llama-2-7B（L = 32，H_kv = 32，D = 128）在 fp16 下是 2·32·32·128·2 = 512 KiB/token，4k 上下文 × 批 16 就是 32 GiB，
比 6.7B 参数 × 2 B ≈ 12.6 GiB 的权重还大：长上下文、大批量的服务受限于 KV cache 的显存，解码每步还要把整段缓存从显存读一遍
（带宽受限）。把缓存压成 int8，显存与每步的读流量都接近减半（相对 bf16）或减到 1/4（相对 fp32）。

K 按通道（per channel），V 按 token（per token）——为什么不一样
-----------------------------------------------------------
KIVI 观察到：**key 有少数固定的离群通道**（某几个 channel 在所有 token 上都大一个数量级），value 没有。
- 若 K 按 token 量化（每个 token 一个 scale，跨 D 个通道），这个 scale 由离群通道决定：s = max|k_t| / 127，
  其余通道的数值只占寥寥几个量化级，相对误差很大。按通道量化让每个通道有自己的 scale，离群通道只影响它自己。
- V 没有固定的离群通道；注意力输出 o = Σ_j p_j · v_j 是 token 的加权和，按 token 量化让每个 v_j 的误差
  只与它自己的大小成比例，被注意力权重加权后整体误差也按 token 受控。更重要的是按 token 量化不需要等：
  一个 token 到了就能量化它，而按通道的统计量（某通道在一段 token 上的 min/max）必须攒够一组 token。

分组与全精度窗口
----------------
K 的 scale 是"每层、每个序列、每个 KV 头、每个通道"在一组 G 个 token 上的统计量（KIVI 的 group）：
组按绝对位置对齐，第 j 组是位置 [jG, (j+1)G)。最后那组还没满的 token 不能量化——它的 min/max 会随新 token 到来
而变，每来一个 token 就重新量化一遍既费时又会累积舍入误差。于是最近的 token 留在一个全精度窗口里：

    窗口里始终至少有 R 个最近的 token；窗口攒到 R + G 个时，把最老的 G 个（恰好一整组）量化掉。

所以窗口长度在 [R, R+G) 之间，量化区的长度 n_q(S) = max(0, ⌊(S − R) / G⌋) · G，总是 G 的整数倍：
每组 scale 都在满满 G 个 token 上算，写入的先后切分（一次 prefill 还是逐 token 解码）不影响存下的码与 scale。
窗口还有第二个好处：最近的 token 通常分到最多的注意力（局部性），让它们保持精确只花 R+G−1 个 token 的常数内存。
V 本可以每个 token 一到就量化，这里让 V 与 K 用同一条边界：窗口是 K、V 共用的一段连续位置，读法最简单，
代价是最多 G−1 个 token 的 V 多留在全精度里（常数，不随序列长度增长）。

对称还是非对称
--------------
- K：非对称（min/max，x̂ = m + s·q，q ∈ [0, 255] 存 uint8，s = (max − min)/255）。离群通道往往整段同号
  （RoPE 里低频的通道对转得很慢，离群值恰恰多在低频），对称量化 s = max|x|/127 会浪费一半的量化级；
  非对称用满 256 级。多存的 min 摊在 G 个 token 上，每 token 只多 4·D/G 字节。
- V：对称（x̂ = s·q，q ∈ [−127, 127] 存 int8，s = max|v|/127）。一个 token 的 D 个通道大致以 0 为中心，
  非对称几乎不减小误差，却要每个 token 每个头多存一个数（不能像 K 那样摊到 G 个 token 上）。
两种都用四舍五入（RTN），量化范围恰好覆盖 [min, max]，不裁剪，所以逐元素误差 |x − x̂| ≤ s/2。

内存账（每个 token，每层每个 KV 头；scale/min 存 fp32）
-----------------------------------------------------
    K：D 个 uint8 码 + (scale, min) 各 D 个 fp32 摊到 G 个 token → D + 8D/G
    V：D 个 int8 码 + 1 个 fp32 scale                          → D + 4
    合计 2D + 8D/G + 4 字节；fp32 缓存 8D 字节，bf16 缓存 4D 字节。
    D = 64，G = 64：140 字节 vs 512（fp32）→ 3.66×；vs 256（bf16）→ 1.83×。
    D = 128，G = 64（Llama-2-7B 的头）：276 vs 1024 → 3.71×；vs 512 → 1.86×。
    另有与序列长度无关的常数：全精度窗口 (R + G − 1) 个 token。bytes_per_token() 报的是前一项（渐近值）。

读法：quantize_keys_per_channel / quantize_values_per_token 与各自的反量化 → QuantizedKVCache（KVCache 的子类，
模型与 generate 不用改就能用）→ make_quantized_kv_cache / quantized_cache_factory（从模型读出形状，交给
generate(cache_factory=...)）→ teacher_forced_logits（公平地比较两种缓存）→ main() 演示。
这里走"可读的路径"：update 把量化区整段反量化成浮点再与窗口拼接，交给任何注意力后端；
真正省带宽的实现（KIVI 的 CUDA 内核、vLLM 的 int8/fp8 KV）在注意力内核里边读码边反量化，浮点 K/V 从不整段出现。
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable

import torch
from torch import Tensor, nn

from model_lab import KVCache
from utils.io import is_smoke
from utils.lesson_cli import lesson_args
from utils.torch_playground import setup_seed

__all__ = ["CACHE_OPTIONS", "QuantizedKVCache", "dequantize_keys", "dequantize_values", "greedy_agreement",
           "make_quantized_kv_cache", "quantize_keys_per_channel", "quantize_values_per_token",
           "quantized_cache_factory", "teacher_forced_logits", "tiny_peaked_llama"]

K_LEVELS = 255  # K：非对称 uint8，码 0..255
V_QMAX = 127  # V：对称 int8，码 -127..127（不用 -128，让正负两边对称，0 恰好可表示）
CACHE_OPTIONS = ("window", "group_size", "bits")  # make_quantized_kv_cache 接受的选项；形状、dtype、设备跟模型走


def _positive_int(owner: str, name: str, value: object) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ValueError(f"{owner} 的 {name}={value!r} 不合法：必须是正整数")


# ---------------------------------------------------------------------------------------------------
# 1. 两种量化：K 按通道（非对称、按 G 个 token 一组），V 按 token（对称）
# ---------------------------------------------------------------------------------------------------


def quantize_keys_per_channel(k: Tensor, group_size: int) -> tuple[Tensor, Tensor, Tensor]:
    """k (..., T, D)，T 是 group_size 的整数倍 -> (codes uint8 (..., T, D), scale (..., T/G, D), kmin (..., T/G, D))。

    每组 G 个 token、每个通道：s = (max − min)/255，q = round((x − min)/s) ∈ [0, 255]，x̂ = min + s·q。
    整组某通道是常数时 s = 0：q 全为 0，x̂ = min，恰好无误差（除以 s 时把 0 换成 1 避免 0/0）。
    """
    _positive_int("quantize_keys_per_channel", "group_size", group_size)
    if k.dim() < 2 or k.size(-2) % group_size != 0:
        raise ValueError(f"quantize_keys_per_channel：k 的形状 {tuple(k.shape)} 的 token 维（倒数第二维）必须是 "
                         f"group_size={group_size} 的整数倍；只量化满组，不满的那组留在全精度窗口里")
    x = k.float().unflatten(-2, (k.size(-2) // group_size, group_size))  # (..., T/G, G, D)
    kmin, kmax = x.amin(dim=-2), x.amax(dim=-2)  # (..., T/G, D)：每组、每通道的范围
    scale = (kmax - kmin) / K_LEVELS
    safe = torch.where(scale > 0, scale, torch.ones_like(scale))
    codes = torch.round((x - kmin.unsqueeze(-2)) / safe.unsqueeze(-2)).clamp_(0, K_LEVELS).to(torch.uint8)
    return codes.flatten(-3, -2), scale, kmin


def dequantize_keys(codes: Tensor, scale: Tensor, kmin: Tensor) -> Tensor:
    """quantize_keys_per_channel 的逆：x̂ = min + s·q，返回 fp32 (..., T, D)。组大小由 codes 与 scale 的长度之比推出。"""
    group_size = codes.size(-2) // max(scale.size(-2), 1)
    x = codes.float().unflatten(-2, (scale.size(-2), group_size))  # (..., T/G, G, D)
    return (kmin.unsqueeze(-2) + scale.unsqueeze(-2) * x).flatten(-3, -2)


def quantize_values_per_token(v: Tensor) -> tuple[Tensor, Tensor]:
    """v (..., T, D) -> (codes int8 (..., T, D), scale (..., T))：每个 token 一个 s = max|v|/127，q = round(v/s)。"""
    if v.dim() < 2:
        raise ValueError(f"quantize_values_per_token：v 应为 (..., T, D)，收到 {tuple(v.shape)}")
    x = v.float()
    scale = x.abs().amax(dim=-1) / V_QMAX  # (..., T)
    safe = torch.where(scale > 0, scale, torch.ones_like(scale))
    codes = torch.round(x / safe.unsqueeze(-1)).clamp_(-V_QMAX, V_QMAX).to(torch.int8)
    return codes, scale


def dequantize_values(codes: Tensor, scale: Tensor) -> Tensor:
    """x̂ = s·q，返回 fp32 (..., T, D)。"""
    return codes.float() * scale.unsqueeze(-1)


# ---------------------------------------------------------------------------------------------------
# 2. QuantizedKVCache：KVCache 的协议（update / advance / check_compatible / seq_len），存的是 int8
# ---------------------------------------------------------------------------------------------------


class QuantizedKVCache(KVCache):
    """int8 的稠密 KV cache：位置 [0, n_q) 量化（K 按通道分组、V 按 token），[n_q, seq_len) 在全精度窗口里。

    缓冲区（L 层，B 条序列，H_kv 个头，Q = n_q(max_seq_len) 个可量化位置，W = min(R + G − 1, max_seq_len)）：
        k_codes uint8 (L, B, H_kv, Q, D)，k_scale / k_min fp32 (L, B, H_kv, Q/G, D)
        v_codes int8  (L, B, H_kv, Q, D)，v_scale fp32 (L, B, H_kv, Q)
        k_window / v_window 模型的 dtype (L, B, H_kv, W, D)：窗口第 i 行是位置 n_q + i
    不调用 KVCache.__init__：那会分配整段 fp 的 k/v，正是要省掉的内存；其余协议逐个重写。
    update 返回的 K/V 是"量化区反量化 + 全精度尾巴"：本次写入的 token 在这次前向里以全精度参与注意力
    （与 KIVI 的 prefill 相同），从下一次前向起，离开窗口的 token 以反量化值参与。
    """

    def __init__(self, num_layers: int, batch_size: int, num_kv_heads: int, max_seq_len: int, head_dim: int, *,
                 window: int = 32, group_size: int = 64, bits: int = 8, device: torch.device | str | None = None,
                 dtype: torch.dtype = torch.float32) -> None:
        for name, value in (("num_layers", num_layers), ("batch_size", batch_size), ("num_kv_heads", num_kv_heads),
                            ("max_seq_len", max_seq_len), ("head_dim", head_dim), ("window", window),
                            ("group_size", group_size)):
            _positive_int("QuantizedKVCache", name, value)
        if bits != 8:
            raise ValueError(f"QuantizedKVCache 的 bits={bits!r} 不支持：这里只实现 int8（bits=8）；"
                             "KIVI 的 2/4 bit 还要把几个码打包进一个字节（打包方法见 int4.py）")
        if not dtype.is_floating_point:
            raise ValueError(f"QuantizedKVCache 的 dtype={dtype} 不合法：应为模型的浮点 dtype（窗口与返回的 K/V 用它）")
        self.num_layers, self.batch_size, self.num_kv_heads = num_layers, batch_size, num_kv_heads
        self.max_seq_len, self.head_dim = max_seq_len, head_dim
        self.window, self.group_size, self.bits, self.dtype = window, group_size, bits, dtype
        q, w = self.quantized_len(max_seq_len), min(window + group_size - 1, max_seq_len)
        lbh = (num_layers, batch_size, num_kv_heads)
        self.k_codes = torch.zeros(*lbh, q, head_dim, dtype=torch.uint8, device=device)
        self.k_scale = torch.zeros(*lbh, q // group_size, head_dim, dtype=torch.float32, device=device)
        self.k_min = torch.zeros(*lbh, q // group_size, head_dim, dtype=torch.float32, device=device)
        self.v_codes = torch.zeros(*lbh, q, head_dim, dtype=torch.int8, device=device)
        self.v_scale = torch.zeros(*lbh, q, dtype=torch.float32, device=device)
        self.k_window = torch.zeros(*lbh, w, head_dim, dtype=dtype, device=device)
        self.v_window = torch.zeros(*lbh, w, head_dim, dtype=dtype, device=device)
        self.device = self.k_window.device
        self._seq_len = 0

    # ---- 位置的记账：量化区的长度只由 seq_len 决定 ----
    def quantized_len(self, n: int) -> int:
        """前 n 个 token 里有多少个已量化：n_q(n) = max(0, ⌊(n − R)/G⌋)·G（窗口留 [R, R+G) 个）。"""
        return max(0, (n - self.window) // self.group_size) * self.group_size

    @property
    def num_quantized(self) -> int:
        return self.quantized_len(self._seq_len)

    @property
    def seq_len(self) -> int:
        return self._seq_len

    @seq_len.setter
    def seq_len(self, n: int) -> None:
        """直接改位置（回退重测、投机解码的回滚）只能在全精度窗口里移动：已经量化掉的 token 回不到全精度，
        窗口也不再存着它们——跨过量化边界就报错，而不是悄悄读到错的 K/V。reset()（回到 0）总是可以。"""
        if not isinstance(n, int) or not 0 <= n <= self.max_seq_len:
            raise ValueError(f"seq_len={n!r} 不合法：必须是 [0, max_seq_len={self.max_seq_len}] 里的整数")
        if n != 0 and self.quantized_len(n) != self.num_quantized:
            raise ValueError(f"QuantizedKVCache 不能把 seq_len 从 {self._seq_len} 改成 {n}：量化边界会从 "
                             f"{self.num_quantized} 变成 {self.quantized_len(n)}，越过边界的 token 已经量化"
                             "（或从未写入）；只能在全精度窗口里回退，或 reset() 从头开始")
        self._seq_len = n

    def advance(self, n: int) -> None:
        """所有层都写完之后由模型调用一次。每层的 update 已经按 n_q(seq_len + n) 量化好了，这里只前进位置。"""
        self._seq_len += n

    def reset(self) -> None:
        self._seq_len = 0

    def check_compatible(self, *, num_layers: int, num_kv_heads: int, head_dim: int, dtype: torch.dtype,
                         device: torch.device, batch_size: int, new_tokens: int) -> None:
        """与 KVCache.check_compatible 相同的检查；dtype 指窗口与返回的 K/V 的 dtype（码永远是 int8）。"""
        want = dict(num_layers=num_layers, num_kv_heads=num_kv_heads, head_dim=head_dim, dtype=dtype, device=device,
                    batch_size=batch_size)
        got = dict(num_layers=self.num_layers, num_kv_heads=self.num_kv_heads, head_dim=self.head_dim,
                   dtype=self.dtype, device=self.device, batch_size=self.batch_size)
        bad = [f"{k}={got[k]}（模型/输入需要 {want[k]}）" for k in want if got[k] != want[k]]
        if bad:
            raise ValueError(f"QuantizedKVCache 与模型不匹配：{'；'.join(bad)}；"
                             "用 make_quantized_kv_cache(model, batch_size, max_seq_len) 按模型分配")
        self._check_capacity(new_tokens)

    def _check_capacity(self, new_tokens: int) -> None:
        if self._seq_len + new_tokens > self.max_seq_len:
            raise ValueError(f"QuantizedKVCache 容量 max_seq_len={self.max_seq_len} 不够：已有 {self._seq_len}，"
                             f"再写 {new_tokens}；分配时把 max_seq_len 设大一些")

    # ---- 读写 ----
    def _dequantized(self, layer_idx: int, n: int) -> tuple[Tensor, Tensor]:
        """量化区前 n 个位置（n 是 G 的倍数）反量化成模型的 dtype：(B, H_kv, n, D) ×2。"""
        g = n // self.group_size
        k = dequantize_keys(self.k_codes[layer_idx, :, :, :n], self.k_scale[layer_idx, :, :, :g],
                            self.k_min[layer_idx, :, :, :g])
        v = dequantize_values(self.v_codes[layer_idx, :, :, :n], self.v_scale[layer_idx, :, :, :n])
        return k.to(self.dtype), v.to(self.dtype)

    def update(self, layer_idx: int, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
        """写入新的 k/v (B, H_kv, T, D)，返回这一层位置 [0, seq_len + T) 的 K/V（量化区反量化 + 全精度尾巴）。

        s0 = seq_len，s1 = s0 + T，边界 q0 = n_q(s0)、q1 = n_q(s1)：
        尾巴 = 旧窗口（位置 q0..s0−1）+ 新 token（s0..s1−1），全精度；返回 cat(反量化[0, q0), 尾巴)；
        然后把尾巴的前 q1 − q0 个（整数个满组）量化进码区，剩下的 s1 − q1 个写回窗口。
        """
        self._check_capacity(k.size(2))
        s0 = self._seq_len
        s1 = s0 + k.size(2)
        q0, q1 = self.quantized_len(s0), self.quantized_len(s1)
        tail_k = torch.cat((self.k_window[layer_idx, :, :, :s0 - q0], k.to(self.dtype)), dim=2)  # (B, H_kv, s1−q0, D)
        tail_v = torch.cat((self.v_window[layer_idx, :, :, :s0 - q0], v.to(self.dtype)), dim=2)
        old_k, old_v = self._dequantized(layer_idx, q0)
        k_all, v_all = torch.cat((old_k, tail_k), dim=2), torch.cat((old_v, tail_v), dim=2)  # (B, H_kv, s1, D)
        if q1 > q0:  # 窗口溢出了整数个组：量化最老的 q1 − q0 个 token
            g0, g1 = q0 // self.group_size, q1 // self.group_size
            codes, scale, kmin = quantize_keys_per_channel(tail_k[:, :, :q1 - q0], self.group_size)
            self.k_codes[layer_idx, :, :, q0:q1] = codes
            self.k_scale[layer_idx, :, :, g0:g1] = scale
            self.k_min[layer_idx, :, :, g0:g1] = kmin
            codes, scale = quantize_values_per_token(tail_v[:, :, :q1 - q0])
            self.v_codes[layer_idx, :, :, q0:q1] = codes
            self.v_scale[layer_idx, :, :, q0:q1] = scale
        self.k_window[layer_idx, :, :, :s1 - q1] = tail_k[:, :, q1 - q0:]  # tail 是新张量，与窗口不重叠
        self.v_window[layer_idx, :, :, :s1 - q1] = tail_v[:, :, q1 - q0:]
        return k_all, v_all

    def read(self, layer_idx: int) -> tuple[Tensor, Tensor]:
        """不写入，读出这一层位置 [0, seq_len) 的 K/V（之后的前向看到的就是它）：(B, H_kv, seq_len, D) ×2。"""
        q = self.num_quantized
        old_k, old_v = self._dequantized(layer_idx, q)
        w = self._seq_len - q
        return (torch.cat((old_k, self.k_window[layer_idx, :, :, :w]), dim=2),
                torch.cat((old_v, self.v_window[layer_idx, :, :, :w]), dim=2))

    # ---- 内存账 ----
    def bytes_per_token(self) -> float:
        """每个 token（一条序列，所有层、所有 KV 头，K 与 V）渐近占用的字节：码 + 摊薄的 scale/min。

        L·H_kv·(D·码字节 + 2·D·4/G（K 的 scale 与 min 摊到 G 个 token） + D·码字节 + 4（V 的 scale）)。
        不含全精度窗口——那是与序列长度无关的常数，见 window_bytes()。
        """
        d, g = self.head_dim, self.group_size
        k = d * self.k_codes.element_size() + d * (self.k_scale.element_size() + self.k_min.element_size()) / g
        v = d * self.v_codes.element_size() + self.v_scale.element_size()
        return self.num_layers * self.num_kv_heads * (k + v)

    def dense_bytes_per_token(self, dtype: torch.dtype | None = None) -> int:
        """同样形状的 fp KVCache 每个 token 的字节：2·L·H_kv·D·b（dtype 默认与本缓存的窗口相同）。"""
        itemsize = torch.empty((), dtype=dtype or self.dtype).element_size()
        return 2 * self.num_layers * self.num_kv_heads * self.head_dim * itemsize

    def window_bytes(self) -> int:
        """全精度窗口每条序列的常数开销（字节）：2·L·H_kv·W·D·b。"""
        return (self.k_window.nbytes + self.v_window.nbytes) // self.batch_size

    def nbytes(self) -> int:
        """整个缓存实际分配的字节（码、scale、窗口；全部 B 条序列、max_seq_len 个位置）。"""
        return sum(t.nbytes for t in (self.k_codes, self.k_scale, self.k_min, self.v_codes, self.v_scale,
                                      self.k_window, self.v_window))


# ---------------------------------------------------------------------------------------------------
# 3. 接到模型与 generate 上
# ---------------------------------------------------------------------------------------------------


def make_quantized_kv_cache(model: nn.Module, batch_size: int, max_seq_len: int, **options) -> QuantizedKVCache:
    """按模型的配置（层数、KV 头数、head_dim、dtype、设备）分配 QuantizedKVCache；options：window / group_size / bits。

    形状从 model.make_kv_cache(batch_size, 1) 读出（只有 1 个位置，几乎不占内存）：Llama 与 GPT-2 的缓存布局
    都是 (B, H_kv, S, D)，于是同一个量化缓存两个模型都能用，不必知道各自的 config 字段名。
    """
    unknown = sorted(set(options) - set(CACHE_OPTIONS))
    if unknown:
        raise ValueError(f"make_quantized_kv_cache 不认识选项 {unknown}：只接受 {list(CACHE_OPTIONS)}；"
                         "层数、头数、dtype 与设备从模型读出，不用传")
    if not callable(getattr(model, "make_kv_cache", None)):
        raise ValueError(f"{type(model).__name__} 没有 make_kv_cache(batch_size, max_seq_len)：量化缓存要照着模型的"
                         "稠密 KVCache 的形状分配（Llama、GPT-2 都有）")
    ref = model.make_kv_cache(batch_size, 1)
    if type(ref) is not KVCache:
        raise ValueError(f"{type(model).__name__}.make_kv_cache 返回 {type(ref).__name__}，不是 (L, B, H_kv, S, D) 布局的"
                         "model_lab.KVCache：QuantizedKVCache 只替代这种稠密缓存")
    return QuantizedKVCache(ref.num_layers, batch_size, ref.num_kv_heads, max_seq_len, ref.head_dim,
                            device=ref.k.device, dtype=ref.k.dtype, **options)


def quantized_cache_factory(model: nn.Module, **options) -> Callable[[int, int], QuantizedKVCache]:
    """给 generate 的 cache_factory：`model.generate(ids, n, cache_factory=quantized_cache_factory(model, window=32))`。"""
    unknown = sorted(set(options) - set(CACHE_OPTIONS))
    if unknown:
        raise ValueError(f"quantized_cache_factory 不认识选项 {unknown}：只接受 {list(CACHE_OPTIONS)}")
    QuantizedKVCache(1, 1, 1, 1, 1, **options)  # 先检查一遍选项：坏选项在调用处报错，而不是解码开始时
    return functools.partial(make_quantized_kv_cache, model, **options)


@torch.no_grad()
def teacher_forced_logits(model: nn.Module, ids: Tensor, prompt_len: int, cache: KVCache) -> Tensor:
    """先 prefill ids[:, :prompt_len]，再逐个喂 ids 里后面的 token，返回每步最后位置的 logits (steps, B, V)，
    steps = ids.size(1) − prompt_len：第 i 步预测 ids[:, prompt_len + i]。

    为什么用 teacher forcing 比较两种缓存：自由生成时，一旦某步 argmax 不同，之后两条序列的上下文就不同了，
    后面每一步都算"不一致"，一次边缘上的平局就会把几百步全记成错。把 fp 缓存贪心生成的 token 同时喂给两种缓存，
    每一步比较的都是"同样的上下文下 top-1 是否相同"，这才是缓存本身的误差。
    """
    logits = [model(ids[:, :prompt_len], kv_cache=cache)[:, -1]]
    for i in range(prompt_len, ids.size(1) - 1):
        logits.append(model(ids[:, i:i + 1], kv_cache=cache)[:, -1])
    return torch.stack(logits).float()


@torch.no_grad()
def greedy_agreement(model: nn.Module, prompts: Tensor, max_new_tokens: int,
                     cache_factory: Callable[[int, int], KVCache]) -> dict[str, float]:
    """fp 缓存贪心生成 max_new_tokens 个 token，再把这串 token teacher-forced 地喂给两种缓存，逐步比较 top-1。

    返回 agreement（top-1 相同的比例，B × max_new_tokens 次判断）、max_logit_err（两种缓存 logits 的最大差）、
    at_risk（fp 的 top-1 与 top-2 之差 < 这一步 logits 最大偏差的 2 倍的比例：只有这些步的 top-1 可能被翻转，
    因为两个 logit 各自最多偏 max|Δ|）、fp_self_agreement（fp 缓存自己在同一流程里复现 generate 的比例，应为 1：
    流程本身对不对）、num_quantized（量化缓存最后量化了多少个位置）。
    """
    b, p = prompts.shape
    fp_seq = model.generate(prompts, max_new_tokens, temperature=0)  # (B, P + n)：参照答案
    total = fp_seq.size(1)
    fp_logits = teacher_forced_logits(model, fp_seq, p, model.make_kv_cache(b, total))  # (n, B, V)
    cache = cache_factory(b, total)
    q_logits = teacher_forced_logits(model, fp_seq, p, cache)
    target = fp_seq[:, p:].T  # (n, B)：fp 每一步的 argmax 就是它生成的 token
    step_err = (q_logits - fp_logits).abs().amax(dim=-1)  # (n, B)
    top2 = fp_logits.topk(2, dim=-1).values
    return dict(agreement=float((q_logits.argmax(-1) == target).float().mean()), max_logit_err=float(step_err.max()),
                at_risk=float((top2[..., 0] - top2[..., 1] < 2 * step_err).float().mean()),
                fp_self_agreement=float((fp_logits.argmax(-1) == target).float().mean()),
                num_quantized=float(getattr(cache, "num_quantized", 0)))


# ---------------------------------------------------------------------------------------------------
# 4. 演示用的小模型：随机权重的 argmax 没有意义，训练几十步让它有真实的"top-1 余量"
# ---------------------------------------------------------------------------------------------------

DEMO_TEXT = "The key cache has a few outlier channels that stay large for every token, so keys are quantized per channel; "


def tiny_peaked_llama(steps: int = 80, seed: int = 0, text: str = DEMO_TEXT) -> nn.Module:
    """字节级的小 Llama（2 层，hidden 128，4 个 query 头、2 个 KV 头，head_dim 64）在一段重复文本上训练 steps 步。

    为什么要训练：随机权重的 logits 几乎是平的，top-1 与 top-2 只差一点点，任何微小扰动（哪怕换个求和顺序）
    都会翻转 argmax——那样测的是噪声，不是缓存。把 lm_head 乘一个大数也没用：argmax(c·z) = argmax(z)，
    余量与扰动同比例放大。几十步 AdamW 让模型学会续写这段文本、并且要靠注意力看上下文才知道写到了哪里，
    它的 top-1 余量分布才像一个真正训练过的语言模型。head_dim 64 与真实模型同量级（bytes/token 的比值依赖 D）。
    """
    from model_lab import Llama, LlamaConfig

    setup_seed(seed)
    data = torch.tensor(list(text.encode("utf-8")) * 8)
    cfg = LlamaConfig(vocab_size=256, hidden_size=128, intermediate_size=256, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, head_dim=64, max_position_embeddings=512,
                      bos_token_id=None, eos_token_id=None)
    model = Llama(cfg)
    opt = torch.optim.AdamW(model.parameters(), lr=5e-3, weight_decay=0.0)
    g = torch.Generator().manual_seed(seed)
    t = 48
    for _ in range(steps):
        starts = torch.randint(0, data.numel() - t - 1, (8,), generator=g)
        x = torch.stack([data[s:s + t] for s in starts])
        y = torch.stack([data[s + 1:s + t + 1] for s in starts])
        _, loss = model(x, y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return model.eval()


def _outlier_demo(gen: torch.Generator) -> tuple[float, float]:
    """K 有 4 个离群通道（×20）时，按 token 与按通道量化的相对误差（按通道用 G = 64 个 token 一组）。"""
    k = torch.randn(1, 2, 256, 64, generator=gen)
    k[..., :4] = k[..., :4] * 20 + 30  # 固定的离群通道：大且整段同号
    per_token = dequantize_values(*quantize_values_per_token(k))  # 对 K 也按 token 做一次，作对照
    per_channel = dequantize_keys(*quantize_keys_per_channel(k, 64))
    rel = [float((k - x)[..., 4:].norm() / k[..., 4:].norm()) for x in (per_token, per_channel)]  # 普通通道上的误差
    return rel[0], rel[1]


def main() -> None:
    setup_seed(0)
    smoke = is_smoke()
    gen = torch.Generator().manual_seed(0)
    print("=== 量化的 KV cache（int8；K 按通道、V 按 token、最近 R 个 token 全精度）===")
    e_tok, e_ch = _outlier_demo(gen)
    print(f"K 有 4 个 ×20 的离群通道时，普通通道上的相对误差：按 token {e_tok:.2e}，按通道 {e_ch:.2e} "
          f"（{e_tok / e_ch:.0f}× 差距：这就是 K 要按通道量化的原因）")

    train_steps, decode = (40, 96) if smoke else (80, 256)
    t0 = time.perf_counter()
    model = tiny_peaked_llama(train_steps)
    print(f"小 Llama 在重复文本上训练 {train_steps} 步：{time.perf_counter() - t0:.1f} s")
    prompts = torch.tensor([list(DEMO_TEXT[i:i + 16].encode()) for i in (0, 20, 40, 60)])  # 4 个 prompt 一批
    for window, group in ((32, 64), (8, 16)):
        r = greedy_agreement(model, prompts, decode, quantized_cache_factory(model, window=window, group_size=group))
        print(f"R={window:>2}, G={group:>2}：teacher-forced top-1 一致率 {r['agreement']:.2%}"
              f"（4 × {decode} 步，每条序列量化了 {r['num_quantized']:.0f} 个位置），logits 最大偏差 "
              f"{r['max_logit_err']:.2e}，top-1 可能被翻转的步（余量 < 2×偏差）占 {r['at_risk']:.2%}")
    out = model.generate(prompts[:1], decode, temperature=0, cache_factory=quantized_cache_factory(model))
    print(f"int8 缓存贪心生成：{bytes(out[0].tolist()).decode('utf-8', 'replace')!r}")

    cache = make_quantized_kv_cache(model, 1, 4096)
    bpt = cache.bytes_per_token()
    fp32, bf16 = cache.dense_bytes_per_token(torch.float32), cache.dense_bytes_per_token(torch.bfloat16)
    print(f"每 token 字节（L={cache.num_layers}, H_kv={cache.num_kv_heads}, D={cache.head_dim}, G={cache.group_size}）："
          f"int8 {bpt:.0f} vs fp32 {fp32}（{fp32 / bpt:.2f}× 更小） vs bf16 {bf16}（{bf16 / bpt:.2f}×）；"
          f"全精度窗口是每条序列 {cache.window_bytes()} 字节的常数")
    llama7b = QuantizedKVCache(32, 1, 32, 128, 128, device="meta")  # meta：只要形状做内存账，不分配
    print(f"Llama-2-7B 的形状（L=32, H_kv=32, D=128）：{llama7b.bytes_per_token() / 1024:.0f} KiB/token，"
          f"fp16 {llama7b.dense_bytes_per_token(torch.float16) / 1024:.0f} KiB/token "
          f"（{llama7b.dense_bytes_per_token(torch.float16) / llama7b.bytes_per_token():.2f}×）")


if __name__ == "__main__":
    lesson_args(__doc__)
    main()
