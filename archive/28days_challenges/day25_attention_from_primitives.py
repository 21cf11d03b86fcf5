"""第 25 天 综合一：用最基本的张量运算搭出注意力，和 F.scaled_dot_product_attention、nn.MultiheadAttention 逐位对齐。

缩放点积注意力（Q、K、V 形状都是 (B, nh, T, hs)）：
    S = Q Kᵀ / √hs                  # (B, nh, T, T)：第 i 个 query 与第 j 个 key 的相似度
    S[被 mask 的位置] = −inf           # 因果：j > i 的未来位置；padding：超出长度的 key
    P = softmax(S, dim=-1)           # 每行和为 1；−inf 变成 0 权重
    O = P V                          # (B, nh, T, hs)
为什么除以 √hs：q、k 的分量方差为 1 时 q·k 的方差是 hs，不缩放的话 softmax 会饱和成 one-hot，梯度消失。

多头：把通道 C 切成 nh 个头，每头 hs = C / nh，各自做注意力再拼回来：
    (B, T, C) → 投影成 q、k、v → view (B, T, nh, hs) → transpose (B, nh, T, hs) → 注意力 → 拼回 (B, T, C) → 输出投影
nn.MultiheadAttention 把三个投影叠成一个 in_proj_weight (3C, C)，前 C 行是 W_q、再 C 行 W_k、最后 C 行 W_v。
它的 attn_mask 是 bool 时 True 表示"**不许**看"；而 F.scaled_dot_product_attention 的 bool 掩码 True 表示"**可以**看"——
两个 API 的约定正好相反，是经典的坑。

GQA（分组查询注意力；Llama 2 只有 34B、70B 用它，Llama 3 全系都用）：K、V 只有 n_kv 个头，每个 KV 头被 nh / n_kv 个 query 头共享；
实现上把 K、V 的每个头 repeat_interleave 成 nh 个。KV cache 因此缩小 nh / n_kv 倍。

练习：ex1–ex7；ex1、ex2 是谜题。自检比较输出，以及对 q、k、v（或 x）的梯度。运行：

    python archive/28days_challenges/day25_attention_from_primitives.py
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from utils import exercises
from utils.io import is_smoke
from utils.lesson_cli import lesson_args, timing_note
from utils.torch_playground import benchmark_interleaved


# =============================================================================
# 练习（函数体就是参考解答；想自己做，就把函数体换成 raise NotImplementedError 再运行本文件）
# =============================================================================
def ex1_causal_mask(T: int) -> torch.Tensor:
    """谜题（只许用 torch.arange 与广播）：(T, T) 的 bool 因果掩码，True 表示"可以看"（j ≤ i）
    （对照 torch.ones(T, T, dtype=torch.bool).tril()）。"""
    i = torch.arange(T)
    return i[None, :] <= i[:, None]  # (1, T) 与 (T, 1) 广播成 (T, T)：列号 ≤ 行号


def ex2_masked_softmax(scores: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """谜题（只许用 torch.where、.amax、.exp、.sum）：最后一维的 softmax，mask 为 False 的位置概率为 0
    （每行至少一个 True；对照 torch.softmax(scores.masked_fill(~mask, −inf), −1)）。"""
    s = torch.where(mask, scores, float("-inf"))
    e = (s - s.amax(-1, keepdim=True)).exp()  # 减去行最大值：不溢出；e^(−inf) = 0
    return e / e.sum(-1, keepdim=True)


def ex3_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, causal: bool) -> torch.Tensor:
    """缩放点积注意力，(B, nh, T, hs) 进出，可选因果掩码（对照 F.scaled_dot_product_attention(is_causal=causal)）。"""
    T = q.shape[-2]
    scores = q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1])  # (B, nh, T, T)
    if causal:
        scores = scores.masked_fill(~torch.ones(T, T, dtype=torch.bool).tril(), float("-inf"))
    return torch.softmax(scores, dim=-1) @ v  # (B, nh, T, hs)


def ex4_split_heads(x: torch.Tensor, n_head: int) -> torch.Tensor:
    """(B, T, C) → (B, n_head, T, C / n_head)（对照 x.unflatten(-1, (n_head, -1)).transpose(1, 2)）。"""
    B, T, C = x.shape
    if C % n_head:
        raise ValueError(f"C={C} 不能被 n_head={n_head} 整除")
    return x.view(B, T, n_head, C // n_head).transpose(1, 2)


def ex5_multihead_self_attention(x: torch.Tensor, in_proj_weight: torch.Tensor, in_proj_bias: torch.Tensor,
                                 out_proj_weight: torch.Tensor, out_proj_bias: torch.Tensor,
                                 n_head: int) -> torch.Tensor:
    """因果多头自注意力，权重按 nn.MultiheadAttention 的布局给出（对照 nn.MultiheadAttention(batch_first=True)
    加因果 attn_mask）。x: (B, T, C)。"""
    B, T, C = x.shape
    q, k, v = F.linear(x, in_proj_weight, in_proj_bias).split(C, dim=-1)  # 各 (B, T, C)
    q, k, v = (t.view(B, T, n_head, C // n_head).transpose(1, 2) for t in (q, k, v))  # (B, nh, T, hs)
    y = ex3_attention(q, k, v, causal=True)  # (B, nh, T, hs)
    y = y.transpose(1, 2).reshape(B, T, C)  # 拼回各头：transpose 之后不连续，用 reshape
    return F.linear(y, out_proj_weight, out_proj_bias)


def ex6_padding_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """batch 里第 b 条序列只有前 lengths[b] 个 key 有效（后面是 padding），query 不许看 padding
    （对照 F.scaled_dot_product_attention 的 bool attn_mask，形状 (B, 1, 1, T)，True = 可以看）。"""
    T = k.shape[-2]
    valid = torch.arange(T)[None, :] < lengths[:, None]  # (B, T)
    scores = q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1])
    scores = scores.masked_fill(~valid[:, None, None, :], float("-inf"))  # 广播到 (B, nh, T, T)
    return torch.softmax(scores, dim=-1) @ v


def ex7_gqa(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """分组查询注意力（因果）：q (B, nh, T, hs)，k、v (B, n_kv, T, hs)，nh 是 n_kv 的整数倍
    （对照 F.scaled_dot_product_attention(..., is_causal=True, enable_gqa=True)）。"""
    group = q.shape[1] // k.shape[1]
    k = k.repeat_interleave(group, dim=1)  # KV 头 j 服务 query 头 j·group … (j+1)·group − 1
    v = v.repeat_interleave(group, dim=1)
    return ex3_attention(q, k, v, causal=True)


# =============================================================================
# 参考实现、输入与 probe
# =============================================================================
def _randint(g: torch.Generator, lo: int, hi: int) -> int:
    return int(torch.randint(lo, hi, (), generator=g))


def _randn(g: torch.Generator, *shape: int) -> torch.Tensor:
    return torch.randn(*shape, generator=g, dtype=torch.float64)


def _value_and_grads(n_grad: int):
    """probe：返回 (输出, 对前 n_grad 个张量参数的梯度...)。"""

    def wrap(fn):
        def probe(*args):
            args = [a.detach().requires_grad_() if i < n_grad else a for i, a in enumerate(args)]
            y = fn(*args)
            upstream = torch.linspace(-1.0, 2.0, y.numel(), dtype=y.dtype).reshape(y.shape)
            return (y.detach(), *torch.autograd.grad(y, args[:n_grad], upstream))

        return probe

    return wrap


def _qkv(g: torch.Generator, n_kv_divisor: int = 1):
    B, nh, T, hs = _randint(g, 1, 3), _randint(g, 1, 4), _randint(g, 2, 6), _randint(g, 2, 6)
    # T ≥ 2、hs ≥ 2：T = 1 时 softmax 恒为 1，hs = 1 时 √hs = 1——都测不出"漏了缩放"
    n_kv = nh
    if n_kv_divisor > 1:
        nh = n_kv * _randint(g, 1, 4)
    return _randn(g, B, nh, T, hs), _randn(g, B, n_kv, T, hs), _randn(g, B, n_kv, T, hs)


def _mask_inputs(g: torch.Generator):
    shape = (_randint(g, 1, 4), _randint(g, 1, 6))
    mask = torch.rand(shape, generator=g) < 0.6
    mask[:, 0] = True  # 每行至少能看一个位置
    return _randn(g, *shape) * 10, mask


def _split_inputs(g: torch.Generator):
    n_head = _randint(g, 1, 4)
    return _randn(g, 2, _randint(g, 1, 5), n_head * _randint(g, 1, 4)), n_head


def _mha_inputs(g: torch.Generator):
    n_head = _randint(g, 1, 4)
    C = n_head * _randint(g, 1, 4)
    return (_randn(g, _randint(g, 1, 3), _randint(g, 1, 6), C), _randn(g, 3 * C, C) / math.sqrt(C),
            _randn(g, 3 * C), _randn(g, C, C) / math.sqrt(C), _randn(g, C), n_head)


def _ref_mha(x, in_w, in_b, out_w, out_b, n_head):
    C = x.shape[-1]
    mha = nn.MultiheadAttention(C, n_head, batch_first=True, dtype=torch.float64)
    with torch.no_grad():
        mha.in_proj_weight.copy_(in_w)
        mha.in_proj_bias.copy_(in_b)
        mha.out_proj.weight.copy_(out_w)
        mha.out_proj.bias.copy_(out_b)
    T = x.shape[1]
    future = torch.ones(T, T, dtype=torch.bool).triu(1)  # MultiheadAttention：True = 不许看
    out, _ = mha(x, x, x, attn_mask=future, need_weights=False)
    return out


def _padding_inputs(g: torch.Generator):
    q, k, v = _qkv(g)
    return q, k, v, torch.randint(1, k.shape[-2] + 1, (q.shape[0],), generator=g)


def _ref_padding(q, k, v, lengths):
    keep = torch.arange(k.shape[-2])[None, :] < lengths[:, None]  # SDPA：True = 可以看
    return F.scaled_dot_product_attention(q, k, v, attn_mask=keep[:, None, None, :])


CHECKS = [
    ("ex1_causal_mask", lambda T: torch.ones(T, T, dtype=torch.bool).tril(), lambda g: (_randint(g, 1, 8),)),
    ("ex2_masked_softmax", lambda s, m: torch.softmax(s.masked_fill(~m, float("-inf")), -1), _mask_inputs),
    (
        "ex3_attention",
        lambda q, k, v, causal: F.scaled_dot_product_attention(q, k, v, is_causal=causal),
        lambda g: (*_qkv(g), bool(_randint(g, 0, 2))),
        _value_and_grads(3),
    ),
    (
        "ex4_split_heads",
        lambda x, nh: x.unflatten(-1, (nh, -1)).transpose(1, 2),
        _split_inputs,
    ),
    ("ex5_multihead_self_attention", _ref_mha, _mha_inputs, _value_and_grads(1)),
    ("ex6_padding_attention", _ref_padding, _padding_inputs, _value_and_grads(3)),
    (
        "ex7_gqa",
        lambda q, k, v: F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True),
        lambda g: _qkv(g, n_kv_divisor=2),
        _value_and_grads(3),
    ),
]

PUZZLE_ALLOWED = {
    "ex1_causal_mask": {"torch.arange"},
    "ex2_masked_softmax": {"torch.where", ".amax", ".exp", ".sum"},
}


def demo() -> None:
    T = 5
    q = k = torch.randn(1, 1, T, 4)
    scores = (q @ k.transpose(-2, -1) / 2).masked_fill(~torch.ones(T, T, dtype=torch.bool).tril(), float("-inf"))
    print("因果注意力权重（T=5，每行和为 1，右上角为 0）：")
    for row in torch.softmax(scores, -1)[0, 0]:
        print("   " + " ".join(f"{p:.2f}" for p in row.tolist()))
    hs = 64
    for scaled in (False, True):
        a, b = torch.randn(1000, hs), torch.randn(1000, hs)
        s = (a * b).sum(-1) / (math.sqrt(hs) if scaled else 1)
        theory = "1" if scaled else f"√{hs} = {math.sqrt(hs):.0f}"
        print(f"hs={hs} 的 q·k {'除以 √hs' if scaled else '不缩放  '}：标准差 {s.std().item():5.2f}（理论 {theory}）")
    B, nh, T, hs = (2, 4, 64, 16) if is_smoke() else (8, 8, 512, 64)
    q, k, v = torch.randn(3, B, nh, T, hs).unbind(0)

    def manual():
        mask = torch.ones(T, T, dtype=torch.bool).tril()
        return torch.softmax((q @ k.transpose(-2, -1) / math.sqrt(hs)).masked_fill(~mask, float("-inf")), -1) @ v

    ms_manual, ms_sdpa = benchmark_interleaved(
        [manual, lambda: F.scaled_dot_product_attention(q, k, v, is_causal=True)], warmup=1, reps=3)
    print(f"(B, nh, T, hs) = {(B, nh, T, hs)}：手写 {ms_manual:.2f} ms，SDPA {ms_sdpa:.2f} ms（融合 kernel，不物化 T×T 的概率矩阵）")
    print(timing_note("benchmarks/model_lab_attention.py"))


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
