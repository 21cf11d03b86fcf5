"""交叉熵内核与分块的 lm_head + 交叉熵：loss 与梯度对照 F.cross_entropy；分块路径从不物化 (N, V) 的 logits。"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch.utils._python_dispatch import TorchDispatchMode

from inference_engine.kernels.cross_entropy import (
    MIN_CHUNK,
    count_valid_targets,
    cross_entropy,
    cross_entropy_forward,
    default_chunk_size,
    linear_cross_entropy,
)
from inference_engine.kernels.runtime import KERNEL_DEVICE
from tests.conftest import requires_cuda

DEV = KERNEL_DEVICE


def _targets(n, vocab, ignore_every=3, dtype=torch.int64):
    t = torch.randint(0, vocab, (n,), device=DEV, dtype=dtype)
    if ignore_every:
        t[::ignore_every] = -100
    return t


def _ref_ce(logits, targets):
    """参考：模型里的写法（fp32 logits，类别维在最后摊平）。"""
    return F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), targets.reshape(-1), ignore_index=-100)


# ---------------------------------------------------------------------------------------------------
# cross_entropy
# ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("n, vocab, scale", [(5, 5, 1.0), (9, 1000, 3.0), (4, 50257, 2.0), (6, 4096, 30.0)])
def test_cross_entropy_loss_and_grad_match_torch(n, vocab, scale):
    """词表不是 2 的幂（1000、50257：最后一块靠掩码）、比一块小（5）、正好一块（4096）、logits 很大（×30）；有忽略的行。"""
    logits = (torch.randn(n, vocab, device=DEV) * scale).requires_grad_(True)
    targets = _targets(n, vocab)
    loss = cross_entropy(logits, targets)
    (grad,) = torch.autograd.grad(loss, logits)
    ref = _ref_ce(logits, targets)
    (ref_grad,) = torch.autograd.grad(ref, logits)
    assert loss.dtype == torch.float32 and loss.shape == ()
    # rtol 1e-6：logits ×30 时 loss 上百，fp32 在 128 以上的 1 ulp 就是 1.5e-5
    torch.testing.assert_close(loss, ref, atol=1e-5, rtol=1e-6)
    torch.testing.assert_close(grad, ref_grad, atol=1e-4, rtol=0)
    assert grad[targets == -100].abs().max() == 0  # 被忽略的行梯度恰好为 0


def test_cross_entropy_three_dim_int32_targets_and_large_offset():
    """(B, T, V) 配 (B, T)；int32 目标；所有 logits 加 1e4（在线 logsumexp 减去最大值，不会溢出）。"""
    logits = (torch.randn(2, 3, 777, device=DEV) + 1e4).requires_grad_(True)
    targets = _targets(6, 777, ignore_every=4, dtype=torch.int32).view(2, 3)
    loss = cross_entropy(logits, targets)
    loss.backward()
    ref_logits = logits.detach().clone().requires_grad_(True)
    ref = _ref_ce(ref_logits, targets.long())
    ref.backward()
    torch.testing.assert_close(loss, ref, atol=1e-5, rtol=0)
    torch.testing.assert_close(logits.grad, ref_logits.grad, atol=1e-4, rtol=0)


def test_online_logsumexp_keeps_running_max_across_blocks():
    """最大值在第一块、最后一块的 logits 小得多：m 必须是"到目前为止"的最大值，
    若只取当前块的最大值，exp(m_旧 − m_新) = exp(120) 在 fp32 里上溢成 inf。V = 20000 在 GPU 与解释器上都跨多块。"""
    vocab = 20000
    logits = torch.randn(3, vocab, device=DEV)
    logits[:, 0] = 60.0
    logits[:, 16384:] -= 60.0
    logits.requires_grad_(True)
    targets = torch.tensor([0, 5, vocab - 1], device=DEV)
    loss = cross_entropy(logits, targets)
    (grad,) = torch.autograd.grad(loss, logits)
    ref = _ref_ce(logits, targets)
    (ref_grad,) = torch.autograd.grad(ref, logits)
    torch.testing.assert_close(loss, ref, atol=1e-5, rtol=1e-6)
    torch.testing.assert_close(grad, ref_grad, atol=1e-4, rtol=0)


def test_cross_entropy_scales_by_upstream_grad_and_backward_twice():
    """反向 = 存下的梯度 × 上游梯度；retain_graph 时第二次反向得到同样的结果（存下的梯度没被原地改掉）。"""
    logits = torch.randn(5, 300, device=DEV, requires_grad=True)
    targets = _targets(5, 300)
    loss = cross_entropy(logits, targets) * 3.5
    g1 = torch.autograd.grad(loss, logits, retain_graph=True)[0]
    g2 = torch.autograd.grad(loss, logits)[0]
    ref = torch.autograd.grad(_ref_ce(logits, targets) * 3.5, logits)[0]
    torch.testing.assert_close(g1, ref, atol=1e-4, rtol=0)
    assert torch.equal(g1, g2)


def test_cross_entropy_all_ignored_is_nan_with_zero_grads_like_torch():
    logits = torch.randn(4, 100, device=DEV, requires_grad=True)
    targets = torch.full((4,), -100, device=DEV)
    loss = cross_entropy(logits, targets)
    ref = _ref_ce(logits, targets)
    assert torch.isnan(loss) and torch.isnan(ref)  # PyTorch 的 mean 归约：0/0
    (loss * 0).backward(retain_graph=True)          # 训练器把这种 loss 乘 0：梯度必须是有限的 0
    assert torch.equal(logits.grad, torch.zeros_like(logits))
    logits.grad = None
    loss.backward()
    assert torch.equal(logits.grad, torch.zeros_like(logits))


def test_cross_entropy_without_grad():
    """logits 不需要梯度 / no_grad 下：只算 loss（内核不写梯度，也不分配梯度缓冲）。"""
    logits = torch.randn(6, 1000, device=DEV)
    targets = _targets(6, 1000)
    ref = _ref_ce(logits, targets)
    torch.testing.assert_close(cross_entropy(logits, targets), ref, atol=1e-5, rtol=0)
    with torch.no_grad():
        out = cross_entropy(logits.requires_grad_(True), targets)
    assert not out.requires_grad
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=0)


def test_launcher_in_place_grad_equals_separate_buffer():
    """grad=logits 时内核就地把 logits 覆盖成梯度（每块先读后写），与写进另一块缓冲的结果逐位相同。"""
    logits = torch.randn(7, 2000, device=DEV) * 4
    targets = _targets(7, 2000)
    separate = torch.empty_like(logits)
    rows = cross_entropy_forward(logits, targets, grad=separate, grad_scale=0.25)
    in_place = logits.clone()
    rows2 = cross_entropy_forward(in_place, targets, grad=in_place, grad_scale=0.25)
    assert torch.equal(separate, in_place) and torch.equal(rows, rows2)
    ref_rows = F.cross_entropy(logits, targets, ignore_index=-100, reduction="none")
    torch.testing.assert_close(rows, ref_rows, atol=1e-5, rtol=0)
    ref_grad = (torch.softmax(logits, -1) - F.one_hot(targets.clamp(min=0), 2000)) * 0.25
    ref_grad[targets == -100] = 0
    torch.testing.assert_close(separate, ref_grad, atol=1e-6, rtol=0)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_cross_entropy_low_precision_logits_compute_in_fp32(dtype):
    """bf16/fp16 的 logits：内核升到 fp32 算，loss 等于 fp32 里对同样数值算的交叉熵（1e-5）；
    梯度以 logits 的 dtype 写回，与 fp32 参考只差一次舍入（解释器存 bf16 是截断，也在 1 ulp 内）。"""
    logits = (torch.randn(6, 1000, device=DEV) * 3).to(dtype).requires_grad_(True)
    targets = _targets(6, 1000)
    loss = cross_entropy(logits, targets)
    (grad,) = torch.autograd.grad(loss, logits)
    exact = logits.detach().float().requires_grad_(True)
    ref = _ref_ce(exact, targets)
    (ref_grad,) = torch.autograd.grad(ref, exact)
    assert loss.dtype == torch.float32 and grad.dtype == dtype
    torch.testing.assert_close(loss, ref, atol=1e-5, rtol=0)
    ulp = 2.0**-7 if dtype == torch.bfloat16 else 2.0**-10
    torch.testing.assert_close(grad.float(), ref_grad, atol=1e-7, rtol=ulp)


@pytest.mark.parametrize("make, match", [
    (lambda: (torch.randn(3, 10), torch.tensor([0, 10, 1])), "超出词表"),
    (lambda: (torch.randn(3, 10), torch.tensor([0, -5, 1])), "超出词表"),
    (lambda: (torch.randn(3, 10), torch.tensor([0, 1])), "targets 的形状"),
    (lambda: (torch.randn(10, 3).t(), torch.tensor([0, 1, 2])), "连续"),
    (lambda: (torch.randn(3, 10), torch.tensor([0.0, 1.0, 2.0])), "dtype"),
    (lambda: (torch.randint(0, 5, (3, 10)), torch.tensor([0, 1, 2])), "dtype"),
    (lambda: (torch.randn(3, 0), torch.tensor([0, 1, 2])), "V ≥ 1"),
])
def test_cross_entropy_bad_input(make, match):
    logits, targets = make()
    with pytest.raises(ValueError, match=match):
        cross_entropy(logits.to(DEV), targets.to(DEV))


def test_count_valid_targets():
    t = torch.tensor([3, -100, 0, 9, -100], device=DEV)
    assert count_valid_targets(t, 10) == 3
    assert count_valid_targets(torch.tensor([3, 0, 9], device=DEV), 10, ignore_index=9) == 2
    with pytest.raises(ValueError, match="target 9"):
        count_valid_targets(t, 9)


# ---------------------------------------------------------------------------------------------------
# linear_cross_entropy
# ---------------------------------------------------------------------------------------------------


def _lm_problem(shape=(37,), c=24, vocab=1000, ignore_every=5):
    hidden = torch.randn(*shape, c, device=DEV, requires_grad=True)
    weight = (torch.randn(vocab, c, device=DEV) / c**0.5).requires_grad_(True)
    n = 1
    for s in shape:
        n *= s
    targets = _targets(n, vocab, ignore_every).view(shape)
    return hidden, weight, targets


def _ref_linear(hidden, weight, targets):
    loss = _ref_ce(hidden @ weight.T, targets)
    return (loss, *torch.autograd.grad(loss, (hidden, weight)))


@pytest.mark.parametrize("shape, chunk", [((37,), None), ((37,), 1), ((37,), 8), ((37,), 1000), ((3, 11), 5)])
def test_linear_cross_entropy_matches_torch(shape, chunk):
    """(N, C) 与 (B, T, C)；chunk 为 1、不整除 N、大于 N、默认；loss 1e-5，∂hidden 与 ∂weight 1e-4。"""
    hidden, weight, targets = _lm_problem(shape)
    loss = linear_cross_entropy(hidden, weight, targets, chunk_size=chunk)
    gh, gw = torch.autograd.grad(loss, (hidden, weight))
    ref, rh, rw = _ref_linear(hidden, weight, targets)
    assert loss.dtype == torch.float32 and gh.shape == hidden.shape and gw.shape == weight.shape
    torch.testing.assert_close(loss, ref, atol=1e-5, rtol=0)
    torch.testing.assert_close(gh, rh, atol=1e-4, rtol=0)
    torch.testing.assert_close(gw, rw, atol=1e-4, rtol=0)


def test_linear_cross_entropy_large_vocab_and_upstream_grad():
    """V = 50257（多块、最后一块不满）；上游梯度 0.5（梯度累积的 1/k）按比例缩放两个梯度。"""
    hidden, weight, targets = _lm_problem((6,), c=8, vocab=50257, ignore_every=4)
    loss = linear_cross_entropy(hidden, weight, targets, chunk_size=4)
    gh, gw = torch.autograd.grad(loss * 0.5, (hidden, weight))
    ref, rh, rw = _ref_linear(hidden, weight, targets)
    torch.testing.assert_close(loss, ref, atol=1e-5, rtol=0)
    torch.testing.assert_close(gh, rh * 0.5, atol=1e-4, rtol=0)
    torch.testing.assert_close(gw, rw * 0.5, atol=1e-4, rtol=0)


def test_linear_cross_entropy_all_ignored():
    """全部忽略：loss 与 F.cross_entropy 一样是 NaN；梯度是有限的 0，乘 0 之后也是 0。"""
    hidden, weight, targets = _lm_problem((2, 5), ignore_every=0)
    targets.fill_(-100)
    loss = linear_cross_entropy(hidden, weight, targets, chunk_size=3)
    assert torch.isnan(loss) and torch.isnan(_ref_ce(hidden @ weight.T, targets))
    (loss * 0).backward()
    assert torch.equal(hidden.grad, torch.zeros_like(hidden))
    assert torch.equal(weight.grad, torch.zeros_like(weight))


@pytest.mark.parametrize("which", ["hidden_only", "weight_only", "neither", "no_grad"])
def test_linear_cross_entropy_partial_requires_grad(which):
    """weight 冻结（只训练主干）、hidden 不需要梯度（只训练 lm_head）、都不需要、no_grad：结果不变，只算要的梯度。"""
    hidden, weight, targets = _lm_problem((20,))
    ref, rh, rw = _ref_linear(hidden, weight, targets)
    h = hidden.detach().requires_grad_(which == "hidden_only")
    w = weight.detach().requires_grad_(which == "weight_only")
    if which == "no_grad":
        with torch.no_grad():
            loss = linear_cross_entropy(h.requires_grad_(True), w.requires_grad_(True), targets, chunk_size=6)
        assert not loss.requires_grad
    else:
        loss = linear_cross_entropy(h, w, targets, chunk_size=6)
    torch.testing.assert_close(loss, ref, atol=1e-5, rtol=0)
    if which in ("hidden_only", "weight_only"):
        loss.backward()
        assert (h.grad is None) == (which == "weight_only") and (w.grad is None) == (which == "hidden_only")
        if h.grad is not None:
            torch.testing.assert_close(h.grad, rh, atol=1e-4, rtol=0)
        if w.grad is not None:
            torch.testing.assert_close(w.grad, rw, atol=1e-4, rtol=0)
    else:
        assert not loss.requires_grad


class _AllocationRecorder(TorchDispatchMode):
    """记录前向 + 反向中每个算子新分配的张量形状（内核的输出缓冲也是用 torch.empty 分配的，同样被记下；
    转置之类的视图不分配内存，不记）。"""

    def __init__(self):
        super().__init__()
        self.shapes = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        if func.is_view:
            return out
        for t in out if isinstance(out, (tuple, list)) else (out,):
            if isinstance(t, torch.Tensor):
                self.shapes.append(tuple(t.shape))
        return out


def test_linear_cross_entropy_never_materializes_full_logits():
    """分块路径里最大的 (·, V) 张量只有 chunk 行；作为对照，参考写法确实分配了 (N, V)。"""
    n, c, vocab, chunk = 64, 16, 1000, 8
    hidden, weight, targets = _lm_problem((n,), c=c, vocab=vocab)

    def biggest_logits_rows(fn):
        rec = _AllocationRecorder()
        with rec:
            loss = fn()
            loss.backward()
        # (rows, V) 形状的张量（logits 与它的梯度）；(V, C) 的 ∂weight 不算
        return max(s[0] for s in rec.shapes if len(s) == 2 and s[1] == vocab)

    assert biggest_logits_rows(lambda: linear_cross_entropy(hidden, weight, targets, chunk_size=chunk)) == chunk
    assert biggest_logits_rows(lambda: _ref_ce(hidden @ weight.T, targets)) == n


def test_default_chunk_size():
    """一块 logits ≤ hidden 的大小（chunk·V ≤ N·C），2 的幂，下限 64 行，上限 N。"""
    assert default_chunk_size(8 * 2048, 4096, 32000) == 2048     # N·C/V = 2097 → 2048
    assert default_chunk_size(16384, 4096, 128256) == 512        # Llama-3 词表：523 → 512
    assert default_chunk_size(2048, 256, 32000) == MIN_CHUNK     # 16 行太小，取下限
    assert default_chunk_size(10, 4096, 32000) == 10             # 不超过 N
    assert default_chunk_size(1, 8, 1000) == 1
    for n, c, v in [(1000, 512, 1000), (4096, 1024, 50257), (123, 4096, 32000)]:
        k = default_chunk_size(n, c, v)
        assert 1 <= k <= n and k & (k - 1) == 0 or k == n
        assert k * v <= max(n * c, MIN_CHUNK * v)


@pytest.mark.parametrize("make, match", [
    (lambda h, w, t: (h[..., :10], w, t), "不是连续|最后一维"),
    (lambda h, w, t: (h.contiguous()[..., :10].contiguous(), w, t), "最后一维"),
    (lambda h, w, t: (h, w.double(), t), "dtype"),
    (lambda h, w, t: (h, w, t[:-1]), "targets 的形状"),
    (lambda h, w, t: (h, w, t.float()), "dtype"),
    (lambda h, w, t: (h, w, t.masked_fill(t == -100, 5000)), "超出词表"),
    (lambda h, w, t: (h[None, None], w, t[None, None]), r"\(N, C\) 或 \(B, T, C\)"),
    (lambda h, w, t: (h, w.t().contiguous().t(), t), "连续"),
])
def test_linear_cross_entropy_bad_input(make, match):
    hidden, weight, targets = _lm_problem((12,))
    h, w, t = make(hidden.detach(), weight.detach(), targets)
    with pytest.raises(ValueError, match=match):
        linear_cross_entropy(h, w, t)


@pytest.mark.parametrize("chunk", [0, -3, 2.5, True])
def test_linear_cross_entropy_bad_chunk_size(chunk):
    hidden, weight, targets = _lm_problem((12,))
    with pytest.raises(ValueError, match="chunk_size"):
        linear_cross_entropy(hidden, weight, targets, chunk_size=chunk)


# ---------------------------------------------------------------------------------------------------
# GPU：低精度的误差 ≤ 2 × PyTorch 自己在同一低精度下的误差（+ 一点绝对余量）
# ---------------------------------------------------------------------------------------------------


def _err(a, b):
    return (a.float() - b.float()).abs().max().item()


@requires_cuda
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_cross_entropy_low_precision_within_twice_torch(dtype):
    logits32 = torch.randn(64, 50257, device=DEV) * 4
    targets = _targets(64, 50257)
    l32 = logits32.clone().requires_grad_(True)
    ref = _ref_ce(l32, targets)
    (ref_g,) = torch.autograd.grad(ref, l32)
    low = logits32.to(dtype).requires_grad_(True)
    ours = cross_entropy(low, targets)
    (ours_g,) = torch.autograd.grad(ours, low)
    low_t = logits32.to(dtype).requires_grad_(True)
    torch_loss = F.cross_entropy(low_t, targets, ignore_index=-100)  # PyTorch 直接在低精度里算
    (torch_g,) = torch.autograd.grad(torch_loss, low_t)
    assert ours_g.dtype == dtype
    assert _err(ours, ref) <= 2 * _err(torch_loss, ref) + 1e-4
    assert _err(ours_g, ref_g) <= 2 * _err(torch_g, ref_g) + 1e-6


@requires_cuda
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_linear_cross_entropy_low_precision_within_twice_torch(dtype):
    hidden32, weight32, targets = _lm_problem((512,), c=256, vocab=32000)
    ref, rh, rw = _ref_linear(hidden32, weight32, targets)
    h, w = (t.detach().to(dtype).requires_grad_(True) for t in (hidden32, weight32))
    ours = linear_cross_entropy(h, w, targets, chunk_size=128)
    oh, ow = torch.autograd.grad(ours, (h, w))
    h2, w2 = (t.detach().to(dtype).requires_grad_(True) for t in (hidden32, weight32))
    torch_loss = _ref_ce(h2 @ w2.T, targets)  # 模型里的写法：低精度 logits，fp32 的交叉熵
    th, tw = torch.autograd.grad(torch_loss, (h2, w2))
    assert oh.dtype == dtype and ow.dtype == dtype
    assert _err(ours, ref) <= 2 * _err(torch_loss, ref) + 1e-4
    assert _err(oh, rh) <= 2 * _err(th, rh) + 1e-6
    assert _err(ow, rw) <= 2 * _err(tw, rw) + 1e-6
