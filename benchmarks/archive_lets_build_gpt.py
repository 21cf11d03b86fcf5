"""基准：archive/Let's_build_GPT 的完整 GPT 用 nanoGPT 的 CPU 配方训练 tiny-shakespeare，对照 nanoGPT 的 val loss。

nanoGPT README 的 CPU 配方（4 层、4 头、n_embd 128、block 64、batch 12、2000 步、lr 1e-3 warmup 100 步后
cosine 降到 1e-4、betas (0.9, 0.99)、weight decay 0.1、梯度裁剪 1.0、dropout 0、val loss 在 20 个随机 batch 上估计），
在这台机器上得到 val loss 1.886、约 100 ms/iter。我们的脚本用同一配方、同一份数据，目标 val loss ≤ 1.90。

    PYTHONPATH=. .venv/bin/python benchmarks/archive_lets_build_gpt.py [--corpus tinyshakespeare | --data PATH]

脚本作为子进程运行（就是学习者会敲的那条命令），解析它的最后一行 `final: train_loss=… val_loss=…`
与 `timing:` 行（训练步的 ms/iter，不含评估），再量整条命令的墙钟时间。
数据：默认 --corpus tinyshakespeare（nanoGPT 的 input.txt；语料注册表 data_pipeline.corpora 第一次用时下载到
data/corpora/，离线时报错写明文件放到哪里），原样传给脚本的 --corpus；--data PATH 换成任意文本文件。
SMOKE=1 时只跑几步、不写 RESULTS.md、不联网；此时若 tiny-shakespeare 不在缓存里，就用内置语料代替。
"""

from __future__ import annotations

import argparse
import os
import re
import shlex
import subprocess
import sys
import time
from pathlib import Path

from _common import REPO_ROOT, corpus_file, machine_info, update_results

from utils.io import is_smoke

SCRIPT = REPO_ROOT / "archive" / "Let's_build_GPT" / "let's_build_gpt.py"
DEFAULT_CORPUS = "tinyshakespeare"
NANOGPT_VAL_LOSS = 1.886  # nanoGPT 在同一配方、同一台机器上的结果
NANOGPT_MS_PER_ITER = 100.0
TARGET_VAL_LOSS = 1.90
RECIPE = [
    "--n_layer", "4", "--n_head", "4", "--n_embd", "128", "--block_size", "64", "--batch_size", "12",
    "--max_iters", "2000", "--lr", "1e-3", "--min_lr", "1e-4", "--warmup_iters", "100",
    "--beta1", "0.9", "--beta2", "0.99", "--weight_decay", "0.1", "--grad_clip", "1.0", "--dropout", "0.0",
    "--eval_interval", "250", "--eval_iters", "20", "--seed", "1337", "--device", "cpu",
]  # fmt: skip
# SMOKE：只验证"跑得通、能解析"，模型也缩小（argparse 对重复的参数取最后一个）
SMOKE_OVERRIDES = [
    "--n_layer", "1", "--n_embd", "32", "--block_size", "16", "--max_iters", "5", "--eval_interval", "5",
    "--eval_iters", "1", "--sample_tokens", "10",
]  # fmt: skip
FINAL_LINE = re.compile(r"final: train_loss=([\d.]+) val_loss=([\d.]+)")
TIMING_LINE = re.compile(r"timing: train_s=([\d.]+) eval_s=([\d.]+) ms_per_iter=([\d.]+)")


def run_recipe(source: list[str], smoke: bool) -> tuple[list[str], dict]:
    """source：数据来源参数，["--corpus", 名字]、["--data", 路径] 或 []（脚本的默认语料）。"""
    cmd = [sys.executable, str(SCRIPT.relative_to(REPO_ROOT)), *RECIPE, *source]
    if smoke:
        cmd += SMOKE_OVERRIDES
    start = time.perf_counter()
    # 子进程的 SMOKE 关掉：规模完全由命令行决定，表里写的命令就是实际跑的命令
    env = {k: v for k, v in os.environ.items() if k != "SMOKE"}
    env["PYTHONPATH"] = str(REPO_ROOT)
    env.setdefault("TQDM_DISABLE", "1")
    proc = subprocess.run(cmd, cwd=REPO_ROOT, env=env, capture_output=True, text=True)
    wall_s = time.perf_counter() - start
    if proc.returncode != 0:
        sys.exit(f"训练脚本失败（退出码 {proc.returncode}）：\n{proc.stderr[-3000:]}")
    lines = proc.stdout.rstrip("\n").splitlines()
    final = FINAL_LINE.fullmatch(lines[-1]) if lines else None
    timing = TIMING_LINE.search(proc.stdout)
    if final is None or timing is None:
        sys.exit(f"无法解析训练脚本的输出（最后一行应为 final: …）：\n{proc.stdout[-2000:]}")
    result = {
        "train_loss": float(final.group(1)),
        "val_loss": float(final.group(2)),
        "ms_per_iter": float(timing.group(3)),
        "wall_s": wall_s,
    }
    return cmd, result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--corpus", default=DEFAULT_CORPUS,
                        help="data_pipeline.corpora 里的语料名，原样传给脚本的 --corpus；默认 %(default)s（nanoGPT 的 "
                             "input.txt，1,115,394 个字符，第一次用时下载到 data/corpora/）；SMOKE=1 时不下载，"
                             "缓存里没有就改用脚本默认的内置 shakespeare 语料")
    parser.add_argument("--data", type=Path, default=None,
                        help="直接给一个 UTF-8 文本文件的路径（给了就不用 --corpus）；默认 不用")
    args = parser.parse_args()
    smoke = is_smoke()
    # 先在这里取到文件（下载或报错写明放到哪），子进程里的脚本再按同一个语料名读缓存
    path = corpus_file(args.corpus, args.data, smoke)
    if path is None:
        print(f"[SMOKE] 语料 {args.corpus} 不在缓存里（SMOKE 不下载），试跑改用脚本默认的内置语料")
        source = []
    elif args.data is not None:
        source = ["--data", os.path.relpath(path, REPO_ROOT)]  # 子进程在仓库根目录运行
    else:
        source = ["--corpus", args.corpus]

    cmd, r = run_recipe(source, smoke)
    # 脚本路径里有撇号：用双引号括起来，和 README / Makefile 里的写法一致
    shown = f'python "{cmd[1]}" ' + " ".join(shlex.quote(c) for c in cmd[2:])
    ok = r["val_loss"] <= TARGET_VAL_LOSS
    rows = [
        ("val loss", f"{r['val_loss']:.4f}", f"{NANOGPT_VAL_LOSS:.3f}", f"{r['val_loss'] / NANOGPT_VAL_LOSS:.3f}"),
        ("train loss", f"{r['train_loss']:.4f}", "—", "—"),
        ("ms / iter（训练步）", f"{r['ms_per_iter']:.1f}", f"~{NANOGPT_MS_PER_ITER:.0f}", f"{r['ms_per_iter'] / NANOGPT_MS_PER_ITER:.2f}"),
        ("墙钟时间（含评估、启动）", f"{r['wall_s']:.0f} s", "—", "—"),
    ]
    table = ["| 指标 | 我们 | nanoGPT | 比值 |", "|---|---|---|---|"] + [f"| {' | '.join(row)} |" for row in rows]
    verdict = f"val loss {'≤' if ok else '>'} {TARGET_VAL_LOSS}：{'达标 ✓' if ok else '未达标 ✗'}"
    md = "\n".join(
        [
            "## archive · Let's build GPT：nanoGPT CPU 配方（tiny-shakespeare）",
            "",
            f"命令：`{shown}`",
            "",
            *table,
            "",
            f"{verdict}。nanoGPT 的数字是它在同一台机器上的结果；ms/iter 受同时运行的其他进程影响"
            f"（本次运行结束时 1 分钟平均负载 {os.getloadavg()[0]:.1f}，{os.cpu_count()} 核）。",
            "",
            f"机器：{machine_info()}",
        ]
    )
    print(md)
    update_results("archive_lets_build_gpt", md)


if __name__ == "__main__":
    main()
