"""预训练循环：小模型能学会、续训逐位一致（AdamW 与 Muon）、Ctrl-C 保存、日志与命令行、坏输入的报错。"""

from __future__ import annotations

import json
import math
import os
import re
import signal
import threading
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from training_sys.checkpoint import CheckpointError, latest_checkpoint, load_checkpoint, sha256_file
from training_sys.data import DataError, get_batch, load_char_data, load_token_shards
from training_sys.pretrain import TrainConfig, TrainingDivergedError, config_from_args, main, read_metrics, train

# 有结构的小语料：几个短句随机拼接（固定种子），字符级词表约 20 个字符，小模型几十步就能明显降低 loss
_WORDS = ["the cat sat. ", "a dog ran. ", "the sun is hot. ", "we go home. ", "it is red. "]


def write_tiny_text(path: Path) -> Path:
    rng = np.random.default_rng(0)
    path.write_text("".join(_WORDS[i] for i in rng.integers(0, len(_WORDS), 3000)), encoding="utf-8")
    return path


@pytest.fixture
def text_file(tmp_path):
    return write_tiny_text(tmp_path / "tiny.txt")


def tiny_cfg(tmp_path, data, name="run", **overrides) -> TrainConfig:
    base = dict(out_dir=str(tmp_path / name), data=None if data is None else str(data), n_layer=2, n_head=2,
                n_embd=32, block_size=32, batch_size=8, max_iters=12, warmup_iters=2, lr=3e-3, min_lr=3e-4,
                eval_interval=6, eval_iters=2, checkpoint_interval=100, sample_tokens=0, threads=1, progress=False)
    base.update(overrides)
    return TrainConfig(**base)


def final_params(result) -> dict[str, torch.Tensor]:
    return load_file(str(result.checkpoint_dir / "model.safetensors"))


def train_losses(run_dir) -> list[tuple[int, float]]:
    return [(r["step"], r["loss"]) for r in read_metrics(run_dir / "metrics.jsonl") if r["kind"] == "train"]


def records_without_timing(run_dir) -> list[dict]:
    """metrics.jsonl 的全部记录（train 与 eval），去掉只与墙钟有关的字段：剩下的每个数都应当可复现。"""
    return [{k: v for k, v in r.items() if k not in ("tokens_per_s", "ms")}
            for r in read_metrics(run_dir / "metrics.jsonl")]


# ---------------------------------------------------------------------------
# 学习、日志、产物
# ---------------------------------------------------------------------------
def test_tiny_run_learns_and_writes_artifacts(tmp_path, text_file):
    cfg = tiny_cfg(tmp_path, text_file, max_iters=80, eval_interval=40, sample_tokens=20)
    result = train(cfg)
    vocab = len(set(text_file.read_text()))
    # 均匀猜测的 loss 是 ln(V)；学到了字母与单词的统计后应明显更低
    assert result.val_loss < 0.6 * math.log(vocab), (result.val_loss, math.log(vocab))
    assert result.step == 80 and not result.interrupted
    run = result.run_dir
    records = read_metrics(run / "metrics.jsonl")
    train_rec = [r for r in records if r["kind"] == "train"]
    eval_rec = [r for r in records if r["kind"] == "eval"]
    assert [r["step"] for r in train_rec] == list(range(1, 81))
    assert [r["step"] for r in eval_rec] == [40, 80]
    assert all({"loss", "lr", "tokens_per_s", "grad_norm"} <= set(r) for r in train_rec)
    assert eval_rec[-1]["val_loss"] == result.val_loss and isinstance(eval_rec[-1]["sample"], str)
    # bits/byte：文本全是 ASCII，每字符 1 字节，所以 bpb = loss / ln 2
    assert result.val_bpb == pytest.approx(result.val_loss / math.log(2))
    # 学习率调度：第 1 步 lr = 0（线性预热从 0 开始），第 3 步达到峰值，最后接近 min_lr
    assert train_rec[0]["lr"] == 0.0 and train_rec[2]["lr"] == pytest.approx(3e-3)
    assert train_rec[-1]["lr"] == pytest.approx(3e-4, rel=0.01)
    assert (run / "loss.png").stat().st_size > 1000
    assert (run / "latest").read_text().strip() == "step_000080"
    # checkpoint 是 HF 目录：transformers 能直接加载，输出与我们的模型一致
    from transformers import AutoModelForCausalLM

    from model_lab import Llama

    hf = AutoModelForCausalLM.from_pretrained(result.checkpoint_dir).eval()
    ours = Llama.from_pretrained(result.checkpoint_dir)
    ids = torch.randint(0, vocab, (2, 16), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(hf(ids).logits, ours(ids), rtol=1e-5, atol=1e-5)
    chars = json.loads((result.checkpoint_dir / "char_vocab.json").read_text())
    assert chars == sorted(set(text_file.read_text()))


def test_grad_accum_matches_big_batch(tmp_path, text_file):
    # 2 个 8 条序列的 micro-batch 与 1 个 16 条的 batch 用到的窗口相同（同一个 Generator 依次抽），梯度相同
    a = train(tiny_cfg(tmp_path, text_file, "a", batch_size=16, grad_accum=1, max_iters=3, eval_interval=3))
    b = train(tiny_cfg(tmp_path, text_file, "b", batch_size=8, grad_accum=2, max_iters=3, eval_interval=3))
    pa, pb = final_params(a), final_params(b)
    for k in pa:
        torch.testing.assert_close(pa[k], pb[k], rtol=1e-4, atol=1e-6)
    # 只比 AdamW 之后的权重不够：Adam 的更新 m/sqrt(v) 对梯度的整体缩放几乎不敏感，梯度大了 K 倍也看不出来。
    # 日志里的 grad_norm 是裁剪与优化器步之前的梯度范数：它必须与大 batch 的相同（不是 K 倍），loss 也相同
    ra, rb = (records_without_timing(r.run_dir) for r in (a, b))
    ta, tb = ([r for r in recs if r["kind"] == "train"] for recs in (ra, rb))
    assert len(ta) == len(tb) == 3
    for x, y in zip(ta, tb):
        assert y["grad_norm"] == pytest.approx(x["grad_norm"], rel=1e-4), (x, y)
        assert y["loss"] == pytest.approx(x["loss"], rel=1e-5)
        assert y["tokens_seen"] == x["tokens_seen"] == x["step"] * 16 * 32


# ---------------------------------------------------------------------------
# 续训逐位一致
# ---------------------------------------------------------------------------
@pytest.mark.parametrize("optimizer", ["adamw", "muon"])
def test_resume_is_bit_exact(tmp_path, text_file, optimizer):
    n, k = 12, 5
    straight = train(tiny_cfg(tmp_path, text_file, "straight", optimizer=optimizer, max_iters=n))

    cfg = tiny_cfg(tmp_path, text_file, "interrupted", optimizer=optimizer, max_iters=n)
    first = train(cfg, on_step=lambda step, record: step == k)  # 回调返回 True：与 Ctrl-C 走同一条"保存并停止"的路
    assert first.interrupted and first.step == k
    assert latest_checkpoint(first.run_dir).name == f"step_{k:06d}"
    cfg.resume = True
    resumed = train(cfg)
    assert resumed.step == n and not resumed.interrupted

    pa, pb = final_params(straight), final_params(resumed)
    assert pa.keys() == pb.keys()
    for name in pa:
        assert torch.equal(pa[name], pb[name]), name
    assert train_losses(straight.run_dir) == train_losses(resumed.run_dir)  # 浮点数逐个相等，不是近似
    # 不只是 loss：每一条记录（train 的 loss、lr、grad_norm、tokens_seen，eval 的 loss 与 bpb）都与不中断的运行相同，
    # 续训的簿记（步数、已见 token 数、调度器的位置）没有从 0 重新数
    rec_straight, rec_resumed = records_without_timing(straight.run_dir), records_without_timing(resumed.run_dir)
    assert [r["step"] for r in rec_resumed if r["kind"] == "train"] == list(range(1, n + 1))
    assert all({"loss", "lr", "grad_norm", "tokens_seen"} <= set(r) for r in rec_resumed if r["kind"] == "train")
    assert rec_resumed == rec_straight
    assert resumed.val_loss == straight.val_loss
    # 优化器状态也一样（下一步才会一样）
    _, sa = load_checkpoint(straight.checkpoint_dir)
    _, sb = load_checkpoint(resumed.checkpoint_dir)
    # 最终的计数器：步数与已见 token 数（每步 batch_size × block_size × grad_accum = 8 × 32）
    assert (sb["step"], sb["tokens_seen"]) == (sa["step"], sa["tokens_seen"]) == (n, n * 8 * 32)
    for sid, st in sa["optimizer"]["state"].items():
        for key, value in st.items():
            other = sb["optimizer"]["state"][sid][key]
            assert torch.equal(torch.as_tensor(value), torch.as_tensor(other)), (sid, key)


@pytest.mark.skipif(threading.current_thread() is not threading.main_thread(), reason="信号处理函数只能装在主线程")
def test_sigint_finishes_step_saves_and_resumes(tmp_path, text_file):
    # 在第 4 步之后给自己发 SIGINT：处理函数只记下请求，循环做完这一步就保存并返回
    def ctrl_c(step, record):
        if step == 4:
            os.kill(os.getpid(), signal.SIGINT)

    cfg = tiny_cfg(tmp_path, text_file, max_iters=10)
    # 训练前的处理函数：通常是 default_int_handler；在后台（nohup、CI 的非交互 shell）启动时是 SIG_IGN
    before = signal.getsignal(signal.SIGINT)
    result = train(cfg, on_step=ctrl_c)
    assert result.interrupted and result.step == 4
    assert signal.getsignal(signal.SIGINT) is before  # 处理函数已还原
    tensors, state = load_checkpoint(latest_checkpoint(result.run_dir))
    assert state["step"] == 4 and state["tokens_seen"] == 4 * 8 * 32
    cfg.resume = True
    assert train(cfg).step == 10
    assert [s for s, _ in train_losses(result.run_dir)] == list(range(1, 11))


@pytest.mark.parametrize("keep", [1, 3])
def test_keeps_exactly_the_last_k_checkpoints(tmp_path, text_file, keep):
    # 每 2 步存一次、共 10 步：存了 step 2、4、6、8、10，只应剩下最近的 keep 个（latest 指向最后一个）
    result = train(tiny_cfg(tmp_path, text_file, max_iters=10, eval_interval=10, checkpoint_interval=2,
                            keep_checkpoints=keep))
    kept = sorted(p.name for p in result.run_dir.glob("step_*"))
    assert kept == [f"step_{s:06d}" for s in range(10, 0, -2)][:keep][::-1]
    assert latest_checkpoint(result.run_dir).name == "step_000010"


# ---------------------------------------------------------------------------
# 数据
# ---------------------------------------------------------------------------
def test_batches_are_deterministic_windows(text_file):
    data = load_char_data(path=text_file)
    x1, y1 = get_batch(data.train, 4, 16, torch.Generator().manual_seed(3))
    x2, y2 = get_batch(data.train, 4, 16, torch.Generator().manual_seed(3))
    assert torch.equal(x1, x2) and torch.equal(y1, y2)
    assert x1.shape == (4, 16) and torch.equal(x1[:, 1:], y1[:, :-1])  # y 是 x 右移一位
    text = text_file.read_text()
    assert data.decode(data.encode(text[:50])) == text[:50]
    assert len(data.val) == round(len(text) * 0.1)
    # 边界：N = T + 1 时只有一个窗口，也必须取得到；N = T 时报错
    tiny = np.arange(17)
    x, y = get_batch(tiny, 2, 16, torch.Generator().manual_seed(0))
    assert torch.equal(x[0], torch.arange(16)) and torch.equal(y[0], torch.arange(1, 17))
    with pytest.raises(DataError, match="block_size=17"):
        get_batch(tiny, 2, 17, torch.Generator())


def write_shards(directory, train_ids, val_ids, vocab_size, dtype="uint16", **meta_extra):
    directory.mkdir(parents=True, exist_ok=True)
    np.asarray(train_ids, dtype=dtype).tofile(directory / "train.bin")
    np.asarray(val_ids, dtype=dtype).tofile(directory / "val.bin")
    meta = {"vocab_size": vocab_size, "dtype": dtype, "train_tokens": len(train_ids), "val_tokens": len(val_ids),
            **meta_extra}
    (directory / "meta.json").write_text(json.dumps(meta))
    return directory


def test_token_shards_train(tmp_path):
    rng = np.random.default_rng(0)
    ids = np.tile(np.arange(50), 200) + rng.integers(0, 2, 10_000)  # 近似周期序列，0..50
    shards = write_shards(tmp_path / "tok", ids[:9000], ids[9000:], 300, bytes=30_000, split_byte=27_000)
    data = load_token_shards(shards)
    assert data.vocab_size == 300 and data.val_bytes_per_token == 3.0 and data.decode is None
    result = train(tiny_cfg(tmp_path, None, shards=str(shards), max_iters=30, eval_interval=30))
    assert result.val_loss < 0.7 * math.log(300)
    assert result.val_bpb == pytest.approx(result.val_loss / math.log(2) / 3.0)


@pytest.mark.parametrize("problem", ["no_dir", "no_meta", "bad_json", "truncated_bin", "id_out_of_range",
                                     "missing_val"])
def test_bad_shards_are_clear_errors(tmp_path, problem):
    shards = write_shards(tmp_path / "tok", np.arange(1000) % 100, np.arange(200) % 100, 100)
    if problem == "no_dir":
        shards = tmp_path / "nowhere"
    elif problem == "no_meta":
        (shards / "meta.json").unlink()
    elif problem == "bad_json":
        (shards / "meta.json").write_text("{not json")
    elif problem == "truncated_bin":
        (shards / "train.bin").write_bytes((shards / "train.bin").read_bytes()[:-3])
    elif problem == "id_out_of_range":
        write_shards(shards, np.arange(1000) % 150, np.arange(200) % 100, 100)
    else:
        (shards / "val.bin").unlink()
    expected = {"no_dir": "不存在", "no_meta": "meta.json", "bad_json": "JSON", "truncated_bin": "截断",
                "id_out_of_range": "超出", "missing_val": "val.bin"}[problem]
    with pytest.raises(DataError, match=expected):
        load_token_shards(shards)


def test_model_vocab_smaller_than_shards_is_an_error(tmp_path):
    shards = write_shards(tmp_path / "tok", np.arange(1000) % 100, np.arange(200) % 100, 100)
    with pytest.raises(DataError, match="vocab_size=50"):
        train(tiny_cfg(tmp_path, None, shards=str(shards), vocab_size=50))


# ---------------------------------------------------------------------------
# 坏的 checkpoint / 配置 / 发散：清楚的错误，什么也不覆盖
# ---------------------------------------------------------------------------
def snapshot(run_dir) -> dict[str, str]:
    return {str(p.relative_to(run_dir)): sha256_file(p) for p in sorted(run_dir.rglob("*")) if p.is_file()}


@pytest.fixture
def interrupted_run(tmp_path, text_file):
    """一个停在第 4 步（共 8 步）的运行：latest = step_000004。"""
    cfg = tiny_cfg(tmp_path, text_file, max_iters=8, eval_interval=4)
    assert train(cfg, on_step=lambda step, record: step == 4).interrupted
    return cfg


def test_resume_with_incompatible_config(interrupted_run):
    run_dir = Path(interrupted_run.out_dir)
    before = snapshot(run_dir)
    interrupted_run.resume = True
    interrupted_run.n_embd = 64
    with pytest.raises(CheckpointError, match="n_embd: checkpoint=32"):
        train(interrupted_run)
    assert snapshot(run_dir) == before


def test_resume_without_checkpoint(tmp_path, text_file):
    with pytest.raises(CheckpointError, match="没有 checkpoint"):
        train(tiny_cfg(tmp_path, text_file, resume=True))


@pytest.mark.parametrize("victim", ["training_state.pt", "model.safetensors"])
def test_resume_from_truncated_checkpoint(interrupted_run, victim):
    f = latest_checkpoint(Path(interrupted_run.out_dir)) / victim
    f.write_bytes(f.read_bytes()[: f.stat().st_size // 2])
    interrupted_run.resume = True
    with pytest.raises(CheckpointError, match="截断"):
        train(interrupted_run)


def test_fresh_run_refuses_to_overwrite(interrupted_run):
    run_dir = Path(interrupted_run.out_dir)
    before = snapshot(run_dir)
    with pytest.raises(CheckpointError, match="--resume"):
        train(interrupted_run)
    assert snapshot(run_dir) == before


def test_non_finite_loss_stops_with_step_and_keeps_checkpoint(interrupted_run, monkeypatch):
    run_dir = Path(interrupted_run.out_dir)
    ckpt = latest_checkpoint(run_dir)
    before = {p.name: sha256_file(p) for p in ckpt.iterdir()}
    real = torch.nn.functional.cross_entropy
    monkeypatch.setattr(torch.nn.functional, "cross_entropy", lambda *a, **k: real(*a, **k) * float("nan"))
    interrupted_run.resume = True
    with pytest.raises(TrainingDivergedError, match="第 5 步"):
        train(interrupted_run)
    assert latest_checkpoint(run_dir) == ckpt
    assert {p.name: sha256_file(p) for p in ckpt.iterdir()} == before
    assert not (run_dir / "step_000005").exists()


# ---------------------------------------------------------------------------
# 配置与命令行
# ---------------------------------------------------------------------------
def test_unknown_config_keys_are_rejected(tmp_path):
    with pytest.raises(ValueError, match=r"'learning_rate'（是不是 'lr'？）|'max_iter'（是不是 'max_iters'？）"):
        TrainConfig.from_dict({"max_iter": 10})
    path = tmp_path / "cfg.json"
    path.write_text(json.dumps({"lr": 1e-3, "n_layers": 2}))
    with pytest.raises(ValueError, match="n_layers"):
        config_from_args(["--config", str(path)])
    with pytest.raises(ValueError, match="类型不对"):
        TrainConfig.from_dict({"max_iters": "many"})
    with pytest.raises(ValueError, match="不能被"):
        TrainConfig(n_embd=30, n_head=4).validate()


def test_cli_config_file_and_overrides(tmp_path, text_file, capsys):
    cfg_file = tmp_path / "cfg.json"
    cfg = tiny_cfg(tmp_path, text_file, max_iters=6, eval_interval=3).to_dict()
    cfg_file.write_text(json.dumps({k: v for k, v in cfg.items() if v is not None}))
    parsed = config_from_args(["--config", str(cfg_file), "--max-iters", "4", "--no-progress", "--lr", "2e-3"])
    assert parsed.max_iters == 4 and parsed.lr == 2e-3 and parsed.n_embd == 32 and parsed.progress is False
    main(["--config", str(cfg_file), "--max-iters", "4"])
    last = capsys.readouterr().out.strip().splitlines()[-1]
    assert re.fullmatch(r"final: step=4 train_loss=\d+\.\d+ val_loss=\d+\.\d+ tokens_per_s=\d+", last), last


def test_cli_bad_input_exits_with_message(tmp_path, capsys):
    with pytest.raises(SystemExit) as exc:
        main(["--data", str(tmp_path / "missing.txt"), "--out-dir", str(tmp_path / "r")])
    assert exc.value.code == 2
    assert "missing.txt" in capsys.readouterr().err


def test_bf16_autocast_runs(tmp_path, text_file):
    result = train(tiny_cfg(tmp_path, text_file, dtype="bfloat16", max_iters=6, eval_interval=6))
    assert math.isfinite(result.val_loss)
    # 权重仍是 fp32（autocast 只改变矩阵乘的精度），保存的 HF 目录也是 fp32
    assert all(t.dtype == torch.float32 for t in final_params(result).values())


def test_samples_only_ids_the_data_knows_when_the_model_vocab_is_padded(tmp_path, text_file):
    """--vocab-size 大于数据的词表（补齐到 64 的倍数、或能被 tp 整除）时，样例只从数据的词表里抽：解码器不认识多出的 id。"""
    cfg = tiny_cfg(tmp_path, text_file, max_iters=2, eval_interval=2, sample_tokens=40, vocab_size=64)
    result = train(cfg)
    assert result.history[-1]["sample"]  # 生成并解码成功（以前会在 decode 里 KeyError）


# ---------------------------------------------------------------------------
# 练习模式（utils/exercise_parts/training.py）：数据编码、窗口采样、随机数状态、checkpoint 的提交协议，逐个单独对照
# ---------------------------------------------------------------------------
def test_char_encode_array_is_the_index_in_the_sorted_charset():
    from training_sys.data import char_encode_array

    text = "héllo, wörld! 你好 🙂\nhello"
    chars = sorted(set(text))
    ids = char_encode_array(text, chars)
    assert ids.dtype == np.uint16 and ids.tolist() == [chars.index(c) for c in text]
    with pytest.raises(DataError, match="'z'"):  # 落在字符表中间的陌生字符
        char_encode_array("hez", chars)
    with pytest.raises(DataError, match="'~'"):  # 比字符表里所有字符都大的陌生字符（二分查找落在表尾之外）
        char_encode_array("a~", ["a", "b"])
    many = [chr(c) for c in range(0x20000, 0x20000 + 65537)]  # 65537 个字符：id 装不进 uint16
    wide = char_encode_array(many[-1] + many[0] + many[1], many)
    assert wide.dtype == np.uint32 and wide.tolist() == [65536, 0, 1]


def test_get_batch_draws_window_starts_from_the_generator_like_nanogpt():
    data = np.arange(100, 160, dtype=np.uint16)  # N = 60
    B, T = 5, 8
    ours, ref = torch.Generator().manual_seed(11), torch.Generator().manual_seed(11)
    x, y = get_batch(data, B, T, ours)
    starts = torch.randint(len(data) - T, (B,), generator=ref)  # nanoGPT：起点 ∈ [0, N − T)
    assert x.dtype == y.dtype == torch.int64 and x.shape == y.shape == (B, T)
    assert torch.equal(x, torch.stack([torch.arange(T) + 100 + s for s in starts]))
    assert torch.equal(y, x + 1)  # y 是 x 右移一位
    # 每个 batch 只从专用 Generator 抽一次 B 个起点：它的状态就是"数据读到哪了"，续训时存下、恢复即可
    assert torch.equal(ours.get_state(), ref.get_state())
    x, _ = get_batch(data, 4000, T, torch.Generator().manual_seed(0))
    assert (int(x[:, 0].min()) - 100, int(x[:, 0].max()) - 100) == (0, len(data) - T - 1)  # 两端的窗口都取得到


def test_rng_state_capture_and_restore_replay_every_source():
    import io
    import random

    from training_sys.checkpoint import capture_rng_state, restore_rng_state

    random.seed(1)
    np.random.seed(2)
    torch.manual_seed(3)
    np.random.standard_normal()  # 旧式 numpy 一次算两个正态数、缓存一个：状态里的 has_gauss 与 cached_gaussian 也要存
    gen = torch.Generator().manual_seed(4)
    torch.randint(10, (3,), generator=gen)
    state = capture_rng_state(gen)
    buf = io.BytesIO()
    torch.save(state, buf)
    buf.seek(0)
    loaded = torch.load(buf, weights_only=True)  # checkpoint 用 weights_only=True 读：状态里只能有张量与基本类型

    def draw():
        return (random.random(), float(np.random.standard_normal()), int(np.random.randint(1 << 30)),
                torch.randn(3).tolist(), torch.randint(1 << 30, (2,), generator=gen).tolist())

    first = draw()
    random.seed(9)
    np.random.seed(9)
    torch.manual_seed(9)
    gen.manual_seed(9)
    restore_rng_state(loaded, gen)
    assert draw() == first


def _tiny_llama():
    from model_lab import Llama, LlamaConfig

    torch.manual_seed(0)
    return Llama(LlamaConfig(vocab_size=32, hidden_size=16, intermediate_size=24, num_hidden_layers=1,
                             num_attention_heads=2, max_position_embeddings=16, tie_word_embeddings=False))


def test_save_checkpoint_writes_latest_last_and_keeps_the_newest(tmp_path, monkeypatch):
    import training_sys.checkpoint as ckpt

    model, run = _tiny_llama(), tmp_path / "run"
    pointed = []
    real_atomic_write = ckpt.atomic_write

    def spy(path, data, *args, **kwargs):  # 改写 latest 的那一刻，它要指向的目录必须已经完整
        if Path(path).name == ckpt.LATEST_FILE:
            target = run / data.strip()
            pointed.append((target.name, sorted(p.name for p in target.iterdir())))
        return real_atomic_write(path, data, *args, **kwargs)

    monkeypatch.setattr(ckpt, "atomic_write", spy)
    for step in (1, 2, 3):
        out = ckpt.save_checkpoint(run, model, {"step": step}, {"char_vocab.json": "[]"}, keep=2)
        assert out == run / f"step_{step:06d}" and ckpt.latest_checkpoint(run) == out
    assert [name for name, _ in pointed] == ["step_000001", "step_000002", "step_000003"]
    for _, files in pointed:
        assert {"model.safetensors", "config.json", "char_vocab.json", "training_state.pt"} <= set(files)
    assert sorted(p.name for p in run.glob("step_*")) == ["step_000002", "step_000003"]  # keep=2：含 latest 共两个
    # 上次写到一半崩溃留下的目录（latest 从没指向它）：整个删掉重写，残骸不会混进新 checkpoint
    (run / "step_000004").mkdir()
    (run / "step_000004" / "half_written.tmp").write_text("x")
    ckpt.save_checkpoint(run, model, {"step": 4}, keep=1)
    assert sorted(p.name for p in run.glob("step_*")) == ["step_000004"]
    assert not (run / "step_000004" / "half_written.tmp").exists()
    with pytest.raises(CheckpointError, match="latest"):  # latest 指向的完整 checkpoint 不能原地覆盖
        ckpt.save_checkpoint(run, model, {"step": 4})
    assert latest_checkpoint(run).name == "step_000004"


def test_load_checkpoint_returns_weights_and_state_and_checks_the_hash(tmp_path):
    import training_sys.checkpoint as ckpt

    model = _tiny_llama()
    out = ckpt.save_checkpoint(tmp_path / "run", model, {"step": 7, "tokens_seen": 123})
    tensors, state = ckpt.load_checkpoint(out)
    assert tensors.keys() == model.state_dict().keys()
    assert all(torch.equal(tensors[k], v) for k, v in model.state_dict().items())
    assert (state["step"], state["tokens_seen"]) == (7, 123)
    assert state["weights_sha256"] == sha256_file(out / "model.safetensors")
    weights = out / "model.safetensors"
    raw = bytearray(weights.read_bytes())
    raw[-1] ^= 0xFF  # 长度不变、只翻转一个字节：safetensors 照样读得出来，只有哈希能发现
    weights.write_bytes(bytes(raw))
    with pytest.raises(CheckpointError, match="SHA-256"):
        ckpt.load_checkpoint(out)
    (out / "training_state.pt").unlink()
    with pytest.raises(CheckpointError, match="training_state.pt"):
        ckpt.load_checkpoint(out)
