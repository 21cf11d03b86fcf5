"""优化器 / 交叉熵 / 梯度裁剪：从零实现 vs PyTorch 内置（training_sys.optimization）。

同一进程、同一组参数与梯度；优化器测 optimizer.step() 的中位耗时，交叉熵测前向 + 反向，裁剪测一次 clip。
我们与参考交替计时（共享的机器负载会漂移，交替让两边承受同样的干扰）。
比值 = 我们 / 参考（< 1 表示我们更快）。torch 的优化器在 CPU 上默认走逐张量（single-tensor）实现，
这里另列 foreach=True（把所有参数打包成一次多张量 kernel）作为"工业级"参考。

运行：PYTHONPATH=. .venv/bin/python benchmarks/training_optimizers.py   （SMOKE=1 几秒钟试跑，不写 RESULTS.md）
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from _common import machine_info, update_results

from training_sys.optimization import SGD, AdamW, Lion, Muon, clip_grad_norm, cross_entropy
from utils.io import is_smoke
from utils.torch_playground import benchmark_interleaved, setup_seed

SMOKE = is_smoke()
REPS, WARMUP = (2, 1) if SMOKE else (15, 3)


def paired_ms(fn_ours, fn_ref) -> tuple[float, float]:
    """交替计时再各取中位数（见 utils.torch_playground.benchmark_interleaved）。"""
    ours, ref = benchmark_interleaved([fn_ours, fn_ref], WARMUP, REPS)
    return ours, ref


def model_shapes(d: int, layers: int, vocab: int) -> list[tuple[int, ...]]:
    """一个 Llama 形状的参数表：每层 q/k/v/o、gate/up/down 与两个 RMSNorm，外加嵌入、最终 norm 与 lm_head。"""
    shapes = [(vocab, d)]
    for _ in range(layers):
        shapes += [(d, d)] * 4 + [(4 * d, d), (4 * d, d), (d, 4 * d), (d,), (d,)]
    return shapes + [(d,), (vocab, d)]


def make_params(shapes) -> list[torch.nn.Parameter]:
    params = [torch.nn.Parameter(torch.randn(s) * 0.02) for s in shapes]
    for p in params:
        p.grad = torch.randn_like(p) * 1e-3
    return params


def step_ms(make_ours, make_ref, shapes) -> tuple[float, float]:
    """两个优化器各自拥有一份相同的参数与梯度，交替测 step()。"""
    opt_ours, opt_ref = make_ours(make_params(shapes)), make_ref(make_params(shapes))
    return paired_ms(opt_ours.step, opt_ref.step)


def main():
    setup_seed()
    torch.set_num_threads(1)  # 共享的 2 核机器上单线程的中位数最稳定；比值才是要看的量
    info = machine_info()
    print(info)
    d, layers, vocab = (64, 2, 256) if SMOKE else (256, 4, 8192)
    shapes = model_shapes(d, layers, vocab)
    matrices = [s for s in shapes if len(s) == 2 and s[0] != vocab]
    n_params = sum(torch.Size(s).numel() for s in shapes)
    rows: list[tuple[str, str, float, float]] = []

    kw = dict(lr=1e-3, weight_decay=0.1)
    rows.append(("AdamW.step", "torch.optim.AdamW (foreach=False)",
                 *step_ms(lambda p: AdamW(p, **kw), lambda p: torch.optim.AdamW(p, foreach=False, **kw), shapes)))
    rows.append(("AdamW.step", "torch.optim.AdamW (foreach=True)",
                 *step_ms(lambda p: AdamW(p, **kw), lambda p: torch.optim.AdamW(p, foreach=True, **kw), shapes)))
    kw = dict(lr=1e-2, momentum=0.9, nesterov=True, weight_decay=1e-4)
    rows.append(("SGD(nesterov).step", "torch.optim.SGD (foreach=False)",
                 *step_ms(lambda p: SGD(p, **kw), lambda p: torch.optim.SGD(p, foreach=False, **kw), shapes)))
    rows.append(("SGD(nesterov).step", "torch.optim.SGD (foreach=True)",
                 *step_ms(lambda p: SGD(p, **kw), lambda p: torch.optim.SGD(p, foreach=True, **kw), shapes)))
    rows.append(("Lion.step", "torch.optim.AdamW (foreach=False)（无内置 Lion）",
                 *step_ms(lambda p: Lion(p, lr=1e-4, weight_decay=1.0),
                          lambda p: torch.optim.AdamW(p, foreach=False, lr=1e-3), shapes)))
    rows.append((f"Muon.step（{len(matrices)} 个 2-D 隐藏层矩阵）", "torch.optim.Muon",
                 *step_ms(lambda p: Muon(p, lr=0.02), lambda p: torch.optim.Muon(p, lr=0.02), matrices)))

    n, v = (64, 256) if SMOKE else (2048, vocab)
    logits, target = torch.randn(n, v), torch.randint(0, v, (n,))
    x1, x2 = logits.clone().requires_grad_(), logits.clone().requires_grad_()

    def ce_ours():
        x1.grad = None
        cross_entropy(x1, target).backward()

    def ce_ref():
        x2.grad = None
        F.cross_entropy(x2, target).backward()

    rows.append((f"cross_entropy 前向+反向 ({n}×{v})", "F.cross_entropy", *paired_ms(ce_ours, ce_ref)))
    params = make_params(shapes)
    rows.append((f"clip_grad_norm（{len(shapes)} 个张量）", "clip_grad_norm_ (foreach 默认)",
                 *paired_ms(lambda: clip_grad_norm(params, 1.0), lambda: torch.nn.utils.clip_grad_norm_(params, 1.0))))

    lines = [
        "### training_sys 优化：从零实现 vs PyTorch（fp32，CPU 单线程）",
        "",
        f"{info}；Llama 形状的参数表 d={d}、{layers} 层、词表 {vocab}，共 {n_params / 1e6:.2f}M 参数。"
        f"交替计时、各 {REPS} 次取中位数；比值 = 我们 / 参考。",
        "",
        "| 我们 | 参考 | 我们 (ms) | 参考 (ms) | 比值 |",
        "|---|---|---:|---:|---:|",
    ]
    lines += [f"| {a} | {r} | {x:.2f} | {y:.2f} | {x / y:.2f} |" for a, r, x, y in rows]
    md = "\n".join(lines)
    print(md)
    update_results("training_optimizers", md)


if __name__ == "__main__":
    main()
