"""MoE 基准：我们的 MoE（按专家排序分发）vs transformers 的 MixtralSparseMoeBlock / DeepseekV3MoE。

同一进程、同一输入、同一份权重（strict load_state_dict），fp32 前向 + 反向，两边轮流各测一次再取中位数
（共享机器上的干扰对两边一样），比值 = 我们 / 参考（< 1 表示我们更快）。transformers 用默认的 eager 专家实现。
差距主要来自反向：eager 实现在专家循环里写 gate_up_proj[e]，每个专家的反向都生成一整块 (E, 2I, H) 的全零梯度再累加，
E=64 时它占了参考实现九成以上的时间；我们先 unbind 一次（见 moe.py 的 Experts）。

运行：PYTHONPATH=. .venv/bin/python benchmarks/model_lab_moe.py   （SMOKE=1 几秒钟试跑，不写 RESULTS.md）
"""

from __future__ import annotations

import importlib

import torch
from _common import machine_info, update_results

from utils.io import is_smoke
from utils.torch_playground import benchmark_interleaved, setup_seed

moe_lib = importlib.import_module("model_lab.01_components.moe")

SMOKE = is_smoke()
REPS, WARMUP = (2, 1) if SMOKE else (15, 3)


def interleaved_fwd_bwd_ms(fns, x):
    """对每个 fn 测 fn(x) 的前向 + 反向；各 fn 轮流跑，返回各自的中位耗时（毫秒）。"""

    def step(fn):
        x.grad = None
        fn(x).sum().backward()

    return benchmark_interleaved([lambda fn=fn: step(fn) for fn in fns], WARMUP, REPS)


def bench(cfg, n_tokens):
    ours = moe_lib.MoE(cfg)
    ref = moe_lib.hf_reference(ours)
    x = torch.randn(4, n_tokens // 4, cfg.hidden_size, requires_grad=True)
    return interleaved_fwd_bwd_ms([lambda x: ours(x)[0], ref], x)


def main():
    setup_seed()
    torch.set_num_threads(1)  # 共享的 2 核机器上单线程的中位数最稳定；比值才是要看的量
    info = machine_info()
    print(info)
    h = 32 if SMOKE else 256
    mixtral = moe_lib.MoEConfig(hidden_size=h, intermediate_size=2 * h, num_experts=8, top_k=2)
    deepseek = moe_lib.MoEConfig(
        hidden_size=h, intermediate_size=h // 2, num_experts=64, top_k=6, router="sigmoid", n_group=8, topk_group=4,
        n_shared_experts=2, routed_scaling_factor=2.5,
    )  # fmt: skip
    cases = [
        ("Mixtral 式：E=8，k=2，I=2H", "MixtralSparseMoeBlock", mixtral),
        ("DeepSeek-V3 式：E=64（8 组选 4），k=6，2 个共享专家，I=H/2", "DeepseekV3MoE", deepseek),
    ]
    token_counts = [64] if SMOKE else [128, 1024]
    rows = []
    for name, ref_name, cfg in cases:
        for n in token_counts:
            ms_ours, ms_ref = bench(cfg, n)
            rows.append((name, ref_name, n, ms_ours, ms_ref))
            print(f"{name:50s} N={n:5d}  ours {ms_ours:9.2f} ms  HF {ms_ref:9.2f} ms  比值 {ms_ours / ms_ref:.2f}")

    lines = [
        "### model_lab MoE：按专家排序分发 vs transformers（fp32，前向 + 反向）",
        "",
        f"{info}；单线程；hidden={h}，N = 一批 token 数（4 条序列）。transformers 用 eager 专家实现。比值 = 我们 / 参考。",
        "",
        "| 配置 | 参考 | N | 我们 (ms) | 参考 (ms) | 比值 |",
        "|---|---|---:|---:|---:|---:|",
    ]
    lines += [f"| {a} | {r} | {n} | {x:.2f} | {y:.2f} | {x / y:.2f} |" for a, r, n, x, y in rows]
    md = "\n".join(lines)
    print(md)
    update_results("model_lab_moe", md)


if __name__ == "__main__":
    main()
