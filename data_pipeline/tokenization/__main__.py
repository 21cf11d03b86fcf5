"""命令行：训练分词器，把语料编码成训练循环读取的 train.bin / val.bin。

    python -m data_pipeline.tokenization train  --corpus shakespeare --vocab-size 8192 --out checkpoints/tok
    python -m data_pipeline.tokenization encode --tokenizer checkpoints/tok --corpus shakespeare --out checkpoints/tok

train 写出 <out>/bpe.json（本项目格式，Tokenizer.load 读取）与 <out>/tokenizer.json（Hugging Face 格式）。
encode 按字节位置把语料切成前 (1 − val_fraction) 与后 val_fraction（切点挪到下一个换行之后，不切断一行），
两段各自流式编码（每次读 1 MB，内存有界），写出：
    train.bin / val.bin   扁平的 token id 数组，numpy.memmap(path, dtype, mode="r") 即可读取；
                          dtype 为 uint16，词表里最大 id 超过 65,535 时为 uint32（docs/ARCHITECTURE.md §5）
    meta.json             {"tokenizer", "vocab_size", "dtype", "train_tokens", "val_tokens", "special_tokens", ...}
所有文件先写临时文件再 rename：中途崩溃不会留下写了一半的 .bin。

同样的两件事也是普通函数，供代码调用（training_sys.speedrun 就这样用）：
    train_tokenizer(input_path, out_dir, vocab_size, ...) -> out_dir
    encode_corpus(tokenizer_dir, input_path, out_dir, val_fraction) -> meta
输入有问题（文件不存在、--val-fraction 越界、语料太短）时函数抛 InputError（ValueError 的子类），命令行把它变成一行错误。
不带参数运行时打印帮助；SMOKE=1 且不带参数时在临时目录里跑一遍小规模的 train + encode 演示。
"""

from __future__ import annotations

import argparse
import codecs
import json
import os
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np

from data_pipeline.tokenization.fast_train import train_bpe
from data_pipeline.tokenization.regex_bpe import PATTERNS
from data_pipeline.tokenization.tokenizer import Tokenizer
from utils.io import atomic_path, atomic_write, is_smoke
from utils.lesson_cli import lesson_args

READ_BYTES = 1 << 20
WRITE_IDS = 1 << 20
DEFAULT_SPECIAL_TOKENS = ("<|endoftext|>",)


class InputError(ValueError):
    """输入有问题（文件不存在、参数越界、语料太短）。函数 API 照常抛出（它是 ValueError）；命令行把它变成一行错误退出。"""


def train_tokenizer(input_path: str | os.PathLike, out_dir: str | os.PathLike, vocab_size: int = 8192,
                    special_tokens: Sequence[str] = DEFAULT_SPECIAL_TOKENS, pattern: str = "gpt2",
                    processes: int | None = None, progress: bool = True) -> Path:
    """在 UTF-8 文本文件上训练字节级 BPE，写出 <out_dir>/bpe.json 与 <out_dir>/tokenizer.json，返回 out_dir。

    pattern 是预分词正则的名字（PATTERNS 的键：gpt2 / gpt4）；processes 是预分词的进程数（None = CPU 核数）。
    """
    path = Path(input_path)
    if not path.is_file():
        raise InputError(f"--input 文件不存在：{path}")
    if pattern not in PATTERNS:
        raise InputError(f"未知的预分词正则 {pattern!r}；可选：{', '.join(sorted(PATTERNS))}")
    out = Path(out_dir)
    t0 = time.perf_counter()
    special_tokens = list(special_tokens)
    vocab, merges = train_bpe(path, vocab_size, special_tokens, PATTERNS[pattern], num_processes=processes,
                              progress=progress)
    tok = Tokenizer(vocab, merges, special_tokens, PATTERNS[pattern])
    tok.save(out / "bpe.json")
    tok.save_hf(out / "tokenizer.json")
    print(f"训练完成：{path}（{path.stat().st_size / 1e6:.2f} MB）→ vocab {vocab_size}，"
          f"{time.perf_counter() - t0:.1f} s；写出 {out / 'bpe.json'} 与 {out / 'tokenizer.json'}")
    return out


def split_point(path: Path, val_fraction: float) -> int:
    """按字节的训练 / 验证切点：约在 (1 − val_fraction) 处，挪到其后第一个换行之后。"""
    if not 0.0 < val_fraction < 1.0:
        raise InputError(f"--val-fraction={val_fraction} 必须在开区间 (0, 1) 内，例如 0.1")
    size = path.stat().st_size
    target = int(size * (1 - val_fraction))
    with open(path, "rb") as f:
        f.seek(target)
        rest = f.read(READ_BYTES)
    nl = rest.find(b"\n")
    cut = target + nl + 1 if nl != -1 else target
    if not 0 < cut < size:
        raise InputError(f"{path} 太短（{size} 字节），按 val_fraction={val_fraction} 切分后训练集或验证集为空")
    # 切点必须落在 UTF-8 字符边界上：换行之后天然是；没有换行时往前退到非续字节
    with open(path, "rb") as f:
        while cut > 0:
            f.seek(cut)
            if (f.read(1)[0] & 0xC0) != 0x80:
                break
            cut -= 1
    return cut


def read_text_range(path: Path, start: int, end: int, bar=None) -> Iterator[str]:
    """逐 1 MB 读出文件 [start, end) 的文本；增量解码器保证多字节字符跨块时不被切坏。"""
    decoder = codecs.getincrementaldecoder("utf-8")()
    with open(path, "rb") as f:
        f.seek(start)
        pos = start
        while pos < end:
            data = f.read(min(READ_BYTES, end - pos))
            if not data:
                break
            try:
                yield decoder.decode(data)
            except UnicodeDecodeError as e:
                raise ValueError(f"{path} 不是合法的 UTF-8：字节偏移约 {pos + e.start} 处无法解码") from None
            pos += len(data)
            if bar is not None:
                bar.update(len(data))
        yield decoder.decode(b"", final=True)


def encode_to_bin(tok: Tokenizer, chunks: Iterator[str], dest: Path, dtype: np.dtype) -> int:
    """流式编码并追加写入 dest（原子），返回 token 数。"""
    n = 0
    with atomic_path(dest) as tmp, open(tmp, "wb") as f:
        buf: list[int] = []
        for i in tok.encode_iterable(chunks):
            buf.append(i)
            if len(buf) >= WRITE_IDS:
                np.asarray(buf, dtype=dtype).tofile(f)
                n += len(buf)
                buf.clear()
        np.asarray(buf, dtype=dtype).tofile(f)
        n += len(buf)
    return n


def encode_corpus(tokenizer: str | os.PathLike, input_path: str | os.PathLike, out_dir: str | os.PathLike,
                  val_fraction: float = 0.1, progress: bool = True) -> dict:
    """把文本文件编码成 <out_dir>/train.bin、val.bin 与 meta.json，返回 meta（也就是 meta.json 的内容）。

    tokenizer 是 train_tokenizer 的输出目录或其中的 bpe.json；后 val_fraction 的字节（切点挪到换行之后）做验证集。
    """
    from tqdm import tqdm

    tok_dir = Path(tokenizer)
    tok_file = tok_dir / "bpe.json" if tok_dir.is_dir() else tok_dir
    if not tok_file.is_file():
        raise InputError(f"找不到分词器 {tok_file}：先运行 `python -m data_pipeline.tokenization train --out {tok_dir}`")
    path = Path(input_path)
    if not path.is_file():
        raise InputError(f"--input 文件不存在：{path}")
    tok = Tokenizer.load(tok_file)
    out = Path(out_dir)
    dtype = np.dtype(np.uint16 if max(tok.vocab) <= 0xFFFF else np.uint32)
    cut = split_point(path, val_fraction)
    size = path.stat().st_size
    t0 = time.perf_counter()
    counts = {}
    with tqdm(total=size, unit="B", unit_scale=True, desc="encode", mininterval=0.5, disable=not progress) as bar:
        for split, (start, end) in (("train", (0, cut)), ("val", (cut, size))):
            counts[split] = encode_to_bin(tok, read_text_range(path, start, end, bar), out / f"{split}.bin", dtype)
    meta = {
        "tokenizer": str(tok_file),
        "vocab_size": tok.vocab_size,
        "dtype": dtype.name,
        "train_tokens": counts["train"],
        "val_tokens": counts["val"],
        "special_tokens": tok.special_ids,
        "source": str(path),
        "split_byte": cut,
        "bytes": size,
    }
    atomic_write(out / "meta.json", json.dumps(meta, ensure_ascii=False, indent=2))
    seconds = time.perf_counter() - t0
    print(f"编码完成：{size / 1e6:.2f} MB → train {counts['train']:,} / val {counts['val']:,} 个 token（{dtype.name}），"
          f"{seconds:.1f} s（{size / 1e6 / seconds:.2f} MB/s）；写出 {out}/train.bin val.bin meta.json")
    return meta


# ---------------------------------------------------------------------------
# 命令行：把参数翻译成上面两个函数的调用；InputError 变成一行错误信息（退出码 1）
# ---------------------------------------------------------------------------
def _input_file(args: argparse.Namespace) -> Path:
    if args.input:
        return Path(args.input)
    from data_pipeline.corpora import corpus_path

    return corpus_path(args.corpus)


def cmd_train(args: argparse.Namespace) -> Path:
    try:
        return train_tokenizer(_input_file(args), args.out, args.vocab_size, args.special_tokens, args.pattern,
                               args.processes)
    except InputError as e:
        raise SystemExit(str(e)) from None


def cmd_encode(args: argparse.Namespace) -> dict:
    try:
        return encode_corpus(args.tokenizer, _input_file(args), args.out, args.val_fraction)
    except InputError as e:
        raise SystemExit(str(e)) from None


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m data_pipeline.tokenization", description=__doc__.split("\n")[0],
                                     add_help=False)
    parser.add_argument("-h", "--help", action="help", help="显示这段帮助并退出")
    sub = parser.add_subparsers(dest="command", title="子命令")
    for name, help_text in (("train", "训练 BPE 分词器"), ("encode", "把语料编码成 train.bin / val.bin")):
        p = sub.add_parser(name, help=help_text, description=help_text, add_help=False)
        p.add_argument("-h", "--help", action="help", help="显示这段帮助并退出")
        p.add_argument("--corpus", default="shakespeare",
                       help="data_pipeline.corpora 里注册的语料名（默认 %(default)s；给了 --input 时不用）")
        p.add_argument("--input", help="直接给一个 UTF-8 文本文件的路径，代替 --corpus")
        if name == "train":
            p.add_argument("--out", required=True, help="输出目录：写出 bpe.json（本项目格式）与 tokenizer.json（HF 格式）")
            p.add_argument("--vocab-size", type=int, default=8192,
                           help="词表大小（个 token，含 256 个单字节与特殊 token；默认 %(default)s）")
            p.add_argument("--special-tokens", nargs="*", default=list(DEFAULT_SPECIAL_TOKENS),
                           help="特殊 token，空格分隔，按顺序排在 256 个单字节之后（默认 %(default)s；不跟值 = 没有）")
            p.add_argument("--pattern", choices=sorted(PATTERNS), default="gpt2",
                           help="预分词正则：gpt2 或 gpt4（cl100k）的写法（默认 %(default)s）")
            p.add_argument("--processes", type=int, default=None, help="预分词的进程数（默认 CPU 核数）")
        else:
            p.add_argument("--out", required=True, help="输出目录：写出 train.bin、val.bin 与 meta.json")
            p.add_argument("--tokenizer", required=True, help="train 的输出目录（或其中的 bpe.json）")
            p.add_argument("--val-fraction", type=float, default=0.1,
                           help="语料末尾划给验证集的字节比例，开区间 (0, 1)，切点挪到换行之后（默认 %(default)s）")
    return parser


def smoke_demo() -> None:
    """SMOKE=1 且不带参数：在临时目录里训练一个小分词器并编码，检查 .bin 能解码回原文。"""
    from data_pipeline.corpora import load_corpus

    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp) / "small.txt"
        src.write_text(load_corpus("shakespeare")[:30_000], encoding="utf-8")
        train_tokenizer(src, tmp, vocab_size=300)
        meta = encode_corpus(tmp, src, tmp)
        tok = Tokenizer.load(Path(tmp) / "bpe.json")
        ids = np.concatenate([np.fromfile(Path(tmp) / f"{s}.bin", dtype=meta["dtype"]) for s in ("train", "val")])
        assert tok.decode(ids.tolist()) == src.read_text(encoding="utf-8"), "train.bin + val.bin 必须解码回原文"
        print("SMOKE：train + encode 演示通过，bin 文件解码回原文")


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    parser = build_parser()
    if not argv:
        if is_smoke():
            smoke_demo()
        else:
            parser.print_help()
        return
    args = lesson_args(__doc__, parser, argv)
    if args.command == "train":
        cmd_train(args)
    else:
        cmd_encode(args)


if __name__ == "__main__":
    main()
