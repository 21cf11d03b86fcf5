"""第 19 天 内存与设备：张量占多少字节、谁和谁共享内存、meta 设备、训练时显存花在哪。

1. 字节数 = numel × element_size。训练一个参数量为 P 的模型（fp32 + Adam），光"静态"部分就要
       参数 4P + 梯度 4P + Adam 的 m、v 共 8P = 16P 字节
   （P = 7·10⁹ 时 16P = 112·10⁹ 字节 = 112 GB ≈ 104 GiB，还没算激活；演示里按 Llama-2-7B 的真实形状数出
   P = 6,738,415,616，16P ≈ 100 GiB）。Adam 的状态只为"有梯度"的参数创建：冻结的参数不占优化器内存；
   每个参数**张量**（不是每个元素）还多一个 step 计数（CPU 上是 4 字节的 float32 标量张量）。
2. 视图与拷贝：切片、transpose、view、expand 返回**视图**（共享同一块 storage，改一个另一个跟着变）；
   花式索引 x[[0, 2]]、布尔掩码 x[x > 0]、clone、非连续张量的 contiguous()/reshape 会**拷贝**。
   判断方法：x.untyped_storage().data_ptr() 是否相同。一个小切片会让整块大 storage 活着，需要时 .clone()。
3. meta 设备：只有形状和 dtype、没有数据的张量。用 `with torch.device("meta"):` 建模型，
   一字节内存都不花就能算出参数量、输出形状、KV cache 大小；大模型加载时先在 meta 上建骨架再填权重。
4. 设备搬运：x.to(device) 在已经满足要求时返回**自己**（不拷贝）；模型、输入、标签必须在同一设备。
   搬 batch 时只改浮点张量的 dtype——标签、token id 必须保持整数（调试清单 §2、§3）。
   CPU → GPU 的拷贝从锁页内存（pin_memory=True）出发才能 non_blocking 地与计算重叠。
5. GPU 上看内存：torch.cuda.memory_allocated()（张量实际占用）、max_memory_allocated()（峰值）、
   memory_reserved()（缓存分配器向驱动要的总量，≥ allocated）；empty_cache() 只把缓存还给驱动，
   不会让你的张量变小。本机没有 GPU 时这些调用走不到（用 torch.cuda.is_available() 分支）。

练习：ex1–ex6。运行：

    python archive/28days_challenges/day19_memory_and_devices.py
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn as nn
from torch.utils._pytree import tree_map

from utils import exercises
from utils.lesson_cli import lesson_args
from utils.torch_playground import DEVICE


# =============================================================================
# 练习（函数体就是参考解答；想自己做，就把函数体换成 raise NotImplementedError 再运行本文件）
# =============================================================================
def ex1_mlp_param_bytes(sizes: list[int], dtype: torch.dtype) -> int:
    """不建模型，算出 nn.Sequential(Linear(sizes[0], sizes[1]), Linear(sizes[1], sizes[2]), …)（dtype 给定）
    的参数占多少字节（对照：在 meta 设备上建出模型再求和 p.nbytes）。"""
    bytes_per = torch.empty((), dtype=dtype).element_size()
    n_params = sum(d_in * d_out + d_out for d_in, d_out in zip(sizes, sizes[1:]))  # W (out, in) + b (out,)
    return n_params * bytes_per


def ex2_adam_state_bytes(model: nn.Module) -> int:
    """model 里所有参数都有梯度（冻结的除外）时，torch.optim.Adam 走一步后 optimizer.state 里的张量共占多少字节。
    每个要训练的参数：exp_avg、exp_avg_sq 与参数同形状同 dtype，外加一个 4 字节的 step 标量。"""
    return sum(2 * p.nbytes + 4 for p in model.parameters() if p.requires_grad)


def ex3_shares_storage(a: torch.Tensor, b: torch.Tensor) -> bool:
    """a 与 b 是否共享同一块 storage（本题的输入里，共享即重叠；对照 numpy.shares_memory）。"""
    return a.untyped_storage().data_ptr() == b.untyped_storage().data_ptr()


def ex4_conv_out_shape(n: int, c: int, h: int, w: int, out_c: int, k: int, s: int, p: int, d: int) -> tuple:
    """nn.Conv2d(c, out_c, k, stride=s, padding=p, dilation=d) 作用在 (n, c, h, w) 上的输出形状
    （对照：在 meta 设备上真的跑一次卷积）。公式：⌊(H + 2p − d(k − 1) − 1) / s⌋ + 1。"""
    def out(size):
        return (size + 2 * p - d * (k - 1) - 1) // s + 1

    return (n, out_c, out(h), out(w))


def ex5_kv_cache_bytes(batch: int, n_layer: int, n_kv_head: int, head_dim: int, seq_len: int,
                       dtype: torch.dtype) -> int:
    """推理时 KV cache 的字节数：每层存 K 和 V 两份 (batch, n_kv_head, seq_len, head_dim)
    （对照：在 meta 设备上按这个形状分配再读 nbytes）。GQA 减少 n_kv_head，正是为了省这块内存。"""
    return 2 * n_layer * batch * n_kv_head * seq_len * head_dim * torch.empty((), dtype=dtype).element_size()


def ex6_to_device(batch, device: torch.device, dtype: torch.dtype):
    """把嵌套的 dict / list / tuple 里的张量都搬到 device；只有**浮点**张量转成 dtype（标签保持整数），
    非张量原样返回（对照 torch.utils._pytree.tree_map）。"""
    if isinstance(batch, torch.Tensor):
        return batch.to(device, dtype) if batch.is_floating_point() else batch.to(device)
    if isinstance(batch, dict):
        return {key: ex6_to_device(value, device, dtype) for key, value in batch.items()}
    if isinstance(batch, (list, tuple)):
        return type(batch)(ex6_to_device(value, device, dtype) for value in batch)
    return batch


# =============================================================================
# 参考实现与输入
# =============================================================================
def _randint(g: torch.Generator, lo: int, hi: int) -> int:
    return int(torch.randint(lo, hi, (), generator=g))


_DTYPES = (torch.float32, torch.bfloat16, torch.float16, torch.float64, torch.int8)  # 前 4 个是浮点


def _dtype(g: torch.Generator) -> torch.dtype:
    return _DTYPES[_randint(g, 0, len(_DTYPES))]


def _ref_mlp_bytes(sizes, dtype):
    with torch.device("meta"):  # 只记形状：再大的模型也不花内存
        model = nn.Sequential(*[nn.Linear(a, b, dtype=dtype) for a, b in zip(sizes, sizes[1:])])
    return sum(p.nbytes for p in model.parameters())


def _model(g: torch.Generator) -> nn.Module:
    model = nn.Sequential(nn.Embedding(_randint(g, 2, 9), 4), nn.Linear(4, _randint(g, 1, 6)),
                          nn.LayerNorm(_randint(g, 1, 6)))
    model[_randint(g, 0, 3)].requires_grad_(False)  # 冻结一层：它没有梯度，也就没有优化器状态
    return model.to(_DTYPES[_randint(g, 0, 2)])


def _ref_adam_bytes(model):
    opt = torch.optim.Adam(model.parameters())
    for p in model.parameters():
        if p.requires_grad:
            p.grad = torch.ones_like(p)
    opt.step()
    return sum(t.nbytes for state in opt.state.values() for t in state.values())


_VIEW_OR_COPY = [
    lambda x: x[1:],
    lambda x: x[:, 0],
    lambda x: x.t(),
    lambda x: x.t().contiguous(),
    lambda x: x.contiguous(),
    lambda x: x.reshape(-1),
    lambda x: x.t().reshape(-1),
    lambda x: x[[0, 2]],
    lambda x: x[x.abs() < 10],
    lambda x: x.expand(2, *x.shape),
    lambda x: x.clone(),
    lambda x: x.view(torch.int32),
]


def _storage_inputs(g: torch.Generator):
    x = torch.randn(3, 4, generator=g)
    return x, _VIEW_OR_COPY[_randint(g, 0, len(_VIEW_OR_COPY))](x)


def _conv_inputs(g: torch.Generator):
    k, d = _randint(g, 1, 4), _randint(g, 1, 3)
    return (_randint(g, 1, 3), _randint(g, 1, 4), _randint(g, 8, 20), _randint(g, 8, 20), _randint(g, 1, 5),
            k, _randint(g, 1, 4), _randint(g, 0, 3), d)


def _ref_conv_shape(n, c, h, w, out_c, k, s, p, d):
    with torch.device("meta"):
        return tuple(nn.Conv2d(c, out_c, k, stride=s, padding=p, dilation=d)(torch.empty(n, c, h, w)).shape)


def _ref_kv_bytes(batch, n_layer, n_kv_head, head_dim, seq_len, dtype):
    return torch.empty(n_layer, 2, batch, n_kv_head, seq_len, head_dim, dtype=dtype, device="meta").nbytes


def _batch_inputs(g: torch.Generator):
    batch = {
        "input_ids": torch.randint(0, 100, (2, 3), generator=g),
        "pixels": (torch.randn(2, 3, generator=g), [torch.rand(2, generator=g), "caption"]),
        "mask": torch.rand(2, 3, generator=g) > 0.5,
        "step": _randint(g, 0, 10),
    }
    return batch, DEVICE, [torch.float64, torch.bfloat16, torch.float16][_randint(g, 0, 3)]


def _ref_to_device(batch, device, dtype):
    return tree_map(
        lambda t: t.to(device, dtype if t.is_floating_point() else t.dtype) if isinstance(t, torch.Tensor) else t,
        batch,
    )


CHECKS = [
    ("ex1_mlp_param_bytes", _ref_mlp_bytes,
     lambda g: ([_randint(g, 1, 50) for _ in range(_randint(g, 2, 5))], _DTYPES[_randint(g, 0, 4)])),
    ("ex2_adam_state_bytes", _ref_adam_bytes, lambda g: (_model(g),)),
    ("ex3_shares_storage", lambda a, b: bool(np.shares_memory(a.numpy(), b.numpy())), _storage_inputs),
    ("ex4_conv_out_shape", _ref_conv_shape, _conv_inputs),
    ("ex5_kv_cache_bytes", _ref_kv_bytes, lambda g: (*[_randint(g, 1, 9) for _ in range(5)], _dtype(g))),
    ("ex6_to_device", _ref_to_device, _batch_inputs),
]

PUZZLE_ALLOWED: dict[str, set[str]] = {}


LLAMA2_7B_PARAMS = 6_738_415_616  # HF transformers 的 LlamaForCausalLM 用 Llama-2-7B 的 config 建在 meta 上数出的参数量


def llama2_7b_param_count() -> int:
    """按 Llama-2-7B 的形状在 meta 设备上建出每一种权重（不分配内存），数参数。"""
    d, n_layer, d_ff, vocab = (4096, 32, 11008, 32000)
    with torch.device("meta"):
        layer = nn.ModuleDict({
            "attn": nn.Linear(d, 4 * d, bias=False),  # q/k/v/o 四个 d×d 投影（7B 没有 GQA：n_kv_head = n_head）
            "mlp": nn.Linear(d, 3 * d_ff, bias=False),  # gate/up/down 三个 d×d_ff 投影
            "norms": nn.ModuleList([nn.RMSNorm(d), nn.RMSNorm(d)]),  # 注意力前、MLP 前各一个，只有 γ
        })
        embed = nn.Embedding(vocab, d)
        final_norm = nn.RMSNorm(d)
    per_layer = sum(t.numel() for t in layer.parameters())
    # 输入嵌入与 lm_head 不共享（各 vocab × d），最后还有一个 RMSNorm
    return n_layer * per_layer + 2 * embed.weight.numel() + final_norm.weight.numel()


def demo() -> None:
    p = llama2_7b_param_count()
    print(f"Llama-2-7B 形状的模型在 meta 设备上：{p:,} 个参数（HF LlamaForCausalLM 同配置：{LLAMA2_7B_PARAMS:,}），"
          f"fp32+Adam 静态内存 16P = {16 * p / 2**30:.1f} GiB，bf16 推理只要 2P = {2 * p / 2**30:.1f} GiB（不含激活与 KV cache）")
    x = torch.randn(1000, 1000)
    row = x[0]
    print(f"x[0] 是视图：storage 大小 {row.untyped_storage().nbytes() / 1e6:.1f} MB（整个 x）；"
          f"x[0].clone() 只有 {row.clone().untyped_storage().nbytes()} 字节")
    print(f"x.to(torch.float32) is x：{x.to(torch.float32) is x}（已满足要求时不拷贝）")
    if torch.cuda.is_available():
        before = torch.cuda.memory_allocated()
        y = torch.empty(256, 1024, 1024, device="cuda")  # 1 GiB
        print(f"CUDA：分配 1 GiB 后 memory_allocated 增加 {(torch.cuda.memory_allocated() - before) / 2**30:.2f} GiB，"
              f"峰值 {torch.cuda.max_memory_allocated() / 2**30:.2f} GiB")
        del y
    else:
        print("（没有 CUDA：跳过 torch.cuda.memory_allocated 的演示；上面的账在 GPU 上一样成立）")


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
