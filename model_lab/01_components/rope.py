"""RoPE 旋转位置编码：推导、两种内存布局、四种长度外推（频率缩放）方案。

运行：python model_lab/01_components/rope.py   （或 python -m model_lab.01_components.rope；SMOKE=1 几秒跑完）

推导（RoFormer, Su et al. 2021）
--------------------------------
想要一个位置编码 f(x, m)，使注意力分数只依赖相对位置：<f(q, m), f(k, n)> = g(q, k, m - n)。
把 head 的 D 维两两配对，第 i 对看成一个复数 z_i，令 f(z_i, m) = z_i · e^{i m θ_i}（旋转 m·θ_i 弧度）：
    Re[ f(q,m)_i · conj(f(k,n)_i) ] = Re[ q_i · conj(k_i) · e^{i (m-n) θ_i} ]
绝对位置 m、n 只以差 m - n 出现——相对位置性质由"旋转矩阵的乘积仍是旋转"直接给出。
频率取几何级数 θ_i = base^{-2i/D}（i = 0..D/2-1，base 即 rope_theta，默认 10000）：
第 0 对每个 token 转 1 弧度（波长 2π），最后一对（i = D/2−1）的波长是 2π·base^{(D−2)/D}
（D=128、base=10000 时约 5.4 万个 token，略短于 2π·base ≈ 6.3 万），从"看相邻 token"到"看整段上下文"全覆盖。

两种布局（同一个数学，不同的"哪两维配成一对"）
- interleaved（Meta 原版 llama）：第 i 对 = (x[2i], x[2i+1])，用 torch.view_as_complex 做复数乘法。
- rotate-half（HF transformers）：第 i 对 = (x[i], x[i + D/2])，用 rotate_half 与实数 cos/sin 计算，
  不需要复数 dtype（某些后端/编译器不支持复数），cos/sin 还能直接广播。
两者差一个对 head 内维度的固定置换 perm = [0, 2, 4, …, 1, 3, 5, …]。因为 q·k 在同时置换 q、k 时不变，
HF 的转换脚本把这个置换"烤进" q_proj/k_proj 的权重行里（permute_qk_weight），推理时不用再付置换的代价。

长度外推：在短上下文上训练、在长上下文上推理时，低频维度会转到训练时从没见过的角度。
四种方案都只是改写 inv_freq（和一个注意力缩放系数），见下面的 *_inv_freq 函数。
"""

from __future__ import annotations

import math

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import torch
from torch import nn

from utils.io import is_smoke, output_path, save_figure
from utils.lesson_cli import lesson_args, timing_note
from utils.torch_playground import benchmark_interleaved, setup_seed

ROPE_TYPES = ("default", "linear", "dynamic", "yarn", "llama3")


# ---------------------------------------------------------------------------
# 1. 频率：inv_freq[i] = θ_i，以及各种缩放方案
# ---------------------------------------------------------------------------
def default_inv_freq(head_dim: int, theta: float) -> torch.Tensor:
    """θ_i = theta^{-2i/D}，形状 (D/2,)，fp32（与 HF 相同的算法与精度，逐位相等）。"""
    return 1.0 / (theta ** (torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim))


def linear_inv_freq(head_dim: int, theta: float, factor: float) -> torch.Tensor:
    """Position Interpolation（kaiokendev / Chen et al. 2023）：位置 m → m/factor，等价于 θ_i → θ_i/factor。

    长度扩大 factor 倍后最大角度仍落在训练见过的范围内；代价是高频维度也被压缩，相邻 token 更难区分。
    """
    return default_inv_freq(head_dim, theta) / factor


def dynamic_ntk_inv_freq(head_dim: int, theta: float, factor: float, max_position_embeddings: int,
                         seq_len: int) -> torch.Tensor:
    """动态 NTK-aware 缩放：不缩放位置，而是放大 base。

    要求最低频那一对 (i = D/2-1) 被插值 s 倍、最高频 (i = 0) 不变：
        base'^{(D-2)/D} = s · base^{(D-2)/D}  ⇒  base' = base · s^{D/(D-2)}
    "dynamic"：s 随当前长度 L 线性增长，s = factor·L/L0 - (factor-1)，L ≤ L0 时 s = 1（短序列零损失）。
    注意：按这个（HF 的）公式，L = factor·L0 时 s = factor² − factor + 1，而不是 factor。
    坑：频率随长度变化，KV cache 里早先按旧频率旋转过的 key 与新 query 不再一致。
    """
    seq_len = max(seq_len, max_position_embeddings)
    scale = factor * seq_len / max_position_embeddings - (factor - 1)
    base = theta * scale ** (head_dim / (head_dim - 2))
    return default_inv_freq(head_dim, base)


def yarn_inv_freq(head_dim: int, theta: float, factor: float, original_max_position_embeddings: int,
                  beta_fast: float = 32, beta_slow: float = 1, truncate: bool = True,
                  attention_factor: float | None = None, mscale: float | None = None,
                  mscale_all_dim: float | None = None) -> tuple[torch.Tensor, float]:
    """YaRN（Peng et al. 2023）："按波长分段"插值 + 注意力温度修正，返回 (inv_freq, attention_scaling)。

    第 i 对在原上下文 L0 内转的圈数 r_i = L0·θ_i/(2π)。r_i > beta_fast：高频，局部位置信息，不动（外推）；
    r_i < beta_slow：低频，除以 factor（插值）；中间线性过渡。解 r_i = r 得到对应的维度下标：
        i(r) = D · ln(L0 / (2π r)) / (2 ln base)
    attention_scaling = 0.1·ln(factor) + 1：插值后注意力分布变"平"，把 cos/sin 同乘这个数（q·k 乘它的平方）
    让 softmax 的熵回到训练时的水平。DeepSeek 的变体用 mscale/mscale_all_dim 两个系数之比。
    """
    def correction_dim(num_rotations: float) -> float:
        return head_dim * math.log(original_max_position_embeddings / (num_rotations * 2 * math.pi)) / (
            2 * math.log(theta))

    low, high = correction_dim(beta_fast), correction_dim(beta_slow)
    if truncate:
        low, high = math.floor(low), math.ceil(high)
    low, high = max(low, 0), min(high, head_dim - 1)  # 上界取 D-1 与 HF 一致（ramp 在 D/2 之后本就为 1）
    if low == high:
        high += 0.001  # 避免除以零
    # ramp = 0 → 外推（原频率），ramp = 1 → 插值（频率 / factor）。
    # 运算顺序照抄 HF：factor 不是 2 的幂（3、5、40……）时，fp32 里 (1/b)/factor 与 1/(factor·b) 有一部分频率
    # 差一个 ulp（D=128、factor=3 时 64 个里 26 个），位置 500 处放大成约 8e-6 弧度的角度差；
    # factor 是 2 的幂时除法精确，两种写法逐位相同
    ramp = ((torch.arange(head_dim // 2, dtype=torch.float32) - low) / (high - low)).clamp(0, 1)
    keep = 1 - ramp
    pos_freqs = theta ** (torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim)  # 1/θ_i
    inv_freq = 1.0 / (factor * pos_freqs) * (1 - keep) + 1.0 / pos_freqs * keep

    def get_mscale(scale: float, m: float = 1.0) -> float:
        return 1.0 if scale <= 1 else 0.1 * m * math.log(scale) + 1.0

    if attention_factor is None:
        if mscale and mscale_all_dim:
            attention_factor = get_mscale(factor, mscale) / get_mscale(factor, mscale_all_dim)
        else:
            attention_factor = get_mscale(factor)
    return inv_freq, float(attention_factor)


def llama3_inv_freq(head_dim: int, theta: float, factor: float, low_freq_factor: float,
                    high_freq_factor: float, original_max_position_embeddings: int) -> torch.Tensor:
    """Llama 3.1 的分段缩放：按波长 λ_i = 2π/θ_i 与原上下文 L0 比较。

    λ < L0/high_freq_factor：高频，不动；λ > L0/low_freq_factor：低频，θ/factor；
    中间按 smooth = (L0/λ - low)/(high - low) 在两者之间线性插值。思想同 YaRN，只是用波长而非圈数、没有温度项。
    """
    inv_freq = default_inv_freq(head_dim, theta)
    wavelen = 2 * math.pi / inv_freq
    low_freq_wavelen = original_max_position_embeddings / low_freq_factor
    high_freq_wavelen = original_max_position_embeddings / high_freq_factor
    smooth = (original_max_position_embeddings / wavelen - low_freq_factor) / (high_freq_factor - low_freq_factor)
    smoothed = (1 - smooth) * inv_freq / factor + smooth * inv_freq
    out = torch.where(wavelen > low_freq_wavelen, inv_freq / factor, inv_freq)
    is_medium = (wavelen >= high_freq_wavelen) & (wavelen <= low_freq_wavelen)
    return torch.where(is_medium, smoothed, out)


def compute_inv_freq(head_dim: int, rope_parameters: dict | None = None, max_position_embeddings: int = 2048,
                     seq_len: int | None = None) -> tuple[torch.Tensor, float]:
    """按 HF 的 `config.rope_parameters` 字典分派，返回 (inv_freq (D/2,), attention_scaling)。"""
    if head_dim <= 0 or head_dim % 2:
        raise ValueError(f"head_dim={head_dim} 必须是正偶数：RoPE 把维度两两配对旋转；请检查 hidden_size/num_heads")
    params = dict(rope_parameters or {})
    rope_type = params.get("rope_type", "default")
    if rope_type not in ROPE_TYPES:
        raise ValueError(f"未知的 rope_type={rope_type!r}；可选：{', '.join(ROPE_TYPES)}")
    theta = float(params.get("rope_theta", 10000.0))

    def need(key: str):
        if params.get(key) is None:
            raise ValueError(f"rope_type={rope_type!r} 需要参数 {key!r}，请在 rope_parameters 里给出")
        return params[key]

    if rope_type == "default":
        return default_inv_freq(head_dim, theta), 1.0
    factor = float(need("factor"))
    if factor < 1.0:
        raise ValueError(f"factor={factor} 必须 ≥ 1（它是上下文扩展倍数）")
    if rope_type == "linear":
        return linear_inv_freq(head_dim, theta, factor), 1.0
    if rope_type == "dynamic":
        return dynamic_ntk_inv_freq(head_dim, theta, factor, max_position_embeddings,
                                    seq_len or max_position_embeddings), 1.0
    original = params.get("original_max_position_embeddings") or max_position_embeddings
    if rope_type == "yarn":
        return yarn_inv_freq(head_dim, theta, factor, original, beta_fast=params.get("beta_fast") or 32,
                             beta_slow=params.get("beta_slow") or 1, truncate=params.get("truncate", True),
                             attention_factor=params.get("attention_factor"), mscale=params.get("mscale"),
                             mscale_all_dim=params.get("mscale_all_dim"))
    return llama3_inv_freq(head_dim, theta, factor, need("low_freq_factor"), need("high_freq_factor"), original), 1.0


# ---------------------------------------------------------------------------
# 2. cos/sin 表与两种布局的旋转
# ---------------------------------------------------------------------------
class RotaryEmbedding(nn.Module):
    """给定 position_ids，产出 rotate-half 布局的 cos/sin，形状 (B, T, D)，dtype 同 x。

    角度 m·θ_i 一律在 inv_freq 的精度（fp32）里算，最后才转成 x 的 dtype：bf16 只有 8 位尾数，
    在 512~1024 之间相邻可表示数相差 4，位置 1000 处的角度会错出 2 弧度。
    """

    def __init__(self, head_dim: int, rope_parameters: dict | None = None, max_position_embeddings: int = 2048):
        super().__init__()
        self.head_dim = head_dim
        self.rope_parameters = dict(rope_parameters or {})
        self.max_position_embeddings = max_position_embeddings
        inv_freq, self.attention_scaling = compute_inv_freq(head_dim, rope_parameters, max_position_embeddings)
        self.register_buffer("inv_freq", inv_freq, persistent=False)  # 可由公式重算，不进 checkpoint

    def forward(self, x: torch.Tensor, position_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        inv_freq = self.inv_freq
        if self.rope_parameters.get("rope_type") == "dynamic":  # 频率随当前长度变化，每次按最大位置重算
            seq_len = int(position_ids.max()) + 1
            inv_freq = compute_inv_freq(self.head_dim, self.rope_parameters, self.max_position_embeddings,
                                        seq_len)[0].to(self.inv_freq.device)
        freqs = position_ids[..., None].to(inv_freq.dtype) * inv_freq  # (B, T, D/2)：角度 m·θ_i
        emb = torch.cat((freqs, freqs), dim=-1)  # (B, T, D)：rotate-half 布局里第 i 维和第 i+D/2 维同频
        cos = emb.cos() * self.attention_scaling
        sin = emb.sin() * self.attention_scaling
        return cos.to(x.dtype), sin.to(x.dtype)


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    """(x1, x2) → (-x2, x1)：把每对 (x[i], x[i+D/2]) 逆时针转 90°，即复数乘以 i。"""
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


def _check_shapes(x: torch.Tensor, cos: torch.Tensor) -> None:
    if x.shape[-1] % 2:
        raise ValueError(f"head_dim={x.shape[-1]} 必须是偶数：RoPE 把维度两两配对旋转")
    if cos.dim() != 3 or x.dim() != 4 or cos.shape[-1] != x.shape[-1] or cos.shape[1] != x.shape[2]:
        raise ValueError(f"形状不匹配：x 应为 (B, nh, T, D)、cos/sin 为 (B, T, D)，"
                         f"收到 x={tuple(x.shape)}、cos={tuple(cos.shape)}")


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """rotate-half 布局：x·cos + rotate_half(x)·sin。x (B, nh, T, D)，cos/sin (B, T, D)。

    对第 i 对 (a, b) = (x[i], x[i+D/2])：(a cos − b sin, a sin + b cos)——正是复数 (a+ib)·e^{iφ}。
    """
    _check_shapes(x, cos)
    cos, sin = cos.unsqueeze(1), sin.unsqueeze(1)  # (B, 1, T, D)：所有 head 共用一张表
    return x * cos + rotate_half(x) * sin


def apply_rope_interleaved(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """interleaved 布局（Meta 原版）：第 i 对是 (x[2i], x[2i+1])，用实数写出复数乘法 (a+ib)(c+is)。

    这是为了看清公式的写法：跨步切片 + stack 会多次拷贝，CPU 上比 Meta 的 view_as_complex 复数乘法
    （一个融合 kernel）慢约 5.6 倍（benchmarks/RESULTS.md 的单线程测量）。生产代码用 rotate-half 或复数写法。
    """
    _check_shapes(x, cos)
    half = x.shape[-1] // 2
    c, s = cos[..., :half].unsqueeze(1), sin[..., :half].unsqueeze(1)  # (B, 1, T, D/2)：每对一个角度
    a, b = x[..., 0::2], x[..., 1::2]  # (B, nh, T, D/2)
    return torch.stack((a * c - b * s, a * s + b * c), dim=-1).flatten(-2)  # 交错放回 (B, nh, T, D)


def interleaved_to_half_perm(head_dim: int) -> torch.Tensor:
    """perm = [0, 2, 4, …, 1, 3, 5, …]：x_half = x_interleaved[..., perm]。"""
    return torch.cat((torch.arange(0, head_dim, 2), torch.arange(1, head_dim, 2)))


def permute_qk_weight(weight: torch.Tensor, n_heads: int) -> torch.Tensor:
    """把 Meta 布局的 q_proj/k_proj 权重 (n_heads·D, in) 的行按 perm 重排成 HF 布局（HF 转换脚本做的事）。

    每个 head 的 D 行看成 (D/2, 2)：(对 i, 对内第 j 个)；转置成 (2, D/2) 后，先排所有对的实部，再排虚部。
    """
    out_features, in_features = weight.shape
    if out_features % n_heads or (out_features // n_heads) % 2:
        raise ValueError(f"权重行数 {out_features} 必须是 n_heads={n_heads} 乘一个偶数 head_dim")
    head_dim = out_features // n_heads
    return weight.view(n_heads, head_dim // 2, 2, in_features).transpose(1, 2).reshape(out_features, in_features)


# ---------------------------------------------------------------------------
# 3. 演示与对照
# ---------------------------------------------------------------------------
def _hf_rope(head_dim: int, rope_parameters: dict, max_pos: int):
    from transformers import LlamaConfig
    from transformers.models.llama.modeling_llama import LlamaRotaryEmbedding

    config = LlamaConfig(hidden_size=head_dim * 2, num_attention_heads=2, max_position_embeddings=max_pos,
                         rope_parameters=dict(rope_parameters))
    return LlamaRotaryEmbedding(config)


def spectrum_figure(head_dim: int = 128, theta: float = 500000.0, original: int = 8192, factor: float = 8.0):
    """左：各方案每一对维度的波长 2π/θ_i；右：|Σ_i e^{i·r·θ_i}|/(D/2)——RoPE 的远程衰减。返回 Figure。

    图上文字用英文：matplotlib 默认字体没有中文字形，中文会变成方框。
    """
    configs = {
        "default": {"rope_type": "default"},
        "linear": {"rope_type": "linear", "factor": factor},
        f"dynamic (L={int(factor) * original})": {"rope_type": "dynamic", "factor": factor},
        "yarn": {"rope_type": "yarn", "factor": factor, "original_max_position_embeddings": original},
        "llama3": {"rope_type": "llama3", "factor": factor, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                   "original_max_position_embeddings": original},
    }
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(12, 4.5))
    for name, params in configs.items():
        inv_freq, _ = compute_inv_freq(head_dim, {"rope_theta": theta, **params}, original, seq_len=factor * original)
        ax1.semilogy(2 * math.pi / inv_freq, label=name)
    ax1.axhline(original, color="gray", ls="--", lw=1, label=f"original context L0={original}")
    ax1.set(xlabel="pair index i", ylabel="wavelength 2π/θ_i (tokens)",
            title=f"RoPE spectrum (D={head_dim}, base={theta:g})")
    ax1.legend(fontsize=8)
    rel = torch.arange(0, 4 * original, 8, dtype=torch.float64)
    inv_freq = default_inv_freq(head_dim, theta).double()
    decay = torch.polar(torch.ones_like(rel[:, None]), rel[:, None] * inv_freq).sum(-1).abs() / (head_dim // 2)
    ax2.semilogx(rel[1:], decay[1:])
    ax2.set(xlabel="relative distance m−n (tokens)", ylabel="|Σ exp(i(m−n)θ_i)| / (D/2)",
            title="long-term decay (q = k = ones)")
    fig.tight_layout()
    return fig


def plot_spectrum(path, **kwargs):
    """画 spectrum_figure(**kwargs) 并原子地存到 path，返回 path。"""
    return save_figure(spectrum_figure(**kwargs), path, dpi=120)


def main() -> None:
    from transformers.models.llama.modeling_llama import apply_rotary_pos_emb

    setup_seed()
    smoke = is_smoke()
    B, nh, T, D = (1, 2, 17, 16) if smoke else (2, 8, 513, 128)
    max_pos = 8 if smoke else 256  # dynamic 只在 T > max_pos 时才真正缩放
    original = max_pos // 4  # yarn / llama3 假装"原始训练长度"是 max_pos 的 1/4
    print(f"== RoPE 对照 transformers（B={B}, nh={nh}, T={T}, D={D}, max_pos={max_pos}；"
          f"期望差全为 0：同一算法、同一运算顺序、都在 fp32）==")
    cases = [
        {"rope_type": "default", "rope_theta": 10000.0},
        {"rope_type": "linear", "rope_theta": 10000.0, "factor": 4.0},
        {"rope_type": "dynamic", "rope_theta": 10000.0, "factor": 2.0},
        {"rope_type": "yarn", "rope_theta": 10000.0, "factor": 4.0, "original_max_position_embeddings": original},
        {"rope_type": "llama3", "rope_theta": 500000.0, "factor": 8.0, "low_freq_factor": 1.0,
         "high_freq_factor": 4.0, "original_max_position_embeddings": original},
    ]
    q = torch.randn(B, nh, T, D)
    pos = torch.arange(T).expand(B, T)
    for params in cases:
        ours, ref = RotaryEmbedding(D, params, max_pos), _hf_rope(D, params, max_pos)
        cos, sin = ours(q, pos)
        cos_ref, sin_ref = ref(q, pos)
        q_ref, _ = apply_rotary_pos_emb(q, q, cos_ref, sin_ref)
        err = (apply_rope(q, cos, sin) - q_ref).abs().max().item()
        inv_freq = compute_inv_freq(D, params, max_pos, seq_len=T)[0]  # dynamic 的 HF buffer 在 forward 里被改写
        print(f"  {params['rope_type']:8s} inv_freq 差 {(inv_freq - ref.inv_freq).abs().max().item():.1e}"
              f"  mscale {ours.attention_scaling:.4f}/{ref.attention_scaling:.4f}"
              f"  cos 差 {(cos - cos_ref).abs().max().item():.1e}  旋转后 q 差 {err:.1e}")
        assert err < 1e-5 and abs(ours.attention_scaling - ref.attention_scaling) < 1e-12

    rope = RotaryEmbedding(D)
    cos, sin = rope(q, pos)
    perm = interleaved_to_half_perm(D)
    err = (apply_rope(q[..., perm], cos, sin) - apply_rope_interleaved(q, cos, sin)[..., perm]).abs().max().item()
    print(f"== 两种布局：rotate_half(x[perm]) 与 interleaved(x)[perm] 最大差 {err:.1e}"
          f"（期望 0：每个输出元素都是同样两个乘积的和/差）")
    assert err < 1e-5

    # 相对位置：同一对 (q, k) 整体平移 1000 个位置，分数不变（fp64 里算，排除 fp32 角度舍入）
    qk = torch.randn(1, 1, 2, D, dtype=torch.float64)  # (B, nh, 2, D)：第 0 个当 q，第 1 个当 k
    inv64 = default_inv_freq(D, 10000.0).double()

    def score(m: int, n: int) -> float:
        ang = torch.tensor([[m, n]], dtype=torch.float64)[..., None] * inv64  # (1, 2, D/2)
        r = apply_rope(qk, torch.cat((ang, ang), -1).cos(), torch.cat((ang, ang), -1).sin())
        return float(r[0, 0, 0] @ r[0, 0, 1])

    drift = max(abs(score(m, n) - score(m + 1000, n + 1000)) for m, n in [(5, 3), (100, 0), (7, 50)])
    print(f"== 相对位置：q·k 在 (m, n) 与 (m+1000, n+1000) 处最大差 {drift:.1e}（fp64；数学上是 0，"
          f"只剩舍入：ε = 2⁻⁵² ≈ 2.2e-16 乘上 |q·k| 与角度的量级，期望 ~1e-15；默认配置 3.6e-15，SMOKE 8.9e-16）")
    assert drift < 1e-9

    qg, reps = q.clone().requires_grad_(), 3 if smoke else 20
    ours_ms, hf_ms = benchmark_interleaved([lambda: apply_rope(qg, cos, sin).sum().backward(),
                                            lambda: apply_rotary_pos_emb(qg, qg, cos, sin)[0].sum().backward()],
                                           warmup=2, reps=reps)
    print(f"== 计时（前向+反向，中位数）：ours {ours_ms:.3f} ms  HF {hf_ms:.3f} ms  比值 {ours_ms / hf_ms:.2f}")
    print(timing_note("benchmarks/model_lab_components.py"))
    print(f"频谱图：{plot_spectrum(output_path('figures', 'rope_spectrum.png'))}")


if __name__ == "__main__":
    lesson_args(__doc__)
    main()
