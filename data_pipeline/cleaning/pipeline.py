"""流式清洗流水线：把规范化、质量过滤、语言识别、去重、PII 遮盖串成一条可续跑的多进程流水线。

    from data_pipeline.cleaning.pipeline import CleanConfig, clean, build_steps
    stats = clean(["a.jsonl", "b.txt"], "out/", CleanConfig(steps=build_steps(["normalize", "exact_dedup"])))

命令行在 `python -m data_pipeline.cleaning`（见 __main__.py）。

## 1. 步骤协议：两种步骤

别的文件（normalize.py、filters.py、langid.py、pii.py、exact_dedup.py、minhash.py）各自只管一件事；
这里用两个很小的协议把它们接成步骤，适配器都在本文件的第 4 节：

- **局部步骤**（LocalStep）：`apply(text) -> (新文本或 None, 原因)`，只看一篇文档。
  返回 None = 删掉（原因码说明为什么，例如 "gopher_quality:gopher_short_doc"）；返回不同的文本 = 修改
  （C4 的行过滤、PII 遮盖、Unicode 规范化）；原样返回且原因为 None = 不动。局部步骤可以在进程池里并行。
- **全局步骤**（GlobalStep）：去重要看"这篇以前出现过没有"，一篇文档自己说了不算。拆成两半：
  `keys(texts) -> ndarray (n, d)` 在进程池里逐块算（精确去重是文档哈希，近似去重是 MinHash 签名），
  `select(keys, text) -> {行号: 原因}` 在父进程里对全部文档的键一次算出要删的行（保留每组里最早出现的那篇）；
  `text(i)` 按需从块文件里读回第 i 行的文本，用来核对候选（哈希相同的两篇逐字比较，LSH 候选对算真实 Jaccard）。

## 2. 数据怎么流（为什么这样分三遍）

    读入（父进程，流式）──► 切块（每块 chunk_docs 篇）──► 进程池：局部步骤 + 全局步骤的键
        ──► chunks/<k>.jsonl + chunks/<k>.<步骤>.npy + chunks/<k>.json（最后写：块的"完成"标记）
    父进程：把各块的键按块序拼起来 → 全局步骤逐个 select（精确去重 → MinHash 的 LSH 分桶 + 验证 + 并查集聚类）
    过滤遍：按块序流式读 chunks/*.jsonl，跳过全局步骤删掉的行 → cleaned.jsonl、stats.json / stats.md / stats.png

- **流式**：父进程只在内存里放"正在处理的几块"（提交窗口 = 2×进程数，不用 Pool.imap——它的任务线程会把整个
  输入一口气读进队列）。全局步骤在父进程里要的只是每篇文档的键（精确去重 8 字节，MinHash 每个排列 8 字节），
  不是文本：100 万篇 × 128 个排列 ≈ 1 GB，这就是这个设计的上限；更大的语料要像 datatrove 那样把 LSH 的桶
  排序写盘、分桶合并，这里不做。
- **确定性**：块按输入顺序编号，结果按块号收回，全局步骤"保留最早的那篇"以全局顺序为准，
  所以输出与进程数无关（测试核对 1 个与 2 个进程逐字节相同）。
- **可续跑**：每块的产物先写临时文件再 rename（utils.io.atomic_write），块的元数据 chunks/<k>.json 最后写，
  里面记着本次配置的摘要与每个产物的 SHA-256。一块"已完成" = 元数据能解析、配置摘要相同、产物都在且哈希对得上。
  进程在任何时刻被杀，最多丢掉正在算的那几块；写了一半的块没有元数据（或哈希对不上），永远不会被当成完成。
  --resume 时父进程照常从头读输入（读比算便宜得多），已完成的块直接跳过、不再提交。
- **坏输入**：非 UTF-8 字节按 on_bad_utf8 跳过整篇（默认）或用 U+FFFD 修补，都计数并记下"文件:行"；
  JSONL 里不是 JSON 的行（或没有字符串字段 text）按 on_bad_json 报错（带文件:行）或跳过计数；
  空文档（只有空白）由总是第一个运行的 "empty" 步骤删掉；修改型步骤把文档改成空白时也删掉（原因 "<步骤>:emptied"）。

## 3. 输入与输出格式

JSONL：每行一个对象，必须有字符串字段 "text"，其它字段原样保留到输出。纯文本：**按空行切文档**（连续的空白行
算一个分隔）——不是"一个文件一篇"：莎士比亚这类语料一个文件就是全部，按空行切正好是一段台词一篇，
去重与过滤才有意义；文档内部的换行保留。扩展名 .jsonl / .json 按 JSONL 读，其余按纯文本读（format 可强制）。
输出总是 JSONL：<out>/cleaned.jsonl；jsonl_to_text() 把它按空行拼回纯文本（make run 的分词器读这个）。
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import os
import re
import shutil
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np

from utils.io import atomic_path, atomic_write, save_figure

__all__ = [
    "STEP_BUILDERS", "CleanConfig", "DecisionStep", "DropEmpty", "ExactDedupStep", "GlobalStep", "InputError",
    "LocalStep", "NearDedupStep", "NormalizeStep", "PIIStep", "ReadStats", "StepStats", "available_steps", "build_steps",
    "clean", "iter_documents", "jsonl_to_text", "read_cleaned", "stats_markdown",
]

FORMAT_VERSION = 1
MAX_EXAMPLES = 3  # 每个原因记下的样例数（报告里给人看"删的是什么"）
SNIPPET_CHARS = 160


class InputError(ValueError):
    """输入有问题（文件不存在、JSONL 的某一行不是 JSON、选项越界）。消息里写明哪个文件哪一行、怎么办。"""


# ---------------------------------------------------------------------------
# 1. 步骤协议
# ---------------------------------------------------------------------------
@runtime_checkable
class LocalStep(Protocol):
    """只看一篇文档的步骤。apply 返回 (None, 原因) = 删；(新文本, 原因) = 改；(原文, None) = 不动。"""

    name: str

    def apply(self, text: str) -> tuple[str | None, str | None]: ...


@runtime_checkable
class GlobalStep(Protocol):
    """要看全部文档才能决定的步骤（去重）：keys 在进程池里逐块算，select 在父进程里一次算。

    select 收到按全局顺序排列的键（只含前面步骤留下的文档）与按行号取文本的函数，返回 {行号: 原因}：要删掉的行。
    约定保留每组里行号最小（最早出现）的那篇，输出才与进程数无关。
    """

    name: str

    def keys(self, texts: list[str]) -> np.ndarray: ...

    def select(self, keys: np.ndarray, text: Callable[[int], str]) -> dict[int, str]: ...


def is_global(step: Any) -> bool:
    return hasattr(step, "select") and hasattr(step, "keys")


@dataclass(frozen=True)
class DropEmpty:
    """总是第一个运行：只有空白的文档没有任何训练价值，而且会让后面按词计数的规则除以零。"""

    name: str = "empty"

    def apply(self, text: str) -> tuple[str | None, str | None]:
        return (text, None) if text.strip() else (None, "blank")


def nbytes(text: str) -> int:
    return len(text.encode("utf-8"))


# ---------------------------------------------------------------------------
# 2. 统计：每个步骤删了 / 改了多少篇、多少字节，按原因细分
# ---------------------------------------------------------------------------
@dataclass
class StepStats:
    """一个步骤的计数。bytes_modified 是修改前后 UTF-8 字节数之差（变短为正；遮盖成占位符可能为负）。"""

    name: str
    kind: str = "local"
    docs_removed: int = 0
    bytes_removed: int = 0
    docs_modified: int = 0
    bytes_modified: int = 0
    reasons: dict[str, dict[str, int]] = field(default_factory=dict)
    examples: dict[str, list[dict[str, str]]] = field(default_factory=dict)

    def _reason(self, reason: str) -> dict[str, int]:
        return self.reasons.setdefault(reason, {"docs_removed": 0, "bytes_removed": 0, "docs_modified": 0,
                                                "bytes_modified": 0})

    def _example(self, reason: str, source: str, text: str) -> None:
        ex = self.examples.setdefault(reason, [])
        if len(ex) < MAX_EXAMPLES:
            ex.append({"source": source, "text": text[:SNIPPET_CHARS]})

    def remove(self, reason: str, n_bytes: int, source: str, text: str) -> None:
        self.docs_removed += 1
        self.bytes_removed += n_bytes
        r = self._reason(reason)
        r["docs_removed"] += 1
        r["bytes_removed"] += n_bytes
        self._example(reason, source, text)

    def modify(self, reason: str, delta: int, source: str, text: str) -> None:
        self.docs_modified += 1
        self.bytes_modified += delta
        r = self._reason(reason)
        r["docs_modified"] += 1
        r["bytes_modified"] += delta
        self._example(reason, source, text)

    def merge(self, other: StepStats) -> None:
        """按块序合并：计数相加，样例保留最早的几条（所以与进程数无关）。"""
        for k in ("docs_removed", "bytes_removed", "docs_modified", "bytes_modified"):
            setattr(self, k, getattr(self, k) + getattr(other, k))
        for reason, counts in other.reasons.items():
            mine = self._reason(reason)
            for k, v in counts.items():
                mine[k] += v
        for reason, exs in other.examples.items():
            mine_ex = self.examples.setdefault(reason, [])
            mine_ex.extend(exs[: MAX_EXAMPLES - len(mine_ex)])

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "kind": self.kind, "docs_removed": self.docs_removed,
                "bytes_removed": self.bytes_removed, "docs_modified": self.docs_modified,
                "bytes_modified": self.bytes_modified, "reasons": dict(sorted(self.reasons.items())),
                "examples": dict(sorted(self.examples.items()))}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> StepStats:
        return cls(**d)


@dataclass
class ReadStats:
    """读入阶段的计数：坏 UTF-8（跳过 / 修补）与坏 JSON（跳过）的篇数，外加前几处的"文件:行"。"""

    docs: int = 0
    bytes: int = 0
    bad_utf8_skipped: int = 0
    bad_utf8_replaced: int = 0
    bad_json_skipped: int = 0
    problems: list[str] = field(default_factory=list)

    def problem(self, where: str) -> None:
        if len(self.problems) < 20:
            self.problems.append(where)

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


# ---------------------------------------------------------------------------
# 3. 读入：JSONL 或按空行切的纯文本，流式，坏输入按策略处理
# ---------------------------------------------------------------------------
_SURROGATE_RE = re.compile("[\ud800-\udfff]")
ON_BAD_UTF8 = ("skip", "replace")
ON_BAD_JSON = ("error", "skip")
FORMATS = ("auto", "jsonl", "text")


def _decode(raw: bytes, where: str, on_bad_utf8: str, stats: ReadStats) -> str | None:
    """严格解码；失败时按策略跳过（返回 None）或用 U+FFFD 修补。两种都计数、记下位置。"""
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as e:
        stats.problem(f"{where}: 非 UTF-8 字节（偏移 {e.start}）→ {'跳过' if on_bad_utf8 == 'skip' else '修补'}")
        if on_bad_utf8 == "skip":
            stats.bad_utf8_skipped += 1
            return None
        stats.bad_utf8_replaced += 1
        return raw.decode("utf-8", errors="replace")


def _fix_surrogates(text: str, where: str, on_bad_utf8: str, stats: ReadStats) -> str | None:
    # JSON 里的 "\ud800" 能解析出孤立的代理项，这样的 str 写不回 UTF-8：不在这里处理，写输出时才会崩（在语料中途）
    if not _SURROGATE_RE.search(text):
        return text
    stats.problem(f"{where}: 孤立的 UTF-16 代理项（\\ud800..\\udfff）→ {'跳过' if on_bad_utf8 == 'skip' else '修补'}")
    if on_bad_utf8 == "skip":
        stats.bad_utf8_skipped += 1
        return None
    stats.bad_utf8_replaced += 1
    return _SURROGATE_RE.sub("\ufffd", text)


def _detect_format(path: Path, fmt: str) -> str:
    if fmt != "auto":
        return fmt
    return "jsonl" if path.suffix.lower() in (".jsonl", ".json") else "text"


def _iter_jsonl(path: Path, on_bad_utf8: str, on_bad_json: str, stats: ReadStats
                ) -> Iterator[tuple[str, dict[str, Any], int]]:
    with open(path, "rb") as f:
        for lineno, raw in enumerate(f, 1):
            where = f"{path}:{lineno}"
            if not raw.strip():
                continue  # JSONL 里的空行不是文档
            line = _decode(raw, where, on_bad_utf8, stats)
            if line is None:
                continue
            try:
                rec = json.loads(line)
                problem = None if isinstance(rec, dict) and isinstance(rec.get("text"), str) else \
                    "不是带字符串字段 \"text\" 的 JSON 对象"
            except json.JSONDecodeError as e:
                problem = f"不是合法的 JSON（{e.msg}，第 {e.colno} 列）"
            if problem is not None:
                if on_bad_json == "error":
                    raise InputError(f"{where}: {problem}。修好这一行，或加 --on-bad-json skip 跳过这样的行并计数")
                stats.bad_json_skipped += 1
                stats.problem(f"{where}: {problem} → 跳过")
                continue
            text = _fix_surrogates(rec["text"], where, on_bad_utf8, stats)
            if text is None:
                continue
            rec["text"] = text
            yield where, rec, len(raw)


def _iter_text(path: Path, on_bad_utf8: str, stats: ReadStats) -> Iterator[tuple[str, dict[str, Any], int]]:
    # 按字节读行：一行里的坏字节只连累它所在的那篇文档，不会让整个文件读不下去
    para: list[bytes] = []
    start = 0
    size = 0

    def flush() -> Iterator[tuple[str, dict[str, Any], int]]:
        where = f"{path}:{start}"
        text = _decode(b"".join(para).rstrip(b"\r\n"), where, on_bad_utf8, stats)
        if text is not None:
            yield where, {"text": text.replace("\r\n", "\n")}, size

    with open(path, "rb") as f:
        for lineno, raw in enumerate(f, 1):
            if raw.strip():
                if not para:
                    start, size = lineno, 0
                para.append(raw)
                size += len(raw)
            else:
                if para:
                    yield from flush()
                    para = []
        if para:
            yield from flush()


def iter_documents(paths: Sequence[str | os.PathLike], fmt: str = "auto", on_bad_utf8: str = "skip",
                   on_bad_json: str = "error", stats: ReadStats | None = None
                   ) -> Iterator[tuple[str, dict[str, Any], int]]:
    """按顺序流式读出全部文档：(来源 "文件:行", 记录 dict（含 "text"）, 原始字节数)。"""
    stats = stats if stats is not None else ReadStats()
    for p in paths:
        path = Path(p)
        if not path.is_file():
            raise InputError(f"输入文件不存在：{path}")
        kind = _detect_format(path, fmt)
        it = _iter_jsonl(path, on_bad_utf8, on_bad_json, stats) if kind == "jsonl" else \
            _iter_text(path, on_bad_utf8, stats)
        for where, rec, raw_bytes in it:
            stats.docs += 1
            stats.bytes += nbytes(rec["text"])
            yield where, rec, raw_bytes


# ---------------------------------------------------------------------------
# 4. 具体步骤的适配器（其它文件里的规则 → 本文件的两个协议）
# ---------------------------------------------------------------------------
@dataclass(frozen=True)
class NormalizeStep:
    """Unicode 规范化（normalize.normalize_text）：修乱码 → NFC → 删控制字符 → 规范空白。只改不删。"""

    form: str = "NFC"
    repair_mojibake: bool = True
    name: str = "normalize"

    def apply(self, text: str) -> tuple[str | None, str | None]:
        from data_pipeline.cleaning.normalize import normalize_text

        new = normalize_text(text, self.form, repair_mojibake=self.repair_mojibake)
        return new, ("normalized" if new != text else None)


def _describe(obj: Any) -> str:
    """步骤的确定性描述（进配置摘要）：公开的标量、集合、dataclass 配置与函数名；不含内存地址。"""
    parts = []
    for k, v in sorted(vars(obj).items()):
        if k.startswith("_"):
            continue
        if dataclasses.is_dataclass(v) or isinstance(v, (bool, int, float, str, type(None))):
            parts.append(f"{k}={v!r}")
        elif isinstance(v, (set, frozenset)):
            parts.append(f"{k}={sorted(v)!r}")
        elif callable(v):
            parts.append(f"{k}={getattr(v, '__qualname__', type(v).__name__)}")
    return f"{type(obj).__name__}({', '.join(parts)})"


class DecisionStep:
    """把返回 Decision(keep, reason, text) 的过滤器（filters.py 的规则、langid.LanguageFilter）接成局部步骤：
    keep=False → 删（原因就是过滤器的理由码，与 datatrove 相同）；Decision.text 有值 → 改（C4 删掉了一些行）。"""

    def __init__(self, name: str, flt: Any) -> None:
        self.name, self.filter = name, flt

    def __repr__(self) -> str:
        return f"DecisionStep({self.name!r}, {_describe(self.filter)})"

    def apply(self, text: str) -> tuple[str | None, str | None]:
        d = self.filter(text)
        if not d.keep:
            return None, d.reason
        if d.text is not None and d.text != text:
            return d.text, "lines_removed"
        return text, None


def _rule(name: str, cls: str, preset: str) -> Callable[[], DecisionStep]:
    """filters.py 里的一条规则（类名 + 预设名）→ 造步骤的函数。导入推迟到造步骤时：只用去重的人不必加载规则。"""

    def build() -> DecisionStep:
        from data_pipeline.cleaning import filters

        return DecisionStep(name, getattr(filters, cls)(getattr(filters, preset)))

    return build


# FineWeb 的启发式过滤链（filters.fineweb_filters 的顺序与预设：Gopher 重复 → Gopher 质量 → C4 → FineWeb），
# 每条规则一个步骤——统计表里才分得清是哪条规则删的。
FINEWEB_CHAIN = {
    "gopher_repetition": _rule("gopher_repetition", "GopherRepetitionFilter", "GOPHER_REPETITION"),
    "gopher_quality": _rule("gopher_quality", "GopherQualityFilter", "GOPHER_QUALITY"),
    "c4_quality": _rule("c4_quality", "C4QualityFilter", "FINEWEB_C4"),
    "fineweb_quality": _rule("fineweb_quality", "FineWebQualityFilter", "FINEWEB_QUALITY"),
}


def _language_step() -> DecisionStep:
    """只留英语、后验概率 ≥ 0.65 的文档（FineWeb 的设定；langid.LanguageFilter，原因码 language_<语言>）。"""
    from data_pipeline.cleaning.langid import LanguageFilter

    return DecisionStep("language", LanguageFilter(("en",), 0.65))


@dataclass(frozen=True)
class PIIStep:
    """PII 遮盖（pii.mask_pii）：邮箱、电话、IPv4/IPv6 换成占位符。原因码是这篇里出现的种类，例如 "email+phone"。"""

    name: str = "pii"

    def apply(self, text: str) -> tuple[str | None, str | None]:
        from data_pipeline.cleaning.pii import KINDS, mask_pii

        result = mask_pii(text)
        if result.text == text:
            return text, None
        return result.text, "+".join(k for k in KINDS if result.counts.get(k))


@dataclass(frozen=True)
class ExactDedupStep:
    """整篇精确去重（exact_dedup.doc_hash：64 位 blake2b）。哈希相同的一组留最早的一篇；
    删之前逐字比较一次文本——64 位哈希在上亿篇时也可能碰撞，核对的代价只是读回这几篇重复文档。"""

    name: str = "exact_dedup"

    def keys(self, texts: list[str]) -> np.ndarray:
        from data_pipeline.cleaning.exact_dedup import doc_hash

        return np.array([doc_hash(t) for t in texts], dtype=np.uint64).reshape(len(texts), 1)

    def select(self, keys: np.ndarray, text: Callable[[int], str]) -> dict[int, str]:
        _, first, group = np.unique(keys[:, 0], return_index=True, return_inverse=True)
        first_of = first[group.reshape(-1)]  # 每行所在组里最早的行号
        return {i: "duplicate" for i in np.flatnonzero(first_of != np.arange(len(keys))).tolist()
                if text(i) == text(int(first_of[i]))}


@functools.lru_cache(maxsize=4)
def _minhasher(num_perm: int, seed: int) -> Any:
    from data_pipeline.cleaning.minhash import MinHasher

    return MinHasher(num_perm, seed)


@dataclass(frozen=True)
class NearDedupStep:
    """近似去重（minhash.py）：进程池里每块算 MinHash 签名（键），父进程里 LSH 分桶出候选对，
    按需读回候选的文本算真实 Jaccard 核对（≥ threshold 才算重复，去掉 LSH 的误报），并查集聚类，每簇留最早的一篇。

    默认词 5-gram、128 个排列、核对阈值 0.8。LSH 的 (b, r) 按更低的 lsh_threshold = 0.7 由 minhash.optimal_bands
    选出（误报 / 漏报面积之和最小）：阈值正好落在 S 形候选概率曲线的中段，按 0.8 选出的 (9, 13) 只有 92.9% 的
    J = 0.9 的对会成为候选；按 0.7 选出的 (14, 9) 是 99.9%。多出来的候选由真实 Jaccard 核对去掉，结果仍是"J ≥ 0.8 才算重复"。
    """

    threshold: float = 0.8
    lsh_threshold: float = 0.7
    num_perm: int = 128
    n: int = 5
    unit: str = "word"
    seed: int = 1
    name: str = "near_dedup"

    def keys(self, texts: list[str]) -> np.ndarray:
        from data_pipeline.cleaning.minhash import shingles

        return _minhasher(self.num_perm, self.seed).signatures([shingles(t, self.n, self.unit) for t in texts])

    def select(self, keys: np.ndarray, text: Callable[[int], str]) -> dict[int, str]:
        from data_pipeline.cleaning.minhash import UnionFind, jaccard, lsh_candidate_pairs, optimal_bands, shingles

        bands, rows = optimal_bands(min(self.lsh_threshold, self.threshold), self.num_perm)
        uf = UnionFind(len(keys))
        cache: dict[int, set[bytes]] = {}

        def shingle_set(i: int) -> set[bytes]:
            if i not in cache:
                cache[i] = shingles(text(i), self.n, self.unit)
            return cache[i]

        for i, j in lsh_candidate_pairs(keys, bands, rows).tolist():
            # 已在同一簇的对不必再核对：并查集的连通分量与核对顺序无关，结果确定
            if uf.find(i) != uf.find(j) and jaccard(shingle_set(i), shingle_set(j)) >= self.threshold:
                uf.union(i, j)
        return {i: "near_duplicate" for group in uf.groups() for i in group[1:]}


# 默认顺序（命令行不给 --steps 时全部按这个顺序跑）：先规范化（后面的规则都按规范化后的文本计数）→ 语言 →
# 质量规则 → PII 遮盖 → 精确去重 → 近似去重。PII 排在去重之前（FineWeb 放在最后）：全局步骤必须在局部步骤之后，
# 而且只差一个邮箱的两篇文档遮盖之后成为精确重复，正好一起去掉。
STEP_BUILDERS: dict[str, Callable[[], Any]] = {
    "normalize": NormalizeStep,
    "language": _language_step,
    **FINEWEB_CHAIN,
    "pii": PIIStep,
    "exact_dedup": ExactDedupStep,
    "near_dedup": NearDedupStep,
}


def available_steps() -> list[str]:
    return list(STEP_BUILDERS)


def build_steps(names: Sequence[str]) -> list[Any]:
    """按名字造步骤。局部步骤必须都排在全局步骤前面：全局步骤的键是在局部步骤之后算的。"""
    unknown = [n for n in names if n not in STEP_BUILDERS]
    if unknown:
        raise InputError(f"未知的清洗步骤：{', '.join(unknown)}；可选：{', '.join(STEP_BUILDERS)}")
    if len(set(names)) != len(names):
        raise InputError(f"--steps 里有重复的步骤：{', '.join(names)}")
    return [STEP_BUILDERS[n]() for n in names]


# ---------------------------------------------------------------------------
# 5. 一块文档：局部步骤 + 全局步骤的键，产物原子写盘，元数据最后写
# ---------------------------------------------------------------------------
@dataclass
class CleanConfig:
    """一次清洗的选项（命令行参数一一对应）。steps 是步骤对象（build_steps 造，或任何满足协议的对象）。"""

    steps: list[Any] = field(default_factory=list)
    workers: int = 1
    chunk_docs: int = 1000
    resume: bool = False
    fmt: str = "auto"
    on_bad_utf8: str = "skip"
    on_bad_json: str = "error"
    progress: bool = True

    def validate(self) -> None:
        if self.workers < 1:
            raise InputError(f"--workers {self.workers} 必须是正整数")
        if self.chunk_docs < 1:
            raise InputError(f"--chunk-docs {self.chunk_docs} 必须是正整数")
        if self.fmt not in FORMATS:
            raise InputError(f"--format {self.fmt!r} 不认识；可选：{', '.join(FORMATS)}")
        if self.on_bad_utf8 not in ON_BAD_UTF8:
            raise InputError(f"--on-bad-utf8 {self.on_bad_utf8!r} 不认识；可选：{', '.join(ON_BAD_UTF8)}")
        if self.on_bad_json not in ON_BAD_JSON:
            raise InputError(f"--on-bad-json {self.on_bad_json!r} 不认识；可选：{', '.join(ON_BAD_JSON)}")
        names = [s.name for s in self.steps]
        if len(set(names)) != len(names):
            raise InputError(f"步骤名重复：{names}")
        seen_global = False
        for s in self.steps:
            if is_global(s):
                seen_global = True
            elif not isinstance(s, LocalStep):
                raise InputError(f"步骤 {s!r} 既不是局部步骤（apply）也不是全局步骤（keys + select）")
            elif seen_global:
                raise InputError(f"局部步骤 {s.name!r} 排在了全局步骤后面：全局步骤（去重）的键在局部步骤之后才算，"
                                 "请把去重放到最后")


@dataclass
class _ChunkContext:
    steps: list[Any]
    chunk_dir: Path
    digest: str


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _chunk_meta_path(chunk_dir: Path, k: int) -> Path:
    return chunk_dir / f"{k:06d}.json"


def _chunk_done(chunk_dir: Path, k: int, digest: str) -> dict[str, Any] | None:
    """块 k 已完成则返回它的元数据。元数据缺失、截断、来自别的配置、产物缺失或哈希不对，都算未完成。"""
    try:
        meta = json.loads(_chunk_meta_path(chunk_dir, k).read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError, UnicodeDecodeError):
        return None
    if not isinstance(meta, dict) or meta.get("digest") != digest or meta.get("chunk") != k:
        return None
    for name, sha in meta.get("files", {}).items():
        p = chunk_dir / name
        if not p.is_file() or _sha256(p) != sha:
            return None
    return meta


def process_chunk(k: int, docs: list[tuple[str, dict[str, Any]]], ctx: _ChunkContext) -> dict[str, Any]:
    """在一块文档上跑全部局部步骤、算全局步骤的键，原子地写出产物，最后写元数据。返回元数据。"""
    local = [s for s in ctx.steps if not is_global(s)]
    glob = [s for s in ctx.steps if is_global(s)]
    stats = {s.name: StepStats(s.name) for s in local}
    kept: list[tuple[str, dict[str, Any]]] = []
    for source, rec in docs:
        text = rec["text"]
        for step in local:
            new, reason = step.apply(text)
            st = stats[step.name]
            if new is None:
                st.remove(f"{step.name}:{reason}", nbytes(text), source, text)
                break
            if new != text:
                if not new.strip():  # 改成了空白：删掉（否则下游的"每词"统计除以零）
                    st.remove(f"{step.name}:emptied", nbytes(text), source, text)
                    break
                st.modify(f"{step.name}:{reason or 'modified'}", nbytes(text) - nbytes(new), source, text)
                text = new
        else:
            kept.append((source, {**rec, "text": text}))
    files = []
    name = f"{k:06d}.jsonl"
    atomic_write(ctx.chunk_dir / name,
                 "".join(json.dumps({"source": s, "record": r}, ensure_ascii=False) + "\n" for s, r in kept))
    files.append(name)
    texts = [r["text"] for _, r in kept]
    for step in glob:
        keys = np.ascontiguousarray(step.keys(texts))
        if keys.shape[0] != len(texts):
            raise RuntimeError(f"全局步骤 {step.name} 的 keys() 返回 {keys.shape[0]} 行，应为 {len(texts)} 行")
        kname = f"{k:06d}.{step.name}.npy"
        with atomic_path(ctx.chunk_dir / kname) as tmp, open(tmp, "wb") as f:
            np.save(f, keys)
        files.append(kname)
    meta = {"chunk": k, "digest": ctx.digest, "docs_in": len(docs), "docs_out": len(kept),
            "files": {n: _sha256(ctx.chunk_dir / n) for n in files},
            "stats": {n: s.to_dict() for n, s in stats.items()}}
    # 提交点：产物都已原子写完，最后原子地写元数据
    atomic_write(_chunk_meta_path(ctx.chunk_dir, k), json.dumps(meta, ensure_ascii=False) + "\n")
    return meta


_WORKER_CTX: _ChunkContext | None = None


def _init_worker(ctx: _ChunkContext) -> None:
    global _WORKER_CTX
    _WORKER_CTX = ctx


def _worker(task: tuple[int, list[tuple[str, dict[str, Any]]]]) -> dict[str, Any]:
    assert _WORKER_CTX is not None
    return process_chunk(task[0], task[1], _WORKER_CTX)


def _chunks(docs: Iterable[tuple[str, dict[str, Any], int]], chunk_docs: int
            ) -> Iterator[tuple[int, list[tuple[str, dict[str, Any]]], int]]:
    buf: list[tuple[str, dict[str, Any]]] = []
    raw = 0
    k = 0
    for source, rec, raw_bytes in docs:
        buf.append((source, rec))
        raw += raw_bytes
        if len(buf) == chunk_docs:
            yield k, buf, raw
            k, buf, raw = k + 1, [], 0
    if buf:
        yield k, buf, raw


def _ordered_map(fn: Callable, tasks: Iterator, workers: int, ctx: _ChunkContext) -> Iterator[Any]:
    """按提交顺序产出结果；同时在跑的任务不超过 2×workers 个，输入因此是真正流式读的。"""
    if workers == 1:  # 单进程：不起进程池（测试与小语料更快，行为完全相同）
        _init_worker(ctx)
        for task in tasks:
            yield fn(task)
        return
    import multiprocessing

    with multiprocessing.get_context().Pool(workers, initializer=_init_worker, initargs=(ctx,)) as pool:
        window: deque = deque()
        for task in tasks:
            window.append(pool.apply_async(fn, (task,)))
            if len(window) >= 2 * workers:
                yield window.popleft().get()
        while window:
            yield window.popleft().get()


# ---------------------------------------------------------------------------
# 6. 整条流水线
# ---------------------------------------------------------------------------
def config_digest(inputs: Sequence[Path], cfg: CleanConfig) -> str:
    """配置摘要：输入文件（路径、大小、修改时间）+ 步骤（repr，含全部阈值）+ 影响输出的选项 + 本包源码的哈希。

    用修改时间而不是内容哈希：续跑前不必把整个语料再读一遍算哈希；文件被改写过，修改时间就变，所有块重算。
    源码哈希：改了某条规则的实现（阈值没变、repr 也没变）之后续跑，旧块不能再用。
    """
    code = hashlib.sha256(b"".join(_sha256(p).encode() for p in sorted(Path(__file__).parent.glob("*.py"))))
    desc = {"version": FORMAT_VERSION, "code": code.hexdigest(),
            "inputs": [[str(p.resolve()), p.stat().st_size, p.stat().st_mtime_ns] for p in inputs],
            "steps": [repr(s) for s in cfg.steps], "chunk_docs": cfg.chunk_docs, "fmt": cfg.fmt,
            "on_bad_utf8": cfg.on_bad_utf8, "on_bad_json": cfg.on_bad_json}
    return hashlib.sha256(json.dumps(desc, sort_keys=True).encode()).hexdigest()


class _TextLookup:
    """全局行号 → 文本：定位到块，整块读进来（留最近 16 块）。全局步骤只为少数候选调用它。"""

    def __init__(self, chunk_dir: Path, metas: list[dict[str, Any]]) -> None:
        self.chunk_dir = chunk_dir
        self.chunks = [m["chunk"] for m in metas]
        self.ends = np.cumsum([m["docs_out"] for m in metas])
        self.cache: dict[int, list[str]] = {}

    def __call__(self, row: int) -> str:
        pos = int(np.searchsorted(self.ends, row, side="right"))
        k = self.chunks[pos]
        if k not in self.cache:
            if len(self.cache) >= 16:
                self.cache.pop(next(iter(self.cache)))
            with open(self.chunk_dir / f"{k:06d}.jsonl", encoding="utf-8") as f:
                self.cache[k] = [json.loads(line)["record"]["text"] for line in f]
        start = int(self.ends[pos - 1]) if pos else 0
        return self.cache[k][row - start]


def clean(inputs: Sequence[str | os.PathLike], out_dir: str | os.PathLike, cfg: CleanConfig) -> dict[str, Any]:
    """清洗 inputs，写出 <out_dir>/cleaned.jsonl、stats.json、stats.md、stats.png，返回 stats（stats.json 的内容）。"""
    from tqdm import tqdm

    cfg.validate()
    paths = [Path(p) for p in inputs]
    if not paths:
        raise InputError("没有输入文件：至少给一个 JSONL 或纯文本文件")
    for p in paths:
        if not p.is_file():
            raise InputError(f"输入文件不存在：{p}")
    steps = [DropEmpty(), *cfg.steps]
    out = Path(out_dir)
    chunk_dir = out / "chunks"
    digest = config_digest(paths, cfg)
    if not cfg.resume and chunk_dir.exists():
        shutil.rmtree(chunk_dir)
    chunk_dir.mkdir(parents=True, exist_ok=True)
    for tmp in chunk_dir.glob(".*.tmp"):  # 被 kill -9 的上一次运行留下的临时文件（从没被 rename 成产物）
        tmp.unlink()
    atomic_write(out / "manifest.json", json.dumps(
        {"version": FORMAT_VERSION, "digest": digest, "inputs": [str(p) for p in paths],
         "steps": [repr(s) for s in steps], "chunk_docs": cfg.chunk_docs}, ensure_ascii=False, indent=2) + "\n")
    ctx = _ChunkContext(steps, chunk_dir, digest)
    t0 = time.perf_counter()
    read_stats = ReadStats()
    metas: list[dict[str, Any]] = []
    reused = 0
    total = sum(p.stat().st_size for p in paths)
    with tqdm(total=total, unit="B", unit_scale=True, desc="clean", mininterval=0.5, disable=not cfg.progress) as bar:
        pending_bytes: deque[int] = deque()

        def tasks() -> Iterator[tuple[int, list[tuple[str, dict[str, Any]]]]]:
            nonlocal reused
            for k, docs, raw in _chunks(iter_documents(paths, cfg.fmt, cfg.on_bad_utf8, cfg.on_bad_json,
                                                       read_stats), cfg.chunk_docs):
                done = _chunk_done(chunk_dir, k, digest) if cfg.resume else None
                if done is not None:
                    reused += 1
                    bar.update(raw)
                    metas.append(done)
                    continue
                pending_bytes.append(raw)
                yield k, docs

        for meta in _ordered_map(_worker, tasks(), cfg.workers, ctx):
            metas.append(meta)
            bar.update(pending_bytes.popleft())
    metas.sort(key=lambda m: m["chunk"])
    # 输入变短了（续跑时）：上次留下的编号更大的块不属于这次
    n_chunks = len(metas)
    for stale in chunk_dir.iterdir():
        if stale.name[:6].isdigit() and int(stale.name[:6]) >= n_chunks:
            stale.unlink()

    step_stats = {s.name: StepStats(s.name) for s in steps}
    for meta in metas:
        for name, d in meta["stats"].items():
            step_stats[name].merge(StepStats.from_dict(d))

    # 全局步骤：键按块序拼起来，逐个 select；alive 标记前面的全局步骤留下的行
    glob = [s for s in steps if is_global(s)]
    lookup = _TextLookup(chunk_dir, metas)
    n_docs = sum(m["docs_out"] for m in metas)
    alive = np.ones(n_docs, dtype=bool)
    drop_reason: dict[int, tuple[str, str]] = {}
    for step in glob:
        step_stats[step.name].kind = "global"
        parts = [np.load(chunk_dir / f"{m['chunk']:06d}.{step.name}.npy") for m in metas if m["docs_out"]]
        keys = np.concatenate(parts) if parts else np.zeros((0, 1), dtype=np.uint64)
        idx = np.flatnonzero(alive)
        for i, reason in step.select(keys[idx], lambda i, idx=idx: lookup(int(idx[i]))).items():
            alive[idx[i]] = False
            drop_reason[int(idx[i])] = (step.name, f"{step.name}:{reason}")

    # 过滤遍：按块序流式写出 cleaned.jsonl，顺便给全局步骤计数
    out_docs = out_bytes = 0
    row = 0
    with atomic_path(out / "cleaned.jsonl") as tmp, open(tmp, "w", encoding="utf-8") as f:
        for meta in metas:
            if not meta["docs_out"]:
                continue
            with open(chunk_dir / f"{meta['chunk']:06d}.jsonl", encoding="utf-8") as cf:
                for line in cf:
                    item = json.loads(line)
                    text = item["record"]["text"]
                    if row in drop_reason:
                        name, reason = drop_reason[row]
                        step_stats[name].remove(reason, nbytes(text), item["source"], text)
                    else:
                        f.write(json.dumps(item["record"], ensure_ascii=False) + "\n")
                        out_docs += 1
                        out_bytes += nbytes(text)
                    row += 1
    stats = {
        "inputs": [str(p) for p in paths],
        "read": read_stats.to_dict(),
        "steps": [step_stats[s.name].to_dict() for s in steps],
        "output": {"docs": out_docs, "bytes": out_bytes, "path": str(out / "cleaned.jsonl")},
        "chunks": n_chunks, "chunks_reused": reused, "workers": cfg.workers,
        "seconds": time.perf_counter() - t0,
    }
    write_stats(stats, out)
    return stats


# ---------------------------------------------------------------------------
# 7. 统计的三种形式：stats.json、markdown 表、PNG 柱状图
# ---------------------------------------------------------------------------
def stats_markdown(stats: dict[str, Any]) -> str:
    """每个步骤一行（输入篇数 = 上一步留下的），下面按原因细分；最后一行是输出。字节变化为正 = 变短。"""
    r = stats["read"]
    lines = ["| 步骤 | 原因 | 进入（篇） | 删除（篇） | 删除（字节） | 修改（篇） | 修改减少（字节） |",
             "|---|---|---:|---:|---:|---:|---:|"]
    docs = r["docs"]
    for s in stats["steps"]:
        lines.append(f"| **{s['name']}**{'（全局）' if s['kind'] == 'global' else ''} | | {docs:,} | "
                     f"{s['docs_removed']:,} | {s['bytes_removed']:,} | {s['docs_modified']:,} | "
                     f"{s['bytes_modified']:,} |")
        for reason, c in s["reasons"].items():
            lines.append(f"| | `{reason}` | | {c['docs_removed']:,} | {c['bytes_removed']:,} | "
                         f"{c['docs_modified']:,} | {c['bytes_modified']:,} |")
        docs -= s["docs_removed"]
    o = stats["output"]
    lines.append(f"| **输出** | | {o['docs']:,} | | | | |")
    bad = []
    if r["bad_utf8_skipped"] or r["bad_utf8_replaced"]:
        bad.append(f"非 UTF-8：跳过 {r['bad_utf8_skipped']} 篇、修补 {r['bad_utf8_replaced']} 篇")
    if r["bad_json_skipped"]:
        bad.append(f"坏 JSON 行：跳过 {r['bad_json_skipped']} 行")
    head = (f"读入 {r['docs']:,} 篇、{r['bytes']:,} 字节 → 输出 {o['docs']:,} 篇、{o['bytes']:,} 字节"
            f"（保留 {o['bytes'] / max(r['bytes'], 1):.1%} 的字节）。")
    return head + ("读入时" + "；".join(bad) + "。" if bad else "") + "\n\n" + "\n".join(lines) + "\n"


def plot_stats(stats: dict[str, Any], path: Path) -> Path:
    """每个步骤删掉 / 改动的篇数（横向柱状图），原子写成 PNG。"""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = stats["steps"]
    names = [s["name"] for s in steps]
    y = np.arange(len(names))
    fig, ax = plt.subplots(figsize=(7, 0.5 * len(names) + 1.5))
    ax.barh(y - 0.2, [s["docs_removed"] for s in steps], height=0.4, label="removed docs")
    ax.barh(y + 0.2, [s["docs_modified"] for s in steps], height=0.4, label="modified docs")
    ax.set_yticks(y, names)
    ax.invert_yaxis()
    ax.set_xlabel("documents")
    ax.set_ylabel("step (in pipeline order)")
    ax.set_title(f"cleaning: {stats['read']['docs']:,} docs in -> {stats['output']['docs']:,} out")
    ax.legend()
    fig.tight_layout()
    return save_figure(fig, path, dpi=100)


def write_stats(stats: dict[str, Any], out: Path) -> list[Path]:
    return [atomic_write(out / "stats.json", json.dumps(stats, ensure_ascii=False, indent=2) + "\n"),
            atomic_write(out / "stats.md", stats_markdown(stats)),
            plot_stats(stats, out / "stats.png")]


# ---------------------------------------------------------------------------
# 8. 读输出
# ---------------------------------------------------------------------------
def read_cleaned(path: str | os.PathLike) -> Iterator[dict[str, Any]]:
    """逐条读 cleaned.jsonl。"""
    with open(path, encoding="utf-8") as f:
        for line in f:
            yield json.loads(line)


def jsonl_to_text(src: str | os.PathLike, dest: str | os.PathLike) -> Path:
    """把 cleaned.jsonl 的文档按空行拼回纯文本（与纯文本输入"按空行切文档"互逆），原子写入 dest。"""
    with atomic_path(dest) as tmp, open(tmp, "w", encoding="utf-8") as f:
        first = True
        for rec in read_cleaned(src):
            f.write(("" if first else "\n") + rec["text"].rstrip("\n") + "\n")
            first = False
    return Path(dest)
