"""基准：我们的预训练循环 + Llama 对照 nanoGPT 的 CPU 配方（字符级 tiny-shakespeare），同一进程、同一份数据、轮流跑。

nanoGPT README 的 CPU 配方：4 层、4 头、n_embd 128、block 64、batch 12、2000 步，AdamW lr 1e-3（预热 100 步，
余弦降到 1e-4）、betas (0.9, 0.99)、weight decay 0.1、梯度裁剪 1.0、dropout 0，val loss 用 20 个 batch 估计；
在这台机器上（空闲时）得到 val loss 1.886、约 100 ms/iter。目标：同样大小、同样预算的 Llama 达到 val loss ≤ 1.80，
每步不更慢；再报告同样墙钟时间内循环能达到的最好 val loss（Muon）。

三个运行：
  ref     nanoGPT 配方的参照实现：model_lab 的 GPT2（nanoGPT model.py 的结构：学到的位置嵌入、LayerNorm、GELU MLP、
          共享 lm_head），按 nanoGPT train.py 的写法训练（torch.optim.AdamW、nanoGPT 的 get_lr、全局 RNG 抽 batch）
  adamw   python -m training_sys.pretrain 的同一配方，模型换成同尺寸的 Llama（SwiGLU 隐层 344 ≈ 8/3·128，参数量与
          4·128 的 GELU MLP 相当；RoPE、RMSNorm、不共享 lm_head）
  muon    同一个 Llama，Muon（隐藏层矩阵）+ AdamW（嵌入、lm_head、norm），步数按实测的每步耗时折算成与 adamw 相同的墙钟

数据：默认 --corpus tinyshakespeare（nanoGPT 的 input.txt，语料注册表 data_pipeline.corpora 第一次用时下载到
data/corpora/，离线时报错写明文件放到哪里）；--data PATH 换成任意文本文件。

三者最后都用同一个评估（training_sys.pretrain.estimate_loss：同一种子的 20 个 batch，nanoGPT 的 eval_iters=20）
再加一个 200 个 batch 的评估（噪声小得多），所以 val loss 可以直接比较。

    PYTHONPATH=. .venv/bin/python benchmarks/training_nanogpt_recipe.py [--corpus tinyshakespeare | --data PATH] [--threads 1]
    SMOKE=1 PYTHONPATH=. .venv/bin/python benchmarks/training_nanogpt_recipe.py   # 几秒钟，不写 RESULTS.md

GPU：有 CUDA 时另跑 nanoGPT 的 GPU 配方（6 层、6 头、384 维、block 256、batch 64、5000 步；nanoGPT 在 A100 上 1.47）；
没有 GPU 时在表里写明没有跑。
"""

from __future__ import annotations

import argparse
import math
import os
import shlex
import statistics
import time
from pathlib import Path

import torch
from _common import corpus_file, machine_info, update_results

from training_sys.data import load_char_data
from training_sys.pretrain import TrainConfig, estimate_loss, train
from utils.io import is_smoke, output_path

DEFAULT_CORPUS = "tinyshakespeare"
NANOGPT_VAL_LOSS = 1.886  # nanoGPT 本身在同一配方、这台机器上的结果（来自 issue）
NANOGPT_MS_PER_ITER = 100.0
TARGET_VAL_LOSS = 1.80
RECIPE = dict(n_layer=4, n_head=4, n_embd=128, block_size=64, batch_size=12, max_iters=2000, lr=1e-3, min_lr=1e-4,
              warmup_iters=100, beta1=0.9, beta2=0.99, weight_decay=0.1, grad_clip=1.0, eval_iters=20, seed=1337)
GPU_RECIPE = dict(RECIPE, n_layer=6, n_head=6, n_embd=384, block_size=256, batch_size=64, max_iters=5000,
                  warmup_iters=100, dtype="bfloat16", device="cuda")
BIG_EVAL_ITERS = 200


def load_avg() -> str:
    try:
        return "/".join(f"{x:.1f}" for x in os.getloadavg())
    except OSError:
        return "n/a"


# ---------------------------------------------------------------------------
# nanoGPT train.py 的参照循环（GPT2 模型）
# ---------------------------------------------------------------------------
def nanogpt_lr(it: int, lr: float, min_lr: float, warmup: int, decay_iters: int) -> float:
    """nanoGPT 的 get_lr：线性预热 (it+1)/(warmup+1)，然后余弦降到 min_lr。"""
    if it < warmup:
        return lr * (it + 1) / (warmup + 1)
    if it > decay_iters:
        return min_lr
    ratio = (it - warmup) / (decay_iters - warmup)
    return min_lr + 0.5 * (1.0 + math.cos(math.pi * ratio)) * (lr - min_lr)


def run_reference(data, r: dict, compile: bool = False) -> dict:
    from model_lab import GPT2, GPT2Config

    torch.manual_seed(r["seed"])
    config = GPT2Config(vocab_size=data.vocab_size, n_positions=r["block_size"], n_embd=r["n_embd"],
                        n_layer=r["n_layer"], n_head=r["n_head"], activation_function="gelu",
                        resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)
    model = GPT2(config)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW([{"params": [p for p in params if p.dim() >= 2], "weight_decay": r["weight_decay"]},
                                   {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0}],
                                  lr=r["lr"], betas=(r["beta1"], r["beta2"]))
    train_t = torch.from_numpy(data.train.astype("int64"))
    block, batch = r["block_size"], r["batch_size"]
    times = []
    model.train()
    fwd_model = torch.compile(model) if compile else model  # nanoGPT 的 compile 选项（train.py 默认开启）
    for it in range(r["max_iters"]):
        t0 = time.perf_counter()
        for g in optimizer.param_groups:
            g["lr"] = nanogpt_lr(it, r["lr"], r["min_lr"], r["warmup_iters"], r["max_iters"])
        ix = torch.randint(len(train_t) - block, (batch,))
        x = torch.stack([train_t[i:i + block] for i in ix])
        y = torch.stack([train_t[i + 1:i + 1 + block] for i in ix])
        _, loss = fwd_model(x, y)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), r["grad_clip"])
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        times.append(time.perf_counter() - t0)
    return {"model": model, "times": times, "params": model.num_parameters()}


# ---------------------------------------------------------------------------
# 主程序
# ---------------------------------------------------------------------------
def evaluate(model, data, r: dict, iters: int) -> float:
    cfg = TrainConfig(**{**{k: v for k, v in r.items() if k in TrainConfig.__dataclass_fields__}, "eval_iters": iters})
    return estimate_loss(model, data, cfg, torch.device("cpu"), lambda: torch.autocast("cpu", enabled=False))["val"]


def run_ours(data_path: Path, r: dict, name: str, **overrides) -> dict:
    out_dir = output_path("bench_nanogpt", name, "metrics.jsonl").parent  # checkpoints/bench_nanogpt/<name>/
    cfg = TrainConfig(**{**r, **overrides}, data=str(data_path), out_dir=str(out_dir), overwrite=True,
                      progress=False, sample_tokens=0, eval_interval=max(1, r["max_iters"] // 4))
    t0 = time.perf_counter()
    result = train(cfg)
    wall = time.perf_counter() - t0
    from model_lab import Llama

    model = Llama.from_pretrained(result.checkpoint_dir)
    return {"result": result, "model": model, "wall": wall, "cfg": cfg}


def interleaved_ms_per_iter(data, data_path: Path, r: dict, threads: int, rounds: int,
                            steps: int, compile: bool = False) -> tuple[float, float]:
    """ref 与 ours 轮流各跑 steps 步、共 rounds 轮，取每轮中位数的中位数。

    整段 2000 步的两个运行前后相隔几分钟，共用机器的负载可能完全不同；轮流的短跑让两边处在同样的负载下，
    每步耗时之比才可信。ours 的耗时来自真实的训练循环（TrainResult.ms_per_iter，跳过前 5 步，
    所以 compile=True 时第一步的编译不计入）。compile=True：两边都 torch.compile，比的是编译后的每步耗时。
    """
    short = dict(r, max_iters=steps, warmup_iters=steps // 4)
    ref_ms, ours_ms = [], []
    for _ in range(rounds):
        ref_ms.append(statistics.median(run_reference(data, short, compile=compile)["times"][5:]) * 1000)
        ours_ms.append(run_ours(data_path, short, "timing", threads=threads, compile=compile)["result"].ms_per_iter)
    return statistics.median(ref_ms), statistics.median(ours_ms)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--corpus", default=DEFAULT_CORPUS,
                        help="data_pipeline.corpora 里的语料名；默认 %(default)s（nanoGPT 的 input.txt，1,115,394 个字符，"
                             "第一次用时下载到 data/corpora/）；SMOKE=1 时不下载，缓存里没有就改用内置的 shakespeare 语料")
    parser.add_argument("--data", default=None,
                        help="直接给一个 UTF-8 文本文件的路径（给了就不用 --corpus）；默认 不用")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch 的 CPU 线程数（torch.set_num_threads），参照与 ours 两边相同；默认 %(default)s："
                             "2 核机器被其他进程占用时 1 个线程最快")
    parser.add_argument("--muon-lr", type=float, default=0.02,
                        help="第三个运行（muon）里 Muon 组（隐藏层的二维权重矩阵）的峰值学习率；嵌入、lm_head 与 norm "
                             "仍由 AdamW 按配方的 lr 更新；默认 %(default)s")
    args = parser.parse_args()
    smoke = is_smoke()
    data_path = corpus_file(args.corpus, args.data, smoke)
    if data_path is None:  # SMOKE 且 tiny-shakespeare 不在缓存里：不联网，用内置语料试跑
        from data_pipeline.corpora import corpus_path

        print(f"[SMOKE] 语料 {args.corpus} 不在缓存里（SMOKE 不下载），试跑改用内置的 shakespeare 语料")
        data_path = corpus_path("shakespeare")
    r = dict(RECIPE)
    if smoke:
        r.update(n_layer=2, n_head=2, n_embd=32, max_iters=10, warmup_iters=2, eval_iters=2)
    big_eval = 4 if smoke else BIG_EVAL_ITERS
    torch.set_num_threads(args.threads)
    data = load_char_data(path=data_path)
    print(f"数据 {data_path}（vocab {data.vocab_size}）| {args.threads} 个线程 | 负载 {load_avg()}")

    load_before = load_avg()
    t0 = time.perf_counter()
    ref = run_reference(data, r)
    ref_wall = time.perf_counter() - t0
    ref_ms = statistics.median(ref["times"][5:] or ref["times"]) * 1000
    ref_val = evaluate(ref["model"], data, r, r["eval_iters"])
    ref_val_big = evaluate(ref["model"], data, r, big_eval)
    print(f"ref (nanoGPT 配方, GPT2 {ref['params'] / 1e6:.2f}M): val {ref_val:.4f} / {ref_val_big:.4f} | "
          f"{ref_ms:.1f} ms/iter | {ref_wall:.0f} s")

    ours = run_ours(data_path, r, "adamw", threads=args.threads)
    res = ours["result"]
    ours_val_big = evaluate(ours["model"], data, r, big_eval)
    print(f"adamw (Llama {res.num_params / 1e6:.2f}M): val {res.val_loss:.4f} / {ours_val_big:.4f} | "
          f"{res.ms_per_iter:.1f} ms/iter | {ours['wall']:.0f} s")

    # Muon：先量 30 步的每步耗时，把 adamw 训练步的总时间折算成 Muon 的步数（同样的墙钟）
    probe = run_ours(data_path, dict(r, max_iters=min(30, r["max_iters"]), warmup_iters=2), "muon_probe",
                     threads=args.threads, optimizer="muon", muon_lr=args.muon_lr)["result"]
    adamw_train_s = res.ms_per_iter * r["max_iters"] / 1000
    muon_iters = max(20, int(adamw_train_s / (probe.ms_per_iter / 1000)))
    muon = run_ours(data_path, dict(r, max_iters=muon_iters, warmup_iters=min(r["warmup_iters"], muon_iters // 10)),
                    "muon", threads=args.threads, optimizer="muon", muon_lr=args.muon_lr)
    mres = muon["result"]
    muon_val_big = evaluate(muon["model"], data, r, big_eval)
    print(f"muon: {muon_iters} 步, val {mres.val_loss:.4f} / {muon_val_big:.4f} | {mres.ms_per_iter:.1f} ms/iter | "
          f"{muon['wall']:.0f} s")
    rounds, steps = (1, 10) if smoke else (7, 60)
    ref_ms_il, ours_ms_il = interleaved_ms_per_iter(data, data_path, r, args.threads, rounds, steps)
    print(f"交替计时：ref {ref_ms_il:.1f} ms/iter，ours {ours_ms_il:.1f} ms/iter")
    compiled = None
    if not smoke:  # 编译要几十秒，SMOKE 不跑
        compiled = interleaved_ms_per_iter(data, data_path, r, args.threads, rounds, steps, compile=True)
        print(f"交替计时（两边都 torch.compile）：ref {compiled[0]:.1f} ms/iter，ours {compiled[1]:.1f} ms/iter")
    load_after = load_avg()

    gpu_line = ("没有 GPU（本机只有 CPU）：nanoGPT 的 GPU 配方（6 层、6 头、384 维、block 256、batch 64、5000 步，"
                "A100 上 val 1.47）没有跑。")
    if torch.cuda.is_available() and not smoke:
        g = run_ours(data_path, GPU_RECIPE, "gpu")
        gpu_line = (f"GPU {torch.cuda.get_device_name(0)}：nanoGPT GPU 配方、Llama、bf16，val {g['result'].val_loss:.4f}"
                    f"（nanoGPT 在 A100 上 1.47），{g['result'].ms_per_iter:.1f} ms/iter，{g['wall']:.0f} s。")

    rows = [
        ("nanoGPT 本身（issue 给的数字，空闲机器）", "—", f"{NANOGPT_VAL_LOSS:.3f}", "—", f"~{NANOGPT_MS_PER_ITER:.0f}", "—", "—"),
        (f"参照：nanoGPT 配方 + GPT2（{ref['params'] / 1e6:.2f}M）", str(r["max_iters"]), f"{ref_val:.4f}",
         f"{ref_val_big:.4f}", f"{ref_ms:.1f}", f"{ref_wall:.0f}", "1.00"),
        (f"ours：pretrain + Llama（{res.num_params / 1e6:.2f}M）+ AdamW", str(r["max_iters"]), f"{res.val_loss:.4f}",
         f"{ours_val_big:.4f}", f"{res.ms_per_iter:.1f}", f"{ours['wall']:.0f}", f"{res.ms_per_iter / ref_ms:.2f}"),
        (f"ours：Llama + Muon（lr {args.muon_lr}）同墙钟", str(muon_iters), f"{mres.val_loss:.4f}",
         f"{muon_val_big:.4f}", f"{mres.ms_per_iter:.1f}", f"{muon['wall']:.0f}", f"{mres.ms_per_iter / ref_ms:.2f}"),
    ]
    rows.append((f"交替计时（{rounds} 轮 × {steps} 步，同负载）：参照 / ours AdamW", "—", "—", "—",
                 f"{ref_ms_il:.1f} / {ours_ms_il:.1f}", "—", f"{ours_ms_il / ref_ms_il:.2f}"))
    if compiled is not None:
        rows.append((f"交替计时，两边都 torch.compile（{rounds} 轮 × {steps} 步）：参照 / ours AdamW", "—", "—", "—",
                     f"{compiled[0]:.1f} / {compiled[1]:.1f}", "—", f"{compiled[1] / compiled[0]:.2f}"))
    header = "| 运行 | 步数 | val loss（20 batch） | val loss（200 batch） | ms/iter（中位数） | 墙钟 s | 每步耗时比 |"
    table = "\n".join([header, "|---|---|---|---|---|---|---|"] + ["| " + " | ".join(row) + " |" for row in rows])
    verdict = "达到" if res.val_loss <= TARGET_VAL_LOSS else "未达到"
    speed = f"每步耗时（目标：不多于参照，同负载交替计时）：eager {ours_ms_il / ref_ms_il:.2f}×"
    if compiled is not None:
        speed += f"，两边都 torch.compile {compiled[1] / compiled[0]:.2f}×"
    source = f"--data {shlex.quote(args.data)}" if args.data else f"--corpus {args.corpus}"
    md = f"""### 预训练循环 vs nanoGPT CPU 配方（字符级 tiny-shakespeare）

{machine_info()} · torch 线程 {args.threads} · 负载（1/5/15 分钟）开始 {load_before}，结束 {load_after}（2 核机器与其他任务共用）

配方：4 层、4 头、128 维、block 64、batch 12、{r['max_iters']} 步，AdamW lr 1e-3（预热 100 步、余弦到 1e-4）、
betas (0.9, 0.99)、wd 0.1、裁剪 1.0、dropout 0。Llama 的 SwiGLU 隐层 344（≈ 8/3·128，参数量与 4·128 的 GELU MLP 相当）。
三个运行依次在同一进程里跑，最后用同一组评估窗口（固定种子）算 val loss。

{table}

目标 val loss ≤ {TARGET_VAL_LOSS}（AdamW，同样的步数）：{verdict}。{speed}。{gpu_line}

    PYTHONPATH=. .venv/bin/python benchmarks/training_nanogpt_recipe.py {source}
"""
    print(md)
    update_results("training_nanogpt_recipe", md)


if __name__ == "__main__":
    main()
