"""从零实现的交叉熵：log-sum-exp 的数值稳定、手推的 softmax − onehot 梯度、ignore_index、标签平滑、z-loss。

运行：python training_sys/optimization/cross_entropy_loss.py   （或 python -m training_sys.optimization.cross_entropy_loss；SMOKE=1 几秒跑完）

一个 token 的 logits 为 x ∈ R^C，目标类 t：
    p_c = exp(x_c) / Σ_j exp(x_j),     ℓ = −log p_t = LSE(x) − x_t,     LSE(x) = log Σ_j exp(x_j)

log-sum-exp 的数值稳定：fp32 里 exp(89) 就溢出成 inf，而 LLM 的 logits 偶尔上百。利用
    LSE(x) = m + log Σ_j exp(x_j − m)，   m = max_j x_j
所有指数 ≤ 0（不会上溢），且最大那一项恰好是 exp(0)=1（和 ≥ 1，log 不会下溢到 −inf）。
先算 softmax 再取 log 的朴素写法两头出事：上溢得 inf/NaN；概率下溢成 0 时 log 0 = −inf。

梯度：∂ℓ/∂x_c = ∂LSE/∂x_c − [c = t] = p_c − onehot(t)_c。
这个形式有两个好处：不需要存 softmax（反向时由 x 与前向存下的 m、log Σexp 重算 p，只多存 2N 个数），
而且每行梯度之和为 0、每个分量在 [−1, 1] 内——交叉熵自带"梯度有界"。

标签平滑（Szegedy et al. 2016）：目标分布 q = (1−ε)·onehot(t) + ε/C，
    ℓ = −Σ_c q_c log p_c = (1−ε)·(LSE − x_t) + ε·(LSE − mean_c x_c)，    ∂ℓ/∂x = p − q
z-loss（PaLM，Chowdhery et al. 2022）：额外加 λ_z·LSE²，把 log Z 往 0 拉，防止 logits 整体漂移变大导致
bf16 里 softmax 精度变差、训练后期 loss 尖峰；∂(λ_z·LSE²)/∂x = 2λ_z·LSE·p。PaLM 用 λ_z = 1e-4。
ignore_index：目标等于它的位置（padding、prompt 部分）不计 loss、梯度为 0；"mean" 除以的是有效 token 数。

接口与 F.cross_entropy 的区别：类别维在最后（logits (..., C)，target (...)），正合语言模型的 (B, T, V)；
计算在 fp32 里进行，返回 fp32 的 loss（与 autocast 下 F.cross_entropy 的行为一致），梯度的 dtype 与 logits 相同。
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from utils.io import is_smoke
from utils.lesson_cli import lesson_args, timing_note
from utils.torch_playground import benchmark_interleaved, setup_seed

REDUCTIONS = ("mean", "sum", "none")


def _upcast(x: torch.Tensor) -> torch.Tensor:
    """bf16/fp16 升到 fp32 计算（exp 与求和在低精度里误差太大）；fp64 保持不变（gradcheck 需要）。"""
    return x if x.dtype == torch.float64 else x.float()


class CrossEntropyFunction(torch.autograd.Function):
    """前向：逐 token 的 loss（N,）；反向：手推的 (p − q + 2λ_z·LSE·p)·上游梯度。"""

    @staticmethod
    def forward(ctx, logits: torch.Tensor, target: torch.Tensor, ignore_index: int, label_smoothing: float,
                z_loss: float) -> torch.Tensor:
        x = _upcast(logits)                                         # (N, C)
        valid = target != ignore_index                              # (N,)
        t = torch.where(valid, target, 0)                           # 被忽略的位置随便指一个合法类，结果会被清零
        m = x.amax(dim=-1)                                          # (N,)
        shifted = x - m[:, None]                                    # (N, C) ≤ 0：exp 不会上溢
        log_s = torch.log(torch.exp(shifted).sum(-1))               # (N,)  LSE = m + log_s
        # 直接用 shifted 与 log_s 组合，而不是先算 LSE = m + log_s 再相减：
        # m 很大时 m + log_s 的舍入误差（~ulp(m)）会原样进入 log p，这样写可以避开这次抵消
        nll = log_s - shifted.gather(-1, t[:, None]).squeeze(-1)    # −log p_t = LSE − x_t
        loss = (1.0 - label_smoothing) * nll
        if label_smoothing > 0:
            loss = loss + label_smoothing * (log_s - shifted.mean(-1))  # −(1/C)Σ_c log p_c = LSE − mean(x)
        if z_loss > 0:
            loss = loss + z_loss * (m + log_s).square()
        loss = torch.where(valid, loss, 0.0)
        ctx.save_for_backward(logits, t, valid, m, log_s)           # 只多存 2N 个数，不存 (N, C) 的 softmax
        ctx.label_smoothing, ctx.z_loss = label_smoothing, z_loss
        return loss

    @staticmethod
    @torch.autograd.function.once_differentiable   # 手写的反向不支持二阶导：明确报错而不是给出错误结果
    def backward(ctx, grad_loss: torch.Tensor):
        logits, t, valid, m, log_s = ctx.saved_tensors
        eps, z = ctx.label_smoothing, ctx.z_loss
        # 下面全部原地操作在同一块 (N, C) 缓冲上：反向只分配一次与 logits 同大小的内存
        grad = (_upcast(logits) - m[:, None]).sub_(log_s[:, None]).exp_()   # p，(N, C)
        if z > 0:
            grad.mul_(1.0 + 2.0 * z * (m + log_s)[:, None])                  # p + 2λ_z·LSE·p
        if eps > 0:
            grad.sub_(eps / logits.shape[-1])                                # − ε/C
        grad.scatter_add_(-1, t[:, None], torch.full_like(m[:, None], -(1.0 - eps)))  # − (1−ε)·onehot
        grad.mul_(torch.where(valid, grad_loss, 0.0)[:, None])              # 链式法则；忽略的行梯度为 0
        return grad.to(logits.dtype), None, None, None, None


def cross_entropy(logits: torch.Tensor, target: torch.Tensor, *, ignore_index: int = -100,
                  label_smoothing: float = 0.0, z_loss: float = 0.0, reduction: str = "mean") -> torch.Tensor:
    """语言模型的交叉熵：logits (..., C)，target (...) 为整数类别。

    reduction="mean" 除以有效（非 ignore_index）token 数，全部被忽略时为 NaN（与 PyTorch 相同）；
    "sum" 求和；"none" 返回与 target 同形状的逐 token loss（被忽略的位置为 0）。
    """
    if reduction not in REDUCTIONS:
        raise ValueError(f"reduction={reduction!r} 未知；可选 {REDUCTIONS}")
    if not 0.0 <= label_smoothing <= 1.0:
        raise ValueError(f"label_smoothing={label_smoothing} 必须在 [0, 1] 内（常用 0.1，LLM 预训练一般为 0）")
    if z_loss < 0:
        raise ValueError(f"z_loss={z_loss} 不能是负数（PaLM 用 1e-4）")
    if logits.dim() < 1 or logits.shape[:-1] != target.shape:
        raise ValueError(f"logits {tuple(logits.shape)} 与 target {tuple(target.shape)} 的形状不匹配："
                         f"需要 logits = target 的形状 + (C,)，例如 (B, T, V) 与 (B, T)")
    if target.dtype.is_floating_point or target.dtype == torch.bool:
        raise ValueError(f"target 的 dtype 是 {target.dtype}，需要整数类别（torch.long）；概率形式的软标签请用 label_smoothing")
    num_classes = logits.shape[-1]
    flat_logits, flat_target = logits.reshape(-1, num_classes), target.reshape(-1).long()
    valid = flat_target != ignore_index
    if valid.any() and (flat_target[valid].min() < 0 or flat_target[valid].max() >= num_classes):
        raise ValueError(f"target 中有超出 [0, {num_classes}) 的类别："
                         f"[{flat_target[valid].min().item()}, {flat_target[valid].max().item()}]；"
                         f"检查词表大小与 ignore_index={ignore_index}")
    loss = CrossEntropyFunction.apply(flat_logits, flat_target, ignore_index, float(label_smoothing), float(z_loss))
    if reduction == "none":
        return loss.reshape(target.shape)
    if reduction == "sum":
        return loss.sum()
    return loss.sum() / valid.sum()      # 有效 token 的平均；0/0 = NaN


def main() -> None:
    setup_seed()
    B, T, V = (2, 8, 50) if is_smoke() else (8, 256, 8192)
    logits = torch.randn(B, T, V) * 3
    target = torch.randint(0, V, (B, T))
    target[0, :3] = -100
    print(f"== 对照 F.cross_entropy（B={B}, T={T}, V={V}，含 ignore_index）；另以 fp64 的 F.cross_entropy 为真值 ==")
    mean_loss = cross_entropy(logits, target).item()
    # 随机 logits ~ N(0, σ²)、随机目标：E[LSE] ≈ log(V·E[e^x]) = ln V + σ²/2（V 大时 Σexp 集中在它的期望附近；
    # V 小时 Jensen 不等式让实际值偏低——SMOKE 的 V = 50 上是 7.2 对 8.4），E[x_t] = 0。默认配置实测 13.517 对 13.511
    print(f"  mean loss {mean_loss:.4f}（logits = 3·N(0,1) 配随机目标，V 大时预期 ln V + σ²/2 = {math.log(V) + 4.5:.4f}；"
          f"均匀分布 ln V = {math.log(V):.4f}）")
    print("  容差：loss 用 assert_close 的 fp32 默认（rtol 1.3e-6、atol 1e-5），梯度 rtol 1e-5、atol 5e-5")
    for eps in (0.0, 0.1):
        for reduction in REDUCTIONS:
            x1, x2 = logits.clone().requires_grad_(), logits.clone().requires_grad_()
            x64 = logits.double().requires_grad_()
            ours = cross_entropy(x1, target, label_smoothing=eps, reduction=reduction)
            ref, truth = (F.cross_entropy(x.view(-1, V), target.view(-1), label_smoothing=eps, reduction=reduction)
                          for x in (x2, x64))
            ref, truth = (r.view(B, T) if reduction == "none" else r for r in (ref, truth))
            w = torch.randn_like(ours)
            for loss, x in ((ours, x1), (ref, x2), (truth, x64)):
                (loss * w.to(loss.dtype)).sum().backward()
            err = [(x.grad.double() - x64.grad).abs().max().item() for x in (x1, x2)]
            print(f"  ε={eps} {reduction:4}: loss 差 {(ours - ref).abs().max().item():.1e}，梯度差 "
                  f"{(x1.grad - x2.grad).abs().max().item():.1e}；梯度与 fp64 的误差 ours {err[0]:.1e} / torch {err[1]:.1e}")
            # V 大、logits 大时 fp32 本身的误差在 1e-5 量级（PyTorch 自己离 fp64 也有这么远），容差按此设定
            torch.testing.assert_close(ours, ref)
            torch.testing.assert_close(x1.grad, x2.grad, rtol=1e-5, atol=5e-5)
    total = cross_entropy(logits, target, reduction="sum").item()
    ulp = torch.finfo(torch.float32).eps * 2 ** math.floor(math.log2(total))   # fp32 在 total 这个量级上的末位
    print(f"  读法：sum 的 loss 约 {total:.3g}，fp32 在这个量级上的 ulp 是 {ulp:.1e}——sum 的 loss 差只是末位差"
          "一两个 ulp（求和次序不同）；梯度离 fp64 真值，ours 与 torch 在同一量级（都是 fp32 的舍入）")

    print("== 数值稳定：logits = [1000, 0, -1000] ==")
    x = torch.tensor([[1000.0, 0.0, -1000.0]])
    # exp(1000) = inf → p_t = 1/inf = 0 → −log 0 = inf
    naive = -torch.log(torch.exp(x) / torch.exp(x).sum(-1, keepdim=True))[0, 1]
    print(f"  朴素 −log(exp(x_t)/Σexp)：{naive.item()}；log-sum-exp：{cross_entropy(x, torch.tensor([1])).item()}"
          f"；F.cross_entropy：{F.cross_entropy(x, torch.tensor([1])).item()}")

    xd = torch.randn(6, 5, dtype=torch.float64, requires_grad=True)
    td = torch.tensor([0, 4, -100, 2, 2, 1])
    ok = torch.autograd.gradcheck(lambda a: cross_entropy(a, td, label_smoothing=0.1, z_loss=1e-2), (xd,))
    print(f"== gradcheck（fp64，ε=0.1，z_loss=1e-2）：{ok} ==")

    x1, x2 = logits.clone().requires_grad_(), logits.clone().requires_grad_()
    ms, ms_ref = benchmark_interleaved([lambda: cross_entropy(x1, target).backward(),
                                        lambda: F.cross_entropy(x2.view(-1, V), target.view(-1)).backward()],
                                       warmup=1, reps=3)
    print(f"== 前向 + 反向耗时：ours {ms:.2f} ms，F.cross_entropy {ms_ref:.2f} ms ==")
    print(timing_note("benchmarks/training_optimizers.py"))


if __name__ == "__main__":
    lesson_args(__doc__)
    main()
