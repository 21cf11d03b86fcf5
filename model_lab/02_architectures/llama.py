"""Llama：一个文件里的完整模型（RMSNorm + RoPE + GQA 注意力 + SwiGLU），与 HF LlamaForCausalLM 逐位对齐。

读法（自上而下）：
1. LlamaConfig —— 字段名与 `transformers.LlamaConfig` 相同，构造时校验；读写 HF 的 config.json（v4/v5 两种 RoPE 写法）。
2. RoPE 频率 —— default / linear / dynamic / yarn / llama3 五种 inv_freq，与 HF 的 ROPE_INIT_FUNCTIONS 数值相同。
3. 模块：RMSNorm、RotaryEmbedding、Attention、MLP、DecoderLayer、LlamaModel（权重名与 HF 相同）。
4. Llama：forward（(B, T) 批量或打包批量，可带 targets 返回 loss，可只在 logits_positions 上算 lm_head）、generate、
   参数/FLOPs 计数、from_pretrained / save_pretrained。
5. main()：与 HF 对照（logits、梯度、贪心生成），打印参数量、FLOPs/token 和速度。

与其他模型共用的基础设施在可按名字导入的模块里（GPT-2 用的是同一套）：注意力后端注册表与掩码约定
（model_lab/attention_backends.py；以后 Triton/CUDA 的 FlashAttention 注册进去，模型本身不 import 它们）、
KVCache / PagedKVCache / AttnMetadata（model_lab/kv_cache.py）、HF 目录读写（model_lab/hf_io.py）、
采样与生成循环（model_lab/generation.py）。

按 docs/ARCHITECTURE.md §4，本文件自带精简的 RMSNorm/RoPE/注意力，不 import 01_components 里的课程文件；
两边都对照同一个参考实现（HF），所以不会悄悄走样。本文件在模块顶层不 import transformers（导入 model_lab 要便宜），
只有 main() 在需要对照时才导入它。
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from model_lab.attention_backends import get_attention_backend, make_attention_mask, packed_attention
from model_lab.generation import check_max_new_tokens, generate
from model_lab.hf_io import load_hf_directory, save_hf_directory
from model_lab.kernel_backends import get_kernel_backend
from model_lab.kv_cache import (
    AttnMetadata,
    KVCache,
    PagedKVCache,
    check_cache,
    check_logits_positions,
    resolve_positions,
)
from utils.io import is_smoke
from utils.lesson_cli import lesson_args, timing_note

__all__ = ["Llama", "LlamaConfig", "build_llama_hf_reference", "rope_inv_freq"]

# ---------------------------------------------------------------------------------------------------
# 1. 配置
# ---------------------------------------------------------------------------------------------------

# 每种 RoPE 缩放需要/允许的参数（不含 rope_type 与 rope_theta；rope_theta 单独是一个字段）
_ROPE_REQUIRED = {
    "default": set(),
    "linear": {"factor"},
    "dynamic": {"factor"},
    "yarn": {"factor", "original_max_position_embeddings"},
    "llama3": {"factor", "low_freq_factor", "high_freq_factor", "original_max_position_embeddings"},
}
_ROPE_OPTIONAL = {
    "default": set(),
    "linear": set(),
    "dynamic": set(),
    "yarn": {"attention_factor", "beta_fast", "beta_slow", "mscale", "mscale_all_dim", "truncate"},
    "llama3": set(),
}
# HF config.json / PreTrainedConfig.to_dict() 里出现、但与模型结构无关的键：读取时接受并忽略
_HF_BOOKKEEPING_KEYS = {"architectures", "model_type", "transformers_version", "dtype", "torch_dtype", "use_cache",
                        "_name_or_path", "pretraining_tp", "chunk_size_feed_forward", "id2label", "label2id",
                        "is_encoder_decoder", "output_attentions", "output_hidden_states", "problem_type",
                        "return_dict"}


@dataclass
class LlamaConfig:
    """Llama 的超参数。字段名、默认值与 `transformers.LlamaConfig` 相同（默认值即 Llama-7B 的形状）。

    RoPE 在内存里用 v4 写法保存：`rope_theta` + `rope_scaling`（None 或 {"rope_type": ..., "factor": ...}）；
    to_dict()/config.json 用 v5 写法 `rope_parameters = {"rope_type", "rope_theta", ...}`，from_dict 两种都接受。
    `attn_implementation`（注意力后端名）与 `kernels`（RMSNorm/RoPE/SwiGLU/交叉熵的内核后端名，见
    model_lab/kernel_backends.py）是本仓库的运行时选择，不写进 config.json。
    """

    vocab_size: int = 32000
    hidden_size: int = 4096
    intermediate_size: int = 11008
    num_hidden_layers: int = 32
    num_attention_heads: int = 32
    num_key_value_heads: int | None = None  # None -> 等于 num_attention_heads（MHA）
    head_dim: int | None = None  # None -> hidden_size // num_attention_heads
    hidden_act: str = "silu"
    max_position_embeddings: int = 2048
    initializer_range: float = 0.02
    rms_norm_eps: float = 1e-6
    rope_theta: float = 10000.0
    rope_scaling: dict[str, Any] | None = None
    tie_word_embeddings: bool = False
    attention_bias: bool = False
    attention_dropout: float = 0.0
    mlp_bias: bool = False
    pad_token_id: int | None = None
    bos_token_id: int | None = 1
    eos_token_id: int | list[int] | None = 2
    attn_implementation: str = "sdpa"
    kernels: str = "torch"

    def __post_init__(self) -> None:
        if self.num_key_value_heads is None:
            self.num_key_value_heads = self.num_attention_heads
        for name in ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
                     "num_key_value_heads", "max_position_embeddings"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{name}={value!r} 不合法：必须是正整数")
        if self.hidden_size % self.num_attention_heads != 0:
            raise ValueError(f"hidden_size={self.hidden_size} is not divisible by num_attention_heads="
                             f"{self.num_attention_heads}（hidden_size 必须是头数的整数倍）")
        if self.num_attention_heads % self.num_key_value_heads != 0:
            raise ValueError(f"num_attention_heads={self.num_attention_heads} is not divisible by num_key_value_heads="
                             f"{self.num_key_value_heads}（GQA 要求每个 KV 头服务同样多的 Q 头）")
        if self.head_dim is None:
            self.head_dim = self.hidden_size // self.num_attention_heads
        if not isinstance(self.head_dim, int) or self.head_dim < 2 or self.head_dim % 2:
            raise ValueError(f"head_dim={self.head_dim!r} 不合法：RoPE 把向量两两配对旋转，head_dim 必须是正偶数")
        if self.hidden_act != "silu":
            raise ValueError(f"hidden_act={self.hidden_act!r} 不支持：Llama 的 SwiGLU 只用 'silu'")
        if self.attention_dropout != 0:
            raise ValueError(f"attention_dropout={self.attention_dropout} 不支持：Llama 的预训练与微调都不用注意力 dropout"
                             "（HF 的默认值也是 0.0）；请设为 0.0")
        if not self.rms_norm_eps > 0:
            raise ValueError(f"rms_norm_eps={self.rms_norm_eps} 必须 > 0")
        if not isinstance(self.attn_implementation, str):
            raise ValueError(f"attn_implementation={self.attn_implementation!r} 必须是注意力后端的名字（字符串）")
        if not isinstance(self.kernels, str):
            raise ValueError(f"kernels={self.kernels!r} 必须是内核后端的名字（字符串），例如 'torch' 或 'triton'")
        self.rope_scaling = self._normalize_rope_scaling(self.rope_scaling)  # 可能从 v5 写法里取出 rope_theta
        if not self.rope_theta > 0:
            raise ValueError(f"rope_theta={self.rope_theta} 必须 > 0")

    def _normalize_rope_scaling(self, scaling: dict[str, Any] | None) -> dict[str, Any] | None:
        """统一成 {"rope_type": ..., 参数...}；default 归一为 None；缺省的 original_max_position_embeddings
        与 HF 的 standardize_rope_params 一样取 max_position_embeddings。"""
        if scaling is None:
            return None
        if not isinstance(scaling, dict):
            raise ValueError(f"rope_scaling={scaling!r} 必须是 dict（例如 {{'rope_type': 'linear', 'factor': 2.0}}）或 None")
        scaling = dict(scaling)
        rope_type = scaling.pop("rope_type", scaling.pop("type", "default"))
        scaling.pop("type", None)
        if rope_type not in _ROPE_REQUIRED:
            raise ValueError(f"rope_scaling 的 rope_type={rope_type!r} 未知；支持：{', '.join(_ROPE_REQUIRED)}")
        if "rope_theta" in scaling:  # v5 的 rope_parameters 把 theta 放在里面；挪到字段上
            self.rope_theta = float(scaling.pop("rope_theta"))
        if rope_type in ("yarn", "llama3"):
            scaling.setdefault("original_max_position_embeddings", self.max_position_embeddings)
        missing = _ROPE_REQUIRED[rope_type] - set(scaling)
        unknown = set(scaling) - _ROPE_REQUIRED[rope_type] - _ROPE_OPTIONAL[rope_type]
        if missing:
            raise ValueError(f"rope_scaling（rope_type={rope_type!r}）缺少字段：{sorted(missing)}")
        if unknown:
            raise ValueError(f"rope_scaling（rope_type={rope_type!r}）有未知字段：{sorted(unknown)}；"
                             f"允许的字段：{sorted(_ROPE_REQUIRED[rope_type] | _ROPE_OPTIONAL[rope_type])}")
        factor = scaling.get("factor")
        if factor is not None and (not isinstance(factor, (int, float)) or factor < 1):
            raise ValueError(f"rope_scaling.factor={factor!r} 必须是 >= 1 的数")
        if rope_type == "default":
            return None
        return {"rope_type": rope_type, **scaling}

    @property
    def rope_type(self) -> str:
        return "default" if self.rope_scaling is None else self.rope_scaling["rope_type"]

    # ---- 与 dict / HF config.json 互转 ----
    def to_dict(self) -> dict[str, Any]:
        """HF v5 风格的 dict（config.json 的内容）+ 运行时选择 attn_implementation、kernels。"""
        d = {k: v for k, v in asdict(self).items() if k not in ("rope_theta", "rope_scaling")}
        rope = {"rope_type": "default"} if self.rope_scaling is None else dict(self.rope_scaling)
        rope["rope_theta"] = self.rope_theta
        d["rope_parameters"] = rope
        return {"architectures": ["LlamaForCausalLM"], "model_type": "llama", **d}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> LlamaConfig:
        """接受 to_dict() 的输出、HF v5 的 config.json（rope_parameters）与 v4 的（rope_theta + rope_scaling）。"""
        d = dict(d)
        model_type = d.get("model_type", "llama")
        if model_type != "llama":
            raise ValueError(f"config 的 model_type={model_type!r}，不是 'llama'：这个目录/配置属于另一种架构")
        if d.get("pretraining_tp", 1) not in (1, None):
            raise ValueError(f"pretraining_tp={d['pretraining_tp']} 不支持（只支持 1，即不切分的普通线性层）")
        for key in _HF_BOOKKEEPING_KEYS:
            d.pop(key, None)
        rope_parameters = d.pop("rope_parameters", None)
        if rope_parameters is not None:
            if d.get("rope_scaling") is not None:
                raise ValueError("config 同时给了 rope_parameters（v5）与 rope_scaling（v4）：只保留一种")
            d["rope_scaling"] = dict(rope_parameters)
        names = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - names)
        if unknown:
            raise ValueError(f"LlamaConfig 不认识这些字段：{unknown}；可用字段：{sorted(names)}")
        return cls(**d)


# ---------------------------------------------------------------------------------------------------
# 2. RoPE 频率：inv_freq[i] = 1 / theta^(2i/d)，各种缩放只是改写这条频率表（以及 cos/sin 的整体缩放）
# ---------------------------------------------------------------------------------------------------


def _base_inv_freq(theta: float | Tensor, dim: int) -> Tensor:
    """(dim/2,) 原始 RoPE 频率：theta^(-2i/d)。写法与 HF 相同（float32 的 arange/dim 再求幂），保证逐位一致。"""
    return 1.0 / (theta ** (torch.arange(0, dim, 2, dtype=torch.int64).float() / dim))


def rope_inv_freq(config: LlamaConfig, seq_len: int | None = None) -> tuple[Tensor, float]:
    """返回 (inv_freq (head_dim/2,), attention_scaling)：cos/sin 要再乘 attention_scaling（只有 yarn ≠ 1）。

    seq_len 只对 dynamic 有意义：序列超过 max_position_embeddings 时放大 theta（NTK-aware），否则与 default 相同。
    """
    dim, theta, s = config.head_dim, config.rope_theta, config.rope_scaling or {}
    rope_type = config.rope_type
    if rope_type == "default":
        return _base_inv_freq(theta, dim), 1.0
    factor = s["factor"]
    if rope_type == "linear":
        # 位置插值：把位置 m 换成 m/factor，等价于频率除以 factor
        return _base_inv_freq(theta, dim) / factor, 1.0
    if rope_type == "dynamic":
        # theta' = theta * (factor*L/L0 - (factor-1))^(d/(d-2))；L <= L0 时 theta' = theta。
        # 用 float32 张量计算，与 HF 的运算顺序和精度一致（否则长序列的角度会差 1e-5 量级）
        max_pos = config.max_position_embeddings
        length = torch.tensor(max(seq_len or max_pos, max_pos))
        theta_t = theta * ((factor * length / max_pos) - (factor - 1)) ** (dim / (dim - 2))
        return _base_inv_freq(theta_t, dim), 1.0
    if rope_type == "llama3":
        # 按波长分三段：高频（波长 < L0/high）不动，低频（波长 > L0/low）除以 factor，中间线性平滑过渡
        inv_freq = _base_inv_freq(theta, dim)
        old_len = s["original_max_position_embeddings"]
        low_wavelen, high_wavelen = old_len / s["low_freq_factor"], old_len / s["high_freq_factor"]
        wavelen = 2 * math.pi / inv_freq
        scaled = torch.where(wavelen > low_wavelen, inv_freq / factor, inv_freq)
        smooth = (old_len / wavelen - s["low_freq_factor"]) / (s["high_freq_factor"] - s["low_freq_factor"])
        smoothed = (1 - smooth) * scaled / factor + smooth * scaled
        is_medium = (wavelen >= high_wavelen) & (wavelen <= low_wavelen)
        return torch.where(is_medium, smoothed, scaled), 1.0
    # yarn：高频维度外推（不变）、低频维度插值（除以 factor），中间按"转了多少圈"线性混合；cos/sin 再乘 mscale
    old_len = s["original_max_position_embeddings"]

    def mscale_of(scale: float, m: float = 1.0) -> float:
        return 1.0 if scale <= 1 else 0.1 * m * math.log(scale) + 1.0

    attention_factor = s.get("attention_factor")
    if attention_factor is None:
        if s.get("mscale") and s.get("mscale_all_dim"):
            attention_factor = float(mscale_of(factor, s["mscale"]) / mscale_of(factor, s["mscale_all_dim"]))
        else:
            attention_factor = mscale_of(factor)
    beta_fast, beta_slow = s.get("beta_fast") or 32, s.get("beta_slow") or 1

    def dim_for_rotations(n_rot: float) -> float:  # 在 old_len 内恰好转 n_rot 圈的那个维度（连续值）
        return (dim * math.log(old_len / (n_rot * 2 * math.pi))) / (2 * math.log(theta))

    low, high = dim_for_rotations(beta_fast), dim_for_rotations(beta_slow)
    if s.get("truncate", True):
        low, high = math.floor(low), math.ceil(high)
    low, high = max(low, 0), min(high, dim - 1)
    if low == high:
        high += 0.001  # 防止除零
    ramp = torch.clamp((torch.arange(dim // 2, dtype=torch.float32) - low) / (high - low), 0, 1)
    extrapolation_weight = 1 - ramp
    pos_freqs = theta ** (torch.arange(0, dim, 2).float() / dim)
    inv_freq = (1.0 / (factor * pos_freqs)) * (1 - extrapolation_weight) + (1.0 / pos_freqs) * extrapolation_weight
    return inv_freq, attention_factor


# ---------------------------------------------------------------------------------------------------
# 3. 模块
# ---------------------------------------------------------------------------------------------------


class RMSNorm(nn.Module):
    """y = w * x / sqrt(mean(x^2) + eps)。在 fp32 里求均方根再转回原 dtype，最后乘权重（与 HF 的顺序相同）。

    config 给了且 config.kernels 的后端注册了 rms_norm 时，前向交给那个内核（同一公式，见 kernel_backends.py）。
    """

    def __init__(self, dim: int, eps: float, config: LlamaConfig | None = None) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps
        self.config = config

    def forward(self, x: Tensor) -> Tensor:
        kernel = None if self.config is None else get_kernel_backend(self.config.kernels).rms_norm
        if kernel is not None:
            return kernel(x, self.weight, self.eps)
        dtype = x.dtype
        x = x.float()
        x = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * x.to(dtype)

    def extra_repr(self) -> str:
        return f"{self.weight.numel()}, eps={self.eps}"


class RotaryEmbedding(nn.Module):
    """由位置算出旋转因子表 rope_table（B 或 1, T, 1, D/2, 2）。inv_freq 是不进 state_dict 的 buffer（由 config 决定，不是权重）。"""

    def __init__(self, config: LlamaConfig) -> None:
        super().__init__()
        self.config = config
        self.reset_inv_freq()

    def reset_inv_freq(self, device: torch.device | None = None) -> None:
        inv_freq, self.attention_scaling = rope_inv_freq(self.config)
        self.register_buffer("inv_freq", inv_freq.to(device), persistent=False)

    def _apply(self, fn, recurse: bool = True):
        """model.to(torch.bfloat16) 会把所有浮点 buffer 一起降精度；这里让 inv_freq 始终按 config 在 fp32 里重算。

        为什么：bf16 只有 8 位有效数字，inv_freq 的相对误差约 2^-9，位置 m 处的角度误差约 m * inv_freq * 2^-9，
        m = 2000 时可达数个弧度——位置编码就错了。HF 的 from_pretrained(dtype=bf16) 同样把它留在 fp32
        （但 HF 模型上直接 .to(bf16) 会把它降成 bf16）。
        """
        super()._apply(fn, recurse)
        self.reset_inv_freq(self.inv_freq.device)
        return self

    def forward(self, position_ids: Tensor) -> Tensor:
        inv_freq = self.inv_freq
        if self.config.rope_type == "dynamic":
            seq_len = int(position_ids.max()) + 1
            if seq_len > self.config.max_position_embeddings:
                inv_freq = rope_inv_freq(self.config, seq_len)[0].to(inv_freq.device)
        # 角度 θ_{m,i} = m * inv_freq[i]，在 fp32 里算（bf16 表示不了大位置 m 的精细角度）
        angles = position_ids[..., None].float() * inv_freq  # (B, T, D/2)
        return rope_table(angles, self.attention_scaling)


def rope_table(angles: Tensor, scaling: float = 1.0) -> Tensor:
    """角度 θ (B 或 1, T, D/2) → 旋转因子 (cos θ, sin θ)·scaling 成对存放：(B 或 1, T, 1, D/2, 2)，所有头共用。

    最后一维的两个数就是复数 e^{iθ} = cos θ + i·sin θ 的实部与虚部（torch.view_as_complex 可以零拷贝地这样看它）。
    HF 的 cos/sin 表 (B, T, D) 是把同一组角度重复两遍（前半/后半配对），这里每个角度只存一次。
    scaling 是 attention_scaling（只有 yarn ≠ 1）。始终是 fp32：角度本来就该在 fp32 里算，bf16/fp16 也没有复数类型。
    """
    return (torch.stack((angles.cos(), angles.sin()), dim=-1) * scaling).unsqueeze(2)


def interleave_halves(t: Tensor, dim: int) -> Tensor:
    """把第 dim 维（长 D = head_dim）的 [0..D/2) 与 [D/2..D) 交错成 0, D/2, 1, D/2+1, …

    HF 的 RoPE 把第 i 维与第 i+D/2 维配成一对旋转；交错之后每一对在内存里相邻，(x_{2j}, x_{2j+1}) 可以直接
    看成一个复数 x_{2j} + i·x_{2j+1}，旋转 θ 就是乘 e^{iθ}——前向一个复数乘法，反向也只是乘 e^{-iθ}，
    代替 rotate_half 写法的 5 个算子（neg、cat、两次乘、加）及其反向，小模型在 CPU 上每步快约 5%。
    为什么结果不变：注意力只用到 q·k，对 q 和 k 的特征做同一个置换，点积不变；v 不动，所以输出与 HF 完全相同
    （KV cache 里存的 k 也是这个顺序，只在本模块内部使用）。这正是 Meta 原版 Llama（复数、相邻配对）与 HF
    （实数、前后两半配对）的权重转换里那个置换，见 model_lab/01_components/rope.py。
    施加在 q_proj/k_proj 的权重行上（dim 是按头拆开后的行维）或施加在它们的输出上（dim=-1），效果相同。
    """
    dim %= t.dim()
    return t.unflatten(dim, (2, t.size(dim) // 2)).transpose(dim, dim + 1).flatten(dim, dim + 1)


def apply_rope(x: Tensor, rope: Tensor) -> Tensor:
    """x: (B, T, H, D)，配对相邻（见 interleave_halves）；rope: rope_table 的 (B 或 1, T, 1, D/2, 2)。每对坐标旋转角度 θ。

    (x₀ + i·x₁)·(cos θ + i·sin θ) = (x₀ cos θ − x₁ sin θ) + i·(x₁ cos θ + x₀ sin θ)。
    fp32/fp64 的 eager 前向用复数乘法：一个算子，反向也是一个。另外两种情形用同一公式的实数写法：
    - torch.compile：inductor 不为复数生成代码，实数的四次乘、一次加减它会融合成一个循环；
    - bf16/fp16：没有这种精度的复数；在 x 的 dtype 里算（cos/sin 先转过去），舍入与 HF 的
      x·cos + rotate_half(x)·sin 逐位相同（每个乘积舍入一次，再相加舍入一次，顺序也一样）。
    """
    pairs = x.unflatten(-1, (-1, 2))  # (B, T, H, D/2, 2)
    if x.dtype in (torch.float32, torch.float64) and not torch.compiler.is_compiling():
        return torch.view_as_real(torch.view_as_complex(pairs) * torch.view_as_complex(rope)).flatten(-2)
    x0, x1 = pairs.unbind(-1)
    cos, sin = rope.to(x.dtype).unbind(-1)
    return torch.stack((x0 * cos - x1 * sin, x1 * cos + x0 * sin), dim=-1).flatten(-2)  # (B, T, H, D)


def _fusable_linear(module: nn.Module) -> bool:
    """module 的 .weight / .bias 可以拼进一个大 GEMM：它的 forward 恰好是 F.linear(x, weight, bias)——类型恰好是
    nn.Linear（子类可能改了 forward），或者模块自己声明 is_plain_linear = True（张量并行里不通信的列并行层）——
    并且没挂 hook（拼接路径不调用它的 forward，前向 / 反向 hook 都会静默失效）。
    全局 hook（nn.modules.module.register_module_forward_hook）不在此列：拼接路径照样会漏掉，用它们观察投影时请设
    fuse_weights=False。"""
    plain = type(module) is nn.Linear or getattr(module, "is_plain_linear", False)
    hooks = (module._forward_hooks, module._forward_pre_hooks, module._backward_hooks, module._backward_pre_hooks)
    return plain and not any(hooks)


class Attention(nn.Module):
    """GQA 自注意力：H 个 Q 头共享 H_kv 组 K/V（H_kv = H 时就是 MHA，H_kv = 1 时是 MQA）。"""

    def __init__(self, config: LlamaConfig, layer_idx: int) -> None:
        super().__init__()
        self.config, self.layer_idx = config, layer_idx
        self.n_head, self.n_kv_head, self.head_dim = (config.num_attention_heads, config.num_key_value_heads,
                                                      config.head_dim)
        self.scale = self.head_dim ** -0.5
        bias = config.attention_bias
        self.q_proj = nn.Linear(config.hidden_size, self.n_head * self.head_dim, bias=bias)
        self.k_proj = nn.Linear(config.hidden_size, self.n_kv_head * self.head_dim, bias=bias)
        self.v_proj = nn.Linear(config.hidden_size, self.n_kv_head * self.head_dim, bias=bias)
        self.o_proj = nn.Linear(self.n_head * self.head_dim, config.hidden_size, bias=bias)

    def project_qkv(self, x: Tensor, fuse_weights: bool | None = None) -> tuple[Tensor, Tensor]:
        """x (B, T, C) → qk (B, T, H + H_kv, D)（q、k 的 RoPE 配对相邻，见 interleave_halves）与 v (B, T, H_kv, D)。

        两种算法结果相同——同一个置换，施加在权重上还是施加在输出上——默认（None）按大小挑便宜的：
        - token 多（训练、预填充，B·T ≥ C）：q/k 的权重行交错后与 v 拼成一个 ((H + 2·H_kv)·D, C) 的矩阵，
          一次 GEMM 代替三次（nanoGPT 的 c_attn 也是这样）；拷贝权重的代价被成百上千个 token 摊薄。
        - token 少（逐 token 解码）：拷贝权重比算这几个 token 还贵，于是照常算三个投影，再交错 q/k 的输出。
        参数始终是 HF 命名的 q_proj / k_proj / v_proj（checkpoint 与 HF 互通）；反向时 autograd 把梯度切回三块。

        拼权重只对三个"普通的" nn.Linear 成立：某个投影被换成别的模块（量化层、LoRA……没有可拼的 .weight），
        或挂了 forward hook（校准时记输入、调试时看激活——拼接路径根本不调用它的 forward），就总走分开的三个投影，
        fuse_weights=True 也一样：结果相同，只是不能拼。
        """
        b, t, c = x.shape
        h, h_kv, d = self.n_head, self.n_kv_head, self.head_dim
        projs = (self.q_proj, self.k_proj, self.v_proj)
        if fuse_weights is None:
            fuse_weights = b * t >= c
        if fuse_weights and all(_fusable_linear(p) for p in projs):
            def stacked(name: str) -> Tensor:  # [q 的行（交错）; k 的行（交错）; v 的行]，name = "weight" 或 "bias"
                q, k, v = (getattr(proj, name) for proj in projs)
                qk = torch.cat((q, k)).unflatten(0, (h + h_kv, d))  # 行按头拆开：(H + H_kv, D, ...)
                return torch.cat((interleave_halves(qk, dim=1).flatten(0, 1), v))

            bias = stacked("bias") if self.q_proj.bias is not None else None
            qkv = F.linear(x, stacked("weight"), bias).view(b, t, h + 2 * h_kv, d)  # (B, T, H + 2·H_kv, D)
            qk, v = qkv.split([h + h_kv, h_kv], dim=2)
            return qk, v
        q, k, v = (proj(x) for proj in projs)
        qk = torch.cat((q, k), dim=-1).view(b, t, h + h_kv, d)  # HF 的顺序：每个头 [前半 | 后半]
        return interleave_halves(qk, dim=-1), v.view(b, t, h_kv, d)

    def forward(self, x: Tensor, rope: Tensor, kv_cache: KVCache | PagedKVCache | None, attn_mask: Tensor | None,
                attn_metadata: AttnMetadata | None) -> Tensor:
        b, t, _ = x.shape
        h, h_kv, d = self.n_head, self.n_kv_head, self.head_dim
        qk, v = self.project_qkv(x)
        rotate = get_kernel_backend(self.config.kernels).apply_rope or apply_rope
        q, k = rotate(qk, rope).split([h, h_kv], dim=2)  # q 与 k 一起旋转：一次算子；(B, T, H 或 H_kv, D)
        if attn_metadata is not None:  # 打包批量：B = 1，T = N 个首尾相接的 token，直接用 (N, H, D) 的 varlen 布局
            k_ctx, v_ctx = k[0], v[0]  # (N, H_kv, D)
            if kv_cache is not None:  # 写进块池，拿回整个块池 (num_blocks, block_size, H_kv, D)
                k_ctx, v_ctx = kv_cache.update(self.layer_idx, k[0], v[0], attn_metadata.slot_mapping)
            y = packed_attention(self.config.attn_implementation, q[0], k_ctx, v_ctx, attn_metadata=attn_metadata,
                                 scale=self.scale)  # (N, H, D)
            return self.o_proj(y.reshape(b, t, h * d))
        q, k, v = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)  # (B, H, T, D), (B, H_kv, T, D) ×2
        has_prefix = kv_cache is not None and kv_cache.seq_len > 0
        if kv_cache is not None:
            k, v = kv_cache.update(self.layer_idx, k, v)  # (B, H_kv, S, D)，S = 前缀 + T
        # 没有前缀也没有 padding 时走 is_causal（内核可跳过上三角）；有前缀时 mask 由模型统一构造
        is_causal = attn_mask is None and not has_prefix and t > 1
        backend = get_attention_backend(self.config.attn_implementation).fn
        y = backend(q, k, v, is_causal=is_causal, attn_mask=attn_mask, scale=self.scale)  # (B, H, T, D)
        y = y.transpose(1, 2).reshape(b, t, h * d)  # (B, T, H*D)
        return self.o_proj(y)

    def extra_repr(self) -> str:
        return f"heads={self.n_head}, kv_heads={self.n_kv_head}, head_dim={self.head_dim}, " \
               f"backend={self.config.attn_implementation!r}"


class MLP(nn.Module):
    """SwiGLU：down(act_fn(gate(x)) * up(x))，act_fn = SiLU。

    激活是一个子模块属性（与 HF 的 LlamaMLP 相同），不是写死的 F.silu：换成自己写的 SiLU 只需
    `model.model.layers[i].mlp.act_fn = MySiLU()`，课程里的手写组件就能放进完整模型里对照。
    config.kernels 的后端注册了 swiglu（激活与逐元素乘融合成一个内核）且 act_fn 仍是 nn.SiLU 时用它；
    换上了自己的 act_fn 就照用自己的——课程对照的是你的组件，不是内核。
    """

    def __init__(self, config: LlamaConfig) -> None:
        super().__init__()
        self.config = config
        h, i, bias = config.hidden_size, config.intermediate_size, config.mlp_bias
        self.gate_proj = nn.Linear(h, i, bias=bias)
        self.up_proj = nn.Linear(h, i, bias=bias)
        self.down_proj = nn.Linear(i, h, bias=bias)
        self.act_fn = nn.SiLU()

    def forward(self, x: Tensor) -> Tensor:
        fused = get_kernel_backend(self.config.kernels).swiglu
        if fused is not None and type(self.act_fn) is nn.SiLU:
            return self.down_proj(fused(self.gate_proj(x), self.up_proj(x)))
        return self.down_proj(self.act_fn(self.gate_proj(x)) * self.up_proj(x))


class DecoderLayer(nn.Module):
    """Pre-norm 残差块：x + attn(norm(x))，再 x + mlp(norm(x))。"""

    def __init__(self, config: LlamaConfig, layer_idx: int) -> None:
        super().__init__()
        self.input_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps, config)
        self.self_attn = Attention(config, layer_idx)
        self.post_attention_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps, config)
        self.mlp = MLP(config)

    def forward(self, x: Tensor, rope: Tensor, kv_cache: KVCache | PagedKVCache | None, attn_mask: Tensor | None,
                attn_metadata: AttnMetadata | None) -> Tensor:
        x = x + self.self_attn(self.input_layernorm(x), rope, kv_cache, attn_mask, attn_metadata)
        return x + self.mlp(self.post_attention_layernorm(x))


class LlamaModel(nn.Module):
    """不含 lm_head 的主干；属性名对应 HF 的 `model.*` 权重名。"""

    def __init__(self, config: LlamaConfig) -> None:
        super().__init__()
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size)
        self.layers = nn.ModuleList(DecoderLayer(config, i) for i in range(config.num_hidden_layers))
        self.norm = RMSNorm(config.hidden_size, config.rms_norm_eps, config)
        self.rotary_emb = RotaryEmbedding(config)

    def forward(self, input_ids: Tensor, position_ids: Tensor, kv_cache: KVCache | PagedKVCache | None,
                attn_mask: Tensor | None, attn_metadata: AttnMetadata | None) -> Tensor:
        x = self.embed_tokens(input_ids)  # (B, T, C)
        rope = self.rotary_emb(position_ids)  # (B 或 1, T, 1, D/2, 2)，所有层共用
        for layer in self.layers:
            x = layer(x, rope, kv_cache, attn_mask, attn_metadata)
        return self.norm(x)


# ---------------------------------------------------------------------------------------------------
# 4. Llama：语言模型 = 主干 + lm_head
# ---------------------------------------------------------------------------------------------------


class Llama(nn.Module):
    """Llama 因果语言模型。权重名与 HF LlamaForCausalLM 相同（model.embed_tokens、model.layers.N.self_attn.q_proj、
    …、lm_head），所以 state_dict 可以直接与 HF 互换；是普通的 nn.Module，没有全局状态，DDP/FSDP 可直接包装。"""

    def __init__(self, config: LlamaConfig) -> None:
        super().__init__()
        get_attention_backend(config.attn_implementation)  # 名字拼错在构造时就报错，而不是第一次前向时
        get_kernel_backend(config.kernels)
        self.config = config
        self.model = LlamaModel(config)
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        if config.tie_word_embeddings:
            self.lm_head.weight = self.model.embed_tokens.weight  # 输入/输出共享同一矩阵
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """GPT-2 式初始化：所有 Linear/Embedding ~ N(0, 0.02)；写回残差流的投影（o_proj、down_proj）再除以 sqrt(2L)。

        为什么：每层往残差流里加 2 次（注意力、MLP），L 层共 2L 个独立增量，方差相加；
        把每个增量的标准差缩小 sqrt(2L) 倍，残差流的方差在初始化时就不随深度增长。
        """
        std = self.config.initializer_range
        for module in self.modules():
            if isinstance(module, (nn.Linear, nn.Embedding)):
                nn.init.normal_(module.weight, mean=0.0, std=std)
            if isinstance(module, nn.Linear) and module.bias is not None:
                nn.init.zeros_(module.bias)
        residual_std = std / math.sqrt(2 * self.config.num_hidden_layers)
        for layer in self.model.layers:
            nn.init.normal_(layer.self_attn.o_proj.weight, mean=0.0, std=residual_std)
            nn.init.normal_(layer.mlp.down_proj.weight, mean=0.0, std=residual_std)

    # ---- 计数 ----
    def num_parameters(self, exclude_embeddings: bool = False) -> int:
        """参数量（共享的权重只算一次）。exclude_embeddings=True 时去掉输入嵌入表（Kaplan 等人的 N 的口径）。"""
        n = sum(p.numel() for p in self.parameters())  # parameters() 已对共享参数去重
        if exclude_embeddings:
            n -= self.model.embed_tokens.weight.numel()
        return n

    def flops_per_token(self, seq_len: int, backward: bool = True) -> int:
        """每个 token 的浮点运算数（乘加各算 1 次）。

        前向 = 2 * N_matmul + 4 * L * H * D * seq_len：
          - 每个矩阵乘参数贡献一次乘加 = 2 FLOPs（N_matmul = 所有 Linear 权重，含 lm_head，不含查表的嵌入）；
          - 注意力的 q k^T 与 probs v 各是 2 * H * D * seq_len（按完整的 seq_len 计，PaLM 附录 B 的口径，
            不扣因果掩码省下的一半）。
        训练（backward=True）再乘 3：反向要对激活和权重各求一次梯度，约是前向的 2 倍。
        """
        n_matmul = sum(m.weight.numel() for m in self.modules() if isinstance(m, nn.Linear))
        c = self.config
        forward = 2 * n_matmul + 4 * c.num_hidden_layers * c.num_attention_heads * c.head_dim * seq_len
        return 3 * forward if backward else forward

    # ---- 前向 ----
    def make_kv_cache(self, batch_size: int, max_seq_len: int | None = None) -> KVCache:
        """为 (B, T) 批量的增量解码分配稠密 KV cache（设备、dtype 与模型权重相同）。"""
        c = self.config
        max_seq_len = max_seq_len or c.max_position_embeddings
        w = self.lm_head.weight
        return KVCache(c.num_hidden_layers, batch_size, c.num_key_value_heads, max_seq_len, c.head_dim,
                       device=w.device, dtype=w.dtype)

    def make_paged_kv_cache(self, num_blocks: int, block_size: int = 16) -> PagedKVCache:
        """为打包批量分配分页 KV cache（vLLM 布局，设备、dtype 与模型权重相同）。"""
        c, w = self.config, self.lm_head.weight
        return PagedKVCache(c.num_hidden_layers, num_blocks, block_size, c.num_key_value_heads, c.head_dim,
                            device=w.device, dtype=w.dtype)

    def _check_input_ids(self, input_ids: Tensor) -> None:
        if not isinstance(input_ids, Tensor) or input_ids.dim() != 2:
            shape = tuple(input_ids.shape) if isinstance(input_ids, Tensor) else type(input_ids).__name__
            raise ValueError(f"input_ids 应为 (B, T) 的整数张量，实际是 {shape}")
        if input_ids.dtype not in (torch.int64, torch.int32):
            raise ValueError(f"input_ids 的 dtype 是 {input_ids.dtype}，应为 torch.long（token id）")
        if input_ids.size(1) == 0:
            raise ValueError("input_ids 的长度 T=0：至少需要一个 token")

    def _check_length_and_vocab(self, input_ids: Tensor, end: int, parts: str) -> None:
        """end：本次涉及的最大序列长度（前缀 + 输入 [+ 生成]）；parts 说明它由哪几部分组成。"""
        c = self.config
        # 只有 dynamic RoPE 的设计目的就是超出训练长度（按当前长度放大 theta），其余类型超出即报错
        if end > c.max_position_embeddings and c.rope_type != "dynamic":
            raise ValueError(f"序列长度 {end}（{parts}）超过 max_position_embeddings={c.max_position_embeddings}；"
                             "请截断输入、减少生成长度，或使用 rope_scaling 扩展上下文")
        if torch.compiler.is_compiling():
            return  # 下面的检查要把张量的值读回 Python（.item()），会打断 torch.compile 的图；编译时跳过
        lo, hi = int(input_ids.min()), int(input_ids.max())
        if lo < 0 or hi >= c.vocab_size:
            bad = lo if lo < 0 else hi
            raise ValueError(f"token id {bad} 超出词表范围 [0, {c.vocab_size})：检查分词器与 vocab_size 是否一致")

    def forward(self, input_ids: Tensor, targets: Tensor | None = None, *, position_ids: Tensor | None = None,
                attention_mask: Tensor | None = None, kv_cache: KVCache | PagedKVCache | None = None,
                attn_metadata: AttnMetadata | None = None, logits_positions: Tensor | None = None
                ) -> Tensor | tuple[Tensor, Tensor]:
        """input_ids (B, T) -> logits (B, T, V)；给了 targets 则返回 (logits, loss)。
        （config.kernels 的后端有 linear_cross_entropy、且在训练（model.train() 且需要梯度）时返回 (None, loss)：
        融合内核从不物化 logits。）

        targets 用 nanoGPT 的约定：已经对齐好，targets[:, t] 是 input_ids[:, t] 的下一个 token，-100 的位置不计损失。
        与 HF 的 labels 的关系：HF 在内部做移位，labels 与 input_ids 对齐（通常 labels = input_ids），
        等价的 targets = labels 左移一位、末尾补 -100：`targets = F.pad(labels[:, 1:], (0, 1), value=-100)`。

        两种批量：
        - (B, T) 批量：position_ids (B, T) 或 (T,)，默认 start..start+T-1；attention_mask (B, 前缀+T) 的 0/1，
          0 = padding（该位置不被任何 query 看到）；kv_cache 是 KVCache：前缀长度 = kv_cache.seq_len，
          K/V 写进缓存，调用后前进 T。
        - 打包批量（attn_metadata 不为 None）：input_ids (1, N) 是几条序列首尾相接，每个 token 只看自己序列里
          不晚于它的 token（以及 PagedKVCache 里该序列已缓存的上下文）；position_ids 默认由元数据推出，给了就必须一致；
          kv_cache 只能是 PagedKVCache（用 cache.prepare(...) 生成的元数据）。
        logits_positions：(K,) 的扁平下标（摊平成 B·T 后的位置），只在这些位置算 lm_head，返回 (K, V)；
        推理引擎传 attn_metadata.last_token_indices。此时不能给 targets。
        """
        self._check_input_ids(input_ids)
        b, t = input_ids.shape
        c, w = self.config, self.lm_head.weight
        check_cache(kv_cache, attn_metadata, batch_size=b, new_tokens=t, num_layers=c.num_hidden_layers,
                    num_kv_heads=c.num_key_value_heads, head_dim=c.head_dim, dtype=w.dtype, device=w.device)
        position_ids, length, what = resolve_positions(input_ids, position_ids, attention_mask, kv_cache, attn_metadata)
        self._check_length_and_vocab(input_ids, length, what)
        if targets is not None and targets.shape != input_ids.shape:
            raise ValueError(f"targets 的形状 {tuple(targets.shape)} 应与 input_ids {tuple(input_ids.shape)} 相同")
        h = self.forward_hidden(input_ids, position_ids, kv_cache, attention_mask, attn_metadata)  # (B, T, C)
        fused_loss = get_kernel_backend(c.kernels).linear_cross_entropy
        if targets is not None and fused_loss is not None and self.training and torch.is_grad_enabled():
            # 融合的 lm_head + 交叉熵：按块算 logits 并当场变成 loss 与梯度，(B·T, V) 的 logits 从不整块出现——
            # 所以这里没有 logits 可返回（None）。只在训练时走这条路；评估与生成要 logits，照常算。
            return None, fused_loss(h.flatten(0, 1), w, targets.reshape(-1), ignore_index=-100)
        if logits_positions is not None:
            h = h.flatten(0, 1)[check_logits_positions(logits_positions, b * t, targets)]  # (K, C)
        logits = self.lm_head(h)  # (B, T, V) 或 (K, V)
        if targets is None:
            return logits
        # 交叉熵在 fp32 里算：bf16 的 log-softmax 在大词表上误差明显
        loss = F.cross_entropy(logits.float().view(-1, logits.size(-1)), targets.reshape(-1), ignore_index=-100)
        return logits, loss

    def forward_hidden(self, input_ids: Tensor, position_ids: Tensor, kv_cache: KVCache | PagedKVCache | None = None,
                       attention_mask: Tensor | None = None, attn_metadata: AttnMetadata | None = None) -> Tensor:
        """主干前向（不做输入检查、不算 lm_head），返回 (B, T, C)。generate 与推理引擎自己检查过输入后直接调它。

        (B, T) 批量：构造掩码 -> 各层 -> 稠密缓存前进 T。打包批量：掩码由元数据决定，分页缓存的位置由 prepare 管理。
        """
        if attn_metadata is not None:
            return self.model(input_ids, position_ids, kv_cache, None, attn_metadata)
        start = kv_cache.seq_len if kv_cache is not None else 0
        attn_mask = make_attention_mask(input_ids.size(1), start, attention_mask, input_ids.device)
        h = self.model(input_ids, position_ids, kv_cache, attn_mask, None)
        if kv_cache is not None:
            kv_cache.advance(input_ids.size(1))
        return h

    # ---- 生成 ----
    @torch.no_grad()
    def generate(self, input_ids: Tensor, max_new_tokens: int, temperature: float = 1.0, top_k: int | None = None,
                 top_p: float | None = None, *, generator: torch.Generator | None = None,
                 eos_token_id: int | None = None, attention_mask: Tensor | None = None,
                 use_cache: bool = True, cache_factory: Callable[[int, int], KVCache] | None = None) -> Tensor:
        """自回归生成，返回 (B, T + 生成的长度)；循环本身在 model_lab.generation.generate（与 GPT-2 共用）。

        temperature=0 为贪心（与 HF 的 do_sample=False 相同）。use_cache=False 每步重算整个序列（慢，用于对照）。
        eos_token_id：某行生成 eos 后，之后填 config.pad_token_id（没有则填 eos）；所有行都结束就提前停止。
        attention_mask：左侧 padding 的批量生成（(B, T) 的 0/1），位置编号按 HF 的规则从第一个真实 token 记 0。
        cache_factory：(batch_size, max_seq_len) -> 空的 KVCache（例如量化的 KV cache），None = make_kv_cache。
        """
        check_max_new_tokens(max_new_tokens)
        self._check_input_ids(input_ids)
        t = input_ids.size(1)
        self._check_length_and_vocab(input_ids, t + max_new_tokens, f"输入 {t} + 生成 {max_new_tokens}")
        return generate(self, input_ids, max_new_tokens, temperature, top_k, top_p, generator=generator,
                        eos_token_id=eos_token_id, attention_mask=attention_mask, use_cache=use_cache,
                        pad_token_id=self.config.pad_token_id, cache_factory=cache_factory)

    # ---- 与 HF 目录互通（model_lab/hf_io.py） ----
    def save_pretrained(self, save_dir: str | os.PathLike) -> Path:
        """写出 HF 格式目录：model.safetensors + config.json（AutoModelForCausalLM.from_pretrained 可直接加载）。

        共享权重时不写 lm_head.weight；先写权重、最后写 config.json，每个文件原子写入。
        """
        cfg = self.config.to_dict()
        cfg.pop("attn_implementation")  # 运行时选择，不是权重的属性
        cfg.pop("kernels")
        return save_hf_directory(self, save_dir, cfg)

    @classmethod
    def from_pretrained(cls, load_dir: str | os.PathLike, device: torch.device | str | None = None,
                        dtype: torch.dtype | None = None, attn_implementation: str = "sdpa",
                        kernels: str = "torch") -> Llama:
        """加载 HF LlamaForCausalLM.save_pretrained 写出的目录（单个 model.safetensors 或分片 + index.json）。

        dtype=None 时保持文件里的 dtype。模型先建在 meta 设备上，再把读到的张量直接装进去：
        大模型加载时不会先占一份随机权重的内存。旧版 HF checkpoint 里的 rotary_emb.inv_freq 由 config 决定，忽略。
        """
        def build(raw: dict[str, Any]) -> Llama:
            return cls(LlamaConfig.from_dict({**raw, "attn_implementation": attn_implementation, "kernels": kernels}))

        def after_load(model: nn.Module) -> None:  # meta 上建的非持久 buffer 要按 config 重新算
            model.model.rotary_emb.reset_inv_freq(device)

        return load_hf_directory(load_dir, model_type="llama", architectures=("LlamaForCausalLM",), build=build,
                                 device=device, dtype=dtype, ignored_suffixes=("rotary_emb.inv_freq",),
                                 after_load=after_load)


# ---------------------------------------------------------------------------------------------------
# 5. 演示与对照
# ---------------------------------------------------------------------------------------------------


def build_llama_hf_reference(model: Llama, attn_implementation: str | None = None):
    """构造同配置、同权重的 HF LlamaForCausalLM（eval 模式、同 dtype）；main、测试和基准用它做对照。

    attn_implementation：HF 那边的注意力实现（"eager" / "sdpa"）；None 时跟随我们的 config（注册的其他后端对应 "sdpa"）。
    """
    import transformers

    cfg = model.config.to_dict()
    ours = cfg.pop("attn_implementation")
    cfg.pop("kernels")
    for key in ("architectures", "model_type"):
        cfg.pop(key)
    if attn_implementation is None:
        attn_implementation = ours if ours in ("eager", "sdpa") else "sdpa"
    hf = transformers.LlamaForCausalLM(transformers.LlamaConfig(**cfg, attn_implementation=attn_implementation))
    hf.load_state_dict(model.state_dict())
    rotary = hf.model.rotary_emb
    inv_freq, original = rotary.inv_freq.clone(), rotary.original_inv_freq.clone()
    hf = hf.to(model.lm_head.weight.dtype)
    # 与 HF 自己的 from_pretrained(dtype=...) 一致：RoPE 频率留在 fp32（.to(dtype) 会把它一起降精度）
    rotary.inv_freq, rotary.original_inv_freq = inv_freq, original
    return hf.eval()


def main() -> None:
    from utils.torch_playground import benchmark_interleaved, setup_seed

    smoke = is_smoke()
    setup_seed(0)
    config = LlamaConfig(vocab_size=256 if smoke else 2048, hidden_size=64 if smoke else 256,
                         intermediate_size=128 if smoke else 688, num_hidden_layers=2 if smoke else 4,
                         num_attention_heads=4 if smoke else 8, num_key_value_heads=2 if smoke else 4,
                         max_position_embeddings=256, rope_theta=10000.0)
    model = Llama(config).eval()
    b, t = (2, 17) if smoke else (4, 128)
    print(f"Llama: {config.num_hidden_layers} 层, hidden={config.hidden_size}, heads={config.num_attention_heads}"
          f"/{config.num_key_value_heads}（GQA）, 参数量 {model.num_parameters():,}"
          f"（不含嵌入 {model.num_parameters(exclude_embeddings=True):,}）, "
          f"训练 FLOPs/token @T={t}: {model.flops_per_token(t) / 1e6:.2f} M")

    hf = build_llama_hf_reference(model)
    ids = torch.randint(0, config.vocab_size, (b, t))
    targets = F.pad(ids[:, 1:], (0, 1), value=-100)
    model.train()
    logits, loss = model(ids, targets)
    loss.backward()
    hf_out = hf(ids, labels=ids)
    hf_out.loss.backward()
    max_diff = (logits - hf_out.logits).abs().max().item()
    g_ours = model.model.layers[0].self_attn.q_proj.weight.grad
    g_hf = hf.model.layers[0].self_attn.q_proj.weight.grad
    print(f"与 HF 对照：logits 最大差 {max_diff:.2e}，loss {loss.item():.6f} vs {hf_out.loss.item():.6f}，"
          f"q_proj 梯度最大差 {(g_ours - g_hf).abs().max().item():.2e}")
    assert max_diff < 1e-4 and abs(loss.item() - hf_out.loss.item()) < 1e-5
    model.eval()

    prompt = ids[:1, :8]
    n_new = 8 if smoke else 32
    ours = model.generate(prompt, n_new, temperature=0)
    theirs = hf.generate(prompt, max_new_tokens=n_new, do_sample=False, eos_token_id=None, pad_token_id=0)
    print(f"贪心生成 {n_new} 个 token 与 HF 相同：{torch.equal(ours, theirs)}")
    assert torch.equal(ours, theirs)

    def step(m, use_hf: bool) -> None:
        m.zero_grad(set_to_none=True)
        (m(ids, labels=ids).loss if use_hf else m(ids, targets)[1]).backward()

    model.train()
    hf.train()
    reps = 3 if smoke else 5
    ms_ours, ms_hf = benchmark_interleaved([lambda: step(model, False), lambda: step(hf, True)], warmup=2, reps=reps)
    tok = b * t
    print(f"前向+反向 {tok} tokens：ours {tok / ms_ours * 1e3:,.0f} tok/s，HF {tok / ms_hf * 1e3:,.0f} tok/s，"
          f"吞吐比 ours/HF {ms_hf / ms_ours:.2f}x")
    print(timing_note("benchmarks/model_lab_llama.py"))


if __name__ == "__main__":
    lesson_args(__doc__)
    main()
