"""`make run` 的中文报告：markdown 模板是这里的数据，字段全部从各阶段的指纹记录里取。

为什么是一个模块而不是 templates/*.md 文件：模板要随包安装（setuptools 默认不打包非 .py 文件，
放成文件就得改打包配置），而且填模板的那几行代码与模板放在一起，改一个字段时两边一眼都能看到。
模板用 str.format 的具名字段：少给一个字段 format 直接 KeyError，不会留下 "{...}"；
数字字段带格式说明（{lr:g}、{tokens_per_s:,.0f}），给成 None 会 TypeError，不会印出 "None"。

报告各节按阶段顺序排列：配置（语料 → 清洗 → 分词器 → 编码 → 模型 → 训练）→ 各阶段耗时 → 数据清洗（删了什么）
→ 损失曲线（训练）
→ 用起来（导出的模型目录）→ 评估 → 样例 → 下一步。各阶段耗时表的编号就是阶段在流水线里的位置。
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

__all__ = ["MEASURED_RANGES", "REPORT_TEMPLATE", "STAGE_TITLES", "compare_to_unigram", "expected_range", "render_report",
           "report_fields"]

# 流水线每个阶段在报告里的名字；顺序与 training_sys.speedrun.STAGES 相同（测试核对）
STAGE_TITLES = {
    "corpus": "语料",
    "clean": "数据清洗",
    "tokenizer": "训练 BPE 分词器",
    "shards": "编码成 train.bin / val.bin",
    "train": "预训练",
    "export": "导出 HF 模型目录",
    "eval": "评估（含 unigram 基线）",
    "samples": "样例 + transformers 逐 token 对照",
    "report": "报告",
}

# 实测的参考范围（评估阶段的 val loss，nats/token 与 bits/byte）。键 = (语料, 预设, 词表大小, 训练步数)：只有这几项
# 都与实测时相同，范围才有意义（--max-iters、--vocab-size、换语料都会改变结果）。数字来自真跑出来的 eval.json。
MEASURED_RANGES: dict[tuple[str, str, int, int], tuple[float, float, float, float, str]] = {
    ("shakespeare", "cpu", 2048, 1500): (3.91, 3.94, 2.06, 2.07,
                                         "两次完整运行实测 3.913 与 3.936，前者记在 benchmarks/RESULTS.md 的 training_speedrun 段"),
    ("shakespeare", "smoke", 512, 20): (5.67, 5.67, 3.98, 3.98, "SMOKE=1 的实测，只训练 20 步、还不如 unigram"),
}

REPORT_TEMPLATE = """\
# 端到端运行报告：{run_name}

语料 `{corpus_label}` → BPE 分词器（词表 {vocab_size}）→ Llama（{params_m:.2f}M 参数，{steps} 步）→ 本目录（Hugging Face 模型目录）。预设 `{preset}`：{preset_description}。

## 配置

| 项目 | 值 |
|---|---|
| 语料 | `{corpus_label}`：{corpus_source}（使用 {corpus_mb:.2f} MB） |
| 清洗 | {clean_steps}：{clean_docs_in:,} 篇 → {clean_docs_out:,} 篇，{clean_mb:.2f} MB 进入分词器 |
| 分词器 | 字节级 BPE，GPT-2 预分词正则，词表 {vocab_size}，特殊 token `{special_token}` |
| 数据 | train {train_tokens:,} / val {val_tokens:,} token（后 {val_fraction:.0%} 字节做验证集），{data_bytes_per_token:.2f} 字节/token |
| 模型 | Llama：{n_layer} 层，{n_head} 头，{n_embd} 维，上下文 {block_size}，{num_params:,} 参数 |
| 训练 | {optimizer}，lr {lr:g} → {min_lr:g}（{lr_schedule}，预热 {warmup_iters} 步），batch {batch_size}×{block_size}，{steps} 步，共 {tokens_seen:,} token，{dtype}，设备 {device} |
| 硬件 | {hardware} |

## 各阶段耗时

| 阶段 | 耗时 | 本次 |
|---|---|---|
{stage_rows}
| **合计** | **{total_seconds:.1f} s** | |

训练吞吐 **{tokens_per_s:,.0f} tokens/s**（纯训练步，不含评估与保存；训练步合计 {train_seconds:.1f} s）。{resumed_note}

## 数据清洗

纯文本按空行切成文档（一段台词一篇），逐步骤删掉 / 改动的篇数与字节（`cleaning/stats.md`，图在 `cleaning/stats.png`；`python -m data_pipeline.cleaning` 可单独运行）：

{clean_table}
## 损失曲线

![loss](loss.png)

训练结束时（{eval_iters} 个随机 batch 的估计）：train loss {final_train_loss:.4f}，val loss {final_val_loss:.4f}（什么都没学的均匀分布是 ln V = {uniform_loss:.4f}；unigram 基线见下面的评估表）。

## 用起来

```python
from transformers import AutoModelForCausalLM, AutoTokenizer
tok = AutoTokenizer.from_pretrained("{model_dir}")
model = AutoModelForCausalLM.from_pretrained("{model_dir}")
ids = tok("ROMEO:\\n", return_tensors="pt").input_ids
print(tok.decode(model.generate(ids, max_new_tokens=50, do_sample=False)[0]))
```

## 评估

验证集上 {eval_tokens:,} 个 token（不重叠的 {block_size}-token 窗口），{eval_bytes_per_token:.2f} 字节/token。bits/byte 与分词器无关，可以和字符级模型、别的词表直接比较。

| 模型 | loss（nats/token） | 困惑度 | bits/byte |
|---|---|---|---|
| 均匀分布（什么都没学） | {uniform_loss:.4f} | {uniform_perplexity:,.0f} | {uniform_bpb:.4f} |
| unigram 基线（只看 token 频率） | {unigram_loss:.4f} | {unigram_perplexity:,.1f} | {unigram_bpb:.4f} |
| **我们的 Llama** | **{model_loss:.4f}** | **{perplexity:,.1f}** | **{model_bpb:.4f}** |

{unigram_comparison}{expected_range}

## 样例

固定提示词，每个续写 {sample_tokens} 个 token 以内（KV cache）。贪心解码与 `transformers.AutoModelForCausalLM` 加载本目录后的 `generate(do_sample=False)` 逐 token 相同；`AutoTokenizer` 对提示词的编码与我们的 Tokenizer 逐 id 相同。

{samples}
## 下一步

- 再跑一次同样的命令：所有阶段都会被跳过（指纹一致）；加 `--fresh` 全部重来。中途 Ctrl-C 之后再跑，训练从最后一个 checkpoint 续训。
- 更大的模型、更长的训练：`python -m training_sys.speedrun --preset gpu`（需要 CUDA GPU；没有 GPU 会直接报错，不会悄悄退回 CPU）。
- 只想在 CPU 上多训一会儿：`--max-iters 2000`（训练阶段的指纹变化，只重做训练及其下游）。
- 换语料：`--corpus tinystories`（约 19 MB，需要下载一次）或 `--corpus tinyshakespeare --data 本地文件.txt`；词表大小按语料自动调整，也可以 `--vocab-size 8192`。
- 逐步训练的细节（优化器、调度、续训）：`python -m training_sys.pretrain --help`；训练日志在 `train/metrics.jsonl`。
"""

STAGE_ROW = "| {number} {title} | {seconds:.1f} s | {status} |"

SAMPLE_TEMPLATE = """\
**提示词** `{prompt!r}`

贪心（temperature=0）：

{greedy}

采样（temperature=0.8，top_k=50）：

{sampled}
"""


def _block(text: str) -> str:
    # 样例是模型生成的任意文本：把其中的 ``` 换掉，免得它提前结束代码块
    return "```text\n" + text.replace("```", "'''") + "\n```"


def compare_to_unigram(ev: Mapping[str, Any]) -> str:
    """评估表下面的一句话：模型比 unigram 基线低（或高）多少 bits/byte。"""
    gain = ev["unigram_bpb"] - ev["model_bpb"]
    if gain > 0:
        return (f"比 unigram 基线低 {gain:.3f} bits/byte（{gain / ev['unigram_bpb']:.0%}）："
                "这就是模型从上下文里学到的东西。")
    return (f"比 unigram 基线还高 {-gain:.3f} bits/byte：训练太短，模型连 token 频率都还没学好"
            "（SMOKE 的规模就是这样；正常预设会远低于基线）。")


def expected_range(corpus_label: str, preset: str, vocab_size: int, steps: int, model_loss: float) -> str:
    """评估表下的第二句：这组配置实测的 val loss 范围（有记录时），以及本次落在范围的哪里。"""
    key = (corpus_label, preset, vocab_size, steps)
    if key not in MEASURED_RANGES:
        return (f"\n\n（语料 {corpus_label}、预设 {preset}、词表 {vocab_size}、{steps} 步这组配置没有实测的参考范围——"
                "范围只为默认的 `make run` 与 SMOKE 记了；拿上面两条基线对照。）")
    lo, hi, bpb_lo, bpb_hi, source = MEASURED_RANGES[key]
    where = "在范围内" if lo - 0.02 <= model_loss <= hi + 0.02 else "在范围外：机器、torch 版本或代码变了？"
    span = f"{lo:.2f}" if lo == hi else f"{lo:.2f}–{hi:.2f}"
    bpb = f"{bpb_lo:.2f}" if bpb_lo == bpb_hi else f"{bpb_lo:.2f}–{bpb_hi:.2f}"
    return (f"\n\n这组配置（{corpus_label}、预设 {preset}、词表 {vocab_size}、{steps} 步）实测 val loss 约 {span} nats/token"
            f"（{bpb} bits/byte；{source}）；本次 {model_loss:.4f}，{where}。")


def report_fields(run_name: str, corpus_label: str, preset: str, preset_description: str,
                  records: Mapping[str, Mapping[str, Any]]) -> dict[str, Any]:
    """REPORT_TEMPLATE 的全部字段。records = {阶段名: 指纹记录}，按流水线顺序（报告阶段本身不在其中）。

    配置里的数（验证集比例、特殊 token）从阶段的输入里取，结果里的数从阶段的结果里取：
    报告只依赖指纹记录，所以从 stages/*.json 重新渲染得到的是同一份报告。
    """
    missing = [k for k in STAGE_TITLES if k != "report" and k not in records]
    if missing:
        raise ValueError(f"渲染报告缺少这些阶段的记录：{', '.join(missing)}；先跑完它们（run_pipeline）")
    corpus, cleaned, tok, shards, trained = (records[k]["result"]
                                             for k in ("corpus", "clean", "tokenizer", "shards", "train"))
    ev, samples = records["eval"]["result"], records["samples"]["result"]["samples"]
    cfg = trained["config"]
    stage_rows = [STAGE_ROW.format(number=i, title=STAGE_TITLES[name], seconds=rec["seconds"],
                                   status="跳过（指纹一致）" if rec.get("skipped") else "执行")
                  for i, (name, rec) in enumerate(records.items(), 1) if name != "report"]
    sample_blocks = [SAMPLE_TEMPLATE.format(prompt=s["prompt"], greedy=_block(s["prompt"] + s["greedy"]),
                                            sampled=_block(s["prompt"] + s["sampled"])) for s in samples]
    return {
        "run_name": run_name, "corpus_label": corpus_label, "preset": preset, "preset_description": preset_description,
        "corpus_source": corpus["source"], "corpus_mb": corpus["bytes"] / 1e6,
        "clean_steps": "、".join(cleaned["steps"]), "clean_docs_in": cleaned["docs_in"],
        "clean_docs_out": cleaned["docs_out"], "clean_mb": cleaned["bytes"] / 1e6, "clean_table": cleaned["table"],
        "vocab_size": tok["vocab_size"], "special_token": records["tokenizer"]["inputs"]["special_tokens"][0],
        "train_tokens": shards["train_tokens"], "val_tokens": shards["val_tokens"],
        "val_fraction": records["shards"]["inputs"]["val_fraction"],
        "data_bytes_per_token": shards["bytes"] / (shards["train_tokens"] + shards["val_tokens"]),
        "num_params": trained["num_params"], "params_m": trained["num_params"] / 1e6, "steps": trained["step"],
        "tokens_seen": trained["tokens_seen"], "hardware": trained["hardware"],
        **{k: cfg[k] for k in ("n_layer", "n_head", "n_embd", "block_size", "optimizer", "lr", "min_lr",
                               "lr_schedule", "warmup_iters", "batch_size", "dtype", "device", "eval_iters")},
        "stage_rows": "\n".join(stage_rows),
        "total_seconds": sum(rec["seconds"] for name, rec in records.items() if name != "report"),
        "tokens_per_s": trained["tokens_per_s"], "train_seconds": trained["train_seconds"],
        "resumed_note": "训练曾被中断，从 checkpoint 续训完成。" if trained["resumed"] else "",
        "final_train_loss": trained["final_train_loss"], "final_val_loss": trained["final_val_loss"],
        "model_dir": f"checkpoints/{run_name}",
        "eval_tokens": ev["tokens"], "eval_bytes_per_token": ev["bytes_per_token"],
        **{k: ev[k] for k in ("uniform_loss", "uniform_bpb", "unigram_loss", "unigram_perplexity", "unigram_bpb",
                              "model_loss", "perplexity", "model_bpb")},
        "uniform_perplexity": math.exp(ev["uniform_loss"]),
        "unigram_comparison": compare_to_unigram(ev),
        "expected_range": expected_range(corpus_label, preset, tok["vocab_size"], trained["step"], ev["model_loss"]),
        "sample_tokens": samples[0]["new_tokens"] if samples else 0,
        "samples": "\n".join(sample_blocks),
    }


def render_report(run_name: str, corpus_label: str, preset: str, preset_description: str,
                  records: Mapping[str, Mapping[str, Any]]) -> str:
    """填好的 report.md 全文。"""
    return REPORT_TEMPLATE.format(**report_fields(run_name, corpus_label, preset, preset_description, records))
