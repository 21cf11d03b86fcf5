"""优化器超参数的检查：坏输入在构造时就给出"哪里错、怎么改"，而不是训练到一半出 NaN。"""

from __future__ import annotations

import math


def check_lr(lr: float, name: str = "lr") -> None:
    if not isinstance(lr, (int, float)) or isinstance(lr, bool) or not math.isfinite(lr) or lr < 0:
        raise ValueError(f"{name}={lr!r} 无效：学习率必须是 ≥ 0 的有限实数（常见取值 1e-4 ~ 1e-2）")


def check_betas(betas: tuple[float, ...], expected_len: int = 2) -> None:
    if not isinstance(betas, (tuple, list)) or len(betas) != expected_len:
        raise ValueError(f"betas={betas!r} 无效：需要 {expected_len} 个数的 tuple，例如 (0.9, 0.999)")
    for i, beta in enumerate(betas):
        if not isinstance(beta, (int, float)) or not 0.0 <= beta < 1.0:
            raise ValueError(f"betas[{i}]={beta!r} 不在 [0, 1) 内：β 是指数滑动平均的衰减率，β=1 时动量永不更新")


def check_eps(eps: float) -> None:
    if not isinstance(eps, (int, float)) or not eps > 0:
        raise ValueError(f"eps={eps!r} 必须 > 0：它防止除以 0（二阶矩为 0 的坐标），常用 1e-8")


def check_weight_decay(weight_decay: float) -> None:
    if not isinstance(weight_decay, (int, float)) or not weight_decay >= 0:
        raise ValueError(f"weight_decay={weight_decay!r} 必须 ≥ 0（0 表示不衰减，LLM 常用 0.1）")


def check_momentum(momentum: float, upper_open: bool = False) -> None:
    bad = not isinstance(momentum, (int, float)) or momentum < 0 or (upper_open and momentum >= 1)
    if bad:
        rng = "[0, 1)" if upper_open else "≥ 0"
        raise ValueError(f"momentum={momentum!r} 必须 {rng}（常用 0.9 或 0.95）")
