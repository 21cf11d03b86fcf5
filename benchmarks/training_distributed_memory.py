"""ZeRO 的经典显存图，实测版：stage 0（DDP 式）、ZeRO-1、ZeRO-2、FSDP（ZeRO-3）每个 rank 实际持有多少字节。

2 个 gloo 进程、同一个小 Llama、fp32 + AdamW，各训练一步；在 optimizer.step() 之后、zero_grad 之前
（一步里梯度与优化器状态同时存在的时刻）数每个 rank 真正持有的张量：参数、梯度、优化器状态
（共享同一块存储的视图只算一次，见 training_sys.distributed.zero.held_bytes）。
理论值（Ψ 个参数，N 个 rank，每个参数 4 B 权重 + 4 B 梯度 + 8 B 的 Adam m、v）：
    stage 0：16Ψ    ZeRO-1：8Ψ + 8Ψ/N    ZeRO-2：4Ψ + 12Ψ/N    FSDP：16Ψ/N
另外记录 FSDP 前向中临时拼出的完整参数的峰值（根单元 + 一层）：它是 ZeRO-3 省显存的代价，随层数增加而摊薄。

运行：PYTHONPATH=. .venv/bin/python benchmarks/training_distributed_memory.py   （SMOKE=1 几秒钟试跑，不写 RESULTS.md）
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from _common import machine_info, update_results

from training_sys.distributed import spawn
from training_sys.distributed.fsdp import FSDPStrategy
from training_sys.distributed.zero import ZeroStrategy, held_bytes
from utils.io import is_smoke, save_figure
from utils.torch_playground import setup_seed

SMOKE = is_smoke()
WORLD = 2
STAGES = ("stage 0 (DDP)", "ZeRO-1", "ZeRO-2", "FSDP (ZeRO-3)")


def _llama():
    from model_lab import Llama, LlamaConfig

    setup_seed(0)
    hidden, layers, vocab = (32, 2, 128) if SMOKE else (128, 4, 2048)
    return Llama(LlamaConfig(vocab_size=vocab, hidden_size=hidden, intermediate_size=3 * hidden,
                             num_hidden_layers=layers, num_attention_heads=4, max_position_embeddings=64))


def _batch(rank: int, vocab: int) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(rank)
    tokens = torch.randint(0, vocab, (2, 33), generator=gen)
    return tokens[:, :-1], tokens[:, 1:]


def _state_bytes(optimizer: torch.optim.Optimizer) -> int:
    return held_bytes(t for st in optimizer.state.values() for t in st.values() if isinstance(t, torch.Tensor))


def _measure(rank: int, world: int) -> dict[str, dict[str, int]]:
    from training_sys.optimization import AdamW, weight_decay_param_groups

    out = {}
    for stage, name in enumerate(STAGES):
        model = _llama()
        n_params = sum(p.numel() for p in model.parameters())
        x, y = _batch(rank, model.config.vocab_size)
        extra = {}
        if stage == 3:
            strategy = FSDPStrategy()
            model = strategy.prepare_model(model)
            peak = [0]

            def track(module, args, output, peak=peak, sharded=strategy.sharded):
                peak[0] = max(peak[0], sharded.resident_bytes()["gathered"])

            for layer in model.model.layers:  # 层的前向刚结束、还没释放时：根单元 + 这一层是完整的
                layer.register_forward_hook(track, prepend=True)
        elif stage:
            strategy = ZeroStrategy(stage=stage)
            strategy.prepare_model(model)
        optimizer = AdamW(weight_decay_param_groups(model, 0.1), lr=1e-3)
        if stage in (1, 2):
            optimizer = strategy.prepare_optimizer(optimizer)
        model(x, y)[1].backward()
        if stage == 0:  # DDP：每个 rank 都 all-reduce 出完整的平均梯度，各自更新完整的状态
            for p in model.parameters():
                dist.all_reduce(p.grad)
                p.grad.div_(world)
        elif stage in (1, 2):
            strategy.clip_grad_norm(model, 1e9)  # 触发梯度归约（stage 1 all-reduce，stage 2 reduce-scatter）
        optimizer.step()
        if stage in (1, 2):
            mem = optimizer.memory_bytes()
        else:
            mem = {"params": held_bytes(model.parameters()), "grads": held_bytes(p.grad for p in model.parameters()),
                   "optimizer": _state_bytes(optimizer)}
        if stage == 3:
            mem["params"] += strategy.sharded.resident_bytes()["gathered"]  # 两步之间应为 0
            extra = {"peak_gathered": peak[0]}
        out[name] = {**mem, **extra, "n_params": n_params}
    return out


def _theory(name: str, psi: int, n: int) -> float:
    return {"stage 0 (DDP)": 16 * psi, "ZeRO-1": 8 * psi + 8 * psi / n, "ZeRO-2": 4 * psi + 12 * psi / n,
            "FSDP (ZeRO-3)": 16 * psi / n}[name]


def _figure(rows: dict[str, dict[str, int]]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    bottom = [0.0] * len(STAGES)
    for part, color in (("params", "#4c72b0"), ("grads", "#dd8452"), ("optimizer", "#55a868")):
        vals = [rows[s][part] / 2**20 for s in STAGES]
        ax.bar(STAGES, vals, bottom=bottom, label=part, color=color)
        bottom = [b + v for b, v in zip(bottom, vals)]
    psi = rows[STAGES[0]]["n_params"]
    ax.plot(STAGES, [_theory(s, psi, WORLD) / 2**20 for s in STAGES], "k_", markersize=40, mew=2,
            label="theory 16Ψ, 8Ψ+8Ψ/N, 4Ψ+12Ψ/N, 16Ψ/N")
    ax.set(xlabel="sharding strategy", ylabel="MiB per rank", title=f"measured memory per rank (Ψ = {psi:,}, N = {WORLD}, fp32 AdamW)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    path = save_figure(fig, "distributed_memory.png", dpi=120)
    print(f"图已保存：{path}")


def main() -> None:
    info = machine_info()
    print(info)
    per_rank = spawn(_measure, WORLD, timeout_s=300)
    # 各 rank 的段长相同（补零到 N 的倍数），只有优化器里 step 计数的个数随"本段覆盖几个参数"略有不同：取各 rank 的最大值
    rows = {s: {k: max(r[s][k] for r in per_rank) for k in per_rank[0][s]} for s in STAGES}
    psi = rows[STAGES[0]]["n_params"]
    lines = [f"{info}", "",
             f"每个 rank 实际持有的字节（{WORLD} 个 gloo 进程，Llama Ψ = {psi:,} 个参数，fp32 + AdamW；"
             "optimizer.step() 之后、zero_grad 之前测量）。理论值：16Ψ / 8Ψ+8Ψ/N / 4Ψ+12Ψ/N / 16Ψ/N。", "",
             "| 方案 | 参数 (MiB) | 梯度 (MiB) | 优化器状态 (MiB) | 合计 (MiB) | 理论 (MiB) | 合计 / stage 0 |",
             "|---|---:|---:|---:|---:|---:|---:|"]
    total0 = sum(rows[STAGES[0]][k] for k in ("params", "grads", "optimizer"))
    for s in STAGES:
        r = rows[s]
        total = r["params"] + r["grads"] + r["optimizer"]
        lines.append(f"| {s} | {r['params'] / 2**20:.3f} | {r['grads'] / 2**20:.3f} | {r['optimizer'] / 2**20:.3f} "
                     f"| {total / 2**20:.3f} | {_theory(s, psi, WORLD) / 2**20:.3f} | {total / total0:.3f} |")
    peak = rows[STAGES[3]]["peak_gathered"]
    notes = [f"FSDP 前向中临时拼出的完整参数峰值：{peak / 2**20:.3f} MiB（根单元 + 一层；两步之间为 0）。",
             "优化器状态比 8Ψ 多出的几十字节是每个参数一个 fp32 的 step 计数。"]
    if rows[STAGES[0]]["grads"] > 4 * psi:
        notes.append("stage 0 的梯度比 4Ψ 多：融合 QKV 投影的反向（Attention.project_qkv，B·T ≥ C 时走这条路）让 q/k/v 的 "
                     ".grad 成了更大缓冲的视图，整块缓冲都被拽着——held_bytes 按存储计，这部分内存是真的被占着；"
                     "ZeRO-1/2 与 FSDP 把梯度拷进自己的扁平缓冲后就放掉了它们。")
    lines += ["", "".join(notes)]
    md = "\n".join(lines)
    print(md)
    _figure(rows)
    update_results("training_distributed_memory", md)


if __name__ == "__main__":
    main()
