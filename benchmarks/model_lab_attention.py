"""注意力基准：手写注意力 / MLA vs PyTorch SDPA、HF LlamaAttention、HF DeepseekV3Attention。

同一进程、同一输入、同一份权重；前向 + 反向取中位数（毫秒），比值 = 我们 / 参考（< 1 表示我们更快）。
另测 MLA 的一个解码步：朴素形式（每步把整段潜向量 cache 上投影成每头的 K、V）vs 权重吸收形式。

运行：PYTHONPATH=. .venv/bin/python benchmarks/model_lab_attention.py   （SMOKE=1 几秒钟试跑，不写 RESULTS.md）
"""

from __future__ import annotations

import importlib

import torch
import torch.nn.functional as F
from _common import machine_info, update_results

from utils.io import is_smoke
from utils.torch_playground import benchmark, setup_seed

attention = importlib.import_module("model_lab.01_components.attention")
mla = importlib.import_module("model_lab.01_components.mla")

SMOKE = is_smoke()
REPS, WARMUP = (2, 1) if SMOKE else (10, 3)


def fwd_bwd_ms(fn, inputs):
    """fn(*inputs) 的前向 + 反向中位耗时；梯度每次清掉，避免累加的额外开销混进测量。"""

    def run():
        for t in inputs:
            t.grad = None
        out = fn(*inputs)
        (out[0] if isinstance(out, tuple) else out).sum().backward()

    return benchmark(run, warmup=WARMUP, reps=REPS)


def causal_additive(t):
    future = ~torch.ones(t, t, dtype=torch.bool).tril()
    return torch.zeros(1, 1, t, t).masked_fill(future, torch.finfo(torch.float32).min)  # HF eager 的加性掩码


def bench_core(rows, b, nh, t, hs):
    for name, nkv in (("MHA", nh), ("GQA", nh // 4), ("MQA", 1)):
        q = torch.randn(b, nh, t, hs, requires_grad=True)
        k, v = (torch.randn(b, nkv, t, hs, requires_grad=True) for _ in range(2))
        ours = fwd_bwd_ms(lambda q, k, v: attention.scaled_dot_product_attention(q, k, v, is_causal=True), [q, k, v])
        ref = fwd_bwd_ms(lambda q, k, v: F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True),
                         [q, k, v])
        rows.append((f"核心 softmax(qkᵀ/√d)v，{name} nh={nh} nkv={nkv}", "F.scaled_dot_product_attention", ours, ref))


def bench_llama(rows, b, t, hidden, nh):
    for name, nkv in (("MHA", nh), ("GQA", nh // 4), ("MQA", 1)):
        config = attention.AttentionConfig(hidden_size=hidden, num_attention_heads=nh, num_key_value_heads=nkv)
        ours = attention.Attention(config)
        ref, rotary = attention._hf_llama_attention(config)
        ref.load_state_dict(ours.state_dict())
        x = torch.randn(b, t, hidden, requires_grad=True)
        pos = torch.arange(t).expand(b, t)
        cos_sin, mask = rotary(x, pos), causal_additive(t)
        ms_ours = fwd_bwd_ms(lambda x: ours(x, pos), [x])
        ms_ref = fwd_bwd_ms(lambda x: ref(x, position_embeddings=cos_sin, attention_mask=mask), [x])
        rows.append((f"Attention 模块（手写核心），{name} nkv={nkv}", "LlamaAttention eager", ms_ours, ms_ref))
        ref.config._attn_implementation = "sdpa"  # 同一个模块换成 HF 的 SDPA 后端（mask=None 时走 is_causal）
        ms_ours = fwd_bwd_ms(lambda x: ours(x, pos, use_sdpa=True), [x])
        ms_ref = fwd_bwd_ms(lambda x: ref(x, position_embeddings=cos_sin, attention_mask=None), [x])
        rows.append((f"Attention 模块（use_sdpa），{name} nkv={nkv}", "LlamaAttention sdpa", ms_ours, ms_ref))


def bench_mla(rows, b, t, config):
    ours = mla.MultiHeadLatentAttention(config)
    ref, rotary = mla._hf_deepseek_attention(config)
    ref.load_state_dict(ours.state_dict())
    x = torch.randn(b, t, config.hidden_size, requires_grad=True)
    pos = torch.arange(t).expand(b, t)
    cos_sin, mask = rotary(x, pos), causal_additive(t)
    ms_ref = fwd_bwd_ms(lambda x: ref(x, position_embeddings=cos_sin, attention_mask=mask), [x])
    for absorb in (False, True):
        ms = fwd_bwd_ms(lambda x: ours(x, pos, absorb=absorb), [x])
        form = "吸收形式" if absorb else "朴素形式"
        rows.append((f"MLA 模块训练（{form}），d_c={config.kv_lora_rank}", "DeepseekV3Attention eager", ms, ms_ref))


@torch.no_grad()
def bench_mla_decode(config, contexts):
    model = mla.MultiHeadLatentAttention(config)
    out = []
    for ctx in contexts:
        # cache 的内容不影响耗时：直接放入随机潜向量，省掉长上下文 prefill 的 (nh, ctx, ctx) 打分矩阵
        cache = mla.LatentCache()
        cache.update(torch.randn(1, ctx, config.kv_lora_rank), torch.randn(1, 1, ctx, config.qk_rope_head_dim))
        x1, pos = torch.randn(1, 1, config.hidden_size), torch.tensor([[ctx]])
        ms = [benchmark(lambda: model(x1, pos, cache=mla._frozen(cache), absorb=a), warmup=WARMUP, reps=REPS)
              for a in (False, True)]
        out.append((ctx, *ms))
    return out


def main():
    setup_seed()
    torch.set_num_threads(1)  # 共享的 2 核机器上单线程的中位数最稳定；比值才是要看的量
    info = machine_info()
    print(info)
    b, t = (1, 32) if SMOKE else (2, 256)
    rows: list[tuple[str, str, float, float]] = []
    bench_core(rows, b, 16, t, 64)
    bench_llama(rows, b, t, 256 if SMOKE else 1024, 16)
    train_cfg = mla.MLAConfig(hidden_size=256 if SMOKE else 1024, num_attention_heads=16, q_lora_rank=384,
                              kv_lora_rank=256, qk_nope_head_dim=64, qk_rope_head_dim=32, v_head_dim=64)
    bench_mla(rows, b, t, train_cfg)
    # DeepSeek-V3 每头的真实维度（d_c=512、d_rope=64、d_nope=128、d_v=128），只是头数与 hidden 缩小
    decode_cfg = mla.MLAConfig(hidden_size=256 if SMOKE else 2048, num_attention_heads=16, q_lora_rank=512,
                               kv_lora_rank=512, qk_nope_head_dim=128, qk_rope_head_dim=64, v_head_dim=128)
    decode = bench_mla_decode(decode_cfg, [64] if SMOKE else [512, 2048, 8192])

    lines = [
        "### model_lab 注意力：手写 vs PyTorch SDPA / HF（fp32，前向 + 反向）",
        "",
        f"{info}；B={b}，T={t}，head_dim=64，16 个 query 头，因果掩码。比值 = 我们 / 参考。",
        "",
        "| 我们 | 参考 | 我们 (ms) | 参考 (ms) | 比值 |",
        "|---|---|---:|---:|---:|",
    ]
    lines += [f"| {a} | {r} | {x:.2f} | {y:.2f} | {x / y:.2f} |" for a, r, x, y in rows]
    lines += [
        "",
        "MLA 解码 1 个 token（无梯度，batch 1，16 头，d_c=512，d_rope=64，d_nope=d_v=128）：",
        "",
        "| 上下文长度 | 朴素形式 (ms) | 权重吸收形式 (ms) | 加速 |",
        "|---:|---:|---:|---:|",
    ]
    lines += [f"| {ctx} | {n:.2f} | {a:.2f} | {n / a:.1f}x |" for ctx, n, a in decode]
    md = "\n".join(lines)
    print(md)
    update_results("model_lab_attention", md)


if __name__ == "__main__":
    main()
