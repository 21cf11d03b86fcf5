"""预训练循环：数据 → Llama → AdamW/Muon + 调度 + 裁剪 → 评估、样例、checkpoint、日志，可精确续训。

    python -m training_sys.pretrain                                  # 默认：nanoGPT CPU 配方，内置莎士比亚语料（字符级）
    python -m training_sys.pretrain --data ../shared/data/tinyshakespeare.txt --run shakespeare_char
    python -m training_sys.pretrain --shards checkpoints/tok --n-layer 6 --n-embd 384 --block-size 256
    python -m training_sys.pretrain --run shakespeare_char --resume  # 从 checkpoints/shakespeare_char/latest 接着训练
    python -m training_sys.pretrain --config my_run.json --lr 3e-4   # 配置文件 + 命令行覆盖（命令行优先）
    SMOKE=1 python -m training_sys.pretrain                          # 几秒钟的小规模演示

其他模块直接调用函数：`result = train(TrainConfig(run="x", max_iters=100))`，命令行只是它外面薄薄的一层。

一步训练做什么（nanoGPT train.py 的骨架）：
1. 梯度累积：grad_accum 个 micro-batch，每个的 loss 除以 grad_accum 再 backward——梯度相加后恰好是
   大 batch 的平均梯度 ∇(1/K Σ_k L_k)；显存只需要一个 micro-batch 的激活。
2. 裁剪：‖g‖₂ > clip 时整体缩放到 clip（不改方向），挡住偶发的梯度尖峰。
3. 学习率：base_lr · f(step)，f 是预热 + 余弦（或 WSD / 逆平方根）。
4. 优化器：AdamW（2-D 权重做 weight decay，norm 的 γ 不做）或 Muon（隐藏层矩阵正交化更新，嵌入与 lm_head 走 AdamW）。
5. bf16 autocast（可选）：矩阵乘用 bf16，权重、优化器状态与 loss 保持 fp32；bf16 的指数位与 fp32 相同，不需要 loss scaling。

输出（checkpoints/<run>/，或 --out-dir）：config.json（本次的 TrainConfig）、metrics.jsonl（每步一行 train、
每次评估一行 eval：val loss、bits/byte、样例）、loss.png、latest 与 step_XXXXXX/（HF 模型目录 + training_state.pt，
见 training_sys/checkpoint.py）。最后一行打印 `final: step=… train_loss=… val_loss=… tokens_per_s=…`。

精确续训：checkpoint 里存了权重、优化器与调度器状态、torch/numpy/python 的随机数状态，以及专用于
抽 batch 的 torch.Generator 的状态（= 数据读到哪了）。在 CPU 上，中断于第 k 步再 --resume 到第 N 步，
与一口气跑 N 步的参数逐位相同（tests/training_sys/test_pretrain.py 证明）。Ctrl-C：做完当前这一步、保存、退出。
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import difflib
import json
import math
import signal
import statistics
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, get_type_hints

import torch

from training_sys.checkpoint import (
    CheckpointError,
    capture_rng_state,
    latest_checkpoint,
    load_checkpoint,
    restore_rng_state,
    save_checkpoint,
)
from training_sys.data import DataError, LMData, get_batch, load_char_data, load_token_shards
from training_sys.evaluation import bits_per_byte
from training_sys.optimization import SCHEDULE_KINDS
from utils.io import atomic_path, atomic_write, is_smoke, output_path

OPTIMIZERS = ("adamw", "muon")
DTYPES = ("float32", "bfloat16")


# ---------------------------------------------------------------------------
# 1. 配置
# ---------------------------------------------------------------------------
@dataclass
class TrainConfig:
    """一次训练的全部设置。默认值 = nanoGPT 的 CPU 配方（4 层、4 头、128 维、block 64、batch 12、2000 步）。"""

    # 运行与输出
    run: str = "pretrain"  # 输出目录 checkpoints/<run>/
    out_dir: str | None = None  # 直接指定输出目录（覆盖 run）
    resume: bool = False  # 从 <输出目录>/latest 接着训练
    overwrite: bool = False  # 输出目录里已有 checkpoint 时删掉重来（否则报错，什么也不覆盖）
    # 数据（三选一；都不给 = 内置莎士比亚语料，字符级）
    data: str | None = None  # UTF-8 文本文件，字符级
    corpus: str | None = None  # data_pipeline.corpora 的语料名，字符级
    shards: str | None = None  # data_pipeline.tokenization encode 的输出目录（train.bin / val.bin / meta.json）
    val_fraction: float = 0.1  # 字符级的验证集比例（nanoGPT：后 10%）
    vocab_size: int | None = None  # None = 取数据的词表大小；可以更大（把词表补齐到 64 的倍数更快），不能更小
    # 模型（model_lab 的 Llama）
    n_layer: int = 4
    n_head: int = 4
    n_kv_head: int | None = None  # None = n_head（MHA）；更小就是 GQA
    n_embd: int = 128
    intermediate_size: int | None = None  # None = SwiGLU 的 8/3·n_embd（取 8 的倍数），参数量与 4·n_embd 的 GELU MLP 相当
    rope_theta: float = 10000.0
    tie_embeddings: bool = False
    attn_implementation: str = "sdpa"
    # 批与步数
    block_size: int = 64
    batch_size: int = 12  # 每个 micro-batch 的序列数
    grad_accum: int = 1  # 梯度累积的 micro-batch 数；每步 token 数 = batch_size · block_size · grad_accum
    max_iters: int = 2000
    # 优化
    optimizer: str = "adamw"
    lr: float = 1e-3  # AdamW 的峰值学习率（Muon 时用于嵌入、lm_head 与 norm）
    min_lr: float = 1e-4  # 调度的终点学习率
    lr_schedule: str = "cosine"
    warmup_iters: int = 100
    weight_decay: float = 0.1
    beta1: float = 0.9
    beta2: float = 0.99
    grad_clip: float = 1.0  # 0 = 不裁剪
    muon_lr: float = 0.02  # Muon 组（隐藏层的 2-D 权重）的峰值学习率
    muon_momentum: float = 0.95
    muon_weight_decay: float = 0.0
    # 数值与设备
    dtype: str = "float32"  # "bfloat16" = bf16 autocast
    compile: bool = False  # torch.compile
    device: str = "auto"  # auto = utils.torch_playground.get_device()：CUDA → MPS → CPU
    threads: int | None = None  # CPU 上 torch 的线程数；None = PyTorch 默认。机器被别的进程占满时设 1 往往快得多
    seed: int = 1337
    # 评估、样例、checkpoint、日志
    eval_interval: int = 250
    eval_iters: int = 20  # 每次评估用多少个 batch 估计 loss（nanoGPT 的 CPU 配方：20）
    sample_tokens: int = 200  # 每次评估后生成的样例长度；0 = 不生成
    checkpoint_interval: int = 500  # 每隔多少步存一次；最后一步与 Ctrl-C 时总会存
    keep_checkpoints: int = 2
    progress: bool = True  # tqdm 进度条

    # 续训时允许与原配置不同的字段：它们不改变训练的是什么（模型、数据、优化）。
    # 注意"逐位一致"只在同样的设备与线程数下成立：device / threads / compile 改变浮点运算的顺序，结果只在舍入误差内相同
    RESUME_MAY_DIFFER = ("resume", "overwrite", "compile", "eval_interval", "eval_iters", "sample_tokens",
                         "checkpoint_interval", "keep_checkpoints", "progress", "run", "out_dir", "device", "threads")

    @classmethod
    def from_dict(cls, d: dict[str, Any], source: str = "配置") -> TrainConfig:
        """从 dict 构造；未知的键直接报错（并提示最接近的合法键名），拼错的配置不会被悄悄忽略。"""
        if not isinstance(d, dict):
            raise ValueError(f"{source} 应该是一个 JSON 对象（键 -> 值），收到 {type(d).__name__}")
        known = [f.name for f in dataclasses.fields(cls)]
        unknown = [k for k in d if k not in known]
        if unknown:
            hints = []
            for k in unknown:
                close = difflib.get_close_matches(k, known, n=1)
                hints.append(f"{k!r}" + (f"（是不是 {close[0]!r}？）" if close else ""))
            raise ValueError(f"{source} 里有未知的键 {', '.join(hints)}；合法的键：{', '.join(known)}")
        hints_t = get_type_hints(cls)
        clean = {}
        for k, v in d.items():
            clean[k] = _coerce(k, v, hints_t[k], source)
        return cls(**clean)

    @classmethod
    def from_json(cls, path: str | Path) -> TrainConfig:
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"配置文件 {path} 不存在")
        try:
            d = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as e:
            raise ValueError(f"配置文件 {path} 不是合法的 JSON：{e}") from None
        return cls.from_dict(d, source=f"配置文件 {path}")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def validate(self) -> None:
        given = [name for name in ("data", "corpus", "shards") if getattr(self, name) is not None]
        if len(given) > 1:
            raise ValueError(f"数据来源只能给一个，收到 {given}：--data（文本文件）、--corpus（语料名）、--shards（分片目录）三选一")
        for name in ("n_layer", "n_head", "n_embd", "block_size", "batch_size", "grad_accum", "max_iters",
                     "eval_interval", "eval_iters", "checkpoint_interval", "keep_checkpoints"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"{name}={value!r} 必须是正整数")
        if self.n_embd % self.n_head:
            raise ValueError(f"n_embd={self.n_embd} 不能被 n_head={self.n_head} 整除：每个头的维度必须是整数")
        if self.optimizer not in OPTIMIZERS:
            raise ValueError(f"optimizer={self.optimizer!r} 未知；可选 {OPTIMIZERS}")
        if self.dtype not in DTYPES:
            raise ValueError(f"dtype={self.dtype!r} 未知；可选 {DTYPES}（fp16 需要 loss scaling，本循环不提供）")
        if self.lr_schedule not in SCHEDULE_KINDS:
            raise ValueError(f"lr_schedule={self.lr_schedule!r} 未知；可选 {SCHEDULE_KINDS}")
        if not (self.lr > 0 and 0 <= self.min_lr <= self.lr):
            raise ValueError(f"需要 0 < lr 且 0 ≤ min_lr ≤ lr，收到 lr={self.lr}、min_lr={self.min_lr}")
        if not 0 <= self.warmup_iters <= self.max_iters:
            raise ValueError(f"warmup_iters={self.warmup_iters} 必须在 [0, max_iters={self.max_iters}] 内")
        if self.grad_clip < 0:
            raise ValueError(f"grad_clip={self.grad_clip} 不能是负数（0 表示不裁剪）")
        if self.sample_tokens < 0:
            raise ValueError(f"sample_tokens={self.sample_tokens} 不能是负数（0 表示不生成样例）")
        if self.threads is not None and self.threads < 1:
            raise ValueError(f"threads={self.threads} 必须是正整数（或不给，用 PyTorch 的默认值）")
        if self.resume and self.overwrite:
            raise ValueError("--resume 与 --overwrite 不能同时给：一个是接着训练，一个是删掉重来")


def _coerce(key: str, value: Any, hint: Any, source: str) -> Any:
    """JSON 的值按字段类型检查（int 字段接受 2000，也接受 2e3 这类整数值的 float）。"""
    allowed = [t for t in (bool, int, float, str) if t in getattr(hint, "__args__", (hint,))]
    optional = type(None) in getattr(hint, "__args__", ())
    if value is None and optional:
        return None
    if bool in allowed and isinstance(value, bool):
        return value
    if int in allowed and isinstance(value, (int, float)) and not isinstance(value, bool) and float(value).is_integer():
        return int(value)
    if float in allowed and isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if str in allowed and isinstance(value, str):
        return value
    names = "/".join(t.__name__ for t in allowed) + ("/null" if optional else "")
    raise ValueError(f"{source} 的 {key}={value!r} 类型不对：应为 {names}")


def smoke_config() -> TrainConfig:
    """SMOKE=1 且不带参数：内置语料上的小模型，几秒钟跑完（含评估、样例、checkpoint）。"""
    return TrainConfig(run="pretrain_smoke", overwrite=True, n_layer=2, n_head=2, n_embd=32, block_size=32,
                       batch_size=4, max_iters=30, warmup_iters=5, eval_interval=15, eval_iters=2,
                       checkpoint_interval=15, sample_tokens=60, threads=1, progress=False)


def swiglu_hidden(n_embd: int) -> int:
    """SwiGLU 的隐层宽度：8/3·d 取 8 的倍数。

    GELU MLP 有 2 个 d×4d 矩阵 = 8d² 参数；SwiGLU 有 3 个 d×h 矩阵 = 3dh。令 3dh = 8d² 得 h = 8d/3，
    于是同一个 n_embd 下两种 MLP 的参数量与 FLOPs 相当（LLaMA 论文的做法）。
    """
    return 8 * math.ceil(8 * n_embd / 3 / 8)


# ---------------------------------------------------------------------------
# 2. 数据、模型、优化器
# ---------------------------------------------------------------------------
def build_data(cfg: TrainConfig) -> LMData:
    if cfg.shards is not None:
        return load_token_shards(cfg.shards)
    if cfg.data is not None:
        return load_char_data(path=cfg.data, val_fraction=cfg.val_fraction)
    return load_char_data(corpus=cfg.corpus or "shakespeare", val_fraction=cfg.val_fraction)


def resolve_vocab_size(cfg: TrainConfig, data: LMData) -> int:
    if cfg.vocab_size is None:
        return data.vocab_size
    if cfg.vocab_size < data.vocab_size:
        raise DataError(f"模型的 vocab_size={cfg.vocab_size} 小于数据的词表大小 {data.vocab_size}（{data.source}）："
                        "数据里的 token id 会越界；去掉 --vocab-size（自动取数据的词表大小）或把它调大")
    return cfg.vocab_size


def build_model(cfg: TrainConfig, vocab_size: int):
    from model_lab import Llama, LlamaConfig

    config = LlamaConfig(
        vocab_size=vocab_size, hidden_size=cfg.n_embd,
        intermediate_size=cfg.intermediate_size or swiglu_hidden(cfg.n_embd),
        num_hidden_layers=cfg.n_layer, num_attention_heads=cfg.n_head, num_key_value_heads=cfg.n_kv_head,
        max_position_embeddings=cfg.block_size, rope_theta=cfg.rope_theta,
        tie_word_embeddings=cfg.tie_embeddings, attn_implementation=cfg.attn_implementation,
        bos_token_id=None, eos_token_id=None,
    )
    return Llama(config)


def build_optimizer(cfg: TrainConfig, model: torch.nn.Module) -> torch.optim.Optimizer:
    from training_sys.optimization import AdamW, Muon, build_muon_param_groups

    if cfg.optimizer == "muon":
        groups = build_muon_param_groups(
            model, lr=cfg.muon_lr, momentum=cfg.muon_momentum, weight_decay=cfg.muon_weight_decay,
            adamw_lr=cfg.lr, adamw_betas=(cfg.beta1, cfg.beta2), adamw_weight_decay=cfg.weight_decay)
        # Newton–Schulz 在 GPU 上用 bf16（张量核，快且够准）；CPU 大多没有原生 bf16 矩阵乘，
        # 在这台 AVX2 机器上 bf16 的 NS5 比 fp32 慢约 20 倍（128×128：23 ms 对 1 ms），所以 CPU 上用 fp32
        on_cuda = next(model.parameters()).device.type == "cuda"
        return Muon(groups, ns_dtype=torch.bfloat16 if on_cuda else torch.float32)
    # 只对 2-D 参数（矩阵乘权重与嵌入）做 weight decay：norm 的 γ 是逐通道的尺度，把它往 0 拉只会伤害表示
    params = [p for p in model.parameters() if p.requires_grad]
    groups = [
        {"params": [p for p in params if p.dim() >= 2], "weight_decay": cfg.weight_decay},
        {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0},
    ]
    # foreach：整组参数一次更新，省掉逐参数调度算子的固定开销（0.8M 参数的 nanoGPT 配方上每步约快 0.5 ms），
    # 数值与逐参数的写法逐位相同，所以续训、与旧 checkpoint 的互通都不受影响
    return AdamW(groups, lr=cfg.lr, betas=(cfg.beta1, cfg.beta2), foreach=True)


def build_scheduler(cfg: TrainConfig, optimizer: torch.optim.Optimizer) -> torch.optim.lr_scheduler.LambdaLR:
    from training_sys.optimization import build_schedule

    # 每个参数组的 lr = 它自己的峰值 · f(step)：Muon 组与 AdamW 组按同一条曲线缩放
    schedule = build_schedule(cfg.lr_schedule, warmup_steps=cfg.warmup_iters, total_steps=cfg.max_iters,
                              min_lr_ratio=cfg.min_lr / cfg.lr)
    return torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        from utils.torch_playground import get_device

        return get_device(verbose=False)
    return torch.device(name)


# ---------------------------------------------------------------------------
# 3. 评估与样例
# ---------------------------------------------------------------------------
@torch.no_grad()
def estimate_loss(model: torch.nn.Module, data: LMData, cfg: TrainConfig, device: torch.device,
                  autocast: Callable[[], contextlib.AbstractContextManager]) -> dict[str, float]:
    """在训练集与验证集上各取 eval_iters 个 batch 求平均 loss。

    每次评估都用同一个种子重新抽 batch（专用 Generator，不碰全局随机数与训练的数据流）：
    不同步数的 val loss 是在同一批窗口上比较的，而且评估与否不改变训练本身——续训的逐位一致依赖这一点。
    """
    model.eval()
    out = {}
    for offset, (split, arr) in enumerate((("train", data.train), ("val", data.val)), start=1):
        gen = torch.Generator().manual_seed(cfg.seed + offset)
        losses = []
        for _ in range(cfg.eval_iters):
            x, y = get_batch(arr, cfg.batch_size, cfg.block_size, gen, device)
            with autocast():
                _, loss = model(x, y)
            losses.append(loss.item())
        out[split] = sum(losses) / len(losses)
    model.train()
    return out


@torch.no_grad()
def sample_text(model: torch.nn.Module, data: LMData, cfg: TrainConfig, device: torch.device,
                temperature: float = 0.8, top_k: int = 50) -> str | None:
    """从一个换行符开始生成 sample_tokens 个 token（上下文超过 block_size 时只保留最后 block_size 个，nanoGPT 的做法）。"""
    if data.decode is None or cfg.sample_tokens == 0:
        return None
    prompt = (data.encode("\n") if data.encode else []) or [0]
    ids = torch.tensor([prompt], dtype=torch.long, device=device)
    gen = torch.Generator(device=device).manual_seed(cfg.seed + 3)
    model.eval()
    for _ in range(cfg.sample_tokens):
        logits = model(ids[:, -cfg.block_size:])[:, -1, :].float() / temperature  # (1, V)
        kth = torch.topk(logits, min(top_k, logits.size(-1))).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))  # 只在概率最高的 top_k 个里抽
        next_id = torch.multinomial(torch.softmax(logits, dim=-1), 1, generator=gen)
        ids = torch.cat([ids, next_id], dim=1)
    model.train()
    return data.decode(ids[0, len(prompt):].tolist())


# ---------------------------------------------------------------------------
# 4. 日志与曲线
# ---------------------------------------------------------------------------
class MetricsLog:
    """metrics.jsonl：每步一行 {"kind": "train", ...}，每次评估一行 {"kind": "eval", ...}。"""

    def __init__(self, path: Path, keep_up_to_step: int | None) -> None:
        self.path = path
        if keep_up_to_step is None or not path.exists():
            atomic_write(path, "")
        else:
            # 续训：上次 checkpoint 之后写下的行会被重新训练出来，先删掉，免得同一步出现两次；
            # 进程被杀时最后一行可能只写了一半（解析失败），也一并丢掉
            kept = []
            for line in path.read_text(encoding="utf-8").splitlines():
                with contextlib.suppress(json.JSONDecodeError, KeyError, TypeError):
                    if json.loads(line)["step"] <= keep_up_to_step:
                        kept.append(line)
            atomic_write(path, "".join(line + "\n" for line in kept))
        self._file = open(path, "a", encoding="utf-8")

    def write(self, record: dict[str, Any]) -> None:
        self._file.write(json.dumps(record, ensure_ascii=False) + "\n")
        self._file.flush()

    def close(self) -> None:
        self._file.close()


def read_metrics(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in Path(path).read_text(encoding="utf-8").splitlines() if line.strip()]


def plot_losses(metrics_path: Path, png_path: Path, title: str) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    records = read_metrics(metrics_path)
    train = [(r["step"], r["loss"]) for r in records if r["kind"] == "train"]
    evals = [r for r in records if r["kind"] == "eval"]
    fig, ax = plt.subplots(figsize=(8, 4.5))
    if train:
        ax.plot(*zip(*train), lw=0.6, alpha=0.5, label="train (per step)")
    if evals:
        ax.plot([r["step"] for r in evals], [r["train_loss"] for r in evals], "o-", label="train (eval)")
        ax.plot([r["step"] for r in evals], [r["val_loss"] for r in evals], "s-", label="val (eval)")
    ax.set(xlabel="step", ylabel="loss (nats/token)", title=title)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    with atomic_path(png_path) as tmp:  # 原子替换：看图的人不会读到画了一半的 PNG
        fig.savefig(tmp, dpi=110, format="png")
    plt.close(fig)
    return png_path


# ---------------------------------------------------------------------------
# 5. Ctrl-C 与发散
# ---------------------------------------------------------------------------
class TrainingDivergedError(FloatingPointError):
    """loss 变成 NaN/Inf。不保存任何东西：上一个 checkpoint 保持原样。"""


class GracefulStop:
    """第一次 Ctrl-C（SIGINT）：只记下请求，当前这一步做完后保存并退出；第二次：立即中断（恢复默认行为）。

    只有主线程能装信号处理函数；在别的线程里调用 train() 时不装，靠 on_step 回调停止。
    """

    def __init__(self) -> None:
        self.requested = False
        self._previous = None

    def _handler(self, signum, frame) -> None:
        if self.requested:
            signal.signal(signal.SIGINT, self._previous or signal.default_int_handler)
            raise KeyboardInterrupt
        self.requested = True
        print("\n收到 Ctrl-C：做完这一步后保存 checkpoint 并退出（再按一次立即中断，不保存）", file=sys.stderr, flush=True)

    def __enter__(self) -> GracefulStop:
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGINT, self._handler)
        return self

    def __exit__(self, *exc) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGINT, self._previous)


# ---------------------------------------------------------------------------
# 6. 训练
# ---------------------------------------------------------------------------
@dataclass
class TrainResult:
    step: int
    train_loss: float  # 最后一次评估的训练集 loss（中断时为最后一步的 loss）
    val_loss: float  # 最后一次评估的验证集 loss（中断且尚未评估时为 nan）
    val_bpb: float
    tokens_per_s: float  # 训练步的平均吞吐（不含评估与保存）
    ms_per_iter: float  # 每步耗时的中位数（跳过前 5 步的预热）
    wall_s: float
    num_params: int
    run_dir: Path
    checkpoint_dir: Path | None
    interrupted: bool = False
    history: list[dict[str, Any]] = field(default_factory=list)  # 所有评估记录

    def final_line(self) -> str:
        return (f"final: step={self.step} train_loss={self.train_loss:.4f} val_loss={self.val_loss:.4f} "
                f"tokens_per_s={self.tokens_per_s:.0f}")


def _run_dir(cfg: TrainConfig) -> Path:
    return Path(cfg.out_dir) if cfg.out_dir else output_path(cfg.run, "metrics.jsonl").parent


def _check_resume_config(saved: dict[str, Any], cfg: TrainConfig, ckpt_dir: Path) -> None:
    current = cfg.to_dict()
    diffs = [f"{k}: checkpoint={saved.get(k)!r} 现在={current[k]!r}" for k in current
             if k not in TrainConfig.RESUME_MAY_DIFFER and saved.get(k) != current[k]]
    if diffs:
        raise CheckpointError(f"--resume 的配置与 {ckpt_dir} 不兼容：" + "；".join(diffs) +
                              "。续训必须用同样的模型、数据与优化设置（可以用 --config 指向原来的配置，"
                              f"或直接去掉这些参数）；只有 {', '.join(TrainConfig.RESUME_MAY_DIFFER)} 可以不同")


def _prepare_fresh_run_dir(run_dir: Path, cfg: TrainConfig) -> None:
    if latest_checkpoint(run_dir) is None and not any(run_dir.glob("step_*")):
        return
    if not cfg.overwrite:
        raise CheckpointError(f"{run_dir} 里已经有 checkpoint：加 --resume 接着训练，加 --overwrite 删掉重来，"
                              "或用 --run 换一个名字（什么也没有被覆盖）")
    import shutil

    for p in run_dir.glob("step_*"):
        shutil.rmtree(p, ignore_errors=True)
    (run_dir / "latest").unlink(missing_ok=True)


def train(cfg: TrainConfig, on_step: Callable[[int, dict[str, Any]], bool | None] | None = None) -> TrainResult:
    """按 cfg 训练，返回 TrainResult。on_step(step, record) 每步之后调用，返回 True 则像 Ctrl-C 一样保存并停止。"""
    from tqdm import tqdm

    from training_sys.optimization import clip_grad_norm
    from utils.torch_playground import setup_seed

    t_start = time.perf_counter()
    cfg.validate()
    run_dir = _run_dir(cfg)
    run_dir.mkdir(parents=True, exist_ok=True)
    data = build_data(cfg)
    vocab_size = resolve_vocab_size(cfg, data)
    device = resolve_device(cfg.device)
    if cfg.threads is not None:
        # 小模型的每个算子只有几微秒的活：线程数超过空闲核数时，OpenMP 线程互相等待的开销会让一步慢上好几倍
        torch.set_num_threads(cfg.threads)

    setup_seed(cfg.seed)
    model = build_model(cfg, vocab_size).to(device)
    optimizer = build_optimizer(cfg, model)
    scheduler = build_scheduler(cfg, optimizer)
    data_gen = torch.Generator().manual_seed(cfg.seed)  # 只用来抽训练 batch：它的状态 = 数据位置

    start_step, ckpt_dir = 0, None
    if cfg.resume:
        ckpt_dir = latest_checkpoint(run_dir)
        if ckpt_dir is None:
            raise CheckpointError(f"--resume：{run_dir} 里没有 checkpoint（没有 latest 文件）；去掉 --resume 从头训练")
        tensors, state = load_checkpoint(ckpt_dir)
        _check_resume_config(state["config"], cfg, ckpt_dir)
        if state["vocab_size"] != vocab_size:
            raise CheckpointError(f"checkpoint 的词表大小 {state['vocab_size']} 与现在的数据（{data.source}）"
                                  f"得到的 {vocab_size} 不同：数据文件变了，不能续训")
        try:
            model.load_state_dict(tensors, strict=not cfg.tie_embeddings)
            optimizer.load_state_dict(state["optimizer"])  # 状态会被搬到参数所在的设备：CPU 存的也能在 GPU 上续
            scheduler.load_state_dict(state["scheduler"])
        except (RuntimeError, ValueError, KeyError) as e:
            raise CheckpointError(f"{ckpt_dir} 与当前模型/优化器不匹配：{str(e)[:300]}") from None
        restore_rng_state(state["rng"], data_gen)
        start_step = int(state["step"])
        tokens_seen = int(state["tokens_seen"])
    else:
        _prepare_fresh_run_dir(run_dir, cfg)
        tokens_seen = 0
    atomic_write(run_dir / "config.json", json.dumps(cfg.to_dict(), indent=2, ensure_ascii=False) + "\n")

    fwd_model = torch.compile(model) if cfg.compile else model
    bf16 = cfg.dtype == "bfloat16"

    def autocast() -> contextlib.AbstractContextManager:
        return torch.autocast(device.type, dtype=torch.bfloat16) if bf16 else contextlib.nullcontext()

    def training_state(step: int) -> dict[str, Any]:
        return {"step": step, "tokens_seen": tokens_seen, "config": cfg.to_dict(), "vocab_size": vocab_size,
                "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                "rng": capture_rng_state(data_gen)}

    def save(step: int) -> Path:
        return save_checkpoint(run_dir, model, training_state(step), data.extra_files, cfg.keep_checkpoints)

    log = MetricsLog(run_dir / "metrics.jsonl", keep_up_to_step=start_step if cfg.resume else None)
    tokens_per_step = cfg.batch_size * cfg.block_size * cfg.grad_accum
    n_params = model.num_parameters()
    print(f"[pretrain] {data.source} | vocab {vocab_size} | train {len(data.train):,} / val {len(data.val):,} tokens | "
          f"Llama {n_params / 1e6:.2f}M 参数 | {cfg.optimizer} | {device} {cfg.dtype} | "
          f"{tokens_per_step} tokens/步 | {run_dir}" + (f" | 从第 {start_step} 步续训" if cfg.resume else ""))

    step_times: list[float] = []
    history: list[dict[str, Any]] = []
    last_loss = math.nan
    last_eval: dict[str, float] = {}
    interrupted = False
    model.train()
    bar = tqdm(total=cfg.max_iters, initial=start_step, desc=cfg.run, disable=not cfg.progress, dynamic_ncols=True,
               mininterval=0.5)
    try:
        with GracefulStop() as stop:
            step = start_step
            while step < cfg.max_iters:
                t0 = time.perf_counter()
                lr = optimizer.param_groups[0]["lr"]
                loss_sum = 0.0
                for _ in range(cfg.grad_accum):
                    x, y = get_batch(data.train, cfg.batch_size, cfg.block_size, data_gen, device)
                    with autocast():
                        _, loss = fwd_model(x, y)
                    # 除以 K：K 个 micro-batch 的梯度相加 = 大 batch 平均 loss 的梯度
                    (loss / cfg.grad_accum).backward()
                    loss_sum += loss.item()
                last_loss = loss_sum / cfg.grad_accum
                if not math.isfinite(last_loss):
                    raise TrainingDivergedError(
                        f"第 {step + 1} 步的 loss = {last_loss}（非有限），训练停止，没有保存任何东西"
                        f"（最近的 checkpoint：{latest_checkpoint(run_dir) or '无'}）。提示：降低 --lr 或 --muon-lr、"
                        "加长 --warmup-iters、确认 --grad-clip > 0、检查数据里有没有越界或异常的 token；"
                        "bf16 下发散可以先用 --dtype float32 排查")
                grad_norm = clip_grad_norm(model.parameters(), cfg.grad_clip) if cfg.grad_clip > 0 else None
                optimizer.step()
                scheduler.step()
                optimizer.zero_grad(set_to_none=True)
                step += 1
                tokens_seen += tokens_per_step
                dt = time.perf_counter() - t0
                step_times.append(dt)
                record = {"kind": "train", "step": step, "loss": last_loss, "lr": lr,
                          "tokens_per_s": tokens_per_step / dt, "ms": dt * 1000, "tokens_seen": tokens_seen}
                if grad_norm is not None:
                    record["grad_norm"] = float(grad_norm)
                log.write(record)
                bar.update(1)
                bar.set_postfix(loss=f"{last_loss:.4f}", lr=f"{lr:.2e}", tok_s=f"{tokens_per_step / dt:,.0f}",
                                refresh=False)

                if step % cfg.eval_interval == 0 or step == cfg.max_iters:
                    losses = estimate_loss(fwd_model, data, cfg, device, autocast)
                    last_eval = {"train_loss": losses["train"], "val_loss": losses["val"],
                                 "val_bpb": bits_per_byte(losses["val"], data.val_bytes_per_token)}
                    eval_record = {"kind": "eval", "step": step, **last_eval}
                    sample = sample_text(model, data, cfg, device)
                    if sample is not None:
                        eval_record["sample"] = sample
                    log.write(eval_record)
                    history.append(eval_record)
                    bar.write(f"step {step}: train {losses['train']:.4f} | val {losses['val']:.4f} | "
                              f"val bpb {last_eval['val_bpb']:.4f}")
                    if sample is not None:
                        bar.write("  样例：" + sample.replace("\n", "\n        ")[:600])

                callback_stop = bool(on_step and on_step(step, record))  # 先调回调：它可能正是发信号的那一方
                stop_requested = callback_stop or stop.requested
                if step % cfg.checkpoint_interval == 0 or step == cfg.max_iters or stop_requested:
                    ckpt_dir = save(step)
                if stop_requested and step < cfg.max_iters:
                    interrupted = True
                    break
    finally:
        bar.close()
        log.close()
    if step_times or cfg.resume:
        plot_losses(run_dir / "metrics.jsonl", run_dir / "loss.png",
                    f"{cfg.run}: Llama {n_params / 1e6:.2f}M, {cfg.optimizer}")

    timed = step_times[5:] if len(step_times) > 10 else step_times
    result = TrainResult(
        step=step,
        train_loss=last_eval.get("train_loss", last_loss) if not interrupted else last_loss,
        val_loss=last_eval.get("val_loss", math.nan) if not interrupted else math.nan,
        val_bpb=last_eval.get("val_bpb", math.nan) if not interrupted else math.nan,
        tokens_per_s=tokens_per_step * len(step_times) / sum(step_times) if step_times else math.nan,
        ms_per_iter=statistics.median(timed) * 1000 if timed else math.nan,
        wall_s=time.perf_counter() - t_start, num_params=n_params, run_dir=run_dir, checkpoint_dir=ckpt_dir,
        interrupted=interrupted, history=history)
    return result


# ---------------------------------------------------------------------------
# 7. 命令行：TrainConfig 的每个字段对应一个 --kebab-case 参数
# ---------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m training_sys.pretrain", description=__doc__.split("\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--config", help="JSON 配置文件（键 = TrainConfig 的字段名）；命令行参数覆盖其中的值")
    hints = get_type_hints(TrainConfig)
    for f in dataclasses.fields(TrainConfig):
        flag = "--" + f.name.replace("_", "-")
        hint = hints[f.name]
        types = getattr(hint, "__args__", (hint,))
        # default=SUPPRESS：没在命令行出现的参数不进 Namespace，这样才分得清"用户给了"与"默认值"
        if bool in types:
            parser.add_argument(flag, dest=f.name, action=argparse.BooleanOptionalAction, default=argparse.SUPPRESS,
                                help=f"(默认 {f.default})")
        else:
            base = next(t for t in (int, float, str) if t in types)
            parser.add_argument(flag, dest=f.name, type=base, default=argparse.SUPPRESS, help=f"(默认 {f.default})")
    return parser


def config_from_args(argv: list[str]) -> TrainConfig:
    args = vars(build_parser().parse_args(argv))
    config_file = args.pop("config", None)
    base = TrainConfig.from_json(config_file).to_dict() if config_file else {}
    base.update(args)
    return TrainConfig.from_dict(base, source=f"配置文件 {config_file} 与命令行" if config_file else "命令行")


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    try:
        cfg = smoke_config() if (not argv and is_smoke()) else config_from_args(argv)
        result = train(cfg)
    except (ValueError, FileNotFoundError, FloatingPointError) as e:
        # 数据、配置、checkpoint 的问题与发散：一行清楚的错误，不要一长串 traceback
        print(f"错误：{e}", file=sys.stderr)
        raise SystemExit(2 if not isinstance(e, FloatingPointError) else 3) from None
    print(f"loss 曲线：{result.run_dir / 'loss.png'} | 日志：{result.run_dir / 'metrics.jsonl'} | "
          f"checkpoint：{result.checkpoint_dir}")
    if result.interrupted:
        print(f"已中断于第 {result.step} 步并保存；用同样的参数加 --resume 接着训练")
        raise SystemExit(130)
    print(f"{result.ms_per_iter:.1f} ms/iter | 总耗时 {result.wall_s:.1f} s | val bits/byte {result.val_bpb:.4f}")
    print(result.final_line())


if __name__ == "__main__":
    main()
