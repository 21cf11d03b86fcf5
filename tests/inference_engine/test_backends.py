"""Triton 内核作为模型后端（inference_engine/backends.py）：整个小 Llama 换成 attn_implementation="triton_flash"、
kernels="triton" 之后，logits、loss、梯度与 eager 后端相同（fp32，1e-5），打包前向、分页缓存的预填充与解码、
贪心生成（含左侧 padding：掩码交给 SDPA）也相同；接线的每一步都能被测试看见。

全部在 TRITON_INTERPRET=1 的解释器里跑（没有 GPU 时 runtime.py 自动打开）：配置很小，整个文件约半分钟。"""

from __future__ import annotations

import pytest
import torch

import inference_engine.backends as backends
from model_lab import AttnMetadata, Llama, LlamaConfig, pack_sequences
from model_lab.attention_backends import get_attention_backend
from model_lab.kernel_backends import get_kernel_backend

V = 53
CFG = dict(vocab_size=V, hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=4,
           num_key_value_heads=2, head_dim=16, max_position_embeddings=64)


def pair(seed: int = 0) -> tuple[Llama, Llama]:
    """同一份权重的两个模型：eager 参照、Triton 内核。norm 权重扰动过（初始化为 1 时漏乘权重测不出来）。"""
    torch.manual_seed(seed)
    ref = Llama(LlamaConfig(**CFG, attn_implementation="eager"))
    with torch.no_grad():
        for name, p in ref.named_parameters():
            if "norm" in name:
                p.add_(torch.randn_like(p) * 0.1)
    tri = Llama(LlamaConfig(**CFG, attn_implementation="triton_flash", kernels="triton"))
    tri.load_state_dict(ref.state_dict())
    return ref, tri


def test_importing_registers_both_backends():
    assert get_attention_backend("triton_flash").packed is backends.triton_flash_packed
    kb = get_kernel_backend("triton")
    assert all(getattr(kb, op) is not None for op in ("rms_norm", "apply_rope", "swiglu", "linear_cross_entropy"))


def test_training_forward_loss_and_gradients_equal_eager():
    ref, tri = pair()
    ids = torch.randint(0, V, (2, 19))
    targets = ids.roll(-1, 1)
    targets[1, :4] = -100
    ref_logits, ref_loss = ref(ids, targets)
    logits, loss = tri(ids, targets)
    assert logits is None  # 融合的 lm_head + 交叉熵：训练前向不物化 logits
    torch.testing.assert_close(loss, ref_loss, rtol=1e-5, atol=1e-5)
    ref_loss.backward()
    loss.backward()
    for (name, p), q in zip(ref.named_parameters(), tri.parameters()):
        torch.testing.assert_close(q.grad, p.grad, rtol=1e-4, atol=1e-5, msg=name)
    tri.eval()
    with torch.no_grad():
        torch.testing.assert_close(tri(ids), ref_logits, rtol=1e-5, atol=1e-5)


def test_packed_forward_and_paged_decode_equal_eager():
    ref, tri = pair(1)
    seqs = [torch.randint(0, V, (n,)) for n in (5, 1, 11)]
    ids, pos, meta = pack_sequences(seqs)
    with torch.no_grad():
        torch.testing.assert_close(tri(ids, attn_metadata=meta), ref(ids, attn_metadata=meta), rtol=1e-5, atol=1e-5)
        caches = [m.make_paged_kv_cache(num_blocks=12, block_size=4) for m in (ref, tri)]
        g = torch.Generator().manual_seed(2)
        for step, new_lens in enumerate([[5, 1, 11], [1, 1, 1], [2, 1, 3]]):
            chunks = seqs if step == 0 else [torch.randint(0, V, (n,), generator=g) for n in new_lens]
            outs = []
            for model, cache in zip((ref, tri), caches):
                md = cache.prepare([0, 1, 2], new_lens)
                outs.append(model(torch.cat(chunks)[None], kv_cache=cache, attn_metadata=md,
                                  logits_positions=md.last_token_indices))
            torch.testing.assert_close(outs[1], outs[0], rtol=1e-5, atol=1e-5)


def test_greedy_generation_equals_eager_with_and_without_padding():
    ref, tri = pair(3)
    ref.eval(), tri.eval()
    prompt = torch.randint(0, V, (2, 6))
    assert torch.equal(tri.generate(prompt, 5, temperature=0), ref.generate(prompt, 5, temperature=0))
    mask = torch.ones_like(prompt)
    mask[0, :2] = 0  # 左侧 padding：任意掩码，这一步由 SDPA 处理
    assert torch.equal(tri.generate(prompt, 4, temperature=0, attention_mask=mask),
                       ref.generate(prompt, 4, temperature=0, attention_mask=mask))


def test_mask_kinds_decide_kernel_or_sdpa():
    t, s = 3, 7
    causal = torch.ones(t, s, dtype=torch.bool).tril(diagonal=s - t)
    assert backends._mask_kind(causal[None, None], t, s) == "causal"
    assert backends._mask_kind(torch.ones(2, 1, t, s, dtype=torch.bool), t, s) == "full"
    padded = causal.expand(2, 1, t, s).clone()
    padded[0, ..., 0] = False
    assert backends._mask_kind(padded, t, s) == "other"
    assert backends._mask_kind(causal[None, None].float(), t, s) == "other"


def test_dropout_and_unsupported_head_dim_are_clear_errors():
    q = torch.randn(1, 2, 4, 16)
    with pytest.raises(ValueError, match="dropout"):
        backends.triton_flash_attention(q, q, q, is_causal=True, attn_mask=None, scale=0.25, dropout_p=0.1)
    md = AttnMetadata.from_lengths([4])
    with pytest.raises(ValueError, match="dropout"):
        backends.triton_flash_packed(q[0].transpose(0, 1), q[0].transpose(0, 1), q[0].transpose(0, 1),
                                     attn_metadata=md, scale=0.25, dropout_p=0.1)
    model = Llama(LlamaConfig(**{**CFG, "head_dim": 12},
                              attn_implementation="triton_flash"))  # head_dim = 12：内核不支持
    with pytest.raises(ValueError, match="sdpa"):
        model(torch.randint(0, V, (1, 5)))
