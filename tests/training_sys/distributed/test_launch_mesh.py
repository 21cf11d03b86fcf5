"""spawn 与 ParallelMesh：两个 gloo 进程里核对集合通信、错误与超时的报法，以及网格的分组与 torch 的 DeviceMesh 相同。"""

from __future__ import annotations

import os
import time

import pytest
import torch
import torch.distributed as dist

from training_sys.distributed import DistributedError, ParallelMesh, init_from_env, spawn


def _all_reduce(rank: int, world: int, base: float) -> tuple[int, int, float]:
    t = torch.tensor([base + rank])
    dist.all_reduce(t)
    return rank, world, t.item()


def _tensor_back(rank: int, world: int) -> torch.Tensor:
    return torch.full((3,), float(rank))


def test_spawn_runs_every_rank_and_returns_in_rank_order():
    out = spawn(_all_reduce, 2, 10.0)
    assert out == [(0, 2, 21.0), (1, 2, 21.0)]
    # 张量也能交回来（子进程先退出也不丢）
    back = spawn(_tensor_back, 2)
    assert [t.tolist() for t in back] == [[0.0] * 3, [1.0] * 3]


def _raise_on_rank_one(rank: int, world: int) -> None:
    if rank == 1:
        raise ValueError("rank 1 故意出错")
    t = torch.zeros(1)
    dist.all_reduce(t)  # rank 0 会等在这里，直到 rank 1 的异常被父进程发现


def test_spawn_reports_the_failing_rank_with_its_traceback():
    t0 = time.monotonic()
    with pytest.raises(DistributedError, match=r"rank 1 出错[\s\S]*ValueError: rank 1 故意出错"):
        spawn(_raise_on_rank_one, 2, timeout_s=60)
    assert time.monotonic() - t0 < 50  # 没有等到超时：一个 rank 出错就收场


def _hang_on_rank_one(rank: int, world: int) -> None:
    if rank == 1:
        time.sleep(30)


def test_spawn_times_out_with_the_ranks_that_did_not_finish():
    # 机器很忙时 rank 0 可能连启动都没做完就到了截止时间：那时两个 rank 都算"没结束"，报错里同样要点名 rank 1
    with pytest.raises(DistributedError, match=r"超时[\s\S]*rank \[(0, )?1\]"):
        spawn(_hang_on_rank_one, 2, timeout_s=4)


def _mesh_groups(rank: int, world: int, configs: list[dict[str, int]]) -> list[dict]:
    """同一个进程组里依次建几种网格（new_group 可以反复调用），每种都与 torch 的 DeviceMesh 逐组核对。"""
    from torch.distributed.device_mesh import init_device_mesh

    names = ("pp", "dp", "cp", "tp")
    outs = []
    for sizes in configs:
        mesh = ParallelMesh(**sizes)
        ref = init_device_mesh("cpu", tuple(sizes[d] for d in names), mesh_dim_names=names)
        sums = {}
        for d in names:  # 每个组里真的能通信：组内 all-reduce 本 rank 号的和
            t = torch.tensor([float(rank)])
            dist.all_reduce(t, group=mesh.group(d))
            sums[d] = t.item()
        outs.append({"ours": {d: mesh.group_ranks[d] for d in names},
                     "theirs": {d: dist.get_process_group_ranks(ref.get_group(d)) for d in names},
                     "coords": mesh.coords, "sums": sums, "stages": (mesh.prev_stage_rank, mesh.next_stage_rank)})
    return outs


def _full(**sizes: int) -> dict[str, int]:
    return {d: sizes.get(d, 1) for d in ("dp", "tp", "pp", "cp")}


@pytest.mark.parametrize("world, configs", [
    (2, [_full(dp=2), _full(tp=2), _full(pp=2), _full(cp=2)]),
    (4, [_full(dp=2, tp=2), _full(pp=2, dp=2)]),
])
def test_mesh_groups_equal_torch_device_mesh(world, configs):
    per_rank = spawn(_mesh_groups, world, configs, timeout_s=90)
    for i, sizes in enumerate(configs):
        for rank, outs in enumerate(per_rank):
            out = outs[i]
            assert out["ours"] == out["theirs"], f"{sizes} rank {rank}"
            for d, ranks in out["ours"].items():
                assert out["sums"][d] == sum(ranks)
                assert ranks[out["coords"][d]] == rank  # 坐标就是组内序号
        if sizes["pp"] == 2 and world == 2:
            assert [outs[i]["stages"] for outs in per_rank] == [(None, 1), (0, None)]


def _bad_mesh(rank: int, world: int) -> None:
    ParallelMesh(dp=3)


def test_mesh_rejects_sizes_that_do_not_multiply_to_world_size():
    with pytest.raises(DistributedError, match="乘积必须等于进程数"):
        spawn(_bad_mesh, 2)


def test_init_from_env_without_torchrun_names_the_fix(monkeypatch):
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(key, raising=False)
    with pytest.raises(DistributedError, match="torchrun --standalone"):
        init_from_env()
    assert "RANK" not in os.environ
