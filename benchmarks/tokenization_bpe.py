"""基准：我们的 BPE（data_pipeline.tokenization）对照 Hugging Face tokenizers 与 tiktoken，同一进程、同一文本。

    python benchmarks/tokenization_bpe.py            # 约 1 分钟；SMOKE=1 时几秒
    python benchmarks/tokenization_bpe.py --also /path/to/tinyshakespeare.txt   # 再加一份语料的训练对比

1. 训练：train_bpe（2 个进程预分词 + 增量合并）vs tokenizers 的 BpeTrainer（ByteLevel 预分词，
   add_prefix_space=False，即同一个 GPT-2 正则；Rust 多线程），同一文件、同一 vocab_size、同一特殊 token。
2. 编码吞吐（单线程）：Tokenizer.encode vs 用我们的 ranks 构造的 tiktoken.Encoding.encode，
   整个语料；先核对两边 id 逐个相同。我们的"冷"= 新建 Tokenizer 后的第一遍（缓存为空），"热"= 之后。
3. 压缩率：整个语料的 字节/token，我们训练的词表 vs HF 训练的同样大小的词表。
4. 量级参照：minbpe 式朴素训练器（第 1 课 BasicTokenizer，每次合并重扫全部字节）在一小段上的用时。
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

from _common import machine_info, update_results

from data_pipeline.corpora import corpus_path
from data_pipeline.tokenization import Tokenizer, train_bpe, train_bpe_naive
from data_pipeline.tokenization.basic import BasicTokenizer
from utils.io import is_smoke

EOT = "<|endoftext|>"


def timed(fn, reps: int) -> tuple[float, object]:
    """跑 reps 次，返回 (中位数秒数, 最后一次的结果)。"""
    times, result = [], None
    for _ in range(reps):
        t0 = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), result


def hf_train(path: Path, vocab_size: int):
    from tokenizers import Tokenizer as HFTokenizer
    from tokenizers import models, pre_tokenizers, trainers

    hf = HFTokenizer(models.BPE())
    hf.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)  # use_regex=True：GPT-2 正则
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[EOT],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),  # 256 个字节都进词表，与我们相同
        show_progress=False,
    )
    hf.train([str(path)], trainer)
    return hf


def train_row(path: Path, vocab_size: int, reps: int) -> tuple[dict, Tokenizer, object]:
    ours_s, (vocab, merges) = timed(lambda: train_bpe(path, vocab_size, [EOT], progress=False), reps)
    hf_s, hf = timed(lambda: hf_train(path, vocab_size), reps)
    assert len(vocab) == vocab_size == hf.get_vocab_size()
    row = {"corpus": path.name, "mb": path.stat().st_size / 1e6, "vocab": vocab_size, "ours": ours_s, "hf": hf_s}
    print(f"训练 {path.name} ({row['mb']:.2f} MB) → {vocab_size}：ours {ours_s:.2f} s | HF BpeTrainer {hf_s:.2f} s "
          f"| 比值 {ours_s / hf_s:.2f}×")
    return row, Tokenizer(vocab, merges, [EOT]), hf


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--also",
                        help="再加一份 UTF-8 文本文件的路径（例如 tiny-shakespeare），只在它上面多比一次训练时间"
                             "（ours 的 train_bpe vs HF BpeTrainer，同一 vocab_size）；默认不加，只用内置的莎士比亚语料")
    args = parser.parse_args()
    smoke = is_smoke()
    reps = 1 if smoke else 3
    vocab_size = 512 if smoke else 8192
    info = machine_info()
    print(info)

    with tempfile.TemporaryDirectory() as tmp:
        path = corpus_path("shakespeare")
        if smoke:
            small = Path(tmp) / "shakespeare_slice.txt"
            small.write_text(path.read_text(encoding="utf-8")[:200_000], encoding="utf-8")
            path = small
        text = path.read_text(encoding="utf-8")
        n_mb = len(text.encode("utf-8")) / 1e6

        # 预热：进程池、正则编译、HF 的线程池
        warm = Path(tmp) / "warm.txt"
        warm.write_text(text[:50_000], encoding="utf-8")
        train_bpe(warm, 300, [EOT], progress=False)
        hf_train(warm, 300)

        rows = []
        row, tok, hf = train_row(path, vocab_size, reps)
        rows.append(row)
        if args.also:
            rows.append(train_row(Path(args.also), vocab_size, reps)[0])

        # 编码吞吐（单线程）
        enc = tok.to_tiktoken()
        fresh = Tokenizer(tok.vocab, tok.merges, [EOT])
        t0 = time.perf_counter()
        ids = fresh.encode(text)
        cold_s = time.perf_counter() - t0
        warm_s, _ = timed(lambda: fresh.encode(text), reps)
        enc.encode(text, allowed_special="all")
        tik_s, ref = timed(lambda: enc.encode(text, allowed_special="all"), reps)
        assert ids == ref, "与 tiktoken 的编码不一致"
        assert fresh.decode(ids) == text
        print(f"编码 {n_mb:.2f} MB：ours 冷 {n_mb / cold_s:.2f} MB/s，热 {n_mb / warm_s:.2f} MB/s | "
              f"tiktoken {n_mb / tik_s:.2f} MB/s（id 逐个相同）")

        # 压缩率
        hf_ids = hf.encode(text).ids
        ours_bpt = len(text.encode("utf-8")) / len(ids)
        hf_bpt = len(text.encode("utf-8")) / len(hf_ids)
        print(f"压缩率：ours {ours_bpt:.4f} 字节/token | HF {hf_bpt:.4f} | 相差 {100 * (ours_bpt / hf_bpt - 1):+.3f}%")

        # 朴素训练器的量级
        n_slice = 10_000 if smoke else 50_000
        n_merges = 32 if smoke else 256
        sl = text[:n_slice]
        slice_path = Path(tmp) / "slice.txt"
        slice_path.write_text(sl, encoding="utf-8")
        t0 = time.perf_counter()
        BasicTokenizer().train(sl, 256 + n_merges)
        basic_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        _, naive_merges = train_bpe_naive(sl, 256 + 1 + n_merges, [EOT])
        naive_s = time.perf_counter() - t0
        fast_slice_s, (_, fast_merges) = timed(lambda: train_bpe(slice_path, 256 + 1 + n_merges, [EOT], progress=False), 3)
        assert fast_merges == naive_merges
        print(f"朴素参照（{len(sl.encode()) / 1e3:.0f} KB，{n_merges} 次合并）：minbpe 式 {basic_s:.2f} s | "
              f"预分词 + 去重的朴素版 {naive_s:.2f} s | train_bpe {fast_slice_s:.3f} s")

    lines = [
        f"机器：{info}。注意：这台 2 核机器同时被其他任务占用，计时有噪声；比值（同一进程内先后测）比绝对值可靠。",
        "",
        "| 训练 | 语料 | vocab | ours train_bpe | HF BpeTrainer | ours / HF（目标 ≤ 1.5） |",
        "|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(f"| BPE 训练 | {r['corpus']} ({r['mb']:.2f} MB) | {r['vocab']} | {r['ours']:.2f} s | {r['hf']:.2f} s | "
                     f"**{r['ours'] / r['hf']:.2f}×** |")
    lines += [
        "",
        "| 编码（单线程，整个语料） | MB/s | 相对 tiktoken（目标 ≥ 0.5） |",
        "|---|---|---|",
        f"| tiktoken（我们的 ranks） | {n_mb / tik_s:.2f} | 1.00× |",
        f"| ours，热缓存 | {n_mb / warm_s:.2f} | **{tik_s / warm_s:.2f}×** |",
        f"| ours，冷缓存（第一遍） | {n_mb / cold_s:.2f} | {tik_s / cold_s:.2f}× |",
        "",
        f"压缩率（vocab {vocab_size}）：ours {ours_bpt:.4f} 字节/token，HF BpeTrainer {hf_bpt:.4f}，"
        f"相差 **{100 * (ours_bpt / hf_bpt - 1):+.3f}%**（目标 ±1%）。ids 与 tiktoken 逐个相同。",
        "",
        f"朴素参照（{len(sl.encode()) / 1e3:.0f} KB 切片，{n_merges} 次合并）：minbpe 式 BasicTokenizer {basic_s:.2f} s，"
        f"预分词 + 去重的朴素版 {naive_s:.2f} s，train_bpe {fast_slice_s:.3f} s（merges 逐条相同）。",
    ]
    update_results("tokenization_bpe", "\n".join(lines))


if __name__ == "__main__":
    main()
