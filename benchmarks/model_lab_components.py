"""组件基准：RMSNorm / RoPE / SwiGLU（model_lab/01_components）vs transformers 的 Llama 模块，
以及基础积木（basics.py：Linear、Embedding、SiLU、softmax）vs PyTorch 自带的算子。

同一进程、同一输入、同一份权重；前向 + 反向取中位数（毫秒，单线程的进程 CPU 时间，见 compare_ms），
比值 = 我们 / 参考（< 1 表示我们更快）。本脚本只在 CPU 上测。
RoPE 另比一行 interleaved 布局：我们的实数写法 vs Meta 原版的复数乘法。
基础积木：Linear 是 hidden → hidden 的投影；softmax 作用在注意力分数 (B·H, T, T) 上；
log_softmax 作用在 (B·T, vocab) 的 logits 上（交叉熵的前半步）；Embedding 是 vocab 行的查表（反向是 scatter-add）。
逐元素的 SiLU / softmax 我们慢几倍到十几倍：每一步（exp、除法、where、求和）都是单独的算子、各读写一遍内存，
PyTorch 的内核一次遍历全部做完——这就是算子融合（torch.compile、Triton）要省下的访存。

运行：PYTHONPATH=. .venv/bin/python benchmarks/model_lab_components.py   （SMOKE=1 几秒钟试跑，不写 RESULTS.md）
"""

from __future__ import annotations

import importlib

import torch
from _common import machine_info, update_results
from transformers import LlamaConfig, NemotronConfig
from transformers.models.llama.modeling_llama import LlamaMLP, LlamaRMSNorm, LlamaRotaryEmbedding, apply_rotary_pos_emb
from transformers.models.nemotron.modeling_nemotron import NemotronMLP

from utils.io import is_smoke
from utils.torch_playground import benchmark_interleaved, setup_seed

rmsnorm = importlib.import_module("model_lab.01_components.rmsnorm")
rope = importlib.import_module("model_lab.01_components.rope")
swiglu = importlib.import_module("model_lab.01_components.swiglu")
basics = importlib.import_module("model_lab.01_components.basics")

SMOKE = is_smoke()
REPS, WARMUP = (2, 1) if SMOKE else (15, 3)


def compare_ms(ours, ref, inputs) -> tuple[float, float]:
    """ours(*inputs) 与 ref(*inputs) 的前向 + 反向中位耗时（毫秒，进程 CPU 时间）。

    在被多个进程挤满的 2 核机器上，墙钟时间大半是"排队等 CPU"，同一段代码能差出 10 倍；
    torch 设成单线程后，进程 CPU 时间（time.process_time）才是真正干活的时间。
    两者交替测量（utils.torch_playground.benchmark_interleaved）。每次先清梯度，避免梯度累加混进测量。
    有 GPU 的机器上请改用墙钟时间 + torch.cuda.synchronize（CPU 时间量不到 GPU 上的 kernel）。
    """

    def step(fn):
        for t in inputs:
            t.grad = None
        out = fn(*inputs)
        out = out if isinstance(out, tuple) else (out,)
        sum(o.sum() for o in out).backward()

    ours_ms, ref_ms = benchmark_interleaved([lambda: step(ours), lambda: step(ref)], WARMUP, REPS, cpu_time=True)
    return ours_ms, ref_ms


def bench_rmsnorm(rows, b, t, d):
    for dtype in (torch.float32, torch.bfloat16):
        ours, ref = rmsnorm.RMSNorm(d).to(dtype), LlamaRMSNorm(d).to(dtype)
        x = torch.randn(b, t, d).to(dtype).requires_grad_()
        name = str(dtype).removeprefix("torch.")
        rows.append((f"RMSNorm {name}", f"LlamaRMSNorm {name}", *compare_ms(ours, ref, [x])))


def meta_apply_rotary_emb(x, freqs_cis):
    """Meta llama/model.py 的复数写法；x (B, T, nh, D)，freqs_cis (T, D/2) complex64。"""
    x_ = torch.view_as_complex(x.float().reshape(*x.shape[:-1], -1, 2))
    return torch.view_as_real(x_ * freqs_cis.view(1, x_.shape[1], 1, x_.shape[-1])).flatten(3).type_as(x)


def bench_rope(rows, b, nh, t, hs):
    params = {"rope_type": "default", "rope_theta": 10000.0}
    ours = rope.RotaryEmbedding(hs, params, max_position_embeddings=4096)
    ref = LlamaRotaryEmbedding(LlamaConfig(hidden_size=hs * nh, num_attention_heads=nh, max_position_embeddings=4096,
                                           rope_parameters=dict(params)))
    q, k = (torch.randn(b, nh, t, hs, requires_grad=True) for _ in range(2))
    pos = torch.arange(t).expand(b, t)

    def ours_fn(q, k):  # cos/sin 表 + 旋转 q、k，与 HF 一次 forward 的工作量相同
        cos, sin = ours(q, pos)
        return rope.apply_rope(q, cos, sin), rope.apply_rope(k, cos, sin)

    def ref_fn(q, k):
        cos, sin = ref(q, pos)
        return apply_rotary_pos_emb(q, k, cos, sin)

    rows.append(("RoPE rotate-half（cos/sin + q、k）", "LlamaRotaryEmbedding + apply_rotary_pos_emb",
                 *compare_ms(ours_fn, ref_fn, [q, k])))

    cos, sin = ours(q, pos)
    angles = torch.outer(torch.arange(t, dtype=torch.float32), ours.inv_freq)
    freqs_cis = torch.polar(torch.ones_like(angles), angles)
    x = torch.randn(b, t, nh, hs, requires_grad=True)
    rows.append(("RoPE interleaved（实数写法）", "Meta 复数乘法 view_as_complex",
                 *compare_ms(lambda x: rope.apply_rope_interleaved(x.transpose(1, 2), cos, sin),
                             lambda x: meta_apply_rotary_emb(x, freqs_cis), [x])))


def bench_mlp(rows, b, t, d):
    h = swiglu.llama_intermediate_size(d)
    ours = swiglu.GatedMLP(d, h)
    ref = LlamaMLP(LlamaConfig(hidden_size=d, num_attention_heads=1, intermediate_size=h))
    ref.load_state_dict(ours.state_dict())
    x = torch.randn(b, t, d, requires_grad=True)
    rows.append((f"SwiGLU GatedMLP（h={h}）", "LlamaMLP", *compare_ms(ours, ref, [x])))
    ours = swiglu.ReLU2MLP(d)
    ref = NemotronMLP(NemotronConfig(hidden_size=d, num_attention_heads=1, intermediate_size=4 * d, hidden_act="relu2"))
    ref.load_state_dict(ours.state_dict())
    rows.append((f"ReLU² ReLU2MLP（h={4 * d}）", "NemotronMLP relu2", *compare_ms(ours, ref, [x])))


def bench_basics(rows, b, t, d, nh, vocab):
    ours = basics.Linear(d, d)
    ref = torch.nn.Linear(d, d)
    ref.load_state_dict(ours.state_dict())
    x = torch.randn(b, t, d, requires_grad=True)
    rows.append((f"Linear（{d}→{d}，matmul + autograd）", "nn.Linear", *compare_ms(ours, ref, [x])))
    rows.append(("SiLU（安全 σ，手写反向）", "F.silu", *compare_ms(basics.silu, torch.nn.functional.silu, [x])))
    s = torch.randn(b * nh, t, t, requires_grad=True)
    rows.append((f"softmax（减最大值，手写反向），({b * nh}, {t}, {t})", "torch.softmax",
                 *compare_ms(lambda s: basics.softmax(s, -1), lambda s: torch.softmax(s, -1), [s])))
    logits = torch.randn(b * t, vocab, requires_grad=True)
    rows.append((f"log_softmax（logsumexp），({b * t}, {vocab})", "torch.log_softmax",
                 *compare_ms(lambda z: basics.log_softmax(z, -1), lambda z: torch.log_softmax(z, -1), [logits])))
    ours_emb = basics.Embedding(vocab, d)
    ref_emb = torch.nn.Embedding(vocab, d)
    ref_emb.load_state_dict(ours_emb.state_dict())
    ids = torch.randint(0, vocab, (b, t))
    rows.append((f"Embedding（{vocab}×{d}，index_add 反向）", "nn.Embedding",
                 *compare_ms(lambda: ours_emb(ids), lambda: ref_emb(ids), [])))


def main():
    setup_seed()
    torch.set_num_threads(1)  # 共享的 2 核机器上单线程的中位数最稳定；比值才是要看的量
    info = machine_info()
    print(info)
    b, t, d, nh, hs = (1, 16, 64, 2, 32) if SMOKE else (4, 256, 1024, 16, 64)
    vocab = 256 if SMOKE else 32000
    rows: list[tuple[str, str, float, float]] = []
    bench_rmsnorm(rows, b, t, d)
    bench_rope(rows, b, nh, t, hs)
    bench_mlp(rows, b, t, d)
    bench_basics(rows, b, t, d, nh, vocab)
    lines = [
        "### model_lab 组件：RMSNorm / RoPE / SwiGLU vs transformers，基础积木 vs PyTorch（前向 + 反向）",
        "",
        f"{info}；单线程，进程 CPU 时间的中位数（{REPS} 次，交替测量）；B={b}，T={t}，hidden={d}，RoPE 为 {nh} 头 × head_dim {hs}，词表 {vocab}。比值 = 我们 / 参考。",
        "",
        "| 我们 | 参考 | 我们 (ms) | 参考 (ms) | 比值 |",
        "|---|---|---:|---:|---:|",
    ]
    lines += [f"| {a} | {r} | {x:.3f} | {y:.3f} | {x / y:.2f} |" for a, r, x, y in rows]
    md = "\n".join(lines)
    print(md)
    update_results("model_lab_components", md)


if __name__ == "__main__":
    main()
