"""端到端的一次运行（`make run`）：语料 → 清洗 → BPE 分词器 → 预训练一个小 Llama → 评估 → 样例 → HF 模型目录 → 中文报告。

    python -m training_sys.speedrun                       # CPU 预设：2 核 CPU 上 10 分钟以内跑完全程
    python -m training_sys.speedrun --preset gpu          # 更大的模型、更长的训练（没有 CUDA GPU 时直接报错）
    python -m training_sys.speedrun --corpus tinystories  # 换语料；--data PATH 指定本地文本文件
    python -m training_sys.speedrun --fresh               # 忽略已完成的阶段，全部重来
    SMOKE=1 python -m training_sys.speedrun               # 每个阶段都跑、但都缩到最小：几十秒

产物全部在 checkpoints/<run>/（run 默认是 "<语料>_<预设>"，例如 shakespeare_cpu）：

    config.json  model.safetensors          Hugging Face 模型目录：AutoModelForCausalLM.from_pretrained 直接加载
    tokenizer.json  tokenizer_config.json   AutoTokenizer.from_pretrained 直接加载，编码与我们的 Tokenizer 逐 id 相同
    report.md  loss.png                     中文报告：配置、硬件、各阶段耗时、吞吐、曲线、评估、样例、下一步
    eval.json  samples.json                 评估与样例的原始数据
    cleaning/                               清洗：cleaned.jsonl、stats.json/.md/.png（每个步骤删了 / 改了什么）
    tokenizer/  data/  train/               中间产物：分词器、清洗后的文本与 train.bin/val.bin、训练 checkpoint
    stages/<阶段>.json                      每个阶段的"指纹"：输入的哈希、产物的 SHA-256、耗时、结果

断点续跑是怎么做到的（通用部分在 training_sys/pipeline.py）：每个阶段的输入（上游阶段的指纹 + 本阶段的配置）
算一个哈希。一个阶段"已完成" = stages/<阶段>.json 存在、记下的输入哈希与这次相同、记下的每个产物都在且 SHA-256
对得上。指纹文件在所有产物原子写完之后最后写（也是原子的），所以进程在任何时刻被杀、磁盘在任何时刻写满，
都不会有"写了一半却被当成完成"的阶段：下次运行从第一个未完成的阶段接着做。训练阶段更进一步：
被中断的训练从它最后一个 checkpoint 续训（training_sys.pretrain 的逐位续训），而不是从头再来。
任何上游变化（换语料、改词表大小、改模型）都会改变下游的输入哈希，下游自动重做。

本文件从上往下读：预设与选项 → 各阶段（按执行顺序）→ run_pipeline → 命令行。评估的数学在
training_sys/evaluation.py（与预训练循环共用），报告的 markdown 模板在 training_sys/speedrun_report.py。
"""

from __future__ import annotations

import argparse
import errno
import json
import math
import os
import platform
import shutil
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from training_sys.checkpoint import latest_checkpoint, sha256_file
from training_sys.pipeline import Pipeline, StageInterrupted, digest
from training_sys.pretrain import TrainConfig, read_metrics
from training_sys.speedrun_report import expected_range, render_report
from utils.io import atomic_path, atomic_write, checkpoints_dir, is_smoke
from utils.lesson_cli import lesson_args

SPECIAL_TOKENS = ["<|endoftext|>"]
PATTERN = "gpt2"
VAL_FRACTION = 0.1
# 固定的提示词：每次运行、每个预设都从同样的开头续写，样例之间才能比较
PROMPTS = ("ROMEO:\n", "First Citizen:\nBefore we proceed any further,", "To be, or not to be", "KING HENRY V:\n")
STAGES = ("corpus", "clean", "tokenizer", "shards", "train", "export", "eval", "samples", "report")


# ---------------------------------------------------------------------------
# 1. 预设与选项
# ---------------------------------------------------------------------------
@dataclass(frozen=True)
class Preset:
    description: str
    train: dict[str, Any]  # TrainConfig 的字段（覆盖默认值）
    max_corpus_bytes: int | None = None  # 只用语料的前这么多字节（在换行处截断）；None = 全部
    eval_tokens: int = 200_000  # 完整评估最多用验证集的多少个 token
    sample_tokens: int = 64  # 每个提示词续写的 token 数（受 block_size 限制）
    needs_gpu: bool = False


PRESETS: dict[str, Preset] = {
    # 在空闲的 2 核 CPU 上量出来的：4 层 128 维、词表 2048 时每步 2048 个 token，约 15k token/s（≈ 0.14 s/步）。
    # 1500 步 ≈ 307 万 token ≈ 莎士比亚训练集（156 万 token）的 2 遍，空闲机器上全程约 4 分钟，离 10 分钟的上限留出一倍多的余量
    # （机器被别的进程占满时每步会慢 2–4 倍：benchmarks/RESULTS.md 记的一次是负载 1–2 时 9.7k token/s、全程 342 s，
    # 与 7 个任务共用时 2.6k token/s、全程 20 分钟）。val loss 的实测范围见 speedrun_report.MEASURED_RANGES。
    "cpu": Preset(
        "CPU：4 层、128 维、block 128 的 Llama（约 1.3M 参数），1500 步，2 核 CPU 上全程 10 分钟以内",
        dict(n_layer=4, n_head=4, n_embd=128, block_size=128, batch_size=16, max_iters=1500, lr=3e-3, min_lr=3e-4,
             warmup_iters=100, eval_interval=250, eval_iters=10, checkpoint_interval=250, device="cpu"),
        eval_tokens=100_000, sample_tokens=64),
    # nanoGPT shakespeare-char 的 GPU 规模（6 层、384 维、block 256、batch 64），bf16；约 1600 万 token
    # ≈ 莎士比亚训练集 10 遍——没有 dropout 时再长就开始过拟合，要更长的训练请换更大的语料（--corpus tinystories）
    "gpu": Preset(
        "GPU：6 层、384 维、block 256 的 Llama（约 12M 参数），bf16，1000 步",
        dict(n_layer=6, n_head=6, n_embd=384, block_size=256, batch_size=64, max_iters=1000, lr=1e-3, min_lr=1e-4,
             warmup_iters=100, eval_interval=200, eval_iters=50, checkpoint_interval=250, dtype="bfloat16",
             device="cuda"),
        eval_tokens=500_000, sample_tokens=200, needs_gpu=True),
    # SMOKE=1：每个阶段都真的执行一遍，但都缩到几秒
    "smoke": Preset(
        "SMOKE：语料前 200 KB、2 层 32 维的 Llama，20 步",
        dict(n_layer=2, n_head=2, n_embd=32, block_size=64, batch_size=8, max_iters=20, lr=3e-3, min_lr=3e-4,
             warmup_iters=5, eval_interval=10, eval_iters=2, checkpoint_interval=10, device="cpu", threads=1),
        max_corpus_bytes=200_000, eval_tokens=4_000, sample_tokens=12),
}


def auto_vocab_size(n_bytes: int) -> int:
    """按语料大小定词表：约每 2000 字节文本一个词表项，取最近的 2 的幂，限制在 [512, 32768]。

    为什么不是越大越好：词表项 = 嵌入与 lm_head 的一行。1M 参数量级的小模型在 CPU 上（cpu 预设：4 层 128 维，
    主干的矩阵 79 万个权重），V=4096 时 lm_head 的矩阵乘已是主干的 2/3（52 万个权重），V=8192 就超过整个主干；
    而语料小时罕见的合并只出现几次、学不好。
    莎士比亚 4.8 MB → 2048（约 2.8 字节/token）；TinyStories 19 MB → 8192；SMOKE 的 200 KB → 512。
    """
    return int(min(32768, max(512, 2 ** round(math.log2(max(n_bytes, 1) / 2000)))))


@dataclass
class Options:
    """一次运行的选项，与命令行参数一一对应（见 build_parser）；测试与基准直接构造它。"""

    preset: str = "cpu"
    corpus: str = "shakespeare"
    data: str | None = None
    run: str | None = None
    vocab_size: int | None = None
    max_iters: int | None = None
    threads: int | None = None
    fresh: bool = False
    progress: bool = True

    @property
    def run_name(self) -> str:
        """默认 <语料>_<预设>；给了 --data 时用文件名代替语料名，免得本地文件的结果覆盖注册语料的结果。"""
        return self.run or f"{Path(self.data).stem if self.data else self.corpus}_{self.preset}"

    @property
    def corpus_label(self) -> str:
        return f"本地文件 {Path(self.data).name}" if self.data else self.corpus


# ---------------------------------------------------------------------------
# 2. 各阶段（按执行顺序；每个阶段的输入 = 上游的 fingerprint + 本阶段的配置，见 training_sys.pipeline）
# ---------------------------------------------------------------------------
def hardware_line(device: str) -> str:
    """训练所用硬件的一行描述（CPU 预设在有 GPU 的机器上也只写 CPU）。"""
    if device.startswith("cuda"):
        return f"GPU {torch.cuda.get_device_name(0)} · torch {torch.__version__} · CUDA {torch.version.cuda}"
    cpu = platform.processor() or platform.machine()
    try:
        cpu = next(line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                   if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return (f"CPU {cpu} · {os.cpu_count()} 核 · torch {torch.get_num_threads()} 线程 · "
            f"Python {platform.python_version()} · torch {torch.__version__}")


def stage_corpus(pipe: Pipeline, opts: Options, preset: Preset) -> dict[str, Any]:
    from data_pipeline.corpora import corpus_path

    source = corpus_path(opts.corpus, opts.data)
    inputs = {"corpus": opts.corpus, "source_sha256": sha256_file(source), "max_bytes": preset.max_corpus_bytes}

    def run() -> tuple[list[Path], dict[str, Any]]:
        path = source
        if preset.max_corpus_bytes is not None and source.stat().st_size > preset.max_corpus_bytes:
            raw = source.read_bytes()[: preset.max_corpus_bytes]
            raw = raw[: raw.rfind(b"\n") + 1] or raw  # 在换行处截断：不切断一行，也不切断一个多字节字符
            path = atomic_write(pipe.run_dir / "data" / "corpus.txt", raw.decode("utf-8", errors="ignore"))
        text_bytes = path.stat().st_size
        return [path], {"path": str(path), "source": str(source), "bytes": text_bytes}

    return pipe.stage("corpus", inputs, run)


# 清洗步骤（data_pipeline.cleaning）。莎士比亚的一段台词多数不足 50 个词、很多行不以句号结尾：面向网页的
# Gopher / C4 / FineWeb 质量规则会删掉大半台词，所以 make run 只用不改变文体的步骤；网页语料换成全套规则
# （python -m data_pipeline.cleaning 的默认步骤）。空文档总是先被删掉。
CLEAN_STEPS: tuple[str, ...] = ("normalize", "pii", "exact_dedup", "near_dedup")
CLEAN_PARALLEL_BYTES = 1_000_000  # 语料超过它才起 2 个进程：更小的语料（SMOKE 的 200 KB）起进程池比算还慢


def stage_clean(pipe: Pipeline, opts: Options, corpus: dict[str, Any]) -> dict[str, Any]:
    """纯文本按空行切成文档（一段台词一篇）→ 清洗 → 按空行拼回纯文本 data/cleaned.txt，分词器与编码读它。"""
    from data_pipeline.cleaning.pipeline import CleanConfig, build_steps, clean, jsonl_to_text, stats_markdown

    inputs = {"corpus": corpus["fingerprint"], "steps": CLEAN_STEPS}
    out = pipe.run_dir / "cleaning"

    def run() -> tuple[list[Path], dict[str, Any]]:
        # resume=True：本阶段被杀之后重跑，已完成的块直接复用（块的配置摘要含输入文件的大小与修改时间）
        # 进程数不进指纹：输出与进程数无关（tests/data_pipeline/cleaning/test_pipeline.py 核对 1 与 2 个进程逐字节相同）
        workers = 2 if corpus["result"]["bytes"] > CLEAN_PARALLEL_BYTES and (os.cpu_count() or 1) > 1 else 1
        stats = clean([corpus["result"]["path"]], out, CleanConfig(steps=build_steps(CLEAN_STEPS), workers=workers,
                                                                  resume=True, progress=opts.progress))
        path = jsonl_to_text(out / "cleaned.jsonl", pipe.run_dir / "data" / "cleaned.txt")
        # 产物只列确定性的文件（stats.json 里有耗时）：重做得到逐字节相同的文本时，下游照样跳过
        return [path, out / "cleaned.jsonl", out / "stats.md"], {
            "path": str(path), "bytes": path.stat().st_size, "docs_in": stats["read"]["docs"],
            "docs_out": stats["output"]["docs"], "bytes_in": stats["read"]["bytes"],
            "bytes_out": stats["output"]["bytes"], "steps": [s["name"] for s in stats["steps"]],
            "table": stats_markdown(stats)}

    return pipe.stage("clean", inputs, run)


def stage_tokenizer(pipe: Pipeline, opts: Options, corpus: dict[str, Any]) -> dict[str, Any]:
    from data_pipeline.tokenization import Tokenizer
    from data_pipeline.tokenization.__main__ import train_tokenizer

    vocab_size = opts.vocab_size or auto_vocab_size(corpus["result"]["bytes"])
    inputs = {"corpus": corpus["fingerprint"], "vocab_size": vocab_size, "special_tokens": SPECIAL_TOKENS,
              "pattern": PATTERN}

    def run() -> tuple[list[Path], dict[str, Any]]:
        out = train_tokenizer(corpus["result"]["path"], pipe.run_dir / "tokenizer", vocab_size, SPECIAL_TOKENS,
                              PATTERN, progress=False)
        tok = Tokenizer.load(out / "bpe.json")
        return [out / "bpe.json", out / "tokenizer.json"], {
            "vocab_size": tok.vocab_size, "merges": len(tok.merges), "dir": str(out)}

    return pipe.stage("tokenizer", inputs, run)


def stage_shards(pipe: Pipeline, corpus: dict[str, Any], tokenizer: dict[str, Any]) -> dict[str, Any]:
    from data_pipeline.tokenization.__main__ import encode_corpus

    inputs = {"corpus": corpus["fingerprint"], "tokenizer": tokenizer["fingerprint"], "val_fraction": VAL_FRACTION}
    out = pipe.run_dir / "data"

    def run() -> tuple[list[Path], dict[str, Any]]:
        meta = encode_corpus(pipe.run_dir.resolve() / "tokenizer", corpus["result"]["path"], out, VAL_FRACTION)
        return [out / "train.bin", out / "val.bin", out / "meta.json"], {
            k: meta[k] for k in ("train_tokens", "val_tokens", "dtype", "bytes", "split_byte")}

    return pipe.stage("shards", inputs, run)


def train_config(pipe: Pipeline, opts: Options, preset: Preset) -> TrainConfig:
    overrides = dict(preset.train)
    if opts.max_iters is not None:
        overrides["max_iters"] = opts.max_iters
        overrides["warmup_iters"] = min(overrides["warmup_iters"], opts.max_iters)
        overrides["eval_interval"] = min(overrides["eval_interval"], opts.max_iters)
    if opts.threads is not None:
        overrides["threads"] = opts.threads
    return TrainConfig(run=opts.run_name, out_dir=str(pipe.run_dir / "train"), shards=str(pipe.run_dir / "data"),
                       sample_tokens=0, progress=opts.progress, **overrides)


def stage_train(pipe: Pipeline, opts: Options, preset: Preset, shards: dict[str, Any],
                on_step: Callable[[int, dict[str, Any]], bool | None] | None = None) -> dict[str, Any]:
    from training_sys.pretrain import train

    cfg = train_config(pipe, opts, preset)
    # 只有"改变训练的是什么"的字段进入指纹：线程数、进度条、评估频率变了，已训练好的模型照样有效
    what = {k: v for k, v in cfg.to_dict().items() if k not in TrainConfig.RESUME_MAY_DIFFER and k != "shards"}
    inputs = {"shards": shards["fingerprint"], "config": what}
    train_dir = Path(cfg.out_dir)
    marker = train_dir / "speedrun_inputs.json"  # 这个目录里的 checkpoint 是为哪一组输入训练的

    def run() -> tuple[list[Path], dict[str, Any]]:
        resumable = (not opts.fresh and latest_checkpoint(train_dir) is not None and marker.is_file()
                     and json.loads(marker.read_text(encoding="utf-8")).get("digest") == digest(inputs))
        if resumable:
            cfg.resume = True
            print(f"[train] 从 {latest_checkpoint(train_dir)} 续训（上次被中断）")
        else:
            cfg.overwrite = True  # 输入变了（或 --fresh）：旧 checkpoint 作废
            atomic_write(marker, json.dumps({"digest": digest(inputs)}) + "\n")
        result = train(cfg, on_step=on_step)
        if result.interrupted:
            raise StageInterrupted(f"训练在第 {result.step}/{cfg.max_iters} 步被中断，checkpoint 已保存在 "
                                   f"{result.checkpoint_dir}；再运行同样的命令会从这里续训")
        ckpt = latest_checkpoint(train_dir)
        records = read_metrics(train_dir / "metrics.jsonl")
        steps = [r for r in records if r["kind"] == "train"]
        evals = [r for r in records if r["kind"] == "eval"]
        timed = steps[5:] if len(steps) > 10 else steps
        # 总 token / 总时间（不是每步吞吐的算术平均：慢的那几步应该按它们花掉的时间计权）
        tokens_per_s = sum(r["tokens_per_s"] * r["ms"] for r in timed) / sum(r["ms"] for r in timed)
        return [ckpt / "model.safetensors", ckpt / "config.json", train_dir / "metrics.jsonl",
                train_dir / "loss.png"], {
            "checkpoint": str(ckpt), "step": steps[-1]["step"], "tokens_seen": steps[-1]["tokens_seen"],
            "final_train_loss": evals[-1]["train_loss"], "final_val_loss": evals[-1]["val_loss"],
            "final_val_bpb": evals[-1]["val_bpb"], "tokens_per_s": tokens_per_s, "num_params": result.num_params,
            "resumed": resumable, "hardware": hardware_line(cfg.device), "config": cfg.to_dict(),
            "train_seconds": sum(r["ms"] for r in steps) / 1000}

    return pipe.stage("train", inputs, run)


def tokenizer_config(block_size: int) -> dict[str, Any]:
    """AutoTokenizer 需要的 tokenizer_config.json：类名 + 特殊 token。分词规则全在 tokenizer.json 里。"""
    eot = SPECIAL_TOKENS[0]
    return {"tokenizer_class": "PreTrainedTokenizerFast", "eos_token": eot, "bos_token": None, "pad_token": eot,
            "unk_token": None, "model_max_length": block_size, "clean_up_tokenization_spaces": False,
            "add_bos_token": False, "add_eos_token": False}


def stage_export(pipe: Pipeline, tokenizer: dict[str, Any], trained: dict[str, Any]) -> dict[str, Any]:
    inputs = {"tokenizer": tokenizer["fingerprint"], "train": trained["fingerprint"]}
    ckpt = Path(trained["result"]["checkpoint"])
    block_size = trained["result"]["config"]["block_size"]

    def run() -> tuple[list[Path], dict[str, Any]]:
        files = []
        for src, name in ((ckpt / "model.safetensors", "model.safetensors"), (ckpt / "config.json", "config.json"),
                          (pipe.run_dir / "tokenizer" / "tokenizer.json", "tokenizer.json"),
                          (Path(trained["result"]["checkpoint"]).parent / "loss.png", "loss.png")):
            with atomic_path(pipe.run_dir / name) as tmp:
                shutil.copyfile(src, tmp)
            files.append(pipe.run_dir / name)
        files.append(atomic_write(pipe.run_dir / "tokenizer_config.json",
                                  json.dumps(tokenizer_config(block_size), indent=2) + "\n"))
        return files, {"dir": str(pipe.run_dir)}

    return pipe.stage("export", inputs, run)


def stage_eval(pipe: Pipeline, preset: Preset, shards: dict[str, Any], export: dict[str, Any]) -> dict[str, Any]:
    inputs = {"export": export["fingerprint"], "shards": shards["fingerprint"], "max_tokens": preset.eval_tokens}

    def run() -> tuple[list[Path], dict[str, Any]]:
        from data_pipeline.tokenization import Tokenizer
        from model_lab import Llama
        from training_sys.data import load_token_shards
        from training_sys.evaluation import evaluate

        # 从导出的 HF 目录加载（而不是训练里的内存对象）：评估的就是交付出去的那份权重
        device = "cuda" if preset.needs_gpu else "cpu"
        model = Llama.from_pretrained(pipe.run_dir, device=device)
        data = load_token_shards(pipe.run_dir / "data")
        tok = Tokenizer.load(pipe.run_dir / "tokenizer" / "bpe.json")
        result = evaluate(model, data.val, data.train, model.config.vocab_size, model.config.max_position_embeddings,
                          preset.eval_tokens, tok.decode_bytes)
        path = atomic_write(pipe.run_dir / "eval.json", json.dumps(result, indent=2) + "\n")
        print(f"[eval] val loss {result['model_loss']:.4f} nats/token = {result['model_bpb']:.4f} bits/byte | "
              f"unigram 基线 {result['unigram_loss']:.4f} = {result['unigram_bpb']:.4f} bits/byte | "
              f"均匀分布 ln V = {result['uniform_loss']:.4f}")
        return [path], result

    return pipe.stage("eval", inputs, run)


def stage_samples(pipe: Pipeline, preset: Preset, export: dict[str, Any]) -> dict[str, Any]:
    """固定提示词的续写（我们的 generate + KV cache），并核对 transformers 加载同一目录后逐 token 相同。"""
    inputs = {"export": export["fingerprint"], "prompts": PROMPTS, "max_new_tokens": preset.sample_tokens}

    def run() -> tuple[list[Path], dict[str, Any]]:
        from transformers import AutoModelForCausalLM, AutoTokenizer

        from data_pipeline.tokenization import Tokenizer
        from model_lab import Llama

        device = "cuda" if preset.needs_gpu else "cpu"
        ours = Llama.from_pretrained(pipe.run_dir, device=device)
        tok = Tokenizer.load(pipe.run_dir / "tokenizer" / "bpe.json")
        hf_tok = AutoTokenizer.from_pretrained(pipe.run_dir)
        hf = AutoModelForCausalLM.from_pretrained(pipe.run_dir).to(device).eval()
        block = ours.config.max_position_embeddings
        samples = []
        for k, prompt in enumerate(PROMPTS):
            ids = tok.encode(prompt)
            hf_ids = hf_tok(prompt)["input_ids"]
            if hf_ids != ids:
                raise RuntimeError(f"AutoTokenizer 对提示词 {prompt!r} 的编码 {hf_ids} 与我们的 Tokenizer {ids} 不同")
            new = max(0, min(preset.sample_tokens, block - len(ids)))
            x = torch.tensor([ids], device=device)
            greedy = ours.generate(x, new, temperature=0)[0, len(ids):].tolist()
            with torch.no_grad():
                hf_greedy = hf.generate(x, attention_mask=torch.ones_like(x), max_new_tokens=new, do_sample=False,
                                        pad_token_id=tok.special_ids[SPECIAL_TOKENS[0]])[0, len(ids):].tolist()
            if hf_greedy != greedy:
                first = next((i for i, (a, b) in enumerate(zip(greedy, hf_greedy)) if a != b), len(greedy))
                raise RuntimeError(f"transformers 的贪心生成与我们的在第 {first} 个新 token 处不同（提示词 {prompt!r}）："
                                   f"ours {greedy[first:first + 5]} vs HF {hf_greedy[first:first + 5]}")
            gen = torch.Generator(device=device).manual_seed(1234 + k)
            sampled = ours.generate(x, new, temperature=0.8, top_k=50, generator=gen)[0, len(ids):].tolist()
            samples.append({"prompt": prompt, "greedy": tok.decode(greedy), "sampled": tok.decode(sampled),
                            "greedy_ids": greedy, "new_tokens": new})
        path = atomic_write(pipe.run_dir / "samples.json", json.dumps(samples, indent=2, ensure_ascii=False) + "\n")
        return [path], {"samples": samples, "hf_tokenizer_equal": True, "hf_greedy_equal": True}

    return pipe.stage("samples", inputs, run)


def stage_report(pipe: Pipeline, opts: Options, preset: Preset) -> dict[str, Any]:
    inputs = {k: pipe.records[k]["fingerprint"] for k in STAGES[:-1]}

    def run() -> tuple[list[Path], dict[str, Any]]:
        report = render_report(opts.run_name, opts.corpus_label, opts.preset, preset.description, pipe.records)
        path = atomic_write(pipe.run_dir / "report.md", report)
        return [path], {"path": str(path)}

    return pipe.stage("report", inputs, run)


# ---------------------------------------------------------------------------
# 3. 整条流水线
# ---------------------------------------------------------------------------
def check_options(opts: Options) -> Preset:
    from data_pipeline.corpora import CORPORA

    if opts.preset not in PRESETS:
        raise ValueError(f"未知预设 --preset {opts.preset!r}；可选：{', '.join(PRESETS)}")
    if opts.corpus not in CORPORA:
        raise ValueError(f"未知语料 --corpus {opts.corpus!r}；已注册的语料：{', '.join(sorted(CORPORA))}"
                         "（任意本地 UTF-8 文本文件：不给 --corpus，直接 --data PATH）")
    preset = PRESETS[opts.preset]
    if preset.needs_gpu and not torch.cuda.is_available():
        raise ValueError(f"--preset {opts.preset} 需要 CUDA GPU，但这台机器上 torch.cuda.is_available() 为 False"
                         f"（torch {torch.__version__}，CUDA 构建：{torch.version.cuda or '无'}）。"
                         "在有 NVIDIA GPU 的机器上运行，或改用 --preset cpu")
    if opts.vocab_size is not None and opts.vocab_size < 256 + len(SPECIAL_TOKENS):
        raise ValueError(f"--vocab-size {opts.vocab_size} 太小：字节级 BPE 至少需要 256 个单字节 + "
                         f"{len(SPECIAL_TOKENS)} 个特殊 token")
    if opts.max_iters is not None and opts.max_iters < 1:
        raise ValueError(f"--max-iters {opts.max_iters} 必须是正整数")
    return preset


def run_pipeline(opts: Options, on_step: Callable[[int, dict[str, Any]], bool | None] | None = None
                 ) -> dict[str, dict[str, Any]]:
    """依次执行（或跳过）全部阶段，返回 {阶段名: 指纹记录}。on_step 透传给训练循环（测试用它模拟中断）。"""
    preset = check_options(opts)
    run_dir = checkpoints_dir() / opts.run_name
    run_dir.mkdir(parents=True, exist_ok=True)
    pipe = Pipeline(run_dir, fresh=opts.fresh)
    print(f"[speedrun] 预设 {opts.preset}（{preset.description}）| 语料 {opts.corpus_label} | 输出 {run_dir}")
    corpus = stage_corpus(pipe, opts, preset)
    cleaned = stage_clean(pipe, opts, corpus)
    tokenizer = stage_tokenizer(pipe, opts, cleaned)
    shards = stage_shards(pipe, cleaned, tokenizer)
    trained = stage_train(pipe, opts, preset, shards, on_step)
    export = stage_export(pipe, tokenizer, trained)
    stage_eval(pipe, preset, shards, export)
    stage_samples(pipe, preset, export)
    stage_report(pipe, opts, preset)
    return pipe.records


# ---------------------------------------------------------------------------
# 4. 命令行
# ---------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    from data_pipeline.corpora import CORPORA

    presets = "；".join(f"{name} = {p.description}" for name, p in PRESETS.items())
    parser = argparse.ArgumentParser(prog="python -m training_sys.speedrun", description=__doc__.split("\n")[0],
                                     add_help=False)
    parser.add_argument("-h", "--help", action="help", help="显示这段帮助并退出")
    parser.add_argument("--preset", default=None,
                        help=f"模型规模与训练长度的预设（默认 cpu；SMOKE=1 时默认 smoke）。可选：{presets}")
    parser.add_argument("--corpus", default="shakespeare",
                        help=f"data_pipeline.corpora 里注册的语料名（默认 %(default)s；可选 {', '.join(sorted(CORPORA))}）")
    parser.add_argument("--data", default=None,
                        help="本地 UTF-8 文本文件的路径，作为 --corpus 这个名字的内容（默认不用，取注册语料）")
    parser.add_argument("--run", default=None,
                        help="运行名：产物写到 checkpoints/<run>/（默认 <语料名或 --data 的文件名>_<预设>）")
    parser.add_argument("--vocab-size", type=int, default=None,
                        help=f"BPE 词表大小（个 token，至少 {256 + len(SPECIAL_TOKENS)}；默认按语料大小自动选：约每 2000 字节一项，取 2 的幂）")
    parser.add_argument("--max-iters", type=int, default=None, help="训练步数（正整数；默认用预设的步数）")
    parser.add_argument("--threads", type=int, default=None, help="CPU 上 torch 的线程数（默认 PyTorch 的默认值）")
    parser.add_argument("--fresh", action="store_true", help="删掉全部阶段指纹、不续训，每个阶段都重做（默认关）")
    parser.add_argument("--no-progress", dest="progress", action="store_false", help="不显示训练进度条（默认显示）")
    return parser


def options_from_args(argv: list[str]) -> Options:
    args = vars(lesson_args(__doc__, build_parser(), argv))
    args["preset"] = args["preset"] or ("smoke" if is_smoke() else "cpu")
    return Options(**args)


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    opts = options_from_args(argv)
    t0 = time.perf_counter()
    try:
        records = run_pipeline(opts)
    except StageInterrupted as e:
        print(f"已中断：{e}", file=sys.stderr)
        raise SystemExit(130) from None
    except KeyboardInterrupt:
        print("已中断：已完成的阶段保留；再运行同样的命令从第一个未完成的阶段接着做", file=sys.stderr)
        raise SystemExit(130) from None
    except OSError as e:
        if e.errno in (errno.ENOSPC, errno.EDQUOT):
            print(f"错误：磁盘空间不足（{e}）。写到一半的文件都是临时文件，不会被当作完成的产物；"
                  f"释放空间后重新运行同样的命令，已完成的阶段会被跳过", file=sys.stderr)
            raise SystemExit(28) from None
        if isinstance(e, FileNotFoundError):
            print(f"错误：{e}", file=sys.stderr)
            raise SystemExit(2) from None
        raise
    except (ValueError, RuntimeError, FloatingPointError) as e:
        # 配置、数据、checkpoint 的问题，HF 对照不一致，训练发散：一行清楚的错误，不要一长串 traceback
        print(f"错误：{e}", file=sys.stderr)
        raise SystemExit(2) from None
    ev = records["eval"]["result"]
    print(f"\n全程 {time.perf_counter() - t0:.1f} s | val loss {ev['model_loss']:.4f} | val bits/byte {ev['model_bpb']:.4f}"
          f"（均匀分布 {ev['uniform_bpb']:.4f}，unigram 基线 {ev['unigram_bpb']:.4f}）")
    print(expected_range(opts.corpus_label, opts.preset, records["tokenizer"]["result"]["vocab_size"],
                         records["train"]["result"]["step"], ev["model_loss"]).strip())
    print(f"模型目录：{records['export']['result']['dir']}")
    print(f"报告：{records['report']['result']['path']}")


if __name__ == "__main__":
    main()
