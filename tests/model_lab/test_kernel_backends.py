"""内核后端注册表（model_lab/kernel_backends.py）：Llama 按 config.kernels 查表，注册的每个算子真的被调用，
结果与 PyTorch 写法相同；融合交叉熵的训练前向不返回 logits；名字与算子拼错时报清楚的错；kernels 不写进 config.json。

这里注册的是"间谍"后端：纯 PyTorch 的同一公式，外加调用计数——测的是接线（调没调、传的参数对不对），
Triton 内核本身与 PyTorch 的对照在 tests/inference_engine/kernels/。"""

from __future__ import annotations

import importlib
import json
from collections import Counter

import pytest
import torch
import torch.nn.functional as F

from model_lab import Llama, LlamaConfig
from model_lab.kernel_backends import KERNEL_BACKENDS, KERNEL_OPS, get_kernel_backend, register_kernel_backend

llama = importlib.import_module("model_lab.02_architectures.llama")
CALLS: Counter = Counter()


def spy_rms_norm(x, weight, eps):
    CALLS["rms_norm"] += 1
    return weight * (x.float() * torch.rsqrt(x.float().pow(2).mean(-1, keepdim=True) + eps)).to(x.dtype)


def spy_apply_rope(x, rope):
    CALLS["apply_rope"] += 1
    assert x.dim() == 4 and rope.shape[-1] == 2 and rope.dtype == torch.float32
    x0, x1 = x.float().unflatten(-1, (-1, 2)).unbind(-1)
    cos, sin = rope.unbind(-1)
    return torch.stack((x0 * cos - x1 * sin, x1 * cos + x0 * sin), -1).flatten(-2).to(x.dtype)


def spy_swiglu(gate, up):
    CALLS["swiglu"] += 1
    return F.silu(gate) * up


def spy_linear_cross_entropy(hidden, weight, targets, ignore_index=-100):
    CALLS["linear_cross_entropy"] += 1
    assert hidden.dim() == 2 and targets.dim() == 1 and hidden.size(0) == targets.size(0)
    return F.cross_entropy((hidden @ weight.T).float(), targets, ignore_index=ignore_index)


@pytest.fixture(autouse=True)
def spy_backend():
    register_kernel_backend("spy", rms_norm=spy_rms_norm, apply_rope=spy_apply_rope, swiglu=spy_swiglu,
                            linear_cross_entropy=spy_linear_cross_entropy)
    CALLS.clear()
    yield
    KERNEL_BACKENDS.pop("spy", None)


def make(kernels: str, seed: int = 0, **kw) -> Llama:
    torch.manual_seed(seed)
    model = Llama(LlamaConfig(vocab_size=61, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
                              num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
                              kernels=kernels, **kw))
    with torch.no_grad():  # norm 权重初始化为 1：扰动一下，才测得出"漏乘权重"
        for name, p in model.named_parameters():
            if "norm" in name:
                p.add_(torch.randn_like(p) * 0.1)
    return model


def test_every_registered_op_is_called_and_equals_torch():
    ref, spy = make("torch"), make("spy")
    ids = torch.randint(0, 61, (2, 9))
    targets = ids.roll(-1, 1)
    targets[0, :3] = -100
    ref_logits, ref_loss = ref(ids, targets)
    none_logits, loss = spy(ids, targets)  # 训练模式 + 融合交叉熵：不返回 logits
    assert none_logits is None
    assert CALLS == {"rms_norm": 5, "apply_rope": 2, "swiglu": 2, "linear_cross_entropy": 1}
    torch.testing.assert_close(loss, ref_loss, rtol=1e-6, atol=1e-6)
    ref_loss.backward()
    loss.backward()
    for (name, p), q in zip(ref.named_parameters(), spy.parameters()):
        torch.testing.assert_close(q.grad, p.grad, rtol=1e-5, atol=1e-6, msg=name)


def test_eval_and_no_grad_return_logits():
    ref, spy = make("torch").eval(), make("spy").eval()
    ids = torch.randint(0, 61, (1, 7))
    logits, loss = spy(ids, ids)
    assert logits is not None and CALLS["linear_cross_entropy"] == 0
    torch.testing.assert_close(logits, ref(ids), rtol=1e-5, atol=1e-6)
    spy.train()
    with torch.no_grad():  # 评估循环常在 train() 模式下关梯度算 loss：也要有 logits
        assert spy(ids, ids)[0] is not None


def test_generation_and_packed_forward_use_the_kernels():
    ref, spy = make("torch").eval(), make("spy").eval()
    prompt = torch.randint(0, 61, (2, 5))
    assert torch.equal(spy.generate(prompt, 6, temperature=0), ref.generate(prompt, 6, temperature=0))
    assert CALLS["apply_rope"] > 0 and CALLS["swiglu"] > 0


def test_partial_backend_falls_back_per_op():
    register_kernel_backend("spy", swiglu=spy_swiglu)
    ref, spy = make("torch"), make("spy")
    ids = torch.randint(0, 61, (2, 6))
    logits, loss = spy(ids, ids)
    assert logits is not None and CALLS == {"swiglu": 2}
    torch.testing.assert_close(loss, ref(ids, ids)[1])


def test_a_replaced_act_fn_wins_over_the_fused_kernel():
    class MySiLU(torch.nn.Module):
        def forward(self, x):
            return x * torch.sigmoid(x)

    spy = make("spy")
    for layer in spy.model.layers:
        layer.mlp.act_fn = MySiLU()
    spy(torch.randint(0, 61, (1, 4)))
    assert CALLS["swiglu"] == 0 and CALLS["rms_norm"] == 5


def test_bad_names_and_ops_are_clear_errors():
    with pytest.raises(ValueError, match=r"kernels='nope' 未注册.*'spy'.*'torch'"):
        make("nope")
    with pytest.raises(ValueError, match="必须是内核后端的名字"):
        make(3)
    with pytest.raises(ValueError, match=r"算子 \['rmsnorm'\] 未知.*rms_norm"):
        register_kernel_backend("x", rmsnorm=spy_rms_norm)
    with pytest.raises(ValueError, match="不能被覆盖"):
        register_kernel_backend("torch", swiglu=spy_swiglu)
    with pytest.raises(ValueError, match="可调用"):
        register_kernel_backend("x", swiglu=3)
    assert "x" not in KERNEL_BACKENDS and get_kernel_backend("torch").swiglu is None
    assert set(KERNEL_OPS) == {"rms_norm", "apply_rope", "swiglu", "linear_cross_entropy"}


def test_kernels_is_a_runtime_choice_not_saved(tmp_path):
    model = make("spy")
    model.save_pretrained(tmp_path)
    saved = json.loads((tmp_path / "config.json").read_text())
    assert "kernels" not in saved and "attn_implementation" not in saved
    loaded = Llama.from_pretrained(tmp_path, kernels="spy")
    assert loaded.config.kernels == "spy"
    assert Llama.from_pretrained(tmp_path).config.kernels == "torch"
