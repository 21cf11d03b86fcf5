"""第 1 天 张量基础：创建、dtype、device。

张量（Tensor）= 一块连续（或带步长）的内存 + 元信息：形状 shape、元素类型 dtype、所在设备 device。
今天把"造张量"的几条路和 dtype / device 的规矩摸清楚：

1. 创建：torch.tensor(数据) 会复制数据并推断 dtype；torch.zeros/ones/full/empty/arange/linspace
   按形状造；*_like 系列（zeros_like、ones_like…）照抄另一个张量的 shape、dtype、device。
   torch.empty 不初始化内存（里面是垃圾值），只在马上要整个覆盖时才用。
2. dtype：默认浮点是 float32，整数是 int64。混合运算按"类型提升"规则：int + float → float，
   float32 + float64 → float64，但"0 维张量 / Python 数字"不会把高维张量提升到更宽的同类 dtype。
   uint8 图像相加会**回绕溢出**（200 + 100 = 44），先转 float 再算。
   每种 dtype 占的字节：float32/int32 4 字节，float16/bfloat16 2 字节，int64/float64 8 字节，
   显存 / 内存占用 = numel × element_size。
3. device：张量和模型必须在同一设备上才能运算。x.to(device) / x.to(other) 返回新张量
   （已经在目标设备且 dtype 相同则返回自身）；x.to(other) 同时对齐 dtype 和 device。
4. 随机数可复现：torch.Generator().manual_seed(s) 产生的序列与 torch.manual_seed(s) 之后的全局序列相同；
   在库代码里传 generator=g 而不是改全局种子，不会干扰调用者的随机状态。

练习：ex1–ex7；ex2、ex3 是谜题（只许用 torch.arange / torch.where / 广播 / 算术），
自检时会检查它们调用了哪些函数。运行：

    python archive/28days_challenges/day01_tensor_basics.py
"""

from __future__ import annotations

import numpy as np
import torch

from utils import exercises
from utils.lesson_cli import lesson_args


# =============================================================================
# 练习（函数体就是参考解答；想自己做，就把函数体换成 raise NotImplementedError 再运行本文件）
# =============================================================================
def ex1_zeros_like(x: torch.Tensor) -> torch.Tensor:
    """不用 *_like 函数，造一个与 x 形状、dtype、device 都相同的全零张量（对照 torch.zeros_like）。"""
    return torch.zeros(x.shape, dtype=x.dtype, device=x.device)


def ex2_eye(n: int) -> torch.Tensor:
    """谜题：只用 torch.arange、torch.where 和广播，造 n×n 的 float32 单位矩阵（对照 torch.eye）。"""
    i = torch.arange(n)
    # (n, 1) 与 (n,) 广播成 (n, n)：行号 == 列号 的位置是对角线
    return torch.where(i[:, None] == i, 1.0, 0.0)


def ex3_linspace(start: float, end: float, steps: int) -> torch.Tensor:
    """谜题：只用 torch.arange 和算术，造 float64 的等差数列（对照 torch.linspace(..., dtype=float64)）。

    提示：步长 = (end − start) / (steps − 1)；steps == 1 时只有 start 一个点。
    """
    if steps == 1:
        return torch.arange(1, dtype=torch.float64) * 0 + start
    step = (end - start) / (steps - 1)
    return start + torch.arange(steps, dtype=torch.float64) * step


def ex4_image_to_float(img: torch.Tensor) -> torch.Tensor:
    """把 (H, W, C) 的 uint8 图像转成 (C, H, W) 的 float32，数值缩放到 [0, 1]。

    陷阱：在 uint8 上做加法、乘法会回绕溢出，要先转 float；PyTorch 的 `/` 总是真除法（结果是浮点），
    `//` 才是整除。permute 得到的是非连续视图；逐元素运算（.to、/）会分配新张量，但**沿用输入的步长布局**
    （(H, W, C) 的图像 permute 后步长是 (1, W·C, C)，结果仍然不连续）——下游要 .view 时先 .contiguous()。
    """
    return img.permute(2, 0, 1).to(torch.float32) / 255.0


def ex5_nbytes(x: torch.Tensor) -> int:
    """x 的数据占多少字节（对照 x.nbytes）：元素个数 × 每个元素的字节数。"""
    return x.numel() * x.element_size()


def ex6_reproducible_randn(seed: int, n: int) -> torch.Tensor:
    """用独立的 torch.Generator（不碰全局随机状态）生成 n 个标准正态数，
    结果要与 `torch.manual_seed(seed); torch.randn(n)` 相同。"""
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, generator=g)


def ex7_match(x: torch.Tensor, other: torch.Tensor) -> torch.Tensor:
    """把 x 转成与 other 相同的 dtype 和 device（对照 x.to(other)），不要用 .to(other) 这个重载。"""
    return x.to(device=other.device, dtype=other.dtype)


# =============================================================================
# 参考实现与输入
# =============================================================================
def _rand_shape(g: torch.Generator, max_dim: int = 3) -> tuple[int, ...]:
    ndim = int(torch.randint(1, max_dim + 1, (), generator=g))
    return tuple(int(s) for s in torch.randint(1, 5, (ndim,), generator=g))


_DTYPES = (torch.float32, torch.float64, torch.int64, torch.int32, torch.uint8, torch.bfloat16, torch.bool)


def _any_tensor(g: torch.Generator) -> torch.Tensor:
    dtype = _DTYPES[int(torch.randint(len(_DTYPES), (), generator=g))]
    return (torch.randn(_rand_shape(g), generator=g) * 10).to(dtype)


def _ref_randn(seed: int, n: int) -> torch.Tensor:
    with torch.random.fork_rng():  # 只在这个 with 里改全局种子，出来后恢复
        torch.manual_seed(seed)
        return torch.randn(n)


CHECKS = [
    ("ex1_zeros_like", torch.zeros_like, lambda g: (_any_tensor(g),)),
    ("ex2_eye", torch.eye, lambda g: (int(torch.randint(1, 7, (), generator=g)),)),
    (
        "ex3_linspace",
        lambda a, b, n: torch.linspace(a, b, n, dtype=torch.float64),
        lambda g: (float(torch.randn((), generator=g)), float(torch.randn((), generator=g)) * 5,
                   int(torch.randint(1, 9, (), generator=g))),
    ),
    (
        "ex4_image_to_float",
        lambda img: img.movedim(-1, 0).float().div(255),
        lambda g: (torch.randint(0, 256, (3, 4, 3), generator=g, dtype=torch.uint8),),
    ),
    ("ex5_nbytes", lambda x: x.nbytes, lambda g: (_any_tensor(g),)),
    ("ex6_reproducible_randn", _ref_randn, lambda g: (int(torch.randint(0, 10_000, (), generator=g)), 5)),
    ("ex7_match", lambda x, other: x.to(other), lambda g: (_any_tensor(g), _any_tensor(g))),
]

PUZZLE_ALLOWED = {
    "ex2_eye": {"torch.arange", "torch.where"},
    "ex3_linspace": {"torch.arange"},
}


def demo() -> None:
    a = torch.tensor([200, 100], dtype=torch.uint8)
    print(f"uint8 回绕：{a.tolist()} 之和 = {int(a.sum())}（sum 提升到 int64），逐元素 a[0]+a[1] = {int(a[0] + a[1])}")
    print(f"类型提升：int64 + float32 → {(torch.ones(1, dtype=torch.int64) + torch.ones(1)).dtype}；"
          f"float32 张量 + float64 的 0 维张量 → {(torch.ones(2) + torch.tensor(1.0, dtype=torch.float64)).dtype}")
    for dt in (torch.float64, torch.float32, torch.bfloat16, torch.int8):
        print(f"  {str(dt):15s} 每元素 {torch.empty(0, dtype=dt).element_size()} 字节")
    print(f"torch.from_numpy 与 numpy 共享内存：{torch.from_numpy(np.zeros(2)).dtype}（numpy 默认 float64）")
    chw = torch.zeros(2, 3, 4, dtype=torch.uint8).permute(2, 0, 1).to(torch.float32) / 255.0  # 与 ex4 同一写法
    print(f"(H,W,C)=(2,3,4) 的图像 permute 后转 float、除以 255：新张量，但沿用 permute 的步长 "
          f"stride={chw.stride()}，contiguous={chw.is_contiguous()}")


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
