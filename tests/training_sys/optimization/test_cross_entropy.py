"""从零实现的交叉熵对照 F.cross_entropy（值与梯度）；z-loss 对照直接转写；gradcheck；数值稳定；坏输入。"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from training_sys.optimization.cross_entropy_loss import cross_entropy


def pair(shape, scale=3.0, seed=0, dtype=torch.float32):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(shape, generator=gen, dtype=torch.float32).mul(scale).to(dtype)
    return x.clone().requires_grad_(), x.clone().requires_grad_()


@pytest.mark.parametrize("shape", [(13, 7), (2, 9, 31), (1, 1, 1, 5)])
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("label_smoothing", [0.0, 0.1, 1.0])
@pytest.mark.parametrize("ignore_index", [-100, 2])
def test_matches_f_cross_entropy(shape, reduction, label_smoothing, ignore_index):
    x1, x2 = pair(shape)
    C = shape[-1]
    gen = torch.Generator().manual_seed(1)
    target = torch.randint(0, C, shape[:-1], generator=gen)
    if target.numel() > 2:
        target.view(-1)[::3] = ignore_index if ignore_index < 0 else target.view(-1)[::3]
    ours = cross_entropy(x1, target, ignore_index=ignore_index, label_smoothing=label_smoothing, reduction=reduction)
    ref = F.cross_entropy(x2.reshape(-1, C), target.reshape(-1), ignore_index=ignore_index,
                          label_smoothing=label_smoothing, reduction=reduction)
    ref = ref.reshape(target.shape) if reduction == "none" else ref
    torch.testing.assert_close(ours, ref, rtol=1e-6, atol=1e-6)
    w = torch.randn(ours.shape, generator=gen)
    (ours * w).sum().backward()
    (ref * w).sum().backward()
    torch.testing.assert_close(x1.grad, x2.grad, rtol=1e-5, atol=1e-7)


def test_z_loss_matches_transcription():
    x1, x2 = pair((4, 6, 11))
    target = torch.randint(0, 11, (4, 6))
    target[0, :2] = -100
    valid = target != -100
    ours = cross_entropy(x1, target, z_loss=1e-2, label_smoothing=0.1)
    lse = torch.logsumexp(x2, -1)
    ref = F.cross_entropy(x2.reshape(-1, 11), target.reshape(-1), label_smoothing=0.1) + \
        1e-2 * (lse.square() * valid).sum() / valid.sum()
    torch.testing.assert_close(ours, ref)
    ours.backward()
    ref.backward()
    torch.testing.assert_close(x1.grad, x2.grad, rtol=1e-5, atol=1e-7)


def test_gradcheck_fp64():
    x = torch.randn(5, 7, dtype=torch.float64, requires_grad=True)
    t = torch.tensor([0, 6, -100, 3, 3])
    for kw in (dict(), dict(label_smoothing=0.2, z_loss=0.05), dict(reduction="none", z_loss=0.1)):
        assert torch.autograd.gradcheck(lambda a: cross_entropy(a, t, **kw), (x,))


def test_bf16_logits_match_fp32_reference_on_upcast():
    x1, x2 = pair((3, 8, 40), dtype=torch.bfloat16)
    target = torch.randint(0, 40, (3, 8))
    ours = cross_entropy(x1, target)
    ref = F.cross_entropy(x2.float().reshape(-1, 40), target.reshape(-1))
    assert ours.dtype == torch.float32
    torch.testing.assert_close(ours, ref, rtol=1e-6, atol=1e-6)
    ours.backward()
    ref.backward()
    assert x1.grad.dtype == torch.bfloat16
    torch.testing.assert_close(x1.grad, x2.grad)


def test_extreme_logits_stay_finite_and_all_ignored_is_nan():
    x = torch.tensor([[1000.0, 0.0, -1000.0], [-1e4, 1e4, 0.0]], requires_grad=True)
    t = torch.tensor([1, 0])
    loss = cross_entropy(x, t)
    torch.testing.assert_close(loss, F.cross_entropy(x, t))
    loss.backward()
    assert torch.isfinite(x.grad).all()
    all_ignored = cross_entropy(torch.randn(3, 4), torch.full((3,), -100))
    assert all_ignored.isnan() and F.cross_entropy(torch.randn(3, 4), torch.full((3,), -100)).isnan()


@pytest.mark.parametrize("logits, target, kw, match", [
    (torch.randn(4, 5), torch.tensor([0, 1, 2, 5]), {}, r"\[0, 5\)"),
    (torch.randn(4, 5), torch.tensor([0, 1, -3, 2]), {}, "超出"),
    (torch.randn(4, 5), torch.tensor([0, 1, 2]), {}, "形状不匹配"),
    (torch.randn(4, 5), torch.zeros(4), {}, "dtype"),
    (torch.randn(4, 5), torch.zeros(4, dtype=torch.long), dict(reduction="avg"), "reduction"),
    (torch.randn(4, 5), torch.zeros(4, dtype=torch.long), dict(label_smoothing=1.5), "label_smoothing"),
    (torch.randn(4, 5), torch.zeros(4, dtype=torch.long), dict(z_loss=-1.0), "z_loss"),
])
def test_bad_input(logits, target, kw, match):
    with pytest.raises(ValueError, match=match):
        cross_entropy(logits, target, **kw)
