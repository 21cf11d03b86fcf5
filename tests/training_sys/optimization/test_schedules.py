"""学习率调度：逐步对照 transformers 的三种调度、与 LambdaLR 配合、性质测试（hypothesis）、坏输入。"""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from transformers import optimization as hf

from training_sys.optimization.schedules import build_schedule, cosine_schedule, inv_sqrt_schedule, wsd_schedule


def hf_multipliers(make, steps: int) -> list[float]:
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    sched = make(opt)
    out = []
    for _ in range(steps):
        out.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    return out


@pytest.mark.parametrize("warmup, total, min_ratio", [(0, 50, 0.0), (10, 100, 0.0), (10, 100, 0.1), (99, 100, 0.2)])
def test_cosine_matches_hf(warmup, total, min_ratio):
    f = cosine_schedule(warmup, total, min_lr_ratio=min_ratio)
    ref = hf_multipliers(lambda o: hf.get_cosine_with_min_lr_schedule_with_warmup(o, warmup, total,
                                                                                  min_lr_rate=min_ratio), total + 1)
    assert [f(s) for s in range(total + 1)] == pytest.approx(ref, abs=1e-12)


@pytest.mark.parametrize("decay_type", ["cosine", "linear", "1-sqrt"])
@pytest.mark.parametrize("warmup, total, decay, min_ratio", [(5, 100, 20, 0.0), (0, 60, 30, 0.1), (10, 40, 30, 0.05)])
def test_wsd_matches_hf(decay_type, warmup, total, decay, min_ratio):
    f = wsd_schedule(warmup, total, decay, min_lr_ratio=min_ratio, decay_type=decay_type)
    ref = hf_multipliers(lambda o: hf.get_wsd_schedule(o, warmup, decay, total, decay_type=decay_type,
                                                       min_lr_ratio=min_ratio), total + 5)
    assert [f(s) for s in range(total + 5)] == pytest.approx(ref, abs=1e-12)


@pytest.mark.parametrize("warmup, timescale", [(10, None), (0, None), (20, 50)])
def test_inv_sqrt_matches_hf(warmup, timescale):
    f = inv_sqrt_schedule(warmup, timescale)
    ref = hf_multipliers(lambda o: hf.get_inverse_sqrt_schedule(o, warmup, timescale), 300)
    assert [f(s) for s in range(300)] == pytest.approx(ref, abs=1e-12)


def test_schedule_drives_lambda_lr_and_survives_state_dict():
    p = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.AdamW([p], lr=3e-4)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, cosine_schedule(10, 100, min_lr_ratio=0.1))
    lrs = []
    for _ in range(100):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert lrs[0] == 0.0 and lrs[10] == pytest.approx(3e-4) and lrs[-1] == pytest.approx(3e-5, rel=1e-2)
    state = sched.state_dict()
    fresh = torch.optim.lr_scheduler.LambdaLR(torch.optim.AdamW([p], lr=3e-4), cosine_schedule(10, 100, 0.1))
    fresh.load_state_dict(state)
    assert fresh.last_epoch == 100


def test_cosine_stays_at_floor_after_total_steps():
    f = cosine_schedule(5, 50, min_lr_ratio=0.1)
    assert f(50) == pytest.approx(0.1) and f(500) == pytest.approx(0.1)


@settings(max_examples=60, deadline=None)
@given(warmup=st.integers(0, 200), extra=st.integers(1, 2000), min_ratio=st.floats(0.0, 1.0),
       kind=st.sampled_from(["cosine", "wsd"]))
def test_schedule_properties(warmup, extra, min_ratio, kind):
    total = warmup + extra
    f = build_schedule(kind, warmup_steps=warmup, total_steps=total, min_lr_ratio=min_ratio, decay_steps=extra // 2)
    values = [f(s) for s in range(0, total + 10, max(1, total // 200))]
    assert all(min(min_ratio, 0.0) - 1e-12 <= v <= 1.0 + 1e-12 for v in values)
    warm = [f(s) for s in range(warmup + 1)]
    assert all(a <= b + 1e-12 for a, b in zip(warm, warm[1:]))                 # 预热单调不减
    decay = [f(s) for s in range(warmup, total + 5)]
    assert all(a + 1e-12 >= b for a, b in zip(decay, decay[1:]))                # 之后单调不增
    assert f(warmup) == pytest.approx(1.0)                                     # 预热结束恰好到峰值
    assert f(total + 5) == pytest.approx(min_ratio)


@settings(max_examples=40, deadline=None)
@given(warmup=st.integers(1, 500), step=st.integers(0, 10**6))
def test_inv_sqrt_properties(warmup, step):
    f = inv_sqrt_schedule(warmup)
    assert 0.0 <= f(step) <= 1.0 + 1e-12
    if step >= warmup:
        assert f(step) == pytest.approx(math.sqrt(warmup / step))


@pytest.mark.parametrize("make, match", [
    (lambda: cosine_schedule(200, 100), "warmup_steps=200"),
    (lambda: build_schedule("linear", warmup_steps=1, total_steps=10), "linear"),
    (lambda: build_schedule("inv_sqrt", warmup_steps=20, total_steps=10), "warmup_steps=20"),
    (lambda: wsd_schedule(50, 100, decay_steps=60), "decay_steps=60"),
    (lambda: wsd_schedule(5, 100, decay_type="exp"), "decay_type"),
    (lambda: cosine_schedule(5, 100, min_lr_ratio=1.5), "min_lr_ratio"),
    (lambda: cosine_schedule(-1, 100), "warmup_steps=-1"),
    (lambda: cosine_schedule(0, 0), "total_steps"),
    (lambda: inv_sqrt_schedule(10, timescale=0), "timescale"),
    (lambda: cosine_schedule(1, 10)(-1), "step=-1"),
])
def test_schedule_bad_input(make, match):
    with pytest.raises(ValueError, match=match):
        make()
