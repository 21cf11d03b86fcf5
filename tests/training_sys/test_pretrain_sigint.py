"""真正的 Ctrl-C：在子进程里跑命令行，训练中途发 SIGINT，检查它做完当前一步、存下完整的 checkpoint、以 130 退出，
并且这个 checkpoint 能接着训练（步数连续）。逐位一致由 tests/training_sys/test_pretrain.py 的进程内测试证明。"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import numpy as np

from tests.conftest import REPO_ROOT
from training_sys.checkpoint import latest_checkpoint, load_checkpoint
from training_sys.pretrain import config_from_args, read_metrics, train


def test_ctrl_c_saves_a_resumable_checkpoint(tmp_path):
    rng = np.random.default_rng(0)
    words = ["to be or not. ", "the king is dead. ", "long live the king. "]
    data = tmp_path / "text.txt"
    data.write_text("".join(words[i] for i in rng.integers(0, 3, 2000)), encoding="utf-8")
    run_dir = tmp_path / "run"
    argv = ["--data", str(data), "--out-dir", str(run_dir), "--n-layer", "2", "--n-head", "2", "--n-embd", "32",
            "--block-size", "32", "--batch-size", "8", "--max-iters", "100000", "--eval-interval", "100000",
            "--checkpoint-interval", "100000", "--sample-tokens", "0", "--threads", "1", "--no-progress"]
    env = dict(os.environ, PYTHONPATH=str(REPO_ROOT), TQDM_DISABLE="1")
    env.pop("SMOKE", None)
    proc = subprocess.Popen([sys.executable, "-m", "training_sys.pretrain", *argv], cwd=REPO_ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    metrics = run_dir / "metrics.jsonl"
    deadline = time.monotonic() + 180
    try:
        # 等它真正开始训练（写下至少 3 步的日志），再按"Ctrl-C"
        while not (metrics.exists() and metrics.read_text().count("\n") >= 3):
            assert proc.poll() is None, proc.communicate()
            assert time.monotonic() < deadline, "训练迟迟没有开始"
            time.sleep(0.05)
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, (out, err)
    assert "--resume" in out and "Ctrl-C" in err

    ckpt = latest_checkpoint(run_dir)
    _, state = load_checkpoint(ckpt)  # 完整：权重的 SHA-256 与训练状态一致
    steps = [r["step"] for r in read_metrics(metrics) if r["kind"] == "train"]
    k = state["step"]
    assert steps == list(range(1, k + 1)) and 3 <= k < 100000  # 保存的正是最后做完的那一步

    cfg = config_from_args([*argv, "--resume"])
    resumed = train(cfg, on_step=lambda step, record: step == k + 2)
    assert resumed.step == k + 2
    assert [r["step"] for r in read_metrics(metrics) if r["kind"] == "train"] == list(range(1, k + 3))
