"""量化的质量、内存与端到端解码速度：在本项目训练的小 Llama 上，fp32 vs int8 / int4 RTN / GPTQ / AWQ / NF4 / SmoothQuant。

模型从哪来：`make run` 的输出（checkpoints/shakespeare_cpu/）在就用它；不在就在这里训练一个同规模的 Llama——
字节级 BPE（data_pipeline.tokenization，词表 1024）→ train.bin / val.bin → training_sys.pretrain.train（4 层、128 维、
SwiGLU 隐层 384 = 3·128，让 int4 的组大小 128 整除每一层），训练有时间上限（--train-seconds），
结果缓存在 checkpoints/bench_quantization/，第二次运行直接复用。

每个方案测三件事（函数都来自 `python -m inference_engine.quantization`，同一套定义）：
- **bits/byte**：验证集开头 --eval-tokens 个 token 的不重叠窗口，总 NLL ÷ ln 2 ÷ UTF-8 字节数；
  校准（GPTQ / AWQ / SmoothQuant）用训练集开头的 token，与评估不重叠。目标：int8 在 fp32 的 +1% 以内，GPTQ、AWQ 都好于 int4 RTN；
- **模型字节**：state_dict 里每个张量一次（= model.safetensors 的数据部分）；
- **解码 tokens/s**：1 线程、batch 1、贪心 64 个 token，全部变体轮流测 3 轮取中位数（进程 CPU 时间）；激活 fp32 与 bf16 各一列
  （int8 / int4 的 CPU 内核只在 bf16 激活下走快路径；量化本身都从 fp32 权重做）。

论文里的参考数（Llama-2-7B、WikiText-2 困惑度、4 位 g128）并排放在表下：把困惑度换成与 bits/byte 同一种量——
loss（nats/token）的相对变化 ln(ppl_q)/ln(ppl_fp) − 1——才能与我们的 Δ 比较（bits/byte 与 loss 成正比）。

运行：PYTHONPATH=. .venv/bin/python benchmarks/quantization_quality.py   （SMOKE=1 几十秒试跑，不写 RESULTS.md）
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import os
import shutil
import tempfile
import time
from pathlib import Path

import torch
from _common import machine_info, update_results

from inference_engine.quantization.__main__ import (
    cast_unquantized,
    decode_speeds,
    evaluate_bpb,
    load_eval_data,
    load_model,
    scheme_options,
)
from inference_engine.quantization.apply import (
    CALIBRATED_SCHEMES,
    model_nbytes,
    quantize,
    quantized_modules,
    unsupported_layers,
)
from utils.io import atomic_path, checkpoints_dir, is_smoke
from utils.torch_playground import setup_seed

SMOKE = is_smoke()
SCHEMES = ("int8", "int4", "gptq", "awq", "nf4", "smoothquant")
LABELS = {"int8": "int8 weight-only", "int4": "int4 RTN g128", "gptq": "GPTQ int4 g128", "awq": "AWQ int4 g128",
          "nf4": "NF4 (block 64)", "smoothquant": "SmoothQuant W8A8 (α = 0.5)"}
GROUP_SIZE = 128
MODEL = dict(n_layer=2 if SMOKE else 4, n_head=4, n_embd=128, intermediate_size=256 if SMOKE else 384, block_size=128)
VOCAB = 320 if SMOKE else 1024
CORPUS_BYTES = 200_000 if SMOKE else 2_000_000
MAX_ITERS = 10 if SMOKE else 600
# AWQ 论文（Lin et al., MLSys 2024, arXiv:2306.00978）表 4：Llama-2-7B、WikiText-2 困惑度、INT4 g128。
# GPTQ 自己的论文（2022）早于 Llama，没有这一列；表里的 GPTQ 是 AWQ 作者用 GPTQ 复现的数
PAPER_PPL = {"fp16": 5.47, "int4": 5.73, "gptq": 5.69, "awq": 5.60}


# ---------------------------------------------------------------------------------------------------
# 1. 模型：make run 的目录，或在这里训练一个（缓存）
# ---------------------------------------------------------------------------------------------------


def train_recipe() -> dict:
    """决定"训练的是什么"的全部设置：缓存的模型只有在它们都相同时才复用。"""
    return {"max_iters": MAX_ITERS, "corpus_bytes": CORPUS_BYTES, "vocab": VOCAB, **MODEL}


def train_model(run_dir: Path, train_seconds: float) -> dict:
    """语料切片 → BPE → train/val.bin → pretrain（有时间上限）→ run_dir 里放成 make run 的布局。返回训练记录。"""
    from data_pipeline.corpora import corpus_path
    from data_pipeline.tokenization.__main__ import encode_corpus, train_tokenizer
    from training_sys.pretrain import TrainConfig, train

    run_dir.mkdir(parents=True, exist_ok=True)
    text = corpus_path("shakespeare").read_text(encoding="utf-8")
    cut = text.rfind("\n", 0, CORPUS_BYTES) + 1  # 在换行处截断（按字符数近似字节数：语料是 ASCII）
    corpus = run_dir / "corpus.txt"
    corpus.write_text(text[:cut], encoding="utf-8")
    tok_dir = train_tokenizer(corpus, run_dir / "tokenizer", VOCAB, ["<|endoftext|>"], processes=1, progress=False)
    encode_corpus(tok_dir, corpus, run_dir / "data", 0.1, progress=False)
    cfg = TrainConfig(shards=str(run_dir / "data"), out_dir=str(run_dir / "train"), overwrite=True, **MODEL,
                      batch_size=16, max_iters=MAX_ITERS, lr=3e-3, min_lr=3e-4, warmup_iters=5 if SMOKE else 50,
                      eval_interval=MAX_ITERS, eval_iters=2 if SMOKE else 10, sample_tokens=0,
                      checkpoint_interval=MAX_ITERS, progress=False, device="cpu")
    t0 = time.perf_counter()
    # 时间到了就像 Ctrl-C 一样保存并停下：共享的 2 核机器上每步的耗时差几倍，按步数定会让基准的总时长失控
    result = train(cfg, on_step=lambda step, record: time.perf_counter() - t0 > train_seconds)
    for name in ("model.safetensors", "config.json"):
        with atomic_path(run_dir / name) as tmp:
            shutil.copyfile(result.checkpoint_dir / name, tmp)
    with atomic_path(run_dir / "tokenizer.json") as tmp:
        shutil.copyfile(tok_dir / "tokenizer.json", tmp)
    info = {**train_recipe(), "steps": result.step, "train_seconds": round(result.wall_s, 1),
            "train_loss": result.train_loss}
    (run_dir / "bench_train.json").write_text(json.dumps(info, indent=2))
    return info


def find_or_train(model_arg: Path | None, train_seconds: float, tmp: Path) -> tuple[Path, str]:
    if model_arg is not None:
        return model_arg, f"`{model_arg}`（--model）"
    make_run = checkpoints_dir() / "shakespeare_cpu"
    if not SMOKE and (make_run / "config.json").is_file() and (make_run / "data" / "val.bin").is_file():
        return make_run, "`make run` 的模型（checkpoints/shakespeare_cpu）"
    run_dir = tmp / "bench_quantization" if SMOKE else checkpoints_dir() / "bench_quantization"
    stamp = run_dir / "bench_train.json"
    info = json.loads(stamp.read_text()) if stamp.is_file() else {}
    if (run_dir / "model.safetensors").is_file() and all(info.get(k) == v for k, v in train_recipe().items()):
        how = "缓存的"
    else:
        info = train_model(run_dir, train_seconds)
        how = "本次"
    return run_dir, (f"{how}训练的 Llama（{info['n_layer']} 层、{info['n_embd']} 维、SwiGLU {info['intermediate_size']}、"
                     f"BPE 词表 {info['vocab']}，莎士比亚前 {info['corpus_bytes'] / 1e6:.1f} MB，{info['steps']}/{info['max_iters']} 步、"
                     f"{info['train_seconds']:.0f} s，最后的训练 loss {info['train_loss']:.3f}）")


# ---------------------------------------------------------------------------------------------------
# 2. 测量
# ---------------------------------------------------------------------------------------------------


def measure_all(model_dir: Path, n_calib: int, n_eval: int, decode_tokens: int) -> tuple[list[dict], list[dict], dict]:
    """主表（每个方案：字节、bits/byte、两种激活 dtype 的解码速度）与 3 位表（RTN / GPTQ / AWQ，只量 bits/byte）。"""
    fp = load_model(model_dir)
    block = min(fp.config.max_position_embeddings, 256)
    data = load_eval_data(model_dir, None, n_calib, n_eval, block)
    prompt = data.held_out[:8].view(1, -1)

    def bpb(model) -> float:
        return evaluate_bpb(model, data.held_out, block, data.count_bytes)["bits_per_byte"]

    def quantized(scheme: str, **options):
        kept = unsupported_layers(fp, scheme, **options)
        t0 = time.perf_counter()
        model = quantize(copy.deepcopy(fp), scheme, data.calib if scheme in CALIBRATED_SCHEMES else None,
                         exclude=("lm_head", *kept), **options)
        return model, kept, time.perf_counter() - t0

    rows, variants = [], []
    for scheme in ("fp32", *SCHEMES):
        model, kept, seconds = (fp, {}, 0.0) if scheme == "fp32" else quantized(scheme, **scheme_options(scheme, GROUP_SIZE))
        n_q = len(quantized_modules(model))
        rows.append({"scheme": scheme, "bytes": model_nbytes(model), "bpb": bpb(model), "kept": kept, "seconds": seconds,
                     "layers": "—" if scheme == "fp32" else f"{n_q}/{n_q + len(kept)}"})
        variants += [model, cast_unquantized(copy.deepcopy(model), torch.bfloat16)]
        print(f"{scheme:<12} bits/byte {rows[-1]['bpb']:.4f}  {rows[-1]['bytes'] / 2**20:.3f} MiB  量化 {seconds:.1f} s")
    # 14 个变体（7 个方案 × fp32 / bf16 激活）轮流测：每个经历同样的机器负载，比值才可信
    speeds = decode_speeds(variants, prompt, decode_tokens)
    for i, r in enumerate(rows):
        r["tps_fp32"], r["tps_bf16"] = speeds[2 * i], speeds[2 * i + 1]
        print(f"{r['scheme']:<12} decode {r['tps_fp32']:.0f} tok/s (fp32) / {r['tps_bf16']:.0f} tok/s (bf16)")
    # 3 位：压力更大，方法之间的差别更明显。RTN = AWQ 的 α = 0、不截断（awq 测试里逐位等于 RTN），同一个网格与存储
    rows3 = []
    for name, scheme, options in (("RTN int3 g128", "awq", {"alpha": 0.0, "clip": False}), ("GPTQ int3 g128", "gptq", {}),
                                  ("AWQ int3 g128", "awq", {})):
        model, kept, seconds = quantized(scheme, bits=3, group_size=GROUP_SIZE, **options)
        rows3.append({"scheme": name, "bpb": bpb(model), "kept": kept, "seconds": seconds})
        print(f"{name:<16} bits/byte {rows3[-1]['bpb']:.4f}")
    meta = {"calib": tuple(data.calib.shape), "eval_tokens": len(data.held_out) - 1, "source": data.source,
            "params": sum(p.numel() for p in fp.parameters()),
            "matrix_mib": sum(m.weight.numel() * 4 for n, m in fp.named_modules() if isinstance(m, torch.nn.Linear)) / 2**20}
    return rows, rows3, meta


def paper_delta(scheme: str) -> float:
    """论文困惑度换算成 loss 的相对变化：ln(ppl_q) / ln(ppl_fp) − 1。"""
    return math.log(PAPER_PPL[scheme]) / math.log(PAPER_PPL["fp16"]) - 1


def report(rows: list[dict], rows3: list[dict], meta: dict, model_line: str) -> str:
    fp = rows[0]
    by = {r["scheme"]: r for r in rows}

    def delta(r: dict) -> float:
        return r["bpb"] / fp["bpb"] - 1

    goals = [
        ("int8 在 fp32 的 +1% 以内", delta(by["int8"]) <= 0.01),
        ("GPTQ 好于 int4 RTN", by["gptq"]["bpb"] < by["int4"]["bpb"]),
        ("AWQ 好于 int4 RTN", by["awq"]["bpb"] < by["int4"]["bpb"]),
    ]
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    lines = [
        "### 量化的质量、内存与解码速度（`benchmarks/quantization_quality.py`）",
        "",
        f"机器：{machine_info()} · 1 分钟负载 {load:.1f}",
        "",
        f"模型：{model_line}，{meta['params'] / 1e6:.2f}M 参数；默认量化解码层的全部线性层，嵌入与 lm_head 保持 fp32。"
        f"评估：{meta['source']}；校准 {meta['calib'][0]}×{meta['calib'][1]} 个 token。"
        "解码：1 线程、batch 1、8 token 提示后贪心生成，14 个变体轮流测 3 轮、取进程 CPU 时间的中位数；量化都从 fp32 权重做，bf16 列把其余部分与激活转成 bf16。",
        "",
        "| 方案 | 量化层 | 模型 MiB | vs fp32 | bits/byte | Δ vs fp32 | 论文：Llama-2-7B 困惑度（Δ loss） | "
        "decode tok/s fp32 激活 | decode tok/s bf16 激活 | 量化耗时 s |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        key = "fp16" if r["scheme"] == "fp32" else r["scheme"]
        paper = f"{PAPER_PPL[key]:.2f}（{paper_delta(key) * 100:+.2f}%）" if key in PAPER_PPL else "—"
        lines.append(f"| {LABELS.get(r['scheme'], 'fp32')} | {r['layers']} | {r['bytes'] / 2**20:.3f} | "
                     f"{r['bytes'] / fp['bytes']:.3f}× | {r['bpb']:.4f} | {delta(r) * 100:+.3f}% | {paper} | "
                     f"{r['tps_fp32']:.0f} ({r['tps_fp32'] / fp['tps_fp32']:.2f}×) | "
                     f"{r['tps_bf16']:.0f} ({r['tps_bf16'] / fp['tps_bf16']:.2f}×) | {r['seconds']:.1f} |")
    lines += [""] + [f"{'✅' if ok else '❌'} {text}" for text, ok in goals]
    for r in rows + rows3:
        if r["kept"]:
            lines.append(f"\n{r['scheme']}：{len(r['kept'])} 层留在浮点（{next(iter(r['kept'].values()))}）")
    lines += ["", "3 位、组 128（同一个模型、同样的校准与评估；RTN 即 AWQ 的 α = 0 且不截断，与 RTN 逐位相同）：", "",
              "| 方案 | bits/byte | Δ vs fp32 | 量化耗时 s |", "|---|---|---|---|"]
    lines += [f"| {r['scheme']} | {r['bpb']:.4f} | {delta(r) * 100:+.3f}% | {r['seconds']:.1f} |" for r in rows3]
    ours = "、".join(f"{n} {delta(by[k]) * 100:+.3f}%" for n, k in (("RTN", "int4"), ("GPTQ", "gptq"), ("AWQ", "awq")))
    paper = "、".join(f"{n} {paper_delta(k) * 100:+.2f}%" for n, k in (("RTN", "int4"), ("GPTQ", "gptq"), ("AWQ", "awq")))
    lines += [
        "",
        "论文列：AWQ 论文（Lin et al., MLSys 2024, arXiv:2306.00978）表 4，Llama-2-7B 在 WikiText-2 上的困惑度，INT4 g128："
        "fp16 5.47、RTN 5.73、GPTQ 5.69（GPTQ 的论文早于 Llama，这是 AWQ 作者的复现）、AWQ 5.60。括号里换算成 loss（nats/token）"
        "的相对变化 ln(ppl)/ln(5.47) − 1——bits/byte 与 loss 成正比，所以和 Δ 是同一种量。",
        f"4 位的 Δ：我们 {ours}；论文 {paper}。Δ 的大小取决于模型（规模、训练得多充分、权重里有没有离群值），"
        "不同模型之间只有排序可比。",
        f"解码速度：这个模型的线性层权重一共 {meta['matrix_mib']:.1f} MiB（fp32），放得进缓存，每个 token 的时间主要是 Python "
        "与逐算子调度的固定开销，不是读权重的带宽；量化层每次前向多做的反量化 / 激活量化是额外的开销。"
        "读权重的带宽成为瓶颈（权重远大于缓存）时 int8 / int4 内核的加速见 quantization_matmul 段。",
    ]
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description="量化方案在本项目训练的 Llama 上的 bits/byte、模型字节与解码速度")
    p.add_argument("--model", type=Path, default=None,
                   help="用这个 HF 模型目录（需要 data/val.bin、meta.json 与 tokenizer.json，即 make run 的布局）；"
                        "默认 checkpoints/shakespeare_cpu，没有就训练一个（缓存在 checkpoints/bench_quantization）")
    p.add_argument("--train-seconds", type=float, default=20 if SMOKE else 200,
                   help="训练的墙钟上限（秒，默认 200；到时保存并停止，空闲机器上 600 步用不完它）")
    p.add_argument("--calib", type=int, default=512 if SMOKE else 4096, help="校准 token 数（默认 4096）")
    p.add_argument("--eval-tokens", type=int, default=2048 if SMOKE else 65536, help="评估的验证集 token 数（默认 65536）")
    p.add_argument("--decode-tokens", type=int, default=8 if SMOKE else 64, help="测速时贪心生成的 token 数（默认 64）")
    return p


def main() -> None:
    args = build_parser().parse_args()
    setup_seed(0)
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        model_dir, model_line = find_or_train(args.model, args.train_seconds, Path(tmp))
        print(f"模型：{model_line}")
        rows, rows3, meta = measure_all(model_dir, args.calib, args.eval_tokens, args.decode_tokens)
    md = report(rows, rows3, meta, model_line)
    print(md)
    print(f"\n全程 {time.perf_counter() - t0:.0f} s")
    update_results("quantization_quality", md)


if __name__ == "__main__":
    main()
