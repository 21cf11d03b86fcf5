"""MLA（Multi-head Latent Attention，DeepSeek-V2/V3）：低秩 KV 压缩 + 解耦的 RoPE key + 权重吸收推理。

运行：python model_lab/01_components/mla.py   或   python -m model_lab.01_components.mla

一、动机：解码被 KV cache 卡住
    MHA 每层每 token 要存 2·nh·hs 个数；GQA/MQA 靠"少存几个头"省显存，但头少了表达力也降了。
    MLA 换一个思路：所有头的 K、V 都由同一个低维"潜向量" c 线性生成，只缓存 c。
二、低秩压缩（记 h 为输入，d_c = kv_lora_rank ≪ nh·hs）
    c_t      = RMSNorm(W_DKV h_t)                    ∈ R^{d_c}        ← 只缓存它（DeepSeek-V3：512 维）
    k^C_{t,i} = W_UK^(i) c_t,  v_{t,i} = W_UV^(i) c_t  （第 i 个头；W_UK、W_UV 合在 kv_b_proj 里）
    query 也可以低秩：q = W_UQ RMSNorm(W_DQ h)（q_lora_rank），省的是训练激活与参数，不影响 cache。
三、为什么 RoPE 要"解耦"
    推理时想把 W_UK 吸收进 query：q^T k = q^T W_UK c = (W_UK^T q)^T c，于是直接拿 c 当 key，不必展开 k。
    但 RoPE 让打分变成 q^T R_{m-n} W_UK c——旋转矩阵夹在中间、随位置差变化，W_UK 无法预先并进 query。
    解法：key 分两段。不带位置的 k^C（来自 c，可吸收）+ 一个所有头共享的小 key k^R = RoPE(W_KR h)
    （qk_rope_head_dim=64，像 MQA 一样只有 1 个头）；query 也分成 q^C 与 q^R = RoPE(...)。
        score_{t,s,i} = (q^C_{t,i}·k^C_{s,i} + q^R_{t,i}·k^R_s) / √(d_nope + d_rope)
    每 token 缓存 c（d_c）与 k^R（d_rope）：DeepSeek-V3 为 512+64 = 576 个数，而它若用 MHA 要
    128 头 ·(192+128) = 40960 个，是 MLA 的 71 倍（main 里的表按 61 层、bf16 算出全模型的字节数）。
四、权重吸收（推理形式）
    打分：q^C·(W_UK c) = (W_UK^T q^C)·c，先算 q_latent = W_UK^T q^C ∈ R^{d_c}（每头一次，与上下文长度无关）。
    输出：Σ_s p_s W_UV c_s = W_UV (Σ_s p_s c_s)，先在潜空间里加权求和，最后每头乘一次 W_UV（还可再并进 o_proj）。
    吸收后 MLA 就是一个 MQA：唯一的共享 KV 头，key 为 [c; k^R]（576 维），value 为 c（512 维）。
    朴素形式每步要把整段 cache 上投影成 nh 个头的 K、V（O(T·d_c·nh·(d_nope+d_v))），吸收形式完全不需要。
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from utils.io import is_smoke, save_figure
from utils.lesson_cli import lesson_args, timing_note
from utils.torch_playground import benchmark_interleaved, setup_seed


@dataclass
class MLAConfig:
    hidden_size: int = 64
    num_attention_heads: int = 4
    q_lora_rank: int | None = 32  # None：query 不做低秩（DeepSeek-V2-Lite 的做法）
    kv_lora_rank: int = 16  # d_c，缓存的潜向量维度
    qk_nope_head_dim: int = 16  # 每头不带位置的 q/k 维度
    qk_rope_head_dim: int = 8  # 解耦 RoPE 的维度（k^R 所有头共享）
    v_head_dim: int = 16
    rope_theta: float = 10000.0
    rope_interleave: bool = True  # DeepSeek 的权重把 RoPE 维度按 (x0,x1),(x2,x3)… 交错排列
    attention_bias: bool = False

    def __post_init__(self):
        for name in ("hidden_size", "num_attention_heads", "kv_lora_rank", "qk_nope_head_dim", "v_head_dim"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name}={getattr(self, name)} 必须为正整数")
        if self.qk_rope_head_dim <= 0 or self.qk_rope_head_dim % 2:
            raise ValueError(f"qk_rope_head_dim={self.qk_rope_head_dim} 必须是正偶数（RoPE 把维度两两配对旋转）")
        if self.q_lora_rank is not None and self.q_lora_rank <= 0:
            raise ValueError(f"q_lora_rank={self.q_lora_rank} 必须为正整数，或设为 None 表示不压缩 query")


class RMSNorm(nn.Module):
    """y = w · x / sqrt(mean(x²) + eps)；HF 的 kv_a_layernorm / q_a_layernorm 用默认 eps=1e-6。"""

    def __init__(self, dim: int, eps: float = 1e-6):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, x):
        return self.weight * (x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps))


def rope_cos_sin(position_ids: torch.Tensor, dim: int, theta: float):
    """(B, T) 位置 -> (B, T, dim/2) 的 cos、sin；第 i 对维度的角度 = pos · theta^(-2i/dim)。"""
    inv_freq = 1.0 / theta ** (torch.arange(0, dim, 2, dtype=torch.float32, device=position_ids.device) / dim)
    angles = position_ids[..., None].float() * inv_freq
    return angles.cos(), angles.sin()


def apply_rope(x, cos, sin, interleave: bool):
    """x: (B, n, T, d)。交错布局取 (偶, 奇) 维配对，否则取 (前半, 后半)。
    输出统一写成"前半 | 后半"：q、k 经过同一个维度置换，点积不变。"""
    x1, x2 = (x[..., 0::2], x[..., 1::2]) if interleave else x.chunk(2, dim=-1)
    cos, sin = cos[:, None], sin[:, None]  # (B, 1, T, d/2)，对头广播
    return torch.cat([x1 * cos - x2 * sin, x2 * cos + x1 * sin], dim=-1)


class LatentCache:
    """MLA 的 cache：每 token 只存 c（d_c）与共享的 k^R（d_rope，已旋转），与头数无关。"""

    def __init__(self):
        self.c_kv: torch.Tensor | None = None  # (B, T, d_c)
        self.k_rope: torch.Tensor | None = None  # (B, 1, T, d_rope)

    @property
    def seq_len(self) -> int:
        return 0 if self.c_kv is None else self.c_kv.shape[1]

    def update(self, c_kv, k_rope):
        self.c_kv = c_kv if self.c_kv is None else torch.cat([self.c_kv, c_kv], dim=1)
        self.k_rope = k_rope if self.k_rope is None else torch.cat([self.k_rope, k_rope], dim=2)
        return self.c_kv, self.k_rope


class MultiHeadLatentAttention(nn.Module):
    """因果 MLA。参数名与 HF DeepseekV3Attention 相同，state_dict 可以互相加载。"""

    def __init__(self, config: MLAConfig):
        super().__init__()
        c = config
        self.config = config
        self.qk_head_dim = c.qk_nope_head_dim + c.qk_rope_head_dim
        self.scale = self.qk_head_dim**-0.5  # nope 与 rope 两段一起算一个 √d
        nh, bias = c.num_attention_heads, c.attention_bias
        if c.q_lora_rank is None:
            self.q_proj = nn.Linear(c.hidden_size, nh * self.qk_head_dim, bias=False)
        else:
            self.q_a_proj = nn.Linear(c.hidden_size, c.q_lora_rank, bias=bias)  # W_DQ
            self.q_a_layernorm = RMSNorm(c.q_lora_rank)
            self.q_b_proj = nn.Linear(c.q_lora_rank, nh * self.qk_head_dim, bias=False)  # W_UQ（含 W_QR）
        # W_DKV 与 W_KR 合成一个矩阵：一次 matmul 同时得到 c 与 k^R
        self.kv_a_proj_with_mqa = nn.Linear(c.hidden_size, c.kv_lora_rank + c.qk_rope_head_dim, bias=bias)
        self.kv_a_layernorm = RMSNorm(c.kv_lora_rank)
        # W_UK 与 W_UV 按头交错地合在一起：每个头 [d_nope 行 W_UK^(i); d_v 行 W_UV^(i)]
        self.kv_b_proj = nn.Linear(c.kv_lora_rank, nh * (c.qk_nope_head_dim + c.v_head_dim), bias=False)
        self.o_proj = nn.Linear(nh * c.v_head_dim, c.hidden_size, bias=bias)

    def _queries(self, x):
        c = self.config
        b, t, _ = x.shape
        q = self.q_proj(x) if c.q_lora_rank is None else self.q_b_proj(self.q_a_layernorm(self.q_a_proj(x)))
        q = q.view(b, t, c.num_attention_heads, self.qk_head_dim).transpose(1, 2)  # (B, nh, T, d_nope+d_rope)
        return q.split([c.qk_nope_head_dim, c.qk_rope_head_dim], dim=-1)

    def _up_weights(self):
        """kv_b_proj.weight (nh·(d_nope+d_v), d_c) -> W_UK (nh, d_nope, d_c), W_UV (nh, d_v, d_c)。"""
        c = self.config
        w = self.kv_b_proj.weight.view(c.num_attention_heads, c.qk_nope_head_dim + c.v_head_dim, c.kv_lora_rank)
        return w.split([c.qk_nope_head_dim, c.v_head_dim], dim=1)

    def forward(self, x, position_ids=None, padding_mask=None, cache: LatentCache | None = None, absorb=False):
        """x: (B, T, C)；padding_mask: (B, T_past+T)，1=真实 token；absorb=True 用权重吸收的推理形式。"""
        c = self.config
        if x.dim() != 3 or x.shape[-1] != c.hidden_size:
            raise ValueError(f"x 应为 (B, T, {c.hidden_size})，收到 {tuple(x.shape)}")
        b, t, _ = x.shape
        past = 0 if cache is None else cache.seq_len
        tk = past + t  # 本步能看到的 key 数
        if padding_mask is not None and padding_mask.shape != (b, tk):
            raise ValueError(f"padding_mask 的形状应为 (B, T_past+T)=({b}, {tk})，收到 {tuple(padding_mask.shape)}")
        if position_ids is None:
            position_ids = torch.arange(past, tk, device=x.device).expand(b, t)
        q_nope, q_rope = self._queries(x)  # (B, nh, T, d_nope), (B, nh, T, d_rope)
        c_kv, k_rope = self.kv_a_proj_with_mqa(x).split([c.kv_lora_rank, c.qk_rope_head_dim], dim=-1)
        c_kv = self.kv_a_layernorm(c_kv)  # (B, T, d_c)
        cos, sin = rope_cos_sin(position_ids, c.qk_rope_head_dim, c.rope_theta)
        q_rope = apply_rope(q_rope, cos, sin, c.rope_interleave)
        k_rope = apply_rope(k_rope[:, None], cos, sin, c.rope_interleave)  # (B, 1, T, d_rope)：一个共享头
        if cache is not None:
            c_kv, k_rope = cache.update(c_kv, k_rope)  # 缓存的是压缩后的潜向量
        mask = torch.ones(t, tk, dtype=torch.bool, device=x.device).tril(tk - t)  # 因果，右下对齐
        if padding_mask is not None:
            mask = mask & padding_mask.bool()[:, None, None, :]  # (B, 1, T, Tk)
        w_uk, w_uv = self._up_weights() if absorb else (None, None)
        rope_scores = q_rope @ k_rope.transpose(-2, -1)  # (B, nh, T, Tk)：k^R 对所有头广播
        if absorb:
            q_latent = torch.einsum("bhtd,hdc->bhtc", q_nope, w_uk)  # W_UK^T q^C：(B, nh, T, d_c)
            scores = q_latent @ c_kv[:, None].transpose(-2, -1) + rope_scores  # 直接拿 c 当 key
        else:
            kv = self.kv_b_proj(c_kv).view(b, tk, c.num_attention_heads, -1).transpose(1, 2)  # (B, nh, Tk, d_nope+d_v)
            k_nope, v = kv.split([c.qk_nope_head_dim, c.v_head_dim], dim=-1)
            scores = q_nope @ k_nope.transpose(-2, -1) + rope_scores
        # 用 finfo.min 而非 -inf：全被掩掉的行（左填充的 query）得到均匀权重而不是 NaN，输出与 HF eager 相同；
        # 这些行是填充，输出应被丢弃（HF 把掩码加到打分上，梯度还会流过这些行，我们的 masked_fill 则给 0）
        scores = (scores * self.scale).masked_fill(~mask, torch.finfo(scores.dtype).min)
        p = torch.softmax(scores, dim=-1)  # torch 的 softmax 内部已减行最大值（见 attention.py）
        if absorb:
            o_latent = p @ c_kv[:, None]  # 先在潜空间加权求和：(B, nh, T, d_c)
            y = torch.einsum("bhtc,hvc->bhtv", o_latent, w_uv)  # 每头乘一次 W_UV：(B, nh, T, d_v)
        else:
            y = p @ v  # (B, nh, T, d_v)
        return self.o_proj(y.transpose(1, 2).reshape(b, t, -1))


# ---------------------------------------------------------------------------
# KV cache：MLA vs MHA / GQA / MQA（每 token 每层的元素数 × 字节数）
# ---------------------------------------------------------------------------
def kv_cache_bytes_per_token(kind: str, *, num_heads=128, num_kv_heads=8, head_dim=128,
                             kv_lora_rank=512, rope_dim=64, k_head_dim=192, v_head_dim=128, bytes_per_elem=2):
    """单层每 token 的 KV cache 字节数；默认是 DeepSeek-V3 的尺寸、bf16。"""
    elems = {
        "MHA": num_heads * (k_head_dim + v_head_dim),  # DeepSeek-V3 若不压缩：128 头 × (192 + 128)
        "GQA": 2 * num_kv_heads * head_dim,
        "MQA": 2 * head_dim,
        "MLA": kv_lora_rank + rope_dim,
    }
    if kind not in elems:
        raise ValueError(f"kind={kind!r} 未知；可选 {sorted(elems)}")
    return elems[kind] * bytes_per_elem


def kv_cache_figure(labels: list[str], kib_per_token: list[float], layers: int):
    """每种注意力的全模型每 token KV cache（KiB，对数纵轴）柱状图，返回 Figure。"""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.5))
    bars = ax.bar(labels, kib_per_token, color=["gray", "tab:blue", "tab:green", "tab:red"][: len(labels)])
    ax.bar_label(bars, fmt="%.0f KiB")
    ax.set_yscale("log")
    ax.set_ylim(top=max(kib_per_token) * 3)  # 给最高柱的标注留出空间
    ax.set_xlabel("attention variant (what is cached per layer)")
    ax.set_ylabel("KV cache per token (KiB, log)")
    ax.set_title(f"DeepSeek-V3 size, {layers} layers, bf16")
    fig.tight_layout()
    return fig


def _hf_deepseek_attention(config: MLAConfig):
    """同尺寸的 HF DeepseekV3Attention（eager）及其 rotary embedding。"""
    from transformers import DeepseekV3Config
    from transformers.models.deepseek_v3.modeling_deepseek_v3 import DeepseekV3Attention, DeepseekV3RotaryEmbedding

    hf_config = DeepseekV3Config(
        hidden_size=config.hidden_size, num_attention_heads=config.num_attention_heads,
        num_key_value_heads=config.num_attention_heads, q_lora_rank=config.q_lora_rank,
        kv_lora_rank=config.kv_lora_rank, qk_nope_head_dim=config.qk_nope_head_dim,
        qk_rope_head_dim=config.qk_rope_head_dim, v_head_dim=config.v_head_dim,
        rope_interleave=config.rope_interleave, attention_bias=config.attention_bias,
        rope_parameters={"rope_type": "default", "rope_theta": config.rope_theta}, attn_implementation="eager",
    )
    return DeepseekV3Attention(hf_config, layer_idx=0), DeepseekV3RotaryEmbedding(hf_config)


def _frozen(cache: LatentCache) -> LatentCache:
    """一份浅拷贝：update 只会拼出新张量，原 cache 不变，便于重复计时同一个解码步。"""
    c = LatentCache()
    c.c_kv, c.k_rope = cache.c_kv, cache.k_rope
    return c


def main():
    setup_seed()
    smoke = is_smoke()
    config = MLAConfig()
    attn = MultiHeadLatentAttention(config)
    b, t = 2, 7
    x = torch.randn(b, t, config.hidden_size)
    padding = torch.ones(b, t, dtype=torch.long)
    padding[1, :2] = 0
    position_ids = (padding.cumsum(-1) - 1).clamp_min(0)

    # 1) == HF DeepseekV3Attention（同一份权重）
    hf_attn, rotary = _hf_deepseek_attention(config)
    hf_attn.load_state_dict(attn.state_dict())
    mask = torch.ones(t, t, dtype=torch.bool).tril() & padding.bool()[:, None, None, :]
    additive = torch.zeros(mask.shape).masked_fill(~mask, torch.finfo(torch.float32).min)
    y_naive = attn(x, position_ids, padding)
    y_hf, _ = hf_attn(x, position_embeddings=rotary(x, position_ids), attention_mask=additive)
    # 三个对照都是 fp32、输出量级 ~1：数学上相等，只差矩阵乘的结合顺序（吸收形式先乘 W_UK^T），期望 ≲ 1e-6
    tol = "期望 ≲ 1e-6：fp32 下只差结合与求和顺序"
    print(f"[check] MLA（朴素形式）vs HF DeepseekV3Attention：max|diff| = {(y_naive - y_hf).abs().max():.2e}（{tol}）")

    # 2) 权重吸收 == 朴素；用 LatentCache 逐 token 解码 == 整段计算
    y_absorb = attn(x, position_ids, padding, absorb=True)
    print(f"[check] 权重吸收形式 vs 朴素形式：max|diff| = {(y_absorb - y_naive).abs().max():.2e}（{tol}）")
    cache = LatentCache()
    steps = [attn(x[:, i : i + 1], position_ids[:, i : i + 1], padding[:, : i + 1], cache, absorb=True)
             for i in range(t)]
    real = padding.bool()  # 全掩的填充行是"对 Tk 个 key 的均匀平均"，Tk 随解码步变化，只比较真实 token
    diff = (torch.cat(steps, 1) - y_naive)[real].abs().max()
    print(f"[check] LatentCache + 吸收形式逐 token 解码 vs 整段：max|diff| = {diff:.2e}（{tol}）")

    # 3) 计时：一个解码步（上下文 T_ctx），朴素形式要把整段 cache 上投影成每个头的 K、V
    # DeepSeek-V3 每头的真实维度（d_c=512、d_rope=64、d_nope=d_v=128），只把头数与 hidden 缩小
    big = MLAConfig(hidden_size=1024, num_attention_heads=16, q_lora_rank=512, kv_lora_rank=512,
                    qk_nope_head_dim=128, qk_rope_head_dim=64, v_head_dim=128)
    model = MultiHeadLatentAttention(big)
    ctx = 64 if smoke else 1024
    cache = LatentCache()  # cache 的内容不影响耗时：放入随机潜向量，代替一段 prefill
    cache.update(torch.randn(1, ctx, big.kv_lora_rank), torch.randn(1, 1, ctx, big.qk_rope_head_dim))
    with torch.no_grad():
        x1 = torch.randn(1, 1, big.hidden_size)
        pos = torch.tensor([[ctx]])

        def step(absorb):
            # 每次都从同一段 cache 的浅拷贝出发：update 拼出新张量，原 cache 不变，上下文长度固定
            return lambda: model(x1, pos, cache=_frozen(cache), absorb=absorb)

        reps = 3 if smoke else 10
        ms_naive, ms_absorb = benchmark_interleaved([step(False), step(True)], warmup=2, reps=reps)
    print(f"[time] 解码 1 个 token，上下文 {ctx}：朴素 {ms_naive:.2f} ms，吸收 {ms_absorb:.2f} ms，"
          f"加速 {ms_naive / ms_absorb:.1f}x")
    print(timing_note("benchmarks/model_lab_attention.py"))

    # 4) KV cache 表（DeepSeek-V3：61 层、128 头，bf16）与柱状图
    layers = 61
    print(f"\nKV cache，DeepSeek-V3 尺寸（{layers} 层，bf16）：")
    kinds = ["MHA", "GQA", "MQA", "MLA"]
    per_layer = [kv_cache_bytes_per_token(k) for k in kinds]
    for kind, nbytes in zip(kinds, per_layer):
        print(f"  {kind:<4} 每层每 token {nbytes:>7,} B   全模型每 token {nbytes * layers / 1024:>8.1f} KiB"
              f"   128K 上下文 {nbytes * layers * 131072 / 2**30:>7.1f} GiB   相对 MHA ×{nbytes / per_layer[0]:.3f}")

    labels = ["MHA\n128 heads", "GQA\n8 kv heads", "MQA\n1 kv head", "MLA\n512+64"]
    fig = kv_cache_figure(labels, [n * layers / 1024 for n in per_layer], layers)
    print(f"图已保存：{save_figure(fig, 'mla_kv_cache.png', dpi=120)}")


if __name__ == "__main__":
    lesson_args(__doc__)
    main()
