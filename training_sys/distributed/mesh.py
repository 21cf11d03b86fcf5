"""进程网格：把 world_size 个 rank 排成 pp × dp × cp × tp 的四维格子，为每个维度建好通信组。

3D/4D 并行里每个 rank 同时属于好几个组：同一个张量并行（TP）组里的 rank 合起来算一层，
同一个数据并行（DP）组里的 rank 看不同的数据、最后把梯度平均，流水线（PP）组里的 rank 依次传递激活，
上下文并行（CP）组里的 rank 各拿序列的一段。把 rank 号写成四维坐标，每个组就是"只有一维在变"的那一条线：

    rank = ((pp_i · dp + dp_i) · cp + cp_i) · tp + tp_i        （行优先，tp 变得最快）

为什么 tp 放在最里面：TP 每一层都要通信（每个注意力 / MLP 块 2 次 all-reduce），通信量最大，
相邻的 rank 号在多机时通常在同一台机器上（同一节点内的 NVLink 远快于跨节点网络）；
DP 只在每步结束时同步一次梯度，PP 只在阶段边界传激活，放在外层、跨机器也能接受（Megatron-LM 的排法）。
这与 `torch.distributed.device_mesh.init_device_mesh(..., (pp, dp, cp, tp))` 的排列相同（测试逐组核对）。

注意 `dist.new_group` 是集合操作：**每个 rank 都必须以同样的顺序为每一个组调用它**，哪怕这个组里没有自己。
所以这里一次把所有组都建好，而不是用到时再建。
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.distributed as dist

__all__ = ["DIMS", "ParallelMesh"]

DIMS = ("pp", "dp", "cp", "tp")


@dataclass
class ParallelMesh:
    """world_size = pp · dp · cp · tp 的进程网格。先 `init_process_group`，再构造它（每个 rank 都要构造）。

    属性：coords（本 rank 在各维的坐标）、groups（各维本 rank 所在的通信组）、group_ranks（这些组里的全局 rank 号）。
    """

    dp: int = 1
    tp: int = 1
    pp: int = 1
    cp: int = 1
    rank: int = field(init=False)
    world_size: int = field(init=False)
    coords: dict[str, int] = field(init=False)
    groups: dict[str, dist.ProcessGroup] = field(init=False, repr=False)
    group_ranks: dict[str, list[int]] = field(init=False)

    def __post_init__(self) -> None:
        sizes = {d: getattr(self, d) for d in DIMS}
        for d, n in sizes.items():
            if not isinstance(n, int) or isinstance(n, bool) or n < 1:
                raise ValueError(f"ParallelMesh 的 {d}={n!r} 必须是正整数")
        if not dist.is_initialized():
            raise RuntimeError("ParallelMesh 需要先建好默认进程组：torchrun 下调用 training_sys.distributed.init_from_env()，"
                               "课程 / 测试里用 training_sys.distributed.spawn(...) 启动")
        self.rank, self.world_size = dist.get_rank(), dist.get_world_size()
        total = sizes["pp"] * sizes["dp"] * sizes["cp"] * sizes["tp"]
        if total != self.world_size:
            raise ValueError(f"pp·dp·cp·tp = {sizes['pp']}·{sizes['dp']}·{sizes['cp']}·{sizes['tp']} = {total}，"
                             f"但 world_size = {self.world_size}：各维大小的乘积必须等于进程数")
        grid = torch.arange(self.world_size).reshape(*(sizes[d] for d in DIMS))  # (pp, dp, cp, tp)
        where = (grid == self.rank).nonzero()[0].tolist()
        self.coords = dict(zip(DIMS, where))
        self.groups, self.group_ranks = {}, {}
        for axis, d in enumerate(DIMS):
            # 沿第 axis 维的所有"线"：把这一维挪到最后，其余维摊平，每一行就是一个组
            lines = grid.movedim(axis, -1).reshape(-1, sizes[d]).tolist()
            for ranks in lines:  # 所有 rank 按同样顺序为每条线调用 new_group
                group = dist.new_group(ranks)
                if self.rank in ranks:
                    self.groups[d], self.group_ranks[d] = group, ranks

    def size(self, dim: str) -> int:
        self._check_dim(dim)
        return getattr(self, dim)

    def local_rank(self, dim: str) -> int:
        """本 rank 在 dim 维上的坐标（= 它在该组里的组内 rank）。"""
        self._check_dim(dim)
        return self.coords[dim]

    def group(self, dim: str) -> dist.ProcessGroup:
        self._check_dim(dim)
        return self.groups[dim]

    # ---- 流水线用：上一 / 下一阶段的全局 rank ----
    @property
    def is_first_stage(self) -> bool:
        return self.coords["pp"] == 0

    @property
    def is_last_stage(self) -> bool:
        return self.coords["pp"] == self.pp - 1

    @property
    def prev_stage_rank(self) -> int | None:
        return None if self.is_first_stage else self.group_ranks["pp"][self.coords["pp"] - 1]

    @property
    def next_stage_rank(self) -> int | None:
        return None if self.is_last_stage else self.group_ranks["pp"][self.coords["pp"] + 1]

    @staticmethod
    def _check_dim(dim: str) -> None:
        if dim not in DIMS:
            raise ValueError(f"未知的并行维度 {dim!r}；可选 {DIMS}")
