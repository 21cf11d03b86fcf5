"""混合精度：bf16 autocast，以及 fp16 训练必需的动态 loss scaling（从零实现，与 torch.amp.GradScaler 逐步相同）。

运行：python training_sys/optimization/mixed_precision.py   （或 python -m training_sys.optimization.mixed_precision；SMOKE=1 几秒跑完）

autocast：前向里矩阵乘、卷积这类"算得多、对精度不敏感"的算子用 16 位算（Tensor Core 快 2~16 倍、激活省一半显存），
softmax、log、求和、loss 这类"对精度敏感"的算子自动留在 fp32；权重本身（master weights）与优化器状态始终是 fp32。

bf16 与 fp16 的区别只在指数与尾数的分配：
    fp32: 8 位指数 + 23 位尾数，范围 ~1.2e-38（最小正规数）.. 3.4e38
    bf16: 8 位指数 +  7 位尾数，范围与 fp32 相同，精度只有 8 位有效二进制位（eps = 2^-7，约 2–3 位十进制有效数字）
    fp16: 5 位指数 + 10 位尾数，最大 65504，最小正规数 2^-14 ≈ 6.1e-5，最小正（次正规）数 2^-24 ≈ 6e-8
          （比 2^-25 还小的数舍入成 0；恰好 2^-25 按"就近取偶"也成 0）
bf16 的范围与 fp32 一样，梯度不会下溢，直接用就行（A100/H100 之后的 LLM 训练几乎都用 bf16）。

为什么 fp16 需要 loss scaling？反向传播里很多梯度的量级在 1e-8 以下（Micikevicius et al. 2018 的统计图），
在 fp16 里直接变成 0（下溢）——这些参数就再也学不到东西了。链式法则是线性的：把 loss 乘 S，
每个梯度都乘 S，整个梯度分布被平移进 fp16 的可表示范围；在优化器更新之前再除以 S（unscale），数值不变。
S 太大又会上溢成 inf，所以用"动态"策略：
- 每步检查 unscale 后的梯度：有 inf/NaN 就跳过这一步（不更新参数），并把 S 乘 backoff_factor（0.5）；
- 连续 growth_interval（2000）步都正常，就把 S 乘 growth_factor（2）试探更大的值。
于是 S 始终贴着"刚好不溢出"的上限，既不下溢也不频繁跳步。与梯度裁剪一起用时，必须先 unscale_ 再裁剪
（裁剪的阈值是对真实梯度而言的）：scaler.scale(loss).backward(); scaler.unscale_(opt); clip_grad_norm(...);
scaler.step(opt); scaler.update()——与 GradScaler 的用法完全相同，可以直接替换。
"""

from __future__ import annotations

import contextlib
import enum
import math

import torch
from torch import nn

from utils.io import is_smoke
from utils.lesson_cli import lesson_args
from utils.torch_playground import setup_seed

# 全仓库唯一的精度名单：名字与 torch.dtype 的属性名相同（torch.bfloat16 ↔ "bfloat16"），
# 预训练的 --dtype、端到端流水线与本文件的 autocast_context 都用它
PRECISIONS = ("float32", "bfloat16", "float16")
# 常见的简写（混合精度文献、DeepSpeed/Lightning 的配置里都这么写）：接受，并明确地换成正式名字
PRECISION_ALIASES = {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16"}


def canonical_precision(name: str) -> str:
    """精度名 → 正式名字（PRECISIONS 之一）；简写按 PRECISION_ALIASES 换算，其余一律报错，不会被悄悄忽略。"""
    if name in PRECISIONS:
        return name
    if name in PRECISION_ALIASES:
        return PRECISION_ALIASES[name]
    aliases = "、".join(f"{a} = {c}" for a, c in PRECISION_ALIASES.items())
    raise ValueError(f"精度 {name!r} 未知；可选 {PRECISIONS}（也接受简写：{aliases}）")


def precision_dtype(name: str) -> torch.dtype:
    """精度名（正式名字或简写）→ torch.dtype。"""
    return getattr(torch, canonical_precision(name))


def autocast_context(precision: str, device_type: str = "cpu"):
    """训练循环用的 autocast：precision 为 "float32"（不开）、"bfloat16" 或 "float16"（需配合 DynamicLossScaler）。

    也接受简写 fp32 / bf16 / fp16（见 PRECISION_ALIASES）。
    """
    dtype = precision_dtype(precision)
    if dtype == torch.float32:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device_type, dtype=dtype)


class _Stage(enum.Enum):
    READY = 0      # 本轮还没 unscale
    UNSCALED = 1   # 已 unscale_（梯度已除以 S），还没 step
    STEPPED = 2    # 已 step（或因 inf 跳过）


class DynamicLossScaler:
    """动态 loss scaler，接口与 torch.amp.GradScaler 相同：scale / unscale_ / step / update / get_scale / state_dict。

    额外记录 skipped_steps（因 inf/NaN 跳过的步数），训练日志里很有用。
    enabled=False 时所有方法退化为恒等（scale 返回原 loss，step 直接调用 optimizer.step），便于一套代码跑 fp32/bf16/fp16。
    """

    def __init__(self, init_scale: float = 2.0**16, growth_factor: float = 2.0, backoff_factor: float = 0.5,
                 growth_interval: int = 2000, enabled: bool = True):
        if not init_scale > 0:
            raise ValueError(f"init_scale={init_scale} 必须 > 0（常用 2**16）")
        if not growth_factor > 1.0:
            raise ValueError(f"growth_factor={growth_factor} 必须 > 1（常用 2.0）")
        if not 0.0 < backoff_factor < 1.0:
            raise ValueError(f"backoff_factor={backoff_factor} 必须在 (0, 1) 内（常用 0.5）")
        if not isinstance(growth_interval, int) or growth_interval < 1:
            raise ValueError(f"growth_interval={growth_interval!r} 必须是正整数（常用 2000）")
        self.enabled = enabled
        self.growth_factor, self.backoff_factor, self.growth_interval = growth_factor, backoff_factor, growth_interval
        self._scale = torch.tensor(float(init_scale))  # fp32 0-d 张量（与 GradScaler 相同，dtype 提升规则也就相同）
        self._growth_tracker = 0                        # 连续没有 inf 的步数
        self._per_optimizer: dict[int, dict] = {}
        self.skipped_steps = 0

    def _opt_state(self, optimizer) -> dict:
        return self._per_optimizer.setdefault(id(optimizer), {"stage": _Stage.READY, "found_inf": False})

    def scale(self, loss: torch.Tensor) -> torch.Tensor:
        """loss · S；对它 backward，得到的每个梯度都是真实梯度的 S 倍。"""
        if not self.enabled:
            return loss
        return loss * self._scale.to(loss.device)

    @torch.no_grad()
    def unscale_(self, optimizer: torch.optim.Optimizer) -> None:
        """把 optimizer 管的梯度除以 S，并记录其中是否有 inf/NaN。每轮（两次 update 之间）每个优化器最多一次。"""
        if not self.enabled:
            return
        state = self._opt_state(optimizer)
        if state["stage"] is _Stage.UNSCALED:
            raise RuntimeError("unscale_() 在本轮已经对这个优化器调用过；每次 update() 之前只能调用一次")
        if state["stage"] is _Stage.STEPPED:
            raise RuntimeError("unscale_() 在 step() 之后调用：顺序应为 scale→backward→unscale_→（裁剪）→step→update")
        # 1/S 先在 fp64 里求倒数再转 fp32（与 GradScaler 相同），S 是 2 的幂时 1/S 精确
        inv_scale = self._scale.double().reciprocal().float()
        found_inf = False
        for group in optimizer.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    continue
                if p.grad.is_sparse:
                    raise RuntimeError("DynamicLossScaler 不支持稀疏梯度")
                found_inf = found_inf or not bool(torch.isfinite(p.grad).all())
                p.grad.mul_(inv_scale.to(p.grad.device))   # 有 inf 也照乘：反正这一步会被跳过
        state["found_inf"], state["stage"] = found_inf, _Stage.UNSCALED

    def step(self, optimizer: torch.optim.Optimizer, *args, **kwargs):
        """没 unscale 就先 unscale；梯度全有限才真正 optimizer.step()，否则跳过（返回 None）。"""
        if not self.enabled:
            return optimizer.step(*args, **kwargs)
        state = self._opt_state(optimizer)
        if state["stage"] is _Stage.STEPPED:
            raise RuntimeError("step() 在本轮已经对这个优化器调用过；先调用 update()")
        if state["stage"] is _Stage.READY:
            self.unscale_(optimizer)
        result = None
        if state["found_inf"]:
            self.skipped_steps += 1
        else:
            result = optimizer.step(*args, **kwargs)
        state["stage"] = _Stage.STEPPED
        return result

    def update(self) -> None:
        """按本轮是否出现 inf 调整 S：出现 → S·backoff、计数清零；否则计数 +1，满 growth_interval → S·growth。"""
        if not self.enabled:
            return
        if not any(s["stage"] is not _Stage.READY for s in self._per_optimizer.values()):
            raise RuntimeError("update() 之前没有任何优化器做过 unscale_/step；顺序应为 scale→backward→step→update")
        found_inf = any(s["found_inf"] for s in self._per_optimizer.values())
        if found_inf:
            self._scale = self._scale * self.backoff_factor
            self._growth_tracker = 0
        else:
            self._growth_tracker += 1
            if self._growth_tracker == self.growth_interval:
                grown = self._scale * self.growth_factor
                if torch.isfinite(grown):  # fp32 的 S 本身溢出时不再增长
                    self._scale = grown
                self._growth_tracker = 0
        self._per_optimizer.clear()

    def get_scale(self) -> float:
        return self._scale.item() if self.enabled else 1.0

    def state_dict(self) -> dict:
        """与 GradScaler.state_dict() 相同的键，checkpoint 可以互相加载。"""
        if not self.enabled:
            return {}
        return {"scale": self.get_scale(), "growth_factor": self.growth_factor, "backoff_factor": self.backoff_factor,
                "growth_interval": self.growth_interval, "_growth_tracker": self._growth_tracker}

    def load_state_dict(self, state: dict) -> None:
        if not self.enabled:
            return
        if "scale" not in state:
            raise ValueError("state_dict 里没有 'scale'：它可能来自 enabled=False 的 scaler")
        self._scale = torch.tensor(float(state["scale"]))
        self.growth_factor, self.backoff_factor = state["growth_factor"], state["backoff_factor"]
        self.growth_interval, self._growth_tracker = state["growth_interval"], state["_growth_tracker"]


# ---------------------------------------------------------------------------
# 演示与对照
# ---------------------------------------------------------------------------
def _mlp() -> nn.Module:
    return nn.Sequential(nn.Linear(32, 64), nn.GELU(), nn.Linear(64, 8))


def run_fp16_training(scaler, steps: int, inf_steps: set[int], seed: int = 0):
    """fp16 autocast 训练一个小 MLP；在 inf_steps 这些步往梯度里注入 inf。返回 (模型, 每步的 (scale, 是否跳过))。"""
    setup_seed(seed)
    model = _mlp()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    history = []
    for step in range(steps):
        x, y = torch.randn(16, 32), torch.randn(16, 8)
        with autocast_context("float16"):
            loss = nn.functional.mse_loss(model(x).float(), y)
        opt.zero_grad()
        scaler.scale(loss).backward()
        if step in inf_steps:
            model[0].weight.grad[0, 0] = float("inf")
        before = model[2].bias.detach().clone()
        scaler.step(opt)
        skipped = torch.equal(before, model[2].bias.detach())
        scaler.update()
        history.append((scaler.get_scale(), skipped))
    return model, history


def fp16_underflow_fraction(log10_lo: float, log10_hi: float, scale: float = 1.0) -> float:
    """量级在 [10^lo, 10^hi] 上对数均匀分布的正数乘以 scale 后转 fp16，变成 0 的比例（理论值）。

    fp16 最小的次正规数是 2^-24；|x| ≤ 2^-25（半个最小步长）的数舍入到 0，所以比例 = 10^lo..2^-25/scale 这一段的占比。
    """
    threshold = math.log10(2.0**-25 / scale)
    return min(1.0, max(0.0, (threshold - log10_lo) / (log10_hi - log10_lo)))


def main() -> None:
    setup_seed()
    print("== 为什么 fp16 需要 loss scaling：量级 1e-10 .. 1e-2（对数均匀）的梯度转成 fp16 ==")
    grads = 10 ** torch.empty(100_000).uniform_(-10, -2)
    for s in (1.0, 2.0**16):
        zero = ((grads * s).half() == 0).float().mean().item()
        print(f"  S = {s:>7g}：下溢为 0 的比例 {zero:6.1%}（理论 {fp16_underflow_fraction(-10, -2, s):6.1%}："
              f"≤ 2^-25/S = {2.0**-25 / s:.1e} 的都变成 0）")

    steps = 12 if is_smoke() else 60
    inf_steps = {2, 7, 8}
    print(f"== DynamicLossScaler 对照 torch.amp.GradScaler('cpu')：fp16 autocast {steps} 步，"
          f"第 {sorted(inf_steps)} 步注入 inf ==")
    cfg = dict(init_scale=2.0**10, growth_interval=3)
    ours_model, ours_hist = run_fp16_training(DynamicLossScaler(**cfg), steps, inf_steps)
    ref_model, ref_hist = run_fp16_training(torch.amp.GradScaler("cpu", **cfg), steps, inf_steps)
    print("  步:  " + " ".join(f"{i:>6}" for i in range(min(steps, 12))))
    print("  S:   " + " ".join(f"{s:>6g}" for s, _ in ours_hist[:12]))
    print("  跳过:" + " ".join(f"{'是' if k else '':>5}" for _, k in ours_hist[:12]))
    diff = max((a - b).abs().max().item() for a, b in zip(ours_model.parameters(), ref_model.parameters()))
    print(f"  scale/跳步序列完全相同：{ours_hist == ref_hist}；参数最大差 {diff:.1e}（要求逐位相同 = 0）")
    assert ours_hist == ref_hist and diff == 0.0

    print("== bf16 autocast：不需要 scaler，loss 与 fp32 接近 ==")
    model, x, y = _mlp(), torch.randn(64, 32), torch.randn(64, 8)
    with autocast_context("bfloat16"):
        out = model(x)
    loss16 = nn.functional.mse_loss(out.float(), y).item()
    loss32 = nn.functional.mse_loss(model(x), y).item()
    rel = abs(loss16 - loss32) / loss32
    print(f"  autocast 内 Linear 输出 dtype {out.dtype}；loss bf16 {loss16:.4f} vs fp32 {loss32:.4f}（相对差 {rel:.1e}；"
          f"bf16 每次舍入的相对误差 ≤ 单位舍入 2^-8 ≈ 3.9e-3，误差有正有负、在 loss 的求平均里大半抵消）")


if __name__ == "__main__":
    lesson_args(__doc__)
    main()
