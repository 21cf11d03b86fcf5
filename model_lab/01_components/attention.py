"""注意力（Attention）：缩放点积、掩码、数值安全的 softmax、MHA / GQA / MQA 与 KV cache。

运行：python model_lab/01_components/attention.py   或   python -m model_lab.01_components.attention

一、缩放点积注意力
    Attention(Q, K, V) = softmax(Q Kᵀ / √d + M) V
    - Q Kᵀ 的第 (i, j) 项是"第 i 个 query 对第 j 个 key 的打分"。
    - 为什么除以 √d：若 q、k 的分量独立、均值 0、方差 1，则 q·k = Σ_d q_d k_d 的方差是 d。
      不缩放时 d=128 的打分标准差约 11，softmax 会饱和成 one-hot，梯度几乎为 0；除以 √d 把方差拉回 1。
    - M 是掩码：允许的位置加 0，禁止的位置加 -inf（softmax 后权重恰好为 0）。
二、数值安全的 softmax
    softmax(x)_j = exp(x_j) / Σ exp(x_k) = exp(x_j - m) / Σ exp(x_k - m)，对任意常数 m 成立。
    取 m = max_k x_k，指数的最大值变成 exp(0)=1，不会上溢（fp32 里 exp(89) 就是 inf）。
    陷阱：整行都被掩掉（例如左填充时，填充位置的 query 在因果掩码下看不到任何真实 key），
    m = -inf，x - m = -inf - (-inf) = NaN。我们把这种行的 m 换成 0、分母 0 换成 1，输出全 0 的权重——
    这与 torch 2.x 的 F.scaled_dot_product_attention 的约定一致。（HF 的 eager 实现用 finfo.min 代替 -inf，
    同一行会得到均匀分布；这些行本来就是填充，只要 loss 不看它们，两种约定等价。）
三、MHA / GQA / MQA：全由 num_key_value_heads 决定
    MHA：每个 query 头有自己的 K、V 头（nkv = nh）。MQA：所有 query 头共用 1 个 K/V 头（nkv = 1）。
    GQA：折中，每 nh/nkv 个 query 头为一组共用一个 K/V 头（Llama-3-8B：32 个 query 头、8 个 KV 头）。
    计算时用 repeat_kv 把 K/V 头复制成 nh 个（临时张量；融合 kernel 如 SDPA 的 enable_gqa 连这次复制也省了）。
    省下来的是 KV cache 的显存与读带宽——自回归解码每步都要把整段 KV cache 从显存读一遍，正是被它卡住的。
四、KV cache
    解码第 t 步时，前 t-1 个 token 的 K、V 不会变（因果掩码保证旧 token 看不到新 token），
    所以缓存下来，每步只为新 token 算 q、k、v，复杂度从 O(t²) 降到 O(t)。缓存的是 RoPE 之后、
    repeat_kv 之前的 K/V：旋转只做一次，存储按 nkv 而不是 nh 计。
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from utils.io import is_smoke, save_figure
from utils.lesson_cli import lesson_args, timing_note
from utils.torch_playground import benchmark_interleaved, setup_seed


# ---------------------------------------------------------------------------
# 1. 缩放点积注意力（掩码 + 安全 softmax），与 F.scaled_dot_product_attention 同一约定
# ---------------------------------------------------------------------------
def safe_softmax(scores: torch.Tensor, dim: int = -1) -> torch.Tensor:
    """减去行最大值的 softmax；整行为 -inf（全被掩掉）时输出全 0 而不是 NaN。"""
    row_max = scores.amax(dim=dim, keepdim=True).detach()  # softmax 对平移不变，m 不需要梯度
    row_max = torch.where(torch.isfinite(row_max), row_max, torch.zeros_like(row_max))
    exp = torch.exp(scores - row_max)  # 最大项是 exp(0)=1：不会上溢
    denom = exp.sum(dim=dim, keepdim=True)
    return exp / torch.where(denom == 0, torch.ones_like(denom), denom)  # 全掩行：0 / 1 = 0


def repeat_kv(x: torch.Tensor, n_rep: int) -> torch.Tensor:
    """(B, nkv, T, hs) -> (B, nkv*n_rep, T, hs)：第 g 个 KV 头服务第 g*n_rep … g*n_rep+n_rep-1 个 query 头。"""
    if n_rep == 1:
        return x
    b, nkv, t, hs = x.shape
    return x[:, :, None].expand(b, nkv, n_rep, t, hs).reshape(b, nkv * n_rep, t, hs)


def _check_mask(mask: torch.Tensor, target: tuple[int, ...]) -> None:
    ok = mask.dim() <= 4 and all(m in (1, t) for m, t in zip(reversed(mask.shape), reversed(target)))
    if not ok:
        raise ValueError(
            f"attn_mask 的形状 {tuple(mask.shape)} 不能广播到打分矩阵 {target}（B, nh, Tq, Tk）；"
            f"padding 掩码请用 (B, 1, 1, Tk)，因果掩码用 (Tq, Tk)"
        )


def attention_weights(q, k, attn_mask=None, is_causal=False, scale=None) -> torch.Tensor:
    """P = softmax(q kᵀ · scale + M)，形状 (B, nh, Tq, Tk)。

    attn_mask 与 PyTorch 相同：bool（True=可以看）或浮点（直接加到打分上）。
    is_causal 的对角线靠右下对齐：query i 的绝对位置是 Tk - Tq + i（KV cache 解码时 Tq < Tk）。
    注意 PyTorch SDPA 的 is_causal 是左上对齐，两者只在 Tq == Tk 时相同；其余情况请显式传 mask。
    """
    if q.dim() != 4 or k.dim() != 4:
        raise ValueError(f"q、k 必须是 4 维 (B, nh, T, hs)，收到 q{tuple(q.shape)} k{tuple(k.shape)}")
    b, nh, tq, hs = q.shape
    if k.shape[0] != b or k.shape[-1] != hs:
        raise ValueError(f"q{tuple(q.shape)} 与 k{tuple(k.shape)} 的 batch 或 head_dim 不一致")
    if nh % k.shape[1] != 0:
        raise ValueError(f"query 头数 {nh} 不能被 KV 头数 {k.shape[1]} 整除（GQA 要求整组共享）")
    k = repeat_kv(k, nh // k.shape[1])
    tk = k.shape[2]
    scale = 1.0 / math.sqrt(hs) if scale is None else scale
    scores = (q @ k.transpose(-2, -1)) * scale  # (B, nh, Tq, Tk)
    if is_causal:
        # key j 可见 ⇔ j <= i + (Tk - Tq)：triu 的 diagonal 参数正是这个偏移
        future = torch.ones(tq, tk, dtype=torch.bool, device=q.device).triu(tk - tq + 1)
        scores = scores.masked_fill(future, float("-inf"))
    if attn_mask is not None:
        _check_mask(attn_mask, tuple(scores.shape))
        if attn_mask.dtype == torch.bool:
            scores = scores.masked_fill(~attn_mask, float("-inf"))
        else:
            scores = scores + attn_mask
    return safe_softmax(scores, dim=-1)


def scaled_dot_product_attention(q, k, v, attn_mask=None, is_causal=False, scale=None) -> torch.Tensor:
    """手写的 softmax(q kᵀ/√d + M) v；k、v 可以比 q 少头（GQA/MQA），对应 SDPA 的 enable_gqa=True。"""
    if v.shape[:3] != k.shape[:3]:
        raise ValueError(f"k{tuple(k.shape)} 与 v{tuple(v.shape)} 的 (B, nkv, Tk) 必须相同")
    p = attention_weights(q, k, attn_mask, is_causal, scale)
    return p @ repeat_kv(v, q.shape[1] // v.shape[1])  # (B, nh, Tq, hs_v)


# ---------------------------------------------------------------------------
# 2. 自带的最小 RoPE（与 HF Llama 的 rotate_half 布局相同；详解见 rope.py）
# ---------------------------------------------------------------------------
def rope_cos_sin(position_ids: torch.Tensor, head_dim: int, theta: float = 10000.0):
    """θ_i = theta^(-2i/d)；返回 (B, T, d) 的 cos、sin（前后两半相同频率）。"""
    inv_freq = 1.0 / theta ** (torch.arange(0, head_dim, 2, dtype=torch.float32, device=position_ids.device) / head_dim)
    freqs = position_ids[..., None].float() * inv_freq  # (B, T, d/2)
    emb = torch.cat([freqs, freqs], dim=-1)  # (B, T, d)
    return emb.cos(), emb.sin()


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """x: (B, nh, T, d)。把第 i 维与第 i+d/2 维看成一个复数，乘以 e^{i·pos·θ_i}。"""
    x1, x2 = x.chunk(2, dim=-1)
    rotated = torch.cat([-x2, x1], dim=-1)
    return x * cos[:, None] + rotated * sin[:, None]


# ---------------------------------------------------------------------------
# 3. KV cache 与注意力模块（权重名与 HF LlamaAttention 相同，state_dict 可互相加载）
# ---------------------------------------------------------------------------
class KVCache:
    """一层的 KV cache：按序列维拼接。生产系统会预分配或分页（PagedAttention），道理相同。"""

    def __init__(self):
        self.k: torch.Tensor | None = None  # (B, nkv, T_past, hs)，已经过 RoPE
        self.v: torch.Tensor | None = None

    @property
    def seq_len(self) -> int:
        return 0 if self.k is None else self.k.shape[2]

    def update(self, k: torch.Tensor, v: torch.Tensor):
        self.k = k if self.k is None else torch.cat([self.k, k], dim=2)
        self.v = v if self.v is None else torch.cat([self.v, v], dim=2)
        return self.k, self.v


@dataclass
class AttentionConfig:
    hidden_size: int = 64
    num_attention_heads: int = 4
    num_key_value_heads: int = 4  # = nh：MHA；1：MQA；之间：GQA
    head_dim: int | None = None  # None 表示 hidden_size // num_attention_heads
    rope_theta: float = 10000.0
    attention_bias: bool = False

    def __post_init__(self):
        if self.head_dim is None:
            if self.hidden_size % self.num_attention_heads != 0:
                raise ValueError(
                    f"hidden_size={self.hidden_size} is not divisible by num_attention_heads="
                    f"{self.num_attention_heads}；请调整二者或显式给出 head_dim"
                )
            self.head_dim = self.hidden_size // self.num_attention_heads
        if self.num_attention_heads % self.num_key_value_heads != 0:
            raise ValueError(
                f"num_attention_heads={self.num_attention_heads} is not divisible by num_key_value_heads="
                f"{self.num_key_value_heads}；GQA 要求每组 query 头数相同"
            )
        if self.head_dim % 2 != 0:
            raise ValueError(f"head_dim={self.head_dim} 必须是偶数（RoPE 把维度两两配对旋转）")


class Attention(nn.Module):
    """因果自注意力：MHA / GQA / MQA 由 num_key_value_heads 决定；use_sdpa 切换到 PyTorch 的融合实现。"""

    def __init__(self, config: AttentionConfig):
        super().__init__()
        c, hs = config, config.head_dim
        self.config = config
        self.q_proj = nn.Linear(c.hidden_size, c.num_attention_heads * hs, bias=c.attention_bias)
        self.k_proj = nn.Linear(c.hidden_size, c.num_key_value_heads * hs, bias=c.attention_bias)
        self.v_proj = nn.Linear(c.hidden_size, c.num_key_value_heads * hs, bias=c.attention_bias)
        self.o_proj = nn.Linear(c.num_attention_heads * hs, c.hidden_size, bias=c.attention_bias)

    def forward(self, x, position_ids=None, padding_mask=None, kv_cache: KVCache | None = None, use_sdpa=False):
        """x: (B, T, C)。padding_mask: (B, T_past+T)，1=真实 token、0=填充（HF 的 2D attention_mask）。"""
        c = self.config
        if x.dim() != 3 or x.shape[-1] != c.hidden_size:
            raise ValueError(f"x 应为 (B, T, {c.hidden_size})，收到 {tuple(x.shape)}")
        b, t, _ = x.shape
        past = 0 if kv_cache is None else kv_cache.seq_len
        tk = past + t  # 本步能看到的 key 数
        if padding_mask is not None and padding_mask.shape != (b, tk):
            raise ValueError(
                f"padding_mask 的形状应为 (B, T_past+T)=({b}, {tk})，收到 {tuple(padding_mask.shape)}；"
                f"用 KV cache 时要把历史 token 的掩码一起传进来"
            )
        if position_ids is None:
            position_ids = torch.arange(past, tk, device=x.device).expand(b, t)
        q = self.q_proj(x).view(b, t, c.num_attention_heads, c.head_dim).transpose(1, 2)  # (B, nh, T, hs)
        k = self.k_proj(x).view(b, t, c.num_key_value_heads, c.head_dim).transpose(1, 2)  # (B, nkv, T, hs)
        v = self.v_proj(x).view(b, t, c.num_key_value_heads, c.head_dim).transpose(1, 2)  # (B, nkv, T, hs)
        cos, sin = rope_cos_sin(position_ids, c.head_dim, c.rope_theta)
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        if kv_cache is not None:
            k, v = kv_cache.update(k, v)  # (B, nkv, T_past+T, hs)
        mask = None  # 纯因果且没有历史 token：只传 is_causal，SDPA 才可能选 FlashAttention kernel（显式 mask 会挡住它）
        if padding_mask is not None or tk != t:
            mask = torch.ones(t, tk, dtype=torch.bool, device=x.device).tril(tk - t)  # 因果，右下对齐
            if padding_mask is not None:
                mask = mask & padding_mask.bool()[:, None, None, :]  # (B, 1, T, Tk)
        if use_sdpa:
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=mask is None, enable_gqa=True)
        else:
            y = scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=mask is None)
        y = y.transpose(1, 2).reshape(b, t, c.num_attention_heads * c.head_dim)  # (B, T, nh*hs)
        return self.o_proj(y)


# ---------------------------------------------------------------------------
# 4. KV cache 有多大：每 token 每层 = 2(K 与 V) × nkv × hs × 字节数；MLA 只存 d_c + d_rope
# ---------------------------------------------------------------------------
def kv_cache_table(layers=32, heads=32, kv_heads=8, head_dim=128, bytes_per_elem=2, kv_lora_rank=512, rope_dim=64):
    """默认 Llama-3-8B 量级（32 层、32 头、8 个 KV 头、hs=128）、bf16；MLA 行用 DeepSeek-V3 的 d_c 与 d_rope。
    返回 [(名称, 每层每 token 字节, 全模型每 token 字节)]。"""
    rows = [
        (f"MHA (nkv={heads})", 2 * heads * head_dim),
        (f"GQA (nkv={kv_heads})", 2 * kv_heads * head_dim),
        ("MQA (nkv=1)", 2 * head_dim),
        (f"MLA (d_c={kv_lora_rank}+d_rope={rope_dim})", kv_lora_rank + rope_dim),  # c 与 k^R，不分 K/V、不分头
    ]
    return [(name, n * bytes_per_elem, n * bytes_per_elem * layers) for name, n in rows]


def attention_figure(mask: torch.Tensor, weights: torch.Tensor):
    """左：bool 掩码 (Tq, Tk)（白 = 可见）；右：注意力权重 (Tq, Tk)。返回 Figure。"""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(9, 4))
    axes[0].imshow(mask.numpy(), cmap="gray")
    axes[0].set_title("mask: causal & left padding (white = visible)")
    im = axes[1].imshow(weights.numpy(), cmap="viridis", vmin=0, vmax=1)
    axes[1].set_title("attention weights (seq 2, head 0)")
    for ax in axes:
        ax.set_xlabel("key position")
        ax.set_ylabel("query position")
    fig.colorbar(im, ax=axes[1], label="softmax weight")
    fig.tight_layout()
    return fig


def _hf_llama_attention(config: AttentionConfig):
    """同尺寸的 HF LlamaAttention（eager 实现）及其 rotary embedding。"""
    from transformers import LlamaConfig
    from transformers.models.llama.modeling_llama import LlamaAttention, LlamaRotaryEmbedding

    hf_config = LlamaConfig(
        hidden_size=config.hidden_size, num_attention_heads=config.num_attention_heads,
        num_key_value_heads=config.num_key_value_heads, head_dim=config.head_dim,
        attention_bias=config.attention_bias, attn_implementation="eager",
        rope_parameters={"rope_type": "default", "rope_theta": config.rope_theta},
    )
    return LlamaAttention(hf_config, layer_idx=0), LlamaRotaryEmbedding(hf_config)


def main():
    setup_seed()
    smoke = is_smoke()
    config = AttentionConfig(hidden_size=64, num_attention_heads=8, num_key_value_heads=2)
    attn = Attention(config)
    b, t = 2, 9
    x = torch.randn(b, t, config.hidden_size)
    padding = torch.ones(b, t, dtype=torch.long)
    padding[1, :3] = 0  # 第 2 条序列左填充 3 个 token
    position_ids = (padding.cumsum(-1) - 1).clamp_min(0)  # 位置从第一个真实 token 开始数

    # 1) 手写 == PyTorch SDPA
    # 下面三个对照都是 fp32、输出量级 ~1：数学上相等，只差求和顺序（矩阵乘的分块、softmax 的归约），
    # 期望几个 ulp（fp32 的 ε = 2⁻²³ ≈ 1.19e-7），≲ 1e-6；到 1e-4 以上就是真 bug（掩码、缩放、RoPE 配对错了）
    tol = "期望 ≲ 1e-6：fp32 下只差求和顺序"
    y_ours = attn(x, position_ids, padding)
    y_sdpa = attn(x, position_ids, padding, use_sdpa=True)
    print(f"[check] 手写注意力 vs F.scaled_dot_product_attention：max|diff| = {(y_ours - y_sdpa).abs().max():.2e}"
          f"（{tol}）")

    # 2) == HF LlamaAttention（同一份权重；只比较真实 token 的行，填充行的约定不同，见文件开头）
    hf_attn, rotary = _hf_llama_attention(config)
    hf_attn.load_state_dict(attn.state_dict())
    mask4d = torch.ones(t, t, dtype=torch.bool).tril() & padding.bool()[:, None, None, :]
    additive = torch.zeros(mask4d.shape).masked_fill(~mask4d, torch.finfo(torch.float32).min)
    y_hf, _ = hf_attn(x, position_embeddings=rotary(x, position_ids), attention_mask=additive)
    real = padding.bool()
    print(f"[check] vs HF LlamaAttention（GQA 8/2）：max|diff| = {(y_ours - y_hf)[real].abs().max():.2e}（{tol}）")

    # 3) KV cache 逐 token 解码 == 整段重算
    cache = KVCache()
    steps = [attn(x[:, i : i + 1], position_ids[:, i : i + 1], padding[:, : i + 1], kv_cache=cache) for i in range(t)]
    y_inc = torch.cat(steps, dim=1)
    print(f"[check] KV cache 增量解码 vs 整段计算：max|diff| = {(y_inc - y_ours)[real].abs().max():.2e}（{tol}）")

    # 4) 大打分也不溢出；整行被掩掉输出 0 而不是 NaN
    huge = torch.tensor([[1e30, 1e30, -1e30], [float("-inf")] * 3])
    print(f"[check] safe_softmax([[1e30,1e30,-1e30],[-inf]*3]) = {safe_softmax(huge).tolist()}")

    # 5) 计时：手写 vs SDPA（前向 + 反向）
    bt, tt = (2, 64) if smoke else (8, 512)
    qkv = [torch.randn(bt, 8, tt, 64, requires_grad=True) for _ in range(3)]

    def fwd_bwd(fn):
        return lambda: fn(*qkv, is_causal=True).sum().backward()

    ms_ours, ms_ref = benchmark_interleaved([fwd_bwd(scaled_dot_product_attention), fwd_bwd(F.scaled_dot_product_attention)],
                                            warmup=1, reps=3 if smoke else 10)
    print(f"[time] B={bt} nh=8 T={tt} hs=64 前向+反向：手写 {ms_ours:.2f} ms，SDPA {ms_ref:.2f} ms，比值 {ms_ours / ms_ref:.2f}x")
    print(timing_note("benchmarks/model_lab_attention.py"))

    # 6) KV cache 大小表
    print("\nKV cache（bf16，32 层，32 个 query 头，head_dim=128，即 Llama-3-8B 量级）")
    print(f"{'变体':<28}{'每层每 token':>14}{'全模型每 token':>16}{'8K 上下文':>12}{'相对 MHA':>10}")
    table = kv_cache_table()
    mha = table[0][1]  # 基线：每个 query 头都有自己的 K/V
    for name, per_layer, per_token in table:
        print(f"{name:<28}{per_layer:>12,} B{per_token / 1024:>13.0f} KiB{per_token * 8192 / 2**30:>10.2f} GiB"
              f"{per_layer / mha:>10.3f}")

    # 7) 图：因果 + 左填充的掩码，以及第 2 条序列第 1 个头的注意力权重
    with torch.no_grad():
        c = config
        q = attn.q_proj(x).view(b, t, c.num_attention_heads, c.head_dim).transpose(1, 2)
        k = attn.k_proj(x).view(b, t, c.num_key_value_heads, c.head_dim).transpose(1, 2)
        cos, sin = rope_cos_sin(position_ids, c.head_dim)
        p = attention_weights(apply_rope(q, cos, sin), apply_rope(k, cos, sin), mask4d)
    path = save_figure(attention_figure(mask4d[1, 0], p[1, 0]), "attention_weights.png", dpi=120)
    print(f"\n图已保存：{path}（填充行的权重全 0：它们没有可看的 key）")


if __name__ == "__main__":
    lesson_args(__doc__)
    main()
