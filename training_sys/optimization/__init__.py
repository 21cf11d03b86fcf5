"""training_sys.optimization：从零实现的优化器、学习率调度、梯度裁剪、交叉熵与混合精度工具。

每个文件是一课（可直接运行，main() 对照 PyTorch 检查并打印报告）：
    adamw.py  sgd.py  lion.py  muon.py  schedules.py  clipping.py  cross_entropy_loss.py
    mixed_precision.py  grad_accumulation.py  activation_checkpointing.py
本文件是供训练循环使用的"门面"：

    from training_sys.optimization import (AdamW, SGD, Lion, Muon, build_muon_param_groups, weight_decay_param_groups,
                                           cosine_schedule, wsd_schedule, inv_sqrt_schedule, build_schedule,
                                           clip_grad_norm, cross_entropy, DynamicLossScaler, autocast_context,
                                           accumulate_gradients, split_micro_batches)

调度函数返回"step -> 学习率倍数"的函数，可直接交给 torch.optim.lr_scheduler.LambdaLR：
    scheduler = LambdaLR(optimizer, cosine_schedule(warmup_steps=100, total_steps=2000, min_lr_ratio=0.1))

一个训练步（fp16 时 scaler 生效；bf16/fp32 时传 DynamicLossScaler(enabled=False)，代码不变）：
    optimizer.zero_grad(set_to_none=True)
    loss = accumulate_gradients(model, split_micro_batches(x, y, k), scaler=scaler,
                                autocast=lambda: autocast_context("float16"))
    scaler.unscale_(optimizer)                       # 先还原真实梯度，再裁剪
    grad_norm = clip_grad_norm(model.parameters(), 1.0)
    scaler.step(optimizer); scaler.update(); scheduler.step()

交叉熵的模块叫 cross_entropy_loss.py 而不是 cross_entropy.py：子模块与函数同名时，
导入子模块会把包的 cross_entropy 属性覆盖成模块对象。
导入本包很便宜：真正的模块在第一次访问某个名字时才加载（PEP 562 的模块级 __getattr__，见 utils/lazy.py），
这样 `python -m training_sys.optimization.adamw` 也不会先把 adamw 当普通模块导入一遍。
"""

from __future__ import annotations

from utils.lazy import lazy_exports

# 公开名字 -> 定义它的模块（相对本包）
_EXPORTS = {
    "AdamW": "adamw",
    "adamw_update_": "adamw",
    "weight_decay_param_groups": "adamw",
    "SGD": "sgd",
    "Lion": "lion",
    "Muon": "muon",
    "build_muon_param_groups": "muon",
    "zeropower_via_newton_schulz": "muon",
    "cosine_schedule": "schedules",
    "wsd_schedule": "schedules",
    "inv_sqrt_schedule": "schedules",
    "build_schedule": "schedules",
    "SCHEDULE_KINDS": "schedules",
    "clip_grad_norm": "clipping",
    "cross_entropy": "cross_entropy_loss",  # 模块名与函数名不同：否则导入子模块会把包属性覆盖成模块
    "DynamicLossScaler": "mixed_precision",
    "autocast_context": "mixed_precision",
    "canonical_precision": "mixed_precision",
    "precision_dtype": "mixed_precision",
    "PRECISIONS": "mixed_precision",
    "PRECISION_ALIASES": "mixed_precision",
    "accumulate_gradients": "grad_accumulation",
    "split_micro_batches": "grad_accumulation",
    "checkpoint": "activation_checkpointing",
    "saved_activation_bytes": "activation_checkpointing",
}

__all__ = sorted(_EXPORTS)

__getattr__, __dir__ = lazy_exports(globals(), _EXPORTS, relative=True)
