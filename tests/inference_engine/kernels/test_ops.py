"""kernels/ops.py 的自定义算子：torch.library.opcheck 逐项验证模式、fake（形状/dtype/步长）、autograd 登记与 AOT 编译；
torch.compile(fullgraph=True) 把它们当成不透明节点编译，结果与直接调用相同，梯度与 PyTorch 参考相同。"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch.library import opcheck

from inference_engine.kernels import ops

OPS = torch.ops.llm_hardcore


def _leaf(*shape, dtype=torch.float32):
    return torch.randn(*shape, dtype=dtype).requires_grad_()


def rope_table(t: int, d: int) -> torch.Tensor:
    angles = torch.arange(t)[:, None] * (1e4 ** (-torch.arange(0, d, 2) / d))  # (T, D/2)
    return torch.stack((angles.cos(), angles.sin()), -1)[None, :, None]  # (1, T, 1, D/2, 2)


CASES = {
    "rms_norm": lambda: (OPS.rms_norm_fwd.default, (_leaf(3, 5, 40), _leaf(40), 1e-6)),
    "rope": lambda: (OPS.rope.default, (_leaf(2, 9, 6, 16)[:, :, 1:4], rope_table(9, 16), 1)),  # 非连续视图
    "swiglu": lambda: (OPS.swiglu_fwd.default, (_leaf(4, 33), _leaf(4, 33))),
    "flash_dense": lambda: (OPS.flash_attn_fwd.default,
                            (_leaf(1, 4, 20, 16), _leaf(1, 2, 20, 16), _leaf(1, 2, 20, 16), None, None, 1, 20, 20,
                             True, 0.25)),
    "flash_varlen": lambda: (OPS.flash_attn_fwd.default,
                             (_leaf(9, 2, 16), _leaf(9, 1, 16), _leaf(9, 1, 16), torch.tensor([0, 4, 9], dtype=torch.int32),
                              torch.tensor([0, 4, 9], dtype=torch.int32), 2, 5, 5, True, 0.25)),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_opcheck(name):
    op, args = CASES[name]()
    opcheck(op, args)


def test_opcheck_paged_attention_forward_only():
    cache = torch.randn(4, 4, 1, 16)
    args = (torch.randn(2, 2, 16), cache, torch.randn_like(cache), torch.tensor([0, 1, 2], dtype=torch.int32),
            torch.tensor([3, 6], dtype=torch.int32), torch.tensor([[0, 0], [2, 1]], dtype=torch.int32), 0.25, 1)
    opcheck(OPS.paged_attention.default, args, test_utils=("test_schema", "test_faketensor"))


def test_compiled_graph_with_custom_ops_equals_pytorch_reference():
    """一个小块：RMSNorm → SwiGLU → 注意力，fullgraph 编译（有 graph break 就失败），前向与梯度对照纯 PyTorch。"""
    x, w = _leaf(1, 12, 32), _leaf(32)

    def block(x, w, fused: bool):
        h = ops.rms_norm(x, w, 1e-6) if fused else F.rms_norm(x, (32,), w, 1e-6)
        h = ops.swiglu(h, h * 2) if fused else F.silu(h) * (h * 2)
        # 乘 0.1 让分数保持 O(1)：q = k = v 且数值很大时 softmax 近乎 argmax，1 ulp 的差别会被放大成 1e-2
        q = (0.1 * h).view(1, 12, 2, 16).transpose(1, 2)
        k = q.flip(-1)
        attn = ops.flash_attention(q.contiguous(), k.contiguous(), q.contiguous(), causal=True) if fused else \
            F.scaled_dot_product_attention(q, k, q, is_causal=True)
        return attn.sum(dim=1)

    compiled = torch.compile(lambda x, w: block(x, w, True), backend="aot_eager", fullgraph=True)
    out = compiled(x, w)
    out.square().sum().backward()
    gx, gw = x.grad.clone(), w.grad.clone()
    x.grad = w.grad = None
    ref = block(x, w, False)
    ref.square().sum().backward()
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(gx, x.grad, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(gw, w.grad, rtol=1e-4, atol=1e-5)


def test_public_wrappers_check_before_entering_the_op():
    with pytest.raises(ValueError, match="weight"):
        ops.rms_norm(torch.randn(2, 8), torch.randn(7))
    with pytest.raises(ValueError, match="形状"):
        ops.swiglu(torch.randn(2, 8), torch.randn(2, 9))
    with pytest.raises(ValueError, match="no_grad"):
        ops.paged_attention(_leaf(2, 2, 16), torch.randn(4, 4, 1, 16), torch.randn(4, 4, 1, 16),
                            cu_seqlens_q=torch.tensor([0, 1, 2], dtype=torch.int32),
                            context_lens=torch.tensor([3, 6], dtype=torch.int32),
                            block_tables=torch.tensor([[0, 0], [2, 1]], dtype=torch.int32))
