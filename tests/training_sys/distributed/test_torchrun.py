"""`--parallel ddp` 的真实用法：torchrun 启动 `python -m training_sys.pretrain`，与单进程训练逐步对照。

- 单机：`torchrun --standalone --nproc_per_node 2 ... --parallel ddp`（每个 rank batch_size 条、梯度累积 2）的每步 loss
  与单进程用全局 batch（batch_size × 2）训练的相差 ≤ 1e-5，最后的权重 allclose。
- 中断后续训 + 多机形式：把"latest"指回中途的 checkpoint（等价于进程在那一步保存后被杀），再用两个
  `torchrun --nnodes 2 --rdzv-backend c10d` 代理（各 1 个进程）--resume：它们完成 rendezvous、从那一步接着训练，
  每步 loss 与最后的权重都与不中断的那次逐位相同（同样的 rank 数 = 同样的全局 batch）。
- 没有 torchrun 却给了 --parallel：退出码 2、一行报错；对应的并行文件不存在：报错指名缺的模块。

每个子进程都有超时，失败时连同它的子进程一起杀掉。
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tests.conftest import REPO_ROOT
from training_sys.distributed import DistributedError
from training_sys.pretrain import TrainConfig, main, train

TIMEOUT_S = 180
TINY = dict(n_layer=1, n_head=2, n_embd=16, block_size=16, grad_accum=2, max_iters=4, warmup_iters=1, eval_interval=4,
            eval_iters=1, sample_tokens=0, checkpoint_interval=2, progress=False, threads=1, seed=7)
PER_RANK_BATCH = 2


def cli(out_dir: Path, **extra) -> list[str]:
    args = []
    for k, v in {**TINY, "batch_size": PER_RANK_BATCH, "out_dir": str(out_dir), **extra}.items():
        flag = "--" + k.replace("_", "-")
        if isinstance(v, bool):
            args.append(flag if v else "--no-" + k.replace("_", "-"))
        else:
            args += [flag, str(v)]
    return ["-m", "training_sys.pretrain", *args]


def torchrun_env(tmp_path: Path) -> dict[str, str]:
    env = dict(os.environ)
    env.update(PYTHONPATH=str(REPO_ROOT), OMP_NUM_THREADS="1", TQDM_DISABLE="1", MPLBACKEND="Agg",
               LLM_CHECKPOINTS_DIR=str(tmp_path / "checkpoints"))
    return env


def run_all(commands: list[list[str]], env: dict[str, str]) -> list[str]:
    """同时启动几条命令，等它们全部结束；超时或任一失败时杀掉所有进程组，并把输出附在报错里。"""
    procs = [subprocess.Popen(c, cwd=REPO_ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                              start_new_session=True) for c in commands]
    outputs = []
    try:
        for p in procs:
            out, _ = p.communicate(timeout=TIMEOUT_S)
            outputs.append(out)
    except subprocess.TimeoutExpired:
        pytest.fail(f"torchrun 超过 {TIMEOUT_S} s 没有结束：{commands}")
    finally:
        for p in procs:
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGKILL)
                p.wait()
    for p, out, c in zip(procs, outputs, commands):
        assert p.returncode == 0, f"{' '.join(c)} 退出码 {p.returncode}\n{out[-4000:]}"
    return outputs


def torchrun() -> list[str]:
    return [sys.executable, "-m", "torch.distributed.run"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def train_losses(run_dir: Path) -> list[tuple[int, float]]:
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line.strip()]
    return [(r["step"], r["loss"]) for r in records if r["kind"] == "train"]


def weights(ckpt: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(ckpt / "model.safetensors"))


@pytest.fixture(scope="module")
def ddp_run(tmp_path_factory):
    """torchrun --standalone 2 个进程训练 4 步（第 2、4 步存 checkpoint），以及单进程用全局 batch 的同样训练。"""
    tmp = tmp_path_factory.mktemp("torchrun")
    run_all([[*torchrun(), "--standalone", "--nproc_per_node", "2", *cli(tmp / "ddp", parallel="ddp")]],
            torchrun_env(tmp))
    single = train(TrainConfig(**TINY, batch_size=PER_RANK_BATCH * 2, out_dir=str(tmp / "single")))
    return tmp, single


def test_torchrun_ddp_equals_single_process_with_the_global_batch(ddp_run):
    tmp, single = ddp_run
    ours, ref = train_losses(tmp / "ddp"), train_losses(single.run_dir)
    assert [s for s, _ in ours] == [1, 2, 3, 4]
    assert [s for s, _ in ref] == [s for s, _ in ours]
    for (_, a), (_, b) in zip(ours, ref):
        assert abs(a - b) <= 1e-5, (ours, ref)
    assert (tmp / "ddp" / "latest").read_text().strip() == "step_000004"  # 一个 HF 目录，只有 rank 0 写
    mine, theirs = weights(tmp / "ddp" / "step_000004"), weights(single.checkpoint_dir)
    assert mine.keys() == theirs.keys()
    for k in mine:
        torch.testing.assert_close(mine[k], theirs[k], rtol=1e-4, atol=1e-5, msg=k)


def test_multinode_agents_resume_an_interrupted_run_exactly(ddp_run):
    tmp, _ = ddp_run
    straight = tmp / "ddp"
    resumed = tmp / "resumed"
    shutil.copytree(straight, resumed)
    shutil.rmtree(resumed / "step_000004")
    (resumed / "latest").write_text("step_000002\n")  # 等价于：第 2 步存好之后进程被杀
    port = free_port()
    agents = [[*torchrun(), "--nnodes", "2", "--node-rank", str(r), "--nproc_per_node", "1", "--rdzv-backend", "c10d",
               "--rdzv-endpoint", f"127.0.0.1:{port}", "--rdzv-id", "d1-test",
               *cli(resumed, parallel="ddp", resume=True)] for r in (0, 1)]
    outputs = run_all(agents, torchrun_env(tmp))
    assert sum("从第 2 步续训" in out for out in outputs) == 1  # 只有 rank 0 打印
    assert train_losses(resumed) == train_losses(straight)  # 浮点数逐个相等
    a, b = weights(resumed / "step_000004"), weights(straight / "step_000004")
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_parallel_without_torchrun_exits_2_with_one_line(tmp_path, monkeypatch, capsys):
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(key, raising=False)
    with pytest.raises(SystemExit) as exc:
        main(["--parallel", "ddp", "--out-dir", str(tmp_path / "x"), "--max-iters", "1", "--warmup-iters", "0"])
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "不是由 torchrun 启动的" in err and "torchrun --standalone" in err
    with pytest.raises(SystemExit) as exc:
        main(["--parallel", "dp3", "--out-dir", str(tmp_path / "y")])
    assert exc.value.code == 2 and "parallel='dp3' 未知" in capsys.readouterr().err


def test_missing_strategy_module_is_named(monkeypatch):
    from training_sys.distributed import parallel

    monkeypatch.setitem(parallel._STRATEGIES, "fsdp", ("training_sys.distributed.no_such_file", "FSDPStrategy", {}))
    with pytest.raises(DistributedError, match=r"training_sys\.distributed\.no_such_file（类 FSDPStrategy）.*还不存在"):
        parallel.build_strategy("fsdp")
    monkeypatch.setitem(parallel._STRATEGIES, "tp", ("training_sys.distributed.ddp", "NoSuchStrategy", {}))
    with pytest.raises(DistributedError, match="ddp.NoSuchStrategy"):
        parallel.build_strategy("tp")
    assert parallel.PARALLEL_CHOICES == ("none", "ddp", "zero1", "zero2", "fsdp", "tp", "pp", "cp")
    assert type(parallel.build_strategy("none")).__name__ == "SingleDevice"
