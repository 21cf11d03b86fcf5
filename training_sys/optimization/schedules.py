"""学习率调度：线性预热 + 余弦衰减、WSD（预热–平稳–衰减）、逆平方根。

运行：python training_sys/optimization/schedules.py   （或 python -m training_sys.optimization.schedules；SMOKE=1 几秒跑完）

用法：每个 *_schedule(...) 返回一个"step -> 学习率倍数"的可调用对象 f，实际学习率 = base_lr · f(step)。
它可以直接交给 PyTorch 的 LambdaLR（base_lr 就是优化器参数组里的 lr）：

    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, cosine_schedule(warmup_steps=100, total_steps=2000))
    for step in range(2000):
        ...; optimizer.step(); scheduler.step()      # 第 step 次更新用的是 base_lr · f(step)

也可以不用调度器，手动写：for g in optimizer.param_groups: g["lr"] = base_lr * f(step)。
取值约定与 Hugging Face transformers 的 get_cosine_schedule_with_warmup / get_wsd_schedule /
get_inverse_sqrt_schedule 相同（测试逐步对照），只有一处不同：step ≥ total_steps 后我们停在最低点，
HF 的余弦会越过谷底重新上升。

为什么要预热？训练开始时 Adam 的二阶矩估计 v 只基于很少的样本、很不可靠，权重也在随机初始化附近，
大学习率容易让 loss 尖峰甚至发散；线性预热让优化器先"摸清"梯度尺度。（HF 的约定：f(0) = 0，第一步不更新。）
为什么衰减？接近终点时降低噪声（lr 越小，SGD 稳态的"抖动半径"越小），loss 会明显再降一截。
- 余弦（Loshchilov & Hutter 2017）：f = min + (1−min)·½(1 + cos(π·p))，p 是预热后的进度；
  开头降得慢、中间快、结尾又慢。缺点：必须事先知道总步数，中途想多训练就得重来。
- WSD（MiniCPM，Hu et al. 2024）：预热后一直保持峰值，只在最后 10%~20% 的步数里快速衰减。
  平稳段的任何 checkpoint 都可以"接着训练"或"从这里开始衰减"得到一个成品模型，适合持续预训练与 scaling 实验。
- 逆平方根（Transformer 原论文，Vaswani et al. 2017）：预热后 f = 1/sqrt(step/timescale)，
  没有终点，适合不知道要训练多久的场合；衰减慢，最后的 loss 通常不如余弦/WSD。
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from utils.io import is_smoke, save_figure
from utils.lesson_cli import lesson_args

SCHEDULE_KINDS = ("cosine", "wsd", "inv_sqrt")
DECAY_TYPES = ("cosine", "linear", "1-sqrt")


def _check_int(name: str, value: int, minimum: int = 0) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
        raise ValueError(f"{name}={value!r} 必须是 ≥ {minimum} 的整数")


def _check_min_lr_ratio(min_lr_ratio: float) -> None:
    if not 0.0 <= min_lr_ratio <= 1.0:
        raise ValueError(f"min_lr_ratio={min_lr_ratio!r} 必须在 [0, 1] 内：它是最低学习率与峰值学习率之比（常用 0.1）")


def _check_step(step: int) -> None:
    if step < 0:
        raise ValueError(f"step={step} 不能是负数")


def _warmup(step: int, warmup_steps: int) -> float:
    return step / max(1, warmup_steps)   # 0, 1/W, 2/W, …：线性预热（HF 约定，f(0) = 0）


@dataclass(frozen=True)
class CosineSchedule:
    warmup_steps: int
    total_steps: int
    min_lr_ratio: float = 0.0
    num_cycles: float = 0.5

    def __call__(self, step: int) -> float:
        _check_step(step)
        if step < self.warmup_steps:
            return _warmup(step, self.warmup_steps)
        progress = min(1.0, (step - self.warmup_steps) / max(1, self.total_steps - self.warmup_steps))
        cosine = 0.5 * (1.0 + math.cos(math.pi * 2.0 * self.num_cycles * progress))  # 从 1 降到 0
        return max(0.0, cosine * (1.0 - self.min_lr_ratio) + self.min_lr_ratio)        # 压到 [min, 1]


@dataclass(frozen=True)
class WSDSchedule:
    warmup_steps: int
    stable_steps: int
    decay_steps: int
    min_lr_ratio: float = 0.0
    decay_type: str = "cosine"

    def __call__(self, step: int) -> float:
        _check_step(step)
        lo = self.min_lr_ratio
        if step < self.warmup_steps:
            return _warmup(step, self.warmup_steps) * (1.0 - lo) + lo   # 从 min 预热到 1（HF 约定）
        if step < self.warmup_steps + self.stable_steps:
            return 1.0
        if step < self.warmup_steps + self.stable_steps + self.decay_steps:
            p = (step - self.warmup_steps - self.stable_steps) / max(1, self.decay_steps)
            if self.decay_type == "linear":
                factor = 1.0 - p
            elif self.decay_type == "cosine":
                factor = 0.5 * (1.0 + math.cos(math.pi * p))
            else:  # "1-sqrt"：开头降得最快，MiniCPM/DeepSeek 的消融里略好于余弦
                factor = 1.0 - math.sqrt(p)
            return max(0.0, factor * (1.0 - lo) + lo)
        return lo


@dataclass(frozen=True)
class InvSqrtSchedule:
    warmup_steps: int
    timescale: int

    def __call__(self, step: int) -> float:
        _check_step(step)
        if step < self.warmup_steps:
            return _warmup(step, self.warmup_steps)
        # 1/sqrt((step + shift)/timescale)，shift 使预热结束时恰好等于 1（当 timescale = warmup_steps）
        shift = self.timescale - self.warmup_steps
        return 1.0 / math.sqrt((step + shift) / self.timescale)


def cosine_schedule(warmup_steps: int, total_steps: int, min_lr_ratio: float = 0.0,
                    num_cycles: float = 0.5) -> CosineSchedule:
    """线性预热 warmup_steps 步，然后余弦衰减到 min_lr_ratio，在 total_steps 处到底并保持。"""
    _check_int("warmup_steps", warmup_steps)
    _check_int("total_steps", total_steps, 1)
    if warmup_steps > total_steps:
        raise ValueError(f"warmup_steps={warmup_steps} 大于 total_steps={total_steps}：预热不能比整个训练还长；"
                         f"常用 warmup ≈ total 的 1%~5%")
    _check_min_lr_ratio(min_lr_ratio)
    return CosineSchedule(warmup_steps, total_steps, min_lr_ratio, num_cycles)


def wsd_schedule(warmup_steps: int, total_steps: int, decay_steps: int | None = None, min_lr_ratio: float = 0.0,
                 decay_type: str = "cosine") -> WSDSchedule:
    """预热 → 平稳（倍数 1）→ 在最后 decay_steps 步（默认总步数的 20%）衰减到 min_lr_ratio。"""
    _check_int("warmup_steps", warmup_steps)
    _check_int("total_steps", total_steps, 1)
    if decay_steps is None:
        decay_steps = max(1, total_steps // 5)
    _check_int("decay_steps", decay_steps)
    if warmup_steps + decay_steps > total_steps:
        raise ValueError(f"warmup_steps={warmup_steps} + decay_steps={decay_steps} 大于 total_steps={total_steps}："
                         f"平稳段的长度会是负数；减小预热或衰减步数")
    if decay_type not in DECAY_TYPES:
        raise ValueError(f"decay_type={decay_type!r} 未知；可选 {DECAY_TYPES}")
    _check_min_lr_ratio(min_lr_ratio)
    return WSDSchedule(warmup_steps, total_steps - warmup_steps - decay_steps, decay_steps, min_lr_ratio, decay_type)


def inv_sqrt_schedule(warmup_steps: int, timescale: int | None = None) -> InvSqrtSchedule:
    """预热后按 1/sqrt(step) 衰减；timescale 默认等于 warmup_steps（预热为 0 时取 10000，与 HF 相同）。"""
    _check_int("warmup_steps", warmup_steps)
    if timescale is None:
        timescale = warmup_steps or 10_000
    _check_int("timescale", timescale, 1)
    return InvSqrtSchedule(warmup_steps, timescale)


def build_schedule(kind: str, *, warmup_steps: int, total_steps: int, min_lr_ratio: float = 0.0,
                   decay_steps: int | None = None):
    """按名字构造调度（训练配置里写 lr_schedule="cosine" 之类时用）。inv_sqrt 忽略 total_steps 与 min_lr_ratio。"""
    if kind == "cosine":
        return cosine_schedule(warmup_steps, total_steps, min_lr_ratio)
    if kind == "wsd":
        return wsd_schedule(warmup_steps, total_steps, decay_steps, min_lr_ratio)
    if kind == "inv_sqrt":
        if warmup_steps > total_steps:
            raise ValueError(f"warmup_steps={warmup_steps} 大于 total_steps={total_steps}")
        return inv_sqrt_schedule(warmup_steps)
    raise ValueError(f"未知的学习率调度 kind={kind!r}；可选 {SCHEDULE_KINDS}")


def main() -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import torch
    from transformers import optimization as hf

    total, warmup = (200, 10) if is_smoke() else (2000, 100)
    ours = {
        "cosine": cosine_schedule(warmup, total, min_lr_ratio=0.1),
        "wsd": wsd_schedule(warmup, total, decay_steps=total // 5, min_lr_ratio=0.1, decay_type="1-sqrt"),
        "inv_sqrt": inv_sqrt_schedule(warmup),
    }

    def hf_lrs(make):  # 用 HF 的 LambdaLR 跑一遍，读出每步的 lr
        opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
        sched = make(opt)
        lrs = []
        for _ in range(total):
            lrs.append(opt.param_groups[0]["lr"])
            opt.step()
            sched.step()
        return lrs

    refs = {
        "cosine": hf_lrs(lambda o: hf.get_cosine_with_min_lr_schedule_with_warmup(o, warmup, total, min_lr_rate=0.1)),
        "wsd": hf_lrs(lambda o: hf.get_wsd_schedule(o, warmup, total // 5, total, decay_type="1-sqrt",
                                                    min_lr_ratio=0.1)),
        "inv_sqrt": hf_lrs(lambda o: hf.get_inverse_sqrt_schedule(o, warmup)),
    }
    print(f"== 调度对照 transformers（{total} 步，预热 {warmup} 步，min_lr_ratio=0.1）==")
    for kind, f in ours.items():
        diff = max(abs(f(s) - r) for s, r in enumerate(refs[kind]))
        print(f"  {kind:8}: 逐步最大差 {diff:.1e}（容差 1e-12，实际应逐位相同）；"
              f"f(warmup)={f(warmup):.3f}，f(total-1)={f(total - 1):.3f}")
        assert diff < 1e-12
    # 终点的预期：余弦到 total 时恰好是 min_lr_ratio（total−1 还差一点点）；WSD 的 1-sqrt 同理；
    # 逆平方根没有终点，total−1 处是 1/sqrt((total−1)/warmup)
    print(f"  预期 f(total-1)：cosine、wsd ≈ min_lr_ratio = 0.1，inv_sqrt = 1/sqrt({total - 1}/{warmup}) = "
          f"{1 / ((total - 1) / warmup) ** 0.5:.3f}")

    fig, ax = plt.subplots(figsize=(8, 4))
    steps = range(total)  # 第 step 次更新用的倍数，从 0 开始（HF 约定 f(0) = 0：第一步不更新）
    for kind, f in ours.items():
        ax.plot(steps, [f(s) for s in steps], label=kind)
    ax.set(xlabel="optimizer step (from 0)", ylabel="lr multiplier f(step)",
           title=f"LR schedules (warmup={warmup}, total={total})")
    ax.legend()
    fig.tight_layout()
    print(f"  图：{save_figure(fig, 'lr_schedules.png', dpi=120)}")


if __name__ == "__main__":
    lesson_args(__doc__)
    main()
