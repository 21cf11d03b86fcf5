"""预训练循环：数据 → Llama → AdamW/Muon + 调度 + 裁剪 → 评估、样例、checkpoint、日志，可精确续训。

    python -m training_sys.pretrain                                  # 默认：nanoGPT CPU 配方，内置莎士比亚语料（字符级）
    python -m training_sys.pretrain --corpus tinyshakespeare --run shakespeare_char   # 第一次用时下载到 data/corpora/
    python -m training_sys.pretrain --shards checkpoints/tok --n-layer 6 --n-embd 384 --block-size 256
    python -m training_sys.pretrain --run shakespeare_char --resume  # 从 checkpoints/shakespeare_char/latest 接着训练
    python -m training_sys.pretrain --config my_run.json --lr 3e-4   # 配置文件 + 命令行覆盖（命令行优先）
    SMOKE=1 python -m training_sys.pretrain                          # 几秒钟的小规模演示
    torchrun --standalone --nproc_per_node 2 -m training_sys.pretrain --parallel ddp   # 数据并行（zero1/zero2/fsdp/tp 同理）
    torchrun --standalone --nproc_per_node 4 -m training_sys.pretrain --parallel tp --tp-size 2     # 2 dp × 2 tp
    torchrun --standalone --nproc_per_node 2 -m training_sys.pretrain --parallel pp --n-layer 4 --grad-accum 8
                                                      # 流水线：每个 rank 2 层，8 个 micro-batch 走 1F1B（--pp-schedule gpipe）
    torchrun --standalone --nproc_per_node 2 -m training_sys.pretrain --parallel cp   # 上下文并行：每条序列切给 2 个 rank，ring attention

其他模块直接调用函数：`result = train(TrainConfig(run="x", max_iters=100))`，命令行只是它外面薄薄的一层。
模型、优化器、调度器与步策略都可以从外面传进来（`train(cfg, model=..., optimizer=..., strategy=...)`）：
DDP / ZeRO / FSDP / TP / PP / CP 只需实现 training_sys/strategy.py 的钩子，用的是同一个循环。

一步训练做什么（nanoGPT train.py 的骨架）：
1. 梯度累积（accumulate_step）：grad_accum 个 micro-batch，micro-batch k 的平均 loss 乘 n_k / N 再 backward
   （n_k 是它的有效 token 数，N 是整步的）——梯度相加后恰好是 ∇(Σ 逐 token loss / N)，与把它们拼成一个大 batch
   相同，target 里有 -100 时也对；显存只需要一个 micro-batch 的激活。
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
from collections.abc import Callable, Sequence
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
    step_dir_name,
)
from training_sys.data import DataError, LMData, get_batch, load_char_data, load_token_shards
from training_sys.distributed.launch import DistributedError
from training_sys.distributed.parallel import PARALLEL_CHOICES, PP_SCHEDULES, build_strategy, check_same_config
from training_sys.evaluation import bits_per_byte, loss_baselines
from training_sys.optimization import PRECISION_ALIASES, PRECISIONS, SCHEDULE_KINDS
from training_sys.strategy import STRATEGY_HOOKS, SingleDevice, TrainStrategy
from utils.io import atomic_write, is_smoke, output_path, save_figure
from utils.lesson_cli import lesson_args

OPTIMIZERS = ("adamw", "muon")
# 精度名来自 optimization.mixed_precision 的唯一名单；float16 需要动态 loss scaling，本循环不提供
DTYPES = tuple(p for p in PRECISIONS if p != "float16")
IGNORE_INDEX = -100  # 目标里这个值的位置不计 loss（模型契约：nanoGPT / HF 的约定）


# ---------------------------------------------------------------------------
# 1. 配置
# ---------------------------------------------------------------------------
KERNEL_CHOICES = ("torch", "triton")


def _opt(default: Any, help: str) -> Any:
    """一个带说明的配置字段：help 既是代码里的注释，也是 `--help` 里这个参数的说明（单一来源，不会两处说法不一）。"""
    return field(default=default, metadata={"help": help})


@dataclass
class TrainConfig:
    """一次训练的全部设置。默认值 = nanoGPT 的 CPU 配方（4 层、4 头、128 维、block 64、batch 12、2000 步）。"""

    # 运行与输出
    run: str = _opt("pretrain", "运行名：输出写到 checkpoints/<run>/（根目录可用环境变量 LLM_CHECKPOINTS_DIR 改）")
    out_dir: str | None = _opt(None, "直接指定输出目录（给了就不再由 --run 推导）")
    resume: bool = _opt(False, "从 <输出目录>/latest 指向的 checkpoint 接着训练；模型、数据与优化设置必须与原来相同")
    overwrite: bool = _opt(False, "输出目录里已有 checkpoint 时先删掉再从头训练（不给则报错，什么也不覆盖）")
    # 数据（三选一；都不给 = 内置莎士比亚语料，字符级）
    data: str | None = _opt(None, "UTF-8 文本文件的路径，按字符建词表；与 --corpus、--shards 三选一，"
                                  "都不给 = 内置的莎士比亚语料")
    corpus: str | None = _opt(None, "data_pipeline.corpora 里的语料名（例如 shakespeare），字符级")
    shards: str | None = _opt(None, "`python -m data_pipeline.tokenization encode` 的输出目录"
                                    "（train.bin / val.bin / meta.json）")
    val_fraction: float = _opt(0.1, "字符级数据里验证集的比例：取文本末尾这一段（nanoGPT 的做法）")
    vocab_size: int | None = _opt(None, "模型的词表大小；不给 = 数据的词表大小。可以更大（补齐到 64 的倍数矩阵乘更快），"
                                        "不能更小")
    # 模型（model_lab 的 Llama）
    n_layer: int = _opt(4, "Transformer 解码层的层数")
    n_head: int = _opt(4, "注意力头数（n_embd 必须能被它整除）")
    n_kv_head: int | None = _opt(None, "K/V 头数；不给 = n_head（多头注意力 MHA），更小就是 GQA，1 是 MQA")
    n_embd: int = _opt(128, "隐藏维度（HF 的 hidden_size）")
    intermediate_size: int | None = _opt(None, "SwiGLU MLP 的隐层宽度；不给 = 8/3·n_embd 取 8 的倍数，"
                                               "参数量与 4·n_embd 的 GELU MLP 相当")
    rope_theta: float = _opt(10000.0, "RoPE 的基频 θ：越大，最慢的那组旋转周期越长，能区分的距离越远")
    tie_embeddings: bool = _opt(False, "lm_head 与输入嵌入共用同一个矩阵（省 vocab_size × n_embd 个参数）")
    attn_implementation: str = _opt("sdpa", "注意力实现：model_lab 注意力注册表里的名字，sdpa（PyTorch 融合算子）、"
                                            "eager（手写）或 triton_flash（Triton FlashAttention-2）")
    kernels: str = _opt("torch", f"RMSNorm / RoPE / SwiGLU / lm_head+交叉熵的实现，可选 {'、'.join(KERNEL_CHOICES)}："
                                 "triton = inference_engine/kernels 的 Triton 内核（没有 GPU 时在解释器里跑，很慢，只用来验证），"
                                 "同时把默认的注意力 sdpa 换成 triton_flash")
    # 批与步数
    block_size: int = _opt(64, "上下文长度：每个训练样本的 token 数 T")
    batch_size: int = _opt(12, "每个 micro-batch 的序列数 B")
    grad_accum: int = _opt(1, "梯度累积的 micro-batch 数 K；每步 token 数 = batch_size × block_size × grad_accum")
    max_iters: int = _opt(2000, "训练的总步数（优化器更新次数，也是学习率调度的终点）")
    # 优化
    optimizer: str = _opt("adamw", f"优化器，可选 {'、'.join(OPTIMIZERS)}：muon = 隐藏层的 2-D 权重用 Muon，"
                                   "嵌入、lm_head 与 norm 用 AdamW")
    lr: float = _opt(1e-3, "AdamW 的峰值学习率（用 Muon 时它管嵌入、lm_head 与 norm）")
    min_lr: float = _opt(1e-4, "学习率调度的终点值，0 ≤ min_lr ≤ lr")
    lr_schedule: str = _opt("cosine", f"学习率调度的形状，可选 {'、'.join(SCHEDULE_KINDS)}（都先线性预热）")
    warmup_iters: int = _opt(100, "线性预热的步数：学习率从 0 升到峰值")
    weight_decay: float = _opt(0.1, "AdamW 的解耦权重衰减 λ：只作用于 2-D 权重（矩阵与嵌入），norm 的 γ 不衰减")
    beta1: float = _opt(0.9, "AdamW 一阶矩（动量）的衰减率 β1")
    beta2: float = _opt(0.99, "AdamW 二阶矩的衰减率 β2（小模型、短训练常用 0.99，大模型 0.95）")
    grad_clip: float = _opt(1.0, "梯度全局 L2 范数的上限，超过就整体缩放到它；0 = 不裁剪")
    muon_lr: float = _opt(0.02, "Muon 组（隐藏层的 2-D 权重）的峰值学习率")
    muon_momentum: float = _opt(0.95, "Muon 的（Nesterov）动量系数")
    muon_weight_decay: float = _opt(0.0, "Muon 组的解耦权重衰减 λ")
    # 数值与设备
    dtype: str = _opt("float32", f"计算精度，可选 {'、'.join(DTYPES)}：bfloat16 = bf16 autocast（矩阵乘用 bf16，"
                                 "权重、优化器状态与 loss 仍是 fp32）；也接受简写 fp32 / bf16")
    compile: bool = _opt(False, "用 torch.compile 编译前向（第一步多花几十秒编译，之后每步更快）")
    device: str = _opt("auto", "设备：auto（依次尝试 CUDA → MPS → CPU）、cpu、cuda、cuda:1、mps……")
    threads: int | None = _opt(None, "CPU 上 torch 的线程数；不给 = PyTorch 默认。机器被别的进程占满时设 1 往往快得多")
    parallel: str = _opt("none", f"并行方式，可选 {'、'.join(PARALLEL_CHOICES)}：none = 单进程；其余要用 torchrun 启动，"
                                 "例如 `torchrun --standalone --nproc_per_node 2 -m training_sys.pretrain --parallel ddp`。"
                                 "每个数据并行 rank 取全局 batch（batch_size × 数据并行 rank 数）的一份，结果与单进程用这个全局 batch 相同；"
                                 "pp（流水线，每个 rank 一段层）与 cp（上下文并行，每个 rank 每条序列的两块）的各 rank 看同一份数据")
    pp_schedule: str = _opt("1f1b", f"--parallel pp 的调度，可选 {'、'.join(PP_SCHEDULES)}：1f1b 每段同时活着的激活 ≤ 段数，"
                                    "gpipe 要存下全部 grad_accum 个 micro-batch 的激活；两者梯度相同。micro-batch 数 = grad_accum")
    tp_size: int | None = _opt(None, "--parallel tp 的张量并行组大小；不给 = 全部 rank（纯张量并行）。"
                                     "小于 rank 数时其余维度做数据并行：dp = rank 数 / tp_size，每个 tp 组看全局 batch 的一份")
    seed: int = _opt(1337, "随机种子：初始化、训练数据的抽样、评估与样例的随机数都由它派生")
    # 评估、样例、checkpoint、日志
    eval_interval: int = _opt(250, "每隔多少步评估一次 train / val loss（最后一步总会评估）")
    eval_iters: int = _opt(20, "每次评估用多少个 batch 估计 loss（nanoGPT 的 CPU 配方：20）")
    sample_tokens: int = _opt(200, "每次评估后生成多少个 token 的样例（top-k 采样）；0 = 不生成")
    checkpoint_interval: int = _opt(500, "每隔多少步存一次 checkpoint（最后一步与 Ctrl-C 时总会存）")
    keep_checkpoints: int = _opt(2, "只保留最近的几个 step_* checkpoint 目录，更早的删掉")
    progress: bool = _opt(True, "显示 tqdm 进度条（--no-progress 关掉，例如输出重定向到文件时）")

    # 续训时允许与原配置不同的字段：它们不改变训练的是什么（模型、数据、优化）。
    # 注意"逐位一致"只在同样的设备与线程数下成立：device / threads / compile 改变浮点运算的顺序，结果只在舍入误差内相同。
    # parallel 可以换：checkpoint 总是完整的 HF 权重 + 单进程格式的优化器状态；但全局 batch = batch_size × 数据并行 rank 数，
    # 要接着训练"同一个东西"，rank 数得与原来相同
    RESUME_MAY_DIFFER = ("resume", "overwrite", "compile", "eval_interval", "eval_iters", "sample_tokens",
                         "checkpoint_interval", "keep_checkpoints", "progress", "run", "out_dir", "device", "threads",
                         "parallel", "pp_schedule", "tp_size", "kernels")

    def __post_init__(self) -> None:
        # 简写换成正式名字（bf16 → bfloat16）：写进 config.json 与续训时比较的都是同一个名字
        if isinstance(self.dtype, str):
            self.dtype = PRECISION_ALIASES.get(self.dtype, self.dtype)

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
            aliases = "、".join(f"{a} = {c}" for a, c in PRECISION_ALIASES.items() if c in DTYPES)
            raise ValueError(f"dtype={self.dtype!r} 不支持；可选 {DTYPES}（也接受简写：{aliases}）。"
                             "float16 需要动态 loss scaling（optimization.DynamicLossScaler），本循环不提供")
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
        if self.parallel not in PARALLEL_CHOICES:
            raise ValueError(f"parallel={self.parallel!r} 未知；可选 {PARALLEL_CHOICES}")
        if self.kernels not in KERNEL_CHOICES:
            raise ValueError(f"kernels={self.kernels!r} 未知；可选 {KERNEL_CHOICES}")
        if self.pp_schedule not in PP_SCHEDULES:
            raise ValueError(f"pp_schedule={self.pp_schedule!r} 未知；可选 {PP_SCHEDULES}")
        if self.tp_size is not None:
            if not isinstance(self.tp_size, int) or self.tp_size < 1:
                raise ValueError(f"tp_size={self.tp_size!r} 必须是正整数（或不给 = 全部 rank）")
            if self.parallel != "tp":
                raise ValueError(f"tp_size={self.tp_size} 只对 --parallel tp 有意义（现在是 --parallel {self.parallel}）；"
                                 "去掉 --tp-size，或改用 --parallel tp")
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


def model_backends(cfg: TrainConfig) -> tuple[str, str]:
    """(attn_implementation, kernels)：--kernels triton 时注册 Triton 内核（import inference_engine.backends），
    并把默认的注意力 sdpa 换成 triton_flash；显式给的其他注意力（eager）保持不变。"""
    attn = cfg.attn_implementation
    if cfg.kernels == "triton" or attn == "triton_flash":
        import inference_engine.backends  # noqa: F401  （导入即注册 triton_flash 与 triton）
        if cfg.kernels == "triton" and attn == "sdpa":
            attn = "triton_flash"
    return attn, cfg.kernels


def build_model(cfg: TrainConfig, vocab_size: int):
    from model_lab import Llama, LlamaConfig

    attn_implementation, kernels = model_backends(cfg)
    config = LlamaConfig(
        vocab_size=vocab_size, hidden_size=cfg.n_embd,
        intermediate_size=cfg.intermediate_size or swiglu_hidden(cfg.n_embd),
        num_hidden_layers=cfg.n_layer, num_attention_heads=cfg.n_head, num_key_value_heads=cfg.n_kv_head,
        max_position_embeddings=cfg.block_size, rope_theta=cfg.rope_theta,
        tie_word_embeddings=cfg.tie_embeddings, attn_implementation=attn_implementation, kernels=kernels,
        bos_token_id=None, eos_token_id=None,
    )
    return Llama(config)


def build_optimizer(cfg: TrainConfig, model: torch.nn.Module) -> torch.optim.Optimizer:
    from training_sys.optimization import AdamW, Muon, build_muon_param_groups, weight_decay_param_groups

    if cfg.optimizer == "muon":
        groups = build_muon_param_groups(
            model, lr=cfg.muon_lr, momentum=cfg.muon_momentum, weight_decay=cfg.muon_weight_decay,
            adamw_lr=cfg.lr, adamw_betas=(cfg.beta1, cfg.beta2), adamw_weight_decay=cfg.weight_decay)
        # Newton–Schulz 在 GPU 上用 bf16（张量核，快且够准）；CPU 大多没有原生 bf16 矩阵乘，
        # 在这台 AVX2 机器上 bf16 的 NS5 比 fp32 慢约 20 倍（128×128：23 ms 对 1 ms），所以 CPU 上用 fp32
        on_cuda = next(model.parameters()).device.type == "cuda"
        return Muon(groups, ns_dtype=torch.bfloat16 if on_cuda else torch.float32)
    # 只对 2-D 参数（矩阵乘权重与嵌入）做 weight decay：norm 的 γ 是逐通道的尺度，把它往 0 拉只会伤害表示
    groups = weight_decay_param_groups(model, cfg.weight_decay)
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
    """从一个换行符开始生成 sample_tokens 个 token（上下文超过 block_size 时只保留最后 block_size 个，nanoGPT 的做法）。

    采样本身交给 model_lab.generation.sample_next_token（全仓库唯一的 temperature / top-k 实现）；
    这里不用 model.generate，因为它不裁剪上下文：位置超过 block_size 的 RoPE 角度训练时从没见过。
    每次都用同一个种子的 Generator：样例可复现，而且不碰全局随机数（续训的逐位一致依赖这一点）。
    """
    from model_lab.generation import sample_next_token

    if data.decode is None or cfg.sample_tokens == 0:
        return None
    prompt = (data.encode("\n") if data.encode else []) or [0]
    ids = torch.tensor([prompt], dtype=torch.long, device=device)
    gen = torch.Generator(device=device).manual_seed(cfg.seed + 3)
    model.eval()
    for _ in range(cfg.sample_tokens):
        logits = model(ids[:, -cfg.block_size:])[:, -1, :data.vocab_size]  # (1, V)
        # 模型的词表可以比数据的大（--vocab-size 补齐到 64 或 tp 的倍数）：多出的 id 解码器不认识，只在数据的词表里抽
        next_id = sample_next_token(logits, temperature=temperature, top_k=top_k, generator=gen)  # (1,)
        ids = torch.cat([ids, next_id[:, None]], dim=1)
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


def loss_figure(records: list[dict[str, Any]], title: str, baselines: dict[str, float] | None = None):
    """metrics.jsonl 的记录 → loss 曲线的 Figure（横轴是优化器步数，纵轴 nats/token），baselines 画成水平虚线。

    横轴的读法：每步一行的 train loss 记在第 k 步，是第 k 次更新的那次前向算出的（权重已更新 k−1 次，第 1 步就是
    初始模型）；评估点记在第 k 步，是 k 次更新之后的模型——与日志里的 "step k" 一致。
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    train = [(r["step"], r["loss"]) for r in records if r["kind"] == "train"]
    evals = [r for r in records if r["kind"] == "eval"]
    fig, ax = plt.subplots(figsize=(10, 4.5))
    if train:
        ax.plot(*zip(*train), lw=0.6, alpha=0.5, label="train (per step)")
    if evals:
        joined = len(evals) >= 3  # 两个点连成的线不是曲线：少于 3 次评估时只画点
        ax.plot([r["step"] for r in evals], [r["train_loss"] for r in evals], "o-" if joined else "o",
                label="train (eval)")
        ax.plot([r["step"] for r in evals], [r["val_loss"] for r in evals], "s-" if joined else "s",
                label="val (eval)")
    for (name, value), color in zip((baselines or {}).items(), ("gray", "tab:purple")):
        ax.axhline(value, color=color, ls="--", lw=0.9, label=f"{name} baseline {value:.3f}")
    ax.set(xlabel="optimizer step", ylabel="loss (nats/token)", title=title)
    ax.grid(alpha=0.3)
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8)  # 图例放在坐标区外：不挡曲线与基线
    fig.tight_layout()
    return fig


def plot_losses(metrics_path: Path, png_path: Path, title: str, baselines: dict[str, float] | None = None) -> Path:
    # 原子替换（save_figure）：看图的人不会读到画了一半的 PNG
    return save_figure(loss_figure(read_metrics(metrics_path), title, baselines), png_path, dpi=110)


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
    # 验证集上的两条基线（nats/token）：{"uniform": ln V, "unigram": …}，evaluation.loss_baselines 算的；只有主进程有
    baselines: dict[str, float] = field(default_factory=dict)

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


def rank_slice(batch: tuple[torch.Tensor, torch.Tensor], batch_size: int, rank: int
               ) -> tuple[torch.Tensor, torch.Tensor]:
    """全局 batch (x, y) 的第 rank 份（每份 batch_size 条）。只有一份时原样返回。"""
    x, y = batch
    if x.size(0) == batch_size:
        return x, y
    lo = rank * batch_size
    return x[lo:lo + batch_size], y[lo:lo + batch_size]


def accumulate_step(fwd_model: torch.nn.Module, micro_batches: Sequence[tuple[torch.Tensor, torch.Tensor]],
                    strategy: TrainStrategy | None = None,
                    autocast: Callable[[], contextlib.AbstractContextManager] = contextlib.nullcontext,
                    sync_model: torch.nn.Module | None = None) -> torch.Tensor:
    """一步里所有 micro-batch 的前向 + 反向，梯度累加进 .grad；返回本 rank 的这一步 loss（0-d，已 detach）。

    梯度 = ∇( Σ_k Σ_{t∈k} ℓ_t / N )：N 是这一步所有 micro-batch（所有数据并行 rank）里 target ≠ -100 的 token 数，
    与把 K 个 micro-batch 拼成一个大 batch、对它的平均 loss 求梯度相同。模型返回的是 micro-batch k 的平均
    L_k = Σ_{t∈k} ℓ_t / n_k，所以它的权重是 n_k / N：Σ_k (n_k / N)·L_k = Σ_k Σ_{t∈k} ℓ_t / N。
    常见的"每份除以 K"只在 n_k 全相等时才对；SFT 把提示词标成 -100 后 n_k 各不相同，它会给 token 少的
    micro-batch 过大的权重（optimization/grad_accumulation.py 把两种写法并排比较）。返回值 Σ_k (n_k/N)·L_k
    就是 token 加权的平均 loss——日志里的 loss 正是梯度所对应的目标函数。

    micro_batches：[(x, y), ...]，形状都是 (B, T)；fwd_model(x, y) → (logits, 平均 loss)（模型契约）。
    sync_model：交给 strategy.no_sync 的模型（strategy.wrap_model 的结果）；fwd_model 是它再 torch.compile 之后的样子。
    """
    strategy = SingleDevice() if strategy is None else strategy
    sync_model = fwd_model if sync_model is None else sync_model
    if len(micro_batches) == 0:
        raise ValueError("micro_batches 为空：一步至少要有一个 (x, y)")
    # 先数有效 token（targets 已在手边，不必先做前向）；K 个计数一次读回，GPU 上只同步一次
    counts = torch.stack([(y != IGNORE_INDEX).sum() for _, y in micro_batches]).tolist()
    total = strategy.global_tokens(sum(counts))
    if total == 0:
        raise ValueError(f"这一步所有 micro-batch 的 target 都是 {IGNORE_INDEX}：没有可学习的 token；检查数据的掩码")
    # 数据并行的梯度同步是对 data_parallel_size 个 rank 求平均：分母先除以它，平均之后恰好是 1/N
    denom = total / strategy.data_parallel_size
    step_loss = None
    last = len(micro_batches) - 1
    for k, ((x, y), n) in enumerate(zip(micro_batches, counts)):
        with strategy.no_sync(sync_model, last_micro_batch=k == last):
            with autocast():
                logits, loss = fwd_model(x, y)
            if n:
                # K=1 且没有 -100（预训练的常态）时权重恰好是 1，省掉一次乘法与它的反向节点
                weighted = loss if n == denom else loss * (n / denom)
            else:
                # 没有有效 token 的 micro-batch：平均 loss 是 0/0 = NaN，它的贡献应当是 0。仍然做一次梯度为 0 的反向：
                # 数据并行要求每个 rank 的每个 micro-batch 都反向，最后一个还要触发梯度同步
                # 融合的 lm_head + 交叉熵（kernels="triton"）不返回 logits：对 loss 本身乘 0。它的值是 0/0 = NaN，
                # nan_to_num 的反向把梯度按"输入是否有限"置零，内核里存的梯度本来就是 0：结果仍是全 0 的梯度
                weighted = (logits.float().sum() if logits is not None else loss.nan_to_num(0.0)) * 0.0
            strategy.backward(weighted)
        step_loss = weighted.detach() if step_loss is None else step_loss + weighted.detach()
    return step_loss


def train(cfg: TrainConfig, *, model: torch.nn.Module | None = None, optimizer: torch.optim.Optimizer | None = None,
          scheduler: Any | None = None, strategy: TrainStrategy | None = None,
          on_step: Callable[[int, dict[str, Any]], bool | None] | None = None) -> TrainResult:
    """按 cfg 训练，返回 TrainResult。

    部件可以从外面给（docs/ARCHITECTURE.md §10：训练器从外面接收模型、优化器与步策略，DDP / ZeRO / FSDP 包装同一个循环）：
    - model：不给 = build_model(cfg, …)。给了就用它本身与它所在的设备（cfg 的模型字段与 device 只作记录）；
      它要有 save_pretrained（checkpoint 是 HF 模型目录），forward(x, y) 返回 (logits, 平均 loss)。
    - optimizer：不给 = build_optimizer(cfg, model)；给了必须同时给 model（优化器管的正是那个模型的参数）。
    - scheduler：不给 = build_scheduler(cfg, optimizer)；给了必须同时给 optimizer。要有 step / state_dict /
      load_state_dict（torch.optim.lr_scheduler 的接口），每个优化器步之后调用一次。
    - strategy：不给 = SingleDevice()；见 training_sys/strategy.py。
    on_step(step, record) 每步之后调用，返回 True 则像 Ctrl-C 一样保存并停止。
    """
    from tqdm import tqdm

    from training_sys.optimization import autocast_context
    from utils.torch_playground import setup_seed

    t_start = time.perf_counter()
    if strategy is None:
        # --parallel：torchrun 下建进程组并构造对应的策略（none = SingleDevice）
        strategy = build_strategy(cfg.parallel, cfg.to_dict())
    # 先核对各 rank 的配置、再校验：只有一个 rank 的配置不合法时，其余 rank 不会在第一次通信里干等到超时
    check_same_config(cfg.to_dict())
    cfg.validate()
    _check_parts(model, optimizer, scheduler, strategy)
    main_proc = strategy.is_main_process
    run_dir = _run_dir(cfg)
    if main_proc:
        run_dir.mkdir(parents=True, exist_ok=True)
    data = build_data(cfg)
    vocab_size = resolve_vocab_size(cfg, data)
    if cfg.threads is not None:
        # 小模型的每个算子只有几微秒的活：线程数超过空闲核数时，OpenMP 线程互相等待的开销会让一步慢上好几倍
        torch.set_num_threads(cfg.threads)

    setup_seed(cfg.seed)
    if model is None:
        device = resolve_device(cfg.device)
        model = build_model(cfg, vocab_size).to(device)
    else:
        device = _external_model_device(model, cfg, data)
    n_params = sum(p.numel() for p in model.parameters())  # 切分之前数：parameters() 已对共享权重去重
    model = strategy.prepare_model(model)  # 张量并行 / FSDP 在这里切分参数：必须早于建优化器
    optimizer = strategy.prepare_optimizer(build_optimizer(cfg, model) if optimizer is None else optimizer)
    scheduler = build_scheduler(cfg, optimizer) if scheduler is None else scheduler
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
            strategy.load_full_state(model, optimizer, tensors, state["optimizer"], strict=not cfg.tie_embeddings)
            scheduler.load_state_dict(state["scheduler"])
        except (RuntimeError, ValueError, KeyError) as e:
            raise CheckpointError(f"{ckpt_dir} 与当前模型/优化器不匹配：{str(e)[:300]}") from None
        restore_rng_state(state["rng"], data_gen)
        start_step = int(state["step"])
        tokens_seen = int(state["tokens_seen"])
    else:
        if main_proc:
            _prepare_fresh_run_dir(run_dir, cfg)
        tokens_seen = 0
    if main_proc:
        atomic_write(run_dir / "config.json", json.dumps(cfg.to_dict(), indent=2, ensure_ascii=False) + "\n")

    wrapped = strategy.wrap_model(model)
    # 数据并行：每个 rank 用同一个种子抽出整个全局 batch（batch_size × dp 条），只留自己那一份——
    # 于是 N 个 rank 合起来看到的数据，与单进程用 batch_size × dp 训练时逐条相同（DDP 的等价性测试依赖这一点），
    # 续训也只需要一个数据生成器的状态
    dp_size, dp_rank = strategy.data_parallel_size, strategy.data_parallel_rank
    fwd_model = torch.compile(wrapped) if cfg.compile else wrapped

    def autocast() -> contextlib.AbstractContextManager:
        return autocast_context(cfg.dtype, device.type)

    def save(step: int) -> Path:
        # 每个 rank 都进入 full_state（FSDP / ZeRO 在里面做集合通信），只有主进程写文件
        with strategy.full_state(model, optimizer) as (full_model, optimizer_state):
            if not main_proc:
                return run_dir / step_dir_name(step)
            state = {"step": step, "tokens_seen": tokens_seen, "config": cfg.to_dict(), "vocab_size": vocab_size,
                     "optimizer": optimizer_state, "scheduler": scheduler.state_dict(),
                     "rng": capture_rng_state(data_gen)}
            return save_checkpoint(run_dir, full_model, state, data.extra_files, cfg.keep_checkpoints)

    log = MetricsLog(run_dir / "metrics.jsonl", keep_up_to_step=start_step if cfg.resume else None) if main_proc else None
    tokens_per_step = cfg.batch_size * cfg.block_size * cfg.grad_accum * strategy.data_parallel_size
    baselines: dict[str, float] = {}
    if main_proc:
        # 什么都没学的模型在验证集上的 loss：均匀分布 ln V，只看 token 频率的 unigram（数据的词表，不是补齐后的）
        baselines = loss_baselines(data.train, data.val, data.vocab_size)
        print(f"[pretrain] {data.source} | vocab {vocab_size} | train {len(data.train):,} / val {len(data.val):,} tokens"
              f" | {type(model).__name__} {n_params / 1e6:.2f}M 参数 | {type(optimizer).__name__} | {device} {cfg.dtype}"
              f" | {tokens_per_step} tokens/步 | {run_dir}" + (f" | 从第 {start_step} 步续训" if cfg.resume else ""))
        print(f"[pretrain] 基线（验证集，nats/token）：均匀分布 ln V = {baselines['uniform']:.4f}，"
              f"unigram（训练集的 token 频率）= {baselines['unigram']:.4f}")

    step_times: list[float] = []
    history: list[dict[str, Any]] = []
    last_loss = math.nan
    last_eval: dict[str, float] = {}
    interrupted = False
    model.train()
    bar = tqdm(total=cfg.max_iters, initial=start_step, desc=cfg.run, disable=not (cfg.progress and main_proc),
               dynamic_ncols=True, mininterval=0.5)
    try:
        with GracefulStop() as stop:
            step = start_step
            while step < cfg.max_iters:
                t0 = time.perf_counter()
                lr = optimizer.param_groups[0]["lr"]
                # 一步的 K 个 micro-batch 先全部取出（按同一个 Generator 依次抽，序列与逐个取时相同）：
                # 分母要用整步的有效 token 数，必须在第一次反向之前知道
                micro_batches = [rank_slice(get_batch(data.train, cfg.batch_size * dp_size, cfg.block_size, data_gen,
                                                      device), cfg.batch_size, dp_rank)
                                 for _ in range(cfg.grad_accum)]
                # 默认就是 accumulate_step；流水线并行换成 1F1B / GPipe，上下文并行先切序列（strategy.py）
                step_loss = strategy.forward_backward(fwd_model, micro_batches, autocast=autocast, sync_model=wrapped)
                last_loss = strategy.reduce_loss(step_loss)
                if not math.isfinite(last_loss):
                    raise TrainingDivergedError(
                        f"第 {step + 1} 步的 loss = {last_loss}（非有限），训练停止，没有保存任何东西"
                        f"（最近的 checkpoint：{latest_checkpoint(run_dir) or '无'}）。提示：降低 --lr 或 --muon-lr、"
                        "加长 --warmup-iters、确认 --grad-clip > 0、检查数据里有没有越界或异常的 token；"
                        "bf16 下发散可以先用 --dtype float32 排查")
                grad_norm = strategy.clip_grad_norm(model, cfg.grad_clip) if cfg.grad_clip > 0 else None
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
                if log is not None:
                    log.write(record)
                bar.update(1)
                bar.set_postfix(loss=f"{last_loss:.4f}", lr=f"{lr:.2e}", tok_s=f"{tokens_per_step / dt:,.0f}",
                                refresh=False)

                if step % cfg.eval_interval == 0 or step == cfg.max_iters:
                    # 所有 rank 都进入 eval_models（流水线并行在这里把各段权重收到 rank 0），只有 runs_evaluation 的 rank 评估
                    with strategy.eval_models(model, fwd_model) as (loss_model, sample_model):
                        if strategy.runs_evaluation:
                            last_eval = evaluate(loss_model, sample_model, data, cfg, device, autocast, step, history,
                                                 log, bar)

                callback_stop = bool(on_step and on_step(step, record))  # 先调回调：它可能正是发信号的那一方
                stop_requested = strategy.stop_requested(callback_stop or stop.requested)
                if step % cfg.checkpoint_interval == 0 or step == cfg.max_iters or stop_requested:
                    ckpt_dir = save(step)
                if stop_requested and step < cfg.max_iters:
                    interrupted = True
                    break
    finally:
        bar.close()
        if log is not None:
            log.close()
    if main_proc and (step_times or cfg.resume):
        plot_losses(run_dir / "metrics.jsonl", run_dir / "loss.png",
                    f"{cfg.run}: {type(model).__name__} {n_params / 1e6:.2f}M, {cfg.optimizer}", baselines)

    timed = step_times[5:] if len(step_times) > 10 else step_times
    result = TrainResult(
        step=step,
        train_loss=last_eval.get("train_loss", last_loss) if not interrupted else last_loss,
        val_loss=last_eval.get("val_loss", math.nan) if not interrupted else math.nan,
        val_bpb=last_eval.get("val_bpb", math.nan) if not interrupted else math.nan,
        tokens_per_s=tokens_per_step * len(step_times) / sum(step_times) if step_times else math.nan,
        ms_per_iter=statistics.median(timed) * 1000 if timed else math.nan,
        wall_s=time.perf_counter() - t_start, num_params=n_params, run_dir=run_dir, checkpoint_dir=ckpt_dir,
        interrupted=interrupted, history=history, baselines=baselines)
    return result


def evaluate(loss_model: torch.nn.Module, sample_model: torch.nn.Module, data: LMData, cfg: TrainConfig,
             device: torch.device, autocast: Callable[[], contextlib.AbstractContextManager], step: int,
             history: list[dict[str, Any]], log: MetricsLog | None, bar: Any) -> dict[str, float]:
    """一次评估：train / val loss、bits/byte 与样例；记进 history，主进程写日志。返回 last_eval。"""
    losses = estimate_loss(loss_model, data, cfg, device, autocast)
    last_eval = {"train_loss": losses["train"], "val_loss": losses["val"],
                 "val_bpb": bits_per_byte(losses["val"], data.val_bytes_per_token)}
    eval_record = {"kind": "eval", "step": step, **last_eval}
    sample = sample_text(sample_model, data, cfg, device)
    if sample is not None:
        eval_record["sample"] = sample
    history.append(eval_record)
    if log is not None:
        log.write(eval_record)
        bar.write(f"step {step}: train {losses['train']:.4f} | val {losses['val']:.4f} | "
                  f"val bpb {last_eval['val_bpb']:.4f}")
        if sample is not None:
            bar.write("  样例：" + sample.replace("\n", "\n        ")[:600])
    return last_eval


def _check_parts(model: Any, optimizer: Any, scheduler: Any, strategy: Any) -> None:
    """外面给的部件：缺了哪个、类型不对，都在训练开始前说清楚。"""
    if optimizer is not None and model is None:
        raise ValueError("给了 optimizer 却没给 model：优化器管的是某个模型的参数，请把那个模型一起传进来"
                         "（train(cfg, model=model, optimizer=optimizer)），或两个都不给、由 cfg 构建")
    if scheduler is not None and optimizer is None:
        raise ValueError("给了 scheduler 却没给 optimizer：调度器改的是某个优化器的学习率，请把那个优化器一起传进来")
    if model is not None:
        if not isinstance(model, torch.nn.Module):
            raise TypeError(f"model 应是 torch.nn.Module，收到 {type(model).__name__}")
        if not callable(getattr(model, "save_pretrained", None)):
            raise TypeError(f"model（{type(model).__name__}）没有 save_pretrained：checkpoint 是 Hugging Face 模型目录，"
                            "用 model_lab 的 Llama / GPT2，或给模型实现 save_pretrained(dir)")
    if optimizer is not None and not isinstance(optimizer, torch.optim.Optimizer):
        raise TypeError(f"optimizer 应是 torch.optim.Optimizer，收到 {type(optimizer).__name__}")
    if scheduler is not None:
        missing = [m for m in ("step", "state_dict", "load_state_dict") if not callable(getattr(scheduler, m, None))]
        if missing:
            raise TypeError(f"scheduler（{type(scheduler).__name__}）缺少方法 {missing}：用 torch.optim.lr_scheduler 的调度器")
    if not isinstance(strategy, TrainStrategy):
        missing = [name for name in STRATEGY_HOOKS if not hasattr(strategy, name)]
        raise TypeError(f"strategy（{type(strategy).__name__}）缺少钩子 {missing}：继承 "
                        "training_sys.strategy.SingleDevice，只覆盖要改的钩子")


def _external_model_device(model: torch.nn.Module, cfg: TrainConfig, data: LMData) -> torch.device:
    """外面给的模型：用它所在的设备；词表装不下数据时报错（否则 embedding 查表会越界）。"""
    device = next(model.parameters()).device
    if cfg.device != "auto" and torch.device(cfg.device) != device:
        raise ValueError(f"cfg.device={cfg.device!r}，但传入的 model 在 {device} 上：先 model.to({cfg.device!r})，"
                         "或把 device 设为 auto（用模型所在的设备）")
    model_vocab = getattr(getattr(model, "config", None), "vocab_size", None)
    if model_vocab is not None and model_vocab < data.vocab_size:
        raise DataError(f"传入的 model 的 vocab_size={model_vocab} 小于数据的词表大小 {data.vocab_size}（{data.source}）："
                        "数据里的 token id 会越界")
    return device


# ---------------------------------------------------------------------------
# 7. 命令行：TrainConfig 的每个字段对应一个 --kebab-case 参数
# ---------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m training_sys.pretrain", description=__doc__.split("\n")[0],
                                     add_help=False)
    parser.add_argument("-h", "--help", action="help", help="打印这份参数说明并退出")
    parser.add_argument("--config", help="JSON 配置文件（键 = TrainConfig 的字段名）；命令行参数覆盖其中的值（默认 不用）")
    hints = get_type_hints(TrainConfig)
    for f in dataclasses.fields(TrainConfig):
        flag = "--" + f.name.replace("_", "-")
        hint = hints[f.name]
        types = getattr(hint, "__args__", (hint,))
        # 说明写在 TrainConfig 的字段上（_opt），默认值从字段读：两者都只有一个来源。
        # argparse 的 help 里 % 是格式符，要写成 %%
        help_text = (f.metadata["help"] + f"（默认 {_shown_default(f.default)}）").replace("%", "%%")
        # default=SUPPRESS：没在命令行出现的参数不进 Namespace，这样才分得清"用户给了"与"默认值"
        if bool in types:
            parser.add_argument(flag, dest=f.name, action=argparse.BooleanOptionalAction, default=argparse.SUPPRESS,
                                help=help_text)
        else:
            base = next(t for t in (int, float, str) if t in types)
            parser.add_argument(flag, dest=f.name, type=base, default=argparse.SUPPRESS, help=help_text)
    return parser


def _shown_default(value: Any) -> str:
    if value is None:
        return "不给"
    if isinstance(value, bool):
        return "开" if value else "关"
    return str(value)


def config_from_args(argv: list[str]) -> TrainConfig:
    args = vars(lesson_args(__doc__, build_parser(), argv))
    config_file = args.pop("config", None)
    base = TrainConfig.from_json(config_file).to_dict() if config_file else {}
    base.update(args)
    return TrainConfig.from_dict(base, source=f"配置文件 {config_file} 与命令行" if config_file else "命令行")


# 不带参数运行时的实测 val loss（nats/token，eval_iters 个随机 batch 的估计），打印在基线旁边
MEASURED_VAL_LOSS = {
    "default": "默认配置（nanoGPT CPU 配方：4 层 128 维、block 64、batch 12、2000 步，内置莎士比亚字符级）实测 1.69"
               "（同一配方在 tinyshakespeare 上 1.70，见 benchmarks/RESULTS.md 的 training_nanogpt_recipe 段）",
    "smoke": "SMOKE 配置（2 层 32 维、30 步）实测 3.83：才刚离开均匀分布，还没到 unigram",
}


def baseline_summary(val_loss: float, baselines: dict[str, float], config: str | None) -> str:
    """结尾的一行：val loss 与两条基线并排，config 是 "default" / "smoke" 时再加上实测的参考值。"""
    line = (f"val loss {val_loss:.4f} nats/token（均匀分布 ln V = {baselines['uniform']:.4f}，"
            f"unigram = {baselines['unigram']:.4f}")
    if config in MEASURED_VAL_LOSS:
        line += f"；{MEASURED_VAL_LOSS[config]}"
    return line + "）"


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    main_proc = True
    try:
        cfg = smoke_config() if (not argv and is_smoke()) else config_from_args(argv)
        result = train(cfg)
    except (ValueError, FileNotFoundError, FloatingPointError, DistributedError) as e:
        # 数据、配置、checkpoint 的问题、分布式环境不对（没有用 torchrun 启动）与发散：一行清楚的错误，不要一长串 traceback
        print(f"错误：{e}", file=sys.stderr)
        raise SystemExit(2 if not isinstance(e, FloatingPointError) else 3) from None
    finally:
        import torch.distributed as dist

        if dist.is_initialized():  # --parallel：进程组是 build_strategy 建的，在这里拆掉
            main_proc = dist.get_rank() == 0  # 只有 rank 0 打印总结（各 rank 的结果相同）
            dist.destroy_process_group()
    if main_proc:
        print(f"loss 曲线：{result.run_dir / 'loss.png'} | 日志：{result.run_dir / 'metrics.jsonl'} | "
              f"checkpoint：{result.checkpoint_dir}")
    if result.interrupted:
        if main_proc:
            print(f"已中断于第 {result.step} 步并保存；用同样的参数加 --resume 接着训练")
        raise SystemExit(130)
    if main_proc:
        print(f"{result.ms_per_iter:.1f} ms/iter | 总耗时 {result.wall_s:.1f} s | val bits/byte {result.val_bpb:.4f}")
        if result.baselines:
            print(baseline_summary(result.val_loss, result.baselines,
                                   ("smoke" if is_smoke() else "default") if not argv else None))
        print(result.final_line())  # 最后一行的格式是约定（模块说明），别的脚本按它解析


if __name__ == "__main__":
    main()
