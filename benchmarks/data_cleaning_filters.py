"""基准：我们的质量过滤器（data_pipeline.cleaning.filters）对照 datatrove，同一进程、同一批文档、同一个分词器。

    python benchmarks/data_cleaning_filters.py          # 约 1 分钟；SMOKE=1 时几秒

文档：莎士比亚片段 + 弄脏的片段 + 为每条规则定做的坏文档（filters.evaluation_documents，与对照测试同一套）。
datatrove 拿到的是 filters.datatrove_tokenizer()：词切分就是我们的 split_words，断句是 datatrove 自己的正则——
两边花在分词上的时间相同，比的是规则本身的实现。每个过滤器单独计时（每篇文档都跑到底或被丢弃），
再计时 FineWeb 的整条过滤链（Gopher 重复 → Gopher 质量 → C4 → FineWeb）。datatrove 的 C4 会改写
Document.text，所以每一轮都用新建的 Document（建对象不计入时间）。交替计时 reps 轮，取中位数。
计时前先核对两边的决定逐篇相同。
"""

from __future__ import annotations

import statistics
import time
import warnings

from _common import machine_info, update_results

from data_pipeline.cleaning import filters as F
from utils.io import is_smoke
from utils.lesson_cli import lesson_args


def reference_filters(tok):
    from datatrove.pipeline import filters as D

    return {
        "gopher_quality": D.GopherQualityFilter(language=tok),
        "gopher_repetition": D.GopherRepetitionFilter(language=tok),
        "c4_quality": D.C4QualityFilter(language=tok),
        "fineweb_quality": D.FineWebQualityFilter(language=tok),
        "fineweb_c4": D.C4QualityFilter(language=tok, filter_no_terminal_punct=False),
    }


def run_reference(filters, docs) -> list:
    """datatrove 的过滤链：依次 filter，第一个丢弃者给出理由；保留时返回（可能被 C4 改写过的）文本。"""
    out = []
    for doc in docs:
        result = True
        for f in filters:
            result = f.filter(doc)
            if result is not True:
                break
        out.append(doc.text if result is True else result[1])
    return out


def run_ours(filters, texts) -> list:
    out = []
    for text in texts:
        d = F.apply_filters(text, filters)
        out.append((d.text if d.text is not None else text) if d.keep else d.reason)
    return out


def main() -> None:
    from datatrove.data import Document

    warnings.simplefilter("ignore")  # datatrove 在全符号文档上的 np.mean([]) 警告
    smoke = is_smoke()
    docs = F.evaluation_documents(40 if smoke else 400)
    docs = [d for d in docs if len(d) < 100_000]  # 去掉 40 万字符的"过长文档"：它一篇就占掉大半时间
    reps = 1 if smoke else 5
    tok = F.datatrove_tokenizer()
    refs = reference_filters(tok)
    ours = {
        "gopher_quality": F.GopherQualityFilter(),
        "gopher_repetition": F.GopherRepetitionFilter(),
        "c4_quality": F.C4QualityFilter(F.C4_DATATROVE),
        "fineweb_quality": F.FineWebQualityFilter(),
        "fineweb_c4": F.C4QualityFilter(F.FINEWEB_C4),
    }
    cases = {name: ([ours[name]], [refs[name]]) for name in ("gopher_quality", "gopher_repetition", "c4_quality",
                                                              "fineweb_quality")}  # fmt: skip
    cases["FineWeb 过滤链"] = (
        [ours[n] for n in ("gopher_repetition", "gopher_quality", "fineweb_c4", "fineweb_quality")],
        [refs[n] for n in ("gopher_repetition", "gopher_quality", "fineweb_c4", "fineweb_quality")],
    )
    info = machine_info()
    n_chars = sum(map(len, docs))
    print(f"{info}\n{len(docs)} 篇文档，{n_chars / 1e6:.2f} M 字符，每项交替计时 {reps} 轮取中位数")
    rows = []
    for name, (our_chain, ref_chain) in cases.items():
        assert run_ours(our_chain, docs) == run_reference(ref_chain, [Document(text=d, id="0") for d in docs]), name
        ours_s, ref_s = [], []
        for _ in range(reps):
            fresh = [Document(text=d, id=str(i)) for i, d in enumerate(docs)]
            t0 = time.perf_counter()
            run_ours(our_chain, docs)
            ours_s.append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            run_reference(ref_chain, fresh)
            ref_s.append(time.perf_counter() - t0)
        ours_dps, ref_dps = len(docs) / statistics.median(ours_s), len(docs) / statistics.median(ref_s)
        rows.append((name, ours_dps, ref_dps))
        print(f"  {name:<18} ours {ours_dps:8,.0f} 篇/s | datatrove {ref_dps:8,.0f} 篇/s | {ours_dps / ref_dps:.2f}×")
    table = [
        "## 质量过滤器 vs datatrove（`benchmarks/data_cleaning_filters.py`）",
        "",
        f"{info}。{len(docs)} 篇文档（莎士比亚片段、弄脏的片段、定做的坏文档，{n_chars / 1e6:.2f} M 字符），"
        f"两边同一个词切分（`split_words`）与断句规则，决定与理由逐篇相同；{reps} 轮交替计时的中位数。",
        "",
        "| 过滤器 | ours 篇/s | datatrove 0.10 篇/s | 加速比 |",
        "|---|---:|---:|---:|",
        *(f"| {name} | {o:,.0f} | {r:,.0f} | {o / r:.2f}× |" for name, o, r in rows),
    ]
    update_results("data_cleaning_filters", "\n".join(table))


if __name__ == "__main__":
    lesson_args(__doc__)
    main()
