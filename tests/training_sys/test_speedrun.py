"""端到端运行：SMOKE 规模的全流程产出 transformers 能加载的模型目录，断点续跑、指纹、报告、命令行帮助、坏输入。

流水线本身（指纹、跳过、中断）的单元测试在 test_pipeline.py，评估的数学在 test_evaluation.py。
"""

from __future__ import annotations

import argparse
import errno
import json
import math
import re
import string

import pytest
import torch

from training_sys import speedrun
from training_sys.pipeline import StageInterrupted
from training_sys.speedrun import Options, auto_vocab_size, run_pipeline
from training_sys.speedrun_report import REPORT_TEMPLATE, STAGE_TITLES, render_report, report_fields

STAGES = speedrun.STAGES
PROBES = ["ROMEO:\nO, she doth teach the torches to burn bright!", "<|endoftext|>KING LEAR:\n  Blow, winds 🙂 生存"]


def smoke_opts(run: str | None, **kw) -> Options:
    # 比 SMOKE 预设还短的训练：测试只关心流程与格式，不关心模型学得多好
    return Options(**{"preset": "smoke", "run": run, "max_iters": 6, "progress": False, **kw})


@pytest.fixture(scope="module")
def ckpt_root(tmp_path_factory):
    with pytest.MonkeyPatch.context() as mp:
        root = tmp_path_factory.mktemp("speedrun")
        mp.setenv("LLM_CHECKPOINTS_DIR", str(root))
        yield root


@pytest.fixture(scope="module")
def smoke_run(ckpt_root):
    """与 `SMOKE=1 python -m training_sys.speedrun`（不带参数）相同的一次运行，再用同样的选项重跑一次。"""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("SMOKE", "1")
        speedrun.main([])
        rerun = run_pipeline(Options(preset="smoke", progress=False))
    return ckpt_root / "shakespeare_smoke", rerun


def executed(records) -> set[str]:
    return {name for name, rec in records.items() if not rec["skipped"]}


# ---------------------------------------------------------------------------
# 产物：HF 模型目录 + 报告
# ---------------------------------------------------------------------------
def test_every_stage_runs_and_writes_its_artifacts(smoke_run):
    run_dir, records = smoke_run
    assert list(records) == list(STAGES)
    for name in ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json", "report.md",
                 "loss.png", "eval.json", "samples.json"):
        assert (run_dir / name).is_file(), name
    for name in STAGES:
        assert (run_dir / "stages" / f"{name}.json").is_file(), name
    assert records["train"]["result"]["step"] == speedrun.PRESETS["smoke"].train["max_iters"]


def test_transformers_loads_the_directory_and_matches_ours(smoke_run):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from data_pipeline.tokenization import Tokenizer
    from model_lab import Llama

    run_dir, _ = smoke_run
    tok = Tokenizer.load(run_dir / "tokenizer" / "bpe.json")
    hf_tok = AutoTokenizer.from_pretrained(run_dir)
    for text in PROBES:
        ids = tok.encode(text)
        assert hf_tok(text)["input_ids"] == ids
        assert hf_tok.decode(ids) == tok.decode(ids) == text

    ours = Llama.from_pretrained(run_dir)
    hf = AutoModelForCausalLM.from_pretrained(run_dir).eval()
    x = torch.tensor([tok.encode(PROBES[0])])
    with torch.no_grad():
        torch.testing.assert_close(hf(x).logits, ours(x), atol=1e-5, rtol=1e-5)
        new = ours.config.max_position_embeddings - x.size(1)
        greedy = ours.generate(x, new, temperature=0)
        hf_greedy = hf.generate(x, attention_mask=torch.ones_like(x), max_new_tokens=new, do_sample=False,
                                pad_token_id=tok.special_ids["<|endoftext|>"])
    assert greedy.tolist() == hf_greedy.tolist()


def test_report_and_samples(smoke_run):
    run_dir, records = smoke_run
    report = (run_dir / "report.md").read_text(encoding="utf-8")
    for heading in ("## 配置", "## 各阶段耗时", "## 损失曲线", "## 评估", "## 样例", "## 下一步"):
        assert heading in report
    assert "![loss](loss.png)" in report and "unigram" in report
    samples = json.loads((run_dir / "samples.json").read_text(encoding="utf-8"))
    assert [s["prompt"] for s in samples] == list(speedrun.PROMPTS)
    assert all(len(s["greedy_ids"]) == s["new_tokens"] > 0 for s in samples)
    ev = records["eval"]["result"]
    assert ev["model_bpb"] == pytest.approx(ev["model_loss"] / math.log(2) / ev["bytes_per_token"])


def recorded(run_dir) -> dict[str, dict]:
    """磁盘上 stages/*.json 里记下的各阶段记录（报告阶段之前的那些），按流水线顺序。"""
    return {name: json.loads((run_dir / "stages" / f"{name}.json").read_text(encoding="utf-8"))
            for name in STAGES if name != "report"}


def test_report_renders_from_recorded_stage_results(smoke_run):
    run_dir, _ = smoke_run
    records = recorded(run_dir)
    args = ("shakespeare_smoke", "shakespeare", "smoke", speedrun.PRESETS["smoke"].description)
    report = render_report(*args, records)
    # 报告只依赖指纹记录：从磁盘上的记录重新渲染，得到与这次运行写出的 report.md 逐字相同的文本
    assert report == (run_dir / "report.md").read_text(encoding="utf-8")
    # 模板的每个字段都有值、没有多余的值；没有留下 {...}，数字的位置上没有 None
    template_fields = {name for _, name, _, _ in string.Formatter().parse(REPORT_TEMPLATE) if name}
    assert template_fields == set(report_fields(*args, records))
    assert not re.search(r"\{[^}]*\}", report)
    assert "None" not in report and "nan" not in report.lower()
    # 各节按阶段顺序：配置 → 耗时 → 损失曲线（训练）→ 用起来（导出）→ 评估 → 样例 → 下一步
    headings = re.findall(r"^## (.+)$", report, flags=re.MULTILINE)
    assert headings == ["配置", "各阶段耗时", "数据清洗", "损失曲线", "用起来", "评估", "样例", "下一步"]
    # 耗时表的编号就是阶段在流水线里的位置（以前的报告把第 6 步排在第 4 步前面）
    rows = re.findall(r"^\| (\d+) (.+?) \| ([\d.]+) s \| (执行|跳过（指纹一致）) \|$", report, flags=re.MULTILINE)
    assert [(int(n), title) for n, title, _, _ in rows] == [
        (i, STAGE_TITLES[name]) for i, name in enumerate(STAGES, 1) if name != "report"]
    assert tuple(STAGE_TITLES) == STAGES
    # 跳过的阶段在表里写"跳过"
    rerun = {name: {**rec, "skipped": True} for name, rec in records.items()}
    n = len(STAGES) - 1
    assert report.count("执行 |") == n and render_report(*args, rerun).count("跳过（指纹一致） |") == n


def test_report_names_a_missing_stage():
    with pytest.raises(ValueError, match="缺少这些阶段的记录：corpus"):
        render_report("r", "c", "smoke", "d", {})


# ---------------------------------------------------------------------------
# 指纹与续跑
# ---------------------------------------------------------------------------
def test_rerun_skips_every_stage(smoke_run):
    _, records = smoke_run
    assert executed(records) == set()


def test_changed_training_config_redoes_only_downstream(ckpt_root):
    run_pipeline(smoke_opts("change"))
    records = run_pipeline(smoke_opts("change", max_iters=8))
    assert executed(records) == {"train", "export", "eval", "samples", "report"}
    assert records["train"]["result"]["step"] == 8 and not records["train"]["result"]["resumed"]
    records = run_pipeline(smoke_opts("change", max_iters=8, vocab_size=300))  # 上游变化：全部下游重做
    assert executed(records) == set(STAGES) - {"corpus", "clean"}


def test_corrupted_artifact_is_not_taken_for_done(ckpt_root):
    run_dir = ckpt_root / "corrupt"
    run_pipeline(smoke_opts("corrupt"))
    weights = run_dir / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])  # 模拟写到一半的文件
    (run_dir / "stages" / "eval.json").write_text('{"inputs_digest": "tru', encoding="utf-8")  # 截断的指纹
    records = run_pipeline(smoke_opts("corrupt"))
    # export 重做得到逐字节相同的权重，所以 eval 的输入没变；它只因为指纹文件损坏而重做
    assert executed(records) == {"export", "eval"}
    assert weights.stat().st_size > 100


def test_interrupted_training_resumes_from_checkpoint(ckpt_root):
    run_dir = ckpt_root / "interrupt"
    with pytest.raises(StageInterrupted, match="续训"):
        run_pipeline(smoke_opts("interrupt"), on_step=lambda step, record: step == 3)
    assert not (run_dir / "stages" / "train.json").exists()
    assert (run_dir / "stages" / "shards.json").exists()
    records = run_pipeline(smoke_opts("interrupt"))
    assert executed(records) == {"train", "export", "eval", "samples", "report"}
    assert records["train"]["result"]["resumed"] and records["train"]["result"]["step"] == 6
    steps = [json.loads(line)["step"] for line in (run_dir / "train" / "metrics.jsonl").read_text().splitlines()
             if json.loads(line)["kind"] == "train"]
    assert steps == list(range(1, 7))  # 续训接着第 4 步，没有重复或缺失的步


def test_fresh_redoes_everything(smoke_run):
    records = run_pipeline(Options(preset="smoke", fresh=True, progress=False))
    assert executed(records) == set(STAGES)


def test_disk_full_is_reported_and_next_run_resumes(ckpt_root, monkeypatch, capsys):
    from data_pipeline.tokenization import Tokenizer

    def full_disk(self, path):
        raise OSError(errno.ENOSPC, "No space left on device", str(path))

    with monkeypatch.context() as mp:
        mp.setattr(Tokenizer, "save_hf", full_disk)
        with pytest.raises(SystemExit) as exc:
            speedrun.main(["--preset", "smoke", "--run", "diskfull", "--max-iters", "4", "--no-progress"])
    assert exc.value.code == 28
    assert "磁盘空间不足" in capsys.readouterr().err
    stages = ckpt_root / "diskfull" / "stages"
    assert (stages / "clean.json").exists() and not (stages / "tokenizer.json").exists()
    records = run_pipeline(smoke_opts("diskfull", max_iters=4))
    assert executed(records) == set(STAGES) - {"corpus", "clean"}


def test_local_text_file_via_data(ckpt_root, tmp_path):
    from data_pipeline.corpora import load_corpus

    text = tmp_path / "mytext.txt"
    text.write_text(load_corpus("shakespeare")[-40_000:], encoding="utf-8")
    opts = smoke_opts(None, data=str(text), max_iters=3)
    assert opts.run_name == "mytext_smoke"
    records = run_pipeline(opts)
    assert records["corpus"]["result"]["source"] == str(text)
    assert "本地文件 mytext.txt" in (ckpt_root / "mytext_smoke" / "report.md").read_text(encoding="utf-8")


# ---------------------------------------------------------------------------
# 坏输入
# ---------------------------------------------------------------------------
def test_auto_vocab_size():
    assert auto_vocab_size(4_780_840) == 2048
    assert auto_vocab_size(19_000_000) == 8192
    assert auto_vocab_size(200_000) == 512 == auto_vocab_size(10)
    assert auto_vocab_size(10**12) == 32768


@pytest.mark.parametrize("argv, message", [
    (["--corpus", "nope"], "未知语料 --corpus 'nope'"),
    (["--preset", "huge"], "未知预设 --preset 'huge'"),
    (["--vocab-size", "100"], "--vocab-size 100 太小"),
    (["--corpus", "tinyshakespeare", "--data", "/no/such/file.txt"], "本地文件不存在"),
])
def test_bad_input_is_a_clear_error(argv, message, capsys, ckpt_root):
    with pytest.raises(SystemExit) as exc:
        speedrun.main(argv + ["--run", "bad"])
    assert exc.value.code == 2
    assert message in capsys.readouterr().err


@pytest.mark.skipif(torch.cuda.is_available(), reason="这台机器有 GPU：--preset gpu 是合法的")
def test_gpu_preset_without_gpu_fails_without_fallback(capsys, ckpt_root):
    with pytest.raises(SystemExit) as exc:
        speedrun.main(["--preset", "gpu", "--run", "gpu"])
    assert exc.value.code == 2
    assert "需要 CUDA GPU" in capsys.readouterr().err
    assert not (ckpt_root / "gpu" / "stages").exists()  # 什么都没有开始


# ---------------------------------------------------------------------------
# 命令行帮助
# ---------------------------------------------------------------------------
def test_every_flag_has_chinese_help():
    actions = [a for a in speedrun.build_parser()._actions if a.option_strings]
    assert {"--preset", "--corpus", "--data", "--run", "--vocab-size", "--max-iters", "--threads", "--fresh",
            "--no-progress", "--help"} <= {s for a in actions for s in a.option_strings}
    for action in actions:
        assert action.help and action.help != argparse.SUPPRESS, action.option_strings
        assert re.search(r"[\u4e00-\u9fff]", action.help), (action.option_strings, action.help)
    help_text = speedrun.build_parser().format_help()
    assert all(name in help_text for name in speedrun.PRESETS)  # 预设的可选值写在帮助里
