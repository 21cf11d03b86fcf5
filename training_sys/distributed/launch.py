"""起进程、建进程组：分布式课程与测试共用的一点点基础设施（启动器本身是 torchrun，这里不重写它）。

两种入口：
- `spawn(fn, world_size, *args)`：在本机起 world_size 个进程，各自 `init_process_group` 后调用 `fn(rank, world_size, *args)`，
  把每个 rank 的返回值按 rank 顺序交回来。课程脚本（`python training_sys/distributed/ddp.py`）和多进程测试用它。
- `init_from_env()`：被 `torchrun` 启动时读环境变量 RANK / WORLD_SIZE / LOCAL_RANK / MASTER_ADDR / MASTER_PORT 建进程组。
  这才是真正训练时的用法（单机多卡、多机都是它）。

几个容易踩的坑，这里一次处理好：
1. **端口**：测试绝不用固定端口（并行跑的测试会撞车）。父进程先以 port=0 建一个 TCPStore（rendezvous 用的键值服务），
   操作系统分配一个空闲端口，子进程再连上它——不存在"先找空端口、再被别人抢走"的竞争。
2. **挂死**：一个 rank 崩了，其他 rank 会永远等在 all-reduce 里。进程组的 timeout 让集合通信超时报错；
   父进程再设一个总的截止时间，超时就杀掉所有子进程，并说清楚是哪几个 rank 没有结束。
3. **线程**：2 核机器上起 2 个进程、每个进程再开 2 个 OpenMP 线程，会互相抢核、慢上好几倍；默认每个 rank 1 个线程。
4. **启动方式**：用 spawn（全新的解释器）而不是 fork：fork 会把父进程里已经起好的 OpenMP 线程池的状态一并复制，可能死锁。
   代价是每个子进程要重新 import torch（约 1–3 秒），所以测试里尽量在一次 spawn 里检查多件事。
"""

from __future__ import annotations

import datetime
import os
import pickle
import queue
import time
import traceback
from collections.abc import Callable
from typing import Any

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

__all__ = ["DistributedError", "default_backend", "init_from_env", "spawn"]

TORCHRUN_HINT = ("用 torchrun 启动，例如 `torchrun --standalone --nproc_per_node 2 -m training_sys.pretrain --parallel ddp`；"
                 "多机：`torchrun --nnodes 2 --node-rank K --rdzv-backend c10d --rdzv-endpoint HOST:PORT --nproc_per_node N ...`")


# 这些报错说明"对端先出了事"，不是根本原因
_SECONDARY_ERRORS = ("Connection closed by peer", "Connection reset by peer", "Broken pipe")


class DistributedError(RuntimeError):
    """某个 rank 抛了异常、超时，或环境不对（例如没有用 torchrun 启动）。"""


def default_backend() -> str:
    """有 CUDA 用 NCCL（GPU 之间走 NVLink / InfiniBand），否则 gloo（CPU 张量，走 TCP）。"""
    return "nccl" if torch.cuda.is_available() else "gloo"


def _timeout(seconds: float) -> datetime.timedelta:
    return datetime.timedelta(seconds=seconds)


def init_from_env(backend: str | None = None, timeout_s: float = 300.0) -> tuple[int, int, int]:
    """torchrun 启动的进程里调用：建默认进程组，返回 (rank, world_size, local_rank)。已经建好时直接返回。"""
    missing = [k for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT") if k not in os.environ]
    if missing:
        raise DistributedError(f"没有找到 torchrun 设置的环境变量 {missing}：这个进程不是由 torchrun 启动的。{TORCHRUN_HINT}")
    rank, world, local = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"]), int(os.environ["LOCAL_RANK"])
    if not dist.is_initialized():
        backend = backend or default_backend()
        if backend == "nccl":
            torch.cuda.set_device(local)  # 每个进程一张卡：local_rank 号
        dist.init_process_group(backend, timeout=_timeout(timeout_s))
    return rank, world, local


def _worker(rank: int, world_size: int, port: int, backend: str, timeout_s: float, threads: int,
            fn: Callable[..., Any], args: tuple, results: Any) -> None:
    torch.set_num_threads(threads)
    try:
        store = dist.TCPStore("127.0.0.1", port, None, False, timeout=_timeout(timeout_s))
        dist.init_process_group(backend, store=store, rank=rank, world_size=world_size, timeout=_timeout(timeout_s))
        # 按值序列化：torch 的 Queue 默认经共享内存的文件描述符传张量，子进程随后退出时父进程会收不到（Connection reset）
        results.put((rank, True, pickle.dumps(fn(rank, world_size, *args))))
    except BaseException as e:  # 把子进程的异常连同 traceback 交回父进程，而不是只留下一个退出码
        results.put((rank, False, f"{type(e).__name__}: {e}\n{traceback.format_exc()}"))
    finally:
        # 先交回结果、再拆进程组：拆掉连接会让还在通信的其他 rank 收到"连接被关闭"，那是后果，不是原因
        if dist.is_initialized():
            dist.destroy_process_group()


def spawn(fn: Callable[..., Any], world_size: int, *args: Any, backend: str = "gloo", timeout_s: float = 120.0,
          threads_per_rank: int = 1) -> list[Any]:
    """起 world_size 个进程运行 fn(rank, world_size, *args)，返回按 rank 排好的返回值列表。

    fn 必须是模块顶层的函数（spawn 要按名字 pickle 它），返回值必须可 pickle（张量会被拷回父进程）。
    任一 rank 抛异常 → DistributedError（带那个 rank 的 traceback）；超过 timeout_s → 杀掉全部子进程并报哪些 rank 没结束。
    """
    if not isinstance(world_size, int) or world_size < 1:
        raise ValueError(f"world_size={world_size!r} 必须是正整数")
    if backend == "nccl" and torch.cuda.device_count() < world_size:
        raise DistributedError(f"backend='nccl' 需要 {world_size} 张 GPU，这台机器只有 {torch.cuda.device_count()} 张；"
                               "CPU 上用 backend='gloo'")
    ctx = mp.get_context("spawn")
    # 父进程持有 rendezvous 的键值服务；port=0 让操作系统挑一个空闲端口
    store = dist.TCPStore("127.0.0.1", 0, None, True, timeout=_timeout(timeout_s), wait_for_workers=False)
    results = ctx.Queue()
    env_threads = os.environ.get("OMP_NUM_THREADS")
    os.environ["OMP_NUM_THREADS"] = str(threads_per_rank)  # 子进程启动时 OpenMP 就读它
    try:
        procs = [ctx.Process(target=_worker, args=(r, world_size, store.port, backend, timeout_s, threads_per_rank,
                                                   fn, args, results), daemon=True) for r in range(world_size)]
        for p in procs:
            p.start()
    finally:
        if env_threads is None:
            os.environ.pop("OMP_NUM_THREADS", None)
        else:
            os.environ["OMP_NUM_THREADS"] = env_threads
    deadline = time.monotonic() + timeout_s
    outputs: dict[int, Any] = {}
    errors: dict[int, str] = {}
    try:
        while len(outputs) + len(errors) < world_size:
            try:
                rank, ok, payload = results.get(timeout=max(0.05, min(1.0, deadline - time.monotonic())))
            except queue.Empty:
                dead = [r for r, p in enumerate(procs)
                        if p.exitcode not in (None, 0) and r not in outputs and r not in errors]
                if dead:  # 进程没来得及交回结果就死了（段错误、被 kill）
                    for r in dead:
                        errors[r] = f"进程退出码 {procs[r].exitcode}，没有交回结果"
                elif time.monotonic() > deadline:
                    pending = sorted(set(range(world_size)) - set(outputs) - set(errors))
                    raise DistributedError(f"spawn 超时（{timeout_s:.0f} s）：rank {pending} 没有结束——"
                                           "多半是某个集合通信没有被所有 rank 同时调用（死锁），或某个 rank 卡住了") from None
                continue
            (outputs if ok else errors)[rank] = pickle.loads(payload) if ok else payload
            if errors:  # 一个 rank 出错，其余的多半会卡在集合通信里：再给它们一点时间交回各自的报错，然后收场
                grace = time.monotonic() + 2.0
                while len(outputs) + len(errors) < world_size and time.monotonic() < grace:
                    try:
                        rank, ok, payload = results.get(timeout=0.2)
                        (outputs if ok else errors)[rank] = pickle.loads(payload) if ok else payload
                    except queue.Empty:
                        pass
                break
    finally:
        for p in procs:
            p.join(timeout=0 if errors else 5)
            if p.is_alive():
                p.terminate()
                p.join(timeout=5)
    if errors:
        # 报"原因"而不是"后果"：一个 rank 崩了，其他 rank 的报错只是"对端关闭了连接"
        causes = [r for r in sorted(errors) if not any(s in errors[r] for s in _SECONDARY_ERRORS)] or sorted(errors)
        raise DistributedError(f"rank {causes[0]} 出错（报错的 rank：{sorted(errors)}）：\n{errors[causes[0]]}")
    return [outputs[r] for r in range(world_size)]
