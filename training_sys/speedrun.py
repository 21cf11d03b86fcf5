"""端到端的一次运行（`make run`）：语料 → BPE 分词器 → 预训练一个小 Llama → 评估 → 样例 → HF 模型目录 → 中文报告。

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
    tokenizer/  data/  train/               中间产物：分词器、train.bin/val.bin、训练 checkpoint 与 metrics.jsonl
    stages/<阶段>.json                      每个阶段的"指纹"：输入的哈希、产物的 SHA-256、耗时、结果

断点续跑是怎么做到的：每个阶段的输入（上游阶段的指纹 + 本阶段的配置）算一个哈希。一个阶段"已完成" =
stages/<阶段>.json 存在、记下的输入哈希与这次相同、记下的每个产物都在且 SHA-256 对得上。
指纹文件在所有产物原子写完之后最后写（也是原子的），所以进程在任何时刻被杀、磁盘在任何时刻写满，
都不会有"写了一半却被当成完成"的阶段：下次运行从第一个未完成的阶段接着做。训练阶段更进一步：
被中断的训练从它最后一个 checkpoint 续训（training_sys.pretrain 的逐位续训），而不是从头再来。
任何上游变化（换语料、改词表大小、改模型）都会改变下游的输入哈希，下游自动重做。
"""

from __future__ import annotations

import argparse
import errno
import hashlib
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

import numpy as np
import torch

from training_sys.checkpoint import latest_checkpoint, sha256_file
from training_sys.pretrain import TrainConfig, read_metrics
from utils.io import atomic_path, atomic_write, checkpoints_dir, is_smoke

SPECIAL_TOKENS = ["<|endoftext|>"]
PATTERN = "gpt2"
VAL_FRACTION = 0.1
# 固定的提示词：每次运行、每个预设都从同样的开头续写，样例之间才能比较
PROMPTS = ("ROMEO:\n", "First Citizen:\nBefore we proceed any further,", "To be, or not to be", "KING HENRY V:\n")
STAGES = ("corpus", "tokenizer", "shards", "train", "export", "eval", "samples", "report")


# ---------------------------------------------------------------------------
# 1. 预设
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
    # 1500 步 ≈ 300 万 token ≈ 莎士比亚训练集的 1.7 遍，空闲机器上全程约 4 分钟，离 10 分钟的上限留出一倍多的余量
    # （机器被别的进程占满时每步会慢 2–4 倍）。
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

    为什么不是越大越好：词表项 = 嵌入与 lm_head 的一行。1M 参数量级的小模型在 CPU 上，
    V=4096 时 lm_head 的计算比整个 Transformer 主干还多，而语料小时罕见的合并只出现几次、学不好。
    莎士比亚 4.8 MB → 2048（约 2.8 字节/token）；TinyStories 19 MB → 8192；SMOKE 的 200 KB → 512。
    """
    return int(min(32768, max(512, 2 ** round(math.log2(max(n_bytes, 1) / 2000)))))


# ---------------------------------------------------------------------------
# 2. 阶段与指纹
# ---------------------------------------------------------------------------
class StageInterrupted(RuntimeError):
    """一个阶段被中断（Ctrl-C 或回调）：已保存的进度留着，指纹没有写，下次运行从这里接着做。"""


def digest(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, ensure_ascii=False, default=str).encode()).hexdigest()


class Pipeline:
    """按顺序执行阶段；每个阶段完成后写 stages/<名字>.json（指纹）。

    指纹里的 "fingerprint" = 哈希(输入哈希, 每个产物的 SHA-256)，作为下游阶段的输入之一：
    上游的产物一变，下游的输入哈希就变，链条上后面的阶段全部重做。
    """

    def __init__(self, run_dir: Path, fresh: bool = False) -> None:
        self.run_dir = run_dir
        self.stage_dir = run_dir / "stages"
        self.records: dict[str, dict[str, Any]] = {}
        if fresh and self.stage_dir.exists():
            shutil.rmtree(self.stage_dir)

    def _rel(self, path: Path) -> str:
        path = Path(path).resolve()
        root = self.run_dir.resolve()
        return path.relative_to(root).as_posix() if path.is_relative_to(root) else str(path)

    def _abs(self, name: str) -> Path:
        p = Path(name)
        return p if p.is_absolute() else self.run_dir / p

    def done(self, name: str, inputs: dict[str, Any]) -> dict[str, Any] | None:
        """已完成则返回记录，否则 None。记录损坏（例如被截断的 JSON）也算未完成。"""
        path = self.stage_dir / f"{name}.json"
        try:
            rec = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError, UnicodeDecodeError):
            return None
        if rec.get("inputs_digest") != digest(inputs):
            return None
        for rel, sha in rec.get("outputs", {}).items():
            p = self._abs(rel)
            if not p.is_file() or sha256_file(p) != sha:
                return None
        return rec

    def stage(self, name: str, inputs: dict[str, Any],
              fn: Callable[[], tuple[list[Path], dict[str, Any]]]) -> dict[str, Any]:
        """执行（或跳过）一个阶段。fn() 返回 (产物文件列表, 结果 dict)。"""
        rec = self.done(name, inputs)
        if rec is not None:
            print(f"[{name}] 跳过：产物与指纹一致（上次用时 {rec['seconds']:.1f} s）")
            rec["skipped"] = True
        else:
            print(f"[{name}] 开始")
            t0 = time.perf_counter()
            outputs, result = fn()
            seconds = time.perf_counter() - t0
            hashes = {self._rel(p): sha256_file(p) for p in outputs}
            rec = {"stage": name, "inputs": inputs, "inputs_digest": digest(inputs), "outputs": hashes,
                   "fingerprint": digest([digest(inputs), hashes]), "seconds": seconds, "result": result,
                   "finished_at": time.strftime("%Y-%m-%d %H:%M:%S")}
            # 提交点：所有产物都已原子写完，最后原子地写指纹
            atomic_write(self.stage_dir / f"{name}.json", json.dumps(rec, indent=2, ensure_ascii=False) + "\n")
            print(f"[{name}] 完成，{seconds:.1f} s")
            rec["skipped"] = False
        self.records[name] = rec
        return rec


# ---------------------------------------------------------------------------
# 3. 各阶段
# ---------------------------------------------------------------------------
@dataclass
class Options:
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


def stage_tokenizer(pipe: Pipeline, opts: Options, corpus: dict[str, Any]) -> dict[str, Any]:
    from data_pipeline.tokenization import Tokenizer, train_bpe
    from data_pipeline.tokenization.regex_bpe import PATTERNS

    vocab_size = opts.vocab_size or auto_vocab_size(corpus["result"]["bytes"])
    inputs = {"corpus": corpus["fingerprint"], "vocab_size": vocab_size, "special_tokens": SPECIAL_TOKENS,
              "pattern": PATTERN}
    out = pipe.run_dir / "tokenizer"

    def run() -> tuple[list[Path], dict[str, Any]]:
        vocab, merges = train_bpe(corpus["result"]["path"], vocab_size, SPECIAL_TOKENS, PATTERNS[PATTERN],
                                  progress=False)
        tok = Tokenizer(vocab, merges, SPECIAL_TOKENS, PATTERNS[PATTERN])
        files = [tok.save(out / "bpe.json"), tok.save_hf(out / "tokenizer.json")]
        return files, {"vocab_size": tok.vocab_size, "merges": len(merges), "dir": str(out)}

    return pipe.stage("tokenizer", inputs, run)


def stage_shards(pipe: Pipeline, corpus: dict[str, Any], tokenizer: dict[str, Any]) -> dict[str, Any]:
    from data_pipeline.tokenization.__main__ import cmd_encode

    inputs = {"corpus": corpus["fingerprint"], "tokenizer": tokenizer["fingerprint"], "val_fraction": VAL_FRACTION}
    out = pipe.run_dir / "data"

    def run() -> tuple[list[Path], dict[str, Any]]:
        meta = cmd_encode(argparse.Namespace(tokenizer=str(pipe.run_dir.resolve() / "tokenizer"),
                                             input=corpus["result"]["path"], corpus=None, out=str(out),
                                             val_fraction=VAL_FRACTION))
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


@torch.no_grad()
def evaluate(model: torch.nn.Module, val: np.ndarray, train: np.ndarray, vocab_size: int, block_size: int,
             max_tokens: int, decode_bytes: Callable[[list[int]], bytes], batch_size: int = 32) -> dict[str, Any]:
    """验证集上不重叠的 block_size 窗口：模型的 loss 与 bits/byte，以及一元（unigram）基线。

    unigram 基线 = 只知道每个 token 在训练集里出现多频繁、完全不看上下文的模型：
    p(t) = (count(t) + 1) / (N + V)（加一平滑，没见过的 token 概率也不为 0），交叉熵 = −mean log p(y)。
    模型比它低多少，就是"看上下文"学到了多少；均匀分布 ln V 是什么都没学的上界。
    bits/byte = nats/token ÷ ln2 ÷ (被预测 token 的 UTF-8 字节数 / token 数)，与分词器无关，可跨词表比较。
    """
    n_windows = min(max_tokens, len(val) - 1) // block_size
    if n_windows == 0:
        raise ValueError(f"验证集只有 {len(val)} 个 token，不够一个 block_size={block_size} 的窗口：换更长的语料")
    n = n_windows * block_size
    x = torch.from_numpy(np.asarray(val[:n], dtype=np.int64)).view(n_windows, block_size)  # (W, T)
    y = torch.from_numpy(np.asarray(val[1:n + 1], dtype=np.int64)).view(n_windows, block_size)  # (W, T)
    device = next(model.parameters()).device
    nll = 0.0
    for i in range(0, n_windows, batch_size):
        logits = model(x[i:i + batch_size].to(device)).float()  # (B, T, V)
        nll += torch.nn.functional.cross_entropy(logits.flatten(0, 1), y[i:i + batch_size].flatten().to(device),
                                                 reduction="sum").item()
    counts = np.bincount(np.asarray(train), minlength=vocab_size).astype(np.float64) + 1.0
    log_p = np.log(counts / counts.sum())
    targets = y.flatten().numpy()
    bytes_per_token = len(decode_bytes(targets.tolist())) / n
    to_bpb = 1 / math.log(2) / bytes_per_token
    model_loss, unigram_loss, uniform_loss = nll / n, float(-log_p[targets].mean()), math.log(vocab_size)
    return {"tokens": n, "bytes_per_token": bytes_per_token,
            "model_loss": model_loss, "model_bpb": model_loss * to_bpb,
            "unigram_loss": unigram_loss, "unigram_bpb": unigram_loss * to_bpb,
            "uniform_loss": uniform_loss, "uniform_bpb": uniform_loss * to_bpb,
            "perplexity": math.exp(model_loss), "unigram_perplexity": math.exp(unigram_loss)}


def stage_eval(pipe: Pipeline, preset: Preset, shards: dict[str, Any], export: dict[str, Any]) -> dict[str, Any]:
    inputs = {"export": export["fingerprint"], "shards": shards["fingerprint"], "max_tokens": preset.eval_tokens}

    def run() -> tuple[list[Path], dict[str, Any]]:
        from data_pipeline.tokenization import Tokenizer
        from model_lab import Llama
        from training_sys.data import load_token_shards

        # 从导出的 HF 目录加载（而不是训练里的内存对象）：评估的就是交付出去的那份权重
        device = "cuda" if preset.needs_gpu else "cpu"
        model = Llama.from_pretrained(pipe.run_dir, device=device)
        data = load_token_shards(pipe.run_dir / "data")
        tok = Tokenizer.load(pipe.run_dir / "tokenizer" / "bpe.json")
        result = evaluate(model, data.val, data.train, model.config.vocab_size, model.config.max_position_embeddings,
                          preset.eval_tokens, tok.decode_bytes)
        path = atomic_write(pipe.run_dir / "eval.json", json.dumps(result, indent=2) + "\n")
        print(f"[eval] val loss {result['model_loss']:.4f} nats/token = {result['model_bpb']:.4f} bits/byte | "
              f"unigram 基线 {result['unigram_loss']:.4f} = {result['unigram_bpb']:.4f} bits/byte")
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


# ---------------------------------------------------------------------------
# 4. 报告
# ---------------------------------------------------------------------------
def _block(text: str) -> str:
    return "```text\n" + text.replace("```", "'''") + "\n```"


def render_report(opts: Options, preset: Preset, recs: dict[str, dict[str, Any]]) -> str:
    corpus, tok, shards, trained = (recs[k]["result"] for k in ("corpus", "tokenizer", "shards", "train"))
    ev, samples = recs["eval"]["result"], recs["samples"]["result"]["samples"]
    cfg = trained["config"]
    total = sum(recs[k]["seconds"] for k in STAGES if k in recs)
    lines = [
        f"# 端到端运行报告：{opts.run_name}",
        "",
        f"语料 `{opts.corpus_label}` → BPE 分词器（词表 {tok['vocab_size']}）→ Llama（{trained['num_params'] / 1e6:.2f}M 参数，"
        f"{trained['step']} 步）→ 本目录（Hugging Face 模型目录）。预设 `{opts.preset}`：{preset.description}。",
        "",
        "## 配置",
        "",
        "| 项目 | 值 |",
        "|---|---|",
        f"| 语料 | `{opts.corpus_label}`：{corpus['source']}（使用 {corpus['bytes'] / 1e6:.2f} MB） |",
        f"| 分词器 | 字节级 BPE，GPT-2 预分词正则，词表 {tok['vocab_size']}，特殊 token `{SPECIAL_TOKENS[0]}` |",
        f"| 数据 | train {shards['train_tokens']:,} / val {shards['val_tokens']:,} token（后 {VAL_FRACTION:.0%} 字节做验证集），"
        f"{shards['bytes'] / (shards['train_tokens'] + shards['val_tokens']):.2f} 字节/token |",
        f"| 模型 | Llama：{cfg['n_layer']} 层，{cfg['n_head']} 头，{cfg['n_embd']} 维，上下文 {cfg['block_size']}，"
        f"{trained['num_params']:,} 参数 |",
        f"| 训练 | {cfg['optimizer']}，lr {cfg['lr']:g} → {cfg['min_lr']:g}（{cfg['lr_schedule']}，预热 {cfg['warmup_iters']} 步），"
        f"batch {cfg['batch_size']}×{cfg['block_size']}，{trained['step']} 步，共 {trained['tokens_seen']:,} token，"
        f"{cfg['dtype']}，设备 {cfg['device']} |",
        f"| 硬件 | {trained['hardware']} |",
        "",
        "## 各阶段耗时",
        "",
        "| 阶段 | 耗时 | 本次 |",
        "|---|---|---|",
    ]
    names = {"corpus": "1 语料", "tokenizer": "2 训练分词器", "shards": "2 编码成 train.bin / val.bin",
             "train": "3 预训练", "export": "6 导出 HF 模型目录", "eval": "4 评估", "samples": "5 样例 + HF 对照"}
    for k, label in names.items():
        r = recs[k]
        lines.append(f"| {label} | {r['seconds']:.1f} s | {'跳过（指纹一致）' if r['skipped'] else '执行'} |")
    lines += [
        f"| **合计** | **{total:.1f} s** | |",
        "",
        f"训练吞吐 **{trained['tokens_per_s']:,.0f} tokens/s**（纯训练步，不含评估与保存；训练步合计 {trained['train_seconds']:.1f} s）。"
        + ("训练曾被中断，从 checkpoint 续训完成。" if trained["resumed"] else ""),
        "",
        "## 损失曲线",
        "",
        "![loss](loss.png)",
        "",
        f"训练结束时（{cfg['eval_iters']} 个随机 batch 的估计）：train loss {trained['final_train_loss']:.4f}，"
        f"val loss {trained['final_val_loss']:.4f}。",
        "",
        "## 评估",
        "",
        f"验证集上 {ev['tokens']:,} 个 token（不重叠的 {cfg['block_size']}-token 窗口），{ev['bytes_per_token']:.2f} 字节/token。"
        "bits/byte 与分词器无关，可以和字符级模型、别的词表直接比较。",
        "",
        "| 模型 | loss（nats/token） | 困惑度 | bits/byte |",
        "|---|---|---|---|",
        f"| 均匀分布（什么都没学） | {ev['uniform_loss']:.4f} | {math.exp(ev['uniform_loss']):,.0f} | {ev['uniform_bpb']:.4f} |",
        f"| unigram 基线（只看 token 频率） | {ev['unigram_loss']:.4f} | {ev['unigram_perplexity']:,.1f} | {ev['unigram_bpb']:.4f} |",
        f"| **我们的 Llama** | **{ev['model_loss']:.4f}** | **{ev['perplexity']:,.1f}** | **{ev['model_bpb']:.4f}** |",
        "",
        compare_to_unigram(ev),
        "",
        "## 样例",
        "",
        f"固定提示词，每个续写 {samples[0]['new_tokens'] if samples else 0} 个 token 以内（KV cache）。贪心解码与 "
        "`transformers.AutoModelForCausalLM` 加载本目录后的 `generate(do_sample=False)` 逐 token 相同；"
        "`AutoTokenizer` 对提示词的编码与我们的 Tokenizer 逐 id 相同。",
        "",
    ]
    for s in samples:
        lines += [f"**提示词** `{s['prompt']!r}`", "", "贪心（temperature=0）：", "", _block(s["prompt"] + s["greedy"]), "",
                  "采样（temperature=0.8，top_k=50）：", "", _block(s["prompt"] + s["sampled"]), ""]
    lines += [
        "## 用起来",
        "",
        "```python",
        "from transformers import AutoModelForCausalLM, AutoTokenizer",
        f'tok = AutoTokenizer.from_pretrained("{pipe_dir_hint(opts)}")',
        f'model = AutoModelForCausalLM.from_pretrained("{pipe_dir_hint(opts)}")',
        'ids = tok("ROMEO:\\n", return_tensors="pt").input_ids',
        "print(tok.decode(model.generate(ids, max_new_tokens=50, do_sample=False)[0]))",
        "```",
        "",
        "## 下一步",
        "",
        "- 再跑一次同样的命令：所有阶段都会被跳过（指纹一致）；加 `--fresh` 全部重来。中途 Ctrl-C 之后再跑，"
        "训练从最后一个 checkpoint 续训。",
        "- 更大的模型、更长的训练：`python -m training_sys.speedrun --preset gpu`（需要 CUDA GPU；没有 GPU 会直接报错，不会悄悄退回 CPU）。",
        "- 只想在 CPU 上多训一会儿：`--max-iters 2000`（训练阶段的指纹变化，只重做训练及其下游）。",
        "- 换语料：`--corpus tinystories`（约 19 MB，需要下载一次）或 `--corpus tinyshakespeare --data 本地文件.txt`；"
        "词表大小按语料自动调整，也可以 `--vocab-size 8192`。",
        "- 逐步训练的细节（优化器、调度、续训）：`python -m training_sys.pretrain --help`；训练日志在 `train/metrics.jsonl`。",
        "",
    ]
    return "\n".join(lines)


def compare_to_unigram(ev: dict[str, Any]) -> str:
    gain = ev["unigram_bpb"] - ev["model_bpb"]
    if gain > 0:
        return (f"比 unigram 基线低 {gain:.3f} bits/byte（{gain / ev['unigram_bpb']:.0%}）："
                "这就是模型从上下文里学到的东西。")
    return (f"比 unigram 基线还高 {-gain:.3f} bits/byte：训练太短，模型连 token 频率都还没学好"
            "（SMOKE 的规模就是这样；正常预设会远低于基线）。")


def pipe_dir_hint(opts: Options) -> str:
    return f"checkpoints/{opts.run_name}"


def stage_report(pipe: Pipeline, opts: Options, preset: Preset) -> dict[str, Any]:
    inputs = {k: pipe.records[k]["fingerprint"] for k in STAGES[:-1]}

    def run() -> tuple[list[Path], dict[str, Any]]:
        path = atomic_write(pipe.run_dir / "report.md", render_report(opts, preset, pipe.records))
        return [path], {"path": str(path)}

    return pipe.stage("report", inputs, run)


# ---------------------------------------------------------------------------
# 5. 整条流水线与命令行
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
    tokenizer = stage_tokenizer(pipe, opts, corpus)
    shards = stage_shards(pipe, corpus, tokenizer)
    trained = stage_train(pipe, opts, preset, shards, on_step)
    export = stage_export(pipe, tokenizer, trained)
    stage_eval(pipe, preset, shards, export)
    stage_samples(pipe, preset, export)
    stage_report(pipe, opts, preset)
    return pipe.records


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m training_sys.speedrun", description=__doc__.split("\n")[0])
    parser.add_argument("--preset", default=None, help=f"{' / '.join(PRESETS)}（默认 cpu；SMOKE=1 时默认 smoke）")
    parser.add_argument("--corpus", default="shakespeare", help="data_pipeline.corpora 里的语料名")
    parser.add_argument("--data", default=None, help="本地 UTF-8 文本文件（作为 --corpus 这个名字的内容）")
    parser.add_argument("--run", default=None, help="输出目录 checkpoints/<run>/（默认 <语料或 --data 的文件名>_<预设>）")
    parser.add_argument("--vocab-size", type=int, default=None, help="BPE 词表大小（默认按语料大小自动选）")
    parser.add_argument("--max-iters", type=int, default=None, help="覆盖预设的训练步数")
    parser.add_argument("--threads", type=int, default=None, help="CPU 上 torch 的线程数（默认 PyTorch 的默认值）")
    parser.add_argument("--fresh", action="store_true", help="忽略已完成的阶段，全部重做")
    parser.add_argument("--no-progress", dest="progress", action="store_false", help="不显示训练进度条")
    return parser


def options_from_args(argv: list[str]) -> Options:
    args = vars(build_parser().parse_args(argv))
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
          f"（unigram 基线 {ev['unigram_bpb']:.4f}）")
    print(f"模型目录：{records['export']['result']['dir']}")
    print(f"报告：{records['report']['result']['path']}")


if __name__ == "__main__":
    main()
