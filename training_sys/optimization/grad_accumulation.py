"""梯度累积：用 k 个小批次（micro-batch）的梯度之和，精确地得到一个大批次的梯度。

运行：python training_sys/optimization/grad_accumulation.py   （或 python -m training_sys.optimization.grad_accumulation；SMOKE=1 几秒跑完）

显存装不下大批次时，把它切成 k 份，每份 forward + backward，梯度在 .grad 里自动相加（PyTorch 的 backward
是"累加"而不是"覆盖"，这正是 zero_grad 存在的原因），k 份都做完再 optimizer.step()。

为什么每个 micro-batch 的 loss 必须先除以 k（更准确地说：除以整个大批次的 token 数）？
大批次的 loss 是所有 N 个 token 的平均：L = (1/N) Σ_i ℓ_i，梯度 ∇L = (1/N) Σ_i ∇ℓ_i。
如果每个 micro-batch 各自取平均 L_j = (1/n_j) Σ_{i∈j} ℓ_i 再直接 backward，得到 Σ_j ∇L_j ——
每个 token 的权重是 1/n_j 而不是 1/N，梯度整体大了约 k 倍（相当于学习率放大 k 倍，Adam 里还会被 v 部分抵消，
更难察觉）。正确做法：
    micro-batch j 的贡献 = Σ_{i∈j} ℓ_i / N_total    （N_total = 整个大批次的有效 token 数）
于是 Σ_j ∇(贡献_j) = ∇L，与大批次逐位意义上相同（只差浮点求和顺序）。
常见写法"每份取平均再除以 k"只在每份有效 token 数相同时才精确；有 padding / ignore_index 时 n_j 各不相同，
它给 token 少的 micro-batch 过大的权重（HF transformers 在 2024 年修过这个 bug）。main() 把三种做法并排比较。
注意：BatchNorm 这类跨样本统计的层在累积下不等价（LLM 用的 LayerNorm/RMSNorm 没有这个问题）。
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn

from training_sys.optimization.cross_entropy_loss import cross_entropy
from utils.io import is_smoke
from utils.lesson_cli import lesson_args
from utils.torch_playground import setup_seed


def split_micro_batches(inputs: torch.Tensor, targets: torch.Tensor,
                        num_micro_batches: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """沿第 0 维把 (inputs, targets) 均分成 num_micro_batches 份。"""
    if not isinstance(num_micro_batches, int) or num_micro_batches < 1:
        raise ValueError(f"num_micro_batches={num_micro_batches!r} 必须是正整数")
    if inputs.shape[0] % num_micro_batches != 0:
        raise ValueError(f"batch 大小 {inputs.shape[0]} 不能被 num_micro_batches={num_micro_batches} 整除；"
                         f"调整 batch_size 或 micro-batch 数")
    return list(zip(inputs.chunk(num_micro_batches), targets.chunk(num_micro_batches)))


def accumulate_gradients(model: nn.Module, micro_batches: Sequence[tuple[torch.Tensor, torch.Tensor]], *,
                         ignore_index: int = -100, z_loss: float = 0.0, scaler=None,
                         autocast=None) -> torch.Tensor:
    """对若干 (inputs, targets) 做 forward + backward，把梯度累加进 .grad，返回整个大批次的平均 loss（已 detach）。

    model(inputs) 返回 logits (..., V)；loss 是 cross_entropy，按整个大批次的有效 token 数归一化，
    所以结果与把所有 micro-batch 拼起来一次 backward 相同。调用前 zero_grad，调用后 clip / step。
    scaler：fp16 时传 DynamicLossScaler（对每份 loss 先 scale 再 backward）；autocast：一个返回上下文管理器的函数，
    例如 lambda: autocast_context("bfloat16")。
    """
    if len(micro_batches) == 0:
        raise ValueError("micro_batches 为空：至少需要一个 (inputs, targets)")
    # 先数整个大批次的有效 token：targets 已在手边，不必多一次前向
    total_tokens = sum(int((y != ignore_index).sum()) for _, y in micro_batches)
    if total_tokens == 0:
        raise ValueError(f"所有 target 都等于 ignore_index={ignore_index}：这个批次没有可学习的 token")
    total_loss = torch.zeros(())
    for x, y in micro_batches:
        if autocast is None:
            logits = model(x)
        else:
            with autocast():
                logits = model(x)
        loss = cross_entropy(logits, y, ignore_index=ignore_index, z_loss=z_loss, reduction="sum") / total_tokens
        (scaler.scale(loss) if scaler is not None else loss).backward()
        total_loss += loss.detach().float()
    return total_loss


# ---------------------------------------------------------------------------
# 演示与对照
# ---------------------------------------------------------------------------
class TinyLM(nn.Module):
    """embedding → MLP → lm_head 的玩具语言模型（每个位置独立预测下一个 token）。"""

    def __init__(self, vocab_size: int = 64, hidden: int = 32):
        super().__init__()
        self.embed = nn.Embedding(vocab_size, hidden)
        self.mlp = nn.Sequential(nn.Linear(hidden, 4 * hidden), nn.GELU(), nn.Linear(4 * hidden, hidden))
        self.lm_head = nn.Linear(hidden, vocab_size, bias=False)

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        h = self.embed(idx)                  # (B, T, H)
        return self.lm_head(h + self.mlp(h))  # (B, T, V)


def grads_of(model: nn.Module) -> list[torch.Tensor]:
    return [p.grad.detach().clone() for p in model.parameters()]


def max_diff(a: list[torch.Tensor], b: list[torch.Tensor]) -> float:
    return max((x - y).abs().max().item() for x, y in zip(a, b))


def main() -> None:
    setup_seed()
    B, T, V, k = (8, 16, 64, 4) if is_smoke() else (32, 128, 256, 8)
    model = TinyLM(V)
    x, y = torch.randint(0, V, (B, T)), torch.randint(0, V, (B, T))
    # 不均匀的 padding：前几条序列后半段被忽略，各 micro-batch 的有效 token 数不同
    for b in range(B // 2):
        y[b, T // 2 + b % (T // 2):] = -100

    model.zero_grad()
    cross_entropy(model(x), y).backward()
    full = grads_of(model)

    model.zero_grad()
    loss = accumulate_gradients(model, split_micro_batches(x, y, k))
    exact = grads_of(model)

    model.zero_grad()
    for xm, ym in split_micro_batches(x, y, k):      # 常见写法：每份取平均，再除以 k
        (cross_entropy(model(xm), ym) / k).backward()
    naive = grads_of(model)

    model.zero_grad()
    for xm, ym in split_micro_batches(x, y, k):      # 错误写法：忘了除
        cross_entropy(model(xm), ym).backward()
    forgot = grads_of(model)

    scale = max(g.abs().max().item() for g in full)
    norm = torch.cat([g.flatten() for g in full]).norm()
    ratio = torch.cat([g.flatten() for g in forgot]).norm() / norm
    print(f"== 梯度累积（B={B}, T={T}, k={k} 个 micro-batch，padding 不均匀），梯度的最大绝对值 {scale:.2e} ==")
    print(f"  按总 token 数归一化（accumulate_gradients）：与大批次的最大差 {max_diff(exact, full):.1e}"
          f"（预期只有求和次序带来的 fp32 舍入：梯度尺度 {scale:.1e} × 几个 1e-7；断言 < 1e-6）")
    print(f"  每份取平均再 /k                          ：最大差 {max_diff(naive, full):.1e}（有 padding 时不精确）")
    print(f"  忘了除                                   ：最大差 {max_diff(forgot, full):.1e}"
          f"（梯度范数是正确值的 {ratio:.2f} 倍，预期约 k = {k}）")
    print(f"  loss {loss.item():.4f}：未训练的模型，对照均匀分布 ln V = {math.log(V):.4f}（随机初始化的 logits 不全为 0，"
          "所以略高于 ln V；目标是随机 token，没有规律可学，新数据上谁也低不过 ln V）")
    assert max_diff(exact, full) < 1e-6 < max_diff(naive, full)


if __name__ == "__main__":
    lesson_args(__doc__)
    main()
