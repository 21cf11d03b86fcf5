"""AdamW：Adam 的一阶/二阶矩估计 + 偏差修正 + 解耦的权重衰减（Loshchilov & Hutter 2019）。

运行：python training_sys/optimization/adamw.py   （或 python -m training_sys.optimization.adamw；SMOKE=1 几秒跑完）

Adam 的更新（Kingma & Ba 2015），g_t 是第 t 步的梯度：
    m_t = β1·m_{t-1} + (1-β1)·g_t            一阶矩（梯度的指数滑动平均，"动量"）
    v_t = β2·v_{t-1} + (1-β2)·g_t²           二阶矩（逐坐标梯度平方的滑动平均）
    θ_t = θ_{t-1} − lr · m̂_t / (sqrt(v̂_t) + ε)

偏差修正（bias correction）从哪来？m_0 = v_0 = 0，展开得
    m_t = (1-β1)·Σ_{i=1..t} β1^{t-i} g_i
若 g_i 平稳、期望为 E[g]，则 E[m_t] = E[g]·(1-β1)·Σ β1^{t-i} = E[g]·(1 − β1^t)。
所以 m_t 系统性地偏小（t=1 时只有 (1-β1)=0.1 倍），除以 (1 − β1^t) 才是无偏估计：
    m̂_t = m_t / (1 − β1^t),   v̂_t = v_t / (1 − β2^t)
β2=0.999 时 v 的偏差要上千步才消失（β2^1000 ≈ 0.37）；不修正的话，第 t 步的步长是修正后的
(1-β1^t)/sqrt(1-β2^t) 倍：t = 1 时 (1-β1)/sqrt(1-β2) ≈ 3.16 倍，t ≈ 12 时最大约 6.6 倍，直到 t ≈ 117 都在 3 倍以上
（t = 1000 时仍有 1.26 倍；bias_correction_ratio 算这个数，测试核对）——训练初期最脆弱的时候步子反而最大。
代码里的写法：step_size = lr / (1-β1^t)，denom = sqrt(v_t)/sqrt(1-β2^t) + ε（与 PyTorch 单张量实现相同的运算顺序，
所以 200 步后与 torch.optim.AdamW 逐位相同；换成 m̂/(sqrt(v̂)+ε) 的等价写法，main() 的小 MLP 上 200 步后差 3.6e-7）。

为什么要"解耦"权重衰减？
- L2 正则把 λθ 加进梯度：g ← g + λθ。在 SGD 里这与"每步把 θ 乘 (1 − lr·λ)"完全等价。
- 在 Adam 里不等价：λθ 也会被除以 sqrt(v̂)。梯度大（v 大）的权重被衰减得少，梯度小的被衰减得多——
  衰减强度变成了"取决于梯度历史"的东西，和"把所有权重往 0 拉同样比例"的本意背离，而且与 lr 调度纠缠。
- AdamW 把衰减从梯度里拿出来，直接作用在参数上：θ ← θ·(1 − lr·λ)，再做 Adam 更新。
  衰减对所有权重一视同仁，λ 和 lr 的最佳取值也更独立（论文图 2）。
注意 PyTorch 的约定是 θ ← θ − lr·λ·θ（衰减量乘了 lr，随调度一起衰减），本实现相同。

AMSGrad（Reddi et al. 2018）：用历史最大的 v_t 做分母，保证有效步长单调不增；maximize：对 −g 做 Adam。
"""

from __future__ import annotations

import math

import torch
from torch import nn

from training_sys.optimization._checks import check_betas, check_eps, check_lr, check_weight_decay
from utils.io import is_smoke
from utils.lesson_cli import lesson_args, timing_note
from utils.torch_playground import benchmark_interleaved, setup_seed


@torch.no_grad()
def adamw_update_(param: torch.Tensor, grad: torch.Tensor, state: dict, *, lr: float, betas: tuple[float, float],
                  eps: float, weight_decay: float, amsgrad: bool = False, maximize: bool = False) -> None:
    """对一个参数原地做一步 AdamW；state 是该参数的状态字典（第一次调用时初始化）。

    状态的键与 torch.optim.AdamW 相同（step、exp_avg、exp_avg_sq、max_exp_avg_sq），
    所以两者的 state_dict 可以互相加载。Muon 用它来更新非 2-D 参数。
    """
    beta1, beta2 = betas
    if maximize:
        grad = -grad
    if not state:
        # step 用 fp32 标量张量保存，与 PyTorch 一致（state_dict 因而可以互换）
        state["step"] = torch.tensor(0.0)
        state["exp_avg"] = torch.zeros_like(param, memory_format=torch.preserve_format)
        state["exp_avg_sq"] = torch.zeros_like(param, memory_format=torch.preserve_format)
        if amsgrad:
            state["max_exp_avg_sq"] = torch.zeros_like(param, memory_format=torch.preserve_format)
    state["step"] += 1
    step = state["step"].item()
    exp_avg, exp_avg_sq = state["exp_avg"], state["exp_avg_sq"]

    param.mul_(1 - lr * weight_decay)                                   # 解耦衰减：θ ← θ(1 − lr·λ)
    exp_avg.lerp_(grad, 1 - beta1)                                      # m ← β1·m + (1-β1)·g
    exp_avg_sq.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)        # v ← β2·v + (1-β2)·g²

    step_size = lr / (1 - beta1**step)                                  # lr / (1-β1^t)：一阶矩的偏差修正
    second = exp_avg_sq
    if amsgrad:
        torch.maximum(state["max_exp_avg_sq"], exp_avg_sq, out=state["max_exp_avg_sq"])
        second = state["max_exp_avg_sq"]
    denom = (second.sqrt() / math.sqrt(1 - beta2**step)).add_(eps)     # sqrt(v̂) + ε
    param.addcdiv_(exp_avg, denom, value=-step_size)                   # θ ← θ − lr·m̂/(sqrt(v̂)+ε)


class AdamW(torch.optim.Optimizer):
    """从零实现的 AdamW，接口与 torch.optim.AdamW 相同（lr、betas、eps、weight_decay、amsgrad、maximize）。

    支持参数组（每组不同的 lr / weight_decay，例如"norm 与 bias 不衰减"），
    与 LambdaLR 等 PyTorch 调度器配合使用（它们只改 param_group["lr"]）。

    foreach=False（默认）：逐个参数调用 adamw_update_，公式一目了然，与 torch.optim.AdamW(foreach=False) 逐位相同。
    foreach=True：同样的公式改用 torch._foreach_* 一次处理整组参数（见 _foreach_group_update_），
    与 torch.optim.AdamW(foreach=True) 逐位相同（两条路径彼此也逐位相同）。每个参数一步约 8 个算子，
    小参数的耗时主要是 Python 与算子调度的固定开销；foreach 把 "参数数 × 8" 次调度变成 "约 8 次"。
    """

    def __init__(self, params, lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8,
                 weight_decay: float = 1e-2, amsgrad: bool = False, *, maximize: bool = False,
                 foreach: bool = False):
        check_lr(lr)
        check_betas(betas)
        check_eps(eps)
        check_weight_decay(weight_decay)
        defaults = dict(lr=lr, betas=tuple(betas), eps=eps, weight_decay=weight_decay, amsgrad=amsgrad,
                        maximize=maximize, foreach=foreach)
        super().__init__(params, defaults)
        for group in self.param_groups:  # 参数组里单独给的超参数也要检查
            check_lr(group["lr"])
            check_betas(group["betas"])
            check_eps(group["eps"])
            check_weight_decay(group["weight_decay"])

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            # 这一步没有梯度的参数（如冻结层）不更新，状态也不前进
            params = [p for p in group["params"] if p.grad is not None]
            if any(p.grad.is_sparse for p in params):
                raise RuntimeError("AdamW 不支持稀疏梯度；Embedding(sparse=True) 请改用 torch.optim.SparseAdam")
            if group.get("foreach", False) and params:
                self._foreach_group_update_(params, group)
                continue
            for p in params:
                adamw_update_(p, p.grad, self.state[p], lr=group["lr"], betas=group["betas"], eps=group["eps"],
                              weight_decay=group["weight_decay"], amsgrad=group["amsgrad"],
                              maximize=group["maximize"])
        return loss

    def _foreach_group_update_(self, params: list[torch.Tensor], group: dict) -> None:
        """adamw_update_ 的多张量版本：每一行是对整组参数的同一个运算，顺序与数值与 torch 的 foreach 实现相同。

        _foreach_* 要求列表里的张量在同一设备、同一 dtype 上（torch 内部会按 (device, dtype) 分桶）；
        这里只处理最常见的情形，其余情况退回逐参数的写法（结果相同，只是慢一些）。
        """
        lr, (beta1, beta2), eps, wd = group["lr"], group["betas"], group["eps"], group["weight_decay"]
        amsgrad = group["amsgrad"]
        if len({(p.device, p.dtype) for p in params}) > 1 or any(torch.is_complex(p) for p in params):
            for p in params:
                adamw_update_(p, p.grad, self.state[p], lr=lr, betas=(beta1, beta2), eps=eps, weight_decay=wd,
                              amsgrad=amsgrad, maximize=group["maximize"])
            return
        for p in params:  # 状态的初始化与单张量版本相同（键名与 torch 一致，state_dict 可互换）
            state = self.state[p]
            if not state:
                state["step"] = torch.tensor(0.0)
                state["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                state["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                if amsgrad:
                    state["max_exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
        states = [self.state[p] for p in params]
        grads = [p.grad for p in params]
        exp_avgs = [s["exp_avg"] for s in states]
        exp_avg_sqs = [s["exp_avg_sq"] for s in states]
        steps = [s["step"] for s in states]
        if group["maximize"]:
            grads = torch._foreach_neg(grads)
        torch._foreach_add_(steps, 1)
        if wd != 0:  # 乘 1.0 不改变数值，省掉整组参数的一次读写
            torch._foreach_mul_(params, 1 - lr * wd)                           # θ ← θ(1 − lr·λ)
        torch._foreach_lerp_(exp_avgs, grads, 1 - beta1)                      # m ← β1·m + (1-β1)·g
        torch._foreach_mul_(exp_avg_sqs, beta2)                               # v ← β2·v + (1-β2)·g²
        torch._foreach_addcmul_(exp_avg_sqs, grads, grads, 1 - beta2)
        # 偏差修正是每个参数各自的标量（各参数的 step 可能不同，例如中途解冻的层），在 Python 里算
        step_values = [s.item() for s in steps]
        step_sizes = [-(lr / (1 - beta1**t)) for t in step_values]          # −lr/(1-β1^t)
        bc2_sqrt = [(1 - beta2**t) ** 0.5 for t in step_values]             # sqrt(1-β2^t)
        second = exp_avg_sqs
        if amsgrad:
            second = [s["max_exp_avg_sq"] for s in states]
            torch._foreach_maximum_(second, exp_avg_sqs)
        denom = torch._foreach_sqrt(second)
        torch._foreach_div_(denom, bc2_sqrt)
        torch._foreach_add_(denom, eps)                                       # sqrt(v̂) + ε
        torch._foreach_addcdiv_(params, exp_avgs, denom, step_sizes)          # θ ← θ − lr·m̂/(sqrt(v̂)+ε)


def weight_decay_param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """nanoGPT / Llama 训练的惯例：只对 ≥2-D 的权重（矩阵、嵌入）做衰减，1-D 的 norm γ 与 bias 不衰减。

    为什么？衰减把参数往 0 拉；对 γ 来说"0"意味着把整层输出关掉，对 bias 来说它们参数少、几乎不会过拟合。
    用法：AdamW(weight_decay_param_groups(model, 0.1), lr=3e-4)。
    """
    check_weight_decay(weight_decay)
    params = [p for p in model.parameters() if p.requires_grad]
    return [{"params": [p for p in params if p.dim() >= 2], "weight_decay": weight_decay},
            {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0}]


def bias_correction_ratio(step: int, betas: tuple[float, float] = (0.9, 0.999)) -> float:
    """不做偏差修正时第 step 步的更新比修正后大几倍（梯度恒定时）：(1 − β1^t) / sqrt(1 − β2^t)。"""
    beta1, beta2 = betas
    return (1 - beta1**step) / math.sqrt(1 - beta2**step)


# ---------------------------------------------------------------------------
# 演示与对照
# ---------------------------------------------------------------------------
def _tiny_mlp() -> nn.Module:
    return nn.Sequential(nn.Linear(16, 64), nn.LayerNorm(64), nn.GELU(), nn.Linear(64, 4))


def run_side_by_side(make_ours, make_ref, steps: int, seed: int = 0) -> float:
    """同一初始化、同一批数据，分别用两个优化器训练 steps 步，返回参数的最大绝对差。"""
    setup_seed(seed)
    model_a = _tiny_mlp()
    model_b = _tiny_mlp()
    model_b.load_state_dict(model_a.state_dict())
    opt_a, opt_b = make_ours(model_a), make_ref(model_b)
    for _ in range(steps):
        x, y = torch.randn(32, 16), torch.randn(32, 4)
        for model, opt in ((model_a, opt_a), (model_b, opt_b)):
            opt.zero_grad()
            nn.functional.mse_loss(model(x), y).backward()
            opt.step()
    return max((a - b).abs().max().item() for a, b in zip(model_a.parameters(), model_b.parameters()))


def main() -> None:
    setup_seed()
    steps = 20 if is_smoke() else 200
    print(f"== AdamW 对照 torch.optim.AdamW：{steps} 步，weight_decay=0.1，两个参数组（不同 lr）==")
    for amsgrad in (False, True):
        def groups(m):
            return [{"params": [m[0].weight, m[3].weight]}, {"params": [m[0].bias, m[1].weight, m[1].bias, m[3].bias],
                                                             "lr": 3e-3, "weight_decay": 0.0}]
        diff = run_side_by_side(lambda m: AdamW(groups(m), lr=1e-2, weight_decay=0.1, amsgrad=amsgrad),
                                lambda m: torch.optim.AdamW(groups(m), lr=1e-2, weight_decay=0.1, amsgrad=amsgrad),
                                steps)
        print(f"  amsgrad={amsgrad!s:5}  参数最大差 {diff:.2e}（容差 1e-6；与 torch 同样的运算次序，实际应逐位相同 = 0）")
        assert diff < 1e-6

    print("== 偏差修正：第 1 步的更新幅度（g 为常数 0.01，lr=1e-3）==")
    g = torch.full((4,), 0.01)
    for corrected in (True, False):
        m, v = 0.1 * g, 0.001 * g**2          # t=1：m_1=(1-β1)g，v_1=(1-β2)g²
        if corrected:
            m, v = m / 0.1, v / 0.001
        step = (1e-3 * m / (v.sqrt() + 1e-8))[0].item()
        print(f"  {'有' if corrected else '无'}修正：|Δθ| = {step:.2e}（{step / 1e-3:.2f} × lr）")
    print(f"  理论：无修正是有修正的 (1-β1)/sqrt(1-β2) = {bias_correction_ratio(1):.2f} 倍；"
          f"t ≈ 12 时最大 {max(bias_correction_ratio(t) for t in range(1, 200)):.2f} 倍")

    print("== 解耦衰减 vs L2：梯度尺度相差 100 倍的两个权重，100 步后被衰减了多少（lr=1e-2，λ=0.1，从 1 开始）==")

    def alternating(make) -> tuple[float, float]:
        p = nn.Parameter(torch.ones(2))
        opt = make(p)
        for i in range(100):
            # 梯度正负交替、均值为 0。但动量要几步才"学会"抵消：第 1 步 m̂ = g，整整走了 −lr，之后才正负相抵，
            # 所以不衰减时两个权重也有一小段净移动（λ = 0 那一行，它就是基线）；再往下的差别才来自权重衰减
            sign = 1.0 if i % 2 == 0 else -1.0
            p.grad = sign * torch.tensor([1.0, 0.01])
            opt.step()
        return p[0].item(), p[1].item()

    base = alternating(lambda p: AdamW([p], lr=1e-2, weight_decay=0.0))
    print(f"  不衰减（λ=0）：大梯度权重 {base[0]:.3f}，小梯度权重 {base[1]:.3f}（基线：只有交替梯度的净移动）")
    for name, make in (("AdamW（解耦）", lambda p: AdamW([p], lr=1e-2, weight_decay=0.1)),
                       ("Adam + L2    ", lambda p: torch.optim.Adam([p], lr=1e-2, weight_decay=0.1))):
        big, small = alternating(make)
        print(f"  {name}：大梯度权重 {big:.3f}，小梯度权重 {small:.3f}")
    decay = (1 - 1e-2 * 0.1) ** 100
    print(f"  预期：解耦衰减对两个权重一样，≈ 基线 × (1 − lr·λ)^100 = {base[0]:.3f} × {decay:.3f} = {base[0] * decay:.3f}；"
          "L2 的 λθ 要被 sqrt(v̂) 除，梯度小的权重被衰减得多得多（实测 0.889 / 0.890、0.230）")

    params = [nn.Parameter(torch.randn(256, 256)) for _ in range(8)]
    for p in params:
        p.grad = torch.randn_like(p)
    ours, ref = AdamW(params, lr=1e-3), torch.optim.AdamW(params, lr=1e-3, foreach=False)
    ms_ours, ms_ref = benchmark_interleaved([ours.step, ref.step], warmup=2, reps=5)
    print(f"== 一步耗时（8 个 256×256 参数）：ours {ms_ours:.2f} ms，torch(foreach=False) {ms_ref:.2f} ms ==")
    print(timing_note("benchmarks/training_optimizers.py"))


if __name__ == "__main__":
    lesson_args(__doc__)
    main()
