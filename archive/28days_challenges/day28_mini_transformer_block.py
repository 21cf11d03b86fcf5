"""第 28 天 综合三：从零件拼出一个 Pre-LN Transformer block，与 nn.TransformerEncoderLayer 逐位对齐。

GPT 式（Pre-LN）的一个 block：

    x = x + Attn(LN₁(x))          # 因果多头自注意力（第 25 天）
    x = x + MLP(LN₂(x))           # Linear(C → 4C) → GELU → Linear(4C → C)

- LayerNorm 对最后一维做：y = (x − μ) / √(σ² + ε) · γ + β，σ² 是**有偏**方差（除以 C，不是 C − 1）。
- GELU(x) = x·Φ(x) = ½x(1 + erf(x/√2))（精确版；GPT-2 用 tanh 近似版，见第 13 天）。
- 残差连接让梯度有一条"直通"的路：∂(x + f(x))/∂x = I + ∂f/∂x，几十层也不会消失。
- Pre-LN（先归一化再进子层）比原始 Transformer 的 Post-LN（x = LN(x + f(x))）好训练，GPT-2 之后都用它；
  代价是残差流里的数值越加越大，所以整个网络最后还要一个 LayerNorm（ln_f）。

PyTorch 里等价的现成模块：nn.TransformerEncoderLayer(d_model, nhead, dim_feedforward, dropout=0,
activation="gelu", batch_first=True, norm_first=True)，加因果掩码就是一个 GPT block。
它的参数名（self_attn.in_proj_weight、linear1、linear2、norm1、norm2）就是今天练习里 state_dict 的键。

练习：ex1–ex7，从 LayerNorm 一路拼到多层编码器；ex1、ex2 是谜题。自检比较输出与梯度（float64）。运行：

    python archive/28days_challenges/day28_mini_transformer_block.py
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from utils import exercises
from utils.io import is_smoke
from utils.lesson_cli import lesson_args


# =============================================================================
# 练习（函数体就是参考解答；想自己做，就把函数体换成 raise NotImplementedError 再运行本文件）
# =============================================================================
def ex1_layer_norm(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, eps: float) -> torch.Tensor:
    """谜题（只许用 .mean 与 torch.rsqrt）：最后一维的 LayerNorm（对照 F.layer_norm，值与梯度）。"""
    mu = x.mean(-1, keepdim=True)
    var = ((x - mu) ** 2).mean(-1, keepdim=True)  # 有偏方差：除以 C
    return (x - mu) * torch.rsqrt(var + eps) * weight + bias


def ex2_gelu(x: torch.Tensor) -> torch.Tensor:
    """谜题（只许用 torch.erf）：精确 GELU = ½x(1 + erf(x/√2))（对照 F.gelu）。"""
    return 0.5 * x * (1 + torch.erf(x * 0.7071067811865476))  # 1/√2


def ex3_mlp(x: torch.Tensor, w1: torch.Tensor, b1: torch.Tensor, w2: torch.Tensor, b2: torch.Tensor) -> torch.Tensor:
    """前馈层：Linear(w1, b1) → GELU → Linear(w2, b2)，权重按 nn.Linear 的 (out, in) 布局
    （对照 nn.Sequential(nn.Linear, nn.GELU, nn.Linear)）。"""
    return ex2_gelu(x @ w1.t() + b1) @ w2.t() + b2  # (B, T, C) → (B, T, 4C) → (B, T, C)


def ex4_causal_self_attention(x: torch.Tensor, in_proj_weight: torch.Tensor, in_proj_bias: torch.Tensor,
                              out_proj_weight: torch.Tensor, out_proj_bias: torch.Tensor, n_head: int) -> torch.Tensor:
    """因果多头自注意力，核心一步用 F.scaled_dot_product_attention（对照 nn.MultiheadAttention + 因果 attn_mask）。"""
    B, T, C = x.shape
    q, k, v = F.linear(x, in_proj_weight, in_proj_bias).split(C, dim=-1)
    q, k, v = (t.view(B, T, n_head, C // n_head).transpose(1, 2) for t in (q, k, v))  # (B, nh, T, hs)
    y = F.scaled_dot_product_attention(q, k, v, is_causal=True)  # (B, nh, T, hs)
    return F.linear(y.transpose(1, 2).reshape(B, T, C), out_proj_weight, out_proj_bias)


def ex5_block(x: torch.Tensor, sd: dict[str, torch.Tensor], n_head: int, eps: float) -> torch.Tensor:
    """一个 Pre-LN 因果 Transformer block，参数取自 nn.TransformerEncoderLayer 的 state_dict sd
    （对照 nn.TransformerEncoderLayer(norm_first=True, activation="gelu", dropout=0) + 因果掩码）。"""
    h = ex1_layer_norm(x, sd["norm1.weight"], sd["norm1.bias"], eps)
    x = x + ex4_causal_self_attention(h, sd["self_attn.in_proj_weight"], sd["self_attn.in_proj_bias"],
                                      sd["self_attn.out_proj.weight"], sd["self_attn.out_proj.bias"], n_head)
    h = ex1_layer_norm(x, sd["norm2.weight"], sd["norm2.bias"], eps)
    return x + ex3_mlp(h, sd["linear1.weight"], sd["linear1.bias"], sd["linear2.weight"], sd["linear2.bias"])


def ex6_block_param_count(d_model: int, dim_feedforward: int) -> int:
    """nn.TransformerEncoderLayer(d_model, nhead, dim_feedforward) 的参数个数（与 nhead 无关）。"""
    attn = 3 * d_model * d_model + 3 * d_model + d_model * d_model + d_model  # in_proj (3C, C) + out_proj (C, C)
    mlp = dim_feedforward * d_model + dim_feedforward + d_model * dim_feedforward + d_model
    norms = 2 * 2 * d_model  # 两个 LayerNorm，各有 γ、β
    return attn + mlp + norms


def ex7_encoder(x: torch.Tensor, sd: dict[str, torch.Tensor], n_layer: int, n_head: int, eps: float) -> torch.Tensor:
    """n_layer 个 block 叠起来，最后再做一次 LayerNorm；sd 是 nn.TransformerEncoder 的 state_dict
    （键形如 "layers.0.linear1.weight"、"norm.weight"；对照 nn.TransformerEncoder(..., norm=nn.LayerNorm)）。"""
    for i in range(n_layer):
        prefix = f"layers.{i}."
        x = ex5_block(x, {k[len(prefix):]: v for k, v in sd.items() if k.startswith(prefix)}, n_head, eps)
    return ex1_layer_norm(x, sd["norm.weight"], sd["norm.bias"], eps)  # 最后的 ln_f


# =============================================================================
# 参考实现、输入与 probe
# =============================================================================
def _randint(g: torch.Generator, lo: int, hi: int) -> int:
    return int(torch.randint(lo, hi, (), generator=g))


def _randn(g: torch.Generator, *shape: int) -> torch.Tensor:
    return torch.randn(*shape, generator=g, dtype=torch.float64)


def _value_and_grads(n_grad: int):
    """probe：返回 (输出, 对前 n_grad 个参数的梯度...)。"""

    def wrap(fn):
        def probe(*args):
            args = [a.detach().requires_grad_() if i < n_grad else a for i, a in enumerate(args)]
            y = fn(*args)
            upstream = torch.linspace(-1.0, 2.0, y.numel(), dtype=y.dtype).reshape(y.shape)
            return (y.detach(), *torch.autograd.grad(y, args[:n_grad], upstream))

        return probe

    return wrap


def _shape(g: torch.Generator) -> tuple[int, int, int, int]:
    n_head = _randint(g, 1, 4)
    return _randint(g, 1, 3), _randint(g, 1, 6), n_head * _randint(g, 1, 4), n_head  # B, T, C, nh


def _ln_inputs(g: torch.Generator):
    B, T, C, _ = _shape(g)
    return _randn(g, B, T, C) * 3 + 1, _randn(g, C), _randn(g, C), 1e-5


def _mlp_inputs(g: torch.Generator):
    B, T, C, _ = _shape(g)
    return _randn(g, B, T, C), _randn(g, 4 * C, C), _randn(g, 4 * C), _randn(g, C, 4 * C), _randn(g, C)


def _ref_mlp(x, w1, b1, w2, b2):
    mlp = nn.Sequential(nn.Linear(w1.shape[1], w1.shape[0]), nn.GELU(), nn.Linear(w2.shape[1], w2.shape[0])).double()
    # 用 functional_call 换上给定的权重：梯度能流回 w1 等输入
    return torch.func.functional_call(mlp, {"0.weight": w1, "0.bias": b1, "2.weight": w2, "2.bias": b2}, (x,))


def _attn_inputs(g: torch.Generator):
    B, T, C, nh = _shape(g)
    return (_randn(g, B, T, C), _randn(g, 3 * C, C) / math.sqrt(C), _randn(g, 3 * C),
            _randn(g, C, C) / math.sqrt(C), _randn(g, C), nh)


def _ref_attention(x, in_w, in_b, out_w, out_b, n_head):
    C, T = x.shape[-1], x.shape[1]
    mha = nn.MultiheadAttention(C, n_head, batch_first=True, dtype=torch.float64)
    params = {"in_proj_weight": in_w, "in_proj_bias": in_b, "out_proj.weight": out_w, "out_proj.bias": out_b}
    future = torch.ones(T, T, dtype=torch.bool).triu(1)  # True = 不许看
    out, _ = torch.func.functional_call(mha, params, (x, x, x), {"attn_mask": future, "need_weights": False})
    return out


def _layer(C: int, n_head: int) -> nn.TransformerEncoderLayer:
    return nn.TransformerEncoderLayer(C, n_head, dim_feedforward=4 * C, dropout=0.0, activation="gelu",
                                      batch_first=True, norm_first=True, dtype=torch.float64)


def _randomize(module: nn.Module, g: torch.Generator) -> nn.Module:
    with torch.no_grad():  # 随机化所有参数（包括 LayerNorm 的 γ、β），默认初始化的 γ=1、β=0 测不出错
        for p in module.parameters():
            p.copy_(_randn(g, *p.shape) / math.sqrt(p.shape[-1]))
    return module


def _block_inputs(g: torch.Generator):
    B, T, C, nh = _shape(g)
    layer = _randomize(_layer(C, nh), g)
    return _randn(g, B, T, C), dict(layer.state_dict()), nh, layer.norm1.eps


def _ref_block(x, sd, n_head, eps):
    layer = _layer(x.shape[-1], n_head)
    layer.load_state_dict(sd)
    T = x.shape[1]
    mask = nn.Transformer.generate_square_subsequent_mask(T, dtype=torch.float64)  # 上三角 −inf 的加性掩码
    return layer(x, src_mask=mask, is_causal=True)


def _encoder(C: int, n_head: int, n_layer: int) -> nn.TransformerEncoder:
    return nn.TransformerEncoder(_layer(C, n_head), n_layer, norm=nn.LayerNorm(C, dtype=torch.float64),
                                 enable_nested_tensor=False)


def _encoder_inputs(g: torch.Generator):
    B, T, C, nh = _shape(g)
    n_layer = _randint(g, 1, 4)
    encoder = _randomize(_encoder(C, nh, n_layer), g)
    return _randn(g, B, T, C), dict(encoder.state_dict()), n_layer, nh, 1e-5


def _ref_encoder(x, sd, n_layer, n_head, eps):
    encoder = _encoder(x.shape[-1], n_head, n_layer)
    encoder.load_state_dict(sd)
    mask = nn.Transformer.generate_square_subsequent_mask(x.shape[1], dtype=torch.float64)
    return encoder(x, mask=mask, is_causal=True)


def _ref_param_count(d_model, dim_feedforward):
    layer = nn.TransformerEncoderLayer(d_model, 1, dim_feedforward, device="meta")  # meta：只数参数，不分配内存
    return sum(p.numel() for p in layer.parameters())


CHECKS = [
    ("ex1_layer_norm", lambda x, w, b, eps: F.layer_norm(x, x.shape[-1:], w, b, eps), _ln_inputs,
     _value_and_grads(3)),
    ("ex2_gelu", F.gelu, lambda g: (_randn(g, 13) * 3,), _value_and_grads(1)),
    ("ex3_mlp", _ref_mlp, _mlp_inputs, _value_and_grads(5)),
    ("ex4_causal_self_attention", _ref_attention, _attn_inputs, _value_and_grads(5)),
    ("ex5_block", _ref_block, _block_inputs, _value_and_grads(1)),
    ("ex6_block_param_count", _ref_param_count, lambda g: (_randint(g, 1, 64), _randint(g, 1, 256))),
    ("ex7_encoder", _ref_encoder, _encoder_inputs, _value_and_grads(1)),
]

PUZZLE_ALLOWED = {
    "ex1_layer_norm": {".mean", "torch.rsqrt"},
    "ex2_gelu": {"torch.erf"},
}


def demo() -> None:
    C, nh, n_layer, T = (32, 4, 2, 16) if is_smoke() else (128, 4, 6, 64)
    encoder = _encoder(C, nh, n_layer)
    # 直接写公式而不调用 ex6：练习还没写时演示也要能跑完（ex6 要你推出的就是它：权重 4C² + 8C²，偏置与 LayerNorm 共 13C）
    per_layer = 12 * C * C + 13 * C
    print(f"{n_layer} 层、C={C}、{nh} 头的编码器：{sum(p.numel() for p in encoder.parameters()):,} 个参数"
          f"（每层 12C² + 13C = {12 * C * C:,} + {13 * C:,} = {per_layer:,}；{n_layer} 层再加最后 LayerNorm 的 2C："
          f"{n_layer * per_layer + 2 * C:,}）")
    x = torch.randn(2, T, C, dtype=torch.float64)
    mask = nn.Transformer.generate_square_subsequent_mask(T, dtype=torch.float64)
    with torch.no_grad():
        y = encoder(x, mask=mask, is_causal=True)
        x2 = x.clone()
        x2[:, -1] += torch.randn(C, dtype=torch.float64)  # 只改最后一个位置（加常数的话会被 LayerNorm 抵消）
        y2 = encoder(x2, mask=mask, is_causal=True)
    changed = (y2 - y).abs().amax(-1)[0]
    print(f"因果性检查：只改最后一个 token，前 {T - 1} 个位置的输出最大变化 {changed[:-1].max().item():.1e}"
          f"（应当恰好是 0：因果掩码让它们根本看不到最后一个位置），最后一个位置变化 {changed[-1].item():.2f}")
    with torch.no_grad():
        h = x
        print(f"  输入（randn）残差流的 RMS：{h.pow(2).mean().sqrt().item():.3f}（理论 1）；"
              f"Pre-LN 每层往上加而不归一化，所以逐层变大：")
        for i, layer in enumerate(encoder.layers):
            h = layer(h, src_mask=mask, is_causal=True)
            print(f"  第 {i + 1} 层之后残差流的 RMS：{h.pow(2).mean().sqrt().item():.3f}")


# =============================================================================
# 自检：框架在 utils/exercises.py（28 天共用）——每道练习在几组随机输入上与 PyTorch 内置实现逐一对比
# =============================================================================
def run_checks(verbose: bool = True, seeds=None) -> tuple[int, int]:
    """逐题自检：每题打印一行 ✓/✗，最后打印 `N/M passed`；返回 (N, M)。"""
    return exercises.run_checks(globals(), verbose=verbose, seeds=seeds)


def main() -> None:
    exercises.run_day(globals())


if __name__ == "__main__":
    lesson_args(__doc__)
    main()
