"""张量 / 流水线 / 上下文并行：一步要多久，和单进程、和 PyTorch 自带的实现并排比较（2 个 gloo 进程，CPU）。

2 个 gloo 进程、每个 rank 1 个线程（training_sys.distributed.spawn），同一个小 Llama，所有变体在一次 spawn 里
用 utils.torch_playground.benchmark_interleaved 交替计时（预热之后取中位数，两个 rank 以同样的顺序调用，集合通信始终配对）：

1. TP（tp=2）：一整步（前向 + 反向 + AdamW）——单进程整个 batch / 我们的 apply_tensor_parallel（不带与带序列并行）/
   DTensor 的 parallelize_module（同一套切法：q/k/v、gate/up 列并行，o/down 行并行，嵌入按词表切，
   lm_head 列并行 + loss_parallel 的词表并行交叉熵）。另记我们每步的集合通信字节数（communication_log）。
2. PP（pp=2，m 个 micro-batch）：GPipe / 1F1B / torch.distributed.pipelining 的 ScheduleGPipe 与 Schedule1F1B，
   同一个 LlamaStage、同样的 micro-batch；单进程对照是整个模型上的梯度累积（accumulate_step）。
   气泡实测：在真实的一步里（不含优化器步、每步前 barrier 对齐）用钩子数每段真正在算的时间（_BusyClock），
   空闲比例 = 1 − 在算的时间 / 这一步的墙钟时间，两段平均，
   与理想公式 (p−1)/(m+p−1) 对照（公式假设各段一样快、通信为零；实际上最后一段多了 lm_head 与 loss，第一段多了嵌入）。
3. CP（cp=2）：ring attention 前向 + 反向（zigzag 与连续切分）vs 单进程在整条序列上的 F.scaled_dot_product_attention；
   实测每个 rank 每步经 isend 发出的字节数（前向 K/V，反向 K/V + fp32 的 dK/dV），与公式对照。

每个变体计时结束后再核对一次它与单进程的结果（同样步数之后的权重 / 输出），证明量的是做对了的东西。
所有数字取 rank 0 的测量（PP 的气泡取两段的平均）。2 核共享的机器上墙钟时间有噪声：看比值，不看绝对值。

运行：PYTHONPATH=. .venv/bin/python benchmarks/training_distributed_parallel.py   （SMOKE=1 几秒钟试跑，不写 RESULTS.md）
"""

from __future__ import annotations

import copy
import functools
import statistics
import time

import torch
import torch.distributed as dist
import torch.nn.functional as F
from _common import machine_info, update_results

from utils.io import is_smoke, save_figure

SMOKE = is_smoke()
REPS, WARMUP = (2, 1) if SMOKE else (9, 2)
WORLD = 2
LR = 1e-3


def _config():
    from model_lab import LlamaConfig

    if SMOKE:
        return LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                           num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64)
    return LlamaConfig(vocab_size=512, hidden_size=128, intermediate_size=352, num_hidden_layers=4,
                       num_attention_heads=8, num_key_value_heads=4, max_position_embeddings=128)


def _llama():
    from model_lab import Llama
    from utils.torch_playground import setup_seed

    setup_seed(0)
    return Llama(_config())


def _tokens(batch: int, seq: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    vocab = _config().vocab_size
    return torch.randint(0, vocab, (batch, seq), generator=g), torch.randint(0, vocab, (batch, seq), generator=g)


def _adamw(params):
    # 各变体用同一个优化器（torch 的 AdamW，能直接更新 DTensor 参数）；eps 大一点：见 tensor_parallel.main 的说明
    return torch.optim.AdamW(params, lr=LR, eps=1e-6)


def _max_diff(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    return max((a[k].float() - b[k].float()).abs().max().item() for k in a)


def _compare(a: float, b: float, more: str = "更慢", less: str = "更快") -> str:
    """报告里的比较按实测写，不预设结论（差别在 3% 以内算持平）。"""
    if abs(a - b) <= 0.03 * max(abs(b), 1e-12):
        return "持平"
    return f"{more}（{a / b:.2f}×）" if a > b else f"{less}（{a / b:.2f}×）"


def _timed(fns: list, names: list[str]) -> dict[str, float]:
    from utils.torch_playground import benchmark_interleaved

    return dict(zip(names, benchmark_interleaved(fns, WARMUP, REPS)))


# ---------------------------------------------------------------------------------------------------
# 1. 张量并行
# ---------------------------------------------------------------------------------------------------


def _dtensor_llama(model, world: int):
    """DTensor 的 parallelize_module，与 apply_tensor_parallel 同一套切法。两处要手动改：
    注意力的头数改成本 rank 的（torch 的 TP 教程也这样改 n_heads）；q/k/v 走三个独立投影（fuse_weights=False）——
    融合路径直接读 q_proj.weight 拼矩阵，而 DTensor 的切分是挂在模块前向上的钩子，直接读权重会拿到 DTensor、与普通输入相乘报错。"""
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.tensor import Replicate, Shard
    from torch.distributed.tensor.parallel import ColwiseParallel, RowwiseParallel, parallelize_module

    mesh = init_device_mesh("cpu", (world,))
    plan = {"model.embed_tokens": RowwiseParallel(input_layouts=Replicate()),
            "lm_head": ColwiseParallel(output_layouts=Shard(-1), use_local_output=False)}  # 交给 loss_parallel
    for i in range(model.config.num_hidden_layers):
        p = f"model.layers.{i}."
        plan |= {p + "self_attn.q_proj": ColwiseParallel(), p + "self_attn.k_proj": ColwiseParallel(),
                 p + "self_attn.v_proj": ColwiseParallel(), p + "self_attn.o_proj": RowwiseParallel(),
                 p + "mlp.gate_proj": ColwiseParallel(), p + "mlp.up_proj": ColwiseParallel(),
                 p + "mlp.down_proj": RowwiseParallel()}
    parallelize_module(model, mesh, plan)
    for layer in model.model.layers:
        attn = layer.self_attn
        attn.n_head, attn.n_kv_head = attn.n_head // world, attn.n_kv_head // world
        attn.project_qkv = functools.partial(type(attn).project_qkv, attn, fuse_weights=False)
    return model


def _tp_section(rank: int, world: int) -> dict:
    from torch.distributed.tensor import DTensor
    from torch.distributed.tensor.parallel import loss_parallel

    from training_sys.distributed.tensor_parallel import apply_tensor_parallel, communication_log

    batch, seq = (2, 16) if SMOKE else (8, 64)
    x, y = _tokens(batch, seq, seed=0)  # tp 组的两个 rank 看同一个 batch
    single = _llama()
    ours = apply_tensor_parallel(copy.deepcopy(single), dist.group.WORLD)
    ours_sp = apply_tensor_parallel(copy.deepcopy(single), dist.group.WORLD, sequence_parallel=True)
    dt = _dtensor_llama(copy.deepcopy(single), world)
    models = {"single": single, "ours": ours, "ours_sp": ours_sp, "dtensor": dt}
    opts = {name: _adamw(m.parameters()) for name, m in models.items()}

    def step(name: str):
        model, opt = models[name], opts[name]

        def run():
            if name == "dtensor":
                with loss_parallel():
                    model(x, y)[1].backward()
            else:
                model(x, y)[1].backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
        return run

    names = list(models)
    ms = _timed([step(n) for n in names], names)
    with communication_log() as log:
        step("ours")()
    with communication_log() as log_sp:
        step("ours_sp")()
    step("single")()  # 补齐步数：四个模型都走了 WARMUP + REPS + 1 步，再核对权重
    step("dtensor")()
    ref = single.state_dict()
    full = {"ours": ours.full_state_dict(), "ours_sp": ours_sp.full_state_dict(),
            "dtensor": {k: v.full_tensor() if isinstance(v, DTensor) else v for k, v in dt.state_dict().items()}}
    return {"ms": ms, "diff": {k: _max_diff(v, ref) for k, v in full.items()},
            "comm_bytes": {"ours": sum(n for _, n in log) * 4, "ours_sp": sum(n for _, n in log_sp) * 4},
            "comm_calls": {"ours": len(log), "ours_sp": len(log_sp)},
            "params": sum(p.numel() for p in single.parameters()), "local_params": sum(p.numel() for p in ours.parameters()),
            "batch": (batch, seq)}


# ---------------------------------------------------------------------------------------------------
# 2. 流水线并行
# ---------------------------------------------------------------------------------------------------


def _count_isend_bytes(fn) -> int:
    """fn() 期间本 rank 经 dist.isend 发出的字节数（流水线与 ring attention 的点对点通信都走它）。"""
    sent = [0]
    original = dist.isend

    def counting(tensor, *args, **kwargs):
        sent[0] += tensor.numel() * tensor.element_size()
        return original(tensor, *args, **kwargs)

    dist.isend = counting
    try:
        fn()
    finally:
        dist.isend = original
    return sent[0]


def _once(tensor: torch.Tensor, fn) -> None:
    """只触发一次的张量钩子：torch.distributed.pipelining 每步复用同一块接收缓冲区，普通钩子会一步步越挂越多。"""
    def hook(grad):
        handle.remove()
        fn(grad)

    handle = tensor.register_hook(hook)


class _BusyClock:
    """数一个流水线段在一步里真正在算的时间（前向 + 反向，墙钟），用模块与张量的钩子，不改被测的代码：
    前向 = forward 的前后钩子之间；反向从"本段输出的梯度算好"（输出张量的钩子）开始，到"本段输入的梯度算好"
    （第一段没有可求导的输入：到嵌入表的梯度累加完，它是本段反向的最后一个算子）结束。单线程下 autograd 一口气做完
    一个 micro-batch 的反向，区间之间不会交错。其余时间（等邻居、收发、调度本身的开销）就是这一段的空闲。"""

    def __init__(self, stage) -> None:
        self.busy = 0.0
        self._t_fwd = self._t_bwd = 0.0
        stage.register_forward_pre_hook(self._forward_start)
        stage.register_forward_hook(self._forward_end)
        if stage.is_first:
            stage.model.embed_tokens.weight.register_post_accumulate_grad_hook(lambda _: self._backward_end(None))

    def _forward_start(self, module, args) -> None:
        self._t_fwd = time.perf_counter()
        if args[0].requires_grad:
            _once(args[0], self._backward_end)

    def _forward_end(self, module, args, out) -> None:
        self.busy += time.perf_counter() - self._t_fwd
        if out.requires_grad:
            _once(out, self._backward_start)

    def _backward_start(self, grad) -> None:
        self._t_bwd = time.perf_counter()

    def _backward_end(self, grad) -> None:
        self.busy += time.perf_counter() - self._t_bwd


def _pp_section(rank: int, world: int) -> dict:
    from torch.distributed.pipelining import PipelineStage, Schedule1F1B, ScheduleGPipe

    from training_sys.distributed.pipeline_parallel import LlamaStage, gpipe_step, one_f_one_b_step
    from training_sys.pretrain import accumulate_step

    m, mb, seq = (4, 1, 16) if SMOKE else (8, 2, 64)
    micro = [_tokens(mb, seq, seed=100 + k) for k in range(m)]  # 没有 -100：torch 的调度按 1/m 平均，与 token 加权相同
    single = _llama()
    stages = {name: LlamaStage(copy.deepcopy(single), rank, world)
              for name in ("gpipe", "1f1b", "torch_gpipe", "torch_1f1b")}
    opts = {name: _adamw(s.parameters()) for name, s in stages.items()}
    opts["single"] = _adamw(single.parameters())

    def loss_fn(logits, target):
        return F.cross_entropy(logits.float().flatten(0, 1), target.flatten())

    schedules = {}
    for name, cls in (("torch_gpipe", ScheduleGPipe), ("torch_1f1b", Schedule1F1B)):
        pipe = PipelineStage(stages[name], rank, world, torch.device("cpu"))
        schedules[name] = cls(pipe, n_microbatches=m, loss_fn=loss_fn)
    x_all, y_all = torch.cat([x for x, _ in micro]), torch.cat([y for _, y in micro])

    def step(name: str, optimizer: bool = True):
        def run():
            if name == "single":
                accumulate_step(single, micro)
            elif name == "gpipe":
                gpipe_step(stages[name], micro)
            elif name == "1f1b":
                one_f_one_b_step(stages[name], micro)
            elif rank == 0:
                schedules[name].step(x_all)
            else:
                schedules[name].step(target=y_all)
            if optimizer:
                opts[name].step()
                opts[name].zero_grad(set_to_none=True)
        return run

    names = ["single", "gpipe", "1f1b", "torch_gpipe", "torch_1f1b"]
    ms = _timed([step(n) for n in names], names)
    sent = _count_isend_bytes(step("gpipe"))
    for name in names:  # 补齐步数（上面 gpipe 多走了一步），之后核对权重
        if name != "gpipe":
            step(name)()
    ref = single.state_dict()
    diff = {name: max((v - ref[k]).abs().max().item() for k, v in s.state_dict().items())
            for name, s in stages.items()}

    # 气泡：只量流水线本身（不含优化器步），每步之前 barrier 对齐两段；空闲 = 1 − 本段在算的时间 / 这一步的墙钟时间
    clocks = {name: _BusyClock(s) for name, s in stages.items()}
    idle: dict[str, list[float]] = {name: [] for name in stages}
    for _ in range(WARMUP + REPS):
        for name in stages:
            clocks[name].busy = 0.0
            dist.barrier()
            t0 = time.perf_counter()
            step(name, optimizer=False)()
            idle[name].append(1 - clocks[name].busy / (time.perf_counter() - t0))
            stages[name].zero_grad(set_to_none=True)
    return {"ms": ms, "bubble": {name: statistics.median(v[WARMUP:]) for name, v in idle.items()}, "m": m,
            "sent_bytes": sent, "diff": diff, "micro": (mb, seq), "hidden": single.config.hidden_size}


# ---------------------------------------------------------------------------------------------------
# 3. 上下文并行
# ---------------------------------------------------------------------------------------------------


def _cp_section(rank: int, world: int) -> dict:
    from training_sys.distributed.context_parallel import ring_attention, split_sequence
    from utils.torch_playground import setup_seed

    b, h, hk, t, d = (1, 4, 2, 64, 16) if SMOKE else (1, 8, 2, 1024, 64)
    setup_seed(0)
    q, k, v, dout = (torch.randn(b, hh, t, d) for hh in (h, hk, hk, h))
    local = {layout: [split_sequence(z, world, rank, layout) for z in (q, k, v, dout)]
             for layout in ("zigzag", "contiguous")}
    outs = {}

    def sdpa():
        qf, kf, vf = (z.clone().requires_grad_() for z in (q, k, v))
        o = F.scaled_dot_product_attention(qf, kf, vf, is_causal=True, enable_gqa=True)
        o.backward(dout)
        outs["sdpa"] = (o.detach(), qf.grad, kf.grad, vf.grad)

    def ring(layout: str):
        def run():
            ql, kl, vl, dl = local[layout]
            ql, kl, vl = (z.clone().requires_grad_() for z in (ql, kl, vl))
            o = ring_attention(ql, kl, vl, causal=True, layout=layout)
            o.backward(dl)
            outs[layout] = (o.detach(), ql.grad, kl.grad, vl.grad)
        return run

    names = ["sdpa", "zigzag", "contiguous"]
    ms = _timed([sdpa, ring("zigzag"), ring("contiguous")], names)
    sent = _count_isend_bytes(ring("zigzag"))
    err = {layout: max((a - split_sequence(r, world, rank, layout)).abs().max().item()
                       for a, r in zip(outs[layout], outs["sdpa"])) for layout in ("zigzag", "contiguous")}
    return {"ms": ms, "sent_bytes": sent, "err": err, "shape": (b, h, hk, t, d)}


def _worker(rank: int, world: int) -> dict:
    return {"tp": _tp_section(rank, world), "pp": _pp_section(rank, world), "cp": _cp_section(rank, world)}


# ---------------------------------------------------------------------------------------------------
# 报告与图
# ---------------------------------------------------------------------------------------------------


def _figure(tp: dict, pp: dict, cp: dict, bubbles: dict[str, float], formula: float) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [
        ("tensor parallel (tp=2), one training step",
         [("single process", tp["ms"]["single"]), ("ours TP", tp["ms"]["ours"]), ("ours TP+SP", tp["ms"]["ours_sp"]),
          ("DTensor TP", tp["ms"]["dtensor"])]),
        (f"pipeline parallel (pp=2, m={pp['m']}), one training step",
         [("single process", pp["ms"]["single"]), ("ours GPipe", pp["ms"]["gpipe"]), ("ours 1F1B", pp["ms"]["1f1b"]),
          ("torch GPipe", pp["ms"]["torch_gpipe"]), ("torch 1F1B", pp["ms"]["torch_1f1b"])]),
        ("context parallel (cp=2), causal attention fwd+bwd",
         [("single SDPA", cp["ms"]["sdpa"]), ("ring zigzag", cp["ms"]["zigzag"]),
          ("ring contiguous", cp["ms"]["contiguous"])]),
    ]
    fig, axes = plt.subplots(1, 3, figsize=(14, 4))
    colors = ["#8c8c8c", "#4c72b0", "#55a868", "#dd8452", "#c44e52"]
    for ax, (title, bars) in zip(axes, panels):
        labels, values = zip(*bars)
        ax.barh(labels, values, color=colors[:len(values)])
        for i, val in enumerate(values):
            ax.text(val, i, f" {val:.1f}", va="center", fontsize=8)
        ax.set(xlabel="ms (median, rank 0)", title=title)
        ax.title.set_fontsize(9)
        ax.invert_yaxis()
    axes[1].set_xlabel("ms (median, rank 0)\nmeasured bubble: " + ", ".join(f"{k} {v:.0%}" for k, v in bubbles.items())
                       + f"; formula (p-1)/(m+p-1) = {formula:.0%}", fontsize=8)
    fig.suptitle("2 gloo processes, 1 thread each (CPU)", fontsize=9)
    fig.tight_layout()
    path = save_figure(fig, "distributed_parallel.png", dpi=110)
    print(f"图已保存：{path}")


def main() -> None:
    from training_sys.distributed import spawn
    from training_sys.distributed.context_parallel import planned_work

    torch.set_num_threads(1)  # 与各 rank 相同（machine_info 报告的线程数）
    info = machine_info()
    print(info)
    per_rank = spawn(_worker, WORLD, timeout_s=600)
    tp, pp, cp = (per_rank[0][k] for k in ("tp", "pp", "cp"))
    for key, limit in (("tp", 1e-4), ("pp", 1e-4)):
        for r in per_rank:
            bad = {n: d for n, d in r[key]["diff"].items() if not d < limit}
            if bad:
                raise SystemExit(f"{key}：计时之后的权重与单进程不一致 {bad}")
    cp_err = max(e for r in per_rank for e in r["cp"]["err"].values())
    if not cp_err < 1e-4:
        raise SystemExit(f"cp：ring attention 与整条序列的 SDPA 不一致（最大误差 {cp_err:.1e}）")

    # 气泡：两段空闲比例的平均（每段各自量，见 _BusyClock）
    p, m = WORLD, pp["m"]
    formula = (p - 1) / (m + p - 1)
    bubbles = {name: statistics.mean(r["pp"]["bubble"][key] for r in per_rank)
               for name, key in (("GPipe", "gpipe"), ("1F1B", "1f1b"), ("torch GPipe", "torch_gpipe"),
                                 ("torch 1F1B", "torch_1f1b"))}

    b, h, hk, t, d = cp["shape"]
    t_local = t // WORLD
    kv_block = 2 * b * hk * t_local * d * 4  # 一块 K/V（fp32）
    cp_formula = (WORLD - 1) * kv_block * 2 + WORLD * kv_block  # 前向 + 反向的 K/V 各 cp−1 次，dK/dV（fp32）cp 次
    mb, seq = pp["micro"]
    pp_formula = 2 * m * mb * seq * pp["hidden"] * 4  # 每步每个边界：前向激活 + 反向梯度，各 m 个 (B, T, C)
    single = tp["ms"]["single"]
    bt = tp["batch"]
    lines = [
        "### training_sys 张量 / 流水线 / 上下文并行：一步的耗时 vs 单进程与 PyTorch（2 进程，CPU）",
        "",
        f"{info}；2 个 gloo 进程、每个 rank 1 个线程，rank 0 的墙钟时间，交替计时 {REPS} 次取中位数（预热 {WARMUP} 次）。"
        f"Llama {tp['params'] / 1e6:.2f}M 参数（hidden {_config().hidden_size}，{_config().num_hidden_layers} 层，"
        f"{_config().num_attention_heads} 头 / {_config().num_key_value_heads} 个 kv 头，词表 {_config().vocab_size}），"
        "torch.optim.AdamW；每个变体计时之后与单进程核对权重 / 输出（最后一列）。",
        "",
        "| 并行 | 变体 | 一步 (ms) | / 单进程 | 与单进程的最大差 |",
        "|---|---|---:|---:|---:|",
        f"| TP（tp=2，batch {bt[0]}×{bt[1]}） | 单进程（整个 batch） | {single:.1f} | 1.00 | — |",
    ]
    for key, label in (("ours", "我们的 apply_tensor_parallel"), ("ours_sp", "我们的 + 序列并行"),
                       ("dtensor", "DTensor parallelize_module + loss_parallel")):
        lines.append(f"| | {label} | {tp['ms'][key]:.1f} | {tp['ms'][key] / single:.2f} | {tp['diff'][key]:.1e} |")
    lines.append(f"| PP（pp=2，m={m} 个 {mb}×{seq} 的 micro-batch） | 单进程（梯度累积） | {pp['ms']['single']:.1f} | 1.00 | — |")
    for key, label in (("gpipe", "我们的 GPipe"), ("1f1b", "我们的 1F1B"), ("torch_gpipe", "torch.distributed.pipelining ScheduleGPipe"),
                       ("torch_1f1b", "torch.distributed.pipelining Schedule1F1B")):
        lines.append(f"| | {label} | {pp['ms'][key]:.1f} | {pp['ms'][key] / pp['ms']['single']:.2f} | {pp['diff'][key]:.1e} |")
    lines.append(f"| CP（cp=2，因果注意力 B={b} H={h} H_kv={hk} T={t} D={d}，前向 + 反向） | 单进程 SDPA（整条序列） "
                 f"| {cp['ms']['sdpa']:.1f} | 1.00 | — |")
    for key in ("zigzag", "contiguous"):
        lines.append(f"| | ring attention，{key} 切分 | {cp['ms'][key]:.1f} | {cp['ms'][key] / cp['ms']['sdpa']:.2f} "
                     f"| {max(r['cp']['err'][key] for r in per_rank):.1e} |")
    lines += [
        "",
        "| 通信与气泡 | 实测 | 公式 |",
        "|---|---:|---:|",
        f"| TP 每步每个 rank 发起的集合通信（张量字节；ring 实际收发再 ×2(N−1)/N） | {tp['comm_calls']['ours']} 次，"
        f"{tp['comm_bytes']['ours'] / 1024:.0f} KiB | — |",
        f"| TP + 序列并行 | {tp['comm_calls']['ours_sp']} 次，{tp['comm_bytes']['ours_sp'] / 1024:.0f} KiB | 与 TP 相同的字节 |",
        f"| PP 每步 rank 0 经 isend 发出（激活 m·B·T·C·4；rank 1 发回同样多的梯度） | {pp['sent_bytes'] / 1024:.0f} KiB "
        f"| {pp_formula / 2 / 1024:.0f} KiB |",
        f"| CP 每步每个 rank 经 isend 发出（K/V 前向 cp−1 次、反向 cp−1 次，dK/dV fp32 cp 次） | {cp['sent_bytes'] / 1024:.0f} KiB "
        f"| {cp_formula / 1024:.0f} KiB |",
    ]
    for (name, val), key in zip(bubbles.items(), ("gpipe", "1f1b", "torch_gpipe", "torch_1f1b")):
        per_stage = " / ".join(f"{r['pp']['bubble'][key]:.1%}" for r in per_rank)
        lines.append(f"| PP 气泡（空闲比例，两段平均；stage 0 / stage 1 = {per_stage}），{name} | {val:.1%} | {formula:.1%} |")
    lines += [
        "",
        "读法：TP / CP 把一份计算摊给 2 个进程（理想是单进程的 1/2），省下的时间要和通信相抵：TP 每层前向 2 次、"
        "反向 2 次 all-reduce（gloo 走 TCP，每次几十到几百微秒），CP 每步转 2 圈 K/V；真正的收益在显存"
        "（每个 rank 只存 1/tp 的参数、1/cp 的激活）与 GPU 上的 NVLink。序列并行的字节数与 TP 相同、次数多一倍多"
        f"（all-reduce 拆成 reduce-scatter + all-gather），这里{_compare(tp['ms']['ours_sp'], tp['ms']['ours'])}"
        "（gloo 上每次通信的固定开销占大头）。"
        f"PP 的实测气泡 {min(bubbles.values()):.0%}–{max(bubbles.values()):.0%}，公式 (p−1)/(m+p−1) = {formula:.0%}："
        "公式假设各段一样快、通信为零，这里第二段多了 lm_head 与 loss、第一段多了嵌入，每个 micro-batch 还要一次 gloo 收发"
        "（算在空闲里），共享的 2 核上一个 rank 被别的进程抢占时另一个就只能等（也算在空闲里）；GPipe 与 1F1B 的气泡理论上相同，1F1B 省的是激活显存（见 pipeline_parallel.py 的测试）。"
        "ring attention 是手写的分块注意力（显式算出每块分数），单进程的 SDPA 是融合的 flash 内核，CP 的比值里有这份内核差距。"
        f"因果时每个 rank 要算的 c×c 小块：zigzag {planned_work(WORLD, 'zigzag')}，连续切分 {planned_work(WORLD, 'contiguous')}"
        "（环按最慢的 rank 走）；cp=2 时不均衡只有 8/6，zigzag 的块更碎（半块 q 对整块 K/V）、掩码更多，"
        f"这里 zigzag {_compare(cp['ms']['zigzag'], cp['ms']['contiguous'])}；cp 越大差距越大（cp=8 时连续切分最慢的 rank 是最快的 8 倍）。"
        + ("" if SMOKE else "机器是与其他任务共享的 2 核：绝对毫秒数随负载浮动，比值更可信。"),
    ]
    md = "\n".join(lines)
    print(md)
    _figure(tp, pp, cp, bubbles, formula)
    update_results("training_distributed_parallel", md)


if __name__ == "__main__":
    main()
