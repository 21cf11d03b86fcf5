"""梯度累积等于大批次；激活检查点的输出/梯度与不检查点相同、保存的激活更少。"""

from __future__ import annotations

import pytest
import torch

from training_sys.optimization import (
    DynamicLossScaler,
    accumulate_gradients,
    checkpoint,
    cross_entropy,
    saved_activation_bytes,
    split_micro_batches,
)
from training_sys.optimization.activation_checkpointing import Stack, run_mode
from training_sys.optimization.grad_accumulation import TinyLM, grads_of, max_diff


def lm_batch(B=8, T=12, V=40, seed=0, uneven_padding=True):
    gen = torch.Generator().manual_seed(seed)
    x, y = torch.randint(0, V, (B, T), generator=gen), torch.randint(0, V, (B, T), generator=gen)
    if uneven_padding:
        for b in range(0, B, 3):
            y[b, 2 + b % 5:] = -100
    return x, y


@pytest.mark.parametrize("k", [1, 2, 4, 8])
@pytest.mark.parametrize("uneven", [False, True])
def test_accumulation_equals_large_batch(k, uneven):
    torch.manual_seed(0)
    model = TinyLM(40, 16)
    x, y = lm_batch(uneven_padding=uneven)
    model.zero_grad()
    full_loss = cross_entropy(model(x), y, z_loss=1e-3)
    full_loss.backward()
    full = grads_of(model)
    model.zero_grad()
    loss = accumulate_gradients(model, split_micro_batches(x, y, k), z_loss=1e-3)
    assert loss.item() == pytest.approx(full_loss.item(), rel=1e-6)
    assert max_diff(grads_of(model), full) < 1e-6


def test_naive_per_micro_batch_mean_differs_with_uneven_padding():
    # 反例：每份取平均再 /k，在有效 token 数不同时不等于大批次（这正是要按总 token 数归一化的原因）
    torch.manual_seed(0)
    model = TinyLM(40, 16)
    x, y = lm_batch()
    model.zero_grad()
    cross_entropy(model(x), y).backward()
    full = grads_of(model)
    model.zero_grad()
    for xm, ym in split_micro_batches(x, y, 4):
        (cross_entropy(model(xm), ym) / 4).backward()
    assert max_diff(grads_of(model), full) > 1e-4


def test_accumulation_with_loss_scaler_unscales_to_large_batch():
    torch.manual_seed(0)
    model = TinyLM(40, 16)
    x, y = lm_batch()
    model.zero_grad()
    cross_entropy(model(x), y).backward()
    full = grads_of(model)
    model.zero_grad()
    scaler = DynamicLossScaler(init_scale=2.0**8)
    accumulate_gradients(model, split_micro_batches(x, y, 2), scaler=scaler)
    opt = torch.optim.SGD(model.parameters(), lr=0.0)
    scaler.unscale_(opt)
    assert max_diff(grads_of(model), full) < 1e-6


@pytest.mark.parametrize("make, match", [
    (lambda: split_micro_batches(torch.zeros(6, 2), torch.zeros(6, 2), 4), "整除"),
    (lambda: split_micro_batches(torch.zeros(6, 2), torch.zeros(6, 2), 0), "正整数"),
    (lambda: accumulate_gradients(TinyLM(), []), "为空"),
    (lambda: accumulate_gradients(TinyLM(), [(torch.zeros(1, 2, dtype=torch.long), torch.full((1, 2), -100))]),
     "ignore_index"),
])
def test_accumulation_bad_input(make, match):
    with pytest.raises(ValueError, match=match):
        make()


@pytest.mark.parametrize("mode", ["ours", "torch", "torch_non_reentrant"])
def test_checkpoint_outputs_and_grads_equal_with_dropout(mode):
    torch.manual_seed(0)
    model = Stack(16, 3, dropout=0.2)
    x = torch.randn(2, 5, 16)
    ref = run_mode(model, x, "none", seed=1)
    got = run_mode(model, x, mode, seed=1)
    torch.testing.assert_close(got[0], ref[0], rtol=0, atol=1e-6)
    torch.testing.assert_close(got[1], ref[1], rtol=0, atol=1e-6)
    for a, b in zip(got[2], ref[2]):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-6)


def test_checkpoint_saves_only_block_inputs():
    torch.manual_seed(0)
    L, B, T, d = 4, 2, 8, 32
    model = Stack(d, L)
    x = torch.randn(B, T, d)
    none_bytes, ours_bytes, torch_bytes = (run_mode(model, x, m)[3] for m in ("none", "ours", "torch"))
    assert ours_bytes == torch_bytes == L * B * T * d * 4     # 每块只剩一个 fp32 输入
    assert none_bytes > 8 * ours_bytes                        # 块内有 4d 宽的中间激活，节省远超一个数量级


def test_checkpoint_recompute_respects_autocast_and_multiple_args():
    torch.manual_seed(0)
    lin = torch.nn.Linear(8, 8)
    a, b = torch.randn(3, 8, requires_grad=True), torch.randn(3, 8, requires_grad=True)

    def f(u, v, scale):
        return lin(u * v) * scale   # 输出是 bf16：重算若不在 autocast 下，梯度会与 bf16 参考差 1e-2 量级

    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = checkpoint(f, a, b, 2.0)
        ref_out = f(a, b, 2.0)
    assert out.dtype == torch.bfloat16
    torch.testing.assert_close(out, ref_out)
    ga = torch.autograd.grad(ref_out.float().sum(), (a, b, lin.weight))
    out.float().sum().backward()
    for g, r in zip((a.grad, b.grad, lin.weight.grad), ga):
        torch.testing.assert_close(g, r)


def test_saved_activation_bytes_counts_unique_storages_and_excludes_params():
    w = torch.nn.Parameter(torch.randn(4, 4))
    x = torch.randn(10, 4, requires_grad=True)
    _, nbytes = saved_activation_bytes(lambda: (x @ w).sum(), exclude=[w])
    assert nbytes == x.numel() * 4                            # matmul 为反向存下 x 与 w；w 是参数，不计


def test_checkpoint_requires_an_input_with_grad_but_not_under_no_grad():
    lin, x = torch.nn.Linear(2, 2), torch.randn(1, 2)
    with pytest.raises(ValueError, match="requires_grad"):
        checkpoint(lin, x)
    with torch.no_grad():                                     # 评估时不建图，直接前向
        torch.testing.assert_close(checkpoint(lin, x), lin(x))
