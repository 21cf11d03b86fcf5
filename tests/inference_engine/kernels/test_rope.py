"""Triton RoPE：前向与反向对照模型自己的 apply_rope（Llama 内部的相邻配对布局；fp32：前向 1e-5，梯度 1e-4）。

覆盖模型里真实出现的输入：q/k 是融合投影的非连续切片、表在 batch 上广播、打包批量 (1, N, H, D)、yarn 的 scaling ≠ 1；
最后把模型的 apply_rope 换成内核，整个 tiny Llama 的 logits 与梯度不变。
"""

from __future__ import annotations

import importlib

import pytest
import torch

from inference_engine.kernels.rope import apply_rope
from inference_engine.kernels.runtime import KERNEL_DEVICE

llama = importlib.import_module("model_lab.02_architectures.llama")


def _table(batch: int, t: int, d: int, scaling: float = 1.0, theta: float = 10_000.0):
    """用模型自己的 rope_table 构造表；batch > 1 时每个序列从不同位置开始（像带前缀的解码）。"""
    inv_freq = theta ** (-torch.arange(0, d, 2, dtype=torch.float32) / d)
    pos = torch.arange(t, dtype=torch.float32) + 5 * torch.arange(batch, dtype=torch.float32)[:, None]
    return llama.rope_table(pos[..., None] * inv_freq, scaling).to(KERNEL_DEVICE)  # (batch, T, 1, D/2, 2)


def _fwd_bwd(fn, x, rope, g):
    x = x.detach().requires_grad_()
    y = fn(x, rope)
    (dx,) = torch.autograd.grad(y, x, g)
    return y.detach(), dx


def _check(x, rope):
    g = torch.randn(x.shape, device=KERNEL_DEVICE)
    y, dx = _fwd_bwd(apply_rope, x, rope, g)
    y_ref, dx_ref = _fwd_bwd(llama.apply_rope, x, rope, g)
    assert y.shape == x.shape and y.dtype == x.dtype and y.is_contiguous()
    torch.testing.assert_close(y, y_ref, rtol=0, atol=1e-5)
    torch.testing.assert_close(dx, dx_ref, rtol=0, atol=1e-4)


@pytest.mark.parametrize("shape", [(2, 7, 3, 16), (1, 33, 4, 64), (3, 5, 1, 12), (2, 4, 40, 6)])
@pytest.mark.parametrize("scaling", [1.0, 1.25])
def test_matches_model_apply_rope(shape, scaling):
    b, t, _, d = shape
    _check(torch.randn(shape, device=KERNEL_DEVICE), _table(b, t, d, scaling))


def test_non_contiguous_slice_of_fused_projection():
    # 与模型相同：qkv (B, T, H + 2·H_kv, D) 连续，q 和 k 是头维上的切片
    b, t, h, h_kv, d = 2, 7, 4, 2, 16
    qkv = torch.randn(b, t, h + 2 * h_kv, d, device=KERNEL_DEVICE)
    qk, _ = qkv.split([h + h_kv, h_kv], dim=2)
    assert not qk.is_contiguous()
    _check(qk, _table(b, t, d))
    _check(qkv[:, :, h:h + h_kv], _table(b, t, d))  # 只有 k：基址也有偏移


def test_non_contiguous_transposed_layout():
    b, t, h, d = 2, 6, 3, 16
    x = torch.randn(b, h, t, d, device=KERNEL_DEVICE).transpose(1, 2)  # (B, T, H, D)，T 与 H 的步长互换
    _check(x, _table(b, t, d))


def test_table_broadcast_over_batch():
    b, t, h, d = 3, 9, 2, 16
    x = torch.randn(b, t, h, d, device=KERNEL_DEVICE)
    rope = _table(1, t, d)
    _check(x, rope)
    # 广播等价于把表显式复制 B 份
    torch.testing.assert_close(apply_rope(x, rope), apply_rope(x, rope.expand(b, -1, -1, -1, -1)), rtol=0, atol=0)


def test_packed_layout():
    # 打包批量：3 条序列首尾相接，位置各自从 0 开始
    lens, h, d = [5, 9, 3], 4, 32
    inv_freq = 10_000.0 ** (-torch.arange(0, d, 2, dtype=torch.float32) / d)
    pos = torch.cat([torch.arange(n, dtype=torch.float32) for n in lens])[None]  # (1, N)
    rope = llama.rope_table(pos[..., None] * inv_freq).to(KERNEL_DEVICE)  # (1, N, 1, D/2, 2)
    _check(torch.randn(1, sum(lens), h, d, device=KERNEL_DEVICE), rope)


def test_saves_only_the_table_and_backward_is_inverse_rotation():
    b, t, h, d = 2, 5, 2, 8
    rope = _table(b, t, d)
    x = torch.randn(b, t, h, d, device=KERNEL_DEVICE, requires_grad=True)
    y = apply_rope(x, rope)
    saved = y.grad_fn.saved_tensors
    assert len(saved) == 1 and saved[0].data_ptr() == rope.data_ptr()
    # scaling = 1 时旋转正交：反向（转 −θ）作用在 y 上恰好还原 x
    (back,) = torch.autograd.grad(y, x, y.detach())
    torch.testing.assert_close(back, x.detach(), rtol=0, atol=1e-5)


def test_whole_tiny_llama_unchanged_with_kernel_rope(monkeypatch):
    # yarn（scaling ≠ 1）+ GQA，head_dim = 12（D/2 = 6 不是 2 的幂，掩码生效）；B·T ≥ hidden_size 走融合投影（非连续 q/k）
    torch.manual_seed(0)
    cfg = llama.LlamaConfig(vocab_size=97, hidden_size=48, intermediate_size=80, num_hidden_layers=2,
                            max_position_embeddings=96, num_attention_heads=4, num_key_value_heads=2,
                            rope_scaling={"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 24})
    model = llama.Llama(cfg).to(KERNEL_DEVICE)
    ids = torch.randint(0, 97, (2, 24), device=KERNEL_DEVICE)

    def run():
        model.zero_grad()
        logits, loss = model(ids[:, :-1], targets=ids[:, 1:])
        loss.backward()
        return logits.detach(), [p.grad.clone() for p in model.parameters()]

    logits_ref, grads_ref = run()
    monkeypatch.setattr(llama, "apply_rope", apply_rope)
    logits, grads = run()
    torch.testing.assert_close(logits, logits_ref, rtol=0, atol=1e-5)
    for g, g_ref in zip(grads, grads_ref):
        torch.testing.assert_close(g, g_ref, rtol=0, atol=1e-4)


@pytest.mark.parametrize("make, match", [
    (lambda: (torch.randn(2, 5, 16), _table(2, 5, 16)), "4 维"),
    (lambda: (torch.randn(2, 5, 3, 15), _table(2, 5, 16)), "奇数"),
    (lambda: (torch.randn(2, 5, 3, 32)[..., ::2], _table(2, 5, 16)), "步长"),
    (lambda: (torch.randn(2, 5, 3, 16), _table(2, 6, 16)), "形状"),
    (lambda: (torch.randn(2, 5, 3, 16), _table(2, 5, 32)), "形状"),
    (lambda: (torch.randn(3, 5, 3, 16), _table(2, 5, 16)), "形状"),
    (lambda: (torch.randn(2, 5, 3, 16), _table(2, 5, 16).half()), "dtype"),
    (lambda: (torch.randn(2, 5, 3, 16).double(), _table(2, 5, 16)), "dtype"),
    (lambda: (torch.randn(2, 5, 3, 16), _table(2, 5, 16).requires_grad_()), "requires_grad"),
])
def test_bad_input_raises_clear_error(make, match):
    x, rope = make()
    with pytest.raises(ValueError, match=match):
        apply_rope(x.to(KERNEL_DEVICE), rope.to(KERNEL_DEVICE))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs an NVIDIA GPU")
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_low_precision_on_gpu_within_twice_torch_error(dtype):
    b, t, h, d = 4, 256, 12, 128
    qkv = torch.randn(b, t, h + 4, d, device="cuda").to(dtype)
    x, rope = qkv[:, :, :h], _table(1, t, d, 1.1)
    g = torch.randn(b, t, h, d, device="cuda").to(dtype)
    ref = _fwd_bwd(llama.apply_rope, x.float(), rope, g.float())  # 同样的低精度输入，在 fp32 里算
    ours = _fwd_bwd(apply_rope, x, rope, g)
    theirs = _fwd_bwd(llama.apply_rope, x, rope, g)
    for o, th, r in zip(ours, theirs, ref):
        ours_err = (o.float() - r).abs().max().item()
        torch_err = (th.float() - r).abs().max().item()
        assert ours_err <= 2 * torch_err + 1e-6, (ours_err, torch_err)
