"""整条训练步（累积 → unscale → 裁剪 → step → update → 调度）：我们的组件 vs PyTorch/HF 的组件，逐步参数相同。"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from transformers import optimization as hf

from training_sys.optimization import (
    AdamW,
    DynamicLossScaler,
    accumulate_gradients,
    autocast_context,
    clip_grad_norm,
    cosine_schedule,
    split_micro_batches,
)
from training_sys.optimization.grad_accumulation import TinyLM


def reference_step(model, opt, scaler, sched, micro_batches):
    total = sum(int((y != -100).sum()) for _, y in micro_batches)
    for x, y in micro_batches:
        loss = F.cross_entropy(model(x).flatten(0, 1), y.flatten(), reduction="sum") / total
        scaler.scale(loss).backward()
    scaler.unscale_(opt)
    norm = torch.nn.utils.clip_grad_norm_(model.parameters(), 0.5)
    scaler.step(opt)
    scaler.update()
    sched.step()
    return norm


def test_full_training_step_matches_reference_stack():
    torch.manual_seed(0)
    ours_model, ref_model = TinyLM(40, 16), TinyLM(40, 16)
    ref_model.load_state_dict(ours_model.state_dict())
    ours_opt = AdamW(ours_model.parameters(), lr=3e-3, weight_decay=0.1)
    ref_opt = torch.optim.AdamW(ref_model.parameters(), lr=3e-3, weight_decay=0.1)
    ours_sched = torch.optim.lr_scheduler.LambdaLR(ours_opt, cosine_schedule(2, 8, min_lr_ratio=0.1))
    ref_sched = hf.get_cosine_with_min_lr_schedule_with_warmup(ref_opt, 2, 8, min_lr_rate=0.1)
    # fp32 下 scale 是 2 的幂，乘除都精确：两边的 scaler 都在真实地工作，而结果仍可逐步对照
    ours_scaler = DynamicLossScaler(init_scale=2.0**10, growth_interval=2)
    ref_scaler = torch.amp.GradScaler("cpu", init_scale=2.0**10, growth_interval=2)
    gen = torch.Generator().manual_seed(1)
    for _ in range(8):
        x, y = torch.randint(0, 40, (4, 6), generator=gen), torch.randint(0, 40, (4, 6), generator=gen)
        y[0, 3:] = -100
        mb = split_micro_batches(x, y, 2)
        ours_opt.zero_grad()
        ref_opt.zero_grad()
        accumulate_gradients(ours_model, mb, scaler=ours_scaler)
        ours_scaler.unscale_(ours_opt)
        ours_norm = clip_grad_norm(ours_model.parameters(), 0.5)
        ours_scaler.step(ours_opt)
        ours_scaler.update()
        ours_sched.step()
        ref_norm = reference_step(ref_model, ref_opt, ref_scaler, ref_sched, mb)
        torch.testing.assert_close(ours_norm, ref_norm, rtol=1e-5, atol=1e-7)
        assert ours_scaler.get_scale() == ref_scaler.get_scale()
        assert ours_opt.param_groups[0]["lr"] == pytest.approx(ref_opt.param_groups[0]["lr"])
    for a, b in zip(ours_model.parameters(), ref_model.parameters()):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-6)


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_low_precision_training_reduces_loss(precision):
    torch.manual_seed(0)
    model = TinyLM(20, 16)
    opt = AdamW(model.parameters(), lr=1e-2, weight_decay=0.0)
    scaler = DynamicLossScaler(enabled=precision == "fp16")
    x = torch.randint(0, 20, (8, 6))
    y = (x + 1) % 20                      # 可学的映射：下一个 token = 当前 + 1
    losses = []
    for _ in range(30):
        opt.zero_grad()
        losses.append(accumulate_gradients(model, split_micro_batches(x, y, 2), scaler=scaler,
                                           autocast=lambda: autocast_context(precision)).item())
        scaler.unscale_(opt)
        clip_grad_norm(model.parameters(), 1.0)
        scaler.step(opt)
        scaler.update()
    assert losses[-1] < 0.5 * losses[0]
