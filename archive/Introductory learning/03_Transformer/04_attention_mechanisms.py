"""注意力机制：加性（Bahdanau）、点积、缩放点积、多头；mask；正弦位置编码。

从 RNN 到注意力：seq2seq 的 RNN 编码器把整句压进最后一个隐状态，长句的信息在这一个向量里挤不下。
Bahdanau et al.（2014）让解码器每一步都回头"看"编码器的所有隐状态，按相关程度加权平均：

    score(q, k_j) → α_j = softmax_j(score) → context = Σ_j α_j v_j

不同的注意力只是 score 函数不同：
- 加性（Bahdanau）：score = wᵀ tanh(W_q q + W_k k)。一个单隐层 MLP，q、k 维度可以不同，但要对每一对 (i, j)
  各算一次 tanh，无法写成一次矩阵乘。
- 点积（Luong）：score = q·k。全部 (i, j) 一次 Q Kᵀ 搞定，矩阵乘在硬件上极快——这是 Transformer 选它的原因。
- 缩放点积（Vaswani et al. 2017）：score = q·k / √d。为什么除以 √d：若 q、k 各分量独立、均值 0、方差 1，
  q·k = Σ_{i=1..d} q_i k_i 的方差是 d（d 项方差为 1 的独立项之和）。d 大时分数的量级 ~√d，softmax 被推到
  接近 one-hot 的饱和区，梯度 ∂α/∂score = α(1−α) 几乎为 0，训练停滞。除以 √d 把方差拉回 1。
- 多头：把 d_model 维拆成 h 个 d_k = d_model/h 维的子空间，各自做缩放点积注意力，再拼接、线性变换。
  一个头的 softmax 只能形成一种"加权平均"模式；多个头可以同时关注不同位置/不同关系，总计算量与单头相同。

mask 的两种约定（最常见的坑！）：
- F.scaled_dot_product_attention：布尔 mask 中 True = **允许**注意；
- nn.MultiheadAttention 的 attn_mask / key_padding_mask：布尔 True = **禁止**注意。
两者的浮点 mask 都是"加到分数上"（禁止处加 −inf）。本文件的每个函数都遵守它所对照的那个参考实现的约定。

位置编码：注意力对键的顺序是置换不变的（打乱 k、v 的顺序，输出不变），所以必须把位置信息加进输入。
正弦编码 PE[p, 2i] = sin(p·ω_i)，PE[p, 2i+1] = cos(p·ω_i)，ω_i = 10000^(−2i/d)：
每对 (sin, cos) 是一个以频率 ω_i 旋转的单位向量，于是 PE[p+k] 是 PE[p] 的一个只依赖 k 的旋转（线性变换），
PE[p]·PE[q] = Σ_i cos((p−q) ω_i) 只依赖距离 p−q——模型容易从中学到"相对位置"。

    python "archive/Introductory learning/03_Transformer/04_attention_mechanisms.py"

图：checkpoints/figures/sinusoidal_positional_encoding.png。
"""

from __future__ import annotations

import math

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import torch
import torch.nn as nn
from torch.nn import functional as F

from utils.io import is_smoke, save_figure
from utils.lesson_cli import lesson_args
from utils.torch_playground import setup_seed, time_block

SMOKE = is_smoke()


# =============================================================================
# 1. mask 工具（True = 允许注意，与 F.scaled_dot_product_attention 相同）
# =============================================================================
def causal_mask(T: int, S: int | None = None) -> torch.Tensor:
    """(T, S) 布尔下三角：位置 i 只能看 j ≤ i（语言模型不能偷看未来）。"""
    S = T if S is None else S
    return torch.ones(T, S, dtype=torch.bool).tril()


def padding_mask(lengths: torch.Tensor, T: int) -> torch.Tensor:
    """(B,) 有效长度 -> (B, T) 布尔，True = 真实 token，False = 填充。"""
    lengths = torch.as_tensor(lengths)
    if lengths.dim() != 1 or (lengths < 1).any() or (lengths > T).any():
        raise ValueError(f"lengths 应为 (B,) 且每个值在 [1, {T}] 内，收到 {lengths.tolist()}")
    return torch.arange(T) < lengths[:, None]


def _check_qkv(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> None:
    if q.dim() < 2 or q.dim() != k.dim() or k.dim() != v.dim():
        raise ValueError(f"q、k、v 的维数应相同且 >= 2（..., T, d），收到 {tuple(q.shape)}, {tuple(k.shape)}, {tuple(v.shape)}")
    if q.size(-1) != k.size(-1):
        raise ValueError(f"q 的最后一维 {q.size(-1)} 与 k 的最后一维 {k.size(-1)} 不同：点积要求两者等长")
    if k.size(-2) != v.size(-2):
        raise ValueError(f"k 有 {k.size(-2)} 个位置而 v 有 {v.size(-2)} 个：每个键必须对应一个值")


def _apply_mask(scores: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """布尔 mask（True = 允许）把禁止处的分数置 −inf；浮点 mask 直接加到分数上。"""
    if mask is None:
        return scores
    try:
        torch.broadcast_shapes(mask.shape, scores.shape)
    except RuntimeError:
        raise ValueError(f"mask 形状 {tuple(mask.shape)} 无法广播到分数形状 {tuple(scores.shape)}（..., T_q, T_k）") from None
    if mask.dtype == torch.bool:
        if not mask.expand(scores.shape).any(-1).all():
            # 整行都被禁止：softmax(全 −inf) = 0/0 = NaN，会悄悄污染后面的一切
            raise ValueError("mask 里有一整行全是 False：这个 query 没有任何可以注意的键，softmax 会得到 NaN；"
                             "检查 padding 长度与 mask 的方向（True = 允许）")
        return scores.masked_fill(~mask, float("-inf"))
    if not mask.is_floating_point():
        raise ValueError(f"mask 必须是 bool 或浮点张量，收到 {mask.dtype}")
    return scores + mask


# =============================================================================
# 2. 三种打分函数
# =============================================================================
class AdditiveAttention(nn.Module):
    """Bahdanau 加性注意力：score(q_i, k_j) = wᵀ tanh(W_q q_i + W_k k_j)。"""

    def __init__(self, query_dim: int, key_dim: int, hidden_dim: int):
        super().__init__()
        self.W_q = nn.Linear(query_dim, hidden_dim, bias=False)
        self.W_k = nn.Linear(key_dim, hidden_dim, bias=False)
        self.w = nn.Linear(hidden_dim, 1, bias=False)

    def forward(self, q, k, v, mask=None):
        """q (B, T_q, d_q), k (B, T_k, d_k), v (B, T_k, d_v) -> (context (B, T_q, d_v), weights (B, T_q, T_k))。"""
        if q.dim() != 3 or k.dim() != 3 or v.dim() != 3 or k.size(1) != v.size(1):
            raise ValueError(f"需要 q (B, T_q, d_q), k (B, T_k, d_k), v (B, T_k, d_v)，收到 "
                             f"{tuple(q.shape)}, {tuple(k.shape)}, {tuple(v.shape)}")
        if q.size(-1) != self.W_q.in_features or k.size(-1) != self.W_k.in_features:
            raise ValueError(f"q/k 最后一维应为 {self.W_q.in_features}/{self.W_k.in_features}，"
                             f"收到 {q.size(-1)}/{k.size(-1)}")
        # 广播出所有 (i, j) 组合：(B, T_q, 1, h) + (B, 1, T_k, h) -> (B, T_q, T_k, h)，内存 O(T_q·T_k·h)
        hidden = torch.tanh(self.W_q(q)[:, :, None, :] + self.W_k(k)[:, None, :, :])
        scores = self.w(hidden).squeeze(-1)  # (B, T_q, T_k)
        weights = _apply_mask(scores, mask).softmax(-1)
        return weights @ v, weights


def dot_product_attention(q, k, v, mask=None, scale: float = 1.0):
    """score = scale · q·k。scale=1 是 Luong 的点积注意力。返回 (输出, 权重)。"""
    _check_qkv(q, k, v)
    scores = (q @ k.transpose(-2, -1)) * scale  # (..., T_q, T_k)
    weights = _apply_mask(scores, mask).softmax(-1)
    return weights @ v, weights


def scaled_dot_product_attention(q, k, v, attn_mask=None, is_causal: bool = False):
    """softmax(Q Kᵀ / √d + mask) V，与 F.scaled_dot_product_attention 的参数和 mask 约定相同。"""
    _check_qkv(q, k, v)
    if is_causal:
        if attn_mask is not None:
            raise ValueError("is_causal=True 时不要再传 attn_mask（与 F.scaled_dot_product_attention 相同）")
        attn_mask = causal_mask(q.size(-2), k.size(-2))
    out, _ = dot_product_attention(q, k, v, attn_mask, scale=1.0 / math.sqrt(q.size(-1)))
    return out


# =============================================================================
# 3. 多头注意力：参数布局与 nn.MultiheadAttention 相同
# =============================================================================
class MultiHeadAttention(nn.Module):
    """MultiHead(Q, K, V) = Concat(head_1..head_h) W_O，head_i = Attention(Q W_Q^i, K W_K^i, V W_V^i)。

    h 个头的 W_Q^i 竖着拼起来就是一个 (E, E) 矩阵，Q、K、V 三个再拼成 in_proj_weight (3E, E)：
    一次矩阵乘算出所有头的投影，再 reshape 成 (B, h, T, d_k)——与 nn.MultiheadAttention 的布局一致，
    所以 load_state_dict 可以直接互换权重。mask 约定也跟它：布尔 True = 禁止。
    """

    def __init__(self, embed_dim: int, num_heads: int, bias: bool = True, batch_first: bool = False):
        super().__init__()
        if embed_dim % num_heads != 0:
            raise ValueError(f"embed_dim={embed_dim} 不能被 num_heads={num_heads} 整除：每个头的维度必须是整数")
        self.embed_dim, self.num_heads, self.head_dim = embed_dim, num_heads, embed_dim // num_heads
        self.batch_first = batch_first
        self.in_proj_weight = nn.Parameter(torch.empty(3 * embed_dim, embed_dim))
        self.in_proj_bias = nn.Parameter(torch.zeros(3 * embed_dim)) if bias else None
        self.out_proj = nn.Linear(embed_dim, embed_dim, bias=bias)
        nn.init.xavier_uniform_(self.in_proj_weight)
        if bias:
            nn.init.zeros_(self.out_proj.bias)

    def _to_mask(self, mask, name: str, shape: tuple[int, ...]):
        """nn.MultiheadAttention 约定（True = 禁止 / 浮点加到分数上）→ 加性浮点 mask。"""
        if mask is None:
            return None
        if tuple(mask.shape) != shape:
            raise ValueError(f"{name} 形状应为 {shape}，收到 {tuple(mask.shape)}")
        if mask.dtype == torch.bool:
            return torch.zeros(shape).masked_fill(mask, float("-inf"))
        if not mask.is_floating_point():
            raise ValueError(f"{name} 必须是 bool 或浮点张量，收到 {mask.dtype}")
        return mask

    def forward(self, query, key, value, key_padding_mask=None, attn_mask=None,
                need_weights: bool = True, average_attn_weights: bool = True):
        """query (L, B, E)、key/value (S, B, E)（batch_first 时 B 在前）。

        key_padding_mask: (B, S)；attn_mask: (L, S) 或 (B·h, L, S)。返回 (输出, 注意力权重或 None)。
        """
        if query.dim() != 3 or key.dim() != 3 or value.dim() != 3:
            raise ValueError("query/key/value 必须是 3 维（未批处理的 2 维输入请先 unsqueeze 出 batch 维）")
        if self.batch_first:
            query, key, value = (t.transpose(0, 1) for t in (query, key, value))
        L, B, E = query.shape
        S = key.size(0)
        if E != self.embed_dim or key.size(-1) != E or value.size(-1) != E:
            raise ValueError(f"最后一维应为 embed_dim={self.embed_dim}，收到 {E}, {key.size(-1)}, {value.size(-1)}")
        if key.shape != value.shape or key.size(1) != B:
            raise ValueError(f"key {tuple(key.shape)} 与 value {tuple(value.shape)} 形状须相同，batch 须与 query 一致")
        h, d = self.num_heads, self.head_dim
        w_q, w_k, w_v = self.in_proj_weight.chunk(3)
        b_q, b_k, b_v = self.in_proj_bias.chunk(3) if self.in_proj_bias is not None else (None, None, None)
        # (T, B, E) -> (B, h, T, d)
        q = F.linear(query, w_q, b_q).view(L, B, h, d).permute(1, 2, 0, 3)
        k = F.linear(key, w_k, b_k).view(S, B, h, d).permute(1, 2, 0, 3)
        v = F.linear(value, w_v, b_v).view(S, B, h, d).permute(1, 2, 0, 3)
        mask = None
        if attn_mask is not None:
            shape = (L, S) if attn_mask.dim() == 2 else (B * h, L, S)
            am = self._to_mask(attn_mask, "attn_mask", shape)
            mask = am if am.dim() == 2 else am.view(B, h, L, S)
        kpm = self._to_mask(key_padding_mask, "key_padding_mask", (B, S))
        if kpm is not None:
            kpm = kpm[:, None, None, :]  # (B, 1, 1, S)：对所有头、所有 query 相同
            mask = kpm if mask is None else mask + kpm
        if mask is not None and torch.isinf(mask).all(-1).any():
            raise ValueError("mask 让某个 query 不能注意任何键（整行被禁止），softmax 会得到 NaN；"
                             "检查 key_padding_mask（True = 填充）与 attn_mask（True = 禁止）的方向")
        out, weights = dot_product_attention(q, k, v, mask, scale=1.0 / math.sqrt(d))  # (B, h, L, d), (B, h, L, S)
        out = self.out_proj(out.permute(2, 0, 1, 3).reshape(L, B, E))  # 拼接各头 -> (L, B, E) -> W_O
        if self.batch_first:
            out = out.transpose(0, 1)
        if not need_weights:
            return out, None
        return out, weights.mean(1) if average_attn_weights else weights


# =============================================================================
# 4. 正弦位置编码
# =============================================================================
def sinusoidal_positional_encoding(T: int, d: int, base: float = 10000.0,
                                   dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """(T, d)：PE[p, 2i] = sin(p ω_i)，PE[p, 2i+1] = cos(p ω_i)，ω_i = base^(−2i/d)，i = 0..d/2−1。

    频率从 ω_0 = 1（每 2π ≈ 6.3 个位置转一圈）几何递减到 ω_{d/2−1} = base^(−(d−2)/d)（d = 64 时 1/7499，
    d 越大越接近 1/base）：低维像秒针、高维像时针，组合起来给每个位置一个独特的"时间戳"。
    dtype=float32 时角度 p·ω 带着约 p·2^−24 的舍入误差（p 越大越不准），检查恒等式时用 float64。
    """
    if d % 2 != 0:
        raise ValueError(f"d={d} 必须是偶数：sin 与 cos 成对出现")
    pos = torch.arange(T, dtype=dtype)[:, None]  # (T, 1)
    omega = base ** (-torch.arange(0, d, 2, dtype=dtype) / d)  # (d/2,)
    pe = torch.empty(T, d, dtype=dtype)
    pe[:, 0::2] = torch.sin(pos * omega)
    pe[:, 1::2] = torch.cos(pos * omega)
    return pe


def relative_rotation(k: int, d: int, base: float = 10000.0) -> torch.Tensor:
    """(d, d) 块对角矩阵 R_k，使 PE[p + k] = R_k PE[p] 对所有 p 成立。

    由和角公式：sin((p+k)ω) = sin(pω)cos(kω) + cos(pω)sin(kω)，cos((p+k)ω) = cos(pω)cos(kω) − sin(pω)sin(kω)，
    每个 (sin, cos) 对被 [[cos kω, sin kω], [−sin kω, cos kω]] 旋转——R_k 与 p 无关。
    """
    omega = base ** (-torch.arange(0, d, 2, dtype=torch.float64) / d)
    R = torch.zeros(d, d, dtype=torch.float64)
    c, s = torch.cos(k * omega), torch.sin(k * omega)
    idx = torch.arange(0, d, 2)
    R[idx, idx], R[idx, idx + 1], R[idx + 1, idx], R[idx + 1, idx + 1] = c, s, -s, c
    return R


# =============================================================================
# 5. 检查与报告
# =============================================================================
def max_err(a, b) -> float:
    return max((x - y).abs().max().item() for x, y in zip(a, b))


def main() -> None:
    setup_seed()
    B, T, d = 2, 6, 16
    print("== 1. 缩放点积注意力 vs F.scaled_dot_product_attention（输出与梯度）==")
    for mask_kind in ("none", "causal", "bool", "float"):
        q, k, v = (torch.randn(B, 3, T, d, requires_grad=True) for _ in range(3))
        mask = {"none": None, "causal": None, "bool": torch.rand(B, 1, T, T) > 0.3,
                "float": torch.randn(B, 1, T, T)}[mask_kind]
        if mask_kind == "bool":
            mask[..., 0] = True  # 保证每行至少有一个允许的键
        causal = mask_kind == "causal"
        ours = scaled_dot_product_attention(q, k, v, mask, is_causal=causal)
        ref = F.scaled_dot_product_attention(q, k, v, mask, is_causal=causal)
        g = torch.randn_like(ref)
        err = max(max_err([ours], [ref]), max_err(torch.autograd.grad(ours, (q, k, v), g),
                                                   torch.autograd.grad(ref, (q, k, v), g)))
        print(f"  mask={mask_kind:6s} 最大误差 {err:.1e}")
        assert err < 1e-5

    print("\n== 2. 多头注意力 vs nn.MultiheadAttention（相同权重）==")
    for batch_first in (False, True):
        ref = nn.MultiheadAttention(32, 4, batch_first=batch_first)
        ours = MultiHeadAttention(32, 4, batch_first=batch_first)
        ours.load_state_dict(ref.state_dict())
        shape = (B, T, 32) if batch_first else (T, B, 32)
        x = torch.randn(shape, requires_grad=True)
        kpm = torch.tensor([[False] * T, [False] * (T - 2) + [True] * 2])  # 第二条序列最后 2 个是填充
        am = ~causal_mask(T)  # nn.MultiheadAttention 的约定：True = 禁止
        o_r, w_r = ref(x, x, x, key_padding_mask=kpm, attn_mask=am)
        o_o, w_o = ours(x, x, x, key_padding_mask=kpm, attn_mask=am)
        g = torch.randn_like(o_r)
        params_r, params_o = [x, *ref.parameters()], [x, *ours.parameters()]
        err = max(max_err([o_o, w_o], [o_r, w_r]),
                  max_err(torch.autograd.grad(o_o, params_o, g), torch.autograd.grad(o_r, params_r, g)))
        print(f"  batch_first={batch_first!s:5s} causal + padding mask：输出/权重/梯度最大误差 {err:.1e}")
        assert err < 1e-5

    print("\n== 3. 为什么除以 √d：q, k ~ N(0, I) 时 ==")
    n_keys = 32
    print(f"  理论 Var(q·k) = d；{n_keys} 个键上的最大 softmax 权重：均匀分布 1/{n_keys} = {1 / n_keys:.3f}，one-hot = 1")
    print("     d   Var(q·k)  max softmax 权重(不缩放)  (缩放后，与 d 无关)")
    for dim in (16, 64, 256, 1024):
        q, k = torch.randn(512, dim), torch.randn(512, n_keys, dim)
        scores = torch.einsum("nd,ntd->nt", q, k)
        print(f"  {dim:5d}  {scores.var().item():8.1f}  {scores.softmax(-1).max(-1).values.mean().item():22.3f}"
              f"  {(scores / math.sqrt(dim)).softmax(-1).max(-1).values.mean().item():8.3f}")

    print("\n== 4. 加性注意力 ==")
    add = AdditiveAttention(query_dim=8, key_dim=12, hidden_dim=10)
    q, k, v = torch.randn(B, 3, 8), torch.randn(B, T, 12), torch.randn(B, T, 5)
    lengths = torch.tensor([T, 3])
    ctx, w = add(q, k, v, padding_mask(lengths, T)[:, None, :])
    print(f"  q 与 k 维度不同（8 vs 12）也能打分；输出 {tuple(ctx.shape)}；"
          f"填充位置的权重之和 {w[1, :, 3:].sum().item():.1f}，每行权重和 {w.sum(-1).mean().item():.3f}")

    print("\n== 5. 正弦位置编码 ==")
    with time_block("pe", verbose=False) as t:
        T_pe, d_pe = (64, 32) if SMOKE else (128, 64)
        pe = sinusoidal_positional_encoding(T_pe, d_pe, dtype=torch.float64)
        rot_err, toeplitz_err = pe_identity_errors(pe)
        pe32_err = (sinusoidal_positional_encoding(T_pe, d_pe).double() - pe).abs().max().item()
    print(f"  PE[p+k] = R_k PE[p]（R_k 与 p 无关）最大误差 {rot_err:.1e}；"
          f"PE[p]·PE[q] 只依赖 p−q，最大偏差 {toeplitz_err:.1e}（float64，{t.ms:.0f} ms）")
    print(f"  float32 算的 PE 与 float64 最大差 {pe32_err:.1e}：角度 p·ω 在 float32 里的舍入误差约 p·2^−24，"
          f"p 最大 {T_pe - 1} 时 {(T_pe - 1) * 2.0**-24:.1e}——所以上面的恒等式要用 float64 检查")
    assert rot_err < 1e-10 and toeplitz_err < 1e-10
    assert pe32_err <= 2 * T_pe * 2.0**-24  # 角度两次舍入（ω 与 p·ω）各 ≤ 2^−24 相对误差，再加 sin/cos 自身的舍入
    path = save_figure(plot_positional_encoding(pe), "sinusoidal_positional_encoding.png", dpi=120)
    print(f"  图已保存：{path}")


def pe_identity_errors(pe: torch.Tensor, shifts=(1, 5, 17)) -> tuple[float, float]:
    """两条恒等式在 pe (T, d) 上的最大误差：PE[p+k] = R_k PE[p]（对 shifts 里的 k），PE[p]·PE[q] 只依赖 p−q。"""
    T, d = pe.shape
    # 行向量写法：PE[p+k]ᵀ = PE[p]ᵀ R_kᵀ，对所有 p 一次算完
    rot_err = max((pe[: T - k] @ relative_rotation(k, d).to(pe.dtype).T - pe[k:]).abs().max().item()
                  for k in shifts if k < T)
    gram = pe @ pe.T  # (T, T)：PE[p]·PE[q]
    toeplitz_err = max((gram.diagonal(k) - gram.diagonal(k)[0]).abs().max().item() for k in range(T))
    return rot_err, toeplitz_err


def plot_positional_encoding(pe: torch.Tensor):
    """左：PE 矩阵（横轴位置、纵轴维度）；右：PE[T/2] 与每个位置的点积，关于 q = T/2 对称。返回 Figure。"""
    T = pe.size(0)
    gram = pe @ pe.T
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4))
    im = ax1.imshow(pe.T.numpy(), aspect="auto", cmap="RdBu", origin="lower")
    ax1.set_xlabel("position p (0-based)")
    ax1.set_ylabel("dimension index (even = sin, odd = cos)")
    ax1.set_title("Sinusoidal positional encoding")
    fig.colorbar(im, ax=ax1, label="PE value")
    ax2.plot(range(T), gram[T // 2].numpy())
    ax2.axvline(T // 2, ls="--", c="gray", label=f"q = p = {T // 2}")
    ax2.set_xlabel("position q (0-based)")
    ax2.set_ylabel(f"PE[{T // 2}] . PE[q]")
    ax2.set_title("Dot product depends only on distance")
    ax2.legend(loc="upper right")  # 右上角空着：离 q = p 远的点积明显低于峰值 d/2
    fig.tight_layout()
    return fig


if __name__ == "__main__":
    lesson_args(__doc__)
    main()
