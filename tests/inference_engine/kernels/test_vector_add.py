"""Triton 向量加法：任意长度（mask 处理尾块）与 torch 的 x + y 逐位相同；错误输入给出清楚的 ValueError。"""

from __future__ import annotations

import pytest
import torch

from inference_engine.kernels.runtime import KERNEL_DEVICE
from inference_engine.kernels.vector_add import BLOCK_SIZE, add, add_kernel


@pytest.mark.parametrize("n", [1, 7, BLOCK_SIZE - 1, BLOCK_SIZE, BLOCK_SIZE + 1, 3 * BLOCK_SIZE + 17])
def test_add_matches_torch_bitwise_fp32(n):
    x = torch.randn(n, device=KERNEL_DEVICE)
    y = torch.randn(n, device=KERNEL_DEVICE)
    torch.testing.assert_close(add(x, y), x + y, rtol=0, atol=0)


def test_add_keeps_shape_and_fp16_is_bitwise():
    x = torch.randn(3, 5, 67, device=KERNEL_DEVICE).half()
    y = torch.randn(3, 5, 67, device=KERNEL_DEVICE).half()
    out = add(x, y)
    assert out.shape == x.shape and out.dtype == torch.float16
    torch.testing.assert_close(out, x + y, rtol=0, atol=0)


def test_mask_does_not_write_past_the_end():
    # 输出是一块大缓冲区的前缀视图：如果尾块没有 mask，后面的哨兵值会被改写
    n = BLOCK_SIZE + 5
    x = torch.randn(n, device=KERNEL_DEVICE)
    y = torch.randn(n, device=KERNEL_DEVICE)
    buf = torch.full((n + BLOCK_SIZE,), 123.0, device=KERNEL_DEVICE)
    add_kernel[(2,)](x, y, buf, n, BLOCK=BLOCK_SIZE)
    torch.testing.assert_close(buf[:n], x + y, rtol=0, atol=0)
    assert (buf[n:] == 123.0).all()


def test_empty_input():
    x = torch.empty(0, device=KERNEL_DEVICE)
    assert add(x, x).numel() == 0


@pytest.mark.parametrize("bad, match", [
    (lambda x: (x, x[:-1]), "形状"),
    (lambda x: (x, x.half()), "dtype"),
    (lambda x: (x.long(), x.long()), "dtype"),
    (lambda x: (x.view(4, 8).t(), x.view(4, 8).t()), "连续"),
    (lambda x: (x, [1.0]), "torch.Tensor"),
])
def test_bad_input_raises_clear_error(bad, match):
    x = torch.randn(32, device=KERNEL_DEVICE)
    with pytest.raises(ValueError, match=match):
        add(*bad(x))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs an NVIDIA GPU")
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_add_low_precision_bitwise_on_gpu(dtype):
    # GPU 上 fp32→bf16/fp16 是就近舍入，与 torch 的低精度加法逐位相同
    x = torch.randn(100_003, device="cuda", dtype=dtype)
    y = torch.randn(100_003, device="cuda", dtype=dtype)
    torch.testing.assert_close(add(x, y), x + y, rtol=0, atol=0)
