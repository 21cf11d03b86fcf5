"""基准：`make run` 的端到端运行（training_sys.speedrun 的 CPU 预设）从头跑一遍，记录每个阶段的耗时与最终 val loss。

这里没有"参照实现"可比：要回答的问题是"从一份干净的 checkout 到模型目录 + 报告，要多久、得到什么"。
所以表里是每个阶段的墙钟时间、训练吞吐、验证集 loss / bits per byte，以及 unigram 基线（不看上下文的模型）。
用 --fresh 运行：指纹全部作废，每个阶段都真的执行一次。

    PYTHONPATH=. .venv/bin/python benchmarks/training_speedrun.py [--threads 1] [--preset cpu]
    SMOKE=1 PYTHONPATH=. .venv/bin/python benchmarks/training_speedrun.py   # SMOKE 预设，不写 RESULTS.md

机器被别的进程占用时墙钟时间会变长：表里同时记下开始与结束时的负载（load average）。
"""

from __future__ import annotations

import argparse
import os
import time

from _common import machine_info, update_results

from training_sys.speedrun import STAGES, Options, run_pipeline
from training_sys.speedrun_report import STAGE_TITLES
from utils.io import is_smoke


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--preset", default=None,
                        help="training_sys.speedrun 的预设名：cpu（2 核 CPU 上几分钟）、gpu（需要 CUDA，更大的模型）、"
                             "smoke（几秒的缩小版）；默认 cpu，SMOKE=1 时 smoke")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch 的 CPU 线程数，交给预训练阶段设置（torch.set_num_threads，同一进程里之后的阶段也沿用）；"
                             "默认不设置，沿用 PyTorch 的默认值（通常等于 CPU 核数）")
    args = parser.parse_args()
    preset = args.preset or ("smoke" if is_smoke() else "cpu")

    load_before = " / ".join(f"{x:.1f}" for x in os.getloadavg())
    t0 = time.perf_counter()
    records = run_pipeline(Options(preset=preset, threads=args.threads, fresh=True, progress=False))
    total = time.perf_counter() - t0
    load_after = " / ".join(f"{x:.1f}" for x in os.getloadavg())

    trained, ev = records["train"]["result"], records["eval"]["result"]
    rows = "\n".join(f"| {i} {STAGE_TITLES[k]} | {records[k]['seconds']:.1f} |" for i, k in enumerate(STAGES, 1))
    cfg = trained["config"]
    md = f"""## 端到端运行 `make run`（training_sys/speedrun.py，预设 {preset}）

{machine_info()} · torch 线程 {args.threads or '默认'} · 负载（1/5/15 分钟）开始 {load_before}，结束 {load_after}（2 核机器与其他任务共用）

莎士比亚语料 → BPE（词表 {records['tokenizer']['result']['vocab_size']}）→ Llama {cfg['n_layer']} 层 {cfg['n_embd']} 维
（{trained['num_params'] / 1e6:.2f}M 参数）{trained['step']} 步 × {cfg['batch_size']}×{cfg['block_size']} token → HF 模型目录 + report.md。

| 阶段 | 秒 |
|---|---|
{rows}
| **全程（run_pipeline，不含解释器启动）** | **{total:.1f}** |

| 指标 | 值 |
|---|---|
| 训练吞吐 | {trained['tokens_per_s']:,.0f} tokens/s |
| 最终 val loss（验证集 {ev['tokens']:,} token） | {ev['model_loss']:.4f} nats/token |
| val bits/byte | {ev['model_bpb']:.4f} |
| unigram 基线 | {ev['unigram_loss']:.4f} nats/token = {ev['unigram_bpb']:.4f} bits/byte |
| 均匀分布 | {ev['uniform_loss']:.4f} nats/token = {ev['uniform_bpb']:.4f} bits/byte |
"""
    print(md)
    update_results("training_speedrun", md)


if __name__ == "__main__":
    main()
