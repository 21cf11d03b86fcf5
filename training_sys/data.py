"""训练循环的数据：字符级文本或 token 分片（train.bin / val.bin），随机窗口采样，可复现。

两种来源，得到同一个 `LMData`（训练集、验证集、词表大小、解码函数、每 token 的字节数）：

- 字符级（nanoGPT shakespeare_char 的做法）：词表 = 文本里出现过的所有字符排序后编号，前 90% / 后 10% 切分。
      load_char_data(path="input.txt")  或  load_char_data(corpus="shakespeare")
- token 分片（docs/ARCHITECTURE.md §5，`python -m data_pipeline.tokenization encode` 的输出）：
      load_token_shards("checkpoints/tok")   # train.bin、val.bin 是扁平的 uint16/uint32 memmap，meta.json 是元数据

采样：每个样本是从 [0, N − T − 1] 里均匀抽一个起点、取 T+1 个连续 token 的窗口（x = 前 T 个，y = 后 T 个）。
起点用一个专用的 torch.Generator 抽——它的状态就是"数据读到哪了"：存进 checkpoint、恢复后接着抽，
续训得到的 batch 序列与不中断时完全相同。全局随机数（初始化、dropout）用不到它，两者互不干扰。
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

SHARD_DTYPES = ("uint16", "uint32")


class DataError(ValueError):
    """数据缺失、损坏或与模型不匹配。消息里写明哪个文件、什么问题、怎么修。"""


@dataclass
class LMData:
    """训练循环需要的一切数据信息。train / val 是一维的整数数组（numpy 数组或只读 memmap）。"""

    train: np.ndarray
    val: np.ndarray
    vocab_size: int
    decode: Callable[[list[int]], str] | None  # token id 列表 -> 文本（用于生成样例）；None = 不能解码
    encode: Callable[[str], list[int]] | None  # 文本 -> token id（生成样例的提示词）
    val_bytes_per_token: float  # 验证集的 UTF-8 字节数 / token 数：把 nats/token 换算成 bits/byte
    source: str  # 人读的来源描述（写进日志）
    extra_files: dict[str, str] = field(default_factory=dict)  # 随 checkpoint 一起保存的文件：文件名 -> 内容


# ---------------------------------------------------------------------------
# 字符级
# ---------------------------------------------------------------------------
def char_encode_array(text: str, chars: list[str]) -> np.ndarray:
    """把 text 按字符表 chars 编码成 uint16/uint32 数组：先把文本当作 UTF-32 码点数组，再在排好序的码点表里二分查找。

    内置的 4.8 MB 莎士比亚在共享的 2 核机器上约 1 秒（负载 ~7 时实测 1.0–1.1 s）；逐字符查字典的
    Python 循环 [stoi[c] for c in text] 同样条件下要 1.4–2.0 s，还没算把列表转成数组——约慢 2 倍。
    """
    codes = np.frombuffer(text.encode("utf-32-le"), dtype=np.uint32)
    table = np.array([ord(c) for c in chars], dtype=np.uint32)  # chars 已排序，所以 table 也是升序
    idx = np.searchsorted(table, codes)
    idx_clipped = np.minimum(idx, len(table) - 1)
    if not np.array_equal(table[idx_clipped], codes):
        bad = chr(int(codes[np.flatnonzero(table[idx_clipped] != codes)[0]]))
        raise DataError(f"字符 {bad!r} 不在字符表里：字符表必须由同一份文本构建")
    return idx.astype(np.uint16 if len(chars) <= 0xFFFF else np.uint32)


def load_char_data(path: str | Path | None = None, corpus: str | None = None, val_fraction: float = 0.1) -> LMData:
    """字符级数据：path（UTF-8 文本文件）或 corpus（data_pipeline.corpora 的语料名）二选一。"""
    from data_pipeline.corpora import load_corpus, train_val_split

    if (path is None) == (corpus is None):
        raise DataError("字符级数据要在 path（文本文件）与 corpus（语料名）里恰好给一个")
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise DataError(f"文本文件 {path} 不存在：检查 --data 的路径（相对于当前目录）")
        try:
            text = path.read_text(encoding="utf-8")
        except UnicodeDecodeError as e:
            raise DataError(f"{path} 不是合法的 UTF-8 文本（字节偏移 {e.start}）：字符级模式只读 UTF-8 文本") from None
        source = str(path)
    else:
        text = load_corpus(corpus)
        source = f"corpus:{corpus}"
    if len(text) < 100:
        raise DataError(f"{source} 只有 {len(text)} 个字符，太短了：至少要能切出训练集和验证集的窗口")
    chars = sorted(set(text))
    ids = char_encode_array(text, chars)
    train, val = train_val_split(ids, val_fraction)
    n_val_chars = len(val)
    val_bytes = len(text[len(text) - n_val_chars:].encode("utf-8"))
    itos = dict(enumerate(chars))
    stoi = {c: i for i, c in itos.items()}
    return LMData(
        train=train, val=val, vocab_size=len(chars),
        decode=lambda ids: "".join(itos[int(i)] for i in ids),
        encode=lambda s: [stoi[c] for c in s if c in stoi],
        val_bytes_per_token=val_bytes / n_val_chars,
        source=source,
        extra_files={"char_vocab.json": json.dumps(chars, ensure_ascii=False)},
    )


# ---------------------------------------------------------------------------
# token 分片
# ---------------------------------------------------------------------------
def _read_meta(shard_dir: Path) -> dict:
    meta_file = shard_dir / "meta.json"
    if not meta_file.is_file():
        raise DataError(f"{shard_dir} 里没有 meta.json：先运行 `python -m data_pipeline.tokenization encode "
                        f"--tokenizer <分词器目录> --out {shard_dir}` 生成 train.bin / val.bin / meta.json")
    try:
        meta = json.loads(meta_file.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise DataError(f"{meta_file} 不是合法的 JSON（{e}）：文件损坏，重新运行 encode 生成") from None
    missing = [k for k in ("vocab_size", "dtype", "train_tokens", "val_tokens") if k not in meta]
    if missing:
        raise DataError(f"{meta_file} 缺少键 {missing}：它不是 data_pipeline.tokenization encode 写出的元数据")
    if meta["dtype"] not in SHARD_DTYPES:
        raise DataError(f"{meta_file} 的 dtype={meta['dtype']!r}，只支持 {SHARD_DTYPES}")
    return meta


def _open_shard(path: Path, dtype: str, expected_tokens: int) -> np.ndarray:
    if not path.is_file():
        raise DataError(f"分片 {path} 不存在：重新运行 `python -m data_pipeline.tokenization encode` 生成它")
    itemsize = np.dtype(dtype).itemsize
    size = path.stat().st_size
    if size % itemsize or size // itemsize != expected_tokens:
        raise DataError(f"分片 {path} 有 {size} 字节，而 meta.json 说它有 {expected_tokens} 个 {dtype} token"
                        f"（应为 {expected_tokens * itemsize} 字节）：文件被截断或与 meta.json 不配套，重新运行 encode")
    if expected_tokens == 0:
        raise DataError(f"分片 {path} 是空的：语料太短，换一份更长的语料")
    return np.memmap(path, dtype=dtype, mode="r")


def _max_token(arr: np.ndarray, chunk: int = 1 << 24) -> int:
    # 分块求最大值：memmap 不会被整个读进内存
    return max(int(arr[i:i + chunk].max()) for i in range(0, len(arr), chunk))


def load_token_shards(shard_dir: str | Path) -> LMData:
    """读 data_pipeline.tokenization encode 写出的目录，检查完整性与词表范围。"""
    shard_dir = Path(shard_dir)
    if not shard_dir.is_dir():
        raise DataError(f"分片目录 {shard_dir} 不存在：检查 --shards 的路径")
    meta = _read_meta(shard_dir)
    train = _open_shard(shard_dir / "train.bin", meta["dtype"], meta["train_tokens"])
    val = _open_shard(shard_dir / "val.bin", meta["dtype"], meta["val_tokens"])
    vocab_size = int(meta["vocab_size"])
    for name, arr in (("train.bin", train), ("val.bin", val)):
        top = _max_token(arr)
        if top >= vocab_size:
            raise DataError(f"{shard_dir / name} 里有 token id {top}，超出 meta.json 的 vocab_size={vocab_size}："
                            "分片与元数据不配套（可能用另一个分词器编码过），重新运行 encode")
    # bits/byte 需要验证集的原文字节数：encode 记下了切点（split_byte）与总字节数（bytes）
    if "bytes" in meta and "split_byte" in meta:
        val_bytes_per_token = (meta["bytes"] - meta["split_byte"]) / meta["val_tokens"]
    else:
        val_bytes_per_token = math.nan
    decode = encode = None
    extra: dict[str, str] = {}
    tok_file = Path(meta["tokenizer"]) if meta.get("tokenizer") else None
    if tok_file is not None and tok_file.is_file():
        from data_pipeline.tokenization import Tokenizer

        tok = Tokenizer.load(tok_file)
        decode, encode = tok.decode, tok.encode_ordinary
        hf_json = tok_file.parent / "tokenizer.json"
        if hf_json.is_file():  # docs/ARCHITECTURE.md §5：checkpoint 目录里放上 tokenizer.json
            extra["tokenizer.json"] = hf_json.read_text(encoding="utf-8")
    return LMData(train=train, val=val, vocab_size=vocab_size, decode=decode, encode=encode,
                  val_bytes_per_token=val_bytes_per_token, source=f"shards:{shard_dir}", extra_files=extra)


# ---------------------------------------------------------------------------
# 采样
# ---------------------------------------------------------------------------
def get_batch(data: np.ndarray, batch_size: int, block_size: int, generator: torch.Generator,
              device: torch.device | str = "cpu") -> tuple[torch.Tensor, torch.Tensor]:
    """随机取 batch_size 个长 block_size+1 的窗口，返回 (x, y)，形状都是 (B, T)，y 是 x 右移一位。"""
    if len(data) <= block_size:
        raise DataError(f"数据只有 {len(data)} 个 token，不够取一个 block_size={block_size} 的窗口：减小 --block-size")
    # 窗口 data[s : s+T+1] 要求 s + T ≤ N − 1，所以起点 s ∈ [0, N − T)
    starts = torch.randint(len(data) - block_size, (batch_size,), generator=generator)
    # (B, T+1)：一次 fancy indexing 取出所有窗口，比逐个切片再 stack 快
    window = np.asarray(data[starts.numpy()[:, None] + np.arange(block_size + 1)], dtype=np.int64)
    xy = torch.from_numpy(window)
    x, y = xy[:, :-1], xy[:, 1:]  # (B, T)
    if torch.device(device).type == "cuda":
        # pin + non_blocking：主机到显卡的拷贝与下一步计算重叠
        return x.pin_memory().to(device, non_blocking=True), y.pin_memory().to(device, non_blocking=True)
    return x.to(device), y.to(device)


__all__ = ["DataError", "LMData", "char_encode_array", "get_batch", "load_char_data", "load_token_shards"]
