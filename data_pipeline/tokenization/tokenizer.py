"""Tokenizer：用训练好的 (vocab, merges) 编码 / 解码，流式编码，保存 / 加载，导出到 tiktoken 与 Hugging Face。

    from data_pipeline.tokenization import Tokenizer
    tok = Tokenizer(vocab, merges, special_tokens=["<|endoftext|>"])
    ids = tok.encode("Hello<|endoftext|>"); text = tok.decode(ids)
    with open("big.txt") as f: ids = list(tok.encode_iterable(f))   # 内存有界
    tok.save("bpe.json"); tok = Tokenizer.load("bpe.json")
    enc = tok.to_tiktoken()          # tiktoken.Encoding，id 与我们逐个相同
    tok.save_hf("tokenizer.json")    # tokenizers.Tokenizer.from_file / transformers 都能加载

编码一个预 token：从单字节开始，反复合并"rank 最小"（最早学到）的相邻 pair，直到没有可合并的 pair。
这正是训练时对这个预 token 发生过的合并序列的重放。自然文本里同一个预 token（" the"、"\n"）
会出现成千上万次，所以缓存"预 token → ids"后，热循环就只剩 regex.findall 加字典查找。

保存格式（JSON，UTF-8，原子写入）：
    {"format": "llm-hardcore-bpe", "version": 1,
     "pattern": 预分词正则,
     "special_tokens": {"<|endoftext|>": 256, ...},
     "vocab": {"0": "00", ..., "300": "2074"},     # id → token 字节的十六进制
     "merges": [["20", "74"], ...]}                  # 按合并顺序，两边都是十六进制
十六进制让任意字节（包括非法 UTF-8 的半个汉字）都能无损写进 JSON。

特殊 token 互相重叠时（"<|a|>" 与 "<|a|><|b|>"）我们取同一起点上最长的，与 Hugging Face 的
AddedVocabulary（leftmost-longest）相同；tiktoken 此时按其内部 HashMap 的顺序挑选，结果未定义，
所以与 tiktoken 的逐 id 一致只对不重叠的特殊 token 成立。
"""

from __future__ import annotations

import gc
import json
import os
from collections.abc import Iterable, Iterator
from itertools import chain
from pathlib import Path

from data_pipeline.tokenization.regex_bpe import (
    GPT2_PATTERN,
    check_special_tokens,
    compile_pattern,
    special_regex,
)
from utils.io import atomic_path, atomic_write
from utils.lesson_cli import lesson_args, timing_note

FORMAT_NAME = "llm-hardcore-bpe"
FORMAT_VERSION = 1
CACHE_MAX_ENTRIES = 1 << 18  # 缓存满了就整个清空：简单，且保证内存有界
STREAM_CHARS = 1 << 16  # encode_iterable 攒够这么多字符才编码一次


def bytes_to_unicode() -> dict[int, str]:
    """GPT-2 的字节 → 可见字符映射（Hugging Face ByteLevel 用它把字节写进 JSON 词表）。

    可打印的 188 个字节映射到自身（'!'..'~'、'¡'..'¬'、'®'..'ÿ'），其余 68 个（空格、控制字符…）
    依次映射到 U+0100 之后的字符，于是空格成了 'Ġ'、换行成了 'Ċ'。
    """
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    mapping, extra = {}, 0
    for b in range(256):
        if b in printable:
            mapping[b] = chr(b)
        else:
            mapping[b] = chr(256 + extra)
            extra += 1
    return mapping


class Tokenizer:
    """字节级 BPE 分词器。vocab: {id: bytes}；merges: 有序的 [(bytes, bytes)]；special_tokens: [str]。"""

    def __init__(
        self,
        vocab: dict[int, bytes],
        merges: list[tuple[bytes, bytes]],
        special_tokens: Iterable[str] | None = None,
        pattern: str = GPT2_PATTERN,
    ) -> None:
        self.vocab = dict(vocab)
        self.merges = [(bytes(a), bytes(b)) for a, b in merges]
        self.pattern = pattern
        self.special_tokens = check_special_tokens(special_tokens)
        self._pat = compile_pattern(pattern)

        # 特殊 token 的 id：vocab 里已有就用它（train_bpe 的输出），没有就追加在末尾。
        # 特殊 token 的字节可能与普通 token 相同（特殊 token "\n" 与字节 10；特殊 token "ab" 与合并出的 "ab"），
        # 这时按 train_bpe 的布局（单字节 < 特殊 token < 合并结果）把单字节的 id 与最大的那个 id 留给普通 token。
        ids_by_bytes: dict[bytes, list[int]] = {}
        for i in sorted(self.vocab):
            ids_by_bytes.setdefault(self.vocab[i], []).append(i)
        merged = {a + b for a, b in self.merges}
        self.special_ids: dict[str, int] = {}
        for tok in self.special_tokens:
            b = tok.encode("utf-8")
            candidates = list(ids_by_bytes.get(b, []))
            if len(b) == 1 and b[0] in candidates:
                candidates.remove(b[0])
            if b in merged and candidates:
                candidates.pop()
            if not candidates:
                candidates = [max(self.vocab, default=-1) + 1]
                self.vocab[candidates[0]] = b
            self.special_ids[tok] = candidates[0]
        special_id_set = set(self.special_ids.values())
        # 普通 token 的反查表（不含特殊 token：正文里的 "<|endoftext|>" 字样只在 special_tokens 里才算特殊）
        self._ids_of: dict[bytes, int] = {}
        for i in sorted(self.vocab):
            if i not in special_id_set:
                self._ids_of.setdefault(self.vocab[i], i)
        missing = [b for b in range(256) if bytes([b]) not in self._ids_of]
        if missing:
            raise ValueError(f"vocab 缺少单字节 token（例如字节 {missing[0]}）：字节级 BPE 要求 256 个单字节都在词表里")
        self._byte_ids = [self._ids_of[bytes([b])] for b in range(256)]
        # train_bpe 的布局里字节 b 的 id 就是 b：这时 list(bytes) 直接就是初始 ids，省掉逐字节查表
        self._byte_id_is_byte = self._byte_ids == list(range(256))
        # (id_a, id_b) → rank（第几条 merge），rank → 合并出的 id
        self._pair_rank: dict[tuple[int, int], int] = {}
        self._merge_ids: list[int] = []
        for rank, (a, b) in enumerate(self.merges):
            ids = (self._ids_of.get(a), self._ids_of.get(b), self._ids_of.get(a + b))
            if None in ids:
                raise ValueError(f"第 {rank} 条 merge ({a!r}, {b!r}) 的某个 token 不在 vocab 里；vocab 与 merges 不配套")
            self._pair_rank.setdefault((ids[0], ids[1]), rank)
            self._merge_ids.append(ids[2])
        self._special_re = special_regex(self.special_tokens)
        self._max_special = max((len(s) for s in self.special_tokens), default=0)
        self._cache: dict[str, list[int]] = {}

    @property
    def vocab_size(self) -> int:
        """嵌入矩阵需要的行数 = 最大 id + 1（id 不一定连续）。"""
        return max(self.vocab) + 1

    # ------------------------------------------------------------------ 编码
    def _encode_piece(self, piece: bytes) -> list[int]:
        """一个预 token 的 BPE：反复合并 rank 最小的相邻 pair，同 rank 时先合并最左边的。

        rank 放在与 pair 一一对应的列表里，取最小值与找位置都是 C 实现的 min / index；
        合并一处只需重算它左右两个 pair 的 rank。合并出的新 token 参与的 pair 一定是更晚学到的
        （rank 更大），所以"每次合并最左的一处"与"一次合并所有出现"结果相同。
        """
        parts = list(piece) if self._byte_id_is_byte else [self._byte_ids[c] for c in piece]
        get = self._pair_rank.get
        never = len(self.merges)
        ranks = [get(p, never) for p in zip(parts, parts[1:])]
        new_ids = self._merge_ids
        while ranks:
            r = min(ranks)
            if r == never:
                break
            i = ranks.index(r)
            parts[i] = new = new_ids[r]
            del parts[i + 1], ranks[i]
            if i > 0:
                ranks[i - 1] = get((parts[i - 1], new), never)
            if i < len(ranks):
                ranks[i] = get((new, parts[i + 1]), never)
        return parts

    def _encode_pieces(self, pieces: list[str], out: list[int]) -> None:
        """热循环：查缓存 + 拼接，用 map / chain 在 C 里迭代。热缓存时它与最简的 Python 循环
        （for p in pieces: out.extend(cache[p])）差不多快——CPython 3.11 上 Shakespeare 全文 128 万个预 token
        实测 0.33 s 对 0.25~0.30 s，甚至略慢；它真正省时间的是下面的冷缓存路径。

        冷缓存（第一遍）时几乎每个位置都没命中。如果逐个位置用 Python 循环补上，128 万个预 token
        的循环本身（实测 0.33 s）就比 3.4 万次 BPE（0.23 s）还贵；所以先用 dict.fromkeys（C 实现）去重，只对"没见过的不同
        预 token"跑 BPE，再用 map(fresh.get, pieces, lists) 在 C 里把空位填上：
        fresh.get(piece, 旧值) 对新预 token 返回新结果，对其余位置原样返回缓存里的结果。
        去重用 dict.fromkeys 而不是 set：它保持首次出现的顺序，缓存里的 list 按文本顺序分配，
        之后热循环访问内存更连续（用 set 时热缓存编码慢约 5%）。
        """
        cache = self._cache
        # 缓存为空（新建后的第一次调用）时每个位置都不会命中：这遍查表直接省掉
        lists = list(map(cache.get, pieces)) if cache else [None] * len(pieces)
        if None in lists:  # 只有没见过的预 token 才走慢路径
            encode_piece = self._encode_piece
            # 这里一口气新建几万个长期存活的小 list（每个预 token 的 ids），会反复触发分代 GC 去遍历整个堆，
            # 而它们没有一个是垃圾；暂停 GC 省下约 5% 的冷启动时间（只有这段代码，结束后按原状态恢复）。
            gc_was_enabled = gc.isenabled()
            gc.disable()
            try:
                new_pieces = [piece for piece in dict.fromkeys(pieces) if piece not in cache]
                fresh = {piece: encode_piece(piece.encode("utf-8")) for piece in new_pieces}
            finally:
                if gc_was_enabled:
                    gc.enable()
            lists = map(fresh.get, pieces, lists)
            if len(cache) + len(fresh) > CACHE_MAX_ENTRIES:  # 放不下就整个清空：简单，且内存有界
                cache.clear()
            if len(fresh) <= CACHE_MAX_ENTRIES:
                cache.update(fresh)
        out.extend(chain.from_iterable(lists))

    def encode_ordinary(self, text: str) -> list[int]:
        """不识别特殊 token 的编码（正文里的 "<|endoftext|>" 按普通字节编码）。"""
        out: list[int] = []
        self._encode_pieces(self._pat.findall(text), out)
        return out

    def encode(self, text: str) -> list[int]:
        """文本 → ids。特殊 token 先被切出来（重叠时同一起点取最长的），其余部分按预 token 编码。"""
        if not isinstance(text, str):
            raise TypeError(f"encode 需要 str，收到 {type(text).__name__}；bytes 请先 .decode('utf-8')")
        if self._special_re is None:
            return self.encode_ordinary(text)
        out: list[int] = []
        for k, part in enumerate(self._special_re.split(text)):
            if k % 2:  # split 带捕获组：奇数位置是特殊 token 本身
                out.append(self.special_ids[part])
            elif part:
                self._encode_pieces(self._pat.findall(part), out)
        return out

    def _special_holdback(self, buf: str) -> int:
        """buf 末尾可能是某个特殊 token 的开头（之后的文本可能把它补全或补长）：返回必须留下的起点。"""
        n = len(buf)
        for q in range(max(0, n - self._max_special + 1), n):
            tail = buf[q:]
            if any(len(s) > len(tail) and s.startswith(tail) for s in self.special_tokens):
                return q
        return n

    def _encode_prefix(self, buf: str) -> tuple[list[int], int]:
        """编码 buf 中"无论后面来什么文本都不会再变"的前缀，返回 (ids, 这个前缀的长度)。

        两种情况后面的文本会改变结果：末尾是某个特殊 token 的前半截；末尾的预 token 还能变长
        （"hel" + "lo"），或改变倒数第二个（"'" + "r" 之后来了 "e"，就成了缩写 "'re"）。
        所以留下特殊 token 的前半截，以及最后一段普通文本的最后两个预 token。
        """
        h = self._special_holdback(buf) if self._special_re is not None else len(buf)
        out: list[int] = []
        seg_start = 0
        if self._special_re is not None:
            for m in self._special_re.finditer(buf):
                if m.end() > h:  # 横跨留存点的特殊 token：连同它一起留下
                    h = min(h, m.start())
                    break
                if m.start() > seg_start:
                    self._encode_pieces(self._pat.findall(buf, seg_start, m.start()), out)
                out.append(self.special_ids[m.group()])
                seg_start = m.end()
        matches = list(self._pat.finditer(buf, seg_start, h))
        if len(matches) <= 2:
            return out, seg_start
        self._encode_pieces([m.group() for m in matches[:-2]], out)
        return out, matches[-2].start()

    def encode_iterable(self, iterable: Iterable[str], flush_chars: int = STREAM_CHARS) -> Iterator[int]:
        """流式编码：逐块读入（例如文件句柄逐行），惰性地产出 id；内存只与 flush_chars 有关。

        结果与 encode("".join(iterable)) 完全相同。
        """
        buf = ""
        for chunk in iterable:
            buf += chunk
            if len(buf) < flush_chars:
                continue
            ids, consumed = self._encode_prefix(buf)
            buf = buf[consumed:]
            yield from ids
        if buf:
            yield from self.encode(buf)

    # ------------------------------------------------------------------ 解码
    def decode_bytes(self, ids: Iterable[int]) -> bytes:
        vocab = self.vocab
        ids = list(ids)
        try:
            return b"".join(vocab[i] for i in ids)
        except (KeyError, TypeError):
            bad = next(i for i in ids if not isinstance(i, int) or i not in vocab)
            raise ValueError(f"id {bad!r} 不在词表里（合法范围 0..{max(vocab)}）；这些 id 是不是另一个分词器产生的？") from None

    def decode(self, ids: Iterable[int]) -> str:
        """ids → 文本。拼出的字节若不是合法 UTF-8（例如一个汉字被截断），非法处替换为 U+FFFD。"""
        return self.decode_bytes(ids).decode("utf-8", errors="replace")

    # ------------------------------------------------------------------ 保存 / 加载
    def to_dict(self) -> dict:
        return {
            "format": FORMAT_NAME,
            "version": FORMAT_VERSION,
            "pattern": self.pattern,
            "special_tokens": dict(self.special_ids),
            "vocab": {str(i): self.vocab[i].hex() for i in sorted(self.vocab)},
            "merges": [[a.hex(), b.hex()] for a, b in self.merges],
        }

    def save(self, path: str | os.PathLike) -> Path:
        """原子地保存成上面文档里的 JSON 格式。"""
        return atomic_write(path, json.dumps(self.to_dict(), ensure_ascii=False, indent=0))

    @classmethod
    def load(cls, path: str | os.PathLike) -> Tokenizer:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
        if data.get("format") != FORMAT_NAME or data.get("version") != FORMAT_VERSION:
            raise ValueError(
                f"{path} 不是 {FORMAT_NAME} v{FORMAT_VERSION} 格式（format={data.get('format')!r}, "
                f"version={data.get('version')!r}）；Hugging Face 的 tokenizer.json 请用 tokenizers.Tokenizer.from_file 加载"
            )
        vocab = {int(i): bytes.fromhex(h) for i, h in data["vocab"].items()}
        merges = [(bytes.fromhex(a), bytes.fromhex(b)) for a, b in data["merges"]]
        specials = sorted(data["special_tokens"], key=data["special_tokens"].get)
        tok = cls(vocab, merges, specials, data["pattern"])
        if tok.special_ids != data["special_tokens"]:
            raise ValueError(f"{path} 里特殊 token 的 id 与 vocab 不一致：{data['special_tokens']}")
        return tok

    # ------------------------------------------------------------------ 导出
    def _ordinary_ids(self) -> list[int]:
        specials = set(self.special_ids.values())
        return [i for i in sorted(self.vocab) if i not in specials]

    def mergeable_ranks(self) -> dict[bytes, int]:
        """tiktoken 的 mergeable_ranks：token 字节 → rank，这里 rank 就是 id。

        tiktoken 合并"拼起来的字节 rank 最小"的 pair，所以要求 rank 顺序与合并顺序一致：
        每个合并出的 token 的 id 必须比它的两个组成部分大，且随合并顺序递增（train_bpe 的输出天然满足）。
        """
        ranks: dict[bytes, int] = {}
        for i in self._ordinary_ids():
            b = self.vocab[i]
            if b in ranks:
                raise ValueError(f"token {b!r} 在词表里出现了两次（id {ranks[b]} 与 {i}）：tiktoken 要求 token 字节唯一")
            ranks[b] = i
        last = -1
        for a, b in self.merges:
            new = ranks[a + b]
            if not (new > ranks[a] and new > ranks[b] and new > last):
                raise ValueError(f"merge ({a!r}, {b!r}) 的 id 顺序与合并顺序不一致，无法表示成 tiktoken 的 rank")
            last = new
        return ranks

    def to_tiktoken(self, name: str = "llm-hardcore-bpe"):
        import tiktoken

        return tiktoken.Encoding(
            name, pat_str=self.pattern, mergeable_ranks=self.mergeable_ranks(), special_tokens=dict(self.special_ids)
        )

    def to_hf(self):
        """转成 tokenizers.Tokenizer：Split(同一个正则) → ByteLevel（字节映射成可见字符）→ BPE(同样的 merges)。

        不用 ByteLevel 自带的正则（use_regex=False）：预分词完全由我们的 pattern 决定，
        GPT-2 与 GPT-4 pattern 都能原样导出。特殊 token 作为 AddedToken，在预分词之前被切出。
        """
        from tokenizers import AddedToken, Regex, decoders, models, pre_tokenizers
        from tokenizers import Tokenizer as HFTokenizer

        b2u = bytes_to_unicode()

        def to_str(b: bytes) -> str:
            return "".join(b2u[c] for c in b)

        hf_vocab = {to_str(self.vocab[i]): i for i in self._ordinary_ids()}
        if len(hf_vocab) != len(self._ordinary_ids()):
            raise ValueError("词表里有重复的 token 字节，Hugging Face 的 vocab（字符串 → id）无法表示")
        for tok, i in self.special_ids.items():
            if tok in hf_vocab:
                raise ValueError(f"特殊 token {tok!r} 与一个普通 token 的 ByteLevel 写法相同，导出后会冲突")
            hf_vocab[tok] = i  # 让 AddedToken 拿到我们指定的 id
        merges = [(to_str(a), to_str(b)) for a, b in self.merges]
        hf = HFTokenizer(models.BPE(vocab=hf_vocab, merges=merges, fuse_unk=False, byte_fallback=False, ignore_merges=False))
        hf.pre_tokenizer = pre_tokenizers.Sequence(
            [
                pre_tokenizers.Split(Regex(self.pattern), behavior="isolated", invert=False),
                pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
            ]
        )
        hf.decoder = decoders.ByteLevel()
        hf.add_special_tokens([AddedToken(s, special=True, normalized=False) for s in self.special_tokens])
        return hf

    def save_hf(self, path: str | os.PathLike) -> Path:
        """原子地写出 Hugging Face 的 tokenizer.json。"""
        hf = self.to_hf()
        with atomic_path(path) as tmp:
            hf.save(str(tmp))
        return Path(path)


def main() -> None:
    """演示：训练 → 编码吞吐对照 tiktoken → 与 tiktoken / HF 逐 id 核对 → 保存加载 → 流式编码文件。"""
    import tempfile
    import time

    from tokenizers import Tokenizer as HFTokenizer

    from data_pipeline.corpora import corpus_path
    from data_pipeline.tokenization.fast_train import train_bpe
    from data_pipeline.tokenization.regex_bpe import max_bytes_per_token
    from utils.io import is_smoke

    smoke = is_smoke()
    eot = "<|endoftext|>"
    with tempfile.TemporaryDirectory() as tmp:
        path = corpus_path("shakespeare")
        if smoke:
            path = Path(tmp) / "slice.txt"
            path.write_text(corpus_path("shakespeare").read_text(encoding="utf-8")[:100_000], encoding="utf-8")
        text = path.read_text(encoding="utf-8")
        vocab, merges = train_bpe(path, 512 if smoke else 4096, [eot], progress=False)
        tok = Tokenizer(vocab, merges, [eot])
        enc = tok.to_tiktoken()

        t0 = time.perf_counter()
        ids = tok.encode(text)
        cold = time.perf_counter() - t0
        t0 = time.perf_counter()
        tok.encode(text)
        warm = time.perf_counter() - t0
        t0 = time.perf_counter()
        ref = enc.encode(text, allowed_special="all")
        tik = time.perf_counter() - t0
        assert ids == ref, "与 tiktoken 的编码不一致"
        mb = len(text.encode("utf-8")) / 1e6
        ceiling = max_bytes_per_token(text, [eot], tok.pattern)
        print(f"{mb:.2f} MB，vocab {tok.vocab_size}：{mb / len(ids) * 1e6:.2f} 字节/token（不合并 = 1.00；"
              f"每个预 token 一个 token 的上限 {ceiling:.2f}；默认配置（全文、vocab 4096）3.10，"
              f"SMOKE（100 KB、vocab 512）2.01，两者的上限都是 3.73），与 tiktoken 逐 id 相同")
        print(f"编码吞吐：ours 冷缓存 {mb / cold:.2f} MB/s，热缓存 {mb / warm:.2f} MB/s；tiktoken {mb / tik:.2f} MB/s")
        print(timing_note("benchmarks/tokenization_bpe.py"))

        hf = HFTokenizer.from_file(str(tok.save_hf(Path(tmp) / "tokenizer.json")))
        sample = text[:20_000] + f"{eot}生存还是毁灭 🙂"
        assert hf.encode(sample).ids == tok.encode(sample), "与 HF tokenizer.json 的编码不一致"
        loaded = Tokenizer.load(tok.save(Path(tmp) / "bpe.json"))
        assert loaded.encode(sample) == tok.encode(sample)
        with open(path, encoding="utf-8", newline="") as f:
            assert list(loaded.encode_iterable(f)) == ids, "流式编码必须与整体编码相同"
        print("HF tokenizer.json 逐 id 相同；save/load 往返一致；encode_iterable(文件句柄) == encode(全文)")
        print("解码示例：", [tok.decode([i]) for i in tok.encode(" To be, or not to be")])


if __name__ == "__main__":
    lesson_args(__doc__)
    main()
