"""在一个模型目录上比较各量化方案：模型字节数、held-out 文本上的 bits/byte、贪心解码的 tokens/s，一张表。

    python -m inference_engine.quantization checkpoints/shakespeare_cpu                 # make run 的输出目录
    python -m inference_engine.quantization DIR --scheme int8 gptq --calib 4096 --out checkpoints/quantized
    python -m inference_engine.quantization DIR --text held_out.txt --dtype bfloat16    # 自己的文本；bf16 解码
    SMOKE=1 python -m inference_engine.quantization                                     # 随机小 Llama，几秒钟

数据从哪来（inference_engine 不 import data_pipeline / training_sys，只读文件）：
- 默认读 `make run` 写在目录里的 `data/val.bin`（验证集 token，dtype 见 data/meta.json）做评估，
  `data/train.bin` 的开头做校准——校准数据来自训练分布、评估在 held-out 上，与 GPTQ / AWQ 论文的做法相同；
- `--text FILE`：用目录里的 tokenizer.json（`tokenizers` 库）编码这个文件，开头 --calib 个 token 做校准、
  其后 --eval-tokens 个做评估（两段不重叠）。

三列数字各量的是什么：
- **模型字节**：state_dict 里每个张量一次（= model.safetensors 的数据部分），比值对 fp32 模型。
  量化层存码 + scale（int4 每 128 个权重再加 2×2 字节的 bf16 scale 与零点：4.25 位/权重），
  嵌入、lm_head 与 norm 保持原样——小模型里它们占的比例大，整体比值远不到 4× / 8×。
- **bits/byte**：held-out token 切成不重叠的 block_size 窗口，总 NLL（nats）÷ ln 2 ÷ 被预测 token 解码后的 UTF-8 字节数；
  与分词器无关，和 make run 的 eval.json 同一个定义（training_sys/evaluation.py，这里不 import 它，单独算）。
- **decode tokens/s**：1 个线程、batch 1、贪心生成 --decode-tokens 个 token（含一个 8 token 提示的 prefill），
  3 次取中位数，量的是进程 CPU 时间（共享机器上墙钟大半是排队）。小模型的解码被 Python 与算子调度的固定开销主导，量化省下的带宽显不出来；
  权重大于缓存时才是带宽瓶颈（见 benchmarks/quantization_matmul.py）。int8 / int4 的 CPU 内核只有 bf16 激活走快路径
  （int8.py / int4.py 的说明），要看它们的速度用 --dtype bfloat16。

某方案在某层做不了（组大小不整除 in_features，例如 make run 的 down_proj 是 344 = 8·43 列，不是 32 的倍数）时，
这一层留在浮点，表下列出——不静默跳过。
"""

from __future__ import annotations

import argparse
import copy
import json
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from inference_engine.quantization.apply import (
    CALIBRATED_SCHEMES,
    SCHEMES,
    model_nbytes,
    quantize,
    quantized_modules,
    save_quantized,
    unsupported_layers,
)
from utils.io import atomic_path, checkpoints_dir, is_smoke
from utils.lesson_cli import lesson_args, timing_note
from utils.torch_playground import benchmark_interleaved

DEFAULT_RUN = "shakespeare_cpu"  # make run 的默认运行名（<语料>_<预设>）
PROMPT_TOKENS = 8
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}


# ---------------------------------------------------------------------------------------------------
# 1. 度量：bits/byte、解码速度
# ---------------------------------------------------------------------------------------------------


@torch.no_grad()
def evaluate_bpb(model: nn.Module, ids: Tensor, block_size: int, count_bytes: Callable[[list[int]], int],
                 batch_size: int = 8) -> dict[str, float]:
    """ids (N,) 切成不重叠的 block_size 窗口，返回 {tokens, bytes, nll_nats, bits_per_byte}。

    bits/byte = Σ NLL / ln 2 / Σ 被预测 token 的 UTF-8 字节数。每个 token 只被预测一次（窗口不重叠），
    所以是这段文本的精确交叉熵；窗口开头的 token 上下文短，比滑动窗口略高——各方案用同一组窗口，比较是公平的。
    """
    n_windows = (len(ids) - 1) // block_size
    if n_windows < 1:
        raise ValueError(f"评估文本只有 {len(ids)} 个 token，不够一个 block_size={block_size} 的窗口：给更长的文本")
    n = n_windows * block_size
    x, y = ids[:n].view(n_windows, block_size), ids[1:n + 1].view(n_windows, block_size)  # (W, T)
    device = next(model.parameters()).device
    nll = 0.0
    for i in range(0, n_windows, batch_size):
        logits = model(x[i:i + batch_size].to(device)).float()  # (B, T, V)
        nll += F.cross_entropy(logits.flatten(0, 1), y[i:i + batch_size].flatten().to(device), reduction="sum").item()
    n_bytes = count_bytes(y.flatten().tolist())
    return {"tokens": n, "bytes": n_bytes, "nll_nats": nll, "bits_per_byte": nll / np.log(2) / n_bytes}


def uniform_bpb(ids: Tensor, block_size: int, count_bytes: Callable[[list[int]], int], vocab_size: int) -> float:
    """什么都没学的模型（对 V 个 token 一视同仁）在 evaluate_bpb 的同一组窗口上的 bits/byte：每个 token log2 V 位。"""
    n = (len(ids) - 1) // block_size * block_size
    if n < 1:
        raise ValueError(f"评估文本只有 {len(ids)} 个 token，不够一个 block_size={block_size} 的窗口：给更长的文本")
    return n * float(np.log2(vocab_size)) / count_bytes(ids[1:n + 1].tolist())


@torch.no_grad()
def decode_speeds(models: list[nn.Module], prompt: Tensor, new_tokens: int, reps: int = 3) -> list[float]:
    """每个模型贪心生成 new_tokens 个 token 的速度（tokens/s），1 线程、进程 CPU 时间、轮流测 reps 轮取中位数。

    轮流测（utils.torch_playground.benchmark_interleaved）让每个模型经历同样的机器负载；量 CPU 时间而不是墙钟：
    2 核被多人共享时，单线程 torch 的墙钟大半是在排队，CPU 时间才是它真正干活的时间。
    """
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        ms = benchmark_interleaved([lambda m=m: m.generate(prompt, new_tokens, temperature=0.0) for m in models],
                                   warmup=1, reps=reps, cpu_time=True)
    finally:
        torch.set_num_threads(threads)
    return [new_tokens / (t / 1000) for t in ms]


def decode_tokens_per_s(model: nn.Module, prompt: Tensor, new_tokens: int, reps: int = 3) -> float:
    """一个模型的 decode_speeds。"""
    return decode_speeds([model], prompt, new_tokens, reps)[0]


def cast_unquantized(model: nn.Module, dtype: torch.dtype) -> nn.Module:
    """把浮点部分（嵌入、norm、lm_head、没量化的层）转成 dtype，量化层的码与 scale 原样不动。"""
    skip = {id(m) for qm in quantized_modules(model).values() for m in qm.modules()}
    for module in model.modules():
        if id(module) in skip:
            continue
        for name, p in list(module.named_parameters(recurse=False)):
            if p.is_floating_point():
                p.data = p.data.to(dtype)
        for name, b in list(module.named_buffers(recurse=False)):
            if b.is_floating_point() and not name.endswith("inv_freq"):  # RoPE 频率表保持 fp32（模型自己也这样）
                setattr(module, name, b.to(dtype))
    return model


# ---------------------------------------------------------------------------------------------------
# 2. 数据：校准 token 与 held-out token
# ---------------------------------------------------------------------------------------------------


@dataclass
class EvalData:
    calib: Tensor  # (B, T) 校准 token
    held_out: Tensor  # (N,) 评估 token
    count_bytes: Callable[[list[int]], int]  # token id 列表 -> UTF-8 字节数
    source: str


def _load_tokenizer(model_dir: Path):
    path = model_dir / "tokenizer.json"
    if not path.is_file():
        return None
    from tokenizers import Tokenizer

    return Tokenizer.from_file(str(path))


def _bytes_counter(tok, meta: dict | None) -> Callable[[list[int]], int]:
    if tok is not None:  # 解码后数字节：与 make run 的评估同一个定义
        return lambda ids: len(tok.decode(ids, skip_special_tokens=False).encode("utf-8"))
    if meta is None:
        raise ValueError("没有 tokenizer.json，也没有 data/meta.json：无法把 token 换算成字节，bits/byte 算不出来")
    per_token = (meta["bytes"] - meta["split_byte"]) / meta["val_tokens"]  # 验证集的平均字节/token
    return lambda ids: round(len(ids) * per_token)


def load_eval_data(model_dir: Path, text: Path | None, n_calib: int, n_eval: int, block_size: int) -> EvalData:
    """按模块说明的规则找校准与评估 token；不够时报错说明差多少。"""
    if n_calib < block_size:
        raise ValueError(f"--calib {n_calib} 小于一条序列的长度 {block_size}：至少给 {block_size} 个 token")
    tok = _load_tokenizer(model_dir)
    t_calib = block_size
    if text is not None:
        if tok is None:
            raise ValueError(f"--text 需要 {model_dir}/tokenizer.json 来编码文本：把模型的分词器放进目录")
        ids = torch.tensor(tok.encode(Path(text).read_text(encoding="utf-8")).ids, dtype=torch.long)
        need = n_calib + block_size + 1
        if len(ids) < need:
            raise ValueError(f"{text} 只有 {len(ids)} 个 token，校准 {n_calib} + 至少一个评估窗口要 {need} 个：换更长的文本或减小 --calib")
        calib, held_out, source = ids[:n_calib], ids[n_calib:n_calib + n_eval + 1], f"{text}（tokenizer.json 编码）"
        meta = None
    else:
        data = model_dir / "data"
        if not (data / "val.bin").is_file() or not (data / "meta.json").is_file():
            raise ValueError(f"{model_dir} 里没有 data/val.bin + meta.json（make run 写的验证集）：给 --text 一个 held-out 文本文件")
        meta = json.loads((data / "meta.json").read_text(encoding="utf-8"))
        val = np.memmap(data / "val.bin", dtype=meta["dtype"], mode="r")
        train_file = data / "train.bin"
        calib_src = np.memmap(train_file, dtype=meta["dtype"], mode="r") if train_file.is_file() else val[n_eval + 1:]
        if len(calib_src) < n_calib:
            raise ValueError(f"校准数据只有 {len(calib_src)} 个 token，少于 --calib {n_calib}")
        calib = torch.from_numpy(np.asarray(calib_src[:n_calib], dtype=np.int64))
        held_out = torch.from_numpy(np.asarray(val[:n_eval + 1], dtype=np.int64))
        source = f"{data}/val.bin（前 {len(held_out) - 1} 个 token）；校准：{'train.bin' if train_file.is_file() else 'val.bin 之后'}"
    calib = calib[:len(calib) // t_calib * t_calib].view(-1, t_calib)  # (B, T)
    return EvalData(calib, held_out, _bytes_counter(tok, meta), source)


# ---------------------------------------------------------------------------------------------------
# 3. 每个方案一行
# ---------------------------------------------------------------------------------------------------


def scheme_options(scheme: str, group_size: int) -> dict:
    """命令行的选项：int4 / GPTQ / AWQ 用同一个组大小（4 位、组内非对称）；NF4 用 QLoRA 的块大小 64。"""
    return {"int4": {"group_size": group_size}, "gptq": {"group_size": group_size},
            "awq": {"group_size": group_size}}.get(scheme, {})


def load_model(model_dir: Path) -> nn.Module:
    from model_lab import GPT2, Llama

    config = model_dir / "config.json"
    if not config.is_file():
        raise ValueError(f"{model_dir} 里没有 config.json：需要一个 HF 模型目录（make run 的输出 checkpoints/<run>/）")
    model_type = json.loads(config.read_text(encoding="utf-8")).get("model_type")
    classes = {"llama": Llama, "gpt2": GPT2}
    if model_type not in classes:
        raise ValueError(f"{model_dir} 是 model_type={model_type!r}，这里只支持 {sorted(classes)}")
    return classes[model_type].from_pretrained(model_dir, dtype=torch.float32).eval()


@dataclass
class Row:
    scheme: str
    layers: str
    nbytes: int
    bpb: float
    tokens_per_s: float
    kept_fp: dict[str, str]


def measure(model: nn.Module, data: EvalData, block_size: int, decode_tokens: int, reps: int) -> tuple[float, float]:
    bpb = evaluate_bpb(model, data.held_out, block_size, data.count_bytes)["bits_per_byte"]
    prompt = data.held_out[:PROMPT_TOKENS].view(1, -1).to(next(model.parameters()).device)
    return bpb, decode_tokens_per_s(model, prompt, decode_tokens, reps)


def run(model_dir: Path, schemes: list[str], *, n_calib: int, n_eval: int, text: Path | None, decode_tokens: int,
        group_size: int, dtype: torch.dtype, out: Path | None, reps: int = 3) -> list[Row]:
    fp = load_model(model_dir)
    block_size = fp.config.max_position_embeddings if hasattr(fp.config, "max_position_embeddings") else fp.config.n_positions
    data = load_eval_data(model_dir, text, n_calib, n_eval, min(block_size, 256))
    eval_block = min(block_size, 256)
    print(f"模型 {model_dir}（{type(fp).__name__}，{sum(p.numel() for p in fp.parameters()) / 1e6:.2f}M 参数）")
    print(f"评估：{data.source}；校准 {tuple(data.calib.shape)} 个 token；解码 {decode_tokens} token × {reps} 次，1 线程，"
          f"{str(dtype).removeprefix('torch.')}")
    fp_bytes = model_nbytes(fp)
    ref = cast_unquantized(copy.deepcopy(fp), dtype)
    bpb, tps = measure(ref, data, eval_block, decode_tokens, reps)
    print(f"基线：均匀分布（什么都没学）{uniform_bpb(data.held_out, eval_block, data.count_bytes, fp.config.vocab_size):.4f} "
          f"bits/byte，未量化的 {str(dtype).removeprefix('torch.')} 模型 {bpb:.4f}；量化方案比后者高得越少越好"
          "（benchmarks/quantization_quality.py 的判据：int8 在 +1% 以内）")
    rows = [Row({torch.float32: "fp32", torch.bfloat16: "bf16"}[dtype], "—", model_nbytes(ref), bpb, tps, {})]
    for scheme in schemes:
        options = scheme_options(scheme, group_size)
        kept = unsupported_layers(fp, scheme, **options)
        exclude = ("lm_head", *kept)
        t0 = time.perf_counter()
        model = quantize(copy.deepcopy(fp), scheme, data.calib if scheme in CALIBRATED_SCHEMES else None,
                         exclude=exclude, **options)
        seconds = time.perf_counter() - t0
        model = cast_unquantized(model, dtype)
        bpb, tps = measure(model, data, eval_block, decode_tokens, reps)
        n_q = len(quantized_modules(model))
        rows.append(Row(scheme, f"{n_q}/{n_q + len(kept)}", model_nbytes(model), bpb, tps, kept))
        print(f"  {scheme}: 量化 {seconds:.1f} s，bits/byte {bpb:.4f}，{tps:.1f} tokens/s")
        if out is not None:
            target = save_quantized(model, out / scheme)
            for name in ("tokenizer.json", "tokenizer_config.json"):
                if (model_dir / name).is_file():
                    with atomic_path(target / name) as tmp:
                        shutil.copyfile(model_dir / name, tmp)
    print_table(rows, fp_bytes)
    if out is not None:
        print(f"量化目录写在 {out}/<方案>/（inference_engine.quantization.apply.load_quantized 加载）")
    return rows


def print_table(rows: list[Row], fp32_bytes: int) -> None:
    base = rows[0]
    print(f"\n| 方案 | 量化层 | 模型 MiB | vs fp32 | bits/byte | Δ vs {base.scheme} | decode tok/s | vs {base.scheme} |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r.scheme} | {r.layers} | {r.nbytes / 2**20:.3f} | {r.nbytes / fp32_bytes:.3f}× | {r.bpb:.4f} | "
              f"{(r.bpb / base.bpb - 1) * 100:+.2f}% | {r.tokens_per_s:.1f} | {r.tokens_per_s / base.tokens_per_s:.2f}× |")
    for r in rows:
        if r.kept_fp:
            reason = next(iter(r.kept_fp.values()))
            print(f"{r.scheme}：{len(r.kept_fp)} 层留在浮点（{', '.join(list(r.kept_fp)[:4])}…）：{reason}")
    print(timing_note("benchmarks/quantization_quality.py"))


# ---------------------------------------------------------------------------------------------------
# 4. 演示目录：随机小 Llama + 在本包源码上训练的字节级 BPE（SMOKE，或还没有 make run 的模型时）
# ---------------------------------------------------------------------------------------------------


def make_demo_dir(root: Path, vocab_size: int = 320) -> tuple[Path, Path]:
    """写一个能直接喂给命令行的目录：config.json + model.safetensors + tokenizer.json，外加一个 held-out 文本文件。"""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    from model_lab import Llama, LlamaConfig

    text = "\n".join(p.read_text(encoding="utf-8") for p in sorted(Path(__file__).parent.glob("*.py")))
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator([text], trainers.BpeTrainer(vocab_size=vocab_size, show_progress=False,
                                                        initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    model = Llama(LlamaConfig(vocab_size=tok.get_vocab_size(), hidden_size=128, intermediate_size=256,
                              num_hidden_layers=2, num_attention_heads=4, max_position_embeddings=128))
    model.save_pretrained(root)
    tok.save(str(root / "tokenizer.json"))
    (root / "held_out.txt").write_text(text, encoding="utf-8")
    return root, root / "held_out.txt"


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m inference_engine.quantization",
                                description="在一个 HF 模型目录上比较量化方案：模型字节、held-out bits/byte、解码 tokens/s")
    p.add_argument("checkpoint", nargs="?", type=Path,
                   help=f"HF 模型目录（make run 的输出 checkpoints/<run>/）；不给 = checkpoints/{DEFAULT_RUN}，"
                        "它不存在（或 SMOKE=1）时用一个随机小 Llama 演示")
    p.add_argument("--scheme", nargs="+", default=list(SCHEMES), choices=list(SCHEMES), help="要比较的方案（默认全部）")
    p.add_argument("--calib", type=int, default=None, metavar="N_TOKENS",
                   help="校准 token 数（gptq / awq / smoothquant 用；默认 2048，SMOKE 时 512）")
    p.add_argument("--eval-tokens", type=int, default=None, help="评估用的 held-out token 数（默认 32768，SMOKE 时 1024）")
    p.add_argument("--text", type=Path, default=None, help="held-out 文本文件（UTF-8）；不给 = 目录里的 data/val.bin")
    p.add_argument("--decode-tokens", type=int, default=None, help="测速时贪心生成的 token 数（默认 64，SMOKE 时 8）")
    p.add_argument("--group-size", type=int, default=128, help="int4 / gptq / awq 的组大小（默认 128）")
    p.add_argument("--dtype", choices=sorted(DTYPES), default="float32",
                   help="浮点部分与激活的 dtype（bfloat16 时 int8 / int4 走 CPU 快内核）；量化都从 fp32 权重做")
    p.add_argument("--out", type=Path, default=None, help="把每个方案的量化模型写到 OUT/<方案>/")
    return p


def main(argv: list[str] | None = None) -> None:
    from utils.torch_playground import setup_seed

    args = lesson_args(__doc__, build_parser(), argv)
    setup_seed(0)
    smoke = is_smoke()
    n_calib = args.calib or (512 if smoke else 2048)
    n_eval = args.eval_tokens or (1024 if smoke else 32768)
    decode_tokens = args.decode_tokens or (8 if smoke else 64)
    with tempfile.TemporaryDirectory() as tmp:
        model_dir, text = args.checkpoint, args.text
        measured = None  # 不带参数运行时的实测参考，打印在表后
        if model_dir is None:
            default = checkpoints_dir() / DEFAULT_RUN
            if (default / "config.json").is_file() and not smoke:
                model_dir = default
                measured = ("默认配置（make run 的 shakespeare_cpu、前 32768 个验证 token、全部方案）实测：fp32 2.108 bits/byte"
                            "（均匀分布 4.04），各方案的 Δ 在 −0.11% 到 +0.11% 之间")
            else:
                print(f"没有给模型目录{'' if smoke else f'，也没有 {default}（先 make run）'}：用随机小 Llama 演示")
                model_dir, text = make_demo_dir(Path(tmp))
                measured = ("随机小 Llama（没训练）实测：约 6.37 bits/byte，比均匀分布还差一点；各方案的 Δ 在 ±0.05% 以内"
                            "——只说明实现对不对，量化的好坏要在训练过的模型上看")
        try:
            run(model_dir, args.scheme, n_calib=n_calib, n_eval=n_eval, text=text, decode_tokens=decode_tokens,
                group_size=args.group_size, dtype=DTYPES[args.dtype], out=args.out)
        except ValueError as e:
            sys.exit(f"错误：{e}")
        defaults = (args.scheme == list(SCHEMES) and args.dtype == "float32" and args.group_size == 128
                    and args.calib is None and args.eval_tokens is None)
        if measured and defaults:  # 参考值只对默认参数成立
            print(measured)


if __name__ == "__main__":
    main()
