"""融合 softmax：单遍与 online 两条路径都与 torch.softmax 一致（fp32 1e-5），数值稳定，-inf 的语义与 torch 相同。"""

from __future__ import annotations

import pytest
import torch

from inference_engine.kernels.runtime import KERNEL_DEVICE
from inference_engine.kernels.softmax import softmax


def _ref(x):
    return torch.softmax(x, dim=-1)


@pytest.mark.parametrize("shape", [(1, 1), (5, 7), (9, 100), (3, 1000), (2, 3, 33), (2, 2, 2, 64)])
def test_fused_path_matches_torch(shape):
    x = torch.randn(shape, device=KERNEL_DEVICE) * 4
    out = softmax(x)
    assert out.shape == x.shape and out.dtype == x.dtype
    torch.testing.assert_close(out, _ref(x), rtol=0, atol=1e-5)


@pytest.mark.parametrize("n_cols, max_block", [(100, 16), (64, 16), (257, 64), (33, 32)])
def test_online_path_matches_torch(n_cols, max_block):
    # max_block < 行长：强制走分块的 online 递推（含整块对齐与尾块带 mask 两种情形）
    x = torch.randn(6, n_cols, device=KERNEL_DEVICE) * 4
    torch.testing.assert_close(softmax(x, max_block=max_block), _ref(x), rtol=0, atol=1e-5)


@pytest.mark.parametrize("max_block", [16, 8192])
def test_numerically_stable_for_huge_logits(max_block):
    # 不减最大值时 exp(1000) 在 fp32 里是 inf，结果会是 NaN
    x = torch.randn(4, 50, device=KERNEL_DEVICE) * 1000
    out = softmax(x, max_block=max_block)
    assert torch.isfinite(out).all()
    torch.testing.assert_close(out, _ref(x), rtol=0, atol=1e-5)


@pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning")  # 整行 -inf 的 0/0，正是要测的
@pytest.mark.parametrize("max_block", [16, 8192])
def test_minus_inf_entries_like_torch(max_block):
    x = torch.randn(5, 40, device=KERNEL_DEVICE)
    x[:, ::3] = float("-inf")  # 注意力掩码
    x[1, :20] = float("-inf")  # online 路径下前面整块都是 -inf：基准不能变成 NaN
    x[2, :] = float("-inf")  # 整行 -inf：torch 给 NaN，我们也必须给 NaN，而不是一个像样的数
    out, ref = softmax(x, max_block=max_block), _ref(x)
    assert torch.isnan(out[2]).all() and torch.isnan(ref[2]).all()
    keep = torch.arange(5, device=KERNEL_DEVICE) != 2
    torch.testing.assert_close(out[keep], ref[keep], rtol=0, atol=1e-5)
    assert (out[keep][:, ::3] == 0).all()


def test_many_rows_per_program_and_partial_last_program():
    # 行长 16 时一个 program 处理 256 行；1000 行时最后一个 program 只有一部分行有效
    x = torch.randn(1000, 16, device=KERNEL_DEVICE)
    torch.testing.assert_close(softmax(x), _ref(x), rtol=0, atol=1e-5)


def test_rows_sum_to_one_fp16():
    x = torch.randn(7, 129, device=KERNEL_DEVICE).half()
    out = softmax(x)
    assert out.dtype == torch.float16
    torch.testing.assert_close(out.float().sum(-1), torch.ones(7, device=KERNEL_DEVICE), rtol=0, atol=2e-3)
    torch.testing.assert_close(out.float(), _ref(x.float()), rtol=0, atol=1e-3)


def test_empty_input():
    assert softmax(torch.empty(0, 5, device=KERNEL_DEVICE)).shape == (0, 5)
    assert softmax(torch.empty(3, 0, device=KERNEL_DEVICE)).shape == (3, 0)


@pytest.mark.parametrize("bad, kwargs, match", [
    (lambda: torch.randn(8, 4).t(), {}, "连续"),
    (lambda: torch.randint(0, 5, (3, 4)), {}, "dtype"),
    (lambda: torch.randn(3, 4).double(), {}, "dtype"),
    (lambda: torch.tensor(1.0), {}, "标量"),
    (lambda: torch.randn(3, 4), {"max_block": 48}, "2 的幂"),
])
def test_bad_input_raises_clear_error(bad, kwargs, match):
    with pytest.raises(ValueError, match=match):
        softmax(bad().to(KERNEL_DEVICE), **kwargs)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs an NVIDIA GPU")
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("n_cols, max_block", [(1000, 8192), (20_000, 8192), (50_000, 4096)])
def test_low_precision_on_gpu_within_twice_torch_error(dtype, n_cols, max_block):
    x = torch.randn(64, n_cols, device="cuda") * 3
    ref = _ref(x)  # fp32 参考
    xl = x.to(dtype)
    ours_err = (softmax(xl, max_block=max_block).float() - ref).abs().max().item()
    torch_err = (_ref(xl).float() - ref).abs().max().item()
    assert ours_err <= 2 * torch_err + 1e-6, (ours_err, torch_err)
