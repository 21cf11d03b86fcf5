"""激活检查点（activation checkpointing / gradient checkpointing）：用一次额外的前向，换掉块内部的激活显存。

运行：python training_sys/optimization/activation_checkpointing.py   （或 python -m training_sys.optimization.activation_checkpointing；SMOKE=1 几秒跑完）

反向传播需要前向的中间结果（Linear 的输入、GELU 的输入、dropout 的掩码……），autograd 把它们"存"在图里，
直到 backward 用完才释放。L 层网络的激活显存 ∝ L × (每层的中间张量)，长序列时远超权重本身。
检查点（Chen et al. 2016）：前向时对一个块只保存它的输入，块内部在 no_grad 下运行（什么都不存）；
反向走到这个块时，用保存的输入把块的前向重算一遍（这次建图），立刻对它做 backward。
- 显存：每块只剩一个输入 (B, T, d)，而不是块内所有中间张量（Transformer 的 MLP 里一个 4d 宽的激活就是输入的 4 倍）。
  对 L 层每层都做检查点时，激活从 O(L·每层中间量) 降为 O(L·d + 一层的中间量)。
- 计算：每个块多一次前向，反向约为前向的 2 倍，所以总计算约增加 1/3。
- 随机性：块里有 dropout 时，重算必须得到相同的掩码——前向时记下 RNG 状态，重算前恢复（preserve_rng_state）。
  autocast 也一样：重算要在与前向相同的 autocast 设置下进行，否则 dtype 不同、结果不同。

本文件的 checkpoint() 是"可重入（reentrant）"风格：一个 autograd.Function 在自己的 backward 里再调用
torch.autograd.backward，参数梯度直接累加进 .grad。所以它只支持 loss.backward()，不支持 torch.autograd.grad；
PyTorch 推荐的 torch.utils.checkpoint(use_reentrant=False) 用 saved-tensor hooks 实现，没有这个限制，
真正训练时请用它（测试里两者与不做检查点的结果逐一对照）。

显存怎么量？CPU 上没有 max_memory_allocated，但 autograd 每保存一个张量都会经过 saved_tensors_hooks 的 pack 钩子：
在钩子里按 storage 去重、累加字节数，就得到"图里为反向保存了多少激活"（参数本身不算：它们无论如何都在）。
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable

import torch
from torch import nn

from utils.io import is_smoke
from utils.lesson_cli import lesson_args, timing_note
from utils.torch_playground import benchmark_interleaved, setup_seed


def _autocast_states() -> list[tuple[str, bool, torch.dtype]]:
    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    return [(d, torch.is_autocast_enabled(d), torch.get_autocast_dtype(d)) for d in devices]


class CheckpointFunction(torch.autograd.Function):
    """前向：no_grad 下运行 run_function，只保存输入；反向：恢复 RNG 与 autocast 状态，重算并反传。"""

    @staticmethod
    def forward(ctx, run_function: Callable, preserve_rng_state: bool, *args):
        ctx.run_function, ctx.preserve_rng_state = run_function, preserve_rng_state
        ctx.autocast_states = _autocast_states()
        if preserve_rng_state:
            ctx.cpu_rng_state = torch.get_rng_state()
            ctx.cuda_rng_states = torch.cuda.get_rng_state_all() if torch.cuda.is_initialized() else None
        ctx.tensor_positions = [i for i, a in enumerate(args) if isinstance(a, torch.Tensor)]
        ctx.other_args = [None if isinstance(a, torch.Tensor) else a for a in args]
        ctx.save_for_backward(*(args[i] for i in ctx.tensor_positions))   # 只存块的输入
        with torch.no_grad():
            return run_function(*args)                                    # 块内部什么都不存

    @staticmethod
    def backward(ctx, *grad_outputs):
        args = list(ctx.other_args)
        for i, t in zip(ctx.tensor_positions, ctx.saved_tensors):
            args[i] = t.detach().requires_grad_(t.requires_grad)          # 新的叶子：在它上面重新建图
        devices = list(range(torch.cuda.device_count())) if ctx.preserve_rng_state and ctx.cuda_rng_states else []
        with torch.random.fork_rng(devices=devices, enabled=ctx.preserve_rng_state), contextlib.ExitStack() as stack:
            if ctx.preserve_rng_state:                                    # 让 dropout 得到与前向相同的掩码
                torch.set_rng_state(ctx.cpu_rng_state)
                if ctx.cuda_rng_states:
                    torch.cuda.set_rng_state_all(ctx.cuda_rng_states)
            for device, enabled, dtype in ctx.autocast_states:
                stack.enter_context(torch.autocast(device, dtype=dtype, enabled=enabled))
            with torch.enable_grad():
                outputs = ctx.run_function(*args)                         # 重算前向（这次建图）
        outputs = outputs if isinstance(outputs, tuple) else (outputs,)
        pairs = [(o, g) for o, g in zip(outputs, grad_outputs) if isinstance(o, torch.Tensor) and o.requires_grad]
        torch.autograd.backward([o for o, _ in pairs], [g for _, g in pairs])  # 参数梯度直接累加进 .grad
        grads = tuple(args[i].grad if i in ctx.tensor_positions else None for i in range(len(args)))
        return (None, None) + grads


def checkpoint(run_function: Callable, *args, preserve_rng_state: bool = True):
    """checkpoint(block, x) 的结果与 block(x) 相同，但不保存 block 内部的激活，反向时重算。

    至少一个张量输入需要 requires_grad，否则输出不在图里、块内参数也得不到梯度（与 PyTorch reentrant 版相同）。
    不建图时（torch.no_grad() 下的评估/生成）没有激活要存，直接调用 run_function。
    """
    if not torch.is_grad_enabled():
        return run_function(*args)
    if not any(isinstance(a, torch.Tensor) and a.requires_grad for a in args):
        raise ValueError("checkpoint 的张量输入都不需要梯度：块内参数将得不到梯度。"
                         "对第一层的输入先 .requires_grad_()，或改用 torch.utils.checkpoint(use_reentrant=False)")
    return CheckpointFunction.apply(run_function, preserve_rng_state, *args)


def saved_activation_bytes(run: Callable[[], torch.Tensor],
                           exclude: Iterable[torch.Tensor] = ()) -> tuple[torch.Tensor, int]:
    """运行 run()（一次前向），返回 (输出, autograd 为反向保存的张量字节数)；按 storage 去重，exclude 里的（参数）不计。"""
    excluded = {t.untyped_storage().data_ptr() for t in exclude}
    seen: set[int] = set()
    total = 0

    def pack(t: torch.Tensor) -> torch.Tensor:
        nonlocal total
        storage = t.untyped_storage()
        ptr = storage.data_ptr()
        if ptr not in seen and ptr not in excluded:
            seen.add(ptr)
            total += storage.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = run()
    return out, total


# ---------------------------------------------------------------------------
# 演示与对照
# ---------------------------------------------------------------------------
class Block(nn.Module):
    """pre-norm 残差 MLP 块（带 dropout，用来检验重算时 RNG 的恢复）：x + Dropout(W2·GELU(W1·LN(x)))。"""

    def __init__(self, d: int, dropout: float = 0.1):
        super().__init__()
        self.norm = nn.LayerNorm(d)
        self.up, self.down = nn.Linear(d, 4 * d), nn.Linear(4 * d, d)
        self.drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.drop(self.down(nn.functional.gelu(self.up(self.norm(x)))))  # (B, T, d)


class Stack(nn.Module):
    """L 个 Block；mode 选择 "none"（不检查点）、"ours"、"torch"（reentrant）、"torch_non_reentrant"。"""

    def __init__(self, d: int, layers: int, dropout: float = 0.1):
        super().__init__()
        self.blocks = nn.ModuleList(Block(d, dropout) for _ in range(layers))

    def forward(self, x: torch.Tensor, mode: str = "none") -> torch.Tensor:
        for block in self.blocks:
            if mode == "none":
                x = block(x)
            elif mode == "ours":
                x = checkpoint(block, x)
            elif mode == "torch":
                x = torch.utils.checkpoint.checkpoint(block, x, use_reentrant=True)
            elif mode == "torch_non_reentrant":
                x = torch.utils.checkpoint.checkpoint(block, x, use_reentrant=False)
            else:
                raise ValueError(f"mode={mode!r} 未知；可选 none、ours、torch、torch_non_reentrant")
        return x


def run_mode(model: Stack, x: torch.Tensor, mode: str, seed: int = 0):
    """同一随机种子下前向 + 反向，返回 (输出, 输入梯度, 参数梯度列表, 保存的激活字节数)。"""
    torch.manual_seed(seed)
    model.zero_grad()
    xi = x.detach().clone().requires_grad_()
    out, nbytes = saved_activation_bytes(lambda: model(xi, mode), exclude=model.parameters())
    out.square().mean().backward()
    return out.detach(), xi.grad, [p.grad.clone() for p in model.parameters()], nbytes


def main() -> None:
    setup_seed()
    B, T, d, L = (2, 16, 32, 4) if is_smoke() else (8, 256, 256, 8)
    model = Stack(d, L)
    x = torch.randn(B, T, d)
    print(f"== 激活检查点（{L} 个 MLP 块，B={B}, T={T}, d={d}，dropout=0.1）==")
    ref_out, ref_gx, ref_gp, ref_bytes = run_mode(model, x, "none")
    for mode in ("ours", "torch", "torch_non_reentrant"):
        out, gx, gp, nbytes = run_mode(model, x, mode)
        diff = max((out - ref_out).abs().max().item(), (gx - ref_gx).abs().max().item(),
                   max((a - b).abs().max().item() for a, b in zip(gp, ref_gp)))
        shown = f"{nbytes / 2**20:7.2f} MiB" if mode != "torch_non_reentrant" else "（由其内部钩子保存，此法量不到）"
        print(f"  {mode:20}: 输出/梯度与不检查点的最大差 {diff:.1e}（容差 1e-5；同样的算子、恢复了 RNG，应为 0），"
              f"保存的激活 {shown}")
        assert diff < 1e-5
        if mode == "ours":
            ours_bytes = nbytes
    print(f"  {'none':20}: 保存的激活 {ref_bytes / 2**20:7.2f} MiB  → 检查点节省 {1 - ours_bytes / ref_bytes:.0%}"
          f"（理论：只剩每块的输入 {L}×B·T·d·4 字节 = {L * B * T * d * 4 / 2**20:.2f} MiB）")

    modes = ("none", "ours")
    ms = dict(zip(modes, benchmark_interleaved([lambda m=m: model(x.requires_grad_(), m).sum().backward() for m in modes],
                                               warmup=1, reps=3)))
    print(f"== 前向 + 反向耗时：不检查点 {ms['none']:.1f} ms，检查点 {ms['ours']:.1f} ms（多一次前向："
          f"{ms['ours'] / ms['none']:.2f} 倍，理论约 4/3 ≈ 1.33 倍，默认配置实测约 1.37）==")
    print(timing_note())


if __name__ == "__main__":
    lesson_args(__doc__)
    main()
