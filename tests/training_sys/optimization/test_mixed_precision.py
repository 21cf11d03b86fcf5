"""DynamicLossScaler 对照 torch.amp.GradScaler("cpu")：逐步比较 scale、跳步与参数（注入 inf/NaN）；用法顺序与坏输入。"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from training_sys.optimization import (
    PRECISION_ALIASES,
    PRECISIONS,
    DynamicLossScaler,
    autocast_context,
    canonical_precision,
    clip_grad_norm,
    precision_dtype,
)
from training_sys.optimization.mixed_precision import run_fp16_training


def test_matches_grad_scaler_step_by_step_with_injected_inf():
    cfg = dict(init_scale=2.0**12, growth_interval=2, backoff_factor=0.25, growth_factor=4.0)
    steps, bad = 14, {1, 2, 6, 11}
    ours_model, ours_hist = run_fp16_training(DynamicLossScaler(**cfg), steps, bad)
    ref_model, ref_hist = run_fp16_training(torch.amp.GradScaler("cpu", **cfg), steps, bad)
    assert ours_hist == ref_hist
    assert [skipped for _, skipped in ours_hist] == [i in bad for i in range(steps)]
    for a, b in zip(ours_model.parameters(), ref_model.parameters()):
        assert torch.equal(a, b)


def build(seed=0):
    torch.manual_seed(seed)
    model = nn.Linear(6, 3)
    return model, torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)


@pytest.mark.parametrize("poison", [float("nan"), float("inf")])
def test_unscale_clip_step_update_sequence_matches(poison):
    """scale → backward → unscale_ → 裁剪 → step → update，逐步比较 scale、growth tracker、state_dict 与参数。"""
    (m1, o1), (m2, o2) = build(), build()
    ours, ref = DynamicLossScaler(init_scale=8.0, growth_interval=3), torch.amp.GradScaler("cpu", init_scale=8.0,
                                                                                          growth_interval=3)
    gen = torch.Generator().manual_seed(0)
    for step in range(12):
        x = torch.randn(4, 6, generator=gen)
        for model, opt, scaler in ((m1, o1, ours), (m2, o2, ref)):
            opt.zero_grad()
            scaler.scale(model(x).square().mean()).backward()
            if step in (4, 5):
                model.bias.grad[1] = poison
            scaler.unscale_(opt)
            clip = clip_grad_norm if scaler is ours else torch.nn.utils.clip_grad_norm_
            clip(model.parameters(), 0.5)
            scaler.step(opt)
            scaler.update()
        assert ours.get_scale() == ref.get_scale()
        assert ours.state_dict() == ref.state_dict()
        for a, b in zip(m1.parameters(), m2.parameters()):
            assert torch.equal(a, b)
    assert ours.skipped_steps == 2


def test_state_dict_loads_from_grad_scaler():
    ref = torch.amp.GradScaler("cpu", init_scale=2.0**5, growth_interval=7)
    model, opt = build()
    ref.scale(model(torch.randn(2, 6)).sum()).backward()
    ref.step(opt)
    ref.update()
    ours = DynamicLossScaler()
    ours.load_state_dict(ref.state_dict())
    assert ours.state_dict() == ref.state_dict()


@pytest.mark.parametrize("loss", [torch.tensor(0.5, dtype=torch.float16), torch.full((3,), 0.5, dtype=torch.float16),
                                  torch.tensor(0.5)])
def test_scale_value_and_dtype_match_grad_scaler(loss):
    out = DynamicLossScaler(init_scale=1024.0).scale(loss)
    ref = torch.amp.GradScaler("cpu", init_scale=1024.0).scale(loss)
    assert out.dtype == ref.dtype and torch.equal(out, ref) and out.flatten()[0].item() == 512.0


def test_growth_stops_at_fp32_overflow():
    scaler = DynamicLossScaler(init_scale=2.0**127, growth_interval=1)
    model, opt = build()
    for _ in range(2):
        opt.zero_grad()
        model.weight.grad = torch.zeros_like(model.weight)
        scaler.step(opt)
        scaler.update()
    assert scaler.get_scale() == 2.0**127


def test_usage_order_errors():
    scaler = DynamicLossScaler()
    model, opt = build()
    with pytest.raises(RuntimeError, match="update"):
        scaler.update()
    scaler.scale(model(torch.randn(2, 6)).sum()).backward()
    scaler.unscale_(opt)
    with pytest.raises(RuntimeError, match="已经"):
        scaler.unscale_(opt)
    scaler.step(opt)
    with pytest.raises(RuntimeError, match="step"):
        scaler.unscale_(opt)
    with pytest.raises(RuntimeError, match="update"):
        scaler.step(opt)


def test_disabled_scaler_is_identity():
    scaler = DynamicLossScaler(enabled=False)
    model, opt = build()
    loss = model(torch.randn(2, 6)).sum()
    assert scaler.scale(loss) is loss
    loss.backward()
    before = model.weight.detach().clone()
    scaler.step(opt)
    scaler.update()
    assert not torch.equal(before, model.weight) and scaler.get_scale() == 1.0 and scaler.state_dict() == {}


@pytest.mark.parametrize("kwargs, match", [(dict(init_scale=0.0), "init_scale"), (dict(growth_factor=1.0), "growth"),
                                           (dict(backoff_factor=1.0), "backoff"),
                                           (dict(growth_interval=0), "interval")])
def test_bad_input(kwargs, match):
    with pytest.raises(ValueError, match=match):
        DynamicLossScaler(**kwargs)


def test_autocast_context():
    lin = nn.Linear(4, 4)
    x = torch.randn(2, 4)
    # 正式名字与简写是同一个精度
    for name in ("bfloat16", "bf16"):
        with autocast_context(name):
            assert lin(x).dtype == torch.bfloat16
    for name in ("float32", "fp32"):
        with autocast_context(name):
            assert lin(x).dtype == torch.float32
    with pytest.raises(ValueError, match="fp8"):
        autocast_context("fp8")


def test_one_precision_vocabulary():
    # 正式名字就是 torch.dtype 的属性名；每个简写都映射到一个正式名字，映射是明确的而不是被忽略
    assert PRECISIONS == ("float32", "bfloat16", "float16")
    for name in PRECISIONS:
        assert canonical_precision(name) == name and precision_dtype(name) == getattr(torch, name)
    assert {a: canonical_precision(a) for a in PRECISION_ALIASES} == {"fp32": "float32", "bf16": "bfloat16",
                                                                     "fp16": "float16"}
    assert precision_dtype("fp16") is torch.float16
    # 报错信息同时列出正式名字与简写，告诉用户该写什么
    with pytest.raises(ValueError, match=r"'half'.*bfloat16.*bf16 = bfloat16"):
        canonical_precision("half")
