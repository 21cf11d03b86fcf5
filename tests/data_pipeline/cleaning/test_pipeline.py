"""流式清洗流水线：端到端（埋好的坏文档 / 重复 / PII → 该留的留下、统计对）、被杀后续跑与一次跑完逐字节相同、
坏 UTF-8 与坏 JSON 按策略处理、1 个与 2 个进程输出相同、写了一半的块不算完成。

机制测试用本文件里的小步骤（协议只要求 apply / keys + select），真实规则的端到端在后面。
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from data_pipeline.cleaning import pipeline as P
from data_pipeline.cleaning.__main__ import main as cli_main
from data_pipeline.cleaning.pipeline import CleanConfig, InputError, clean, jsonl_to_text, read_cleaned


# ---------------------------------------------------------------------------
# 本文件的小步骤（模块级：进程池要能 pickle）
# ---------------------------------------------------------------------------
@dataclass(frozen=True)
class DropSpam:
    name: str = "spam"

    def apply(self, text):
        return (None, "has_spam") if "SPAM" in text else (text, None)


_EMAIL = re.compile(r"[\w.]+@[\w.]+\.\w+")


@dataclass(frozen=True)
class MaskEmail:
    name: str = "mask"

    def apply(self, text):
        new = _EMAIL.sub("<EMAIL>", text)
        return new, ("email" if new != text else None)


@dataclass(frozen=True)
class StripMarker:
    """把 "XXX" 删掉：整篇都是 XXX 的文档被改成空白，流水线应当删掉它（原因 strip:emptied）。"""

    name: str = "strip"

    def apply(self, text):
        new = text.replace("XXX", "")
        return new, ("marker" if new != text else None)


@dataclass(frozen=True)
class ExactHash:
    name: str = "dedup"

    def keys(self, texts):
        return np.array([[int.from_bytes(hashlib.sha1(t.encode()).digest()[:8], "little")] for t in texts],
                        dtype=np.uint64).reshape(len(texts), 1)

    def select(self, keys, text):
        _, first, inverse = np.unique(keys[:, 0], return_index=True, return_inverse=True)
        dups = {i: "duplicate" for i in range(len(keys)) if i != first[inverse[i]]}
        assert all(text(i) == text(int(first[inverse[i]])) for i in dups)  # 按行号取回的文本对得上
        return dups


@dataclass(frozen=True)
class FailOnce:
    """第一次遇到含 marker 的文档时抛异常（模拟进程在第 k 块中途被杀）；标记文件记下"已经失败过"。"""

    flag: str
    marker: str = "FAIL-HERE"
    name: str = "failonce"

    def apply(self, text):
        if self.marker in text and not Path(self.flag).exists():
            Path(self.flag).write_text("x")
            raise RuntimeError("模拟的崩溃")
        return text, None


@dataclass(frozen=True)
class HangOnce:
    """遇到含 marker 的文档时写一个标记文件然后一直睡：让测试在这一刻 kill -9 整个进程组。"""

    flag: str
    marker: str = "FAIL-HERE"
    name: str = "hang"

    def apply(self, text):
        if self.marker in text and not Path(self.flag).exists():
            Path(self.flag).write_text("x")
            time.sleep(120)
        return text, None


def steps():
    return [DropSpam(), MaskEmail(), StripMarker(), ExactHash()]


def make_corpus(tmp_path: Path, n: int = 60) -> tuple[Path, list[str]]:
    """n 篇普通文档，埋进去：垃圾、邮箱、空文档、全是标记的文档、精确重复。返回 (文件, 期望的输出文本)。"""
    docs, expected = [], []
    for i in range(n):
        text = f"document {i}: the quick brown fox {i * 7} jumps over the lazy dog"
        if i % 10 == 3:
            docs.append({"text": text + " SPAM SPAM", "id": i})
        elif i % 10 == 5:
            docs.append({"text": text + " mail me at fox@example.com", "id": i})
            expected.append(text + " mail me at <EMAIL>")
        elif i % 10 == 7:
            docs.append({"text": "  \n ", "id": i})
        elif i % 10 == 8:
            docs.append({"text": "XXXXXX", "id": i})
        else:
            docs.append({"text": text, "id": i})
            expected.append(text)
        if i % 10 == 9:  # 与上一篇普通文档完全相同
            docs.append({"text": text, "id": f"{i}-dup"})
    path = tmp_path / "in.jsonl"
    path.write_text("".join(json.dumps(d) + "\n" for d in docs), encoding="utf-8")
    return path, expected


def run(path, out, **kw):
    return clean([path], out, CleanConfig(**{"steps": steps(), "chunk_docs": 7, "progress": False, **kw}))


def step(stats, name):
    return next(s for s in stats["steps"] if s["name"] == name)


# ---------------------------------------------------------------------------
# 端到端
# ---------------------------------------------------------------------------
def test_end_to_end_removes_what_was_planted(tmp_path):
    path, expected = make_corpus(tmp_path)
    stats = run(path, tmp_path / "out")
    out = list(read_cleaned(tmp_path / "out" / "cleaned.jsonl"))
    assert [r["text"] for r in out] == expected
    assert all("id" in r for r in out)  # 其它字段保留
    assert [s["name"] for s in stats["steps"]] == ["empty", "spam", "mask", "strip", "dedup"]
    assert step(stats, "empty")["reasons"]["empty:blank"]["docs_removed"] == 6
    assert step(stats, "spam")["docs_removed"] == 6
    mask = step(stats, "mask")
    assert mask["docs_modified"] == 6 and mask["docs_removed"] == 0
    assert mask["bytes_modified"] == 6 * (len("fox@example.com") - len("<EMAIL>"))
    assert step(stats, "strip")["reasons"]["strip:emptied"]["docs_removed"] == 6
    dedup = step(stats, "dedup")
    assert dedup["kind"] == "global" and dedup["docs_removed"] == 6
    dup_bytes = sum(len(f"document {i}: the quick brown fox {i * 7} jumps over the lazy dog") for i in range(9, 60, 10))
    assert dedup["bytes_removed"] == dup_bytes
    # 删掉的篇数加起来 = 读入 − 输出；样例记下来源的文件:行
    assert stats["read"]["docs"] - sum(s["docs_removed"] for s in stats["steps"]) == stats["output"]["docs"] == \
        len(expected)
    assert step(stats, "spam")["examples"]["spam:has_spam"][0]["source"] == f"{path}:4"
    # 三种形式的统计
    out_dir = tmp_path / "out"
    assert json.loads((out_dir / "stats.json").read_text(encoding="utf-8"))["output"]["docs"] == len(expected)
    md = (out_dir / "stats.md").read_text(encoding="utf-8")
    assert "| **dedup**（全局） | | 48 | 6 |" in md and "`mask:email`" in md
    assert (out_dir / "stats.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_text_input_is_split_on_blank_lines_and_round_trips(tmp_path):
    src = tmp_path / "plays.txt"
    src.write_text("ROMEO:\nBut soft!\n\n\n  \nJULIET:\nAy me.\r\n\r\nROMEO:\nBut soft!\n", encoding="utf-8")
    clean([src], tmp_path / "out", CleanConfig(steps=[ExactHash()], progress=False))
    texts = [r["text"] for r in read_cleaned(tmp_path / "out" / "cleaned.jsonl")]
    assert texts == ["ROMEO:\nBut soft!", "JULIET:\nAy me."]
    dest = jsonl_to_text(tmp_path / "out" / "cleaned.jsonl", tmp_path / "clean.txt")
    assert dest.read_text(encoding="utf-8") == "ROMEO:\nBut soft!\n\nJULIET:\nAy me.\n"


# ---------------------------------------------------------------------------
# 确定性与续跑
# ---------------------------------------------------------------------------
def comparable(stats):
    return {k: v for k, v in stats.items() if k not in ("seconds", "chunks_reused", "workers", "output")}


def test_workers_do_not_change_the_output(tmp_path):
    path, _ = make_corpus(tmp_path, n=120)
    one = run(path, tmp_path / "w1", workers=1)
    two = run(path, tmp_path / "w2", workers=2)
    assert (tmp_path / "w1" / "cleaned.jsonl").read_bytes() == (tmp_path / "w2" / "cleaned.jsonl").read_bytes()
    assert comparable(one) == comparable(two)


@pytest.mark.parametrize("workers", [1, 2])
def test_resume_after_a_crash_equals_an_uninterrupted_run(tmp_path, workers):
    path, _ = make_corpus(tmp_path, n=100)
    lines = path.read_text(encoding="utf-8").splitlines()
    lines[60] = json.dumps({"text": json.loads(lines[60])["text"] + " FAIL-HERE"})  # 落在第 8 块（每块 7 篇）
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    fail = FailOnce(str(tmp_path / "failed.flag"))
    cfg = dict(steps=[fail, *steps()], chunk_docs=7, progress=False, workers=workers)
    with pytest.raises(RuntimeError, match="模拟的崩溃"):
        clean([path], tmp_path / "crash", CleanConfig(**cfg))
    assert not (tmp_path / "crash" / "cleaned.jsonl").exists()
    done = sorted(p.name for p in (tmp_path / "crash" / "chunks").glob("*.json"))
    assert "000008.json" not in done and "000000.json" in done
    resumed = clean([path], tmp_path / "crash", CleanConfig(**cfg, resume=True))
    assert resumed["chunks_reused"] >= 1
    reference = clean([path], tmp_path / "ref", CleanConfig(**cfg))  # 标记文件已在：不再失败
    assert (tmp_path / "crash" / "cleaned.jsonl").read_bytes() == (tmp_path / "ref" / "cleaned.jsonl").read_bytes()
    assert comparable(resumed) == comparable(reference)


def test_kill_9_mid_run_then_resume(tmp_path):
    """真的杀进程：子进程（2 个 worker）卡在第 8 块时对整个进程组发 SIGKILL，再续跑，输出与一次跑完相同。"""
    path, _ = make_corpus(tmp_path, n=100)
    lines = path.read_text(encoding="utf-8").splitlines()
    lines[60] = json.dumps({"text": json.loads(lines[60])["text"] + " FAIL-HERE"})
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    flag = tmp_path / "hung.flag"
    code = ("import sys; from tests.data_pipeline.cleaning.test_pipeline import *; "
            f"clean([{str(path)!r}], {str(tmp_path / 'out')!r}, CleanConfig(steps=[HangOnce({str(flag)!r}), *steps()], "
            "chunk_docs=7, progress=False, workers=2))")
    proc = subprocess.Popen([sys.executable, "-c", code], cwd=Path(__file__).resolve().parents[3],
                            start_new_session=True)
    try:
        deadline = time.monotonic() + 120
        while not flag.exists():
            assert proc.poll() is None and time.monotonic() < deadline, "子进程没有走到第 8 块"
            time.sleep(0.05)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    assert not (tmp_path / "out" / "cleaned.jsonl").exists()
    cfg = dict(steps=[HangOnce(str(flag)), *steps()], chunk_docs=7, progress=False)
    resumed = clean([path], tmp_path / "out", CleanConfig(**cfg, resume=True))
    # 第 8 块被取走时第 0..7 块都已被取走、取它的 worker 是空闲的：至多另一个 worker 手里的一块没做完
    assert resumed["chunks_reused"] >= 7
    reference = clean([path], tmp_path / "ref", CleanConfig(**cfg))
    assert (tmp_path / "out" / "cleaned.jsonl").read_bytes() == (tmp_path / "ref" / "cleaned.jsonl").read_bytes()
    assert comparable(resumed) == comparable(reference)


def test_half_written_chunk_is_not_taken_as_done(tmp_path):
    path, _ = make_corpus(tmp_path)
    run(path, tmp_path / "out")
    reference = (tmp_path / "out" / "cleaned.jsonl").read_bytes()
    chunks = tmp_path / "out" / "chunks"
    (chunks / "000002.jsonl").write_text('{"source": "x", "rec', encoding="utf-8")  # 产物被截断
    (chunks / "000004.json").write_text('{"chunk": 4, "dig', encoding="utf-8")  # 元数据被截断
    (chunks / ".000005.jsonl.x1y2.tmp").write_text("half", encoding="utf-8")  # kill -9 留下的临时文件
    stats = run(path, tmp_path / "out", resume=True)
    assert stats["chunks_reused"] == stats["chunks"] - 2
    assert not list(chunks.glob(".*.tmp"))
    assert (tmp_path / "out" / "cleaned.jsonl").read_bytes() == reference
    # 换了步骤（配置摘要不同）：旧块一个都不复用
    stats = clean([path], tmp_path / "out", CleanConfig(steps=[DropSpam()], chunk_docs=7, progress=False, resume=True))
    assert stats["chunks_reused"] == 0


# ---------------------------------------------------------------------------
# 坏输入
# ---------------------------------------------------------------------------
def bad_bytes_corpus(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_bytes(b'{"text": "good one"}\n{"text": "caf\xe9 latin-1"}\n\n{"text": "lone \\ud800 surrogate"}\n'
                     b'{"text": "good two"}\n')
    return path


def test_bad_utf8_skip(tmp_path):
    stats = clean([bad_bytes_corpus(tmp_path)], tmp_path / "o", CleanConfig(progress=False))
    assert [r["text"] for r in read_cleaned(tmp_path / "o" / "cleaned.jsonl")] == ["good one", "good two"]
    assert stats["read"]["bad_utf8_skipped"] == 2 and stats["read"]["bad_utf8_replaced"] == 0
    assert any(p.startswith(f"{tmp_path / 'bad.jsonl'}:2:") for p in stats["read"]["problems"])


def test_bad_utf8_replace(tmp_path):
    stats = clean([bad_bytes_corpus(tmp_path)], tmp_path / "o", CleanConfig(progress=False, on_bad_utf8="replace"))
    texts = [r["text"] for r in read_cleaned(tmp_path / "o" / "cleaned.jsonl")]
    assert texts == ["good one", "caf\ufffd latin-1", "lone \ufffd surrogate", "good two"]
    assert stats["read"]["bad_utf8_replaced"] == 2


def test_bad_utf8_in_text_input_costs_only_its_document(tmp_path):
    src = tmp_path / "t.txt"
    src.write_bytes(b"first doc\n\nsecond \xff\xfe doc\nstill second\n\nthird doc\n")
    stats = clean([src], tmp_path / "o", CleanConfig(progress=False))
    assert [r["text"] for r in read_cleaned(tmp_path / "o" / "cleaned.jsonl")] == ["first doc", "third doc"]
    assert stats["read"]["problems"][0].startswith(f"{src}:3:")


def test_bad_json_is_an_error_with_file_and_line(tmp_path):
    path = tmp_path / "x.jsonl"
    path.write_text('{"text": "ok"}\n{"text": "no end"\n{"text": 3}\n', encoding="utf-8")
    with pytest.raises(InputError, match=re.escape(f"{path}:2: 不是合法的 JSON")):
        clean([path], tmp_path / "o", CleanConfig(progress=False))
    stats = clean([path], tmp_path / "o", CleanConfig(progress=False, on_bad_json="skip"))
    assert stats["read"]["bad_json_skipped"] == 2  # 第 3 行是 JSON，但 text 不是字符串
    assert [r["text"] for r in read_cleaned(tmp_path / "o" / "cleaned.jsonl")] == ["ok"]
    assert any("不是带字符串字段" in p and p.startswith(f"{path}:3:") for p in stats["read"]["problems"])


def test_cli_reports_errors_in_one_line(tmp_path, capsys):
    path = tmp_path / "x.jsonl"
    path.write_text('{"text": "ok"}\nnope\n', encoding="utf-8")
    with pytest.raises(SystemExit, match=re.escape(f"{path}:2")):
        cli_main([str(path), "--out", str(tmp_path / "o"), "--no-progress", "--steps", ""])
    with pytest.raises(SystemExit, match="不存在"):
        cli_main([str(tmp_path / "missing.txt"), "--out", str(tmp_path / "o"), "--steps", ""])
    with pytest.raises(SystemExit, match="未知的清洗步骤"):
        cli_main([str(path), "--out", str(tmp_path / "o"), "--steps", "nope"])
    cli_main([str(path), "--out", str(tmp_path / "o"), "--no-progress", "--steps", "", "--on-bad-json", "skip"])
    assert "坏 JSON 行：跳过 1 行" in capsys.readouterr().out


def test_config_errors():
    with pytest.raises(InputError, match="排在了全局步骤后面"):
        CleanConfig(steps=[ExactHash(), DropSpam()]).validate()
    with pytest.raises(InputError, match="--workers 0"):
        CleanConfig(workers=0).validate()
    with pytest.raises(InputError, match="--on-bad-utf8"):
        CleanConfig(on_bad_utf8="ignore").validate()
    assert P.DropEmpty().apply(" \n\t") == (None, "blank")


# ---------------------------------------------------------------------------
# 真实步骤（适配器）：埋好的坏文档逐条核对
# ---------------------------------------------------------------------------
def test_real_steps_end_to_end(tmp_path):
    from data_pipeline.corpora import load_corpus

    paras = [p for p in load_corpus("shakespeare")[:300_000].split("\n\n") if len(p.split()) >= 60][:30]
    docs = [{"text": p, "n": i} for i, p in enumerate(paras)]
    words = paras[5].split()
    near = " ".join(words[:-3] + ["quoth", "the", "raven"])  # 换掉最后 3 个词：5-gram Jaccard 仍 ≥ 0.8
    pii = "Write to romeo@verona.it or call (555) 123-4567 before the masque."
    docs[12:12] = [{"text": paras[3], "n": "dup-of-3"}, {"text": near, "n": "near-5"}, {"text": " \n\t", "n": "blank"},
                   {"text": pii, "n": "pii"}]
    path = tmp_path / "in.jsonl"
    path.write_text("".join(json.dumps(d) + "\n" for d in docs), encoding="utf-8")
    names = ["pii", "exact_dedup", "near_dedup"]
    stats = clean([path], tmp_path / "o", CleanConfig(steps=P.build_steps(names), chunk_docs=8, progress=False))
    out = list(read_cleaned(tmp_path / "o" / "cleaned.jsonl"))
    assert [r["n"] for r in out] == [*range(12), "pii", *range(12, len(paras))]
    assert out[12]["text"] == "Write to <EMAIL> or call <PHONE> before the masque."
    assert step(stats, "pii")["reasons"] == {"pii:email+phone": {
        "docs_removed": 0, "bytes_removed": 0, "docs_modified": 1, "bytes_modified": len(pii) - len(out[12]["text"])}}
    assert step(stats, "exact_dedup")["reasons"]["exact_dedup:duplicate"] == {
        "docs_removed": 1, "bytes_removed": len(paras[3].encode()), "docs_modified": 0, "bytes_modified": 0}
    assert step(stats, "near_dedup")["reasons"]["near_dedup:near_duplicate"]["docs_removed"] == 1
    assert step(stats, "near_dedup")["examples"]["near_dedup:near_duplicate"][0]["source"] == f"{path}:14"
    assert step(stats, "empty")["docs_removed"] == 1


def test_rule_steps_drop_and_modify_with_their_reason_codes(tmp_path):
    """规范化、语言、FineWeb 规则链经适配器接入：删的原因码就是规则自己的理由码，C4 的行过滤算"修改"。"""
    prose_text = "\n".join([
        "The old theatre stood at the edge of the river, and every evening the players came to rehearse.",
        "They argued about the lines, the costumes and the music that would open the second act.",
        "A young actor had learned the part of the king in only three days, which surprised the company.",
        "When the curtain rose on the first night, the house was full and the audience was quiet.",
        "By the end of the play many of them were in tears, and the critics wrote that it was a triumph.",
        "The company stayed in the town for a month before they travelled north to play at the court.",
    ])
    docs = [
        {"text": prose_text, "n": "good"},
        {"text": "The king is dead, and the queen has gone to the tower with her young son.", "n": "short"},  # < 50 词
        {"text": prose_text + "\nPlease enable JavaScript in your browser to see the comments.", "n": "c4"},
        {"text": "Le roi est mort, vive le roi ! " * 20, "n": "french"},
        {"text": prose_text.replace("the", "thé", 1).replace("thé", "thÃ©", 1), "n": "mojibake"},
    ]
    path = tmp_path / "in.jsonl"
    path.write_text("".join(json.dumps(d) + "\n" for d in docs), encoding="utf-8")
    names = ["normalize", "language", "gopher_repetition", "gopher_quality", "c4_quality", "fineweb_quality"]
    stats = clean([path], tmp_path / "o", CleanConfig(steps=P.build_steps(names), progress=False))
    out = {r["n"]: r["text"] for r in read_cleaned(tmp_path / "o" / "cleaned.jsonl")}
    assert set(out) == {"good", "mojibake", "c4"}
    assert out["c4"] == prose_text  # C4 的行规则删掉了 javascript 那一行
    assert step(stats, "c4_quality")["reasons"]["c4_quality:lines_removed"]["docs_modified"] == 1
    assert out["mojibake"] == prose_text.replace("the", "thé", 1)  # 乱码修好了
    assert "normalize:normalized" in step(stats, "normalize")["reasons"]
    assert step(stats, "language")["reasons"]["language:language_fr"]["docs_removed"] == 1
    # 短文档被第一条命中的规则删掉；每个删除原因都是"步骤名:该过滤器自己声明的理由码"
    built = {s.name: s for s in P.build_steps(names)}
    removed = {r: c["docs_removed"] for s in stats["steps"] for r, c in s["reasons"].items() if c["docs_removed"]}
    assert sum(removed.values()) == 2
    for reason in removed:
        name, code = reason.split(":", 1)
        assert code in built[name].filter.reasons, reason
    # 同一组步骤造两次，repr 相同（进配置摘要：续跑才认得出是同一配置）
    assert [repr(s) for s in P.build_steps(names)] == [repr(s) for s in P.build_steps(names)]
    assert all("0x" not in repr(s) for s in P.build_steps(names))


def test_near_dedup_bands_catch_pairs_at_the_verification_threshold_and_above():
    """(b, r) 按 lsh_threshold = 0.7 选：J = 0.9 的对几乎必然成为候选（按 0.8 选只有约 93%），核对仍按 0.8。"""
    from data_pipeline.cleaning.minhash import candidate_probability, optimal_bands
    from data_pipeline.cleaning.pipeline import NearDedupStep

    step = NearDedupStep()
    b, r = optimal_bands(min(step.lsh_threshold, step.threshold), step.num_perm)
    assert float(candidate_probability(0.9, b, r)) > 0.99
    b8, r8 = optimal_bands(step.threshold, step.num_perm)
    assert float(candidate_probability(0.9, b8, r8)) < 0.95  # 这正是要用更低的 LSH 阈值的原因


# ---------------------------------------------------------------------------
# 练习模式用的单独检查（utils/exercise_parts/cleaning.py）：两个去重步骤的 select，直接调用、不经过 clean
# ---------------------------------------------------------------------------
def test_exact_dedup_select_keeps_the_earliest_and_compares_the_text():
    texts = ["alpha", "beta", "alpha", "gamma", "beta", "delta", "alpha"]
    keys = np.array([[1], [2], [1], [3], [2], [1], [1]], dtype=np.uint64)  # 行 5 是"哈希碰撞"：同哈希、不同文本
    got = P.ExactDedupStep().select(keys, texts.__getitem__)
    assert got == {2: "duplicate", 4: "duplicate", 6: "duplicate"}
    real = P.ExactDedupStep().keys(texts)
    assert real.shape == (7, 1) and P.ExactDedupStep().select(real, texts.__getitem__) == {2: "duplicate",
                                                                                             4: "duplicate", 6: "duplicate"}
    assert P.ExactDedupStep().select(np.zeros((0, 1), dtype=np.uint64), texts.__getitem__) == {}


def test_near_dedup_select_equals_brute_force_clusters():
    """与暴力做法相同：所有 J ≥ 0.8 的对连成簇（传递闭包），每簇留行号最小的一篇；LSH 候选里 J < 0.8 的对不合并。

    LSH 会以小概率漏掉 J 略高于 0.8 的对；这份数据（固定种子，副本的扰动率要么 ≤ 1%、要么 ≥ 5%）上
    没有哪一簇因此断开，所以结果与暴力做法逐项相同——任何正确的 select 在同样的键上都给出这个结果。"""
    from data_pipeline.cleaning.minhash import (
        UnionFind,
        jaccard,
        lsh_candidate_pairs,
        near_duplicate_corpus,
        optimal_bands,
        shakespeare_passages,
        shingles,
    )
    from data_pipeline.corpora import load_corpus

    rng = np.random.default_rng(0)
    passages = shakespeare_passages(load_corpus("shakespeare"), 60, 120, rng)
    docs, _ = near_duplicate_corpus(passages, [0.0, 0.005, 0.01, 0.05, 0.3], 3, rng)
    docs = docs[::-1]  # 副本排在原文前面：留下的是行号最小的，而不是"原文"
    step = P.NearDedupStep()
    keys = step.keys(docs)
    calls = []
    got = step.select(keys, lambda i: calls.append(i) or docs[i])
    sets = [shingles(d) for d in docs]
    uf = UnionFind(len(docs))
    for i in range(len(docs)):
        for j in range(i + 1, len(docs)):
            if jaccard(sets[i], sets[j]) >= step.threshold:
                uf.union(i, j)
    expected = {i: "near_duplicate" for group in uf.groups() for i in group[1:]}
    assert len(expected) > 50 and got == expected
    # 这份数据里确实有 J < 0.8 的 LSH 候选对（核对把它们挡下），文本只为候选按需读取
    b, r = optimal_bands(step.lsh_threshold, step.num_perm)
    pairs = lsh_candidate_pairs(keys, b, r).tolist()
    assert any(jaccard(sets[i], sets[j]) < step.threshold for i, j in pairs)
    assert set(calls) <= {i for pair in pairs for i in pair}
