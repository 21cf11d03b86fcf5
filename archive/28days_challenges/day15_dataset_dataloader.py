"""第 15 天 Dataset 与 DataLoader：把数据切成样本、拼成 batch、打乱与分片。

训练循环里的数据流水线是三层：

    Dataset[i]  →  Sampler 给出下标顺序  →  BatchSampler 把下标分组  →  collate_fn 把一组样本拼成 batch

1. map-style Dataset 只要两个方法：__len__（样本数）与 __getitem__(i)（第 i 个样本）。
   语言模型的"滑动窗口"数据集：data 是一维 token 序列，第 i 个样本是
       x = data[i : i+T]，  y = data[i+1 : i+T+1]（y 是 x 往后挪一位：预测下一个 token）
   样本数 = len(data) − T。不要预先把所有窗口复制出来（内存 ×T），__getitem__ 里切片即可（切片是视图）。
2. 默认的 collate（torch.utils.data.default_collate）把 [(x0, y0), (x1, y1), …] 转置成 [stack(x), tensor(y)]：
   张量用 torch.stack，Python 数字变成张量。长度不同的序列 stack 不了，要自己写 collate_fn 做 padding。
3. Sampler 决定顺序：SequentialSampler 是 0..n−1；RandomSampler 是 torch.randperm(n)（传 generator 才可复现）。
   BatchSampler 每攒够 batch_size 个下标交出一组，drop_last=True 时丢掉最后不满的一组。
   len(DataLoader) = ceil(n / B)（drop_last 时是 floor）。
4. 多卡训练用 DistributedSampler 分片：先把下标补齐到 num_replicas 的整数倍（从头重复几个），
   再按 indices[rank::num_replicas] 隔位取——每张卡样本数相同，否则 all-reduce 会等死。
5. num_workers > 0 时每个 worker 是一个子进程，各自有一份 Dataset 副本；随机增强要在 worker_init_fn 里
   按 worker id 设种子，否则每个 worker 产出一样的"随机"数（numpy 的经典坑）。

练习：ex1–ex6；ex6 是谜题（只许用 torch.arange 与 .tolist）。运行：

    python archive/28days_challenges/day15_dataset_dataloader.py
"""

from __future__ import annotations

import torch
from torch.utils.data import (
    BatchSampler,
    DataLoader,
    Dataset,
    DistributedSampler,
    RandomSampler,
    SequentialSampler,
    TensorDataset,
    default_collate,
)

from utils import exercises
from utils.lesson_cli import lesson_args


# =============================================================================
# 练习（函数体就是参考解答；想自己做，就把函数体换成 raise NotImplementedError 再运行本文件）
# =============================================================================
class WindowDataset(Dataset):
    """语言模型的滑动窗口数据集：第 i 个样本是 (data[i:i+T], data[i+1:i+T+1])。"""

    def __init__(self, data: torch.Tensor, block_size: int):
        if data.dim() != 1:
            raise ValueError(f"data 应该是一维 token 序列，收到形状 {tuple(data.shape)}")
        if len(data) <= block_size:
            raise ValueError(f"len(data)={len(data)} 必须大于 block_size={block_size}，否则一个样本都切不出来")
        self.data = data
        self.block_size = block_size

    def __len__(self) -> int:
        return len(self.data) - self.block_size  # 最后一个样本的 y 要用到 data[-1]

    def __getitem__(self, i: int):
        T = self.block_size
        return self.data[i : i + T], self.data[i + 1 : i + T + 1]  # 切片是视图，不复制


def ex1_window_dataset(data: torch.Tensor, block_size: int) -> Dataset:
    """造一个 map-style Dataset（写好上面的 WindowDataset），第 i 个样本是 (x, y) = (data[i:i+T], data[i+1:i+T+1])。
    自检把它的全部样本取出来，与 data.unfold 得到的 TensorDataset 比较。"""
    return WindowDataset(data, block_size)


def ex2_default_collate(samples: list) -> list:
    """把 [(x_i, y_i), …]（x_i 是同形状张量，y_i 是 Python int）拼成 [X, Y]：X = stack(x_i)，Y 是 int64 张量
    （对照 torch.utils.data.default_collate）。"""
    xs, ys = zip(*samples)  # "转置"：一个 batch 的样本列表 → 每个字段一个列表
    return [torch.stack(xs), torch.tensor(ys, dtype=torch.int64)]


def ex3_pad_collate(seqs: list[torch.Tensor], pad_value: int) -> tuple[torch.Tensor, torch.Tensor]:
    """长度不同的一维序列拼成 (B, L_max) 的矩阵，右边用 pad_value 补齐，同时返回每条的长度
    （对照 torch.nn.utils.rnn.pad_sequence(batch_first=True)）。"""
    lengths = torch.tensor([len(s) for s in seqs])
    out = torch.full((len(seqs), int(lengths.max())), pad_value, dtype=seqs[0].dtype)
    for i, s in enumerate(seqs):
        out[i, : len(s)] = s
    return out, lengths


def ex4_batch_indices(n: int, batch_size: int, drop_last: bool) -> list[list[int]]:
    """顺序采样时 DataLoader 产出的每个 batch 的下标（对照 BatchSampler(SequentialSampler(range(n)), …)）。"""
    batches = [list(range(start, min(start + batch_size, n))) for start in range(0, n, batch_size)]
    if drop_last and batches and len(batches[-1]) < batch_size:
        batches.pop()
    return batches


def ex5_shuffled_order(n: int, seed: int) -> list[int]:
    """RandomSampler(range(n), generator=torch.Generator().manual_seed(seed)) 给出的下标顺序
    （提示：它就是一次 randperm）。"""
    return torch.randperm(n, generator=torch.Generator().manual_seed(seed)).tolist()


def ex6_shard_indices(n: int, num_replicas: int, rank: int) -> list[int]:
    """谜题：只用 torch.arange 和 .tolist，算 DistributedSampler(shuffle=False) 分给第 rank 张卡的下标。
    规则：从头循环补齐到 num_replicas 的整数倍，再隔 num_replicas 个取一个。"""
    total = -(-n // num_replicas) * num_replicas  # ceil(n / R) · R，不用 math.ceil
    return (torch.arange(total) % n)[rank::num_replicas].tolist()  # % n：超出的部分从头重复


# =============================================================================
# 参考实现与输入
# =============================================================================
def _randint(g: torch.Generator, lo: int, hi: int) -> int:
    return int(torch.randint(lo, hi, (), generator=g))


def _materialize(make_dataset):
    """probe：把数据集的每个样本取出来，返回 (样本数, 所有 x 叠起来, 所有 y 叠起来)。"""

    def probe(*args):
        ds = make_dataset(*args)
        xs, ys = zip(*(ds[i] for i in range(len(ds))))
        return len(ds), torch.stack(xs), torch.stack(ys)

    return probe


def _ref_windows(data: torch.Tensor, block_size: int) -> TensorDataset:
    w = data.unfold(0, block_size + 1, 1)  # (n − T, T + 1)：每行一个长度 T+1 的窗口（视图）
    return TensorDataset(w[:, :-1], w[:, 1:])


def _collate_inputs(g: torch.Generator):
    shape = (_randint(g, 1, 4), _randint(g, 1, 4))
    return ([(torch.randn(shape, generator=g), _randint(g, 0, 100)) for _ in range(_randint(g, 1, 6))],)


def _ref_pad(seqs, pad_value):
    padded = torch.nn.utils.rnn.pad_sequence(seqs, batch_first=True, padding_value=pad_value)
    return padded, torch.tensor([len(s) for s in seqs])


def _shard_inputs(g: torch.Generator):
    num_replicas = _randint(g, 1, 5)
    return _randint(g, 1, 20), num_replicas, _randint(g, 0, num_replicas)


def _ref_shuffled(n: int, seed: int) -> list[int]:
    return list(RandomSampler(range(n), generator=torch.Generator().manual_seed(seed)))


CHECKS = [
    (
        "ex1_window_dataset",
        _ref_windows,
        lambda g: (torch.randint(0, 50, (_randint(g, 5, 20),), generator=g), _randint(g, 1, 5)),
        _materialize,
    ),
    ("ex2_default_collate", default_collate, _collate_inputs),
    (
        "ex3_pad_collate",
        _ref_pad,
        lambda g: ([torch.randint(1, 9, (_randint(g, 1, 6),), generator=g) for _ in range(_randint(g, 1, 5))],
                   _randint(g, -1, 1)),
    ),
    (
        "ex4_batch_indices",
        lambda n, b, drop: list(BatchSampler(SequentialSampler(range(n)), b, drop)),
        lambda g: (_randint(g, 1, 20), _randint(g, 1, 6), bool(_randint(g, 0, 2))),
    ),
    ("ex5_shuffled_order", _ref_shuffled, lambda g: (_randint(g, 1, 20), _randint(g, 0, 10_000))),
    (
        "ex6_shard_indices",
        lambda n, r, k: list(DistributedSampler(range(n), num_replicas=r, rank=k, shuffle=False)),
        _shard_inputs,
    ),
]

PUZZLE_ALLOWED = {"ex6_shard_indices": {"torch.arange", ".tolist"}}


def demo() -> None:
    w = torch.arange(12).unfold(0, 5, 1)  # 长度 T+1 = 5 的滑动窗口（视图，不复制）
    ds = TensorDataset(w[:, :-1], w[:, 1:])
    x, y = ds[0]
    print(f"窗口数据集（T=4）：{len(ds)} 个样本；ds[0] = x {x.tolist()} → y {y.tolist()}（y 往后挪一位）")
    loader = DataLoader(ds, batch_size=3, shuffle=True, generator=torch.Generator().manual_seed(0))
    xb, yb = next(iter(loader))
    print(f"DataLoader(batch_size=3, shuffle=True)：len = {len(loader)}，第一个 batch x {tuple(xb.shape)} y {tuple(yb.shape)}")
    for rank in range(3):
        shard = list(DistributedSampler(range(7), num_replicas=3, rank=rank, shuffle=False))
        print(f"  DistributedSampler(7 个样本, 3 张卡) rank {rank}: {shard}")


# =============================================================================
# 自检：框架在 utils/exercises.py（28 天共用）——每道练习在几组随机输入上与 PyTorch 内置实现逐一对比
# =============================================================================
def run_checks(verbose: bool = True, seeds=None) -> tuple[int, int]:
    """逐题自检：每题打印一行 ✓/✗，最后打印 `N/M passed`；返回 (N, M)。"""
    return exercises.run_checks(globals(), verbose=verbose, seeds=seeds)


def main() -> None:
    exercises.run_day(globals())


if __name__ == "__main__":
    lesson_args(__doc__)
    main()
