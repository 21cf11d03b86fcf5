"""第 1 课：最朴素的字节级 BPE（byte-pair encoding），直接在原始字节上训练。

    python data_pipeline/tokenization/basic.py          # SMOKE=1 时几秒跑完

为什么从字节出发，而不是字符或单词？
- 字符表是开放的：Unicode 已分配了约 15 万个字符（码位空间共 1,114,112 个），训练语料里没见过的字符
  （emoji、生僻字）到了推理时就成了 <unk>。UTF-8 把任何文本都写成 0..255 的字节序列，256 个基础 token 覆盖一切文本，
  永远没有 <unk>——这就是 GPT-2 以来"字节级 BPE"的出发点。
- 代价是序列变长（一个汉字 3 个字节）。BPE 的作用正是把常见的字节组合合并成新 token，
  把长度压回来：反复找出语料里出现次数最多的相邻 token 对 (a, b)，造一个新 token = a 的字节 + b 的字节，
  把所有 (a, b) 替换成它。合并 k 次，词表就是 256 + k。

本课的训练器每合并一次就把整个语料重新数一遍（O(合并次数 × 语料长度)），
这是 minbpe 的写法，清楚但慢；第 3 课（fast_train.py）讲怎样只更新受影响的部分。

平局规则（全仓库统一）：两个 pair 次数相同时，合并按 bytes 元组比较更大的那个，
即 max((count, vocab[a], vocab[b]))。这样结果与 dict 的遍历顺序无关，可以逐条对比。
"""

from __future__ import annotations

import time

from utils.io import is_smoke
from utils.lesson_cli import lesson_args


def count_pairs(ids: list[int], counts: dict[tuple[int, int], int] | None = None, weight: int = 1) -> dict:
    """统计相邻 token 对出现的次数（可累加到已有的 counts 上，weight 是这段序列的重复次数）。"""
    counts = {} if counts is None else counts
    for pair in zip(ids, ids[1:]):
        counts[pair] = counts.get(pair, 0) + weight
    return counts


def merge(ids: list[int], pair: tuple[int, int], new_id: int) -> list[int]:
    """从左到右把不重叠的 pair 替换成 new_id。"aaa" 合并 (a, a) 得到 [aa, a]，与 tiktoken 相同。"""
    out, i, n = [], 0, len(ids)
    while i < n:
        if i + 1 < n and ids[i] == pair[0] and ids[i + 1] == pair[1]:
            out.append(new_id)
            i += 2
        else:
            out.append(ids[i])
            i += 1
    return out


def best_pair(counts: dict[tuple[int, int], int], vocab: dict[int, bytes]) -> tuple[int, int]:
    """次数最多的 pair；平局时取 (vocab[a], vocab[b]) 字典序更大的那个。"""
    return max(counts, key=lambda p: (counts[p], vocab[p[0]], vocab[p[1]]))


class BasicTokenizer:
    """在整段文本的 UTF-8 字节上训练的 BPE：没有预分词，也没有特殊 token。"""

    def __init__(self) -> None:
        self.merges: dict[tuple[int, int], int] = {}  # (a, b) -> 新 id；插入顺序就是合并顺序
        self.vocab: dict[int, bytes] = {i: bytes([i]) for i in range(256)}

    def train(self, text: str, vocab_size: int) -> None:
        if vocab_size < 256:
            raise ValueError(f"vocab_size={vocab_size} 小于 256：字节级 BPE 的词表至少包含 256 个单字节 token")
        ids = list(text.encode("utf-8"))
        for new_id in range(256, vocab_size):
            counts = count_pairs(ids)  # 朴素之处：每一步都把整段语料重数一遍
            if not counts:
                raise ValueError(f"语料只够合并 {new_id - 256} 次，达不到 vocab_size={vocab_size}；请减小 vocab_size")
            pair = best_pair(counts, self.vocab)
            ids = merge(ids, pair, new_id)
            self.merges[pair] = new_id
            self.vocab[new_id] = self.vocab[pair[0]] + self.vocab[pair[1]]

    def encode(self, text: str) -> list[int]:
        """按训练时的顺序重放合并：每次挑"最早学到"（id 最小）的那个可合并 pair。"""
        ids = list(text.encode("utf-8"))
        while len(ids) >= 2:
            pairs = set(zip(ids, ids[1:]))
            pair = min(pairs, key=lambda p: self.merges.get(p, float("inf")))
            if pair not in self.merges:
                break
            ids = merge(ids, pair, self.merges[pair])
        return ids

    def decode(self, ids: list[int]) -> str:
        # 任意 id 序列拼出的字节不一定是合法 UTF-8（比如把一个汉字的 3 个字节切开），用 U+FFFD 代替
        return b"".join(self.vocab[i] for i in ids).decode("utf-8", errors="replace")


def main() -> None:
    from data_pipeline.corpora import load_corpus

    text = load_corpus("shakespeare")[: 5_000 if is_smoke() else 30_000] + "\n生存还是毁灭，这是一个值得考虑的问题。🙂\n"
    vocab_size = 256 + (40 if is_smoke() else 200)
    tok = BasicTokenizer()
    t0 = time.perf_counter()
    tok.train(text, vocab_size)
    train_s = time.perf_counter() - t0
    ids = tok.encode(text)
    assert tok.decode(ids) == text, "decode(encode(s)) 必须还原原文"
    n_bytes = len(text.encode("utf-8"))
    print(f"朴素 BPE：{n_bytes} 字节 → {len(ids)} 个 token（{n_bytes / len(ids):.2f} 字节/token；"
          f"不合并时每个字节一个 token = 1.00；默认配置 200 次合并 1.98，SMOKE 40 次 1.41），"
          f"训练 {vocab_size - 256} 次合并用时 {train_s:.2f} s")
    print("前 10 次合并：", [tok.vocab[i] for i in range(256, 266)])
    # 合并可以跨越单词边界与标点，学到 b'e, ' 这样的"脏" token——第 2 课用正则预分词解决它
    crossing = [tok.vocab[i] for i in range(256, vocab_size) if b" " in tok.vocab[i].strip(b" ")]
    print(f"跨越空格的 token 数：{len(crossing)}，例如 {crossing[:5]}（默认配置 2 个，SMOKE 的 40 次合并还没学到；"
          f"第 2 课的正则预分词之后恒为 0）")
    print("非法 UTF-8 的解码：", repr(tok.decode([0xE7, 0x94])), "（汉字'生'的前两个字节 → U+FFFD）")


if __name__ == "__main__":
    lesson_args(__doc__)
    main()
